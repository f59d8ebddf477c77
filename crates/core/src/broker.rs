//! The broker: registry, router, retainer and counters, and the session life cycle that ties them together
//! (attach with takeover, detach with will and expiry, the end of a session).

use crate::config::{Config, MqttConfig, SharedStrategy};
use crate::hooks::{DropReason, Dropped, Fold, Hooks, TerminateReason};
use crate::message::Stage;
use crate::message::{Delivery, Message};
use crate::metrics::Metrics;
use crate::persist::{self, SessionRecord};
use crate::registry::Registry;
use crate::retainer::Retainer;
use crate::router::Router;
use crate::session::{Control, Pushed, SessionHandle, SessionState};
use crate::subscription::SubEntry;
use crate::timers::{Due, OfflineTimers};
/// Kept here too: the will is what a connection hands the broker when it detaches.
pub use crate::will::Will;
use crate::writes::Writes;
use halyard_codec::{QoS, SubscriptionOptions};
use halyard_store::{MemoryStore, Op, Store, StoreError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How long a new connection waits for the old owner of its session to hand it over.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(10);
/// When an expiring session is held by a connect in progress, its expiry is looked at again this much later.
const EXPIRY_RETRY: Duration = Duration::from_millis(50);

pub struct Broker {
    pub config: Arc<Config>,
    pub registry: Registry,
    pub router: Router,
    pub retainer: Retainer,
    pub metrics: Metrics,
    /// The extension points (`client.*`, `session.*`, `message.*`); register on an `Arc<Broker>`.
    pub hooks: Hooks,
    /// Where persistent sessions, their queues and retained messages are kept (in memory when durability is off).
    pub store: Arc<dyn Store>,
    next_message_id: AtomicU64,
    /// Will-delay and expiry deadlines of offline sessions, driven through `next_timeout`/`handle_timeout`.
    timers: OfflineTimers,
    /// Retained messages whose store commit has not been seen yet, in ticket order: they become retained in
    /// memory only once committed (`settle_committed`), so a publish refused for a failed commit is not retained.
    pending_retained: parking_lot::Mutex<std::collections::VecDeque<(u64, Arc<Message>)>>,
    /// `pending_retained.len()`, read without the lock on every settle.
    pending_retained_len: std::sync::atomic::AtomicUsize,
}

/// The outcome of routing one client PUBLISH.
#[derive(Debug)]
pub struct Published {
    /// Sessions the message went to.
    pub matched: usize,
    /// The store ticket to wait for before acknowledging (0: nothing was stored), or why it cannot be stored.
    pub ticket: Result<u64, StoreError>,
    /// A subscriber's queue is past its high-water mark (`Pushed::Behind`): the publisher should let it run.
    pub behind: bool,
}

/// A session handed to a connection.
#[derive(Debug)]
pub struct Attached {
    pub handle: Arc<SessionHandle>,
    pub state: SessionState,
    /// CONNACK's Session Present.
    pub present: bool,
}

/// Why a connection gives its session back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetachReason {
    /// The network connection ended (DISCONNECT, error, keepalive, shutdown).
    Closed,
    /// Another connection took the session over; `resume` is false when it asked for a clean start.
    TakenOver { resume: bool },
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("sessions", &self.registry.len()).finish_non_exhaustive()
    }
}

impl Broker {
    /// A broker whose state lives in memory only (tests, benchmarks, `durable_sessions.enable = false`).
    /// `Broker::open` is what `halyard start` uses.
    pub fn new(config: Config) -> Arc<Broker> {
        Broker::with_store(config, Arc::new(MemoryStore::new()), 1)
    }

