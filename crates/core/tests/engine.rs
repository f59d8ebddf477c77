//! The engine driven without sockets and without a clock of its own: sessions are attached and detached as a
//! connection would, and time passes only when the test hands an `Instant` to `Broker::handle_timeout`. Nothing
//! here sleeps; a deadline is checked one millisecond before and at the instant it is due.

use bytes::Bytes;
use halyard_codec::{QoS, SubscriptionOptions, Utf8};
use halyard_core::broker::{Attached, DetachReason, Will};
use halyard_core::config::{load, Source};
use halyard_core::metrics::Metrics;
use halyard_core::session::Queued;
use halyard_core::{Broker, Message};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

fn broker() -> Arc<Broker> {
    Broker::new(load(&Source { file: None, env: Vec::new() }).expect("config"))
}

async fn attach(b: &Arc<Broker>, id: &str, clean: bool, expiry: u32, now: Instant) -> Attached {
    let (tx, _rx) = oneshot::channel();
    let zone = b.config.mqtt.clone();
    b.attach(&Arc::from(id), clean, expiry, &zone, tx, now).await
}

fn will(topic: &str, delay: u32) -> Will {
    Will {
        topic: Utf8::from(topic),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: None,
        message_expiry: None,
        delay,
    }
}

/// A subscriber to `filter`, returned attached (its queue is where deliveries land).
async fn watcher(b: &Arc<Broker>, filter: &str, now: Instant) -> Attached {
    let a = attach(b, &format!("watch-{filter}"), true, 0, now).await;
    b.subscribe(&a.handle, filter, None, SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() }, None);
    a
}

/// Topics queued for the session, in order (taken out of its queue).
fn queued_topics(a: &Attached) -> Vec<String> {
    let mut out = Vec::new();
    a.handle.take(usize::MAX, usize::MAX, u64::MAX, &mut out);
    out.into_iter()
        .map(|q| match q {
            Queued::Ready(d) => d.msg.topic.to_string(),
            Queued::Stored { seq, .. } => format!("stored:{seq}"),
        })
        .collect()
}

#[tokio::test]
async fn will_delay_fires_at_its_deadline_not_before() {
    // [MQTT-3.1.3-9] the will goes out Will Delay Interval after the connection closed, if the session is not
    // resumed first.
    let b = broker();
    let t0 = Instant::now();
    let w = watcher(&b, "w/#", t0).await;
    let a = attach(&b, "dev", false, 60, t0).await;
    b.detach(&a.handle, a.state, Some(will("w/dev", 5)), DetachReason::Closed, t0);
    assert_eq!(b.next_timeout(), Some(t0 + Duration::from_secs(5)));
    b.handle_timeout(t0 + Duration::from_millis(4_999));
    assert!(queued_topics(&w).is_empty(), "not before its delay");
    b.handle_timeout(t0 + Duration::from_secs(5));
    assert_eq!(queued_topics(&w), vec!["w/dev"]);
    assert_eq!(Metrics::get(&b.metrics.wills_published), 1);
    // The session itself goes on until its expiry.
    assert!(b.registry.get("dev").is_some());
    assert_eq!(b.next_timeout(), Some(t0 + Duration::from_secs(60)));
    b.handle_timeout(t0 + Duration::from_secs(30));
    assert!(queued_topics(&w).is_empty(), "published once");
}

#[tokio::test]
async fn session_expiry_ends_the_session_at_its_deadline() {
    // [MQTT-3.1.2-23] the session is kept for Session Expiry Interval after the network connection closes.
    let b = broker();
    let t0 = Instant::now();
    let a = attach(&b, "exp", false, 10, t0).await;
    let h = a.handle.clone();
    b.detach(&a.handle, a.state, None, DetachReason::Closed, t0);
    b.handle_timeout(t0 + Duration::from_millis(9_999));
    assert!(b.registry.get("exp").is_some(), "kept until its expiry");
    b.handle_timeout(t0 + Duration::from_secs(10));
    assert!(b.registry.get("exp").is_none(), "ended at its expiry");
    assert!(h.is_removed());
    assert_eq!(Metrics::get(&b.metrics.sessions_expired), 1);
    assert_eq!((b.armed_timers(), b.next_timeout()), (0, None));
}

#[tokio::test]
async fn a_will_delayed_beyond_the_expiry_goes_when_the_session_ends() {
    // [MQTT-3.1.3-9] the will is published when the delay passes or the session ends, whichever comes first.
    let b = broker();
    let t0 = Instant::now();
    let w = watcher(&b, "w/#", t0).await;
    let a = attach(&b, "short", false, 3, t0).await;
    b.detach(&a.handle, a.state, Some(will("w/short", 100)), DetachReason::Closed, t0);
    b.handle_timeout(t0 + Duration::from_millis(2_999));
    assert!(queued_topics(&w).is_empty());
    b.handle_timeout(t0 + Duration::from_secs(3));
    assert_eq!(queued_topics(&w), vec!["w/short"]);
    assert!(b.registry.get("short").is_none());
}

#[tokio::test]
async fn a_reconnect_cancels_the_offline_deadlines() {
    // A resumed session sends no delayed will [MQTT-3.1.3-9] and does not expire; a client reconnecting in a loop
    // leaves no timers behind.
    let b = broker();
    let t0 = Instant::now();
    let w = watcher(&b, "w/#", t0).await;
    for i in 0..100u64 {
        let now = t0 + Duration::from_secs(i);
        let a = attach(&b, "loop", false, 60, now).await;
        assert_eq!(b.armed_timers(), 0, "online: nothing armed (round {i})");
        b.detach(&a.handle, a.state, Some(will("w/loop", 30)), DetachReason::Closed, now);
        assert_eq!(b.armed_timers(), 1);
    }
    let a = attach(&b, "loop", false, 60, t0 + Duration::from_secs(100)).await;
    assert!(a.present);
    b.handle_timeout(t0 + Duration::from_secs(10_000));
    assert!(queued_topics(&w).is_empty(), "no will after a resume");
    assert!(b.registry.get("loop").is_some(), "no expiry while online");
}

#[tokio::test]
async fn a_session_without_expiry_ends_with_its_connection_and_sends_its_will_at_once() {
    // [MQTT-3.1.3-9]: the session ends when the connection closes (expiry 0), so the will goes now, whatever its
    // delay; nothing is armed.
    let b = broker();
    let t0 = Instant::now();
    let w = watcher(&b, "w/#", t0).await;
    let a = attach(&b, "gone", true, 0, t0).await;
    b.detach(&a.handle, a.state, Some(will("w/gone", 30)), DetachReason::Closed, t0);
    assert_eq!(queued_topics(&w), vec!["w/gone"]);
    assert!(b.registry.get("gone").is_none());
    assert_eq!(b.armed_timers(), 0);
}

#[tokio::test]
async fn message_expiry_counts_from_publication() {
    // [MQTT-3.3.2-5] a message whose expiry passed is not delivered; [MQTT-3.3.2-6] what is left is sent.
    let b = broker();
    let t0 = Instant::now();
    let msg = Message {
        id: b.new_message_id(),
        topic: Utf8::from("e/1"),
        payload: Bytes::from_static(b"x"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: None,
        publisher: None,
        expires_at: Some(t0 + Duration::from_secs(10)),
    };
    assert!(!msg.is_expired(t0 + Duration::from_millis(9_999)));
    assert!(msg.is_expired(t0 + Duration::from_secs(10)));
    assert_eq!(msg.remaining_expiry(t0 + Duration::from_millis(3_500)), Some(7));
}
