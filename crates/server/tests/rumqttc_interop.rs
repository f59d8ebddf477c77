//! Interoperability with rumqttc 0.24, a widely used Rust client, on both ends of the broker: `rumqttc` speaks
//! MQTT 3.1.1 and `rumqttc::v5` MQTT 5. Each client's event loop runs in its own task and forwards every packet the
//! broker sent into a channel the test awaits, so nothing here sleeps to synchronise.

mod common;
use common::*;
use halyard_core::metrics::Metrics;
use rumqttc::v5 as r5;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::v5::mqttbytes::QoS as Q5;
use std::collections::VecDeque;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const SHORT: Duration = Duration::from_millis(300);

/// A rumqttc client and the packets its event loop received, in order.
struct Peer<C, P> {
    client: C,
    rx: mpsc::UnboundedReceiver<Result<P, String>>,
    /// Packets received while waiting for something else, kept for later waits (so waiting for a PUBACK does not
    /// lose a PUBLISH that arrived first).
    backlog: VecDeque<P>,
    task: JoinHandle<()>,
}

type P4 = Peer<rumqttc::AsyncClient, rumqttc::Packet>;
type P5 = Peer<r5::AsyncClient, p5::Packet>;

impl<C, P: Debug> Peer<C, P> {
    /// Skips packets until `f` accepts one; panics on a connection error or after WAIT.
    async fn wait_for<T>(&mut self, what: &str, mut f: impl FnMut(&P) -> Option<T>) -> T {
        if let Some((i, t)) = self.backlog.iter().enumerate().find_map(|(i, p)| f(p).map(|t| (i, t))) {
            self.backlog.remove(i);
            return t;
        }
        let deadline = Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Ok(p))) => match f(&p) {
                    Some(t) => return t,
                    None => self.backlog.push_back(p),
                },
                Ok(Some(Err(e))) => panic!("waiting for {what}: connection error: {e}"),
                Ok(None) => panic!("waiting for {what}: the event loop stopped"),
                Err(_) => panic!("no {what} within {WAIT:?}"),
            }
        }
    }

    /// Asserts that nothing `f` matches arrives within `limit` (other packets are ignored).
    async fn none_within(&mut self, limit: Duration, what: &str, mut f: impl FnMut(&P) -> bool) {
        if let Some(p) = self.backlog.iter().find(|p| f(p)) {
            panic!("expected no {what}, got {p:?}");
        }
        let deadline = Instant::now() + limit;
        while let Ok(got) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            match got {
                Some(Ok(p)) if f(&p) => panic!("expected no {what}, got {p:?}"),
                Some(Ok(p)) => self.backlog.push_back(p),
                Some(Err(e)) => panic!("connection error while expecting no {what}: {e}"),
                None => panic!("the event loop stopped while expecting no {what}"),
            }
        }
    }

    /// Waits until the connection has ended (the event loop reported an error and stopped).
    async fn ended(&mut self) {
        let deadline = Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_))) | Ok(None) => return,
                Err(_) => panic!("connection still open after {WAIT:?}"),
            }
        }
    }

    /// Drops the connection without DISCONNECT: the event loop, which owns the socket, is cancelled and dropped.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

