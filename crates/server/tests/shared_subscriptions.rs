//! Shared subscriptions (MQTT 5 §4.8.2: `$share/<ShareName>/<filter>`, and EMQX's `$queue/<filter>`) over real
//! sockets: distribution by each strategy, redelivery when a member leaves, and the SUBACK / DISCONNECT codes.
//! Raw clients are used throughout so that acknowledgements (or their absence) are under the test's control.

mod common;
use common::*;
use halyard_codec::reason::rc;
use halyard_codec::{
    Packet, ProtocolVersion, ProtocolVersion::*, PubResp, Publish, QoS, Subscribe, SubscriptionOptions, Unsubscribe,
    Utf8,
};
use halyard_core::metrics::Metrics;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

const SHORT: Duration = Duration::from_millis(300);

/// A client (clean start: its session ends with the connection) subscribed to `filter` at `qos`.
async fn member(addr: SocketAddr, version: ProtocolVersion, id: &str, filter: &str, qos: QoS) -> Raw {
    let (mut r, _) = Raw::connect(addr, version, id, true).await;
    granted(&mut r, filter, qos).await;
    r
}

/// Subscribes and checks that `qos` was granted.
async fn granted(r: &mut Raw, filter: &str, qos: QoS) {
    let ack = r.subscribe(filter, qos).await;
    assert!(matches!(&ack, Packet::SubAck(a) if a.reason_codes == vec![qos as u8]), "{filter}: {ack:?}");
}

async fn publisher(addr: SocketAddr, id: &str) -> Raw {
    Raw::connect(addr, V5, id, true).await.0
}

/// Publishes at QoS 1 and waits for the PUBACK, so the message has been routed when this returns.
async fn publish_routed(p: &mut Raw, topic: &str, payload: &[u8], packet_id: u16) {
    p.publish(topic, payload, QoS::AtLeastOnce, false, packet_id).await;
    match p.recv().await {
        Some(Packet::PubAck(a)) if a.packet_id == packet_id && a.reason_code < 0x80 => {}
        other => panic!("expected PUBACK {packet_id}, got {other:?}"),
    }
}

/// Publishes `n` messages whose payloads are their sequence numbers 0..n.
async fn publish_seq(p: &mut Raw, topic: &str, n: usize) {
    for i in 0..n {
        publish_routed(p, topic, i.to_string().as_bytes(), i as u16 + 1).await;
    }
}

fn text(p: &Publish) -> String {
    String::from_utf8(p.payload.to_vec()).expect("UTF-8 payload")
}

fn seq(p: &Publish) -> usize {
    text(p).parse().expect("sequence number payload")
}

/// Receives from `members` (acknowledging every PUBLISH) until `total` messages arrived across all of them, then
/// checks that nothing more arrives at any. Returns what each member got, in arrival order.
async fn collect(members: &mut [Raw], total: usize) -> Vec<Vec<Publish>> {
    let deadline = Instant::now() + WAIT;
    let mut got: Vec<Vec<Publish>> = vec![Vec::new(); members.len()];
    let mut n = 0;
    while n < total {
        assert!(Instant::now() < deadline, "only {n} of {total} messages arrived within {WAIT:?}");
        for (i, m) in members.iter_mut().enumerate() {
            match m.recv_within(Duration::from_millis(20)).await {
                None => {}
                Some(Packet::Publish(p)) => {
                    m.ack(&p).await;
                    got[i].push(p);
                    n += 1;
                }
                Some(other) => panic!("member {i}: expected PUBLISH, got {other:?}"),
            }
        }
    }
    for m in members.iter_mut() {
        m.expect_silence(SHORT).await;
    }
    got
}

/// Which member got each sequence number 0..n; panics if one was delivered twice or not at all.
fn owners(got: &[Vec<Publish>], n: usize) -> Vec<usize> {
    let mut owner = vec![None; n];
    for (m, ps) in got.iter().enumerate() {
        for p in ps {
            let s = seq(p);
            assert!(s < n, "unexpected payload {s}");
            assert!(owner[s].is_none(), "message {s} delivered to members {:?} and {m}", owner[s]);
            owner[s] = Some(m);
        }
    }
    owner.into_iter().enumerate().map(|(s, o)| o.unwrap_or_else(|| panic!("message {s} never delivered"))).collect()
}

