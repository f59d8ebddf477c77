//! The byte stream under one connection, as the connection driver uses it: readiness to wait on while idle, a
//! read that never waits, a write of the output buffer, a read of what already arrived (takeover), and the
//! closing linger. Plain TCP is split into tokio's owned halves (no allocation, nothing in between); any other
//! stream (TLS, WebSocket, a PROXY-protocol client behind either) is a boxed [`Transport`]. The protocol is the
//! same over all of them: only bytes cross this boundary.

use bytes::{Buf, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// A byte stream over a TCP socket other than the socket itself: TLS, WebSocket.
///
/// A busy connection polls the stream's `poll_read` with its task's context, so the stream registers whatever
/// it waits for (the socket's read side, or its write side while it sends a close frame). An idle connection
/// waits on the socket's read readiness instead, and parks only after a read was `Pending`: a stream may hold
/// decoded bytes the socket's readiness does not show (a second TLS record, bytes read during the handshake).
pub trait Transport: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {
    /// The TCP socket underneath: its readiness wakes an idle connection.
    fn socket(&self) -> &TcpStream;
}

/// A pass-through over a TCP socket through the `Transport` path: what TLS and WebSocket connections run on,
/// without their framing. Lets tests drive the boxed path over real sockets.
pub struct PlainTransport(pub TcpStream);

impl AsyncRead for PlainTransport {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PlainTransport {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Transport for PlainTransport {
    fn socket(&self) -> &TcpStream {
        &self.0
    }
}

/// Every transport a listener accepts: TLS, WebSocket, WebSocket over TLS, and plain TCP behind a PROXY
/// protocol header (plain TCP without one takes [`Io::tcp`] instead).
impl Transport for halyard_transport::MqttStream {
    fn socket(&self) -> &TcpStream {
        self.tcp()
    }
}

/// One connection's stream.
pub(crate) enum Io {
    Tcp {
        rd: OwnedReadHalf,
        wr: OwnedWriteHalf,
    },
    Stream {
        stream: Box<dyn Transport>,
        /// The last read returned bytes: the stream may hold more, so it counts as readable until a read says
        /// it would block.
        maybe_buffered: bool,
        /// Bytes written into the stream wait in its own buffer (a TLS record) until flushed.
        unflushed: bool,
    },
}

impl Io {
    pub(crate) fn tcp(stream: TcpStream) -> Io {
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        Io::Tcp { rd, wr }
    }

    pub(crate) fn stream(stream: Box<dyn Transport>) -> Io {
        let _ = stream.socket().set_nodelay(true);
        // The handshake may have left bytes in the stream: read before waiting on the socket.
        Io::Stream { stream, maybe_buffered: true, unflushed: false }
    }

    /// Reads into `buf`'s spare capacity (reserving `chunk` bytes when less than a quarter of that is left).
    /// Plain TCP waits on readiness first, so an idle socket costs no buffer; a stream is polled directly, with
    /// the caller's context. `Ok(0)`: the peer closed.
    pub(crate) fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        chunk: usize,
    ) -> Poll<io::Result<usize>> {
        let reserve = |buf: &mut BytesMut| {
            if buf.capacity() - buf.len() < chunk / 4 {
                buf.reserve(chunk);
            }
        };
        match self {
            Io::Tcp { rd, .. } => loop {
                std::task::ready!(rd.as_ref().poll_read_ready(cx))?;
                reserve(buf);
                match rd.try_read_buf(buf) {
                    // Readiness was stale: tokio cleared it, and the next poll registers for the next.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if buf.is_empty() {
                            // Do not keep a buffer reserved for a spurious wake-up.
                            *buf = BytesMut::new();
                        }
                    }
                    r => return Poll::Ready(r),
                }
            },
            Io::Stream { stream, maybe_buffered, .. } => {
                reserve(buf);
                let before = buf.len();
                let dst = buf.spare_capacity_mut();
                let mut rb = ReadBuf::uninit(dst);
                match Pin::new(&mut **stream).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        // SAFETY: `poll_read` initialised the first `n` bytes of the spare capacity.
                        unsafe { buf.set_len(before + n) };
                        *maybe_buffered = n > 0;
                        Poll::Ready(Ok(n))
                    }
                    Poll::Ready(Err(e)) => {
                        *maybe_buffered = false;
                        Poll::Ready(Err(e))
                    }
                    Poll::Pending => {
                        *maybe_buffered = false;
                        Poll::Pending
                    }
                }
            }
        }
    }

    /// Ready when a read may return something (possibly spuriously): what an idle connection waits on. Uses the
    /// socket's own waker slot: a `readable()` future would add a waiter of its own to every idle connection.
    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Io::Tcp { rd, .. } => rd.as_ref().poll_read_ready(cx),
            Io::Stream { maybe_buffered: true, .. } => Poll::Ready(Ok(())),
            Io::Stream { stream, .. } => stream.socket().poll_read_ready(cx),
        }
    }

    /// True while something written has not reached the socket yet.
    pub(crate) fn wants_write(&self, out: &BytesMut) -> bool {
        !out.is_empty() || matches!(self, Io::Stream { unflushed: true, .. })
    }

    /// Writes from `out` (advancing it), flushing a stream's own buffer once `out` is empty. Ready after any
    /// progress; `Ok(0)` means the peer cannot take more (closed).
    pub(crate) fn poll_send(&mut self, cx: &mut Context<'_>, out: &mut BytesMut) -> Poll<io::Result<usize>> {
        match self {
            Io::Tcp { wr, .. } => {
                let n = std::task::ready!(Pin::new(wr).poll_write(cx, out))?;
                out.advance(n);
                Poll::Ready(Ok(n))
            }
            Io::Stream { stream, unflushed, .. } => {
                if !out.is_empty() {
                    let n = std::task::ready!(Pin::new(&mut **stream).poll_write(cx, out))?;
                    out.advance(n);
                    *unflushed = true;
                    if n == 0 {
                        return Poll::Ready(Ok(0));
                    }
                    if !out.is_empty() {
                        return Poll::Ready(Ok(n));
                    }
                }
                // Everything handed over: push it out of the stream's buffer.
                std::task::ready!(Pin::new(&mut **stream).poll_flush(cx))?;
                *unflushed = false;
                Poll::Ready(Ok(1))
            }
        }
    }

    /// Reads what the peer has already sent, without waiting, for a connection being taken over. Plain TCP
    /// reads the socket directly, because tokio's readiness flag lags behind the kernel until the reactor next
    /// runs; a stream can only read what its readiness says is there, so the last bytes a TLS or WebSocket
    /// client sent just before its reconnect may be missed (they are lost as with any closed connection).
    pub(crate) fn read_now(&mut self, chunk: &mut [u8]) -> io::Result<usize> {
        match self {
            Io::Tcp { rd, .. } => std::io::Read::read(&mut &*socket2::SockRef::from(rd.as_ref()), chunk),
            Io::Stream { stream, .. } => {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                let mut rb = ReadBuf::new(chunk);
                match Pin::new(&mut **stream).poll_read(&mut cx, &mut rb) {
                    Poll::Ready(Ok(())) => Ok(rb.filled().len()),
                    Poll::Ready(Err(e)) => Err(e),
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
        }
    }

    /// Flushes what is left (a DISCONNECT, say), half-closes, then reads and discards until the client closes
    /// too. Closing with unread bytes in the receive buffer makes the kernel send RST, and a client that is
    /// still writing (a PUBREL in flight) would then fail on its write before it could read our DISCONNECT.
    pub(crate) async fn linger(&mut self, out: &mut BytesMut, timeout: std::time::Duration) {
        let _ = tokio::time::timeout(timeout, async {
            while self.wants_write(out) {
                match std::future::poll_fn(|cx| self.poll_send(cx, out)).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let mut sink = [0u8; 4096];
            match self {
                Io::Tcp { rd, wr } => {
                    let _ = wr.shutdown().await;
                    while rd.read(&mut sink).await.unwrap_or(0) > 0 {}
                }
                Io::Stream { stream, .. } => {
                    let _ = stream.shutdown().await;
                    while stream.read(&mut sink).await.unwrap_or(0) > 0 {}
                }
            }
        })
        .await;
    }
}
