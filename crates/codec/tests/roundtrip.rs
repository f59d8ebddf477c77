//! Encode/decode round trips over generated packets, incremental decoding, zero copy and byte-exact encodings.

use bytes::{BufMut, Bytes, BytesMut};
use halyard_codec::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::Union;

use ProtocolVersion::{V3, V4, V5};

fn utf8() -> impl Strategy<Value = Utf8> {
    "[^\u{0}]{0,8}".prop_map(Utf8::from)
}

fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..12).prop_map(Bytes::from)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce), Just(QoS::ExactlyOnce)]
}

fn packet_id() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

/// Where properties appear; the allowed ids are written out again from spec table 2-4 (not taken from the
/// crate) so the test checks the crate's table.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Connect,
    Will,
    ConnAck,
    Publish,
    Ack,
    Subscribe,
    Unsubscribe,
    Disconnect,
    Auth,
}

impl Kind {
    fn ids(self) -> &'static [u8] {
        match self {
            Kind::Connect => &[0x11, 0x15, 0x16, 0x17, 0x19, 0x21, 0x22, 0x26, 0x27],
            Kind::Will => &[0x01, 0x02, 0x03, 0x08, 0x09, 0x18, 0x26],
            Kind::ConnAck => {
                &[0x11, 0x12, 0x13, 0x15, 0x16, 0x1A, 0x1C, 0x1F, 0x21, 0x22, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2A]
            }
            Kind::Publish => &[0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x23, 0x26],
            Kind::Ack => &[0x1F, 0x26],
            Kind::Subscribe => &[0x0B, 0x26],
            Kind::Unsubscribe => &[0x26],
            Kind::Disconnect => &[0x11, 0x1C, 0x1F, 0x26],
            Kind::Auth => &[0x15, 0x16, 0x1F, 0x26],
        }
    }
}

#[derive(Debug, Clone)]
enum Item {
    Byte(u8, u8),
    Two(u8, u16),
    Four(u8, u32),
    SubId(u32),
    Str(u8, Utf8),
    Bin(u8, Bytes),
    Pair(Utf8, Utf8),
}

fn item(id: u8) -> BoxedStrategy<Item> {
    match id {
        0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => (0..=1u8).prop_map(move |v| Item::Byte(id, v)).boxed(),
        0x13 | 0x22 | 0x23 => any::<u16>().prop_map(move |v| Item::Two(id, v)).boxed(),
        0x21 => (1..=u16::MAX).prop_map(move |v| Item::Two(id, v)).boxed(),
        0x02 | 0x11 | 0x18 => any::<u32>().prop_map(move |v| Item::Four(id, v)).boxed(),
        0x27 => (1..=u32::MAX).prop_map(move |v| Item::Four(id, v)).boxed(),
        0x0B => (1..=268_435_455u32).prop_map(Item::SubId).boxed(),
        0x09 | 0x16 => binary().prop_map(move |v| Item::Bin(id, v)).boxed(),
        0x26 => (utf8(), utf8()).prop_map(|(k, v)| Item::Pair(k, v)).boxed(),
        _ => utf8().prop_map(move |v| Item::Str(id, v)).boxed(),
    }
}

