//! The durable store: one redb file, one writer thread, group commit.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::watch;

use crate::apply::{apply, Applied, Tables};
use crate::buckets::{self, bucket_of, BucketCache, BucketTable};
use crate::check::Walk;
use crate::error::{corrupt, from_redb, panic_text};
use crate::{CheckReport, Fsync, Op, QueueEntry, Restored, Store, StoreError, StoreStats, FILE_NAME, FORMAT_VERSION};

// The layout. Changing any of these means bumping FORMAT_VERSION (tests/corruption.rs writes these
// tables directly and so notices a silent change).
/// message id → (refcount, message blob)
pub(crate) const MESSAGES: TableDefinition<u64, (u32, &[u8])> = TableDefinition::new("messages");
/// (client id, bucket) → the client's queue entries whose seq is in that bucket ([`crate::buckets`]);
/// redb orders tuple keys field by field, so one client's buckets are contiguous and in seq order.
pub(crate) const QUEUE: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("queue_buckets");
/// client id → session blob
pub(crate) const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
/// topic → retained message blob
pub(crate) const RETAINED: TableDefinition<&str, &[u8]> = TableDefinition::new("retained");
/// (client id, packet id) → nothing: inbound QoS 2 packet ids awaiting PUBREL. Added after layout
/// version 2 was first written, without a version bump: a file without this table is the same layout
/// with no ids recorded, `init_tables` creates the table, and read paths that run without it (`check`
/// on an older file) treat it as empty. A build from before the table ignores it.
pub(crate) const AWAITING_REL: TableDefinition<(&str, u16), ()> = TableDefinition::new("awaiting_rel");
/// META_FORMAT and META_NEXT_ID
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const META_FORMAT: &str = "format_version";
pub(crate) const META_NEXT_ID: &str = "next_message_id";

/// The writer stops gathering once a transaction holds this many ops, so one commit (and the latency
/// of every ticket in it) stays bounded. A single larger submit is still committed whole.
const MAX_BATCH_OPS: usize = 10_000;
/// Under `Fsync::Off`, the longest unsynced data waits for an fsync.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// One submit on its way to the writer.
struct Batch {
    ticket: u64,
    ops: Vec<Op>,
    /// Commit this batch with fsync even under `Fsync::Off` (`flush`).
    sync: bool,
}

/// Submits on their way to the writer. Unbounded: `submit` must not block a tokio worker (that would
/// stall every connection on it), so the bound is the callers' job, through `Store::backlog`.
#[derive(Default)]
struct Queue {
    batches: VecDeque<Batch>,
    /// The last ticket handed out. Tickets are allocated and pushed under the same lock, so `batches`
    /// holds them in increasing order: the writer can then publish "everything up to N is committed".
    last_ticket: u64,
    /// No more submits: the store is being dropped, or the writer thread has stopped. The writer
    /// still commits what is queued before it exits.
    closed: bool,
    /// The writer is waiting on `queue_cv`. `submit` only notifies then: a notify costs a syscall,
    /// and under load the writer is busy committing, not waiting.
    writer_waiting: bool,
}

/// What the writer takes from the queue next.
enum Next {
    /// Submits to commit in one transaction, in ticket order.
    Batches(Vec<Batch>),
    /// Nothing queued and unsynced commits are due for their fsync (`Fsync::Off`).
    SyncDue,
    /// Nothing queued and the queue is closed.
    Closed,
}

#[derive(Default)]
struct Counters {
    submits: AtomicU64,
    commits: AtomicU64,
    ops: AtomicU64,
    fsyncs: AtomicU64,
    largest_batch_ops: AtomicU64,
    largest_batch_submits: AtomicU64,
    bytes_written: AtomicU64,
    skipped_enqueues: AtomicU64,
    failed_commits: AtomicU64,
}

/// What `flush` waits on.
#[derive(Default)]
struct Progress {
    committed: u64,
    /// Set by the first failed commit.
    failure: Option<String>,
    /// The writer thread has exited.
    closed: bool,
}

