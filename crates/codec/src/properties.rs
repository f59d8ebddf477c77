//! MQTT 5 properties (spec 2.2.2): which packet may carry which, decoding with the duplicate and value checks,
//! and encoding. Decoding and encoding use the same [`Scope`] table, so the encoder never writes a property the
//! decoder on the other side has to reject.

use crate::reader::Reader;
use crate::{varint, DecodeError, EncodeError, Properties, Utf8};
use bytes::{BufMut, Bytes, BytesMut};

const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
const CONTENT_TYPE: u8 = 0x03;
const RESPONSE_TOPIC: u8 = 0x08;
const CORRELATION_DATA: u8 = 0x09;
const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
const SERVER_KEEP_ALIVE: u8 = 0x13;
const AUTHENTICATION_METHOD: u8 = 0x15;
const AUTHENTICATION_DATA: u8 = 0x16;
const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
const WILL_DELAY_INTERVAL: u8 = 0x18;
const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
const RESPONSE_INFORMATION: u8 = 0x1A;
const SERVER_REFERENCE: u8 = 0x1C;
const REASON_STRING: u8 = 0x1F;
const RECEIVE_MAXIMUM: u8 = 0x21;
const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
const TOPIC_ALIAS: u8 = 0x23;
const MAXIMUM_QOS: u8 = 0x24;
const RETAIN_AVAILABLE: u8 = 0x25;
const USER_PROPERTY: u8 = 0x26;
const MAXIMUM_PACKET_SIZE: u8 = 0x27;
const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

/// The properties one packet (or the will) may carry, per spec table 2-4, as bit sets over the property ids
/// (all ids are below 64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scope {
    allowed: u64,
    /// Ids that may appear more than once: User Property everywhere, Subscription Identifier in PUBLISH.
    repeatable: u64,
}

const fn bits(ids: &[u8]) -> u64 {
    let mut mask = 0u64;
    let mut i = 0;
    while i < ids.len() {
        mask |= 1 << ids[i];
        i += 1;
    }
    mask
}

impl Scope {
    const fn new(ids: &[u8]) -> Scope {
        Scope { allowed: bits(ids) | bits(&[USER_PROPERTY]), repeatable: bits(&[USER_PROPERTY]) }
    }

    pub(crate) const CONNECT: Scope = Scope::new(&[
        SESSION_EXPIRY_INTERVAL,
        AUTHENTICATION_METHOD,
        AUTHENTICATION_DATA,
        REQUEST_PROBLEM_INFORMATION,
        REQUEST_RESPONSE_INFORMATION,
        RECEIVE_MAXIMUM,
        TOPIC_ALIAS_MAXIMUM,
        MAXIMUM_PACKET_SIZE,
    ]);
    pub(crate) const WILL: Scope = Scope::new(&[
        PAYLOAD_FORMAT_INDICATOR,
        MESSAGE_EXPIRY_INTERVAL,
        CONTENT_TYPE,
        RESPONSE_TOPIC,
        CORRELATION_DATA,
        WILL_DELAY_INTERVAL,
    ]);
    pub(crate) const CONNACK: Scope = Scope::new(&[
        SESSION_EXPIRY_INTERVAL,
        ASSIGNED_CLIENT_IDENTIFIER,
        SERVER_KEEP_ALIVE,
        AUTHENTICATION_METHOD,
        AUTHENTICATION_DATA,
        RESPONSE_INFORMATION,
        SERVER_REFERENCE,
        REASON_STRING,
        RECEIVE_MAXIMUM,
        TOPIC_ALIAS_MAXIMUM,
        MAXIMUM_QOS,
        RETAIN_AVAILABLE,
        MAXIMUM_PACKET_SIZE,
        WILDCARD_SUBSCRIPTION_AVAILABLE,
        SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        SHARED_SUBSCRIPTION_AVAILABLE,
    ]);
    pub(crate) const PUBLISH: Scope = Scope {
        repeatable: Scope::new(&[]).repeatable | bits(&[SUBSCRIPTION_IDENTIFIER]),
        ..Scope::new(&[
            PAYLOAD_FORMAT_INDICATOR,
            MESSAGE_EXPIRY_INTERVAL,
            CONTENT_TYPE,
            RESPONSE_TOPIC,
            CORRELATION_DATA,
            SUBSCRIPTION_IDENTIFIER,
            TOPIC_ALIAS,
        ])
    };
    /// PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK.
    pub(crate) const ACK: Scope = Scope::new(&[REASON_STRING]);
    pub(crate) const SUBSCRIBE: Scope = Scope::new(&[SUBSCRIPTION_IDENTIFIER]);
    pub(crate) const UNSUBSCRIBE: Scope = Scope::new(&[]);
    pub(crate) const DISCONNECT: Scope = Scope::new(&[SESSION_EXPIRY_INTERVAL, SERVER_REFERENCE, REASON_STRING]);
    pub(crate) const AUTH: Scope = Scope::new(&[AUTHENTICATION_METHOD, AUTHENTICATION_DATA, REASON_STRING]);

