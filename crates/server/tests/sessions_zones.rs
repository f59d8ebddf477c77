//! Session life cycle edges (expiry, takeover of a session that ends) and per-listener zones.

mod common;
use common::*;
use halyard_codec::reason::rc;
use halyard_codec::{Packet, ProtocolVersion::*, QoS};
use std::time::Duration;

#[tokio::test]
async fn takeover_of_session_with_expiry_0_fires_will_and_starts_fresh() {
    // Session Expiry 0 ends the session with its connection: a takeover then finds no session (Session Present 0)
    // and the old connection's will goes out at once [MQTT-3.1.3-9], [MQTT-3.1.4-3].
    let b = start(&[]).await;
    let (mut watcher, _) = Raw::connect(b.addr, V5, "z-watch", true).await;
    watcher.subscribe("zw/#", QoS::AtMostOnce).await;
    let mut c = connect_packet(V5, "z-old", false);
    let mut w = will("zw/old", b"bye", QoS::AtMostOnce);
    w.properties.make_mut().will_delay_interval = Some(100);
    c.will = Some(w);
    let (mut old, _) = Raw::connect_with(b.addr, c).await;
    old.subscribe("zsub", QoS::AtMostOnce).await;
    let (mut new, ack) = Raw::connect(b.addr, V5, "z-old", false).await;
    assert!(matches!(ack, Packet::ConnAck(a) if !a.session_present));
    assert_eq!(disconnect_code(&old.closed().await.expect("closed")), Some(rc::SESSION_TAKEN_OVER));
    assert_eq!(&*watcher.expect_publish().await.topic, "zw/old", "will despite its delay: the session ended");
    // The old subscription ended with the session.
    let (mut p, _) = Raw::connect(b.addr, V5, "z-pub", true).await;
    p.publish("zsub", b"x", QoS::AtMostOnce, false, 0).await;
    new.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn session_expires_after_its_interval() {
    // [MQTT-3.1.2-23] the session is kept for Session Expiry Interval after the connection closes, then discarded.
    let b = start(&[]).await;
    let mut c = connect_packet(V5, "expiring", false);
    c.properties.make_mut().session_expiry_interval = Some(1);
    let (s, _) = Raw::connect_with(b.addr, c.clone()).await;
    drop(s);
    // The first reconnect is within the interval. The rule itself is checked at exact instants without sockets
    // (crates/core/tests/engine.rs); here the server's timer task drives it with the real clock, and the test
    // waits for the expiry to be reported rather than for a fixed time.
    let (s, ack) = Raw::connect_with(b.addr, c.clone()).await;
    assert!(matches!(ack, Packet::ConnAck(a) if a.session_present), "resumed within the interval");
    drop(s);
    let deadline = tokio::time::Instant::now() + WAIT;
    while halyard_core::metrics::Metrics::get(&b.broker.metrics.sessions_expired) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the session did not expire within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_s, ack) = Raw::connect_with(b.addr, c).await;
    assert!(matches!(ack, Packet::ConnAck(a) if !a.session_present), "expired after the interval");
    assert_eq!(halyard_core::metrics::Metrics::get(&b.broker.metrics.sessions_expired), 1);
}

#[tokio::test]
async fn session_expiry_is_capped_by_config_and_announced() {
    // §3.2.2.3.2: the server may use another Session Expiry Interval and then says so in CONNACK.
    let b = start(&[("HALYARD_MQTT__SESSION_EXPIRY_INTERVAL", "60s")]).await;
    let mut c = connect_packet(V5, "capped", false);
    c.properties.make_mut().session_expiry_interval = Some(3600);
    let (_s, ack) = Raw::connect_with(b.addr, c).await;
    assert!(matches!(ack, Packet::ConnAck(a) if a.properties.session_expiry_interval == Some(60)));
}