/// State shared by the store handle and its writer thread.
struct Shared {
    path: PathBuf,
    committed: AtomicU64,
    unavailable: AtomicBool,
    progress: Mutex<Progress>,
    progress_cv: Condvar,
    /// Dropped when the store fails or closes, so async waiters wake with an error.
    watch_tx: Mutex<Option<watch::Sender<u64>>>,
    /// Kept to hand out receivers after the sender is gone.
    watch_rx: watch::Receiver<u64>,
    counters: Counters,
    fail_next_commit: AtomicBool,
    queue: Mutex<Queue>,
    queue_cv: Condvar,
    /// `Queue::last_ticket`, readable without the queue lock (for `backlog`).
    issued: AtomicU64,
    /// The writer holds this while it commits; `hold_writer` takes it so tests can stop the writer.
    writer_gate: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here leaves a mutex's data half-updated on panic; keep working rather than cascade.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn unavailable_error(&self) -> StoreError {
        let p = lock(&self.progress);
        let reason = match (&p.failure, p.closed) {
            (Some(f), _) => f.clone(),
            (None, true) => "the writer thread has stopped".to_string(),
            (None, false) => "unknown".to_string(),
        };
        StoreError::Unavailable { path: self.path.clone(), reason }
    }

    fn publish(&self, ticket: u64) {
        // Watch first, then the atomic, then the condvar: whoever learns of the commit one way already
        // sees it in the ways updated before.
        if let Some(tx) = lock(&self.watch_tx).as_ref() {
            tx.send_replace(ticket);
        }
        self.committed.store(ticket, Ordering::Release);
        lock(&self.progress).committed = ticket;
        self.progress_cv.notify_all();
    }

    fn fail(&self, err: &StoreError) {
        tracing::error!(
            path = %self.path.display(),
            error = %err,
            "store: commit failed; the store refuses new work until restart (disk full or I/O error?)"
        );
        // Unavailable first, then the watch closes, then the condvar: whoever learns of the failure one way
        // (a closed watch, a woken wait) already sees `unavailable` (so `is_unavailable` agrees with a closed
        // watch, and a waiter does not go back to waiting for a commit that will never come).
        self.unavailable.store(true, Ordering::Release);
        self.counters.failed_commits.fetch_add(1, Ordering::Relaxed);
        lock(&self.watch_tx).take();
        lock(&self.progress).failure.get_or_insert_with(|| err.to_string());
        self.progress_cv.notify_all();
    }
}

/// The durable [`Store`]: `<dir>/halyard.redb`, written by one writer thread with group commit.
///
/// `submit` appends ops to the writer's queue and returns at once (it never waits for the writer; the
/// queue is unbounded, and callers push back by watching [`Store::backlog`]). The writer takes
/// everything queued (up to 10,000 ops), applies it in one write transaction, commits once (fsync
/// under [`Fsync::Batch`]) and then publishes the highest ticket. There is no linger timer: while one
/// commit is fsyncing the next batch accumulates, so batches grow with load and an idle store commits
/// at once.
pub struct RedbStore {
    shared: Arc<Shared>,
    db: Arc<Database>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// redb's in-process page cache.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Opens (or creates) a redb database, turning redb panics into errors. redb repairs a file that was
/// not closed cleanly while opening it; the callback logs that, since it can take a while on a big file.
pub(crate) fn open_database(path: &Path, create: bool) -> Result<Database, StoreError> {
    let mut builder = Database::builder();
    // New files use the v3 format, the only one redb 3+ reads, so moving to a newer redb needs no
    // conversion step. Existing files keep the format they have.
    builder.create_with_file_format_v3(true);
    // redb's default page cache grows to 1 GiB with what is written and read; the broker's memory should not
    // grow with its offline backlog, so the cache is kept small (the OS page cache still holds hot pages).
    builder.set_cache_size(CACHE_BYTES);
    let shown = path.display().to_string();
    // redb also calls this while it lays out a file it is creating: say nothing about a file that was not there.
    let existed = path.exists();
    builder.set_repair_callback(move |session| {
        if !existed {
            return;
        }
        tracing::warn!(
            path = %shown,
            progress = session.progress(),
            "store: file was not closed cleanly; redb is repairing it (the last uncommitted transaction is lost, committed ones are kept)"
        );
    });
    let opened = catch_unwind(AssertUnwindSafe(|| if create { builder.create(path) } else { builder.open(path) }));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(from_redb(path, "open", e)),
        Err(p) => Err(corrupt(path, format!("redb failed while opening the file: {}", panic_text(&*p)))),
    }
}

/// Verifies every page checksum (redb's `check_integrity`). `Ok(true)`: intact. `Ok(false)`: redb found
/// damage it could repair (by rolling back to the previous commit) and did.
pub(crate) fn verify_file(db: &mut Database, path: &Path) -> Result<bool, StoreError> {
    match catch_unwind(AssertUnwindSafe(|| db.check_integrity())) {
        Ok(Ok(clean)) => Ok(clean),
        Ok(Err(e)) => Err(from_redb(path, "integrity check", e)),
        Err(p) => Err(corrupt(path, format!("redb failed while checking the file: {}", panic_text(&*p)))),
    }
}

