//! Fault injection for tests of the store's users (feature `testing`): a [`Store`] whose commits can be
//! held back or made to fail on demand, so code waiting on tickets can be tested without a slow or full
//! disk and without sleeps.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::{CheckReport, MemoryStore, Op, QueueEntry, Restored, Store, StoreError, StoreStats};

#[derive(Default)]
struct State {
    /// The last ticket handed out.
    issued: u64,
    /// The highest ticket reported committed.
    committed: u64,
    /// Commits are held: new tickets are not reported committed until `release`.
    stalled: bool,
    /// `fail` was called: nothing held or later is ever committed.
    failed: bool,
}

/// A [`Store`] over another one (a [`MemoryStore`] by default) whose commits tests control.
///
/// Ops are applied to the inner store at submit time (so reads, `restore` and `verify` see them even
/// while their tickets are held: unlike a real store, reads here are not limited to committed state).
/// What is held back is the *report*: `committed()`, `commits()` and `wait`.
/// - [`stall`](FaultyStore::stall): from then on tickets are held; `committed()` stops advancing,
///   `commits()` watchers do not wake, `backlog()` grows.
/// - [`release`](FaultyStore::release): everything held is reported committed, watchers wake, and
///   commits are reported at once again.
/// - [`fail`](FaultyStore::fail): as a [`crate::RedbStore`] after a failed commit: what is held and
///   everything later is never committed, `submit`/`flush`/`wait` return [`StoreError::Unavailable`],
///   and the `commits()` sender is dropped so async waiters get `Err`.
///
/// `submit` waits for the inner store's commit (`inner.wait`) before it counts the ticket as
/// committable; that is immediate for a [`MemoryStore`], so wrap a store that commits in `submit`
/// unless a test can afford the blocking.
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    state: Mutex<State>,
    changed: Condvar,
    /// Dropped by `fail`, so async waiters wake with an error.
    watch_tx: Mutex<Option<watch::Sender<u64>>>,
    /// Kept to hand out receivers after the sender is gone.
    watch_rx: watch::Receiver<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while holding the lock should not turn every later call into a panic too.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl FaultyStore {
    /// A fault store over a fresh [`MemoryStore`], committing at once until [`stall`](Self::stall).
    pub fn new() -> Arc<FaultyStore> {
        FaultyStore::wrap(Arc::new(MemoryStore::new()))
    }

    /// A fault store over `inner` (see the type docs about inner stores that do not commit in `submit`).
    pub fn wrap(inner: Arc<dyn Store>) -> Arc<FaultyStore> {
        let (tx, rx) = watch::channel(0);
        Arc::new(FaultyStore {
            inner,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            watch_tx: Mutex::new(Some(tx)),
            watch_rx: rx,
        })
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn Store> {
        &self.inner
    }

    /// Holds commits from now on: tickets handed out are not reported committed until [`release`](Self::release).
    pub fn stall(&self) {
        lock(&self.state).stalled = true;
    }

    /// Reports everything held committed (waking watchers and `wait`ers) and stops holding. No effect
    /// after [`fail`](Self::fail).
    pub fn release(&self) {
        let mut st = lock(&self.state);
        st.stalled = false;
        if !st.failed {
            st.committed = st.issued;
            self.publish(st.committed);
        }
        drop(st);
        self.changed.notify_all();
    }

    /// Fails the store for good, as a failed commit does: held and later tickets never commit,
    /// `submit` returns [`StoreError::Unavailable`], and the `commits()` channel closes.
    pub fn fail(&self) {
        lock(&self.state).failed = true;
        // Closed before the condvar wakes anyone, so a woken waiter already sees the channel closed.
        lock(&self.watch_tx).take();
        self.changed.notify_all();
    }

    /// Called with the state lock held, so the watch never goes backwards.
    fn publish(&self, ticket: u64) {
        if let Some(tx) = lock(&self.watch_tx).as_ref() {
            tx.send_replace(ticket);
        }
    }

    fn unavailable() -> StoreError {
        StoreError::Unavailable {
            path: PathBuf::from("<FaultyStore>"),
            reason: "failed on purpose by FaultyStore::fail".to_string(),
        }
    }
}

impl Store for FaultyStore {
    fn submit(&self, ops: Vec<Op>) -> Result<u64, StoreError> {
        // Under the lock, so tickets are issued in the order ops reach the inner store.
        let mut st = lock(&self.state);
        if st.failed {
            return Err(Self::unavailable());
        }
        let inner = self.inner.submit(ops)?;
        self.inner.wait(inner)?;
        st.issued += 1;
        let ticket = st.issued;
        if !st.stalled {
            st.committed = ticket;
            self.publish(ticket);
            drop(st);
            self.changed.notify_all();
        }
        Ok(ticket)
    }

    fn committed(&self) -> u64 {
        lock(&self.state).committed
    }

    fn backlog(&self) -> usize {
        let st = lock(&self.state);
        usize::try_from(st.issued - st.committed).unwrap_or(usize::MAX)
    }

    fn commits(&self) -> watch::Receiver<u64> {
        self.watch_rx.clone()
    }

    fn load_queue(&self, client: &str, after: u64, limit: usize) -> Result<Vec<QueueEntry>, StoreError> {
        self.inner.load_queue(client, after, limit)
    }

    fn restore(&self) -> Result<Restored, StoreError> {
        self.inner.restore()
    }

    fn wait(&self, ticket: u64) -> Result<(), StoreError> {
        let mut st = lock(&self.state);
        while st.committed < ticket && !st.failed {
            st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if st.committed >= ticket {
            Ok(())
        } else {
            Err(Self::unavailable())
        }
    }

    /// As on a real store, a barrier: blocks while stalled, until `release` (from another thread) or `fail`.
    fn flush(&self) -> Result<(), StoreError> {
        let ticket = self.submit(Vec::new())?;
        self.wait(ticket)
    }

    /// The inner store's counters (ops are counted when applied, held or not), with `unavailable` set
    /// after `fail`.
    fn stats(&self) -> StoreStats {
        let mut s = self.inner.stats();
        s.unavailable |= lock(&self.state).failed;
        s
    }

    fn verify(&self) -> Result<CheckReport, StoreError> {
        self.inner.verify()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn session(client: &str) -> Vec<Op> {
        vec![Op::PutSession { client: Arc::from(client), data: Bytes::from_static(b"s") }]
    }

    #[test]
    fn tickets_are_increasing_and_commit_at_once_when_not_stalled() {
        let s = FaultyStore::new();
        let tickets: Vec<u64> = (0..5).map(|i| s.submit(session(&format!("c{i}"))).expect("submit")).collect();
        assert_eq!(tickets, vec![1, 2, 3, 4, 5]);
        assert_eq!((s.committed(), s.backlog(), *s.commits().borrow()), (5, 0, 5));
        s.wait(5).expect("committed");
        s.flush().expect("flush");
        assert_eq!(s.restore().expect("restore").sessions.len(), 5, "ops reach the inner store");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn stall_holds_commits_and_release_wakes_a_commits_waiter() {
        let s = FaultyStore::new();
        s.submit(session("a")).expect("submit");
        let mut probe = s.commits();
        assert_eq!(*probe.borrow_and_update(), 1);
        s.stall();
        let t2 = s.submit(session("b")).expect("submit");
        let t3 = s.submit(session("c")).expect("submit");
        assert!(t2 < t3, "tickets keep increasing while stalled");
        assert_eq!((s.committed(), s.backlog()), (1, 2), "held: committed stops, backlog grows");
        assert_eq!(s.restore().expect("restore").sessions.len(), 3, "ops are applied at submit time");

        let mut rx = s.commits();
        let waiter = tokio::spawn(async move { rx.wait_for(|c| *c >= t3).await.map(|c| *c) });
        // Let the waiter run until it parks on the channel (current-thread runtime: it runs only here).
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished(), "nothing committed yet: the waiter is still waiting");
        assert!(!probe.has_changed().expect("open"), "the watch did not move while stalled");

        s.release();
        let woke = waiter.await.expect("task").expect("channel open");
        assert_eq!(woke, t3, "release wakes the waiter with the held tickets");
        assert_eq!((s.committed(), s.backlog()), (t3, 0));
        let t4 = s.submit(session("d")).expect("submit");
        assert_eq!(s.committed(), t4, "after release, commits are reported at once again");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn fail_closes_the_commits_channel_and_refuses_submit() {
        let s = FaultyStore::new();
        s.stall();
        let held = s.submit(session("a")).expect("submit");
        let mut rx = s.commits();
        let waiter = tokio::spawn(async move { rx.wait_for(|c| *c >= held).await.map(|c| *c) });
        tokio::task::yield_now().await;
        s.fail();
        assert!(waiter.await.expect("task").is_err(), "a commits() waiter gets Err, not a hang");
        assert!(s.commits().changed().await.is_err(), "the sender is gone for new receivers too");
        assert!(s.submit(session("b")).expect_err("refused").is_unavailable());
        assert!(s.wait(held).expect_err("never committed").is_unavailable());
        assert!(s.flush().expect_err("refused").is_unavailable());
        s.release();
        assert_eq!(s.committed(), 0, "release after fail commits nothing");
        assert!(s.stats().unavailable);
    }

    #[test]
    fn wait_on_another_thread_returns_once_released() {
        let s = FaultyStore::new();
        s.stall();
        let t = s.submit(session("a")).expect("submit");
        let s2 = s.clone();
        let waiter = std::thread::spawn(move || s2.wait(t));
        s.release();
        assert!(waiter.join().expect("thread").is_ok());
    }
}
