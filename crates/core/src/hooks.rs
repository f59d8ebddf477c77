//! Hooks: the typed extension points later features plug into (authentication, ACL, webhooks, the rule engine,
//! `$SYS`). The names are EMQX's (`client.*`, `session.*`, `message.*`); each is one field of [`Hooks`], which
//! the [`Broker`](crate::Broker) owns as `broker.hooks`.
//!
//! Two kinds:
//! - **Fold hooks** (`client.authenticate`, `client.authorize`, `client.subscribe`, `message.publish`) may change
//!   what they see or stop it: each callback gets the value the previous one returned and answers
//!   [`Fold::Continue`] (pass it on) or [`Fold::Stop`] (this is the result; later callbacks do not run).
//! - **Notification hooks** (all others) get borrowed data and return nothing. They run on the broker's own
//!   threads, often on the publish path, so they must not block and must not do I/O. A consumer that does I/O
//!   (a webhook, a database sink) copies what it needs into a [`HookQueue`] and drains it in a task of its own;
//!   when that task falls behind, the queue drops and counts instead of slowing the broker down.
//!
//! Callbacks run in priority order, higher first; equal priorities in registration order. Registration works
//! through `&self` (on an `Arc<Broker>`): the list is copy-on-write, an `Arc<[..]>` swapped under a lock, so a
//! run takes a snapshot (one reference count) and never holds the lock while callbacks run. A callback may
//! therefore register or unregister others; the change applies from the next run.
//!
//! An unused hook costs one relaxed atomic load ([`Hook::is_empty`]); callers check it before building any
//! argument that is not already at hand.

use crate::message::{Delivery, Message};
use crate::session::SessionHandle;
use halyard_codec::{ProtocolVersion, SubscriptionOptions, Utf8};
use parking_lot::RwLock;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// What a fold callback returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fold<T> {
    /// Pass the (possibly changed) value to the next callback.
    Continue(T),
    /// The value is final: no further callback runs.
    Stop(T),
}

impl<T> Fold<T> {
    pub fn into_inner(self) -> T {
        match self {
            Fold::Continue(t) | Fold::Stop(t) => t,
        }
    }

    pub fn is_stop(&self) -> bool {
        matches!(self, Fold::Stop(_))
    }
}

/// Identifies a registered callback, to unregister it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HookId(u64);

struct Entry<F: ?Sized> {
    priority: i32,
    id: u64,
    f: Arc<F>,
}

/// One hook point: its callbacks in run order.
pub struct Hook<F: ?Sized> {
    /// How many callbacks are registered; the only thing an unused hook costs is loading it.
    len: AtomicUsize,
    entries: RwLock<Arc<[Entry<F>]>>,
}

impl<F: ?Sized> Default for Hook<F> {
    fn default() -> Self {
        Hook { len: AtomicUsize::new(0), entries: RwLock::new(Arc::from(Vec::new())) }
    }
}

impl<F: ?Sized> std::fmt::Debug for Hook<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hook").field("callbacks", &self.len()).finish()
    }
}

/// Ids are unique across all hooks, so one taken from one hook cannot remove a callback of another.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl<F: ?Sized> Hook<F> {
    /// Adds a callback. Higher `priority` runs first; equal ones in registration order.
    pub fn register(&self, priority: i32, f: Box<F>) -> HookId {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let mut guard = self.entries.write();
        let mut v: Vec<Entry<F>> =
            guard.iter().map(|e| Entry { priority: e.priority, id: e.id, f: e.f.clone() }).collect();
        // After every entry of the same or a higher priority: ties keep registration order.
        let at = v.iter().position(|e| e.priority < priority).unwrap_or(v.len());
        v.insert(at, Entry { priority, id, f: Arc::from(f) });
        self.len.store(v.len(), Ordering::Release);
        *guard = Arc::from(v);
        HookId(id)
    }

    /// Removes a callback; false if it was not registered here.
    pub fn unregister(&self, id: HookId) -> bool {
        let mut guard = self.entries.write();
        if !guard.iter().any(|e| e.id == id.0) {
            return false;
        }
        let v: Vec<Entry<F>> = guard
            .iter()
            .filter(|e| e.id != id.0)
            .map(|e| Entry { priority: e.priority, id: e.id, f: e.f.clone() })
            .collect();
        self.len.store(v.len(), Ordering::Release);
        *guard = Arc::from(v);
        true
    }

    /// True when no callback is registered: check this before building arguments.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len.load(Ordering::Relaxed) == 0
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// The callbacks as they are now; the lock is released before any of them runs.
    fn snapshot(&self) -> Arc<[Entry<F>]> {
        self.entries.read().clone()
    }

    /// Runs a notification hook: `call` is given each callback in order.
    #[inline]
    pub fn each(&self, mut call: impl FnMut(&F)) {
        if self.is_empty() {
            return;
        }
        for e in self.snapshot().iter() {
            call(&e.f);
        }
    }

    /// Runs a fold hook from `init`: each callback gets what the previous one returned, until one stops.
    /// With no callback, `Continue(init)`.
    #[inline]
    pub fn fold<T>(&self, init: T, mut call: impl FnMut(&F, T) -> Fold<T>) -> Fold<T> {
        if self.is_empty() {
            return Fold::Continue(init);
        }
        let mut acc = init;
        for e in self.snapshot().iter() {
            match call(&e.f, acc) {
                Fold::Continue(t) => acc = t,
                stop @ Fold::Stop(_) => return stop,
            }
        }
        Fold::Continue(acc)
    }
}

