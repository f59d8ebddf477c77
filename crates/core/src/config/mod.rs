//! Broker configuration: the types, their defaults (the embedded defaults `halyard start` runs with), and the
//! checks that turn a bad value into a message naming the key, the value and what is allowed.
//!
//! Names follow EMQX's where a user would look for them: `mqtt.max_packet_size`, `listeners.tcp.default.bind`,
//! `zones.<name>.mqtt.*` overriding `mqtt.*` for the listeners that name that zone.

mod listeners;
mod load;
mod units;

pub use listeners::{
    parse_access_rules, AccessRule, CommaList, ConnRateLimit, FrameSizeLimit, ListenerCommon, ListenersConfig,
    PeerCertAs, Piggyback, SslListenerConfig, SslOptions, TcpListenerConfig, TlsVersion, VerifyMode, WebsocketOptions,
    WsListenerConfig, WssListenerConfig,
};
pub use load::{load, ConfigError, Source};
pub use units::{ByteSize, ConfDuration};

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeConfig,
    pub log: LogConfig,
    /// The zone every listener starts from; named zones override single keys of it.
    pub mqtt: MqttConfig,
    /// Named zones, fully resolved at load time (`mqtt` overlaid with the zone's own keys).
    #[serde(skip)]
    pub zones: BTreeMap<String, MqttConfig>,
    pub listeners: ListenersConfig,
    pub durable_sessions: DurableConfig,
}

/// `durable_sessions.*`: whether persistent sessions and retained messages survive restarts and crashes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DurableConfig {
    /// On (default): an embedded store in `node.data_dir`. Off: everything in memory, lost on restart.
    pub enable: bool,
    /// `batch` (default): one fsync per group commit, and a QoS 1/2 publish is acknowledged only after it.
    /// `off`: no fsync per commit (at most one a second): faster, but a power cut can lose acknowledged messages
    /// (a crash of the broker process alone cannot).
    pub fsync: FsyncMode,
}