/// Creates the tables and checks the layout version.
fn init_tables(db: &Database, path: &Path) -> Result<(), StoreError> {
    let e = |err: redb::Error| from_redb(path, "initialize tables", err);
    let mut txn = db.begin_write().map_err(|x| e(x.into()))?;
    txn.set_durability(Durability::Immediate);
    {
        // The version first: an older layout's tables may have other types, which redb refuses to open.
        let mut meta = txn.open_table(META).map_err(|x| e(x.into()))?;
        let found = meta.get(META_FORMAT).map_err(|x| e(x.into()))?.map(|g| g.value());
        match found {
            Some(v) if v == FORMAT_VERSION => {}
            Some(v) => {
                return Err(StoreError::UnsupportedFormat {
                    path: path.to_path_buf(),
                    found: v,
                    supported: FORMAT_VERSION,
                })
            }
            None => {
                meta.insert(META_FORMAT, FORMAT_VERSION).map_err(|x| e(x.into()))?;
                if meta.get(META_NEXT_ID).map_err(|x| e(x.into()))?.is_none() {
                    meta.insert(META_NEXT_ID, 1).map_err(|x| e(x.into()))?;
                }
            }
        }
        txn.open_table(MESSAGES).map_err(|x| e(x.into()))?;
        txn.open_table(QUEUE).map_err(|x| e(x.into()))?;
        txn.open_table(SESSIONS).map_err(|x| e(x.into()))?;
        txn.open_table(RETAINED).map_err(|x| e(x.into()))?;
        // Created here in a file written before the table existed (see AWAITING_REL).
        txn.open_table(AWAITING_REL).map_err(|x| e(x.into()))?;
    }
    txn.commit().map_err(|x| e(x.into()))
}

type AwaitingRelRead = redb::ReadOnlyTable<(&'static str, u16), ()>;

/// The packet ids awaiting PUBREL in a read transaction; `None` in a file written before the table
/// existed (only `check` reads a file without first creating it).
fn read_awaiting_rel(txn: &redb::ReadTransaction) -> Result<Option<AwaitingRelRead>, redb::TableError> {
    match txn.open_table(AWAITING_REL) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

impl RedbStore {
    /// Opens `<dir>/halyard.redb` (creating `dir` and the file if needed), verifies it, reads what it
    /// holds and starts the writer thread.
    ///
    /// A file that was not closed cleanly (crash, `kill -9`, power loss) is repaired by redb while
    /// opening: committed transactions are kept. Every page checksum is then verified (one read of the
    /// whole file); damage that redb cannot repair gives [`StoreError::Corrupt`], whose message names
    /// the file and the `halyard ctl store check/repair` commands. Never panics on a bad file.
    pub fn open(dir: &Path, fsync: Fsync) -> Result<(Arc<Self>, Restored), StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir { path: dir.to_path_buf(), source })?;
        let path = dir.join(FILE_NAME);
        let mut db = open_database(&path, true)?;
        let started = Instant::now();
        if !verify_file(&mut db, &path)? {
            tracing::warn!(
                path = %path.display(),
                "store: redb found a damaged commit and rolled the file back to the previous one"
            );
        }
        tracing::debug!(path = %path.display(), elapsed = ?started.elapsed(), "store: file verified");
        init_tables(&db, &path)?;
        let db = Arc::new(db);
        let restored = restore_from(&db, &path)?;
        raise_next_id_mark(&db, &path, restored.next_message_id)?;

        let (watch_tx, watch_rx) = watch::channel(0);
        let shared = Arc::new(Shared {
            path: path.clone(),
            committed: AtomicU64::new(0),
            unavailable: AtomicBool::new(false),
            progress: Mutex::new(Progress::default()),
            progress_cv: Condvar::new(),
            watch_tx: Mutex::new(Some(watch_tx)),
            watch_rx,
            counters: Counters::default(),
            fail_next_commit: AtomicBool::new(false),
            queue: Mutex::new(Queue::default()),
            queue_cv: Condvar::new(),
            issued: AtomicU64::new(0),
            writer_gate: Mutex::new(()),
        });
        let writer = {
            let (db, shared) = (db.clone(), shared.clone());
            std::thread::Builder::new()
                .name("halyard-store-writer".to_string())
                .spawn(move || writer_loop(db, shared, fsync))
                .map_err(|e| StoreError::Io {
                    path: path.clone(),
                    what: "start writer thread",
                    detail: e.to_string(),
                })?
        };
        let store = RedbStore { shared, db, writer: Mutex::new(Some(writer)) };
        Ok((Arc::new(store), restored))
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Test hook: the next commit fails as a full disk would (the transaction is aborted), so the
    /// Unavailable path can be exercised without filling a disk.
    #[doc(hidden)]
    pub fn fail_next_commit(&self) {
        self.shared.fail_next_commit.store(true, Ordering::Release);
    }

    /// Test hook: while the returned guard lives, the writer does not start a commit (it may gather
    /// submits, and finish one already started), so tests can build a backlog deterministically.
    #[doc(hidden)]
    pub fn hold_writer(&self) -> impl Drop + '_ {
        lock(&self.shared.writer_gate)
    }

    fn send(&self, ops: Vec<Op>, sync: bool) -> Result<u64, StoreError> {
        if self.shared.unavailable.load(Ordering::Acquire) {
            return Err(self.shared.unavailable_error());
        }
        let mut q = lock(&self.shared.queue);
        if q.closed {
            drop(q);
            return Err(self.shared.unavailable_error());
        }
        let ticket = q.last_ticket + 1;
        q.last_ticket = ticket;
        q.batches.push_back(Batch { ticket, ops, sync });
        self.shared.issued.store(ticket, Ordering::Release);
        let wake = std::mem::take(&mut q.writer_waiting);
        drop(q);
        if wake {
            self.shared.queue_cv.notify_one();
        }
        self.shared.counters.submits.fetch_add(1, Ordering::Relaxed);
        Ok(ticket)
    }

    /// Runs `f` on a read transaction, turning redb panics on damaged pages into [`StoreError::Corrupt`].
    fn read<R>(&self, what: &'static str, f: impl FnOnce(&Database) -> Result<R, StoreError>) -> Result<R, StoreError> {
        guarded(&self.shared.path, what, || f(&self.db))
    }
}