/// Who a connection is, built once at CONNECT and kept by the connection's state machine. Shared (`Arc`), so
/// a consumer can keep it (e.g. in a [`HookQueue`]) for the price of a reference count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    pub client_id: Arc<str>,
    pub username: Option<Arc<str>>,
    /// The peer's address; `None` when the transport has none (tests driving the state machine directly).
    pub peer: Option<SocketAddr>,
    pub protocol: ProtocolVersion,
    pub clean_start: bool,
    /// Effective keepalive in seconds (after `max_keepalive` / `server_keepalive`).
    pub keepalive: u16,
    /// Set by `client.authenticate`: a superuser passes `client.authorize` without its callbacks running.
    pub is_superuser: bool,
}

/// The accumulator of `client.authenticate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthResult {
    /// No callback decided (yet). A chain that ends here lets the client in (anonymous access), as a broker with
    /// no authentication configured does.
    #[default]
    Ignore,
    Allow {
        is_superuser: bool,
    },
    /// Refused: CONNACK 0x87 Not authorized (v3: 0x05).
    Deny,
}

/// What a client asks to do, for `client.authorize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Publish,
    Subscribe,
}

/// The accumulator of `client.authorize`; it starts at `Allow` (no ACL configured allows everything).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthzResult {
    Allow,
    Deny,
}

/// One topic filter of a SUBSCRIBE as `client.subscribe` sees it. A callback may rewrite `filter` and
/// `options`, or refuse the filter by setting `refused` (the v5 SUBACK reason code; v3 clients get 0x80).
/// Entries are refused rather than removed so that the SUBACK keeps one code per filter [MQTT-3.8.4-6].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeRequest {
    pub filter: Utf8,
    pub options: SubscriptionOptions,
    pub refused: Option<u8>,
}

/// Why a connection ended, for `client.disconnected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client sent DISCONNECT with this reason code.
    ClientDisconnect(u8),
    /// Another connection with the same client id took the session over.
    TakenOver,
    /// Nothing was received for 1.5 × keepalive.
    KeepaliveTimeout,
    /// The broker is shutting down.
    ServerShutdown,
    /// The broker closed the connection for a protocol error or a limit (the v5 reason code).
    Error(u8),
    /// The network connection ended without DISCONNECT.
    ConnectionLost,
}

/// Why a session ended, for `session.terminated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TerminateReason {
    /// Its connection ended and its expiry interval was 0.
    Closed,
    /// A new connection with the same client id asked for a clean start (`session.discarded` fires too).
    Discarded,
    /// It stayed offline for its whole expiry interval.
    Expired,
}

/// Why a message was not delivered to someone, for `message.dropped`. Each reason has its counter in
/// [`Metrics`](crate::metrics::Metrics) (see [`DropReason::counter`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// A session's mqueue was full: its oldest entry went (`dropped_queue_full`).
    QueueFull,
    /// QoS 0 for an offline session with `mqueue_store_qos0 = false` (`dropped_qos0_offline`).
    Qos0Offline,
    /// Its Message Expiry Interval passed before delivery (`dropped_expired`).
    Expired,
    /// It matched no subscription (`messages_no_subscribers`).
    NoSubscribers,
    /// The publisher may not publish to this topic (`dropped_not_authorized`).
    NotAuthorized,
    /// Larger than the receiving client's Maximum Packet Size (`dropped_too_large`).
    TooLarge,
    /// Its session ended with it still queued or in flight (`dropped_session_ended`).
    SessionEnded,
    /// An MQTT 3.x publisher had `max_awaiting_rel` QoS 2 messages unreleased (`dropped_awaiting_rel_full`).
    AwaitingRelFull,
    /// A `message.publish` callback stopped it (`dropped_by_hook`).
    StoppedByHook,
    /// Its store commit failed, so its publisher was refused and it goes to nobody (`dropped_store_failed`).
    StoreFailed,
}