impl Default for DurableConfig {
    fn default() -> Self {
        DurableConfig { enable: true, fsync: FsyncMode::Batch }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncMode {
    Batch,
    Off,
}

impl Default for Config {
    fn default() -> Self {
        let mut zones = BTreeMap::new();
        zones.insert("default".to_string(), MqttConfig::default());
        Config {
            node: NodeConfig::default(),
            log: LogConfig::default(),
            mqtt: MqttConfig::default(),
            zones,
            listeners: ListenersConfig::default(),
            durable_sessions: DurableConfig::default(),
        }
    }
}

impl Config {
    /// The settings of the zone `name` ("default" is `mqtt` itself).
    pub fn zone(&self, name: &str) -> Option<&MqttConfig> {
        if name == "default" && !self.zones.contains_key("default") {
            return Some(&self.mqtt);
        }
        self.zones.get(name)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    pub name: String,
    /// Where durable state lives (used by the store; created at start-up).
    pub data_dir: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig { name: "halyard@127.0.0.1".into(), data_dir: "./data".into() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter: "info", "debug", "halyard_server=debug,info" …; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { level: "info".into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SharedStrategy {
    RoundRobin,
    Random,
    Sticky,
    HashClientid,
    HashTopic,
}

/// The `mqtt.*` settings. Every key has EMQX's name and default unless noted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Largest packet accepted (and advertised as Maximum Packet Size), fixed header included.
    pub max_packet_size: ByteSize,
    pub max_clientid_len: usize,
    /// 0 = unlimited.
    pub max_topic_levels: usize,
    pub max_qos_allowed: u8,
    pub retain_available: bool,
    pub wildcard_subscription: bool,
    pub shared_subscription: bool,
    /// Outbound QoS 1/2 messages awaiting acknowledgement per session (also capped by the client's Receive Maximum).
    pub max_inflight: u16,
    /// Messages queued per session beyond the inflight window; the oldest is dropped (and counted) when full.
    pub max_mqueue_len: usize,
    pub mqueue_store_qos0: bool,
    /// Upper bound for a session's expiry; also the expiry of MQTT 3.x sessions with clean session 0.
    pub session_expiry_interval: ConfDuration,
    /// Largest keepalive a client may use: a v5 client asking for more is told this value (Server Keep Alive).
    pub max_keepalive: u16,
    /// When set, every v5 client is told to use this keepalive.
    pub server_keepalive: Option<u16>,
    /// How long to wait for an acknowledgement before resending a QoS 1/2 message (MQTT 3.x only: MQTT 5 forbids
    /// resending except on reconnect [MQTT-4.4.0-1]).
    pub retry_interval: ConfDuration,
    /// Incoming QoS 2 messages awaiting PUBREL per session (MQTT 3.x; for MQTT 5 the Receive Maximum governs).
    pub max_awaiting_rel: usize,
    pub await_rel_timeout: ConfDuration,
    pub shared_subscription_strategy: SharedStrategy,
    /// Topic aliases a client may use towards the broker (Topic Alias Maximum in CONNACK); 0 disables them.
    pub max_topic_alias: u16,
    /// Bytes of topic names a connection's inbound aliases may hold together (not an EMQX key: 65535 aliases of
    /// topics up to 64 KiB would otherwise let one client pin 4 GiB). Past it: DISCONNECT 0x97 Quota exceeded.
    pub max_topic_alias_bytes: ByteSize,
    /// Subscriptions per session (EMQX's key; EMQX defaults to infinity, Halyard bounds it). Past it: SUBACK 0x97
    /// Quota exceeded for that filter (MQTT 3.x: 0x80).
    pub max_subscriptions: usize,
    /// Bytes of topic filters one session's subscriptions may hold together (not an EMQX key; a filter may be
    /// 64 KiB long, so a count alone does not bound the memory). Past it: SUBACK 0x97 / 0x80.
    pub max_subscriptions_bytes: ByteSize,
    /// A connection that sends no CONNECT in this time is closed.
    pub idle_timeout: ConfDuration,
    /// What of a TLS client's certificate replaces its username (EMQX 5 keeps this in the zone, not the listener).
    pub peer_cert_as_username: PeerCertAs,
    /// What of a TLS client's certificate replaces its client id.
    pub peer_cert_as_clientid: PeerCertAs,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            max_packet_size: ByteSize(1 << 20),
            max_clientid_len: 65535,
            max_topic_levels: 128,
            max_qos_allowed: 2,
            retain_available: true,
            wildcard_subscription: true,
            shared_subscription: true,
            max_inflight: 32,
            max_mqueue_len: 1000,
            mqueue_store_qos0: true,
            session_expiry_interval: ConfDuration::secs(2 * 3600),
            max_keepalive: 65535,
            server_keepalive: None,
            retry_interval: ConfDuration::secs(30),
            max_awaiting_rel: 100,
            await_rel_timeout: ConfDuration::secs(300),
            shared_subscription_strategy: SharedStrategy::RoundRobin,
            max_topic_alias: 65535,
            max_topic_alias_bytes: ByteSize(256 * 1024),
            max_subscriptions: 10_000,
            max_subscriptions_bytes: ByteSize(4 << 20),
            idle_timeout: ConfDuration::secs(15),
            peer_cert_as_username: PeerCertAs::Disabled,
            peer_cert_as_clientid: PeerCertAs::Disabled,
        }
    }
}

impl MqttConfig {
    /// Range checks serde cannot express. Returns (key, value, allowed) for the first violation.
    pub(crate) fn check(&self) -> Result<(), (&'static str, String, &'static str)> {
        const MAX_WIRE: u64 = 268_435_455 + 5;
        if self.max_packet_size.0 < 64 || self.max_packet_size.0 > MAX_WIRE {
            return Err(("max_packet_size", self.max_packet_size.0.to_string(), "64 bytes to 256MB"));
        }
        if self.max_clientid_len < 23 || self.max_clientid_len > 65535 {
            return Err(("max_clientid_len", self.max_clientid_len.to_string(), "23 to 65535"));
        }
        if self.max_qos_allowed > 2 {
            return Err(("max_qos_allowed", self.max_qos_allowed.to_string(), "0, 1 or 2"));
        }
        if self.max_inflight == 0 {
            return Err(("max_inflight", "0".into(), "1 to 65535"));
        }
        if self.max_subscriptions == 0 {
            return Err(("max_subscriptions", "0".into(), "1 or more (subscriptions are always bounded)"));
        }
        if self.max_mqueue_len == 0 {
            return Err(("max_mqueue_len", "0".into(), "1 or more (the queue is always bounded)"));
        }
        if self.max_keepalive == 0 {
            return Err(("max_keepalive", "0".into(), "1 to 65535"));
        }
        if self.session_expiry_interval.as_secs() > u32::MAX as u64 {
            return Err((
                "session_expiry_interval",
                format!("{}s", self.session_expiry_interval.as_secs()),
                "at most 4294967295s",
            ));
        }
        if self.idle_timeout.0.is_zero() {
            return Err(("idle_timeout", "0".into(), "a positive duration such as \"15s\""));
        }
        if self.retry_interval.0.is_zero() {
            return Err(("retry_interval", "0".into(), "a positive duration such as \"30s\""));
        }
        Ok(())
    }
}
