//! Shared-subscription groups, driven through the router as the broker drives them.

use crate::config::SharedStrategy;
use crate::message::{Delivery, Message};
use crate::metrics::Metrics;
use crate::router::{Router, SubEntry};
use crate::session::{SessionHandle, SessionId};
use bytes::Bytes;
use halyard_codec::{QoS, SubscriptionOptions, Utf8};
use std::collections::HashMap;
use std::sync::Arc;

/// A session handle; `online` attaches it to a (dropped) control channel, as a connection would.
fn session(id: SessionId, client: &str, online: bool) -> Arc<SessionHandle> {
    let h = Arc::new(SessionHandle::new(id, Arc::from(client), 1000, false));
    if online {
        h.attach(tokio::sync::oneshot::channel().0);
    }
    h
}

/// `$share/<group>/<filter>` for `s` at QoS 1; returns whether it existed.
fn join(r: &Router, group: &str, filter: &str, s: &Arc<SessionHandle>) -> bool {
    let options = SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() };
    r.subscribe(filter, Some(group), SubEntry { session: s.clone(), options, sub_id: None })
}

fn msg(topic: &str, publisher: Option<&str>) -> Arc<Message> {
    Arc::new(Message {
        id: 0,
        topic: Utf8::from(topic),
        payload: Bytes::from_static(b"x"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: None,
        publisher: publisher.map(Arc::from),
        expires_at: None,
    })
}

fn route(r: &Router, m: &Arc<Message>, strategy: SharedStrategy) -> Vec<(Arc<SessionHandle>, Delivery)> {
    let mut out = Vec::new();
    r.route(m, strategy, &Metrics::default(), &mut out);
    out
}

/// The client id that gets each of `n` messages (topic `s/<i>` unless `topic` is given, from `publisher`).
fn picks(r: &Router, strategy: SharedStrategy, n: usize, topic: Option<&str>, publisher: Option<&str>) -> Vec<String> {
    (0..n)
        .map(|i| {
            let t = topic.map_or_else(|| format!("s/{i}"), str::to_string);
            let out = route(r, &msg(&t, publisher), strategy);
            assert_eq!(out.len(), 1, "one member per message");
            out[0].0.client_id.to_string()
        })
        .collect()
}

fn counts(ids: &[String]) -> HashMap<&str, usize> {
    let mut m = HashMap::new();
    for id in ids {
        *m.entry(id.as_str()).or_default() += 1;
    }
    m
}

#[test]
fn a_message_goes_to_exactly_one_member_of_a_group() {
    // [MQTT-4.8.2-2] each message to a shared subscription goes to one session of the group.
    let r = Router::default();
    for (i, c) in ["a", "b", "c"].iter().enumerate() {
        join(&r, "g", "s/#", &session(i as u64 + 1, c, true));
    }
    for strategy in [SharedStrategy::RoundRobin, SharedStrategy::Random, SharedStrategy::Sticky] {
        let out = route(&r, &msg("s/1", None), strategy);
        assert_eq!(out.len(), 1, "{strategy:?}");
        let origin = out[0].1.shared.as_deref().expect("marked as a shared delivery");
        assert_eq!((&*origin.group, &*origin.filter), ("g", "s/#"));
    }
}

#[test]
fn two_groups_on_one_filter_get_one_copy_each() {
    // [MQTT-4.8.2-2] one copy per group: groups on the same filter are independent.
    let r = Router::default();
    join(&r, "g1", "s/#", &session(1, "a", true));
    join(&r, "g1", "s/#", &session(2, "b", true));
    join(&r, "g2", "s/#", &session(3, "c", true));
    join(&r, "g2", "s/#", &session(4, "d", true));
    for _ in 0..10 {
        let out = route(&r, &msg("s/x", None), SharedStrategy::RoundRobin);
        let mut groups: Vec<(String, String)> = out
            .iter()
            .map(|(s, d)| (d.shared.as_ref().expect("shared").group.to_string(), s.client_id.to_string()))
            .collect();
        groups.sort();
        assert_eq!(groups.len(), 2, "{groups:?}");
        assert_eq!(groups[0].0, "g1");
        assert!(["a", "b"].contains(&groups[0].1.as_str()), "{groups:?}");
        assert_eq!(groups[1].0, "g2");
        assert!(["c", "d"].contains(&groups[1].1.as_str()), "{groups:?}");
    }
}

#[test]
fn a_plain_subscriber_and_a_group_each_get_a_copy() {
    let r = Router::default();
    join(&r, "g", "s/#", &session(1, "member", true));
    let plain = session(2, "plain", true);
    let options = SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() };
    r.subscribe("s/#", None, SubEntry { session: plain, options, sub_id: None });
    let out = route(&r, &msg("s/1", None), SharedStrategy::RoundRobin);
    let mut got: Vec<(String, bool)> = out.iter().map(|(s, d)| (s.client_id.to_string(), d.shared.is_some())).collect();
    got.sort();
    assert_eq!(got, vec![("member".to_string(), true), ("plain".to_string(), false)]);
}

