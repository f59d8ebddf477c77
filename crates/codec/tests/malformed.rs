//! Hand-written byte vectors for every rule the decoder enforces, each citing the spec statement it checks.

use bytes::BytesMut;
use halyard_codec::*;

use ProtocolVersion::{V3, V4, V5};

const MAX: usize = 1 << 20;

/// `first` byte, a one-byte remaining length, then `body`.
fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    assert!(body.len() < 128, "test helper writes a one-byte remaining length");
    let mut v = vec![first, body.len() as u8];
    v.extend_from_slice(body);
    v
}

fn decode_all(bytes: &[u8], v: ProtocolVersion) -> Result<Option<Packet>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    decode(&mut buf, v, MAX)
}

fn malformed(bytes: &[u8], v: ProtocolVersion) -> bool {
    matches!(decode_all(bytes, v), Err(DecodeError::Malformed(_)))
}

fn protocol_error(bytes: &[u8], v: ProtocolVersion) -> bool {
    matches!(decode_all(bytes, v), Err(DecodeError::Protocol(_)))
}

/// CONNECT body for "MQTT" level `level` with `flags`, keep alive 60 and `payload` (after properties, if any).
fn connect_body(level: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 4, b'M', b'Q', b'T', b'T', level, flags, 0, 60];
    if level == 5 {
        b.push(0); // property length
    }
    b.extend_from_slice(payload);
    b
}

// --- fixed header ---

#[test]
fn remaining_length_of_five_bytes_is_malformed() {
    // Spec 2.2.3 / 1.5.5: the remaining length is at most four bytes.
    assert!(malformed(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], V4));
    // Known as soon as the fourth byte still continues.
    assert!(malformed(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF], V4));
    assert_eq!(
        decode_fixed_header(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF]),
        Err(DecodeError::Malformed("variable byte integer longer than 4 bytes"))
    );
}

#[test]
fn remaining_length_not_in_shortest_form_is_malformed() {
    // [MQTT-1.5.5-1] the encoded value MUST use the minimum number of bytes necessary
    assert!(malformed(&[0xC0, 0x80, 0x00], V4));
}

#[test]
fn fixed_header_peek_consumes_nothing() {
    assert_eq!(decode_fixed_header(&[]), Ok(None));
    assert_eq!(decode_fixed_header(&[0x30]), Ok(None));
    assert_eq!(decode_fixed_header(&[0x30, 0x80]), Ok(None));
    assert_eq!(
        decode_fixed_header(&[0x30, 0xFF, 0x7F, 9]),
        Ok(Some(FixedHeader { first_byte: 0x30, remaining_length: 16_383, header_len: 3 }))
    );
}

#[test]
fn incomplete_packet_is_none_and_consumes_nothing() {
    let mut buf = BytesMut::from(&[0x32, 10, 0, 3, b'a'][..]);
    assert_eq!(decode(&mut buf, V4, MAX), Ok(None));
    assert_eq!(&buf[..], &[0x32, 10, 0, 3, b'a']);
}

#[test]
fn oversize_packet_is_refused_from_the_fixed_header_alone() {
    // Spec 3.1.2.11.4: a packet above the Maximum Packet Size is refused; we check before buffering the body.
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F][..]);
    assert_eq!(decode(&mut buf, V5, MAX), Err(DecodeError::TooLarge { size: 268_435_460, max: MAX }));
    // The limit counts the fixed header: 2 + 3 bytes fit in 5, not in 4.
    let ping_like = [0xC0, 0x00];
    assert_eq!(decode(&mut BytesMut::from(&ping_like[..]), V4, 2), Ok(Some(Packet::PingReq)));
    assert_eq!(decode(&mut BytesMut::from(&ping_like[..]), V4, 1), Err(DecodeError::TooLarge { size: 2, max: 1 }));
}

#[test]
fn reserved_packet_type_0_is_malformed() {
    // Spec 2.1.2: packet type 0 is reserved.
    for v in [V3, V4, V5] {
        assert!(malformed(&[0x00, 0x00], v));
    }
}

