//! SUBSCRIBE and UNSUBSCRIBE: filter checks, shared groups, granted QoS, and retained messages on subscribe
//! (sent after the SUBACK, through the session queue, so their order with live messages is kept).

use super::mountpoint::mount_filter;
use super::{Close, Conn};
use halyard_codec::reason::{rc, v3};
use halyard_codec::{Packet, QoS, SubAck, Subscribe, UnsubAck, Unsubscribe};
use halyard_core::hooks::{Action, SubscribeRequest};
use halyard_core::session::SubscriptionRecord;
use halyard_core::Delivery;
use std::time::Instant;

impl Conn {
    pub(super) fn on_subscribe(&mut self, s: Subscribe, now: Instant) -> Result<(), Close> {
        let Some(session) = self.session.clone() else { return Ok(()) };
        let v5 = self.version.is_v5();
        let sub_id = s.properties.subscription_identifiers.first().copied();
        let mut codes = Vec::with_capacity(s.filters.len());
        let mut over_quota = 0usize;
        let mut requests: Vec<SubscribeRequest> = s
            .filters
            .into_iter()
            .map(|(filter, options)| SubscribeRequest { filter, options, refused: None })
            .collect();
        // `client.subscribe` may rewrite or refuse filters; it keeps one entry per filter for the SUBACK.
        if let Some(info) = self.client.as_deref() {
            requests = self.broker.hooks.client_subscribe.fold(requests, |f, r| f(info, r)).into_inner();
        }
        let mountpoint = self.filter_mount();
        for SubscribeRequest { filter, options: opts, refused } in &requests {
            if let Some(code) = refused {
                codes.push(if v5 { *code } else { v3::SUBACK_FAILURE });
                continue;
            }
            // Authorized as the client wrote it; subscribed under its listener's mountpoint.
            let (own, mounted) = (filter, mountpoint.as_deref().map(|mp| mount_filter(mp, filter)));
            let filter = mounted.as_ref().unwrap_or(own);
            let parsed = match halyard_topic::parse_subscription(filter, self.zone.max_topic_levels) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(filter = %filter, error = %e, "invalid topic filter");
                    codes.push(if v5 { rc::TOPIC_FILTER_INVALID } else { v3::SUBACK_FAILURE });
                    continue;
                }
            };
            let (plain_filter, group) = (parsed.filter(), parsed.group());
            if group.is_some() && !self.zone.shared_subscription {
                codes.push(if v5 { rc::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED } else { v3::SUBACK_FAILURE });
                continue;
            }
            if group.is_some() && opts.no_local {
                // [MQTT-3.8.3-4] No Local on a shared subscription is a protocol error.
                return Err(Close::error(rc::PROTOCOL_ERROR, "No Local set on a shared subscription"));
            }
            if !self.zone.wildcard_subscription && halyard_topic::is_wildcard(plain_filter) {
                codes.push(if v5 { rc::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED } else { v3::SUBACK_FAILURE });
                continue;
            }
            // The filter as subscribed (with its `$share/<group>/`): an ACL may treat shared ones apart.
            if !self.authorize(Action::Subscribe, own) {
                codes.push(if v5 { rc::NOT_AUTHORIZED } else { v3::SUBACK_FAILURE });
                continue;
            }
            let mut options = *opts;
            // The granted QoS may be lower than asked [MQTT-3.9.3-2]; never above max_qos_allowed.
            options.qos = QoS::from_u8(((opts.qos as u8).min(self.zone.max_qos_allowed)).min(2)).unwrap_or_default();
            if !v5 {
                options.no_local = false;
                options.retain_as_published = false;
                options.retain_handling = 0;
            }
            if self.bridge {
                // A bridge forwards what it receives: without no-local its own messages would come back and loop,
                // and it needs the retain flag as published to mirror retained messages (what EMQX and
                // Mosquitto do for the private bridge levels).
                options.no_local = true;
                options.retain_as_published = true;
            }
            let replacing = self.state.subscriptions.contains_key(filter.as_str());
            if !replacing && self.over_subscription_quota(filter.len()) {
                over_quota += 1;
                codes.push(if v5 { rc::QUOTA_EXCEEDED } else { v3::SUBACK_FAILURE });
                continue;
            }
            let existed = self.broker.subscribe(&session, plain_filter, group, options, sub_id);
            if !replacing {
                self.subscription_bytes =
                    self.subscription_bytes.saturating_add(u32::try_from(filter.len()).unwrap_or(u32::MAX));
            }
            self.state.subscriptions.insert(filter.to_string(), SubscriptionRecord { options, sub_id });
            codes.push(options.qos as u8);
            if let Some(info) = self.client.as_deref() {
                self.broker.hooks.session_subscribed.each(|f| f(info, filter, &options));
            }

