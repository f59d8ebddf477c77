//! The per-connection MQTT state machine. It performs no I/O: the driver (`crate::connection`) feeds it decoded
//! packets, the current time and control messages, and writes out whatever it put in [`Conn::out`]. That makes
//! every protocol rule testable without sockets or sleeps.
//!
//! One file per concern: `connect` (CONNECT/CONNACK, the session hand-over), `inbound` (PUBLISH and PUBREL from
//! the client), `outbound` (deliveries to the client and their acknowledgements), `subscribe`.

mod connect;
#[cfg(test)]
mod hook_tests;
mod inbound;
mod mountpoint;
mod outbound;
mod subscribe;
#[cfg(test)]
pub(crate) mod tests;

pub use connect::ConnectRequest;

use bytes::BytesMut;
use halyard_codec::{reason::rc, DecodeError, Disconnect, Packet, ProtocolVersion, Utf8};
use halyard_core::broker::{Attached, DetachReason, Will};
use halyard_core::config::MqttConfig;
use halyard_core::hooks::{Action, AuthzResult, ClientInfo, DisconnectReason};
use halyard_core::session::{SessionHandle, SessionState};
use halyard_core::Broker;
use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why and how a connection ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// The v5 reason code for a server-sent DISCONNECT (only sent to v5 clients after CONNACK).
    pub reason_code: Option<u8>,
    /// Whether the will message is published [MQTT-3.1.2-8] (not after a normal DISCONNECT [MQTT-3.1.2-10]).
    pub publish_will: bool,
    pub why: Cow<'static, str>,
    pub(crate) detach: DetachReason,
    /// The reason code of the client's DISCONNECT, when that is what ended the connection.
    pub(crate) by_client: Option<u8>,
}

impl Close {
    /// A protocol violation: DISCONNECT with `code` for v5, close for v3; the will is published.
    pub fn error(code: u8, why: impl Into<Cow<'static, str>>) -> Close {
        Close {
            reason_code: Some(code),
            publish_will: true,
            why: why.into(),
            detach: DetachReason::Closed,
            by_client: None,
        }
    }

    /// The network went away or the client closed without DISCONNECT.
    pub fn lost(why: impl Into<Cow<'static, str>>) -> Close {
        Close { reason_code: None, publish_will: true, why: why.into(), detach: DetachReason::Closed, by_client: None }
    }
}

/// What the driver must do after a packet.
#[derive(Debug)]
pub enum Step {
    Continue,
    /// CONNECT was valid: the driver attaches the session (which may wait for a takeover) and calls
    /// [`Conn::on_attached`].
    Attach(ConnectRequest),
    Close(Close),
}

enum Phase {
    AwaitConnect,
    Connected,
    Closed,
}

/// What the transport knows about a client before its CONNECT: its address, what its TLS certificate says
/// (when `mqtt.peer_cert_as_username` / `peer_cert_as_clientid` ask for it) and the listener's mountpoint.
/// [`Conn`] keeps it boxed (one pointer in every connection); CONNECT takes it apart, and only a connection
/// with a mountpoint keeps a box after that (holding just the client's expanded prefix).
#[derive(Debug, Clone, Default)]
pub struct Origin {
    /// The client's address: the TCP peer, or the real one a PROXY header or WebSocket forwarding header gave.
    pub peer: Option<SocketAddr>,
    /// Replaces CONNECT's username (`peer_cert_as_username`); `Err`: the certificate's value cannot be one
    /// (CONNACK 0x86).
    pub cert_username: Option<CertIdentity>,
    /// Replaces CONNECT's client id (`peer_cert_as_clientid`); `Err`: CONNACK 0x85.
    pub cert_clientid: Option<CertIdentity>,
    /// `listeners.*.mountpoint`: the template (`${clientid}`, `${username}`) before CONNECT, the client's own
    /// prefix after it. `None`: no mountpoint.
    pub mountpoint: Option<Arc<str>>,
}

/// A value from the client's certificate, or why it cannot be used as an MQTT string.
pub type CertIdentity = Result<Arc<str>, &'static str>;

impl Origin {
    /// A client known by its address only (plain TCP, no mountpoint).
    pub fn peer(peer: Option<SocketAddr>) -> Origin {
        Origin { peer, ..Origin::default() }
    }

