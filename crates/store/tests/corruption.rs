//! Damaged files, `check` and `repair`.

mod common;

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use common::*;
use halyard_store::{check, repair, Fsync, RedbStore, Restored, Store, StoreError, FILE_NAME};
use redb::{Database, TableDefinition};

// The documented layout, spelled out independently of the crate so a silent layout change fails here.
const MESSAGES: TableDefinition<u64, (u32, &[u8])> = TableDefinition::new("messages");
/// (client, seq rounded down to a multiple of 64) → entries, each `seq u64 LE, message id u64 LE, meta length
/// u32 LE, meta`, in seq order.
const QUEUE: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("queue_buckets");

/// One bucket value holding a single entry with empty meta.
fn bucket_with(seq: u64, msg: u64) -> Vec<u8> {
    [seq.to_le_bytes().as_slice(), &msg.to_le_bytes(), &0u32.to_le_bytes()].concat()
}
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// (client, packet id) → nothing: inbound QoS 2 ids awaiting PUBREL (added within layout version 2).
const AWAITING_REL: TableDefinition<(&str, u16), ()> = TableDefinition::new("awaiting_rel");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");

/// A store with a few hundred KiB of data spread over many pages; returns what restore saw.
fn populate(dir: &Path) -> Restored {
    let (store, _) = RedbStore::open(dir, Fsync::Batch).unwrap();
    let big = "x".repeat(300);
    for i in 0..1000u64 {
        store
            .submit(vec![
                put(i + 1, &big),
                enq(&format!("client-{}", i % 17), i, i + 1, "meta"),
                session(&format!("client-{}", i % 17), &format!("session {i}")),
                retain(&format!("topic/{i}"), "r"),
            ])
            .unwrap();
    }
    store.flush().unwrap();
    store.restore().unwrap()
}

