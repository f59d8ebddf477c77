//! Applying ops to tables: the one place that defines the store's semantics, shared by the redb and the
//! in-memory implementation so the two cannot drift apart.

use std::collections::HashMap;

use bytes::Bytes;

use crate::{Op, StoreError};

/// The table operations an op needs. Implemented over a redb write transaction and over the in-memory
/// maps.
pub(crate) trait Tables {
    fn msg_refcount(&mut self, id: u64) -> Result<Option<u32>, StoreError>;
    fn msg_insert(&mut self, id: u64, refcount: u32, data: &Bytes) -> Result<(), StoreError>;
    /// Only called for a message that exists.
    fn msg_set_refcount(&mut self, id: u64, refcount: u32) -> Result<(), StoreError>;
    fn msg_remove(&mut self, id: u64) -> Result<(), StoreError>;
    /// Returns the message id of the entry it replaced.
    fn entry_insert(&mut self, client: &str, seq: u64, msg: u64, meta: &Bytes) -> Result<Option<u64>, StoreError>;
    /// Returns whether the entry existed.
    fn entry_set_meta(&mut self, client: &str, seq: u64, meta: &Bytes) -> Result<bool, StoreError>;
    /// Returns the message id of the removed entry.
    fn entry_remove(&mut self, client: &str, seq: u64) -> Result<Option<u64>, StoreError>;
    /// Removes every entry of `client`; returns their message ids.
    fn entries_remove_client(&mut self, client: &str) -> Result<Vec<u64>, StoreError>;
    fn session_put(&mut self, client: &str, data: &Bytes) -> Result<(), StoreError>;
    fn session_remove(&mut self, client: &str) -> Result<(), StoreError>;
    fn awaiting_rel_put(&mut self, client: &str, packet_id: u16) -> Result<(), StoreError>;
    fn awaiting_rel_remove(&mut self, client: &str, packet_id: u16) -> Result<(), StoreError>;
    /// Removes every packet id awaiting PUBREL of `client`.
    fn awaiting_rel_remove_client(&mut self, client: &str) -> Result<(), StoreError>;
    fn retained_put(&mut self, topic: &str, data: &Bytes) -> Result<(), StoreError>;
    fn retained_remove(&mut self, topic: &str) -> Result<(), StoreError>;
    fn next_message_id(&mut self) -> Result<u64, StoreError>;
    fn set_next_message_id(&mut self, id: u64) -> Result<(), StoreError>;
    /// Called once after the last op of a transaction, for tables that defer writes to the end.
    fn finish(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// What one transaction did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Applied {
    pub ops: u64,
    pub bytes: u64,
    pub skipped_enqueues: u64,
}

/// A message touched in this transaction. Refcounts are summed and written once at the end, so a
/// message enqueued for 1,000 clients is rewritten once, not 1,000 times.
struct Touched {
    /// Refcount in the table before this transaction; `None` if not stored.
    base: Option<u32>,
    delta: i64,
    put: Option<Bytes>,
}

/// Applies `batches` (each one submit's ops, in ticket order) to `t`.
pub(crate) fn apply<'a, T: Tables>(
    t: &mut T,
    batches: impl IntoIterator<Item = &'a [Op]>,
) -> Result<Applied, StoreError> {
    let mut out = Applied::default();
    let mut touched: HashMap<u64, Touched> = HashMap::new();
    let mut max_put: Option<u64> = None;
    // Ids at or above the mark were never stored (the mark is raised in the transaction that puts an id),
    // so a new message needs no lookup of a refcount that cannot exist.
    let fresh_from = t.next_message_id()?;

    // Reads the table only the first time an id is seen in this transaction.
    fn touch<'m, T: Tables>(
        t: &mut T,
        touched: &'m mut HashMap<u64, Touched>,
        fresh_from: u64,
        id: u64,
    ) -> Result<&'m mut Touched, StoreError> {
        use std::collections::hash_map::Entry;
        Ok(match touched.entry(id) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => {
                let base = if id >= fresh_from { None } else { t.msg_refcount(id)? };
                v.insert(Touched { base, delta: 0, put: None })
            }
        })
    }

    for ops in batches {
        for op in ops {
            out.ops += 1;
            match op {
                Op::PutMessage { id, data } => {
                    out.bytes += data.len() as u64;
                    touch(t, &mut touched, fresh_from, *id)?.put = Some(data.clone());
                    max_put = max_put.max(Some(*id));
                }
                Op::Enqueue { client, seq, msg, meta } => {
                    let m = touch(t, &mut touched, fresh_from, *msg)?;
                    if m.base.is_none() && m.put.is_none() {
                        out.skipped_enqueues += 1;
                        tracing::warn!(
                            client = &**client,
                            seq,
                            msg,
                            "store: Enqueue of a message that is not stored; skipped"
                        );
                        continue;
                    }
                    m.delta += 1;
                    out.bytes += meta.len() as u64;
                    if let Some(old) = t.entry_insert(client, *seq, *msg, meta)? {
                        touch(t, &mut touched, fresh_from, old)?.delta -= 1;
                    }
                }
                Op::UpdateEntry { client, seq, meta } => {
                    if t.entry_set_meta(client, *seq, meta)? {
                        out.bytes += meta.len() as u64;
                    }
                }
                Op::Dequeue { client, seq } => {
                    if let Some(msg) = t.entry_remove(client, *seq)? {
                        touch(t, &mut touched, fresh_from, msg)?.delta -= 1;
                    }
                }
                Op::PutSession { client, data } => {
                    out.bytes += data.len() as u64;
                    t.session_put(client, data)?;
                }
                Op::DeleteSession { client } => {
                    t.session_remove(client)?;
                    // A new session with this client id must not inherit ids it never received.
                    t.awaiting_rel_remove_client(client)?;
                    for msg in t.entries_remove_client(client)? {
                        touch(t, &mut touched, fresh_from, msg)?.delta -= 1;
                    }
                }
                Op::PutRetained { topic, data } => {
                    out.bytes += data.len() as u64;
                    t.retained_put(topic, data)?;
                }
                Op::DeleteRetained { topic } => t.retained_remove(topic)?,
                // No blob: `bytes` counts blob bytes only, so these add nothing to it.
                Op::PutAwaitingRel { client, packet_id } => t.awaiting_rel_put(client, *packet_id)?,
                Op::DeleteAwaitingRel { client, packet_id } => t.awaiting_rel_remove(client, *packet_id)?,
            }
        }
    }

    // Sorted so both implementations touch the tables in the same order (and redb writes its pages
    // in key order).
    let mut ids: Vec<u64> = touched.keys().copied().collect();
    ids.sort_unstable();
    for id in ids {
        let Some(m) = touched.remove(&id) else { continue };
        let refs = i64::from(m.base.unwrap_or(0)) + m.delta;
        if refs <= 0 {
            if refs < 0 {
                // Only possible if the file already had a wrong refcount; `repair` recomputes them.
                tracing::warn!(msg = id, refs, "store: message refcount went below zero; the stored count was wrong");
            }
            if m.base.is_some() {
                t.msg_remove(id)?;
            }
            continue;
        }
        let refs = u32::try_from(refs).unwrap_or(u32::MAX);
        match (m.put, m.base) {
            (Some(data), _) => t.msg_insert(id, refs, &data)?,
            (None, Some(base)) if base != refs => t.msg_set_refcount(id, refs)?,
            _ => {}
        }
    }

    t.finish()?;
    if let Some(max) = max_put {
        // Ids are never reused, even those of messages deleted in this same transaction.
        let next = max.saturating_add(1);
        if next > t.next_message_id()? {
            t.set_next_message_id(next)?;
        }
    }
    Ok(out)
}
