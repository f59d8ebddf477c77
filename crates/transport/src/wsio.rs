//! [`WsIo`]: MQTT's byte stream over WebSocket binary messages, as tokio `AsyncRead + AsyncWrite`.
//!
//! Reading: binary messages are concatenated, so an MQTT packet may span messages and a message may hold
//! several packets. A text message is not MQTT [MQTT-6.0.0-1]: the connection is closed with status 1003
//! (unsupported data) and the read fails. A frame or message over `max_frame_size` gets 1009 (message too big),
//! other protocol violations 1002; pings are answered with pongs (by tungstenite, on the next read); a close
//! frame from the client is answered and reads then return end of file. Nothing the client sends can panic.
//!
//! Writing: `poll_write` only gathers bytes (up to [`WRITE_FRAME_MAX`] before it sends a frame by itself);
//! `poll_flush` sends what was gathered as one binary frame (with `mqtt_piggyback = "single"`, one frame per
//! MQTT packet) and flushes it to the socket. So the driver writes a batch of packets and flushes once, and the
//! client sees one frame per batch rather than one per packet. Callers must flush (which costs nothing on a
//! TCP stream) before waiting for anything else.

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use halyard_core::config::Piggyback;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Bytes gathered by writes before a frame is sent without waiting for a flush.
pub const WRITE_FRAME_MAX: usize = 64 * 1024;

/// A WebSocket connection carrying MQTT bytes.
#[derive(Debug)]
pub struct WsIo<S> {
    ws: WebSocketStream<S>,
    /// The unread rest of the last binary message.
    rbuf: Bytes,
    /// Written, not yet framed.
    wbuf: BytesMut,
    piggyback: Piggyback,
    /// A close we owe the client because of what it sent, and the read error to report once it is out.
    closing: Option<Closing>,
    /// Reads are over (the client closed, or a close for bad input was sent).
    eof: bool,
}

#[derive(Debug)]
struct Closing {
    frame: Option<CloseFrame>,
    error: Option<io::Error>,
}