fn overwrite(file: &Path, offset: u64, bytes: &[u8]) {
    let mut f = OpenOptions::new().write(true).open(file).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

/// Whatever is garbled, `open` either comes back with the last committed state or with a Corrupt
/// error naming the file and the recovery commands; it never panics (the test would fail if it did,
/// and the store also converts redb panics into Corrupt).
#[test]
fn garbage_in_the_file_gives_last_state_or_a_clear_error() {
    let pristine = tmp();
    let expected = populate(pristine.path());
    let original = std::fs::read(pristine.path().join(FILE_NAME)).unwrap();
    let len = original.len() as u64;
    println!("file is {len} bytes");

    let mut outcomes = Vec::new();
    // Header, the commit slots, and pages across the file; both garbage and zeros.
    let mut offsets = vec![0, 64, 600, 4096];
    offsets.extend((1..10).map(|k| len * k / 10));
    for offset in offsets {
        for pattern in [0xA5u8, 0x00] {
            let dir = tmp();
            let file = dir.path().join(FILE_NAME);
            std::fs::write(&file, &original).unwrap();
            overwrite(&file, offset, &vec![pattern; 1024]);
            match RedbStore::open(dir.path(), Fsync::Batch) {
                Ok((store, restored)) => {
                    assert_eq!(restored, expected, "offset {offset}: opened, so the state must be the committed one");
                    let report = store.verify().unwrap();
                    assert!(report.is_clean(), "offset {offset}: {report}");
                    outcomes.push(format!("{offset:>7}/{pattern:#04x}: opened, state intact"));
                }
                Err(err) => {
                    assert!(err.is_corrupt(), "offset {offset}: {err}");
                    let msg = err.to_string();
                    assert!(msg.contains(&file.display().to_string()), "{msg}");
                    let d = dir.path().display();
                    assert!(msg.contains(&format!("halyard ctl store repair --data-dir {d}")), "{msg}");
                    assert!(msg.contains(&format!("halyard ctl store check --data-dir {d}")), "{msg}");
                    // check and repair must not panic either; repair either fixes the file or says how to
                    // start over.
                    let c = check(dir.path());
                    let r = repair(dir.path());
                    match &r {
                        Ok(_) => {
                            let (_, restored) = RedbStore::open(dir.path(), Fsync::Batch).unwrap();
                            assert!(restored.sessions.len() <= expected.sessions.len());
                        }
                        Err(e) => {
                            assert!(matches!(e, StoreError::Unrepairable { .. }), "offset {offset}: {e}");
                            assert!(e.to_string().contains("mv "), "{e}");
                        }
                    }
                    outcomes.push(format!(
                        "{offset:>7}/{pattern:#04x}: refused: {msg}\n           check: {}\n           repair: {}",
                        c.map(|r| r.to_string().replace('\n', "; ")).unwrap_or_else(|e| e.to_string()),
                        r.map(|r| r.to_string().replace('\n', "; ")).unwrap_or_else(|e| e.to_string()),
                    ));
                }
            }
        }
    }
    for o in outcomes {
        println!("{o}");
    }
}

#[test]
fn truncated_file_gives_a_clear_error() {
    let dir = tmp();
    populate(dir.path());
    let file = dir.path().join(FILE_NAME);
    let len = std::fs::metadata(&file).unwrap().len();
    OpenOptions::new().write(true).open(&file).unwrap().set_len(len / 2).unwrap();
    match RedbStore::open(dir.path(), Fsync::Batch) {
        Ok(_) => panic!("a file cut in half cannot hold the committed state"),
        Err(err) => assert!(err.is_corrupt() || matches!(err, StoreError::Io { .. }), "{err}"),
    }
}

#[test]
fn check_finds_and_repair_fixes_broken_refcounts_and_dangling_entries() {
    let dir = tmp();
    {
        let (store, _) = RedbStore::open(dir.path(), Fsync::Batch).unwrap();
        store
            .submit(vec![
                put(1, "one"),
                enq("a", 1, 1, ""),
                enq("b", 1, 1, ""),
                put(2, "two"),
                enq("a", 2, 2, ""),
                put(3, "three"),
                enq("c", 1, 3, ""),
            ])
            .unwrap();
        store.flush().unwrap();
    }
    let clean = check(dir.path()).unwrap();
    assert!(clean.is_clean(), "{clean}");
    assert_eq!((clean.messages, clean.queue_entries, clean.queues), (3, 4, 3), "{clean}");
    assert_eq!(clean.file_intact, Some(true));

    // Break it with raw redb: a wrong refcount, a dangling entry, an orphan message, a low id mark.
    {
        let db = Database::open(dir.path().join(FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut m = txn.open_table(MESSAGES).unwrap();
            m.insert(1, (5u32, b"one".as_slice())).unwrap(); // 2 entries reference it
            m.insert(40, (1u32, b"orphan".as_slice())).unwrap(); // none does
            m.remove(3).unwrap(); // ("c", 1) now dangles
            let mut q = txn.open_table(QUEUE).unwrap();
            q.insert(("d", 0), bucket_with(9, 77).as_slice()).unwrap(); // another dangling entry
            let mut meta = txn.open_table(META).unwrap();
            meta.insert("next_message_id", 10).unwrap(); // below the orphan's 40
        }
        txn.commit().unwrap();
    }

    let broken = check(dir.path()).unwrap();
    println!("{broken}");
    assert!(!broken.is_clean());
    assert_eq!(broken.refcount_mismatches, 1, "{broken}");
    assert_eq!(broken.dangling_entries, 2, "{broken}");
    assert_eq!(broken.orphan_messages, 1, "{broken}");
    assert_eq!(broken.ids_above_next, 1, "{broken}");

    let fixed = repair(dir.path()).unwrap();
    println!("{fixed}");
    assert!(fixed.changed());
    assert_eq!(fixed.refcounts_fixed, 1);
    assert_eq!(fixed.dangling_entries_removed, 2);
    assert_eq!(fixed.orphan_messages_removed, 1);
    assert_eq!(fixed.next_message_id_raised, Some((10, 41)));
    assert!(fixed.after.is_clean(), "{}", fixed.after);

    let again = check(dir.path()).unwrap();
    assert!(again.is_clean(), "{again}");
    assert_eq!((again.messages, again.queue_entries), (2, 3), "{again}");
    assert!(!repair(dir.path()).unwrap().changed(), "repair of a clean store changes nothing");

    // The repaired store works: message 1 goes away after its two real references.
    let (store, restored) = RedbStore::open(dir.path(), Fsync::Batch).unwrap();
    assert_eq!(restored.next_message_id, 41);
    store.submit(vec![deq("a", 1), deq("b", 1)]).unwrap();
    store.flush().unwrap();
    let r = store.verify().unwrap();
    assert!(r.is_clean() && r.messages == 1, "{r}");
}

#[test]
fn check_and_repair_need_an_existing_store() {
    let dir = tmp();
    let err = check(dir.path()).unwrap_err();
    assert!(err.to_string().contains(FILE_NAME), "{err}");
    assert!(repair(dir.path()).is_err());
}

#[test]
fn foreign_layout_version_is_refused() {
    let dir = tmp();
    populate(dir.path());
    {
        let db = Database::open(dir.path().join(FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert("format_version", 99).unwrap();
        txn.commit().unwrap();
    }
    let err = RedbStore::open(dir.path(), Fsync::Batch).err().unwrap();
    assert!(matches!(err, StoreError::UnsupportedFormat { found: 99, .. }), "{err}");
}

/// The writer takes ids at or above the next-message-id mark as never stored; a file whose mark is below a
/// stored message (damage, a hand edit) gets its mark raised at open, so acknowledging that message still
/// releases it.
#[test]
fn open_raises_a_next_id_mark_below_a_stored_message() {
    let dir = tmp();
    {
        let (store, _) = RedbStore::open(dir.path(), Fsync::Batch).unwrap();
        store.submit(vec![put(40, "forty"), enq("a", 1, 40, "")]).unwrap();
        store.flush().unwrap();
    }
    {
        let db = Database::open(dir.path().join(FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert("next_message_id", 10).unwrap();
        txn.commit().unwrap();
    }
    let (store, restored) = RedbStore::open(dir.path(), Fsync::Batch).unwrap();
    assert_eq!(restored.next_message_id, 41);
    store.submit(vec![deq("a", 1)]).unwrap();
    store.flush().unwrap();
    let report = store.verify().unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!((report.messages, report.queue_entries, report.next_message_id), (0, 0, 41), "{report}");
}

#[test]
fn check_reports_and_repair_removes_awaiting_rel_ids_without_a_session() {
    let dir = tmp();
    {
        let (store, _) = RedbStore::open(dir.path(), Fsync::Batch).unwrap();
        store.submit(vec![session("a", "sa"), rel("a", 1), rel("a", 2)]).unwrap();
        store.flush().unwrap();
    }
    // Raw redb: ids of a client whose session record is gone (a build with a bug, a hand edit).
    {
        let db = Database::open(dir.path().join(FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut ids = txn.open_table(AWAITING_REL).unwrap();
            ids.insert(("ghost", 7), ()).unwrap();
            ids.insert(("ghost", 8), ()).unwrap();
        }
        txn.commit().unwrap();
    }
    let broken = check(dir.path()).unwrap();
    println!("{broken}");
    assert!(!broken.is_clean(), "{broken}");
    assert_eq!((broken.awaiting_rel, broken.orphan_awaiting_rel), (4, 2), "{broken}");

    let fixed = repair(dir.path()).unwrap();
    println!("{fixed}");
    assert!(fixed.changed());
    assert_eq!(fixed.orphan_awaiting_rel_removed, 2);
    assert!(fixed.after.is_clean(), "{}", fixed.after);
    assert_eq!(fixed.after.awaiting_rel, 2, "the ids of a client with a session stay");

    let (_store, restored) = RedbStore::open(dir.path(), Fsync::Batch).unwrap();
    assert_eq!(restored.awaiting_rel.len(), 1, "{:?}", restored.awaiting_rel);
    assert_eq!(restored.awaiting_rel["a"], vec![1, 2]);
}

/// A file written before the awaiting_rel table existed (same layout version 2, one table fewer): `check`
/// reads it as having no ids, and `open` adds the table without complaint.
#[test]
fn a_version_2_file_without_the_awaiting_rel_table_is_checked_and_opened() {
    let dir = tmp();
    {
        let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert("format_version", 2).unwrap();
            meta.insert("next_message_id", 1).unwrap();
            txn.open_table(MESSAGES).unwrap();
            txn.open_table(QUEUE).unwrap();
            txn.open_table(SESSIONS).unwrap().insert("a", b"sa".as_slice()).unwrap();
            txn.open_table(RETAINED).unwrap();
        }
        txn.commit().unwrap();
    }
    let report = check(dir.path()).unwrap();
    assert!(report.is_clean(), "{report}");
    assert_eq!((report.sessions, report.awaiting_rel), (1, 0), "{report}");

    {
        let (store, restored) = RedbStore::open(dir.path(), Fsync::Batch).unwrap();
        assert_eq!(restored.sessions, vec![("a".to_string(), b("sa"))]);
        assert!(restored.awaiting_rel.is_empty());
        store.submit(vec![rel("a", 3)]).unwrap();
        store.flush().unwrap();
    }
    let (_store, restored) = RedbStore::open(dir.path(), Fsync::Batch).unwrap();
    assert_eq!(restored.awaiting_rel["a"], vec![3]);
}