    fn is_empty(&self) -> bool {
        self.peer.is_none() && self.cert_username.is_none() && self.cert_clientid.is_none() && self.mountpoint.is_none()
    }
}

/// Limits the client announced in CONNECT (v5) or the protocol defaults.
#[derive(Debug, Clone, Copy)]
struct ClientLimits {
    receive_maximum: u16,
    maximum_packet_size: u32,
    topic_alias_maximum: u16,
    request_problem_information: bool,
}

impl ClientLimits {
    /// The client's Maximum Packet Size (kept as the u32 it is on the wire, so an idle connection is smaller).
    fn max_packet(&self) -> usize {
        usize::try_from(self.maximum_packet_size).unwrap_or(usize::MAX)
    }
}

pub struct Conn {
    broker: Arc<Broker>,
    zone: Arc<MqttConfig>,
    phase: Phase,
    version: ProtocolVersion,
    /// Bytes to send; the driver drains it.
    pub out: BytesMut,
    last_received: Instant,
    /// Effective keepalive in seconds (0: none).
    keep_alive: u16,
    /// Who the client is, from CONNECT on: the argument of the `client.*` and `message.*` hooks.
    client: Option<Arc<ClientInfo>>,
    /// The transport's view of the client until CONNECT moves it into `client`; afterwards only the mountpoint,
    /// when the listener has one (boxed: an idle connection without a mountpoint carries one null pointer).
    origin: Option<Box<Origin>>,
    session: Option<Arc<SessionHandle>>,
    state: SessionState,
    /// Boxed: most clients set no will, and an idle connection should not carry the space.
    will: Option<Box<Will>>,
    limits: ClientLimits,
    /// Session Expiry Interval the client asked for at CONNECT (v5), for the DISCONNECT rule [MQTT-3.14.2-2].
    connect_expiry: u32,
    /// Bytes of the topic filters of this session's subscriptions, held to `mqtt.max_subscriptions_bytes`.
    subscription_bytes: u32,
    /// Deliveries this connection's publishes made since the driver last reset the count (`reset_routed`): the work its
    /// reading caused, which the driver paces against the deliveries it made for others.
    routed: u32,
    /// MQTT 3.x: an in-flight entry's send time was moved (a resend, PUBREC → PUBREL), so the window is no
    /// longer in send-time order and the next resend is found by a scan; otherwise it is the oldest entry's.
    /// Cleared when the window empties.
    resent: bool,
    /// The last fill stopped at a delivery whose publish has not committed yet.
    gated: bool,
    /// Deliveries taken from the queue that wait for the driver to read their messages from the store (boxed:
    /// only a session draining an offline backlog has one).
    reading: Option<Box<outbound::StoredRead>>,
    /// The client connected with a private bridge protocol level (0x83 / 0x84): its subscriptions are no-local
    /// and retain-as-published, so a message it forwarded does not come back to it.
    bridge: bool,
    /// Topic aliases, once either side uses one (boxed: most connections never do).
    aliases: Option<Box<Aliases>>,
    /// Sessions whose backlog asks this publisher to hold back; while non-empty the driver processes only
    /// acknowledgements and pings and holds every other packet.
    /// Boxed, like `pending_acks`: both matter only while publishing, and an idle connection should not carry
    /// their space (tens of bytes each, for every connection): one pointer instead of a collection's header.
    #[allow(clippy::box_collection)]
    congested: Option<Box<Vec<Arc<SessionHandle>>>>,
    /// Acknowledgements waiting for their store ticket to commit, in the order they must go out.
    #[allow(clippy::box_collection)]
    pending_acks: Option<Box<std::collections::VecDeque<(u64, Packet)>>>,
    /// Store operations gathered while handling packets and deliveries; the driver submits them in one go.
    ops: halyard_core::Writes,
}

/// The topic aliases of one connection [MQTT-3.3.2-7 .. -12].
#[derive(Default)]
struct Aliases {
    /// Client → broker.
    inbound: HashMap<u16, Utf8>,
    /// Bytes of the topics in `inbound`, held to `mqtt.max_topic_alias_bytes`.
    inbound_bytes: usize,
    /// Broker → client, as the broker assigned them.
    outbound: HashMap<Utf8, u16>,
    /// Bytes of the topics in `outbound`: the broker stops assigning new aliases at `mqtt.max_topic_alias_bytes`.
    outbound_bytes: usize,
}

