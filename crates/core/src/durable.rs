//! Start-up on the durable store: open it, and before any listener accepts a connection, make every stored
//! session routable again (subscriptions, queue, in-flight state, pending will and expiry timers), end the
//! sessions whose expiry passed while the broker was down (their wills go out), and restore retained messages.

use crate::broker::Broker;
use crate::config::{Config, FsyncMode};
use crate::message::{Delivery, Message};
use crate::persist::{self, Corrupt};
use crate::session::{InflightEntry, Queued, SessionHandle, SessionState};
use crate::subscription::SubEntry;
use crate::will::Will;
use halyard_store::{Fsync, Op, RedbStore, Restored, StoreError};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what} in {path}: run `halyard ctl store check --data-dir {dir}` (and `repair`) to inspect it", what = .source, dir = .dir.display())]
    Record { source: Corrupt, path: PathBuf, dir: PathBuf },
}

/// Queue entries read from the store per request while restoring.
const PAGE: usize = 1000;

impl Broker {
    /// The broker `halyard start` runs: with `durable_sessions.enable` its state lives in the store in
    /// `node.data_dir` and is restored from it here; otherwise it is `Broker::new` (memory only).
    pub fn open(config: Config) -> Result<Arc<Broker>, OpenError> {
        if !config.durable_sessions.enable {
            return Ok(Broker::new(config));
        }
        let dir = PathBuf::from(&config.node.data_dir);
        let fsync = match config.durable_sessions.fsync {
            FsyncMode::Batch => Fsync::Batch,
            FsyncMode::Off => Fsync::Off,
        };
        let (store, restored) = RedbStore::open(&dir, fsync)?;
        let path = store.path().to_path_buf();
        let broker = Broker::with_store(config, store, restored.next_message_id);
        broker.restore(restored).map_err(|source| OpenError::Record { source, path, dir })?;
        Ok(broker)
    }