/// Each member got its messages in publish order.
fn in_order(got: &[Vec<Publish>]) {
    for (m, ps) in got.iter().enumerate() {
        let seqs: Vec<usize> = ps.iter().map(seq).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "member {m} got {seqs:?}");
    }
}

/// Receives the will on `topic` (the broker's signal that the member's connection has been dealt with), failing on
/// any other PUBLISH that comes first, then checks that nothing else follows.
async fn only_the_will(r: &mut Raw, topic: &str) {
    let p = r.expect_publish().await;
    assert_eq!(&*p.topic, topic, "expected only the will, got {p:?}");
    r.ack(&p).await;
    r.expect_silence(SHORT).await;
}

#[tokio::test]
async fn round_robin_alternates_between_members() {
    // §4.8.2: a message matching a shared subscription goes to only one session of the group; the default strategy
    // (round_robin) takes the members in turn.
    let b = start(&[]).await;
    let mut ms = vec![
        member(b.addr, V5, "rr-a", "$share/g/rr", QoS::AtLeastOnce).await,
        member(b.addr, V5, "rr-b", "$share/g/rr", QoS::AtLeastOnce).await,
    ];
    let mut publ = publisher(b.addr, "rr-pub").await;
    publish_seq(&mut publ, "rr", 10).await;
    let got = collect(&mut ms, 10).await;
    assert_eq!((got[0].len(), got[1].len()), (5, 5));
    let owner = owners(&got, 10);
    assert!(owner.windows(2).all(|w| w[0] != w[1]), "alternating: {owner:?}");
    in_order(&got);
}

#[tokio::test]
async fn queue_prefix_is_a_shared_group() {
    // `$queue/<filter>` (EMQX's form) is one shared group: each message to one member, in turn; members may speak
    // different protocol versions.
    let b = start(&[]).await;
    let mut ms = vec![
        member(b.addr, V4, "q-a", "$queue/qq", QoS::AtLeastOnce).await,
        member(b.addr, V5, "q-b", "$queue/qq", QoS::AtLeastOnce).await,
    ];
    let mut publ = publisher(b.addr, "q-pub").await;
    publish_seq(&mut publ, "qq", 6).await;
    let got = collect(&mut ms, 6).await;
    assert_eq!((got[0].len(), got[1].len()), (3, 3));
    let owner = owners(&got, 6);
    assert!(owner.windows(2).all(|w| w[0] != w[1]), "alternating: {owner:?}");
}

#[tokio::test]
async fn plain_subscriber_gets_every_message_alongside_the_group() {
    // §4.8.2: a shared subscription does not change what non-shared subscriptions to the same topics receive.
    let b = start(&[]).await;
    let mut plain = vec![member(b.addr, V5, "mix-plain", "mix", QoS::AtLeastOnce).await];
    let mut group = vec![
        member(b.addr, V5, "mix-a", "$share/g/mix", QoS::AtLeastOnce).await,
        member(b.addr, V5, "mix-b", "$share/g/mix", QoS::AtLeastOnce).await,
    ];
    let mut publ = publisher(b.addr, "mix-pub").await;
    publish_seq(&mut publ, "mix", 6).await;
    let all = collect(&mut plain, 6).await;
    let seqs: Vec<usize> = all[0].iter().map(seq).collect();
    assert_eq!(seqs, (0..6).collect::<Vec<_>>(), "the plain subscriber gets every message, in order");
    let got = collect(&mut group, 6).await;
    owners(&got, 6);
}

#[tokio::test]
async fn a_member_with_a_plain_subscription_too_gets_both_copies() {
    // §4.8.2: a Client with a Shared and a Non-shared Subscription that both match gets a copy through the
    // non-shared one, and a second copy when the group picks it (here the only member).
    let b = start(&[]).await;
    let (mut a, _) = Raw::connect(b.addr, V5, "both-a", true).await;
    granted(&mut a, "$share/g/both", QoS::AtLeastOnce).await;
    granted(&mut a, "both", QoS::AtLeastOnce).await;
    let mut publ = publisher(b.addr, "both-pub").await;
    publish_routed(&mut publ, "both", b"x", 1).await;
    let mut ms = vec![a];
    let got = collect(&mut ms, 2).await;
    assert!(got[0].iter().all(|p| &p.payload[..] == b"x"));
}

