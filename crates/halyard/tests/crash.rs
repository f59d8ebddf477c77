//! Durability across `kill -9`: the broker process is killed mid-stream and restarted on the same data
//! directory; every message whose acknowledgement a publisher saw must reach its persistent subscriber.

mod common;

use common::{connect_packet, start_command, Broker, Client, BIN};
use halyard_codec::{Packet, ProtocolVersion, PubResp, Publish, QoS, Utf8};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

const KILLS: usize = 20;

impl Broker {
    /// Starts on a free port; CRASH_TEST_LOG sets RUST_LOG and echoes the broker's log.
    fn start(data: &Path) -> Broker {
        let port = common::free_port();
        let log = std::env::var("CRASH_TEST_LOG");
        let cmd = start_command(port, data, log.as_deref().unwrap_or("info"));
        let b = Broker::spawn(cmd, port, log.is_ok());
        assert!(b.started(Duration::from_secs(20)), "broker starts");
        b
    }

    /// SIGTERM and wait: a clean shutdown (the store is flushed).
    fn stop(mut self) {
        self.sigterm();
        let _ = self.child.wait();
    }

    fn kill9(mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

/// This test's client speaks MQTT 3.1.1; a connection that fails or is refused is `None`.
impl Client {
    fn connect(port: u16, id: &str, clean: bool) -> Option<(Client, bool)> {
        Client::connect_with_will(port, id, clean, None)
    }

    fn connect_with_will(
        port: u16,
        id: &str,
        clean: bool,
        will: Option<halyard_codec::LastWill>,
    ) -> Option<(Client, bool)> {
        let connect = halyard_codec::Connect { will, ..connect_packet(ProtocolVersion::V4, id, clean) };
        match Client::open(port, connect, Duration::from_secs(10)).ok()? {
            (c, Some(Packet::ConnAck(a))) if a.reason_code == 0 => Some((c, a.session_present)),
            _ => None,
        }
    }

    /// Publishes and waits for the acknowledgement (PUBACK, or PUBREC then PUBCOMP). True when acknowledged.
    fn publish_acked(&mut self, topic: &str, payload: &[u8], qos: QoS, retain: bool, pid: u16) -> bool {
        if self.publish(topic, bytes::Bytes::copy_from_slice(payload), qos, retain, pid).is_err() {
            return false;
        }
        match (qos, self.recv()) {
            (QoS::AtLeastOnce, Some(Packet::PubAck(a))) => a.packet_id == pid,
            // PUBREC is the broker's acknowledgement that it owns the message now [MQTT-4.3.3].
            (QoS::ExactlyOnce, Some(Packet::PubRec(a))) if a.packet_id == pid => {
                let _ = self.send(&Packet::PubRel(PubResp::new(pid)));
                let _ = self.recv();
                true
            }
            _ => false,
        }
    }
}

fn data_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("halyard-crash-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Publishes sequence numbers as fast as acknowledgements return until the broker dies; returns what was acked.
/// `flowing` hears once the first acknowledgement came, so the kill lands mid-stream.
fn publish_until_killed(
    port: u16,
    topic: &str,
    qos: QoS,
    stop: Arc<AtomicBool>,
    flowing: mpsc::Sender<()>,
) -> BTreeSet<u32> {
    let mut acked = BTreeSet::new();
    let Some((mut p, _)) = Client::connect(port, "crash-pub", true) else {
        eprintln!("publisher could not connect");
        return acked;
    };
    let mut seq = 0u32;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        if !p.publish_acked(topic, &seq.to_be_bytes(), qos, false, (seq % 60000 + 1) as u16) {
            break;
        }
        if acked.is_empty() {
            let _ = flowing.send(());
        }
        acked.insert(seq);
    }
    acked
}

/// Reconnects the persistent subscriber and collects until every acked sequence number arrived.
fn collect(port: u16, id: &str, acked: &BTreeSet<u32>, seen: &mut HashMap<u32, u32>) {
    let (mut s, present) = Client::connect(port, id, false).expect("subscriber reconnects");
    assert!(present, "[MQTT-3.2.2-2] the persistent session survived the crash");
    let deadline = Instant::now() + Duration::from_secs(20);
    while acked.iter().any(|a| !seen.contains_key(a)) {
        assert!(Instant::now() < deadline, "acknowledged messages missing after restart");
        match s.recv() {
            Some(Packet::Publish(p)) => {
                let seq = u32::from_be_bytes(p.payload[..4].try_into().expect("seq"));
                *seen.entry(seq).or_default() += 1;
                match (p.qos, p.packet_id) {
                    (QoS::AtLeastOnce, Some(id)) => s.send(&Packet::PubAck(PubResp::new(id))).expect("PUBACK"),
                    (QoS::ExactlyOnce, Some(id)) => s.send(&Packet::PubRec(PubResp::new(id))).expect("PUBREC"),
                    _ => {}
                }
            }
            Some(Packet::PubRel(r)) => s.send(&Packet::PubComp(PubResp::new(r.packet_id))).expect("PUBCOMP"),
            Some(_) => {}
            None => panic!("subscriber connection closed while messages were missing"),
        }
    }
}

fn kill_loop(qos: QoS) {
    let mut total_acked = 0;
    for round in 0..KILLS {
        let dir = data_dir(&format!("{qos:?}-{round}"));
        let b = Broker::start(&dir);
        let (mut s, _) = Client::connect(b.port, "crash-sub", false).expect("subscriber");
        s.subscribe("crash/t", qos);
        drop(s); // offline: everything from now on is queued for it
        let stop = Arc::new(AtomicBool::new(false));
        let port = b.port;
        let st = stop.clone();
        let (flowing_tx, flowing) = mpsc::channel();
        let publisher = std::thread::spawn(move || publish_until_killed(port, "crash/t", qos, st, flowing_tx));
        flowing.recv_timeout(Duration::from_secs(10)).expect("first acknowledgement");
        std::thread::sleep(Duration::from_millis(20 + (round as u64 * 37) % 150));
        b.kill9();
        stop.store(true, Ordering::Relaxed);
        let acked = publisher.join().expect("publisher thread");
        assert!(!acked.is_empty(), "round {round}: some messages were acknowledged before the kill");
        let b = Broker::start(&dir);
        let mut seen = HashMap::new();
        collect(b.port, "crash-sub", &acked, &mut seen);
        total_acked += acked.len();
        let _ = std::fs::remove_dir_all(&dir);
    }
    eprintln!("{qos:?}: {KILLS} kills, {total_acked} acknowledged messages, all delivered after restart");
}

#[test]
fn kill9_loses_no_acknowledged_qos1_message() {
    kill_loop(QoS::AtLeastOnce);
}

#[test]
fn kill9_loses_no_acknowledged_qos2_message() {
    kill_loop(QoS::ExactlyOnce);
}

#[test]
fn kill9_keeps_inflight_messages_of_an_online_subscriber() {
    // The subscriber is online and receiving (acknowledging only some) when the broker dies.
    let dir = data_dir("online");
    let b = Broker::start(&dir);
    let (mut s, _) = Client::connect(b.port, "online-sub", false).expect("subscriber");
    s.subscribe("live/t", QoS::AtLeastOnce);
    let (mut p, _) = Client::connect(b.port, "online-pub", true).expect("publisher");
    let mut acked = BTreeSet::new();
    for seq in 1..=200u32 {
        assert!(p.publish_acked("live/t", &seq.to_be_bytes(), QoS::AtLeastOnce, false, seq as u16));
        acked.insert(seq);
    }
    // Take 50 deliveries, acknowledging only the even ones, then the broker dies.
    let mut seen = HashMap::new();
    for _ in 0..50 {
        if let Some(Packet::Publish(m)) = s.recv() {
            let seq = u32::from_be_bytes(m.payload[..4].try_into().expect("seq"));
            if seq % 2 == 0 {
                s.send(&Packet::PubAck(PubResp::new(m.packet_id.expect("id")))).expect("PUBACK");
                seen.insert(seq, 1);
            }
        }
    }
    b.kill9();
    let b = Broker::start(&dir);
    collect(b.port, "online-sub", &acked, &mut seen);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn kill9_keeps_retained_messages() {
    let dir = data_dir("retained");
    let b = Broker::start(&dir);
    let (mut p, _) = Client::connect(b.port, "ret-pub", true).expect("publisher");
    for i in 0..100u16 {
        assert!(p.publish_acked(&format!("ret/{i}"), b"kept", QoS::AtLeastOnce, true, i + 1));
    }
    b.kill9();
    let b = Broker::start(&dir);
    let (mut s, _) = Client::connect(b.port, "ret-sub", true).expect("subscriber");
    s.subscribe("ret/#", QoS::AtMostOnce);
    let mut topics = BTreeSet::new();
    while topics.len() < 100 {
        match s.recv() {
            Some(Packet::Publish(m)) => {
                assert!(m.retain);
                topics.insert(m.topic.to_string());
            }
            other => panic!("retained messages missing after restart: have {}, got {other:?}", topics.len()),
        }
    }
    // The recovery tool reads the same directory once the broker is stopped, and finds it consistent.
    b.stop();
    let out = Command::new(BIN).args(["ctl", "store", "check", "--data-dir"]).arg(&dir).output().expect("run ctl");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ctl store check failed: {report} {}", String::from_utf8_lossy(&out.stderr));
    assert!(report.contains("100"), "the report counts the 100 retained messages: {report}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_published_will_is_not_published_again_after_restart() {
    // A persistent session's will (no delay) goes out when its connection drops; the stored session must not
    // bring it back at the next start (it was published once, [MQTT-3.1.2-8]). A clean restart: this checks what
    // is stored, not what a crash loses.
    let dir = data_dir("will-once");
    let b = Broker::start(&dir);
    let (mut watcher, _) = Client::connect(b.port, "will-watch", false).expect("watcher");
    // QoS 0: the watcher's own copy is never stored, so only a re-published will could reach it after restart.
    watcher.subscribe("wills/#", QoS::AtMostOnce);
    let will = halyard_codec::LastWill {
        topic: Utf8::from("wills/dev"),
        payload: bytes::Bytes::from_static(b"offline"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    };
    let (dev, _) = Client::connect_with_will(b.port, "dev", false, Some(will)).expect("device");
    drop(dev);
    match watcher.recv() {
        Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"offline"),
        other => panic!("expected the will, got {other:?}"),
    }
    drop(watcher);
    b.stop();
    let b = Broker::start(&dir);
    let (mut watcher, present) = Client::connect(b.port, "will-watch", false).expect("watcher again");
    assert!(present);
    // Nothing more for the watcher: the will went out once. (A bounded wait for something that must not come.)
    watcher.s.set_read_timeout(Some(Duration::from_millis(1500))).expect("timeout");
    let got = watcher.recv();
    assert!(got.is_none(), "will published again after restart: {got:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Exactly once across a crash: an inbound QoS 2 id awaiting PUBREL is stored with the publisher's persistent
/// session before its PUBREC goes out, so the resend after a restart is acknowledged and not routed again
/// ([MQTT-4.3.3-10]; issue 4: "inbound QoS 2 ids awaiting PUBREL" are durable).
#[test]
fn kill9_keeps_inbound_qos2_ids_awaiting_pubrel() {
    let dir = data_dir("qos2-inbound");
    let b = Broker::start(&dir);
    let (mut s, _) = Client::connect(b.port, "q2-sub", false).expect("subscriber");
    s.subscribe("q2/t", QoS::ExactlyOnce);
    drop(s);
    let publish = |dup: bool, pid: u16| {
        Packet::Publish(Publish {
            dup,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: Utf8::from("q2/t"),
            packet_id: Some(pid),
            properties: Default::default(),
            payload: bytes::Bytes::from_static(b"once"),
        })
    };
    let (mut p, _) = Client::connect(b.port, "q2-pub", false).expect("publisher");
    p.send(&publish(false, 7)).expect("PUBLISH");
    assert!(matches!(p.recv(), Some(Packet::PubRec(a)) if a.packet_id == 7), "PUBREC before the crash");
    b.kill9();

    let b = Broker::start(&dir);
    let (mut p, present) = Client::connect(b.port, "q2-pub", false).expect("publisher after restart");
    assert!(present, "the publisher's session survived");
    // The client saw PUBREC, so it may send PUBREL; resending the PUBLISH (as a client that missed the PUBREC
    // would) is the harder case: it must be recognised as the same message.
    p.send(&publish(true, 7)).expect("resend PUBLISH");
    assert!(matches!(p.recv(), Some(Packet::PubRec(a)) if a.packet_id == 7), "PUBREC for the resend");
    p.send(&Packet::PubRel(PubResp::new(7))).expect("PUBREL");
    assert!(matches!(p.recv(), Some(Packet::PubComp(a)) if a.packet_id == 7), "PUBCOMP");
    // Everything the publisher sends reaches the subscriber in order [MQTT-4.6.0-6]: a duplicate would come
    // before this marker.
    assert!(p.publish_acked("q2/t", b"marker", QoS::AtLeastOnce, false, 8), "marker acknowledged");

    let (mut s, present) = Client::connect(b.port, "q2-sub", false).expect("subscriber after restart");
    assert!(present, "the subscriber's session survived");
    let mut got = Vec::new();
    while let Some(packet) = s.recv() {
        match packet {
            Packet::Publish(m) => {
                let pid = m.packet_id.expect("QoS > 0 has a packet id");
                got.push(String::from_utf8_lossy(&m.payload).into_owned());
                if m.qos == QoS::ExactlyOnce {
                    s.send(&Packet::PubRec(PubResp::new(pid))).expect("PUBREC");
                } else {
                    s.send(&Packet::PubAck(PubResp::new(pid))).expect("PUBACK");
                }
                if m.payload.as_ref() == b"marker" {
                    break;
                }
            }
            Packet::PubRel(r) => s.send(&Packet::PubComp(PubResp::new(r.packet_id))).expect("PUBCOMP"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, ["once", "marker"], "the QoS 2 message arrived exactly once");
    b.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