    fn allows(self, id: u8) -> bool {
        id < 64 && self.allowed & (1 << id) != 0
    }

    fn repeats(self, id: u8) -> bool {
        id < 64 && self.repeatable & (1 << id) != 0
    }
}

/// Reads a property length and that many bytes of properties.
pub(crate) fn decode(r: &mut Reader, scope: Scope) -> Result<Properties, DecodeError> {
    let len = r.varint()?;
    if len > r.remaining() {
        return Err(DecodeError::Malformed("property length exceeds the packet"));
    }
    let mut r = Reader::new(r.take(len)?);
    let mut props = Properties::default();
    let mut seen = 0u64;
    while !r.is_empty() {
        let id = match u8::try_from(r.varint()?) {
            Ok(id) if scope.allows(id) => id,
            _ => return Err(DecodeError::Malformed("property not allowed in this packet")),
        };
        if seen & (1 << id) != 0 && !scope.repeats(id) {
            return Err(DecodeError::Protocol("property given twice"));
        }
        seen |= 1 << id;
        read_one(&mut r, id, &mut props)?;
    }
    Ok(props)
}

fn flag(r: &mut Reader, what: &'static str) -> Result<u8, DecodeError> {
    match r.u8()? {
        v @ (0 | 1) => Ok(v),
        _ => Err(DecodeError::Protocol(what)),
    }
}

