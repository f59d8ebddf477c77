//! WebSocket over loopback: the upgrade's checks and `WsIo`, with tokio-tungstenite's client.

mod common;

use futures_util::{SinkExt, StreamExt};
use halyard_core::config::{CommaList, FrameSizeLimit, Piggyback, WebsocketOptions};
use halyard_transport::{accept_ws, MqttStream, TransportError, WsAccepted, WsSettings};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::Request;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

const T: Duration = Duration::from_secs(10);
/// A CONNECT packet (MQTT 3.1.1, client id "a").
const CONNECT: &[u8] = b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01a";
const PINGREQ: &[u8] = b"\xc0\x00";

type Client = WebSocketStream<TcpStream>;

/// A listener that upgrades one connection with `settings` and hands back the result.
async fn server(
    settings: WsSettings,
) -> (SocketAddr, tokio::task::JoinHandle<Result<WsAccepted<TcpStream>, TransportError>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (tcp, peer) = listener.accept().await.unwrap();
        accept_ws(tcp, &settings, peer, T).await
    });
    (addr, task)
}

fn settings(f: impl FnOnce(&mut WebsocketOptions)) -> WsSettings {
    let mut o = WebsocketOptions::default();
    f(&mut o);
    WsSettings::new(&o, 1 << 20)
}

fn request(addr: SocketAddr, path: &str, headers: &[(&'static str, &str)]) -> Request<()> {
    let mut r = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (k, v) in headers {
        r.headers_mut().append(*k, v.parse().unwrap());
    }
    r
}

async fn connect(addr: SocketAddr, req: Request<()>) -> Result<(Client, Option<String>), WsError> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp).await?;
    let proto = resp.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap().to_string());
    Ok((ws, proto))
}

/// Upgrades with subprotocol "mqtt" and default options; returns both ends.
async fn pair(s: WsSettings) -> (Client, WsAccepted<TcpStream>) {
    let (addr, task) = server(s).await;
    let (ws, _) = connect(addr, request(addr, "/mqtt", &[("sec-websocket-protocol", "mqtt")])).await.unwrap();
    (ws, task.await.unwrap().unwrap())
}

fn http_status(e: WsError) -> u16 {
    match e {
        WsError::Http(resp) => resp.status().as_u16(),
        e => panic!("expected an HTTP refusal, got {e}"),
    }
}

#[tokio::test]
async fn subprotocol_is_chosen_from_the_offer_and_echoed() {
    let (addr, task) = server(settings(|_| {})).await;
    let offer = [("sec-websocket-protocol", "foo, mqtt-v5"), ("sec-websocket-protocol", "mqtt")];
    let (_ws, proto) = connect(addr, request(addr, "/mqtt", &offer)).await.unwrap();
    assert_eq!(proto.as_deref(), Some("mqtt-v5"), "the client's first offer that is supported");
    let a = task.await.unwrap().unwrap();
    assert_eq!(a.subprotocol.as_deref(), Some("mqtt-v5"));
    assert_eq!(a.peer.ip(), addr.ip());
}

#[tokio::test]
async fn missing_or_unsupported_subprotocol_is_refused_with_400() {
    let (addr, task) = server(settings(|_| {})).await;
    let e = connect(addr, request(addr, "/mqtt", &[])).await.unwrap_err();
    assert_eq!(http_status(e), 400);
    assert!(matches!(task.await.unwrap(), Err(TransportError::WsRefused { status: 400, .. })));

    let (addr, task) = server(settings(|_| {})).await;
    let e = connect(addr, request(addr, "/mqtt", &[("sec-websocket-protocol", "stomp")])).await.unwrap_err();
    assert_eq!(http_status(e), 400);
    assert!(task.await.unwrap().is_err());

    // Without fail_if_no_subprotocol a client offering none is upgraded, with none echoed.
    let (addr, task) = server(settings(|o| o.fail_if_no_subprotocol = false)).await;
    let (_ws, proto) = connect(addr, request(addr, "/mqtt", &[])).await.unwrap();
    assert_eq!(proto, None);
    assert_eq!(task.await.unwrap().unwrap().subprotocol, None);
}

#[tokio::test]
async fn wrong_path_is_404_and_origins_are_checked() {
    let mqtt = ("sec-websocket-protocol", "mqtt");
    let (addr, task) = server(settings(|_| {})).await;
    assert_eq!(http_status(connect(addr, request(addr, "/other", &[mqtt])).await.unwrap_err()), 404);
    assert!(task.await.unwrap().is_err());

    let checked = |allow_absence: bool| {
        settings(move |o| {
            o.check_origin_enable = true;
            o.allow_origin_absence = allow_absence;
            o.check_origins = CommaList::from_str_list("https://app.example");
        })
    };
    let (addr, task) = server(checked(true)).await;
    let e = connect(addr, request(addr, "/mqtt", &[mqtt, ("origin", "https://evil.example")])).await.unwrap_err();
    assert_eq!(http_status(e), 403);
    assert!(task.await.unwrap().is_err());
    let (addr, task) = server(checked(true)).await;
    connect(addr, request(addr, "/mqtt", &[mqtt, ("origin", "https://app.example")])).await.unwrap();
    task.await.unwrap().unwrap();
    let (addr, task) = server(checked(true)).await;
    connect(addr, request(addr, "/mqtt", &[mqtt])).await.unwrap();
    task.await.unwrap().unwrap();
    let (addr, task) = server(checked(false)).await;
    assert_eq!(http_status(connect(addr, request(addr, "/mqtt", &[mqtt])).await.unwrap_err()), 403);
    assert!(task.await.unwrap().is_err());
}

