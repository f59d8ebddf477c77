//! The op semantics, run with the same bodies against MemoryStore and RedbStore.

mod common;

use std::sync::Arc;

use common::*;
use halyard_store::{Fsync, MemoryStore, RedbStore, Store};

/// Runs `body` against a fresh MemoryStore and a fresh RedbStore; for redb, `after_reopen` then runs on
/// the reopened store, so everything checked survived a close.
fn both(body: impl Fn(&dyn Store), after_reopen: impl Fn(&dyn Store)) {
    let mem = MemoryStore::new();
    body(&mem);

    let dir = tmp();
    {
        let (store, _) = RedbStore::open(dir.path(), Fsync::Batch).unwrap();
        body(&*store);
    }
    let (store, _) = RedbStore::open(dir.path(), Fsync::Batch).unwrap();
    after_reopen(&*store);
}

fn submit_wait(s: &dyn Store, ops: Vec<halyard_store::Op>) -> u64 {
    let t = s.submit(ops).unwrap();
    s.flush().unwrap();
    assert!(s.committed() >= t);
    t
}

fn round_trip_checks(s: &dyn Store) {
    let r = s.restore().unwrap();
    assert_eq!(r.sessions, vec![("a".to_string(), b("sess-a2")), ("b".to_string(), b("sess-b"))]);
    assert_eq!(r.retained, vec![("t/1".to_string(), b("r1"))]);
    assert_eq!(r.queue_lens.len(), 2, "{:?}", r.queue_lens);
    assert_eq!(r.queue_lens["a"], (2, 3));
    assert_eq!(r.queue_lens["b"], (1, 7));
    assert!(r.next_message_id > 11);

    let q = s.load_queue("a", 0, 100).unwrap();
    assert_eq!(q, vec![(2, b("m-a2-updated"), 11, b("msg11")), (3, b("m-a3"), 10, b("msg10"))]);
    assert_eq!(s.load_queue("a", 2, 100).unwrap().len(), 1);
    assert_eq!(s.load_queue("a", 0, 1).unwrap()[0].0, 2, "limit keeps the lowest seqs");
    assert!(s.load_queue("a", 3, 100).unwrap().is_empty());
    assert!(s.load_queue("a", u64::MAX, 100).unwrap().is_empty());
    assert!(s.load_queue("nobody", 0, 100).unwrap().is_empty());
    // "a" is a prefix of "ab": the tuple key must not mix their queues.
    assert!(s.load_queue("ab", 0, 100).unwrap().is_empty());
    assert_eq!(s.load_queue("b", 0, 100).unwrap(), vec![(7, b("m-b7"), 10, b("msg10"))]);

    let report = s.verify().unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!((report.messages, report.queue_entries, report.queues), (2, 3, 2), "{report}");
}

#[test]
fn ops_round_trip_through_restore_and_load_queue() {
    both(
        |s| {
            assert_eq!(s.committed(), 0);
            submit_wait(
                s,
                vec![
                    put(10, "msg10"),
                    put(11, "msg11"),
                    enq("a", 1, 10, "m-a1"),
                    enq("a", 2, 11, "m-a2"),
                    enq("a", 3, 10, "m-a3"),
                    enq("b", 7, 10, "m-b7"),
                    session("a", "sess-a"),
                    session("b", "sess-b"),
                    session("c", "sess-c"),
                    retain("t/1", "r1"),
                    retain("t/2", "r2"),
                ],
            );
            submit_wait(
                s,
                vec![
                    deq("a", 1),
                    deq("a", 99), // absent: no-op
                    update("a", 2, "m-a2-updated"),
                    update("zz", 1, "x"),    // absent: no-op
                    session("a", "sess-a2"), // replaces
                    del_session("c"),
                    del_retained("t/2"),
                    del_retained("t/none"), // absent: no-op
                ],
            );
            round_trip_checks(s);
            let st = s.stats();
            assert!(st.commits >= 2 && st.ops == 19 && st.submits >= 2, "{st:?}");
        },
        round_trip_checks,
    );
}

#[test]
fn message_survives_until_last_reference_is_dequeued() {
    both(
        |s| {
            submit_wait(s, vec![put(5, "shared"), enq("c1", 1, 5, ""), enq("c2", 1, 5, ""), enq("c3", 1, 5, "")]);
            assert_eq!(s.verify().unwrap().messages, 1);
            submit_wait(s, vec![deq("c1", 1)]);
            submit_wait(s, vec![deq("c2", 1)]);
            let r = s.verify().unwrap();
            assert_eq!((r.messages, r.queue_entries), (1, 1), "{r}");
            assert!(r.is_clean(), "{r}");
            assert_eq!(s.load_queue("c3", 0, 10).unwrap(), vec![(1, b(""), 5, b("shared"))]);
            submit_wait(s, vec![deq("c3", 1)]);
            let r = s.verify().unwrap();
            assert_eq!((r.messages, r.queue_entries), (0, 0), "{r}");
            assert!(r.is_clean(), "{r}");
        },
        |s| assert_eq!(s.verify().unwrap().messages, 0),
    );
}

