//! The broker: registry, router, retainer and counters, and the session life cycle that ties them together
//! (attach with takeover, detach with will and expiry, the end of a session).

use crate::config::{Config, MqttConfig, SharedStrategy};
use crate::message::{Delivery, Message};
use crate::metrics::Metrics;
use crate::persist::{self, SessionRecord};
use crate::registry::Registry;
use crate::retainer::Retainer;
use crate::router::{Router, SubEntry};
use crate::session::{Control, SessionHandle, SessionState, Stage};
use bytes::Bytes;
use halyard_codec::{Properties, QoS, SubscriptionOptions, Utf8};
use halyard_store::{MemoryStore, Op, Store, StoreError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How long a new connection waits for the old owner of its session to hand it over.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Broker {
    pub config: Arc<Config>,
    pub registry: Registry,
    pub router: Router,
    pub retainer: Retainer,
    pub metrics: Metrics,
    /// Where persistent sessions, their queues and retained messages are kept (in memory when durability is off).
    pub store: Arc<dyn Store>,
    next_message_id: AtomicU64,
}

/// The outcome of routing one client PUBLISH.
#[derive(Debug)]
pub struct Published {
    /// Sessions the message went to.
    pub matched: usize,
    /// The store ticket to wait for before acknowledging (0: nothing was stored), or why it cannot be stored.
    pub ticket: Result<u64, StoreError>,
}

/// A will message waiting for its connection to end [MQTT-3.1.2-8].
#[derive(Debug, Clone)]
pub struct Will {
    pub topic: Utf8,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: Option<Box<Properties>>,
    /// Message Expiry Interval of the will, counted from when it is published.
    pub message_expiry: Option<u32>,
    /// Will Delay Interval in seconds.
    pub delay: u32,
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

    pub(crate) fn with_store(config: Config, store: Arc<dyn Store>, next_message_id: u64) -> Arc<Broker> {
        Arc::new(Broker {
            config: Arc::new(config),
            registry: Registry::default(),
            router: Router::default(),
            retainer: Retainer::default(),
            metrics: Metrics::default(),
            store,
            next_message_id: AtomicU64::new(next_message_id.max(1)),
        })
    }

    /// A fresh id for a message that may be stored.
    pub fn new_message_id(&self) -> u64 {
        self.next_message_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Submits store operations (none: ticket 0, nothing to wait for).
    pub fn submit(&self, ops: Vec<Op>) -> Result<u64, StoreError> {
        if ops.is_empty() {
            return Ok(0);
        }
        self.store.submit(ops)
    }

    /// Submits operations nobody waits for; a failure is logged (the store refuses new work from then on).
    fn submit_logged(&self, ops: Vec<Op>) {
        if let Err(e) = self.submit(ops) {
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
            awaiting_rel: Vec::new(),
        };
        handle.mark_stored();
        Op::PutSession { client: handle.client_id.clone(), data: persist::encode_session(&rec) }
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
        let p = self.publish_into(msg, &mut Vec::new());
        if let Err(e) = &p.ticket {
            tracing::error!(error = %e, "cannot store a message");
        }
        p.matched
    }

    /// `publish` for a client's PUBLISH: sessions whose backlog asks the publisher to hold back are appended to
    /// `congested`. The message is stored once for all persistent sessions it is queued for (and as the retained
    /// message of its topic) in one store submission, whose ticket the acknowledgement waits for.
    pub fn publish_into(&self, msg: Arc<Message>, congested: &mut Vec<Arc<SessionHandle>>) -> Published {
        let retained = msg.retain && self.config.mqtt.retain_available;
        if retained {
            self.retainer.store(&msg);
        }
        let mut ops = Vec::new();
        let matched = self.router.route(&msg, self.strategy(), &self.metrics, congested, &mut ops);
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
        Published { matched, ticket: self.submit(ops) }
    }

    /// Gives the session for `client_id` to a new connection whose control channel is `control`. An existing
    /// owner is taken over first: it parks its state and every message that arrived meanwhile stays in the
    /// session's queue, so nothing falls between the two connections.
    pub async fn attach(
        self: &Arc<Self>,
        client_id: &str,
        clean_start: bool,
        expiry_interval: u32,
        zone: &MqttConfig,
        control: oneshot::Sender<Control>,
    ) -> Attached {
        loop {
            let (handle, created) = self.registry.get_or_insert_with(client_id, |id, cid| {
                SessionHandle::new(id, cid, zone.max_mqueue_len, zone.mqueue_store_qos0)
            });
            let _serial = handle.connect_lock.lock().await;
            if handle.is_removed() {
                continue;
            }
            if !created {
                if let Some(owner) = handle.take_owner() {
                    let (done, answered) = oneshot::channel();
                    if owner.send(Control::Takeover { resume: !clean_start, done }).is_ok()
                        && tokio::time::timeout(TAKEOVER_TIMEOUT, answered).await.is_err()
                    {
                        tracing::warn!(client_id, "previous connection did not hand its session over in time");
                    }
                    Metrics::inc(&self.metrics.sessions_taken_over);
                }
                if handle.is_removed() {
                    // The old owner ended the session (expiry 0 or clean start): start a new one.
                    continue;
                }
                if clean_start {
                    let state = handle.take_parked().unwrap_or_default();
                    self.end_session(&handle, state);
                    continue;
                }
            }
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
    ) {
        let expiry = handle.expiry_interval();
        let continues = match reason {
            DetachReason::Closed => expiry > 0,
            DetachReason::TakenOver { resume } => resume && expiry > 0,
        };
        if !continues {
            // The session ends now, so the will goes now, whatever its delay [MQTT-3.1.3-9].
            if let Some(w) = will {
                self.publish_will(handle, w);
            }
            self.end_session(handle, state);
            return;
        }
        if let DetachReason::TakenOver { .. } = reason {
            // A new connection resumed the session: a delayed will is cancelled, an immediate one goes out.
            if let Some(w) = will.filter(|w| w.delay == 0) {
                self.publish_will(handle, w);
            }
            handle.detach(Some(state));
            return;
        }
        // Offline: shared-subscription messages this member has not finished go to another member. Only QoS 1
        // ones: a QoS 2 delivery that started must be completed to this member when it reconnects
        // [MQTT-4.8.2-4]. Queued messages it never saw may go to anyone.
        let mut ops = Vec::new();
        let mut kept = std::collections::VecDeque::with_capacity(state.inflight.len());
        for e in state.inflight.drain(..) {
            if e.delivery.shared.is_some() && e.stage == Stage::AwaitPubAck {
                let seq = e.delivery.seq;
                if self.redispatch_or_keep(handle, e.delivery.clone(), &mut ops).is_ok() {
                    self.forget_entry(handle, seq, &mut ops);
                    continue;
                }
            }
            kept.push_back(e);
        }
        state.inflight = kept;
        for d in handle.take_shared_queued() {
            let seq = d.seq;
            match self.redispatch_or_keep(handle, d, &mut ops) {
                Ok(()) => self.forget_entry(handle, seq, &mut ops),
                // Back into its own (now offline) queue: offline sessions hold nobody back.
                Err(d) => {
                    let _ = handle.push(d, &self.metrics, &mut ops);
                }
            }
        }
        ops.push(self.session_record(handle, &state, will.as_ref(), true));
        self.submit_logged(ops);
        let generation = handle.detach(Some(state));
        // Offline now: its stored backlog lives on disk, not in RAM.
        handle.spill();
        let expiry_ms = u64::from(expiry) * 1000;
        self.schedule_offline(handle, generation, will, expiry_ms, expiry_ms);
    }

    /// Timers of an offline session: its will after `min(will delay, expiry)`, its end after the expiry.
    /// Both are tagged with the session's generation, so a reconnect makes them inert.
    pub(crate) fn schedule_offline(
        self: &Arc<Self>,
        handle: &Arc<SessionHandle>,
        generation: u64,
        will: Option<Will>,
        will_cap_ms: u64,
        expiry_ms: u64,
    ) {
        if let Some(w) = will {
            let delay_ms = (u64::from(w.delay) * 1000).min(will_cap_ms);
            if delay_ms == 0 {
                self.publish_will(handle, w);
            } else {
                handle.set_pending_will(w);
                let (broker, h) = (self.clone(), handle.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                    if h.generation() == generation {
                        if let Some(w) = h.take_pending_will() {
                            broker.publish_will(&h, w);
                        }
                    }
                });
            }
        }
        let (broker, h) = (self.clone(), handle.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(expiry_ms)).await;
            let _serial = h.connect_lock.lock().await;
            if h.generation() == generation && !h.is_removed() {
                Metrics::inc(&broker.metrics.sessions_expired);
                tracing::debug!(client_id = %h.client_id, "session expired");
                let state = h.take_parked().unwrap_or_default();
                broker.end_session(&h, state);
            }
        });
    }

    /// Removes a stored queue entry that moved elsewhere or finished.
    fn forget_entry(&self, handle: &SessionHandle, seq: u64, ops: &mut Vec<Op>) {
        if seq != 0 {
            ops.push(Op::Dequeue { client: handle.client_id.clone(), seq });
        }
    }

    fn redispatch_or_keep(&self, handle: &SessionHandle, d: Delivery, ops: &mut Vec<Op>) -> Result<(), Delivery> {
        if self.router.redispatch(d.clone(), handle.id, self.strategy(), &self.metrics, ops) {
            Ok(())
        } else {
            Err(d)
        }
    }

    /// The session is over: it leaves the registry and the router; unfinished shared messages go to other
    /// members, everything else it held is dropped and counted.
    fn end_session(&self, handle: &Arc<SessionHandle>, state: SessionState) {
        // A will still waiting for its delay goes now: the session is over [MQTT-3.1.3-9].
        if let Some(w) = handle.take_pending_will() {
            self.publish_will(handle, w);
        }
        handle.mark_removed();
        self.registry.remove(handle);
        let mut filters: Vec<String> = state.subscriptions.keys().cloned().collect();
        filters.extend(handle.parked_subscriptions());
        for f in &filters {
            if let Ok(sub) = halyard_topic::parse_subscription(f, 0) {
                match sub {
                    halyard_topic::Subscription::Plain(t) => self.router.unsubscribe(t, None, handle.id),
                    halyard_topic::Subscription::Shared { group, filter } => {
                        self.router.unsubscribe(filter, Some(group), handle.id)
                    }
                };
            }
        }
        // A QoS 2 shared delivery that started goes to no other client when its session ends [MQTT-4.8.2-5].
        let (redispatchable, started_qos2): (Vec<_>, Vec<_>) =
            state.inflight.into_iter().partition(|e| e.stage == Stage::AwaitPubAck);
        for _ in started_qos2 {
            Metrics::inc(&self.metrics.dropped_session_ended);
        }
        let mut ops = Vec::new();
        let (queued, on_disk) = handle.clear_queue();
        // Slots whose message is only on disk go with the session's DeleteSession below.
        self.metrics.dropped_session_ended.fetch_add(on_disk as u64, Ordering::Relaxed);
        for d in redispatchable.into_iter().map(|e| e.delivery).chain(queued) {
            if d.shared.is_some() && self.redispatch_or_keep(handle, d, &mut ops).is_ok() {
                continue;
            }
            Metrics::inc(&self.metrics.dropped_session_ended);
        }
        // After the redispatches in the same batch: their new entries keep the shared messages alive.
        if handle.was_stored() {
            ops.push(Op::DeleteSession { client: handle.client_id.clone() });
        }
        self.submit_logged(ops);
    }

    fn publish_will(&self, handle: &SessionHandle, w: Will) {
        Metrics::inc(&self.metrics.wills_published);
        tracing::debug!(client_id = %handle.client_id, topic = %w.topic, "publishing will message");
        self.publish(self.will_message(handle, w));
    }

    pub(crate) fn will_message(&self, handle: &SessionHandle, w: Will) -> Arc<Message> {
        let now = Instant::now();
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
