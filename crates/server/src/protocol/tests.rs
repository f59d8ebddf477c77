//! The state machine driven without sockets: packets and a controlled clock in, bytes out. Time-based rules
//! (keepalive, idle timeout, MQTT 3.x resend) are checked at exact instants instead of by sleeping.

use super::*;
use bytes::{Bytes, BytesMut};
use halyard_codec::{Connect, Packet, PubResp, Publish, QoS, Subscribe, SubscriptionOptions};
use halyard_core::config::{load, Source};
use tokio::sync::oneshot;

pub(super) fn broker(env: &[(&str, &str)]) -> Arc<Broker> {
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Broker::new(load(&Source { file: None, env }).expect("config"))
}

pub(crate) fn connect(v: ProtocolVersion, id: &str, keep_alive: u16) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: v,
        clean_start: true,
        keep_alive,
        client_id: Utf8::from(id),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
        bridge: false,
    }))
}

/// Drives CONNECT through the broker (as the connection driver would) and returns the connected machine.
pub(super) async fn connected(b: &Arc<Broker>, v: ProtocolVersion, id: &str, keep_alive: u16, t0: Instant) -> Conn {
    let zone = Arc::new(b.config.mqtt.clone());
    let mut c = Conn::new(b.clone(), zone.clone(), t0, None);
    let Step::Attach(req) = c.handle(connect(v, id, keep_alive), t0) else { panic!("CONNECT accepted") };
    let (tx, _rx) = oneshot::channel();
    let a = b.attach(&req.client_id, req.clean_start, req.expiry_interval, &zone, tx, t0).await;
    c.on_attached(req, a, t0);
    c
}

pub(super) fn drain(c: &mut Conn, v: ProtocolVersion) -> Vec<Packet> {
    let mut buf: BytesMut = c.out.split();
    let mut out = Vec::new();
    while let Ok(Some(p)) = halyard_codec::decode(&mut buf, v, usize::MAX) {
        out.push(p);
    }
    out
}

#[tokio::test]
async fn keepalive_closes_at_one_and_a_half_times_the_interval() {
    // [MQTT-3.1.2-24] nothing received for 1.5 × keepalive: close (v5: DISCONNECT 0x8D).
    let b = broker(&[]);
    let t0 = Instant::now();
    let mut c = connected(&b, ProtocolVersion::V5, "ka", 10, t0).await;
    assert!(c.on_tick(t0 + Duration::from_millis(14_999)).is_ok());
    assert_eq!(c.next_deadline(t0), t0 + Duration::from_secs(15));
    // Any packet restarts the count.
    assert!(matches!(c.handle(Packet::PingReq, t0 + Duration::from_secs(10)), Step::Continue));
    assert!(c.on_tick(t0 + Duration::from_secs(24)).is_ok());
    let close = c.on_tick(t0 + Duration::from_secs(25)).expect_err("keepalive expired");
    assert_eq!(close.reason_code, Some(rc::KEEP_ALIVE_TIMEOUT));
}

#[tokio::test]
async fn no_connect_within_idle_timeout_closes() {
    let b = broker(&[("HALYARD_MQTT__IDLE_TIMEOUT", "15s")]);
    let t0 = Instant::now();
    let mut c = Conn::new(b.clone(), Arc::new(b.config.mqtt.clone()), t0, None);
    assert!(c.on_tick(t0 + Duration::from_millis(14_900)).is_ok());
    assert!(c.on_tick(t0 + Duration::from_secs(15)).is_err());
}

