//! Session takeover under load: the same client id reconnects many times while QoS 1 messages flow to it.
//! Every message whose PUBACK the publisher saw must arrive; a second copy is allowed only as a DUP redelivery
//! [MQTT-4.4.0-1], [MQTT-3.3.1-1]; the old connection always gets DISCONNECT 0x8E (v5) [MQTT-3.1.4-3].

mod common;
use common::*;
use halyard_codec::reason::rc;
use halyard_codec::{Packet, ProtocolVersion, QoS};
use halyard_core::metrics::Metrics;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

const MESSAGES: u32 = 3000;
const TAKEOVERS: usize = 60;

async fn takeover_under_load(version: ProtocolVersion) {
    let b = start(&[("HALYARD_MQTT__MAX_MQUEUE_LEN", "1000000")]).await;
    let id = format!("hot-{version:?}");
    let mut c = connect_packet(version, &id, false);
    if version.is_v5() {
        c.properties.make_mut().session_expiry_interval = Some(600);
    }
    let (mut sub, _) = Raw::connect_with(b.addr, c.clone()).await;
    sub.subscribe("load/t", QoS::AtLeastOnce).await;

    // The publisher waits for each PUBACK: what it records is exactly what the broker acknowledged.
    let addr = b.addr;
    let publisher = tokio::spawn(async move {
        let (mut p, _) = Raw::connect(addr, ProtocolVersion::V4, "load-pub", true).await;
        let mut acked = BTreeSet::new();
        for seq in 1..=MESSAGES {
            let pid = (seq % 60000 + 1) as u16;
            p.publish("load/t", &seq.to_be_bytes(), QoS::AtLeastOnce, false, pid).await;
            match p.recv().await {
                Some(Packet::PubAck(a)) if a.packet_id == pid => {
                    acked.insert(seq);
                }
                other => panic!("publisher expected PUBACK {pid}, got {other:?}"),
            }
        }
        acked
    });

    let mut seen: HashMap<u32, usize> = HashMap::new();
    let mut takeovers = 0;
    let acked = loop {
        // Take a few messages, acknowledge all but the last, then let a new connection take the session over.
        for i in 0..(5 + takeovers % 20) {
            match sub.recv_within(Duration::from_millis(200)).await {
                Some(Packet::Publish(p)) => {
                    record(&mut seen, &p);
                    if i % 7 != 6 {
                        sub.ack(&p).await;
                    }
                }
                Some(other) => panic!("unexpected {other:?}"),
                None => break,
            }
        }
        if takeovers < TAKEOVERS {
            let (new, ack) = Raw::connect_with(b.addr, c.clone()).await;
            assert!(matches!(ack, Packet::ConnAck(a) if a.session_present), "session survives takeover");
            let leftovers = sub.closed().await.expect("old connection closed after takeover");
            if version.is_v5() {
                assert_eq!(disconnect_code(&leftovers), Some(rc::SESSION_TAKEN_OVER));
            }
            // Packets the old connection had in flight are not acknowledged: they must come again with DUP.
            for p in leftovers {
                if let Packet::Publish(p) = p {
                    record(&mut seen, &p);
                }
            }
            sub = new;
            takeovers += 1;
        } else if publisher.is_finished() {
            break publisher.await.expect("publisher task");
        }
    };
    // Drain what is still on its way after the last takeover.
    loop {
        let missing = acked.iter().filter(|s| !seen.contains_key(s)).count();
        if missing == 0 {
            break;
        }
        match sub.recv().await {
            Some(Packet::Publish(p)) => {
                record(&mut seen, &p);
                sub.ack(&p).await;
            }
            other => panic!("{missing} acknowledged messages never arrived; last packet {other:?}"),
        }
    }
    assert_eq!(acked.len(), MESSAGES as usize);
    assert_eq!(takeovers, TAKEOVERS);
    assert_eq!(Metrics::get(&b.broker.metrics.dropped_queue_full), 0);
    assert!(Metrics::get(&b.broker.metrics.sessions_taken_over) >= TAKEOVERS as u64);
    let dups: usize = seen.values().filter(|&&n| n > 1).count();
    eprintln!("{version:?}: {MESSAGES} acknowledged, all delivered; {takeovers} takeovers; {dups} DUP redeliveries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_under_load_loses_nothing_v5() {
    takeover_under_load(ProtocolVersion::V5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_under_load_loses_nothing_v311() {
    takeover_under_load(ProtocolVersion::V4).await;
}

/// Counts a delivery; a repeat without DUP means the broker routed or sent a message twice.
fn record(seen: &mut HashMap<u32, usize>, p: &halyard_codec::Publish) {
    let seq = u32::from_be_bytes(p.payload[..4].try_into().expect("4-byte sequence"));
    let n = seen.entry(seq).or_default();
    *n += 1;
    assert!(*n == 1 || p.dup, "message {seq} delivered twice without DUP");
}