#[tokio::test]
async fn sticky_sends_everything_to_one_member_while_it_stays() {
    // shared_subscription_strategy = sticky: one member gets every message until it leaves; then another does.
    let b = start(&[("HALYARD_MQTT__SHARED_SUBSCRIPTION_STRATEGY", "sticky")]).await;
    let mut ms = vec![
        member(b.addr, V5, "st-a", "$share/g/st", QoS::AtLeastOnce).await,
        member(b.addr, V5, "st-b", "$share/g/st", QoS::AtLeastOnce).await,
    ];
    let mut publ = publisher(b.addr, "st-pub").await;
    publish_seq(&mut publ, "st", 10).await;
    let got = collect(&mut ms, 10).await;
    let lens = (got[0].len(), got[1].len());
    assert!(lens == (10, 0) || lens == (0, 10), "all to one member: {lens:?}");
    in_order(&got);
    let chosen = if lens.0 == 10 { 0 } else { 1 };

    let mut leaving = ms.remove(chosen);
    leaving.send(&Packet::Disconnect(Default::default())).await;
    assert!(leaving.closed().await.is_ok());
    for i in 0..5u16 {
        publish_routed(&mut publ, "st", (10 + i).to_string().as_bytes(), 20 + i).await;
    }
    let got = collect(&mut ms, 5).await;
    assert_eq!(got[0].len(), 5, "the remaining member takes over");
}

#[tokio::test]
async fn hash_clientid_keeps_each_publisher_on_one_member() {
    // shared_subscription_strategy = hash_clientid: all messages of one publisher go to the same member.
    let b = start(&[("HALYARD_MQTT__SHARED_SUBSCRIPTION_STRATEGY", "hash_clientid")]).await;
    let mut ms = Vec::new();
    for id in ["hc-a", "hc-b", "hc-c"] {
        ms.push(member(b.addr, V5, id, "$share/g/hc", QoS::AtLeastOnce).await);
    }
    for p in 0..4 {
        let mut publ = publisher(b.addr, &format!("hc-pub-{p}")).await;
        for i in 0..5u16 {
            publish_routed(&mut publ, "hc", format!("{p}:{i}").as_bytes(), i + 1).await;
        }
    }
    let got = collect(&mut ms, 20).await;
    let mut by_publisher: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for (m, ps) in got.iter().enumerate() {
        for p in ps {
            let t = text(p);
            assert!(seen.insert(t.clone()), "{t} delivered twice");
            let publisher = t.split(':').next().expect("publisher").to_string();
            by_publisher.entry(publisher).or_default().insert(m);
        }
    }
    assert_eq!(seen.len(), 20);
    for (p, members) in &by_publisher {
        assert_eq!(members.len(), 1, "publisher {p} spread over members {members:?}");
    }
}

#[tokio::test]
async fn hash_topic_keeps_each_topic_on_one_member() {
    // shared_subscription_strategy = hash_topic: all messages on one topic go to the same member, so each member
    // sees a fixed set of topics and no topic is split.
    let b = start(&[("HALYARD_MQTT__SHARED_SUBSCRIPTION_STRATEGY", "hash_topic")]).await;
    let mut ms = Vec::new();
    for id in ["ht-a", "ht-b", "ht-c"] {
        ms.push(member(b.addr, V5, id, "$share/g/ht/+", QoS::AtLeastOnce).await);
    }
    let mut publ = publisher(b.addr, "ht-pub").await;
    let mut id = 0u16;
    for round in 0..3 {
        for t in 0..8 {
            id += 1;
            publish_routed(&mut publ, &format!("ht/{t}"), format!("{round}").as_bytes(), id).await;
        }
    }
    let got = collect(&mut ms, 24).await;
    let mut by_topic: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (m, ps) in got.iter().enumerate() {
        for p in ps {
            by_topic.entry(p.topic.to_string()).or_default().push(m);
        }
    }
    assert_eq!(by_topic.len(), 8, "every topic delivered: {by_topic:?}");
    for (t, members) in &by_topic {
        assert_eq!(members.len(), 3, "{t}: each message once");
        assert!(members.iter().all(|&m| m == members[0]), "{t} split over members {members:?}");
    }
    // Each member's topics, seen from the member: disjoint, and together all of them.
    let sets: Vec<BTreeSet<String>> =
        got.iter().map(|ps| ps.iter().map(|p| p.topic.to_string()).collect::<BTreeSet<_>>()).collect();
    assert_eq!(sets.iter().map(BTreeSet::len).sum::<usize>(), 8, "topic sets overlap: {sets:?}");
}