#[tokio::test]
async fn proxy_headers_give_the_real_client_address() {
    let (addr, task) = server(settings(|_| {})).await;
    let h = [
        ("sec-websocket-protocol", "mqtt"),
        ("x-forwarded-for", "203.0.113.7, 10.0.0.1"),
        ("x-forwarded-port", "4711"),
    ];
    connect(addr, request(addr, "/mqtt", &h)).await.unwrap();
    assert_eq!(task.await.unwrap().unwrap().peer, "203.0.113.7:4711".parse().unwrap());

    // Ignored when configured empty; an unparsable header falls back to the connection's address.
    let (addr, task) = server(settings(|o| o.proxy_address_header = String::new())).await;
    connect(addr, request(addr, "/mqtt", &h)).await.unwrap();
    assert_eq!(task.await.unwrap().unwrap().peer.ip(), addr.ip());
    let (addr, task) = server(settings(|_| {})).await;
    connect(addr, request(addr, "/mqtt", &[h[0], ("x-forwarded-for", "unknown")])).await.unwrap();
    assert_eq!(task.await.unwrap().unwrap().peer.ip(), addr.ip());
}

#[tokio::test]
async fn packets_across_frames_and_frames_with_several_packets() {
    let (mut client, mut server) = pair(settings(|_| {})).await;
    // One CONNECT in two frames, then a frame with two PINGREQs.
    client.send(Message::Binary(CONNECT[..5].to_vec().into())).await.unwrap();
    client.send(Message::Binary(CONNECT[5..].to_vec().into())).await.unwrap();
    client.send(Message::Binary([PINGREQ, PINGREQ].concat().into())).await.unwrap();
    let mut got = vec![0u8; CONNECT.len() + 4];
    server.io.read_exact(&mut got).await.unwrap();
    assert_eq!(got, [CONNECT, PINGREQ, PINGREQ].concat());
}

#[tokio::test]
async fn writes_become_one_frame_per_flush() {
    let connack = b"\x20\x02\x00\x00";
    let (mut client, mut server) = pair(settings(|_| {})).await;
    server.io.write_all(connack).await.unwrap();
    server.io.write_all(b"\xd0\x00").await.unwrap();
    server.io.flush().await.unwrap();
    assert_eq!(client.next().await.unwrap().unwrap(), Message::Binary([&connack[..], b"\xd0\x00"].concat().into()));

    // mqtt_piggyback = "single": one frame per packet, even written together.
    let (mut client, mut server) = pair(settings(|o| o.mqtt_piggyback = Piggyback::Single)).await;
    server.io.write_all(&[&connack[..], b"\xd0\x00", b"\x30\x03\x00\x01t"].concat()).await.unwrap();
    server.io.flush().await.unwrap();
    for want in [&connack[..], b"\xd0\x00", b"\x30\x03\x00\x01t"] {
        assert_eq!(client.next().await.unwrap().unwrap(), Message::Binary(want.to_vec().into()));
    }

    // A batch larger than a frame's worth is split, and arrives whole.
    let (mut client, mut server) = pair(settings(|_| {})).await;
    let big = vec![7u8; 200_000];
    let writer = tokio::spawn(async move {
        server.io.write_all(&big).await.unwrap();
        server.io.flush().await.unwrap();
        server
    });
    let mut total = 0;
    while total < 200_000 {
        match client.next().await.unwrap().unwrap() {
            Message::Binary(b) => total += b.len(),
            m => panic!("{m:?}"),
        }
    }
    assert_eq!(total, 200_000);
    writer.await.unwrap();
}

/// Reads on the server until it ends; returns the error (or `None` at end of file) and the bytes read.
async fn read_to_end(io: &mut (impl tokio::io::AsyncRead + Unpin)) -> (Option<io::Error>, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match io.read(&mut buf).await {
            Ok(0) => return (None, got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (Some(e), got),
        }
    }
}

