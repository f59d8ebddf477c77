//! Which sessions get a message. Plain subscriptions and shared groups each live in a `SubscriptionTrie`
//! (exact filters by hash lookup, wildcards by level trie). The locks are held only while matching, never while
//! pushing into session queues and never across an `.await`.

use crate::config::SharedStrategy;
use crate::message::{Delivery, Message, SharedOrigin};
use crate::metrics::Metrics;
use crate::session::{SessionHandle, SessionId};
use crate::shared::SharedGroup;
pub use crate::subscription::SubEntry;
use halyard_codec::QoS;
use halyard_topic::SubscriptionTrie;
use parking_lot::RwLock;
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct Router {
    plain: RwLock<SubscriptionTrie<SessionId, SubEntry>>,
    /// Keyed by group name under each filter.
    shared: RwLock<SubscriptionTrie<Arc<str>, SharedGroup>>,
}

impl Router {
    /// Adds or replaces a subscription. Returns true if the session already had this one.
    pub fn subscribe(&self, filter: &str, group: Option<&str>, entry: SubEntry) -> bool {
        match group {
            None => self.plain.write().insert(filter, entry.session.id, entry).is_some(),
            Some(g) => {
                let key: Arc<str> = Arc::from(g);
                let id = entry.session.id;
                let mut shared = self.shared.write();
                match shared.get_mut(filter, &key) {
                    Some(grp) => {
                        let existed = grp.members.iter().any(|m| m.session.id == id);
                        grp.upsert(entry);
                        existed
                    }
                    None => {
                        let mut grp = SharedGroup::default();
                        grp.upsert(entry);
                        shared.insert(filter, key, grp);
                        false
                    }
                }
            }
        }
    }

    /// Removes a subscription; returns whether it existed.
    pub fn unsubscribe(&self, filter: &str, group: Option<&str>, id: SessionId) -> bool {
        match group {
            None => self.plain.write().remove(filter, &id).is_some(),
            Some(g) => {
                let key: Arc<str> = Arc::from(g);
                let mut shared = self.shared.write();
                let (removed, now_empty) = match shared.get_mut(filter, &key) {
                    Some(grp) => (grp.remove(id), grp.members.is_empty()),
                    None => (false, false),
                };
                if now_empty {
                    shared.remove(filter, &key);
                }
                removed
            }
        }
    }

    /// Finds every session that gets `msg` and the delivery each gets, into `out`; returns how many. Nothing is
    /// queued here: the broker stores the deliveries first and then queues them, so that no subscriber can
    /// acknowledge a delivery before the store has its entry.
    pub fn route(
        &self,
        msg: &Arc<Message>,
        strategy: SharedStrategy,
        metrics: &Metrics,
        out: &mut Vec<(Arc<SessionHandle>, Delivery)>,
    ) -> usize {
        let topic = msg.topic.as_str();
        let mut targets: Vec<(SubEntry, QoS, bool, Vec<u32>)> = Vec::new();
        self.plain.read().for_each_match(topic, |_, _, e| {
            if e.options.no_local && msg.publisher.as_deref() == Some(&*e.session.client_id) {
                return;
            }
            targets.push((e.clone(), e.options.qos, e.options.retain_as_published, e.sub_id.into_iter().collect()));
        });
        // One copy per session when several of its filters match: the highest QoS and every subscription id
        // [MQTT-3.3.4-2, MQTT-3.3.4-3].
        if targets.len() > 1 {
            targets.sort_by_key(|t| t.0.session.id);
            targets.dedup_by(|later, kept| {
                if later.0.session.id != kept.0.session.id {
                    return false;
                }
                kept.1 = kept.1.max(later.1);
                kept.2 |= later.2;
                kept.3.append(&mut later.3);
                true
            });
        }
        let before = out.len();
        for (e, qos, rap, sub_ids) in targets {
            out.push((e.session, delivery(msg, qos, rap, sub_ids, None)));
        }
        self.shared.read().for_each_match(topic, |filter, group, grp| {
            if let Some(m) = grp.pick(strategy, msg.publisher.as_deref(), topic, None) {
                let origin = Arc::new(SharedOrigin { group: group.clone(), filter: Arc::from(filter) });
                let sub_ids = m.sub_id.into_iter().collect();
                let d = delivery(msg, m.options.qos, m.options.retain_as_published, sub_ids, Some(origin));
                out.push((m.session.clone(), d));
            }
        });
        let n = out.len() - before;
        if n == 0 {
            Metrics::inc(&metrics.messages_no_subscribers);
        }
        n
    }

    /// Another member of a shared-subscription delivery's group, with the delivery it gets; `None` when no
    /// other member exists (the caller decides what becomes of it).
    pub fn redispatch(
        &self,
        d: &Delivery,
        leaving: SessionId,
        strategy: SharedStrategy,
    ) -> Option<(Arc<SessionHandle>, Delivery)> {
        let origin = d.shared.clone()?;
        let shared = self.shared.read();
        let e = shared
            .get(&origin.filter, &origin.group)
            .and_then(|g| g.pick(strategy, d.msg.publisher.as_deref(), &d.msg.topic, Some(leaving)))?;
        let sub_ids = e.sub_id.into_iter().collect();
        Some((e.session.clone(), delivery(&d.msg, e.options.qos, e.options.retain_as_published, sub_ids, Some(origin))))
    }

    pub fn subscription_count(&self) -> usize {
        self.plain.read().len() + self.shared.read().len()
    }
}

fn delivery(
    msg: &Arc<Message>,
    granted: QoS,
    rap: bool,
    sub_ids: Vec<u32>,
    shared: Option<Arc<SharedOrigin>>,
) -> Delivery {
    Delivery {
        msg: msg.clone(),
        qos: msg.qos.min(granted),
        retain: rap && msg.retain,
        sub_ids,
        shared,
        seq: 0,
        commit: 0,
    }
}

#[cfg(test)]
mod tests;