#[test]
fn auth_packet_type_before_mqtt5_is_malformed() {
    // Spec 3.1.1 table 2.1: type 15 is reserved in 3.1.1; AUTH exists only in 5.0.
    assert!(malformed(&[0xF0, 0x00], V3));
    assert!(malformed(&[0xF0, 0x00], V4));
    assert_eq!(decode_all(&[0xF0, 0x00], V5), Ok(Some(Packet::Auth(Auth::default()))));
}

#[test]
fn reserved_flag_bits_are_malformed() {
    // [MQTT-2.2.2-1], [MQTT-2.2.2-2] flags of PUBREL, SUBSCRIBE and UNSUBSCRIBE are 0010, all others 0000.
    assert!(malformed(&frame(0x60, &[0, 1]), V4)); // PUBREL 0000
    assert!(malformed(&frame(0x63, &[0, 1]), V4)); // PUBREL 0011
    assert!(malformed(&frame(0x80, &[0, 1, 0, 1, b'a', 0]), V4)); // SUBSCRIBE 0000
    assert!(malformed(&frame(0xA0, &[0, 1, 0, 1, b'a']), V4)); // UNSUBSCRIBE 0000
    assert!(malformed(&frame(0x42, &[0, 1]), V4)); // PUBACK 0010
    assert!(malformed(&frame(0x11, &connect_body(4, 0x02, &[0, 1, b'c'])), V4)); // CONNECT 0001
    assert!(malformed(&[0xC1, 0x00], V4)); // PINGREQ 0001
    assert!(malformed(&[0xE8, 0x00], V5)); // DISCONNECT 1000
    assert!(malformed(&[0xF1, 0x00], V5)); // AUTH 0001
                                           // The correct flags decode.
    assert!(matches!(decode_all(&frame(0x62, &[0, 1]), V4), Ok(Some(Packet::PubRel(_)))));
}

// --- CONNECT ---

#[test]
fn unknown_protocol_name_or_level_is_unsupported() {
    // [MQTT-3.1.2-1] protocol name; [MQTT-3.1.2-2] unsupported level: CONNACK 0x01 / 0x84.
    let mut mqtt6 = connect_body(4, 0x02, &[0, 1, b'c']);
    mqtt6[6] = 6;
    assert_eq!(decode_all(&frame(0x10, &mqtt6), V4), Err(DecodeError::UnsupportedProtocol));
    let mqisdp4 = [&[0, 6][..], b"MQIsdp", &[4, 0x02, 0, 60, 0, 1, b'c']].concat();
    assert_eq!(decode_all(&frame(0x10, &mqisdp4), V4), Err(DecodeError::UnsupportedProtocol));
    let mqtt3 = connect_body(3, 0x02, &[0, 1, b'c']);
    assert_eq!(decode_all(&frame(0x10, &mqtt3), V4), Err(DecodeError::UnsupportedProtocol));
    let http = [&[0, 4][..], b"HTTP", &[4, 0x02, 0, 60, 0, 1, b'c']].concat();
    assert_eq!(decode_all(&frame(0x10, &http), V5), Err(DecodeError::UnsupportedProtocol));
    // Bytes that end before the level are malformed, not an unknown protocol.
    assert!(malformed(&frame(0x10, &[0, 4, b'M', b'Q', b'T', b'T']), V4));
    assert!(malformed(&frame(0x10, &[0, 9, b'M', b'Q']), V4));
}