fn read_one(r: &mut Reader, id: u8, p: &mut Properties) -> Result<(), DecodeError> {
    match id {
        PAYLOAD_FORMAT_INDICATOR => {
            p.payload_format_indicator = Some(flag(r, "payload format indicator must be 0 or 1")?)
        }
        MESSAGE_EXPIRY_INTERVAL => p.message_expiry_interval = Some(r.u32()?),
        CONTENT_TYPE => p.content_type = Some(r.utf8()?),
        RESPONSE_TOPIC => p.response_topic = Some(r.utf8()?),
        CORRELATION_DATA => p.correlation_data = Some(r.binary()?),
        SUBSCRIPTION_IDENTIFIER => match r.varint()? {
            0 => return Err(DecodeError::Protocol("subscription identifier 0")),
            // A varint of at most four bytes is below 2^28, so it always fits.
            v => p.subscription_identifiers.push(v as u32),
        },
        SESSION_EXPIRY_INTERVAL => p.session_expiry_interval = Some(r.u32()?),
        ASSIGNED_CLIENT_IDENTIFIER => p.assigned_client_identifier = Some(r.utf8()?),
        SERVER_KEEP_ALIVE => p.server_keep_alive = Some(r.u16()?),
        AUTHENTICATION_METHOD => p.authentication_method = Some(r.utf8()?),
        AUTHENTICATION_DATA => p.authentication_data = Some(r.binary()?),
        REQUEST_PROBLEM_INFORMATION => {
            p.request_problem_information = Some(flag(r, "request problem information must be 0 or 1")?)
        }
        WILL_DELAY_INTERVAL => p.will_delay_interval = Some(r.u32()?),
        REQUEST_RESPONSE_INFORMATION => {
            p.request_response_information = Some(flag(r, "request response information must be 0 or 1")?)
        }
        RESPONSE_INFORMATION => p.response_information = Some(r.utf8()?),
        SERVER_REFERENCE => p.server_reference = Some(r.utf8()?),
        REASON_STRING => p.reason_string = Some(r.utf8()?),
        RECEIVE_MAXIMUM => match r.u16()? {
            0 => return Err(DecodeError::Protocol("receive maximum 0")),
            v => p.receive_maximum = Some(v),
        },
        TOPIC_ALIAS_MAXIMUM => p.topic_alias_maximum = Some(r.u16()?),
        TOPIC_ALIAS => p.topic_alias = Some(r.u16()?),
        MAXIMUM_QOS => p.maximum_qos = Some(flag(r, "maximum QoS must be 0 or 1")?),
        RETAIN_AVAILABLE => p.retain_available = Some(flag(r, "retain available must be 0 or 1")?),
        USER_PROPERTY => {
            let key = r.utf8()?;
            let value = r.utf8()?;
            p.user_properties.push((key, value));
        }
        MAXIMUM_PACKET_SIZE => match r.u32()? {
            0 => return Err(DecodeError::Protocol("maximum packet size 0")),
            v => p.maximum_packet_size = Some(v),
        },
        WILDCARD_SUBSCRIPTION_AVAILABLE => {
            p.wildcard_subscription_available = Some(flag(r, "wildcard subscription available must be 0 or 1")?)
        }
        SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
            p.subscription_identifier_available = Some(flag(r, "subscription identifier available must be 0 or 1")?)
        }
        SHARED_SUBSCRIPTION_AVAILABLE => {
            p.shared_subscription_available = Some(flag(r, "shared subscription available must be 0 or 1")?)
        }
        // `Scope::allows` admits only the ids above.
        _ => return Err(DecodeError::Malformed("property not allowed in this packet")),
    }
    Ok(())
}

/// One property on its way to the wire.
enum Prop<'a> {
    Byte(u8, u8),
    Two(u8, u16),
    Four(u8, u32),
    Var(u8, u32),
    Str(u8, &'a Utf8),
    Bin(u8, &'a Bytes),
    Pair(&'a Utf8, &'a Utf8),
}

/// Length of a two-byte-length-prefixed field, or `TooLong` when its length does not fit the prefix.
pub(crate) fn field_len(len: usize) -> Result<usize, EncodeError> {
    if len > usize::from(u16::MAX) {
        return Err(EncodeError::TooLong(len));
    }
    Ok(2 + len)
}

impl Prop<'_> {
    /// Id byte included.
    fn len(&self) -> Result<usize, EncodeError> {
        Ok(1 + match self {
            Prop::Byte(..) => 1,
            Prop::Two(..) => 2,
            Prop::Four(..) => 4,
            Prop::Var(_, v) => varint::len(*v as usize),
            Prop::Str(_, s) => field_len(s.len())?,
            Prop::Bin(_, b) => field_len(b.len())?,
            Prop::Pair(k, v) => field_len(k.len())? + field_len(v.len())?,
        })
    }

    fn write(&self, buf: &mut BytesMut) {
        match self {
            Prop::Byte(id, v) => {
                buf.put_u8(*id);
                buf.put_u8(*v);
            }
            Prop::Two(id, v) => {
                buf.put_u8(*id);
                buf.put_u16(*v);
            }
            Prop::Four(id, v) => {
                buf.put_u8(*id);
                buf.put_u32(*v);
            }
            Prop::Var(id, v) => {
                buf.put_u8(*id);
                varint::write(buf, *v as usize);
            }
            Prop::Str(id, s) => {
                buf.put_u8(*id);
                put_field(buf, s.as_bytes());
            }
            Prop::Bin(id, b) => {
                buf.put_u8(*id);
                put_field(buf, b);
            }
            Prop::Pair(k, v) => {
                buf.put_u8(USER_PROPERTY);
                put_field(buf, k.as_bytes());
                put_field(buf, v.as_bytes());
            }
        }
    }
}