    /// A broker on `store`, with message ids starting at `next_message_id` (at least 1). Nothing is restored
    /// from the store: `Broker::open` (the binary) restores first, and tests use this directly, e.g. on a
    /// `halyard_store::testing::FaultyStore` to hold back or fail commits.
    pub fn with_store(config: Config, store: Arc<dyn Store>, next_message_id: u64) -> Arc<Broker> {
        Arc::new(Broker {
            config: Arc::new(config),
            registry: Registry::default(),
            router: Router::default(),
            retainer: Retainer::default(),
            metrics: Metrics::default(),
            hooks: Hooks::default(),
            store,
            next_message_id: AtomicU64::new(next_message_id.max(1)),
            timers: OfflineTimers::default(),
            pending_retained: Default::default(),
            pending_retained_len: Default::default(),
        })
    }

    /// A fresh id for a message that may be stored.
    pub fn new_message_id(&self) -> u64 {
        self.next_message_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A message that will not reach `client_id` (or anyone, when `None`): counted under `reason` and
    /// reported to `message.dropped`. Every drop in the broker goes through here.
    pub fn dropped(&self, message: Option<&Message>, client_id: Option<&str>, reason: DropReason) {
        Metrics::inc(reason.counter(&self.metrics));
        self.report_dropped(message, client_id, reason);
    }

    /// `message.dropped` only, for a drop already counted elsewhere (the router counts `NoSubscribers`).
    fn report_dropped(&self, message: Option<&Message>, client_id: Option<&str>, reason: DropReason) {
        if !self.hooks.message_dropped.is_empty() {
            let e = Dropped { message, client_id, reason };
            self.hooks.message_dropped.each(|f| f(&e));
        }
    }

    /// `n` messages of `client_id` that only the store holds, dropped for `reason`.
    fn dropped_on_disk(&self, client_id: &str, n: u64, reason: DropReason) {
        reason.counter(&self.metrics).fetch_add(n, Ordering::Relaxed);
        if !self.hooks.message_dropped.is_empty() {
            for _ in 0..n {
                self.report_dropped(None, Some(client_id), reason);
            }
        }
    }

    /// True while the store's writer is far behind (`halyard_store::BACKLOG_HIGH` submits not committed):
    /// publishers that wait for commits should stop reading until it catches up.
    pub fn store_congested(&self) -> bool {
        self.store.backlog() >= halyard_store::BACKLOG_HIGH
    }

    /// Submits the store work a connection gathered (none: ticket 0, nothing to wait for); its ticket is
    /// committed once `committed() >= ticket`.
    pub fn submit(&self, writes: Writes) -> Result<u64, StoreError> {
        self.submit_ops(writes.0)
    }

    pub(crate) fn submit_ops(&self, ops: Vec<Op>) -> Result<u64, StoreError> {
        if ops.is_empty() {
            return Ok(0);
        }
        self.store.submit(ops)
    }

    /// The highest committed store ticket.
    pub fn committed(&self) -> u64 {
        self.store.committed()
    }

    /// Carries `committed()` after each commit; closed (`Err` on wait) once the store failed.
    pub fn commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.store.commits()
    }

    /// True once a store commit failed: nothing above `committed()` will ever commit.
    pub fn store_unavailable(&self) -> bool {
        self.store.is_unavailable()
    }

    /// Submits operations nobody waits for; a failure is logged (the store refuses new work from then on).
    fn submit_logged(&self, ops: Vec<Op>) {
        if let Err(e) = self.submit_ops(ops) {
            tracing::error!(error = %e, "cannot write to the store");
        }
    }

    /// The store record of a session as it is now.
    pub fn session_record(
        &self,
        handle: &SessionHandle,
        state: &SessionState,
        will: Option<&Will>,
        offline: bool,
    ) -> Op {
        let rec = SessionRecord {
            expiry_interval: handle.expiry_interval(),
            disconnected_at_ms: if offline { persist::unix_ms_now() } else { 0 },
            subscriptions: state.subscriptions.clone(),
            will: will.map(Into::into),
            // The store's awaiting_rel table holds these ids now; a list here could only go stale.
            awaiting_rel: Vec::new(),
        };
        handle.mark_stored();
        Op::PutSession { client: handle.client_id.clone(), data: persist::encode_session(&rec) }
    }

