//! Inbound QoS 2 ids awaiting PUBREL are stored as their own rows, not by rewriting the session record.

mod common;

use common::*;
use halyard_codec::{Packet, ProtocolVersion, PubResp, QoS, Subscribe, SubscriptionOptions, Utf8};

/// A persistent session with 200 subscriptions publishes at QoS 2: recording the packet id (and, on PUBREL,
/// forgetting it) is one op with no blob each time. The old way stored the whole session record, all 200
/// subscriptions, twice per message.
#[tokio::test]
async fn qos2_publish_on_a_persistent_session_with_many_subscriptions_submits_no_put_session() {
    let b = start(&[]).await;
    let store = b.broker.store.clone();
    let (mut c, _) = Raw::connect(b.addr, ProtocolVersion::V4, "many-subs", false).await;
    let filters: Vec<_> = (0..200)
        .map(|i| {
            (
                Utf8::from(format!("sensors/{i}/#").as_str()),
                SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() },
            )
        })
        .collect();
    let before_sub = store.stats();
    c.send(&Packet::Subscribe(Subscribe { packet_id: 1, properties: Default::default(), filters })).await;
    assert!(matches!(c.recv().await, Some(Packet::SubAck(_))), "SUBACK");
    let record_bytes = store.stats().bytes_written - before_sub.bytes_written;
    assert!(record_bytes > 2000, "the session record holds the 200 filters: {record_bytes} bytes");

    // PUBREC waits for the commit, so the stats below include the PUBLISH's submission.
    let before = store.stats();
    c.publish("nobody/listens", b"once", QoS::ExactlyOnce, false, 7).await;
    assert!(matches!(c.recv().await, Some(Packet::PubRec(a)) if a.packet_id == 7), "PUBREC");
    let after_publish = store.stats();
    assert_eq!(after_publish.ops - before.ops, 1, "one op: the packet id ({after_publish:?})");
    assert_eq!(after_publish.bytes_written, before.bytes_written, "no session record (no blob) was written");
    assert_eq!(store.restore().expect("restore").awaiting_rel.get("many-subs"), Some(&vec![7]));

    c.send(&Packet::PubRel(PubResp::new(7))).await;
    assert!(matches!(c.recv().await, Some(Packet::PubComp(a)) if a.packet_id == 7), "PUBCOMP");
    let after_release = store.stats();
    assert_eq!(after_release.ops - after_publish.ops, 1, "one op: forgetting the id ({after_release:?})");
    assert_eq!(after_release.bytes_written, after_publish.bytes_written, "no session record was written");
    let restored = store.restore().expect("restore");
    assert!(!restored.awaiting_rel.contains_key("many-subs"), "{:?}", restored.awaiting_rel);
}
