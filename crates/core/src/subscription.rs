//! Subscription data shared by the router, shared-subscription groups, sessions and the store records. A leaf
//! module, so those stop importing each other for their types.

use crate::session::SessionHandle;
use halyard_codec::SubscriptionOptions;
use std::sync::Arc;

/// A subscription as the router matches it.
#[derive(Debug, Clone)]
pub struct SubEntry {
    pub session: Arc<SessionHandle>,
    pub options: SubscriptionOptions,
    pub sub_id: Option<u32>,
}

/// One subscription as the session remembers it (the router holds its own copy for matching).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionRecord {
    pub options: SubscriptionOptions,
    pub sub_id: Option<u32>,
}