    /// The op that stores an inbound QoS 2 packet id of a persistent session as awaiting PUBREL; none for
    /// other sessions. Without it, a restart would route a resent PUBLISH again (a duplicate). One small
    /// row, not the session record: a session with many subscriptions would otherwise rewrite all of them
    /// for every QoS 2 message it publishes.
    pub fn awaiting_rel_put(&self, handle: &SessionHandle, packet_id: u16) -> Writes {
        if !handle.is_persistent() {
            return Writes::default();
        }
        // So that the session's end writes a DeleteSession, which also removes this id.
        handle.mark_stored();
        Writes::from_op(Some(Op::PutAwaitingRel { client: handle.client_id.clone(), packet_id }))
    }

    /// The op that forgets an inbound QoS 2 packet id once its PUBREL arrived (persistent sessions only).
    /// PUBCOMP must wait for it: the client may reuse the id right after, and a restart that still
    /// remembered it would take the new PUBLISH for a resend and drop it.
    pub fn awaiting_rel_delete(&self, handle: &SessionHandle, packet_id: u16) -> Writes {
        Writes::from_op(
            handle.is_persistent().then(|| Op::DeleteAwaitingRel { client: handle.client_id.clone(), packet_id }),
        )
    }

    /// Queues a retained message for a subscriber that just subscribed. For a persistent session a QoS 1/2 copy
    /// is stored too: its queue entry refers to the message, so the message goes first.
    pub fn queue_retained(&self, session: &SessionHandle, d: Delivery, writes: &mut Writes) {
        if session.is_persistent() && d.qos != QoS::AtMostOnce && d.msg.id != 0 {
            writes.push(Op::PutMessage { id: d.msg.id, data: persist::encode_message(&d.msg) });
        }
        let _ = session.push(d, self, &mut writes.0);
    }

    /// Stores the session's subscriptions after SUBSCRIBE/UNSUBSCRIBE (persistent sessions only).
    pub fn persist_subscriptions(&self, handle: &SessionHandle, state: &SessionState) {
        if handle.is_persistent() {
            let op = self.session_record(handle, state, None, false);
            self.submit_logged(vec![op]);
        }
    }

    fn strategy(&self) -> SharedStrategy {
        self.config.mqtt.shared_subscription_strategy
    }

    /// Stores a retained message (when retain is available) and routes `msg` to its subscribers.
    pub fn publish(&self, msg: Arc<Message>) -> usize {
        let p = self.publish_into(msg, Writes::default(), &mut Vec::new());
        if let Err(e) = &p.ticket {
            tracing::error!(error = %e, "cannot store a message");
        }
        p.matched
    }

