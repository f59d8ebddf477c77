//! Durable storage for the Halyard MQTT broker.
//!
//! This crate is for keeping, across restarts and `kill -9`, what the broker core hands it as opaque
//! blobs: messages (stored once, refcounted by the queue entries that reference them), per-client queue
//! entries ordered by sequence number, session blobs and retained messages. It knows nothing of MQTT:
//! the core encodes and decodes every blob itself.
//!
//! Two implementations of [`Store`]:
//! - [`RedbStore`]: one file, `<data dir>/halyard.redb`, written by ONE writer thread that gathers
//!   everything submitted while the previous commit was running and commits it in one write
//!   transaction (group commit): one fsync per batch, not per message.
//! - [`MemoryStore`]: the same semantics in memory, committing inside `submit`, for
//!   `durable_sessions.enable = false` and for tests.
//!
//! # Ordering and atomicity
//! - Tickets are handed out in the order `submit` calls enter the store and ops are applied in ticket
//!   order; within one `submit`, in vector order. `committed()` only grows.
//! - One `submit` is atomic: its ops land in the same transaction, so after a crash either all of them
//!   are there or none. Several submits may share a transaction.
//! - A message with refcount 0 at the end of a transaction is deleted. Put a message and the
//!   `Enqueue`s that reference it in the same `submit`, otherwise the message may be gone before the
//!   `Enqueue` arrives (an `Enqueue` of a message that is not stored is skipped, logged and counted in
//!   [`StoreStats::skipped_enqueues`]).
//!
//! # Blocking
//! - `submit` never blocks (beyond a short mutex) and never waits for the commit: wait with
//!   `committed()`/`commits()`. It is called from tokio workers, where blocking would stall every
//!   other connection on the worker, so the writer's queue is unbounded and the backpressure is the
//!   callers': [`Store::backlog`] counts the submits accepted but not yet committed, and callers that
//!   can wait should stop submitting while `backlog() >= BACKLOG_HIGH` ([`BACKLOG_HIGH`]) and wait on
//!   `commits()`.
//! - `wait(ticket)` blocks until that ticket is committed; `flush` until everything submitted before
//!   it is committed and fsynced. Both block by design (they are for threads without an async
//!   runtime, or for a blocking-friendly context).
//! - `load_queue`, `restore` and `verify` run a read transaction on the caller's thread (disk reads);
//!   they do not wait for the writer. Call them from a blocking-friendly context
//!   (`tokio::task::spawn_blocking`) in async code.
//! - Dropping the last `Arc<RedbStore>` commits what is queued and joins the writer thread (so it
//!   blocks for up to one commit; do it from a blocking context too).
//!
//! # Failures
//! A failed commit (disk full, I/O error, damage met while writing) is logged with `tracing::error!`
//! and makes the store unavailable for good: its tickets and every later one are never reported
//! committed, `submit`/`flush`/`wait` return [`StoreError::Unavailable`], and the
//! [`Store::commits`] channel closes so async waiters wake with an error. Reads keep working. Recovery
//! is a restart (redb then reopens the file at its last commit).
//!
//! # Start-up
//! [`RedbStore::open`] repairs an uncleanly closed file (redb does that by itself), verifies every page
//! checksum (≈70 ms for a 33 MiB file in a release build), and returns [`Restored`]. Tickets start at 1
//! on every open; message ids continue from [`Restored::next_message_id`]. A file redb cannot read
//! gives [`StoreError::Corrupt`], pointing to `halyard ctl store check` / `repair` ([`check`],
//! [`repair`]); those work on a closed store only (redb locks the file).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod apply;
mod buckets;
mod check;
mod error;
mod memory;
mod redb_store;
#[cfg(feature = "testing")]
pub mod testing;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

pub use check::{check, repair, CheckReport, RepairReport};
pub use error::StoreError;
pub use memory::MemoryStore;
pub use redb_store::RedbStore;

/// The name of the store file inside the data directory.
pub const FILE_NAME: &str = "halyard.redb";

/// The on-disk layout version written to the `meta` table; a file with another version is refused.
pub const FORMAT_VERSION: u64 = 2;