impl P4 {
    async fn connect(addr: SocketAddr, id: &str, configure: impl FnOnce(&mut rumqttc::MqttOptions)) -> (P4, bool) {
        let mut o = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
        configure(&mut o);
        let (client, mut el) = rumqttc::AsyncClient::new(o, 64);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let forwarded = match el.poll().await {
                    Ok(rumqttc::Event::Incoming(p)) => tx.send(Ok(p)).is_ok(),
                    Ok(rumqttc::Event::Outgoing(_)) => true,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        false
                    }
                };
                if !forwarded {
                    break;
                }
            }
        });
        let mut peer = Peer { client, rx, backlog: VecDeque::new(), task };
        let ack = peer
            .wait_for("CONNACK", |p| match p {
                rumqttc::Packet::ConnAck(a) => Some(a.clone()),
                _ => None,
            })
            .await;
        assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success);
        (peer, ack.session_present)
    }

    async fn subscribe(&mut self, filter: &str, qos: rumqttc::QoS) {
        self.client.subscribe(filter, qos).await.expect("subscribe request");
        let codes = self
            .wait_for("SUBACK", |p| match p {
                rumqttc::Packet::SubAck(a) => Some(a.return_codes.clone()),
                _ => None,
            })
            .await;
        assert_eq!(codes, vec![rumqttc::SubscribeReasonCode::Success(qos)]);
    }

    /// The next PUBLISH, skipping acknowledgements and pings.
    async fn publish_in(&mut self) -> rumqttc::Publish {
        self.wait_for("PUBLISH", |p| match p {
            rumqttc::Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    async fn no_publish(&mut self) {
        self.none_within(SHORT, "PUBLISH", |p| matches!(p, rumqttc::Packet::Publish(_))).await
    }

    /// Publishes and waits for the end of the QoS flow: PUBACK for QoS 1, PUBCOMP for QoS 2.
    async fn publish_acked(&mut self, topic: &str, qos: rumqttc::QoS, retain: bool, payload: Vec<u8>) {
        self.client.publish(topic, qos, retain, payload).await.expect("publish request");
        match qos {
            rumqttc::QoS::AtMostOnce => {}
            rumqttc::QoS::AtLeastOnce => {
                self.wait_for("PUBACK", |p| matches!(p, rumqttc::Packet::PubAck(_)).then_some(())).await
            }
            rumqttc::QoS::ExactlyOnce => {
                self.wait_for("PUBCOMP", |p| matches!(p, rumqttc::Packet::PubComp(_)).then_some(())).await
            }
        }
    }
}

impl P5 {
    async fn connect(addr: SocketAddr, id: &str, configure: impl FnOnce(&mut r5::MqttOptions)) -> (P5, p5::ConnAck) {
        let mut o = r5::MqttOptions::new(id, addr.ip().to_string(), addr.port());
        configure(&mut o);
        let (client, mut el) = r5::AsyncClient::new(o, 64);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let forwarded = match el.poll().await {
                    Ok(r5::Event::Incoming(p)) => tx.send(Ok(p)).is_ok(),
                    Ok(r5::Event::Outgoing(_)) => true,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        false
                    }
                };
                if !forwarded {
                    break;
                }
            }
        });
        let mut peer = Peer { client, rx, backlog: VecDeque::new(), task };
        let ack = peer
            .wait_for("CONNACK", |p| match p {
                p5::Packet::ConnAck(a) => Some(a.clone()),
                _ => None,
            })
            .await;
        assert_eq!(ack.code, p5::ConnectReturnCode::Success);
        (peer, ack)
    }

    async fn subscribe(&mut self, filter: &str, qos: Q5, sub_id: Option<usize>) {
        match sub_id {
            Some(id) => {
                let props = p5::SubscribeProperties { id: Some(id), user_properties: Vec::new() };
                self.client.subscribe_with_properties(filter, qos, props).await.expect("subscribe request")
            }
            None => self.client.subscribe(filter, qos).await.expect("subscribe request"),
        }
        let codes = self
            .wait_for("SUBACK", |p| match p {
                p5::Packet::SubAck(a) => Some(a.return_codes.clone()),
                _ => None,
            })
            .await;
        assert_eq!(codes, vec![p5::SubscribeReasonCode::Success(qos)]);
    }

    async fn publish_in(&mut self) -> p5::Publish {
        self.wait_for("PUBLISH", |p| match p {
            p5::Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    async fn no_publish(&mut self) {
        self.none_within(SHORT, "PUBLISH", |p| matches!(p, p5::Packet::Publish(_))).await
    }

    /// Waits for the end of one QoS flow the client started: PUBACK for QoS 1, PUBCOMP for QoS 2; both must say
    /// success (for PUBACK, 0x10 No matching subscribers is a success too).
    async fn flow_done(&mut self, qos: Q5) {
        match qos {
            Q5::AtMostOnce => {}
            Q5::AtLeastOnce => {
                let r = self
                    .wait_for("PUBACK", |p| match p {
                        p5::Packet::PubAck(a) => Some(a.reason),
                        _ => None,
                    })
                    .await;
                assert!(matches!(r, p5::PubAckReason::Success | p5::PubAckReason::NoMatchingSubscribers), "{r:?}");
            }
            Q5::ExactlyOnce => {
                let r = self
                    .wait_for("PUBCOMP", |p| match p {
                        p5::Packet::PubComp(a) => Some(a.reason),
                        _ => None,
                    })
                    .await;
                assert_eq!(r, p5::PubCompReason::Success);
            }
        }
    }

    async fn publish_acked(&mut self, topic: &str, qos: Q5, retain: bool, payload: Vec<u8>) {
        self.client.publish(topic, qos, retain, payload).await.expect("publish request");
        self.flow_done(qos).await;
    }
}

/// A payload with every byte value, longer than 127 bytes so its length needs a two-byte Remaining Length.
fn binary_payload(tag: u8) -> Vec<u8> {
    let mut v: Vec<u8> = (0..=255u8).collect();
    v.push(tag);
    v
}

fn v5_topic(p: &p5::Publish) -> String {
    String::from_utf8(p.topic.to_vec()).expect("UTF-8 topic")
}

#[tokio::test]
async fn v4_qos0_1_2_round_trip() {
    // [MQTT-4.3.1-1], [MQTT-4.3.2-1], [MQTT-4.3.3-1] each QoS with its flow; [MQTT-3.3.2-3] the topic name sent to
    // the subscriber matches the one published; the payload is passed on unaltered.
    let b = start(&[]).await;
    let (mut sub, _) = P4::connect(b.addr, "rt4-sub", |_| {}).await;
    sub.subscribe("rt4/#", rumqttc::QoS::ExactlyOnce).await;
    let (mut publ, _) = P4::connect(b.addr, "rt4-pub", |_| {}).await;
    for (i, qos) in
        [rumqttc::QoS::AtMostOnce, rumqttc::QoS::AtLeastOnce, rumqttc::QoS::ExactlyOnce].into_iter().enumerate()
    {
        let topic = format!("rt4/q{i}/größe/✓");
        let payload = binary_payload(i as u8);
        publ.publish_acked(&topic, qos, false, payload.clone()).await;
        let p = sub.publish_in().await;
        assert_eq!(p.topic, topic);
        assert_eq!(&p.payload[..], &payload[..]);
        assert_eq!(p.qos, qos, "delivered at the publish QoS (granted 2)");
        assert!(!p.retain && !p.dup);
    }
    sub.no_publish().await;
}

#[tokio::test]
async fn v5_qos0_1_2_round_trip() {
    // [MQTT-4.3.1-1], [MQTT-4.3.2-1], [MQTT-4.3.3-1] each QoS with its flow, PUBACK / PUBCOMP with reason Success;
    // [MQTT-3.3.2-3] topic name unchanged; payload unaltered.
    let b = start(&[]).await;
    let (mut sub, _) = P5::connect(b.addr, "rt5-sub", |_| {}).await;
    sub.subscribe("rt5/#", Q5::ExactlyOnce, None).await;
    let (mut publ, _) = P5::connect(b.addr, "rt5-pub", |_| {}).await;
    for (i, qos) in [Q5::AtMostOnce, Q5::AtLeastOnce, Q5::ExactlyOnce].into_iter().enumerate() {
        let topic = format!("rt5/q{i}/größe/✓");
        let payload = binary_payload(i as u8);
        publ.publish_acked(&topic, qos, false, payload.clone()).await;
        let p = sub.publish_in().await;
        assert_eq!(v5_topic(&p), topic);
        assert_eq!(&p.payload[..], &payload[..]);
        assert_eq!(p.qos, qos, "delivered at the publish QoS (granted 2)");
        assert!(!p.retain && !p.dup);
    }
    sub.no_publish().await;
}

#[tokio::test]
async fn v4_and_v5_clients_talk_to_each_other() {
    // The broker translates between protocol versions: a 3.1.1 publisher reaches a 5.0 subscriber and back.
    let b = start(&[]).await;
    let (mut s5, _) = P5::connect(b.addr, "mix-s5", |_| {}).await;
    s5.subscribe("mix/to5", Q5::AtLeastOnce, None).await;
    let (mut s4, _) = P4::connect(b.addr, "mix-s4", |_| {}).await;
    s4.subscribe("mix/to4", rumqttc::QoS::AtLeastOnce).await;
    s4.publish_acked("mix/to5", rumqttc::QoS::AtLeastOnce, false, b"from 3.1.1".to_vec()).await;
    s5.publish_acked("mix/to4", Q5::AtLeastOnce, false, b"from 5".to_vec()).await;
    let p = s5.publish_in().await;
    assert_eq!((v5_topic(&p).as_str(), &p.payload[..]), ("mix/to5", &b"from 3.1.1"[..]));
    let p = s4.publish_in().await;
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("mix/to4", &b"from 5"[..]));
}

#[tokio::test]
async fn v4_retained_message_reaches_a_later_subscriber() {
    // MQTT 3.1.1 [MQTT-3.3.1-5] a retained message is stored; [MQTT-3.3.1-6] a new subscription gets the last
    // retained message; [MQTT-3.3.1-8] with RETAIN set to 1.
    let b = start(&[]).await;
    let (mut publ, _) = P4::connect(b.addr, "ret4-pub", |_| {}).await;
    publ.publish_acked("ret4/state", rumqttc::QoS::AtLeastOnce, true, b"on".to_vec()).await;
    let (mut sub, _) = P4::connect(b.addr, "ret4-sub", |_| {}).await;
    sub.subscribe("ret4/+", rumqttc::QoS::AtLeastOnce).await;
    let p = sub.publish_in().await;
    assert!(p.retain, "RETAIN set on a retained message sent for a new subscription");
    assert_eq!((p.topic.as_str(), &p.payload[..]), ("ret4/state", &b"on"[..]));
    sub.no_publish().await;
}

#[tokio::test]
async fn v5_retained_message_reaches_a_later_subscriber() {
    // MQTT 5 [MQTT-3.3.1-5] a retained message is stored; [MQTT-3.3.1-9] Retain Handling 0 (rumqttc's default)
    // sends it on subscribe, with RETAIN set to 1 (§3.3.1.3).
    let b = start(&[]).await;
    let (mut publ, _) = P5::connect(b.addr, "ret5-pub", |_| {}).await;
    publ.publish_acked("ret5/state", Q5::AtLeastOnce, true, b"on".to_vec()).await;
    let (mut sub, _) = P5::connect(b.addr, "ret5-sub", |_| {}).await;
    sub.subscribe("ret5/+", Q5::AtLeastOnce, None).await;
    let p = sub.publish_in().await;
    assert!(p.retain, "RETAIN set on a retained message sent for a new subscription");
    assert_eq!((v5_topic(&p).as_str(), &p.payload[..]), ("ret5/state", &b"on"[..]));
    sub.no_publish().await;
}

#[tokio::test]
async fn v4_persistent_session_gets_what_was_published_while_offline() {
    // [MQTT-3.1.2-4] clean session 0 resumes the session; [MQTT-3.2.2-2] Session Present is 1; QoS 1 messages
    // published meanwhile are delivered, in order [MQTT-4.6.0-6].
    let b = start(&[]).await;
    let (mut sub, present) = P4::connect(b.addr, "ps4", |o| {
        o.set_clean_session(false);
    })
    .await;
    assert!(!present, "no session existed before");
    sub.subscribe("ps4/t", rumqttc::QoS::AtLeastOnce).await;
    sub.client.disconnect().await.expect("disconnect request");
    sub.ended().await;

    let (mut publ, _) = P4::connect(b.addr, "ps4-pub", |_| {}).await;
    for i in 0..5u8 {
        publ.publish_acked("ps4/t", rumqttc::QoS::AtLeastOnce, false, vec![i]).await;
    }
    let (mut sub, present) = P4::connect(b.addr, "ps4", |o| {
        o.set_clean_session(false);
    })
    .await;
    assert!(present, "Session Present after resuming a session");
    for i in 0..5u8 {
        let p = sub.publish_in().await;
        assert_eq!((p.topic.as_str(), &p.payload[..], p.qos), ("ps4/t", &[i][..], rumqttc::QoS::AtLeastOnce));
    }
    sub.no_publish().await;
}

#[tokio::test]
async fn v5_persistent_session_gets_what_was_published_while_offline() {
    // [MQTT-3.1.2-4] Clean Start 0 with a Session Expiry Interval resumes the session; [MQTT-3.2.2-2] Session
    // Present is 1; QoS 1 messages published meanwhile are delivered, in order [MQTT-4.6.0-6].
    let b = start(&[]).await;
    let persistent = |o: &mut r5::MqttOptions| {
        o.set_clean_start(false);
        o.set_connect_properties(p5::ConnectProperties {
            session_expiry_interval: Some(300),
            ..p5::ConnectProperties::new()
        });
    };
    let (mut sub, ack) = P5::connect(b.addr, "ps5", persistent).await;
    assert!(!ack.session_present, "no session existed before");
    sub.subscribe("ps5/t", Q5::AtLeastOnce, None).await;
    sub.client.disconnect().await.expect("disconnect request");
    sub.ended().await;

    let (mut publ, _) = P5::connect(b.addr, "ps5-pub", |_| {}).await;
    for i in 0..5u8 {
        publ.publish_acked("ps5/t", Q5::AtLeastOnce, false, vec![i]).await;
    }
    let (mut sub, ack) = P5::connect(b.addr, "ps5", persistent).await;
    assert!(ack.session_present, "Session Present after resuming a session");
    for i in 0..5u8 {
        let p = sub.publish_in().await;
        assert_eq!((v5_topic(&p).as_str(), &p.payload[..], p.qos), ("ps5/t", &[i][..], Q5::AtLeastOnce));
    }
    sub.no_publish().await;
}

#[tokio::test]
async fn v4_will_published_when_the_connection_drops() {
    // [MQTT-3.1.2-8] the will is published when the network connection closes without DISCONNECT.
    let b = start(&[]).await;
    let (mut watcher, _) = P4::connect(b.addr, "lw4-watch", |_| {}).await;
    watcher.subscribe("lw4/#", rumqttc::QoS::AtLeastOnce).await;
    let (dying, _) = P4::connect(b.addr, "lw4-dying", |o| {
        o.set_last_will(rumqttc::LastWill::new("lw4/status", "offline", rumqttc::QoS::AtLeastOnce, false));
    })
    .await;
    watcher.no_publish().await;
    dying.kill().await;
    let p = watcher.publish_in().await;
    assert_eq!((p.topic.as_str(), &p.payload[..], p.qos), ("lw4/status", &b"offline"[..], rumqttc::QoS::AtLeastOnce));
    assert_eq!(Metrics::get(&b.broker.metrics.wills_published), 1);
}

#[tokio::test]
async fn v5_will_published_when_the_connection_drops() {
    // [MQTT-3.1.2-8] the will is published when the network connection closes without DISCONNECT; its properties
    // travel with it.
    let b = start(&[]).await;
    let (mut watcher, _) = P5::connect(b.addr, "lw5-watch", |_| {}).await;
    watcher.subscribe("lw5/#", Q5::AtLeastOnce, None).await;
    let (dying, _) = P5::connect(b.addr, "lw5-dying", |o| {
        let props = p5::LastWillProperties {
            delay_interval: None,
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: Some("text/plain".into()),
            response_topic: None,
            correlation_data: None,
            user_properties: vec![("why".into(), "test".into())],
        };
        o.set_last_will(p5::LastWill::new("lw5/status", "offline", Q5::AtLeastOnce, false, Some(props)));
    })
    .await;
    watcher.no_publish().await;
    dying.kill().await;
    let p = watcher.publish_in().await;
    assert_eq!((v5_topic(&p).as_str(), &p.payload[..], p.qos), ("lw5/status", &b"offline"[..], Q5::AtLeastOnce));
    let props = p.properties.expect("will properties forwarded");
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));
    assert_eq!(props.user_properties, vec![("why".to_string(), "test".to_string())]);
}

