//! The will message a connection carries until it ends [MQTT-3.1.2-8]. A leaf module: the broker, sessions and
//! the store records all use it, so it depends on none of them.

use bytes::Bytes;
use halyard_codec::{Properties, QoS, Utf8};

/// A will message waiting for its connection to end [MQTT-3.1.2-8].
#[derive(Debug, Clone)]
pub struct Will {
    pub topic: Utf8,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: Option<Box<Properties>>,
    /// Message Expiry Interval of the will, counted from when it is published.
    pub message_expiry: Option<u32>,
    /// Will Delay Interval in seconds.
    pub delay: u32,
}