impl<S> WsIo<S> {
    pub fn new(ws: WebSocketStream<S>, piggyback: Piggyback) -> WsIo<S> {
        WsIo { ws, rbuf: Bytes::new(), wbuf: BytesMut::new(), piggyback, closing: None, eof: false }
    }
    /// Bytes received and not read yet (the socket's readiness does not show them).
    pub fn buffered_input(&self) -> usize {
        self.rbuf.len()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsIo<S> {
    /// The stream under the WebSocket (a `TcpStream`, or a TLS stream over one).
    pub fn get_ref(&self) -> &S {
        self.ws.get_ref()
    }
    pub fn get_mut(&mut self) -> &mut S {
        self.ws.get_mut()
    }

    fn fail(&mut self, code: CloseCode, reason: &'static str, kind: io::ErrorKind) {
        tracing::debug!(code = u16::from(code), reason, "closing WebSocket connection");
        self.closing = Some(Closing {
            frame: Some(CloseFrame { code, reason: reason.into() }),
            error: Some(io::Error::new(kind, format!("WebSocket: {reason}"))),
        });
    }

    /// Sends the close frame owed, then gives the error to report.
    fn poll_closing(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some(c) = &mut self.closing else { return Poll::Ready(io::ErrorKind::Other.into()) };
        if let Some(frame) = c.frame.take() {
            match Pin::new(&mut self.ws).poll_ready(cx) {
                Poll::Pending => {
                    c.frame = Some(frame);
                    return Poll::Pending;
                }
                Poll::Ready(Ok(())) => {
                    let _ = Pin::new(&mut self.ws).start_send(Message::Close(Some(frame)));
                }
                Poll::Ready(Err(_)) => {}
            }
        }
        // Errors here mean the client is gone: nothing more to tell it.
        let _ = ready!(Pin::new(&mut self.ws).poll_flush(cx));
        self.eof = true;
        Poll::Ready(c.error.take().unwrap_or_else(|| io::ErrorKind::ConnectionAborted.into()))
    }

    /// Turns gathered bytes into frames; with `all`, also a trailing partial packet (single mode).
    fn poll_send_gathered(&mut self, cx: &mut Context<'_>, all: bool) -> Poll<io::Result<()>> {
        while !self.wbuf.is_empty() {
            let len = match self.piggyback {
                Piggyback::Multiple => self.wbuf.len(),
                Piggyback::Single => match packet_len(&self.wbuf) {
                    Some(n) if n <= self.wbuf.len() => n,
                    _ if all => self.wbuf.len(),
                    _ => return Poll::Ready(Ok(())),
                },
            };
            ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(to_io)?;
            let frame = self.wbuf.split_to(len).freeze();
            Pin::new(&mut self.ws).start_send(Message::Binary(frame)).map_err(to_io)?;
        }
        Poll::Ready(Ok(()))
    }
}

/// The length of the MQTT packet at the start of `b` (fixed header included), once its header is complete.
fn packet_len(b: &[u8]) -> Option<usize> {
    let mut len: usize = 0;
    for (i, &byte) in b.iter().skip(1).take(4).enumerate() {
        len |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(1 + i + 1 + len);
        }
    }
    // A fifth length byte is malformed (our encoder never writes one): frame whatever is there.
    (b.len() >= 5).then_some(b.len())
}

fn to_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        e => io::Error::other(e),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.closing.is_some() {
                let e = ready!(this.poll_closing(cx));
                this.closing = None;
                return Poll::Ready(Err(e));
            }
            if !this.rbuf.is_empty() {
                let n = this.rbuf.len().min(buf.remaining());
                buf.put_slice(&this.rbuf[..n]);
                this.rbuf.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                None => this.eof = true,
                Some(Ok(Message::Binary(b))) => this.rbuf = b,
                Some(Ok(Message::Text(_))) => {
                    this.fail(CloseCode::Unsupported, "text frames are not MQTT", io::ErrorKind::InvalidData)
                }
                // Pongs go out on the next read (tungstenite queues them), which this loop is about to do.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                // The reply is queued; the next read sends it and ends the stream.
                Some(Ok(Message::Close(_))) => {}
                Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                    this.fail(CloseCode::Size, "frame larger than max_frame_size", io::ErrorKind::InvalidData)
                }
                Some(Err(WsError::Utf8(_))) => {
                    this.fail(CloseCode::Unsupported, "text frames are not MQTT", io::ErrorKind::InvalidData)
                }
                Some(Err(WsError::Protocol(_) | WsError::Capacity(_))) => {
                    this.fail(CloseCode::Protocol, "WebSocket protocol violation", io::ErrorKind::InvalidData)
                }
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => this.eof = true,
                Some(Err(e)) => {
                    this.eof = true;
                    return Poll::Ready(Err(to_io(e)));
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.wbuf.len() >= WRITE_FRAME_MAX {
            ready!(this.poll_send_gathered(cx, false))?;
        }
        let mut room = WRITE_FRAME_MAX.saturating_sub(this.wbuf.len());
        if this.piggyback == Piggyback::Single {
            // A packet larger than a frame's worth is gathered whole: single mode sends one frame per packet.
            let rest = packet_len(&this.wbuf).map_or(5, |n| n.saturating_sub(this.wbuf.len()));
            room = room.max(rest);
        }
        let n = buf.len().min(room.max(1));
        this.wbuf.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_send_gathered(cx, true))?;
        Pin::new(&mut this.ws).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        match ready!(Pin::new(&mut self.ws).poll_close(cx)) {
            Ok(()) | Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(to_io(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_lengths_from_fixed_headers() {
        assert_eq!(packet_len(&[]), None);
        assert_eq!(packet_len(&[0xc0]), None);
        assert_eq!(packet_len(&[0xc0, 0x00]), Some(2));
        assert_eq!(packet_len(&[0x30, 0x7f]), Some(129));
        assert_eq!(packet_len(&[0x30, 0x80]), None);
        assert_eq!(packet_len(&[0x30, 0x80, 0x01]), Some(131));
        assert_eq!(packet_len(&[0x30, 0xff, 0xff, 0xff, 0x7f]), Some(5 + 268_435_455));
        assert_eq!(packet_len(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]), Some(6));
    }
}