async fn close_code(client: &mut Client) -> Option<CloseCode> {
    while let Some(m) = client.next().await {
        match m {
            Ok(Message::Close(f)) => return f.map(|f| f.code),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

#[tokio::test]
async fn text_frame_closes_with_1003() {
    let (mut client, mut server) = pair(settings(|_| {})).await;
    client.send(Message::Binary(PINGREQ.to_vec().into())).await.unwrap();
    client.send(Message::Text("{\"not\":\"mqtt\"}".into())).await.unwrap();
    let reader = tokio::spawn(async move { read_to_end(&mut server.io).await });
    assert_eq!(close_code(&mut client).await, Some(CloseCode::Unsupported));
    let (err, got) = reader.await.unwrap();
    assert_eq!(got, PINGREQ, "what came before the text frame is read");
    assert_eq!(err.unwrap().kind(), io::ErrorKind::InvalidData);
}

#[tokio::test]
async fn oversize_frame_closes_with_1009() {
    let (mut client, mut server) = pair(settings(|o| o.max_frame_size = FrameSizeLimit::Bytes(1024))).await;
    client.send(Message::Binary(vec![0x30; 1024].into())).await.unwrap();
    client.send(Message::Binary(vec![0x30; 1025].into())).await.unwrap();
    let reader = tokio::spawn(async move { read_to_end(&mut server.io).await });
    assert_eq!(close_code(&mut client).await, Some(CloseCode::Size));
    let (err, got) = reader.await.unwrap();
    assert_eq!(got.len(), 1024, "a frame at the limit passes");
    assert_eq!(err.unwrap().kind(), io::ErrorKind::InvalidData);

    // "infinity" is bounded by the zone's max_packet_size.
    let (mut client, mut server) = pair(WsSettings::new(&WebsocketOptions::default(), 100)).await;
    client.send(Message::Binary(vec![0x30; 101].into())).await.unwrap();
    let reader = tokio::spawn(async move { read_to_end(&mut server.io).await });
    assert_eq!(close_code(&mut client).await, Some(CloseCode::Size));
    assert!(reader.await.unwrap().0.is_some());
}

#[tokio::test]
async fn ping_is_answered_and_close_is_end_of_file() {
    let (mut client, mut server) = pair(settings(|_| {})).await;
    let reader = tokio::spawn(async move { read_to_end(&mut server.io).await });
    client.send(Message::Ping(b"hi".to_vec().into())).await.unwrap();
    assert_eq!(client.next().await.unwrap().unwrap(), Message::Pong(b"hi".to_vec().into()));
    client.send(Message::Binary(PINGREQ.to_vec().into())).await.unwrap();
    client.close(None).await.unwrap();
    let (err, got) = reader.await.unwrap();
    assert!(err.is_none(), "{err:?}");
    assert_eq!(got, PINGREQ);
    // The server answered the close.
    assert!(matches!(client.next().await, Some(Ok(Message::Close(_))) | None));
}

#[tokio::test]
async fn garbage_instead_of_frames_is_an_error_not_a_panic() {
    let (addr, task) = server(settings(|_| {})).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let req = format!(
        "GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut server = task.await.unwrap().unwrap();
    // Unmasked frame from a client, a reserved opcode, random bytes.
    tcp.write_all(b"\x82\x02\xc0\x00\x8b\x80\x00\x00\x00\x00\xff\xff\xff").await.unwrap();
    let (err, _) = read_to_end(&mut server.io).await;
    assert!(err.is_some());
}

#[tokio::test]
async fn wss_through_mqtt_stream() {
    let ca = common::Ca::new("CA");
    let leaf = ca.server("wss");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = common::write_leaf(dir.path(), &leaf);
    let opts = halyard_core::config::SslOptions { certfile: Some(cert), keyfile: Some(key), ..Default::default() };
    let ctx = halyard_transport::TlsContext::new(&opts, &halyard_transport::DefaultCerts::in_dir(dir.path())).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = ctx.acceptor();
    let server = tokio::spawn(async move {
        let (tcp, peer) = listener.accept().await.unwrap();
        let tls = halyard_transport::accept_tls(&acceptor, tcp, T).await.unwrap();
        let ws = accept_ws(tls, &settings(|_| {}), peer, T).await.unwrap();
        let mut s = MqttStream::Wss(Box::new(ws.io));
        assert_eq!(s.kind(), "wss");
        assert!(s.tls().is_some());
        let mut got = vec![0u8; CONNECT.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, CONNECT);
        s.write_all(b"\x20\x02\x00\x00").await.unwrap();
        s.flush().await.unwrap();
        // Parked on the TCP socket's readiness, woken by the client's next frame.
        std::future::poll_fn(|cx| s.poll_read_ready(cx)).await.unwrap();
        let mut ping = [0u8; 2];
        s.read_exact(&mut ping).await.unwrap();
        assert_eq!(ping, PINGREQ);
    });
    let tls = common::Client::trusting(&ca.cert).connect(addr, "localhost").await.unwrap();
    let req = request(addr, "/mqtt", &[("sec-websocket-protocol", "mqtt")]);
    let (mut ws, _) = tokio_tungstenite::client_async(req, tls).await.unwrap();
    ws.send(Message::Binary(CONNECT.to_vec().into())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::Binary(b"\x20\x02\x00\x00".to_vec().into()));
    ws.send(Message::Binary(PINGREQ.to_vec().into())).await.unwrap();
    server.await.unwrap();
}