    /// `publish` for a client's PUBLISH: sessions whose backlog asks the publisher to hold back are appended to
    /// `congested`. The message is stored once for all persistent sessions it is queued for (and as the retained
    /// message of its topic) in one store submission, whose ticket the acknowledgement waits for.
    /// `with` are ops committed atomically with the message (for QoS 2, the publisher's packet id awaiting
    /// PUBREL).
    ///
    /// `message.publish` runs first (for wills and broker messages too): a callback may replace the message or
    /// stop it. A stopped message goes to nobody and is not retained; it is counted (`dropped_by_hook`) and
    /// reported to `message.dropped` (`StoppedByHook`), and `with` is still submitted (the publisher's QoS 2
    /// state does not depend on where the message went).
    pub fn publish_into(&self, msg: Arc<Message>, with: Writes, congested: &mut Vec<Arc<SessionHandle>>) -> Published {
        let msg = match self.hooks.message_publish.fold(msg, |f, m| f(m)) {
            Fold::Continue(m) => m,
            Fold::Stop(m) => {
                self.dropped(Some(&m), None, DropReason::StoppedByHook);
                return Published { matched: 0, ticket: self.submit(with), behind: false };
            }
        };
        let retained = msg.retain && self.config.mqtt.retain_available;
        let mut targets = Vec::new();
        let matched = self.router.route(&msg, self.strategy(), &self.metrics, &mut targets);
        if matched == 0 {
            // Counted by the router.
            self.report_dropped(Some(&msg), None, DropReason::NoSubscribers);
        }
        let mut ops = Vec::new();
        for (session, d) in targets.iter_mut() {
            session.reserve(d, &mut ops);
        }
        let mut blob = None;
        if !ops.is_empty() {
            let b = persist::encode_message(&msg);
            // First in the batch: the store keeps a message only while queue entries refer to it.
            ops.insert(0, Op::PutMessage { id: msg.id, data: b.clone() });
            blob = Some(b);
        }
        if retained {
            let topic: Arc<str> = Arc::from(msg.topic.as_str());
            if msg.payload.is_empty() {
                ops.push(Op::DeleteRetained { topic });
            } else {
                let data = blob.unwrap_or_else(|| persist::encode_message(&msg));
                ops.push(Op::PutRetained { topic, data });
            }
        }
        ops.extend(with.0);
        // Stored first, queued second: a subscriber's acknowledgement (its Dequeue) cannot overtake the Enqueue.
        let ticket = self.submit_ops(ops);
        // A QoS 1/2 publish is refused to its publisher when its commit fails (0x97), so nothing of it may reach
        // anyone first: refused now, it goes nowhere; accepted, its deliveries and its retained copy wait for the
        // commit. QoS 0 is never refused, so it never waits.
        let refusable = msg.qos != QoS::AtMostOnce;
        let wait = match &ticket {
            Err(_) if refusable => return Published { matched, ticket, behind: false },
            Ok(t) if refusable && *t > self.store.committed() => *t,
            _ => 0,
        };
        if retained {
            self.retain(msg.clone(), ticket.as_ref().copied().unwrap_or(0), wait != 0);
        }
        let mut drops = Vec::new();
        let mut behind = false;
        for (session, mut d) in targets {
            d.commit = wait;
            match session.push(d, self, &mut drops) {
                Pushed::Queued => {}
                Pushed::Behind => behind = true,
                Pushed::HoldBack => congested.push(session),
            }
        }
        self.submit_logged(drops);
        Published { matched, ticket, behind }
    }

    /// Makes `msg` the retained message of its topic now, or once `ticket` commits when `wait` is set. Retained
    /// messages take effect in publish order: while earlier ones wait, a later one waits behind them.
    fn retain(&self, msg: Arc<Message>, ticket: u64, wait: bool) {
        if !wait && self.pending_retained_len.load(Ordering::Acquire) == 0 {
            self.retainer.store(&msg);
            return;
        }
        let mut pending = self.pending_retained.lock();
        if self.store.is_unavailable() {
            // What still waits will never commit: it is not retained, and nothing may queue behind it for ever.
            pending.clear();
            self.pending_retained_len.store(0, Ordering::Release);
            if !wait {
                self.retainer.store(&msg);
            }
            return;
        }
        let ticket = pending.back().map_or(ticket, |(last, _)| ticket.max(*last));
        pending.push_back((ticket, msg));
        self.pending_retained_len.store(pending.len(), Ordering::Release);
        drop(pending);
        self.settle_committed(0);
    }

    /// The retained messages a new subscription to `filter` gets at `now`, each with the store ticket it waits
    /// for (0: none). Those whose commit is still pending count too, and supersede what is retained for their
    /// topic now: the subscriber gets them once they commit (the commit gate), or not at all if the commit fails.
    pub fn retained_for(&self, filter: &str, now: Instant) -> Vec<(Arc<Message>, u64)> {
        let mut out: Vec<(Arc<Message>, u64)> =
            self.retainer.matching_at(filter, now).into_iter().map(|m| (m, 0)).collect();
        if self.pending_retained_len.load(Ordering::Acquire) == 0 {
            return out;
        }
        let pending = self.pending_retained.lock();
        for (ticket, m) in pending.iter() {
            if !halyard_topic::matches(filter, &m.topic) {
                continue;
            }
            // Later entries win: drop what this topic had before (retained now, or pending earlier).
            out.retain(|(o, _)| o.topic != m.topic);
            if !m.payload.is_empty() && !m.is_expired(now) {
                out.push((m.clone(), *ticket));
            }
        }
        out
    }

