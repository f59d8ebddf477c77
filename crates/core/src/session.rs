//! A session: the part that lives in the registry ([`SessionHandle`], shared) and the part owned by exactly one
//! connection task at a time ([`SessionState`], moved in at connect and parked back at disconnect).
//!
//! The mqueue is the handle's queue: the router pushes into it whether or not a connection is attached, and the
//! owning connection drains it as its inflight window allows. Because messages never go to the connection
//! directly, a takeover cannot lose one: the queue simply outlives the old owner.

use crate::hooks::DropReason;
use crate::message::Delivery;
pub use crate::message::Stage;
pub use crate::subscription::SubscriptionRecord;
use halyard_codec::QoS;
use halyard_store::Op;
use parking_lot::Mutex;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{oneshot, Notify};

pub type SessionId = u64;

/// One mqueue slot: a delivery in memory, or a stored delivery whose message stays on disk until the session
/// drains it (an offline persistent session's backlog does not occupy RAM beyond this slot).
#[derive(Debug, Clone)]
pub enum Queued {
    Ready(Delivery),
    /// `shared`: it came through a shared subscription, so if this session ends it goes to another member.
    Stored {
        seq: u64,
        qos: QoS,
        shared: bool,
    },
}

impl Queued {
    fn qos(&self) -> QoS {
        match self {
            Queued::Ready(d) => d.qos,
            Queued::Stored { qos, .. } => *qos,
        }
    }

    fn seq(&self) -> u64 {
        match self {
            Queued::Ready(d) => d.seq,
            Queued::Stored { seq, .. } => *seq,
        }
    }
}

/// Inside the mqueue, consecutive stored positions collapse into one run, so an offline session's backlog (whose
/// positions are consecutive) costs a few entries whatever its length.
#[derive(Debug)]
enum Slot {
    Ready(Delivery),
    /// Positions `first .. first + len`, all QoS 1/2 (only those are stored), all shared or all not. `commit`:
    /// the store ticket the newest of them waits for (0: all committed), so draining the run never waits on
    /// the disk for an entry that is not there yet.
    StoredRun {
        first: u64,
        len: u64,
        shared: bool,
        commit: u64,
    },
}

/// The mqueue: slots in order, and how many messages they hold.
#[derive(Debug, Default)]
struct MQueue {
    slots: VecDeque<Slot>,
    len: usize,
}

impl MQueue {
    fn len(&self) -> usize {
        self.len
    }

    fn push_ready(&mut self, d: Delivery) {
        self.slots.push_back(Slot::Ready(d));
        self.len += 1;
    }

    fn push_stored(&mut self, seq: u64, shared: bool, commit: u64) {
        self.len += 1;
        if let Some(Slot::StoredRun { first, len, shared: s, commit: c }) = self.slots.back_mut() {
            if *first + *len == seq && *s == shared {
                *len += 1;
                *c = (*c).max(commit);
                return;
            }
        }
        self.slots.push_back(Slot::StoredRun { first: seq, len: 1, shared, commit });
    }

    fn push(&mut self, q: Queued) {
        match q {
            Queued::Ready(d) => self.push_ready(d),
            Queued::Stored { seq, shared, .. } => self.push_stored(seq, shared, 0),
        }
    }

    /// The store ticket the front slot waits for (0: none).
    fn front_commit(&self) -> u64 {
        match self.slots.front() {
            Some(Slot::Ready(d)) => d.commit,
            Some(Slot::StoredRun { commit, .. }) => *commit,
            None => 0,
        }
    }

    fn front_qos(&self) -> Option<QoS> {
        match self.slots.front()? {
            Slot::Ready(d) => Some(d.qos),
            Slot::StoredRun { .. } => Some(QoS::AtLeastOnce),
        }
    }

    fn pop_front(&mut self) -> Option<Queued> {
        let popped = match self.slots.front_mut()? {
            Slot::Ready(_) => match self.slots.pop_front() {
                Some(Slot::Ready(d)) => Queued::Ready(d),
                _ => return None,
            },
            Slot::StoredRun { first, len, shared, .. } => {
                let q = Queued::Stored { seq: *first, qos: QoS::AtLeastOnce, shared: *shared };
                *first += 1;
                *len -= 1;
                if *len == 0 {
                    self.slots.pop_front();
                }
                q
            }
        };
        self.len -= 1;
        Some(popped)
    }
}

