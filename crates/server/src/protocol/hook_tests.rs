//! Hooks fired by the state machine and the broker, driven without sockets: each hook point fires exactly once
//! per occurrence, folds change or stop what they see. Every hook records into one log, so a test can also
//! assert what did *not* fire.

use super::tests::{broker, connect, connected, drain};
use super::*;
use bytes::Bytes;
use halyard_codec::{Connect, LastWill, Packet, PubResp, Publish, QoS, Subscribe, SubscriptionOptions, Unsubscribe};
use halyard_core::hooks::{AuthResult, AuthzResult, DropReason, Fold};
use halyard_core::metrics::Metrics;
use halyard_core::session::Control;
use halyard_core::Message;
use std::sync::Mutex;
use tokio::sync::oneshot;

/// Every hook's occurrences, as "hook.name:detail" lines in firing order.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    /// Registers a recording callback on every notification hook (and pass-through ones on the folds).
    fn on(b: &Broker) -> Log {
        let log = Log::default();
        let h = &b.hooks;
        let l = log.clone();
        h.client_connect.register(0, Box::new(move |c| l.push(format!("client.connect:{}", c.client_id))));
        let l = log.clone();
        h.client_connack
            .register(0, Box::new(move |c, code, sp| l.push(format!("client.connack:{}:{code}:{sp}", c.client_id))));
        let l = log.clone();
        h.client_connected.register(0, Box::new(move |c| l.push(format!("client.connected:{}", c.client_id))));
        let l = log.clone();
        h.client_disconnected
            .register(0, Box::new(move |c, why| l.push(format!("client.disconnected:{}:{why:?}", c.client_id))));
        let l = log.clone();
        h.session_created.register(0, Box::new(move |s| l.push(format!("session.created:{}", s.client_id))));
        let l = log.clone();
        h.session_resumed.register(0, Box::new(move |s| l.push(format!("session.resumed:{}", s.client_id))));
        let l = log.clone();
        h.session_takenover.register(0, Box::new(move |s| l.push(format!("session.takenover:{}", s.client_id))));
        let l = log.clone();
        h.session_discarded.register(0, Box::new(move |s| l.push(format!("session.discarded:{}", s.client_id))));
        let l = log.clone();
        h.session_terminated
            .register(0, Box::new(move |s, why| l.push(format!("session.terminated:{}:{why:?}", s.client_id))));
        let l = log.clone();
        h.session_subscribed.register(
            0,
            Box::new(move |c, f, o| l.push(format!("session.subscribed:{}:{f}:{}", c.client_id, o.qos as u8))),
        );
        let l = log.clone();
        h.session_unsubscribed
            .register(0, Box::new(move |c, f| l.push(format!("session.unsubscribed:{}:{f}", c.client_id))));
        let l = log.clone();
        h.client_unsubscribe
            .register(0, Box::new(move |c, fs| l.push(format!("client.unsubscribe:{}:{}", c.client_id, fs.len()))));
        let l = log.clone();
        h.message_publish.register(
            0,
            Box::new(move |m| {
                l.push(format!("message.publish:{}", m.topic));
                Fold::Continue(m)
            }),
        );
        let l = log.clone();
        h.message_delivered
            .register(0, Box::new(move |c, d| l.push(format!("message.delivered:{}:{}", c.client_id, d.msg.topic))));
        let l = log.clone();
        h.message_acked
            .register(0, Box::new(move |c, d| l.push(format!("message.acked:{}:{}", c.client_id, d.msg.topic))));
        let l = log.clone();
        h.message_dropped.register(
            0,
            Box::new(move |e| {
                let topic = e.message.map(|m| m.topic.to_string()).unwrap_or_default();
                l.push(format!("message.dropped:{topic}:{:?}", e.reason));
            }),
        );
        log
    }

    fn push(&self, s: String) {
        self.0.lock().expect("log lock").push(s);
    }

    /// How many lines are exactly `line`.
    fn count(&self, line: &str) -> usize {
        self.0.lock().expect("log lock").iter().filter(|l| *l == line).count()
    }

    /// How many lines start with `prefix`.
    fn count_prefix(&self, prefix: &str) -> usize {
        self.0.lock().expect("log lock").iter().filter(|l| l.starts_with(prefix)).count()
    }

    fn lines(&self) -> Vec<String> {
        self.0.lock().expect("log lock").clone()
    }
}