/// Never more than this many deliveries are pulled from the queue per fill, so one busy session cannot starve
/// its own reads.
const FILL_BATCH: usize = 256;
/// Pause pulling deliveries when this much is waiting to be written (backpressure to the queue).
pub const OUT_HIGH_WATER: usize = 256 * 1024;
/// An empty output buffer larger than this is given back. Not smaller: a busy connection empties its buffer at
/// every write, and regrowing it from nothing each time showed up as the top memmove in the profile.
const IDLE_BUFFER: usize = 64 * 1024;

impl Conn {
    /// `peer`: the transport's peer address, if it has one (for `ClientInfo`).
    pub fn new(broker: Arc<Broker>, zone: Arc<MqttConfig>, now: Instant, peer: Option<SocketAddr>) -> Conn {
        Conn::with_origin(broker, zone, now, Origin::peer(peer))
    }

    /// A connection whose transport knows more than the peer's address (certificate identity, mountpoint).
    pub fn with_origin(broker: Arc<Broker>, zone: Arc<MqttConfig>, now: Instant, origin: Origin) -> Conn {
        Conn {
            broker,
            zone,
            phase: Phase::AwaitConnect,
            version: ProtocolVersion::V4,
            out: BytesMut::new(),
            last_received: now,
            keep_alive: 0,
            client: None,
            origin: (!origin.is_empty()).then(|| Box::new(origin)),
            session: None,
            state: SessionState::default(),
            will: None,
            limits: ClientLimits {
                receive_maximum: u16::MAX,
                maximum_packet_size: u32::MAX,
                topic_alias_maximum: 0,
                request_problem_information: true,
            },
            connect_expiry: 0,
            bridge: false,
            subscription_bytes: 0,
            routed: 0,
            resent: false,
            gated: false,
            reading: None,
            aliases: None,
            congested: None,
            pending_acks: None,
            ops: halyard_core::Writes::default(),
        }
    }

    /// What follows handling input (packets, a drained backlog): acknowledgements whose commits are done go out,
    /// then deliveries as the window allows, then the store work gathered meanwhile is submitted in one go.
    pub fn after_input(&mut self, now: Instant) {
        self.release_acks(0);
        self.fill(now);
        self.submit_ops();
    }

