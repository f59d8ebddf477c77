//! Client id → session. The map lock is held for a lookup or an insert only; takeovers wait on the session's own
//! `connect_lock`, never on this map.

use crate::session::{SessionHandle, SessionId};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct Registry {
    sessions: Mutex<HashMap<Arc<str>, Arc<SessionHandle>>>,
    next_id: AtomicU64,
}

impl Registry {
    pub fn get(&self, client_id: &str) -> Option<Arc<SessionHandle>> {
        self.sessions.lock().get(client_id).cloned()
    }

    /// Returns the existing session for `client_id`, or registers `make(id)` as new (the bool says which).
    pub fn get_or_insert_with(
        &self,
        client_id: &str,
        make: impl FnOnce(SessionId, Arc<str>) -> SessionHandle,
    ) -> (Arc<SessionHandle>, bool) {
        self.get_or_insert(&Arc::from(client_id), make)
    }

    /// `get_or_insert_with` for a client id the caller already holds as an `Arc`: a new session shares it (one
    /// allocation of the id for the connection, the session and the registry).
    pub fn get_or_insert(
        &self,
        client_id: &Arc<str>,
        make: impl FnOnce(SessionId, Arc<str>) -> SessionHandle,
    ) -> (Arc<SessionHandle>, bool) {
        let mut map = self.sessions.lock();
        if let Some(h) = map.get(&**client_id) {
            return (h.clone(), false);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let key: Arc<str> = client_id.clone();
        let h = Arc::new(make(id, key.clone()));
        map.insert(key, h.clone());
        (h, true)
    }

    /// Removes the entry only if it still is this session (a newer one may have replaced it).
    pub fn remove(&self, handle: &SessionHandle) {
        let mut map = self.sessions.lock();
        if map.get(&*handle.client_id).is_some_and(|h| h.id == handle.id) {
            map.remove(&*handle.client_id);
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Every session, for broker-wide actions (shutdown).
    pub fn all(&self) -> Vec<Arc<SessionHandle>> {
        self.sessions.lock().values().cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(id: SessionId, client_id: Arc<str>) -> SessionHandle {
        SessionHandle::new(id, client_id, 100, false)
    }

    #[test]
    fn get_or_insert_with_creates_once_and_then_returns_the_same_handle() {
        let r = Registry::default();
        let (first, created) = r.get_or_insert_with("c", make);
        assert!(created);
        let (again, created) = r.get_or_insert_with("c", |_, _| panic!("must not make a second session"));
        assert!(!created);
        assert!(Arc::ptr_eq(&first, &again));
        assert!(Arc::ptr_eq(&r.get("c").expect("registered"), &first));
        assert_eq!(&*first.client_id, "c");
    }

    #[test]
    fn ids_are_unique_and_never_reused() {
        let r = Registry::default();
        let (a, _) = r.get_or_insert_with("a", make);
        let (b, _) = r.get_or_insert_with("b", make);
        r.remove(&a);
        let (a2, created) = r.get_or_insert_with("a", make);
        assert!(created, "a new session after the old one was removed");
        let ids = [a.id, b.id, a2.id];
        assert!(ids.iter().all(|&id| id != 0), "0 is never an id: {ids:?}");
        assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2], "{ids:?}");
    }

    #[test]
    fn remove_only_removes_the_handle_it_is_given() {
        let r = Registry::default();
        let (old, _) = r.get_or_insert_with("c", make);
        r.remove(&old);
        assert!(r.get("c").is_none());
        let (new, _) = r.get_or_insert_with("c", make);
        // A late removal of the old session must not take the new one with it.
        r.remove(&old);
        assert!(Arc::ptr_eq(&r.get("c").expect("the newer session stays"), &new));
        r.remove(&new);
        assert!(r.get("c").is_none());
    }

    #[test]
    fn len_and_all_list_every_session() {
        let r = Registry::default();
        assert!(r.is_empty());
        for c in ["a", "b", "c"] {
            r.get_or_insert_with(c, make);
        }
        r.get_or_insert_with("a", make);
        assert_eq!(r.len(), 3);
        let mut ids: Vec<String> = r.all().iter().map(|h| h.client_id.to_string()).collect();
        ids.sort();
        assert_eq!(ids, vec!["a", "b", "c"]);
        let (b, _) = r.get_or_insert_with("b", make);
        r.remove(&b);
        assert_eq!(r.len(), 2);
        assert!(!r.is_empty());
    }
}