/// Connected, with its CONNACK already read.
async fn online(b: &Arc<Broker>, v: ProtocolVersion, id: &str, keep_alive: u16, t0: Instant) -> Conn {
    let mut c = connected(b, v, id, keep_alive, t0).await;
    let acks = drain(&mut c, v);
    assert!(matches!(acks.as_slice(), [Packet::ConnAck(a)] if a.reason_code == 0), "{acks:?}");
    c
}

fn v5_connect(id: &str, clean: bool, expiry: u32) -> Connect {
    let Packet::Connect(mut c) = connect(ProtocolVersion::V5, id, 0) else { unreachable!() };
    c.clean_start = clean;
    c.properties.make_mut().session_expiry_interval = Some(expiry);
    *c
}

/// CONNECT through the broker, keeping the control channel (for takeovers).
async fn attach(b: &Arc<Broker>, c: Connect, t0: Instant) -> (Conn, oneshot::Receiver<Control>) {
    let zone = Arc::new(b.config.mqtt.clone());
    let mut conn = Conn::new(b.clone(), zone.clone(), t0, None);
    let Step::Attach(req) = conn.handle(Packet::Connect(Box::new(c)), t0) else { panic!("CONNECT accepted") };
    let (tx, rx) = oneshot::channel();
    let a = b.attach(&req.client_id, req.clean_start, req.expiry_interval, &zone, tx, t0).await;
    conn.on_attached(req, a, t0);
    (conn, rx)
}

fn subscribe(c: &mut Conn, filter: &str, qos: QoS, t: Instant) -> Vec<Packet> {
    let s = Subscribe {
        packet_id: 1,
        properties: Default::default(),
        filters: vec![(Utf8::from(filter), SubscriptionOptions { qos, ..Default::default() })],
    };
    assert!(matches!(c.handle(Packet::Subscribe(s), t), Step::Continue));
    drain(c, c.version())
}

fn publish(topic: &str, qos: QoS, retain: bool, packet_id: Option<u16>) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: Utf8::from(topic),
        packet_id,
        properties: Default::default(),
        payload: Bytes::from_static(b"x"),
    })
}

fn disconnect(c: &mut Conn, t: Instant) {
    let Step::Close(close) = c.handle(Packet::Disconnect(Default::default()), t) else { panic!("DISCONNECT closes") };
    c.close(&close, t);
}

#[tokio::test]
async fn a_normal_session_fires_connect_connack_connected_disconnected_once_each() {
    let b = broker(&[]);
    let log = Log::on(&b);
    let t0 = Instant::now();
    let mut c = online(&b, ProtocolVersion::V5, "n", 0, t0).await;
    disconnect(&mut c, t0);
    // Closing twice (the driver's end after a takeover does) reports nothing more.
    c.close(&Close::lost("again"), t0);
    assert_eq!(
        log.lines(),
        [
            "client.connect:n",
            "session.created:n",
            "client.connack:n:0:false",
            "client.connected:n",
            "client.disconnected:n:ClientDisconnect(0)",
            "session.terminated:n:Closed",
        ]
    );
}