    /// Acknowledgements of our deliveries and pings are handled even while this publisher is held back by a
    /// subscriber's backlog: the sessions it waits for may be waiting for exactly these (their inflight window),
    /// so holding them could deadlock two connections. Everything else waits its turn, in order.
    pub fn passes_hold(p: &Packet) -> bool {
        matches!(p, Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_) | Packet::PingReq)
    }

    /// The bytes could not be decoded: how the connection ends. Before CONNECT only an unsupported protocol
    /// level gets an answer (CONNACK 0x01, in the 3.1.1 format every level understands [MQTT-3.1.2-2]); after
    /// it, a v5 client gets DISCONNECT with the decoder's reason code.
    pub fn on_decode_error(&mut self, e: DecodeError) -> Close {
        if !self.is_connected() {
            if e == DecodeError::UnsupportedProtocol {
                self.send_v4(&Packet::ConnAck(halyard_codec::ConnAck {
                    session_present: false,
                    reason_code: halyard_codec::reason::v3::UNACCEPTABLE_PROTOCOL_VERSION,
                    properties: Default::default(),
                }));
            }
            return Close { publish_will: false, ..Close::lost(format!("bad CONNECT: {e}")) };
        }
        Close::error(e.reason_code(), e.to_string())
    }

    /// Encodes a packet in the 3.1.1 format whatever the connection's version (a refusal before the version is
    /// known).
    fn send_v4(&mut self, p: &Packet) {
        if let Err(e) = halyard_codec::encode(p, ProtocolVersion::V4, &mut self.out) {
            tracing::warn!(error = %e, packet = p.name(), "cannot encode packet");
        }
    }

    /// Submits the store operations gathered since the last call (delivery progress of persistent sessions;
    /// nobody waits for these).
    pub fn submit_ops(&mut self) {
        if !self.ops.is_empty() {
            if let Err(e) = self.broker.submit(std::mem::take(&mut self.ops)) {
                tracing::error!(error = %e, "cannot record delivery progress in the store");
            }
        }
    }

    /// Gives back every buffer a parked connection does not need (the output buffer, however large it grew; the
    /// delivery scratch list is per thread). `BytesMut::capacity` counts only what is left after the write position, so
    /// the size test of `release_idle_buffers` can miss a buffer that was large once.
    pub fn release_all_buffers(&mut self) {
        if self.out.is_empty() {
            self.out = BytesMut::new();
        }
        if !self.has_pending_acks() {
            self.pending_acks = None;
        }
    }

    /// Drops buffers that grew under load once they are empty, so an idle connection costs little memory.
    pub fn release_idle_buffers(&mut self) {
        if self.out.is_empty() && self.out.capacity() > IDLE_BUFFER {
            self.out = BytesMut::new();
        }
    }

    /// The deliveries (one per matching subscription, plus one per publish) this connection's publishes made
    /// since the last `reset_routed`.
    pub fn routed(&self) -> u32 {
        self.routed
    }

    /// Starts counting `routed` afresh.
    pub fn reset_routed(&mut self) {
        self.routed = 0;
    }

    /// True while a subscriber's backlog holds this publisher back.
    pub fn is_held_back(&self) -> bool {
        self.congested.as_ref().is_some_and(|c| !c.is_empty())
    }

    /// The sessions to wait for, handed to the driver (which waits without borrowing the machine).
    pub fn take_congested(&mut self) -> Vec<Arc<SessionHandle>> {
        self.congested.take().map(|c| *c).unwrap_or_default()
    }

    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    pub fn max_packet_size(&self) -> usize {
        usize::try_from(self.zone.max_packet_size.0).unwrap_or(usize::MAX)
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    pub fn zone(&self) -> &Arc<MqttConfig> {
        &self.zone
    }

    pub fn session(&self) -> Option<&Arc<SessionHandle>> {
        self.session.as_ref()
    }

    pub fn client_id(&self) -> Option<&str> {
        self.client.as_deref().map(|c| &*c.client_id)
    }

    /// The peer's address (the client's real one when a PROXY-protocol header gave it).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        match &self.client {
            Some(c) => c.peer,
            None => self.origin.as_deref().and_then(|o| o.peer),
        }
    }

    /// The client as the hooks see it (from CONNECT on).
    pub fn client_info(&self) -> Option<&Arc<ClientInfo>> {
        self.client.as_ref()
    }

    /// `client.authorize`: may this client do `action` on `topic`? Allowed when no callback is registered or
    /// the client is a superuser.
    fn authorize(&self, action: Action, topic: &str) -> bool {
        let hook = &self.broker.hooks.client_authorize;
        let Some(info) = self.client.as_deref() else { return true };
        if hook.is_empty() || info.is_superuser {
            return true;
        }
        hook.fold(AuthzResult::Allow, |f, acc| f(info, action, topic, acc)).into_inner() == AuthzResult::Allow
    }

    pub fn is_connected(&self) -> bool {
        matches!(self.phase, Phase::Connected)
    }

    /// Handles one decoded packet.
    pub fn handle(&mut self, packet: Packet, now: Instant) -> Step {
        self.last_received = now;
        match self.phase {
            Phase::AwaitConnect => match packet {
                Packet::Connect(c) => self.on_connect(*c, now),
                // [MQTT-3.1.0-1] the first packet must be CONNECT: close without a response.
                other => Step::Close(Close::lost(format!("{} before CONNECT", other.name()))),
            },
            Phase::Closed => Step::Close(Close::lost("packet after close")),
            Phase::Connected => match self.on_packet(packet, now) {
                Ok(()) => Step::Continue,
                Err(c) => Step::Close(c),
            },
        }
    }

    fn on_packet(&mut self, packet: Packet, now: Instant) -> Result<(), Close> {
        match packet {
            Packet::Publish(p) => self.on_publish(p, now),
            Packet::PubAck(a) => self.on_puback(a),
            Packet::PubRec(a) => self.on_pubrec(a, now),
            Packet::PubRel(a) => self.on_pubrel(a),
            Packet::PubComp(a) => self.on_pubcomp(a),
            Packet::Subscribe(s) => self.on_subscribe(s, now),
            Packet::Unsubscribe(u) => self.on_unsubscribe(u),
            Packet::PingReq => {
                self.send(&Packet::PingResp);
                Ok(())
            }
            Packet::Disconnect(d) => Err(self.on_disconnect(d)),
            // [MQTT-3.1.0-2] a second CONNECT is a protocol violation.
            Packet::Connect(_) => Err(Close::error(rc::PROTOCOL_ERROR, "second CONNECT")),
            // Enhanced authentication was not negotiated in CONNECT, so AUTH is a protocol error [MQTT-4.12.0-1].
            Packet::Auth(_) => Err(Close::error(rc::PROTOCOL_ERROR, "AUTH without authentication method")),
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                Err(Close::error(rc::PROTOCOL_ERROR, format!("{} is sent by servers only", packet.name())))
            }
        }
    }

    fn on_disconnect(&mut self, d: Disconnect) -> Close {
        if let Some(expiry) = d.properties.session_expiry_interval {
            // [MQTT-3.14.2-2] a session that was to end with the connection cannot be extended at DISCONNECT.
            if self.connect_expiry == 0 && expiry != 0 {
                return Close::error(rc::PROTOCOL_ERROR, "DISCONNECT sets a session expiry after CONNECT had 0");
            }
            if let Some(s) = &self.session {
                s.set_expiry_interval(self.cap_expiry(expiry));
            }
        }
        Close {
            reason_code: None,
            // Reason 0x04 asks for the will to be published; any other normal DISCONNECT discards it.
            publish_will: d.reason_code == rc::DISCONNECT_WITH_WILL,
            why: "client sent DISCONNECT".into(),
            detach: DetachReason::Closed,
            by_client: Some(d.reason_code),
        }
    }

    /// A control message from the broker: another connection is taking this session over.
    pub fn on_takeover(&mut self, resume: bool) -> Close {
        Close {
            reason_code: Some(rc::SESSION_TAKEN_OVER),
            publish_will: true,
            why: "session taken over".into(),
            detach: DetachReason::TakenOver { resume },
            by_client: None,
        }
    }

    /// Ends the connection: writes the DISCONNECT a v5 client is owed, and gives the session back to the broker.
    pub fn close(&mut self, close: &Close, now: Instant) {
        if matches!(self.phase, Phase::Closed) {
            return;
        }
        self.submit_ops();
        self.give_back_unread();
        let was_connected = matches!(self.phase, Phase::Connected);
        self.phase = Phase::Closed;
        if was_connected && self.version.is_v5() {
            if let Some(code) = close.reason_code {
                let mut d = Disconnect { reason_code: code, ..Default::default() };
                if self.limits.request_problem_information {
                    d.properties.make_mut().reason_string = Some(Utf8::from(close.why.as_ref()));
                }
                self.send_trimmed(Packet::Disconnect(d));
            }
        }
        if was_connected {
            if let Some(info) = self.client.as_deref() {
                let why = disconnect_reason(close);
                self.broker.hooks.client_disconnected.each(|f| f(info, why));
            }
        }
        if let Some(handle) = self.session.take() {
            let will = if close.publish_will { self.will.take().map(|w| *w) } else { None };
            let state = std::mem::take(&mut self.state);
            self.broker.detach(&handle, state, will, close.detach, now);
        }
    }

    /// Time-driven work: keepalive, the CONNECT deadline, MQTT 3.x resends, stale QoS 2 ids.
    pub fn on_tick(&mut self, now: Instant) -> Result<(), Close> {
        match self.phase {
            Phase::AwaitConnect => {
                // Before CONNECT nothing else is received, so the last packet time is the connection's start.
                if now >= self.last_received + self.zone.idle_timeout.0 {
                    return Err(Close::lost("no CONNECT within idle_timeout"));
                }
            }
            Phase::Connected => {
                if let Some(deadline) = self.keepalive_deadline() {
                    if now >= deadline {
                        // [MQTT-3.1.2-24] nothing received for 1.5 × keepalive.
                        return Err(Close::error(rc::KEEP_ALIVE_TIMEOUT, "keepalive timeout"));
                    }
                }
                self.resend_due(now);
                let timeout = self.zone.await_rel_timeout.0;
                let stale: Vec<u16> = self
                    .state
                    .awaiting_rel
                    .iter()
                    .filter(|(_, at)| now.duration_since(**at) >= timeout)
                    .map(|(id, _)| *id)
                    .collect();
                for id in stale {
                    self.state.awaiting_rel.remove(&id);
                    // Forgotten in the store too, or a restart would bring it back and take a new PUBLISH
                    // reusing the id for a resend.
                    if let Some(s) = &self.session {
                        self.ops.append(self.broker.awaiting_rel_delete(s, id));
                    }
                }
                self.submit_ops();
            }
            Phase::Closed => {}
        }
        Ok(())
    }

    fn keepalive_deadline(&self) -> Option<Instant> {
        (self.keep_alive > 0).then(|| self.last_received + Duration::from_millis(u64::from(self.keep_alive) * 1500))
    }

    /// When `on_tick` next has something to do.
    pub fn next_deadline(&self, now: Instant) -> Instant {
        let far = now + Duration::from_secs(3600);
        match self.phase {
            Phase::AwaitConnect => self.last_received + self.zone.idle_timeout.0,
            Phase::Closed => far,
            Phase::Connected => {
                let mut t = self.keepalive_deadline().unwrap_or(far);
                if let Some(r) = self.next_resend() {
                    t = t.min(r);
                }
                if !self.state.awaiting_rel.is_empty() {
                    t = t.min(now + self.zone.await_rel_timeout.0.max(Duration::from_secs(1)));
                }
                t
            }
        }
    }

    /// Encodes a packet into the output buffer.
    fn send(&mut self, p: &Packet) {
        if let Err(e) = halyard_codec::encode(p, self.version, &mut self.out) {
            tracing::warn!(error = %e, packet = p.name(), "cannot encode packet");
        }
    }

    /// Sends an ack-like packet, dropping its reason string and user properties if the packet would exceed the
    /// client's Maximum Packet Size [MQTT-3.1.2-25], [MQTT-3.4.2-3].
    fn send_trimmed(&mut self, mut p: Packet) {
        if halyard_codec::encoded_len(&p, self.version) > self.limits.max_packet() {
            if let Some(props) = properties_mut(&mut p) {
                props.reason_string = None;
                props.user_properties.clear();
            }
            if halyard_codec::encoded_len(&p, self.version) > self.limits.max_packet() {
                return;
            }
        }
        self.send(&p);
    }

    fn cap_expiry(&self, requested: u32) -> u32 {
        let cap = u32::try_from(self.zone.session_expiry_interval.as_secs()).unwrap_or(u32::MAX);
        requested.min(cap)
    }

    /// A reason string for v5 acks and DISCONNECT, when the client did not ask us to leave them out.
    fn reason_string(&self, s: &str) -> Option<Utf8> {
        (self.version.is_v5() && self.limits.request_problem_information).then(|| Utf8::from(s))
    }

    pub(crate) fn attached(&mut self, a: Attached) {
        self.session = Some(a.handle);
        self.state = a.state;
        let bytes: usize = self.state.subscriptions.keys().map(String::len).sum();
        self.subscription_bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
    }
}

