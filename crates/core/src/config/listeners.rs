//! `listeners.*`: the TCP, SSL, WebSocket and secure WebSocket listeners, with EMQX's key names and defaults.
//!
//! Plain data: what the keys mean at run time is `halyard-transport`'s job (TLS configs, access rules, the
//! connection rate, PROXY protocol, the WebSocket upgrade). The checks here are the ones that can be made without
//! reading a file, so `halyard check-config` reports them with the key's full path.

use super::units::{parse_duration, parse_size, ConfDuration};
use serde::{de, Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// `listeners.<type>.<name>`. Each type has a listener named `default` unless a user disables it
/// (`listeners.ssl.default.enable = false`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenersConfig {
    /// `listeners.tcp.<name>`: MQTT over TCP (default `0.0.0.0:1883`).
    pub tcp: BTreeMap<String, TcpListenerConfig>,
    /// `listeners.ssl.<name>`: MQTT over TLS (default `0.0.0.0:8883`).
    pub ssl: BTreeMap<String, SslListenerConfig>,
    /// `listeners.ws.<name>`: MQTT over WebSocket (default `0.0.0.0:8083`).
    pub ws: BTreeMap<String, WsListenerConfig>,
    /// `listeners.wss.<name>`: MQTT over WebSocket over TLS (default `0.0.0.0:8084`).
    pub wss: BTreeMap<String, WssListenerConfig>,
}

impl Default for ListenersConfig {
    fn default() -> Self {
        ListenersConfig {
            tcp: BTreeMap::from([("default".to_string(), TcpListenerConfig::default())]),
            ssl: BTreeMap::from([("default".to_string(), SslListenerConfig::default())]),
            ws: BTreeMap::from([("default".to_string(), WsListenerConfig::default())]),
            wss: BTreeMap::from([("default".to_string(), WssListenerConfig::default())]),
        }
    }
}

impl ListenersConfig {
    /// Every listener of every type as (type, name, settings every type has), in type then name order.
    pub fn all(&self) -> impl Iterator<Item = (&'static str, &str, &dyn ListenerCommon)> {
        fn each<'a, L: ListenerCommon>(
            kind: &'static str,
            m: &'a BTreeMap<String, L>,
        ) -> impl Iterator<Item = (&'static str, &'a str, &'a dyn ListenerCommon)> {
            m.iter().map(move |(n, l)| (kind, n.as_str(), l as &dyn ListenerCommon))
        }
        each("tcp", &self.tcp).chain(each("ssl", &self.ssl)).chain(each("ws", &self.ws)).chain(each("wss", &self.wss))
    }
}

/// The settings every listener type has (EMQX's base listener), whatever its transport.
pub trait ListenerCommon {
    fn enable(&self) -> bool;
    fn bind(&self) -> SocketAddr;
    /// The zone whose `mqtt.*` settings this listener's connections use.
    fn zone(&self) -> &str;
    fn max_connections(&self) -> usize;
    fn max_conn_rate(&self) -> ConnRateLimit;
    fn access_rules(&self) -> &[String];
    fn mountpoint(&self) -> &str;
    fn proxy_protocol(&self) -> bool;
    fn proxy_protocol_timeout(&self) -> Duration;
    fn enable_authn(&self) -> bool;
}