#[tokio::test]
async fn random_delivers_each_message_exactly_once() {
    // shared_subscription_strategy = random: every message still goes to exactly one member.
    let b = start(&[("HALYARD_MQTT__SHARED_SUBSCRIPTION_STRATEGY", "random")]).await;
    let mut ms = Vec::new();
    for id in ["rnd-a", "rnd-b", "rnd-c"] {
        ms.push(member(b.addr, V5, id, "$share/g/rnd", QoS::AtLeastOnce).await);
    }
    let mut publ = publisher(b.addr, "rnd-pub").await;
    publish_seq(&mut publ, "rnd", 30).await;
    let got = collect(&mut ms, 30).await;
    owners(&got, 30);
    in_order(&got);
}

#[tokio::test]
async fn two_groups_on_one_filter_each_get_every_message_once() {
    // §4.8.2: each shared subscription (ShareName) gets its own copy of a matching message, one member per group.
    let b = start(&[]).await;
    let mut g1 = vec![
        member(b.addr, V5, "tg-1a", "$share/g1/tg", QoS::AtLeastOnce).await,
        member(b.addr, V5, "tg-1b", "$share/g1/tg", QoS::AtLeastOnce).await,
    ];
    let mut g2 = vec![
        member(b.addr, V5, "tg-2a", "$share/g2/tg", QoS::AtLeastOnce).await,
        member(b.addr, V5, "tg-2b", "$share/g2/tg", QoS::AtLeastOnce).await,
    ];
    let mut publ = publisher(b.addr, "tg-pub").await;
    publish_seq(&mut publ, "tg", 6).await;
    owners(&collect(&mut g1, 6).await, 6);
    owners(&collect(&mut g2, 6).await, 6);
}

#[tokio::test]
async fn each_member_gets_its_own_granted_qos() {
    // [MQTT-4.8.2-3] the Server MUST respect the granted QoS for the Client's subscription.
    let b = start(&[]).await;
    let mut ms = vec![
        member(b.addr, V5, "gq-0", "$share/g/gq", QoS::AtMostOnce).await,
        member(b.addr, V5, "gq-1", "$share/g/gq", QoS::AtLeastOnce).await,
    ];
    let mut publ = publisher(b.addr, "gq-pub").await;
    publish_seq(&mut publ, "gq", 4).await;
    let got = collect(&mut ms, 4).await;
    owners(&got, 4);
    assert!(!got[0].is_empty() && !got[1].is_empty(), "both members used");
    assert!(got[0].iter().all(|p| p.qos == QoS::AtMostOnce), "member granted QoS 0");
    assert!(got[1].iter().all(|p| p.qos == QoS::AtLeastOnce), "member granted QoS 1");
}

#[tokio::test]
async fn retained_messages_are_not_sent_to_a_new_shared_subscription() {
    // §3.3.1.3: the retained message is sent when a new Non-shared Subscription is made; a group member gets none.
    let b = start(&[]).await;
    let mut publ = publisher(b.addr, "rs-pub").await;
    publ.publish("rs", b"kept", QoS::AtLeastOnce, true, 1).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
    let mut m = member(b.addr, V5, "rs-m", "$share/g/rs", QoS::AtLeastOnce).await;
    m.expect_silence(SHORT).await;
    publish_routed(&mut publ, "rs", b"live", 2).await;
    assert_eq!(&m.expect_publish().await.payload[..], b"live");
}