#[tokio::test]
async fn v5_request_response_properties_and_subscription_identifier() {
    // [MQTT-3.3.2-15] Response Topic, [MQTT-3.3.2-16] Correlation Data, [MQTT-3.3.2-17] User Properties unaltered and
    // [MQTT-3.3.2-18] in order, [MQTT-3.3.2-20] Content Type unaltered; [MQTT-3.3.4-3] the Subscription Identifier
    // of the matching subscription is included.
    let b = start(&[]).await;
    let (mut sub, _) = P5::connect(b.addr, "props-sub", |_| {}).await;
    sub.subscribe("props/+", Q5::AtLeastOnce, Some(42)).await;
    let (mut publ, _) = P5::connect(b.addr, "props-pub", |_| {}).await;
    let sent = p5::PublishProperties {
        response_topic: Some("props/reply/7".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"\x00corr\xff")),
        user_properties: vec![("k".into(), "v1".into()), ("k".into(), "v2".into()), ("ä".into(), "ö".into())],
        content_type: Some("application/json".into()),
        ..Default::default()
    };
    publ.client
        .publish_with_properties("props/req", Q5::AtLeastOnce, false, &b"{\"q\":1}"[..], sent.clone())
        .await
        .expect("publish request");
    publ.flow_done(Q5::AtLeastOnce).await;
    let p = sub.publish_in().await;
    assert_eq!(&p.payload[..], b"{\"q\":1}");
    let got = p.properties.expect("properties forwarded");
    assert_eq!(got.response_topic, sent.response_topic);
    assert_eq!(got.correlation_data, sent.correlation_data);
    assert_eq!(got.user_properties, sent.user_properties);
    assert_eq!(got.content_type, sent.content_type);
    assert_eq!(got.subscription_identifiers, vec![42]);

    // The responder answers on the Response Topic with the Correlation Data, as the request/response pattern does.
    let reply = p5::PublishProperties { correlation_data: got.correlation_data.clone(), ..Default::default() };
    let topic = got.response_topic.clone().expect("response topic");
    publ.subscribe("props/reply/#", Q5::AtMostOnce, Some(9)).await;
    sub.client.publish_with_properties(topic, Q5::AtMostOnce, false, &b"ok"[..], reply).await.expect("reply");
    let r = publ.publish_in().await;
    assert_eq!(v5_topic(&r), "props/reply/7");
    let rp = r.properties.expect("reply properties");
    assert_eq!(rp.correlation_data, sent.correlation_data);
    assert_eq!(rp.subscription_identifiers, vec![9]);
}