/// What queueing a delivery asks of its publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The session's queue is past its high-water mark; nothing holds the publisher (QoS 0, or the session
    /// stalled), but it should let the subscriber run before reading more.
    Behind,
    /// Online, QoS 1/2, past the high-water mark: the publisher holds back until the queue drains.
    HoldBack,
}

/// What another task may ask of the connection task that owns a session.
#[derive(Debug)]
pub enum Control {
    /// A new connection with the same client id arrived. The owner stops reading, parks its state in the handle
    /// (unless the session ends: `resume == false`), sends DISCONNECT 0x8E, closes, then answers on `done`.
    Takeover { resume: bool, done: oneshot::Sender<()> },
}

/// The registry's view of a session: shared by the router (which pushes deliveries), the registry, and the
/// connection that owns it.
#[derive(Debug)]
pub struct SessionHandle {
    pub id: SessionId,
    pub client_id: Arc<str>,
    queue: Mutex<MQueue>,
    max_queue_len: AtomicUsize,
    store_qos0: AtomicBool,
    notify: Notify,
    /// Woken when the queue falls to the low-water mark or the session goes offline: publishers held back by
    /// this session's backlog wait on it.
    drained: Notify,
    online: AtomicBool,
    /// Set when a publisher's wait for this session ran out (`mark_stalled`): a subscriber that does not drain in
    /// that time is stuck rather than slow, so publishers stop waiting for it and its mqueue's drop policy
    /// applies instead, until it drains to the low-water mark again.
    stalled: AtomicBool,
    removed: AtomicBool,
    /// Bumped at every change of owner, so a timer set for one offline period cannot act in the next.
    generation: AtomicU64,
    /// Session Expiry Interval in seconds (0: ends with the connection). Sessions with an expiry are persistent:
    /// their QoS 1/2 deliveries are kept in the store.
    expiry_interval: AtomicU32,
    /// Next position in the durable queue (positions start at 1; 0 means "not stored").
    next_seq: AtomicU64,
    /// Whether a record of this session was ever written to the store (so its end must delete it).
    stored: AtomicBool,
    /// When the session last went offline (ms since the epoch), as its stored record says.
    offline_since: AtomicU64,
    /// Boxed, like the pending will: only offline sessions have one, and every online connection's handle
    /// would otherwise carry the space (per-connection memory, docs/performance.md).
    parked: Mutex<Option<Box<SessionState>>>,
    /// A will waiting for its delay while the session is offline. Whatever ends the session first (the delay,
    /// the session's expiry, a clean start) takes and publishes it; a resume cancels it.
    pending_will: Mutex<Option<Box<crate::will::Will>>>,
    /// How to reach the owning connection; used at most once (a takeover), hence a oneshot.
    owner: Mutex<Option<oneshot::Sender<Control>>>,
    /// Serialises connects of the same client id, so a takeover is one step even when clients race.
    pub connect_lock: tokio::sync::Mutex<()>,
}

