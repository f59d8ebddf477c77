//! A full disk, end to end: the broker's data directory sits on a filesystem that really fills up while a QoS 1
//! publisher streams messages for an offline persistent subscriber.
//!
//! What is checked (issue 4: "A full disk makes the broker refuse new QoS 1/2 work with the v5 reason code 0x97
//! (Quota exceeded) or a disconnect for v3, not crash", and "never a lost acknowledged message"):
//! - the broker process survives the failed commit;
//! - MQTT 5: new QoS 1 and QoS 2 publishes are refused with reason code 0x97 Quota exceeded (PUBACK / PUBREC);
//! - MQTT 3.1.1, which has no negative acknowledgement: a QoS 1 publisher is disconnected, never acknowledged
//!   (docs/architecture.md, "A store that fails a commit refuses new work: QoS 1/2 publishes get 0x97 (v5) or a
//!   disconnect (v3)");
//! - QoS 0 still flows to an online subscriber, even when the message also matches the offline persistent
//!   session whose queue cannot be written;
//! - the log names the store file and the problem;
//! - after a restart with space freed, the persistent session is present and every message whose PUBACK was a
//!   success reaches it, and `halyard ctl store check` finds the file consistent.
//!
//! The small filesystem is a 4 MiB tmpfs (needs root / CAP_SYS_ADMIN, as in CI). Where mounting is not allowed,
//! the broker instead runs with RLIMIT_FSIZE at the same size (set it with FULL_DISK_TEST_FORCE_RLIMIT=1 to try
//! that path as root): writes past the limit then fail with EFBIG, which `halyard start` turns into an I/O error
//! by ignoring SIGXFSZ. Set FULL_DISK_TEST_LOG=1 to echo the broker's log.

use bytes::BytesMut;
use halyard_codec::{
    Connect, Packet, Properties, ProtocolVersion, PubResp, Publish, QoS, Subscribe, SubscriptionOptions, Utf8,
};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_halyard");
/// The size of the small filesystem (or the file-size limit).
const SMALL: u64 = 4 * 1024 * 1024;
/// Payload per message: a few KiB, so the disk fills after a few hundred messages.
const PAYLOAD: usize = 8 * 1024;
/// MQTT 5 reason code 0x97 Quota exceeded.
const QUOTA_EXCEEDED: u8 = 0x97;
const WAIT: Duration = Duration::from_secs(10);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// How the disk is made small.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Limit {
    Tmpfs,
    Rlimit,
    /// The restart after space was freed.
    None,
}

/// The data directory's filesystem: a tmpfs mounted on a fresh directory, unmounted (and the directory removed)
/// on drop, also when the test fails. Without permission to mount, a plain directory and `Limit::Rlimit`.
struct Disk {
    dir: PathBuf,
    limit: Limit,
}