fn apply(p: &mut Properties, item: Item, kind: Kind) {
    match item {
        Item::Byte(0x01, v) => p.payload_format_indicator = Some(v),
        Item::Byte(0x17, v) => p.request_problem_information = Some(v),
        Item::Byte(0x19, v) => p.request_response_information = Some(v),
        Item::Byte(0x24, v) => p.maximum_qos = Some(v),
        Item::Byte(0x25, v) => p.retain_available = Some(v),
        Item::Byte(0x28, v) => p.wildcard_subscription_available = Some(v),
        Item::Byte(0x29, v) => p.subscription_identifier_available = Some(v),
        Item::Byte(_, v) => p.shared_subscription_available = Some(v),
        Item::Two(0x13, v) => p.server_keep_alive = Some(v),
        Item::Two(0x21, v) => p.receive_maximum = Some(v),
        Item::Two(0x22, v) => p.topic_alias_maximum = Some(v),
        Item::Two(_, v) => p.topic_alias = Some(v),
        Item::Four(0x02, v) => p.message_expiry_interval = Some(v),
        Item::Four(0x11, v) => p.session_expiry_interval = Some(v),
        Item::Four(0x18, v) => p.will_delay_interval = Some(v),
        Item::Four(_, v) => p.maximum_packet_size = Some(v),
        // SUBSCRIBE carries at most one subscription identifier; PUBLISH any number.
        Item::SubId(v) if kind == Kind::Subscribe => p.subscription_identifiers = vec![v],
        Item::SubId(v) => p.subscription_identifiers.push(v),
        Item::Str(0x03, v) => p.content_type = Some(v),
        Item::Str(0x08, v) => p.response_topic = Some(v),
        Item::Str(0x12, v) => p.assigned_client_identifier = Some(v),
        Item::Str(0x15, v) => p.authentication_method = Some(v),
        Item::Str(0x1A, v) => p.response_information = Some(v),
        Item::Str(0x1C, v) => p.server_reference = Some(v),
        Item::Str(_, v) => p.reason_string = Some(v),
        Item::Bin(0x09, v) => p.correlation_data = Some(v),
        Item::Bin(_, v) => p.authentication_data = Some(v),
        Item::Pair(k, v) => p.user_properties.push((k, v)),
    }
}

/// Properties a packet of `kind` may carry in `version`: none before MQTT 5.
fn props(kind: Kind, version: ProtocolVersion) -> BoxedStrategy<Properties> {
    if !version.is_v5() {
        return Just(Properties::default()).boxed();
    }
    let items = Union::new(kind.ids().iter().map(|&id| item(id)));
    vec(items, 0..6)
        .prop_map(move |items| {
            let mut p = Properties::default();
            for i in items {
                apply(&mut p, i, kind);
            }
            p
        })
        .boxed()
}

fn will(version: ProtocolVersion) -> impl Strategy<Value = LastWill> {
    (utf8(), binary(), qos(), any::<bool>(), props(Kind::Will, version)).prop_map(
        |(topic, payload, qos, retain, properties)| LastWill {
            topic,
            payload,
            qos,
            retain,
            properties: Box::new(properties).into(),
        },
    )
}

fn connect(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    let creds = (proptest::option::of(utf8()), proptest::option::of(binary()));
    (any::<bool>(), any::<u16>(), utf8(), proptest::option::of(will(v)), creds, props(Kind::Connect, v)).prop_map(
        move |(clean_start, keep_alive, client_id, will, (username, password), properties)| {
            // Before MQTT 5 a password needs a user name [MQTT-3.1.2-22].
            let password = if v.is_v5() || username.is_some() { password } else { None };
            Packet::Connect(Box::new(Connect {
                protocol: v,
                clean_start,
                keep_alive,
                client_id,
                will,
                username,
                password,
                properties: Box::new(properties).into(),
                bridge: false,
            }))
        },
    )
}

fn publish(v: ProtocolVersion) -> impl Strategy<Value = Packet> {
    (any::<bool>(), qos(), any::<bool>(), utf8(), packet_id(), props(Kind::Publish, v), vec(any::<u8>(), 0..64))
        .prop_map(|(dup, qos, retain, topic, id, properties, payload)| {
            let qos0 = qos == QoS::AtMostOnce;
            Packet::Publish(Publish {
                dup: dup && !qos0,
                qos,
                retain,
                topic,
                packet_id: if qos0 { None } else { Some(id) },
                properties: Box::new(properties).into(),
                payload: Bytes::from(payload),
            })
        })
}

