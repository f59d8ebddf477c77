//! PUBLISH and PUBREL from the client: topic aliases, the checks the spec asks of a server, routing, and the
//! QoS 1/2 acknowledgements (QoS 2 is routed on PUBLISH and its packet id held until PUBREL, so a resent
//! PUBLISH with DUP is not routed twice [MQTT-4.3.3-10]).

use super::{Close, Conn};
use halyard_codec::reason::rc;
use halyard_codec::{Packet, PubResp, Publish, QoS, Utf8};
use halyard_core::hooks::{Action, DropReason};
use halyard_core::metrics::Metrics;
use halyard_core::{Message, Writes};
use std::sync::Arc;
use std::time::{Duration, Instant};

impl Conn {
    pub(super) fn on_publish(&mut self, mut p: Publish, now: Instant) -> Result<(), Close> {
        Metrics::inc(&self.broker.metrics.messages_received);
        let v5 = self.version.is_v5();
        if (p.qos as u8) > self.zone.max_qos_allowed {
            // [MQTT-3.2.2-11] a QoS above Maximum QoS is a protocol error (0x9B).
            return Err(Close::error(rc::QOS_NOT_SUPPORTED, "PUBLISH QoS above max_qos_allowed"));
        }
        if p.retain && !self.zone.retain_available {
            // [MQTT-3.2.2-14]
            return Err(Close::error(rc::RETAIN_NOT_SUPPORTED, "retain is not available"));
        }
        self.resolve_alias(&mut p)?;
        if let Err(e) = halyard_topic::validate_topic_name(&p.topic, self.zone.max_topic_levels) {
            // [MQTT-3.3.2-2] no wildcards in a topic name; [MQTT-4.7.3-1] not empty.
            return Err(Close::error(rc::TOPIC_NAME_INVALID, format!("invalid topic name: {e}")));
        }
        if super::connect::is_share_topic(&p.topic) {
            // No subscription can match it [MQTT-4.8.2-1]: refuse rather than lose it (v5 DISCONNECT 0x90, v3 close).
            return Err(Close::error(rc::TOPIC_NAME_INVALID, "topic names may not start with $share/"));
        }

        let refusal = if p.topic.starts_with("$SYS/") || &*p.topic == "$SYS" {
            // Clients may not publish into the broker's own namespace.
            Some((rc::NOT_AUTHORIZED, "publishing to $SYS topics is not allowed"))
        } else if v5 && p.properties.payload_format_indicator == Some(1) && std::str::from_utf8(&p.payload).is_err() {
            // [MQTT-3.3.2-4] the payload claims to be UTF-8 and is not.
            Some((rc::PAYLOAD_FORMAT_INVALID, "payload is not valid UTF-8"))
        } else if !self.authorize(Action::Publish, &p.topic) {
            Some((rc::NOT_AUTHORIZED, "not authorized"))
        } else {
            None
        };
        // Checked and authorized as the client wrote it; routed under its listener's mountpoint.
        if let Some(t) = self.mounted(&p.topic)? {
            p.topic = t;
        }
        // A refused PUBLISH is acknowledged below (v5 with the code; v3, which cannot say no, plainly) and goes
        // nowhere; a not-authorized one is a counted drop. A resent QoS 2 id was authorized the first time.
        if matches!(refusal, Some((rc::NOT_AUTHORIZED, _)))
            && !(p.qos == QoS::ExactlyOnce && self.state.awaiting_rel.contains_key(&p.packet_id.unwrap_or(0)))
        {
            self.drop_inbound(&p, now, DropReason::NotAuthorized);
        }

        match p.qos {
            QoS::AtMostOnce => {
                if refusal.is_none() {
                    self.route(p, now, Writes::default())?;
                }
            }
            QoS::AtLeastOnce => {
                let pid = p.packet_id.unwrap_or(0);
                match refusal {
                    Some((code, why)) => self.send_ack(Packet::PubAck, pid, code, why),
                    None => {
                        let (code, ticket) = self.route(p, now, Writes::default())?;
                        self.ack_when_stored(Packet::PubAck, pid, code, ticket);
                    }
                }
            }
            QoS::ExactlyOnce => {
                let pid = p.packet_id.unwrap_or(0);
                if self.state.awaiting_rel.contains_key(&pid) {
                    let persistent = self.session.as_ref().is_some_and(|s| s.is_persistent());
                    if persistent && self.broker.store_unavailable() {
                        // The store failed: whether this id's message was committed cannot be told now, so the
                        // resend is not confirmed. A failure code ends the exchange [MQTT-4.3.3-4]; v3 has none.
                        self.state.awaiting_rel.remove(&pid);
                        if !v5 {
                            return Err(Close::error(rc::QUOTA_EXCEEDED, "the store cannot take messages"));
                        }
                        self.send_ack(Packet::PubRec, pid, rc::QUOTA_EXCEEDED, "the store cannot take messages");
                        return Ok(());
                    }
                    // A resend of a QoS 2 message we already have: acknowledge again (after the first
                    // acknowledgement, which may still wait for its commit), do not route again.
                    self.ack_when_stored(Packet::PubRec, pid, rc::SUCCESS, 0);
                    return Ok(());
                }
                if let Some((code, why)) = refusal {
                    self.send_ack(Packet::PubRec, pid, code, why);
                    return Ok(());
                }
                if v5 && self.state.awaiting_rel.len() >= usize::from(self.zone.max_inflight.max(1)) {
                    // [MQTT-3.3.4-9] more unacknowledged QoS 2 PUBLISHes than our Receive Maximum.
                    return Err(Close::error(rc::RECEIVE_MAXIMUM_EXCEEDED, "receive maximum exceeded"));
                }
                if !v5 && self.state.awaiting_rel.len() >= self.zone.max_awaiting_rel {
                    self.drop_inbound(&p, now, DropReason::AwaitingRelFull);
                    tracing::debug!(packet_id = pid, "max_awaiting_rel reached: QoS 2 message dropped");
                    return Ok(());
                }
                // The id is stored in the same commit as the message: a crash between two commits would
                // otherwise leave a routed message whose resend is routed again, or an id without its message.
                self.state.awaiting_rel.insert(pid, now);
                let with = self.awaiting_rel_put(pid);
                let routed = self.route(p, now, with);
                // A refused message (0x97) is not held: its retry must be routed, not answered as a duplicate.
                if !matches!(routed, Ok((code, _)) if code < 0x80) {
                    self.state.awaiting_rel.remove(&pid);
                }
                let (code, ticket) = routed?;
                self.ack_when_stored(Packet::PubRec, pid, code, ticket);
            }
        }
        Ok(())
    }

