//! Broker behaviour over real sockets, one rule per test, each naming the normative statement it checks.

mod common;
use common::*;
use halyard_codec::reason::rc;
use halyard_codec::{Packet, Properties, ProtocolVersion::*, PubResp, QoS, SubscriptionOptions, Utf8};
use halyard_core::metrics::Metrics;
use std::time::Duration;

const SHORT: Duration = Duration::from_millis(300);

#[tokio::test]
async fn qos0_1_2_flow_in_both_directions() {
    // [MQTT-4.3.1-1], [MQTT-4.3.2-1], [MQTT-4.3.3-1]: each QoS delivered with its protocol flow.
    let b = start(&[]).await;
    for v in [V3, V4, V5] {
        let (mut sub, _) = Raw::connect(b.addr, v, &format!("sub-{v:?}"), true).await;
        sub.subscribe("flow/#", QoS::ExactlyOnce).await;
        let (mut publ, _) = Raw::connect(b.addr, v, &format!("pub-{v:?}"), true).await;
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            publ.publish("flow/x", format!("{qos:?}").as_bytes(), qos, false, 10).await;
            match qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => assert!(matches!(publ.recv().await, Some(Packet::PubAck(a)) if a.packet_id == 10)),
                QoS::ExactlyOnce => {
                    assert!(matches!(publ.recv().await, Some(Packet::PubRec(a)) if a.packet_id == 10));
                    publ.send(&Packet::PubRel(PubResp::new(10))).await;
                    assert!(matches!(publ.recv().await, Some(Packet::PubComp(a)) if a.packet_id == 10));
                }
            }
            let p = sub.expect_publish().await;
            assert_eq!(p.qos, qos, "{v:?}: delivered at the publish QoS (granted 2)");
            assert_eq!(&p.payload[..], format!("{qos:?}").as_bytes());
            assert!(!p.dup);
            sub.ack(&p).await;
        }
    }
}

#[tokio::test]
async fn delivered_qos_is_the_minimum_of_publish_and_granted() {
    // [MQTT-3.8.4-8] the QoS of delivered messages is the minimum of the published and the granted QoS.
    let b = start(&[]).await;
    let (mut sub, _) = Raw::connect(b.addr, V4, "min-sub", true).await;
    sub.subscribe("min", QoS::AtLeastOnce).await;
    let (mut publ, _) = Raw::connect(b.addr, V4, "min-pub", true).await;
    publ.publish("min", b"2", QoS::ExactlyOnce, false, 1).await;
    assert_eq!(sub.expect_publish().await.qos, QoS::AtLeastOnce);
}

#[tokio::test]
async fn qos2_resent_publish_is_not_routed_twice() {
    // [MQTT-4.3.3-10] until PUBREL, a PUBLISH with the same packet id must not be delivered again.
    let b = start(&[]).await;
    let (mut sub, _) = Raw::connect(b.addr, V4, "q2-sub", true).await;
    sub.subscribe("q2", QoS::AtMostOnce).await;
    let (mut publ, _) = Raw::connect(b.addr, V4, "q2-pub", true).await;
    publ.publish("q2", b"once", QoS::ExactlyOnce, false, 5).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubRec(_))));
    let mut again = publish("q2", b"once", QoS::ExactlyOnce, false, 5);
    again.dup = true;
    publ.send(&Packet::Publish(again)).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubRec(_))), "PUBREC again for the resend");
    assert_eq!(&sub.expect_publish().await.payload[..], b"once");
    sub.expect_silence(SHORT).await;
}

#[tokio::test]
async fn retained_message_sent_on_subscribe_and_deleted_by_empty_payload() {
    // [MQTT-3.3.1-6] a new subscription gets the retained message; [MQTT-3.3.1-9] with RETAIN set;
    // [MQTT-3.3.1-10] an empty retained payload removes it.
    let b = start(&[]).await;
    let (mut publ, _) = Raw::connect(b.addr, V4, "ret-pub", true).await;
    publ.publish("ret/a", b"kept", QoS::AtLeastOnce, true, 1).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
    let (mut s1, _) = Raw::connect(b.addr, V4, "ret-s1", true).await;
    s1.subscribe("ret/+", QoS::AtLeastOnce).await;
    let p = s1.expect_publish().await;
    assert!(p.retain && &p.payload[..] == b"kept");
    s1.ack(&p).await;
    // A live message on a topic with a retained value is forwarded without RETAIN [MQTT-3.3.1-12].
    publ.publish("ret/a", b"live", QoS::AtMostOnce, true, 0).await;
    let p = s1.expect_publish().await;
    assert!(!p.retain && &p.payload[..] == b"live");
    publ.publish("ret/a", b"", QoS::AtLeastOnce, true, 2).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
    let _ = s1.expect_publish().await; // the empty message itself is forwarded [MQTT-3.3.1-11]
    let (mut s2, _) = Raw::connect(b.addr, V4, "ret-s2", true).await;
    s2.subscribe("ret/#", QoS::AtLeastOnce).await;
    s2.expect_silence(SHORT).await;
}

