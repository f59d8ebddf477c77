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
        let mut map = self.sessions.lock();
        if let Some(h) = map.get(client_id) {
            return (h.clone(), false);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let key: Arc<str> = Arc::from(client_id);
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
