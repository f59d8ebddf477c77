//! The task that drives one connection (over TCP, or any `io::Transport`): it reads and decodes packets, feeds them to the protocol state
//! machine, drains the session queue when told to, writes what the state machine produced (many packets per
//! write), and handles the takeover handshake and shutdown. No protocol rule lives here. While nothing happens
//! the connection is parked in a small future (`Link::idle`); its busy state is boxed and given back.

use crate::io::Io;
use crate::listener::OpenSlot;
use crate::protocol::{Close, Conn, Origin, Step, OUT_HIGH_WATER};
use bytes::BytesMut;
use halyard_codec::reason::rc;
use halyard_codec::Packet;
use halyard_core::config::MqttConfig;
use halyard_core::metrics::Metrics;
use halyard_core::session::{Control, SessionHandle};
use halyard_core::{Broker, Delivery};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};
use tracing::Instrument;

const READ_CHUNK: usize = 16 * 1024;
/// Packets a held-back publisher may have read ahead before reading pauses.
const HELD_MAX: usize = 1024;
/// Read-buffer bytes a held-back publisher may fill before reading pauses. Held packets are slices of the read
/// buffers they came in, so this, not their count, bounds the memory they pin (1,024 large packets would be
/// hundreds of MiB).
const HELD_READ_MAX: usize = 1024 * 1024;
/// Acknowledgements one connection may have waiting for store commits before it stops reading.
const PENDING_ACKS_MAX: usize = 1024;
/// Deliveries a connection's publishes may make before it lets other tasks run. Reading is cheap next to
/// delivering, so a publisher that reads all its socket holds (tokio's cooperative budget allows 128 reads per
/// turn, 2 MiB) fills its subscribers' queues far faster than they can drain them and QoS 0 floods end in drops
/// of almost everything. Yielding after this much work lets the woken subscribers run between two reads; a
/// subscriber whose queue passed its high-water mark makes the publisher yield at once (`Conn::routed`
/// saturates), so the budget can be large enough for a fan-out to batch: 16 messages to 1,000 subscribers.
const ROUTED_PER_TURN: u32 = 16 * 1024;
/// The longest a publisher is held back at once.
const HOLD_LIMIT: Duration = Duration::from_secs(2);
/// How long a closing connection may take to flush its last packets and see the client close.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// After this long without anything to do, a connection gives back its busy state (the boxed future of
/// `Link::busy` and its tracing span) and waits with a small future: most of a broker's connections are idle
/// devices, and this is most of their memory.
const IDLE_AFTER: Duration = Duration::from_secs(1);

pub(crate) fn serve(
    io: Io,
    origin: Origin,
    broker: Arc<Broker>,
    zone: Arc<MqttConfig>,
    shutdown: watch::Receiver<bool>,
    slot: OpenSlot,
) -> impl std::future::Future<Output = ()> {
    // Built outside the async fn: locals moved into the link would otherwise keep their own slots in the
    // connection's future for its whole life.
    run(Link::new(io, origin, broker, zone, shutdown, slot))
}

/// An `async move` block over the link rather than an `async fn` taking it: an async fn's argument is copied
/// into a local of its future, so the link would be in the future twice (measured: 1,688 bytes against 1,056).
#[allow(clippy::manual_async_fn)]
fn run(mut link: Link) -> impl std::future::Future<Output = ()> {
    async move {
        // One timer for the connection's life. It may fire early (on_tick re-checks the real deadlines and
        // re-arms it), so it is only ever pulled earlier: received packets push deadlines later and cost nothing.
        let timer = tokio::time::sleep_until(link.conn.next_deadline(Instant::now()).into());
        tokio::pin!(timer);
        let mut wake = Wake::Other;
        let close = loop {
            let span = link.span();
            let busy = Box::pin(link.busy(wake, timer.as_mut()).instrument(span));
            if let Err(close) = busy.await {
                break close;
            }
            wake = link.idle(timer.as_mut()).await;
        };
        let span = link.span();
        let end = Box::pin(link.end(close).instrument(span));
        end.await;
    }
}

/// What ended an idle wait, when it was something the wait consumed (a oneshot value, a notification permit)
/// and the busy loop must therefore handle itself.
enum Wake {
    Control(Result<Control, oneshot::error::RecvError>),
    Deliveries,
    /// Readiness or the timer: still pending, the busy loop sees it again.
    Other,
}

/// One connection's state across busy and idle periods. Only what must outlive a busy period lives here: a
/// connection parks only with nothing buffered, held or awaiting a commit, so the read buffer, the held
/// packets and the commit watch belong to `busy`.
struct Link {
    conn: Conn,
    io: Io,
    control_rx: oneshot::Receiver<Control>,
    /// The sender is dropped unanswered when the session ends without a takeover: stop polling then.
    control_open: bool,
    control_tx: Option<oneshot::Sender<Control>>,
    /// Watched while busy only; an idle connection is woken through its session at shutdown
    /// (`Server::shutdown` wakes every session), or by its own timer.
    shutdown: watch::Receiver<bool>,
    /// Counts this connection among the listener's open ones until the link is dropped.
    _slot: OpenSlot,
}

