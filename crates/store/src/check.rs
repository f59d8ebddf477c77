//! `halyard ctl store check` and `repair`: verify a closed store file and fix what can be fixed.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use redb::{Durability, ReadableTable};

use crate::buckets::BucketCache;
use crate::error::from_redb;
use crate::redb_store::{
    guarded, open_database, verify_file, walk, QueueTable, AWAITING_REL, MESSAGES, META, META_NEXT_ID, QUEUE,
};
use crate::{StoreError, FILE_NAME};

/// How many problems a report lists one by one (the counters cover the rest).
const MAX_LISTED: usize = 20;

/// What [`check`] (or [`crate::Store::verify`]) found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// The store file (empty for a [`crate::MemoryStore`]).
    pub path: PathBuf,
    /// redb's page checksum verification: `Some(true)` intact, `Some(false)` redb found a damaged commit
    /// and rolled back to the previous one, `None` not run (`verify` on a live store).
    pub file_intact: Option<bool>,
    /// Layout version in the `meta` table (0 if missing).
    pub format_version: u64,
    /// The stored next-message-id high-water mark (0 if missing).
    pub next_message_id: u64,
    /// Stored messages.
    pub messages: u64,
    /// Bytes of stored message blobs.
    pub message_bytes: u64,
    /// Queue entries.
    pub queue_entries: u64,
    /// Clients with at least one queue entry.
    pub queues: u64,
    /// Sessions.
    pub sessions: u64,
    /// Retained messages.
    pub retained: u64,
    /// Inbound QoS 2 packet ids awaiting PUBREL, over all clients.
    pub awaiting_rel: u64,
    /// Packet ids awaiting PUBREL of a client that has no session record (nothing would ever release
    /// them; a new session with that client id would inherit them).
    pub orphan_awaiting_rel: u64,
    /// Queue entries whose message is not stored (their message is lost).
    pub dangling_entries: u64,
    /// Messages whose stored refcount differs from the number of entries referencing them (but is not 0).
    pub refcount_mismatches: u64,
    /// Stored messages no entry references (they only use space).
    pub orphan_messages: u64,
    /// Stored message ids at or above `next_message_id` (would be reused after restart).
    pub ids_above_next: u64,
    /// The first problems, one line each.
    pub problems: Vec<String>,
}

impl CheckReport {
    /// True when nothing needs repair.
    pub fn is_clean(&self) -> bool {
        self.file_intact != Some(false)
            && self.dangling_entries == 0
            && self.refcount_mismatches == 0
            && self.orphan_messages == 0
            && self.ids_above_next == 0
            && self.orphan_awaiting_rel == 0
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.as_os_str().is_empty() {
            writeln!(f, "store file: {}", self.path.display())?;
        }
        match self.file_intact {
            Some(true) => writeln!(f, "page checksums: ok")?,
            Some(false) => writeln!(f, "page checksums: a damaged commit was rolled back")?,
            None => {}
        }
        writeln!(f, "layout version: {}; next message id: {}", self.format_version, self.next_message_id)?;
        writeln!(
            f,
            "messages: {} ({} bytes); queue entries: {} in {} queues; sessions: {}; retained: {}; \
             packet ids awaiting PUBREL: {}",
            self.messages,
            self.message_bytes,
            self.queue_entries,
            self.queues,
            self.sessions,
            self.retained,
            self.awaiting_rel
        )?;
        writeln!(
            f,
            "dangling entries: {}; refcount mismatches: {}; orphan messages: {}; ids above next id: {}; \
             packet ids without a session: {}",
            self.dangling_entries,
            self.refcount_mismatches,
            self.orphan_messages,
            self.ids_above_next,
            self.orphan_awaiting_rel
        )?;
        for p in &self.problems {
            writeln!(f, "  {p}")?;
        }
        write!(f, "{}", if self.is_clean() { "clean" } else { "needs repair" })
    }
}

/// What [`repair`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepairReport {
    /// The state found before repairing (including redb's own verification).
    pub before: CheckReport,
    /// Queue entries removed because their message was missing.
    pub dangling_entries_removed: u64,
    /// Refcounts rewritten to the number of referencing entries.
    pub refcounts_fixed: u64,
    /// Messages removed because no entry referenced them.
    pub orphan_messages_removed: u64,
    /// Packet ids awaiting PUBREL removed because their client has no session record.
    pub orphan_awaiting_rel_removed: u64,
    /// `Some((old, new))` if the next-message-id high-water mark was raised.
    pub next_message_id_raised: Option<(u64, u64)>,
    /// The state after repairing.
    pub after: CheckReport,
}

impl RepairReport {
    /// True if repair changed anything (redb's rollback included).
    pub fn changed(&self) -> bool {
        self.before.file_intact == Some(false)
            || self.dangling_entries_removed > 0
            || self.refcounts_fixed > 0
            || self.orphan_messages_removed > 0
            || self.orphan_awaiting_rel_removed > 0
            || self.next_message_id_raised.is_some()
    }
}

