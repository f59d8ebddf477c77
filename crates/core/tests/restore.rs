//! Restore from the durable store: state is built through the engine as a connection would build it, the
//! broker is dropped (its store commits what was submitted and closes the file), and `Broker::open` on the same
//! directory must give it all back. No sockets, no sleeping: a session expired "while the broker was down" is
//! written with a disconnection time in the past.

use bytes::Bytes;
use halyard_codec::{QoS, SubscriptionOptions, Utf8};
use halyard_core::broker::{Attached, DetachReason};
use halyard_core::config::Config;
use halyard_core::persist::{self, SessionRecord, WillRecord};
use halyard_core::session::{InflightEntry, Queued, Stage, SubscriptionRecord};
use halyard_core::{Broker, Message, Writes};
use halyard_store::{Fsync, Op, RedbStore, Store};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;

const CLIENT: &str = "keeper";
/// The persistent session's subscription: filter, QoS 1, subscription identifier 4.
const FILTER: &str = "r/+";
const SUB_ID: u32 = 4;
/// The inbound QoS 2 packet id left awaiting PUBREL.
const AWAITING: u16 = 9;
/// The packet id the in-flight message was sent with.
const SENT_AS: u16 = 1;

fn config(dir: &Path) -> Config {
    let mut c = Config::default();
    c.node.data_dir = dir.display().to_string();
    c.durable_sessions.enable = true;
    c
}

fn qos1() -> SubscriptionOptions {
    SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() }
}

fn message(b: &Broker, topic: &str, payload: &'static str, retain: bool) -> Arc<Message> {
    Arc::new(Message {
        id: b.new_message_id(),
        topic: Utf8::from(topic),
        payload: Bytes::from_static(payload.as_bytes()),
        qos: QoS::AtLeastOnce,
        retain,
        properties: None,
        publisher: Some(Arc::from("publisher")),
        expires_at: None,
    })
}

async fn attach(b: &Arc<Broker>, id: &str, expiry: u32) -> Attached {
    let (tx, _rx) = oneshot::channel();
    let zone = b.config.mqtt.clone();
    b.attach(&Arc::from(id), false, expiry, &zone, tx, Instant::now()).await
}

/// Closes the broker as `halyard` does at shutdown: whatever was submitted is committed, then the store file
/// is released (the store's drop joins its writer), so the directory can be opened again at once.
fn close(b: Arc<Broker>) {
    b.store.flush().expect("flush");
    assert_eq!(Arc::strong_count(&b), 1, "nothing else holds the broker");
    drop(b);
}

/// Builds, in `dir`, a persistent session `keeper` (expiry 1 h) subscribed to `r/+`, that was sent `r/1` (in
/// flight as packet 1, awaiting PUBACK), has `r/2` and `r/3` queued, and has inbound QoS 2 packet 9 awaiting
/// PUBREL; plus a retained message on `ret/t`. Then the session goes offline and the broker is closed.
async fn stored_session(dir: &Path) {
    let b = Broker::open(config(dir)).expect("open");
    let mut a = attach(&b, CLIENT, 3600).await;
    assert!(!a.present);
    b.subscribe(&a.handle, FILTER, None, qos1(), Some(SUB_ID));
    a.state.subscriptions.insert(FILTER.to_string(), SubscriptionRecord { options: qos1(), sub_id: Some(SUB_ID) });
    b.persist_subscriptions(&a.handle, &a.state);
    for (topic, payload) in [("r/1", "one"), ("r/2", "two"), ("r/3", "three")] {
        assert_eq!(b.publish(message(&b, topic, payload, false)), 1);
    }
    b.publish(message(&b, "ret/t", "kept", true));
    // The connection sends the first queued message, as the protocol layer does: in flight, and its stored
    // entry updated with the packet id and stage.
    let mut out = Vec::new();
    a.handle.take(1, 1, u64::MAX, &mut out);
    let Some(Queued::Ready(d)) = out.pop() else { panic!("r/1 is ready in memory while online") };
    assert_eq!(d.msg.topic.as_str(), "r/1");
    let mut sent = Writes::default();
    a.handle.record_sent(&d, SENT_AS, Stage::AwaitPubAck, &mut sent);
    b.submit(sent).expect("submit");
    a.state.last_packet_id = SENT_AS;
    a.state.inflight.push_back(InflightEntry {
        packet_id: SENT_AS,
        delivery: d,
        stage: Stage::AwaitPubAck,
        sent_at: Instant::now(),
    });
    // An inbound QoS 2 PUBLISH whose PUBREL has not come.
    a.state.awaiting_rel.insert(AWAITING, Instant::now());
    b.submit(b.awaiting_rel_put(&a.handle, AWAITING)).expect("submit");
    b.detach(&a.handle, a.state, None, DetachReason::Closed, Instant::now());
    close(b);
}

/// Takes everything queued for `client` and reads stored slots back from the store: the topics, in order.
fn drain_topics(b: &Broker, client: &str) -> Vec<String> {
    let h = b.registry.get(client).expect("session in the registry");
    let mut out = Vec::new();
    h.take(usize::MAX, usize::MAX, u64::MAX, &mut out);
    let mut topics = Vec::new();
    for q in out {
        match q {
            Queued::Ready(d) => topics.push(d.msg.topic.to_string()),
            Queued::Stored { seq, .. } => {
                let loaded = b.load_stored(&h, &[seq]);
                assert_eq!(loaded.len(), 1, "stored entry {seq} readable");
                topics.push(loaded[0].msg.topic.to_string());
            }
        }
    }
    topics
}

/// A broker reopened on the state `stored_session` left.
async fn reopened(dir: &tempfile::TempDir) -> Arc<Broker> {
    stored_session(dir.path()).await;
    Broker::open(config(dir.path())).expect("reopen")
}