#[tokio::test]
async fn v5_topic_alias_from_publisher_and_to_subscriber() {
    // [MQTT-3.3.2-12] a Topic Alias set by the client maps later PUBLISHes with an empty topic name; towards a
    // client whose Topic Alias Maximum allows it the broker may use aliases, which rumqttc must resolve.
    let b = start(&[]).await;
    let (mut sub, _) = P5::connect(b.addr, "ta5-sub", |o| {
        o.set_topic_alias_max(Some(10));
    })
    .await;
    sub.subscribe("ta5/#", Q5::AtLeastOnce, None).await;
    let (mut publ, ack) = P5::connect(b.addr, "ta5-pub", |_| {}).await;
    let max = ack.properties.as_ref().and_then(|p| p.topic_alias_max).unwrap_or(0);
    assert!(max >= 3, "broker allows topic aliases (Topic Alias Maximum {max})");
    let with_alias = p5::PublishProperties { topic_alias: Some(3), ..Default::default() };
    let topic = "ta5/a/rather/long/topic/name/for/aliasing";
    publ.client
        .publish_with_properties(topic, Q5::AtLeastOnce, false, &b"first"[..], with_alias.clone())
        .await
        .expect("publish with alias");
    publ.flow_done(Q5::AtLeastOnce).await;
    publ.client
        .publish_with_properties("", Q5::AtLeastOnce, false, &b"second"[..], with_alias)
        .await
        .expect("publish by alias");
    publ.flow_done(Q5::AtLeastOnce).await;
    for payload in [&b"first"[..], &b"second"[..]] {
        let p = sub.publish_in().await;
        assert_eq!(v5_topic(&p), topic, "alias resolved on both sides");
        assert_eq!(&p.payload[..], payload);
        // The broker chose to alias this topic towards the subscriber, so rumqttc's inbound alias path was used.
        assert!(p.properties.and_then(|p| p.topic_alias).is_some(), "delivered with a topic alias");
    }
    sub.no_publish().await;
}

