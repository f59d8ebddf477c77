//! Group commit: many submitters, few commits; and a throughput figure (printed, not asserted).
//!
//! Run with `cargo test -p halyard-store --test group_commit -- --nocapture` to see the numbers
//! (`--release` for figures that mean something).

mod common;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use common::*;
use halyard_store::{Fsync, MemoryStore, Op, RedbStore, Store, BACKLOG_HIGH};

/// 8 threads × 1000 submits each, every submit waiting for its own commit (as a QoS 1 publisher waits for
/// its PUBACK). Every ticket is committed, and commits are shared.
#[test]
fn eight_threads_times_thousand_waiting_submits_share_commits() {
    let dir = tmp();
    let (store, _) = RedbStore::open(dir.path(), Fsync::Batch).unwrap();
    let started = Instant::now();
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let client = format!("c{t}");
                let mut tickets = Vec::with_capacity(1000);
                for i in 0..1000u64 {
                    let id = t * 1_000_000 + i + 1;
                    let ticket = store.submit(vec![put(id, "payload"), enq(&client, i, id, "m")]).unwrap();
                    store.wait(ticket).unwrap();
                    tickets.push(ticket);
                }
                tickets
            })
        })
        .collect();
    let mut all: Vec<u64> = threads.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let elapsed = started.elapsed();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 8000, "tickets are unique");
    assert!(store.committed() >= *all.last().unwrap());

    let st = store.stats();
    println!(
        "group commit (each submit waits for its commit): 8000 submits in {elapsed:?}, {} commits, {} fsyncs, \
         largest batch {} submits / {} ops",
        st.commits, st.fsyncs, st.largest_batch_submits, st.largest_batch_ops
    );
    assert_eq!(st.ops, 16_000);
    assert!(st.commits < 8000 / 2, "batching should merge submits: {st:?}");
    let r = store.restore().unwrap();
    assert_eq!(r.queue_lens.len(), 8);
    assert!(r.queue_lens.values().all(|(len, max)| *len == 1000 && *max == 999));
    assert!(store.verify().unwrap().is_clean());
}

/// The same 8 × 1000 without waiting: the writer's batches grow to what the channel holds.
#[test]
fn eight_threads_times_thousand_fire_and_forget_submits() {
    let dir = tmp();
    let (store, _) = RedbStore::open(dir.path(), Fsync::Batch).unwrap();
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let client = format!("c{t}");
                (0..1000u64)
                    .map(|i| {
                        let id = t * 1_000_000 + i + 1;
                        store.submit(vec![put(id, "payload"), enq(&client, i, id, "m")]).unwrap()
                    })
                    .max()
                    .unwrap()
            })
        })
        .collect();
    let max_ticket = threads.into_iter().map(|h| h.join().unwrap()).max().unwrap();
    store.flush().unwrap();
    assert!(store.committed() >= max_ticket);
    let st = store.stats();
    println!(
        "group commit (fire and forget): 8000 submits, {} commits, largest batch {} submits",
        st.commits, st.largest_batch_submits
    );
    assert!(st.commits < 800, "{st:?}");
    assert_eq!(st.ops, 16_000);
}

/// With the writer held (it cannot commit), three times BACKLOG_HIGH submits all return at once, in ticket
/// order, and show up as backlog; released, the writer commits everything queued in one transaction.
#[test]
fn submit_never_blocks_and_the_backlog_counts_what_is_not_committed() {
    let dir = tmp();
    let (store, _) = RedbStore::open(dir.path(), Fsync::Batch).unwrap();
    let n = 3 * BACKLOG_HIGH as u64;
    let held = store.hold_writer();
    let tickets: Vec<u64> = (1..=n).map(|i| store.submit(vec![put(i, "p"), enq("c", i, i, "m")]).unwrap()).collect();
    assert_eq!(tickets, (1..=n).collect::<Vec<_>>(), "tickets are consecutive, in submit order");
    assert_eq!(store.committed(), 0, "the writer is held");
    assert_eq!(store.backlog(), n as usize);
    assert!(store.backlog() >= BACKLOG_HIGH, "callers can see they should hold back");

    drop(held);
    store.flush().unwrap();
    assert_eq!(store.backlog(), 0);
    assert_eq!(store.committed(), n + 1, "every submit and the flush barrier");
    let st = store.stats();
    // The writer may have gathered a first batch while the submits were coming in (it stops at the held gate
    // only to commit); everything else was queued by the release and goes in one more transaction (at most
    // 6,144 ops, under the 10,000-op cap). The flush barrier joins it or commits on its own.
    assert!(st.commits <= 3, "{st:?}");
    assert!(st.largest_batch_submits >= n / 2, "{st:?}");
    assert_eq!(store.restore().unwrap().queue_lens["c"], (n, n));
    assert!(store.verify().unwrap().is_clean());
}

