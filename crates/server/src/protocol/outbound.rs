//! Deliveries to the client: the inflight window (bounded by the client's Receive Maximum and `max_inflight`),
//! packet ids, outbound topic aliases, message expiry, the client's Maximum Packet Size, and the acknowledgements
//! that complete QoS 1/2 deliveries.

use super::{Close, Conn, FILL_BATCH, OUT_HIGH_WATER};
use halyard_codec::reason::rc;
use halyard_codec::{Packet, ProtocolVersion, PubResp, Publish, QoS, Utf8};
use halyard_core::hooks::DropReason;
use halyard_core::metrics::Metrics;
use halyard_core::session::{InflightEntry, Queued, SessionHandle, Stage};
use halyard_core::Delivery;
use std::sync::Arc;
use std::time::Instant;

thread_local! {
    /// The scratch list of a fill, one per thread rather than one per connection (an idle connection should not
    /// carry it; a fill never runs inside another on the same thread).
    static FILL_SCRATCH: std::cell::Cell<Vec<Queued>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Slots taken from the session queue whose first one's message is on disk, waiting for the driver's read.
pub(super) struct StoredRead {
    session: Arc<SessionHandle>,
    /// In queue order: stored positions and the in-memory deliveries taken after them.
    rest: Vec<Queued>,
    /// Handed to the driver already (`stored_read`).
    started: bool,
}

impl Conn {
    fn inflight_limit(&self) -> usize {
        usize::from(self.limits.receive_maximum.min(self.zone.max_inflight).max(1))
    }

    /// True when the connection can take more deliveries from the session queue now.
    pub fn wants_deliveries(&self) -> bool {
        self.is_connected() && self.out.len() < OUT_HIGH_WATER
    }

    /// Moves deliveries from the session queue to the output buffer while the window and buffer allow. Stops at
    /// a delivery whose publish has not committed yet (`waits_for_commit` then says so; the driver calls again
    /// after the next commit).
    pub fn fill(&mut self, now: Instant) {
        self.fill_seen(now, 0);
    }

    /// `fill`, knowing that the store committed at least `seen` (its watch channel runs ahead of `committed()`).
    fn fill_seen(&mut self, now: Instant, seen: u64) {
        let Some(session) = self.session.clone() else { return };
        self.broker.settle_committed(seen);
        if self.reading.is_some() {
            // Slots taken earlier wait for their disk read: nothing may overtake them.
            return;
        }
        self.gated = false;
        let committed = self.broker.committed().max(seen);
        while self.wants_deliveries() {
            let room = self.inflight_limit().saturating_sub(self.state.inflight.len());
            let mut batch = FILL_SCRATCH.take();
            if session.take(room, FILL_BATCH, committed, &mut batch) {
                if self.broker.store_unavailable() {
                    // Their commit will never come: take them anyway, `deliver` drops them.
                    session.take(room.saturating_sub(batch.len()), FILL_BATCH, u64::MAX, &mut batch);
                } else {
                    self.gated = true;
                }
            }
            let n = batch.len();
            let mut slots = batch.drain(..);
            while let Some(slot) = slots.next() {
                if self.out.len() >= OUT_HIGH_WATER {
                    // Enough is waiting to be written (a batch of large messages would otherwise pile up here):
                    // the rest goes back to the front of the queue, in order.
                    session.requeue_front(std::iter::once(slot).chain(slots.by_ref()).collect());
                    break;
                }
                match slot {
                    Queued::Ready(d) => self.deliver(d, now),
                    stored @ Queued::Stored { .. } => {
                        // Its message is on disk: the driver reads it (`stored_read`), and this slot and every
                        // one taken after it wait for `on_stored`, keeping queue order.
                        let rest: Vec<Queued> = std::iter::once(stored).chain(slots.by_ref()).collect();
                        self.reading = Some(Box::new(StoredRead { session: session.clone(), rest, started: false }));
                    }
                }
            }
            drop(slots);
            FILL_SCRATCH.set(batch);
            if n < FILL_BATCH || self.gated || self.reading.is_some() {
                break;
            }
        }
    }

    /// The stored deliveries the driver must read from the store for this connection, once per request: the
    /// session and the queue positions (ascending is not guaranteed; `Broker::load_stored` keeps this order).
    /// The read is disk I/O, so the driver does it off the connection's task and hands the result to
    /// `on_stored`.
    pub fn stored_read(&mut self) -> Option<(Arc<SessionHandle>, Vec<u64>)> {
        let r = self.reading.as_mut().filter(|r| !r.started)?;
        r.started = true;
        let seqs = r.rest.iter().filter_map(|q| if let Queued::Stored { seq, .. } = q { Some(*seq) } else { None });
        Some((r.session.clone(), seqs.collect()))
    }

    /// True while a stored read asked for by `stored_read` has not been answered.
    pub fn reads_stored(&self) -> bool {
        self.reading.is_some()
    }

    /// The driver read the stored deliveries it was asked for: they go out in queue order with the slots taken
    /// after them, then filling goes on. Positions that could not be read were counted by the engine.
    pub fn on_stored(&mut self, loaded: Vec<Delivery>, now: Instant) {
        let Some(r) = self.reading.take() else { return };
        let mut by_seq: std::collections::HashMap<u64, Delivery> = loaded.into_iter().map(|d| (d.seq, d)).collect();
        // Read slots become deliveries in memory (a position that could not be read is skipped).
        let mut ready = r.rest.into_iter().filter_map(|slot| match slot {
            Queued::Ready(d) => Some(d),
            Queued::Stored { seq, .. } => by_seq.remove(&seq),
        });
        while let Some(d) = ready.next() {
            if self.out.len() >= OUT_HIGH_WATER {
                // As in `fill`: the rest goes back to the front of the queue, already read.
                let rest = std::iter::once(d).chain(ready).map(Queued::Ready).collect();
                r.session.requeue_front(rest);
                return;
            }
            self.deliver(d, now);
        }
        self.fill(now);
    }

    /// Performs an outstanding stored read on the caller's thread (tests, and drivers with nothing better).
    pub fn read_stored_now(&mut self, now: Instant) {
        if let Some((session, seqs)) = self.stored_read() {
            let loaded = self.broker.load_stored(&session, &seqs);
            self.on_stored(loaded, now);
        }
    }

    /// The connection ends with a stored read outstanding: its slots go back to the front of the queue, in
    /// order, for whoever drains the session next.
    pub(super) fn give_back_unread(&mut self) {
        if let Some(r) = self.reading.take() {
            r.session.requeue_front(r.rest);
        }
    }

    /// True while something waits for a store commit: an acknowledgement, or a delivery whose publish has not
    /// committed yet. The driver then watches the store's commits and calls `on_commit`.
    pub fn waits_for_commit(&self) -> bool {
        self.gated || self.has_pending_acks()
    }

    /// The store committed up to `seen` (from its watch channel): acknowledgements and deliveries waiting for it
    /// go out.
    pub fn on_commit(&mut self, seen: u64, now: Instant) {
        self.release_acks(seen);
        if self.gated {
            self.fill_seen(now, seen);
        }
    }

    fn deliver(&mut self, d: Delivery, now: Instant) {
        // Only after a failure: `committed()` is final then (and a delivery taken past the gate is committed).
        if d.commit != 0 && self.broker.store_unavailable() && d.commit > self.broker.committed() {
            // Only taken when the store failed: its publisher was refused, so nobody may have it.
            self.broker.dropped(Some(&d.msg), self.client_id(), DropReason::StoreFailed);
            self.finished(&d);
            return;
        }
        if d.msg.is_expired(now) {
            // [MQTT-3.3.2-5] an expired message is not delivered.
            self.dropped(&d, DropReason::Expired);
            self.finished(&d);
            return;
        }
        if self.state.inflight.is_empty() {
            self.resent = false;
        }
        let packet_id = if d.qos == QoS::AtMostOnce {
            None
        } else {
            match self.state.next_packet_id() {
                Some(id) => Some(id),
                None => {
                    // Unreachable with a window of at most 65535; requeueing would reorder, so count and drop.
                    self.dropped(&d, DropReason::QueueFull);
                    self.finished(&d);
                    return;
                }
            }
        };
        if !self.write_publish(&d, packet_id, false, now) {
            self.finished(&d);
            return;
        }
        // First sends only: a resend is the same delivery.
        if let Some(info) = self.client.as_deref() {
            self.broker.hooks.message_delivered.each(|f| f(info, &d));
        }
        if let Some(packet_id) = packet_id {
            let stage = if d.qos == QoS::AtLeastOnce { Stage::AwaitPubAck } else { Stage::AwaitPubRec };
            self.record_progress(&d, packet_id, stage);
            self.state.inflight.push_back(InflightEntry { packet_id, delivery: d, stage, sent_at: now });
        }
    }

    /// Encodes one PUBLISH for delivery. Returns false when the message cannot be sent to this client at all
    /// (larger than its Maximum Packet Size: discarded as if delivered [MQTT-3.1.2-25]).
    fn write_publish(&mut self, d: &Delivery, packet_id: Option<u16>, dup: bool, now: Instant) -> bool {
        let mut p = Publish {
            dup,
            qos: d.qos,
            retain: d.retain,
            topic: self.unmount_topic(&d.msg.topic),
            packet_id,
            properties: Default::default(),
            payload: d.msg.payload.clone(),
        };
        if self.version.is_v5() {
            if let Some(props) = &d.msg.properties {
                p.properties = props.clone().into();
            }
            // [MQTT-3.3.2-6] the expiry sent is what is left of it. Set only when there is something to set:
            // writing to empty properties allocates them.
            let expiry = d.msg.remaining_expiry(now);
            if expiry.is_some() || p.properties.message_expiry_interval.is_some() {
                p.properties.make_mut().message_expiry_interval = expiry;
            }
            if !d.sub_ids.is_empty() || !p.properties.subscription_identifiers.is_empty() {
                p.properties.make_mut().subscription_identifiers.clone_from(&d.sub_ids);
            }
        }
        let packet = Packet::Publish(p);
        if halyard_codec::encoded_len(&packet, self.version) > self.limits.max_packet() {
            self.dropped(d, DropReason::TooLarge);
            tracing::debug!(topic = %d.msg.topic, "message larger than the client's Maximum Packet Size: dropped");
            return false;
        }
        let Packet::Publish(mut p) = packet else { return false };
        self.apply_alias(&mut p);
        Metrics::inc(&self.broker.metrics.messages_sent);
        self.send(&Packet::Publish(p));
        true
    }

    /// The broker assigns outbound topic aliases while the client's Topic Alias Maximum allows; once assigned,
    /// a topic is sent as an empty name plus its alias [MQTT-3.3.2-8].
    fn apply_alias(&mut self, p: &mut Publish) {
        if self.version != ProtocolVersion::V5 || self.limits.topic_alias_maximum == 0 {
            return;
        }
        let max = usize::from(self.limits.topic_alias_maximum);
        let budget = usize::try_from(self.zone.max_topic_alias_bytes.0).unwrap_or(usize::MAX);
        let a = self.aliases.get_or_insert_with(Default::default);
        if let Some(&alias) = a.outbound.get(&p.topic) {
            p.properties.make_mut().topic_alias = Some(alias);
            p.topic = Utf8::default();
        } else if a.outbound.len() < max && a.outbound_bytes + p.topic.len() <= budget {
            // Past the byte budget, topics are simply sent in full: aliases are an optimisation.
            let alias = u16::try_from(a.outbound.len() + 1).unwrap_or(u16::MAX);
            a.outbound_bytes += p.topic.len();
            // A copy: the message's topic is a slice of its publisher's read buffer, which it would keep alive.
            a.outbound.insert(Utf8::from(p.topic.as_str()), alias);
            p.properties.make_mut().topic_alias = Some(alias);
        }
    }

    /// A stored delivery remembers its packet id and stage, so that after a restart it is resent as the same
    /// packet (DUP) or continued with PUBREL.
    fn record_progress(&mut self, d: &Delivery, packet_id: u16, stage: Stage) {
        if let Some(s) = &self.session {
            s.record_sent(d, packet_id, stage, &mut self.ops);
        }
    }

    /// A delivery to this client that will not happen: counted and reported.
    fn dropped(&self, d: &Delivery, reason: DropReason) {
        self.broker.dropped(Some(&d.msg), self.client_id(), reason);
    }

    /// A QoS 1/2 delivery was acknowledged (PUBACK, PUBCOMP): `message.acked`, then its stored entry goes.
    fn acked(&mut self, d: &Delivery) {
        if let Some(info) = self.client.as_deref() {
            self.broker.hooks.message_acked.each(|f| f(info, d));
        }
        self.finished(d);
    }

    /// The delivery is complete: its stored entry goes.
    fn finished(&mut self, d: &Delivery) {
        if let Some(s) = &self.session {
            s.record_done(d, &mut self.ops);
        }
    }

    pub(super) fn on_puback(&mut self, a: PubResp) -> Result<(), Close> {
        if let Some(i) = self.state.inflight_position(a.packet_id) {
            if self.state.inflight[i].stage == Stage::AwaitPubAck {
                if let Some(e) = self.state.inflight.remove(i) {
                    self.acked(&e.delivery);
                }
            }
        }
        Ok(())
    }

    pub(super) fn on_pubrec(&mut self, a: PubResp, now: Instant) -> Result<(), Close> {
        match self.state.inflight_position(a.packet_id) {
            Some(i) if self.state.inflight[i].stage != Stage::AwaitPubAck => {
                if a.reason_code >= 0x80 {
                    // [MQTT-4.3.3-4]: a failure PUBREC ends the exchange; the id is free again.
                    if let Some(e) = self.state.inflight.remove(i) {
                        self.finished(&e.delivery);
                    }
                    return Ok(());
                }
                let e = &mut self.state.inflight[i];
                e.stage = Stage::AwaitPubComp;
                e.sent_at = now;
                let d = e.delivery.clone();
                self.moved_send_time();
                self.record_progress(&d, a.packet_id, Stage::AwaitPubComp);
                self.send_ack(Packet::PubRel, a.packet_id, rc::SUCCESS, "");
            }
            Some(_) => {
                // The id awaits a PUBACK (a QoS 1 delivery): a PUBREC for it is the client's protocol error. Never
                // start a QoS 2 flow for it (a PUBREL would confuse the client's id space): v5 closes with 0x82,
                // v3 (which has no way to say so) ignores it [MQTT-4.3.2], [MQTT-4.3.3].
                if self.version.is_v5() {
                    return Err(Close::error(rc::PROTOCOL_ERROR, "PUBREC for a QoS 1 delivery"));
                }
                tracing::debug!(packet_id = a.packet_id, "PUBREC for a QoS 1 delivery ignored");
            }
            None => self.send_ack(Packet::PubRel, a.packet_id, rc::PACKET_IDENTIFIER_NOT_FOUND, ""),
        }
        Ok(())
    }

    pub(super) fn on_pubcomp(&mut self, a: PubResp) -> Result<(), Close> {
        if let Some(i) = self.state.inflight_position(a.packet_id) {
            if self.state.inflight[i].stage == Stage::AwaitPubComp {
                if let Some(e) = self.state.inflight.remove(i) {
                    self.acked(&e.delivery);
                }
            }
        }
        Ok(())
    }

    /// Resends every unacknowledged PUBLISH (DUP set) and PUBREL: on reconnect [MQTT-4.4.0-1].
    pub(super) fn resend_all(&mut self, now: Instant) {
        for i in 0..self.state.inflight.len() {
            self.resend(i, now);
        }
    }

    /// MQTT 3.x only: resend what waited longer than retry_interval. MQTT 5 forbids resending on a live
    /// connection [MQTT-4.4.0-1].
    pub(super) fn resend_due(&mut self, now: Instant) {
        if self.version.is_v5() {
            return;
        }
        let retry = self.zone.retry_interval.0;
        for i in 0..self.state.inflight.len() {
            if now.duration_since(self.state.inflight[i].sent_at) >= retry {
                self.resend(i, now);
            }
        }
    }

    pub(super) fn next_resend(&self) -> Option<Instant> {
        if self.version.is_v5() {
            return None;
        }
        let retry = self.zone.retry_interval.0;
        if !self.resent {
            // First sends are pushed at the back in time order: the oldest is at the front. (This runs at every
            // event of the connection; a scan of a 1,000-message window there cost 3 % of fan-in's CPU.)
            return self.state.inflight.front().map(|e| e.sent_at + retry);
        }
        self.state.inflight.iter().map(|e| e.sent_at + retry).min()
    }

    /// An in-flight entry got a new send time in place: the window's time order no longer holds.
    fn moved_send_time(&mut self) {
        self.resent = true;
    }

    fn resend(&mut self, i: usize, now: Instant) {
        let Some(e) = self.state.inflight.get_mut(i) else { return };
        e.sent_at = now;
        let (stage, packet_id, d) = (e.stage, e.packet_id, e.delivery.clone());
        self.moved_send_time();
        match stage {
            Stage::AwaitPubComp => self.send_ack(Packet::PubRel, packet_id, rc::SUCCESS, ""),
            Stage::AwaitPubAck | Stage::AwaitPubRec => {
                // [MQTT-3.3.1-1] DUP on a resend.
                self.write_publish(&d, Some(packet_id), true, now);
            }
        }
    }
}