/// Publishes `n` QoS 1 messages carrying a sequence number and checks the subscriber gets each once, in order.
async fn burst_v4(b: &TestBroker, n: u32) {
    let (mut sub, _) = P4::connect(b.addr, "burst4-sub", |_| {}).await;
    sub.subscribe("burst4", rumqttc::QoS::AtLeastOnce).await;
    let (mut publ, _) = P4::connect(b.addr, "burst4-pub", |_| {}).await;
    for i in 0..n {
        let mut payload = i.to_be_bytes().to_vec();
        payload.extend_from_slice(&[0xAB; 60]);
        publ.client.publish("burst4", rumqttc::QoS::AtLeastOnce, false, payload).await.expect("publish request");
    }
    for i in 0..n {
        let p = sub.publish_in().await;
        let seq = u32::from_be_bytes(p.payload[..4].try_into().expect("sequence number"));
        assert_eq!(seq, i, "message {i}: exactly once and in order [MQTT-4.6.0-6]");
        assert_eq!(p.qos, rumqttc::QoS::AtLeastOnce);
    }
    sub.no_publish().await;
    let mut acks = 0;
    while acks < n {
        publ.wait_for("PUBACK", |p| matches!(p, rumqttc::Packet::PubAck(_)).then_some(())).await;
        acks += 1;
    }
}