impl fmt::Display for RepairReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.before.file_intact == Some(false) {
            writeln!(f, "redb rolled back a damaged commit")?;
        }
        writeln!(
            f,
            "removed {} dangling queue entries and {} orphan messages; fixed {} refcounts",
            self.dangling_entries_removed, self.orphan_messages_removed, self.refcounts_fixed
        )?;
        if self.orphan_awaiting_rel_removed > 0 {
            writeln!(f, "removed {} packet ids of clients without a session", self.orphan_awaiting_rel_removed)?;
        }
        if let Some((old, new)) = self.next_message_id_raised {
            writeln!(f, "raised next message id from {old} to {new}")?;
        }
        write!(f, "after repair:\n{}", self.after)
    }
}

/// Accumulates a walk over messages (first) and queue entries (grouped by client, as both stores
/// iterate them), and the fixes repair would make.
#[derive(Default)]
pub(crate) struct Walk {
    pub report: CheckReport,
    /// message id → stored refcount
    stored: HashMap<u64, u32>,
    /// message id → entries referencing it
    refs: HashMap<u64, u32>,
    max_id: Option<u64>,
    last_client: Option<String>,
    dangling: Vec<(String, u64)>,
    orphan_awaiting_rel: Vec<(String, u16)>,
}

/// What repair has to change.
#[derive(Default)]
pub(crate) struct Fixes {
    /// (client, seq) of entries whose message is missing.
    pub dangling: Vec<(String, u64)>,
    /// (message id, correct refcount); 0 means remove the message.
    pub refcounts: Vec<(u64, u32)>,
    /// The next-message-id the file should have, if the stored one is too low.
    pub next_message_id: Option<u64>,
    /// (client, packet id) awaiting PUBREL whose client has no session record.
    pub orphan_awaiting_rel: Vec<(String, u16)>,
}

impl Walk {
    fn problem(&mut self, p: impl FnOnce() -> String) {
        if self.report.problems.len() < MAX_LISTED {
            self.report.problems.push(p());
        }
    }

    pub fn message(&mut self, id: u64, refcount: u32, len: usize) {
        self.report.messages += 1;
        self.report.message_bytes += len as u64;
        self.stored.insert(id, refcount);
        self.max_id = self.max_id.max(Some(id));
    }

    pub fn entry(&mut self, client: &str, seq: u64, msg: u64) {
        self.report.queue_entries += 1;
        if self.last_client.as_deref() != Some(client) {
            self.report.queues += 1;
            self.last_client = Some(client.to_string());
        }
        if self.stored.contains_key(&msg) {
            *self.refs.entry(msg).or_default() += 1;
        } else {
            self.report.dangling_entries += 1;
            self.problem(|| format!("queue entry ({client:?}, {seq}) references missing message {msg}"));
            self.dangling.push((client.to_string(), seq));
        }
    }

    /// One packet id awaiting PUBREL; `has_session`: whether `client` has a session record.
    pub fn awaiting_rel(&mut self, client: &str, packet_id: u16, has_session: bool) {
        self.report.awaiting_rel += 1;
        if !has_session {
            self.report.orphan_awaiting_rel += 1;
            self.problem(|| format!("packet id {packet_id} awaiting PUBREL of {client:?}, which has no session"));
            self.orphan_awaiting_rel.push((client.to_string(), packet_id));
        }
    }

    pub fn finish(mut self) -> (CheckReport, Fixes) {
        let mut fixes = Fixes {
            dangling: std::mem::take(&mut self.dangling),
            orphan_awaiting_rel: std::mem::take(&mut self.orphan_awaiting_rel),
            ..Fixes::default()
        };
        let mut ids: Vec<(u64, u32)> = self.stored.iter().map(|(id, rc)| (*id, *rc)).collect();
        ids.sort_unstable();
        for (id, stored) in ids {
            let actual = self.refs.get(&id).copied().unwrap_or(0);
            if actual == 0 {
                self.report.orphan_messages += 1;
                self.problem(|| format!("message {id} (refcount {stored}) is referenced by no queue entry"));
            } else if actual != stored {
                self.report.refcount_mismatches += 1;
                self.problem(|| format!("message {id} has refcount {stored} but {actual} queue entries"));
            } else {
                continue;
            }
            fixes.refcounts.push((id, actual));
        }
        if let Some(max) = self.max_id {
            if max >= self.report.next_message_id {
                self.report.ids_above_next =
                    self.stored.keys().filter(|id| **id >= self.report.next_message_id).count() as u64;
                let next = self.report.next_message_id;
                self.problem(|| format!("message id {max} is not below the next message id {next}"));
                fixes.next_message_id = Some(max.saturating_add(1));
            }
        }
        (self.report, fixes)
    }
}

