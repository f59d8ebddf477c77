//! CONNECT → CONNACK: client id rules, session expiry, keepalive, will, the client's v5 limits, and what the
//! broker advertises back.

use super::{ClientLimits, Close, Conn, Phase, Step};
use halyard_codec::reason::{connack_v5_to_v3, rc};
use halyard_codec::{ConnAck, Connect, Packet, Properties, ProtocolVersion, Utf8};
use halyard_core::broker::{Attached, DetachReason, Will};
use halyard_core::hooks::{AuthResult, ClientInfo};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// What the driver needs to attach the session.
#[derive(Debug)]
pub struct ConnectRequest {
    pub client_id: Arc<str>,
    pub clean_start: bool,
    pub expiry_interval: u32,
    /// True when the broker chose the client id (v5 Assigned Client Identifier).
    assigned: bool,
    requested_expiry: u32,
    client_keep_alive: u16,
}

static ASSIGNED_IDS: AtomicU64 = AtomicU64::new(0);

impl Conn {
    pub(super) fn on_connect(&mut self, c: Connect, now: Instant) -> Step {
        self.version = c.protocol;
        self.bridge = c.bridge;
        let v5 = c.protocol.is_v5();
        let zone = self.zone.clone();

        // Keepalive: a v5 client is told to use at most max_keepalive (or server_keepalive when set) [MQTT-3.2.2-21].
        self.keep_alive = c.keep_alive;
        if v5 {
            if let Some(k) = zone.server_keepalive {
                self.keep_alive = k;
            } else if c.keep_alive > zone.max_keepalive {
                self.keep_alive = zone.max_keepalive;
            }
        }
        let origin = self.origin.take().map(|o| *o).unwrap_or_default();
        // A TLS client's certificate may stand for its client id and username (`mqtt.peer_cert_as_clientid`,
        // `peer_cert_as_username`): the certificate's value replaces CONNECT's for the session, the hooks and
        // the logs. A value that cannot be an MQTT string (`crt`) refuses the client below.
        // One allocation of the id serves this connection, its hooks' view, the session and the registry.
        let (own_id, bad_cert_id): (Arc<str>, _) = match origin.cert_clientid {
            Some(Ok(id)) => (id, None),
            Some(Err(why)) => (Arc::from(c.client_id.as_str()), Some(why)),
            None => (Arc::from(c.client_id.as_str()), None),
        };
        let (username, bad_cert_username) = match origin.cert_username {
            Some(Ok(u)) => (Some(u), None),
            Some(Err(why)) => (c.username.as_ref().map(|u| Arc::from(u.as_str())), Some(why)),
            None => (c.username.as_ref().map(|u| Arc::from(u.as_str())), None),
        };
        // Built once: the hooks' view of this client. The id is the client's own until one is assigned below,
        // so that a refusal before that still reports who asked.
        self.client = Some(Arc::new(ClientInfo {
            client_id: own_id.clone(),
            username,
            peer: origin.peer,
            protocol: c.protocol,
            clean_start: c.clean_start,
            keepalive: self.keep_alive,
            is_superuser: false,
        }));
        if let Some(why) = bad_cert_id {
            return self.refuse(rc::CLIENT_IDENTIFIER_NOT_VALID, why);
        }
        if let Some(why) = bad_cert_username {
            return self.refuse(rc::BAD_USER_NAME_OR_PASSWORD, why);
        }

        // Client identifier [MQTT-3.1.3-5..9].
        let mut assigned = false;
        let client_id: Arc<str> = if own_id.is_empty() {
            let allowed = match c.protocol {
                ProtocolVersion::V5 => true,
                // [MQTT-3.1.3-7], [MQTT-3.1.3-8]: a 3.1.1 client may omit its id only with clean session 1.
                ProtocolVersion::V4 => c.clean_start,
                // MQTT 3.1 requires 1 to 23 characters.
                ProtocolVersion::V3 => false,
            };
            if !allowed {
                return self.refuse(rc::CLIENT_IDENTIFIER_NOT_VALID, "empty client id needs clean session");
            }
            assigned = true;
            let n = ASSIGNED_IDS.fetch_add(1, Ordering::Relaxed);
            Arc::from(format!("halyard-{:x}-{n}", std::process::id()).as_str())
        } else {
            own_id
        };
        if assigned {
            if let Some(info) = self.client.as_mut() {
                Arc::make_mut(info).client_id = client_id.clone();
            }
        }
        if let Some(info) = self.client.as_deref() {
            self.broker.hooks.client_connect.each(|f| f(info));
        }
        if client_id.len() > zone.max_clientid_len {
            return self.refuse(rc::CLIENT_IDENTIFIER_NOT_VALID, "client id longer than max_clientid_len");
        }
        if c.properties.authentication_method.is_some() {
            // Enhanced authentication (AUTH exchange) is not offered [MQTT-4.12.0-1].
            return self.refuse(rc::BAD_AUTHENTICATION_METHOD, "enhanced authentication is not supported");
        }
        if let Some(template) = origin.mountpoint {
            if let Err(step) = self.set_mountpoint(&template, &client_id) {
                return step;
            }
        }

        // Will message [MQTT-3.1.2-8..15].
        if let Some(w) = &c.will {
            if halyard_topic::validate_topic_name(&w.topic, zone.max_topic_levels).is_err() || is_share_topic(&w.topic)
            {
                if !v5 {
                    // A non-conforming CONNECT is closed without CONNACK in 3.1.1 [MQTT-3.1.4-1], [MQTT-3.1.2-9]
                    // (the will topic must be a valid topic name); 3.1.1 has no return code for it.
                    self.phase = Phase::Closed;
                    return Step::Close(Close { publish_will: false, ..Close::lost("invalid will topic") });
                }
                // MQTT 5 allows a CONNACK with a reason code before closing [MQTT-3.1.4-1], section 4.13.
                return self.refuse(rc::TOPIC_NAME_INVALID, "invalid will topic");
            }
            if (w.qos as u8) > zone.max_qos_allowed {
                return self.refuse(rc::QOS_NOT_SUPPORTED, "will QoS above max_qos_allowed");
            }
            if w.retain && !zone.retain_available {
                return self.refuse(rc::RETAIN_NOT_SUPPORTED, "will retain but retain is not available");
            }
            // A will goes out under the listener's mountpoint, like the client's own publishes.
            let topic = match self.mounted(&w.topic) {
                Ok(t) => t.unwrap_or_else(|| w.topic.clone()),
                Err(_) => return self.refuse(rc::TOPIC_NAME_INVALID, "will topic too long with the mountpoint"),
            };
            let mut props = w.properties.clone();
            let delay = props.get_mut().and_then(|p| p.will_delay_interval.take()).unwrap_or(0);
            let message_expiry = props.get_mut().and_then(|p| p.message_expiry_interval.take());
            self.will = Some(Box::new(Will {
                topic,
                payload: w.payload.clone(),
                qos: w.qos,
                retain: w.retain,
                properties: props.into_inner(),
                message_expiry,
                delay,
            }));
        }

        // Session expiry: v5 asks; v3 clean session 0 means "keep it", capped by session_expiry_interval.
        let requested_expiry = if v5 {
            c.properties.session_expiry_interval.unwrap_or(0)
        } else if c.clean_start {
            0
        } else {
            u32::MAX
        };
        let expiry_interval = self.cap_expiry(requested_expiry);
        self.connect_expiry = requested_expiry;

        // Authentication, last of the checks and before the session is touched: a refused client must not take
        // over or discard anyone's session.
        if !self.authenticate(c.password.as_deref()) {
            return self.refuse(rc::NOT_AUTHORIZED, "not authorized");
        }

        let p = &c.properties;
        self.limits = ClientLimits {
            receive_maximum: p.receive_maximum.unwrap_or(u16::MAX),
            maximum_packet_size: p.maximum_packet_size.unwrap_or(u32::MAX),
            topic_alias_maximum: p.topic_alias_maximum.unwrap_or(0),
            request_problem_information: p.request_problem_information.unwrap_or(1) == 1,
        };
        self.last_received = now;
        Step::Attach(ConnectRequest {
            client_keep_alive: c.keep_alive,
            client_id,
            clean_start: c.clean_start,
            expiry_interval,
            assigned,
            requested_expiry,
        })
    }