    /// Topic Alias [MQTT-3.3.2-7 .. -12]: a topic with an alias sets it, an empty topic uses it.
    fn resolve_alias(&mut self, p: &mut Publish) -> Result<(), Close> {
        // Through `get_mut`: a PUBLISH without properties (every MQTT 3.x one) must not get them allocated here.
        let Some(alias) = p.properties.get_mut().and_then(|p| p.topic_alias.take()) else {
            if p.topic.is_empty() {
                return Err(Close::error(rc::PROTOCOL_ERROR, "empty topic without topic alias"));
            }
            return Ok(());
        };
        if alias == 0 || alias > self.zone.max_topic_alias {
            return Err(Close::error(rc::TOPIC_ALIAS_INVALID, "topic alias 0 or above Topic Alias Maximum"));
        }
        if p.topic.is_empty() {
            match self.aliases.as_ref().and_then(|a| a.inbound.get(&alias)) {
                Some(t) => p.topic = t.clone(),
                None => return Err(Close::error(rc::PROTOCOL_ERROR, "unknown topic alias")),
            }
        } else {
            let budget = usize::try_from(self.zone.max_topic_alias_bytes.0).unwrap_or(usize::MAX);
            let a = self.aliases.get_or_insert_with(Default::default);
            let replaced = a.inbound.get(&alias).map_or(0, |t| t.len());
            let total = a.inbound_bytes - replaced + p.topic.len();
            if total > budget {
                // Not the client's protocol error, but more than this broker keeps for one connection [MQTT-4.13].
                tracing::info!(alias, total, budget, "topic aliases over max_topic_alias_bytes: disconnecting");
                return Err(Close::error(rc::QUOTA_EXCEEDED, "topic aliases over max_topic_alias_bytes"));
            }
            a.inbound_bytes = total;
            // A copy: the topic is a slice of the read buffer, and an alias lives as long as the connection.
            a.inbound.insert(alias, Utf8::from(p.topic.as_str()));
        }
        Ok(())
    }

