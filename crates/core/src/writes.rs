//! Store work gathered while a connection handles packets and deliveries. Core builds every store record and
//! operation; the protocol state machine only carries them (opaque) from where it gathered them to
//! [`crate::Broker::submit`], so the server crate never sees a store record and does not depend on the store.

use halyard_store::Op;

/// Store operations to submit together, in order (one `submit` is atomic: all or none after a crash).
#[derive(Debug, Default)]
pub struct Writes(pub(crate) Vec<Op>);

impl Writes {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Appends `other`'s operations after this one's.
    pub fn append(&mut self, other: Writes) {
        self.0.extend(other.0);
    }

    pub(crate) fn push(&mut self, op: Op) {
        self.0.push(op);
    }

    pub(crate) fn from_op(op: Option<Op>) -> Writes {
        Writes(op.into_iter().collect())
    }

    /// The operations, for tests that check what a step would write.
    pub fn ops(&self) -> &[Op] {
        &self.0
    }
}