#[tokio::test]
async fn unsubscribed_member_gets_no_more_messages() {
    // [MQTT-3.10.4-2] after UNSUBSCRIBE the Server stops adding new messages for that subscription: the rest of the
    // group gets them all.
    let b = start(&[]).await;
    let mut a = member(b.addr, V5, "us-a", "$share/g/us", QoS::AtLeastOnce).await;
    let other = member(b.addr, V5, "us-b", "$share/g/us", QoS::AtLeastOnce).await;
    let unsub = |packet_id| {
        Packet::Unsubscribe(Unsubscribe {
            packet_id,
            properties: Default::default(),
            filters: vec![Utf8::from("$share/g/us")],
        })
    };
    a.send(&unsub(7)).await;
    match a.recv().await {
        Some(Packet::UnsubAck(u)) => assert_eq!((u.packet_id, u.reason_codes), (7, vec![rc::SUCCESS])),
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    let mut publ = publisher(b.addr, "us-pub").await;
    publish_seq(&mut publ, "us", 4).await;
    let mut ms = vec![a, other];
    let got = collect(&mut ms, 4).await;
    assert_eq!((got[0].len(), got[1].len()), (0, 4));
    // A second UNSUBSCRIBE finds nothing: UNSUBACK 0x11 No subscription existed (§3.11.3).
    ms[0].send(&unsub(8)).await;
    assert!(
        matches!(ms[0].recv().await, Some(Packet::UnsubAck(u)) if u.reason_codes == vec![rc::NO_SUBSCRIPTION_EXISTED])
    );
}

#[tokio::test]
async fn unacknowledged_message_goes_to_another_member_when_the_session_ends() {
    // §4.8.2: a QoS 1 message whose member's session ends before it acknowledged it SHOULD go to another member of
    // the group.
    let b = start(&[]).await;
    let mut a = member(b.addr, V5, "rd-a", "$share/g/rd", QoS::AtLeastOnce).await;
    let mut publ = publisher(b.addr, "rd-pub").await;
    publish_routed(&mut publ, "rd", b"unacked", 1).await;
    let first = a.expect_publish().await; // never acknowledged
    assert_eq!(&first.payload[..], b"unacked");
    let mut other = member(b.addr, V5, "rd-b", "$share/g/rd", QoS::AtLeastOnce).await;
    other.expect_silence(SHORT).await;
    drop(a); // clean start, no expiry: the session ends with the connection
    let p = other.expect_publish().await;
    assert_eq!((&*p.topic, &p.payload[..], p.qos), ("rd", &b"unacked"[..], QoS::AtLeastOnce));
    other.ack(&p).await;
    other.expect_silence(SHORT).await;
    assert_eq!(Metrics::get(&b.broker.metrics.shared_redispatched), 1);
}

#[tokio::test]
async fn unacknowledged_message_goes_to_another_member_when_a_persistent_member_goes_offline() {
    // §4.8.2: the Server MAY send a QoS 1 message to another member as soon as it loses the connection to the first
    // (its session goes on); the broker does, and the message moves rather than being copied.
    let b = start(&[]).await;
    let mut c = connect_packet(V5, "rdp-a", false);
    c.properties.make_mut().session_expiry_interval = Some(300);
    let (mut a, _) = Raw::connect_with(b.addr, c.clone()).await;
    granted(&mut a, "$share/g/rdp", QoS::AtLeastOnce).await;
    let mut publ = publisher(b.addr, "rdp-pub").await;
    publish_routed(&mut publ, "rdp", b"unacked", 1).await;
    assert_eq!(&a.expect_publish().await.payload[..], b"unacked"); // never acknowledged
    let mut other = member(b.addr, V5, "rdp-b", "$share/g/rdp", QoS::AtLeastOnce).await;
    drop(a);
    let p = other.expect_publish().await;
    assert_eq!((&*p.topic, &p.payload[..]), ("rdp", &b"unacked"[..]));
    other.ack(&p).await;
    assert_eq!(Metrics::get(&b.broker.metrics.shared_redispatched), 1);
    // The session is still there, and the message it gave up is not sent to it again.
    let (mut a, ack) = Raw::connect_with(b.addr, c).await;
    assert!(matches!(ack, Packet::ConnAck(k) if k.session_present));
    a.expect_silence(SHORT).await;
    other.expect_silence(SHORT).await;
}

#[tokio::test]
async fn qos2_in_flight_is_not_given_to_another_member_when_the_session_ends() {
    // [MQTT-4.8.2-5] a QoS 2 message being sent to a member whose session terminates before the member reconnects
    // MUST NOT be sent to any other subscribed Client.
    let b = start(&[]).await;
    let mut c = connect_packet(V5, "q2e-a", true);
    c.will = Some(will("q2e/will", b"a left", QoS::AtMostOnce));
    let (mut a, _) = Raw::connect_with(b.addr, c).await;
    granted(&mut a, "$share/g/q2e", QoS::ExactlyOnce).await;
    let mut publ = publisher(b.addr, "q2e-pub").await;
    publ.publish("q2e", b"exactly once", QoS::ExactlyOnce, false, 1).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubRec(_))));
    let p = a.expect_publish().await; // no PUBREC: delivery not complete
    assert_eq!(p.qos, QoS::ExactlyOnce);
    let mut other = member(b.addr, V5, "q2e-b", "$share/g/q2e", QoS::ExactlyOnce).await;
    granted(&mut other, "q2e/will", QoS::AtMostOnce).await;
    drop(a);
    only_the_will(&mut other, "q2e/will").await;
    assert_eq!(Metrics::get(&b.broker.metrics.shared_redispatched), 0);
}