    /// Routes the message; returns the v5 reason code for the acknowledgement and the store ticket it must
    /// wait for. A store that refuses new work (disk full) gets QoS 1/2 refused: 0x97 for v5 [MQTT-4.13],
    /// a disconnect for v3, which has no way to say no.
    /// `with`: ops to commit atomically with the message.
    fn route(&mut self, p: Publish, now: Instant, with: Writes) -> Result<(u8, u64), Close> {
        let qos = p.qos;
        let msg = self.message(p, now, self.broker.new_message_id());
        // No allocation unless a subscriber's backlog holds this publisher back (then it is kept for the driver).
        let mut congested = Vec::new();
        let published = self.broker.publish_into(Arc::new(msg), with, &mut congested);
        let work = u32::try_from(published.matched).unwrap_or(u32::MAX).saturating_add(1);
        // A subscriber that is behind should run before this publisher reads more: saturating the count makes
        // the driver yield after this packet.
        self.routed = if published.behind { u32::MAX } else { self.routed.saturating_add(work) };
        if !congested.is_empty() {
            self.congested.get_or_insert_with(Default::default).append(&mut congested);
        }
        let ticket = match published.ticket {
            Ok(t) => t,
            Err(e) if qos != QoS::AtMostOnce => {
                tracing::warn!(error = %e, "store refuses new work: QoS {} publish refused", qos as u8);
                if !self.version.is_v5() {
                    return Err(Close::error(rc::QUOTA_EXCEEDED, "the store cannot take messages"));
                }
                return Ok((rc::QUOTA_EXCEEDED, 0));
            }
            Err(_) => 0,
        };
        let code = if published.matched == 0 { rc::NO_MATCHING_SUBSCRIBERS } else { rc::SUCCESS };
        Ok((code, ticket))
    }

    /// The message a PUBLISH carries, as subscribers get it (its own topic alias and subscription ids removed,
    /// the expiry made an instant).
    fn message(&self, p: Publish, now: Instant, id: u64) -> Message {
        let mut props = p.properties;
        // Through `get_mut`: taking from properties a PUBLISH does not have must not allocate them.
        let expiry = props.get_mut().and_then(|p| p.message_expiry_interval.take());
        let expires_at = expiry.map(|s| now + Duration::from_secs(u64::from(s)));
        if let Some(p) = props.get_mut() {
            p.subscription_identifiers.clear();
        }
        Message {
            id,
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties: props.into_inner(),
            publisher: self.client.as_deref().map(|c| c.client_id.clone()),
            expires_at,
        }
    }

    /// A PUBLISH from this client that goes nowhere: counted, and reported to `message.dropped` (the message
    /// is built for that only when a callback is registered).
    fn drop_inbound(&self, p: &Publish, now: Instant, reason: DropReason) {
        if self.broker.hooks.message_dropped.is_empty() {
            Metrics::inc(reason.counter(&self.broker.metrics));
        } else {
            let msg = self.message(p.clone(), now, 0);
            self.broker.dropped(Some(&msg), None, reason);
        }
    }