/// The backlog at which submitting should pause: callers that can wait should stop submitting while
/// [`Store::backlog`] `>= BACKLOG_HIGH` and wait on [`Store::commits`]. `submit` itself never refuses
/// or blocks for a backlog; this is what keeps the writer's queue (and the memory of its ops) bounded
/// in effect when the disk cannot keep up.
pub const BACKLOG_HIGH: usize = 1024;

/// One change to the store. Ops are applied in order; see the crate docs for what is atomic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Stores a message blob under `id` with refcount 0. Unless an `Enqueue` in the same transaction
    /// references it, it is deleted at the end of the transaction (so on its own this is a no-op,
    /// except that `id` counts for [`Restored::next_message_id`]). Putting an id that is already
    /// stored replaces the blob and keeps the refcount.
    PutMessage {
        /// Caller-chosen id; never reuse one (start from [`Restored::next_message_id`]).
        id: u64,
        /// The encoded message.
        data: Bytes,
    },
    /// Adds entry `(client, seq)` referencing message `msg` (+1 refcount). An existing entry with the
    /// same key is replaced (its message loses the reference). Skipped if `msg` is not stored.
    Enqueue {
        /// Client id owning the queue.
        client: Arc<str>,
        /// Position in the client's queue; entries are read back in `seq` order.
        seq: u64,
        /// The referenced message id.
        msg: u64,
        /// Per-delivery state encoded by the caller (QoS, packet id, stage).
        meta: Bytes,
    },
    /// Replaces the meta blob of entry `(client, seq)`; no-op if there is no such entry.
    UpdateEntry {
        /// Client id owning the queue.
        client: Arc<str>,
        /// The entry's sequence number.
        seq: u64,
        /// New per-delivery state.
        meta: Bytes,
    },
    /// Removes entry `(client, seq)` (-1 refcount on its message); no-op if absent.
    Dequeue {
        /// Client id owning the queue.
        client: Arc<str>,
        /// The entry's sequence number.
        seq: u64,
    },
    /// Stores the session blob of `client`, replacing any previous one.
    PutSession {
        /// Client id.
        client: Arc<str>,
        /// The encoded session.
        data: Bytes,
    },
    /// Removes the session of `client`, all of its queue entries (their references are released) and
    /// all of its packet ids awaiting PUBREL.
    DeleteSession {
        /// Client id.
        client: Arc<str>,
    },
    /// Stores the retained message of `topic`, replacing any previous one.
    PutRetained {
        /// Topic name.
        topic: Arc<str>,
        /// The encoded retained message.
        data: Bytes,
    },
    /// Removes the retained message of `topic`; no-op if absent.
    DeleteRetained {
        /// Topic name.
        topic: Arc<str>,
    },
    /// Records that `client` received a QoS 2 PUBLISH with `packet_id` and awaits its PUBREL. Kept
    /// apart from the session blob so that recording one id does not rewrite the whole session
    /// (subscriptions included). Putting an id that is already recorded is a no-op.
    PutAwaitingRel {
        /// Client id.
        client: Arc<str>,
        /// The inbound packet id.
        packet_id: u16,
    },
    /// Forgets `packet_id` of `client` (its PUBREL arrived); no-op if absent.
    DeleteAwaitingRel {
        /// Client id.
        client: Arc<str>,
        /// The inbound packet id.
        packet_id: u16,
    },
}

/// What the store holds at start-up, without the queue contents (read those with
/// [`Store::load_queue`] as sessions drain).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    /// Every session blob, ordered by client id.
    pub sessions: Vec<(String, Bytes)>,
    /// Every retained message, ordered by topic.
    pub retained: Vec<(String, Bytes)>,
    /// The first message id that was never stored: above every id ever put, including ones already
    /// deleted. Start allocating ids here.
    pub next_message_id: u64,
    /// For each client with at least one queue entry: (number of entries, highest seq).
    pub queue_lens: HashMap<String, (u64, u64)>,
    /// For each client with at least one inbound QoS 2 packet id awaiting PUBREL: those ids, ascending.
    pub awaiting_rel: HashMap<String, Vec<u16>>,
}

/// One queue entry as [`Store::load_queue`] returns it: `(seq, meta, message id, message blob)`.
pub type QueueEntry = (u64, Bytes, u64, Bytes);

