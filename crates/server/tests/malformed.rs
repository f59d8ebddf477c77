//! Bad input over real sockets: each test writes raw bytes that break one rule and asserts the spec's reaction
//! (close, or DISCONNECT with the right reason code), then checks that another client is still served.

mod common;
use common::*;
use halyard_codec::reason::rc;
use halyard_codec::{Packet, ProtocolVersion::*, QoS};
use std::time::Duration;

/// After a bad client is dealt with, a well-behaved one still gets its messages through.
async fn others_still_served(b: &TestBroker) {
    let (mut sub, _) = Raw::connect(b.addr, V4, "bystander-sub", true).await;
    sub.subscribe("still/ok", QoS::AtLeastOnce).await;
    let (mut publ, _) = Raw::connect(b.addr, V4, "bystander-pub", true).await;
    publ.publish("still/ok", b"yes", QoS::AtLeastOnce, false, 7).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
    let p = sub.expect_publish().await;
    assert_eq!(&p.payload[..], b"yes");
}

async fn v5_connected(b: &TestBroker, id: &str) -> Raw {
    Raw::connect(b.addr, V5, id, true).await.0
}

#[tokio::test]
async fn bad_remaining_length_closes_v4() {
    // [MQTT-1.5.5-1]/[MQTT-2.2.3] a remaining length of more than four bytes is malformed: the v3 server closes.
    let b = start(&[]).await;
    let (mut c, _) = Raw::connect(b.addr, V4, "badlen", true).await;
    c.send_bytes(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]).await;
    assert!(c.closed().await.is_ok());
    others_still_served(&b).await;
}

#[tokio::test]
async fn bad_remaining_length_gets_disconnect_0x81_v5() {
    // [MQTT-4.13.1-1] a malformed packet: DISCONNECT 0x81, then close.
    let b = start(&[]).await;
    let mut c = v5_connected(&b, "badlen5").await;
    c.send_bytes(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]).await;
    let got = c.closed().await.expect("closed");
    assert_eq!(disconnect_code(&got), Some(rc::MALFORMED_PACKET));
    others_still_served(&b).await;
}

#[tokio::test]
async fn reserved_flag_bits_are_malformed() {
    // [MQTT-2.2.2-2] SUBSCRIBE with flags 0000 instead of 0010.
    let b = start(&[]).await;
    let mut c = v5_connected(&b, "flags").await;
    c.send_bytes(&[0x80, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x00]).await;
    let got = c.closed().await.expect("closed");
    assert_eq!(disconnect_code(&got), Some(rc::MALFORMED_PACKET));
    others_still_served(&b).await;
}

#[tokio::test]
async fn invalid_utf8_in_topic_is_malformed() {
    // [MQTT-1.5.4-1] ill-formed UTF-8 in a topic: malformed packet.
    let b = start(&[]).await;
    let mut c = v5_connected(&b, "utf8").await;
    // PUBLISH QoS 0, topic length 2 = 0xC3 0x28 (invalid), no properties, payload "x".
    c.send_bytes(&[0x30, 0x06, 0x00, 0x02, 0xC3, 0x28, 0x00, b'x']).await;
    let got = c.closed().await.expect("closed");
    assert_eq!(disconnect_code(&got), Some(rc::MALFORMED_PACKET));
    others_still_served(&b).await;
}

#[tokio::test]
async fn nul_character_in_topic_is_malformed() {
    // [MQTT-1.5.4-2] U+0000 must not appear in a UTF-8 string.
    let b = start(&[]).await;
    let (mut c, _) = Raw::connect(b.addr, V4, "nul", true).await;
    c.send_bytes(&[0x30, 0x06, 0x00, 0x03, b'a', 0x00, b'b', b'x']).await;
    assert!(c.closed().await.is_ok());
    others_still_served(&b).await;
}

#[tokio::test]
async fn wildcard_in_publish_topic_gets_0x90() {
    // [MQTT-3.3.2-2] the topic name in PUBLISH must not contain wildcards: Topic Name invalid.
    let b = start(&[]).await;
    let mut c = v5_connected(&b, "wild").await;
    c.publish("a/+/b", b"x", QoS::AtMostOnce, false, 0).await;
    let got = c.closed().await.expect("closed");
    assert_eq!(disconnect_code(&got), Some(rc::TOPIC_NAME_INVALID));
    let (mut c4, _) = Raw::connect(b.addr, V4, "wild4", true).await;
    c4.publish("a/#", b"x", QoS::AtMostOnce, false, 0).await;
    assert!(c4.closed().await.is_ok(), "v3.1.1 connection closed");
    others_still_served(&b).await;
}

#[tokio::test]
async fn packet_before_connect_closes_without_answer() {
    // [MQTT-3.1.0-1] the first packet from the client must be CONNECT.
    let b = start(&[]).await;
    let mut c = Raw::open(b.addr, V4).await;
    c.send_bytes(&[0xC0, 0x00]).await; // PINGREQ
    let got = c.closed().await.expect("closed");
    assert!(got.is_empty(), "nothing is sent back: {got:?}");
    others_still_served(&b).await;
}

