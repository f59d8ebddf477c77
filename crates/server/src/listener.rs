//! Listeners: bind every enabled `listeners.{tcp,ssl,ws,wss}.<name>`, accept, and hand each client to a
//! connection task with its zone's settings.
//!
//! The accept loop of a listener, per connection: `max_conn_rate` (before `accept`: excess connections wait in
//! the kernel's backlog), `access_rules` on the TCP peer (denied: closed at once), `max_connections`. Plain TCP
//! without `proxy_protocol` is then spawned straight onto the split TCP stream (`Io::tcp`), exactly as before
//! TLS existed. Every other connection first gets a short-lived handshake task, each step bounded by its
//! timeout: the PROXY header (`proxy_protocol_timeout`; its source address becomes the client's and is checked
//! against `access_rules` again), the TLS handshake (`ssl_options.handshake_timeout`), the WebSocket upgrade
//! (the zone's `mqtt.idle_timeout`; a forwarding header's address is checked the same way). The established
//! stream then runs in a connection task of its own, through the boxed `io::Transport` path, so nothing of the
//! handshake stays in an idle connection's memory. Failures are counted and logged at debug with the peer.

use crate::connection::serve;
use crate::io::Io;
use crate::protocol::{CertIdentity, Origin};
use halyard_core::config::{Config, ListenerCommon, MqttConfig, PeerCertAs, SslOptions, VerifyMode, WebsocketOptions};
use halyard_core::metrics::Metrics;
use halyard_core::Broker;
use halyard_transport::rustls::ServerConnection;
use halyard_transport::{
    accept_tls, accept_ws, ensure_default_certs, read_proxy_header, AccessError, AccessRules, CertError, ConnRate,
    DefaultCerts, MqttStream, PeerCert, TlsContext, TlsError, TransportError, WsSettings,
};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// `listener` is the full key, e.g. `listeners.ssl.default`.
    #[error("listener `{listener}` cannot bind {addr}: {source}")]
    Bind { listener: String, addr: SocketAddr, source: std::io::Error },
    #[error("listener `{listener}` names zone `{zone}`, which is not defined")]
    UnknownZone { listener: String, zone: String },
    #[error("listener `{listener}`: access_rules: {source}")]
    AccessRules { listener: String, source: AccessError },
    /// Boxed: a `TlsError` is large, and this error is returned through every step of start-up.
    #[error("listener `{listener}`: {source}")]
    Tls { listener: String, source: Box<TlsError> },
    #[error(transparent)]
    Certs(#[from] CertError),
}

/// The running listeners.
pub struct Server {
    /// `<type>.<name>` (`tcp.default`, `ssl.default`, `ws.internal` …) → the address it is bound to (useful when
    /// the configured port was 0).
    pub local_addrs: BTreeMap<String, SocketAddr>,
    broker: Arc<Broker>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Every TLS listener's context (`listeners.ssl.*`, `listeners.wss.*`), for [`Server::reload_certificates`].
    tls: Vec<(Arc<str>, Arc<TlsContext>)>,
}

impl Server {
    /// The address of a listener: `"ssl.default"`, `"ws.internal"`, …; a bare name is a TCP listener's
    /// (`"default"` is `tcp.default`).
    pub fn addr(&self, listener: &str) -> Option<SocketAddr> {
        if listener.contains('.') {
            self.local_addrs.get(listener).copied()
        } else {
            self.local_addrs.get(&format!("tcp.{listener}")).copied()
        }
    }

    /// Reloads the certificate, key and client CA files of every TLS listener now (SIGHUP). Connections keep
    /// the certificate they started with; a file that does not load keeps the previous one (logged). Returns the
    /// listeners whose reload failed.
    pub fn reload_certificates(&self) -> Vec<Arc<str>> {
        let mut failed = Vec::new();
        for (id, ctx) in &self.tls {
            match ctx.reload() {
                Ok(()) => tracing::info!(listener = %id, "TLS files reloaded"),
                Err(e) => {
                    tracing::error!(listener = %id, error = %e, "TLS files not reloaded; the previous ones stay in use");
                    failed.push(id.clone());
                }
            }
        }
        failed
    }