impl SessionHandle {
    pub fn new(id: SessionId, client_id: Arc<str>, max_queue_len: usize, store_qos0: bool) -> SessionHandle {
        SessionHandle {
            id,
            client_id,
            queue: Mutex::new(MQueue::default()),
            max_queue_len: AtomicUsize::new(max_queue_len),
            store_qos0: AtomicBool::new(store_qos0),
            notify: Notify::new(),
            drained: Notify::new(),
            online: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            expiry_interval: AtomicU32::new(0),
            next_seq: AtomicU64::new(1),
            stored: AtomicBool::new(false),
            offline_since: AtomicU64::new(0),
            parked: Mutex::new(None),
            pending_will: Mutex::new(None),
            owner: Mutex::new(None),
            connect_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Queues a delivery; drop-oldest when the mqueue is full. Every drop is counted and logged at debug.
    /// Returns `HoldBack` when the publisher should hold back: the session is online, the delivery is QoS 1/2
    /// and the queue is past its high-water mark. Offline sessions never hold publishers back (their mqueue
    /// drops the oldest instead), and neither does QoS 0: an online queue past the mark says `Behind` then, and
    /// the publisher lets the subscriber run before it reads on.
    ///
    /// For a persistent session a QoS 1/2 delivery of a stored message (`msg.id != 0`) gets its queue position
    /// and an `Enqueue` in `ops`; dropping a stored entry adds its `Dequeue`. The caller submits `ops`.
    /// Drops go through `broker.dropped` (counter and `message.dropped`), after the queue lock is released.
    pub fn push(&self, mut d: Delivery, broker: &crate::Broker, ops: &mut Vec<Op>) -> Pushed {
        let online = self.is_online();
        if d.qos == QoS::AtMostOnce && !online && !self.store_qos0.load(Ordering::Relaxed) {
            tracing::debug!(client_id = %self.client_id, topic = %d.msg.topic, "QoS 0 message not queued for offline session");
            broker.dropped(Some(&d.msg), Some(&self.client_id), DropReason::Qos0Offline);
            return Pushed::Queued;
        }
        let mut evicted = None;
        let max = self.max_queue_len.load(Ordering::Relaxed);
        let holds_back = online && d.qos != QoS::AtMostOnce;
        let congested = {
            let mut q = self.queue.lock();
            // Under the queue lock, so queue order and store order agree (when the caller did not reserve).
            self.reserve(&mut d, ops);
            if q.len() >= max {
                if let Some(old) = q.pop_front() {
                    if old.seq() != 0 {
                        ops.push(Op::Dequeue { client: self.client_id.clone(), seq: old.seq() });
                    }
                    tracing::debug!(client_id = %self.client_id, seq = old.seq(), max, "mqueue full: oldest message dropped");
                    evicted = Some(old);
                }
            }
            // Offline and stored: the store holds it; the queue keeps its place only.
            if !online && d.seq != 0 {
                q.push_stored(d.seq, d.shared.is_some(), d.commit);
            } else {
                q.push_ready(d);
            }
            if !online || q.len() < high_water(max) {
                Pushed::Queued
            } else if holds_back && !self.stalled.load(Ordering::Relaxed) {
                Pushed::HoldBack
            } else {
                Pushed::Behind
            }
        };
        if let Some(old) = evicted {
            // Outside the lock: a callback may look at this session.
            let msg = match &old {
                Queued::Ready(d) => Some(&*d.msg),
                Queued::Stored { .. } => None,
            };
            broker.dropped(msg, Some(&self.client_id), DropReason::QueueFull);
        }
        self.notify.notify_one();
        congested
    }

    /// Gives a QoS 1/2 delivery of a stored message (`msg.id != 0`) to a persistent session its queue position
    /// and `Enqueue` op, unless it has one. Done before `push` by callers that must submit the entry before the
    /// delivery becomes visible to the session's connection.
    pub fn reserve(&self, d: &mut Delivery, ops: &mut Vec<Op>) {
        if d.seq == 0 && d.qos != QoS::AtMostOnce && d.msg.id != 0 && self.is_persistent() {
            d.seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            ops.push(Op::Enqueue {
                client: self.client_id.clone(),
                seq: d.seq,
                msg: d.msg.id,
                meta: crate::persist::encode_meta(&crate::persist::EntryMeta::queued(d)),
            });
        }
    }

    /// A stored delivery was sent as `packet_id` at `stage`: its entry remembers that, so after a restart it is
    /// resent as the same packet (DUP) or continued with PUBREL.
    pub fn record_sent(&self, d: &Delivery, packet_id: u16, stage: Stage, writes: &mut crate::Writes) {
        if d.seq != 0 {
            let meta = crate::persist::encode_meta(&crate::persist::EntryMeta::sent(d, packet_id, stage));
            writes.push(Op::UpdateEntry { client: self.client_id.clone(), seq: d.seq, meta });
        }
    }

    /// A delivery is complete (acknowledged, expired or dropped): its stored entry goes.
    pub fn record_done(&self, d: &Delivery, writes: &mut crate::Writes) {
        if d.seq != 0 {
            writes.push(Op::Dequeue { client: self.client_id.clone(), seq: d.seq });
        }
    }

    /// Wakes the owning connection as a new delivery would (it then sees whatever changed, e.g. a shutdown).
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// True while the queue is above its low-water mark and the session is online (and not stalled).
    pub fn is_congested(&self) -> bool {
        !self.stalled.load(Ordering::Relaxed) && self.above_low_water(&self.queue.lock())
    }

    /// Online with more queued than the low-water mark (the caller holds the queue lock).
    fn above_low_water(&self, q: &MQueue) -> bool {
        self.is_online() && q.len() > low_water(self.max_queue_len.load(Ordering::Relaxed))
    }

    /// A publisher waited the longest it may for this session: if it is still congested, stop holding anyone
    /// back for it (every waiter is released now) until it drains. Returns whether it was newly marked.
    pub fn mark_stalled(&self) -> bool {
        {
            // Under the queue lock, as `take` clears the flag: a drain between the check and the set would
            // otherwise leave a drained session marked stalled.
            let q = self.queue.lock();
            if !self.above_low_water(&q) || self.stalled.swap(true, Ordering::AcqRel) {
                return false;
            }
        }
        self.drained.notify_waiters();
        true
    }

    /// Resolves once the session is no longer congested (drained to the low-water mark, or offline).
    pub async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            // Registered before the check, so a drain between the check and the await is not missed.
            notified.as_mut().enable();
            if !self.is_congested() {
                return;
            }
            notified.await;
        }
    }

