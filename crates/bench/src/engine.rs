//! The per-client loops. Each client is one task doing non-blocking I/O on its own socket: it waits for
//! readiness, reads everything available into a large buffer and decodes every packet in it, and encodes many
//! PUBLISHes (or acks) into one buffer per write.

use crate::client::Conn;
use crate::hist::Histogram;
use crate::payload::{Header, PublishTemplate};
use anyhow::{bail, Result};
use halyard_codec::{Packet, PubResp, QoS};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{Interest, Ready};
use tokio::sync::watch;
use tokio::time::{sleep_until, Instant};

/// Run phases, broadcast to every client through a `watch` channel.
pub const RUN: u8 = 0;
/// Publishers stop producing and wait for their outstanding acks; subscribers keep receiving.
pub const STOP: u8 = 1;
/// Everyone sends DISCONNECT and returns its results. A dropped sender means the same.
pub const CLOSE: u8 = 2;

/// Stop encoding more while this much is still waiting to be written.
const WBUF_HIGH: usize = 256 * 1024;
/// Encode at most this many bytes of PUBLISH per round, so acks get read between rounds.
const BATCH_BYTES: usize = 64 * 1024;

static START: OnceLock<std::time::Instant> = OnceLock::new();

/// Nanoseconds since the process-wide start `Instant` (the clock of the payload header).
pub fn now_ns() -> u64 {
    START.get_or_init(std::time::Instant::now).elapsed().as_nanos() as u64
}

/// Live counters for the progress line and the drain condition (clients add to them once per loop round).
#[derive(Debug, Default)]
pub struct Shared {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub received: AtomicU64,
    pub unique: AtomicU64,
    pub inflight: AtomicI64,
    /// Publishers that stopped producing (count reached or phase STOP).
    pub pubs_done: AtomicUsize,
    /// Subscribers that received `--count` messages.
    pub subs_done: AtomicUsize,
    pub established: AtomicU64,
    pub failed: AtomicU64,
    /// Connections the broker closed before we did.
    pub dropped: AtomicU64,
}

enum Event {
    Io(std::io::Result<Ready>),
    Timer,
    Phase,
}

/// Waits for socket readiness (read, and write when something is buffered), a timer, or a phase change.
async fn wait(conn: &Conn, wake: Option<Instant>, phase: &mut watch::Receiver<u8>) -> Event {
    let interest = if conn.wbuf.is_empty() { Interest::READABLE } else { Interest::READABLE | Interest::WRITABLE };
    let far = Instant::now() + Duration::from_secs(3600);
    tokio::select! {
        r = conn.stream.ready(interest) => Event::Io(r),
        _ = sleep_until(wake.unwrap_or(far)), if wake.is_some() => Event::Timer,
        _ = phase.changed() => Event::Phase,
    }
}

fn phase_now(phase: &mut watch::Receiver<u8>) -> u8 {
    // A closed channel (the controller gave up) means CLOSE.
    if phase.has_changed().is_err() {
        CLOSE
    } else {
        // Marks the value seen, so `changed()` in `wait` only fires on the next change.
        *phase.borrow_and_update()
    }
}

/// Packet ids in use: one bit per id.
struct PidSet(Vec<u64>);

impl PidSet {
    fn new() -> PidSet {
        PidSet(vec![0; 1024])
    }
    fn test(&self, pid: u16) -> bool {
        self.0[pid as usize / 64] & (1 << (pid % 64)) != 0
    }
    fn set(&mut self, pid: u16) {
        self.0[pid as usize / 64] |= 1 << (pid % 64);
    }
    /// Clears `pid`; true if it was set.
    fn clear(&mut self, pid: u16) -> bool {
        let was = self.test(pid);
        self.0[pid as usize / 64] &= !(1 << (pid % 64));
        was
    }
}

pub struct PubCfg {
    pub index: u32,
    pub topic: String,
    pub qos: QoS,
    pub size: usize,
    /// Messages per second; 0 = unlimited.
    pub rate: f64,
    pub inflight: usize,
    pub count: Option<u64>,
    /// When this publisher's message 0 is due (publishers are staggered over one rate period).
    pub t0: Instant,
}