pub(crate) fn guarded<R>(
    path: &Path,
    what: &'static str,
    f: impl FnOnce() -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(corrupt(path, format!("redb failed during {what}: {}", panic_text(&*p)))),
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        // Closing the queue lets the writer commit what is queued and exit; joining it releases the
        // file (redb holds a lock on it) before `drop` returns, so the directory can be reopened at once.
        lock(&self.shared.queue).closed = true;
        self.shared.queue_cv.notify_all();
        if let Some(handle) = lock(&self.writer).take() {
            if handle.join().is_err() {
                tracing::error!(path = %self.shared.path.display(), "store: writer thread panicked");
            }
        }
    }
}

impl Store for RedbStore {
    fn submit(&self, ops: Vec<Op>) -> Result<u64, StoreError> {
        self.send(ops, false)
    }

    fn committed(&self) -> u64 {
        self.shared.committed.load(Ordering::Acquire)
    }

    fn backlog(&self) -> usize {
        // Committed first: it never passes the tickets issued, so the difference cannot underflow
        // (saturating anyway, in case of a reordering this reasoning missed).
        let committed = self.shared.committed.load(Ordering::Acquire);
        let issued = self.shared.issued.load(Ordering::Acquire);
        usize::try_from(issued.saturating_sub(committed)).unwrap_or(usize::MAX)
    }

    fn commits(&self) -> watch::Receiver<u64> {
        self.shared.watch_rx.clone()
    }