#[tokio::test]
async fn retain_handling_and_retain_as_published() {
    // [MQTT-3.3.1-10] retain handling 1 sends retained only for a new subscription, 2 never;
    // [MQTT-3.3.1-13] retain as published keeps the RETAIN flag on forwarded messages.
    let b = start(&[]).await;
    let (mut publ, _) = Raw::connect(b.addr, V5, "rh-pub", true).await;
    publ.publish("rh/t", b"r", QoS::AtMostOnce, true, 0).await;
    let (mut c, _) = Raw::connect(b.addr, V5, "rh-sub", true).await;
    let rh1 = SubscriptionOptions { qos: QoS::AtMostOnce, retain_handling: 1, ..Default::default() };
    c.subscribe_opts("rh/t", rh1, Properties::default()).await;
    assert!(c.expect_publish().await.retain);
    c.subscribe_opts("rh/t", rh1, Properties::default()).await;
    c.expect_silence(SHORT).await;
    let rh2 = SubscriptionOptions {
        qos: QoS::AtMostOnce,
        retain_handling: 2,
        retain_as_published: true,
        ..Default::default()
    };
    c.subscribe_opts("rh/#", rh2, Properties::default()).await;
    c.expect_silence(SHORT).await;
    publ.publish("rh/t", b"again", QoS::AtMostOnce, true, 0).await;
    let p = c.expect_publish().await;
    assert!(p.retain, "retain as published on the overlapping rh/# subscription");
}

#[tokio::test]
async fn will_published_on_abnormal_close_not_on_disconnect() {
    // [MQTT-3.1.2-8] the will is published when the connection closes without DISCONNECT;
    // [MQTT-3.1.2-10] and discarded after a normal DISCONNECT.
    let b = start(&[]).await;
    let (mut watcher, _) = Raw::connect(b.addr, V4, "will-watch", true).await;
    watcher.subscribe("will/#", QoS::AtLeastOnce).await;
    let mut c = connect_packet(V4, "will-a", true);
    c.will = Some(will("will/a", b"gone", QoS::AtLeastOnce));
    let (dying, _) = Raw::connect_with(b.addr, c).await;
    drop(dying);
    let p = watcher.expect_publish().await;
    assert_eq!((&*p.topic, &p.payload[..]), ("will/a", &b"gone"[..]));
    watcher.ack(&p).await;
    let mut c = connect_packet(V4, "will-b", true);
    c.will = Some(will("will/b", b"never", QoS::AtLeastOnce));
    let (mut polite, _) = Raw::connect_with(b.addr, c).await;
    polite.send(&Packet::Disconnect(Default::default())).await;
    assert!(polite.closed().await.is_ok());
    watcher.expect_silence(SHORT).await;
}

#[tokio::test]
async fn disconnect_then_immediate_reconnect_discards_the_will_and_keeps_the_publish() {
    // [MQTT-3.1.2-10], [MQTT-3.14.4-3]: a DISCONNECT discards the will. Packets a client sent before it closed are
    // processed, in order, before its session moves to the new connection, even when the new connection arrives
    // first: the publish is delivered and no will goes out. Persistent sessions (3.1.1 clean session 0, v5 session
    // expiry > 0), half the rounds reconnecting only after the subscriber has the publish, half at once.
    let b = start(&[]).await;
    let (mut watcher, _) = Raw::connect(b.addr, V4, "race-watch", true).await;
    watcher.subscribe("race/#", QoS::AtMostOnce).await;
    for v in [V4, V5] {
        let mut c = connect_packet(v, &format!("racer-{v:?}"), false);
        if v == V5 {
            c.properties.make_mut().session_expiry_interval = Some(60);
        }
        c.will = Some(will("race/will", b"gone", QoS::AtMostOnce));
        let (mut r, _) = Raw::connect_with(b.addr, c.clone()).await;
        for i in 0..20u8 {
            r.publish("race/data", &[i], QoS::AtMostOnce, false, 0).await;
            r.send(&Packet::Disconnect(Default::default())).await;
            drop(r);
            if i % 2 == 0 {
                let p = watcher.expect_publish().await;
                assert_eq!((&*p.topic, &p.payload[..]), ("race/data", &[i][..]), "{v:?} round {i}");
            }
            r = Raw::connect_with(b.addr, c.clone()).await.0;
            if i % 2 == 1 {
                let p = watcher.expect_publish().await;
                assert_eq!((&*p.topic, &p.payload[..]), ("race/data", &[i][..]), "{v:?} round {i}: publish not lost");
            }
        }
        r.send(&Packet::Disconnect(Default::default())).await;
        assert!(r.closed().await.is_ok());
    }
    // Any will would have been queued before the reconnect's CONNACK; a marker published now comes after it.
    let (mut m, _) = Raw::connect(b.addr, V4, "race-marker", true).await;
    m.publish("race/end", b"", QoS::AtMostOnce, false, 0).await;
    let p = watcher.expect_publish().await;
    assert_eq!(&*p.topic, "race/end", "no will was published");
}

