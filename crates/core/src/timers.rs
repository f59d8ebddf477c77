//! The engine's own timers: the will delay and the expiry of offline sessions. They are deadlines in one ordered
//! set, not a sleeping task each: the engine reads no clock, so whoever drives it (the server's timer task, or a
//! test with a controlled clock) asks for the next deadline ([`crate::Broker::next_timeout`]) and hands the
//! current time in ([`crate::Broker::handle_timeout`]). A session has at most one pair armed, and a reconnect
//! cancels it, so a client that reconnects in a loop leaves nothing behind.

use crate::session::{SessionHandle, SessionId};
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Notify;

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Due {
    /// Publish the pending will (its delay passed).
    Will,
    /// End the session (its expiry interval passed).
    Expiry,
}

/// One session's armed deadlines, tagged with the generation the session left at: a timer may only act on the
/// offline period it was armed for.
#[derive(Debug)]
struct Armed {
    handle: Arc<SessionHandle>,
    generation: u64,
    will_at: Option<Instant>,
    expire_at: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    by_session: HashMap<SessionId, Armed>,
    order: BTreeSet<(Instant, SessionId, Due)>,
}

impl Inner {
    fn remove(&mut self, id: SessionId) -> Option<Armed> {
        let a = self.by_session.remove(&id)?;
        if let Some(w) = a.will_at {
            self.order.remove(&(w, id, Due::Will));
        }
        self.order.remove(&(a.expire_at, id, Due::Expiry));
        Some(a)
    }
}

/// The deadlines of every offline session.
#[derive(Debug, Default)]
pub(crate) struct OfflineTimers {
    inner: Mutex<Inner>,
    /// Woken when a deadline earlier than all others is armed, so the driver re-reads `next`.
    changed: Notify,
}

/// A deadline that came due: the session, the generation it was armed for, and what to do.
pub(crate) type Fired = (Arc<SessionHandle>, u64, Due);

impl OfflineTimers {
    /// Arms (or re-arms) the session's will and expiry deadlines.
    pub(crate) fn arm(
        &self,
        handle: &Arc<SessionHandle>,
        generation: u64,
        will_at: Option<Instant>,
        expire_at: Instant,
    ) {
        let id = handle.id;
        let earliest = {
            let mut g = self.inner.lock();
            g.remove(id);
            let before = g.order.first().map(|e| e.0);
            if let Some(w) = will_at {
                g.order.insert((w, id, Due::Will));
            }
            g.order.insert((expire_at, id, Due::Expiry));
            g.by_session.insert(id, Armed { handle: handle.clone(), generation, will_at, expire_at });
            let first = will_at.map_or(expire_at, |w| w.min(expire_at));
            before.is_none_or(|b| first < b)
        };
        if earliest {
            self.changed.notify_one();
        }
    }

    /// Re-arms only the expiry of a session that is still armed for `generation` (used when it could not be
    /// ended at its deadline because a connect held the session).
    pub(crate) fn retry_expiry(&self, handle: &Arc<SessionHandle>, generation: u64, at: Instant) {
        let will_at = {
            let g = self.inner.lock();
            match g.by_session.get(&handle.id) {
                Some(a) if a.generation != generation => return,
                Some(a) => a.will_at,
                None => None,
            }
        };
        self.arm(handle, generation, will_at, at);
    }

    /// The session is online again or over: nothing armed for it may fire.
    pub(crate) fn cancel(&self, id: SessionId) {
        self.inner.lock().remove(id);
    }

    /// The earliest armed deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.inner.lock().order.first().map(|e| e.0)
    }

    /// Takes every deadline at or before `now`, earliest first. A session's will deadline leaves its expiry armed;
    /// its expiry deadline disarms it.
    pub(crate) fn take_due(&self, now: Instant) -> Vec<Fired> {
        let mut g = self.inner.lock();
        let mut fired = Vec::new();
        while let Some(&(at, id, due)) = g.order.first() {
            if at > now {
                break;
            }
            g.order.pop_first();
            let Some(a) = g.by_session.get_mut(&id) else { continue };
            let (handle, generation) = (a.handle.clone(), a.generation);
            match due {
                Due::Will => a.will_at = None,
                Due::Expiry => {
                    g.by_session.remove(&id);
                }
            }
            fired.push((handle, generation, due));
        }
        fired
    }

    /// How many sessions have deadlines armed.
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().by_session.len()
    }

    pub(crate) fn changed(&self) -> &Notify {
        &self.changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn handle(id: SessionId) -> Arc<SessionHandle> {
        Arc::new(SessionHandle::new(id, Arc::from(format!("c{id}").as_str()), 10, true))
    }

    #[test]
    fn deadlines_fire_in_order_and_only_once() {
        let t = OfflineTimers::default();
        let t0 = Instant::now();
        let (a, b) = (handle(1), handle(2));
        t.arm(&a, 1, Some(t0 + Duration::from_secs(5)), t0 + Duration::from_secs(10));
        t.arm(&b, 7, None, t0 + Duration::from_secs(3));
        assert_eq!(t.next(), Some(t0 + Duration::from_secs(3)));
        assert!(t.take_due(t0 + Duration::from_secs(2)).is_empty());
        let fired: Vec<_> = t.take_due(t0 + Duration::from_secs(6)).into_iter().map(|(h, g, d)| (h.id, g, d)).collect();
        assert_eq!(fired, vec![(2, 7, Due::Expiry), (1, 1, Due::Will)]);
        assert!(t.take_due(t0 + Duration::from_secs(6)).is_empty(), "nothing fires twice");
        let fired: Vec<_> = t.take_due(t0 + Duration::from_secs(10)).into_iter().map(|(h, _, d)| (h.id, d)).collect();
        assert_eq!(fired, vec![(1, Due::Expiry)]);
        assert_eq!((t.len(), t.next()), (0, None));
    }

    #[test]
    fn cancel_and_rearm_leave_one_pair_per_session() {
        // A client that reconnects in a loop must not pile up timers.
        let t = OfflineTimers::default();
        let t0 = Instant::now();
        let a = handle(1);
        for g in 0..1000u64 {
            t.arm(&a, g, Some(t0 + Duration::from_secs(g)), t0 + Duration::from_secs(7200));
            if g % 2 == 0 {
                t.cancel(a.id);
            }
        }
        assert_eq!(t.len(), 1);
        assert_eq!(t.inner.lock().order.len(), 2);
        t.cancel(a.id);
        assert_eq!((t.len(), t.next()), (0, None));
    }

    #[test]
    fn retry_expiry_ignores_a_newer_generation() {
        let t = OfflineTimers::default();
        let t0 = Instant::now();
        let a = handle(1);
        t.arm(&a, 2, None, t0);
        assert_eq!(t.take_due(t0).len(), 1);
        t.arm(&a, 3, None, t0 + Duration::from_secs(60));
        t.retry_expiry(&a, 2, t0 + Duration::from_millis(50));
        assert_eq!(t.next(), Some(t0 + Duration::from_secs(60)), "generation 3's deadline stands");
    }
}