    fn load_queue(&self, client: &str, after: u64, limit: usize) -> Result<Vec<QueueEntry>, StoreError> {
        let Some(from) = after.checked_add(1) else { return Ok(Vec::new()) };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let path = &self.shared.path;
        let e = |err: redb::Error| from_redb(path, "load queue", err);
        self.read("load_queue", |db| {
            let txn = db.begin_read().map_err(|x| e(x.into()))?;
            let queue = txn.open_table(QUEUE).map_err(|x| e(x.into()))?;
            let messages = txn.open_table(MESSAGES).map_err(|x| e(x.into()))?;
            let mut out = Vec::with_capacity(limit.min(1024));
            for item in queue.range((client, bucket_of(from))..=(client, u64::MAX)).map_err(|x| e(x.into()))? {
                let (k, v) = item.map_err(|x| e(x.into()))?;
                let bucket = k.value().1;
                for entry in buckets::decode(path, client, bucket, v.value())? {
                    if entry.seq < from {
                        continue;
                    }
                    let (seq, msg) = (entry.seq, entry.msg);
                    match messages.get(msg).map_err(|x| e(x.into()))? {
                        Some(m) => out.push((seq, entry.meta, msg, Bytes::copy_from_slice(m.value().1))),
                        None => tracing::error!(
                            path = %path.display(), client, seq, msg,
                            "store: queue entry references a missing message; skipped (run `halyard ctl store repair`)"
                        ),
                    }
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
            Ok(out)
        })
    }

    fn restore(&self) -> Result<Restored, StoreError> {
        restore_from(&self.db, &self.shared.path)
    }

    fn wait(&self, ticket: u64) -> Result<(), StoreError> {
        if self.committed() >= ticket {
            return Ok(());
        }
        let mut p = lock(&self.shared.progress);
        while p.committed < ticket && p.failure.is_none() && !p.closed {
            p = self.shared.progress_cv.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        if p.committed >= ticket {
            Ok(())
        } else {
            drop(p);
            Err(self.shared.unavailable_error())
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        // An empty submit marked `sync`: the writer commits it with fsync even under Fsync::Off.
        let ticket = self.send(Vec::new(), true)?;
        self.wait(ticket)
    }

    fn stats(&self) -> StoreStats {
        let c = &self.shared.counters;
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StoreStats {
            submits: r(&c.submits),
            commits: r(&c.commits),
            ops: r(&c.ops),
            fsyncs: r(&c.fsyncs),
            largest_batch_ops: r(&c.largest_batch_ops),
            largest_batch_submits: r(&c.largest_batch_submits),
            bytes_written: r(&c.bytes_written),
            skipped_enqueues: r(&c.skipped_enqueues),
            failed_commits: r(&c.failed_commits),
            unavailable: self.shared.unavailable.load(Ordering::Acquire),
        }
    }

    fn verify(&self) -> Result<CheckReport, StoreError> {
        self.read("verify", |db| Ok(walk(db, &self.shared.path)?.finish().0))
    }
}

/// Writes `next` as the next-message-id mark if the file's is lower (a damaged or hand-edited file whose
/// messages go above its mark). The writer relies on the mark: ids at or above it are taken as never stored.
fn raise_next_id_mark(db: &Database, path: &Path, next: u64) -> Result<(), StoreError> {
    let e = |err: redb::Error| from_redb(path, "raise next message id", err);
    guarded(path, "raise next message id", || {
        let mut txn = db.begin_write().map_err(|x| e(x.into()))?;
        txn.set_durability(Durability::Immediate);
        {
            let mut meta = txn.open_table(META).map_err(|x| e(x.into()))?;
            let stored = meta.get(META_NEXT_ID).map_err(|x| e(x.into()))?.map(|g| g.value()).unwrap_or(0);
            if stored >= next {
                drop(meta);
                let _ = txn.abort();
                return Ok(());
            }
            tracing::warn!(path = %path.display(), stored, next, "store: next message id mark was below a stored message; raised");
            meta.insert(META_NEXT_ID, next).map_err(|x| e(x.into()))?;
        }
        txn.commit().map_err(|x| e(x.into()))
    })
}

/// Reads what `Restored` carries from committed state.
fn restore_from(db: &Database, path: &Path) -> Result<Restored, StoreError> {
    let e = |err: redb::Error| from_redb(path, "restore", err);
    guarded(path, "restore", || {
        let txn = db.begin_read().map_err(|x| e(x.into()))?;
        let mut r = Restored::default();
        for (def, out) in [(SESSIONS, &mut r.sessions), (RETAINED, &mut r.retained)] {
            let table = txn.open_table(def).map_err(|x| e(x.into()))?;
            for item in table.iter().map_err(|x| e(x.into()))? {
                let (k, v) = item.map_err(|x| e(x.into()))?;
                out.push((k.value().to_string(), Bytes::copy_from_slice(v.value())));
            }
        }
        let queue = txn.open_table(QUEUE).map_err(|x| e(x.into()))?;
        // Entries are grouped by client, so one running counter per client suffices.
        let mut current: Option<(String, u64, u64)> = None;
        for item in queue.iter().map_err(|x| e(x.into()))? {
            let (k, v) = item.map_err(|x| e(x.into()))?;
            let (client, bucket) = k.value();
            let entries = buckets::decode(path, client, bucket, v.value())?;
            let (n, Some(last)) = (entries.len() as u64, entries.last().map(|e| e.seq)) else { continue };
            match &mut current {
                Some((c, len, max)) if c == client => {
                    *len += n;
                    *max = (*max).max(last);
                }
                _ => {
                    if let Some((c, len, max)) = current.replace((client.to_string(), n, last)) {
                        r.queue_lens.insert(c, (len, max));
                    }
                }
            }
        }
        if let Some((c, len, max)) = current {
            r.queue_lens.insert(c, (len, max));
        }
        if let Some(table) = read_awaiting_rel(&txn).map_err(|x| e(x.into()))? {
            // Keys are ordered by (client, id), so each client's ids come out ascending.
            for item in table.iter().map_err(|x| e(x.into()))? {
                let (k, _) = item.map_err(|x| e(x.into()))?;
                let (client, id) = k.value();
                match r.awaiting_rel.get_mut(client) {
                    Some(ids) => ids.push(id),
                    None => {
                        r.awaiting_rel.insert(client.to_string(), vec![id]);
                    }
                }
            }
        }
        let meta = txn.open_table(META).map_err(|x| e(x.into()))?;
        let stored_next = meta.get(META_NEXT_ID).map_err(|x| e(x.into()))?.map(|g| g.value()).unwrap_or(1);
        let messages = txn.open_table(MESSAGES).map_err(|x| e(x.into()))?;
        // The high-water mark should already cover every stored id; the max key is a cheap safety net.
        let above_max =
            messages.last().map_err(|x| e(x.into()))?.map(|(k, _)| k.value().saturating_add(1)).unwrap_or(1);
        r.next_message_id = stored_next.max(above_max).max(1);
        Ok(r)
    })
}

/// Walks messages and queue entries for [`Walk`] (check, repair, verify).
pub(crate) fn walk(db: &Database, path: &Path) -> Result<Walk, StoreError> {
    let e = |err: redb::Error| from_redb(path, "check", err);
    let txn = db.begin_read().map_err(|x| e(x.into()))?;
    let mut w = Walk::default();
    let meta = txn.open_table(META).map_err(|x| e(x.into()))?;
    w.report.format_version = meta.get(META_FORMAT).map_err(|x| e(x.into()))?.map(|g| g.value()).unwrap_or(0);
    w.report.next_message_id = meta.get(META_NEXT_ID).map_err(|x| e(x.into()))?.map(|g| g.value()).unwrap_or(0);
    let sessions = txn.open_table(SESSIONS).map_err(|x| e(x.into()))?;
    w.report.sessions = sessions.len().map_err(|x| e(x.into()))?;
    w.report.retained = txn.open_table(RETAINED).map_err(|x| e(x.into()))?.len().map_err(|x| e(x.into()))?;
    let messages = txn.open_table(MESSAGES).map_err(|x| e(x.into()))?;
    for item in messages.iter().map_err(|x| e(x.into()))? {
        let (k, v) = item.map_err(|x| e(x.into()))?;
        let (rc, data) = v.value();
        w.message(k.value(), rc, data.len());
    }
    let queue = txn.open_table(QUEUE).map_err(|x| e(x.into()))?;
    for item in queue.iter().map_err(|x| e(x.into()))? {
        let (k, v) = item.map_err(|x| e(x.into()))?;
        let (client, bucket) = k.value();
        for entry in buckets::decode(path, client, bucket, v.value())? {
            w.entry(client, entry.seq, entry.msg);
        }
    }
    if let Some(table) = read_awaiting_rel(&txn).map_err(|x| e(x.into()))? {
        // Ids are grouped by client: look each client's session up once.
        let mut last: Option<(String, bool)> = None;
        for item in table.iter().map_err(|x| e(x.into()))? {
            let (k, _) = item.map_err(|x| e(x.into()))?;
            let (client, id) = k.value();
            let has_session = match &last {
                Some((c, has)) if c == client => *has,
                _ => {
                    let has = sessions.get(client).map_err(|x| e(x.into()))?.is_some();
                    last = Some((client.to_string(), has));
                    has
                }
            };
            w.awaiting_rel(client, id, has_session);
        }
    }
    Ok(w)
}

/// Waits for submits and takes what is queued, up to `MAX_BATCH_OPS` (at least one submit). With
/// `sync_due_in`, gives up waiting after that long (an fsync is due under `Fsync::Off`).
fn next_batches(shared: &Shared, sync_due_in: Option<Duration>) -> Next {
    let deadline = sync_due_in.map(|d| Instant::now() + d);
    let mut q = lock(&shared.queue);
    while q.batches.is_empty() {
        if q.closed {
            return Next::Closed;
        }
        q.writer_waiting = true;
        q = match deadline {
            None => shared.queue_cv.wait(q).unwrap_or_else(|e| e.into_inner()),
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    q.writer_waiting = false;
                    return Next::SyncDue;
                }
                shared.queue_cv.wait_timeout(q, left).unwrap_or_else(|e| e.into_inner()).0
            }
        };
        q.writer_waiting = false;
    }
    let mut ops = 0;
    let mut batches = Vec::new();
    while ops < MAX_BATCH_OPS {
        let Some(b) = q.batches.pop_front() else { break };
        ops += b.ops.len();
        batches.push(b);
    }
    Next::Batches(batches)
}

/// The writer thread: gathers, applies, commits, publishes.
fn writer_loop(db: Arc<Database>, shared: Arc<Shared>, fsync: Fsync) {
    // Marks the store closed even if this thread panics, so `flush` callers do not wait forever and
    // `submit` refuses work nobody would commit.
    struct Closed(Arc<Shared>);
    impl Drop for Closed {
        fn drop(&mut self) {
            lock(&self.0.watch_tx).take();
            {
                let mut q = lock(&self.0.queue);
                q.closed = true;
                // Never committed: drop them rather than hold their memory.
                q.batches.clear();
            }
            lock(&self.0.progress).closed = true;
            self.0.progress_cv.notify_all();
        }
    }
    let _closed = Closed(shared.clone());

    // Under Fsync::Off: whether commits since the last fsync exist, and when that fsync was.
    let mut unsynced = false;
    let mut last_sync = Instant::now();
    loop {
        let sync_due_in = unsynced.then(|| SYNC_INTERVAL.saturating_sub(last_sync.elapsed()));
        let batches = match next_batches(&shared, sync_due_in) {
            Next::Batches(b) => b,
            Next::SyncDue => {
                // On failure the store is unavailable and nothing more will be written: stop trying.
                sync_commit(&db, &shared);
                unsynced = false;
                last_sync = Instant::now();
                continue;
            }
            Next::Closed => break,
        };
        if shared.unavailable.load(Ordering::Acquire) {
            // Drained and dropped: these tickets are never reported committed.
            continue;
        }
        let durable = fsync == Fsync::Batch || batches.iter().any(|b| b.sync) || last_sync.elapsed() >= SYNC_INTERVAL;
        let last_ticket = batches.last().map_or(0, |b| b.ticket);
        let gate = lock(&shared.writer_gate);
        let result = catch_unwind(AssertUnwindSafe(|| commit(&db, &shared, &batches, durable)))
            .unwrap_or_else(|p| Err(corrupt(&shared.path, format!("redb failed during commit: {}", panic_text(&*p)))));
        drop(gate);
        match result {
            Ok(applied) => {
                let c = &shared.counters;
                c.commits.fetch_add(1, Ordering::Relaxed);
                c.ops.fetch_add(applied.ops, Ordering::Relaxed);
                c.bytes_written.fetch_add(applied.bytes, Ordering::Relaxed);
                c.skipped_enqueues.fetch_add(applied.skipped_enqueues, Ordering::Relaxed);
                c.largest_batch_ops.fetch_max(applied.ops, Ordering::Relaxed);
                c.largest_batch_submits.fetch_max(batches.len() as u64, Ordering::Relaxed);
                if durable {
                    c.fsyncs.fetch_add(1, Ordering::Relaxed);
                    unsynced = false;
                    last_sync = Instant::now();
                } else {
                    unsynced = true;
                }
                shared.publish(last_ticket);
            }
            Err(err) => shared.fail(&err),
        }
    }
    // Under Fsync::Off, make the last commits durable before the file is closed.
    if unsynced && !shared.unavailable.load(Ordering::Acquire) {
        sync_commit(&db, &shared);
    }
}

/// An empty fsynced commit: makes earlier `Durability::None` commits durable (and lets redb free their
/// pages, which it only does on durable commits).
fn sync_commit(db: &Database, shared: &Shared) {
    let r = catch_unwind(AssertUnwindSafe(|| commit(db, shared, &[], true)))
        .unwrap_or_else(|p| Err(corrupt(&shared.path, format!("redb failed during commit: {}", panic_text(&*p)))));
    match r {
        Ok(_) => {
            shared.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        Err(err) => shared.fail(&err),
    }
}

/// One write transaction for `batches`.
fn commit(db: &Database, shared: &Shared, batches: &[Batch], durable: bool) -> Result<Applied, StoreError> {
    let path = &shared.path;
    let e = |what, err: redb::Error| from_redb(path, what, err);
    let mut txn = db.begin_write().map_err(|x| e("begin write transaction", x.into()))?;
    txn.set_durability(if durable { Durability::Immediate } else { Durability::None });
    let applied = {
        let mut t = RedbTables {
            path,
            messages: txn.open_table(MESSAGES).map_err(|x| e("open table", x.into()))?,
            queue: QueueTable { path, table: txn.open_table(QUEUE).map_err(|x| e("open table", x.into()))? },
            buckets: BucketCache::default(),
            sessions: txn.open_table(SESSIONS).map_err(|x| e("open table", x.into()))?,
            retained: txn.open_table(RETAINED).map_err(|x| e("open table", x.into()))?,
            awaiting_rel: txn.open_table(AWAITING_REL).map_err(|x| e("open table", x.into()))?,
            meta: txn.open_table(META).map_err(|x| e("open table", x.into()))?,
        };
        apply(&mut t, batches.iter().map(|b| b.ops.as_slice()))?
    };
    if shared.fail_next_commit.swap(false, Ordering::AcqRel) {
        let _ = txn.abort();
        return Err(StoreError::Io {
            path: path.clone(),
            what: "commit",
            detail: "No space left on device (injected by fail_next_commit)".to_string(),
        });
    }
    txn.commit().map_err(|x| e("commit", x.into()))?;
    Ok(applied)
}

/// The tables of one write transaction.
pub(crate) struct RedbTables<'t> {
    pub path: &'t Path,
    pub messages: redb::Table<'t, u64, (u32, &'static [u8])>,
    pub queue: QueueTable<'t>,
    /// The queue buckets this transaction has changed, written back by `finish`.
    pub buckets: BucketCache,
    pub sessions: redb::Table<'t, &'static str, &'static [u8]>,
    pub retained: redb::Table<'t, &'static str, &'static [u8]>,
    pub awaiting_rel: redb::Table<'t, (&'static str, u16), ()>,
    pub meta: redb::Table<'t, &'static str, u64>,
}