    /// Stops accepting, tells every connection to close (v5 clients get DISCONNECT 0x8B), and waits a little
    /// for them to finish. Handshakes in progress are abandoned.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        // Idle connections do not watch the shutdown channel (it would cost each one a waiter); their sessions
        // wake them, and the busy loop they enter sees it.
        for session in self.broker.registry.all() {
            session.wake();
        }
        for t in &self.tasks {
            t.abort();
        }
        for _ in 0..50 {
            if Metrics::get(&self.broker.metrics.connections_current) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// What a listener does between `accept` and the MQTT byte stream.
enum Kind {
    Tcp,
    Ssl(Arc<TlsContext>),
    Ws(WsSettings),
    Wss(Arc<TlsContext>, WsSettings),
}

impl Kind {
    fn describe(&self) -> &'static str {
        match self {
            Kind::Tcp => "TCP",
            Kind::Ssl(_) => "TLS",
            Kind::Ws(_) => "WebSocket",
            Kind::Wss(..) => "WebSocket over TLS",
        }
    }
}

/// One listener's settings, shared by its accept loop and its connections' handshakes.
struct Listener {
    /// `listeners.<type>.<name>`, for logs.
    id: Arc<str>,
    kind: Kind,
    zone: Arc<MqttConfig>,
    access: AccessRules,
    max_connections: usize,
    /// `Some(proxy_protocol_timeout)` with `proxy_protocol = true`.
    proxy_timeout: Option<Duration>,
    /// `mountpoint`, unexpanded; `None` when empty.
    mountpoint: Option<Arc<str>>,
}

/// A listener configured and checked, not bound yet.
struct Planned {
    listener: Listener,
    /// `<type>.<name>`.
    key: String,
    bind: SocketAddr,
    zone_name: String,
    rate: ConnRate,
}

/// Binds all enabled listeners and starts accepting. Nothing is accepted until every listener is bound, so a
/// listener that cannot start (its port in use, a certificate that does not load) leaves nothing running.
pub async fn start(broker: Arc<Broker>) -> Result<Server, ServerError> {
    let planned = plan(&broker.config)?;
    let mut bound = Vec::with_capacity(planned.len());
    for p in planned {
        let socket = TcpListener::bind(p.bind).await.map_err(|e| ServerError::Bind {
            listener: p.listener.id.to_string(),
            addr: p.bind,
            source: e,
        })?;
        bound.push((p, socket));
    }
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut local_addrs = BTreeMap::new();
    let mut tasks = Vec::new();
    let mut tls = Vec::new();
    for (p, socket) in bound {
        let addr = socket.local_addr().unwrap_or(p.bind);
        let l = p.listener;
        tracing::info!(listener = %l.id, %addr, zone = %p.zone_name, "listening for MQTT over {}", l.kind.describe());
        local_addrs.insert(p.key, addr);
        if let Kind::Ssl(ctx) | Kind::Wss(ctx, _) = &l.kind {
            tls.push((l.id.clone(), ctx.clone()));
        }
        let accept = accept_loop(socket, Arc::new(l), p.rate, broker.clone(), shutdown_rx.clone());
        tasks.push(tokio::spawn(accept));
    }
    // After the binds: a listener that cannot start leaves nothing running behind.
    tasks.push(tokio::spawn(engine_timers(broker.clone())));
    Ok(Server { local_addrs, broker, shutdown, tasks, tls })
}

/// Checks and prepares every enabled listener: its zone, access rules, TLS context (creating the default
/// certificates first when a TLS listener names no files), WebSocket settings.
fn plan(cfg: &Config) -> Result<Vec<Planned>, ServerError> {
    let l = &cfg.listeners;
    let enabled_tls = || {
        let ssl = l.ssl.iter().filter(|(_, c)| c.enable).map(|(n, c)| (format!("ssl.{n}"), &c.zone, &c.ssl_options));
        let wss = l.wss.iter().filter(|(_, c)| c.enable).map(|(n, c)| (format!("wss.{n}"), &c.zone, &c.ssl_options));
        ssl.chain(wss)
    };
    let data_dir = Path::new(&cfg.node.data_dir);
    let needs_defaults = enabled_tls().any(|(_, _, o)| uses_default_files(o));
    let defaults = if needs_defaults {
        let d = ensure_default_certs(data_dir)?;
        tracing::info!(
            ca = %d.ca.display(),
            cert = %d.cert.display(),
            "TLS listeners without certfile use the generated server certificate; clients verify it with the CA \
             file (e.g. mosquitto_sub --cafile <ca>)"
        );
        d
    } else {
        DefaultCerts::in_dir(data_dir)
    };
    for (key, zone, _) in enabled_tls() {
        if let Some(z) = cfg.zone(zone) {
            for (setting, v) in
                [("peer_cert_as_clientid", z.peer_cert_as_clientid), ("peer_cert_as_username", z.peer_cert_as_username)]
            {
                if v == PeerCertAs::Crt {
                    tracing::warn!(
                        listener = %format!("listeners.{key}"),
                        zone = %zone,
                        "mqtt.{setting} = \"crt\": a DER certificate is never valid UTF-8, so clients that present \
                         a certificate are refused (CONNACK 0x85 / 0x86); \"pem\" gives the same bytes in base64"
                    );
                }
            }
        }
    }

    let mut out = Vec::new();
    let common = |kind: &str, name: &str, c: &dyn ListenerCommon, k: Kind| -> Result<Planned, ServerError> {
        let id = format!("listeners.{kind}.{name}");
        let zone = cfg
            .zone(c.zone())
            .cloned()
            .ok_or_else(|| ServerError::UnknownZone { listener: id.clone(), zone: c.zone().to_string() })?;
        let access = AccessRules::parse(c.access_rules())
            .map_err(|e| ServerError::AccessRules { listener: id.clone(), source: e })?;
        let mountpoint = (!c.mountpoint().is_empty()).then(|| Arc::from(c.mountpoint()));
        Ok(Planned {
            listener: Listener {
                id: Arc::from(id),
                kind: k,
                zone: Arc::new(zone),
                access,
                max_connections: c.max_connections(),
                proxy_timeout: c.proxy_protocol().then(|| c.proxy_protocol_timeout()),
                mountpoint,
            },
            key: format!("{kind}.{name}"),
            bind: c.bind(),
            zone_name: c.zone().to_string(),
            rate: ConnRate::new(c.max_conn_rate()),
        })
    };
    let tls = |kind: &str, name: &str, o: &SslOptions| -> Result<Arc<TlsContext>, ServerError> {
        TlsContext::new(o, &defaults)
            .map(Arc::new)
            .map_err(|e| ServerError::Tls { listener: format!("listeners.{kind}.{name}"), source: Box::new(e) })
    };
    let ws = |c: &dyn ListenerCommon, o: &WebsocketOptions| {
        let max_packet =
            cfg.zone(c.zone()).map_or(usize::MAX, |z| usize::try_from(z.max_packet_size.0).unwrap_or(usize::MAX));
        WsSettings::new(o, max_packet)
    };
    for (name, c) in l.tcp.iter().filter(|(_, c)| c.enable) {
        out.push(common("tcp", name, c, Kind::Tcp)?);
    }
    for (name, c) in l.ssl.iter().filter(|(_, c)| c.enable) {
        let k = Kind::Ssl(tls("ssl", name, &c.ssl_options)?);
        out.push(common("ssl", name, c, k)?);
    }
    for (name, c) in l.ws.iter().filter(|(_, c)| c.enable) {
        out.push(common("ws", name, c, Kind::Ws(ws(c, &c.websocket)))?);
    }
    for (name, c) in l.wss.iter().filter(|(_, c)| c.enable) {
        let k = Kind::Wss(tls("wss", name, &c.ssl_options)?, ws(c, &c.websocket));
        out.push(common("wss", name, c, k)?);
    }
    Ok(out)
}

/// Whether a TLS listener reads any of the generated files.
fn uses_default_files(o: &SslOptions) -> bool {
    o.certfile.is_none() || (o.verify == VerifyMode::VerifyPeer && o.cacertfile.is_none())
}

/// Drives the engine's deadlines (will delays, session expiry) with the real clock: the engine reads none.
async fn engine_timers(broker: Arc<Broker>) {
    loop {
        let changed = broker.timeouts_changed().notified();
        match broker.next_timeout() {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => broker.handle_timeout(std::time::Instant::now()),
                    _ = changed => {}
                }
            }
            None => changed.await,
        }
    }
}