    pub(super) fn on_pubrel(&mut self, a: PubResp) -> Result<(), Close> {
        let Some(arrived) = self.state.awaiting_rel.remove(&a.packet_id) else {
            // [MQTT-4.3.3-11] answer PUBREL with PUBCOMP even for an unknown id (v5 says so in the reason code).
            self.send_ack(Packet::PubComp, a.packet_id, rc::PACKET_IDENTIFIER_NOT_FOUND, "");
            return Ok(());
        };
        // PUBCOMP once the release is stored: the client may reuse the id right after, and a restart that still
        // remembered it would take the new PUBLISH for a resend and drop it.
        let release =
            self.session.as_ref().map(|s| self.broker.awaiting_rel_delete(s, a.packet_id)).unwrap_or_default();
        let ticket = match self.broker.submit(release) {
            Ok(t) => t,
            Err(e) => {
                // PUBCOMP has no refusal code, and any PUBCOMP frees the id: keep it and close instead; the
                // client resends PUBREL on its next connection [MQTT-4.4.0-1].
                tracing::warn!(error = %e, "store refuses new work: PUBREL not recorded");
                self.state.awaiting_rel.insert(a.packet_id, arrived);
                return Err(Close::error(rc::QUOTA_EXCEEDED, "the store cannot take messages"));
            }
        };
        self.ack_when_stored(Packet::PubComp, a.packet_id, rc::SUCCESS, ticket);
        Ok(())
    }

    /// The op storing inbound QoS 2 id `pid` as awaiting PUBREL, if the session is persistent.
    fn awaiting_rel_put(&self, pid: u16) -> Writes {
        let Some(session) = &self.session else { return Writes::default() };
        self.broker.awaiting_rel_put(session, pid)
    }

    /// PUBACK / PUBREC / PUBCOMP with a reason code (v5) and, for failures, a reason string.
    /// Acknowledgements keep their order [MQTT-4.6.0-2], [MQTT-4.6.0-3]: one that needs no commit still waits
    /// behind those that do.
    pub(super) fn send_ack(&mut self, kind: fn(PubResp) -> Packet, packet_id: u16, code: u8, why: &str) {
        let p = self.ack_packet(kind, packet_id, code, why);
        if !self.has_pending_acks() {
            self.send_trimmed(p);
        } else {
            self.queue_ack(0, p);
        }
    }

    /// The acknowledgement of a stored publish goes out once the store has committed `ticket` (the message is
    /// then safe in every persistent session's queue), and after every acknowledgement queued before it.
    fn ack_when_stored(&mut self, kind: fn(PubResp) -> Packet, packet_id: u16, code: u8, ticket: u64) {
        let p = self.ack_packet(kind, packet_id, code, "");
        if !self.has_pending_acks() && ticket <= self.broker.committed() {
            self.send_trimmed(p);
        } else {
            self.queue_ack(ticket, p);
        }
    }

    /// Sends the waiting acknowledgements whose tickets are committed, in order. `seen` is a commit the
    /// caller learnt of another way (the store's watch channel, which is updated before `committed()`).
    pub fn release_acks(&mut self, seen: u64) {
        self.broker.settle_committed(seen);
        let committed = self.broker.committed().max(seen);
        while let Some(p) = self.pending_acks.as_mut().and_then(|q| q.pop_front_if(|(t, _)| *t <= committed)) {
            self.send_trimmed(p.1);
        }
    }

    pub fn has_pending_acks(&self) -> bool {
        self.pending_acks.as_ref().is_some_and(|q| !q.is_empty())
    }

    fn queue_ack(&mut self, ticket: u64, p: Packet) {
        self.pending_acks.get_or_insert_with(Default::default).push_back((ticket, p));
    }

    pub fn pending_ack_count(&self) -> usize {
        self.pending_acks.as_ref().map_or(0, |q| q.len())
    }

    fn ack_packet(&self, kind: fn(PubResp) -> Packet, packet_id: u16, code: u8, why: &str) -> Packet {
        let mut r = PubResp::new(packet_id);
        if self.version.is_v5() {
            r.reason_code = code;
            if code >= 0x80 && !why.is_empty() {
                if let Some(s) = self.reason_string(why) {
                    r.properties.make_mut().reason_string = Some(s);
                }
            }
        }
        kind(r)
    }
}