async fn burst_v5(b: &TestBroker, n: u32) {
    let (mut sub, _) = P5::connect(b.addr, "burst5-sub", |_| {}).await;
    sub.subscribe("burst5", Q5::AtLeastOnce, None).await;
    let (mut publ, _) = P5::connect(b.addr, "burst5-pub", |_| {}).await;
    for i in 0..n {
        let mut payload = i.to_be_bytes().to_vec();
        payload.extend_from_slice(&[0xAB; 60]);
        publ.client.publish("burst5", Q5::AtLeastOnce, false, payload).await.expect("publish request");
    }
    for i in 0..n {
        let p = sub.publish_in().await;
        let seq = u32::from_be_bytes(p.payload[..4].try_into().expect("sequence number"));
        assert_eq!(seq, i, "message {i}: exactly once and in order [MQTT-4.6.0-6]");
        assert_eq!(p.qos, Q5::AtLeastOnce);
    }
    sub.no_publish().await;
    for _ in 0..n {
        publ.flow_done(Q5::AtLeastOnce).await;
    }
}

// The subscriber's mqueue is made large enough for the whole burst: the point is that nothing is lost, duplicated or
// reordered on the way, not the drop-oldest policy of a full queue (tested in behaviour.rs).
const BURST_ENV: &[(&str, &str)] = &[("HALYARD_MQTT__MAX_MQUEUE_LEN", "5000")];

#[tokio::test]
async fn v4_burst_of_2000_qos1_messages_arrives_once_in_order() {
    // [MQTT-4.6.0-6] messages on one topic from one publisher are delivered in the order published; QoS 1 with a
    // client that acknowledges everything gives no duplicates on a healthy connection.
    let b = start(BURST_ENV).await;
    burst_v4(&b, 2000).await;
    assert_eq!(Metrics::get(&b.broker.metrics.dropped_queue_full), 0);
}

#[tokio::test]
async fn v5_burst_of_2000_qos1_messages_arrives_once_in_order() {
    // [MQTT-4.6.0-6] in order; exactly once on a healthy connection; the broker keeps within rumqttc's window.
    let b = start(BURST_ENV).await;
    burst_v5(&b, 2000).await;
    assert_eq!(Metrics::get(&b.broker.metrics.dropped_queue_full), 0);
}
