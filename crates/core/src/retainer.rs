//! Retained messages: one per topic; an empty payload deletes it [MQTT-3.3.1-6, MQTT-3.3.1-7].

use crate::message::Message;
use halyard_topic::RetainedTree;
use parking_lot::RwLock;
use std::sync::Arc;
use std::time::Instant;

/// A copy of `m` that owns its bytes. Retained messages live indefinitely; sharing the publisher's read buffer
/// would keep that whole buffer alive for each of them.
fn detached(m: &Message) -> Message {
    Message {
        id: m.id,
        topic: halyard_codec::Utf8::from(m.topic.as_str()),
        payload: bytes::Bytes::copy_from_slice(&m.payload),
        qos: m.qos,
        retain: m.retain,
        properties: m.properties.clone(),
        publisher: m.publisher.clone(),
        expires_at: m.expires_at,
    }
}

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
            tree.insert(&msg.topic, Arc::new(detached(msg)));
        }
    }

    /// The live retained messages matching `filter` (expired ones are skipped and removed).
    /// The retained messages matching `filter` that have not expired at `now` (expired ones are removed).
    pub fn matching_at(&self, filter: &str, now: Instant) -> Vec<Arc<Message>> {
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

    /// `matching_at` the current time (tests and tools; the engine passes its caller's time).
    pub fn matching(&self, filter: &str) -> Vec<Arc<Message>> {
        self.matching_at(filter, Instant::now())
    }

    pub fn len(&self) -> usize {
        self.tree.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
