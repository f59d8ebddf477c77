//! The router on its own: sessions are bare handles, messages are built here, and `route` fills a vector that
//! the tests read (nothing is queued).

use super::*;
use bytes::Bytes;
use halyard_codec::{SubscriptionOptions, Utf8};

fn session(id: SessionId, client: &str) -> Arc<SessionHandle> {
    Arc::new(SessionHandle::new(id, Arc::from(client), 1000, false))
}

fn opts(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions { qos, ..Default::default() }
}

fn entry(s: &Arc<SessionHandle>, options: SubscriptionOptions, sub_id: Option<u32>) -> SubEntry {
    SubEntry { session: s.clone(), options, sub_id }
}

/// A plain subscription of `s` to `filter` at `qos`; returns whether it existed.
fn sub(r: &Router, filter: &str, s: &Arc<SessionHandle>, qos: QoS) -> bool {
    r.subscribe(filter, None, entry(s, opts(qos), None))
}

fn msg(topic: &str, qos: QoS) -> Arc<Message> {
    message(topic, qos, false, None)
}

fn message(topic: &str, qos: QoS, retain: bool, publisher: Option<&str>) -> Arc<Message> {
    Arc::new(Message {
        id: 0,
        topic: Utf8::from(topic),
        payload: Bytes::from_static(b"x"),
        qos,
        retain,
        properties: None,
        publisher: publisher.map(Arc::from),
        expires_at: None,
    })
}

fn route(r: &Router, m: &Arc<Message>) -> Vec<(Arc<SessionHandle>, Delivery)> {
    let mut out = Vec::new();
    let n = r.route(m, SharedStrategy::RoundRobin, &Metrics::default(), &mut out);
    assert_eq!(n, out.len());
    out
}

/// Client ids that get a message on `topic`, sorted.
fn receivers(r: &Router, topic: &str) -> Vec<String> {
    let mut ids: Vec<String> =
        route(r, &msg(topic, QoS::AtLeastOnce)).iter().map(|(s, _)| s.client_id.to_string()).collect();
    ids.sort();
    ids
}

/// The one delivery of `m` (fails unless exactly one session gets it).
fn only_delivery(r: &Router, m: &Arc<Message>) -> Delivery {
    let mut out = route(r, m);
    assert_eq!(out.len(), 1, "exactly one delivery expected");
    out.pop().expect("one delivery").1
}

#[test]
fn an_exact_filter_matches_its_topic_only() {
    let r = Router::default();
    sub(&r, "a/b", &session(1, "c1"), QoS::AtMostOnce);
    assert_eq!(receivers(&r, "a/b"), vec!["c1"]);
    assert!(receivers(&r, "a/b/c").is_empty());
    assert!(receivers(&r, "a").is_empty());
    assert!(receivers(&r, "a/c").is_empty());
}

#[test]
fn plus_matches_exactly_one_level() {
    // [MQTT-4.7.1-2] the single-level wildcard matches one level, which may be empty.
    let r = Router::default();
    sub(&r, "a/+/c", &session(1, "c1"), QoS::AtMostOnce);
    assert_eq!(receivers(&r, "a/b/c"), vec!["c1"]);
    assert_eq!(receivers(&r, "a//c"), vec!["c1"]);
    assert!(receivers(&r, "a/b/x/c").is_empty());
    assert!(receivers(&r, "a/c").is_empty());
}

#[test]
fn hash_matches_any_number_of_levels_including_the_parent() {
    // [MQTT-4.7.1-1] `a/#` matches `a` itself as well as everything below it.
    let r = Router::default();
    sub(&r, "a/#", &session(1, "c1"), QoS::AtMostOnce);
    for topic in ["a", "a/b", "a/b/c/d"] {
        assert_eq!(receivers(&r, topic), vec!["c1"], "{topic}");
    }
    assert!(receivers(&r, "b").is_empty());
    assert!(receivers(&r, "ab").is_empty());
}

#[test]
fn leading_wildcards_do_not_match_dollar_topics() {
    // [MQTT-4.7.2-1] a filter starting with a wildcard does not match a topic starting with `$`.
    let r = Router::default();
    sub(&r, "#", &session(1, "hash"), QoS::AtMostOnce);
    sub(&r, "+/info", &session(2, "plus"), QoS::AtMostOnce);
    sub(&r, "$SYS/#", &session(3, "sys"), QoS::AtMostOnce);
    assert_eq!(receivers(&r, "$SYS/info"), vec!["sys"]);
    assert_eq!(receivers(&r, "x/info"), vec!["hash", "plus"]);
}

#[test]
fn several_matching_filters_give_one_delivery_with_the_highest_qos() {
    // [MQTT-3.3.4-2] one copy per session, at the maximum QoS of its matching subscriptions.
    let r = Router::default();
    let s = session(1, "c1");
    sub(&r, "a/b", &s, QoS::AtMostOnce);
    sub(&r, "a/+", &s, QoS::ExactlyOnce);
    sub(&r, "a/#", &s, QoS::AtLeastOnce);
    let d = only_delivery(&r, &msg("a/b", QoS::ExactlyOnce));
    assert_eq!(d.qos, QoS::ExactlyOnce);
}