#[test]
fn private_bridge_levels_decode_as_bridges() {
    // Mosquitto bridges send 0x83 (MQIsdp) and 0x84 (MQTT) by default (`try_private true`); EMQX accepts them.
    let mqisdp = [&[0, 6][..], b"MQIsdp", &[0x83, 0x02, 0, 60, 0, 1, b'c']].concat();
    let Ok(Some(Packet::Connect(c))) = decode_all(&frame(0x10, &mqisdp), V4) else { panic!("MQIsdp 0x83") };
    assert_eq!((c.protocol, c.bridge), (V3, true));
    let Ok(Some(Packet::Connect(c))) = decode_all(&frame(0x10, &connect_body(0x84, 0x02, &[0, 1, b'c'])), V4) else {
        panic!("MQTT 0x84")
    };
    assert_eq!((c.protocol, c.bridge), (V4, true));
    // Only 3.1 and 3.1.1 have a bridge level; the encoder writes the bit back.
    assert_eq!(
        decode_all(&frame(0x10, &connect_body(0x85, 0x02, &[0, 1, b'c'])), V4),
        Err(DecodeError::UnsupportedProtocol)
    );
    let mut again = bytes::BytesMut::new();
    halyard_codec::encode(&Packet::Connect(c), V4, &mut again).expect("encode");
    assert_eq!(again[8], 0x84);
}

#[test]
fn mqtt31_accepts_dup_on_pubrel_subscribe_unsubscribe() {
    // MQTT 3.1 section 2.1: PUBREL, SUBSCRIBE and UNSUBSCRIBE carry QoS 1 and may carry DUP when re-sent.
    assert!(matches!(decode_all(&frame(0x6A, &[0, 1]), V3), Ok(Some(Packet::PubRel(_)))));
    assert!(matches!(decode_all(&frame(0x8A, &[0, 1, 0, 1, b'a', 1]), V3), Ok(Some(Packet::Subscribe(_)))));
    assert!(matches!(decode_all(&frame(0xAA, &[0, 1, 0, 1, b'a']), V3), Ok(Some(Packet::Unsubscribe(_)))));
    // 3.1.1 fixed those flags at 0010 [MQTT-3.6.1-1], [MQTT-3.8.1-1], [MQTT-3.10.1-1].
    for first in [0x6A, 0x8A, 0xAA] {
        assert!(malformed(&frame(first, &[0, 1, 0, 1, b'a', 1]), V4), "{first:#x} on 3.1.1");
    }
}

#[test]
fn known_protocols_decode() {
    let mqisdp = [&[0, 6][..], b"MQIsdp", &[3, 0x02, 0, 60, 0, 1, b'c']].concat();
    let Ok(Some(Packet::Connect(c))) = decode_all(&frame(0x10, &mqisdp), V5) else { panic!("MQIsdp 3") };
    assert_eq!((c.protocol, c.clean_start, c.keep_alive, c.client_id.as_str()), (V3, true, 60, "c"));
    let Ok(Some(Packet::Connect(c))) = decode_all(&frame(0x10, &connect_body(5, 0, &[0, 0])), V4) else {
        panic!("MQTT 5")
    };
    assert_eq!((c.protocol, c.clean_start, c.client_id.as_str()), (V5, false, ""));
}

#[test]
fn connect_reserved_flag_is_malformed() {
    // [MQTT-3.1.2-3] the reserved flag in CONNECT MUST be 0
    assert!(malformed(&frame(0x10, &connect_body(4, 0x03, &[0, 1, b'c'])), V4));
    assert!(malformed(&frame(0x10, &connect_body(5, 0x03, &[0, 1, b'c'])), V5));
}

#[test]
fn will_qos_without_will_flag_is_malformed() {
    // [MQTT-3.1.2-11], [MQTT-3.1.2-13] will flag 0 requires will QoS 0
    assert!(malformed(&frame(0x10, &connect_body(4, 0b0000_1000, &[0, 1, b'c'])), V4));
    assert!(malformed(&frame(0x10, &connect_body(5, 0b0001_0000, &[0, 1, b'c'])), V5));
}

#[test]
fn will_retain_without_will_flag_is_malformed() {
    // [MQTT-3.1.2-15] will flag 0 requires will retain 0
    assert!(malformed(&frame(0x10, &connect_body(4, 0b0010_0000, &[0, 1, b'c'])), V4));
}

