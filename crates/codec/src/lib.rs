//! `halyard-codec`: MQTT 3.1, 3.1.1 and 5.0 control packets — types, a decoder and an encoder.
//!
//! What it is for: turning bytes into [`Packet`]s and back, with every rule of the spec that can be checked
//! from one packet alone (reserved flag bits, remaining-length form, UTF-8 validity, which properties a packet may
//! carry, duplicate properties, QoS 3, packet id 0 …). What it is not: it does no I/O and holds no session state;
//! whether a topic filter is well formed is `halyard-topic`'s job, whether a packet is allowed now is the server's.
//!
//! Zero copy: [`decode`] splits one packet's bytes off the read buffer and the topic, payload and binary
//! properties of the resulting packet are `Bytes` slices of them.

mod decode;
mod encode;
mod properties;
mod reader;
pub mod reason;
mod types;
mod varint;

pub use decode::{decode, decode_fixed_header, FixedHeader};
pub use encode::{encode, encoded_len};
pub use types::*;

/// Why bytes could not be decoded into a packet. Each variant maps to the reason code the server answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The packet breaks the wire format (spec 1.5, 2.x): answer 0x81 (v5) or close (v3/v4).
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// Well-formed bytes that break a protocol rule, e.g. a property given twice: 0x82.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The fixed header announces more than the allowed maximum packet size: 0x95, checked before buffering.
    #[error("packet of {size} bytes exceeds the maximum packet size {max}")]
    TooLarge { size: usize, max: usize },
    /// CONNECT with an unknown protocol name or level: CONNACK 0x84 (v5) / 0x01 (v3/v4).
    #[error("unsupported protocol name or level")]
    UnsupportedProtocol,
}

impl DecodeError {
    /// The MQTT 5 reason code a server sends in DISCONNECT (or CONNACK) for this error.
    pub fn reason_code(&self) -> u8 {
        match self {
            DecodeError::Malformed(_) => reason::rc::MALFORMED_PACKET,
            DecodeError::Protocol(_) => reason::rc::PROTOCOL_ERROR,
            DecodeError::TooLarge { .. } => reason::rc::PACKET_TOO_LARGE,
            DecodeError::UnsupportedProtocol => reason::rc::UNSUPPORTED_PROTOCOL_VERSION,
        }
    }
}

/// Why a packet could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("packet needs {0} bytes of remaining length; the maximum is 268435455")]
    TooLong(usize),
    #[error("{0} cannot be sent with this protocol version")]
    NotInVersion(&'static str),
}
