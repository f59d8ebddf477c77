//! What travels through the router: one `Arc<Message>` per PUBLISH, and one small [`Delivery`] per target session.

use bytes::Bytes;
use halyard_codec::{Properties, QoS, Utf8};
use std::sync::Arc;
use std::time::Instant;

/// A published application message, shared by every session it goes to (the payload is never copied).
#[derive(Debug)]
pub struct Message {
    /// The id under which the store keeps it (from `Broker::new_message_id`); 0 for messages never stored.
    pub id: u64,
    pub topic: Utf8,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// PUBLISH properties forwarded to subscribers (topic alias and subscription identifiers removed; message
    /// expiry is recomputed at delivery from `expires_at`). `None` when there are none, which is the common case.
    pub properties: Option<Box<Properties>>,
    /// Client id of the publisher, for No Local [MQTT-3.8.3-3]. `None` for messages the broker makes itself.
    pub publisher: Option<Arc<str>>,
    /// From Message Expiry Interval: after this instant the message is not delivered [MQTT-3.3.2-5].
    pub expires_at: Option<Instant>,
}

impl Message {
    /// True when the message's expiry interval has passed.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| now >= t)
    }

    /// Seconds left of the Message Expiry Interval, rounded up so a live message never says 0.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|t| {
            let left = t.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX)
        })
    }
}

/// Which shared-subscription group a delivery was picked by, so that it can go to another member if this one
/// leaves before acknowledging it.
#[derive(Debug, PartialEq, Eq)]
pub struct SharedOrigin {
    pub group: Arc<str>,
    /// The filter without the `$share/<group>/` prefix.
    pub filter: Arc<str>,
}

/// One message on its way to one session.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub msg: Arc<Message>,
    /// min(message QoS, granted QoS).
    pub qos: QoS,
    /// The RETAIN flag to send: set for retained messages sent on subscribe, and for forwarded messages only with
    /// Retain As Published [MQTT-3.3.1-12, MQTT-3.3.1-13].
    pub retain: bool,
    /// Subscription identifiers of every matching subscription of the session [MQTT-3.3.4-3].
    pub sub_ids: Vec<u32>,
    pub shared: Option<Arc<SharedOrigin>>,
    /// Position in the session's durable queue; 0 when the delivery is not stored (QoS 0, or a session that
    /// ends with its connection).
    pub seq: u64,
    /// The store ticket that must commit before this delivery may go out (0: none). A QoS 1/2 publish whose
    /// commit fails is refused to its publisher, so nothing of it may have reached anyone: its deliveries wait
    /// in their queues until the commit, and are dropped if it fails (docs/architecture.md, "Store failure").
    pub commit: u64,
}

/// Where an outbound QoS 1/2 message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// QoS 1 PUBLISH sent, waiting for PUBACK.
    AwaitPubAck,
    /// QoS 2 PUBLISH sent, waiting for PUBREC.
    AwaitPubRec,
    /// PUBREL sent, waiting for PUBCOMP.
    AwaitPubComp,
}