    /// Applies what waited for a store commit that has now happened (`seen`: a commit the caller learnt of from
    /// the store's watch channel, which is updated before `committed()`). Retained messages whose commit failed
    /// never take effect. Cheap when nothing waits: one atomic load.
    pub fn settle_committed(&self, seen: u64) {
        if self.pending_retained_len.load(Ordering::Acquire) == 0 {
            return;
        }
        let committed = self.store.committed().max(seen);
        let mut pending = self.pending_retained.lock();
        while pending.front().is_some_and(|(t, _)| *t <= committed) {
            if let Some((_, m)) = pending.pop_front() {
                self.retainer.store(&m);
            }
        }
        self.pending_retained_len.store(pending.len(), Ordering::Release);
    }

    /// Hands shared-subscription deliveries of `leaving` to other members of their groups: the new entries are
    /// submitted before the deliveries are queued, and the old entries removed after. Returns what no other
    /// member could take.
    fn redispatch_all(&self, leaving: &SessionHandle, deliveries: Vec<Delivery>) -> Vec<Delivery> {
        let (mut moved, mut kept, mut ops, mut gone) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for d in deliveries {
            match self.router.redispatch(&d, leaving.id, self.strategy()) {
                Some((session, mut nd)) => {
                    session.reserve(&mut nd, &mut ops);
                    if d.seq != 0 {
                        gone.push(Op::Dequeue { client: leaving.client_id.clone(), seq: d.seq });
                    }
                    moved.push((session, nd));
                }
                None => kept.push(d),
            }
        }
        self.submit_logged(ops);
        for (session, d) in moved {
            let _ = session.push(d, self, &mut gone);
            Metrics::inc(&self.metrics.shared_redispatched);
        }
        self.submit_logged(gone);
        kept
    }

    /// Gives the session for `client_id` to a new connection whose control channel is `control`. An existing
    /// owner is taken over first: it parks its state and every message that arrived meanwhile stays in the
    /// session's queue, so nothing falls between the two connections.
    pub async fn attach(
        self: &Arc<Self>,
        client_id: &Arc<str>,
        clean_start: bool,
        expiry_interval: u32,
        zone: &MqttConfig,
        control: oneshot::Sender<Control>,
        now: Instant,
    ) -> Attached {
        loop {
            let (handle, created) = self.registry.get_or_insert(client_id, |id, cid| {
                SessionHandle::new(id, cid, zone.max_mqueue_len, zone.mqueue_store_qos0)
            });
            let _serial = handle.connect_lock.lock().await;
            if handle.is_removed() {
                // Its end is still being written; the registry drops it right after.
                drop(_serial);
                tokio::task::yield_now().await;
                continue;
            }
            if !created {
                let owner = handle.take_owner();
                let had_owner = owner.is_some();
                if let Some(owner) = owner {
                    let (done, answered) = oneshot::channel();
                    if owner.send(Control::Takeover { resume: !clean_start, done }).is_ok()
                        && tokio::time::timeout(TAKEOVER_TIMEOUT, answered).await.is_err()
                    {
                        tracing::warn!(
                            client_id = &**client_id,
                            "previous connection did not hand its session over in time"
                        );
                    }
                    Metrics::inc(&self.metrics.sessions_taken_over);
                }
                if handle.is_removed() {
                    // The old owner ended the session (expiry 0 or clean start): start a new one.
                    continue;
                }
                if clean_start {
                    let state = handle.take_parked().unwrap_or_default();
                    self.end_session(&handle, state, TerminateReason::Discarded, now);
                    continue;
                }
                if had_owner {
                    self.hooks.session_takenover.each(|f| f(&handle));
                }
            }
            // Online again: its offline deadlines (will delay, expiry) are void.
            self.timers.cancel(handle.id);
            // Resumed within the will delay: the will is not sent [MQTT-3.1.3-9].
            drop(handle.take_pending_will());
            let state = if created { SessionState::default() } else { handle.take_parked().unwrap_or_default() };
            handle.set_expiry_interval(expiry_interval);
            handle.set_queue_limits(zone.max_mqueue_len, zone.mqueue_store_qos0);
            if expiry_interval > 0 {
                let op = self.session_record(&handle, &state, None, false);
                self.submit_logged(vec![op]);
            }
            handle.attach(control);
            if created {
                self.hooks.session_created.each(|f| f(&handle));
            } else {
                self.hooks.session_resumed.each(|f| f(&handle));
            }
            return Attached { handle: handle.clone(), state, present: !created };
        }
    }