#[test]
fn round_robin_spreads_messages_evenly() {
    let r = Router::default();
    for (i, c) in ["a", "b", "c"].iter().enumerate() {
        join(&r, "g", "s/#", &session(i as u64 + 1, c, true));
    }
    let got = picks(&r, SharedStrategy::RoundRobin, 30, None, None);
    assert_eq!(counts(&got), HashMap::from([("a", 10), ("b", 10), ("c", 10)]));
}

#[test]
fn hash_clientid_sends_one_publishers_messages_to_one_member() {
    let r = Router::default();
    for (i, c) in ["a", "b", "c", "d"].iter().enumerate() {
        join(&r, "g", "s/#", &session(i as u64 + 1, c, true));
    }
    for publisher in ["p1", "p2", "p3"] {
        let got = picks(&r, SharedStrategy::HashClientid, 20, None, Some(publisher));
        assert_eq!(counts(&got).len(), 1, "{publisher}: every topic to the same member: {got:?}");
    }
}

#[test]
fn hash_topic_sends_one_topics_messages_to_one_member() {
    let r = Router::default();
    for (i, c) in ["a", "b", "c", "d"].iter().enumerate() {
        join(&r, "g", "s/#", &session(i as u64 + 1, c, true));
    }
    for topic in ["s/1", "s/2", "s/3"] {
        let got: Vec<String> = ["p1", "p2", "p3", "p4", "p5"]
            .iter()
            .flat_map(|p| picks(&r, SharedStrategy::HashTopic, 4, Some(topic), Some(p)))
            .collect();
        assert_eq!(counts(&got).len(), 1, "{topic}: every publisher to the same member: {got:?}");
    }
}

#[test]
fn sticky_keeps_one_member_while_it_stays() {
    let r = Router::default();
    for (i, c) in ["a", "b", "c"].iter().enumerate() {
        join(&r, "g", "s/#", &session(i as u64 + 1, c, true));
    }
    let got = picks(&r, SharedStrategy::Sticky, 20, None, None);
    assert_eq!(counts(&got).len(), 1, "{got:?}");
}

#[test]
fn online_members_are_preferred_over_offline_ones() {
    let r = Router::default();
    join(&r, "g", "s/#", &session(1, "off1", false));
    join(&r, "g", "s/#", &session(2, "on", true));
    join(&r, "g", "s/#", &session(3, "off2", false));
    for strategy in [SharedStrategy::RoundRobin, SharedStrategy::Random, SharedStrategy::HashTopic] {
        let got = picks(&r, strategy, 12, None, None);
        assert_eq!(counts(&got), HashMap::from([("on", 12)]), "{strategy:?}");
    }
}