#[derive(Debug, Default, Clone)]
pub struct PubResult {
    pub index: u32,
    pub sent: u64,
    /// PUBACK / PUBREC with a success code (QoS 0: equal to `sent`).
    pub acked: u64,
    /// PUBACK / PUBREC with a reason code >= 0x80 (v5).
    pub ack_failures: u64,
    /// Acks for ids we did not have outstanding, and packets a publisher should not get.
    pub unexpected: u64,
    /// The inflight window used (0 for QoS 0).
    pub window: usize,
    /// Messages still unacknowledged when the publisher stopped.
    pub unacked_at_end: usize,
    pub error: Option<String>,
}

struct Publisher {
    cfg: PubCfg,
    template: PublishTemplate,
    window: usize,
    in_use: PidSet,
    /// QoS 2: PUBREC received, PUBCOMP outstanding.
    released: PidSet,
    next_pid: u16,
    inflight: usize,
    seq: u32,
    r: PubResult,
    pushed: (u64, u64, i64),
}

pub async fn run_publisher(
    mut conn: Conn,
    cfg: PubCfg,
    shared: Arc<Shared>,
    mut phase: watch::Receiver<u8>,
) -> PubResult {
    let index = cfg.index;
    let template = match PublishTemplate::new(&cfg.topic, cfg.qos, cfg.size, conn.version) {
        Ok(t) => t,
        Err(e) => return PubResult { index, error: Some(format!("publisher {index}: {e:#}")), ..Default::default() },
    };
    let window = match cfg.qos {
        QoS::AtMostOnce => usize::MAX,
        _ => cfg.inflight.clamp(1, 65535).min(conn.receive_maximum.max(1) as usize),
    };
    let mut p = Publisher {
        r: PubResult { index, window: if cfg.qos == QoS::AtMostOnce { 0 } else { window }, ..Default::default() },
        cfg,
        template,
        window,
        in_use: PidSet::new(),
        released: PidSet::new(),
        next_pid: 0,
        inflight: 0,
        seq: 0,
        pushed: (0, 0, 0),
    };
    let res = p.run(&mut conn, &shared, &mut phase).await;
    p.push(&shared);
    shared.inflight.fetch_sub(p.pushed.2, Relaxed);
    p.r.unacked_at_end = p.inflight;
    if let Err(e) = res {
        shared.dropped.fetch_add(1, Relaxed);
        p.r.error = Some(format!("publisher {index}: {e:#}"));
    }
    conn.close().await;
    p.r
}

impl Publisher {
    fn qos0(&self) -> bool {
        self.cfg.qos == QoS::AtMostOnce
    }

    /// Adds what changed since the last call to the shared counters.
    fn push(&mut self, shared: &Shared) {
        let (s, a, i) = self.pushed;
        if self.r.sent != s {
            shared.sent.fetch_add(self.r.sent - s, Relaxed);
        }
        if self.r.acked != a {
            shared.acked.fetch_add(self.r.acked - a, Relaxed);
        }
        let inflight = self.inflight as i64;
        if inflight != i {
            shared.inflight.fetch_add(inflight - i, Relaxed);
        }
        self.pushed = (self.r.sent, self.r.acked, inflight);
    }

    /// When the next message is due under `--rate` (None: unlimited).
    fn next_due(&self) -> Option<Instant> {
        (self.cfg.rate > 0.0).then(|| self.cfg.t0 + Duration::from_secs_f64(self.r.sent as f64 / self.cfg.rate))
    }

    /// How many messages may be encoded now.
    fn allowed(&self, now: Instant) -> u64 {
        let mut n = (BATCH_BYTES / self.template.len()).max(1) as u64;
        if !self.qos0() {
            n = n.min((self.window - self.inflight) as u64);
        }
        if let Some(c) = self.cfg.count {
            n = n.min(c.saturating_sub(self.r.sent));
        }
        if self.cfg.rate > 0.0 {
            let due = if now < self.cfg.t0 {
                0
            } else {
                (now.duration_since(self.cfg.t0).as_secs_f64() * self.cfg.rate) as u64 + 1
            };
            n = n.min(due.saturating_sub(self.r.sent));
        }
        n
    }