impl Disk {
    fn new() -> Disk {
        let dir = std::env::temp_dir().join(format!("halyard-full-disk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create mount point");
        let forced = std::env::var_os("FULL_DISK_TEST_FORCE_RLIMIT").is_some();
        let mounted = !forced
            && Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={SMALL}"), "tmpfs"])
                .arg(&dir)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        let limit = if mounted { Limit::Tmpfs } else { Limit::Rlimit };
        eprintln!("full_disk: data directory {} limited by {limit:?}", dir.display());
        Disk { dir, limit }
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Frees space without touching the data: a bigger tmpfs, or (RLIMIT) simply no limit at the next start.
    fn grow(&self) -> Limit {
        if self.limit == Limit::Tmpfs {
            let ok = Command::new("mount")
                .args(["-o", "remount,size=64m"])
                .arg(&self.dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "remount the tmpfs with 64 MiB");
        }
        Limit::None
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if self.limit == Limit::Tmpfs {
            let ok = Command::new("umount").arg(&self.dir).status().is_ok_and(|s| s.success());
            if !ok {
                // Still busy (a broker not yet reaped): detach it so nothing stays mounted.
                let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The broker's log lines, and a way to wait for one.
#[derive(Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    cv: Condvar,
}

impl Log {
    /// Waits (bounded) for a line that satisfies `f`; returns it.
    fn wait_for(&self, f: impl Fn(&str) -> bool) -> Option<String> {
        let lines = self.lines.lock().expect("log lock");
        let (lines, _) = self.cv.wait_timeout_while(lines, WAIT, |l| !l.iter().any(|x| f(x))).expect("log lock");
        lines.iter().find(|x| f(x)).cloned()
    }

    fn text(&self) -> String {
        self.lines.lock().expect("log lock").join("\n")
    }
}

/// A broker process, killed on drop.
struct Broker {
    child: Child,
    port: u16,
    log: Arc<Log>,
}

impl Broker {
    fn start(data: &Path, limit: Limit) -> Broker {
        let port = free_port();
        let mut cmd = Command::new(BIN);
        cmd.arg("start")
            .env("HALYARD_LISTENERS__TCP__DEFAULT__BIND", format!("127.0.0.1:{port}"))
            .env("HALYARD_NODE__DATA_DIR", data)
            // Far above what fits on the disk: no message may leave the offline queue by the
            // "drop the oldest when full" rule, so every acknowledged one must come back.
            .env("HALYARD_MQTT__MAX_MQUEUE_LEN", "100000")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if limit == Limit::Rlimit {
            // SAFETY: between fork and exec only setrlimit, which is async-signal-safe, runs.
            unsafe {
                cmd.pre_exec(|| {
                    let lim = libc::rlimit { rlim_cur: SMALL as libc::rlim_t, rlim_max: SMALL as libc::rlim_t };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("spawn halyard");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Log::default());
        let l = log.clone();
        let echo = std::env::var_os("FULL_DISK_TEST_LOG").is_some();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("broker: {line}");
                }
                l.lines.lock().expect("log lock").push(line);
                l.cv.notify_all();
            }
        });
        let b = Broker { child, port, log };
        assert!(b.log.wait_for(|l| l.contains("halyard started")).is_some(), "broker starts: {}", b.log.text());
        b
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then wait (bounded) for the exit.
    fn stop(mut self) -> ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            assert!(Instant::now() < deadline, "broker did not exit within {WAIT:?} of SIGTERM: {}", self.log.text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking MQTT client on our codec, v3.1.1 or v5.
struct Client {
    s: TcpStream,
    buf: BytesMut,
    version: ProtocolVersion,
}

impl Client {
    /// Connects; `expiry` is the v5 Session Expiry Interval (v3.1.1: clean session = !persistent).
    fn connect(port: u16, version: ProtocolVersion, id: &str, clean: bool, expiry: u32) -> (Client, bool) {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(WAIT)).expect("read timeout");
        let mut c = Client { s, buf: BytesMut::new(), version };
        let properties = Properties {
            session_expiry_interval: (version == ProtocolVersion::V5 && expiry > 0).then_some(expiry),
            ..Default::default()
        };
        c.send(&Packet::Connect(Box::new(Connect {
            protocol: version,
            clean_start: clean,
            keep_alive: 60,
            client_id: Utf8::from(id),
            will: None,
            username: None,
            password: None,
            properties: Box::new(properties),
        })))
        .expect("send CONNECT");
        match c.recv() {
            Some(Packet::ConnAck(a)) if a.reason_code == 0 => (c, a.session_present),
            other => panic!("{id}: CONNACK expected, got {other:?}"),
        }
    }

    fn send(&mut self, p: &Packet) -> std::io::Result<()> {
        let mut b = BytesMut::new();
        halyard_codec::encode(p, self.version, &mut b).expect("encode");
        self.s.write_all(&b)
    }

    /// The next packet; `None` when the connection closed (or the read timed out).
    fn recv(&mut self) -> Option<Packet> {
        loop {
            if let Some(p) = halyard_codec::decode(&mut self.buf, self.version, usize::MAX).expect("decode") {
                return Some(p);
            }
            let mut chunk = [0u8; 16384];
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn subscribe(&mut self, filter: &str, qos: QoS) {
        let s = Subscribe {
            packet_id: 1,
            properties: Default::default(),
            filters: vec![(Utf8::from(filter), SubscriptionOptions { qos, ..Default::default() })],
        };
        self.send(&Packet::Subscribe(s)).expect("send SUBSCRIBE");
        match self.recv() {
            Some(Packet::SubAck(a)) => assert_eq!(a.reason_codes, [qos as u8], "SUBACK grants {qos:?}"),
            other => panic!("SUBACK expected, got {other:?}"),
        }
    }

    fn publish(&mut self, topic: &str, payload: Vec<u8>, qos: QoS, pid: u16) -> std::io::Result<()> {
        self.send(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain: false,
            topic: Utf8::from(topic),
            packet_id: (qos != QoS::AtMostOnce).then_some(pid),
            properties: Default::default(),
            payload: payload.into(),
        }))
    }
}

/// A message payload: its sequence number, then filler up to `PAYLOAD` bytes.
fn payload(seq: u32) -> Vec<u8> {
    let mut p = vec![0xA5; PAYLOAD];
    p[..4].copy_from_slice(&seq.to_be_bytes());
    p
}

/// How a QoS 1 publish ended.
#[derive(Debug)]
enum Outcome {
    Acked(u8),
    Refused(u8),
    /// DISCONNECT with this reason code (v5), or the connection simply closed (`None`).
    Disconnected(Option<u8>),
}

fn publish_qos1(c: &mut Client, seq: u32, pid: u16) -> Outcome {
    if c.publish("fd/q", payload(seq), QoS::AtLeastOnce, pid).is_err() {
        return Outcome::Disconnected(None);
    }
    match c.recv() {
        Some(Packet::PubAck(a)) if a.packet_id == pid && a.reason_code < 0x80 => Outcome::Acked(a.reason_code),
        Some(Packet::PubAck(a)) if a.packet_id == pid => Outcome::Refused(a.reason_code),
        Some(Packet::Disconnect(d)) => Outcome::Disconnected(Some(d.reason_code)),
        None => Outcome::Disconnected(None),
        Some(other) => panic!("PUBACK for {pid} expected, got {other:?}"),
    }
}

/// Issue 4: full disk → 0x97 (v5) / disconnect (v3), broker alive, QoS 0 flowing, no acknowledged message lost.
#[test]
fn a_full_disk_refuses_qos1_and_2_with_0x97_or_disconnect_and_loses_no_acknowledged_message() {
    let started = Instant::now();
    let disk = Disk::new();
    let data = disk.data();
    let store_file = data.join("halyard.redb");
    let mut b = Broker::start(&data, disk.limit);
    let v5 = ProtocolVersion::V5;

    // A persistent QoS 1 subscriber, then offline: everything for it is queued in the store.
    let (mut sub, _) = Client::connect(b.port, v5, "fd-sub", false, 3600);
    sub.subscribe("fd/#", QoS::AtLeastOnce);
    drop(sub);

    // Publish until the store refuses. A publish in flight when the commit fails may instead end its
    // connection (its acknowledgement waited for a commit that will never come): reconnect and go on.
    let mut acked = BTreeSet::new();
    let mut disconnects = Vec::new();
    let (mut p, _) = Client::connect(b.port, v5, "fd-pub", true, 0);
    let deadline = Instant::now() + WAIT;
    let mut seq = 0u32;
    let refused = loop {
        assert!(Instant::now() < deadline, "no 0x97 after {seq} publishes ({} acknowledged)", acked.len());
        seq += 1;
        match publish_qos1(&mut p, seq, (seq % 60000 + 1) as u16) {
            Outcome::Acked(code) => {
                assert!(code == 0x00 || code == 0x10, "success PUBACK, got {code:#04x}");
                acked.insert(seq);
            }
            Outcome::Refused(code) => break code,
            Outcome::Disconnected(code) => {
                if let Ok(Some(status)) = b.child.try_wait() {
                    panic!("the broker died on the full disk ({status}): {}", b.log.text());
                }
                disconnects.push(code);
                assert!(
                    code.is_none() || code == Some(QUOTA_EXCEEDED),
                    "a publisher is disconnected only because of the store: {code:?}"
                );
                assert!(disconnects.len() < 3, "publisher disconnected repeatedly: {disconnects:?}");
                p = Client::connect(b.port, v5, "fd-pub", true, 0).0;
            }
        }
    };
    let publishing = started.elapsed();
    assert_eq!(refused, QUOTA_EXCEEDED, "MQTT 5 reason code 0x97 Quota exceeded");
    assert!(!acked.is_empty(), "some messages fit before the disk was full");
    eprintln!(
        "full_disk: {} of {seq} QoS 1 publishes acknowledged before 0x97 (disconnects on the way: {disconnects:?})",
        acked.len()
    );

    // The broker is alive and keeps refusing new QoS 1 and QoS 2 work with 0x97, on a new connection too.
    assert!(b.alive(), "the broker survives the full disk");
    drop(p);
    let (mut p, _) = Client::connect(b.port, v5, "fd-pub2", true, 0);
    assert!(matches!(publish_qos1(&mut p, 0, 1), Outcome::Refused(QUOTA_EXCEEDED)), "QoS 1 still gets 0x97");
    p.publish("fd/q", payload(0), QoS::ExactlyOnce, 2).expect("send QoS 2 PUBLISH");
    match p.recv() {
        Some(Packet::PubRec(a)) => assert_eq!((a.packet_id, a.reason_code), (2, QUOTA_EXCEEDED), "QoS 2: PUBREC 0x97"),
        other => panic!("PUBREC 0x97 expected, got {other:?}"),
    }

    // MQTT 3.1.1 cannot refuse a PUBLISH: the connection is closed, no PUBACK.
    let (mut p3, _) = Client::connect(b.port, ProtocolVersion::V4, "fd-pub-v3", true, 0);
    p3.publish("fd/q", payload(0), QoS::AtLeastOnce, 1).expect("send v3 PUBLISH");
    let got = p3.recv();
    assert!(got.is_none(), "v3.1.1 QoS 1 publisher is disconnected, not acknowledged: got {got:?}");

    // QoS 0 still flows to an online subscriber (the message also matches the offline persistent session,
    // whose queue cannot be written).
    let (mut live, _) = Client::connect(b.port, v5, "fd-live", true, 0);
    live.subscribe("fd/live", QoS::AtMostOnce);
    p.publish("fd/live", b"qos0 still flows".to_vec(), QoS::AtMostOnce, 0).expect("send QoS 0 PUBLISH");
    match live.recv() {
        Some(Packet::Publish(m)) => assert_eq!(&m.payload[..], b"qos0 still flows"),
        other => panic!("the QoS 0 message expected, got {other:?}"),
    }
    assert!(b.alive(), "the broker is still alive");

    // The log says which file and what went wrong.
    let store = store_file.display().to_string();
    let line = b.log.wait_for(|l| l.contains("commit failed") && l.contains(&store));
    let line = line.unwrap_or_else(|| panic!("an error naming {store}: {}", b.log.text()));
    let cause = match disk.limit {
        Limit::Tmpfs => "No space left on device",
        _ => "File too large",
    };
    assert!(line.contains(cause), "the log line names the cause ({cause}): {line}");

    // Stop (the disk is still full: shutdown must neither hang nor damage the file), free space, restart.
    drop((p, p3, live));
    let stopping = Instant::now();
    let status = b.stop();
    eprintln!("full_disk: broker stopped on the full disk with {status} in {:?}", stopping.elapsed());
    let b = Broker::start(&data, disk.grow());
    let (mut sub, present) = Client::connect(b.port, v5, "fd-sub", false, 3600);
    assert!(present, "the persistent session survived the full disk and the restart");
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + WAIT;
    while acked.iter().any(|a| !seen.contains(a)) {
        assert!(
            Instant::now() < deadline,
            "acknowledged messages lost: {:?}",
            acked.difference(&seen).take(20).collect::<Vec<_>>()
        );
        match sub.recv() {
            Some(Packet::Publish(m)) => {
                assert_eq!(m.payload.len(), PAYLOAD, "the whole payload came back");
                seen.insert(u32::from_be_bytes(m.payload[..4].try_into().expect("sequence number")));
                if let Some(pid) = m.packet_id {
                    sub.send(&Packet::PubAck(PubResp::new(pid))).expect("PUBACK");
                }
            }
            Some(_) => {}
            None => panic!(
                "subscriber connection closed with acknowledged messages missing: {:?}",
                acked.difference(&seen).take(20).collect::<Vec<_>>()
            ),
        }
    }
    drop(sub);
    let status = b.stop();
    assert!(status.success(), "clean shutdown after the restart: {status}");

    // The file the full disk left behind is consistent.
    let out = Command::new(BIN).args(["ctl", "store", "check", "--data-dir"]).arg(&data).output().expect("run ctl");
    assert!(
        out.status.success(),
        "ctl store check: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "full_disk ({:?}): {} acknowledged before the disk was full, {} delivered after restart \
         (all acknowledged ones among them); publishing took {publishing:?}, the test {:?}",
        disk.limit,
        acked.len(),
        seen.len(),
        started.elapsed()
    );
}
