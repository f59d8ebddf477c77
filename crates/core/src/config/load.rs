//! Reading configuration: embedded defaults, then the TOML file, then `HALYARD_*` environment variables.
//!
//! Everything is merged as a `toml::Value` tree first and deserialized once, so a bad key or value is reported
//! with its full dotted path whichever layer it came from.

use super::{Config, MqttConfig};
use std::collections::BTreeMap;
use std::path::PathBuf;
use toml::Value;

/// Where the configuration comes from.
#[derive(Debug, Clone, Default)]
pub struct Source {
    /// `--config FILE`; `None` runs on the embedded defaults.
    pub file: Option<PathBuf>,
    /// `(name, value)` pairs; only names starting with `HALYARD_` are used.
    pub env: Vec<(String, String)>,
}

impl Source {
    pub fn from_process(file: Option<PathBuf>) -> Source {
        Source { file, env: std::env::vars().collect() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid configuration: key `{key}`{origin}, value {value}: {allowed}")]
    Invalid { key: String, value: String, allowed: String, origin: String },
}

const PREFIX: &str = "HALYARD_";

/// Loads and checks the configuration.
pub fn load(src: &Source) -> Result<Config, ConfigError> {
    // The default listener of each type exists unless a user disables it (`listeners.tcp.default.enable =
    // false`), also when the file adds listeners of its own.
    let mut root: Value =
        "[listeners.tcp.default]\n[listeners.ssl.default]\n[listeners.ws.default]\n[listeners.wss.default]"
            .parse::<toml::Table>()
            .map(Value::Table)
            .unwrap_or_else(|_| Value::Table(Default::default()));
    if let Some(path) = &src.file {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read { path: path.clone(), source: e })?;
        let file = text
            .parse::<toml::Table>()
            .map(Value::Table)
            .map_err(|e| ConfigError::Syntax { path: path.clone(), message: e.to_string() })?;
        merge(&mut root, file);
    }
    // Environment keys are applied in sorted order so the result does not depend on the process's env order.
    let mut from_env: BTreeMap<String, String> = BTreeMap::new();
    let mut env: Vec<&(String, String)> = src.env.iter().filter(|(k, _)| k.starts_with(PREFIX)).collect();
    env.sort();
    for (var, raw) in env {
        let path: Vec<String> = var[PREFIX.len()..].split("__").map(|s| s.to_ascii_lowercase()).collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(ConfigError::Env {
                var: var.clone(),
                message: "empty key segment (use `__` between levels)".into(),
            });
        }
        set_path(&mut root, &path, parse_env_value(raw))
            .map_err(|message| ConfigError::Env { var: var.clone(), message })?;
        from_env.insert(path.join("."), var.clone());
    }
    let origin = |key: &str| -> String {
        from_env
            .iter()
            .find(|(k, _)| key == k.as_str() || key.starts_with(&format!("{k}.")) || key.starts_with(&format!("{k}[")))
            .map(|(_, v)| format!(" (from {v})"))
            .unwrap_or_default()
    };