    /// Adds a subscription to the router; true if the session already had it (for Retain Handling 1).
    pub fn subscribe(
        &self,
        handle: &Arc<SessionHandle>,
        filter: &str,
        group: Option<&str>,
        options: SubscriptionOptions,
        sub_id: Option<u32>,
    ) -> bool {
        self.router.subscribe(filter, group, SubEntry { session: handle.clone(), options, sub_id })
    }

    pub fn unsubscribe(&self, handle: &SessionHandle, filter: &str, group: Option<&str>) -> bool {
        self.router.unsubscribe(filter, group, handle.id)
    }

    /// The owning connection gives its session back. `will` is the will to publish (the connection decides
    /// whether its ending calls for one); when it is published depends on the will delay and on whether the
    /// session goes on.
    pub fn detach(
        self: &Arc<Self>,
        handle: &Arc<SessionHandle>,
        mut state: SessionState,
        will: Option<Will>,
        reason: DetachReason,
        now: Instant,
    ) {
        let expiry = handle.expiry_interval();
        let continues = match reason {
            DetachReason::Closed => expiry > 0,
            DetachReason::TakenOver { resume } => resume && expiry > 0,
        };
        if !continues {
            // The session ends now, so the will goes now, whatever its delay [MQTT-3.1.3-9].
            if let Some(w) = will {
                self.publish_will(handle, w, now);
            }
            let why = match reason {
                DetachReason::TakenOver { resume: false } => TerminateReason::Discarded,
                _ => TerminateReason::Closed,
            };
            self.end_session(handle, state, why, now);
            return;
        }
        if let DetachReason::TakenOver { .. } = reason {
            // A new connection resumed the session: a delayed will is cancelled, an immediate one goes out.
            if let Some(w) = will.filter(|w| w.delay == 0) {
                self.publish_will(handle, w, now);
            }
            handle.detach(Some(state));
            return;
        }
        // Offline: shared-subscription messages this member has not finished go to another member. Only QoS 1
        // ones: a QoS 2 delivery that started must be completed to this member when it reconnects
        // [MQTT-4.8.2-4]. Queued messages it never saw may go to anyone.
        let (moving, staying): (Vec<_>, Vec<_>) =
            state.inflight.drain(..).partition(|e| e.delivery.shared.is_some() && e.stage == Stage::AwaitPubAck);
        state.inflight = staying.into();
        if !moving.is_empty() {
            // What no other member takes goes back at the end, out of packet-id order.
            state.ids_in_order = false;
        }
        // One at a time (a rare path): what no other member takes stays in flight with this session.
        for e in moving {
            if !self.redispatch_all(handle, vec![e.delivery.clone()]).is_empty() {
                state.inflight.push_back(e);
            }
        }
        let mut ops = Vec::new();
        for d in self.redispatch_all(handle, handle.take_shared_queued()) {
            // Back into its own (now offline) queue: offline sessions hold nobody back.
            let _ = handle.push(d, self, &mut ops);
        }
        let expiry_ms = u64::from(expiry) * 1000;
        // A will due now goes now and is not stored; a delayed one is stored so it survives a restart.
        let mut will_delay_ms = None;
        let pending = match will {
            Some(w) if (u64::from(w.delay) * 1000).min(expiry_ms) == 0 => {
                self.publish_will(handle, w, now);
                None
            }
            Some(w) => {
                will_delay_ms = Some((u64::from(w.delay) * 1000).min(expiry_ms));
                Some(w)
            }
            None => None,
        };
        handle.set_offline_since(persist::unix_ms_now());
        ops.push(self.session_record(handle, &state, pending.as_ref(), true));
        self.submit_logged(ops);
        // Before the handle goes offline: a reconnect from then on finds the will and cancels it.
        if let Some(w) = pending {
            handle.set_pending_will(w);
        }
        let generation = handle.detach(Some(state));
        // Offline now: its stored backlog lives on disk, not in RAM.
        handle.spill();
        self.arm_offline(handle, generation, now, will_delay_ms, expiry_ms);
    }