    /// Pops deliveries in order into `out`: QoS 0 ones freely, QoS 1/2 ones only while `qos12_room` lasts, and at
    /// most `max` in all. Stops at the first QoS 1/2 delivery that does not fit, so order is kept, and at the
    /// first whose store ticket is above `committed` (its publish may still be refused); returns true then.
    pub fn take(&self, mut qos12_room: usize, max: usize, committed: u64, out: &mut Vec<Queued>) -> bool {
        let mut q = self.queue.lock();
        let mut gated = false;
        while out.len() < max {
            if q.front_commit() > committed {
                gated = true;
                break;
            }
            match q.front_qos() {
                Some(qos) if qos != QoS::AtMostOnce && qos12_room == 0 => break,
                Some(_) => {}
                None => break,
            }
            if let Some(d) = q.pop_front() {
                if d.qos() != QoS::AtMostOnce {
                    qos12_room -= 1;
                }
                out.push(d);
            }
        }
        if !out.is_empty() && q.len() <= low_water(self.max_queue_len.load(Ordering::Relaxed)) {
            self.stalled.store(false, Ordering::Relaxed);
            self.drained.notify_waiters();
        }
        gated
    }

    pub fn queue_len(&self) -> usize {
        self.queue.lock().len()
    }

    /// Removes and returns the queued deliveries (in memory) that came through a shared subscription.
    pub fn take_shared_queued(&self) -> Vec<Delivery> {
        let mut q = self.queue.lock();
        let is_shared = |s: &Slot| matches!(s, Slot::Ready(d) if d.shared.is_some());
        if !q.slots.iter().any(is_shared) {
            return Vec::new();
        }
        let (shared, own): (VecDeque<Slot>, VecDeque<Slot>) = q.slots.drain(..).partition(is_shared);
        q.slots = own;
        q.len -= shared.len();
        shared
            .into_iter()
            .filter_map(|s| match s {
                Slot::Ready(d) => Some(d),
                Slot::StoredRun { .. } => None,
            })
            .collect()
    }

    /// Empties the queue (the session ended): the deliveries in memory, the positions of stored shared ones
    /// (to hand to another member), and how many other slots were on disk only (the session's DeleteSession
    /// removes those).
    pub fn clear_queue(&self) -> (Vec<Delivery>, Vec<u64>, usize) {
        let (mut ready, mut shared, mut on_disk) = (Vec::new(), Vec::new(), 0);
        let mut q = self.queue.lock();
        q.len = 0;
        for slot in q.slots.drain(..) {
            match slot {
                Slot::Ready(d) => ready.push(d),
                Slot::StoredRun { first, len, shared: true, .. } => shared.extend(first..first + len),
                Slot::StoredRun { len, .. } => on_disk += len as usize,
            }
        }
        drop(q);
        // Publishers held back by this session's backlog have nothing left to wait for.
        self.drained.notify_waiters();
        (ready, shared, on_disk)
    }