#[test]
fn will_qos_3_is_malformed() {
    // [MQTT-3.1.2-14] (3.1.1), [MQTT-3.1.2-12] (5.0) will QoS MUST NOT be 3
    let will = [0, 1, b'c', 0, 1, b'w', 0, 0];
    assert!(malformed(&frame(0x10, &connect_body(4, 0b0001_1100, &will)), V4));
    // The same packet with will QoS 2 decodes.
    let Ok(Some(Packet::Connect(c))) = decode_all(&frame(0x10, &connect_body(4, 0b0001_0100, &will)), V4) else {
        panic!("will QoS 2")
    };
    assert_eq!(c.will.map(|w| (w.qos, w.topic.to_string())), Some((QoS::ExactlyOnce, "w".to_string())));
}

#[test]
fn password_without_user_name_is_malformed_before_mqtt5() {
    // [MQTT-3.1.2-22] if the user name flag is 0 the password flag MUST be 0 (3.1.1); 5.0 allows it.
    let payload = [0, 1, b'c', 0, 2, b'p', b'w'];
    assert!(malformed(&frame(0x10, &connect_body(4, 0x40, &payload)), V4));
    let Ok(Some(Packet::Connect(c))) = decode_all(&frame(0x10, &connect_body(5, 0x40, &payload)), V5) else {
        panic!("v5 password alone")
    };
    assert_eq!((c.username, c.password.as_deref()), (None, Some(&b"pw"[..])));
}

#[test]
fn connect_payload_missing_a_flagged_field_is_malformed() {
    // [MQTT-3.1.2-19] user name flag 1 requires a user name in the payload
    assert!(malformed(&frame(0x10, &connect_body(4, 0x80, &[0, 1, b'c'])), V4));
}

#[test]
fn connect_with_bytes_after_the_payload_is_malformed() {
    // Spec 2.1.4: the remaining length covers exactly the variable header and payload.
    assert!(malformed(&frame(0x10, &connect_body(4, 0x02, &[0, 1, b'c', 0xFF])), V4));
}

#[test]
fn invalid_utf8_in_client_id_is_malformed() {
    // [MQTT-1.5.4-1] ill-formed UTF-8 is malformed
    assert!(malformed(&frame(0x10, &connect_body(4, 0x02, &[0, 1, 0xFF])), V4));
}

// --- PUBLISH ---

#[test]
fn invalid_utf8_in_topic_is_malformed() {
    // [MQTT-1.5.4-1] a UTF-8 encoded string MUST be well-formed; lone continuation byte and a surrogate
    assert!(malformed(&frame(0x30, &[0, 2, b'a', 0x80]), V4));
    assert!(malformed(&frame(0x30, &[0, 3, 0xED, 0xA0, 0x80]), V5));
}

#[test]
fn nul_in_topic_is_malformed() {
    // [MQTT-1.5.4-2] a UTF-8 encoded string MUST NOT include U+0000
    assert!(malformed(&frame(0x30, &[0, 3, b'a', 0, b'b']), V4));
}

#[test]
fn topic_longer_than_the_packet_is_malformed() {
    assert!(malformed(&frame(0x30, &[0, 9, b'a']), V4));
}

#[test]
fn publish_qos_3_is_malformed() {
    // [MQTT-3.3.1-4] a PUBLISH packet MUST NOT have both QoS bits set to 1
    assert!(malformed(&frame(0x36, &[0, 1, b't', 0, 1]), V4));
    assert!(malformed(&frame(0x36, &[0, 1, b't', 0, 1, 0]), V5));
}

#[test]
fn publish_qos_0_with_dup_is_malformed() {
    // [MQTT-3.3.1-2] the DUP flag MUST be set to 0 for all QoS 0 messages
    assert!(malformed(&frame(0x38, &[0, 1, b't']), V4));
}

#[test]
fn publish_decodes_flags_topic_id_and_payload() {
    let Ok(Some(Packet::Publish(p))) = decode_all(&frame(0x3D, &[0, 3, b'a', b'/', b'b', 0, 7, b'h', b'i']), V4) else {
        panic!("PUBLISH")
    };
    assert!(p.dup && p.retain);
    assert_eq!((p.qos, p.topic.as_str(), p.packet_id, &p.payload[..]), (QoS::ExactlyOnce, "a/b", Some(7), &b"hi"[..]));
}

