//! Every listener type end to end, in process, over real sockets: TLS, WebSocket, WebSocket over TLS and the
//! PROXY protocol carrying MQTT into the same broker; certificate identities; mountpoints; the listener limits;
//! and bad input on each transport, each asserting the close and that a bystander on the same listener is still
//! served. Real third-party clients (mosquitto, openssl, MQTT.js, paho, Chromium) are in
//! crates/halyard/tests/transports.rs.

mod common;

use bytes::BytesMut;
use common::pki::{self, Ca, Leaf};
use common::*;
use futures_util::{SinkExt, StreamExt};
use halyard_codec::reason::rc;
use halyard_codec::{Connect, Packet, ProtocolVersion, ProtocolVersion::*, QoS};
use halyard_core::config::{Piggyback, Source};
use halyard_core::hooks::ClientInfo;
use halyard_core::metrics::Metrics;
use halyard_core::Broker;
use halyard_transport::tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use halyard_transport::tokio_tungstenite::tungstenite::{Error as WsError, Message};
use halyard_transport::{PeerCert, WsIo};
use rcgen::DnType;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A broker with `toml` (listeners, zones) added to the test environment (TCP on 127.0.0.1:0, the default TLS
/// and WebSocket listeners off); `node.data_dir` is `data` (the generated certificates go there).
async fn broker_with(data: &Path, toml: &str) -> TestBroker {
    let file = data.join("halyard.toml");
    std::fs::write(&file, format!("[node]\ndata_dir = {:?}\n{toml}", data.display().to_string())).expect("config");
    let config = halyard_core::config::load(&Source { file: Some(file), env: test_env() }).expect("test config");
    let broker = Broker::new(config);
    let server = halyard_server::start(broker.clone()).await.expect("listeners start");
    let addr = server.addr("default").expect("default listener");
    TestBroker { broker, server, addr }
}

fn listener(b: &TestBroker, key: &str) -> SocketAddr {
    b.server.addr(key).unwrap_or_else(|| panic!("listener {key} not started"))
}

/// The generated CA (`<data>/certs/ca.pem`), which signed the listeners' default server certificate.
fn default_ca(data: &Path) -> halyard_transport::rustls::pki_types::CertificateDer<'static> {
    pki::read_cert(&data.join("certs/ca.pem"))
}