/// Writes a two-byte length and the bytes; callers checked the length with [`field_len`].
pub(crate) fn put_field(buf: &mut BytesMut, b: &[u8]) {
    buf.put_u16(b.len() as u16);
    buf.put_slice(b);
}

/// Calls `f` with every property of `p` that `scope` allows, in id order. Values that cannot be represented
/// (a subscription identifier above 2^28 - 1) and a second subscription identifier in a SUBSCRIBE are left out
/// so the output always decodes.
fn visit<'a>(p: &'a Properties, scope: Scope, mut f: impl FnMut(Prop<'a>)) {
    let mut emit = |id: u8, prop: Prop<'a>| {
        if scope.allows(id) {
            f(prop)
        }
    };
    let id = PAYLOAD_FORMAT_INDICATOR;
    if let Some(v) = p.payload_format_indicator {
        emit(id, Prop::Byte(id, v));
    }
    let id = MESSAGE_EXPIRY_INTERVAL;
    if let Some(v) = p.message_expiry_interval {
        emit(id, Prop::Four(id, v));
    }
    let id = CONTENT_TYPE;
    if let Some(v) = &p.content_type {
        emit(id, Prop::Str(id, v));
    }
    let id = RESPONSE_TOPIC;
    if let Some(v) = &p.response_topic {
        emit(id, Prop::Str(id, v));
    }
    let id = CORRELATION_DATA;
    if let Some(v) = &p.correlation_data {
        emit(id, Prop::Bin(id, v));
    }
    let id = SUBSCRIPTION_IDENTIFIER;
    let most = if scope.repeats(id) { usize::MAX } else { 1 };
    for &v in p.subscription_identifiers.iter().filter(|&&v| v as usize <= varint::MAX).take(most) {
        emit(id, Prop::Var(id, v));
    }
    let id = SESSION_EXPIRY_INTERVAL;
    if let Some(v) = p.session_expiry_interval {
        emit(id, Prop::Four(id, v));
    }
    let id = ASSIGNED_CLIENT_IDENTIFIER;
    if let Some(v) = &p.assigned_client_identifier {
        emit(id, Prop::Str(id, v));
    }
    let id = SERVER_KEEP_ALIVE;
    if let Some(v) = p.server_keep_alive {
        emit(id, Prop::Two(id, v));
    }
    let id = AUTHENTICATION_METHOD;
    if let Some(v) = &p.authentication_method {
        emit(id, Prop::Str(id, v));
    }
    let id = AUTHENTICATION_DATA;
    if let Some(v) = &p.authentication_data {
        emit(id, Prop::Bin(id, v));
    }
    let id = REQUEST_PROBLEM_INFORMATION;
    if let Some(v) = p.request_problem_information {
        emit(id, Prop::Byte(id, v));
    }
    let id = WILL_DELAY_INTERVAL;
    if let Some(v) = p.will_delay_interval {
        emit(id, Prop::Four(id, v));
    }
    let id = REQUEST_RESPONSE_INFORMATION;
    if let Some(v) = p.request_response_information {
        emit(id, Prop::Byte(id, v));
    }
    let id = RESPONSE_INFORMATION;
    if let Some(v) = &p.response_information {
        emit(id, Prop::Str(id, v));
    }
    let id = SERVER_REFERENCE;
    if let Some(v) = &p.server_reference {
        emit(id, Prop::Str(id, v));
    }
    let id = REASON_STRING;
    if let Some(v) = &p.reason_string {
        emit(id, Prop::Str(id, v));
    }
    let id = RECEIVE_MAXIMUM;
    if let Some(v) = p.receive_maximum {
        emit(id, Prop::Two(id, v));
    }
    let id = TOPIC_ALIAS_MAXIMUM;
    if let Some(v) = p.topic_alias_maximum {
        emit(id, Prop::Two(id, v));
    }
    let id = TOPIC_ALIAS;
    if let Some(v) = p.topic_alias {
        emit(id, Prop::Two(id, v));
    }
    let id = MAXIMUM_QOS;
    if let Some(v) = p.maximum_qos {
        emit(id, Prop::Byte(id, v));
    }
    let id = RETAIN_AVAILABLE;
    if let Some(v) = p.retain_available {
        emit(id, Prop::Byte(id, v));
    }
    for (k, v) in &p.user_properties {
        emit(USER_PROPERTY, Prop::Pair(k, v));
    }
    let id = MAXIMUM_PACKET_SIZE;
    if let Some(v) = p.maximum_packet_size {
        emit(id, Prop::Four(id, v));
    }
    let id = WILDCARD_SUBSCRIPTION_AVAILABLE;
    if let Some(v) = p.wildcard_subscription_available {
        emit(id, Prop::Byte(id, v));
    }
    let id = SUBSCRIPTION_IDENTIFIER_AVAILABLE;
    if let Some(v) = p.subscription_identifier_available {
        emit(id, Prop::Byte(id, v));
    }
    let id = SHARED_SUBSCRIPTION_AVAILABLE;
    if let Some(v) = p.shared_subscription_available {
        emit(id, Prop::Byte(id, v));
    }
}