    /// The deliveries behind stored queue slots (`seqs` ascending), read from the store in order. Entries
    /// submitted but not yet committed are waited for once (a session that drains right after going offline).
    /// A slot whose entry is gone (dropped, or the record is damaged) is skipped and counted.
    pub fn load_stored(&self, handle: &SessionHandle, seqs: &[u64]) -> Vec<Delivery> {
        if seqs.is_empty() {
            return Vec::new();
        }
        // Disk reads: tell a multi-threaded runtime, so it moves other tasks off this worker meanwhile.
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                tokio::task::block_in_place(|| self.load_stored_blocking(handle, seqs))
            }
            _ => self.load_stored_blocking(handle, seqs),
        }
    }

    /// `load_stored` on the caller's thread, for callers already off the async runtime (`spawn_blocking`).
    pub fn load_stored_blocking(&self, handle: &SessionHandle, seqs: &[u64]) -> Vec<Delivery> {
        let mut found = self.read_entries(handle, seqs);
        if found.len() < seqs.len() {
            if let Err(e) = self.store.flush() {
                tracing::error!(error = %e, "cannot flush the store");
            }
            found = self.read_entries(handle, seqs);
        }
        let missing = seqs.len() - found.len();
        if missing > 0 {
            tracing::warn!(client_id = %handle.client_id, missing, "stored queue entries could not be read");
            self.metrics.stored_entries_unreadable.fetch_add(missing as u64, std::sync::atomic::Ordering::Relaxed);
        }
        found
    }

    /// Reads the entries at `seqs` and returns them in the order of `seqs` (queue order, which concurrent
    /// publishers can make differ from position order).
    fn read_entries(&self, handle: &SessionHandle, seqs: &[u64]) -> Vec<Delivery> {
        let (Some(&first), Some(&last)) = (seqs.iter().min(), seqs.iter().max()) else { return Vec::new() };
        let wanted: std::collections::HashSet<u64> = seqs.iter().copied().collect();
        let mut found: HashMap<u64, Delivery> = HashMap::with_capacity(seqs.len());
        let mut after = first.saturating_sub(1);
        while after < last {
            let page = match self.store.load_queue(&handle.client_id, after, seqs.len().max(64)) {
                Ok(p) if !p.is_empty() => p,
                Ok(_) => break,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read a stored queue");
                    break;
                }
            };
            for (seq, meta, msg_id, blob) in page {
                after = seq;
                if !wanted.contains(&seq) {
                    continue;
                }
                let (Ok(meta), Ok(msg)) = (persist::decode_meta(meta), persist::decode_message(msg_id, blob)) else {
                    continue;
                };
                let d = Delivery {
                    msg: Arc::new(msg),
                    qos: meta.qos,
                    retain: meta.retain,
                    sub_ids: meta.sub_ids,
                    shared: meta.shared,
                    seq,
                    commit: 0,
                };
                found.insert(seq, d);
            }
        }
        seqs.iter().filter_map(|s| found.remove(s)).collect()
    }

    fn restore(self: &Arc<Self>, mut r: Restored) -> Result<(), Corrupt> {
        let started = Instant::now();
        for (_, blob) in r.retained {
            // Retained copies are not queue messages: id 0, they are never enqueued from here.
            let m = persist::decode_message(0, blob)?;
            self.retainer.store(&Arc::new(m));
        }
        let retained = self.retainer.len();
        let now_ms = persist::unix_ms_now();
        let zone = self.config.mqtt.clone();
        // Messages queued for many sessions are decoded once and shared, as they were before the restart.
        let mut messages: HashMap<u64, Arc<Message>> = HashMap::new();
        let mut ops = Vec::new();
        let mut due_wills = Vec::new();
        let mut due_wills_now: Vec<(Arc<SessionHandle>, Will)> = Vec::new();
        let (mut restored, mut expired, mut entries) = (0usize, 0usize, 0usize);
        for (client, blob) in r.sessions {
            let rec = persist::decode_session(blob)?;
            let (handle, _) = self.registry.get_or_insert_with(&client, |id, cid| {
                SessionHandle::new(id, cid, zone.max_mqueue_len, zone.mqueue_store_qos0)
            });
            handle.set_expiry_interval(rec.expiry_interval);
            handle.mark_stored();
            // A session that was online when the broker stopped went offline then; we date that to now.
            let offline_since = if rec.disconnected_at_ms == 0 { now_ms } else { rec.disconnected_at_ms };
            let expiry_ms = u64::from(rec.expiry_interval) * 1000;
            let elapsed = now_ms.saturating_sub(offline_since);
            let will: Option<Will> = rec.will.clone().map(Into::into);
            if elapsed >= expiry_ms {
                expired += 1;
                // Published once every session is back, so that restored subscribers get it too.
                if let Some(w) = will {
                    due_wills.push(self.will_message(&handle, w, started));
                }
                self.registry.remove(&handle);
                ops.push(Op::DeleteSession { client: handle.client_id.clone() });
                continue;
            }
            // Inbound QoS 2 ids count from now: their age only matters for the v3 `await_rel_timeout`.
            let restored_at = started;
            // The store's table, plus the list a record written before the table existed may still carry.
            let table_ids = r.awaiting_rel.remove(&client).unwrap_or_default();
            let mut awaiting_rel: BTreeMap<u16, Instant> = table_ids.iter().map(|id| (*id, restored_at)).collect();
            for id in &rec.awaiting_rel {
                if awaiting_rel.insert(*id, restored_at).is_none() {
                    // Moved into the table: the record is rewritten without its list (on reconnect, say), and
                    // the id must survive that. Submitted below, before any listener can rewrite the record.
                    ops.push(Op::PutAwaitingRel { client: handle.client_id.clone(), packet_id: *id });
                }
            }
            let mut state =
                SessionState { subscriptions: rec.subscriptions.clone(), awaiting_rel, ..Default::default() };
            for (filter, sub) in &rec.subscriptions {
                if let Ok(parsed) = halyard_topic::parse_subscription(filter, 0) {
                    let entry = SubEntry { session: handle.clone(), options: sub.options, sub_id: sub.sub_id };
                    self.router.subscribe(parsed.filter(), parsed.group(), entry);
                }
            }
            let mut after = 0;
            loop {
                let page = self.store.load_queue(&client, after, PAGE).map_err(|_| Corrupt { what: "queue" })?;
                if page.is_empty() {
                    break;
                }
                for (seq, meta, msg_id, blob) in page {
                    after = seq;
                    entries += 1;
                    let meta = persist::decode_meta(meta)?;
                    match meta.stage {
                        // Sent before the restart: resent with DUP (or PUBREL) when the client is back [MQTT-4.4.0-1].
                        Some(stage) if meta.packet_id != 0 => {
                            let msg = match messages.get(&msg_id) {
                                Some(m) => m.clone(),
                                None => {
                                    let m = Arc::new(persist::decode_message(msg_id, blob)?);
                                    messages.insert(msg_id, m.clone());
                                    m
                                }
                            };
                            let delivery = Delivery {
                                msg,
                                qos: meta.qos,
                                retain: meta.retain,
                                sub_ids: meta.sub_ids,
                                shared: meta.shared,
                                seq,
                                commit: 0,
                            };
                            state.last_packet_id = state.last_packet_id.max(meta.packet_id);
                            state.inflight.push_back(InflightEntry {
                                packet_id: meta.packet_id,
                                delivery,
                                stage,
                                sent_at: Instant::now(),
                            });
                        }
                        // Not sent yet: it keeps its place; the message stays on disk until the session drains it.
                        _ => {
                            handle.restore_queued(Queued::Stored { seq, qos: meta.qos, shared: meta.shared.is_some() })
                        }
                    }
                }
            }
            handle.set_next_seq(after + 1);
            handle.set_parked(state);
            let generation = handle.generation();
            let left_ms = expiry_ms - elapsed;
            handle.set_offline_since(offline_since);
            // The will delay also counts from the disconnection; one already due goes after the restore.
            let mut will_delay_ms = None;
            if let Some(w) = will {
                let left = (u64::from(w.delay) * 1000).saturating_sub(elapsed).min(left_ms);
                if left == 0 {
                    due_wills_now.push((handle.clone(), w));
                } else {
                    handle.set_pending_will(w);
                    will_delay_ms = Some(left);
                }
            }
            self.arm_offline(&handle, generation, restored_at, will_delay_ms, left_ms);
            restored += 1;
        }
        // Ids left over belong to no stored session (`halyard ctl store check` reports them): drop them, or a
        // later session with that client id would inherit them at the next start.
        for (client, ids) in r.awaiting_rel {
            let client: Arc<str> = Arc::from(client.as_str());
            tracing::warn!(client_id = %client, ids = ids.len(), "store: packet ids awaiting PUBREL without a session; removed");
            ops.extend(ids.into_iter().map(|packet_id| Op::DeleteAwaitingRel { client: client.clone(), packet_id }));
        }
        if let Err(e) = self.submit_ops(ops) {
            tracing::error!(error = %e, "cannot update the store after restoring (expired sessions, packet ids)");
        }
        for (handle, w) in due_wills_now {
            self.publish_will(&handle, w, started);
            self.forget_stored_will(&handle);
        }
        for m in due_wills {
            self.publish(m);
        }
        tracing::info!(
            sessions = restored,
            expired,
            queued = entries,
            retained,
            ms = started.elapsed().as_millis() as u64,
            "restored durable state"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::persist::SessionRecord;
    use halyard_store::Store;

    /// A record written before the store's awaiting_rel table still lists its ids: restore takes them with the
    /// table's, and writes the legacy ones into the table, since records are rewritten without a list now.
    #[tokio::test]
    async fn restore_takes_legacy_record_ids_and_table_ids_and_moves_legacy_ones_into_the_table() {
        let dir = std::env::temp_dir().join(format!("halyard-core-awaiting-rel-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let (store, _) = RedbStore::open(&dir, Fsync::Batch).expect("open");
            let rec = SessionRecord {
                expiry_interval: 3600,
                disconnected_at_ms: persist::unix_ms_now(),
                awaiting_rel: vec![3, 5],
                ..Default::default()
            };
            let rel = |client: &str, packet_id| Op::PutAwaitingRel { client: Arc::from(client), packet_id };
            let data = persist::encode_session(&rec);
            store
                .submit(vec![
                    Op::PutSession { client: Arc::from("c"), data },
                    rel("c", 5),
                    rel("c", 9),
                    rel("ghost", 1),
                ])
                .expect("submit");
            store.flush().expect("flush");
        }
        let mut config = Config::default();
        config.node.data_dir = dir.display().to_string();
        config.durable_sessions.enable = true;
        let broker = Broker::open(config).expect("broker opens");
        let handle = broker.registry.get("c").expect("session restored");
        let state = handle.take_parked().expect("parked state");
        assert_eq!(state.awaiting_rel_ids(), vec![3, 5, 9], "union of the record's list and the table");
        broker.store.flush().expect("flush");
        let r = broker.store.restore().expect("restore");
        assert_eq!(r.awaiting_rel.get("c"), Some(&vec![3, 5, 9]), "legacy ids are in the table now");
        assert!(!r.awaiting_rel.contains_key("ghost"), "ids without a session are removed: {:?}", r.awaiting_rel);
        drop(broker);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