fn pub_resp(v: ProtocolVersion) -> impl Strategy<Value = PubResp> {
    let reason = if v.is_v5() { any::<u8>().boxed() } else { Just(0).boxed() };
    (packet_id(), reason, props(Kind::Ack, v)).prop_map(|(packet_id, reason_code, properties)| PubResp {
        packet_id,
        reason_code,
        properties: Box::new(properties).into(),
    })
}

fn options(v: ProtocolVersion) -> impl Strategy<Value = SubscriptionOptions> {
    let v5 = v.is_v5();
    (qos(), any::<bool>(), any::<bool>(), 0..=2u8).prop_map(move |(qos, no_local, rap, rh)| {
        if v5 {
            SubscriptionOptions { qos, no_local, retain_as_published: rap, retain_handling: rh }
        } else {
            SubscriptionOptions { qos, ..SubscriptionOptions::default() }
        }
    })
}

fn reason_codes(v: ProtocolVersion, for_unsuback: bool) -> BoxedStrategy<Vec<u8>> {
    if for_unsuback && !v.is_v5() {
        Just(Vec::new()).boxed()
    } else {
        vec(any::<u8>(), 1..5).boxed()
    }
}

fn packet(v: ProtocolVersion) -> BoxedStrategy<Packet> {
    let v5 = v.is_v5();
    let mut all = vec![
        connect(v).boxed(),
        (any::<bool>(), any::<u8>(), props(Kind::ConnAck, v))
            .prop_map(|(session_present, reason_code, properties)| {
                Packet::ConnAck(ConnAck { session_present, reason_code, properties: Box::new(properties).into() })
            })
            .boxed(),
        publish(v).boxed(),
        pub_resp(v).prop_map(Packet::PubAck).boxed(),
        pub_resp(v).prop_map(Packet::PubRec).boxed(),
        pub_resp(v).prop_map(Packet::PubRel).boxed(),
        pub_resp(v).prop_map(Packet::PubComp).boxed(),
        (packet_id(), props(Kind::Subscribe, v), vec((utf8(), options(v)), 1..5))
            .prop_map(|(packet_id, properties, filters)| {
                Packet::Subscribe(Subscribe { packet_id, properties: Box::new(properties).into(), filters })
            })
            .boxed(),
        (packet_id(), props(Kind::Ack, v), reason_codes(v, false))
            .prop_map(|(packet_id, properties, reason_codes)| {
                Packet::SubAck(SubAck { packet_id, properties: Box::new(properties).into(), reason_codes })
            })
            .boxed(),
        (packet_id(), props(Kind::Unsubscribe, v), vec(utf8(), 1..5))
            .prop_map(|(packet_id, properties, filters)| {
                Packet::Unsubscribe(Unsubscribe { packet_id, properties: Box::new(properties).into(), filters })
            })
            .boxed(),
        (packet_id(), props(Kind::Ack, v), reason_codes(v, true))
            .prop_map(|(packet_id, properties, reason_codes)| {
                Packet::UnsubAck(UnsubAck { packet_id, properties: Box::new(properties).into(), reason_codes })
            })
            .boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
    ];
    if v5 {
        all.push(
            (any::<u8>(), props(Kind::Disconnect, v))
                .prop_map(|(reason_code, properties)| {
                    Packet::Disconnect(Disconnect { reason_code, properties: Box::new(properties).into() })
                })
                .boxed(),
        );
        all.push(
            (any::<u8>(), props(Kind::Auth, v))
                .prop_map(|(reason_code, properties)| {
                    Packet::Auth(Auth { reason_code, properties: Box::new(properties).into() })
                })
                .boxed(),
        );
    } else {
        all.push(Just(Packet::Disconnect(Disconnect::default())).boxed());
    }
    Union::new(all).boxed()
}

fn encoded(packet: &Packet, v: ProtocolVersion) -> BytesMut {
    let mut buf = BytesMut::new();
    encode(packet, v, &mut buf).expect("generated packets are encodable");
    buf
}