impl Link {
    fn new(
        io: Io,
        origin: Origin,
        broker: Arc<Broker>,
        zone: Arc<MqttConfig>,
        shutdown: watch::Receiver<bool>,
        slot: OpenSlot,
    ) -> Link {
        tracing::debug!(peer = ?origin.peer, "connection accepted");
        let now = Instant::now();
        let conn = Conn::with_origin(broker, zone, now, origin);
        let (control_tx, control_rx) = oneshot::channel::<Control>();
        Link { conn, io, control_rx, control_open: true, control_tx: Some(control_tx), shutdown, _slot: slot }
    }

    /// The span of one busy period (client id once known). Made per period, because a span's recorded fields
    /// stay allocated as long as it lives.
    fn span(&self) -> tracing::Span {
        match self.conn.client_id() {
            Some(id) => tracing::info_span!("conn", client_id = id),
            None => tracing::info_span!("conn", client_id = tracing::field::Empty),
        }
    }

    /// Waits with a small future until something may need attention.
    async fn idle(&mut self, mut timer: std::pin::Pin<&mut tokio::time::Sleep>) -> Wake {
        let Link { conn, io, control_rx, control_open, .. } = self;
        tokio::select! {
            biased;
            ctl = control_rx, if *control_open => Wake::Control(ctl),
            _ = std::future::poll_fn(|cx| io.poll_read_ready(cx)) => Wake::Other,
            _ = notified(conn.session().map(|s| &**s)) => Wake::Deliveries,
            _ = timer.as_mut() => Wake::Other,
        }
    }

