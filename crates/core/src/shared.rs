//! Shared-subscription groups (`$share/<group>/<filter>`, `$queue/<filter>`): each message to the group goes to
//! one member, chosen by the configured strategy among the members that are online (offline members are used
//! only when no member is online, so that persistent members still queue rather than lose the message).

use crate::config::SharedStrategy;
use crate::session::SessionId;
use crate::subscription::SubEntry;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

#[derive(Debug, Default)]
pub struct SharedGroup {
    pub members: Vec<SubEntry>,
    next: AtomicUsize,
    /// Session id of the sticky member (0: none yet).
    sticky: AtomicU64,
}

impl SharedGroup {
    pub fn upsert(&mut self, entry: SubEntry) {
        match self.members.iter_mut().find(|m| m.session.id == entry.session.id) {
            Some(m) => *m = entry,
            None => self.members.push(entry),
        }
    }

    pub fn remove(&mut self, id: SessionId) -> bool {
        let before = self.members.len();
        self.members.retain(|m| m.session.id != id);
        before != self.members.len()
    }

    /// Picks the member for one message; `exclude` is a member that must not get it (it is leaving).
    pub fn pick(
        &self,
        strategy: SharedStrategy,
        publisher: Option<&str>,
        topic: &str,
        exclude: Option<SessionId>,
    ) -> Option<&SubEntry> {
        let eligible = |m: &&SubEntry| Some(m.session.id) != exclude && !m.session.is_removed();
        let online: Vec<&SubEntry> = self.members.iter().filter(eligible).filter(|m| m.session.is_online()).collect();
        let pool = if online.is_empty() { self.members.iter().filter(eligible).collect() } else { online };
        if pool.is_empty() {
            return None;
        }
        let n = pool.len();
        let i = match strategy {
            SharedStrategy::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % n,
            SharedStrategy::Random => (random_u64() % n as u64) as usize,
            SharedStrategy::Sticky => {
                let cur = self.sticky.load(Ordering::Relaxed);
                match pool.iter().position(|m| m.session.id == cur) {
                    Some(i) => i,
                    None => {
                        let i = (random_u64() % n as u64) as usize;
                        self.sticky.store(pool[i].session.id, Ordering::Relaxed);
                        i
                    }
                }
            }
            SharedStrategy::HashClientid => (hash(publisher.unwrap_or("")) % n as u64) as usize,
            SharedStrategy::HashTopic => (hash(topic) % n as u64) as usize,
        };
        pool.get(i).copied()
    }
}

fn hash(s: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// A cheap per-thread xorshift; randomness here only spreads load, it guards nothing.
fn random_u64() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
            t | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

#[cfg(test)]
mod tests;