fn check_round_trip(packet: Packet, v: ProtocolVersion) -> Result<(), TestCaseError> {
    let mut buf = encoded(&packet, v);
    prop_assert_eq!(buf.len(), encoded_len(&packet, v));
    let decoded = decode(&mut buf, v, usize::MAX);
    prop_assert_eq!(decoded, Ok(Some(packet)));
    prop_assert!(buf.is_empty(), "decode left {} bytes", buf.len());
    Ok(())
}

/// Feeding the bytes one at a time yields `None` (consuming nothing) until the last byte, then the packet.
fn check_byte_at_a_time(packet: Packet, v: ProtocolVersion) -> Result<(), TestCaseError> {
    let bytes = encoded(&packet, v);
    let mut buf = BytesMut::new();
    for (i, &b) in bytes.iter().enumerate() {
        buf.put_u8(b);
        let result = decode(&mut buf, v, usize::MAX);
        if i + 1 < bytes.len() {
            prop_assert_eq!(result, Ok(None), "after {} of {} bytes", i + 1, bytes.len());
            prop_assert_eq!(buf.len(), i + 1);
        } else {
            prop_assert_eq!(result, Ok(Some(packet.clone())));
            prop_assert!(buf.is_empty());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn round_trip_v3(packet in packet(V3)) {
        check_round_trip(packet, V3)?;
    }

    #[test]
    fn round_trip_v4(packet in packet(V4)) {
        check_round_trip(packet, V4)?;
    }

    #[test]
    fn round_trip_v5(packet in packet(V5)) {
        check_round_trip(packet, V5)?;
    }

    #[test]
    fn byte_at_a_time_v4(packet in packet(V4)) {
        check_byte_at_a_time(packet, V4)?;
    }

    #[test]
    fn byte_at_a_time_v5(packet in packet(V5)) {
        check_byte_at_a_time(packet, V5)?;
    }

    /// CONNECT carries its own version, so any connection version decodes it the same way.
    #[test]
    fn connect_decodes_whatever_the_connection_version(
        (v, packet) in prop_oneof![Just(V3), Just(V4), Just(V5)].prop_flat_map(|v| (Just(v), connect(v))),
        conn in prop_oneof![Just(V3), Just(V4), Just(V5)],
    ) {
        let mut buf = encoded(&packet, v);
        prop_assert_eq!(decode(&mut buf, conn, usize::MAX), Ok(Some(packet)));
    }

    /// Several packets in one buffer come out one by one, in order.
    #[test]
    fn back_to_back_packets(packets in vec(packet(V5), 1..6)) {
        let mut buf = BytesMut::new();
        for p in &packets {
            encode(p, V5, &mut buf).expect("encodable");
        }
        for p in packets {
            prop_assert_eq!(decode(&mut buf, V5, usize::MAX), Ok(Some(p)));
        }
        prop_assert!(buf.is_empty());
    }

    /// Arbitrary bytes never panic, and whatever decodes re-encodes to something that decodes the same.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..64), v in prop_oneof![Just(V3), Just(V4), Just(V5)]) {
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(packet)) = decode(&mut buf, v, 1 << 20) {
            check_round_trip(packet, v)?;
        }
    }
}

#[test]
fn publish_payload_and_topic_are_slices_of_the_read_buffer() {
    let packet = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: Utf8::from("a/b"),
        packet_id: Some(7),
        properties: Box::new(Properties {
            correlation_data: Some(Bytes::from_static(b"corr")),
            ..Properties::default()
        })
        .into(),
        payload: Bytes::from_static(b"hello, zero copy"),
    });
    let mut buf = encoded(&packet, V5);
    let start = buf.as_ptr() as usize;
    let range = start..start + buf.len();
    let Ok(Some(Packet::Publish(p))) = decode(&mut buf, V5, usize::MAX) else { panic!("not a PUBLISH") };
    assert_eq!(&p.payload[..], b"hello, zero copy");
    assert!(range.contains(&(p.payload.as_ptr() as usize)), "payload was copied");
    assert!(range.contains(&(p.topic.as_bytes().as_ptr() as usize)), "topic was copied");
    let corr = p.properties.correlation_data.clone().expect("correlation data");
    assert!(range.contains(&(corr.as_ptr() as usize)), "correlation data was copied");
}

