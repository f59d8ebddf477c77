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

pub(super) fn connect(v: ProtocolVersion, id: &str, keep_alive: u16) -> Packet {
    Packet::Connect(Box::new(Connect {
        protocol: v,
        clean_start: true,
        keep_alive,
        client_id: Utf8::from(id),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
    }))
}

/// Drives CONNECT through the broker (as the connection driver would) and returns the connected machine.
pub(super) async fn connected(b: &Arc<Broker>, v: ProtocolVersion, id: &str, keep_alive: u16, t0: Instant) -> Conn {
    let zone = Arc::new(b.config.mqtt.clone());
    let mut c = Conn::new(b.clone(), zone.clone(), t0, None);
    let Step::Attach(req) = c.handle(connect(v, id, keep_alive), t0) else { panic!("CONNECT accepted") };
    let (tx, _rx) = oneshot::channel();
    let a = b.attach(&req.client_id, req.clean_start, req.expiry_interval, &zone, tx).await;
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