#[test]
fn refcounts_within_one_batch_and_across_replaced_entries() {
    both(
        |s| {
            // Put without Enqueue in the same submit: deleted at the end of the transaction.
            submit_wait(s, vec![put(1, "lonely")]);
            assert_eq!(s.verify().unwrap().messages, 0);
            // Enqueue and Dequeue in one submit: net zero, message gone.
            submit_wait(s, vec![put(2, "x"), enq("a", 1, 2, ""), deq("a", 1)]);
            assert_eq!(s.verify().unwrap().messages, 0);
            // Enqueue of a message that is not stored is skipped.
            submit_wait(s, vec![enq("a", 1, 404, "")]);
            assert!(s.load_queue("a", 0, 10).unwrap().is_empty());
            assert_eq!(s.stats().skipped_enqueues, 1);
            // Replacing entry (a,1) moves the reference from message 3 to message 4.
            submit_wait(s, vec![put(3, "three"), enq("a", 1, 3, ""), enq("b", 1, 3, "")]);
            submit_wait(s, vec![put(4, "four"), enq("a", 1, 4, "moved")]);
            let r = s.verify().unwrap();
            assert!(r.is_clean(), "{r}");
            assert_eq!((r.messages, r.queue_entries), (2, 2), "{r}");
            // A later submit can reference a message that is still stored (e.g. redispatch).
            submit_wait(s, vec![enq("c", 9, 3, "redispatched")]);
            assert_eq!(s.load_queue("c", 0, 10).unwrap(), vec![(9, b("redispatched"), 3, b("three"))]);
            // Re-putting a stored id replaces the blob and keeps the refcount.
            submit_wait(s, vec![put(3, "three-v2")]);
            assert_eq!(s.load_queue("b", 0, 10).unwrap()[0].3, b("three-v2"));
            let r = s.verify().unwrap();
            assert!(r.is_clean(), "{r}");
            assert_eq!((r.messages, r.queue_entries), (2, 3), "{r}");
        },
        |s| assert!(s.verify().unwrap().is_clean()),
    );
}

#[test]
fn delete_session_releases_its_entries() {
    both(
        |s| {
            submit_wait(
                s,
                vec![
                    put(1, "only-a"),
                    put(2, "a-and-b"),
                    enq("a", 1, 1, ""),
                    enq("a", 2, 2, ""),
                    enq("a", 3, 1, ""),
                    enq("b", 1, 2, ""),
                    session("a", "sa"),
                    session("b", "sb"),
                ],
            );
            submit_wait(s, vec![del_session("a")]);
            let r = s.verify().unwrap();
            assert!(r.is_clean(), "{r}");
            assert_eq!((r.messages, r.queue_entries, r.sessions), (1, 1, 1), "{r}");
            assert!(s.load_queue("a", 0, 10).unwrap().is_empty());
            assert_eq!(s.load_queue("b", 0, 10).unwrap(), vec![(1, b(""), 2, b("a-and-b"))]);
            let restored = s.restore().unwrap();
            assert!(!restored.queue_lens.contains_key("a"));
            assert_eq!(restored.sessions.len(), 1);
        },
        |s| {
            let r = s.verify().unwrap();
            assert_eq!((r.messages, r.queue_entries, r.sessions), (1, 1, 1), "{r}");
        },
    );
}

#[test]
fn next_message_id_is_above_every_id_ever_stored() {
    let check = |s: &dyn Store| assert!(s.restore().unwrap().next_message_id > 1_000_000);
    both(
        |s| {
            assert_eq!(s.restore().unwrap().next_message_id, 1, "fresh store starts at 1");
            // 1_000_000 is stored and then deleted; 500 stays. The id must still never come back.
            submit_wait(s, vec![put(500, "kept"), enq("a", 1, 500, ""), put(1_000_000, "gone")]);
            check(s);
            submit_wait(s, vec![put(7, "lower id later")]);
            check(s);
        },
        check,
    );
}

fn awaiting_rel_of(s: &dyn Store, client: &str) -> Vec<u16> {
    s.restore().unwrap().awaiting_rel.get(client).cloned().unwrap_or_default()
}