#[tokio::test]
async fn v3_resends_unacknowledged_with_dup_after_retry_interval_v5_does_not() {
    // MQTT 3.1.1 §4.4 allows resending; MQTT 5 forbids it except on reconnect [MQTT-4.4.0-1].
    let b = broker(&[("HALYARD_MQTT__RETRY_INTERVAL", "30s")]);
    let t0 = Instant::now();
    for v in [ProtocolVersion::V4, ProtocolVersion::V5] {
        let id = format!("retry-{v:?}");
        let mut c = connected(&b, v, &id, 0, t0).await;
        let sub = Subscribe {
            packet_id: 1,
            properties: Default::default(),
            filters: vec![(
                Utf8::from(format!("r/{v:?}").as_str()),
                SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() },
            )],
        };
        assert!(matches!(c.handle(Packet::Subscribe(sub), t0), Step::Continue));
        let msg = Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: Utf8::from(format!("r/{v:?}").as_str()),
            packet_id: Some(9),
            properties: Default::default(),
            payload: Bytes::from_static(b"m"),
        };
        // Published by the same connection (no No Local): it comes back to it.
        assert!(matches!(c.handle(Packet::Publish(msg), t0), Step::Continue));
        c.fill(t0);
        let first: Vec<Packet> = drain(&mut c, v);
        let Some(Packet::Publish(p)) = first.iter().find(|p| matches!(p, Packet::Publish(_))) else {
            panic!("delivered: {first:?}")
        };
        assert!(!p.dup);
        let pid = p.packet_id.expect("QoS 1 id");
        c.on_tick(t0 + Duration::from_secs(29)).expect("alive");
        assert!(drain(&mut c, v).is_empty(), "nothing resent before retry_interval");
        c.on_tick(t0 + Duration::from_secs(30)).expect("alive");
        let again = drain(&mut c, v);
        if v.is_v5() {
            assert!(again.is_empty(), "v5 never resends on a live connection: {again:?}");
        } else {
            assert!(
                matches!(again.as_slice(), [Packet::Publish(p)] if p.dup && p.packet_id == Some(pid)),
                "v3 resends with DUP and the same id: {again:?}"
            );
            assert!(matches!(c.handle(Packet::PubAck(PubResp::new(pid)), t0), Step::Continue));
            c.on_tick(t0 + Duration::from_secs(90)).expect("alive");
            assert!(drain(&mut c, v).is_empty(), "acknowledged: no more resends");
        }
    }
}

// --- Protocol fixes, each named after its normative statement. ---

fn connect_with(v: ProtocolVersion, id: &str, clean: bool, f: impl FnOnce(&mut Connect)) -> Packet {
    let Packet::Connect(mut c) = connect(v, id, 0) else { unreachable!() };
    c.clean_start = clean;
    f(&mut c);
    Packet::Connect(c)
}

/// CONNECT, attach and CONNACK for a packet built by the caller; returns the machine and what it sent.
async fn connect_packet_through(b: &Arc<Broker>, p: Packet, t0: Instant) -> (Conn, Vec<Packet>) {
    let zone = Arc::new(b.config.mqtt.clone());
    let Packet::Connect(c) = &p else { unreachable!() };
    let v = c.protocol;
    let mut conn = Conn::new(b.clone(), zone.clone(), t0, None);
    let Step::Attach(req) = conn.handle(p, t0) else { panic!("CONNECT accepted") };
    let (tx, _rx) = oneshot::channel();
    let a = b.attach(&req.client_id, req.clean_start, req.expiry_interval, &zone, tx, t0).await;
    conn.on_attached(req, a, t0);
    let out = drain(&mut conn, v);
    (conn, out)
}

fn publish(topic: &str, qos: QoS, packet_id: Option<u16>, retain: bool) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: Utf8::from(topic),
        packet_id,
        properties: Default::default(),
        payload: Bytes::from_static(b"m"),
    })
}

fn subscribe(filter: &str, qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Default::default(),
        filters: vec![(Utf8::from(filter), SubscriptionOptions { qos, ..Default::default() })],
    })
}

#[tokio::test]
async fn mqtt31_connack_never_sets_session_present() {
    // [MQTT-3.2.2-1..3] Session Present exists from 3.1.1 on; in 3.1 the byte is reserved and stays 0, even when a
    // stored session is resumed. 3.1.1 sets it on resume.
    let b = broker(&[]);
    let t0 = Instant::now();
    for (v, id, expect_present) in [(ProtocolVersion::V3, "p31", false), (ProtocolVersion::V4, "p311", true)] {
        let (mut c, _) = connect_packet_through(&b, connect_with(v, id, false, |_| {}), t0).await;
        c.close(&Close::lost("test"), t0);
        let (_c, out) = connect_packet_through(&b, connect_with(v, id, false, |_| {}), t0).await;
        assert!(
            matches!(out.as_slice(), [Packet::ConnAck(a)] if a.session_present == expect_present && a.reason_code == 0),
            "{v:?}: {out:?}"
        );
    }
}