#[tokio::test]
async fn qos2_in_flight_is_completed_to_the_same_member_when_it_reconnects() {
    // [MQTT-4.8.2-4] when the connection to the member breaks before a QoS 2 delivery is complete, the Server MUST
    // complete the delivery to that Client when it reconnects (§4.3.3), not to another member.
    let b = start(&[]).await;
    let mut c = connect_packet(V5, "q2r-a", false);
    c.properties.make_mut().session_expiry_interval = Some(300);
    c.will = Some(will("q2r/will", b"a left", QoS::AtMostOnce));
    let (mut a, _) = Raw::connect_with(b.addr, c.clone()).await;
    granted(&mut a, "$share/g/q2r", QoS::ExactlyOnce).await;
    let mut publ = publisher(b.addr, "q2r-pub").await;
    publ.publish("q2r", b"exactly once", QoS::ExactlyOnce, false, 1).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubRec(_))));
    let first = a.expect_publish().await; // no PUBREC: delivery not complete
    let mut other = member(b.addr, V5, "q2r-b", "$share/g/q2r", QoS::ExactlyOnce).await;
    granted(&mut other, "q2r/will", QoS::AtMostOnce).await;
    drop(a);
    only_the_will(&mut other, "q2r/will").await;
    let (mut a, ack) = Raw::connect_with(b.addr, c).await;
    assert!(matches!(ack, Packet::ConnAck(k) if k.session_present));
    let again = a.expect_publish().await;
    assert!(again.dup, "resent with DUP [MQTT-3.3.1-1]");
    assert_eq!((again.packet_id, &again.payload[..]), (first.packet_id, &b"exactly once"[..]));
    a.ack(&again).await;
    a.expect_silence(SHORT).await;
    other.expect_silence(SHORT).await;
}

#[tokio::test]
async fn negative_puback_discards_the_message() {
    // [MQTT-4.8.2-6] a PUBACK with a Reason Code of 0x80 or greater: the Server MUST discard the message and not
    // attempt to send it to any other Subscriber.
    let b = start(&[]).await;
    let mut c = connect_packet(V5, "neg-a", true);
    c.will = Some(will("neg/will", b"a left", QoS::AtMostOnce));
    let (mut a, _) = Raw::connect_with(b.addr, c).await;
    granted(&mut a, "$share/g/neg", QoS::AtLeastOnce).await;
    let mut publ = publisher(b.addr, "neg-pub").await;
    publish_routed(&mut publ, "neg", b"refused", 1).await;
    let p = a.expect_publish().await;
    let mut other = member(b.addr, V5, "neg-b", "$share/g/neg", QoS::AtLeastOnce).await;
    granted(&mut other, "neg/will", QoS::AtMostOnce).await;
    let mut nack = PubResp::new(p.packet_id.expect("QoS 1 packet id"));
    nack.reason_code = rc::UNSPECIFIED_ERROR;
    a.send(&Packet::PubAck(nack)).await;
    drop(a);
    only_the_will(&mut other, "neg/will").await;
    assert_eq!(Metrics::get(&b.broker.metrics.shared_redispatched), 0);
}