#[test]
fn bytes_after_the_packet_stay_in_the_buffer() {
    let mut buf = BytesMut::from(&[0xC0, 0x00, 0xD0][..]);
    assert_eq!(decode(&mut buf, V4, 1024), Ok(Some(Packet::PingReq)));
    assert_eq!(&buf[..], &[0xD0]);
    assert_eq!(decode(&mut buf, V4, 1024), Ok(None));
    assert_eq!(&buf[..], &[0xD0]);
}

fn bytes_of(packet: &Packet, v: ProtocolVersion) -> Vec<u8> {
    encoded(packet, v).to_vec()
}

#[test]
fn v3_and_v4_acks_have_no_reason_code() {
    let ack = PubResp { packet_id: 1, reason_code: 0x80, properties: Default::default() };
    assert_eq!(bytes_of(&Packet::PubAck(ack.clone()), V4), [0x40, 2, 0, 1]);
    assert_eq!(bytes_of(&Packet::PubRel(ack), V3), [0x62, 2, 0, 1]);
    let connack = ConnAck { session_present: true, reason_code: 5, properties: Default::default() };
    assert_eq!(bytes_of(&Packet::ConnAck(connack), V4), [0x20, 2, 1, 5]);
    let unsuback = UnsubAck { packet_id: 9, properties: Default::default(), reason_codes: vec![0x11] };
    assert_eq!(bytes_of(&Packet::UnsubAck(unsuback), V4), [0xB0, 2, 0, 9]);
    let suback = SubAck { packet_id: 9, properties: Default::default(), reason_codes: vec![0, 0x80, 2] };
    assert_eq!(bytes_of(&Packet::SubAck(suback), V4), [0x90, 5, 0, 9, 0, 0x80, 2]);
    let disconnect = Disconnect { reason_code: 0x8E, properties: Default::default() };
    assert_eq!(bytes_of(&Packet::Disconnect(disconnect), V4), [0xE0, 0]);
}

#[test]
fn v5_acks_use_the_short_forms() {
    let mut ack = PubResp::new(0x0102);
    assert_eq!(bytes_of(&Packet::PubAck(ack.clone()), V5), [0x40, 2, 1, 2]);
    ack.reason_code = 0x10;
    assert_eq!(bytes_of(&Packet::PubRec(ack.clone()), V5), [0x50, 3, 1, 2, 0x10]);
    ack.properties.make_mut().reason_string = Some(Utf8::from("x"));
    assert_eq!(bytes_of(&Packet::PubComp(ack), V5), [0x70, 8, 1, 2, 0x10, 4, 0x1F, 0, 1, b'x']);
    assert_eq!(bytes_of(&Packet::Disconnect(Disconnect::default()), V5), [0xE0, 0]);
    let d = Disconnect { reason_code: 0x8E, properties: Default::default() };
    assert_eq!(bytes_of(&Packet::Disconnect(d), V5), [0xE0, 1, 0x8E]);
    assert_eq!(bytes_of(&Packet::Auth(Auth::default()), V5), [0xF0, 0]);
    let a = Auth { reason_code: 0x18, properties: Default::default() };
    assert_eq!(bytes_of(&Packet::Auth(a), V5), [0xF0, 2, 0x18, 0]);
}

#[test]
fn v5_decodes_every_ack_form() {
    for (bytes, reason) in
        [(&[0x40, 2, 0, 1][..], 0), (&[0x40, 3, 0, 1, 0x10][..], 0x10), (&[0x40, 4, 0, 1, 0x10, 0][..], 0x10)]
    {
        let mut buf = BytesMut::from(bytes);
        let expected = PubResp { packet_id: 1, reason_code: reason, properties: Default::default() };
        assert_eq!(decode(&mut buf, V5, 1024), Ok(Some(Packet::PubAck(expected))), "{bytes:?}");
    }
    let mut buf = BytesMut::from(&[0xE0, 0][..]);
    assert_eq!(decode(&mut buf, V5, 1024), Ok(Some(Packet::Disconnect(Disconnect::default()))));
    let mut buf = BytesMut::from(&[0xF0, 0][..]);
    assert_eq!(decode(&mut buf, V5, 1024), Ok(Some(Packet::Auth(Auth::default()))));
}