#[tokio::test]
async fn mqtt311_connect_with_an_invalid_will_topic_is_closed_without_connack() {
    // [MQTT-3.1.4-1] a non-conforming CONNECT is closed without CONNACK; [MQTT-3.1.2-9] the will topic must be a
    // valid topic name. MQTT 5 may answer with a reason code first (0x90) before closing.
    let b = broker(&[]);
    let t0 = Instant::now();
    for (v, topic) in [(ProtocolVersion::V4, "w/+"), (ProtocolVersion::V4, "w/#"), (ProtocolVersion::V3, "w/+")] {
        let p = connect_with(v, "bad-will", true, |c| {
            c.will = Some(halyard_codec::LastWill {
                topic: Utf8::from(topic),
                payload: Bytes::from_static(b"x"),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: Default::default(),
            })
        });
        let mut conn = Conn::new(b.clone(), Arc::new(b.config.mqtt.clone()), t0, None);
        assert!(matches!(conn.handle(p, t0), Step::Close(_)), "{v:?} {topic}: refused");
        assert!(conn.out.is_empty(), "{v:?} {topic}: no CONNACK, got {:?}", drain(&mut conn, v));
    }
    let p = connect_with(ProtocolVersion::V5, "bad-will5", true, |c| {
        c.will = Some(halyard_codec::LastWill {
            topic: Utf8::from("w/#"),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Default::default(),
        })
    });
    let mut conn = Conn::new(b.clone(), Arc::new(b.config.mqtt.clone()), t0, None);
    assert!(matches!(conn.handle(p, t0), Step::Close(_)));
    let out = drain(&mut conn, ProtocolVersion::V5);
    assert!(matches!(out.as_slice(), [Packet::ConnAck(a)] if a.reason_code == rc::TOPIC_NAME_INVALID), "{out:?}");
}

#[tokio::test]
async fn publish_to_a_share_topic_is_refused_not_lost() {
    // [MQTT-4.8.2-1] `$share/...` names shared subscriptions; a PUBLISH to such a name could never be delivered.
    // v5: DISCONNECT 0x90 (Topic Name invalid); v3: the connection closes.
    let b = broker(&[]);
    let t0 = Instant::now();
    for v in [ProtocolVersion::V5, ProtocolVersion::V4] {
        let mut c = connected(&b, v, &format!("share-pub-{v:?}"), 0, t0).await;
        drain(&mut c, v);
        let Step::Close(close) = c.handle(publish("$share/g/t", QoS::AtLeastOnce, Some(1), false), t0) else {
            panic!("{v:?}: refused")
        };
        assert_eq!(close.reason_code, Some(rc::TOPIC_NAME_INVALID));
        c.close(&close, t0);
        let out = drain(&mut c, v);
        assert!(!out.iter().any(|p| matches!(p, Packet::PubAck(_))), "{v:?}: never acknowledged: {out:?}");
        if v.is_v5() {
            assert!(matches!(out.as_slice(), [Packet::Disconnect(d)] if d.reason_code == rc::TOPIC_NAME_INVALID));
        }
    }
}

#[tokio::test]
async fn unsubscribe_of_an_invalid_or_empty_filter_is_0x8f() {
    // Section 3.11.3: 0x8F Topic Filter invalid for a filter that is not one; 0x11 only for a valid filter that
    // was not subscribed.
    let b = broker(&[]);
    let t0 = Instant::now();
    let mut c = connected(&b, ProtocolVersion::V5, "unsub-bad", 0, t0).await;
    drain(&mut c, ProtocolVersion::V5);
    let u = halyard_codec::Unsubscribe {
        packet_id: 3,
        properties: Default::default(),
        filters: vec![Utf8::from(""), Utf8::from("a/#/b"), Utf8::from("a/b#"), Utf8::from("never")],
    };
    assert!(matches!(c.handle(Packet::Unsubscribe(u), t0), Step::Continue));
    let out = drain(&mut c, ProtocolVersion::V5);
    let [Packet::UnsubAck(a)] = out.as_slice() else { panic!("{out:?}") };
    assert_eq!(
        a.reason_codes,
        vec![rc::TOPIC_FILTER_INVALID, rc::TOPIC_FILTER_INVALID, rc::TOPIC_FILTER_INVALID, rc::NO_SUBSCRIPTION_EXISTED]
    );
}