/// Declares a listener type: the common keys (EMQX's `base_listener` and `mqtt_listener`) plus its own.
macro_rules! listener {
    ($(#[$m:meta])* $name:ident, port = $port:expr, { $($(#[$fm:meta])* $f:ident : $t:ty = $d:expr,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            pub enable: bool,
            pub bind: SocketAddr,
            /// The zone whose `mqtt.*` settings this listener's connections use.
            pub zone: String,
            /// Connections beyond this are closed at accept.
            pub max_connections: usize,
            /// New connections accepted per interval (EMQX's rate syntax: `"1000/s"`, `"100/10s"`, a plain number
            /// per second, `"infinity"`; 0 = unlimited). Excess connections wait in the kernel's backlog.
            pub max_conn_rate: ConnRateLimit,
            /// EMQX's `access_rules`: `"allow 10.0.0.0/8"`, `"deny all"` …, first match wins, no match allows.
            pub access_rules: Vec<String>,
            /// Prefix of every topic of this listener's clients; `${clientid}` and `${username}` are replaced.
            pub mountpoint: String,
            /// Expect a PROXY protocol v1 or v2 header before anything else on each connection.
            pub proxy_protocol: bool,
            /// How long to wait for the PROXY header.
            pub proxy_protocol_timeout: ConfDuration,
            /// Authenticate this listener's clients (reserved: authentication is a later issue).
            pub enable_authn: bool,
            $($(#[$fm])* pub $f: $t,)*
        }

        impl Default for $name {
            fn default() -> Self {
                $name {
                    enable: true,
                    bind: SocketAddr::from(([0, 0, 0, 0], $port)),
                    zone: "default".into(),
                    max_connections: 1_024_000,
                    max_conn_rate: ConnRateLimit::Unlimited,
                    access_rules: vec!["allow all".into()],
                    mountpoint: String::new(),
                    proxy_protocol: false,
                    proxy_protocol_timeout: ConfDuration::secs(3),
                    enable_authn: true,
                    $($f: $d,)*
                }
            }
        }

        impl ListenerCommon for $name {
            fn enable(&self) -> bool { self.enable }
            fn bind(&self) -> SocketAddr { self.bind }
            fn zone(&self) -> &str { &self.zone }
            fn max_connections(&self) -> usize { self.max_connections }
            fn max_conn_rate(&self) -> ConnRateLimit { self.max_conn_rate }
            fn access_rules(&self) -> &[String] { &self.access_rules }
            fn mountpoint(&self) -> &str { &self.mountpoint }
            fn proxy_protocol(&self) -> bool { self.proxy_protocol }
            fn proxy_protocol_timeout(&self) -> Duration { self.proxy_protocol_timeout.0 }
            fn enable_authn(&self) -> bool { self.enable_authn }
        }
    };
}

listener!(
    /// `listeners.tcp.<name>`: MQTT over plain TCP.
    TcpListenerConfig, port = 1883, {}
);

listener!(
    /// `listeners.ssl.<name>`: MQTT over TLS.
    SslListenerConfig, port = 8883, {
        ssl_options: SslOptions = SslOptions::default(),
    }
);

listener!(
    /// `listeners.ws.<name>`: MQTT over WebSocket.
    WsListenerConfig, port = 8083, {
        websocket: WebsocketOptions = WebsocketOptions::default(),
    }
);

listener!(
    /// `listeners.wss.<name>`: MQTT over WebSocket over TLS.
    WssListenerConfig, port = 8084, {
        ssl_options: SslOptions = SslOptions::default(),
        websocket: WebsocketOptions = WebsocketOptions::default(),
    }
);

/// `listeners.{ssl,wss}.<name>.ssl_options`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SslOptions {
    /// The server's certificate chain (PEM), leaf first. Unset: the certificate Halyard generates in
    /// `<node.data_dir>/certs/` on first start.
    pub certfile: Option<PathBuf>,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1). Set together with `certfile`.
    pub keyfile: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to with `verify = "verify_peer"`. Unset: the
    /// CA Halyard generates beside its default certificate.
    pub cacertfile: Option<PathBuf>,
    pub verify: VerifyMode,
    /// With `verify_peer`: refuse clients that send no certificate (otherwise a certificate is optional, but
    /// verified when sent).
    pub fail_if_no_peer_cert: bool,
    pub versions: Vec<TlsVersion>,
    /// Cipher suites by IANA or OpenSSL name, in preference order; empty: the TLS library's defaults.
    pub ciphers: CommaList,
    /// A TLS handshake that takes longer is abandoned.
    pub handshake_timeout: ConfDuration,
}