/// An MQTT client over any byte stream (TLS, WebSocket through `WsIo`, TCP).
struct Mqtt<S> {
    s: S,
    buf: BytesMut,
    version: ProtocolVersion,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Mqtt<S> {
    fn new(s: S, version: ProtocolVersion) -> Mqtt<S> {
        Mqtt { s, buf: BytesMut::new(), version }
    }

    /// Sends CONNECT and returns the CONNACK's reason code (`None`: closed without one).
    async fn connect_with(s: S, c: Connect) -> (Mqtt<S>, Option<u8>) {
        let mut m = Mqtt::new(s, c.protocol);
        m.send(&Packet::Connect(Box::new(c))).await;
        let code = match m.recv().await {
            Some(Packet::ConnAck(a)) => Some(a.reason_code),
            None => None,
            Some(other) => panic!("expected CONNACK, got {other:?}"),
        };
        (m, code)
    }

    /// Connects and asserts success.
    async fn connect(s: S, version: ProtocolVersion, id: &str) -> Mqtt<S> {
        let (m, code) = Mqtt::connect_with(s, connect_packet(version, id, true)).await;
        assert_eq!(code, Some(0), "CONNACK success for {id}");
        m
    }

    async fn send(&mut self, p: &Packet) {
        let mut b = BytesMut::new();
        halyard_codec::encode(p, self.version, &mut b).expect("encode");
        self.s.write_all(&b).await.expect("write");
        self.s.flush().await.expect("flush");
    }

    async fn recv(&mut self) -> Option<Packet> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(p) = halyard_codec::decode(&mut self.buf, self.version, usize::MAX).expect("decode") {
                return Some(p);
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// A round trip: the bystander check.
    async fn ping(&mut self) {
        self.send(&Packet::PingReq).await;
        assert!(matches!(self.recv().await, Some(Packet::PingResp)), "PINGRESP");
    }

    async fn subscribe(&mut self, filter: &str) {
        let s = halyard_codec::Subscribe {
            packet_id: 1,
            properties: Default::default(),
            filters: vec![(
                halyard_codec::Utf8::from(filter),
                halyard_codec::SubscriptionOptions { qos: QoS::AtMostOnce, ..Default::default() },
            )],
        };
        self.send(&Packet::Subscribe(s)).await;
        assert!(matches!(self.recv().await, Some(Packet::SubAck(a)) if a.reason_codes == [0]), "SUBACK 0");
    }

    async fn publish(&mut self, topic: &str, payload: &[u8]) {
        self.send(&Packet::Publish(publish(topic, payload, QoS::AtMostOnce, false, 0))).await;
    }

    async fn expect_publish(&mut self) -> (String, Vec<u8>) {
        match self.recv().await {
            Some(Packet::Publish(p)) => (p.topic.to_string(), p.payload.to_vec()),
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
}

/// Reads until the broker closes the connection; panics if it is still open after `WAIT`.
async fn closed_by_broker(s: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("the broker did not close the connection within {WAIT:?}"),
        }
    }
}

/// A WebSocket MQTT client (subprotocol "mqtt") over `stream`.
async fn ws_client<S: AsyncRead + AsyncWrite + Unpin>(stream: S, addr: SocketAddr) -> WsIo<S> {
    let ws = pki::ws_over(stream, &format!("ws://{addr}/mqtt"), Some("mqtt")).await.expect("WebSocket upgrade");
    WsIo::new(ws, Piggyback::Multiple)
}

fn metric(b: &TestBroker, f: impl Fn(&halyard_core::metrics::Metrics) -> &std::sync::atomic::AtomicU64) -> u64 {
    Metrics::get(f(&b.broker.metrics))
}

const TLS_WS_WSS: &str = r#"
[listeners.ssl.t]
bind = "127.0.0.1:0"
[listeners.ws.w]
bind = "127.0.0.1:0"
[listeners.wss.s]
bind = "127.0.0.1:0"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_websocket_wss_and_tcp_clients_share_one_broker() {
    // One message crosses every transport: published over TLS, received over TCP, WebSocket and WSS, the
    // server certificate being the one generated in the data directory on this first start.
    let dir = tempfile::tempdir().expect("tempdir");
    let b = broker_with(dir.path(), TLS_WS_WSS).await;
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        assert!(dir.path().join("certs").join(f).is_file(), "generated {f}");
    }
    let ca = default_ca(dir.path());
    let mut tcp = Mqtt::connect(TcpStream::connect(b.addr).await.expect("tcp"), V5, "via-tcp").await;
    let ws_addr = listener(&b, "ws.w");
    let ws = ws_client(TcpStream::connect(ws_addr).await.expect("tcp"), ws_addr).await;
    let mut ws = Mqtt::connect(ws, V4, "via-ws").await;
    let wss_addr = listener(&b, "wss.s");
    let tls = pki::tls_connect(wss_addr, &ca, None).await.expect("TLS for wss");
    let mut wss = Mqtt::connect(ws_client(tls, wss_addr).await, V5, "via-wss").await;
    tcp.subscribe("x/#").await;
    ws.subscribe("x/#").await;
    wss.subscribe("x/#").await;
    let tls = pki::tls_connect(listener(&b, "ssl.t"), &ca, None).await.expect("TLS");
    let mut publ = Mqtt::connect(tls, V4, "via-tls").await;
    publ.publish("x/1", b"across transports").await;
    assert_eq!(tcp.expect_publish().await, ("x/1".into(), b"across transports".to_vec()));
    assert_eq!(ws.expect_publish().await, ("x/1".into(), b"across transports".to_vec()));
    assert_eq!(wss.expect_publish().await, ("x/1".into(), b"across transports".to_vec()));
}

#[tokio::test]
async fn a_port_in_use_stops_start_up_naming_the_listener_and_the_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    for kind in ["ssl", "ws", "wss"] {
        let file = dir.path().join("halyard.toml");
        let toml = format!(
            "[node]\ndata_dir = {:?}\n[listeners.{kind}.taken]\nbind = \"{addr}\"\n",
            dir.path().display().to_string()
        );
        std::fs::write(&file, toml).expect("config");
        let config = halyard_core::config::load(&Source { file: Some(file), env: test_env() }).expect("config");
        let err = match halyard_server::start(Broker::new(config)).await {
            Ok(_) => panic!("{kind}: started on a port in use"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(&format!("listeners.{kind}.taken")) && err.contains(&addr.to_string()), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_before_a_client_hello_are_closed_and_a_bystander_is_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = broker_with(dir.path(), TLS_WS_WSS).await;
    let ca = default_ca(dir.path());
    for key in ["ssl.t", "wss.s"] {
        let addr = listener(&b, key);
        let tls = pki::tls_connect(addr, &ca, None).await.expect("TLS");
        let mut bystander: Box<dyn Pinger> = if key == "wss.s" {
            Box::new(Mqtt::connect(ws_client(tls, addr).await, V5, "bystander-wss").await)
        } else {
            Box::new(Mqtt::connect(tls, V5, "bystander-ssl").await)
        };
        // Garbage, and a plain MQTT CONNECT on a TLS port.
        for garbage in
            [&b"\x00\xff\x13garbage, not a ClientHello\r\n"[..], b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01a"]
        {
            let mut raw = TcpStream::connect(addr).await.expect("tcp");
            raw.write_all(garbage).await.expect("write");
            let answer = closed_by_broker(&mut raw).await;
            // rustls answers some garbage with a TLS alert record (type 0x15), never with MQTT or HTTP.
            assert!(answer.is_empty() || answer[0] == 0x15, "{key}: {answer:?}");
            bystander.ping_boxed().await;
        }
    }
    assert_eq!(metric(&b, |m| &m.tls_handshake_failures), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_that_never_completes_is_closed_after_handshake_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = broker_with(
        dir.path(),
        "[listeners.ssl.t]\nbind = \"127.0.0.1:0\"\n[listeners.ssl.t.ssl_options]\nhandshake_timeout = \"300ms\"\n",
    )
    .await;
    let addr = listener(&b, "ssl.t");
    let started = Instant::now();
    // The first bytes of a TLS record carrying a ClientHello, then nothing.
    let mut stalled = TcpStream::connect(addr).await.expect("tcp");
    stalled.write_all(b"\x16\x03\x01\x02\x00\x01").await.expect("write");
    // Meanwhile another client completes its handshake and is served.
    let ca = default_ca(dir.path());
    let mut bystander = Mqtt::connect(pki::tls_connect(addr, &ca, None).await.expect("TLS"), V4, "bystander").await;
    closed_by_broker(&mut stalled).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(290) && took < Duration::from_secs(3), "closed after {took:?}");
    assert_eq!(metric(&b, |m| &m.tls_handshake_failures), 1);
    bystander.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_without_or_with_a_wrong_subprotocol_get_400() {
    // fail_if_no_subprotocol = true is the default.
    let dir = tempfile::tempdir().expect("tempdir");
    let b = broker_with(dir.path(), TLS_WS_WSS).await;
    for (key, tls) in [("ws.w", false), ("wss.s", true)] {
        let addr = listener(&b, key);
        let ca = default_ca(dir.path());
        let url = format!("ws://{addr}/mqtt");
        let bystander_stream = TcpStream::connect(addr).await.expect("tcp");
        let mut bystander = if tls {
            let t = pki::tls_over(bystander_stream, &ca, None).await.expect("TLS");
            Box::new(Mqtt::connect(ws_client(t, addr).await, V5, &format!("bystander-{key}")).await) as Box<dyn Pinger>
        } else {
            Box::new(Mqtt::connect(ws_client(bystander_stream, addr).await, V5, &format!("bystander-{key}")).await)
        };
        for offer in [None, Some("mqttv9"), Some("graphql-ws, chat")] {
            let tcp = TcpStream::connect(addr).await.expect("tcp");
            let refused = if tls {
                pki::ws_over(pki::tls_over(tcp, &ca, None).await.expect("TLS"), &url, offer).await.map(|_| ())
            } else {
                pki::ws_over(tcp, &url, offer).await.map(|_| ())
            };
            match refused {
                Err(WsError::Http(resp)) => assert_eq!(resp.status().as_u16(), 400, "{key} offering {offer:?}"),
                other => panic!("{key} offering {offer:?}: expected HTTP 400, got {other:?}"),
            }
            bystander.ping_boxed().await;
        }
    }
    assert_eq!(metric(&b, |m| &m.ws_upgrade_failures), 6);
}

/// A bystander of any stream type.
trait Pinger {
    fn ping_boxed(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>>;
}

impl<S: AsyncRead + AsyncWrite + Unpin> Pinger for Mqtt<S> {
    fn ping_boxed(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>> {
        Box::pin(self.ping())
    }
}

/// The close code of the broker's close frame, reading past anything before it.
async fn close_code<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut halyard_transport::tokio_tungstenite::WebSocketStream<S>,
) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("a close frame in time") {
            Some(Ok(Message::Close(f))) => return f.map(|f| f.code),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return None,
        }
    }
}

/// CONNECT (3.1.1, clean session) as one binary frame; returns after the CONNACK frame.
async fn ws_mqtt_connect<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut halyard_transport::tokio_tungstenite::WebSocketStream<S>,
    id: &str,
) {
    let mut b = BytesMut::new();
    halyard_codec::encode(&Packet::Connect(Box::new(connect_packet(V4, id, true))), V4, &mut b).expect("encode");
    ws.send(Message::Binary(b.freeze())).await.expect("send CONNECT");
    match tokio::time::timeout(WAIT, ws.next()).await.expect("CONNACK in time") {
        Some(Ok(Message::Binary(b))) => assert_eq!(&b[..], [0x20, 2, 0, 0], "CONNACK success"),
        other => panic!("expected the CONNACK frame, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_frame_is_closed_with_1003_and_an_oversize_frame_with_1009() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = broker_with(
        dir.path(),
        "[listeners.ws.w]\nbind = \"127.0.0.1:0\"\n[listeners.ws.w.websocket]\nmax_frame_size = 1024\n\
         [listeners.wss.s]\nbind = \"127.0.0.1:0\"\n[listeners.wss.s.websocket]\nmax_frame_size = 1024\n",
    )
    .await;
    let ca = default_ca(dir.path());
    let addr = listener(&b, "ws.w");
    let tcp = || async move { TcpStream::connect(addr).await.expect("tcp") };
    let mut bystander = Mqtt::connect(ws_client(tcp().await, addr).await, V4, "bystander").await;
    bad_frames(tcp().await, tcp().await, addr, &mut bystander).await;
    let addr = listener(&b, "wss.s");
    let tls = || async { pki::tls_connect(addr, &ca, None).await.expect("TLS") };
    let mut bystander = Mqtt::connect(ws_client(tls().await, addr).await, V4, "bystander-wss").await;
    bad_frames(tls().await, tls().await, addr, &mut bystander).await;
    assert_eq!(metric(&b, |m| &m.ws_upgrade_failures), 0, "the upgrades were fine; the frames were not");
}

/// Over two fresh connections to a WebSocket listener with max_frame_size = 1024: a text frame after CONNECT
/// gets close 1003, a 2 KiB binary frame close 1009; `bystander` is served after each.
async fn bad_frames<S: AsyncRead + AsyncWrite + Unpin>(
    texter: S,
    big: S,
    addr: SocketAddr,
    bystander: &mut (impl Pinger + ?Sized),
) {
    let url = format!("ws://{addr}/mqtt");
    let mut texter = pki::ws_over(texter, &url, Some("mqtt")).await.expect("upgrade");
    ws_mqtt_connect(&mut texter, "texter").await;
    texter.send(Message::Text("{\"hello\": \"mqtt\"}".into())).await.expect("send text");
    assert_eq!(close_code(&mut texter).await, Some(CloseCode::Unsupported), "1003");
    bystander.ping_boxed().await;

    let mut big = pki::ws_over(big, &url, Some("mqtt")).await.expect("upgrade");
    ws_mqtt_connect(&mut big, "big").await;
    // A PUBLISH of 2 KiB in one frame, over max_frame_size = 1024.
    let mut p = BytesMut::new();
    halyard_codec::encode(&Packet::Publish(publish("t", &[7; 2048], QoS::AtMostOnce, false, 0)), V4, &mut p)
        .expect("encode");
    big.send(Message::Binary(p.freeze())).await.expect("send");
    assert_eq!(close_code(&mut big).await, Some(CloseCode::Size), "1009");
    bystander.ping_boxed().await;
}

const PROXIED: &str = r#"
[listeners.tcp.proxied]
bind = "127.0.0.1:0"
proxy_protocol = true
proxy_protocol_timeout = "300ms"
access_rules = ["deny 10.0.0.0/8", "allow all"]
[listeners.ssl.proxied]
bind = "127.0.0.1:0"
proxy_protocol = true
[listeners.ws.proxied]
bind = "127.0.0.1:0"
proxy_protocol = true
"#;

/// Every client's address as `client.connect` saw it, by client id.
/// (client id, what a hook saw of it), in the order the hook ran.
type Seen<T> = Arc<Mutex<Vec<(String, T)>>>;

fn record_peers(b: &TestBroker) -> Seen<Option<SocketAddr>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    b.broker
        .hooks
        .client_connect
        .register(0, Box::new(move |c: &ClientInfo| s.lock().expect("lock").push((c.client_id.to_string(), c.peer))));
    seen
}

fn peer_of(seen: &Mutex<Vec<(String, Option<SocketAddr>)>>, id: &str) -> Option<SocketAddr> {
    seen.lock().expect("lock").iter().find(|(c, _)| c == id).and_then(|(_, p)| *p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_gives_the_clients_real_address_on_tcp_tls_and_websocket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = broker_with(dir.path(), PROXIED).await;
    let seen = record_peers(&b);
    let ca = default_ca(dir.path());
    let header = |port: u16| format!("PROXY TCP4 203.0.113.7 192.0.2.1 {port} 1883\r\n");

    let mut tcp = TcpStream::connect(listener(&b, "tcp.proxied")).await.expect("tcp");
    tcp.write_all(header(40001).as_bytes()).await.expect("header");
    let _c1 = Mqtt::connect(tcp, V4, "p-tcp").await;

    let mut tcp = TcpStream::connect(listener(&b, "ssl.proxied")).await.expect("tcp");
    tcp.write_all(header(40002).as_bytes()).await.expect("header");
    let _c2 = Mqtt::connect(pki::tls_over(tcp, &ca, None).await.expect("TLS after PROXY"), V4, "p-tls").await;

    // PROXY protocol v2, binary, before the HTTP upgrade.
    let addr = listener(&b, "ws.proxied");
    let mut tcp = TcpStream::connect(addr).await.expect("tcp");
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[203, 0, 113, 9, 192, 0, 2, 1]);
    v2.extend_from_slice(&40003u16.to_be_bytes());
    v2.extend_from_slice(&1883u16.to_be_bytes());
    tcp.write_all(&v2).await.expect("header");
    let _c3 = Mqtt::connect(ws_client(tcp, addr).await, V4, "p-ws").await;

    assert_eq!(peer_of(&seen, "p-tcp"), Some("203.0.113.7:40001".parse().expect("addr")));
    assert_eq!(peer_of(&seen, "p-tls"), Some("203.0.113.7:40002".parse().expect("addr")));
    assert_eq!(peer_of(&seen, "p-ws"), Some("203.0.113.9:40003".parse().expect("addr")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_or_endless_proxy_header_is_closed_and_a_bystander_is_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = broker_with(dir.path(), PROXIED).await;
    let addr = listener(&b, "tcp.proxied");
    let mut tcp = TcpStream::connect(addr).await.expect("tcp");
    tcp.write_all(b"PROXY TCP4 198.51.100.1 192.0.2.1 5000 1883\r\n").await.expect("header");
    let mut bystander = Mqtt::connect(tcp, V5, "bystander").await;

    // Malformed: not a PROXY header at all (an MQTT client that skipped it), and a v1 line with a bad address.
    for bad in [&b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01a"[..], b"PROXY TCP4 999.1.1.1 192.0.2.1 1 2\r\n"] {
        let mut raw = TcpStream::connect(addr).await.expect("tcp");
        raw.write_all(bad).await.expect("write");
        assert!(closed_by_broker(&mut raw).await.is_empty(), "closed without an answer");
        bystander.ping().await;
    }
    // One that never ends: closed after proxy_protocol_timeout (300ms).
    let started = Instant::now();
    let mut raw = TcpStream::connect(addr).await.expect("tcp");
    raw.write_all(b"PROXY TCP4 198.51.100.2 192.0.2.1 5001").await.expect("write");
    bystander.ping().await;
    assert!(closed_by_broker(&mut raw).await.is_empty());
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(290) && took < Duration::from_secs(3), "closed after {took:?}");
    bystander.ping().await;
    assert_eq!(metric(&b, |m| &m.proxy_header_failures), 3);
}

/// A TCP connection from the loopback address `from` (127.0.0.2 is as local as 127.0.0.1 on Linux).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().expect("socket");
    s.bind(format!("{from}:0").parse().expect("addr")).expect("bind the client to {from}");
    s.connect(to).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_rules_close_denied_addresses_at_once_also_behind_a_proxy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = broker_with(
        dir.path(),
        &format!(
            "{PROXIED}\n[listeners.tcp.guarded]\nbind = \"127.0.0.1:0\"\naccess_rules = [\"deny 127.0.0.2\", \"allow all\"]\n\
             [listeners.ws.guarded]\nbind = \"127.0.0.1:0\"\naccess_rules = [\"allow 127.0.0.1\", \"deny all\"]\n"
        ),
    )
    .await;
    let addr = listener(&b, "tcp.guarded");
    let mut bystander = Mqtt::connect(connect_from("127.0.0.1", addr).await, V4, "bystander").await;
    let denied_before = metric(&b, |m| &m.connections_denied);
    let (_, code) = Mqtt::connect_with(connect_from("127.0.0.2", addr).await, connect_packet(V4, "denied", true)).await;
    assert_eq!(code, None, "no CONNACK for a denied address");
    bystander.ping().await;
    // A WebSocket listener denies before any HTTP is read.
    let ws_addr = listener(&b, "ws.guarded");
    let mut raw = connect_from("127.0.0.2", ws_addr).await;
    assert!(closed_by_broker(&mut raw).await.is_empty());
    let _ws_ok = Mqtt::connect(ws_client(connect_from("127.0.0.1", ws_addr).await, ws_addr).await, V4, "ws-ok").await;
    // Behind a proxy, the address the header names is checked (10.0.0.0/8 is denied on tcp.proxied).
    let mut tcp = TcpStream::connect(listener(&b, "tcp.proxied")).await.expect("tcp");
    tcp.write_all(b"PROXY TCP4 10.1.2.3 192.0.2.1 5000 1883\r\n").await.expect("header");
    let (_, code) = Mqtt::connect_with(tcp, connect_packet(V4, "denied-behind-proxy", true)).await;
    assert_eq!(code, None);
    assert_eq!(metric(&b, |m| &m.connections_denied) - denied_before, 3);
    bystander.ping().await;
}

/// An `ssl` listener asking for client certificates from `ca` and a zone taking identities from them.
fn mtls_config(ca_file: &Path, username: &str, clientid: &str) -> String {
    format!(
        "[zones.mtls.mqtt]\npeer_cert_as_username = \"{username}\"\npeer_cert_as_clientid = \"{clientid}\"\n\
         [listeners.ssl.m]\nbind = \"127.0.0.1:0\"\nzone = \"mtls\"\n[listeners.ssl.m.ssl_options]\n\
         verify = \"verify_peer\"\nfail_if_no_peer_cert = true\ncacertfile = {:?}\n",
        ca_file.display().to_string()
    )
}

/// Every connected client's (client id, username), as `client.connected` saw them.
fn record_identities(b: &TestBroker) -> Seen<Option<String>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    b.broker.hooks.client_connected.register(
        0,
        Box::new(move |c: &ClientInfo| {
            s.lock().expect("lock").push((c.client_id.to_string(), c.username.as_deref().map(String::from)))
        }),
    );
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_cert_as_username_and_clientid_replace_what_connect_says() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clients = Ca::new("Device CA");
    clients.write(&dir.path().join("clients-ca.pem"));
    let b = broker_with(dir.path(), &mtls_config(&dir.path().join("clients-ca.pem"), "cn", "md5")).await;
    let seen = record_identities(&b);
    let server_ca = default_ca(dir.path());
    let addr = listener(&b, "ssl.m");
    let leaf = clients.client(&[(DnType::OrganizationName, "Acme"), (DnType::CommonName, "sensor-42")]);
    let md5 = PeerCert::from_der(leaf.cert.clone()).expect("parse").md5_hex();
    let tls = pki::tls_connect(addr, &server_ca, Some(&leaf)).await.expect("mutual TLS");
    let mut c = connect_packet(V5, "what-connect-says", true);
    c.username = Some(halyard_codec::Utf8::from("connect-username"));
    let (mut m, code) = Mqtt::connect_with(tls, c).await;
    assert_eq!(code, Some(0));
    m.ping().await;
    assert_eq!(seen.lock().expect("lock").as_slice(), [(md5.clone(), Some("sensor-42".to_string()))]);
    // The session is the certificate's: a second connection with the same certificate and another CONNECT id
    // takes it over (the first gets DISCONNECT 0x8E).
    let tls = pki::tls_connect(addr, &server_ca, Some(&leaf)).await.expect("mutual TLS");
    let _second = Mqtt::connect(tls, V5, "another-id").await;
    assert!(matches!(m.recv().await, Some(Packet::Disconnect(d)) if d.reason_code == rc::SESSION_TAKEN_OVER));
    assert_eq!(Metrics::get(&b.broker.metrics.sessions_taken_over), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_cert_as_crt_refuses_the_client_because_der_is_not_utf8() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clients = Ca::new("Device CA");
    clients.write(&dir.path().join("clients-ca.pem"));
    let server_ca = |d: &Path| default_ca(d);
    for (username, clientid, code) in
        [("disabled", "crt", rc::CLIENT_IDENTIFIER_NOT_VALID), ("crt", "disabled", rc::BAD_USER_NAME_OR_PASSWORD)]
    {
        let b = broker_with(dir.path(), &mtls_config(&dir.path().join("clients-ca.pem"), username, clientid)).await;
        let leaf: Leaf = clients.client(&[(DnType::CommonName, "d1")]);
        let tls = pki::tls_connect(listener(&b, "ssl.m"), &server_ca(dir.path()), Some(&leaf)).await.expect("TLS");
        let (_, got) = Mqtt::connect_with(tls, connect_packet(V5, "d1", true)).await;
        assert_eq!(got, Some(code), "username {username}, clientid {clientid}");
        b.server.shutdown().await;
    }
}

const MOUNTED: &str = r#"
[listeners.tcp.mounted]
bind = "127.0.0.1:0"
mountpoint = "tenant-a/"
[listeners.tcp.perclient]
bind = "127.0.0.1:0"
mountpoint = "c/${clientid}/"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mountpoint_prefixes_what_its_clients_publish_and_subscribe_and_strips_what_they_receive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = broker_with(dir.path(), MOUNTED).await;
    let mut outside = Mqtt::connect(TcpStream::connect(b.addr).await.expect("tcp"), V5, "outside").await;
    outside.subscribe("#").await;
    let mounted = listener(&b, "mounted");
    let mut c = connect_packet(V5, "inside", true);
    c.will = Some(will("gone", b"inside went away", QoS::AtMostOnce));
    let (mut inside, code) = Mqtt::connect_with(TcpStream::connect(mounted).await.expect("tcp"), c).await;
    assert_eq!(code, Some(0));
    inside.subscribe("s/#").await;
    inside.subscribe("$share/g/q").await;

    // Published inside: routed under the mountpoint, and delivered inside without it.
    inside.publish("s/1", b"one").await;
    assert_eq!(outside.expect_publish().await, ("tenant-a/s/1".into(), b"one".to_vec()));
    assert_eq!(inside.expect_publish().await, ("s/1".into(), b"one".to_vec()));
    // Published outside into the mount: delivered inside without the prefix, also to a shared subscription.
    outside.publish("tenant-a/s/2", b"two").await;
    assert_eq!(outside.expect_publish().await.0, "tenant-a/s/2");
    assert_eq!(inside.expect_publish().await, ("s/2".into(), b"two".to_vec()));
    outside.publish("tenant-a/q", b"shared").await;
    assert_eq!(outside.expect_publish().await.0, "tenant-a/q");
    assert_eq!(inside.expect_publish().await, ("q".into(), b"shared".to_vec()));
    // Outside the mount: not for the inside client (the next thing it gets is the later message in the mount).
    outside.publish("s/3", b"not mounted").await;
    assert_eq!(outside.expect_publish().await.0, "s/3");
    outside.publish("tenant-a/s/4", b"four").await;
    assert_eq!(outside.expect_publish().await.0, "tenant-a/s/4");
    assert_eq!(inside.expect_publish().await, ("s/4".into(), b"four".to_vec()));
    // UNSUBSCRIBE takes the mounted subscription away.
    inside
        .send(&Packet::Unsubscribe(halyard_codec::Unsubscribe {
            packet_id: 2,
            properties: Default::default(),
            filters: vec![halyard_codec::Utf8::from("s/#")],
        }))
        .await;
    assert!(matches!(inside.recv().await, Some(Packet::UnsubAck(u)) if u.reason_codes == [0]), "UNSUBACK success");
    outside.publish("tenant-a/s/5", b"five").await;
    assert_eq!(outside.expect_publish().await.0, "tenant-a/s/5");
    outside.publish("tenant-a/q", b"after").await;
    assert_eq!(outside.expect_publish().await.0, "tenant-a/q");
    assert_eq!(inside.expect_publish().await, ("q".into(), b"after".to_vec()), "s/5 was not delivered");
    // The will goes out under the mountpoint.
    drop(inside);
    assert_eq!(outside.expect_publish().await, ("tenant-a/gone".into(), b"inside went away".to_vec()));

    // ${clientid} in the mountpoint.
    let mut per = Mqtt::connect(TcpStream::connect(listener(&b, "perclient")).await.expect("tcp"), V4, "c9").await;
    per.publish("x", b"per client").await;
    assert_eq!(outside.expect_publish().await, ("c/c9/x".into(), b"per client".to_vec()));
    // A client id with a wildcard cannot be put in a mountpoint.
    let (_, code) = Mqtt::connect_with(
        TcpStream::connect(listener(&b, "perclient")).await.expect("tcp"),
        connect_packet(V5, "a+b", true),
    )
    .await;
    assert_eq!(code, Some(rc::CLIENT_IDENTIFIER_NOT_VALID));
    per.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_conn_rate_makes_connections_wait_instead_of_dropping_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A burst of 4, then one every 100 ms: 8 clients at once take at least 4 × 100 ms, and all get in.
    let b =
        broker_with(dir.path(), "[listeners.tcp.slow]\nbind = \"127.0.0.1:0\"\nmax_conn_rate = \"4/400ms\"\n").await;
    let addr = listener(&b, "slow");
    let started = Instant::now();
    let clients = (0..8).map(|i| async move {
        Mqtt::connect(TcpStream::connect(addr).await.expect("tcp"), V4, &format!("r{i}")).await
    });
    let all = futures_util::future::join_all(clients).await;
    let took = started.elapsed();
    assert_eq!(all.len(), 8);
    assert!(took >= Duration::from_millis(380), "8 connections at 4/400ms took only {took:?}");
    assert_eq!(Metrics::get(&b.broker.metrics.connections_refused_max), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_counts_tls_and_websocket_connections_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = broker_with(dir.path(), "[listeners.ssl.one]\nbind = \"127.0.0.1:0\"\nmax_connections = 1\n").await;
    let addr = listener(&b, "ssl.one");
    let ca = default_ca(dir.path());
    let mut first = Mqtt::connect(pki::tls_connect(addr, &ca, None).await.expect("TLS"), V4, "first").await;
    let mut second = TcpStream::connect(addr).await.expect("tcp");
    assert!(closed_by_broker(&mut second).await.is_empty(), "the second is closed at accept");
    assert_eq!(Metrics::get(&b.broker.metrics.connections_refused_max), 1);
    first.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_tls_and_websocket_connections_and_handshakes_in_progress() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = broker_with(dir.path(), TLS_WS_WSS).await;
    let ca = default_ca(dir.path());
    let mut tls =
        Mqtt::connect(pki::tls_connect(listener(&b, "ssl.t"), &ca, None).await.expect("TLS"), V5, "tls").await;
    let ws_addr = listener(&b, "ws.w");
    let mut ws =
        Mqtt::connect(ws_client(TcpStream::connect(ws_addr).await.expect("tcp"), ws_addr).await, V5, "ws").await;
    // Let both go idle (parked) first: shutdown must reach parked connections through their sessions.
    tls.ping().await;
    ws.ping().await;
    let mut half = TcpStream::connect(listener(&b, "ssl.t")).await.expect("tcp");
    half.write_all(b"\x16\x03\x01").await.expect("write");
    // The handshake task is running (counted) before shutdown starts.
    let deadline = Instant::now() + WAIT;
    while Metrics::get(&b.broker.metrics.connections_current) < 3 {
        assert!(Instant::now() < deadline, "the third connection was never accepted");
        tokio::task::yield_now().await;
    }
    let started = Instant::now();
    b.server.shutdown().await;
    for m in [&mut tls as &mut dyn Disconnected, &mut ws] {
        assert_eq!(m.disconnect_code().await, Some(rc::SERVER_SHUTTING_DOWN));
    }
    closed_by_broker(&mut half).await;
    assert!(started.elapsed() < Duration::from_secs(3), "the pending handshake did not wait for its 15 s timeout");
    // Closed connections linger until their clients close too (so they read our DISCONNECT).
    drop((tls, ws));
    let deadline = Instant::now() + WAIT;
    while Metrics::get(&b.broker.metrics.connections_current) > 0 {
        assert!(Instant::now() < deadline, "connections still open after shutdown");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

trait Disconnected {
    fn disconnect_code(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<u8>> + '_>>;
}

impl<S: AsyncRead + AsyncWrite + Unpin> Disconnected for Mqtt<S> {
    fn disconnect_code(&mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<u8>> + '_>> {
        Box::pin(async move {
            match self.recv().await {
                Some(Packet::Disconnect(d)) => Some(d.reason_code),
                _ => None,
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloaded_certificates_reach_new_handshakes_and_spare_existing_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = Ca::new("First server CA");
    let second = Ca::new("Second server CA");
    let (cert, key) = (dir.path().join("server.pem"), dir.path().join("server.key"));
    let write_server = |ca: &Ca| {
        let (c, k) = ca.server_pem("localhost");
        std::fs::write(&cert, c).expect("cert");
        std::fs::write(&key, k).expect("key");
    };
    write_server(&first);
    let b = broker_with(
        dir.path(),
        &format!(
            "[listeners.ssl.r]\nbind = \"127.0.0.1:0\"\n[listeners.ssl.r.ssl_options]\ncertfile = {:?}\nkeyfile = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        ),
    )
    .await;
    let addr = listener(&b, "ssl.r");
    let mut old = Mqtt::connect(pki::tls_connect(addr, &first.cert, None).await.expect("TLS"), V4, "old").await;
    write_server(&second);
    assert!(b.server.reload_certificates().is_empty(), "reloaded");
    assert!(pki::tls_connect(addr, &first.cert, None).await.is_err(), "the old certificate is gone for new handshakes");
    let _new = Mqtt::connect(pki::tls_connect(addr, &second.cert, None).await.expect("TLS"), V4, "new").await;
    old.ping().await;
    // A file that does not load keeps the certificate in use.
    std::fs::write(&cert, "not a certificate").expect("write");
    assert_eq!(b.server.reload_certificates().len(), 1);
    let _still = Mqtt::connect(pki::tls_connect(addr, &second.cert, None).await.expect("TLS"), V4, "still").await;
}