#[tokio::test]
async fn pubrec_for_a_qos1_delivery_never_starts_a_qos2_flow() {
    // [MQTT-4.3.2] a QoS 1 delivery is completed by PUBACK only; a PUBREC for its id is the client's protocol
    // error: v5 closes with 0x82, v3 ignores it. Neither answers with PUBREL.
    let b = broker(&[]);
    let t0 = Instant::now();
    for v in [ProtocolVersion::V5, ProtocolVersion::V4] {
        let topic = format!("q1-{v:?}");
        let mut c = connected(&b, v, &format!("pubrec-q1-{v:?}"), 0, t0).await;
        c.handle(subscribe(&topic, QoS::AtLeastOnce), t0);
        c.handle(publish(&topic, QoS::AtLeastOnce, Some(7), false), t0);
        c.fill(t0);
        let out = drain(&mut c, v);
        let Some(Packet::Publish(p)) = out.iter().find(|p| matches!(p, Packet::Publish(_))) else { panic!("{out:?}") };
        let pid = p.packet_id.expect("QoS 1");
        let step = c.handle(Packet::PubRec(PubResp::new(pid)), t0);
        let out = drain(&mut c, v);
        assert!(!out.iter().any(|p| matches!(p, Packet::PubRel(_))), "{v:?}: no PUBREL: {out:?}");
        if v.is_v5() {
            assert!(matches!(step, Step::Close(Close { reason_code: Some(rc::PROTOCOL_ERROR), .. })), "{step:?}");
        } else {
            assert!(matches!(step, Step::Continue));
            // Still awaiting its PUBACK: the delivery was not forgotten.
            assert!(matches!(c.handle(Packet::PubAck(PubResp::new(pid)), t0), Step::Continue));
            assert!(c.state.inflight.is_empty(), "PUBACK completes it");
        }
    }
}

#[tokio::test]
async fn bridge_protocol_levels_get_no_local_and_retain_as_published() {
    // Mosquitto bridges connect with 0x83/0x84 (`try_private true`): a bridge's subscriptions are no-local (what it
    // forwards does not come back to it) and retain-as-published (it mirrors retained flags).
    let b = broker(&[]);
    let t0 = Instant::now();
    let p = connect_with(ProtocolVersion::V4, "bridge", true, |c| c.bridge = true);
    let (mut bridge, out) = connect_packet_through(&b, p, t0).await;
    assert!(matches!(out.as_slice(), [Packet::ConnAck(a)] if a.reason_code == 0), "{out:?}");
    bridge.handle(subscribe("br/#", QoS::AtLeastOnce), t0);
    drain(&mut bridge, ProtocolVersion::V4);
    // Its own message does not come back.
    bridge.handle(publish("br/own", QoS::AtMostOnce, None, false), t0);
    bridge.fill(t0);
    assert!(drain(&mut bridge, ProtocolVersion::V4).is_empty(), "no-local");
    // Another client's live retained message keeps its retain flag.
    let mut other = connected(&b, ProtocolVersion::V4, "not-bridge", 0, t0).await;
    other.handle(publish("br/r", QoS::AtMostOnce, None, true), t0);
    bridge.fill(t0);
    let got = drain(&mut bridge, ProtocolVersion::V4);
    assert!(matches!(got.as_slice(), [Packet::Publish(p)] if p.retain && &*p.topic == "br/r"), "{got:?}");
    // An ordinary 3.1.1 client gets the flag cleared on a live message [MQTT-3.3.1-9].
    other.handle(subscribe("br/#", QoS::AtMostOnce), t0);
    drain(&mut other, ProtocolVersion::V4);
    other.handle(publish("br/r2", QoS::AtMostOnce, None, true), t0);
    other.fill(t0);
    let got = drain(&mut other, ProtocolVersion::V4);
    // (br/r arrives first, retained, as the subscription's retained message.)
    assert!(matches!(got.as_slice(), [_, Packet::Publish(p)] if !p.retain && &*p.topic == "br/r2"), "{got:?}");
}

// --- Bounded per-client state ---

