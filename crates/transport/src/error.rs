//! The error of the async accept steps (PROXY header, TLS handshake, WebSocket upgrade).

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{what} not complete after {after:?}")]
    Timeout { what: &'static str, after: Duration },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Proxy(#[from] crate::proxy::ProxyError),
    /// The TLS handshake failed (the peer's certificate was refused, no common version or cipher, not TLS …).
    #[error("TLS handshake failed: {0}")]
    TlsHandshake(std::io::Error),
    /// The WebSocket upgrade was answered with an HTTP error (the status says which check refused it).
    #[error("WebSocket upgrade refused with HTTP {status}: {reason}")]
    WsRefused { status: u16, reason: String },
    #[error("WebSocket handshake failed: {0}")]
    WsHandshake(#[from] tokio_tungstenite::tungstenite::Error),
}
