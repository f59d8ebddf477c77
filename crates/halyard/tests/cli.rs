//! The binary as a user runs it: start-up with the embedded defaults plus environment overrides, the example
//! config, clear errors for bad configuration, interop with `mosquitto_pub`/`mosquitto_sub`, clean shutdown.

mod common;

use common::{start_command, Broker, BIN};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

impl Broker {
    /// Starts `halyard start` on a free loopback port and waits for its "halyard started" log line.
    fn start(extra_env: &[(&str, &str)]) -> Broker {
        let port = common::free_port();
        let dir = std::env::temp_dir().join(format!("halyard-cli-{port}"));
        let mut cmd = start_command(port, &dir, "info");
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let mut b = Broker::spawn(cmd, port, false);
        if !b.started(Duration::from_secs(10)) {
            let status = b.child.try_wait().ok().flatten();
            panic!("broker did not log 'halyard started' (exit: {status:?}); its log:\n{}", b.log.text());
        }
        b
    }
}

fn mosquitto_available() -> bool {
    let ok = Command::new("mosquitto_pub").arg("--help").output().is_ok();
    assert!(ok, "mosquitto_pub/mosquitto_sub missing: run scripts/test, which installs mosquitto-clients");
    ok
}

/// A mosquitto_sub process, killed and reaped on drop (also when an assertion fails).
struct Sub(Child);

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs mosquitto_sub with -d and waits until it has its SUBACK, so a publish after this cannot race it.
fn subscribed(args: &[&str]) -> (Sub, mpsc::Receiver<String>) {
    // stdbuf: mosquitto_sub's stdout is a pipe here, so without line buffering its -d lines would wait in a
    // block buffer until it exits.
    let mut child = Sub(Command::new("stdbuf")
        .args(["-oL", "mosquitto_sub"])
        .args(args)
        .arg("-d")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn mosquitto_sub"));
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    loop {
        let line = rx.recv_timeout(Duration::from_secs(5)).expect("mosquitto_sub output");
        if line.contains("SUBACK") {
            return (child, rx);
        }
    }
}

/// Lines that are messages, not mosquitto_sub's -d chatter.
fn next_message(rx: &mpsc::Receiver<String>) -> String {
    loop {
        let line = rx.recv_timeout(Duration::from_secs(5)).expect("a message within 5 s");
        if !line.starts_with("Client ") && !line.starts_with("Subscribed (mid") {
            return line;
        }
    }
}

#[test]
fn newcomer_starts_broker_and_mosquitto_clients_exchange_a_message() {
    if !mosquitto_available() {
        return;
    }
    let b = Broker::start(&[]);
    let port = b.port.to_string();
    for (v, qos) in [("mqttv311", "1"), ("mqttv5", "2"), ("mqttv31", "0")] {
        let topic = format!("hello/{v}");
        let (sub, rx) = subscribed(&["-h", "127.0.0.1", "-p", &port, "-V", v, "-q", qos, "-t", &topic]);
        let st = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port, "-V", v, "-q", qos, "-t", &topic, "-m", "hi from mosquitto_pub"])
            .status()
            .expect("run mosquitto_pub");
        assert!(st.success(), "mosquitto_pub {v} exits 0");
        assert_eq!(next_message(&rx), "hi from mosquitto_pub", "{v}");
        drop(sub);
    }
}

#[test]
fn mosquitto_retained_and_persistent_session() {
    if !mosquitto_available() {
        return;
    }
    let b = Broker::start(&[]);
    let port = b.port.to_string();
    let pubq = |args: &[&str]| {
        let st = Command::new("mosquitto_pub").args(["-h", "127.0.0.1", "-p", &port]).args(args).status();
        assert!(st.expect("mosquitto_pub").success());
    };
    // [MQTT-3.3.1-6] retained message delivered to a later subscriber, flagged retained.
    pubq(&["-t", "ret/m", "-m", "kept", "-r", "-q", "1"]);
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-t", "ret/#", "-C", "1", "-W", "5", "-F", "%r %p"])
        .output()
        .expect("mosquitto_sub");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1 kept");
    // [MQTT-3.1.2-4] a persistent session (-c, clean session 0) gets what was published while it was away.
    let (s, _rx) = subscribed(&["-h", "127.0.0.1", "-p", &port, "-c", "-i", "mosq-persist", "-q", "1", "-t", "away"]);
    drop(s);
    pubq(&["-t", "away", "-m", "while-away", "-q", "1"]);
    let out = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-c",
            "-i",
            "mosq-persist",
            "-q",
            "1",
            "-t",
            "away",
            "-C",
            "1",
            "-W",
            "5",
        ])
        .output()
        .expect("mosquitto_sub");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "while-away");
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let mut b = Broker::start(&[]);
    assert!(b.sigterm().success());
    let (tx, rx) = mpsc::channel();
    let mut child = std::mem::replace(&mut b.child, Command::new("true").spawn().expect("placeholder"));
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = rx.recv_timeout(Duration::from_secs(10)).expect("exits within 10 s").expect("wait");
    assert!(status.success(), "exit status 0 after SIGTERM, got {status}");
}