#[test]
fn packet_id_0_is_malformed() {
    // [MQTT-2.2.1-3] packet identifiers are non-zero in PUBLISH QoS > 0, SUBSCRIBE, UNSUBSCRIBE and the acks
    assert!(malformed(&frame(0x32, &[0, 1, b't', 0, 0]), V4));
    assert!(malformed(&frame(0x34, &[0, 1, b't', 0, 0, 0]), V5));
    assert!(malformed(&frame(0x40, &[0, 0]), V4));
    assert!(malformed(&frame(0x50, &[0, 0]), V5));
    assert!(malformed(&frame(0x62, &[0, 0]), V4));
    assert!(malformed(&frame(0x70, &[0, 0]), V4));
    assert!(malformed(&frame(0x82, &[0, 0, 0, 1, b'a', 0]), V4));
    assert!(malformed(&frame(0x90, &[0, 0, 0]), V4));
    assert!(malformed(&frame(0xA2, &[0, 0, 0, 1, b'a']), V4));
    assert!(malformed(&frame(0xB0, &[0, 0]), V4));
}

// --- acks and empty packets ---

#[test]
fn v3_v4_ack_with_extra_bytes_is_malformed() {
    // Spec 3.4.1 (3.1.1): PUBACK remaining length is 2; likewise PUBREC, PUBREL, PUBCOMP, UNSUBACK.
    for first in [0x40, 0x50, 0x62, 0x70, 0xB0] {
        assert!(malformed(&frame(first, &[0, 1, 0]), V4), "{first:#x}");
        assert!(malformed(&frame(first, &[0, 1, 0]), V3), "{first:#x}");
        assert!(malformed(&frame(first, &[0]), V4), "{first:#x}");
    }
}

#[test]
fn ping_and_v4_disconnect_with_a_body_are_malformed() {
    // Spec 3.12.1, 3.13.1, 3.14.1 (3.1.1): remaining length 0
    assert!(malformed(&frame(0xC0, &[0]), V4));
    assert!(malformed(&frame(0xD0, &[0]), V5));
    assert!(malformed(&frame(0xE0, &[0]), V4));
    assert_eq!(decode_all(&[0xE0, 0], V4), Ok(Some(Packet::Disconnect(Disconnect::default()))));
}

#[test]
fn connack_reserved_flags_are_malformed() {
    // [MQTT-3.2.2-1] bits 7-1 of the connect acknowledge flags are reserved and MUST be 0
    assert!(malformed(&frame(0x20, &[0x02, 0]), V4));
    let Ok(Some(Packet::ConnAck(a))) = decode_all(&frame(0x20, &[0x01, 0]), V4) else { panic!("CONNACK") };
    assert!(a.session_present);
}

#[test]
fn v5_ack_with_bytes_after_its_properties_is_malformed() {
    // Spec 3.4.2: the properties end the PUBACK variable header; PUBACK has no payload.
    assert!(malformed(&frame(0x40, &[0, 1, 0x10, 0, 0xFF]), V5));
}

// --- SUBSCRIBE / UNSUBSCRIBE ---

#[test]
fn subscribe_without_filters_is_malformed() {
    // [MQTT-3.8.3-3] the payload MUST contain at least one topic filter and options pair
    assert!(malformed(&frame(0x82, &[0, 1]), V4));
    assert!(malformed(&frame(0x82, &[0, 1, 0]), V5));
}

#[test]
fn subscribe_filter_without_options_is_malformed() {
    assert!(malformed(&frame(0x82, &[0, 1, 0, 1, b'a']), V4));
}

#[test]
fn subscribe_reserved_option_bits_are_malformed_in_v4() {
    // [MQTT-3.8.3-4] the upper six bits of the requested QoS byte are reserved (3.1.1)
    assert!(malformed(&frame(0x82, &[0, 1, 0, 1, b'a', 0b0000_0100]), V4));
    assert!(malformed(&frame(0x82, &[0, 1, 0, 1, b'a', 0b1000_0001]), V3));
}

