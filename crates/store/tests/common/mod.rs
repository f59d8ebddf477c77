//! Op builders and small helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::Arc;

use bytes::Bytes;
use halyard_store::Op;

pub fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

pub fn put(id: u64, data: &str) -> Op {
    Op::PutMessage { id, data: b(data) }
}

pub fn enq(client: &str, seq: u64, msg: u64, meta: &str) -> Op {
    Op::Enqueue { client: Arc::from(client), seq, msg, meta: b(meta) }
}

pub fn update(client: &str, seq: u64, meta: &str) -> Op {
    Op::UpdateEntry { client: Arc::from(client), seq, meta: b(meta) }
}

pub fn deq(client: &str, seq: u64) -> Op {
    Op::Dequeue { client: Arc::from(client), seq }
}

pub fn session(client: &str, data: &str) -> Op {
    Op::PutSession { client: Arc::from(client), data: b(data) }
}

pub fn del_session(client: &str) -> Op {
    Op::DeleteSession { client: Arc::from(client) }
}

pub fn retain(topic: &str, data: &str) -> Op {
    Op::PutRetained { topic: Arc::from(topic), data: b(data) }
}

pub fn del_retained(topic: &str) -> Op {
    Op::DeleteRetained { topic: Arc::from(topic) }
}

/// A test-local temp dir (tempfile cleans it up).
pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

pub fn rel(client: &str, packet_id: u16) -> Op {
    Op::PutAwaitingRel { client: Arc::from(client), packet_id }
}

pub fn unrel(client: &str, packet_id: u16) -> Op {
    Op::DeleteAwaitingRel { client: Arc::from(client), packet_id }
}
