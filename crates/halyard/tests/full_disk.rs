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

mod common;

use common::{connect_packet, start_command, Broker, Client, BIN};
use halyard_codec::{Packet, Properties, ProtocolVersion, PubResp, QoS};
use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The size of the small filesystem (or the file-size limit).
const SMALL: u64 = 4 * 1024 * 1024;
/// Payload per message: a few KiB, so the disk fills after a few hundred messages.
const PAYLOAD: usize = 8 * 1024;
/// MQTT 5 reason code 0x97 Quota exceeded.
const QUOTA_EXCEEDED: u8 = 0x97;
const WAIT: Duration = Duration::from_secs(10);

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

impl Broker {
    /// Starts on a free port, the disk made small by `limit`; FULL_DISK_TEST_LOG echoes the broker's log.
    fn start(data: &Path, limit: Limit) -> Broker {
        let port = common::free_port();
        let mut cmd = start_command(port, data, "info");
        // Far above what fits on the disk: no message may leave the offline queue by the
        // "drop the oldest when full" rule, so every acknowledged one must come back.
        cmd.env("HALYARD_MQTT__MAX_MQUEUE_LEN", "100000");
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
        let b = Broker::spawn(cmd, port, std::env::var_os("FULL_DISK_TEST_LOG").is_some());
        assert!(b.started(WAIT), "broker starts: {}", b.log.text());
        b
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then wait (bounded) for the exit.
    fn stop(mut self) -> ExitStatus {
        self.sigterm();
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

/// This test's client speaks v3.1.1 or v5; a failed or refused connection fails the test.
impl Client {
    /// Connects; `expiry` is the v5 Session Expiry Interval (v3.1.1: clean session = !persistent).
    fn connect(port: u16, version: ProtocolVersion, id: &str, clean: bool, expiry: u32) -> (Client, bool) {
        let properties = Properties {
            session_expiry_interval: (version == ProtocolVersion::V5 && expiry > 0).then_some(expiry),
            ..Default::default()
        };
        let connect =
            halyard_codec::Connect { properties: Box::new(properties).into(), ..connect_packet(version, id, clean) };
        match Client::open(port, connect, WAIT).expect("connect") {
            (c, Some(Packet::ConnAck(a))) if a.reason_code == 0 => (c, a.session_present),
            (_, other) => panic!("{id}: CONNACK expected, got {other:?}"),
        }
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
    if c.publish("fd/q", payload(seq), QoS::AtLeastOnce, false, pid).is_err() {
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
    p.publish("fd/q", payload(0), QoS::ExactlyOnce, false, 2).expect("send QoS 2 PUBLISH");
    match p.recv() {
        Some(Packet::PubRec(a)) => assert_eq!((a.packet_id, a.reason_code), (2, QUOTA_EXCEEDED), "QoS 2: PUBREC 0x97"),
        other => panic!("PUBREC 0x97 expected, got {other:?}"),
    }

    // MQTT 3.1.1 cannot refuse a PUBLISH: the connection is closed, no PUBACK.
    let (mut p3, _) = Client::connect(b.port, ProtocolVersion::V4, "fd-pub-v3", true, 0);
    p3.publish("fd/q", payload(0), QoS::AtLeastOnce, false, 1).expect("send v3 PUBLISH");
    let got = p3.recv();
    assert!(got.is_none(), "v3.1.1 QoS 1 publisher is disconnected, not acknowledged: got {got:?}");

    // QoS 0 still flows to an online subscriber (the message also matches the offline persistent session,
    // whose queue cannot be written).
    let (mut live, _) = Client::connect(b.port, v5, "fd-live", true, 0);
    live.subscribe("fd/live", QoS::AtMostOnce);
    p.publish("fd/live", b"qos0 still flows".to_vec(), QoS::AtMostOnce, false, 0).expect("send QoS 0 PUBLISH");
    match live.recv() {
        Some(Packet::Publish(m)) => assert_eq!(&m.payload[..], b"qos0 still flows"),
        other => panic!("the QoS 0 message expected, got {other:?}"),
    }
    assert!(b.alive(), "the broker is still alive");

    // The log says which file and what went wrong.
    let store = store_file.display().to_string();
    let line = b.log.wait_for(WAIT, |l| l.contains("commit failed") && l.contains(&store));
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
