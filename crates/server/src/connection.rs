//! The task that drives one TCP connection: it reads and decodes packets, feeds them to the protocol state
//! machine, drains the session queue when told to, writes what the state machine produced (many packets per
//! write), and handles the takeover handshake and shutdown. No protocol rule lives here.

use crate::protocol::{Close, Conn, Step, OUT_HIGH_WATER};
use bytes::BytesMut;
use halyard_codec::reason::rc;
use halyard_codec::DecodeError;
use halyard_core::config::MqttConfig;
use halyard_core::session::{Control, SessionHandle};
use halyard_core::Broker;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

const READ_CHUNK: usize = 16 * 1024;
/// How long a closing connection may take to flush its last packets and see the client close.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) async fn serve(
    stream: TcpStream,
    broker: Arc<Broker>,
    zone: Arc<MqttConfig>,
    shutdown: watch::Receiver<bool>,
) {
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let span = tracing::info_span!("conn", %peer, client_id = tracing::field::Empty);
    drive(stream, broker, zone, shutdown).instrument(span).await
}

async fn drive(stream: TcpStream, broker: Arc<Broker>, zone: Arc<MqttConfig>, mut shutdown: watch::Receiver<bool>) {
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let mut conn = Conn::new(broker.clone(), zone.clone(), Instant::now());
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    let (control_tx, mut control_rx) = mpsc::channel::<Control>(4);
    let mut control_tx = Some(control_tx);
    // One timer for the connection's life. It may fire early (on_tick re-checks the real deadlines and re-arms
    // it), so it is only ever pulled earlier here: received packets push deadlines later and cost nothing.
    let mut deadline = conn.next_deadline(Instant::now());
    let timer = tokio::time::sleep_until(deadline.into());
    tokio::pin!(timer);

    let close = loop {
        let session = conn.session().cloned();
        let next = conn.next_deadline(Instant::now());
        if next < deadline {
            deadline = next;
            timer.as_mut().reset(deadline.into());
        }
        let want_read = conn.out.len() < OUT_HIGH_WATER;
        let want_fill = session.is_some() && conn.wants_deliveries();
        if rbuf.capacity() - rbuf.len() < READ_CHUNK / 4 {
            rbuf.reserve(READ_CHUNK);
        }
        tokio::select! {
            biased;
            _ = shutdown.changed() => {
                break Close { publish_will: false, ..Close::error(rc::SERVER_SHUTTING_DOWN, "server shutting down") };
            }
            Some(ctl) = control_rx.recv() => match ctl {
                Control::Takeover { resume, done } => {
                    let c = conn.on_takeover(resume);
                    // Park the session before answering, so the new owner finds it complete.
                    conn.close(&c);
                    let _ = done.send(());
                    break c;
                }
            },
            r = wr.write_buf(&mut conn.out), if !conn.out.is_empty() => {
                if let Err(e) = r {
                    break Close::lost(format!("write failed: {e}"));
                }
            }
            r = rd.read_buf(&mut rbuf), if want_read => {
                match r {
                    Ok(0) => break Close::lost("connection closed by client"),
                    Err(e) => break Close::lost(format!("read failed: {e}")),
                    Ok(_) => {}
                }
                if let Some(c) = process(&mut conn, &mut rbuf, &broker, &zone, &mut control_tx).await {
                    break c;
                }
                conn.fill(Instant::now());
            }
            _ = notified(session.as_deref()), if want_fill => conn.fill(Instant::now()),
            _ = &mut timer => {
                if let Err(c) = conn.on_tick(Instant::now()) {
                    break c;
                }
                // Re-arm even if the deadline did not move, so an elapsed timer does not fire in a loop.
                deadline = conn.next_deadline(Instant::now());
                timer.as_mut().reset(deadline.into());
            }
        }
    };
    if close.publish_will && close.reason_code.is_none() {
        tracing::debug!(why = %close.why, "connection lost");
    } else {
        tracing::debug!(why = %close.why, code = ?close.reason_code, "connection closed");
    }
    conn.close(&close);
    // The session is parked: a takeover waiting on us may proceed now, not after the linger below.
    drop(control_rx);
    linger(&mut rd, &mut wr, &mut conn.out).await;
}

/// Decodes and handles every complete packet in `rbuf`. Returns how the connection must end, if it must.
async fn process(
    conn: &mut Conn,
    rbuf: &mut BytesMut,
    broker: &Arc<Broker>,
    zone: &MqttConfig,
    control_tx: &mut Option<mpsc::Sender<Control>>,
) -> Option<Close> {
    loop {
        let packet = match halyard_codec::decode(rbuf, conn.version(), conn.max_packet_size()) {
            Ok(Some(p)) => p,
            Ok(None) => return None,
            Err(e) => return Some(decode_failure(conn, e)),
        };
        match conn.handle(packet, Instant::now()) {
            Step::Continue => {}
            Step::Close(c) => return Some(c),
            Step::Attach(req) => {
                let Some(tx) = control_tx.take() else {
                    return Some(Close::error(rc::PROTOCOL_ERROR, "second CONNECT"));
                };
                tracing::Span::current().record("client_id", &*req.client_id);
                let attached = broker.attach(&req.client_id, req.clean_start, req.expiry_interval, zone, tx).await;
                conn.on_attached(req, attached, Instant::now());
            }
        }
    }
}

fn decode_failure(conn: &mut Conn, e: DecodeError) -> Close {
    if !conn.is_connected() {
        if e == DecodeError::UnsupportedProtocol {
            // [MQTT-3.1.2-2] CONNACK 0x01 (unacceptable protocol version), then close.
            conn.out.extend_from_slice(&[0x20, 0x02, 0x00, 0x01]);
        }
        return Close { publish_will: false, ..Close::lost(format!("bad CONNECT: {e}")) };
    }
    Close::error(e.reason_code(), e.to_string())
}

async fn notified(session: Option<&SessionHandle>) {
    match session {
        Some(s) => s.notified().await,
        None => std::future::pending().await,
    }
}

/// Flushes what is left (a DISCONNECT, say), half-closes, then reads and discards until the client closes too.
/// Closing with unread bytes in the receive buffer makes the kernel send RST, and a client that is still
/// writing (a PUBREL in flight) would then fail on its write before it could read our DISCONNECT.
async fn linger(rd: &mut OwnedReadHalf, wr: &mut OwnedWriteHalf, out: &mut BytesMut) {
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, async {
        while !out.is_empty() {
            if wr.write_buf(out).await.unwrap_or(0) == 0 {
                break;
            }
        }
        let _ = wr.shutdown().await;
        let mut sink = [0u8; 4096];
        while rd.read(&mut sink).await.unwrap_or(0) > 0 {}
    })
    .await;
}