/// Counters since the store was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// `submit` calls accepted (tickets issued), `flush` barriers included.
    pub submits: u64,
    /// Write transactions committed (for [`MemoryStore`], one per submit).
    pub commits: u64,
    /// Ops committed.
    pub ops: u64,
    /// Commits made with fsync (`Durability::Immediate`).
    pub fsyncs: u64,
    /// Most ops in one commit.
    pub largest_batch_ops: u64,
    /// Most submits in one commit.
    pub largest_batch_submits: u64,
    /// Blob bytes written (message, meta, session and retained blobs) by committed ops.
    pub bytes_written: u64,
    /// `Enqueue`s skipped because their message was not stored.
    pub skipped_enqueues: u64,
    /// Commits that failed (the first one makes the store unavailable).
    pub failed_commits: u64,
    /// True once a commit failed: `submit` returns [`StoreError::Unavailable`].
    pub unavailable: bool,
}

/// When a commit reaches the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fsync {
    /// Every group commit is fsynced before its tickets are reported committed.
    #[default]
    Batch,
    /// Commits are not fsynced (redb `Durability::None`); the writer makes one fsynced commit at most
    /// every second while there is unsynced data, on `flush` and on shutdown. A crash of the machine
    /// (not just the process) may lose the last second.
    Off,
}

/// The storage interface the broker core uses. All methods are callable from any thread.
pub trait Store: Send + Sync + 'static {
    /// Queues `ops` for the writer and returns their ticket; they are durable once
    /// `committed() >= ticket`. Never blocks and never waits for the commit, however far behind the
    /// writer is: push back with [`Store::backlog`] and [`BACKLOG_HIGH`].
    ///
    /// Returns [`StoreError::Unavailable`] once a commit has failed (disk full, I/O error): the caller
    /// must then refuse work that needs durability (QoS 1/2).
    fn submit(&self, ops: Vec<Op>) -> Result<u64, StoreError>;

    /// The highest ticket whose ops are committed (fsynced under [`Fsync::Batch`]).
    fn committed(&self) -> u64;

    /// True once a commit has failed: no ticket above `committed()` will ever commit.
    fn is_unavailable(&self) -> bool {
        self.stats().unavailable
    }

    /// Submits accepted but not yet committed (`flush` barriers included). Callers that can wait should
    /// stop submitting while this is at least [`BACKLOG_HIGH`] and wait on [`Store::commits`]. Once the
    /// store is unavailable it stays at the submits that will never commit.
    fn backlog(&self) -> usize;

    /// A watch channel carrying `committed()` after each commit, for async waiters
    /// (`rx.wait_for(|c| *c >= ticket)`). When the store becomes unavailable (or is closed) the sender
    /// is dropped, so waiting returns `Err` instead of hanging on a ticket that will never commit.
    fn commits(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Queue entries of `client` with `seq > after`, in seq order, at most `limit`, each with its
    /// message blob. Reads committed state only. `after` is exclusive, so start seqs at 1 (seq 0 can
    /// be stored but `load_queue` never returns it). Page through a queue with `after` = last seq seen.
    fn load_queue(&self, client: &str, after: u64, limit: usize) -> Result<Vec<QueueEntry>, StoreError>;

    /// Reads sessions, retained messages, queue sizes and the next message id from committed state.
    fn restore(&self) -> Result<Restored, StoreError>;

    /// Blocks until `committed() >= ticket`, for callers without an async runtime. Returns
    /// [`StoreError::Unavailable`] if the ticket will never be committed (a commit failed or the store
    /// closed).
    fn wait(&self, ticket: u64) -> Result<(), StoreError>;

    /// Blocks until everything submitted before this call is committed and (even under
    /// [`Fsync::Off`]) fsynced. Returns [`StoreError::Unavailable`] if that cannot happen.
    fn flush(&self) -> Result<(), StoreError>;

    /// Counters since open.
    fn stats(&self) -> StoreStats;

    /// Walks the committed state and checks every queue entry's message and every refcount (what
    /// [`check`] does on a closed store, minus redb's page checksums).
    fn verify(&self) -> Result<CheckReport, StoreError>;
}