    fn alloc_pid(&mut self) -> u16 {
        loop {
            self.next_pid = self.next_pid.wrapping_add(1);
            if self.next_pid != 0 && !self.in_use.test(self.next_pid) {
                self.in_use.set(self.next_pid);
                return self.next_pid;
            }
        }
    }

    /// Encodes up to `n` PUBLISHes. `--write coalesce`: all of them, written together by the caller's flush.
    /// `--write each`: each written at once in its own system call, stopping early when the socket does not
    /// take more (the rest is produced when it is writable again).
    fn produce(&mut self, conn: &mut Conn, n: u64) -> std::io::Result<()> {
        let each = conn.write_each;
        let mut ts = now_ns();
        conn.wbuf.reserve(if each { 1 } else { n as usize } * self.template.len());
        let mut made = 0;
        while made < n {
            let pid = if self.qos0() { 0 } else { self.alloc_pid() };
            if each && made > 0 {
                ts = now_ns();
            }
            let h = Header { sent_ns: ts, publisher: self.cfg.index, seq: self.seq };
            self.template.put(&mut conn.wbuf, pid, h);
            self.seq = self.seq.wrapping_add(1);
            made += 1;
            if each && !conn.packet_done()? {
                break;
            }
        }
        self.r.sent += made;
        if self.qos0() {
            self.r.acked += made;
        } else {
            self.inflight += made as usize;
        }
        Ok(())
    }

    fn on_packets(&mut self, conn: &mut Conn) -> Result<()> {
        while let Some(p) = conn.decode()? {
            match p {
                Packet::PubAck(a) if self.cfg.qos == QoS::AtLeastOnce => {
                    if self.in_use.clear(a.packet_id) {
                        self.inflight -= 1;
                        if a.reason_code < 0x80 {
                            self.r.acked += 1;
                        } else {
                            self.r.ack_failures += 1;
                        }
                    } else {
                        self.r.unexpected += 1;
                    }
                }
                Packet::PubRec(a) if self.cfg.qos == QoS::ExactlyOnce => {
                    let pid = a.packet_id;
                    if self.released.test(pid) {
                        // A repeated PUBREC: answer PUBREL again.
                        conn.send(&Packet::PubRel(PubResp::new(pid)))?;
                        conn.packet_done()?;
                    } else if self.in_use.test(pid) {
                        if a.reason_code < 0x80 {
                            self.r.acked += 1;
                            self.released.set(pid);
                            conn.send(&Packet::PubRel(PubResp::new(pid)))?;
                            conn.packet_done()?;
                        } else {
                            // A failed PUBREC ends the exchange [MQTT-4.3.3].
                            self.r.ack_failures += 1;
                            self.in_use.clear(pid);
                            self.inflight -= 1;
                        }
                    } else {
                        self.r.unexpected += 1;
                    }
                }
                Packet::PubComp(a) if self.cfg.qos == QoS::ExactlyOnce => {
                    if self.released.clear(a.packet_id) {
                        self.in_use.clear(a.packet_id);
                        self.inflight -= 1;
                    } else {
                        self.r.unexpected += 1;
                    }
                }
                Packet::PingResp => {}
                Packet::Disconnect(d) => bail!("the broker sent DISCONNECT 0x{:02X}", d.reason_code),
                Packet::Publish(p) => {
                    self.r.unexpected += 1;
                    match (p.qos, p.packet_id) {
                        (QoS::AtLeastOnce, Some(id)) => conn.send(&Packet::PubAck(PubResp::new(id)))?,
                        (QoS::ExactlyOnce, Some(id)) => conn.send(&Packet::PubRec(PubResp::new(id)))?,
                        _ => {}
                    }
                }
                Packet::PubRel(r) => conn.send(&Packet::PubComp(PubResp::new(r.packet_id)))?,
                _ => self.r.unexpected += 1,
            }
        }
        Ok(())
    }