async fn accept_loop(
    socket: TcpListener,
    l: Arc<Listener>,
    mut rate: ConnRate,
    broker: Arc<Broker>,
    shutdown: watch::Receiver<bool>,
) {
    let open = Arc::new(AtomicUsize::new(0));
    // Plain TCP without a PROXY header needs no handshake: its connection task starts on the socket at once.
    let plain = matches!(l.kind, Kind::Tcp) && l.proxy_timeout.is_none();
    let check_access = !l.access.allows_all();
    loop {
        // Beyond max_conn_rate, connections wait in the kernel's accept backlog (not accepted and dropped).
        rate.until_allowed().await;
        let (stream, peer) = match socket.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(listener = %l.id, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        Metrics::inc(&broker.metrics.connections_accepted);
        if check_access && !l.access.allows(peer.ip()) {
            Failure::Denied(peer).report(&l, &broker);
            drop(stream);
            continue;
        }
        if open.load(Ordering::Acquire) >= l.max_connections {
            Metrics::inc(&broker.metrics.connections_refused_max);
            tracing::warn!(listener = %l.id, %peer, max_connections = l.max_connections, "max_connections reached: connection refused");
            drop(stream);
            continue;
        }
        let slot = OpenSlot::take(&open, &broker);
        if plain {
            let origin = Origin { peer: Some(peer), mountpoint: l.mountpoint.clone(), ..Origin::default() };
            // Spawned as is: a wrapping async block would keep what it was made from in its own state for the
            // connection's whole life (about 70 bytes each), and the slot is given back by the link's drop anyway.
            tokio::spawn(serve(Io::tcp(stream), origin, broker.clone(), l.zone.clone(), shutdown.clone(), slot));
        } else {
            tokio::spawn(handshake(l.clone(), stream, peer, broker.clone(), shutdown.clone(), slot));
        }
    }
}

/// The transport handshakes of one connection, then its connection task. Abandoned at shutdown.
async fn handshake(
    l: Arc<Listener>,
    tcp: TcpStream,
    peer: SocketAddr,
    broker: Arc<Broker>,
    mut shutdown: watch::Receiver<bool>,
    slot: OpenSlot,
) {
    let shutting_down = async {
        // A dropped sender (a `Server` dropped without `shutdown`) is no shutdown: keep going.
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let established = tokio::select! {
        r = establish(&l, tcp, peer) => r,
        _ = shutting_down => return,
    };
    match established {
        Ok((stream, origin)) => {
            // A task of its own, not an await here: this task's state (the listener, the handshake's futures)
            // would otherwise stay allocated beside the connection for its whole life.
            let io = Io::stream(Box::new(stream));
            tokio::spawn(serve(io, origin, broker, l.zone.clone(), shutdown, slot));
        }
        Err(f) => f.report(&l, &broker),
    }
}

/// Why a connection was closed before MQTT started, with the client's address as known at that point.
enum Failure {
    Denied(SocketAddr),
    Proxy(SocketAddr, TransportError),
    Tls(SocketAddr, TransportError),
    Ws(SocketAddr, TransportError),
}

impl Failure {
    /// Counted and logged at debug: on an open port these are everyday events (scanners, health checks), not
    /// the broker's problems.
    fn report(self, l: &Listener, broker: &Broker) {
        let m = &broker.metrics;
        match self {
            Failure::Denied(peer) => {
                Metrics::inc(&m.connections_denied);
                tracing::debug!(listener = %l.id, %peer, "connection closed: access_rules deny this address");
            }
            Failure::Proxy(peer, e) => {
                Metrics::inc(&m.proxy_header_failures);
                tracing::debug!(listener = %l.id, %peer, error = %e, "connection closed: no valid PROXY protocol header");
            }
            Failure::Tls(peer, e) => {
                Metrics::inc(&m.tls_handshake_failures);
                tracing::debug!(listener = %l.id, %peer, error = %e, "connection closed: TLS handshake failed");
            }
            Failure::Ws(peer, e) => {
                Metrics::inc(&m.ws_upgrade_failures);
                tracing::debug!(listener = %l.id, %peer, error = %e, "connection closed: WebSocket upgrade failed");
            }
        }
    }
}

/// PROXY header, TLS, WebSocket upgrade, as the listener asks, each within its timeout; then the client's
/// origin (real address, certificate identity, mountpoint).
async fn establish(l: &Listener, mut tcp: TcpStream, mut peer: SocketAddr) -> Result<(MqttStream, Origin), Failure> {
    if let Some(timeout) = l.proxy_timeout {
        let header = read_proxy_header(&mut tcp, timeout).await.map_err(|e| Failure::Proxy(peer, e))?;
        if let Some(source) = header.source() {
            // The TCP peer is the proxy; the client is who the header names: what logs, bans and ACLs see, and
            // what access_rules must allow too.
            tracing::debug!(listener = %l.id, proxy = %peer, client = %source, "PROXY protocol header");
            peer = source;
            l.check_access(peer)?;
        }
    }
    let (stream, real) = match &l.kind {
        Kind::Tcp => (MqttStream::Tcp(tcp), peer),
        Kind::Ssl(ctx) => (MqttStream::Tls(Box::new(tls(ctx, tcp, peer).await?)), peer),
        Kind::Ws(ws) => {
            let a = upgrade(l, ws, tcp, peer).await?;
            (MqttStream::Ws(Box::new(a.io)), a.peer)
        }
        Kind::Wss(ctx, ws) => {
            let t = tls(ctx, tcp, peer).await?;
            let a = upgrade(l, ws, t, peer).await?;
            (MqttStream::Wss(Box::new(a.io)), a.peer)
        }
    };
    if real != peer {
        // A WebSocket forwarding header (`proxy_address_header`) named the client.
        l.check_access(real)?;
    }
    let mut origin = Origin { peer: Some(real), mountpoint: l.mountpoint.clone(), ..Origin::default() };
    if let Some(conn) = stream.tls() {
        cert_identity(l, conn, real, &mut origin);
    }
    Ok((stream, origin))
}

impl Listener {
    fn check_access(&self, peer: SocketAddr) -> Result<(), Failure> {
        if self.access.allows(peer.ip()) {
            Ok(())
        } else {
            Err(Failure::Denied(peer))
        }
    }
}

async fn tls(
    ctx: &TlsContext,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Result<halyard_transport::tokio_rustls::server::TlsStream<TcpStream>, Failure> {
    // `acceptor()` also picks up certificate files changed since the last look (at most once a second).
    accept_tls(&ctx.acceptor(), tcp, ctx.handshake_timeout).await.map_err(|e| Failure::Tls(peer, e))
}

async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    l: &Listener,
    ws: &WsSettings,
    stream: S,
    peer: SocketAddr,
) -> Result<halyard_transport::WsAccepted<S>, Failure> {
    // The upgrade request comes before CONNECT: it gets the time a client has to send CONNECT.
    accept_ws(stream, ws, peer, l.zone.idle_timeout.0).await.map_err(|e| Failure::Ws(peer, e))
}

/// `mqtt.peer_cert_as_username` / `peer_cert_as_clientid`: the client certificate's value for each, when the
/// zone asks for one and the client sent a certificate (without one, the client's own values stay).
fn cert_identity(l: &Listener, conn: &ServerConnection, peer: SocketAddr, origin: &mut Origin) {
    let (as_username, as_clientid) = (l.zone.peer_cert_as_username, l.zone.peer_cert_as_clientid);
    if as_username == PeerCertAs::Disabled && as_clientid == PeerCertAs::Disabled {
        return;
    }
    match PeerCert::from_connection(conn) {
        Ok(None) => {}
        Ok(Some(cert)) => {
            origin.cert_username = cert_value(&cert, as_username);
            origin.cert_clientid = cert_value(&cert, as_clientid);
        }
        Err(e) => {
            // Verified by the CA, but its subject cannot name anyone: the client is refused at CONNECT.
            tracing::debug!(listener = %l.id, %peer, error = %e, "client certificate gives no identity");
            let why = "the client certificate's subject cannot be used (unreadable, or holds control characters)";
            if as_username != PeerCertAs::Disabled {
                origin.cert_username = Some(Err(why));
            }
            if as_clientid != PeerCertAs::Disabled {
                origin.cert_clientid = Some(Err(why));
            }
        }
    }
}

/// One `peer_cert_as_*` value as an MQTT string. `crt` (the DER bytes) never is one: a DER certificate starts
/// with a SEQUENCE tag and a long-form length (0x30 0x82 …), and 0x82 cannot follow 0x30 in UTF-8. The client is
/// refused rather than given an encoding of our own that no other broker or tool would produce; `pem` is the
/// same bytes as text.
fn cert_value(cert: &PeerCert, how: PeerCertAs) -> Option<CertIdentity> {
    let bytes = cert.value(how)?;
    Some(String::from_utf8(bytes).map(Arc::from).map_err(|_| {
        "the client certificate's DER bytes (peer_cert_as_* = \"crt\") are not UTF-8; \"pem\" gives them in base64"
    }))
}

/// A counted place among a listener's open connections; given back when the connection's task ends, however it
/// ends (a panic included).
pub(crate) struct OpenSlot {
    open: Arc<AtomicUsize>,
    broker: Arc<Broker>,
}

impl OpenSlot {
    pub(crate) fn take(open: &Arc<AtomicUsize>, broker: &Arc<Broker>) -> OpenSlot {
        open.fetch_add(1, Ordering::AcqRel);
        broker.metrics.connections_current.fetch_add(1, Ordering::Relaxed);
        OpenSlot { open: open.clone(), broker: broker.clone() }
    }
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        self.broker.metrics.connections_current.fetch_sub(1, Ordering::Relaxed);
    }
}