#[tokio::test]
async fn will_delay_cancelled_by_reconnect_and_immediate_with_expiry_0() {
    // [MQTT-3.1.3-9] the will is delayed by Will Delay Interval and not sent if the session resumes first;
    // a session that ends (expiry 0) sends it at once.
    let b = start(&[]).await;
    let (mut watcher, _) = Raw::connect(b.addr, V5, "wd-watch", true).await;
    watcher.subscribe("wd/#", QoS::AtMostOnce).await;

    let mut c = connect_packet(V5, "wd-a", false);
    c.properties.make_mut().session_expiry_interval = Some(60);
    let mut w = will("wd/a", b"late", QoS::AtMostOnce);
    w.properties.make_mut().will_delay_interval = Some(30);
    c.will = Some(w.clone());
    let (dying, _) = Raw::connect_with(b.addr, c.clone()).await;
    drop(dying);
    watcher.expect_silence(SHORT).await;
    let (_back, ack) = Raw::connect_with(b.addr, c).await;
    assert!(matches!(ack, Packet::ConnAck(a) if a.session_present));

    let mut c = connect_packet(V5, "wd-b", true);
    c.will = Some(w);
    let (dying, _) = Raw::connect_with(b.addr, c).await;
    drop(dying);
    let p = watcher.expect_publish().await;
    assert_eq!(&*p.topic, "wd/a");
}

#[tokio::test]
async fn persistent_session_gets_offline_messages_on_reconnect() {
    // [MQTT-3.1.2-4] a session with clean session 0 is resumed with its subscriptions; [MQTT-3.2.2-2] Session
    // Present is 1; messages published meanwhile are delivered.
    let b = start(&[]).await;
    let (mut s, ack) = Raw::connect(b.addr, V4, "persist", false).await;
    assert!(matches!(ack, Packet::ConnAck(a) if !a.session_present));
    s.subscribe("off/#", QoS::AtLeastOnce).await;
    s.send(&Packet::Disconnect(Default::default())).await;
    assert!(s.closed().await.is_ok());
    let (mut publ, _) = Raw::connect(b.addr, V4, "persist-pub", true).await;
    for i in 0..5u16 {
        publ.publish("off/x", &i.to_be_bytes(), QoS::AtLeastOnce, false, i + 1).await;
        assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
    }
    let (mut s, ack) = Raw::connect(b.addr, V4, "persist", false).await;
    assert!(matches!(ack, Packet::ConnAck(a) if a.session_present));
    for i in 0..5u16 {
        let p = s.expect_publish().await;
        assert_eq!(&p.payload[..], &i.to_be_bytes(), "in order [MQTT-4.6.0-5]");
        s.ack(&p).await;
    }
}

#[tokio::test]
async fn clean_session_discards_previous_session() {
    // [MQTT-3.1.2-6] clean session 1 discards any existing session: Session Present 0, no old subscriptions.
    let b = start(&[]).await;
    let (mut s, _) = Raw::connect(b.addr, V4, "cleaner", false).await;
    s.subscribe("cs/#", QoS::AtLeastOnce).await;
    drop(s);
    let (mut s, ack) = Raw::connect(b.addr, V4, "cleaner", true).await;
    assert!(matches!(ack, Packet::ConnAck(a) if !a.session_present));
    let (mut publ, _) = Raw::connect(b.addr, V4, "cs-pub", true).await;
    publ.publish("cs/x", b"x", QoS::AtMostOnce, false, 0).await;
    s.expect_silence(SHORT).await;
}

#[tokio::test]
async fn mqueue_drops_oldest_when_full_and_counts() {
    // max_mqueue_len: a full offline queue drops its oldest message; every drop is counted.
    let b = start(&[("HALYARD_MQTT__MAX_MQUEUE_LEN", "3")]).await;
    let (mut s, _) = Raw::connect(b.addr, V4, "mq", false).await;
    s.subscribe("mq", QoS::AtLeastOnce).await;
    drop(s);
    let (mut publ, _) = Raw::connect(b.addr, V4, "mq-pub", true).await;
    for i in 0..5u8 {
        publ.publish("mq", &[i], QoS::AtLeastOnce, false, u16::from(i) + 1).await;
        assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
    }
    let (mut s, _) = Raw::connect(b.addr, V4, "mq", false).await;
    for i in 2..5u8 {
        let p = s.expect_publish().await;
        assert_eq!(&p.payload[..], &[i]);
        s.ack(&p).await;
    }
    s.expect_silence(SHORT).await;
    assert_eq!(Metrics::get(&b.broker.metrics.dropped_queue_full), 2);
}