    async fn run(&mut self, conn: &mut Conn, shared: &Shared, phase: &mut watch::Receiver<u8>) -> Result<()> {
        let mut done_sending = false;
        let keepalive = conn.keepalive;
        let mut next_ping = Instant::now() + keepalive;
        loop {
            let ph = phase_now(phase);
            if ph >= CLOSE {
                return Ok(());
            }
            let count_done = self.cfg.count.is_some_and(|c| self.r.sent >= c);
            let stopping = ph >= STOP || count_done;
            if stopping && !done_sending {
                done_sending = true;
                shared.pubs_done.fetch_add(1, Relaxed);
            }
            if stopping && self.inflight == 0 && conn.wbuf.is_empty() {
                return Ok(());
            }
            let now = Instant::now();
            if !keepalive.is_zero() && now >= next_ping {
                conn.send(&Packet::PingReq)?;
                next_ping = now + keepalive;
            }
            if !stopping && conn.wbuf.len() < WBUF_HIGH {
                let n = self.allowed(now);
                if n > 0 {
                    self.produce(conn, n)?;
                }
            }
            conn.try_flush()?;
            self.push(shared);

            // Produce again at once if nothing holds us back; otherwise sleep until something changes.
            let window_open = self.qos0() || self.inflight < self.window;
            let can_produce = !stopping && window_open && conn.wbuf.len() < WBUF_HIGH;
            let due = self.next_due();
            if can_produce && due.is_none_or(|d| d <= Instant::now()) {
                if conn.try_fill()? {
                    self.on_packets(conn)?;
                }
                tokio::task::yield_now().await;
                continue;
            }
            let mut wake = if can_produce { due } else { None };
            if !keepalive.is_zero() {
                wake = Some(wake.map_or(next_ping, |w| w.min(next_ping)));
            }
            match wait(conn, wake, phase).await {
                Event::Io(ready) => {
                    let ready = ready?;
                    if (ready.is_readable() || ready.is_read_closed()) && conn.try_fill()? {
                        self.on_packets(conn)?;
                    }
                    if ready.is_writable() {
                        conn.try_flush()?;
                    }
                }
                Event::Timer | Event::Phase => {}
            }
        }
    }
}

/// What one subscriber saw from one publisher.
#[derive(Debug, Default, Clone)]
pub struct Track {
    pub received: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    max_seq: Option<u32>,
    seen: Vec<u64>,
}

/// Sequence numbers above this are not from a bench publisher of a sane run (the bitset would be huge).
const MAX_SEQ: u32 = 1 << 28;
/// Publisher indices above this likewise.
pub const MAX_PUBLISHER: u32 = 1 << 20;

impl Track {
    /// Records one delivery of `seq`; true if it is the first.
    pub fn on(&mut self, seq: u32) -> bool {
        self.received += 1;
        let (w, bit) = (seq as usize / 64, 1u64 << (seq % 64));
        if w >= self.seen.len() {
            self.seen.resize((w + 1).max(self.seen.len() * 2), 0);
        }
        if self.seen[w] & bit != 0 {
            self.duplicates += 1;
            return false;
        }
        self.seen[w] |= bit;
        self.unique += 1;
        match self.max_seq {
            Some(m) if seq < m => self.out_of_order += 1,
            _ => self.max_seq = Some(seq),
        }
        true
    }
}

pub struct SubCfg {
    pub index: usize,
    /// Stop counting as "done" after this many messages (`sub --count`).
    pub count: Option<u64>,
    /// Record latency (only when publishers share our clock).
    pub latency: bool,
}

#[derive(Debug, Default, Clone)]
pub struct SubResult {
    /// Indexed by publisher index.
    pub tracks: Vec<Track>,
    /// Latency in microseconds.
    pub hist: Histogram,
    pub received: u64,
    pub unique: u64,
    /// PUBLISH packets whose payload had no bench header.
    pub malformed: u64,
    /// now_ns() of the last PUBLISH received.
    pub last_recv_ns: u64,
    pub error: Option<String>,
}

struct Subscriber {
    cfg: SubCfg,
    r: SubResult,
    pushed: (u64, u64),
}

/// Runs a subscriber (or, with no subscription, an idle connection that only keeps alive) until CLOSE.
pub async fn run_subscriber(
    mut conn: Conn,
    cfg: SubCfg,
    shared: Arc<Shared>,
    mut phase: watch::Receiver<u8>,
) -> SubResult {
    let index = cfg.index;
    let mut s = Subscriber { r: SubResult::default(), cfg, pushed: (0, 0) };
    let res = s.run(&mut conn, &shared, &mut phase).await;
    s.push(&shared);
    if let Err(e) = res {
        shared.dropped.fetch_add(1, Relaxed);
        s.r.error = Some(format!("subscriber {index}: {e:#}"));
    }
    conn.close().await;
    s.r
}

