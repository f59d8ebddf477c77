//! TCP listeners: bind every enabled `listeners.tcp.<name>`, accept, enforce `max_connections`, and spawn one
//! connection task per client with its zone's settings.

use crate::connection::serve;
use crate::io::Io;
use halyard_core::metrics::Metrics;
use halyard_core::Broker;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("listener `listeners.tcp.{name}` cannot bind {addr}: {source}")]
    Bind { name: String, addr: SocketAddr, source: std::io::Error },
    #[error("listener `listeners.tcp.{name}` names zone `{zone}`, which is not defined")]
    UnknownZone { name: String, zone: String },
}

/// The running listeners.
pub struct Server {
    /// Listener name → the address it is bound to (useful when the configured port was 0).
    pub local_addrs: BTreeMap<String, SocketAddr>,
    broker: Arc<Broker>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    pub fn addr(&self, listener: &str) -> Option<SocketAddr> {
        self.local_addrs.get(listener).copied()
    }

    /// Stops accepting, tells every connection to close (v5 clients get DISCONNECT 0x8B), and waits a little
    /// for them to finish.
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

/// Binds all enabled listeners and starts accepting.
pub async fn start(broker: Arc<Broker>) -> Result<Server, ServerError> {
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut local_addrs = BTreeMap::new();
    let mut tasks = Vec::new();
    for (name, l) in broker.config.listeners.tcp.iter().filter(|(_, l)| l.enable) {
        let zone = broker
            .config
            .zone(&l.zone)
            .cloned()
            .ok_or_else(|| ServerError::UnknownZone { name: name.clone(), zone: l.zone.clone() })?;
        let listener = TcpListener::bind(l.bind).await.map_err(|e| ServerError::Bind {
            name: name.clone(),
            addr: l.bind,
            source: e,
        })?;
        let addr = listener.local_addr().unwrap_or(l.bind);
        tracing::info!(listener = %name, %addr, zone = %l.zone, "listening for MQTT over TCP");
        local_addrs.insert(name.clone(), addr);
        let accept = accept_loop(listener, broker.clone(), Arc::new(zone), l.max_connections, shutdown_rx.clone());
        tasks.push(tokio::spawn(accept));
    }
    // After the binds: a listener that cannot start leaves nothing running behind.
    tasks.push(tokio::spawn(engine_timers(broker.clone())));
    Ok(Server { local_addrs, broker, shutdown, tasks })
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
    listener: TcpListener,
    broker: Arc<Broker>,
    zone: Arc<halyard_core::config::MqttConfig>,
    max_connections: usize,
    shutdown: watch::Receiver<bool>,
) {
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        Metrics::inc(&broker.metrics.connections_accepted);
        if open.load(Ordering::Acquire) >= max_connections {
            Metrics::inc(&broker.metrics.connections_refused_max);
            tracing::warn!(%peer, max_connections, "max_connections reached: connection refused");
            drop(stream);
            continue;
        }
        let slot = OpenSlot::take(&open, &broker);
        // Spawned as is: a wrapping async block would keep what it was made from in its own state for the
        // connection's whole life (about 70 bytes each), and the slot is given back by the link's drop anyway.
        tokio::spawn(serve(Io::tcp(stream), Some(peer), broker.clone(), zone.clone(), shutdown.clone(), slot));
    }
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