#[test]
fn subscribe_reserved_option_bits_are_malformed_in_v5() {
    // [MQTT-3.8.3-5] bits 6 and 7 of the subscription options are reserved (5.0)
    assert!(malformed(&frame(0x82, &[0, 1, 0, 0, 1, b'a', 0b0100_0000]), V5));
    // The v5-only bits are fine in v5.
    let Ok(Some(Packet::Subscribe(s))) = decode_all(&frame(0x82, &[0, 1, 0, 0, 1, b'a', 0b0010_1101]), V5) else {
        panic!("SUBSCRIBE")
    };
    let expected =
        SubscriptionOptions { qos: QoS::AtLeastOnce, no_local: true, retain_as_published: true, retain_handling: 2 };
    assert_eq!(s.filters[0].1, expected);
}

#[test]
fn subscribe_retain_handling_3_is_malformed() {
    // Spec 3.8.3.1: it is a Protocol Error to send a Retain Handling value of 3 (decoded as Malformed here)
    assert!(malformed(&frame(0x82, &[0, 1, 0, 0, 1, b'a', 0b0011_0000]), V5));
}

#[test]
fn subscribe_qos_3_is_malformed() {
    // [MQTT-3.8.3-4] (3.1.1) QoS not 0, 1 or 2 is malformed; spec 3.8.3.1 (5.0)
    assert!(malformed(&frame(0x82, &[0, 1, 0, 1, b'a', 3]), V4));
    assert!(malformed(&frame(0x82, &[0, 1, 0, 0, 1, b'a', 3]), V5));
}

#[test]
fn unsubscribe_without_filters_is_malformed() {
    // [MQTT-3.10.3-2] the payload of an UNSUBSCRIBE MUST contain at least one topic filter
    assert!(malformed(&frame(0xA2, &[0, 1]), V4));
    assert!(malformed(&frame(0xA2, &[0, 1, 0]), V5));
}

// --- MQTT 5 properties ---

#[test]
fn property_not_allowed_in_the_packet_is_malformed() {
    // Spec 2.2.2.2 and table 2-4: Session Expiry Interval (0x11) is not a PUBLISH property
    let publish = frame(0x30, &[0, 1, b't', 5, 0x11, 0, 0, 0, 1, b'x']);
    assert_eq!(decode_all(&publish, V5), Err(DecodeError::Malformed("property not allowed in this packet")));
    // Will Delay Interval (0x18) belongs to the will properties, not to CONNECT's own.
    let mut connect = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 5, 0x18, 0, 0, 0, 1];
    connect.extend_from_slice(&[0, 1, b'c']);
    assert_eq!(
        decode_all(&frame(0x10, &connect), V5),
        Err(DecodeError::Malformed("property not allowed in this packet"))
    );
    // UNSUBSCRIBE allows only User Property.
    assert!(malformed(&frame(0xA2, &[0, 1, 4, 0x1F, 0, 1, b'r', 0, 1, b'a']), V5));
}

#[test]
fn unknown_property_is_malformed() {
    // Spec 2.2.2.2: property identifiers are those of table 2-4
    assert!(malformed(&frame(0x30, &[0, 1, b't', 2, 0x7E, 0]), V5));
}

#[test]
fn will_properties_are_checked_against_the_will_table() {
    // Spec 3.1.3.2 and table 2-4: Topic Alias (0x23) is not a will property
    let mut connect = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x06, 0, 60, 0, 0, 1, b'c'];
    connect.extend_from_slice(&[3, 0x23, 0, 1, 0, 1, b'w', 0, 0]);
    assert!(malformed(&frame(0x10, &connect), V5));
    // Will Delay Interval is allowed there.
    let mut connect = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x06, 0, 60, 0, 0, 1, b'c'];
    connect.extend_from_slice(&[5, 0x18, 0, 0, 0, 9, 0, 1, b'w', 0, 0]);
    let Ok(Some(Packet::Connect(c))) = decode_all(&frame(0x10, &connect), V5) else { panic!("will delay") };
    assert_eq!(c.will.and_then(|w| w.properties.will_delay_interval), Some(9));
}