#[tokio::test]
async fn takeover_fires_takenover_once_and_old_disconnected_once_and_no_terminated_when_resumed() {
    let b = broker(&[]);
    let log = Log::on(&b);
    let t0 = Instant::now();
    let (mut old, old_ctl) = attach(&b, v5_connect("tk", false, 60), t0).await;
    // The new connection's attach waits for the old one to hand over, which the old connection's driver
    // would do on its control message: here the same task plays both.
    let zone = Arc::new(b.config.mqtt.clone());
    let mut new = Conn::new(b.clone(), zone.clone(), t0, None);
    let Step::Attach(req) = new.handle(Packet::Connect(Box::new(v5_connect("tk", false, 60))), t0) else {
        panic!("CONNECT accepted")
    };
    let (tx, _new_ctl) = oneshot::channel();
    let old_side = async {
        let Ok(Control::Takeover { resume, done }) = old_ctl.await else { panic!("takeover request") };
        let close = old.on_takeover(resume);
        old.close(&close, t0);
        let _ = done.send(());
        old.close(&close, t0); // the driver closes again when its task ends: no second report
    };
    let (a, ()) = tokio::join!(b.attach(&req.client_id, req.clean_start, req.expiry_interval, &zone, tx, t0), old_side);
    assert!(a.present, "resumed");
    new.on_attached(req, a, t0);
    assert_eq!(log.count("session.takenover:tk"), 1);
    assert_eq!(log.count("client.disconnected:tk:TakenOver"), 1);
    assert_eq!(log.count_prefix("client.disconnected:"), 1);
    assert_eq!(log.count("session.resumed:tk"), 1);
    assert_eq!(log.count("session.created:tk"), 1, "only the first connection created it");
    assert_eq!(log.count_prefix("session.terminated:"), 0, "a resumed session is not terminated");
    assert_eq!(log.count_prefix("session.discarded:"), 0);
    assert_eq!(log.count("client.connected:tk"), 2);
}

#[tokio::test]
async fn a_clean_start_over_an_offline_session_discards_and_terminates_it_once() {
    let b = broker(&[]);
    let log = Log::on(&b);
    let t0 = Instant::now();
    let (mut c, _ctl) = attach(&b, v5_connect("cs", false, 60), t0).await;
    disconnect(&mut c, t0);
    assert_eq!(log.count_prefix("session.terminated:"), 0, "expiry 60: the session stays");
    let (_c2, _ctl2) = attach(&b, v5_connect("cs", true, 60), t0).await;
    assert_eq!(log.count("session.discarded:cs"), 1);
    assert_eq!(log.count("session.terminated:cs:Discarded"), 1);
    assert_eq!(log.count("session.created:cs"), 2);
    assert_eq!(log.count_prefix("session.resumed:"), 0);
}

#[tokio::test]
async fn keepalive_timeout_fires_disconnected_once_with_the_keepalive_reason() {
    let b = broker(&[]);
    let log = Log::on(&b);
    let t0 = Instant::now();
    let mut c = online(&b, ProtocolVersion::V5, "ka", 10, t0).await;
    let close = c.on_tick(t0 + Duration::from_secs(15)).expect_err("keepalive expired");
    c.close(&close, t0 + Duration::from_secs(15));
    assert_eq!(log.count_prefix("client.disconnected:"), 1);
    assert_eq!(log.count("client.disconnected:ka:KeepaliveTimeout"), 1);
}

#[tokio::test]
async fn session_expiry_fires_terminated_once_with_expired() {
    let b = broker(&[]);
    let log = Log::on(&b);
    let t0 = Instant::now();
    let (mut c, _ctl) = attach(&b, v5_connect("exp", false, 5), t0).await;
    disconnect(&mut c, t0);
    // The engine's clock is the one handed to it: just before the expiry nothing ends, at it the session does.
    b.handle_timeout(t0 + Duration::from_millis(4_999));
    assert_eq!(log.count_prefix("session.terminated:"), 0, "offline, not ended yet");
    b.handle_timeout(t0 + Duration::from_secs(5));
    b.handle_timeout(t0 + Duration::from_secs(50));
    assert_eq!(log.count("session.terminated:exp:Expired"), 1);
    assert_eq!(log.count_prefix("session.terminated:"), 1);
}

#[tokio::test]
async fn a_will_goes_through_message_publish_once() {
    let b = broker(&[]);
    let log = Log::on(&b);
    let t0 = Instant::now();
    let mut c = v5_connect("w", true, 0);
    c.will = Some(LastWill {
        topic: Utf8::from("will/w"),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Default::default(),
    });
    let (mut conn, _ctl) = attach(&b, c, t0).await;
    conn.close(&Close::lost("network gone"), t0);
    assert_eq!(log.count("message.publish:will/w"), 1);
    assert_eq!(log.count_prefix("message.publish:"), 1);
    assert_eq!(log.count("message.dropped:will/w:NoSubscribers"), 1, "nobody subscribed to it");
}