impl DropReason {
    pub fn counter(self, m: &crate::metrics::Metrics) -> &AtomicU64 {
        match self {
            DropReason::QueueFull => &m.dropped_queue_full,
            DropReason::Qos0Offline => &m.dropped_qos0_offline,
            DropReason::Expired => &m.dropped_expired,
            DropReason::NoSubscribers => &m.messages_no_subscribers,
            DropReason::NotAuthorized => &m.dropped_not_authorized,
            DropReason::TooLarge => &m.dropped_too_large,
            DropReason::SessionEnded => &m.dropped_session_ended,
            DropReason::AwaitingRelFull => &m.dropped_awaiting_rel_full,
            DropReason::StoppedByHook => &m.dropped_by_hook,
            DropReason::StoreFailed => &m.dropped_store_failed,
        }
    }
}

/// `message.dropped`'s argument.
#[derive(Debug, Clone, Copy)]
pub struct Dropped<'a> {
    /// `None` when only the store holds the message (an offline backlog): it is not read back just to be
    /// reported.
    pub message: Option<&'a Message>,
    /// The session it was for; `None` when it was for nobody (no subscribers, stopped by a hook) or refused
    /// from its publisher (then see `message.publisher`).
    pub client_id: Option<&'a str>,
    pub reason: DropReason,
}