/// Bytes the properties of `p` allowed in `scope` take, without the property length in front of them.
pub(crate) fn content_len(p: &Properties, scope: Scope) -> Result<usize, EncodeError> {
    let mut total = 0usize;
    let mut err = None;
    visit(p, scope, |prop| match prop.len() {
        Ok(n) => total += n,
        Err(e) => {
            err.get_or_insert(e);
        }
    });
    match err {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// Writes the property length `content_len` (from [`content_len`]) and the properties.
pub(crate) fn write(buf: &mut BytesMut, p: &Properties, scope: Scope, content_len: usize) {
    varint::write(buf, content_len);
    visit(p, scope, |prop| prop.write(buf));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_bytes(bytes: &[u8], scope: Scope) -> Result<Properties, DecodeError> {
        let mut r = Reader::new(Bytes::copy_from_slice(bytes));
        let props = decode(&mut r, scope)?;
        r.finish()?;
        Ok(props)
    }

    #[test]
    fn scopes_match_table_2_4() {
        assert!(Scope::PUBLISH.allows(TOPIC_ALIAS));
        assert!(!Scope::PUBLISH.allows(SESSION_EXPIRY_INTERVAL));
        assert!(Scope::PUBLISH.repeats(SUBSCRIPTION_IDENTIFIER));
        assert!(!Scope::SUBSCRIBE.repeats(SUBSCRIPTION_IDENTIFIER));
        assert!(Scope::WILL.allows(WILL_DELAY_INTERVAL));
        assert!(!Scope::CONNECT.allows(WILL_DELAY_INTERVAL));
        assert!(Scope::UNSUBSCRIBE.allows(USER_PROPERTY));
        assert!(!Scope::UNSUBSCRIBE.allows(REASON_STRING));
        assert!(!Scope::CONNACK.allows(0x00));
        assert!(!Scope::CONNACK.allows(0x2B));
        assert!(!Scope::CONNACK.allows(200));
    }

    #[test]
    fn empty_properties() {
        assert_eq!(decode_bytes(&[0x00], Scope::PUBLISH), Ok(Properties::default()));
    }

    #[test]
    fn user_properties_keep_order_and_repeat() {
        let p = decode_bytes(&[14, 0x26, 0, 1, b'k', 0, 1, b'a', 0x26, 0, 1, b'k', 0, 1, b'b'], Scope::ACK).unwrap();
        let pairs: Vec<(&str, &str)> = p.user_properties.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(pairs, [("k", "a"), ("k", "b")]);
    }

    #[test]
    fn several_subscription_identifiers_in_publish() {
        let p = decode_bytes(&[4, 0x0B, 1, 0x0B, 2], Scope::PUBLISH).unwrap();
        assert_eq!(p.subscription_identifiers, [1, 2]);
        // [MQTT-3.8.2.1.2] SUBSCRIBE carries at most one Subscription Identifier
        assert!(matches!(decode_bytes(&[4, 0x0B, 1, 0x0B, 2], Scope::SUBSCRIBE), Err(DecodeError::Protocol(_))));
    }

    #[test]
    fn value_checks_are_protocol_errors() {
        // Spec 3.3.2.3.2: payload format indicator is 0 or 1
        assert!(matches!(decode_bytes(&[2, 0x01, 2], Scope::PUBLISH), Err(DecodeError::Protocol(_))));
        // Spec 3.1.2.11.3: receive maximum 0 is a protocol error
        assert!(matches!(decode_bytes(&[3, 0x21, 0, 0], Scope::CONNECT), Err(DecodeError::Protocol(_))));
        // Spec 3.1.2.11.4: maximum packet size 0 is a protocol error
        assert!(matches!(decode_bytes(&[5, 0x27, 0, 0, 0, 0], Scope::CONNECT), Err(DecodeError::Protocol(_))));
        // Spec 3.8.2.1.2: subscription identifier 0 is a protocol error
        assert!(matches!(decode_bytes(&[2, 0x0B, 0], Scope::SUBSCRIBE), Err(DecodeError::Protocol(_))));
        // Spec 3.2.2.3.4: maximum QoS is 0 or 1
        assert!(matches!(decode_bytes(&[2, 0x24, 2], Scope::CONNACK), Err(DecodeError::Protocol(_))));
        // Spec 3.1.2.11.6 / 3.1.2.11.7: request problem / response information are 0 or 1
        assert!(matches!(decode_bytes(&[2, 0x17, 2], Scope::CONNECT), Err(DecodeError::Protocol(_))));
        assert!(matches!(decode_bytes(&[2, 0x19, 2], Scope::CONNECT), Err(DecodeError::Protocol(_))));
        for id in [0x25, 0x28, 0x29, 0x2A] {
            assert!(matches!(decode_bytes(&[2, id, 2], Scope::CONNACK), Err(DecodeError::Protocol(_))), "{id:#x}");
        }
    }

    #[test]
    fn property_length_past_the_end_is_malformed() {
        assert!(matches!(decode_bytes(&[5, 0x23, 0, 1], Scope::PUBLISH), Err(DecodeError::Malformed(_))));
        // A value that runs past the property length, even though the packet goes on.
        let mut r = Reader::new(Bytes::from_static(&[2, 0x23, 0, 1]));
        assert!(matches!(decode(&mut r, Scope::PUBLISH), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn unknown_property_is_malformed() {
        assert_eq!(
            decode_bytes(&[2, 0x7F, 0], Scope::CONNACK),
            Err(DecodeError::Malformed("property not allowed in this packet"))
        );
        // A multi-byte id far above every real one.
        assert_eq!(
            decode_bytes(&[3, 0x80, 0x01, 0], Scope::CONNACK),
            Err(DecodeError::Malformed("property not allowed in this packet"))
        );
    }

    #[test]
    fn encoder_leaves_out_what_the_packet_may_not_carry() {
        let p = Properties {
            topic_alias: Some(3),
            reason_string: Some(Utf8::from_static("no")),
            subscription_identifiers: vec![1, 2, u32::MAX],
            ..Properties::default()
        };
        let n = content_len(&p, Scope::SUBSCRIBE).unwrap();
        let mut buf = BytesMut::new();
        write(&mut buf, &p, Scope::SUBSCRIBE, n);
        assert_eq!(&buf[..], &[2, 0x0B, 1]);
        let n = content_len(&p, Scope::PUBLISH).unwrap();
        let mut buf = BytesMut::new();
        write(&mut buf, &p, Scope::PUBLISH, n);
        assert_eq!(&buf[..], &[7, 0x0B, 1, 0x0B, 2, 0x23, 0, 3]);
    }

    #[test]
    fn overlong_string_cannot_be_encoded() {
        let p = Properties { reason_string: Some(Utf8::from("x".repeat(65_536))), ..Properties::default() };
        assert_eq!(content_len(&p, Scope::ACK), Err(EncodeError::TooLong(65_536)));
    }
}