    /// Serves the connection until it has been quiet for `IDLE_AFTER` (`Ok`) or must close (`Err`).
    async fn busy(&mut self, wake: Wake, mut timer: std::pin::Pin<&mut tokio::time::Sleep>) -> Result<(), Close> {
        let Link { conn, io, control_rx, control_open, control_tx, shutdown, .. } = self;
        let (broker, zone) = (conn.broker().clone(), conn.zone().clone());
        let (broker, zone) = (&broker, &*zone);
        let mut rbuf = BytesMut::new();
        let rbuf = &mut rbuf;
        let mut hold = Hold::default();
        let hold = &mut hold;
        // Made per busy period: a connection parks only with nothing waiting for a commit.
        let mut commits = broker.commits();
        // Set once the store failed (its watch closed): nothing will commit any more.
        let mut commits_closed = false;
        // Set when `process` stopped because the store holds this publisher back, with packets still in `rbuf`.
        let mut left_by_store = false;
        // The disk read of stored deliveries the state machine asked for (`Conn::stored_read`), off this task.
        let mut reading: Option<std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Delivery>> + Send>>> = None;
        match wake {
            Wake::Control(Ok(ctl)) => {
                return Err(take_over(conn, ctl, io, rbuf, hold, broker, zone, control_tx).await);
            }
            Wake::Control(Err(_)) => *control_open = false,
            Wake::Deliveries => {
                conn.after_input(Instant::now());
            }
            Wake::Other => {}
        }
        let quiet_timer = tokio::time::sleep(IDLE_AFTER);
        tokio::pin!(quiet_timer);
        // When the loop last handled something. The quiet timer is re-armed from it when it fires rather than
        // reset at every event, so an active connection pays for it once per `IDLE_AFTER`.
        let mut last_active = Instant::now();
        // Set by the quiet timer's branch, the one event that is not activity.
        let mut rested = false;
        loop {
            let session = conn.session().cloned();
            let now = Instant::now();
            if !std::mem::take(&mut rested) {
                last_active = now;
            }
            // The timer's own deadline is the one it is armed for (kept nowhere else).
            let next = conn.next_deadline(now);
            if next < timer.deadline().into_std() {
                timer.as_mut().reset(next.into());
            }
            if !hold.active() {
                hold.read_while_held = 0;
            }
            // The hold limit counts from when the wait began, not from this pass (every event starts a pass).
            if hold.waiting_on.is_empty() {
                hold.until = None;
            } else if hold.until.is_none() {
                hold.until = Some(now + HOLD_LIMIT);
            }
            if conn.waits_for_commit() {
                // A commit may have been announced before this busy period's receiver existed.
                let seen = *commits.borrow();
                conn.on_commit(seen, now);
            }
            let store_holds_us = store_holds(conn, broker);
            if left_by_store && !store_holds_us {
                // Packets left unprocessed while the store held this publisher back, released since by whatever
                // freed its acknowledgements (the commit watch, or acks sent at once): process them now, not on
                // new input that may never come.
                if let Some(c) = process(conn, rbuf, hold, broker, zone, control_tx, true).await {
                    return Err(c);
                }
                left_by_store = !rbuf.is_empty() && store_holds(conn, broker);
                conn.after_input(Instant::now());
            }
            let want_read = conn.out.len() < OUT_HIGH_WATER
                && hold.held.len() < HELD_MAX
                && hold.read_while_held < HELD_READ_MAX
                && !store_holds_us;
            if reading.is_none() {
                if let Some((session, seqs)) = conn.stored_read() {
                    let broker = broker.clone();
                    reading = Some(Box::pin(async move {
                        let client_id = session.client_id.clone();
                        match tokio::task::spawn_blocking(move || broker.load_stored_blocking(&session, &seqs)).await {
                            Ok(loaded) => loaded,
                            Err(e) => {
                                tracing::error!(client_id = %client_id, error = %e, "reading stored deliveries failed");
                                Vec::new()
                            }
                        }
                    }));
                }
            }
            let want_fill = session.is_some() && conn.wants_deliveries();
            let want_write = io.wants_write(&conn.out);
            let waits_for_commit = conn.waits_for_commit() && !commits_closed;
            // Not before CONNECT (a parked connection without a session is not woken at shutdown; the connect
            // timeout bounds those anyway), and not with part of a packet read.
            let may_rest = conn.is_connected()
                && conn.out.is_empty()
                && !hold.active()
                && !conn.waits_for_commit()
                && !conn.reads_stored()
                && rbuf.is_empty();
            tokio::select! {
                biased;
                _ = shutdown.changed() => return Err(shutting_down()),
                ctl = &mut *control_rx, if *control_open => match ctl {
                    Ok(ctl) => return Err(take_over(conn, ctl, io, rbuf, hold, broker, zone, control_tx).await),
                    // The sender is dropped unanswered when the session ends without a takeover.
                    Err(_) => *control_open = false,
                },
                // Writing and reading share the stream, so they are one branch (writing first, as before).
                ev = std::future::poll_fn(|cx| poll_io(io, cx, want_write, want_read, &mut conn.out, rbuf)), if want_write || want_read => {
                    let read = match ev {
                        IoEvent::Sent(Ok(0)) => return Err(Close::lost("write failed: the peer takes nothing more")),
                        IoEvent::Sent(Err(e)) => return Err(Close::lost(format!("write failed: {e}"))),
                        IoEvent::Sent(Ok(_)) => None,
                        IoEvent::Read(r) => Some(r),
                    };
                    let Some(read) = read else {
                        // The queue's wake-up may have been spent while the buffer was full: look again now it drained.
                        if conn.wants_deliveries() {
                            conn.after_input(Instant::now());
                        }
                        conn.release_idle_buffers();
                        continue;
                    };
                    if let (Ok(n), true) = (&read, hold.active()) {
                        // Held packets are slices of the read buffers they came in: bound what they may pin.
                        hold.read_while_held += *n;
                    }
                    match read {
                        Ok(0) => {
                            // What the client sent before closing still counts, held or not: a DISCONNECT among
                            // it means no will [MQTT-3.1.2-10].
                            while let Some(p) = hold.held.pop_front() {
                                hold.waiting_on.clear();
                                if let Some(c) = feed(conn, p, hold, broker, zone, control_tx).await {
                                    return Err(c);
                                }
                            }
                            // And what the store's hold left in the read buffer.
                            if let Some(c) = process(conn, rbuf, hold, broker, zone, control_tx, false).await {
                                return Err(c);
                            }
                            return Err(Close::lost("connection closed by client"));
                        }
                        Err(e) => return Err(Close::lost(format!("read failed: {e}"))),
                        Ok(_) => {}
                    }
                    if let Some(c) = process(conn, rbuf, hold, broker, zone, control_tx, true).await {
                        return Err(c);
                    }
                    left_by_store = !rbuf.is_empty() && store_holds(conn, broker);
                    if rbuf.is_empty() {
                        *rbuf = BytesMut::new();
                    }
                    conn.after_input(Instant::now());
                }
                // Boxed, and built only while they matter: they are needed only while publishing.
                r = when(waits_for_commit, || Box::pin(commits.changed())) => {
                    if r.is_err() {
                        commits_closed = true;
                        if conn.has_pending_acks() {
                            // The store failed: what waits for it will never be acknowledged.
                            return Err(Close::error(rc::QUOTA_EXCEEDED, "the store cannot take messages"));
                        }
                        // Deliveries of publishes whose commit failed: dropped, never sent.
                        conn.after_input(Instant::now());
                        continue;
                    }
                    // The value the watch delivered, not `committed()`: the store updates the watch first.
                    let seen = *commits.borrow_and_update();
                    conn.on_commit(seen, Instant::now());
                    // Packets left unprocessed while the store held this publisher back.
                    if left_by_store && !store_holds(conn, broker) {
                        if let Some(c) = process(conn, rbuf, hold, broker, zone, control_tx, true).await {
                            return Err(c);
                        }
                        left_by_store = !rbuf.is_empty() && store_holds(conn, broker);
                    }
                    conn.after_input(Instant::now());
                }
                _ = when(!hold.waiting_on.is_empty(), || Box::pin(drained(hold.waiting_on.clone(), broker.clone(), hold.until))) => {
                    hold.waiting_on.clear();
                    hold.until = None;
                    if let Some(c) = release(conn, hold, broker, zone, control_tx).await {
                        return Err(c);
                    }
                    conn.after_input(Instant::now());
                }
                loaded = async { match reading.as_mut() { Some(r) => r.await, None => std::future::pending().await } }, if reading.is_some() => {
                    reading = None;
                    conn.on_stored(loaded, Instant::now());
                    conn.submit_ops();
                }
                _ = notified(session.as_deref()), if want_fill => {
                    conn.after_input(Instant::now());
                }
                _ = timer.as_mut() => {
                    conn.on_tick(Instant::now())?;
                    // Re-arm even if the deadline did not move, so an elapsed timer does not fire in a loop.
                    timer.as_mut().reset(conn.next_deadline(Instant::now()).into());
                }
                _ = quiet_timer.as_mut(), if may_rest => {
                    if last_active + IDLE_AFTER <= Instant::now() {
                        conn.release_all_buffers();
                        return Ok(());
                    }
                    quiet_timer.as_mut().reset((last_active + IDLE_AFTER).into());
                    rested = true;
                }
            }
        }
    }

