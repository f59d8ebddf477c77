//! The in-memory store: same semantics as the redb one, nothing survives the process.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::watch;

use crate::apply::{apply, Tables};
use crate::check::Walk;
use crate::{CheckReport, Op, QueueEntry, Restored, Store, StoreError, StoreStats};

#[derive(Default)]
struct State {
    messages: HashMap<u64, (u32, Bytes)>,
    /// client → seq → (message id, meta). Clients without entries are removed, as in redb's range view.
    queue: BTreeMap<String, BTreeMap<u64, (u64, Bytes)>>,
    sessions: BTreeMap<String, Bytes>,
    retained: BTreeMap<String, Bytes>,
    /// client → inbound QoS 2 ids awaiting PUBREL. Clients without ids are removed.
    awaiting_rel: BTreeMap<String, BTreeSet<u16>>,
    next_message_id: u64,
    /// The last ticket issued (== committed: every submit commits at once).
    ticket: u64,
    stats: StoreStats,
}

/// A [`Store`] in memory, for `durable_sessions.enable = false` and tests. Every `submit` is applied and
/// "committed" before it returns, under one mutex, so tickets and ops are ordered exactly as in
/// [`crate::RedbStore`]; nothing is fsynced and nothing survives the process.
pub struct MemoryStore {
    state: Mutex<State>,
    committed: AtomicU64,
    watch: watch::Sender<u64>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store; message ids start at 1.
    pub fn new() -> Self {
        MemoryStore {
            state: Mutex::new(State { next_message_id: 1, ..State::default() }),
            committed: AtomicU64::new(0),
            watch: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave half an op applied in a way later ops depend on
        // more than a crash would; keep serving rather than poisoning the broker.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Tables for State {
    fn msg_refcount(&mut self, id: u64) -> Result<Option<u32>, StoreError> {
        Ok(self.messages.get(&id).map(|(rc, _)| *rc))
    }
    fn msg_insert(&mut self, id: u64, refcount: u32, data: &Bytes) -> Result<(), StoreError> {
        self.messages.insert(id, (refcount, data.clone()));
        Ok(())
    }
    fn msg_set_refcount(&mut self, id: u64, refcount: u32) -> Result<(), StoreError> {
        if let Some(m) = self.messages.get_mut(&id) {
            m.0 = refcount;
        }
        Ok(())
    }
    fn msg_remove(&mut self, id: u64) -> Result<(), StoreError> {
        self.messages.remove(&id);
        Ok(())
    }
    fn entry_insert(&mut self, client: &str, seq: u64, msg: u64, meta: &Bytes) -> Result<Option<u64>, StoreError> {
        // Looked up by &str first: the owned key is only built for a client's first entry.
        if let Some(q) = self.queue.get_mut(client) {
            return Ok(q.insert(seq, (msg, meta.clone())).map(|(old, _)| old));
        }
        self.queue.insert(client.to_string(), BTreeMap::from([(seq, (msg, meta.clone()))]));
        Ok(None)
    }
    fn entry_set_meta(&mut self, client: &str, seq: u64, meta: &Bytes) -> Result<bool, StoreError> {
        match self.queue.get_mut(client).and_then(|q| q.get_mut(&seq)) {
            Some(e) => {
                e.1 = meta.clone();
                Ok(true)
            }
            None => Ok(false),
        }
    }
    fn entry_remove(&mut self, client: &str, seq: u64) -> Result<Option<u64>, StoreError> {
        let Some(q) = self.queue.get_mut(client) else { return Ok(None) };
        let old = q.remove(&seq).map(|(msg, _)| msg);
        if q.is_empty() {
            self.queue.remove(client);
        }
        Ok(old)
    }
    fn entries_remove_client(&mut self, client: &str) -> Result<Vec<u64>, StoreError> {
        Ok(self.queue.remove(client).map(|q| q.into_values().map(|(msg, _)| msg).collect()).unwrap_or_default())
    }
    fn session_put(&mut self, client: &str, data: &Bytes) -> Result<(), StoreError> {
        self.sessions.insert(client.to_string(), data.clone());
        Ok(())
    }
    fn session_remove(&mut self, client: &str) -> Result<(), StoreError> {
        self.sessions.remove(client);
        Ok(())
    }
    fn awaiting_rel_put(&mut self, client: &str, packet_id: u16) -> Result<(), StoreError> {
        if let Some(ids) = self.awaiting_rel.get_mut(client) {
            ids.insert(packet_id);
        } else {
            self.awaiting_rel.insert(client.to_string(), BTreeSet::from([packet_id]));
        }
        Ok(())
    }
    fn awaiting_rel_remove(&mut self, client: &str, packet_id: u16) -> Result<(), StoreError> {
        let Some(ids) = self.awaiting_rel.get_mut(client) else { return Ok(()) };
        ids.remove(&packet_id);
        if ids.is_empty() {
            self.awaiting_rel.remove(client);
        }
        Ok(())
    }
    fn awaiting_rel_remove_client(&mut self, client: &str) -> Result<(), StoreError> {
        self.awaiting_rel.remove(client);
        Ok(())
    }
    fn retained_put(&mut self, topic: &str, data: &Bytes) -> Result<(), StoreError> {
        self.retained.insert(topic.to_string(), data.clone());
        Ok(())
    }
    fn retained_remove(&mut self, topic: &str) -> Result<(), StoreError> {
        self.retained.remove(topic);
        Ok(())
    }
    fn next_message_id(&mut self) -> Result<u64, StoreError> {
        Ok(self.next_message_id)
    }
    fn set_next_message_id(&mut self, id: u64) -> Result<(), StoreError> {
        self.next_message_id = id;
        Ok(())
    }
}

impl Store for MemoryStore {
    fn submit(&self, ops: Vec<Op>) -> Result<u64, StoreError> {
        let mut st = self.lock();
        let applied = apply(&mut *st, [ops.as_slice()])?;
        st.ticket += 1;
        let ticket = st.ticket;
        let s = &mut st.stats;
        s.submits += 1;
        s.commits += 1;
        s.ops += applied.ops;
        s.bytes_written += applied.bytes;
        s.skipped_enqueues += applied.skipped_enqueues;
        s.largest_batch_ops = s.largest_batch_ops.max(applied.ops);
        s.largest_batch_submits = 1;
        // Published under the lock so the watch never goes backwards.
        self.committed.store(ticket, Ordering::Release);
        self.watch.send_replace(ticket);
        Ok(ticket)
    }

    fn committed(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    fn backlog(&self) -> usize {
        // Every submit commits before it returns.
        0
    }

    fn commits(&self) -> watch::Receiver<u64> {
        self.watch.subscribe()
    }

    fn load_queue(&self, client: &str, after: u64, limit: usize) -> Result<Vec<QueueEntry>, StoreError> {
        let st = self.lock();
        let Some(q) = st.queue.get(client) else { return Ok(Vec::new()) };
        let Some(from) = after.checked_add(1) else { return Ok(Vec::new()) };
        Ok(q.range(from..)
            .filter_map(|(seq, (msg, meta))| {
                // A dangling entry cannot happen here (ops never create one); skip like the redb store.
                let (_, data) = st.messages.get(msg)?;
                Some((*seq, meta.clone(), *msg, data.clone()))
            })
            .take(limit)
            .collect())
    }

    fn restore(&self) -> Result<Restored, StoreError> {
        let st = self.lock();
        Ok(Restored {
            sessions: st.sessions.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            retained: st.retained.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            next_message_id: st.next_message_id,
            queue_lens: st
                .queue
                .iter()
                .filter_map(|(c, q)| Some((c.clone(), (q.len() as u64, *q.keys().next_back()?))))
                .collect(),
            awaiting_rel: st.awaiting_rel.iter().map(|(c, ids)| (c.clone(), ids.iter().copied().collect())).collect(),
        })
    }

    fn wait(&self, _ticket: u64) -> Result<(), StoreError> {
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn stats(&self) -> StoreStats {
        self.lock().stats.clone()
    }

    fn verify(&self) -> Result<CheckReport, StoreError> {
        let st = self.lock();
        let mut w = Walk::default();
        w.report.format_version = crate::FORMAT_VERSION;
        w.report.next_message_id = st.next_message_id;
        w.report.sessions = st.sessions.len() as u64;
        w.report.retained = st.retained.len() as u64;
        for (id, (rc, data)) in &st.messages {
            w.message(*id, *rc, data.len());
        }
        for (client, q) in &st.queue {
            for (seq, (msg, _)) in q {
                w.entry(client, *seq, *msg);
            }
        }
        for (client, ids) in &st.awaiting_rel {
            let has_session = st.sessions.contains_key(client);
            for id in ids {
                w.awaiting_rel(client, *id, has_session);
            }
        }
        Ok(w.finish().0)
    }
}
