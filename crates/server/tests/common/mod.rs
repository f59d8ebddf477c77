//! Test harness: a broker on an ephemeral loopback port, and a raw MQTT client on our codec for byte-level tests.
#![allow(dead_code)]

pub mod pki;

use bytes::BytesMut;
use halyard_codec::{
    Connect, LastWill, Packet, Properties, ProtocolVersion, PubResp, Publish, QoS, Subscribe, SubscriptionOptions, Utf8,
};
use halyard_core::config::{Config, Source};
use halyard_core::Broker;
use halyard_server::Server;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound for any single expected event in a test.
pub const WAIT: Duration = Duration::from_secs(5);

pub struct TestBroker {
    pub broker: Arc<Broker>,
    pub server: Server,
    pub addr: SocketAddr,
}

/// The environment of a test broker: its TCP listener on 127.0.0.1:0, and the default TLS and WebSocket
/// listeners (0.0.0.0:8883, 8083, 8084) off, since tests run in parallel and the ports may be taken. Tests of
/// those listeners enable their own on port 0.
pub fn test_env() -> Vec<(String, String)> {
    [
        ("HALYARD_LISTENERS__TCP__DEFAULT__BIND", "127.0.0.1:0"),
        ("HALYARD_LISTENERS__SSL__DEFAULT__ENABLE", "false"),
        ("HALYARD_LISTENERS__WS__DEFAULT__ENABLE", "false"),
        ("HALYARD_LISTENERS__WSS__DEFAULT__ENABLE", "false"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Starts a broker on 127.0.0.1:0 with `env` applied as HALYARD_* overrides.
pub async fn start(env: &[(&str, &str)]) -> TestBroker {
    let mut vars = test_env();
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let config: Config = halyard_core::config::load(&Source { file: None, env: vars }).expect("test config");
    let broker = Broker::new(config);
    let server = halyard_server::start(broker.clone()).await.expect("listeners start");
    let addr = server.addr("default").expect("default listener");
    TestBroker { broker, server, addr }
}

/// A client that speaks raw packets (or raw bytes) so tests can do what well-behaved clients never do.
pub struct Raw {
    pub stream: TcpStream,
    pub version: ProtocolVersion,
    buf: BytesMut,
}

impl Raw {
    pub async fn open(addr: SocketAddr, version: ProtocolVersion) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        Raw { stream, version, buf: BytesMut::new() }
    }

    /// Opens a connection and completes CONNECT/CONNACK; panics unless CONNACK says success.
    pub async fn connect(addr: SocketAddr, version: ProtocolVersion, client_id: &str, clean: bool) -> (Raw, Packet) {
        Raw::connect_with(addr, connect_packet(version, client_id, clean)).await
    }

    pub async fn connect_with(addr: SocketAddr, c: Connect) -> (Raw, Packet) {
        let mut r = Raw::open(addr, c.protocol).await;
        r.send(&Packet::Connect(Box::new(c))).await;
        let ack = r.recv().await.expect("CONNACK");
        match &ack {
            Packet::ConnAck(a) if a.reason_code == 0 => {}
            other => panic!("expected successful CONNACK, got {other:?}"),
        }
        (r, ack)
    }

    pub async fn send(&mut self, p: &Packet) {
        let mut b = BytesMut::new();
        halyard_codec::encode(p, self.version, &mut b).expect("encode");
        self.stream.write_all(&b).await.expect("write");
    }

    pub async fn send_bytes(&mut self, b: &[u8]) {
        self.stream.write_all(b).await.expect("write");
    }

    /// The next packet, or `None` if the connection closed (or nothing came within WAIT).
    pub async fn recv(&mut self) -> Option<Packet> {
        self.recv_within(WAIT).await
    }

    pub async fn recv_within(&mut self, limit: Duration) -> Option<Packet> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match halyard_codec::decode(&mut self.buf, self.version, usize::MAX) {
                Ok(Some(p)) => return Some(p),
                Ok(None) => {}
                Err(e) => panic!("client could not decode what the broker sent: {e}"),
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Waits for the broker to close the connection; returns the packets it sent before closing.
    pub async fn closed(&mut self) -> Result<Vec<Packet>, &'static str> {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut got = Vec::new();
        loop {
            while let Ok(Some(p)) = halyard_codec::decode(&mut self.buf, self.version, usize::MAX) {
                got.push(p);
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(got),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => return Err("connection still open"),
            }
        }
    }

    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Packet {
        self.subscribe_opts(filter, SubscriptionOptions { qos, ..Default::default() }, Properties::default()).await
    }

    pub async fn subscribe_opts(&mut self, filter: &str, opts: SubscriptionOptions, properties: Properties) -> Packet {
        let s = Subscribe {
            packet_id: 1,
            properties: Box::new(properties).into(),
            filters: vec![(Utf8::from(filter), opts)],
        };
        self.send(&Packet::Subscribe(s)).await;
        let ack = self.recv().await.expect("SUBACK");
        assert!(matches!(ack, Packet::SubAck(_)), "expected SUBACK, got {ack:?}");
        ack
    }

    pub async fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS, retain: bool, packet_id: u16) {
        self.send(&Packet::Publish(publish(topic, payload, qos, retain, packet_id))).await;
    }

    /// Acknowledges a received PUBLISH the way a client must.
    pub async fn ack(&mut self, p: &Publish) {
        match (p.qos, p.packet_id) {
            (QoS::AtLeastOnce, Some(id)) => self.send(&Packet::PubAck(PubResp::new(id))).await,
            (QoS::ExactlyOnce, Some(id)) => {
                self.send(&Packet::PubRec(PubResp::new(id))).await;
                let rel = self.recv().await;
                assert!(matches!(rel, Some(Packet::PubRel(_))), "expected PUBREL, got {rel:?}");
                self.send(&Packet::PubComp(PubResp::new(id))).await;
            }
            _ => {}
        }
    }

    /// The next PUBLISH, skipping nothing: anything else is a test failure.
    pub async fn expect_publish(&mut self) -> Publish {
        match self.recv().await {
            Some(Packet::Publish(p)) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Asserts nothing arrives for a short while (for "must not be delivered" checks, bounded by `limit`).
    pub async fn expect_silence(&mut self, limit: Duration) {
        if let Some(p) = self.recv_within(limit).await {
            panic!("expected nothing, got {p:?}");
        }
    }
}

pub fn connect_packet(version: ProtocolVersion, client_id: &str, clean: bool) -> Connect {
    Connect {
        protocol: version,
        clean_start: clean,
        keep_alive: 60,
        client_id: Utf8::from(client_id),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
        bridge: false,
    }
}

pub fn will(topic: &str, payload: &[u8], qos: QoS) -> LastWill {
    LastWill {
        topic: Utf8::from(topic),
        payload: bytes::Bytes::copy_from_slice(payload),
        qos,
        retain: false,
        properties: Default::default(),
    }
}

pub fn publish(topic: &str, payload: &[u8], qos: QoS, retain: bool, packet_id: u16) -> Publish {
    Publish {
        dup: false,
        qos,
        retain,
        topic: Utf8::from(topic),
        packet_id: (qos != QoS::AtMostOnce).then_some(packet_id),
        properties: Default::default(),
        payload: bytes::Bytes::copy_from_slice(payload),
    }
}

/// v5 DISCONNECT reason code among packets, if any.
pub fn disconnect_code(ps: &[Packet]) -> Option<u8> {
    ps.iter().find_map(|p| match p {
        Packet::Disconnect(d) => Some(d.reason_code),
        _ => None,
    })
}