impl Default for SslOptions {
    fn default() -> Self {
        SslOptions {
            certfile: None,
            keyfile: None,
            cacertfile: None,
            verify: VerifyMode::VerifyNone,
            fail_if_no_peer_cert: false,
            versions: vec![TlsVersion::Tlsv13, TlsVersion::Tlsv12],
            ciphers: CommaList::default(),
            handshake_timeout: ConfDuration::secs(15),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyMode {
    /// No client certificate is asked for.
    VerifyNone,
    /// Client certificates are asked for and verified against `cacertfile`.
    VerifyPeer,
}

/// TLS versions; TLS 1.0 and 1.1 are not offered (rustls does not implement them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "tlsv1.3")]
    Tlsv13,
    #[serde(rename = "tlsv1.2")]
    Tlsv12,
}

/// `mqtt.peer_cert_as_username` / `mqtt.peer_cert_as_clientid`: what of a TLS client's certificate becomes its
/// username / client id (EMQX 5 keeps these in the zone's `mqtt` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerCertAs {
    /// The client's own value is kept.
    #[default]
    Disabled,
    /// The subject's common name.
    Cn,
    /// The subject's distinguished name (RFC 4514 style, as EMQX writes it).
    Dn,
    /// The certificate's DER bytes.
    Crt,
    /// The certificate's DER bytes in base64 (what EMQX calls `pem`).
    Pem,
    /// Lower-case hex MD5 of the certificate's DER bytes.
    Md5,
}

/// `listeners.{ws,wss}.<name>.websocket`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebsocketOptions {
    /// The HTTP path of the upgrade request; other paths get 404.
    pub mqtt_path: String,
    /// `multiple`: several MQTT packets may share one outgoing WebSocket frame; `single`: one packet per frame.
    pub mqtt_piggyback: Piggyback,
    /// Refuse (400) an upgrade that offers no subprotocol of `supported_subprotocols`.
    pub fail_if_no_subprotocol: bool,
    /// Accepted `Sec-WebSocket-Protocol` values; the first one the client offers that is listed here is chosen.
    pub supported_subprotocols: CommaList,
    /// Refuse (403) upgrades whose `Origin` is not in `check_origins`.
    pub check_origin_enable: bool,
    /// With `check_origin_enable`: accept upgrades without an `Origin` header.
    pub allow_origin_absence: bool,
    pub check_origins: CommaList,
    /// Largest incoming WebSocket frame (and message); `"infinity"` leaves the bound to `mqtt.max_packet_size`.
    /// Larger ones close the connection with 1009.
    pub max_frame_size: FrameSizeLimit,
    /// Header with the client's address when a proxy is in front (first entry of a list); `""` ignores it.
    pub proxy_address_header: String,
    /// Header with the client's port when a proxy is in front; `""` ignores it.
    pub proxy_port_header: String,
}