fn werr(path: &Path, err: impl Into<redb::Error>) -> StoreError {
    from_redb(path, "write", err)
}

impl Tables for RedbTables<'_> {
    fn msg_refcount(&mut self, id: u64) -> Result<Option<u32>, StoreError> {
        Ok(self.messages.get(id).map_err(|x| werr(self.path, x))?.map(|g| g.value().0))
    }
    fn msg_insert(&mut self, id: u64, refcount: u32, data: &Bytes) -> Result<(), StoreError> {
        self.messages.insert(id, (refcount, &data[..])).map_err(|x| werr(self.path, x))?;
        Ok(())
    }
    fn msg_set_refcount(&mut self, id: u64, refcount: u32) -> Result<(), StoreError> {
        // The refcount shares the value with the blob, so the blob is rewritten (once per message per
        // transaction, see apply.rs).
        let data = match self.messages.get(id).map_err(|x| werr(self.path, x))? {
            Some(g) => g.value().1.to_vec(),
            None => return Ok(()),
        };
        self.messages.insert(id, (refcount, data.as_slice())).map_err(|x| werr(self.path, x))?;
        Ok(())
    }
    fn msg_remove(&mut self, id: u64) -> Result<(), StoreError> {
        self.messages.remove(id).map_err(|x| werr(self.path, x))?;
        Ok(())
    }
    fn entry_insert(&mut self, client: &str, seq: u64, msg: u64, meta: &Bytes) -> Result<Option<u64>, StoreError> {
        self.buckets.insert(&mut self.queue, client, seq, msg, meta)
    }
    fn entry_set_meta(&mut self, client: &str, seq: u64, meta: &Bytes) -> Result<bool, StoreError> {
        self.buckets.set_meta(&mut self.queue, client, seq, meta)
    }
    fn entry_remove(&mut self, client: &str, seq: u64) -> Result<Option<u64>, StoreError> {
        self.buckets.remove(&mut self.queue, client, seq)
    }
    fn entries_remove_client(&mut self, client: &str) -> Result<Vec<u64>, StoreError> {
        self.buckets.remove_client(&mut self.queue, client)
    }
    fn finish(&mut self) -> Result<(), StoreError> {
        self.buckets.flush(&mut self.queue)
    }
    fn session_put(&mut self, client: &str, data: &Bytes) -> Result<(), StoreError> {
        self.sessions.insert(client, &data[..]).map_err(|x| werr(self.path, x))?;
        Ok(())
    }
    fn session_remove(&mut self, client: &str) -> Result<(), StoreError> {
        self.sessions.remove(client).map_err(|x| werr(self.path, x))?;
        Ok(())
    }
    fn awaiting_rel_put(&mut self, client: &str, packet_id: u16) -> Result<(), StoreError> {
        self.awaiting_rel.insert((client, packet_id), ()).map_err(|x| werr(self.path, x))?;
        Ok(())
    }
    fn awaiting_rel_remove(&mut self, client: &str, packet_id: u16) -> Result<(), StoreError> {
        self.awaiting_rel.remove((client, packet_id)).map_err(|x| werr(self.path, x))?;
        Ok(())
    }
    fn awaiting_rel_remove_client(&mut self, client: &str) -> Result<(), StoreError> {
        self.awaiting_rel.retain_in((client, 0)..=(client, u16::MAX), |_, _| false).map_err(|x| werr(self.path, x))?;
        Ok(())
    }
    fn retained_put(&mut self, topic: &str, data: &Bytes) -> Result<(), StoreError> {
        self.retained.insert(topic, &data[..]).map_err(|x| werr(self.path, x))?;
        Ok(())
    }
    fn retained_remove(&mut self, topic: &str) -> Result<(), StoreError> {
        self.retained.remove(topic).map_err(|x| werr(self.path, x))?;
        Ok(())
    }
    fn next_message_id(&mut self) -> Result<u64, StoreError> {
        Ok(self.meta.get(META_NEXT_ID).map_err(|x| werr(self.path, x))?.map(|g| g.value()).unwrap_or(1))
    }
    fn set_next_message_id(&mut self, id: u64) -> Result<(), StoreError> {
        self.meta.insert(META_NEXT_ID, id).map_err(|x| werr(self.path, x))?;
        Ok(())
    }
}