    /// Rewrites an offline session's record without its will (once the will is published).
    pub(crate) fn forget_stored_will(&self, handle: &SessionHandle) {
        if let Some(subscriptions) = handle.parked_subscription_records() {
            let rec = SessionRecord {
                expiry_interval: handle.expiry_interval(),
                disconnected_at_ms: handle.offline_since(),
                subscriptions,
                will: None,
                // Kept in the store's awaiting_rel table (see `session_record`).
                awaiting_rel: Vec::new(),
            };
            let op = Op::PutSession { client: handle.client_id.clone(), data: persist::encode_session(&rec) };
            self.submit_logged(vec![op]);
        }
    }

    /// Arms an offline session's deadlines, counted from `now`: its will after `will_delay_ms` (the pending
    /// will is already set on the handle), its end after `expiry_ms`. Tagged with the session's generation, so
    /// a reconnect (which cancels them anyway) leaves them inert.
    pub(crate) fn arm_offline(
        &self,
        handle: &Arc<SessionHandle>,
        generation: u64,
        now: Instant,
        will_delay_ms: Option<u64>,
        expiry_ms: u64,
    ) {
        let will_at = will_delay_ms.map(|ms| now + Duration::from_millis(ms));
        self.timers.arm(handle, generation, will_at, now + Duration::from_millis(expiry_ms));
    }

    /// The earliest engine deadline (a will delay or a session expiry), if any: call `handle_timeout` then.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Notified when a deadline earlier than the one `next_timeout` returned is armed.
    pub fn timeouts_changed(&self) -> &tokio::sync::Notify {
        self.timers.changed()
    }

    /// Offline sessions with deadlines armed (one pair each at most).
    pub fn armed_timers(&self) -> usize {
        self.timers.len()
    }

    /// Does what came due at `now`: publishes wills whose delay passed, ends sessions whose expiry passed.
    /// The engine reads no clock of its own; the server's timer task, or a test, passes the time in.
    pub fn handle_timeout(&self, now: Instant) {
        for (h, generation, due) in self.timers.take_due(now) {
            if h.generation() != generation {
                continue;
            }
            match due {
                Due::Will => {
                    if let Some(w) = h.take_pending_will() {
                        self.publish_will(&h, w, now);
                        self.forget_stored_will(&h);
                    }
                }
                Due::Expiry => {
                    // A connect of this client id holds the lock while it takes the session over or resumes it;
                    // look again shortly (its attach cancels this deadline if it wins).
                    let Ok(_serial) = h.connect_lock.try_lock() else {
                        self.timers.retry_expiry(&h, generation, now + EXPIRY_RETRY);
                        continue;
                    };
                    if h.generation() == generation && !h.is_removed() {
                        Metrics::inc(&self.metrics.sessions_expired);
                        tracing::debug!(client_id = %h.client_id, "session expired");
                        let state = h.take_parked().unwrap_or_default();
                        self.end_session(&h, state, TerminateReason::Expired, now);
                    }
                }
            }
        }
    }