#[tokio::test]
async fn qos0_not_queued_offline_when_mqueue_store_qos0_is_false() {
    let b = start(&[("HALYARD_MQTT__MQUEUE_STORE_QOS0", "false")]).await;
    let (mut s, _) = Raw::connect(b.addr, V4, "q0off", false).await;
    s.subscribe("q0", QoS::AtLeastOnce).await;
    drop(s);
    let (mut publ, _) = Raw::connect(b.addr, V4, "q0-pub", true).await;
    publ.publish("q0", b"zero", QoS::AtMostOnce, false, 0).await;
    publ.publish("q0", b"one", QoS::AtLeastOnce, false, 1).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
    let (mut s, _) = Raw::connect(b.addr, V4, "q0off", false).await;
    assert_eq!(&s.expect_publish().await.payload[..], b"one");
    assert_eq!(Metrics::get(&b.broker.metrics.dropped_qos0_offline), 1);
}

#[tokio::test]
async fn unacknowledged_messages_resent_with_dup_on_reconnect() {
    // [MQTT-4.4.0-1] on reconnect with a session, unacknowledged PUBLISH packets are resent with DUP [MQTT-3.3.1-1].
    let b = start(&[]).await;
    let (mut s, _) = Raw::connect(b.addr, V4, "dup", false).await;
    s.subscribe("dup", QoS::AtLeastOnce).await;
    let (mut publ, _) = Raw::connect(b.addr, V4, "dup-pub", true).await;
    publ.publish("dup", b"m", QoS::AtLeastOnce, false, 1).await;
    let first = s.expect_publish().await;
    assert!(!first.dup);
    drop(s); // never acknowledged
    let (mut s, _) = Raw::connect(b.addr, V4, "dup", false).await;
    let again = s.expect_publish().await;
    assert!(again.dup && again.packet_id == first.packet_id && &again.payload[..] == b"m");
}

#[tokio::test]
async fn takeover_sends_0x8e_to_the_old_connection_and_keeps_the_session() {
    // [MQTT-3.1.4-3] a second connection with the same client id: the old one gets DISCONNECT 0x8E and closes.
    let b = start(&[]).await;
    let mut c = connect_packet(V5, "taken", false);
    c.properties.make_mut().session_expiry_interval = Some(300);
    let (mut old, _) = Raw::connect_with(b.addr, c.clone()).await;
    old.subscribe("to/#", QoS::AtLeastOnce).await;
    let (mut new, ack) = Raw::connect_with(b.addr, c).await;
    assert!(matches!(ack, Packet::ConnAck(a) if a.session_present));
    let got = old.closed().await.expect("old connection closed");
    assert_eq!(disconnect_code(&got), Some(rc::SESSION_TAKEN_OVER));
    let (mut publ, _) = Raw::connect(b.addr, V5, "to-pub", true).await;
    publ.publish("to/x", b"moved", QoS::AtLeastOnce, false, 1).await;
    assert_eq!(&new.expect_publish().await.payload[..], b"moved");
}

#[tokio::test]
async fn overlapping_subscriptions_give_one_copy_with_max_qos_and_all_ids() {
    // [MQTT-3.3.4-2] max QoS of the matching subscriptions; [MQTT-3.3.4-3] all subscription identifiers.
    let b = start(&[]).await;
    let (mut s, _) = Raw::connect(b.addr, V5, "overlap", true).await;
    let p1 = Properties { subscription_identifiers: vec![1], ..Default::default() };
    s.subscribe_opts("ov/+", SubscriptionOptions { qos: QoS::AtMostOnce, ..Default::default() }, p1).await;
    let p2 = Properties { subscription_identifiers: vec![2], ..Default::default() };
    s.subscribe_opts("ov/#", SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() }, p2).await;
    let (mut publ, _) = Raw::connect(b.addr, V5, "ov-pub", true).await;
    publ.publish("ov/x", b"once", QoS::ExactlyOnce, false, 1).await;
    let p = s.expect_publish().await;
    assert_eq!(p.qos, QoS::AtLeastOnce);
    let mut ids = p.properties.subscription_identifiers.clone();
    ids.sort();
    assert_eq!(ids, vec![1, 2]);
    s.ack(&p).await;
    s.expect_silence(SHORT).await;
}

