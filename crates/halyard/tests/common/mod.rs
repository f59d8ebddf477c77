//! What the binary's integration tests share: starting a `halyard start` process and waiting for it, and a
//! blocking MQTT client on our codec (independent of the broker's internals). Each test file adds its own way
//! to start the broker (environment, timeout, what a failed start reports) and to connect.
#![allow(dead_code)] // Not every test binary uses every item.

use bytes::{Bytes, BytesMut};
use halyard_codec::{Connect, Packet, ProtocolVersion, Publish, QoS, Subscribe, SubscriptionOptions, Utf8};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_halyard");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// The default TLS and WebSocket listeners (0.0.0.0:8883, 8083, 8084) off: tests run in parallel, and those
/// ports may be taken on the machine. Tests of those listeners configure their own on port 0.
pub const ONLY_TCP: [(&str, &str); 3] = [
    ("HALYARD_LISTENERS__SSL__DEFAULT__ENABLE", "false"),
    ("HALYARD_LISTENERS__WS__DEFAULT__ENABLE", "false"),
    ("HALYARD_LISTENERS__WSS__DEFAULT__ENABLE", "false"),
];

/// `halyard start` listening on 127.0.0.1:`port` (TCP only, see [`ONLY_TCP`]) with its data in `data` and
/// `RUST_LOG=rust_log`; stdout discarded, stderr piped for [`Broker::spawn`]. The caller adds its own environment.
pub fn start_command(port: u16, data: &Path, rust_log: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("start")
        .envs(ONLY_TCP)
        .env("HALYARD_LISTENERS__TCP__DEFAULT__BIND", format!("127.0.0.1:{port}"))
        .env("HALYARD_NODE__DATA_DIR", data)
        .env("RUST_LOG", rust_log)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// The broker's log lines, and a way to wait for one.
#[derive(Default)]
pub struct Log {
    state: Mutex<LogState>,
    cv: Condvar,
}

#[derive(Default)]
struct LogState {
    lines: Vec<String>,
    /// The broker's stderr closed: no more lines will come.
    closed: bool,
}

impl Log {
    /// Waits up to `timeout` for a line that satisfies `f` (no longer once the log has closed); returns it.
    pub fn wait_for(&self, timeout: Duration, f: impl Fn(&str) -> bool) -> Option<String> {
        let state = self.state.lock().expect("log lock");
        let (state, _) = self
            .cv
            .wait_timeout_while(state, timeout, |s| !s.closed && !s.lines.iter().any(|x| f(x)))
            .expect("log lock");
        state.lines.iter().find(|x| f(x)).cloned()
    }

    pub fn text(&self) -> String {
        self.state.lock().expect("log lock").lines.join("\n")
    }

    fn push(&self, line: String) {
        self.state.lock().expect("log lock").lines.push(line);
        self.cv.notify_all();
    }

    fn close(&self) {
        self.state.lock().expect("log lock").closed = true;
        self.cv.notify_all();
    }
}

/// A broker process, killed on drop.
pub struct Broker {
    pub child: Child,
    pub port: u16,
    pub log: Arc<Log>,
}

impl Broker {
    /// Spawns `cmd` (from [`start_command`] for `port`); a thread collects its stderr into `log`, echoing each line
    /// as `broker: …` when `echo`. Does not wait: see [`Broker::started`].
    pub fn spawn(mut cmd: Command, port: u16, echo: bool) -> Broker {
        let mut child = cmd.spawn().expect("spawn halyard");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Log::default());
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("broker: {line}");
                }
                l.push(line);
            }
            l.close();
        });
        Broker { child, port, log }
    }

    /// Waits up to `timeout` for the "halyard started" log line; false when it did not come.
    pub fn started(&self, timeout: Duration) -> bool {
        self.log.wait_for(timeout, |l| l.contains("halyard started")).is_some()
    }

    /// Sends SIGTERM (a clean shutdown); the status is `kill`'s.
    pub fn sigterm(&self) -> std::process::ExitStatus {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("run kill")
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CONNECT with keep-alive 60 and no will, credentials or properties.
pub fn connect_packet(version: ProtocolVersion, id: &str, clean: bool) -> Connect {
    Connect {
        protocol: version,
        clean_start: clean,
        keep_alive: 60,
        client_id: Utf8::from(id),
        will: None,
        username: None,
        password: None,
        properties: Default::default(),
        bridge: false,
    }
}

/// A blocking MQTT client on our codec, speaking the protocol version of its CONNECT.
pub struct Client {
    pub s: TcpStream,
    buf: BytesMut,
    version: ProtocolVersion,
}

impl Client {
    /// Connects to 127.0.0.1:`port` with `read_timeout` and sends `connect`; returns the client and the
    /// broker's answer (`None`: the connection closed or the read timed out first).
    pub fn open(port: u16, connect: Connect, read_timeout: Duration) -> std::io::Result<(Client, Option<Packet>)> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(read_timeout))?;
        let mut c = Client { s, buf: BytesMut::new(), version: connect.protocol };
        c.send(&Packet::Connect(Box::new(connect)))?;
        let answer = c.recv();
        Ok((c, answer))
    }

    pub fn send(&mut self, p: &Packet) -> std::io::Result<()> {
        let mut b = BytesMut::new();
        halyard_codec::encode(p, self.version, &mut b).expect("encode");
        self.s.write_all(&b)
    }

    /// The next packet; `None` when the connection closed (or the read timed out).
    pub fn recv(&mut self) -> Option<Packet> {
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

    /// Subscribes to one filter (packet id 1) and checks that the SUBACK grants `qos`.
    pub fn subscribe(&mut self, filter: &str, qos: QoS) {
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

    /// Sends a PUBLISH (no packet id at QoS 0); does not wait for its acknowledgement.
    pub fn publish(
        &mut self,
        topic: &str,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
        pid: u16,
    ) -> std::io::Result<()> {
        self.send(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain,
            topic: Utf8::from(topic),
            packet_id: (qos != QoS::AtMostOnce).then_some(pid),
            properties: Default::default(),
            payload: payload.into(),
        }))
    }
}
