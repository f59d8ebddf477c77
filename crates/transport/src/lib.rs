//! Halyard's transports: everything between an accepted TCP socket and the MQTT byte stream the connection
//! driver reads, plus the listener-level limits. Each module does one job and is tested on its own; nothing here
//! knows MQTT beyond the fixed header (WebSocket `single` piggyback).
//!
//! # Accepting a connection
//!
//! For a listener of type `tcp`, `ssl`, `ws` or `wss` (its config: `halyard_core::config::ListenersConfig`):
//!
//! 1. Before each `accept`: [`ConnRate::until_allowed`] (`max_conn_rate`; excess connections wait in the
//!    kernel's backlog).
//! 2. After it: [`AccessRules::allows`] with the peer's IP (`access_rules`), then `max_connections`.
//! 3. With `proxy_protocol`: [`read_proxy_header`] (within `proxy_protocol_timeout`); it consumes exactly the
//!    header, and [`ProxyHeader::source`] is the client's address when it names one.
//! 4. `ssl`/`wss`: [`accept_tls`] with [`TlsContext::acceptor`] (within `ssl_options.handshake_timeout`);
//!    [`PeerCert::from_connection`] then gives the client certificate's CN/DN/… for
//!    `mqtt.peer_cert_as_username` / `peer_cert_as_clientid` ([`PeerCert::value`]).
//! 5. `ws`/`wss`: [`accept_ws`] with [`WsSettings`] (path, origin, subprotocol, the real address from
//!    `proxy_address_header`); its [`WsIo`] carries MQTT in binary frames.
//! 6. Wrap the result in [`MqttStream`] (`AsyncRead + AsyncWrite`). Write a batch, then `flush` (TLS and WebSocket
//!    send on flush; TCP ignores it). Park an idle connection on [`MqttStream::poll_read_ready`] (the TCP
//!    socket) only after a read returned `Pending`.
//!
//! At CONNECT: [`expand_mountpoint`] with the client id and username gives the listener's topic prefix.
//!
//! # TLS setup, once per process and per listener
//!
//! - [`install_default_provider`]: *ring* becomes the process's rustls provider. No aws-lc-rs is linked.
//! - [`ensure_default_certs`]`(data_dir)`: the generated CA and server certificate used when `ssl_options`
//!   names no files (`<data_dir>/certs/{ca,cert,key}.pem`, created once).
//! - [`TlsContext::new`]`(&ssl_options, &default_certs)`; [`TlsContext::reload`] on SIGHUP. Changed files are
//!   also picked up on their own, checked at most once a second as connections arrive.
//!
//! # API
//!
//! ```text
//! access:     AccessRules::parse(&[String]) -> Result<AccessRules, AccessError>; .allows(IpAddr) -> bool
//! rate:       ConnRate::new(ConnRateLimit); .until_allowed().await; .try_take() -> Result<(), Duration>
//! mountpoint: expand_mountpoint(template, clientid, Option<username>) -> Result<String, MountpointError>
//! proxy:      parse(&[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError>
//!             read_proxy_header(&mut TcpStream, Duration).await -> Result<ProxyHeader, TransportError>
//! certs:      ensure_default_certs(&Path) -> Result<DefaultCerts, CertError>
//! tls:        install_default_provider() -> bool; cipher_suites(&[String], &[TlsVersion])
//!             TlsContext::new(&SslOptions, &DefaultCerts) -> Result<TlsContext, TlsError>
//!             .acceptor() -> TlsAcceptor; .reload() -> Result<(), TlsError>; .reload_if_changed()
//!             accept_tls(&TlsAcceptor, IO, Duration).await -> Result<TlsStream<IO>, TransportError>
//! identity:   PeerCert::from_connection(&ServerConnection) -> Result<Option<PeerCert>, IdentityError>
//!             .cn() .dn() .md5_hex() .pem() .der() .value(PeerCertAs) -> Option<Vec<u8>>
//! ws:         WsSettings::new(&WebsocketOptions, max_packet_size)
//!             accept_ws(S, &WsSettings, peer, Duration).await -> Result<WsAccepted<S>, TransportError>
//! wsio:       WsIo<S>: AsyncRead + AsyncWrite
//! stream:     MqttStream { Tcp, Tls, Ws, Wss }: AsyncRead + AsyncWrite; .tcp() .tls() .poll_read_ready()
//! ```

pub mod access;
pub mod certs;
pub mod error;
pub mod identity;
pub mod mountpoint;
pub mod proxy;
pub mod rate;
pub mod stream;
pub mod tls;
pub mod ws;
pub mod wsio;

pub use access::{AccessError, AccessRules};
pub use certs::{ensure_default_certs, CertError, DefaultCerts};
pub use error::TransportError;
pub use identity::{IdentityError, PeerCert};
pub use mountpoint::{expand_mountpoint, MountpointError};
pub use proxy::{read_proxy_header, ProxyAddresses, ProxyCommand, ProxyError, ProxyHeader, ProxyVersion};
pub use rate::ConnRate;
pub use stream::MqttStream;
pub use tls::{accept_tls, install_default_provider, TlsContext, TlsError, TlsFiles};
pub use ws::{accept_ws, WsAccepted, WsSettings};
pub use wsio::WsIo;

/// The TLS and WebSocket crates, at the versions this crate uses.
pub use {rustls, tokio_rustls, tokio_tungstenite};