pub type ClientFn = dyn Fn(&ClientInfo) + Send + Sync;
/// `client.connack`: the client, the CONNACK reason code (as sent: v3 codes for v3 clients), session present.
pub type ConnackFn = dyn Fn(&ClientInfo, u8, bool) + Send + Sync;
pub type DisconnectedFn = dyn Fn(&ClientInfo, DisconnectReason) + Send + Sync;
/// `client.authenticate`: the client, its password, the result so far.
pub type AuthenticateFn = dyn Fn(&ClientInfo, Option<&[u8]>, AuthResult) -> Fold<AuthResult> + Send + Sync;
/// `client.authorize`: the client, the action, the topic name or filter, the result so far.
pub type AuthorizeFn = dyn Fn(&ClientInfo, Action, &str, AuthzResult) -> Fold<AuthzResult> + Send + Sync;
pub type SubscribeFn = dyn Fn(&ClientInfo, Vec<SubscribeRequest>) -> Fold<Vec<SubscribeRequest>> + Send + Sync;
pub type UnsubscribeFn = dyn Fn(&ClientInfo, &[Utf8]) + Send + Sync;
pub type SessionFn = dyn Fn(&SessionHandle) + Send + Sync;
pub type TerminatedFn = dyn Fn(&SessionHandle, TerminateReason) + Send + Sync;
/// `session.subscribed`: the client, the filter as subscribed (with any `$share/<group>/`), the granted options.
pub type SubscribedFn = dyn Fn(&ClientInfo, &str, &SubscriptionOptions) + Send + Sync;
pub type UnsubscribedFn = dyn Fn(&ClientInfo, &str) + Send + Sync;
/// `message.publish`: a callback returns the message to route (the same `Arc`, or a new one) or stops it.
pub type PublishFn = dyn Fn(Arc<Message>) -> Fold<Arc<Message>> + Send + Sync;
/// `message.delivered` / `message.acked`: the receiving client and the delivery.
pub type DeliveryFn = dyn Fn(&ClientInfo, &Delivery) + Send + Sync;
pub type DroppedFn = dyn Fn(&Dropped<'_>) + Send + Sync;

/// Every hook point. Where each fires is in docs/architecture.md ("Hooks").
#[derive(Debug, Default)]
pub struct Hooks {
    /// CONNECT received and its client id settled, before any check.
    pub client_connect: Hook<ClientFn>,
    /// CONNACK sent, success or refusal.
    pub client_connack: Hook<ConnackFn>,
    /// The session is attached and CONNACK sent.
    pub client_connected: Hook<ClientFn>,
    /// A connected client's connection ended.
    pub client_disconnected: Hook<DisconnectedFn>,
    pub client_authenticate: Hook<AuthenticateFn>,
    pub client_authorize: Hook<AuthorizeFn>,
    pub client_subscribe: Hook<SubscribeFn>,
    pub client_unsubscribe: Hook<UnsubscribeFn>,
    pub session_created: Hook<SessionFn>,
    pub session_subscribed: Hook<SubscribedFn>,
    pub session_unsubscribed: Hook<UnsubscribedFn>,
    pub session_resumed: Hook<SessionFn>,
    pub session_discarded: Hook<SessionFn>,
    pub session_takenover: Hook<SessionFn>,
    pub session_terminated: Hook<TerminatedFn>,
    pub message_publish: Hook<PublishFn>,
    pub message_delivered: Hook<DeliveryFn>,
    pub message_acked: Hook<DeliveryFn>,
    pub message_dropped: Hook<DroppedFn>,
}

/// A bounded hand-off from a notification callback to a task that does I/O. The callback calls
/// [`HookQueue::push`], which never waits: when the queue is full (its consumer fell behind) or closed, the
/// item is dropped and counted. The consumer drains the receiver returned by [`HookQueue::new`].
#[derive(Debug)]
pub struct HookQueue<T> {
    tx: tokio::sync::mpsc::Sender<T>,
    dropped: AtomicU64,
}

impl<T> HookQueue<T> {
    pub fn new(capacity: usize) -> (Arc<HookQueue<T>>, tokio::sync::mpsc::Receiver<T>) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
        (Arc::new(HookQueue { tx, dropped: AtomicU64::new(0) }), rx)
    }

    /// Queues `item` without waiting; false (and counted) if the queue was full or its consumer is gone.
    pub fn push(&self, item: T) -> bool {
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Items dropped because the queue was full or closed.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    #[test]
    fn callbacks_run_by_priority_higher_first_ties_in_registration_order() {
        type Record = dyn Fn(&mut Vec<&'static str>) + Send + Sync;
        let hook: Hook<Record> = Hook::default();
        hook.register(0, Box::new(|v| v.push("zero-a")));
        hook.register(10, Box::new(|v| v.push("ten-a")));
        hook.register(0, Box::new(|v| v.push("zero-b")));
        hook.register(-5, Box::new(|v| v.push("minus-five")));
        hook.register(10, Box::new(|v| v.push("ten-b")));
        let mut seen = Vec::new();
        hook.each(|f| f(&mut seen));
        assert_eq!(seen, ["ten-a", "ten-b", "zero-a", "zero-b", "minus-five"]);
    }

    #[test]
    fn fold_passes_each_result_on_and_stop_ends_the_chain() {
        let hook: Hook<dyn Fn(u32) -> Fold<u32> + Send + Sync> = Hook::default();
        assert_eq!(hook.fold(1, |f, x| f(x)), Fold::Continue(1), "no callback: the input, continued");
        hook.register(3, Box::new(|x| Fold::Continue(x + 1)));
        hook.register(2, Box::new(|x| Fold::Stop(x * 10)));
        let later_ran = Arc::new(Mutex::new(false));
        let flag = later_ran.clone();
        hook.register(
            1,
            Box::new(move |x| {
                *flag.lock() = true;
                Fold::Continue(x)
            }),
        );
        assert_eq!(hook.fold(1, |f, x| f(x)), Fold::Stop(20));
        assert!(!*later_ran.lock(), "a callback after a Stop does not run");
    }

    #[test]
    fn unregister_removes_only_that_callback_and_empty_is_cheap_to_see() {
        let hook: Hook<dyn Fn(&mut u32) + Send + Sync> = Hook::default();
        assert!(hook.is_empty());
        let a = hook.register(0, Box::new(|n| *n += 1));
        let _b = hook.register(0, Box::new(|n| *n += 10));
        assert_eq!(hook.len(), 2);
        assert!(hook.unregister(a));
        assert!(!hook.unregister(a), "already gone");
        let mut n = 0;
        hook.each(|f| f(&mut n));
        assert_eq!(n, 10);
    }

    #[tokio::test]
    async fn hook_queue_drops_and_counts_when_full_and_never_waits() {
        let (q, mut rx) = HookQueue::new(2);
        assert!(q.push(1));
        assert!(q.push(2));
        assert!(!q.push(3), "full: dropped, not waited for");
        assert_eq!(q.dropped(), 1);
        assert_eq!(rx.recv().await, Some(1));
        assert!(q.push(4));
        drop(rx);
        assert!(!q.push(5), "closed: dropped");
        assert_eq!(q.dropped(), 2);
    }
}
