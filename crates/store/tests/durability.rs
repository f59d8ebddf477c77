//! What survives closing, dropping, `kill -9` and a failed commit.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use halyard_store::{Fsync, RedbStore, Store};

#[test]
fn flushed_state_survives_reopen() {
    let dir = tmp();
    {
        let (store, restored) = RedbStore::open(dir.path(), Fsync::Batch).unwrap();
        assert!(restored.sessions.is_empty());
        store.submit(vec![put(1, "m1"), enq("a", 1, 1, "meta"), session("a", "s"), retain("t", "r")]).unwrap();
        store.flush().unwrap();
    }
    let (store, restored) = RedbStore::open(dir.path(), Fsync::Batch).unwrap();
    assert_eq!(restored.sessions, vec![("a".to_string(), b("s"))]);
    assert_eq!(restored.retained, vec![("t".to_string(), b("r"))]);
    assert_eq!(restored.queue_lens["a"], (1, 1));
    assert_eq!(restored.next_message_id, 2);
    assert_eq!(store.load_queue("a", 0, 10).unwrap(), vec![(1, b("meta"), 1, b("m1"))]);
    assert_eq!(store.restore().unwrap(), restored);
}

/// Dropping the store without `flush`: every ticket reported committed is there after reopening. (Drop
/// also drains the queue, so in fact every submitted ticket is.)
#[test]
fn drop_without_flush_keeps_every_reported_ticket() {
    for fsync in [Fsync::Batch, Fsync::Off] {
        let dir = tmp();
        let reported;
        {
            let (store, _) = RedbStore::open(dir.path(), fsync).unwrap();
            for i in 1..=2000u64 {
                let t = store.submit(vec![session(&format!("s{i}"), &i.to_string())]).unwrap();
                assert_eq!(t, i, "tickets count submits from 1");
            }
            reported = store.committed();
        }
        let (_, restored) = RedbStore::open(dir.path(), fsync).unwrap();
        let present: std::collections::HashSet<String> = restored.sessions.into_iter().map(|(c, _)| c).collect();
        for i in 1..=reported {
            assert!(present.contains(&format!("s{i}")), "{fsync:?}: committed ticket {i} lost");
        }
        assert_eq!(present.len(), 2000, "{fsync:?}: drop commits what is queued (reported {reported})");
    }
}

#[test]
fn fsync_off_commits_without_fsync_and_flush_syncs() {
    let dir = tmp();
    let (store, _) = RedbStore::open(dir.path(), Fsync::Off).unwrap();
    for i in 0..50 {
        let t = store.submit(vec![session(&format!("c{i}"), "x")]).unwrap();
        store.wait(t).unwrap();
    }
    let before = store.stats();
    assert!(before.commits >= 2 && before.fsyncs < before.commits, "{before:?}");
    // Unsynced commits get an fsync within about a second even if nothing else arrives.
    std::thread::sleep(std::time::Duration::from_millis(1300));
    let idle = store.stats();
    assert!(idle.fsyncs > before.fsyncs, "{idle:?}");
    store.submit(vec![session("late", "x")]).unwrap();
    store.flush().unwrap();
    assert!(store.stats().fsyncs > idle.fsyncs);
    drop(store);
    let (_, restored) = RedbStore::open(dir.path(), Fsync::Off).unwrap();
    assert_eq!(restored.sessions.len(), 51);
}

/// The child half of `kill_9_keeps_every_reported_ticket`: submits forever from one thread and prints
/// each committed ticket as it is reported. Runs only when the parent sets the variable.
#[test]
#[ignore = "child process of kill_9_keeps_every_reported_ticket"]
fn crash_child() {
    let Ok(dir) = std::env::var("HALYARD_STORE_CRASH_DIR") else { return };
    let (store, _) = RedbStore::open(std::path::Path::new(&dir), Fsync::Batch).unwrap();
    let submitter = store.clone();
    std::thread::spawn(move || {
        let mut i = 0u64;
        loop {
            i += 1;
            // Ticket i carries message i and session s<i>; one submit is atomic.
            let t = submitter
                .submit(vec![put(i, "payload"), enq("crash", i, i, "m"), session(&format!("s{i}"), "x")])
                .unwrap();
            assert_eq!(t, i);
            if i % 64 == 0 {
                submitter.wait(t).unwrap();
            }
        }
    });
    let mut last = 0;
    loop {
        let c = store.committed();
        if c != last {
            println!("committed {c}");
            last = c;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `kill -9` in the middle of group commits: after reopening, every ticket the store had reported
/// committed is present, whole (message, entry and session of one submit together), and the file is
/// consistent.
#[test]
fn kill_9_keeps_every_reported_ticket() {
    let dir = tmp();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env("HALYARD_STORE_CRASH_DIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut reported = 0u64;
    let started = Instant::now();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("committed ") {
            reported = n.trim().parse().unwrap();
        }
        if reported >= 3000 || started.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(reported > 0, "child reported no commit");

    let (store, restored) = RedbStore::open(dir.path(), Fsync::Batch).unwrap();
    let sessions: std::collections::HashSet<String> = restored.sessions.into_iter().map(|(c, _)| c).collect();
    let queue = store.load_queue("crash", 0, usize::MAX).unwrap();
    let present = queue.len() as u64;
    println!("kill -9: {reported} tickets reported committed, {present} present after reopen");
    assert!(present >= reported);
    for (n, (seq, _, msg, data)) in queue.iter().enumerate() {
        let i = n as u64 + 1;
        assert_eq!((*seq, *msg), (i, i), "tickets are a prefix: no gaps");
        assert_eq!(data, &b("payload"));
        assert!(sessions.contains(&format!("s{i}")), "submit {i} is atomic");
    }
    assert_eq!(sessions.len() as u64, present);
    assert!(restored.next_message_id > present);
    let report = store.verify().unwrap();
    assert!(report.is_clean(), "{report}");
}

#[test]
fn failed_commit_makes_store_unavailable() {
    let dir = tmp();
    let (store, _) = RedbStore::open(dir.path(), Fsync::Batch).unwrap();
    let ok = store.submit(vec![session("before", "x")]).unwrap();
    store.wait(ok).unwrap();
    let rx = store.commits();

    store.fail_next_commit();
    let lost = store.submit(vec![session("lost", "x")]).unwrap();
    let err = store.wait(lost).unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(err.to_string().contains("halyard.redb"), "names the file: {err}");
    assert!(store.committed() < lost, "a failed ticket is never reported committed");

    let err = store.submit(vec![session("after", "x")]).unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(store.flush().unwrap_err().is_unavailable());
    assert!(rx.has_changed().is_err(), "async waiters see the watch channel closed");
    let st = store.stats();
    assert!(st.unavailable && st.failed_commits == 1, "{st:?}");
    // Reads still work.
    assert_eq!(store.restore().unwrap().sessions.len(), 1);

    drop(store);
    let (_, restored) = RedbStore::open(dir.path(), Fsync::Batch).unwrap();
    assert_eq!(restored.sessions, vec![("before".to_string(), b("x"))]);
}

#[test]
fn second_open_of_same_dir_is_refused_with_a_clear_error() {
    let dir = tmp();
    let (_store, _) = RedbStore::open(dir.path(), Fsync::Batch).unwrap();
    let err = RedbStore::open(dir.path(), Fsync::Batch).err().unwrap();
    assert!(err.to_string().contains("already open"), "{err}");
    let err = halyard_store::check(dir.path()).unwrap_err();
    assert!(err.to_string().contains("already open"), "{err}");
}