#[tokio::test]
async fn dollar_topics_not_matched_by_leading_wildcards_and_sys_publish_refused() {
    // [MQTT-4.7.2-1] '#' and '+/...' do not match topics beginning with '$'.
    let b = start(&[]).await;
    let (mut all, _) = Raw::connect(b.addr, V5, "hash-all", true).await;
    all.subscribe("#", QoS::AtMostOnce).await;
    all.subscribe("+/x", QoS::AtMostOnce).await;
    let (mut publ, _) = Raw::connect(b.addr, V5, "dollar-pub", true).await;
    publ.publish("$app/x", b"d", QoS::AtMostOnce, false, 0).await;
    all.expect_silence(SHORT).await;
    // Publishing into $SYS is refused: v5 PUBACK 0x87.
    publ.publish("$SYS/fake", b"x", QoS::AtLeastOnce, false, 3).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubAck(a)) if a.reason_code == rc::NOT_AUTHORIZED));
}

#[tokio::test]
async fn topic_alias_inbound_and_broker_assigned_outbound() {
    // [MQTT-3.3.2-12] an alias set by the client is used for later PUBLISHes with an empty topic;
    // the broker assigns aliases towards a client that allows them (Topic Alias Maximum).
    let b = start(&[]).await;
    let mut c = connect_packet(V5, "alias-sub", true);
    c.properties.make_mut().topic_alias_maximum = Some(5);
    let (mut s, _) = Raw::connect_with(b.addr, c).await;
    s.subscribe("al/#", QoS::AtMostOnce).await;
    let (mut publ, _) = Raw::connect(b.addr, V5, "alias-pub", true).await;
    let mut p = publish("al/long/topic", b"1", QoS::AtMostOnce, false, 0);
    p.properties.make_mut().topic_alias = Some(1);
    publ.send(&Packet::Publish(p.clone())).await;
    p.topic = Utf8::default();
    p.payload = bytes::Bytes::from_static(b"2");
    publ.send(&Packet::Publish(p)).await;
    let first = s.expect_publish().await;
    assert_eq!(&*first.topic, "al/long/topic");
    let alias = first.properties.topic_alias.expect("broker assigned an alias");
    let second = s.expect_publish().await;
    assert!(second.topic.is_empty(), "second delivery uses the alias alone");
    assert_eq!(second.properties.topic_alias, Some(alias));
    assert_eq!(&second.payload[..], b"2");
    // An alias above the broker's Topic Alias Maximum is an error: DISCONNECT 0x94 [MQTT-3.3.2-9].
    let (mut bad, _) = Raw::connect(b.addr, V5, "alias-bad", true).await;
    let mut p = publish("al/x", b"x", QoS::AtMostOnce, false, 0);
    p.properties.make_mut().topic_alias = Some(0);
    bad.send(&Packet::Publish(p)).await;
    assert_eq!(disconnect_code(&bad.closed().await.expect("closed")), Some(rc::TOPIC_ALIAS_INVALID));
}

#[tokio::test]
async fn message_expiry_is_decremented_and_expired_messages_dropped() {
    // [MQTT-3.3.2-5] an expired message is not delivered; [MQTT-3.3.2-6] the interval sent is what is left.
    let b = start(&[]).await;
    let mut c = connect_packet(V5, "exp", false);
    c.properties.make_mut().session_expiry_interval = Some(60);
    let (mut s, _) = Raw::connect_with(b.addr, c.clone()).await;
    s.subscribe("exp/#", QoS::AtLeastOnce).await;
    drop(s);
    let (mut publ, _) = Raw::connect(b.addr, V5, "exp-pub", true).await;
    let mut short = publish("exp/short", b"s", QoS::AtLeastOnce, false, 1);
    short.properties.make_mut().message_expiry_interval = Some(1);
    publ.send(&Packet::Publish(short)).await;
    let mut long = publish("exp/long", b"l", QoS::AtLeastOnce, false, 2);
    long.properties.make_mut().message_expiry_interval = Some(100);
    publ.send(&Packet::Publish(long)).await;
    assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
    assert!(matches!(publ.recv().await, Some(Packet::PubAck(_))));
    // Time has to pass for a message to expire; this sleep is the subject of the test, not synchronisation.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (mut s, _) = Raw::connect_with(b.addr, c).await;
    let p = s.expect_publish().await;
    assert_eq!(&*p.topic, "exp/long");
    let left = p.properties.message_expiry_interval.expect("expiry forwarded");
    assert!((98..100).contains(&left), "decremented: {left}");
    assert_eq!(Metrics::get(&b.broker.metrics.dropped_expired), 1);
}