#[tokio::test]
async fn second_listener_uses_its_own_zone() {
    // An internal listener in zone `internal` with larger packets beside the default one.
    let b = start(&[
        ("HALYARD_ZONES__INTERNAL__MQTT__MAX_PACKET_SIZE", "8KB"),
        ("HALYARD_MQTT__MAX_PACKET_SIZE", "1KB"),
        ("HALYARD_LISTENERS__TCP__INTERNAL__BIND", "127.0.0.1:0"),
        ("HALYARD_LISTENERS__TCP__INTERNAL__ZONE", "internal"),
    ])
    .await;
    let internal = b.server.addr("internal").expect("internal listener bound");
    let (mut sub, ack) = Raw::connect(internal, V5, "zone-sub", true).await;
    assert!(matches!(ack, Packet::ConnAck(a) if a.properties.maximum_packet_size == Some(8192)));
    sub.subscribe("big", QoS::AtMostOnce).await;
    let (mut p, _) = Raw::connect(internal, V5, "zone-pub", true).await;
    p.publish("big", &[1u8; 4000], QoS::AtMostOnce, false, 0).await;
    assert_eq!(sub.expect_publish().await.payload.len(), 4000, "4 KB passes the internal zone");
    let (mut ext, _) = Raw::connect(b.addr, V5, "zone-ext", true).await;
    ext.publish("big", &[1u8; 4000], QoS::AtMostOnce, false, 0).await;
    assert_eq!(disconnect_code(&ext.closed().await.expect("closed")), Some(rc::PACKET_TOO_LARGE));
}

#[tokio::test]
async fn refusals_carry_a_reason_string_unless_the_client_declines() {
    // [MQTT-3.1.2-29] with Request Problem Information 0 the server sends no Reason String except in
    // PUBLISH, CONNACK or DISCONNECT; otherwise a refused PUBLISH says why.
    let b = start(&[]).await;
    let (mut c, _) = Raw::connect(b.addr, V5, "why", true).await;
    c.publish("$SYS/x", b"x", QoS::AtLeastOnce, false, 1).await;
    match c.recv().await {
        Some(Packet::PubAck(a)) => {
            assert_eq!(a.reason_code, rc::NOT_AUTHORIZED);
            assert!(a.properties.reason_string.as_ref().is_some_and(|s| s.contains("$SYS")));
        }
        other => panic!("expected PUBACK, got {other:?}"),
    }
    let mut quiet = connect_packet(V5, "why-not", true);
    quiet.properties.make_mut().request_problem_information = Some(0);
    let (mut q, _) = Raw::connect_with(b.addr, quiet).await;
    q.publish("$SYS/x", b"x", QoS::AtLeastOnce, false, 1).await;
    assert!(
        matches!(q.recv().await, Some(Packet::PubAck(a)) if a.reason_code == rc::NOT_AUTHORIZED && a.properties.reason_string.is_none())
    );
}

#[tokio::test]
async fn will_goes_out_when_the_session_expires_before_the_will_delay() {
    // [MQTT-3.1.3-9] the will is sent when the will delay passes or the session ends, whichever is first:
    // here the session (expiry 1 s) ends before the will delay (5 s). Found by Paho's test_will_delay, where both
    // timers firing together sometimes lost the will.
    let b = start(&[]).await;
    let (mut watcher, _) = Raw::connect(b.addr, V5, "wx-watch", true).await;
    watcher.subscribe("wx/#", QoS::AtMostOnce).await;
    for round in 0..3 {
        let mut c = connect_packet(V5, "wx", true);
        c.properties.make_mut().session_expiry_interval = Some(1);
        let mut w = will("wx/t", format!("bye {round}").as_bytes(), QoS::AtMostOnce);
        w.properties.make_mut().will_delay_interval = Some(5);
        c.will = Some(w);
        let (dying, _) = Raw::connect_with(b.addr, c).await;
        drop(dying);
        let p = watcher.expect_publish().await;
        assert_eq!(&p.payload[..], format!("bye {round}").as_bytes());
    }
}
