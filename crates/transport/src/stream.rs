//! [`MqttStream`]: the one stream type a connection driver needs for every listener type.

use crate::wsio::WsIo;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// A client connection after its transport's handshakes: plain TCP, TLS, WebSocket or WebSocket over TLS.
/// The larger variants are boxed so the enum stays one pointer and a tag beside `TcpStream`.
#[derive(Debug)]
pub enum MqttStream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Ws(Box<WsIo<TcpStream>>),
    Wss(Box<WsIo<TlsStream<TcpStream>>>),
}

impl MqttStream {
    /// The TCP socket underneath, to park an idle connection on its readiness (`poll_read_ready`) and to set
    /// socket options. Park only after a read returned `Pending`: TLS and WebSocket may hold bytes already
    /// received (a second TLS record, a second frame) that the socket's readiness does not show, and a read
    /// returns `Pending` only once they are used up.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            MqttStream::Tcp(s) => s,
            MqttStream::Tls(s) => s.get_ref().0,
            MqttStream::Ws(s) => s.get_ref(),
            MqttStream::Wss(s) => s.get_ref().get_ref().0,
        }
    }

    /// Waits until the TCP socket is readable (see [`MqttStream::tcp`] for when this may be used to park).
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tcp().poll_read_ready(cx)
    }

    /// The TLS session, for the client's certificate ([`crate::PeerCert::from_connection`]).
    pub fn tls(&self) -> Option<&rustls::ServerConnection> {
        match self {
            MqttStream::Tls(s) => Some(s.get_ref().1),
            MqttStream::Wss(s) => Some(s.get_ref().get_ref().1),
            _ => None,
        }
    }

    /// `"tcp"`, `"ssl"`, `"ws"` or `"wss"`: the listener type, EMQX's names.
    pub fn kind(&self) -> &'static str {
        match self {
            MqttStream::Tcp(_) => "tcp",
            MqttStream::Tls(_) => "ssl",
            MqttStream::Ws(_) => "ws",
            MqttStream::Wss(_) => "wss",
        }
    }
}

impl AsyncRead for MqttStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MqttStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            MqttStream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
            MqttStream::Ws(s) => Pin::new(&mut **s).poll_read(cx, buf),
            MqttStream::Wss(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MqttStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MqttStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            MqttStream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
            MqttStream::Ws(s) => Pin::new(&mut **s).poll_write(cx, buf),
            MqttStream::Wss(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MqttStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            MqttStream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
            MqttStream::Ws(s) => Pin::new(&mut **s).poll_flush(cx),
            MqttStream::Wss(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MqttStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            MqttStream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
            MqttStream::Ws(s) => Pin::new(&mut **s).poll_shutdown(cx),
            MqttStream::Wss(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MqttStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            MqttStream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
            MqttStream::Ws(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
            MqttStream::Wss(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            MqttStream::Tcp(s) => s.is_write_vectored(),
            MqttStream::Tls(s) => s.is_write_vectored(),
            MqttStream::Ws(_) | MqttStream::Wss(_) => false,
        }
    }
}