    /// `client.authenticate`: false when the chain denies. A chain nobody decides lets the client in.
    fn authenticate(&mut self, password: Option<&[u8]>) -> bool {
        let hook = &self.broker.hooks.client_authenticate;
        let Some(info) = self.client.as_mut() else { return true };
        if hook.is_empty() {
            return true;
        }
        match hook.fold(AuthResult::Ignore, |f, acc| f(info, password, acc)).into_inner() {
            AuthResult::Deny => false,
            AuthResult::Allow { is_superuser } => {
                Arc::make_mut(info).is_superuser = is_superuser;
                true
            }
            AuthResult::Ignore => true,
        }
    }

    /// CONNACK with a failure code, then close [MQTT-3.2.2-6 .. -7].
    pub(super) fn refuse(&mut self, v5_code: u8, why: &'static str) -> Step {
        let code = if self.version.is_v5() { v5_code } else { connack_v5_to_v3(v5_code) };
        let mut properties: Box<Properties> = Box::default();
        if self.version.is_v5() {
            properties.reason_string = Some(Utf8::from_static(why));
        }
        self.send_trimmed(Packet::ConnAck(ConnAck {
            session_present: false,
            reason_code: code,
            properties: properties.into(),
        }));
        if let Some(info) = self.client.as_deref() {
            self.broker.hooks.client_connack.each(|f| f(info, code, false));
        }
        self.phase = Phase::Closed;
        Step::Close(Close {
            reason_code: None,
            publish_will: false,
            why: why.into(),
            detach: DetachReason::Closed,
            by_client: None,
        })
    }