#[tokio::test]
async fn no_local_skips_own_messages() {
    // [MQTT-3.8.3-3] No Local: not forwarded to the connection that published it.
    let b = start(&[]).await;
    let (mut c, _) = Raw::connect(b.addr, V5, "nolocal", true).await;
    let nl = SubscriptionOptions { qos: QoS::AtMostOnce, no_local: true, ..Default::default() };
    c.subscribe_opts("nl", nl, Properties::default()).await;
    c.publish("nl", b"mine", QoS::AtMostOnce, false, 0).await;
    c.expect_silence(SHORT).await;
    let (mut other, _) = Raw::connect(b.addr, V5, "nolocal-2", true).await;
    other.publish("nl", b"theirs", QoS::AtMostOnce, false, 0).await;
    assert_eq!(&c.expect_publish().await.payload[..], b"theirs");
}

#[tokio::test]
async fn request_response_and_user_properties_are_forwarded() {
    // [MQTT-3.3.2-15], [MQTT-3.3.2-16], [MQTT-3.3.2-17]: Response Topic, Correlation Data, User Properties unaltered.
    let b = start(&[]).await;
    let (mut s, _) = Raw::connect(b.addr, V5, "rr-sub", true).await;
    s.subscribe("req", QoS::AtMostOnce).await;
    let (mut publ, _) = Raw::connect(b.addr, V5, "rr-pub", true).await;
    let mut p = publish("req", b"q", QoS::AtMostOnce, false, 0);
    p.properties.make_mut().response_topic = Some(Utf8::from("resp/1"));
    p.properties.make_mut().correlation_data = Some(bytes::Bytes::from_static(b"c-7"));
    p.properties.make_mut().user_properties =
        vec![(Utf8::from("k"), Utf8::from("v1")), (Utf8::from("k"), Utf8::from("v2"))];
    p.properties.make_mut().content_type = Some(Utf8::from("text/plain"));
    publ.send(&Packet::Publish(p.clone())).await;
    let got = s.expect_publish().await;
    assert_eq!(got.properties.response_topic, p.properties.response_topic);
    assert_eq!(got.properties.correlation_data, p.properties.correlation_data);
    assert_eq!(got.properties.user_properties, p.properties.user_properties, "order kept [MQTT-3.3.2-18]");
    assert_eq!(got.properties.content_type, p.properties.content_type);
}

#[tokio::test]
async fn assigned_client_identifier_for_empty_id() {
    // [MQTT-3.1.3-6] an empty client id gets one assigned; v5 tells it in Assigned Client Identifier [MQTT-3.2.2-16].
    let b = start(&[]).await;
    let (_c, ack) = Raw::connect(b.addr, V5, "", true).await;
    let Packet::ConnAck(ack) = ack else { unreachable!() };
    assert!(ack.properties.assigned_client_identifier.as_ref().is_some_and(|id| !id.is_empty()));
    // [MQTT-3.1.3-8] 3.1.1 with an empty id and clean session 0: CONNACK 0x02 and close.
    let mut r = Raw::open(b.addr, V4).await;
    r.send(&Packet::Connect(Box::new(connect_packet(V4, "", false)))).await;
    let got = r.closed().await.expect("closed");
    assert!(matches!(got.as_slice(), [Packet::ConnAck(a)] if a.reason_code == 0x02), "{got:?}");
}

#[tokio::test]
async fn server_keep_alive_caps_client_keepalive() {
    // [MQTT-3.2.2-21] the client must use the Server Keep Alive the server returns.
    let b = start(&[("HALYARD_MQTT__MAX_KEEPALIVE", "60")]).await;
    let mut c = connect_packet(V5, "ka", true);
    c.keep_alive = 120;
    let (_c, ack) = Raw::connect_with(b.addr, c).await;
    assert!(matches!(ack, Packet::ConnAck(a) if a.properties.server_keep_alive == Some(60)));
}

#[tokio::test]
async fn inflight_window_bounded_by_client_receive_maximum() {
    // [MQTT-3.3.4-7] the server does not send more unacknowledged QoS 1/2 PUBLISHes than Receive Maximum.
    let b = start(&[]).await;
    let mut c = connect_packet(V5, "rm", true);
    c.properties.make_mut().receive_maximum = Some(2);
    let (mut s, _) = Raw::connect_with(b.addr, c).await;
    s.subscribe("rm", QoS::AtLeastOnce).await;
    let (mut publ, _) = Raw::connect(b.addr, V5, "rm-pub", true).await;
    for i in 0..5u16 {
        publ.publish("rm", &i.to_be_bytes(), QoS::AtLeastOnce, false, i + 1).await;
    }
    let a = s.expect_publish().await;
    let _b2 = s.expect_publish().await;
    s.expect_silence(SHORT).await;
    s.ack(&a).await;
    let c3 = s.expect_publish().await;
    assert_eq!(&c3.payload[..], &2u16.to_be_bytes(), "next in order once one is acknowledged");
}

