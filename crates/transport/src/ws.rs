//! The WebSocket upgrade for the `ws` and `wss` listeners: the HTTP request is checked (path, `Origin`,
//! subprotocol) the way EMQX checks it, the client's real address is read from the proxy headers, and the
//! connection becomes a [`WsIo`] byte stream.
//!
//! Answers, as EMQX gives them: a path other than `mqtt_path` 404; a refused `Origin` 403; no
//! `Sec-WebSocket-Protocol` with `fail_if_no_subprotocol` 400; subprotocols offered but none supported 400
//! (whatever `fail_if_no_subprotocol` says: a client that offers some expects one back).

use crate::wsio::WsIo;
use crate::TransportError;
use halyard_core::config::{FrameSizeLimit, Piggyback, WebsocketOptions};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Bytes tungstenite reads from the socket at a time (and keeps allocated per connection). Its default is
/// 128 KiB, too much for a broker of mostly idle connections; a larger frame still gets a buffer of its size.
pub const READ_BUFFER: usize = 8 * 1024;

/// A listener's `websocket` options, ready for [`accept_ws`].
#[derive(Debug, Clone)]
pub struct WsSettings {
    pub path: String,
    pub subprotocols: Vec<String>,
    pub fail_if_no_subprotocol: bool,
    /// `Some` with `check_origin_enable`: the accepted origins.
    pub origins: Option<Vec<String>>,
    pub allow_origin_absence: bool,
    /// Largest incoming frame and message.
    pub max_frame_size: usize,
    pub piggyback: Piggyback,
    /// Lower-case header names; `None` when configured empty.
    pub proxy_address_header: Option<String>,
    pub proxy_port_header: Option<String>,
}

impl WsSettings {
    /// From the listener's options; `max_packet_size` (the zone's `mqtt.max_packet_size`) bounds frames when
    /// `max_frame_size = "infinity"`, so memory per connection stays bounded.
    pub fn new(o: &WebsocketOptions, max_packet_size: usize) -> WsSettings {
        let header = |h: &str| {
            let h = h.trim().to_ascii_lowercase();
            (!h.is_empty()).then_some(h)
        };
        WsSettings {
            path: o.mqtt_path.clone(),
            subprotocols: o.supported_subprotocols.0.clone(),
            fail_if_no_subprotocol: o.fail_if_no_subprotocol,
            origins: o.check_origin_enable.then(|| o.check_origins.0.clone()),
            allow_origin_absence: o.allow_origin_absence,
            max_frame_size: match o.max_frame_size {
                FrameSizeLimit::Infinity => max_packet_size,
                FrameSizeLimit::Bytes(n) => usize::try_from(n).unwrap_or(usize::MAX),
            },
            piggyback: o.mqtt_piggyback,
            proxy_address_header: header(&o.proxy_address_header),
            proxy_port_header: header(&o.proxy_port_header),
        }
    }

    fn ws_config(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            // Written at once: WsIo already gathers a batch of writes into one frame.
            .write_buffer_size(0)
            .max_frame_size(Some(self.max_frame_size))
            .max_message_size(Some(self.max_frame_size))
    }
}

/// An upgraded connection.
#[derive(Debug)]
pub struct WsAccepted<S> {
    pub io: WsIo<S>,
    /// The subprotocol chosen (echoed in `Sec-WebSocket-Protocol`), if the client offered one.
    pub subprotocol: Option<String>,
    /// The client's address: from the proxy headers when they hold one, else the connection's peer.
    pub peer: SocketAddr,
    /// The request's path (always `mqtt_path`) and `Host`, for logs.
    pub host: Option<String>,
}

#[derive(Default)]
struct Outcome {
    subprotocol: Option<String>,
    forwarded_ip: Option<IpAddr>,
    forwarded_port: Option<u16>,
    host: Option<String>,
    refused: Option<(u16, String)>,
}

