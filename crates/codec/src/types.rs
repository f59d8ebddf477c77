//! Packet types shared by the decoder and the encoder.
//!
//! Topic names, payloads and binary properties are `Bytes` slices of the read buffer: decoding a PUBLISH copies
//! neither its topic nor its payload. UTF-8 strings are validated once, at decode time, and then carried as
//! [`Utf8`], which derefs to `&str` without validating again.

use bytes::Bytes;
use std::fmt;

/// The protocol level from CONNECT: 3 = MQTT 3.1 ("MQIsdp"), 4 = MQTT 3.1.1, 5 = MQTT 5.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProtocolVersion {
    V3 = 3,
    V4 = 4,
    V5 = 5,
}

impl ProtocolVersion {
    pub fn is_v5(self) -> bool {
        self == ProtocolVersion::V5
    }
}

/// Quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    pub fn from_u8(v: u8) -> Option<QoS> {
        match v {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// A UTF-8 string that was validated when it was built (MQTT rules: well-formed UTF-8, no U+0000).
/// Backed by `Bytes`, so cloning it is a reference-count increment.
#[derive(Clone, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Utf8(Bytes);

impl Utf8 {
    /// Validates `b` as an MQTT UTF-8 string: well-formed UTF-8 and no U+0000 [MQTT-1.5.4-1], [MQTT-1.5.4-2].
    pub fn from_bytes(b: Bytes) -> Option<Utf8> {
        let s = std::str::from_utf8(&b).ok()?;
        if s.contains('\0') {
            return None;
        }
        Some(Utf8(b))
    }

    pub fn from_static(s: &'static str) -> Utf8 {
        Utf8(Bytes::from_static(s.as_bytes()))
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor validated the bytes as UTF-8 (from_bytes) or took them from a `str`.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Utf8 {
    fn from(s: &str) -> Utf8 {
        Utf8(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for Utf8 {
    fn from(s: String) -> Utf8 {
        Utf8(Bytes::from(s.into_bytes()))
    }
}

impl std::ops::Deref for Utf8 {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Utf8 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Utf8 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// MQTT 5 properties. One struct for every packet type; the decoder rejects a property that is not allowed in
/// the packet it came in (Malformed Packet), and the encoder writes only the fields that are set.
/// For v3/v4 packets this is always empty.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Properties {
    /// 0x01, PUBLISH / will.
    pub payload_format_indicator: Option<u8>,
    /// 0x02, PUBLISH / will: seconds.
    pub message_expiry_interval: Option<u32>,
    /// 0x03, PUBLISH / will.
    pub content_type: Option<Utf8>,
    /// 0x08, PUBLISH / will.
    pub response_topic: Option<Utf8>,
    /// 0x09, PUBLISH / will.
    pub correlation_data: Option<Bytes>,
    /// 0x0B: PUBLISH may carry several; SUBSCRIBE at most one.
    pub subscription_identifiers: Vec<u32>,
    /// 0x11, CONNECT / CONNACK / DISCONNECT: seconds.
    pub session_expiry_interval: Option<u32>,
    /// 0x12, CONNACK.
    pub assigned_client_identifier: Option<Utf8>,
    /// 0x13, CONNACK: seconds.
    pub server_keep_alive: Option<u16>,
    /// 0x15, CONNECT / CONNACK / AUTH.
    pub authentication_method: Option<Utf8>,
    /// 0x16, CONNECT / CONNACK / AUTH.
    pub authentication_data: Option<Bytes>,
    /// 0x17, CONNECT.
    pub request_problem_information: Option<u8>,
    /// 0x18, will: seconds.
    pub will_delay_interval: Option<u32>,
    /// 0x19, CONNECT.
    pub request_response_information: Option<u8>,
    /// 0x1A, CONNACK.
    pub response_information: Option<Utf8>,
    /// 0x1C, CONNACK / DISCONNECT.
    pub server_reference: Option<Utf8>,
    /// 0x1F, acks / DISCONNECT / AUTH.
    pub reason_string: Option<Utf8>,
    /// 0x21, CONNECT / CONNACK.
    pub receive_maximum: Option<u16>,
    /// 0x22, CONNECT / CONNACK.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23, PUBLISH.
    pub topic_alias: Option<u16>,
    /// 0x24, CONNACK.
    pub maximum_qos: Option<u8>,
    /// 0x25, CONNACK.
    pub retain_available: Option<u8>,
    /// 0x26, every packet that has properties; order is kept and keys may repeat.
    pub user_properties: Vec<(Utf8, Utf8)>,
    /// 0x27, CONNECT / CONNACK.
    pub maximum_packet_size: Option<u32>,
    /// 0x28, CONNACK.
    pub wildcard_subscription_available: Option<u8>,
    /// 0x29, CONNACK.
    pub subscription_identifier_available: Option<u8>,
    /// 0x2A, CONNACK.
    pub shared_subscription_available: Option<u8>,
}

impl Properties {
    pub fn is_empty(&self) -> bool {
        *self == EMPTY_PROPERTIES
    }
}

/// A packet's properties, allocated only when it has any. Most packets have none (every MQTT 3.x packet, most
/// v5 acknowledgements), and a boxed empty `Properties` on each was an allocation and a free of ~400 bytes per
/// packet on the hot path. Reads of an empty one see a shared empty `Properties`; `make_mut` allocates.
#[derive(Clone, Default)]
pub struct Props(Option<Box<Properties>>);

/// Equal when the same properties are set, allocated or not.
impl PartialEq for Props {
    fn eq(&self, other: &Props) -> bool {
        **self == **other
    }
}

impl Eq for Props {}

static EMPTY_PROPERTIES: Properties = Properties {
    payload_format_indicator: None,
    message_expiry_interval: None,
    content_type: None,
    response_topic: None,
    correlation_data: None,
    subscription_identifiers: Vec::new(),
    session_expiry_interval: None,
    assigned_client_identifier: None,
    server_keep_alive: None,
    authentication_method: None,
    authentication_data: None,
    request_problem_information: None,
    will_delay_interval: None,
    request_response_information: None,
    response_information: None,
    server_reference: None,
    reason_string: None,
    receive_maximum: None,
    topic_alias_maximum: None,
    topic_alias: None,
    maximum_qos: None,
    retain_available: None,
    user_properties: Vec::new(),
    maximum_packet_size: None,
    wildcard_subscription_available: None,
    subscription_identifier_available: None,
    shared_subscription_available: None,
};

impl Props {
    /// True when no property is set (cheap when none was ever written).
    pub fn is_empty(&self) -> bool {
        self.0.as_deref().is_none_or(Properties::is_empty)
    }

    /// The properties for writing only if some exist: a change that only clears or takes something out of an
    /// empty set needs no allocation.
    pub fn get_mut(&mut self) -> Option<&mut Properties> {
        self.0.as_deref_mut()
    }

    /// The properties for writing, allocated if there were none: for setting a property. (No `DerefMut`, so
    /// that a write that allocates is visible where it is made: taking or clearing goes through `get_mut`.)
    pub fn make_mut(&mut self) -> &mut Properties {
        self.0.get_or_insert_with(Box::default)
    }

    /// The properties, or `None` when none are set.
    pub fn into_inner(self) -> Option<Box<Properties>> {
        self.0.filter(|p| !p.is_empty())
    }
}

impl From<Properties> for Props {
    fn from(p: Properties) -> Props {
        Props((!p.is_empty()).then(|| Box::new(p)))
    }
}

impl From<Box<Properties>> for Props {
    fn from(p: Box<Properties>) -> Props {
        Props((!p.is_empty()).then_some(p))
    }
}

impl From<Option<Box<Properties>>> for Props {
    fn from(p: Option<Box<Properties>>) -> Props {
        Props(p)
    }
}

impl std::ops::Deref for Props {
    type Target = Properties;
    fn deref(&self) -> &Properties {
        self.0.as_deref().unwrap_or(&EMPTY_PROPERTIES)
    }
}

impl fmt::Debug for Props {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

/// The will message carried in CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    pub topic: Utf8,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Will properties (v5 only).
    pub properties: Props,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub protocol: ProtocolVersion,
    /// v3/v4 "clean session", v5 "clean start".
    pub clean_start: bool,
    pub keep_alive: u16,
    pub client_id: Utf8,
    pub will: Option<LastWill>,
    pub username: Option<Utf8>,
    pub password: Option<Bytes>,
    pub properties: Props,
    /// The private "bridge" protocol levels 0x83 (3.1) and 0x84 (3.1.1) that Mosquitto bridges send by default
    /// (`try_private true`): the protocol level with bit 7 set. The broker then treats the client's
    /// subscriptions as no-local and retain-as-published, so bridge loops do not form.
    pub bridge: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    /// v5 reason code; for v3/v4 the return code (0..=5). The encoder writes the byte as given.
    pub reason_code: u8,
    pub properties: Props,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty when a v5 PUBLISH uses a topic alias alone.
    pub topic: Utf8,
    /// Present only for QoS 1 and 2.
    pub packet_id: Option<u16>,
    pub properties: Props,
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubResp {
    pub packet_id: u16,
    /// 0x00 = success. For v3/v4 always 0 (not on the wire).
    pub reason_code: u8,
    pub properties: Props,
}

impl PubResp {
    pub fn new(packet_id: u16) -> PubResp {
        PubResp { packet_id, reason_code: 0, properties: Default::default() }
    }
}

/// Subscription options byte of SUBSCRIBE (v3/v4 use only the QoS bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// 0 = send retained at subscribe, 1 = only if the subscription is new, 2 = never.
    pub retain_handling: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: u16,
    pub properties: Props,
    /// At least one entry [MQTT-3.8.3-3].
    pub filters: Vec<(Utf8, SubscriptionOptions)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: u16,
    pub properties: Props,
    /// One per filter: granted QoS (0..=2) or a failure code (0x80 for v3/v4; v5 reason codes).
    pub reason_codes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    pub properties: Props,
    pub filters: Vec<Utf8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: u16,
    pub properties: Props,
    /// v5 only (empty for v3/v4, which carry no payload).
    pub reason_codes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    /// v5 only; 0x00 normal disconnection.
    pub reason_code: u8,
    pub properties: Props,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    pub reason_code: u8,
    pub properties: Props,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PubResp),
    PubRec(PubResp),
    PubRel(PubResp),
    PubComp(PubResp),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

impl Packet {
    /// The name used in logs and error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

#[cfg(test)]
mod props_tests {
    use super::*;

    #[test]
    fn empty_props_read_as_empty_and_allocate_only_when_written() {
        let mut p = Props::default();
        assert!(p.is_empty());
        assert!(p.topic_alias.is_none(), "reads see the shared empty set");
        assert!(p.get_mut().is_none(), "taking from empty properties finds nothing to allocate");
        assert!(p.clone().into_inner().is_none());
        p.make_mut().topic_alias = Some(3);
        assert_eq!(p.topic_alias, Some(3));
        assert!(!p.is_empty());
        // Equal when the same properties are set, allocated or not.
        let mut cleared = p.clone();
        cleared.get_mut().map(|q| q.topic_alias.take());
        assert_eq!(cleared, Props::default());
        assert!(cleared.into_inner().is_none(), "an allocated but empty set reads as none");
    }
}