/// What `client.disconnected` is told about a close.
fn disconnect_reason(c: &Close) -> DisconnectReason {
    if let DetachReason::TakenOver { .. } = c.detach {
        return DisconnectReason::TakenOver;
    }
    if let Some(code) = c.by_client {
        return DisconnectReason::ClientDisconnect(code);
    }
    match c.reason_code {
        Some(rc::KEEP_ALIVE_TIMEOUT) => DisconnectReason::KeepaliveTimeout,
        Some(rc::SERVER_SHUTTING_DOWN) => DisconnectReason::ServerShutdown,
        Some(code) => DisconnectReason::Error(code),
        None => DisconnectReason::ConnectionLost,
    }
}

/// The properties of an ack-like packet, if it has any set (to trim them).
fn properties_mut(p: &mut Packet) -> Option<&mut halyard_codec::Properties> {
    match p {
        Packet::PubAck(r) | Packet::PubRec(r) | Packet::PubRel(r) | Packet::PubComp(r) => r.properties.get_mut(),
        Packet::SubAck(s) => s.properties.get_mut(),
        Packet::UnsubAck(u) => u.properties.get_mut(),
        Packet::Disconnect(d) => d.properties.get_mut(),
        Packet::ConnAck(c) => c.properties.get_mut(),
        _ => None,
    }
}