    /// Closes the session side and lingers so the client sees our last packets.
    async fn end(mut self, close: Close) {
        let peer = self.conn.peer_addr();
        if close.publish_will && close.reason_code.is_none() {
            tracing::debug!(why = %close.why, ?peer, "connection lost");
        } else {
            tracing::debug!(why = %close.why, code = ?close.reason_code, ?peer, "connection closed");
        }
        self.conn.close(&close, Instant::now());
        // The session is parked: a takeover waiting on us may proceed now, not after the linger below.
        drop(self.control_rx);
        // Boxed: its 4 KiB discard buffer would otherwise be part of every connection's future.
        Box::pin(self.io.linger(&mut self.conn.out, FLUSH_TIMEOUT)).await;
    }
}

fn shutting_down() -> Close {
    Close { publish_will: false, ..Close::error(rc::SERVER_SHUTTING_DOWN, "server shutting down") }
}

/// Another connection takes the session over. What this client sent before it went (already in the socket's
/// receive buffer or held back here) is processed first and in order, so a PUBLISH is not lost and a DISCONNECT
/// discards the will [MQTT-3.1.2-10], [MQTT-3.14.4-3] even when the client reconnects at once. Then the session
/// is parked (or ended) before the new owner is answered, so it finds the session complete.
#[allow(clippy::too_many_arguments)]
async fn take_over(
    conn: &mut Conn,
    ctl: Control,
    io: &mut Io,
    rbuf: &mut BytesMut,
    hold: &mut Hold,
    broker: &Arc<Broker>,
    zone: &MqttConfig,
    control_tx: &mut Option<oneshot::Sender<Control>>,
) -> Close {
    let Control::Takeover { resume, done } = ctl;
    // Boxed: it runs once per takeover, and its read buffer would otherwise enlarge every busy period's future.
    let close = match Box::pin(read_what_was_sent(conn, io, rbuf, hold, broker, zone, control_tx)).await {
        // Those packets decide the will (a DISCONNECT discards it) and what the client is told; the session
        // itself is handed over all the same (not parked offline first: its shared messages stay with it).
        Some(c) => Close { detach: halyard_core::broker::DetachReason::TakenOver { resume }, ..c },
        None => conn.on_takeover(resume),
    };
    conn.close(&close, Instant::now());
    let _ = done.send(());
    close
}

/// The most a connection being taken over reads of what its client had sent (beyond that, the rest is lost as
/// with any connection that closes: only what was acknowledged counts).
const TAKEOVER_READ_MAX: usize = 1024 * 1024;