#[test]
fn auth_is_not_in_mqtt_3() {
    let auth = Packet::Auth(Auth::default());
    for v in [V3, V4] {
        let mut buf = BytesMut::new();
        assert_eq!(encode(&auth, v, &mut buf), Err(EncodeError::NotInVersion("AUTH")));
        assert!(buf.is_empty());
        assert_eq!(encoded_len(&auth, v), 0);
    }
}

#[test]
fn connect_v4_matches_the_wire_format() {
    let packet = Packet::Connect(Box::new(Connect {
        protocol: V4,
        clean_start: true,
        keep_alive: 60,
        client_id: Utf8::from("c"),
        will: Some(LastWill {
            topic: Utf8::from("w"),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Default::default(),
        }),
        username: Some(Utf8::from("u")),
        password: Some(Bytes::from_static(b"p")),
        properties: Default::default(),
        bridge: false,
    }));
    #[rustfmt::skip]
    let expected = [
        0x10, 25,
        0, 4, b'M', b'Q', b'T', b'T', 4,
        0b1110_1110, // user name, password, will retain, will QoS 1, will, clean session
        0, 60,
        0, 1, b'c', 0, 1, b'w', 0, 1, b'x', 0, 1, b'u', 0, 1, b'p',
    ];
    assert_eq!(bytes_of(&packet, V4), expected);
}

#[test]
fn connect_v3_uses_mqisdp() {
    let packet = Packet::Connect(Box::new(Connect {
        protocol: V3,
        clean_start: false,
        keep_alive: 0,
        client_id: Utf8::from("c"),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
        bridge: false,
    }));
    assert_eq!(bytes_of(&packet, V5), [0x10, 15, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3, 0, 0, 0, 0, 1, b'c']);
}

#[test]
fn qos0_publish_never_carries_dup_or_packet_id() {
    let p = Publish {
        dup: true,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: Utf8::from("t"),
        packet_id: Some(5),
        properties: Default::default(),
        payload: Bytes::new(),
    };
    assert_eq!(bytes_of(&Packet::Publish(p), V4), [0x30, 3, 0, 1, b't']);
}

#[test]
fn remaining_length_above_the_maximum_is_too_long() {
    // Zeroed memory is mapped lazily, so this costs no real memory; encode fails before reading it.
    let payload = Bytes::from(vec![0u8; 268_435_456]);
    let p = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: Utf8::from("t"),
        packet_id: None,
        properties: Default::default(),
        payload,
    };
    let mut buf = BytesMut::new();
    assert_eq!(encode(&Packet::Publish(p), V4, &mut buf), Err(EncodeError::TooLong(268_435_456 + 3)));
    assert!(buf.is_empty());
}

#[test]
fn string_over_65535_bytes_is_too_long() {
    let sub =
        Unsubscribe { packet_id: 1, properties: Default::default(), filters: vec![Utf8::from("a".repeat(65_536))] };
    let mut buf = BytesMut::new();
    assert_eq!(encode(&Packet::Unsubscribe(sub), V4, &mut buf), Err(EncodeError::TooLong(65_536)));
}

#[test]
fn largest_remaining_length_uses_four_bytes() {
    let payload = Bytes::from(vec![0u8; 268_435_455 - 3]);
    let p = Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: Utf8::from("t"),
        packet_id: None,
        properties: Default::default(),
        payload,
    });
    assert_eq!(encoded_len(&p, V4), 1 + 4 + 268_435_455);
}