#[tokio::test]
async fn inbound_topic_aliases_are_held_to_a_byte_budget() {
    // 65535 aliases of 64 KiB topics would pin 4 GiB for one connection; past max_topic_alias_bytes the client
    // gets DISCONNECT 0x97 Quota exceeded. Replacing an alias's topic counts only the new one.
    let b = broker(&[("HALYARD_MQTT__MAX_TOPIC_ALIAS_BYTES", "256KB")]);
    let t0 = Instant::now();
    let v = ProtocolVersion::V5;
    let mut c = connected(&b, v, "aliases", 0, t0).await;
    drain(&mut c, v);
    let topic = |i: u16| format!("{i}/{}", "t".repeat(60 * 1024));
    let with_alias = |topic: &str, alias: u16| {
        let Packet::Publish(mut p) = publish(topic, QoS::AtMostOnce, None, false) else { unreachable!() };
        p.properties.make_mut().topic_alias = Some(alias);
        Packet::Publish(p)
    };
    for i in 1..=4 {
        assert!(matches!(c.handle(with_alias(&topic(i), i), t0), Step::Continue), "alias {i} fits");
    }
    // The same alias again with another topic of the same size: still four topics' worth.
    assert!(matches!(c.handle(with_alias(&topic(9), 4), t0), Step::Continue));
    let Step::Close(close) = c.handle(with_alias(&topic(5), 5), t0) else { panic!("fifth 60 KiB alias refused") };
    assert_eq!(close.reason_code, Some(rc::QUOTA_EXCEEDED));
}