#[test]
fn bad_config_value_stops_startup_naming_key_value_and_allowed() {
    let out = Command::new(BIN)
        .arg("start")
        .env("HALYARD_MQTT__MAX_KEEPALIVE", "sixty")
        .env("HALYARD_LISTENERS__TCP__DEFAULT__BIND", "127.0.0.1:0")
        .output()
        .expect("run halyard");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mqtt.max_keepalive"), "{err}");
    assert!(err.contains("sixty"), "{err}");
    assert!(err.contains("HALYARD_MQTT__MAX_KEEPALIVE"), "{err}");
    let out = Command::new(BIN)
        .args(["start"])
        .env("HALYARD_LISTENERS__TCP__DEFAULT__BIND", "not-an-address")
        .output()
        .expect("run halyard");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listeners.tcp.default.bind") && err.contains("not-an-address"), "{err}");
}

#[test]
fn bind_failure_names_the_listener() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = Command::new(BIN)
        .arg("start")
        .envs(common::ONLY_TCP)
        .env("HALYARD_LISTENERS__TCP__DEFAULT__BIND", &addr)
        .env("HALYARD_NODE__DATA_DIR", std::env::temp_dir().join(format!("halyard-bind-{}", std::process::id())))
        .output()
        .expect("run halyard");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listeners.tcp.default") && err.contains(&addr), "{err}");
}

#[test]
fn example_config_in_repo_is_valid_and_matches_embedded_defaults() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../halyard.toml");
    let with_file = Command::new(BIN).args(["check-config", "--config"]).arg(&example).output().expect("run");
    assert!(with_file.status.success(), "{}", String::from_utf8_lossy(&with_file.stderr));
    let embedded = Command::new(BIN).arg("check-config").output().expect("run");
    assert_eq!(
        String::from_utf8_lossy(&with_file.stdout),
        String::from_utf8_lossy(&embedded.stdout),
        "halyard.toml documents exactly the embedded defaults"
    );
}

/// The broker's CPU time (user + system) in clock ticks, from /proc.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command name (which is in parentheses and may contain spaces): utime is the 12th, stime
    // the 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).expect("stat format");
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

/// A connection holding part of a packet waits quietly for the rest. It once spun at full CPU from 1 s after its
/// last event (the timer that parks quiet connections was re-armed in the past while a partial packet blocked
/// parking). One client sits on half a CONNECT, another on the first byte of a PUBLISH after its CONNECT; the
/// broker's CPU time over the next second must stay near zero. The sleep only lets the 1 s quiet period pass.
#[test]
fn a_partial_packet_does_not_spin_the_broker() {
    use std::io::{Read, Write};
    let b = Broker::start(&[]);
    let mut half_connect = std::net::TcpStream::connect(("127.0.0.1", b.port)).expect("connect");
    half_connect.write_all(&[0x10]).expect("write");
    let mut half_publish = std::net::TcpStream::connect(("127.0.0.1", b.port)).expect("connect");
    // MQTT 3.1.1 CONNECT, clean session, keepalive 60, client id "p".
    let connect = [0x10, 0x0D, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x01, b'p'];
    half_publish.write_all(&connect).expect("write CONNECT");
    let mut connack = [0u8; 4];
    half_publish.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    half_publish.read_exact(&mut connack).expect("CONNACK");
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    half_publish.write_all(&[0x30]).expect("write first byte of PUBLISH");
    std::thread::sleep(Duration::from_millis(1500));
    let before = cpu_ticks(b.child.id());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(b.child.id()) - before;
    // A spinning task uses about 100 ticks a second; an idle broker 0-2.
    assert!(used < 30, "the broker used {used} clock ticks in 1 s while two clients sat on partial packets");
}