/// Performs the HTTP upgrade on an accepted stream (TCP or TLS) within `timeout`.
pub async fn accept_ws<S>(
    stream: S,
    settings: &WsSettings,
    peer: SocketAddr,
    timeout: Duration,
) -> Result<WsAccepted<S>, TransportError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut outcome = Outcome::default();
    // The callback's signature is tungstenite's.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| check_request(settings, req, resp, &mut outcome);
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(settings.ws_config()));
    let result = tokio::time::timeout(timeout, upgrade).await;
    let ws = match result {
        Err(_) => return Err(TransportError::Timeout { what: "WebSocket upgrade", after: timeout }),
        Ok(Err(e)) => {
            return Err(match outcome.refused.take() {
                Some((status, reason)) => TransportError::WsRefused { status, reason },
                None => TransportError::WsHandshake(e),
            })
        }
        Ok(Ok(ws)) => ws,
    };
    let peer = match outcome.forwarded_ip {
        Some(ip) => SocketAddr::new(ip, outcome.forwarded_port.unwrap_or(peer.port())),
        None => peer,
    };
    Ok(WsAccepted { io: WsIo::new(ws, settings.piggyback), subprotocol: outcome.subprotocol, peer, host: outcome.host })
}

fn refuse(outcome: &mut Outcome, status: StatusCode, reason: String) -> ErrorResponse {
    tracing::debug!(status = status.as_u16(), %reason, "WebSocket upgrade refused");
    outcome.refused = Some((status.as_u16(), reason.clone()));
    let mut r = ErrorResponse::new(Some(reason));
    *r.status_mut() = status;
    r
}

#[allow(clippy::result_large_err)] // tungstenite's callback signature
fn check_request(
    s: &WsSettings,
    req: &Request,
    mut resp: Response,
    outcome: &mut Outcome,
) -> Result<Response, ErrorResponse> {
    let headers = req.headers();
    outcome.host = headers.get("host").and_then(|h| h.to_str().ok()).map(String::from);
    if req.uri().path() != s.path {
        return Err(refuse(outcome, StatusCode::NOT_FOUND, format!("path {} is not {}", req.uri().path(), s.path)));
    }
    if let Some(origins) = &s.origins {
        match headers.get("origin") {
            None if s.allow_origin_absence => {}
            None => return Err(refuse(outcome, StatusCode::FORBIDDEN, "no Origin header".into())),
            Some(o) => {
                let o = o.to_str().unwrap_or_default();
                if !origins.iter().any(|a| a == o) {
                    return Err(refuse(outcome, StatusCode::FORBIDDEN, format!("origin {o:?} is not allowed")));
                }
            }
        }
    }
    let offered: Vec<&str> = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if offered.is_empty() {
        if s.fail_if_no_subprotocol {
            return Err(refuse(outcome, StatusCode::BAD_REQUEST, "no Sec-WebSocket-Protocol offered".into()));
        }
    } else {
        let Some(chosen) = offered.iter().find(|p| s.subprotocols.iter().any(|q| q == *p)) else {
            return Err(refuse(
                outcome,
                StatusCode::BAD_REQUEST,
                format!("none of the subprotocols {offered:?} is supported"),
            ));
        };
        let Ok(value) = HeaderValue::from_str(chosen) else {
            return Err(refuse(outcome, StatusCode::BAD_REQUEST, "bad subprotocol".into()));
        };
        resp.headers_mut().insert("sec-websocket-protocol", value);
        outcome.subprotocol = Some(chosen.to_string());
    }
    // EMQX's get_peer: the first entry of the address header, and of the port header.
    let first = |name: &Option<String>| -> Option<String> {
        let v = headers.get(name.as_deref()?)?.to_str().ok()?;
        v.split([',', ' ']).find(|p| !p.is_empty()).map(String::from)
    };
    outcome.forwarded_ip = first(&s.proxy_address_header).and_then(|a| a.parse().ok());
    outcome.forwarded_port = first(&s.proxy_port_header).and_then(|p| p.parse().ok());
    Ok(resp)
}