#[tokio::test]
async fn a_persistent_session_is_back_in_the_registry() {
    let dir = tempfile::tempdir().expect("temp dir");
    let b = reopened(&dir).await;
    let h = b.registry.get(CLIENT).expect("restored");
    assert_eq!(b.registry.len(), 1);
    assert!(!h.is_online(), "restored sessions are offline until their client returns");
    assert_eq!(h.expiry_interval(), 3600);
}

#[tokio::test]
async fn restored_subscriptions_route_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let b = reopened(&dir).await;
    assert_eq!(b.router.subscription_count(), 1);
    assert_eq!(b.publish(message(&b, "r/4", "four", false)), 1, "r/+ matches again");
    let h = b.registry.get(CLIENT).expect("restored");
    let mut out = Vec::new();
    h.take(usize::MAX, usize::MAX, u64::MAX, &mut out);
    let Some(Queued::Stored { seq, .. }) = out.last().cloned() else { panic!("the new message is stored: {out:?}") };
    let d = b.load_stored(&h, &[seq]);
    assert_eq!(d[0].msg.topic.as_str(), "r/4");
    assert_eq!(d[0].sub_ids, vec![SUB_ID], "with its subscription identifier [MQTT-3.3.4-3]");
    assert_eq!(d[0].qos, QoS::AtLeastOnce);
}

#[tokio::test]
async fn queued_messages_come_back_in_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let b = reopened(&dir).await;
    assert_eq!(b.registry.get(CLIENT).expect("restored").queue_len(), 2);
    assert_eq!(drain_topics(&b, CLIENT), vec!["r/2", "r/3"]);
}

#[tokio::test]
async fn new_messages_queue_behind_the_restored_ones() {
    let dir = tempfile::tempdir().expect("temp dir");
    let b = reopened(&dir).await;
    b.publish(message(&b, "r/4", "four", false));
    assert_eq!(drain_topics(&b, CLIENT), vec!["r/2", "r/3", "r/4"]);
}

#[tokio::test]
async fn the_in_flight_message_is_in_flight_again() {
    // [MQTT-4.4.0-1] on reconnect with a kept session, unacknowledged PUBLISH packets are resent.
    let dir = tempfile::tempdir().expect("temp dir");
    let b = reopened(&dir).await;
    let a = attach(&b, CLIENT, 3600).await;
    assert!(a.present, "Session Present: the session was kept");
    assert_eq!(a.state.inflight.len(), 1);
    let e = &a.state.inflight[0];
    assert_eq!((e.packet_id, e.stage), (SENT_AS, Stage::AwaitPubAck));
    assert_eq!((e.delivery.msg.topic.as_str(), &e.delivery.msg.payload[..]), ("r/1", &b"one"[..]));
    assert_eq!(e.delivery.sub_ids, vec![SUB_ID]);
    assert!(a.state.last_packet_id >= SENT_AS, "new packet ids do not collide with the resent one");
    assert_eq!(a.state.subscriptions.get(FILTER).map(|s| s.sub_id), Some(Some(SUB_ID)));
}

#[tokio::test]
async fn an_inbound_qos2_id_still_awaits_its_pubrel() {
    // [MQTT-4.3.3-10] until PUBREL, a resent PUBLISH with the same id must not be delivered again.
    let dir = tempfile::tempdir().expect("temp dir");
    let b = reopened(&dir).await;
    let a = attach(&b, CLIENT, 3600).await;
    assert_eq!(a.state.awaiting_rel_ids(), vec![AWAITING]);
}

#[tokio::test]
async fn a_retained_message_comes_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let b = reopened(&dir).await;
    let kept = b.retainer.matching("ret/#");
    assert_eq!(kept.len(), 1);
    assert_eq!((kept[0].topic.as_str(), &kept[0].payload[..]), ("ret/t", &b"kept"[..]));
    assert!(kept[0].retain);
}

#[tokio::test]
async fn a_session_that_expired_while_the_broker_was_down_ends_at_open_and_its_will_goes_out() {
    // [MQTT-3.1.2-23] the session is kept only for its expiry interval; [MQTT-3.1.3-9] its will is published
    // when it ends. The records are written as the broker writes them, the dead one with a disconnection a
    // minute ago and an expiry of 1 s.
    let dir = tempfile::tempdir().expect("temp dir");
    let now_ms = persist::unix_ms_now();
    let watcher = SessionRecord {
        expiry_interval: 3600,
        disconnected_at_ms: now_ms,
        subscriptions: std::collections::BTreeMap::from([(
            "will/#".to_string(),
            SubscriptionRecord { options: qos1(), sub_id: None },
        )]),
        ..Default::default()
    };
    let dead = SessionRecord {
        expiry_interval: 1,
        disconnected_at_ms: now_ms - 60_000,
        will: Some(WillRecord {
            topic: Utf8::from("will/dead"),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: None,
            message_expiry: None,
            delay: 0,
        }),
        ..Default::default()
    };
    {
        let (store, _) = RedbStore::open(dir.path(), Fsync::Batch).expect("open store");
        let put = |client: &str, rec: &SessionRecord| Op::PutSession {
            client: Arc::from(client),
            data: persist::encode_session(rec),
        };
        store.submit(vec![put("watcher", &watcher), put("dead", &dead)]).expect("submit");
        store.flush().expect("flush");
    }
    let b = Broker::open(config(dir.path())).expect("open");
    assert!(b.registry.get("dead").is_none(), "ended at open");
    assert_eq!(drain_topics(&b, "watcher"), vec!["will/dead"], "its will was published to restored subscribers");
    b.store.flush().expect("flush");
    let r = b.store.restore().expect("read the store");
    let stored: Vec<&str> = r.sessions.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(stored, vec!["watcher"], "the expired session's record is deleted");
}
