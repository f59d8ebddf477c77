//! Fault injection on the store, over real sockets: a store whose commits stall, then one whose commit fails.
//! `FaultyStore` (halyard-store's `testing` feature) stands in for a slow or full disk; the connection code,
//! the engine and the sockets are the real ones.

mod common;
use common::*;
use halyard_codec::reason::rc;
use halyard_codec::{Packet, Properties, ProtocolVersion::*, QoS};
use halyard_core::config::{Config, Source};
use halyard_core::metrics::Metrics;
use halyard_core::Broker;
use halyard_store::testing::FaultyStore;
use halyard_store::Store;
use std::sync::Arc;
use std::time::Duration;

const SHORT: Duration = Duration::from_millis(300);

async fn start_on(store: Arc<FaultyStore>) -> TestBroker {
    let vars = test_env();
    let config: Config = halyard_core::config::load(&Source { file: None, env: vars }).expect("test config");
    let broker = Broker::with_store(config, store, 1);
    let server = halyard_server::start(broker.clone()).await.expect("listeners start");
    let addr = server.addr("default").expect("default listener");
    TestBroker { broker, server, addr }
}

/// A v5 connection with a session that outlives it (Session Expiry Interval 3600).
async fn persistent(addr: std::net::SocketAddr, id: &str) -> Raw {
    let mut c = connect_packet(V5, id, false);
    c.properties.make_mut().session_expiry_interval = Some(3600);
    Raw::connect_with(addr, c).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_store_stalls_other_clients_pings_and_qos0_still_go_through() {
    let store = FaultyStore::new();
    let b = start_on(store.clone()).await;
    // An offline persistent subscriber: every QoS 1 publish to d/# needs a commit before its PUBACK.
    let mut sub = persistent(b.addr, "stall-sub").await;
    sub.subscribe("d/#", QoS::AtLeastOnce).await;
    sub.send(&Packet::Disconnect(Default::default())).await;
    assert!(sub.closed().await.is_ok());

    store.stall();
    // A 3.1.1 publisher pipelines 3,000 QoS 1 messages (no Receive Maximum holds it to a window).
    let (mut publisher, _) = Raw::connect(b.addr, V4, "stall-pub", true).await;
    for i in 0..3000u16 {
        publisher.publish("d/x", &i.to_be_bytes(), QoS::AtLeastOnce, false, i + 1).await;
    }
    publisher.expect_silence(SHORT).await; // no PUBACK before the commit
                                           // Reading stops once the store is a backlog's worth behind: nothing grows without bound meanwhile.
    let backlog = store.backlog();
    assert!(backlog > 0 && backlog <= 1024 + 64, "backlog {backlog} held near BACKLOG_HIGH");

    // An unrelated client meanwhile: PINGREQ and a QoS 0 round trip complete.
    let (mut other, _) = Raw::connect(b.addr, V5, "stall-other", true).await;
    other.send(&Packet::PingReq).await;
    assert!(matches!(other.recv().await, Some(Packet::PingResp)), "PINGRESP while the store stalls");
    other.subscribe("q0", QoS::AtMostOnce).await;
    other.publish("q0", b"through", QoS::AtMostOnce, false, 0).await;
    let p = other.expect_publish().await;
    assert_eq!(&p.payload[..], b"through");

    // The disk catches up: every acknowledgement arrives, in order.
    store.release();
    for i in 0..3000u16 {
        match publisher.recv().await {
            Some(Packet::PubAck(a)) => assert_eq!(a.packet_id, i + 1, "PUBACKs in order"),
            other => panic!("PUBACK {} expected, got {other:?}", i + 1),
        }
    }
    let mut sub = persistent(b.addr, "stall-sub").await;
    for i in 0..1000u16 {
        // The mqueue keeps the newest max_mqueue_len (1000) of them.
        let p = sub.expect_publish().await;
        assert_eq!(&p.payload[..], &(2000 + i).to_be_bytes(), "newest 1000 in order");
        sub.ack(&p).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_delivers_nothing_and_retains_nothing() {
    // The publisher of a message whose commit fails is refused (0x97): nobody may have received it, and it must
    // not be retained, or the publisher's retry would deliver it twice [MQTT-4.3.3] (issue 8, defect 1).
    let store = FaultyStore::new();
    let b = start_on(store.clone()).await;
    let mut durable = persistent(b.addr, "fail-durable").await;
    durable.subscribe("f/#", QoS::AtLeastOnce).await;
    let (mut live, _) = Raw::connect(b.addr, V5, "fail-live", true).await;
    live.subscribe("f/#", QoS::AtLeastOnce).await;

    store.stall();
    let (mut publisher, _) = Raw::connect(b.addr, V5, "fail-pub", true).await;
    publisher.publish("f/x", b"lost", QoS::ExactlyOnce, true, 7).await;
    publisher.expect_silence(SHORT).await;
    live.expect_silence(SHORT).await; // not before its commit
    store.fail();
    // The PUBREC waited for a commit that will never come: the connection closes with 0x97.
    let closing = publisher.closed().await.expect("publisher closed");
    assert!(
        matches!(closing.as_slice(), [Packet::Disconnect(d)] if d.reason_code == rc::QUOTA_EXCEEDED),
        "{closing:?}"
    );
    durable.expect_silence(SHORT).await;
    live.expect_silence(SHORT).await;
    assert_eq!(Metrics::get(&b.broker.metrics.dropped_store_failed), 2, "both deliveries discarded");

    // The retry on a new connection is refused at once (the store takes nothing), and reaches nobody either.
    let (mut publisher, _) = Raw::connect(b.addr, V5, "fail-pub", true).await;
    publisher.publish("f/x", b"lost", QoS::ExactlyOnce, true, 7).await;
    match publisher.recv().await {
        Some(Packet::PubRec(r)) => assert_eq!(r.reason_code, rc::QUOTA_EXCEEDED),
        other => panic!("PUBREC 0x97 expected, got {other:?}"),
    }
    live.expect_silence(SHORT).await;
    // Not retained: a new subscriber gets nothing.
    let (mut late, _) = Raw::connect(b.addr, V5, "fail-late", true).await;
    late.subscribe_opts("f/#", Default::default(), Properties::default()).await;
    late.expect_silence(SHORT).await;
    // QoS 0 still flows.
    publisher.publish("f/q0", b"ok", QoS::AtMostOnce, false, 0).await;
    assert_eq!(&live.expect_publish().await.payload[..], b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_message_waiting_for_its_commit_reaches_a_new_subscriber_once_committed() {
    // A subscriber that subscribes between a retained publish and its commit gets it after the commit (it was
    // the topic's retained message by then), never before.
    let store = FaultyStore::new();
    let b = start_on(store.clone()).await;
    store.stall();
    let (mut publisher, _) = Raw::connect(b.addr, V5, "ret-pub", true).await;
    publisher.publish("ret/x", b"kept", QoS::AtLeastOnce, true, 1).await;
    publisher.expect_silence(SHORT).await;
    let (mut late, _) = Raw::connect(b.addr, V5, "ret-late", true).await;
    late.subscribe("ret/#", QoS::AtLeastOnce).await;
    late.expect_silence(SHORT).await; // not before its commit
    store.release();
    let p = late.expect_publish().await;
    assert_eq!((&*p.topic, &p.payload[..], p.retain), ("ret/x", &b"kept"[..], true));
    assert!(matches!(publisher.recv().await, Some(Packet::PubAck(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_left_unread_while_the_store_held_a_publisher_are_processed_to_the_end() {
    // A 3.1.1 publisher with a will pipelines more QoS 1 messages than may wait for commits, then DISCONNECT, and
    // closes. The packets past the hold stay in its read buffer; once the store catches up every one is
    // processed, so the DISCONNECT discards the will [MQTT-3.1.2-10].
    let store = FaultyStore::new();
    let b = start_on(store.clone()).await;
    let mut sub = persistent(b.addr, "held-sub").await;
    sub.subscribe("h/#", QoS::AtLeastOnce).await;
    sub.send(&Packet::Disconnect(Default::default())).await;
    assert!(sub.closed().await.is_ok());
    store.stall();
    let mut c = connect_packet(V4, "held-pub", true);
    c.will = Some(will("h/will", b"gone", QoS::AtMostOnce));
    let (mut publisher, _) = Raw::connect_with(b.addr, c).await;
    let received = Metrics::get(&b.broker.metrics.messages_received);
    for i in 0..1500u16 {
        publisher.publish("h/x", &i.to_be_bytes(), QoS::AtLeastOnce, false, i + 1).await;
    }
    publisher.send(&Packet::Disconnect(Default::default())).await;
    // Half-close (FIN), and keep reading: closing with the PUBACKs unread would make the kernel reset the
    // connection, and a reset discards what the broker had not read yet.
    tokio::io::AsyncWriteExt::shutdown(&mut publisher.stream).await.expect("half-close");
    store.release();
    let got = publisher.closed().await.expect("the broker closes after the DISCONNECT");
    let acks = got.iter().filter(|p| matches!(p, Packet::PubAck(_))).count();
    assert_eq!(acks, 1500, "every PUBLISH acknowledged");
    assert_eq!(Metrics::get(&b.broker.metrics.messages_received), received + 1500, "every PUBLISH processed");
    assert_eq!(Metrics::get(&b.broker.metrics.wills_published), 0, "the DISCONNECT discarded the will");
}