    // Zones are resolved before deserializing: each is `mqtt` overlaid with the zone's own `mqtt` keys.
    let zones_value = match &mut root {
        Value::Table(t) => t.remove("zones"),
        _ => None,
    };
    let mut config: Config = deserialize(root.clone(), "", &root, &origin)?;
    let base_mqtt = match &root {
        Value::Table(t) => t.get("mqtt").cloned().unwrap_or(Value::Table(Default::default())),
        _ => Value::Table(Default::default()),
    };
    config.zones.clear();
    config.zones.insert("default".into(), config.mqtt.clone());
    if let Some(zones) = zones_value {
        let Value::Table(zones) = zones else {
            return Err(invalid("zones", &zones, "a table of named zones, e.g. [zones.internal.mqtt]", &origin));
        };
        for (name, zone) in zones {
            let Value::Table(mut zone) = zone else {
                return Err(invalid(&format!("zones.{name}"), &zone, "a table with an `mqtt` table", &origin));
            };
            let overrides = zone.remove("mqtt").unwrap_or(Value::Table(Default::default()));
            if let Some((k, _)) = zone.iter().next() {
                return Err(ConfigError::Invalid {
                    key: format!("zones.{name}.{k}"),
                    value: String::new(),
                    allowed: "unknown key; a zone holds only `mqtt`".into(),
                    origin: origin(&format!("zones.{name}.{k}")),
                });
            }
            let mut merged = base_mqtt.clone();
            merge(&mut merged, overrides);
            let prefix = format!("zones.{name}.mqtt");
            let zone_cfg: MqttConfig = deserialize(merged.clone(), &prefix, &merged, &origin)?;
            check_mqtt(&zone_cfg, &prefix, &origin)?;
            config.zones.insert(name, zone_cfg);
        }
    }
    check_mqtt(&config.mqtt, "mqtt", &origin)?;
    for (kind, name, l) in config.listeners.all() {
        if !config.zones.contains_key(l.zone()) {
            let zones: Vec<&str> = config.zones.keys().map(String::as_str).collect();
            return Err(ConfigError::Invalid {
                key: format!("listeners.{kind}.{name}.zone"),
                value: format!("\"{}\"", l.zone()),
                allowed: format!("a defined zone: {}", zones.join(", ")),
                origin: origin(&format!("listeners.{kind}.{name}.zone")),
            });
        }
    }
    super::listeners::check(&config.listeners).map_err(|(k, value, allowed)| {
        let key = format!("listeners.{k}");
        ConfigError::Invalid { origin: origin(&key), key, value, allowed: format!("allowed: {allowed}") }
    })?;
    Ok(config)
}

fn deserialize<T: serde::de::DeserializeOwned>(
    value: Value,
    prefix: &str,
    root: &Value,
    origin: &dyn Fn(&str) -> String,
) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let rel = e.path().to_string();
        let key = match (prefix.is_empty(), rel.as_str()) {
            (_, ".") => prefix.to_string(),
            (true, _) => rel.clone(),
            (false, _) => format!("{prefix}.{rel}"),
        };
        let value = lookup(root, &rel).map(|v| v.to_string()).unwrap_or_default();
        ConfigError::Invalid { origin: origin(&key), key, value, allowed: e.into_inner().to_string() }
    })
}

fn check_mqtt(m: &MqttConfig, prefix: &str, origin: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
    m.check().map_err(|(k, v, allowed)| {
        let key = format!("{prefix}.{k}");
        ConfigError::Invalid { origin: origin(&key), key, value: v, allowed: format!("allowed: {allowed}") }
    })
}

fn invalid(key: &str, v: &Value, allowed: &str, origin: &dyn Fn(&str) -> String) -> ConfigError {
    ConfigError::Invalid { key: key.into(), value: v.to_string(), allowed: allowed.into(), origin: origin(key) }
}

fn lookup<'a>(root: &'a Value, dotted: &str) -> Option<&'a Value> {
    let mut cur = root;
    for seg in dotted.split('.').filter(|s| !s.is_empty()) {
        // `versions[0]`: an element of an array.
        let mut parts = seg.split('[');
        cur = cur.as_table()?.get(parts.next()?)?;
        for idx in parts {
            cur = cur.as_array()?.get(idx.trim_end_matches(']').parse::<usize>().ok()?)?;
        }
    }
    Some(cur)
}

/// An environment value is read as a TOML value when it is one (`60`, `true`, `"x"`, `[1,2]`), else as a string
/// (`127.0.0.1:1884`, `15s`).
fn parse_env_value(raw: &str) -> Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_string()))
}

fn set_path(root: &mut Value, path: &[String], v: Value) -> Result<(), String> {
    let mut cur = root;
    for (i, seg) in path.iter().enumerate() {
        let Value::Table(t) = cur else {
            return Err(format!("`{}` is not a table", path[..i].join(".")));
        };
        if i + 1 == path.len() {
            t.insert(seg.clone(), v);
            return Ok(());
        }
        cur = t.entry(seg.clone()).or_insert_with(|| Value::Table(Default::default()));
    }
    Ok(())
}

fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Table(b), Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> Source {
        Source { file: None, env: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
    }

    #[test]
    fn embedded_defaults_listen_on_1883_in_zone_default() {
        let c = load(&Source::default()).unwrap();
        let l = &c.listeners.tcp["default"];
        assert_eq!(l.bind.to_string(), "0.0.0.0:1883");
        assert_eq!(l.zone, "default");
        assert_eq!(c.mqtt.max_packet_size.0, 1 << 20);
        assert_eq!(c.mqtt.max_inflight, 32);
        assert_eq!(c.mqtt.max_mqueue_len, 1000);
        assert!(c.mqtt.mqueue_store_qos0);
        assert_eq!(c.mqtt.idle_timeout.as_secs(), 15);
    }

    #[test]
    fn env_overrides_file_with_double_underscore_nesting() {
        let dir = std::env::temp_dir().join(format!("halyard-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("h.toml");
        let mut f = std::fs::File::create(&path).unwrap();
        writeln!(f, "[mqtt]\nmax_keepalive = 300\nmax_inflight = 10\n[node]\ndata_dir = \"/tmp/x\"").unwrap();
        let mut src = env(&[
            ("HALYARD_LISTENERS__TCP__DEFAULT__BIND", "127.0.0.1:1884"),
            ("HALYARD_NODE__DATA_DIR", "/var/lib/halyard"),
            ("HALYARD_MQTT__MAX_KEEPALIVE", "60"),
            ("OTHER_VAR", "ignored"),
        ]);
        src.file = Some(path);
        let c = load(&src).unwrap();
        assert_eq!(c.listeners.tcp["default"].bind.to_string(), "127.0.0.1:1884");
        assert_eq!(c.node.data_dir, "/var/lib/halyard");
        assert_eq!(c.mqtt.max_keepalive, 60);
        assert_eq!(c.mqtt.max_inflight, 10, "file value kept where env says nothing");
    }

    #[test]
    fn bad_value_names_key_value_and_allowed() {
        let e = load(&env(&[("HALYARD_MQTT__MAX_KEEPALIVE", "abc")])).unwrap_err().to_string();
        assert!(e.contains("mqtt.max_keepalive"), "{e}");
        assert!(e.contains("abc"), "{e}");
        assert!(e.contains("HALYARD_MQTT__MAX_KEEPALIVE"), "{e}");
        assert!(e.contains("u16") || e.contains("integer"), "{e}");
    }

    #[test]
    fn unknown_key_is_refused_with_its_path() {
        let e = load(&env(&[("HALYARD_MQTT__MAX_KEEPALIFE", "60")])).unwrap_err().to_string();
        assert!(e.contains("max_keepalife"), "{e}");
        assert!(e.contains("expected one of") || e.contains("unknown field"), "{e}");
    }

    #[test]
    fn range_checks_name_the_allowed_values() {
        let e = load(&env(&[("HALYARD_MQTT__MAX_QOS_ALLOWED", "3")])).unwrap_err().to_string();
        assert!(e.contains("mqtt.max_qos_allowed") && e.contains("0, 1 or 2"), "{e}");
        let e = load(&env(&[("HALYARD_MQTT__SHARED_SUBSCRIPTION_STRATEGY", "fastest")])).unwrap_err().to_string();
        assert!(e.contains("shared_subscription_strategy") && e.contains("round_robin"), "{e}");
    }

    #[test]
    fn zones_override_single_keys_and_listeners_pick_them() {
        let dir = std::env::temp_dir().join(format!("halyard-zone-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("z.toml");
        std::fs::write(
            &path,
            "[mqtt]\nmax_inflight = 16\n[zones.internal.mqtt]\nmax_packet_size = \"8MB\"\n\
             [listeners.tcp.internal]\nbind = \"127.0.0.1:11883\"\nzone = \"internal\"\n",
        )
        .unwrap();
        let c = load(&Source { file: Some(path), env: vec![] }).unwrap();
        let z = c.zone("internal").unwrap();
        assert_eq!(z.max_packet_size.0, 8 << 20);
        assert_eq!(z.max_inflight, 16, "zone inherits mqtt.*");
        assert_eq!(c.zone("default").unwrap().max_packet_size.0, 1 << 20);
        assert_eq!(c.listeners.tcp.len(), 2, "default listener kept beside the new one");
        let e = load(&env(&[("HALYARD_LISTENERS__TCP__DEFAULT__ZONE", "nowhere")])).unwrap_err().to_string();
        assert!(e.contains("listeners.tcp.default.zone") && e.contains("nowhere"), "{e}");
    }

    #[test]
    fn ssl_ws_wss_defaults_follow_emqx() {
        use crate::config::{ConnRateLimit, FrameSizeLimit, Piggyback, TlsVersion, VerifyMode};
        let c = load(&Source::default()).unwrap();
        let ssl = &c.listeners.ssl["default"];
        assert!(ssl.enable);
        assert_eq!(ssl.bind.to_string(), "0.0.0.0:8883");
        assert_eq!(ssl.ssl_options.verify, VerifyMode::VerifyNone);
        assert!(!ssl.ssl_options.fail_if_no_peer_cert);
        assert_eq!(ssl.ssl_options.versions, [TlsVersion::Tlsv13, TlsVersion::Tlsv12]);
        assert!(ssl.ssl_options.ciphers.is_empty());
        assert_eq!(ssl.ssl_options.handshake_timeout.as_secs(), 15);
        assert!(ssl.ssl_options.certfile.is_none(), "the generated certificate by default");
        let ws = &c.listeners.ws["default"];
        assert_eq!(ws.bind.to_string(), "0.0.0.0:8083");
        assert_eq!(ws.websocket.mqtt_path, "/mqtt");
        assert_eq!(ws.websocket.mqtt_piggyback, Piggyback::Multiple);
        assert!(ws.websocket.fail_if_no_subprotocol);
        assert_eq!(ws.websocket.supported_subprotocols.0, ["mqtt", "mqtt-v3", "mqtt-v3.1.1", "mqtt-v5"]);
        assert!(!ws.websocket.check_origin_enable);
        assert_eq!(ws.websocket.check_origins.0, ["http://localhost:18083", "http://127.0.0.1:18083"]);
        assert_eq!(ws.websocket.max_frame_size, FrameSizeLimit::Infinity);
        assert_eq!(ws.websocket.proxy_address_header, "x-forwarded-for");
        assert_eq!(ws.websocket.proxy_port_header, "x-forwarded-port");
        assert_eq!(c.listeners.wss["default"].bind.to_string(), "0.0.0.0:8084");
        for (_, _, l) in c.listeners.all() {
            assert_eq!(l.max_conn_rate(), ConnRateLimit::Unlimited);
            assert_eq!(l.access_rules(), ["allow all"]);
            assert_eq!(l.mountpoint(), "");
            assert!(!l.proxy_protocol());
            assert_eq!(l.proxy_protocol_timeout().as_secs(), 3);
            assert!(l.enable_authn());
        }
        assert_eq!(c.listeners.all().count(), 4);
        assert_eq!(c.mqtt.peer_cert_as_username, crate::config::PeerCertAs::Disabled);
    }

    #[test]
    fn listener_keys_from_file_and_env() {
        use crate::config::{ConnRateLimit, FrameSizeLimit, PeerCertAs, TlsVersion, VerifyMode};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.toml");
        std::fs::write(
            &path,
            "[mqtt]\npeer_cert_as_username = \"cn\"\n\
             [listeners.ssl.mtls]\nbind = \"127.0.0.1:18883\"\nmax_conn_rate = \"100/10s\"\n\
             access_rules = [\"allow 10.0.0.0/8\", \"deny all\"]\nmountpoint = \"${clientid}/\"\n\
             [listeners.ssl.mtls.ssl_options]\ncertfile = \"/c.pem\"\nkeyfile = \"/k.pem\"\nverify = \"verify_peer\"\n\
             fail_if_no_peer_cert = true\nversions = [\"tlsv1.3\"]\nciphers = \"TLS_AES_128_GCM_SHA256\"\n\
             [listeners.ws.default.websocket]\nmax_frame_size = \"64KB\"\nmqtt_piggyback = \"single\"\n",
        )
        .unwrap();
        let src = Source {
            file: Some(path),
            env: vec![
                ("HALYARD_LISTENERS__WSS__DEFAULT__ENABLE".into(), "false".into()),
                ("HALYARD_LISTENERS__TCP__DEFAULT__PROXY_PROTOCOL".into(), "true".into()),
                ("HALYARD_LISTENERS__TCP__DEFAULT__MAX_CONN_RATE".into(), "50".into()),
            ],
        };
        let c = load(&src).unwrap();
        let m = &c.listeners.ssl["mtls"];
        assert_eq!(m.max_conn_rate, ConnRateLimit::Limited { count: 100, per: std::time::Duration::from_secs(10) });
        assert_eq!(m.access_rules, ["allow 10.0.0.0/8", "deny all"]);
        assert_eq!(m.ssl_options.verify, VerifyMode::VerifyPeer);
        assert_eq!(m.ssl_options.versions, [TlsVersion::Tlsv13]);
        assert_eq!(m.ssl_options.ciphers.0, ["TLS_AES_128_GCM_SHA256"]);
        assert!(c.listeners.ssl.contains_key("default"), "default kept beside the new one");
        assert_eq!(c.listeners.ws["default"].websocket.max_frame_size, FrameSizeLimit::Bytes(64 << 10));
        assert!(!c.listeners.wss["default"].enable);
        assert!(c.listeners.tcp["default"].proxy_protocol);
        assert_eq!(
            c.listeners.tcp["default"].max_conn_rate,
            ConnRateLimit::Limited { count: 50, per: std::time::Duration::from_secs(1) }
        );
        assert_eq!(c.zone("default").unwrap().peer_cert_as_username, PeerCertAs::Cn);
    }

    #[test]
    fn bad_listener_values_name_their_key() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "HALYARD_LISTENERS__SSL__DEFAULT__SSL_OPTIONS__FAIL_IF_NO_PEER_CERT",
                "true",
                "listeners.ssl.default.ssl_options.fail_if_no_peer_cert",
            ),
            (
                "HALYARD_LISTENERS__SSL__DEFAULT__SSL_OPTIONS__VERSIONS",
                "[\"tlsv1.1\"]",
                "listeners.ssl.default.ssl_options.versions",
            ),
            (
                "HALYARD_LISTENERS__WSS__DEFAULT__SSL_OPTIONS__VERIFY",
                "verify_maybe",
                "listeners.wss.default.ssl_options.verify",
            ),
            (
                "HALYARD_LISTENERS__SSL__DEFAULT__SSL_OPTIONS__CERTFILE",
                "/x.pem",
                "listeners.ssl.default.ssl_options.certfile",
            ),
            (
                "HALYARD_LISTENERS__TCP__DEFAULT__ACCESS_RULES",
                "[\"allow 10.0.0.0/40\"]",
                "listeners.tcp.default.access_rules",
            ),
            ("HALYARD_LISTENERS__TCP__DEFAULT__MAX_CONN_RATE", "lots", "listeners.tcp.default.max_conn_rate"),
            (
                "HALYARD_LISTENERS__WS__DEFAULT__WEBSOCKET__MQTT_PATH",
                "mqtt",
                "listeners.ws.default.websocket.mqtt_path",
            ),
            (
                "HALYARD_LISTENERS__WS__DEFAULT__WEBSOCKET__MAX_FRAME_SIZE",
                "0",
                "listeners.ws.default.websocket.max_frame_size",
            ),
            (
                "HALYARD_LISTENERS__WS__DEFAULT__WEBSOCKET__MQTT_PIGGYBACK",
                "some",
                "listeners.ws.default.websocket.mqtt_piggyback",
            ),
            ("HALYARD_LISTENERS__WS__DEFAULT__ZONE", "nowhere", "listeners.ws.default.zone"),
            (
                "HALYARD_LISTENERS__TCP__DEFAULT__PROXY_PROTOCOL_TIMEOUT",
                "0",
                "listeners.tcp.default.proxy_protocol_timeout",
            ),
            ("HALYARD_MQTT__PEER_CERT_AS_USERNAME", "sha1", "mqtt.peer_cert_as_username"),
        ];
        for (var, value, key) in cases {
            let e = load(&env(&[(var, value)])).unwrap_err().to_string();
            assert!(e.contains(key), "{var}={value}: {e}");
            assert!(e.contains(var), "{var}={value}: {e}");
        }
    }

    #[test]
    fn repository_halyard_toml_documents_the_listener_defaults() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../halyard.toml");
        let from_file = load(&Source { file: Some(path), env: vec![] }).unwrap();
        let embedded = load(&Source::default()).unwrap();
        assert_eq!(format!("{:?}", from_file.listeners), format!("{:?}", embedded.listeners));
        assert_eq!(format!("{:?}", from_file.mqtt), format!("{:?}", embedded.mqtt));
    }
}