fn subscribe_many(filters: &[&str], qos: QoS) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id: 3,
        properties: Default::default(),
        filters: filters.iter().map(|f| (Utf8::from(*f), SubscriptionOptions { qos, ..Default::default() })).collect(),
    })
}

async fn suback_codes(r: &mut Raw) -> Vec<u8> {
    match r.recv().await {
        Some(Packet::SubAck(a)) => {
            assert_eq!(a.packet_id, 3);
            a.reason_codes
        }
        other => panic!("expected SUBACK, got {other:?}"),
    }
}

#[tokio::test]
async fn malformed_share_names_get_topic_filter_invalid() {
    // [MQTT-4.8.2-1] a ShareName at least one character long; [MQTT-4.8.2-2] no '+' or '#' in it, followed by '/'
    // and a Topic Filter. Otherwise SUBACK 0x8F (v5) / 0x80 (v3.1.1); valid filters in the same SUBSCRIBE are granted
    // [MQTT-3.8.4-5].
    let b = start(&[]).await;
    let bad = ["$share/g+/t", "$share//t", "$share/g#/t", "$share/g", "$share/g/", "$share/g/a/#/b"];
    let mut filters = bad.to_vec();
    filters.push("$share/ok/t");
    let (mut c, _) = Raw::connect(b.addr, V5, "bad-share", true).await;
    c.send(&subscribe_many(&filters, QoS::AtLeastOnce)).await;
    let mut expected = vec![rc::TOPIC_FILTER_INVALID; bad.len()];
    expected.push(rc::GRANTED_QOS_1);
    assert_eq!(suback_codes(&mut c).await, expected);

    let (mut c4, _) = Raw::connect(b.addr, V4, "bad-share-4", true).await;
    c4.send(&subscribe_many(&["$share//t", "$share/g+/t"], QoS::AtLeastOnce)).await;
    assert_eq!(suback_codes(&mut c4).await, vec![0x80, 0x80]);
}

#[tokio::test]
async fn disabled_shared_subscriptions_are_announced_and_refused() {
    // shared_subscription = false: CONNACK says Shared Subscription Available 0 (§3.2.2.3.15) and a shared filter
    // gets SUBACK 0x9E Shared Subscriptions not supported (§3.9.3); plain filters still work.
    let b = start(&[("HALYARD_MQTT__SHARED_SUBSCRIPTION", "false")]).await;
    let (mut c, ack) = Raw::connect(b.addr, V5, "noshare", true).await;
    assert!(matches!(&ack, Packet::ConnAck(a) if a.properties.shared_subscription_available == Some(0)), "{ack:?}");
    c.send(&subscribe_many(&["$share/g/ns", "$queue/ns", "ns"], QoS::AtLeastOnce)).await;
    assert_eq!(
        suback_codes(&mut c).await,
        vec![rc::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED, rc::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED, rc::GRANTED_QOS_1]
    );
    let mut publ = publisher(b.addr, "noshare-pub").await;
    publish_routed(&mut publ, "ns", b"once", 1).await;
    let p = c.expect_publish().await;
    assert_eq!(&p.payload[..], b"once");
    c.ack(&p).await;
    c.expect_silence(SHORT).await;

    let (mut c4, _) = Raw::connect(b.addr, V4, "noshare-4", true).await;
    c4.send(&subscribe_many(&["$share/g/ns"], QoS::AtLeastOnce)).await;
    assert_eq!(suback_codes(&mut c4).await, vec![0x80]);
}

#[tokio::test]
async fn no_local_on_a_shared_subscription_is_a_protocol_error() {
    // [MQTT-3.8.3-4] it is a Protocol Error to set No Local on a Shared Subscription: DISCONNECT 0x82.
    let b = start(&[]).await;
    let (mut c, _) = Raw::connect(b.addr, V5, "nl-share", true).await;
    c.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Default::default(),
        filters: vec![(
            Utf8::from("$share/g/nl"),
            SubscriptionOptions { qos: QoS::AtLeastOnce, no_local: true, ..Default::default() },
        )],
    }))
    .await;
    let got = c.closed().await.expect("connection closed");
    assert!(!got.iter().any(|p| matches!(p, Packet::SubAck(_))), "no SUBACK: {got:?}");
    assert_eq!(disconnect_code(&got), Some(rc::PROTOCOL_ERROR));
}