    /// The session is over: it leaves the registry and the router; unfinished shared messages go to other
    /// members, everything else it held is dropped and counted.
    /// `session.discarded` (for a clean start) and then `session.terminated` fire once the session is gone.
    fn end_session(&self, handle: &Arc<SessionHandle>, state: SessionState, why: TerminateReason, now: Instant) {
        // A will still waiting for its delay goes now: the session is over [MQTT-3.1.3-9].
        if let Some(w) = handle.take_pending_will() {
            self.publish_will(handle, w, now);
        }
        self.timers.cancel(handle.id);
        handle.mark_removed();
        let mut filters: Vec<String> = state.subscriptions.keys().cloned().collect();
        filters.extend(handle.parked_subscriptions());
        for f in &filters {
            if let Ok(sub) = halyard_topic::parse_subscription(f, 0) {
                self.router.unsubscribe(sub.filter(), sub.group(), handle.id);
            }
        }
        // A QoS 2 shared delivery that started goes to no other client when its session ends [MQTT-4.8.2-5].
        let (redispatchable, started_qos2): (Vec<_>, Vec<_>) =
            state.inflight.into_iter().partition(|e| e.stage == Stage::AwaitPubAck);
        let cid = Some(&*handle.client_id);
        for e in started_qos2 {
            self.dropped(Some(&e.delivery.msg), cid, DropReason::SessionEnded);
        }
        let (mut queued, stored_shared, on_disk) = handle.clear_queue();
        // Slots whose message is only on disk go with the session's DeleteSession below, except shared ones,
        // which another member gets (read back first; their new entries are submitted before the delete).
        self.dropped_on_disk(&handle.client_id, on_disk as u64, DropReason::SessionEnded);
        queued.extend(self.load_stored(handle, &stored_shared));
        let (shared, own): (Vec<_>, Vec<_>) =
            redispatchable.into_iter().map(|e| e.delivery).chain(queued).partition(|d| d.shared.is_some());
        let unplaced = self.redispatch_all(handle, shared);
        for d in own.iter().chain(&unplaced) {
            self.dropped(Some(&d.msg), cid, DropReason::SessionEnded);
        }
        let mut ops = Vec::new();
        // After the redispatches' submissions: their new entries keep the shared messages alive.
        if handle.was_stored() {
            ops.push(Op::DeleteSession { client: handle.client_id.clone() });
        }
        self.submit_logged(ops);
        // Only now may a new session with this client id be created: its record is written after this delete.
        self.registry.remove(handle);
        if why == TerminateReason::Discarded {
            self.hooks.session_discarded.each(|f| f(handle));
        }
        self.hooks.session_terminated.each(|f| f(handle, why));
    }

    pub(crate) fn publish_will(&self, handle: &SessionHandle, w: Will, now: Instant) {
        Metrics::inc(&self.metrics.wills_published);
        tracing::debug!(client_id = %handle.client_id, topic = %w.topic, "publishing will message");
        self.publish(self.will_message(handle, w, now));
    }

    /// The will as a message; its Message Expiry Interval counts from `now`, when it is published.
    pub(crate) fn will_message(&self, handle: &SessionHandle, w: Will, now: Instant) -> Arc<Message> {
        Arc::new(Message {
            id: self.new_message_id(),
            topic: w.topic,
            payload: w.payload,
            qos: w.qos,
            retain: w.retain,
            properties: w.properties,
            publisher: Some(handle.client_id.clone()),
            expires_at: w.message_expiry.map(|s| now + Duration::from_secs(u64::from(s))),
        })
    }
}