fn existing_file(dir: &Path) -> Result<PathBuf, StoreError> {
    let path = dir.join(FILE_NAME);
    if !path.is_file() {
        return Err(StoreError::Open { path, detail: "no store file here (wrong --data-dir?)".to_string() });
    }
    Ok(path)
}

/// Verifies `<dir>/halyard.redb` while no broker has it open: redb's page checksums (redb repairs an
/// uncleanly closed file while opening it, and rolls back a damaged last commit; both are the only
/// writes `check` may cause), then every queue entry's message and every refcount. Returns counts and
/// the first problems. Fails with [`StoreError::Corrupt`] if redb cannot read the file at all.
pub fn check(dir: &Path) -> Result<CheckReport, StoreError> {
    let path = existing_file(dir)?;
    let mut db = open_database(&path, false)?;
    let intact = verify_file(&mut db, &path)?;
    let (mut report, _) = guarded(&path, "check", || walk(&db, &path))?.finish();
    report.path = path;
    report.file_intact = Some(intact);
    Ok(report)
}

/// Repairs `<dir>/halyard.redb` while no broker has it open: redb's own repair and rollback (as in
/// [`check`]), then removes queue entries whose message is missing, rewrites wrong refcounts, removes
/// unreferenced messages, removes packet ids awaiting PUBREL of clients without a session record and
/// raises the next-message-id mark above every stored id, in one fsynced
/// transaction. Reports what it changed and the state after.
///
/// Damage redb cannot repair (a bad page that the last commit still uses) gives
/// [`StoreError::Unrepairable`], whose message tells how to start over with an empty store.
pub fn repair(dir: &Path) -> Result<RepairReport, StoreError> {
    let path = existing_file(dir)?;
    let unrepairable = |e: StoreError| match e {
        StoreError::Corrupt { path, detail, .. } => StoreError::Unrepairable { path, detail },
        e => e,
    };
    let mut db = open_database(&path, false).map_err(unrepairable)?;
    let intact = verify_file(&mut db, &path).map_err(unrepairable)?;
    let (mut before, fixes) = guarded(&path, "check", || walk(&db, &path))?.finish();
    before.path = path.clone();
    before.file_intact = Some(intact);

    let mut out = RepairReport { before, ..RepairReport::default() };
    let e = |err: redb::Error| from_redb(&path, "repair", err);
    guarded(&path, "repair", || {
        let mut txn = db.begin_write().map_err(|x| e(x.into()))?;
        txn.set_durability(Durability::Immediate);
        {
            let mut queue = QueueTable { path: &path, table: txn.open_table(QUEUE).map_err(|x| e(x.into()))? };
            let mut buckets = BucketCache::default();
            for (client, seq) in &fixes.dangling {
                if buckets.remove(&mut queue, client, *seq)?.is_some() {
                    out.dangling_entries_removed += 1;
                }
            }
            buckets.flush(&mut queue)?;
            let mut messages = txn.open_table(MESSAGES).map_err(|x| e(x.into()))?;
            for (id, refcount) in &fixes.refcounts {
                if *refcount == 0 {
                    messages.remove(*id).map_err(|x| e(x.into()))?;
                    out.orphan_messages_removed += 1;
                } else {
                    let data = match messages.get(*id).map_err(|x| e(x.into()))? {
                        Some(g) => g.value().1.to_vec(),
                        None => continue,
                    };
                    messages.insert(*id, (*refcount, data.as_slice())).map_err(|x| e(x.into()))?;
                    out.refcounts_fixed += 1;
                }
            }
            if !fixes.orphan_awaiting_rel.is_empty() {
                // Opening it in a write transaction also creates the table in a file written before it
                // existed; harmless (the layout version does not change, see init_tables).
                let mut ids = txn.open_table(AWAITING_REL).map_err(|x| e(x.into()))?;
                for (client, id) in &fixes.orphan_awaiting_rel {
                    if ids.remove((client.as_str(), *id)).map_err(|x| e(x.into()))?.is_some() {
                        out.orphan_awaiting_rel_removed += 1;
                    }
                }
            }
            if let Some(next) = fixes.next_message_id {
                let mut meta = txn.open_table(META).map_err(|x| e(x.into()))?;
                let old = meta.get(META_NEXT_ID).map_err(|x| e(x.into()))?.map(|g| g.value()).unwrap_or(0);
                if next > old {
                    meta.insert(META_NEXT_ID, next).map_err(|x| e(x.into()))?;
                    out.next_message_id_raised = Some((old, next));
                }
            }
        }
        txn.commit().map_err(|x| e(x.into()))
    })?;

    let (mut after, _) = guarded(&path, "check", || walk(&db, &path))?.finish();
    after.path = path;
    after.file_intact = Some(true);
    out.after = after;
    if out.changed() {
        tracing::warn!(path = %out.after.path.display(), report = %out, "store: repaired");
    }
    Ok(out)
}