#[test]
fn duplicate_property_is_a_protocol_error() {
    // Spec 2.2.2.2: it is a Protocol Error to include a property more than once (Topic Alias twice here)
    assert!(protocol_error(&frame(0x30, &[0, 1, b't', 6, 0x23, 0, 1, 0x23, 0, 2]), V5));
    // [MQTT-3.8.2.1.2]: SUBSCRIBE carries at most one Subscription Identifier
    assert!(protocol_error(&frame(0x82, &[0, 1, 4, 0x0B, 1, 0x0B, 2, 0, 1, b'a', 0]), V5));
}

#[test]
fn repeatable_properties_may_repeat() {
    // Spec 3.3.2.3.7 / 3.3.2.3.8: User Property may repeat; PUBLISH may carry several Subscription Identifiers
    let bytes = frame(0x30, &[0, 1, b't', 16, 0x0B, 1, 0x0B, 2, 0x26, 0, 1, b'k', 0, 0, 0x26, 0, 1, b'k', 0, 0]);
    let Ok(Some(Packet::Publish(p))) = decode_all(&bytes, V5) else { panic!("PUBLISH") };
    assert_eq!(p.properties.subscription_identifiers, [1, 2]);
    assert_eq!(p.properties.user_properties.len(), 2);
}

#[test]
fn property_length_beyond_the_packet_is_malformed() {
    // Spec 2.2.2.1: the property length counts bytes of this packet
    assert!(malformed(&frame(0x30, &[0, 1, b't', 9, 0x23, 0, 1]), V5));
    assert!(malformed(&frame(0x40, &[0, 1, 0, 3]), V5));
}

#[test]
fn property_values_out_of_range_are_protocol_errors() {
    // Spec 3.3.2.3.2: Payload Format Indicator is 0 or 1
    assert!(protocol_error(&frame(0x30, &[0, 1, b't', 2, 0x01, 2]), V5));
    // Spec 3.8.2.1.2: Subscription Identifier 0 is a Protocol Error
    assert!(protocol_error(&frame(0x82, &[0, 1, 2, 0x0B, 0, 0, 1, b'a', 0]), V5));
    // Spec 3.1.2.11.3: Receive Maximum 0 is a Protocol Error
    let mut connect = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 3, 0x21, 0, 0];
    connect.extend_from_slice(&[0, 1, b'c']);
    assert!(protocol_error(&frame(0x10, &connect), V5));
    // Spec 3.2.2.3.4: Maximum QoS 2 is a Protocol Error
    assert!(protocol_error(&frame(0x20, &[0, 0, 2, 0x24, 2]), V5));
}

#[test]
fn topic_alias_0_is_left_to_the_server() {
    // [MQTT-3.3.2-8] is checked by the server, which knows the connection's Topic Alias Maximum.
    let Ok(Some(Packet::Publish(p))) = decode_all(&frame(0x30, &[0, 0, 3, 0x23, 0, 0]), V5) else { panic!("PUBLISH") };
    assert_eq!(p.properties.topic_alias, Some(0));
}

#[test]
fn an_announced_length_reserves_nothing_until_the_bytes_arrive() {
    // 5,000 connections each announcing a 1 MB packet and sending 10 bytes must not cost 5 GB: the buffer grows
    // with what was received, not with what the fixed header announces.
    let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0x3F, 0, 3, b'a', b'/', b'b', 1][..]);
    let before = buf.capacity();
    assert!(matches!(decode(&mut buf, V4, 2 << 20), Ok(None)));
    assert_eq!(buf.len(), 10, "nothing consumed");
    assert_eq!(buf.capacity(), before, "nothing reserved for the announced {} bytes", 0x0F_FFFF);
}
