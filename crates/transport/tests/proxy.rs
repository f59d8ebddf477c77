//! PROXY protocol over loopback: `read_proxy_header` takes exactly the header and leaves the client's bytes.

use halyard_transport::proxy::{ProxyError, V2_SIGNATURE};
use halyard_transport::{read_proxy_header, ProxyCommand, ProxyHeader, TransportError};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const T: Duration = Duration::from_secs(10);
const CONNECT: &[u8] = b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01a";

/// Sends `chunks` (a short pause between them, so the server sees them apart) then closes; the server reads
/// the header and everything after it.
async fn exchange(chunks: Vec<Vec<u8>>) -> (Result<ProxyHeader, TransportError>, Vec<u8>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = tokio::spawn(async move {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.set_nodelay(true).unwrap();
        for (i, chunk) in chunks.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if c.write_all(chunk).await.is_err() {
                return;
            }
        }
        let _ = c.shutdown().await;
    });
    let (mut s, _) = listener.accept().await.unwrap();
    let header = read_proxy_header(&mut s, T).await;
    let mut rest = Vec::new();
    if header.is_ok() {
        s.read_to_end(&mut rest).await.unwrap();
    }
    client.await.unwrap();
    (header, rest)
}

fn sock(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn v1_then_mqtt_in_one_write() {
    let line = b"PROXY TCP4 198.51.100.22 203.0.113.7 35646 1883\r\n";
    let (h, rest) = exchange(vec![[&line[..], CONNECT].concat()]).await;
    let h = h.unwrap();
    assert_eq!(h.source(), Some(sock("198.51.100.22:35646")));
    assert_eq!(h.destination(), Some(sock("203.0.113.7:1883")));
    assert_eq!(rest, CONNECT, "not one byte of the client's stream is lost");
}

#[tokio::test]
async fn v1_unknown_short_form_before_a_short_packet() {
    // 15 bytes of header, then a 2-byte PINGREQ: a reader taking 16 bytes at once would eat a byte.
    let (h, rest) = exchange(vec![b"PROXY UNKNOWN\r\n\xc0\x00".to_vec()]).await;
    assert_eq!(h.unwrap().source(), None);
    assert_eq!(rest, b"\xc0\x00");
}

#[tokio::test]
async fn headers_split_across_segments() {
    let line = b"PROXY TCP6 2001:db8::1 2001:db8::2 4242 8883\r\n".to_vec();
    let (h, rest) = exchange(vec![line[..9].to_vec(), line[9..30].to_vec(), [&line[30..], CONNECT].concat()]).await;
    assert_eq!(h.unwrap().source(), Some(sock("[2001:db8::1]:4242")));
    assert_eq!(rest, CONNECT);

    let mut v2 = V2_SIGNATURE.to_vec();
    v2.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c, 10, 0, 0, 9, 10, 0, 0, 1, 0x30, 0x39, 0x07, 0x5b]);
    let (h, rest) = exchange(vec![v2[..7].to_vec(), v2[7..20].to_vec(), [&v2[20..], CONNECT].concat()]).await;
    let h = h.unwrap();
    assert_eq!(h.source(), Some(sock("10.0.0.9:12345")));
    assert_eq!(h.destination(), Some(sock("10.0.0.1:1883")));
    assert_eq!(rest, CONNECT);
}

#[tokio::test]
async fn v2_local_is_a_health_check() {
    let mut v2 = V2_SIGNATURE.to_vec();
    v2.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    let (h, rest) = exchange(vec![[&v2[..], CONNECT].concat()]).await;
    let h = h.unwrap();
    assert_eq!(h.command, ProxyCommand::Local);
    assert_eq!(h.source(), None, "use the real peer");
    assert_eq!(rest, CONNECT);
}

#[tokio::test]
async fn a_client_without_a_header_is_refused() {
    let (h, _) = exchange(vec![CONNECT.to_vec()]).await;
    assert!(matches!(h, Err(TransportError::Proxy(ProxyError::NotProxy))), "{h:?}");
    let (h, _) = exchange(vec![b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n".to_vec()]).await;
    assert!(matches!(h, Err(TransportError::Proxy(ProxyError::V1(_)))), "{h:?}");
}

#[tokio::test]
async fn a_header_cut_short_is_an_error() {
    let (h, _) = exchange(vec![b"PROXY TCP4 1.2.3.4 5.6".to_vec()]).await;
    assert!(matches!(h, Err(TransportError::Proxy(ProxyError::Eof))), "{h:?}");
}

#[tokio::test]
async fn a_silent_client_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let _c = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (mut s, _) = listener.accept().await.unwrap();
    let e = read_proxy_header(&mut s, Duration::from_millis(50)).await.unwrap_err();
    assert!(matches!(e, TransportError::Timeout { what: "PROXY protocol header", .. }), "{e}");
}