/// Processes the held packets and whatever the socket has already received, without waiting for more and
/// without holding anything back. Returns how the connection ends if those packets end it (a DISCONNECT, the
/// client's close, a protocol error).
async fn read_what_was_sent(
    conn: &mut Conn,
    io: &mut Io,
    rbuf: &mut BytesMut,
    hold: &mut Hold,
    broker: &Arc<Broker>,
    zone: &MqttConfig,
    control_tx: &mut Option<oneshot::Sender<Control>>,
) -> Option<Close> {
    while let Some(p) = hold.held.pop_front() {
        hold.waiting_on.clear();
        if let Some(c) = feed(conn, p, hold, broker, zone, control_tx).await {
            return Some(c);
        }
    }
    hold.waiting_on.clear();
    let mut read = 0;
    loop {
        if let Some(c) = process(conn, rbuf, hold, broker, zone, control_tx, false).await {
            return Some(c);
        }
        if read >= TAKEOVER_READ_MAX {
            return None;
        }
        // Straight from the socket where it can be (`Io::read_now`): `try_read` may say "would block" about bytes
        // that arrived long ago.
        let mut chunk = [0u8; 4096];
        match io.read_now(&mut chunk) {
            Ok(0) => {
                // What came before the close still counts: a DISCONNECT among it means no will.
                if let Some(c) = process(conn, rbuf, hold, broker, zone, control_tx, false).await {
                    return Some(c);
                }
                return Some(Close::lost("connection closed by client"));
            }
            Ok(n) => {
                rbuf.extend_from_slice(&chunk[..n]);
                read += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Some(Close::lost(format!("read failed: {e}"))),
        }
    }
}

/// Packets held back while a subscriber's backlog makes this publisher wait (see `SessionHandle::push`).
#[derive(Default)]
struct Hold {
    /// Sessions being waited for; empty when not held back.
    waiting_on: Vec<Arc<SessionHandle>>,
    /// Packets read meanwhile that must wait their turn (anything but acknowledgements and pings).
    held: VecDeque<Packet>,
    /// Read buffers reserved while held back (each read buffer may be pinned by the packets held from it).
    read_while_held: usize,
    /// When the current wait gives up (`HOLD_LIMIT` after it began).
    until: Option<Instant>,
}

impl Hold {
    fn active(&self) -> bool {
        !self.waiting_on.is_empty() || !self.held.is_empty()
    }
}

/// A publisher whose acknowledgements wait for the store stops taking packets while the store is far behind or
/// it has many acknowledgements waiting: it waits for commits instead of piling up more work. Nothing blocks
/// the thread meanwhile, so other connections go on.
fn store_holds(conn: &Conn, broker: &Broker) -> bool {
    conn.has_pending_acks() && (conn.pending_ack_count() >= PENDING_ACKS_MAX || broker.store_congested())
}

/// Decodes and handles every complete packet in `rbuf`. Returns how the connection must end, if it must.
/// `respect_hold`: false when the connection is being taken over (everything it got is processed now).
async fn process(
    conn: &mut Conn,
    rbuf: &mut BytesMut,
    hold: &mut Hold,
    broker: &Arc<Broker>,
    zone: &MqttConfig,
    control_tx: &mut Option<oneshot::Sender<Control>>,
    respect_hold: bool,
) -> Option<Close> {
    loop {
        if respect_hold && store_holds(conn, broker) {
            // The rest stays in the read buffer until the store catches up (the commit branch resumes it).
            return None;
        }
        let packet = match halyard_codec::decode(rbuf, conn.version(), conn.max_packet_size()) {
            Ok(Some(p)) => p,
            Ok(None) => return None,
            Err(e) => return Some(conn.on_decode_error(e)),
        };
        if !respect_hold {
            hold.waiting_on.clear();
        }
        if hold.active() && !Conn::passes_hold(&packet) {
            hold.held.push_back(packet);
            continue;
        }
        if let Some(c) = feed(conn, packet, hold, broker, zone, control_tx).await {
            return Some(c);
        }
        if conn.routed() >= ROUTED_PER_TURN {
            conn.reset_routed();
            tokio::task::yield_now().await;
        }
    }
}

/// Hands one packet to the state machine and carries out what it asks.
async fn feed(
    conn: &mut Conn,
    packet: Packet,
    hold: &mut Hold,
    broker: &Arc<Broker>,
    zone: &MqttConfig,
    control_tx: &mut Option<oneshot::Sender<Control>>,
) -> Option<Close> {
    match conn.handle(packet, Instant::now()) {
        Step::Continue => {}
        Step::Close(c) => return Some(c),
        Step::Attach(req) => {
            let Some(tx) = control_tx.take() else {
                return Some(Close::error(rc::PROTOCOL_ERROR, "second CONNECT"));
            };
            tracing::Span::current().record("client_id", &*req.client_id);
            // Boxed: this runs once per connection, and inlined it would enlarge every idle connection's future.
            let attached =
                Box::pin(broker.attach(&req.client_id, req.clean_start, req.expiry_interval, zone, tx, Instant::now()))
                    .await;
            conn.on_attached(req, attached, Instant::now());
        }
    }
    if conn.is_held_back() {
        Metrics::inc(&broker.metrics.backpressure_waits);
        hold.waiting_on.extend(conn.take_congested());
    }
    None
}

/// Processes held packets in order until one holds the connection back again.
async fn release(
    conn: &mut Conn,
    hold: &mut Hold,
    broker: &Arc<Broker>,
    zone: &MqttConfig,
    control_tx: &mut Option<oneshot::Sender<Control>>,
) -> Option<Close> {
    while hold.waiting_on.is_empty() {
        let Some(packet) = hold.held.pop_front() else { break };
        if let Some(c) = feed(conn, packet, hold, broker, zone, control_tx).await {
            return Some(c);
        }
    }
    None
}

/// Resolves when every session waited for has drained (or gone offline), or at `until` (`HOLD_LIMIT` after the
/// wait began): the limit breaks any cycle of connections waiting on each other, at the price of the mqueue's
/// drop policy (the session is marked stalled).
async fn drained(sessions: Vec<Arc<SessionHandle>>, broker: Arc<Broker>, until: Option<Instant>) {
    let all = async {
        for s in &sessions {
            s.drained().await;
        }
    };
    let until = until.unwrap_or_else(|| Instant::now() + HOLD_LIMIT);
    if tokio::time::timeout_at(until.into(), all).await.is_err() {
        Metrics::inc(&broker.metrics.backpressure_timeouts);
        for s in &sessions {
            if s.mark_stalled() {
                tracing::info!(
                    subscriber = &*s.client_id,
                    "subscriber not draining its queue: publishers no longer wait for it until it does (its mqueue drops the oldest when full)"
                );
            }
        }
    }
}

/// `make()`'s future when `enabled`, otherwise one that never resolves: a `select!` branch whose future costs
/// an allocation while enabled and nothing while not.
async fn when<F: std::future::Future>(enabled: bool, make: impl FnOnce() -> std::pin::Pin<Box<F>>) -> F::Output {
    if enabled {
        make().await
    } else {
        std::future::pending().await
    }
}

async fn notified(session: Option<&SessionHandle>) {
    match session {
        Some(s) => s.notified().await,
        None => std::future::pending().await,
    }
}

/// What the stream did: sent some of the output, or read some input (`Ok(0)`: the peer closed).
enum IoEvent {
    Sent(std::io::Result<usize>),
    Read(std::io::Result<usize>),
}

fn poll_io(
    io: &mut Io,
    cx: &mut std::task::Context<'_>,
    want_write: bool,
    want_read: bool,
    out: &mut BytesMut,
    rbuf: &mut BytesMut,
) -> std::task::Poll<IoEvent> {
    if want_write {
        if let std::task::Poll::Ready(r) = io.poll_send(cx, out) {
            return std::task::Poll::Ready(IoEvent::Sent(r));
        }
    }
    if want_read {
        if let std::task::Poll::Ready(r) = io.poll_read_buf(cx, rbuf, READ_CHUNK) {
            return std::task::Poll::Ready(IoEvent::Read(r));
        }
    }
    std::task::Poll::Pending
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpStream;

    /// Encodes packets as a 3.1.1 client would send them.
    fn wire(packets: &[Packet]) -> Vec<u8> {
        let mut b = BytesMut::new();
        for p in packets {
            halyard_codec::encode(p, halyard_codec::ProtocolVersion::V4, &mut b).expect("encode");
        }
        b.to_vec()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_takeover_first_processes_what_the_client_sent_before_it() {
        // [MQTT-3.1.2-10], [MQTT-3.14.4-3]: the client published, sent DISCONNECT and closed; the takeover by its
        // reconnect reaches the old connection before that connection has read those bytes (on one thread, both
        // are ready when it next runs). The publish must be routed and the DISCONNECT must discard the will.
        use halyard_codec::{Connect, LastWill, Publish, QoS, Utf8};
        use tokio::io::AsyncWriteExt;
        let broker = Broker::new(halyard_core::config::Config::default());
        let zone = Arc::new(broker.config.mqtt.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (client, server) = tokio::join!(TcpStream::connect(addr), l.accept());
        let mut client = client.expect("connect");
        let (stream, _) = server.expect("accept");
        let (_shutdown, rx) = watch::channel(false);
        let slot = OpenSlot::take(&Arc::new(std::sync::atomic::AtomicUsize::new(0)), &broker);
        let link = tokio::spawn(serve(Io::tcp(stream), Origin::default(), broker.clone(), zone.clone(), rx, slot));
        let connect = Connect {
            protocol: halyard_codec::ProtocolVersion::V4,
            clean_start: false,
            keep_alive: 0,
            client_id: Utf8::from("racer"),
            will: Some(LastWill {
                topic: Utf8::from("will/racer"),
                payload: bytes::Bytes::from_static(b"gone"),
                qos: QoS::AtMostOnce,
                retain: false,
                properties: Default::default(),
            }),
            username: None,
            password: None,
            properties: Default::default(),
            bridge: false,
        };
        client.write_all(&wire(&[Packet::Connect(Box::new(connect))])).await.expect("write");
        let mut connack = [0u8; 4];
        client.read_exact(&mut connack).await.expect("CONNACK");
        assert_eq!(connack, [0x20, 2, 0, 0]);
        let publish = Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: Utf8::from("data"),
            packet_id: None,
            properties: Default::default(),
            payload: bytes::Bytes::from_static(b"x"),
        };
        let received = Metrics::get(&broker.metrics.messages_received);
        let last = wire(&[Packet::Publish(publish), Packet::Disconnect(Default::default())]);
        client.write_all(&last).await.expect("write");
        client.shutdown().await.expect("close");
        assert_eq!(Metrics::get(&broker.metrics.messages_received), received, "the old connection has not run yet");
        // The reconnect's attach, without yielding to the old connection before its takeover request is sent.
        let (tx, _control) = oneshot::channel();
        let attached = broker.attach(&Arc::from("racer"), false, 7200, &zone, tx, Instant::now()).await;
        assert!(attached.present, "the session was resumed");
        assert_eq!(Metrics::get(&broker.metrics.messages_received), received + 1, "the PUBLISH was processed");
        assert_eq!(Metrics::get(&broker.metrics.wills_published), 0, "DISCONNECT discarded the will");
        drop(client);
        tokio::time::timeout(Duration::from_secs(5), link).await.expect("old connection ends").expect("no panic");
    }

    #[tokio::test]
    async fn connection_task_stays_small() {
        // Every idle connection is one of these futures: its size is per-connection memory.
        let broker = Broker::new(halyard_core::config::Config::default());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (client, server) = tokio::join!(TcpStream::connect(addr), l.accept());
        let _client = client.expect("connect");
        let (stream, _) = server.expect("accept");
        let (_tx, rx) = watch::channel(false);
        let slot = OpenSlot::take(&Arc::new(std::sync::atomic::AtomicUsize::new(0)), &broker);
        let fut =
            serve(Io::tcp(stream), Origin::default(), broker.clone(), Arc::new(broker.config.mqtt.clone()), rx, slot);
        let size = std::mem::size_of_val(&fut);
        eprintln!("connection future: {size} bytes; Conn: {} bytes", std::mem::size_of::<Conn>());
        // Measured 5.5 KB at first, 4 KiB of it the discard buffer of `linger` (now boxed); 1,704 bytes after that
        // and boxing the rarely used branches, the will and the parked state.
        // A regression bound, and the largest single item of the per-connection memory in docs/performance.md.
        assert!(size <= 680, "connection future grew to {size} bytes"); // 664 measured
    }

    /// Serves `io` as a listener would, with the zone's default settings; the shutdown sender is kept for the
    /// broker's life (a closed watch would end the connection).
    fn spawn_link(io: Io, peer: std::net::SocketAddr, broker: &Arc<Broker>) {
        let (shutdown, rx) = watch::channel(false);
        std::mem::forget(shutdown);
        let slot = OpenSlot::take(&Arc::new(std::sync::atomic::AtomicUsize::new(0)), broker);
        let zone = Arc::new(broker.config.mqtt.clone());
        tokio::spawn(serve(io, Origin::peer(Some(peer)), broker.clone(), zone, rx, slot));
    }

    /// Accepts one connection on `l` and serves it through the boxed `Transport` path (what TLS and WebSocket
    /// connections run on).
    async fn serve_boxed(l: &tokio::net::TcpListener, broker: &Arc<Broker>) -> TcpStream {
        let addr = l.local_addr().expect("addr");
        let (client, server) = tokio::join!(TcpStream::connect(addr), l.accept());
        let (stream, peer) = server.expect("accept");
        spawn_link(Io::stream(Box::new(crate::io::PlainTransport(stream))), peer, broker);
        client.expect("connect")
    }

    /// Reads until `n` packets have been decoded.
    async fn read_packets(s: &mut TcpStream, buf: &mut BytesMut, n: usize) -> Vec<Packet> {
        let mut got = Vec::new();
        while got.len() < n {
            while let Some(p) =
                halyard_codec::decode(buf, halyard_codec::ProtocolVersion::V4, usize::MAX).expect("decode")
            {
                got.push(p);
            }
            if got.len() >= n {
                break;
            }
            let read = tokio::time::timeout(Duration::from_secs(10), s.read_buf(buf)).await.expect("in time");
            assert!(read.expect("read") > 0, "closed after {} packets", got.len());
        }
        got
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_boxed_transport_path_carries_a_qos1_stream_both_ways() {
        // Large payloads, written in one go by the publisher: reads and writes of the boxed path stop part-way
        // and resume (partial writes, buffered reads), and every message arrives once, in order, acknowledged.
        use halyard_codec::{PubResp, Publish, QoS, Subscribe, SubscriptionOptions, Utf8};
        use tokio::io::AsyncWriteExt;
        let broker = Broker::new(halyard_core::config::Config::default());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let connect = |id: &str| crate::protocol::tests::connect(halyard_codec::ProtocolVersion::V4, id, 0);
        let mut sub = serve_boxed(&l, &broker).await;
        let mut sbuf = BytesMut::new();
        let subscribe = Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Default::default(),
            filters: vec![(Utf8::from("big/#"), SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() })],
        });
        sub.write_all(&wire(&[connect("bsub"), subscribe])).await.expect("write");
        let acks = read_packets(&mut sub, &mut sbuf, 2).await;
        assert!(matches!(acks.as_slice(), [Packet::ConnAck(_), Packet::SubAck(_)]), "{acks:?}");

        let mut publ = serve_boxed(&l, &broker).await;
        let mut pbuf = BytesMut::new();
        const N: u16 = 300;
        let payload = bytes::Bytes::from(vec![7u8; 20_000]);
        let mut packets = vec![connect("bpub")];
        for i in 1..=N {
            packets.push(Packet::Publish(Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: Utf8::from(format!("big/{i}")),
                packet_id: Some(i),
                properties: Default::default(),
                payload: payload.clone(),
            }));
        }
        let bytes = wire(&packets);
        let writer = tokio::spawn(async move {
            publ.write_all(&bytes).await.expect("write");
            publ
        });
        let mut received = 0u16;
        while received < N {
            let got = read_packets(&mut sub, &mut sbuf, 1).await;
            for p in got {
                let Packet::Publish(p) = p else { panic!("{p:?}") };
                received += 1;
                assert_eq!(&*p.topic, format!("big/{received}"), "in order");
                assert_eq!(p.payload.len(), 20_000);
                let ack = Packet::PubAck(PubResp {
                    packet_id: p.packet_id.expect("id"),
                    reason_code: 0,
                    properties: Default::default(),
                });
                sub.write_all(&wire(&[ack])).await.expect("ack");
            }
        }
        let mut publ = writer.await.expect("writer");
        let got = read_packets(&mut publ, &mut pbuf, usize::from(N) + 1).await;
        assert!(matches!(got[0], Packet::ConnAck(_)));
        for (i, p) in got[1..].iter().enumerate() {
            assert!(matches!(p, Packet::PubAck(a) if usize::from(a.packet_id) == i + 1), "{p:?}");
        }
    }

    /// A transport over a socket whose readiness is spent, holding a CONNECT it decoded already (as a TLS or
    /// WebSocket handshake may leave bytes behind); with `wake_first`, its first read is `Pending` after waking
    /// the task itself (a stream waiting on something other than the socket's read side: a close frame's write,
    /// a spurious "would block"), so the wake-up only reaches the task if the read was polled with its context.
    struct Prefixed {
        socket: TcpStream,
        held: BytesMut,
        wake_first: bool,
    }

    impl tokio::io::AsyncRead for Prefixed {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if std::mem::take(&mut self.wake_first) {
                cx.waker().wake_by_ref();
                return std::task::Poll::Pending;
            }
            if !self.held.is_empty() {
                let n = self.held.len().min(buf.remaining());
                let b = self.held.split_to(n);
                buf.put_slice(&b);
                return std::task::Poll::Ready(Ok(()));
            }
            std::pin::Pin::new(&mut self.socket).poll_read(cx, buf)
        }
    }

    impl tokio::io::AsyncWrite for Prefixed {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            b: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::pin::Pin::new(&mut self.socket).poll_write(cx, b)
        }
        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.socket).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.socket).poll_shutdown(cx)
        }
    }

    impl crate::io::Transport for Prefixed {
        fn socket(&self) -> &TcpStream {
            &self.socket
        }
    }

    #[tokio::test]
    async fn bytes_a_stream_holds_are_read_and_its_own_wake_ups_are_not_lost() {
        for wake_first in [false, true] {
            let broker = Broker::new(halyard_core::config::Config::default());
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = l.local_addr().expect("addr");
            let (client, server) = tokio::join!(TcpStream::connect(addr), l.accept());
            let mut client = client.expect("connect");
            let (socket, peer) = server.expect("accept");
            let connect = crate::protocol::tests::connect(halyard_codec::ProtocolVersion::V4, "held", 0);
            let mut held = BytesMut::new();
            halyard_codec::encode(&connect, halyard_codec::ProtocolVersion::V4, &mut held).expect("encode");
            // The handshake's last socket read said "would block": the socket's readiness is spent.
            assert!(socket.try_read(&mut [0u8; 8]).is_err());
            spawn_link(Io::stream(Box::new(Prefixed { socket, held, wake_first })), peer, &broker);
            let mut connack = [0u8; 4];
            let r = tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut connack)).await;
            assert!(r.is_ok(), "no CONNACK (wake_first {wake_first}): the CONNECT the stream held was never read");
            assert_eq!(connack, [0x20, 2, 0, 0]);
        }
    }
}