    /// The broker attached the session: send CONNACK, resend what was in flight, start delivering.
    pub fn on_attached(&mut self, req: ConnectRequest, a: Attached, now: Instant) {
        let present = a.present;
        self.attached(a);
        self.phase = Phase::Connected;
        let zone = self.zone.clone();
        let mut props: Box<Properties> = Box::default();
        if self.version.is_v5() {
            if req.expiry_interval != req.requested_expiry {
                props.session_expiry_interval = Some(req.expiry_interval);
            }
            props.receive_maximum = Some(zone.max_inflight.max(1));
            if zone.max_qos_allowed < 2 {
                props.maximum_qos = Some(zone.max_qos_allowed);
            }
            if !zone.retain_available {
                props.retain_available = Some(0);
            }
            props.maximum_packet_size = u32::try_from(zone.max_packet_size.0).ok();
            if req.assigned {
                props.assigned_client_identifier = Some(Utf8::from(&*req.client_id));
            }
            props.topic_alias_maximum = Some(zone.max_topic_alias);
            if !zone.wildcard_subscription {
                props.wildcard_subscription_available = Some(0);
            }
            if !zone.shared_subscription {
                props.shared_subscription_available = Some(0);
            }
            if self.keep_alive != req.client_keep_alive || zone.server_keepalive.is_some() {
                props.server_keep_alive = Some(self.keep_alive);
            }
        }
        // [MQTT-3.2.2-1..3] Session Present only when a session was resumed. MQTT 3.1 has no such flag: the first
        // byte of its CONNACK variable header is reserved, so it stays 0 for protocol level 3.
        let session_present = present && self.version != ProtocolVersion::V3;
        self.send_trimmed(Packet::ConnAck(ConnAck {
            session_present,
            reason_code: rc::SUCCESS,
            properties: props.into(),
        }));
        let username = self.client.as_deref().and_then(|c| c.username.as_deref());
        tracing::debug!(
            version = self.version as u8,
            present,
            keep_alive = self.keep_alive,
            username,
            peer = ?self.peer_addr(),
            "client connected"
        );
        if let Some(info) = self.client.as_deref() {
            let hooks = &self.broker.hooks;
            hooks.client_connack.each(|f| f(info, rc::SUCCESS, present));
            hooks.client_connected.each(|f| f(info));
        }
        // [MQTT-4.4.0-1] unacknowledged PUBLISH and PUBREL are resent on reconnect, DUP set on PUBLISH.
        self.resend_all(now);
        self.fill(now);
    }
}

/// A topic name starting with `$share/` can never be matched by a subscription (every `$share/...` filter is a
/// shared subscription to what follows the group), so a message published to it would be lost without a word.
/// Mosquitto refuses such names too.
pub(super) fn is_share_topic(topic: &str) -> bool {
    topic.starts_with("$share/")
}