#[tokio::test]
async fn exceeding_broker_receive_maximum_gets_0x93() {
    // [MQTT-3.3.4-9] more unacknowledged QoS 2 PUBLISHes than the server's Receive Maximum: DISCONNECT 0x93.
    let b = start(&[("HALYARD_MQTT__MAX_INFLIGHT", "2")]).await;
    let (mut c, ack) = Raw::connect(b.addr, V5, "flood", true).await;
    assert!(matches!(ack, Packet::ConnAck(a) if a.properties.receive_maximum == Some(2)));
    for i in 1..=3u16 {
        c.publish("fl", b"x", QoS::ExactlyOnce, false, i).await;
    }
    let got = c.closed().await.expect("closed");
    assert_eq!(disconnect_code(&got), Some(rc::RECEIVE_MAXIMUM_EXCEEDED));
}

#[tokio::test]
async fn oversize_outbound_message_is_dropped_for_that_client() {
    // [MQTT-3.1.2-25] the server must not send a packet above the client's Maximum Packet Size.
    let b = start(&[]).await;
    let mut c = connect_packet(V5, "small", true);
    c.properties.make_mut().maximum_packet_size = Some(64);
    let (mut s, _) = Raw::connect_with(b.addr, c).await;
    s.subscribe("sz", QoS::AtMostOnce).await;
    let (mut publ, _) = Raw::connect(b.addr, V5, "sz-pub", true).await;
    publ.publish("sz", &[7u8; 200], QoS::AtMostOnce, false, 0).await;
    publ.publish("sz", b"fits", QoS::AtMostOnce, false, 0).await;
    assert_eq!(&s.expect_publish().await.payload[..], b"fits");
    assert_eq!(Metrics::get(&b.broker.metrics.dropped_too_large), 1);
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_reports_missing_subscription() {
    // [MQTT-3.10.4-1] the subscription is deleted; v5 UNSUBACK says 0x11 when there was none.
    let b = start(&[]).await;
    let (mut s, _) = Raw::connect(b.addr, V5, "unsub", true).await;
    s.subscribe("us", QoS::AtMostOnce).await;
    s.send(&Packet::Unsubscribe(halyard_codec::Unsubscribe {
        packet_id: 4,
        properties: Default::default(),
        filters: vec![Utf8::from("us"), Utf8::from("never")],
    }))
    .await;
    match s.recv().await {
        Some(Packet::UnsubAck(u)) => {
            assert_eq!(u.packet_id, 4);
            assert_eq!(u.reason_codes, vec![rc::SUCCESS, rc::NO_SUBSCRIPTION_EXISTED]);
        }
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    let (mut publ, _) = Raw::connect(b.addr, V5, "unsub-pub", true).await;
    publ.publish("us", b"x", QoS::AtMostOnce, false, 0).await;
    s.expect_silence(SHORT).await;
}

#[tokio::test]
async fn invalid_filters_and_disabled_features_in_suback() {
    // [MQTT-4.7.1-2] '#' must be last: SUBACK 0x8F (v5) / 0x80 (v3.1.1); wildcard_subscription = false: 0xA2.
    let b = start(&[("HALYARD_MQTT__WILDCARD_SUBSCRIPTION", "false")]).await;
    let (mut s, _) = Raw::connect(b.addr, V5, "badf", true).await;
    let ack = s.subscribe("a/#/b", QoS::AtMostOnce).await;
    assert!(matches!(ack, Packet::SubAck(a) if a.reason_codes == vec![rc::TOPIC_FILTER_INVALID]));
    let ack = s.subscribe("a/+", QoS::AtMostOnce).await;
    assert!(matches!(ack, Packet::SubAck(a) if a.reason_codes == vec![rc::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED]));
    let (mut s4, _) = Raw::connect(b.addr, V4, "badf4", true).await;
    let ack = s4.subscribe("a/b#", QoS::AtMostOnce).await;
    assert!(matches!(ack, Packet::SubAck(a) if a.reason_codes == vec![0x80]));
}

#[tokio::test]
async fn max_connections_refuses_extra_connections() {
    let b = start(&[("HALYARD_LISTENERS__TCP__DEFAULT__MAX_CONNECTIONS", "2")]).await;
    let (_a, _) = Raw::connect(b.addr, V4, "mc1", true).await;
    let (_b, _) = Raw::connect(b.addr, V4, "mc2", true).await;
    let mut third = Raw::open(b.addr, V4).await;
    assert!(third.closed().await.is_ok(), "third connection closed by the broker");
    assert_eq!(Metrics::get(&b.broker.metrics.connections_refused_max), 1);
}

#[tokio::test]
async fn a_stuck_subscriber_holds_publishers_back_once_then_its_mqueue_policy_applies() {
    // A subscriber that never acknowledges (Receive Maximum 1, so one message in flight and the rest queued):
    // the publisher waits once, for the hold limit, and is then acknowledged at full speed while the stuck
    // session's mqueue drops its oldest messages (counted), as EMQX and Mosquitto do. Without the stall rule
    // every further message would wait the hold limit again.
    let b = start(&[("HALYARD_MQTT__MAX_MQUEUE_LEN", "10")]).await;
    let mut c = connect_packet(V5, "stuck", true);
    c.properties.make_mut().receive_maximum = Some(1);
    let (mut s, _) = Raw::connect_with(b.addr, c).await;
    s.subscribe("stuck", QoS::AtLeastOnce).await;
    let (mut publ, _) = Raw::connect(b.addr, V5, "busy", true).await;
    let mut burst = bytes::BytesMut::new();
    for i in 0..100u16 {
        let p = Packet::Publish(publish("stuck", &i.to_be_bytes(), QoS::AtLeastOnce, false, i + 1));
        halyard_codec::encode(&p, V5, &mut burst).expect("encode");
    }
    publ.send_bytes(&burst).await;
    for _ in 0..100 {
        match publ.recv().await {
            Some(Packet::PubAck(a)) => assert_eq!(a.reason_code, 0, "accepted"),
            other => panic!("publisher expected PUBACK, got {other:?}"),
        }
    }
    assert_eq!(Metrics::get(&b.broker.metrics.backpressure_timeouts), 1, "one wait ran out, not one per message");
    assert!(Metrics::get(&b.broker.metrics.dropped_queue_full) > 0, "the stuck session's mqueue dropped the oldest");
    // The subscriber got its first message and still holds it unacknowledged.
    assert_eq!(&s.expect_publish().await.payload[..], &0u16.to_be_bytes());
}

#[tokio::test]
async fn backpressure_holds_publishers_instead_of_dropping_acknowledged_messages() {
    // An online subscriber slower than its publisher: with a queue of 10, 200 pipelined QoS 1 messages must all
    // arrive, in order, none dropped; the publisher is held back instead (the Receive Maximum of 1 makes the
    // subscriber slow: one message per round trip).
    let b = start(&[("HALYARD_MQTT__MAX_MQUEUE_LEN", "10")]).await;
    let mut c = connect_packet(V5, "slow", true);
    c.properties.make_mut().receive_maximum = Some(1);
    let (mut s, _) = Raw::connect_with(b.addr, c).await;
    s.subscribe("bp", QoS::AtLeastOnce).await;
    let (mut publ, _) = Raw::connect(b.addr, V5, "fast", true).await;
    let mut burst = bytes::BytesMut::new();
    for i in 0..200u16 {
        let p = Packet::Publish(publish("bp", &i.to_be_bytes(), QoS::AtLeastOnce, false, i + 1));
        halyard_codec::encode(&p, V5, &mut burst).expect("encode");
    }
    publ.send_bytes(&burst).await;
    let acks = tokio::spawn(async move {
        let mut n = 0;
        while n < 200 {
            match publ.recv().await {
                Some(Packet::PubAck(_)) => n += 1,
                other => panic!("publisher expected PUBACK, got {other:?}"),
            }
        }
    });
    for i in 0..200u16 {
        let p = s.expect_publish().await;
        assert_eq!(&p.payload[..], &i.to_be_bytes(), "in order, nothing dropped");
        s.ack(&p).await;
    }
    acks.await.expect("all 200 acknowledged");
    assert_eq!(Metrics::get(&b.broker.metrics.dropped_queue_full), 0);
    assert!(Metrics::get(&b.broker.metrics.backpressure_waits) > 0, "the publisher was held back");
}

#[tokio::test]
async fn shutdown_disconnects_busy_and_parked_clients_with_0x8b() {
    // [MQTT-3.14.2-1] the server may send DISCONNECT before closing; v5 reason 0x8B "Server shutting down".
    // One client has just connected (its connection is busy); the other has been quiet for longer than a
    // connection stays busy (1 s), so its connection is parked and learns of the shutdown through its session.
    let b = start(&[]).await;
    let (mut parked, _) = Raw::connect(b.addr, V5, "parked", true).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (mut busy, _) = Raw::connect(b.addr, V5, "busy", true).await;
    b.server.shutdown().await;
    for (name, c) in [("busy", &mut busy), ("parked", &mut parked)] {
        match c.recv().await {
            Some(Packet::Disconnect(d)) => assert_eq!(d.reason_code, 0x8B, "{name}"),
            other => panic!("{name}: expected DISCONNECT 0x8B, got {other:?}"),
        }
    }
}