/// The queue table of a write transaction, as [`BucketCache`] reads and writes it.
pub(crate) struct QueueTable<'t> {
    pub path: &'t Path,
    pub table: redb::Table<'t, (&'static str, u64), &'static [u8]>,
}

impl BucketTable for QueueTable<'_> {
    fn get(&mut self, client: &str, bucket: u64) -> Result<Option<Vec<buckets::Entry>>, StoreError> {
        match self.table.get((client, bucket)).map_err(|x| werr(self.path, x))? {
            Some(g) => Ok(Some(buckets::decode(self.path, client, bucket, g.value())?)),
            None => Ok(None),
        }
    }
    fn all(&mut self, client: &str) -> Result<Vec<(u64, Vec<buckets::Entry>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.table.range((client, 0)..=(client, u64::MAX)).map_err(|x| werr(self.path, x))? {
            let (k, v) = item.map_err(|x| werr(self.path, x))?;
            let bucket = k.value().1;
            out.push((bucket, buckets::decode(self.path, client, bucket, v.value())?));
        }
        Ok(out)
    }
    fn put(&mut self, client: &str, bucket: u64, entries: &[buckets::Entry]) -> Result<(), StoreError> {
        self.table.insert((client, bucket), buckets::encode(entries).as_slice()).map_err(|x| werr(self.path, x))?;
        Ok(())
    }
    fn remove(&mut self, client: &str, bucket: u64) -> Result<(), StoreError> {
        self.table.remove((client, bucket)).map_err(|x| werr(self.path, x))?;
        Ok(())
    }
}