            // Retained messages [MQTT-3.3.1-9, MQTT-3.3.1-10, MQTT-3.3.1-11]; none for shared subscriptions.
            let send_retained = group.is_none()
                && match options.retain_handling {
                    0 => true,
                    1 => !existed,
                    _ => false,
                };
            if send_retained {
                for (m, commit) in self.broker.retained_for(plain_filter, now) {
                    let d = Delivery {
                        qos: m.qos.min(options.qos),
                        msg: m,
                        retain: true,
                        sub_ids: sub_id.into_iter().collect(),
                        shared: None,
                        seq: 0,
                        commit,
                    };
                    self.broker.queue_retained(&session, d, &mut self.ops);
                }
            }
        }
        if over_quota > 0 {
            // Once per SUBSCRIBE, not per filter: a client looping over filters must not flood the log.
            tracing::info!(
                refused = over_quota,
                subscriptions = self.state.subscriptions.len(),
                bytes = self.subscription_bytes,
                "subscriptions refused: over mqtt.max_subscriptions or mqtt.max_subscriptions_bytes"
            );
        }
        self.broker.persist_subscriptions(&session, &self.state);
        // [MQTT-3.8.4-1] SUBACK with the same packet id, one code per filter [MQTT-3.8.4-6].
        self.send_trimmed(Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            properties: Default::default(),
            reason_codes: codes,
        }));
        Ok(())
    }

    /// Whether one more subscription of `filter_len` bytes would pass `mqtt.max_subscriptions` or
    /// `mqtt.max_subscriptions_bytes` (the client is told 0x97 / 0x80 for that filter).
    fn over_subscription_quota(&self, filter_len: usize) -> bool {
        let count = self.state.subscriptions.len();
        let bytes_budget = usize::try_from(self.zone.max_subscriptions_bytes.0).unwrap_or(usize::MAX);
        count >= self.zone.max_subscriptions || self.subscription_bytes as usize + filter_len > bytes_budget
    }

    pub(super) fn on_unsubscribe(&mut self, u: Unsubscribe) -> Result<(), Close> {
        let Some(session) = self.session.clone() else { return Ok(()) };
        let mut codes = Vec::with_capacity(u.filters.len());
        if let Some(info) = self.client.as_deref() {
            self.broker.hooks.client_unsubscribe.each(|f| f(info, &u.filters));
        }
        let mountpoint = self.filter_mount();
        for filter in &u.filters {
            let mounted = mountpoint.as_deref().map(|mp| mount_filter(mp, filter));
            let filter = mounted.as_ref().unwrap_or(filter);
            let Ok(parsed) = halyard_topic::parse_subscription(filter, 0) else {
                // An empty or malformed filter names no subscription at all: 0x8F, not 0x11 [MQTT-3.10.3-2],
                // section 3.11.3 (Topic Filter invalid).
                codes.push(rc::TOPIC_FILTER_INVALID);
                continue;
            };
            let removed = self.state.subscriptions.remove(filter.as_str()).is_some();
            if removed {
                self.subscription_bytes =
                    self.subscription_bytes.saturating_sub(u32::try_from(filter.len()).unwrap_or(u32::MAX));
            }
            self.broker.unsubscribe(&session, parsed.filter(), parsed.group());
            if removed {
                if let Some(info) = self.client.as_deref() {
                    self.broker.hooks.session_unsubscribed.each(|f| f(info, filter));
                }
            }
            codes.push(if removed { rc::SUCCESS } else { rc::NO_SUBSCRIPTION_EXISTED });
        }
        self.broker.persist_subscriptions(&session, &self.state);
        if !self.version.is_v5() {
            codes.clear();
        }
        // [MQTT-3.10.4-4] UNSUBACK even when nothing was subscribed.
        self.send_trimmed(Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            properties: Default::default(),
            reason_codes: codes,
        }));
        Ok(())
    }
}