#[test]
fn awaiting_rel_ids_are_put_deleted_and_survive_reopen_sorted() {
    let after = |s: &dyn Store| {
        let r = s.restore().unwrap();
        assert_eq!(r.awaiting_rel.len(), 2, "clients without ids are absent: {:?}", r.awaiting_rel);
        assert_eq!(r.awaiting_rel["a"], vec![1, 300, 65535], "sorted ascending, numerically");
        assert_eq!(r.awaiting_rel["ab"], vec![7], "\"a\" is a prefix of \"ab\": their ids do not mix");
        // Recording ids leaves the session blobs alone.
        assert_eq!(
            r.sessions,
            vec![("a".to_string(), b("sa")), ("ab".to_string(), b("sab")), ("c".to_string(), b("sc"))]
        );
        let report = s.verify().unwrap();
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.awaiting_rel, 4, "{report}");
    };
    both(
        |s| {
            submit_wait(s, vec![session("a", "sa"), session("ab", "sab"), session("c", "sc")]);
            submit_wait(s, vec![rel("a", 300), rel("a", 65535), rel("a", 1), rel("ab", 7), rel("c", 9)]);
            assert_eq!(awaiting_rel_of(s, "a"), vec![1, 300, 65535]);
            let bytes = s.stats().bytes_written;
            // A second put of an id is a no-op; deleting an absent id too; the last id of "c" goes.
            submit_wait(s, vec![rel("a", 300), unrel("a", 2), unrel("nobody", 1), unrel("c", 9)]);
            assert_eq!(s.stats().bytes_written, bytes, "ids carry no blob bytes");
            after(s);
        },
        after,
    );
}

#[test]
fn put_then_delete_awaiting_rel_in_one_submit_leaves_nothing() {
    both(
        |s| {
            submit_wait(s, vec![session("a", "sa"), rel("a", 5), unrel("a", 5), rel("a", 6)]);
            assert_eq!(awaiting_rel_of(s, "a"), vec![6], "ops apply in vector order");
        },
        |s| assert_eq!(awaiting_rel_of(s, "a"), vec![6]),
    );
}

#[test]
fn delete_session_removes_its_awaiting_rel_ids() {
    both(
        |s| {
            submit_wait(s, vec![session("a", "sa"), session("b", "sb"), rel("a", 1), rel("a", 2), rel("b", 1)]);
            submit_wait(s, vec![del_session("a")]);
            let r = s.restore().unwrap();
            assert!(!r.awaiting_rel.contains_key("a"), "{:?}", r.awaiting_rel);
            assert_eq!(r.awaiting_rel["b"], vec![1]);
            // A new session under the same client id starts without ids.
            submit_wait(s, vec![session("a", "sa-new")]);
            assert!(awaiting_rel_of(s, "a").is_empty());
            assert!(s.verify().unwrap().is_clean());
        },
        |s| {
            let r = s.restore().unwrap();
            assert!(!r.awaiting_rel.contains_key("a"));
            assert_eq!(r.awaiting_rel["b"], vec![1]);
        },
    );
}

#[test]
fn verify_reports_awaiting_rel_ids_without_a_session() {
    both(
        |s| {
            submit_wait(s, vec![session("a", "sa"), rel("a", 1), rel("ghost", 2), rel("ghost", 3)]);
            let r = s.verify().unwrap();
            assert!(!r.is_clean(), "{r}");
            assert_eq!((r.awaiting_rel, r.orphan_awaiting_rel), (3, 2), "{r}");
        },
        |s| assert_eq!(s.verify().unwrap().orphan_awaiting_rel, 2),
    );
}

#[test]
fn watch_channel_follows_commits() {
    let dir = tmp();
    let (store, _) = RedbStore::open(dir.path(), Fsync::Batch).unwrap();
    let rx = store.commits();
    assert_eq!(*rx.borrow(), 0);
    let t = store.submit(vec![session("a", "x")]).unwrap();
    store.flush().unwrap();
    assert!(*store.commits().borrow() >= t);
    assert!(rx.has_changed().unwrap());

    let mem = MemoryStore::new();
    let rx = mem.commits();
    let t = mem.submit(vec![]).unwrap();
    assert_eq!(*rx.borrow(), t);
    assert_eq!(mem.committed(), t);
}

#[test]
fn stores_are_object_safe_and_shareable() {
    let stores: Vec<Arc<dyn Store>> = vec![Arc::new(MemoryStore::new())];
    for s in stores {
        let s2 = s.clone();
        std::thread::spawn(move || s2.submit(vec![session("x", "y")]).unwrap()).join().unwrap();
        assert_eq!(s.restore().unwrap().sessions.len(), 1);
    }
}
