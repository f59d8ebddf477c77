//! `halyard-core`: the broker engine with no sockets.
//!
//! It holds what outlives a single connection: the session registry (client id → session), the router (which
//! sessions want a topic), the retainer, shared-subscription groups, counters and the configuration types.
//! The per-connection protocol state machine lives in `halyard-server` and calls into [`Broker`].

pub mod broker;
pub mod config;
pub mod durable;
pub mod hooks;
pub mod message;
pub mod metrics;
pub mod persist;
pub mod registry;
pub mod retainer;
pub mod router;
pub mod session;
pub mod shared;
pub mod subscription;
mod timers;
pub mod will;
pub mod writes;

pub use broker::Broker;
pub use message::{Delivery, Message};
pub use writes::Writes;