#[tokio::test]
async fn subscriptions_are_held_to_max_subscriptions_and_a_byte_budget() {
    // Past mqtt.max_subscriptions (or max_subscriptions_bytes) a new filter gets 0x97 (v5) / 0x80 (v3); an existing
    // filter may still be re-subscribed, and an unsubscribe frees its place.
    let b = broker(&[("HALYARD_MQTT__MAX_SUBSCRIPTIONS", "3"), ("HALYARD_MQTT__MAX_SUBSCRIPTIONS_BYTES", "64")]);
    let t0 = Instant::now();
    for v in [ProtocolVersion::V5, ProtocolVersion::V4] {
        let mut c = connected(&b, v, &format!("subs-{v:?}"), 0, t0).await;
        drain(&mut c, v);
        let refused = if v.is_v5() { rc::QUOTA_EXCEEDED } else { 0x80 };
        let codes = |c: &mut Conn, f: &str| {
            assert!(matches!(c.handle(subscribe(f, QoS::AtMostOnce), t0), Step::Continue));
            match drain(c, v).as_slice() {
                [Packet::SubAck(a)] => a.reason_codes[0],
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(codes(&mut c, "a"), 0);
        assert_eq!(codes(&mut c, "b"), 0);
        assert_eq!(codes(&mut c, "c"), 0);
        assert_eq!(codes(&mut c, "d"), refused, "{v:?}: a fourth filter");
        assert_eq!(codes(&mut c, "a"), 0, "{v:?}: re-subscribing an existing filter");
        let u =
            halyard_codec::Unsubscribe { packet_id: 2, properties: Default::default(), filters: vec![Utf8::from("c")] };
        c.handle(Packet::Unsubscribe(u), t0);
        drain(&mut c, v);
        assert_eq!(codes(&mut c, &"x".repeat(63)), refused, "{v:?}: 1 + 1 + 63 bytes is over 64");
        assert_eq!(codes(&mut c, &"x".repeat(62)), 0, "{v:?}: 64 bytes fit");
    }
}

// --- Stored deliveries are read by the driver, not by the state machine ---

/// A v5 CONNECT with a session that outlives the connection.
fn persistent_connect(id: &str) -> Packet {
    connect_with(ProtocolVersion::V5, id, false, |c| c.properties.make_mut().session_expiry_interval = Some(600))
}

fn publish_ids(out: &[Packet]) -> Vec<Vec<u8>> {
    out.iter().filter_map(|p| if let Packet::Publish(p) = p { Some(p.payload.to_vec()) } else { None }).collect()
}

#[tokio::test]
async fn an_offline_backlog_is_read_through_the_driver_in_queue_order() {
    // The messages of an offline persistent session's backlog are on disk: `fill` asks for them
    // (`stored_read`) instead of reading the disk itself, and delivers them, in order, when handed back.
    let b = broker(&[]);
    let t0 = Instant::now();
    let v = ProtocolVersion::V5;
    let (mut sub, _) = connect_packet_through(&b, persistent_connect("backlog"), t0).await;
    sub.handle(subscribe("bl/#", QoS::AtLeastOnce), t0);
    sub.close(&Close::lost("gone"), t0);
    let mut publ = connected(&b, v, "backlog-pub", 0, t0).await;
    for i in 0..5u8 {
        let Packet::Publish(mut p) = publish("bl/x", QoS::AtLeastOnce, Some(u16::from(i) + 1), false) else {
            unreachable!()
        };
        p.payload = Bytes::from(vec![i]);
        publ.handle(Packet::Publish(p), t0);
    }
    let (mut sub, out) = connect_packet_through(&b, persistent_connect("backlog"), t0).await;
    assert!(publish_ids(&out).is_empty(), "nothing sent before the read: {out:?}");
    assert!(sub.reads_stored());
    let (session, seqs) = sub.stored_read().expect("a read is asked for");
    assert_eq!(seqs.len(), 5);
    assert!(sub.stored_read().is_none(), "asked for once");
    // What the driver does off the connection's task.
    let loaded = b.load_stored_blocking(&session, &seqs);
    sub.on_stored(loaded, t0);
    let got = publish_ids(&drain(&mut sub, v));
    assert_eq!(got, (0..5u8).map(|i| vec![i]).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_connection_closing_during_a_stored_read_gives_the_slots_back() {
    // The slots taken for a read that never completed go back to the front of the queue: the next connection
    // of the session gets them, in order.
    let b = broker(&[]);
    let t0 = Instant::now();
    let v = ProtocolVersion::V5;
    let (mut sub, _) = connect_packet_through(&b, persistent_connect("giveback"), t0).await;
    sub.handle(subscribe("gb/#", QoS::AtLeastOnce), t0);
    sub.close(&Close::lost("gone"), t0);
    let mut publ = connected(&b, v, "giveback-pub", 0, t0).await;
    for i in 0..3u8 {
        let Packet::Publish(mut p) = publish("gb/x", QoS::AtLeastOnce, Some(u16::from(i) + 1), false) else {
            unreachable!()
        };
        p.payload = Bytes::from(vec![i]);
        publ.handle(Packet::Publish(p), t0);
    }
    let (mut sub, _) = connect_packet_through(&b, persistent_connect("giveback"), t0).await;
    assert!(sub.stored_read().is_some());
    sub.close(&Close::lost("gone again"), t0);
    let (mut sub, _) = connect_packet_through(&b, persistent_connect("giveback"), t0).await;
    sub.read_stored_now(t0);
    let got = publish_ids(&drain(&mut sub, v));
    assert_eq!(got, vec![vec![0], vec![1], vec![2]], "all three, in order, after the interrupted read");
}

#[tokio::test]
async fn a_qos2_id_forgotten_after_await_rel_timeout_is_forgotten_in_the_store_too() {
    // Otherwise a restart would bring the id back and take a new PUBLISH reusing it for a resend (and drop it).
    let b = broker(&[("HALYARD_MQTT__AWAIT_REL_TIMEOUT", "300s")]);
    let t0 = Instant::now();
    let v = ProtocolVersion::V4;
    let (mut c, _) = connect_packet_through(&b, connect_with(v, "stale-rel", false, |_| {}), t0).await;
    c.handle(publish("sr/x", QoS::ExactlyOnce, Some(5), false), t0);
    let stored = |b: &Broker| b.store.restore().expect("restore").awaiting_rel.get("stale-rel").cloned();
    assert_eq!(stored(&b), Some(vec![5]), "stored with the message");
    c.on_tick(t0 + Duration::from_secs(299)).expect("alive");
    assert_eq!(stored(&b), Some(vec![5]));
    c.on_tick(t0 + Duration::from_secs(300)).expect("alive");
    assert!(c.state.awaiting_rel.is_empty(), "forgotten in memory");
    assert_eq!(stored(&b).unwrap_or_default(), Vec::<u16>::new(), "and in the store");
}

#[tokio::test]
async fn routed_counts_one_per_publish_plus_one_per_matching_subscriber() {
    // The driver paces a publisher by this count (it yields after `ROUTED_PER_TURN`), so a fan-out publish must
    // weigh as much as the deliveries it makes, and a publish nobody receives still costs one.
    let b = broker(&[]);
    let t0 = Instant::now();
    let mut subs = Vec::new();
    for i in 0..3 {
        let mut s = connected(&b, ProtocolVersion::V4, &format!("rs{i}"), 0, t0).await;
        assert!(matches!(s.handle(subscribe("r/#", QoS::AtMostOnce), t0), Step::Continue));
        subs.push(s);
    }
    let mut p = connected(&b, ProtocolVersion::V4, "rp", 0, t0).await;
    assert_eq!(p.routed(), 0);
    assert!(matches!(p.handle(publish("r/1", QoS::AtMostOnce, None, false), t0), Step::Continue));
    assert_eq!(p.routed(), 4);
    assert!(matches!(p.handle(publish("nobody/1", QoS::AtMostOnce, None, false), t0), Step::Continue));
    assert_eq!(p.routed(), 5);
    p.reset_routed();
    assert_eq!(p.routed(), 0);
}

#[tokio::test]
async fn v3_resend_deadline_follows_the_oldest_send_after_a_resend() {
    // MQTT 3.1.1 §4.4: an unacknowledged PUBLISH is resent after retry_interval. After the first of two deliveries
    // was resent (its send time moved to the end), the next deadline is the second one's, not the first's again.
    let b = broker(&[("HALYARD_MQTT__RETRY_INTERVAL", "30s")]);
    let t0 = Instant::now();
    let v = ProtocolVersion::V4;
    let mut c = connected(&b, v, "rd", 0, t0).await;
    assert!(matches!(c.handle(subscribe("rd/#", QoS::AtLeastOnce), t0), Step::Continue));
    drain(&mut c, v);
    let t10 = t0 + Duration::from_secs(10);
    assert!(matches!(c.handle(publish("rd/1", QoS::AtLeastOnce, Some(1), false), t0), Step::Continue));
    c.fill(t0);
    assert!(matches!(c.handle(publish("rd/2", QoS::AtLeastOnce, Some(2), false), t10), Step::Continue));
    c.fill(t10);
    drain(&mut c, v);
    assert_eq!(c.next_deadline(t10), t0 + Duration::from_secs(30), "the first delivery's resend");
    let t30 = t0 + Duration::from_secs(30);
    c.on_tick(t30).expect("alive");
    let resent = drain(&mut c, v);
    assert!(matches!(resent.as_slice(), [Packet::Publish(p)] if p.dup && &*p.topic == "rd/1"), "{resent:?}");
    assert_eq!(c.next_deadline(t30), t10 + Duration::from_secs(30), "the second delivery's resend comes next");
}

#[tokio::test]
async fn a_subscriber_behind_makes_a_qos0_publisher_yield_at_once() {
    // Nothing holds a QoS 0 publisher back, but once a subscriber's queue passes its high-water mark (100 with the
    // default max_mqueue_len) the publisher's routed count saturates, so the driver lets the subscriber run before
    // reading more (instead of filling the queue past its limit and dropping).
    let b = broker(&[]);
    let t0 = Instant::now();
    let mut s = connected(&b, ProtocolVersion::V4, "behind-s", 0, t0).await;
    assert!(matches!(s.handle(subscribe("bh/#", QoS::AtMostOnce), t0), Step::Continue));
    let mut p = connected(&b, ProtocolVersion::V4, "behind-p", 0, t0).await;
    for i in 0..99 {
        assert!(matches!(p.handle(publish("bh/1", QoS::AtMostOnce, None, false), t0), Step::Continue));
        assert_eq!(p.routed(), 2 * (i + 1), "not behind yet after {} messages", i + 1);
    }
    assert!(matches!(p.handle(publish("bh/1", QoS::AtMostOnce, None, false), t0), Step::Continue));
    assert_eq!(p.routed(), u32::MAX, "the subscriber's queue reached its high-water mark");
    // The subscriber drains: the next publish counts normally again.
    s.fill(t0);
    p.reset_routed();
    assert!(matches!(p.handle(publish("bh/1", QoS::AtMostOnce, None, false), t0), Step::Continue));
    assert_eq!(p.routed(), 2);
}