#[tokio::test]
async fn second_connect_is_a_protocol_error() {
    // [MQTT-3.1.0-2] a second CONNECT is a protocol violation: DISCONNECT 0x82 (v5).
    let b = start(&[]).await;
    let mut c = v5_connected(&b, "twice").await;
    c.send(&Packet::Connect(Box::new(connect_packet(V5, "twice", true)))).await;
    let got = c.closed().await.expect("closed");
    assert_eq!(disconnect_code(&got), Some(rc::PROTOCOL_ERROR));
    others_still_served(&b).await;
}

#[tokio::test]
async fn packet_over_the_size_limit_gets_0x95() {
    // [MQTT-3.2.2-15] §4.13: a packet above the Maximum Packet Size the server announced: DISCONNECT 0x95.
    let b = start(&[("HALYARD_MQTT__MAX_PACKET_SIZE", "1KB")]).await;
    let (mut c, ack) = Raw::connect(b.addr, V5, "big", true).await;
    let Packet::ConnAck(ack) = ack else { unreachable!() };
    assert_eq!(ack.properties.maximum_packet_size, Some(1024), "Maximum Packet Size announced in CONNACK (§3.2.2.3.6)");
    // Only the fixed header of a 2 MB PUBLISH is sent: the broker must refuse without waiting for the body.
    c.send_bytes(&[0x30, 0x80, 0x80, 0x80, 0x01]).await;
    let got = c.closed().await.expect("closed");
    assert_eq!(disconnect_code(&got), Some(rc::PACKET_TOO_LARGE));
    others_still_served(&b).await;
}

#[tokio::test]
async fn property_not_allowed_in_packet_is_malformed() {
    // §2.2.2.2 / §4.13: Session Expiry Interval (0x11) is not a PUBLISH property, so the packet is malformed.
    let b = start(&[]).await;
    let mut c = v5_connected(&b, "prop").await;
    // PUBLISH QoS 0 "t", properties length 5: 0x11 + u32, payload "x".
    c.send_bytes(&[0x30, 0x0a, 0x00, 0x01, b't', 0x05, 0x11, 0, 0, 0, 10, b'x']).await;
    let got = c.closed().await.expect("closed");
    assert_eq!(disconnect_code(&got), Some(rc::MALFORMED_PACKET));
    others_still_served(&b).await;
}

#[tokio::test]
async fn publish_qos3_is_malformed() {
    // [MQTT-3.3.1-4] a PUBLISH with both QoS bits set is malformed.
    let b = start(&[]).await;
    let (mut c, _) = Raw::connect(b.addr, V4, "qos3", true).await;
    c.send_bytes(&[0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01]).await;
    assert!(c.closed().await.is_ok());
    others_still_served(&b).await;
}

#[tokio::test]
async fn unsupported_protocol_level_gets_connack_0x01() {
    // [MQTT-3.1.2-2] unsupported protocol level: CONNACK 0x01 and close.
    let b = start(&[]).await;
    let mut c = Raw::open(b.addr, V4).await;
    c.send_bytes(&[0x10, 0x0d, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x07, 0x02, 0x00, 0x3c, 0x00, 0x01, b'c']).await;
    let got = c.closed().await.expect("closed");
    assert!(
        matches!(got.as_slice(), [Packet::ConnAck(a)] if a.reason_code == 0x01),
        "CONNACK 0x01 expected, got {got:?}"
    );
}

#[tokio::test]
async fn idle_connection_without_connect_is_closed() {
    // idle_timeout: a connection that sends no CONNECT in time is closed.
    let b = start(&[("HALYARD_MQTT__IDLE_TIMEOUT", "1s")]).await;
    let mut c = Raw::open(b.addr, V4).await;
    let started = std::time::Instant::now();
    assert!(c.closed().await.is_ok());
    assert!(started.elapsed() >= Duration::from_millis(900), "not closed before idle_timeout");
}

#[tokio::test]
async fn keepalive_expiry_disconnects_with_0x8d() {
    // [MQTT-3.1.2-24] nothing received within 1.5 × keepalive: the server closes (v5: DISCONNECT 0x8D).
    let b = start(&[]).await;
    let mut conn = connect_packet(V5, "sleepy", true);
    conn.keep_alive = 1;
    let (mut c, _) = Raw::connect_with(b.addr, conn).await;
    let started = std::time::Instant::now();
    let got = c.closed().await.expect("closed");
    assert_eq!(disconnect_code(&got), Some(rc::KEEP_ALIVE_TIMEOUT));
    assert!(started.elapsed() >= Duration::from_millis(1400), "closed after 1.5 × keepalive, not before");
}
