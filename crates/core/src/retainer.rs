//! Retained messages: one per topic; an empty payload deletes it [MQTT-3.3.1-6, MQTT-3.3.1-7].

use crate::message::Message;
use halyard_topic::RetainedTree;
use parking_lot::RwLock;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Default)]
pub struct Retainer {
    tree: RwLock<RetainedTree<Arc<Message>>>,
}

impl Retainer {
    /// Stores `msg` as the topic's retained message, or deletes it when the payload is empty.
    pub fn store(&self, msg: &Arc<Message>) {
        let mut tree = self.tree.write();
        if msg.payload.is_empty() {
            tree.remove(&msg.topic);
        } else {
            tree.insert(&msg.topic, msg.clone());
        }
    }

    /// The live retained messages matching `filter` (expired ones are skipped and removed).
    pub fn matching(&self, filter: &str) -> Vec<Arc<Message>> {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut expired = false;
        self.tree.read().for_each_match(filter, |_, m| {
            if m.is_expired(now) {
                expired = true;
            } else {
                out.push(m.clone());
            }
        });
        if expired {
            self.tree.write().retain(|_, m| !m.is_expired(now));
        }
        out
    }

    pub fn len(&self) -> usize {
        self.tree.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