#[tokio::test]
async fn a_full_mqueue_fires_dropped_once_with_queue_full() {
    let b = broker(&[("HALYARD_MQTT__MAX_MQUEUE_LEN", "2")]);
    let log = Log::on(&b);
    let t0 = Instant::now();
    let mut sub = online(&b, ProtocolVersion::V5, "full", 0, t0).await;
    subscribe(&mut sub, "q/#", QoS::AtMostOnce, t0);
    let mut publ = online(&b, ProtocolVersion::V5, "full-pub", 0, t0).await;
    // The subscriber does not drain (no fill): the third message pushes the first out.
    for t in ["q/1", "q/2", "q/3"] {
        assert!(matches!(publ.handle(publish(t, QoS::AtMostOnce, false, None), t0), Step::Continue));
    }
    assert_eq!(log.count_prefix("message.dropped:"), 1);
    assert_eq!(log.count("message.dropped:q/1:QueueFull"), 1);
    assert_eq!(Metrics::get(&b.metrics.dropped_queue_full), 1);
    sub.fill(t0);
    let got = drain(&mut sub, ProtocolVersion::V5);
    assert_eq!(got.len(), 2);
    assert_eq!(log.count_prefix("message.delivered:full:"), 2);
}

#[tokio::test]
async fn an_expired_message_fires_dropped_once_with_expired_and_is_not_delivered() {
    let b = broker(&[]);
    let log = Log::on(&b);
    let t0 = Instant::now();
    let mut sub = online(&b, ProtocolVersion::V5, "ex", 0, t0).await;
    subscribe(&mut sub, "e", QoS::AtLeastOnce, t0);
    b.publish(Arc::new(Message {
        id: 0,
        topic: Utf8::from("e"),
        payload: Bytes::from_static(b"late"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: None,
        publisher: None,
        expires_at: Some(t0 + Duration::from_secs(1)),
    }));
    sub.fill(t0 + Duration::from_secs(2));
    assert!(drain(&mut sub, ProtocolVersion::V5).is_empty());
    assert_eq!(log.count("message.dropped:e:Expired"), 1);
    assert_eq!(log.count_prefix("message.dropped:"), 1);
    assert_eq!(log.count_prefix("message.delivered:"), 0);
}

#[tokio::test]
async fn message_publish_stop_reaches_no_subscriber_and_is_not_retained() {
    let b = broker(&[]);
    let log = Log::on(&b);
    // Higher priority than the log's pass-through: the log never sees the stopped message.
    b.hooks
        .message_publish
        .register(10, Box::new(|m| if m.topic.starts_with("stop/") { Fold::Stop(m) } else { Fold::Continue(m) }));
    let t0 = Instant::now();
    let mut sub = online(&b, ProtocolVersion::V5, "st", 0, t0).await;
    subscribe(&mut sub, "#", QoS::AtLeastOnce, t0);
    let mut publ = online(&b, ProtocolVersion::V5, "st-pub", 0, t0).await;
    assert!(matches!(publ.handle(publish("stop/me", QoS::AtLeastOnce, true, Some(1)), t0), Step::Continue));
    assert!(matches!(publ.handle(publish("go/on", QoS::AtLeastOnce, false, Some(2)), t0), Step::Continue));
    let acks = drain(&mut publ, ProtocolVersion::V5);
    assert!(matches!(acks.as_slice(), [Packet::PubAck(a), Packet::PubAck(_)] if a.packet_id == 1), "{acks:?}");
    sub.fill(t0);
    let got = drain(&mut sub, ProtocolVersion::V5);
    assert!(matches!(got.as_slice(), [Packet::Publish(p)] if &*p.topic == "go/on"), "only the other one: {got:?}");
    assert!(b.retainer.matching("stop/#").is_empty(), "a stopped message is not retained");
    assert_eq!(log.count("message.dropped:stop/me:StoppedByHook"), 1);
    assert_eq!(log.count_prefix("message.publish:stop/"), 0, "later callbacks do not run after a stop");
    assert_eq!(Metrics::get(&b.metrics.dropped_by_hook), 1);
}

#[tokio::test]
async fn message_publish_may_replace_the_message() {
    let b = broker(&[]);
    b.hooks.message_publish.register(
        0,
        Box::new(|m| {
            Fold::Continue(Arc::new(Message {
                id: m.id,
                topic: Utf8::from("moved"),
                payload: Bytes::from_static(b"rewritten"),
                qos: m.qos,
                retain: m.retain,
                properties: m.properties.clone(),
                publisher: m.publisher.clone(),
                expires_at: m.expires_at,
            }))
        }),
    );
    let t0 = Instant::now();
    let mut sub = online(&b, ProtocolVersion::V5, "rw", 0, t0).await;
    subscribe(&mut sub, "moved", QoS::AtMostOnce, t0);
    let mut publ = online(&b, ProtocolVersion::V5, "rw-pub", 0, t0).await;
    assert!(matches!(publ.handle(publish("orig", QoS::AtMostOnce, false, None), t0), Step::Continue));
    sub.fill(t0);
    let got = drain(&mut sub, ProtocolVersion::V5);
    assert!(
        matches!(got.as_slice(), [Packet::Publish(p)] if &*p.topic == "moved" && &p.payload[..] == b"rewritten"),
        "{got:?}"
    );
}

#[tokio::test]
async fn delivered_and_acked_fire_once_per_qos1_and_qos2_delivery() {
    let b = broker(&[]);
    let log = Log::on(&b);
    let t0 = Instant::now();
    let mut sub = online(&b, ProtocolVersion::V5, "da", 0, t0).await;
    subscribe(&mut sub, "d/#", QoS::ExactlyOnce, t0);
    let mut publ = online(&b, ProtocolVersion::V5, "da-pub", 0, t0).await;
    assert!(matches!(publ.handle(publish("d/1", QoS::AtLeastOnce, false, Some(1)), t0), Step::Continue));
    assert!(matches!(publ.handle(publish("d/2", QoS::ExactlyOnce, false, Some(2)), t0), Step::Continue));
    sub.fill(t0);
    let ids: Vec<(u16, QoS)> = drain(&mut sub, ProtocolVersion::V5)
        .into_iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some((p.packet_id.expect("id"), p.qos)),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(log.count_prefix("message.delivered:da:"), 2);
    assert_eq!(log.count_prefix("message.acked:"), 0, "nothing acknowledged yet");
    for (id, qos) in ids {
        if qos == QoS::AtLeastOnce {
            assert!(matches!(sub.handle(Packet::PubAck(PubResp::new(id)), t0), Step::Continue));
        } else {
            assert!(matches!(sub.handle(Packet::PubRec(PubResp::new(id)), t0), Step::Continue));
            assert_eq!(log.count("message.acked:da:d/2"), 0, "PUBREC is not the end of a QoS 2 delivery");
            assert!(matches!(sub.handle(Packet::PubComp(PubResp::new(id)), t0), Step::Continue));
        }
    }
    assert_eq!(log.count("message.acked:da:d/1"), 1);
    assert_eq!(log.count("message.acked:da:d/2"), 1);
    // A duplicate acknowledgement acknowledges nothing.
    assert!(matches!(sub.handle(Packet::PubAck(PubResp::new(1)), t0), Step::Continue));
    assert_eq!(log.count_prefix("message.acked:"), 2);
}

#[tokio::test]
async fn authenticate_deny_refuses_with_not_authorized_before_any_session_v5_and_v3() {
    let b = broker(&[]);
    let log = Log::on(&b);
    b.hooks.client_authenticate.register(
        0,
        Box::new(|_, password, _| match password {
            Some(b"good") => Fold::Stop(AuthResult::Allow { is_superuser: false }),
            _ => Fold::Continue(AuthResult::Deny),
        }),
    );
    let t0 = Instant::now();
    for (v, expected) in [(ProtocolVersion::V5, rc::NOT_AUTHORIZED), (ProtocolVersion::V4, 0x05)] {
        let mut c = Conn::new(b.clone(), Arc::new(b.config.mqtt.clone()), t0, None);
        let Step::Close(close) = c.handle(connect(v, "bad", 0), t0) else { panic!("refused") };
        c.close(&close, t0);
        let out = drain(&mut c, v);
        assert!(matches!(out.as_slice(), [Packet::ConnAck(a)] if a.reason_code == expected), "{v:?}: {out:?}");
    }
    assert_eq!(b.registry.len(), 0, "no session was created for a refused client");
    assert_eq!(log.count("client.connack:bad:135:false"), 1);
    assert_eq!(log.count("client.connack:bad:5:false"), 1);
    assert_eq!(log.count_prefix("session.created:"), 0);
    assert_eq!(log.count_prefix("client.connected:"), 0);
    assert_eq!(log.count_prefix("client.disconnected:"), 0, "never connected");

    let Packet::Connect(mut good) = connect(ProtocolVersion::V5, "good", 0) else { unreachable!() };
    good.password = Some(Bytes::from_static(b"good"));
    let (_c, _ctl) = attach(&b, *good, t0).await;
    assert_eq!(log.count("client.connected:good"), 1);
}

#[tokio::test]
async fn authorize_deny_refuses_publish_and_subscribe_and_counts_the_drop() {
    let b = broker(&[]);
    let log = Log::on(&b);
    b.hooks.client_authorize.register(
        0,
        Box::new(
            |_, _, topic, acc| {
                if topic.starts_with("secret") {
                    Fold::Stop(AuthzResult::Deny)
                } else {
                    Fold::Continue(acc)
                }
            },
        ),
    );
    let t0 = Instant::now();
    let mut sub = online(&b, ProtocolVersion::V5, "az", 0, t0).await;
    let acks = subscribe(&mut sub, "secret/#", QoS::AtLeastOnce, t0);
    assert!(matches!(acks.as_slice(), [Packet::SubAck(s)] if s.reason_codes == [rc::NOT_AUTHORIZED]), "{acks:?}");
    subscribe(&mut sub, "#", QoS::AtLeastOnce, t0);
    assert_eq!(log.count_prefix("session.subscribed:az:"), 1, "only the allowed filter");

    let mut v3 = online(&b, ProtocolVersion::V4, "az-v3", 0, t0).await;
    let acks = subscribe(&mut v3, "secret/x", QoS::AtLeastOnce, t0);
    assert!(matches!(acks.as_slice(), [Packet::SubAck(s)] if s.reason_codes == [0x80]), "{acks:?}");

    let mut publ = online(&b, ProtocolVersion::V5, "az-pub", 0, t0).await;
    assert!(matches!(publ.handle(publish("secret/a", QoS::AtLeastOnce, false, Some(1)), t0), Step::Continue));
    let acks = drain(&mut publ, ProtocolVersion::V5);
    assert!(matches!(acks.as_slice(), [Packet::PubAck(a)] if a.reason_code == rc::NOT_AUTHORIZED), "{acks:?}");
    // v3 cannot be told no: acknowledged, discarded.
    assert!(matches!(v3.handle(publish("secret/b", QoS::AtLeastOnce, false, Some(1)), t0), Step::Continue));
    let acks = drain(&mut v3, ProtocolVersion::V4);
    assert!(matches!(acks.as_slice(), [Packet::PubAck(a)] if a.packet_id == 1), "{acks:?}");
    sub.fill(t0);
    assert!(drain(&mut sub, ProtocolVersion::V5).is_empty(), "nothing reached the subscriber");
    assert_eq!(log.count("message.dropped:secret/a:NotAuthorized"), 1);
    assert_eq!(log.count("message.dropped:secret/b:NotAuthorized"), 1);
    assert_eq!(log.count_prefix("message.publish:secret"), 0, "refused before message.publish");
    assert_eq!(Metrics::get(&b.metrics.dropped_not_authorized), 2);
}

#[tokio::test]
async fn client_subscribe_may_rewrite_or_refuse_filters_and_suback_keeps_one_code_each() {
    let b = broker(&[]);
    let log = Log::on(&b);
    b.hooks.client_subscribe.register(
        0,
        Box::new(|_, mut reqs| {
            for r in &mut reqs {
                if &*r.filter == "old" {
                    r.filter = Utf8::from("new");
                } else if &*r.filter == "no" {
                    r.refused = Some(rc::IMPLEMENTATION_SPECIFIC_ERROR);
                }
            }
            Fold::Continue(reqs)
        }),
    );
    let t0 = Instant::now();
    let mut sub = online(&b, ProtocolVersion::V5, "cs", 0, t0).await;
    let s = Subscribe {
        packet_id: 7,
        properties: Default::default(),
        filters: ["old", "no"]
            .iter()
            .map(|f| (Utf8::from(*f), SubscriptionOptions { qos: QoS::AtMostOnce, ..Default::default() }))
            .collect(),
    };
    assert!(matches!(sub.handle(Packet::Subscribe(s), t0), Step::Continue));
    let acks = drain(&mut sub, ProtocolVersion::V5);
    assert!(
        matches!(acks.as_slice(), [Packet::SubAck(a)] if a.reason_codes == [0, rc::IMPLEMENTATION_SPECIFIC_ERROR]),
        "{acks:?}"
    );
    assert_eq!(log.count("session.subscribed:cs:new:0"), 1);
    b.publish(Arc::new(Message {
        id: 0,
        topic: Utf8::from("new"),
        payload: Bytes::new(),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: None,
        publisher: None,
        expires_at: None,
    }));
    sub.fill(t0);
    assert!(matches!(drain(&mut sub, ProtocolVersion::V5).as_slice(), [Packet::Publish(p)] if &*p.topic == "new"));
    let u =
        Unsubscribe { packet_id: 8, properties: Default::default(), filters: vec![Utf8::from("new"), Utf8::from("x")] };
    assert!(matches!(sub.handle(Packet::Unsubscribe(u), t0), Step::Continue));
    assert_eq!(log.count("client.unsubscribe:cs:2"), 1);
    assert_eq!(log.count("session.unsubscribed:cs:new"), 1);
    assert_eq!(log.count_prefix("session.unsubscribed:"), 1, "only what existed");
}

#[tokio::test]
async fn superusers_skip_authorize_and_callbacks_run_in_priority_order() {
    let b = broker(&[]);
    let order = Arc::new(Mutex::new(Vec::new()));
    for (prio, name) in [(0, "zero"), (100, "hundred"), (0, "zero-later"), (-1, "last")] {
        let o = order.clone();
        b.hooks.client_authenticate.register(
            prio,
            Box::new(move |_, _, acc| {
                o.lock().expect("log lock").push(name);
                if name == "last" {
                    Fold::Stop(AuthResult::Allow { is_superuser: true })
                } else {
                    Fold::Continue(acc)
                }
            }),
        );
    }
    b.hooks.client_authorize.register(0, Box::new(|_, _, _, _| Fold::Stop(AuthzResult::Deny)));
    let t0 = Instant::now();
    let mut c = online(&b, ProtocolVersion::V5, "su", 0, t0).await;
    assert_eq!(*order.lock().expect("log lock"), ["hundred", "zero", "zero-later", "last"]);
    assert!(c.client_info().is_some_and(|i| i.is_superuser));
    let acks = subscribe(&mut c, "anything", QoS::AtMostOnce, t0);
    assert!(matches!(acks.as_slice(), [Packet::SubAck(s)] if s.reason_codes == [0]), "{acks:?}");
    assert_eq!(DropReason::QueueFull.counter(&b.metrics) as *const _, &b.metrics.dropped_queue_full as *const _);
}