#[test]
fn several_matching_filters_carry_every_subscription_identifier() {
    // [MQTT-3.3.4-3] the one copy carries the identifiers of all matching subscriptions.
    let r = Router::default();
    let s = session(1, "c1");
    r.subscribe("a/b", None, entry(&s, opts(QoS::AtLeastOnce), Some(1)));
    r.subscribe("a/+", None, entry(&s, opts(QoS::AtLeastOnce), Some(2)));
    r.subscribe("#", None, entry(&s, opts(QoS::AtLeastOnce), None));
    r.subscribe("a/#", None, entry(&s, opts(QoS::AtLeastOnce), Some(3)));
    let mut ids = only_delivery(&r, &msg("a/b", QoS::AtLeastOnce)).sub_ids;
    ids.sort_unstable();
    assert_eq!(ids, vec![1, 2, 3]);
}

#[test]
fn different_sessions_each_get_their_own_copy() {
    let r = Router::default();
    sub(&r, "a/#", &session(1, "c1"), QoS::AtMostOnce);
    sub(&r, "a/b", &session(2, "c2"), QoS::AtMostOnce);
    sub(&r, "a/b", &session(3, "c3"), QoS::AtMostOnce);
    assert_eq!(receivers(&r, "a/b"), vec!["c1", "c2", "c3"]);
}

#[test]
fn granted_qos_caps_the_delivered_qos() {
    // [MQTT-3.8.4-8] delivered at min(publish QoS, granted QoS).
    let r = Router::default();
    sub(&r, "low", &session(1, "c1"), QoS::AtMostOnce);
    sub(&r, "high", &session(2, "c2"), QoS::ExactlyOnce);
    assert_eq!(only_delivery(&r, &msg("low", QoS::ExactlyOnce)).qos, QoS::AtMostOnce);
    assert_eq!(only_delivery(&r, &msg("high", QoS::AtLeastOnce)).qos, QoS::AtLeastOnce);
}

#[test]
fn no_local_skips_the_publishers_own_session() {
    // [MQTT-3.8.3-3] with No Local, a session's own messages are not forwarded to it.
    let r = Router::default();
    let no_local = SubscriptionOptions { no_local: true, ..opts(QoS::AtMostOnce) };
    r.subscribe("t", None, entry(&session(1, "me"), no_local, None));
    r.subscribe("t", None, entry(&session(2, "other"), no_local, None));
    let from_me = message("t", QoS::AtMostOnce, false, Some("me"));
    let got: Vec<String> = route(&r, &from_me).iter().map(|(s, _)| s.client_id.to_string()).collect();
    assert_eq!(got, vec!["other"]);
    // Without No Local the publisher gets its own message.
    sub(&r, "t", &session(3, "echo"), QoS::AtMostOnce);
    let from_echo = message("t", QoS::AtMostOnce, false, Some("echo"));
    let mut got: Vec<String> = route(&r, &from_echo).iter().map(|(s, _)| s.client_id.to_string()).collect();
    got.sort();
    assert_eq!(got, vec!["echo", "me", "other"]);
}

#[test]
fn retain_as_published_keeps_the_retain_flag() {
    // [MQTT-3.3.1-13] with Retain As Published the RETAIN flag is forwarded as it was published.
    let r = Router::default();
    let rap = SubscriptionOptions { retain_as_published: true, ..opts(QoS::AtMostOnce) };
    r.subscribe("t", None, entry(&session(1, "c1"), rap, None));
    assert!(only_delivery(&r, &message("t", QoS::AtMostOnce, true, None)).retain);
    assert!(!only_delivery(&r, &message("t", QoS::AtMostOnce, false, None)).retain);
}

#[test]
fn without_retain_as_published_live_deliveries_clear_the_retain_flag() {
    // [MQTT-3.3.1-12] without Retain As Published the RETAIN flag is cleared on forwarded messages.
    let r = Router::default();
    sub(&r, "t", &session(1, "c1"), QoS::AtMostOnce);
    assert!(!only_delivery(&r, &message("t", QoS::AtMostOnce, true, None)).retain);
}

#[test]
fn unsubscribe_stops_matching_and_says_whether_it_existed() {
    let r = Router::default();
    let s = session(1, "c1");
    sub(&r, "a/+", &s, QoS::AtMostOnce);
    sub(&r, "b", &s, QoS::AtMostOnce);
    assert!(r.unsubscribe("a/+", None, s.id));
    assert!(receivers(&r, "a/x").is_empty());
    assert_eq!(receivers(&r, "b"), vec!["c1"], "other subscriptions stay");
    assert!(!r.unsubscribe("a/+", None, s.id), "already gone");
    assert!(!r.unsubscribe("a/+", None, 99), "never there");
    assert_eq!(r.subscription_count(), 1);
}

#[test]
fn subscribe_returns_whether_the_subscription_existed_and_replaces_its_options() {
    // [MQTT-3.8.4-3] a repeated subscription replaces the existing one.
    let r = Router::default();
    let s = session(1, "c1");
    assert!(!sub(&r, "t", &s, QoS::AtMostOnce), "new");
    assert!(sub(&r, "t", &s, QoS::ExactlyOnce), "existed");
    assert!(!sub(&r, "t", &session(2, "c2"), QoS::AtMostOnce), "new for another session");
    assert_eq!(r.subscription_count(), 2);
    let out = route(&r, &msg("t", QoS::ExactlyOnce));
    let d = out.iter().find(|(h, _)| h.id == 1).map(|(_, d)| d.qos);
    assert_eq!(d, Some(QoS::ExactlyOnce), "the new options apply");
}

#[test]
fn a_message_nobody_wants_is_counted() {
    let r = Router::default();
    let metrics = Metrics::default();
    let mut out = Vec::new();
    assert_eq!(r.route(&msg("nobody", QoS::AtMostOnce), SharedStrategy::RoundRobin, &metrics, &mut out), 0);
    assert_eq!(Metrics::get(&metrics.messages_no_subscribers), 1);
}