impl Default for WebsocketOptions {
    fn default() -> Self {
        WebsocketOptions {
            mqtt_path: "/mqtt".into(),
            mqtt_piggyback: Piggyback::Multiple,
            fail_if_no_subprotocol: true,
            supported_subprotocols: CommaList::from_str_list("mqtt, mqtt-v3, mqtt-v3.1.1, mqtt-v5"),
            check_origin_enable: false,
            allow_origin_absence: true,
            check_origins: CommaList::from_str_list("http://localhost:18083, http://127.0.0.1:18083"),
            max_frame_size: FrameSizeLimit::Infinity,
            proxy_address_header: "x-forwarded-for".into(),
            proxy_port_header: "x-forwarded-port".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Piggyback {
    Single,
    Multiple,
}

/// A list written either as TOML array or as one comma-separated string (EMQX writes
/// `supported_subprotocols = "mqtt, mqtt-v5"`). Entries are trimmed; empty ones dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommaList(pub Vec<String>);

impl CommaList {
    pub fn from_str_list(s: &str) -> CommaList {
        CommaList(s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
    }
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de> Deserialize<'de> for CommaList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = CommaList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of strings, or one string of comma-separated entries")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CommaList, E> {
                Ok(CommaList::from_str_list(v))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<CommaList, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.extend(CommaList::from_str_list(&s).0);
                }
                Ok(CommaList(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// `max_conn_rate`: unlimited, or `count` new connections per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnRateLimit {
    Unlimited,
    Limited { count: u64, per: Duration },
}

impl ConnRateLimit {
    /// EMQX's syntax: `"infinity"`, `"N"` (per second), `"N/s"`, `"N/10s"`, `"N/m"`, `"N/500ms"`; `0` (or
    /// `"0"`) is unlimited here.
    pub fn parse(s: &str) -> Option<ConnRateLimit> {
        let s = s.trim().to_ascii_lowercase();
        if s == "infinity" {
            return Some(ConnRateLimit::Unlimited);
        }
        let (count, per) = match s.split_once('/') {
            None => (s.as_str(), Duration::from_secs(1)),
            Some((c, i)) => {
                let i = i.trim();
                // "N/s" means "N/1s".
                let i = if i.starts_with(|c: char| c.is_ascii_digit()) { i.to_string() } else { format!("1{i}") };
                let per = parse_duration(&i).filter(|d| !d.is_zero())?;
                // A bare number after the slash has no unit: refuse it rather than guess seconds.
                if i.ends_with(|c: char| c.is_ascii_digit()) {
                    return None;
                }
                (c, per)
            }
        };
        let count: u64 = count.trim().parse().ok()?;
        Some(if count == 0 { ConnRateLimit::Unlimited } else { ConnRateLimit::Limited { count, per } })
    }
}

impl<'de> Deserialize<'de> for ConnRateLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ConnRateLimit;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a connection rate: \"infinity\", connections per second (0 = unlimited), or \"1000/s\", \"100/10s\", \"6000/m\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ConnRateLimit, E> {
                u64::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))?;
                self.visit_str(&v.to_string())
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ConnRateLimit, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ConnRateLimit, E> {
                ConnRateLimit::parse(v).ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

/// `websocket.max_frame_size`: `"infinity"` or a size (`65536`, `"64KB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameSizeLimit {
    Infinity,
    Bytes(u64),
}

impl<'de> Deserialize<'de> for FrameSizeLimit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = FrameSizeLimit;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"infinity\" or a positive size such as 65536 or \"64KB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<FrameSizeLimit, E> {
                match u64::try_from(v) {
                    Ok(n) if n > 0 => Ok(FrameSizeLimit::Bytes(n)),
                    _ => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<FrameSizeLimit, E> {
                if v == 0 {
                    return Err(E::invalid_value(de::Unexpected::Unsigned(v), &self));
                }
                Ok(FrameSizeLimit::Bytes(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FrameSizeLimit, E> {
                if v.trim().eq_ignore_ascii_case("infinity") {
                    return Ok(FrameSizeLimit::Infinity);
                }
                match parse_size(v) {
                    Some(n) if n > 0 => Ok(FrameSizeLimit::Bytes(n)),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// One access rule: allow or deny `net` (`None` = every address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessRule {
    pub allow: bool,
    /// Address and prefix length; host bits may be set (`10.1.2.3/8` is `10.0.0.0/8`, as EMQX adjusts it).
    pub net: Option<(IpAddr, u8)>,
}

/// Parses EMQX's `access_rules`: each string holds one or more comma-separated rules `allow|deny all|ADDR|ADDR/LEN`.
/// Returns the rules in order, or a message saying which rule is wrong and why.
pub fn parse_access_rules(rules: &[String]) -> Result<Vec<AccessRule>, String> {
    let mut out = Vec::new();
    for rule in rules.iter().flat_map(|r| r.split(',')).map(str::trim) {
        let mut words = rule.split_whitespace();
        let (action, target) = match (words.next(), words.next(), words.next()) {
            (Some(a), Some(t), None) => (a, t),
            _ => return Err(format!("rule \"{rule}\" is not \"allow|deny all|ADDRESS|ADDRESS/PREFIX\"")),
        };
        let allow = match action {
            "allow" => true,
            "deny" => false,
            _ => return Err(format!("rule \"{rule}\": the action must be \"allow\" or \"deny\"")),
        };
        let net = if target == "all" {
            None
        } else {
            let (addr, len) = match target.split_once('/') {
                Some((a, l)) => (a, Some(l)),
                None => (target, None),
            };
            let addr: IpAddr =
                addr.parse().map_err(|_| format!("rule \"{rule}\": \"{addr}\" is not an IPv4 or IPv6 address"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let len = match len {
                None => max,
                Some(l) => match l.parse::<u8>() {
                    Ok(n) if n <= max && !l.starts_with('+') => n,
                    _ => return Err(format!("rule \"{rule}\": prefix length \"{l}\" is not 0 to {max}")),
                },
            };
            Some((addr, len))
        };
        out.push(AccessRule { allow, net });
    }
    Ok(out)
}

/// Checks serde cannot express, for every listener. Returns (key below `listeners.`, value, allowed).
pub(crate) fn check(l: &ListenersConfig) -> Result<(), (String, String, String)> {
    for (kind, name, c) in l.all() {
        let key = |k: &str| format!("{kind}.{name}.{k}");
        parse_access_rules(c.access_rules())
            .map_err(|e| (key("access_rules"), format!("{:?}", c.access_rules()), e))?;
        if c.proxy_protocol_timeout().is_zero() {
            return Err((key("proxy_protocol_timeout"), "0".into(), "a positive duration such as \"3s\"".into()));
        }
        if c.max_connections() == 0 {
            return Err((key("max_connections"), "0".into(), "1 or more".into()));
        }
    }
    let ssl = l.ssl.iter().map(|(n, c)| (format!("ssl.{n}"), &c.ssl_options));
    let wss = l.wss.iter().map(|(n, c)| (format!("wss.{n}"), &c.ssl_options));
    for (prefix, o) in ssl.chain(wss) {
        check_ssl(o).map_err(|(k, v, a)| (format!("{prefix}.ssl_options.{k}"), v, a.to_string()))?;
    }
    let ws = l.ws.iter().map(|(n, c)| (format!("ws.{n}"), &c.websocket));
    let wss = l.wss.iter().map(|(n, c)| (format!("wss.{n}"), &c.websocket));
    for (prefix, o) in ws.chain(wss) {
        check_ws(o).map_err(|(k, v, a)| (format!("{prefix}.websocket.{k}"), v, a.to_string()))?;
    }
    Ok(())
}

fn check_ssl(o: &SslOptions) -> Result<(), (&'static str, String, &'static str)> {
    if o.fail_if_no_peer_cert && o.verify != VerifyMode::VerifyPeer {
        return Err(("fail_if_no_peer_cert", "true".into(), "true only with verify = \"verify_peer\""));
    }
    match (&o.certfile, &o.keyfile) {
        (Some(c), None) => {
            return Err((
                "certfile",
                format!("{:?}", c.display().to_string()),
                "set together with keyfile (or neither: the generated certificate)",
            ))
        }
        (None, Some(k)) => {
            return Err((
                "keyfile",
                format!("{:?}", k.display().to_string()),
                "set together with certfile (or neither: the generated certificate)",
            ))
        }
        _ => {}
    }
    if o.versions.is_empty() {
        return Err(("versions", "[]".into(), "one or more of \"tlsv1.3\", \"tlsv1.2\""));
    }
    if o.handshake_timeout.0.is_zero() {
        return Err(("handshake_timeout", "0".into(), "a positive duration such as \"15s\""));
    }
    Ok(())
}

fn check_ws(o: &WebsocketOptions) -> Result<(), (&'static str, String, &'static str)> {
    if !o.mqtt_path.starts_with('/') {
        return Err(("mqtt_path", format!("\"{}\"", o.mqtt_path), "a path starting with \"/\" such as \"/mqtt\""));
    }
    if o.supported_subprotocols.is_empty() {
        return Err(("supported_subprotocols", "\"\"".into(), "one or more subprotocols, e.g. \"mqtt, mqtt-v5\""));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_rate_accepts_emqx_syntax() {
        let per = |count, s| ConnRateLimit::Limited { count, per: Duration::from_secs(s) };
        assert_eq!(ConnRateLimit::parse("infinity"), Some(ConnRateLimit::Unlimited));
        assert_eq!(ConnRateLimit::parse("0"), Some(ConnRateLimit::Unlimited));
        assert_eq!(ConnRateLimit::parse("1000"), Some(per(1000, 1)));
        assert_eq!(ConnRateLimit::parse("1000/s"), Some(per(1000, 1)));
        assert_eq!(ConnRateLimit::parse("100/10s"), Some(per(100, 10)));
        assert_eq!(ConnRateLimit::parse("6000/m"), Some(per(6000, 60)));
        assert_eq!(
            ConnRateLimit::parse("5/500ms"),
            Some(ConnRateLimit::Limited { count: 5, per: Duration::from_millis(500) })
        );
        for bad in ["fast", "10/", "10/0s", "10/3", "-1", "1.5/s"] {
            assert_eq!(ConnRateLimit::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn access_rules_parse_like_emqx() {
        let r = parse_access_rules(&["allow 10.0.0.0/8, deny 192.168.1.10".into(), "deny all".into()]).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0], AccessRule { allow: true, net: Some(("10.0.0.0".parse().unwrap(), 8)) });
        assert_eq!(r[1], AccessRule { allow: false, net: Some(("192.168.1.10".parse().unwrap(), 32)) });
        assert_eq!(r[2], AccessRule { allow: false, net: None });
        let v6 = parse_access_rules(&["allow 2001:db8::/32".into()]).unwrap();
        assert_eq!(v6[0].net, Some(("2001:db8::".parse().unwrap(), 32)));
        for bad in ["permit all", "allow", "allow 10.0.0.0/33", "allow 300.1.1.1", "allow all now", "deny ::/129"] {
            assert!(parse_access_rules(&[bad.into()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn comma_lists_from_string_or_array() {
        #[derive(Deserialize)]
        struct T {
            a: CommaList,
            b: CommaList,
        }
        let t: T = toml::from_str("a = \"mqtt, mqtt-v5 ,\"\nb = [\"x\", \"y, z\"]").unwrap();
        assert_eq!(t.a.0, ["mqtt", "mqtt-v5"]);
        assert_eq!(t.b.0, ["x", "y", "z"]);
    }
}