    /// The session went offline: stored deliveries give their memory back and keep their place as slots.
    pub(crate) fn spill(&self) {
        let mut q = self.queue.lock();
        let mut spilled = MQueue::default();
        while let Some(slot) = q.pop_front() {
            match slot {
                Queued::Ready(d) if d.seq != 0 => spilled.push_stored(d.seq, d.shared.is_some(), d.commit),
                other => spilled.push(other),
            }
        }
        *q = spilled;
    }

    /// Resolves when something was pushed since the last call (a permit is stored, so no wake-up is lost).
    pub async fn notified(&self) {
        self.notify.notified().await
    }

    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Acquire)
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    pub(crate) fn mark_removed(&self) {
        self.removed.store(true, Ordering::Release);
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn set_offline_since(&self, ms: u64) {
        self.offline_since.store(ms, Ordering::Relaxed);
    }

    pub(crate) fn offline_since(&self) -> u64 {
        self.offline_since.load(Ordering::Relaxed)
    }

    /// The subscriptions of the parked (offline) state, to rewrite its record.
    pub(crate) fn parked_subscription_records(&self) -> Option<BTreeMap<String, SubscriptionRecord>> {
        self.parked.lock().as_ref().map(|s| s.subscriptions.clone())
    }

    pub(crate) fn mark_stored(&self) {
        self.stored.store(true, Ordering::Relaxed);
    }

    pub(crate) fn was_stored(&self) -> bool {
        self.stored.load(Ordering::Relaxed)
    }

    pub fn is_persistent(&self) -> bool {
        self.expiry_interval() > 0
    }

    /// Restores the queue position counter (start-up).
    pub(crate) fn set_next_seq(&self, next: u64) {
        self.next_seq.store(next.max(1), Ordering::Relaxed);
    }

    /// Puts a restored slot back in the queue without touching the store (start-up).
    /// Puts slots a connection took but could not deliver (it closed while their messages were being read) back
    /// at the front of the queue, in their order.
    pub fn requeue_front(&self, slots: Vec<Queued>) {
        let mut q = self.queue.lock();
        for slot in slots.into_iter().rev() {
            q.len += 1;
            match slot {
                Queued::Ready(d) => q.slots.push_front(Slot::Ready(d)),
                Queued::Stored { seq, shared, .. } => {
                    q.slots.push_front(Slot::StoredRun { first: seq, len: 1, shared, commit: 0 })
                }
            }
        }
        drop(q);
        self.notify.notify_one();
    }

    pub(crate) fn restore_queued(&self, slot: Queued) {
        self.queue.lock().push(slot);
    }

    pub(crate) fn set_parked(&self, state: SessionState) {
        *self.parked.lock() = Some(Box::new(state));
    }

    pub fn expiry_interval(&self) -> u32 {
        self.expiry_interval.load(Ordering::Relaxed)
    }

    pub fn set_expiry_interval(&self, secs: u32) {
        self.expiry_interval.store(secs, Ordering::Relaxed);
    }

    /// Applies the connecting listener's zone limits.
    pub fn set_queue_limits(&self, max_len: usize, store_qos0: bool) {
        self.max_queue_len.store(max_len, Ordering::Relaxed);
        self.store_qos0.store(store_qos0, Ordering::Relaxed);
    }

    /// Makes `control` the owner: the session is online from now on.
    pub(crate) fn attach(&self, control: oneshot::Sender<Control>) {
        *self.owner.lock() = Some(control);
        self.generation.fetch_add(1, Ordering::AcqRel);
        // A new owner starts with publishers held back for it again, whatever its previous owner did.
        self.stalled.store(false, Ordering::Relaxed);
        self.online.store(true, Ordering::Release);
    }

    pub(crate) fn take_owner(&self) -> Option<oneshot::Sender<Control>> {
        self.owner.lock().take()
    }

    /// The owning connection gives the session back (disconnect or takeover). Returns the generation it left at.
    pub(crate) fn detach(&self, state: Option<SessionState>) -> u64 {
        *self.parked.lock() = state.map(Box::new);
        *self.owner.lock() = None;
        self.online.store(false, Ordering::Release);
        self.stalled.store(false, Ordering::Relaxed);
        // Offline sessions hold nobody back.
        self.drained.notify_waiters();
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    pub(crate) fn set_pending_will(&self, w: crate::will::Will) {
        *self.pending_will.lock() = Some(Box::new(w));
    }

    pub(crate) fn take_pending_will(&self) -> Option<crate::will::Will> {
        self.pending_will.lock().take().map(|w| *w)
    }

    pub(crate) fn take_parked(&self) -> Option<SessionState> {
        self.parked.lock().take().map(|s| *s)
    }

    pub(crate) fn parked_subscriptions(&self) -> Vec<String> {
        self.parked.lock().as_ref().map(|s| s.subscriptions.keys().cloned().collect()).unwrap_or_default()
    }
}

/// Queue length at which an online session holds QoS 1/2 publishers back: small, so that backpressure, not
/// a deep queue, absorbs a burst (a deep queue is seconds of latency), and below `max_queue_len`, so that an
/// online session's acknowledged messages are not dropped.
///
/// At most 100: measured with 50 publishers into one subscriber (`halyard bench fanin`, broker on one core),
/// a mark of 500 gave 449k msg/s of 1 KB with p99 74 ms and the broker 13 % idle; 100 gave 532k msg/s, p99
/// 31 ms, the broker busy. Shorter hold cycles release fewer publishers at once, so the subscriber's
/// connection waits behind fewer of them to get its acknowledgements read and its window refilled.
fn high_water(max_queue_len: usize) -> usize {
    (max_queue_len / 2).clamp(1, 100)
}

fn low_water(max_queue_len: usize) -> usize {
    high_water(max_queue_len) / 2
}

#[derive(Debug, Clone)]
pub struct InflightEntry {
    pub packet_id: u16,
    pub delivery: Delivery,
    pub stage: Stage,
    pub sent_at: Instant,
}

/// The session state a connection owns while it is attached.
#[derive(Debug, Default)]
pub struct SessionState {
    /// Keyed by the filter exactly as subscribed (including any `$share/<group>/` prefix).
    pub subscriptions: BTreeMap<String, SubscriptionRecord>,
    /// Outbound QoS 1/2 messages in send order.
    pub inflight: VecDeque<InflightEntry>,
    /// Inbound QoS 2 packet ids whose PUBREL has not arrived, with when they arrived.
    pub awaiting_rel: BTreeMap<u16, Instant>,
    pub last_packet_id: u16,
    /// `inflight` holds packet ids in the order `next_packet_id` gave them out (a first send pushes at the back,
    /// acknowledgements remove from anywhere): then a new id can only collide with the oldest entry. Cleared by
    /// whatever puts entries in another order (a restore, a shared redispatch); set again when `inflight`
    /// empties. `false` only costs a scan.
    pub ids_in_order: bool,
}

impl SessionState {
    /// Inbound QoS 2 ids awaiting PUBREL, ascending.
    pub fn awaiting_rel_ids(&self) -> Vec<u16> {
        let mut ids: Vec<u16> = self.awaiting_rel.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The next free packet id, or `None` when all 65535 are in flight.
    /// A packet id no in-flight delivery uses, the one after the last given out if it is free. O(1) while
    /// `ids_in_order` holds (a scan of a 1,000-message window per delivery was a fifth of fan-in's CPU).
    pub fn next_packet_id(&mut self) -> Option<u16> {
        if self.inflight.is_empty() {
            self.ids_in_order = true;
        }
        let in_order = self.ids_in_order && self.inflight.back().is_none_or(|e| e.packet_id == self.last_packet_id);
        if in_order {
            let next = self.last_packet_id.checked_add(1).unwrap_or(1);
            // The ids in flight lie between the oldest entry's and the last one given out (cyclically), so the
            // next one is taken only if the window already spans every id.
            if self.inflight.front().is_none_or(|e| e.packet_id != next) {
                self.last_packet_id = next;
                return Some(next);
            }
        }
        // Ids given out by the scan may skip some in flight, and the order above no longer says where they are.
        self.ids_in_order = false;
        for _ in 0..u16::MAX {
            self.last_packet_id = self.last_packet_id.checked_add(1).unwrap_or(1);
            let id = self.last_packet_id;
            if !self.inflight.iter().any(|e| e.packet_id == id) {
                return Some(id);
            }
        }
        None
    }

    pub fn inflight_position(&self, packet_id: u16) -> Option<usize> {
        self.inflight.iter().position(|e| e.packet_id == packet_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(packet_id: u16) -> InflightEntry {
        let msg = std::sync::Arc::new(crate::message::Message {
            id: 0,
            topic: halyard_codec::Utf8::from("t"),
            payload: bytes::Bytes::new(),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: None,
            publisher: None,
            expires_at: None,
        });
        let delivery = Delivery {
            msg,
            qos: QoS::AtLeastOnce,
            retain: false,
            sub_ids: Vec::new(),
            shared: None,
            seq: 0,
            commit: 0,
        };
        InflightEntry { packet_id, delivery, stage: Stage::AwaitPubAck, sent_at: Instant::now() }
    }

    #[test]
    fn packet_ids_are_never_given_twice_while_in_flight() {
        // [MQTT-2.2.1-3] a new PUBLISH must use an id not currently in use, across the wrap at 65535, with
        // acknowledgements out of order, and after entries were put back out of order (a restore).
        let mut s = SessionState::default();
        let next_expected_free = |s: &SessionState, id: u16| !s.inflight.iter().any(|e| e.packet_id == id);
        s.last_packet_id = 65_530;
        for round in 0..3_000u32 {
            let id = s.next_packet_id().expect("an id");
            assert!(next_expected_free(&s, id), "id {id} given twice (round {round})");
            assert_ne!(id, 0);
            s.inflight.push_back(entry(id));
            // Acknowledge out of order: keep a long-lived oldest entry and drop from the middle.
            if s.inflight.len() > 50 {
                s.inflight.remove(1 + (round as usize % 40));
            }
        }
        // Out of order, as a restore may leave them: the scan must be used.
        let mut s = SessionState { last_packet_id: 10, ..Default::default() };
        for id in [12u16, 11, 14] {
            s.inflight.push_back(entry(id));
        }
        let given: Vec<u16> = (0..3).map(|_| s.next_packet_id().expect("an id")).collect();
        assert_eq!(given, vec![13, 15, 16]);
        // The oldest entries outlived a whole cycle of ids (5, 6 and 8 are still in flight after 65,535 more
        // were given out): the id after the last collides with the oldest, the scan skips 5 and 6, and what
        // follows is scanned too, since the order no longer tells where old ids are (8 is skipped as well).
        let mut s = SessionState { last_packet_id: 4, ids_in_order: true, ..Default::default() };
        for id in [5u16, 6, 8, 3, 4] {
            s.inflight.push_back(entry(id));
        }
        let id = s.next_packet_id().expect("an id");
        assert_eq!(id, 7);
        s.inflight.push_back(entry(id));
        s.inflight.remove(3);
        assert_eq!(s.next_packet_id(), Some(9));
        assert!(!s.ids_in_order);
    }

    #[test]
    fn consecutive_stored_positions_share_one_slot_and_pop_in_order() {
        let mut q = MQueue::default();
        for seq in 1..=1000 {
            q.push_stored(seq, false, 0);
        }
        q.push_stored(1002, false, 0); // a gap starts a new run
        q.push_stored(1003, true, 0); // so does a change of `shared`
        assert_eq!(q.len(), 1002);
        assert_eq!(q.slots.len(), 3, "1000 consecutive positions take one slot");
        let mut seqs = Vec::new();
        while let Some(Queued::Stored { seq, .. }) = q.pop_front() {
            seqs.push(seq);
        }
        let expected: Vec<u64> = (1..=1000).chain([1002, 1003]).collect();
        assert_eq!(seqs, expected);
        assert_eq!(q.len(), 0);
        assert!(q.slots.is_empty());
    }
}