impl Subscriber {
    fn push(&mut self, shared: &Shared) {
        let (r, u) = self.pushed;
        if self.r.received != r {
            shared.received.fetch_add(self.r.received - r, Relaxed);
        }
        if self.r.unique != u {
            shared.unique.fetch_add(self.r.unique - u, Relaxed);
        }
        self.pushed = (self.r.received, self.r.unique);
    }

    fn on_packets(&mut self, conn: &mut Conn, now: u64) -> Result<()> {
        while let Some(p) = conn.decode()? {
            match p {
                Packet::Publish(p) => {
                    match (p.qos, p.packet_id) {
                        (QoS::AtLeastOnce, Some(id)) => conn.send(&Packet::PubAck(PubResp::new(id)))?,
                        (QoS::ExactlyOnce, Some(id)) => conn.send(&Packet::PubRec(PubResp::new(id)))?,
                        _ => {}
                    }
                    if p.qos != QoS::AtMostOnce {
                        conn.packet_done()?;
                    }
                    self.r.received += 1;
                    self.r.last_recv_ns = now;
                    let Some(h) = Header::read(&p.payload) else {
                        self.r.malformed += 1;
                        continue;
                    };
                    if h.publisher >= MAX_PUBLISHER || h.seq >= MAX_SEQ {
                        self.r.malformed += 1;
                        continue;
                    }
                    let i = h.publisher as usize;
                    if i >= self.r.tracks.len() {
                        self.r.tracks.resize_with(i + 1, Track::default);
                    }
                    if self.r.tracks[i].on(h.seq) {
                        self.r.unique += 1;
                    }
                    if self.cfg.latency && h.sent_ns <= now {
                        self.r.hist.record((now - h.sent_ns) / 1000);
                    }
                }
                Packet::PubRel(r) => {
                    conn.send(&Packet::PubComp(PubResp::new(r.packet_id)))?;
                    conn.packet_done()?;
                }
                Packet::Disconnect(d) => bail!("the broker sent DISCONNECT 0x{:02X}", d.reason_code),
                _ => {}
            }
        }
        Ok(())
    }

    async fn run(&mut self, conn: &mut Conn, shared: &Shared, phase: &mut watch::Receiver<u8>) -> Result<()> {
        let keepalive = conn.keepalive;
        let mut next_ping = Instant::now() + keepalive;
        let mut done = false;
        loop {
            if !done && self.cfg.count.is_some_and(|c| self.r.received >= c) {
                done = true;
                shared.subs_done.fetch_add(1, Relaxed);
            }
            if !keepalive.is_zero() && Instant::now() >= next_ping {
                conn.send(&Packet::PingReq)?;
                next_ping = Instant::now() + keepalive;
            }
            conn.try_flush()?;
            self.push(shared);
            if phase_now(phase) >= CLOSE {
                return Ok(());
            }
            let wake = (!keepalive.is_zero()).then_some(next_ping);
            match wait(conn, wake, phase).await {
                Event::Io(ready) => {
                    let ready = ready?;
                    if (ready.is_readable() || ready.is_read_closed()) && conn.try_fill()? {
                        // One timestamp per read: when these bytes reached us.
                        self.on_packets(conn, now_ns())?;
                    }
                    if ready.is_writable() {
                        conn.try_flush()?;
                    }
                }
                Event::Timer | Event::Phase => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn track_counts_duplicates_and_reordering() {
        let mut t = Track::default();
        for seq in [0, 1, 2, 5, 3, 3, 4, 6, 0, 200] {
            t.on(seq);
        }
        assert_eq!(t.received, 10);
        assert_eq!(t.unique, 8);
        assert_eq!(t.duplicates, 2);
        // 3 and 4 arrived after 5.
        assert_eq!(t.out_of_order, 2);
    }

    #[test]
    fn pid_set() {
        let mut s = PidSet::new();
        assert!(!s.test(65535));
        s.set(65535);
        s.set(1);
        assert!(s.test(65535) && s.test(1) && !s.test(2));
        assert!(s.clear(65535));
        assert!(!s.clear(65535));
    }
}