#[test]
fn offline_members_get_messages_when_no_member_is_online() {
    // A persistent member queues the message rather than the group losing it.
    let r = Router::default();
    join(&r, "g", "s/#", &session(1, "off1", false));
    join(&r, "g", "s/#", &session(2, "off2", false));
    let got = picks(&r, SharedStrategy::RoundRobin, 10, None, None);
    assert_eq!(counts(&got), HashMap::from([("off1", 5), ("off2", 5)]));
}

#[test]
fn ended_members_are_never_picked() {
    let r = Router::default();
    let gone = session(1, "gone", true);
    join(&r, "g", "s/#", &gone);
    join(&r, "g", "s/#", &session(2, "stays", true));
    gone.mark_removed();
    let got = picks(&r, SharedStrategy::RoundRobin, 6, None, None);
    assert_eq!(counts(&got), HashMap::from([("stays", 6)]));
}

#[test]
fn redispatch_picks_another_member_never_the_leaving_one() {
    let r = Router::default();
    for (i, c) in ["a", "b", "c"].iter().enumerate() {
        join(&r, "g", "s/#", &session(i as u64 + 1, c, true));
    }
    for _ in 0..20 {
        let out = route(&r, &msg("s/1", None), SharedStrategy::RoundRobin);
        let (leaving, d) = &out[0];
        let (to, nd) = r.redispatch(d, leaving.id, SharedStrategy::RoundRobin).expect("another member takes it");
        assert_ne!(to.id, leaving.id);
        assert_eq!(nd.shared, d.shared, "still a delivery of the same group");
        assert!(Arc::ptr_eq(&nd.msg, &d.msg), "the same message");
    }
}

#[test]
fn redispatch_finds_nobody_when_the_leaving_member_is_alone() {
    let r = Router::default();
    let only = session(1, "only", true);
    join(&r, "g", "s/#", &only);
    let out = route(&r, &msg("s/1", None), SharedStrategy::RoundRobin);
    assert!(r.redispatch(&out[0].1, only.id, SharedStrategy::RoundRobin).is_none());
}

#[test]
fn redispatch_of_a_plain_delivery_is_none() {
    let r = Router::default();
    let s = session(1, "plain", true);
    r.subscribe("t", None, SubEntry { session: s.clone(), options: SubscriptionOptions::default(), sub_id: None });
    let out = route(&r, &msg("t", None), SharedStrategy::RoundRobin);
    assert!(r.redispatch(&out[0].1, s.id, SharedStrategy::RoundRobin).is_none());
}

#[test]
fn joining_twice_says_the_member_existed_and_keeps_one_membership() {
    let r = Router::default();
    let a = session(1, "a", true);
    assert!(!join(&r, "g", "s/#", &a), "new group");
    assert!(!join(&r, "g", "s/#", &session(2, "b", true)), "new member of an existing group");
    assert!(join(&r, "g", "s/#", &a), "already a member");
    let got = picks(&r, SharedStrategy::RoundRobin, 10, None, None);
    assert_eq!(counts(&got), HashMap::from([("a", 5), ("b", 5)]), "a is in the group once");
}

#[test]
fn a_group_with_no_members_left_goes_away() {
    let r = Router::default();
    let (a, b) = (session(1, "a", true), session(2, "b", true));
    join(&r, "g", "s/#", &a);
    join(&r, "g", "s/#", &b);
    assert_eq!(r.subscription_count(), 1, "one group");
    assert!(r.unsubscribe("s/#", Some("g"), a.id));
    assert_eq!(r.subscription_count(), 1, "b is still in it");
    assert!(r.unsubscribe("s/#", Some("g"), b.id));
    assert_eq!(r.subscription_count(), 0, "the empty group is removed");
    assert!(route(&r, &msg("s/1", None), SharedStrategy::RoundRobin).is_empty());
    assert!(!r.unsubscribe("s/#", Some("g"), b.id), "nothing left to remove");
    assert!(!join(&r, "g", "s/#", &a), "joining again starts a new group");
}