#[test]
fn memory_store_has_no_backlog() {
    let store = MemoryStore::new();
    for i in 1..=10 {
        store.submit(vec![put(i, "p"), enq("c", i, i, "m")]).unwrap();
        assert_eq!(store.backlog(), 0);
    }
}

/// 100,000 messages of 100 bytes (a PutMessage + Enqueue each) from 4 threads with Fsync::Batch.
#[test]
fn throughput_figure() {
    const MESSAGES: u64 = 100_000;
    const THREADS: u64 = 4;
    let dir = tmp();
    let (store, _) = RedbStore::open(dir.path(), Fsync::Batch).unwrap();
    let payload = Bytes::from(vec![0x5a; 100]);
    let meta = Bytes::from_static(&[1, 0, 0, 0]);
    let started = Instant::now();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (store, payload, meta) = (store.clone(), payload.clone(), meta.clone());
            std::thread::spawn(move || {
                let client: Arc<str> = Arc::from(format!("client-{t}"));
                for i in 0..MESSAGES / THREADS {
                    let id = t * MESSAGES + i + 1;
                    store
                        .submit(vec![
                            Op::PutMessage { id, data: payload.clone() },
                            Op::Enqueue { client: client.clone(), seq: i + 1, msg: id, meta: meta.clone() },
                        ])
                        .unwrap();
                }
            })
        })
        .collect();
    for h in threads {
        h.join().unwrap();
    }
    store.flush().unwrap();
    let secs = started.elapsed().as_secs_f64();
    let st = store.stats();
    println!(
        "throughput ({} build): {MESSAGES} messages ({} ops) in {secs:.2}s = {:.0} messages/s, {:.0} ops/s; \
         {} commits = {:.0} commits/s, {} fsyncs, largest batch {} ops",
        if cfg!(debug_assertions) { "debug" } else { "release" },
        st.ops,
        MESSAGES as f64 / secs,
        st.ops as f64 / secs,
        st.commits,
        st.commits as f64 / secs,
        st.fsyncs,
        st.largest_batch_ops,
    );
    assert_eq!(st.ops, 2 * MESSAGES);
    let r = store.restore().unwrap();
    assert_eq!(r.queue_lens.values().map(|(len, _)| len).sum::<u64>(), MESSAGES);

    // Start-up cost: open verifies every page checksum, then restore walks the queue keys.
    drop(store);
    let size = std::fs::metadata(dir.path().join(halyard_store::FILE_NAME)).unwrap().len();
    let started = Instant::now();
    let (store, restored) = RedbStore::open(dir.path(), Fsync::Batch).unwrap();
    println!(
        "reopen of a {:.1} MiB file with {MESSAGES} queued messages (verify + restore): {:?}",
        size as f64 / (1024.0 * 1024.0),
        started.elapsed()
    );
    assert_eq!(restored.queue_lens.len(), THREADS as usize);
    let started = Instant::now();
    let mut drained = 0;
    for t in 0..THREADS {
        let client = format!("client-{t}");
        let mut after = 0;
        loop {
            let page = store.load_queue(&client, after, 1000).unwrap();
            let Some(last) = page.last() else { break };
            assert_eq!(last.3.len(), 100);
            after = last.0;
            drained += page.len();
        }
    }
    assert_eq!(drained as u64, MESSAGES);
    println!("load_queue of all {drained} entries in pages of 1000: {:?}", started.elapsed());
}
