//! Every transport of the `halyard` binary with real third-party clients: mosquitto_pub/mosquitto_sub over TLS
//! (with the generated CA, with client certificates), openssl s_client against TLS-version-restricted
//! listeners, MQTT.js over ws:// and wss:// (MQTT 3.1.1 and 5), Python paho-mqtt over WebSocket, and MQTT.js in
//! headless Chromium receiving what mosquitto_pub sent. Also: what `halyard start` opens with no configuration,
//! certificate reload on SIGHUP and on file change, the certificate identity, a bad certificate file.
//!
//! The tools come from Debian and npm (scripts/test installs them: mosquitto-clients, openssl, chromium,
//! nodejs/npm with tests/js's packages, python3-paho-mqtt, util-linux). A test whose tool is missing fails
//! when `CI` or `REQUIRE_TEST_TOOLS` is set (scripts/test sets the latter) and is skipped with a message
//! otherwise. Every external command runs under `timeout`; no sleep stands in for synchronisation (log lines,
//! mosquitto_sub's SUBACK and the browser script's "SUBSCRIBED" line do).

mod common;

use common::{Broker, BIN};
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(15);

/// Whether missing tools fail the tests (CI, scripts/test) rather than skip them (a developer's machine).
fn tools_required() -> bool {
    std::env::var_os("CI").is_some() || std::env::var_os("REQUIRE_TEST_TOOLS").is_some()
}

/// True when `program` can be started; otherwise fails the test under [`tools_required`], else says it skips.
fn have(program: &str, probe: &[&str]) -> bool {
    let ok = Command::new(program).args(probe).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    skip_unless(ok, program)
}

fn skip_unless(ok: bool, what: &str) -> bool {
    if !ok {
        assert!(!tools_required(), "{what} is missing (scripts/test installs it)");
        eprintln!("SKIPPED: {what} is missing; scripts/test installs it (set REQUIRE_TEST_TOOLS=1 to fail instead)");
    }
    ok
}

/// tests/js with its npm packages installed (`npm ci --prefix tests/js`).
fn js_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/js");
    let ok = have("node", &["--version"])
        && skip_unless(dir.join("node_modules/mqtt").is_dir(), "tests/js/node_modules (npm ci)");
    ok.then_some(dir)
}

/// A Python 3 with paho-mqtt: `PAHO_PYTHON`, `python3` on the PATH, or Debian's /usr/bin/python3.
fn paho_python() -> Option<String> {
    let candidates = std::env::var("PAHO_PYTHON").into_iter().chain(["python3".into(), "/usr/bin/python3".into()]);
    for py in candidates {
        let ok = Command::new(&py).args(["-c", "import paho.mqtt.client"]).stderr(Stdio::null()).status();
        if ok.is_ok_and(|s| s.success()) {
            return Some(py);
        }
    }
    skip_unless(false, "Python paho-mqtt (python3-paho-mqtt)");
    None
}

/// Runs `program` with a time limit (coreutils `timeout`), capturing its output.
fn run(program: &str, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg(T.as_secs().to_string())
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A `halyard start --config` process: its TCP listener on 127.0.0.1:0 plus the listeners and zones in its
/// TOML, data in a temporary directory. The default ssl/ws/wss listeners are off unless the TOML names them.
struct Halyard {
    b: Broker,
    dir: tempfile::TempDir,
    /// `<type>.<name>` → bound address, from the "listening" log lines.
    addrs: BTreeMap<String, SocketAddr>,
}

impl Halyard {
    fn start(toml: &str) -> Halyard {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("halyard.toml");
        let config = format!(
            "[node]\ndata_dir = {:?}\n[listeners.tcp.default]\nbind = \"127.0.0.1:0\"\n{toml}",
            dir.path().display().to_string()
        );
        std::fs::write(&file, config).expect("write config");
        let mut cmd = Command::new(BIN);
        cmd.arg("start")
            .arg("--config")
            .arg(&file)
            .env("RUST_LOG", "info,halyard_server=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for kind in ["ssl", "ws", "wss"] {
            if !toml.contains(&format!("[listeners.{kind}.default]")) {
                cmd.env(format!("HALYARD_LISTENERS__{}__DEFAULT__ENABLE", kind.to_uppercase()), "false");
            }
        }
        let b = Broker::spawn(cmd, 0, false);
        assert!(b.started(T), "broker did not start; its log:\n{}", b.log.text());
        let addrs = listening(&b.log.text());
        Halyard { b, dir, addrs }
    }

    fn port(&self, key: &str) -> String {
        self.addrs.get(key).unwrap_or_else(|| panic!("no listener {key} in {:?}", self.addrs)).port().to_string()
    }

    /// The generated CA, which signed the default server certificate.
    fn ca(&self) -> String {
        self.dir.path().join("certs/ca.pem").display().to_string()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Waits for a log line containing every one of `parts`.
    fn log_line(&self, parts: &[&str]) -> String {
        self.b
            .log
            .wait_for(T, |l| parts.iter().all(|p| l.contains(p)))
            .unwrap_or_else(|| panic!("no log line with {parts:?}; the log:\n{}", self.b.log.text()))
    }
}

/// `listener=listeners.<key> addr=<addr>` of every "listening for MQTT" line.
fn listening(log: &str) -> BTreeMap<String, SocketAddr> {
    let field = |l: &str, name: &str| -> Option<String> {
        let at = l.find(&format!(" {name}="))? + name.len() + 2;
        l[at..].split_whitespace().next().map(String::from)
    };
    log.lines()
        .filter(|l| l.contains("listening for MQTT over"))
        .filter_map(|l| {
            let key = field(l, "listener")?.strip_prefix("listeners.")?.to_string();
            Some((key, field(l, "addr")?.parse().ok()?))
        })
        .collect()
}

/// A child process killed and reaped on drop (also when an assertion fails).
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `program` with stdout lines sent to the returned channel (stdbuf: line-buffered through the pipe).
fn spawn_lines(program: &str, args: &[&str]) -> (Kill, mpsc::Receiver<String>) {
    let mut child = Kill(
        Command::new("stdbuf")
            .args(["-oL", program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}")),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

/// The next line satisfying `f`, within `T`.
fn line_where(rx: &mpsc::Receiver<String>, what: &str, f: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if f(&l) => return l,
            Ok(_) => {}
            Err(e) => panic!("no {what} within {T:?} ({e})"),
        }
    }
}

/// mosquitto_sub with `args` (plus -d), returned once its SUBACK arrived: a publish after this cannot race it.
fn mosquitto_sub(args: &[&str]) -> (Kill, mpsc::Receiver<String>) {
    let mut all = args.to_vec();
    all.push("-d");
    let (child, rx) = spawn_lines("mosquitto_sub", &all);
    line_where(&rx, "SUBACK from mosquitto_sub", |l| l.contains("SUBACK"));
    (child, rx)
}

/// The next message line of mosquitto_sub (not its -d chatter).
fn next_message(rx: &mpsc::Receiver<String>) -> String {
    line_where(rx, "message", |l| !l.starts_with("Client ") && !l.starts_with("Subscribed (mid"))
}

/// A test CA issuing client and server certificates, written as PEM files.
struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let cert = p.self_signed(&key).expect("self-signed");
        TestCa { pem: cert.pem(), issuer: Issuer::new(p, key) }
    }

    fn write(&self, path: &Path) -> String {
        std::fs::write(path, &self.pem).expect("write CA");
        path.display().to_string()
    }

    /// A certificate with common name `cn` (a client's, or a server's for `localhost` with `server`), written to
    /// `<base>.pem` and `<base>.key`; returns both paths.
    fn issue(&self, cn: &str, server: bool, base: &Path) -> (String, String) {
        let names = if server { vec!["localhost".to_string()] } else { vec![] };
        let mut p = CertificateParams::new(names).expect("params");
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::OrganizationName, "Halyard tests");
        p.distinguished_name.push(DnType::CommonName, cn);
        if !server {
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        }
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &self.issuer).expect("sign");
        let (c, k) = (base.with_extension("pem"), base.with_extension("key"));
        std::fs::write(&c, cert.pem()).expect("write cert");
        std::fs::write(&k, key.serialize_pem()).expect("write key");
        (c.display().to_string(), k.display().to_string())
    }
}

#[test]
fn halyard_start_with_no_configuration_opens_1883_8883_8083_8084() {
    // What a newcomer gets. In a network namespace of its own (unshare), so the real ports are free whatever
    // else runs on this machine; clients join it with nsenter.
    if !have("unshare", &["--version"]) || !have("nsenter", &["--version"]) || !have("mosquitto_pub", &["--help"]) {
        return;
    }
    let isolated = Command::new("unshare").args(["-rn", "true"]).status().is_ok_and(|s| s.success());
    if !skip_unless(isolated, "unprivileged network namespaces (unshare -rn)") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new("unshare");
    cmd.args(["-rn", "sh", "-c", "ip link set lo up && exec \"$0\" start", BIN])
        .env("HALYARD_NODE__DATA_DIR", dir.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let b = Broker::spawn(cmd, 0, false);
    assert!(b.started(T), "broker did not start; its log:\n{}", b.log.text());
    let log = b.log.text();
    let addrs = listening(&log);
    let want: BTreeMap<String, SocketAddr> =
        [("tcp.default", 1883), ("ssl.default", 8883), ("ws.default", 8083), ("wss.default", 8084)]
            .into_iter()
            .map(|(k, p)| (k.to_string(), SocketAddr::from(([0, 0, 0, 0], p))))
            .collect();
    assert_eq!(addrs, want, "{log}");
    let ca = dir.path().join("certs/ca.pem").display().to_string();
    assert!(
        log.lines().any(|l| l.contains("clients verify it with the CA") && l.contains(&ca)),
        "CA path logged:\n{log}"
    );

    // Clients inside the broker's namespace: a retained message over TCP, read back over TLS with the CA.
    let pid = b.child.id().to_string();
    let ns = |args: &[&str]| {
        let mut all = vec!["-t", &pid, "-n", "-U", "--preserve-credentials"];
        all.extend_from_slice(args);
        run("nsenter", &all)
    };
    let o = ns(&["mosquitto_pub", "-p", "1883", "-t", "newcomer/hello", "-m", "over 1883", "-r", "-q", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = ns(&[
        "mosquitto_sub",
        "-p",
        "8883",
        "-h",
        "localhost",
        "--cafile",
        &ca,
        "-t",
        "newcomer/#",
        "-C",
        "1",
        "-W",
        "10",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "over 1883");
    if let Some(js) = js_dir() {
        let script = js.join("ws_clients.mjs").display().to_string();
        for (url, extra) in [("ws://127.0.0.1:8083/mqtt", None), ("wss://127.0.0.1:8084/mqtt", Some(ca.as_str()))] {
            let mut args = vec!["node", script.as_str(), url, "4"];
            args.extend(extra);
            let o = ns(&args);
            assert!(o.status.success(), "{url}: {}", text(&o));
        }
    }
}

#[test]
fn mosquitto_over_tls_trusts_the_generated_ca_and_refuses_another() {
    if !have("mosquitto_pub", &["--help"]) {
        return;
    }
    let h = Halyard::start("[listeners.ssl.default]\nbind = \"127.0.0.1:0\"\n");
    let (port, ca) = (h.port("ssl.default"), h.ca());
    for (v, host) in [("mqttv311", "localhost"), ("mqttv5", "127.0.0.1")] {
        let topic = format!("tls/{v}");
        let (_sub, rx) = mosquitto_sub(&["-h", host, "-p", &port, "--cafile", &ca, "-V", v, "-q", "1", "-t", &topic]);
        let o = run(
            "mosquitto_pub",
            &["-h", host, "-p", &port, "--cafile", &ca, "-V", v, "-q", "1", "-t", &topic, "-m", "secret"],
        );
        assert!(o.status.success(), "{}", text(&o));
        assert_eq!(next_message(&rx), "secret", "{v} to {host}");
    }
    // A client that trusts another CA does not accept the broker's certificate.
    let other = TestCa::new("Someone else's CA").write(&h.file("other-ca.pem"));
    let o = run("mosquitto_pub", &["-h", "localhost", "-p", &port, "--cafile", &other, "-t", "x", "-m", "y"]);
    assert!(!o.status.success(), "{}", text(&o));
    // The broker logs the failed handshake at debug, with the client's address.
    h.log_line(&["TLS handshake failed", "listener=listeners.ssl.default", "peer=127.0.0.1:"]);
}

const MTLS: &str = r#"
[listeners.ssl.default]
bind = "127.0.0.1:0"
[listeners.ssl.default.ssl_options]
verify = "verify_peer"
fail_if_no_peer_cert = true
"#;

#[test]
fn mutual_tls_refuses_clients_without_a_certificate_or_with_one_from_another_ca() {
    if !have("mosquitto_pub", &["--help"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let devices = TestCa::new("Device CA");
    let devices_pem = devices.write(&dir.path().join("devices-ca.pem"));
    let h = Halyard::start(&format!("{MTLS}cacertfile = {devices_pem:?}\n"));
    let (port, ca) = (h.port("ssl.default"), h.ca());
    let (cert, key) = devices.issue("device-1", false, &dir.path().join("device-1"));
    let (_sub, rx) =
        mosquitto_sub(&["-p", &port, "-h", "localhost", "--cafile", &ca, "--cert", &cert, "--key", &key, "-t", "m/#"]);
    let o = run(
        "mosquitto_pub",
        &["-p", &port, "-h", "localhost", "--cafile", &ca, "--cert", &cert, "--key", &key, "-t", "m/1", "-m", "mutual"],
    );
    assert!(o.status.success(), "with a device certificate: {}", text(&o));
    assert_eq!(next_message(&rx), "mutual");

    let o = run("mosquitto_pub", &["-p", &port, "-h", "localhost", "--cafile", &ca, "-t", "m/2", "-m", "no cert"]);
    assert!(!o.status.success(), "without a certificate: {}", text(&o));
    let stranger = TestCa::new("Stranger CA");
    let (cert2, key2) = stranger.issue("intruder", false, &dir.path().join("intruder"));
    let o = run(
        "mosquitto_pub",
        &[
            "-p",
            &port,
            "-h",
            "localhost",
            "--cafile",
            &ca,
            "--cert",
            &cert2,
            "--key",
            &key2,
            "-t",
            "m/3",
            "-m",
            "stranger",
        ],
    );
    assert!(!o.status.success(), "with another CA's certificate: {}", text(&o));
    // Nothing of theirs arrived: the next message is the next good one.
    let o = run(
        "mosquitto_pub",
        &["-p", &port, "-h", "localhost", "--cafile", &ca, "--cert", &cert, "--key", &key, "-t", "m/4", "-m", "after"],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(next_message(&rx), "after");
    h.log_line(&["TLS handshake failed", "peer=127.0.0.1:"]);
}

#[test]
fn tls12_only_and_tls13_only_listeners_are_what_openssl_s_client_sees() {
    if !have("openssl", &["version"]) || !have("mosquitto_pub", &["--help"]) {
        return;
    }
    let h = Halyard::start(
        "[listeners.ssl.v12]\nbind = \"127.0.0.1:0\"\n[listeners.ssl.v12.ssl_options]\nversions = [\"tlsv1.2\"]\n\
         [listeners.ssl.v13]\nbind = \"127.0.0.1:0\"\n[listeners.ssl.v13.ssl_options]\nversions = [\"tlsv1.3\"]\n\
         [listeners.ssl.default]\nbind = \"127.0.0.1:0\"\n",
    );
    let ca = h.ca();
    let s_client = |key: &str, flag: &str| {
        let addr = format!("127.0.0.1:{}", h.port(key));
        run("openssl", &["s_client", "-connect", &addr, flag, "-CAfile", &ca, "-servername", "localhost", "-brief"])
    };
    for (key, offered, accepted) in [
        ("ssl.v12", "-tls1_2", true),
        ("ssl.v12", "-tls1_3", false),
        ("ssl.v13", "-tls1_3", true),
        ("ssl.v13", "-tls1_2", false),
        ("ssl.default", "-tls1_2", true),
        ("ssl.default", "-tls1_3", true),
    ] {
        let o = s_client(key, offered);
        let out = text(&o);
        let version = if offered == "-tls1_2" { "TLSv1.2" } else { "TLSv1.3" };
        if accepted {
            assert!(
                o.status.success() && out.contains(&format!("Protocol version: {version}")),
                "{key} {offered}: {out}"
            );
            assert!(out.contains("Verification: OK"), "{key}: {out}");
        } else {
            assert!(!o.status.success() && !out.contains("CONNECTION ESTABLISHED"), "{key} {offered} must fail: {out}");
        }
    }
    // And an MQTT client on each.
    for (key, v) in [("ssl.v12", "tlsv1.2"), ("ssl.v13", "tlsv1.3")] {
        let o = run(
            "mosquitto_pub",
            &["-h", "localhost", "-p", &h.port(key), "--cafile", &ca, "--tls-version", v, "-t", "v", "-m", v],
        );
        assert!(o.status.success(), "{key}: {}", text(&o));
    }
}

#[test]
fn peer_cert_as_username_cn_becomes_the_sessions_username() {
    // The username is observable through the mountpoint `${username}/`: what the client publishes to `temp`
    // reaches a plain TCP subscriber as `<CN>/temp`. The broker's "client connected" log line names it too.
    if !have("mosquitto_pub", &["--help"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let devices = TestCa::new("Device CA");
    let devices_pem = devices.write(&dir.path().join("devices-ca.pem"));
    let h = Halyard::start(&format!(
        "[zones.devices.mqtt]\npeer_cert_as_username = \"cn\"\n\
         [listeners.ssl.default]\nbind = \"127.0.0.1:0\"\nzone = \"devices\"\nmountpoint = \"${{username}}/\"\n\
         [listeners.ssl.default.ssl_options]\nverify = \"verify_peer\"\nfail_if_no_peer_cert = true\ncacertfile = {devices_pem:?}\n"
    ));
    let tcp = h.port("tcp.default");
    let (_sub, rx) = mosquitto_sub(&["-p", &tcp, "-t", "#", "-v"]);
    let (cert, key) = devices.issue("sensor-42", false, &dir.path().join("sensor-42"));
    let o = run(
        "mosquitto_pub",
        &[
            "-p",
            &h.port("ssl.default"),
            "-h",
            "localhost",
            "--cafile",
            &h.ca(),
            "--cert",
            &cert,
            "--key",
            &key,
            "-u",
            "what-the-client-says",
            "-i",
            "s42",
            "-t",
            "temp",
            "-m",
            "21.5",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(next_message(&rx), "sensor-42/temp 21.5");
    let line = h.log_line(&["client connected", "s42"]);
    assert!(line.contains("username=\"sensor-42\"") && !line.contains("what-the-client-says"), "{line}");
}

#[test]
fn mqtt_js_over_ws_and_wss_with_protocol_versions_4_and_5() {
    let Some(js) = js_dir() else { return };
    let h = Halyard::start(
        "[listeners.ws.default]\nbind = \"127.0.0.1:0\"\n[listeners.wss.default]\nbind = \"127.0.0.1:0\"\n",
    );
    let script = js.join("ws_clients.mjs").display().to_string();
    let ws = format!("ws://127.0.0.1:{}/mqtt", h.port("ws.default"));
    let wss = format!("wss://localhost:{}/mqtt", h.port("wss.default"));
    let ca = h.ca();
    for v in ["4", "5"] {
        let o = run("node", &[&script, &ws, v]);
        assert!(o.status.success(), "MQTT.js v{v} over ws: {}", text(&o));
        let o = run("node", &[&script, &wss, v, &ca]);
        assert!(o.status.success(), "MQTT.js v{v} over wss: {}", text(&o));
    }
}

#[test]
fn python_paho_over_websocket_and_secure_websocket() {
    let Some(py) = paho_python() else { return };
    let h = Halyard::start(
        "[listeners.ws.default]\nbind = \"127.0.0.1:0\"\n[listeners.wss.default]\nbind = \"127.0.0.1:0\"\n",
    );
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/python/paho_websockets.py").display().to_string();
    let ca = h.ca();
    for v in ["311", "5"] {
        let o = run(&py, &[&script, "127.0.0.1", &h.port("ws.default"), "/mqtt", v]);
        assert!(o.status.success(), "paho v{v} over ws: {}", text(&o));
        let o = run(&py, &[&script, "localhost", &h.port("wss.default"), "/mqtt", v, &ca]);
        assert!(o.status.success(), "paho v{v} over wss: {}", text(&o));
    }
}

#[test]
fn chromium_shows_a_message_published_by_mosquitto_pub_over_websocket() {
    let Some(js) = js_dir() else { return };
    if !have("mosquitto_pub", &["--help"]) || !skip_unless(Path::new("/usr/bin/chromium").exists(), "chromium") {
        return;
    }
    let h = Halyard::start("[listeners.ws.default]\nbind = \"127.0.0.1:0\"\n");
    let ws = format!("ws://127.0.0.1:{}/mqtt", h.port("ws.default"));
    let shot = h.file("page.png").display().to_string();
    let script = js.join("browser.mjs").display().to_string();
    let (mut page, rx) = spawn_lines("timeout", &["40", "node", &script, &ws, "browser/demo", "hello, browser", &shot]);
    line_where(&rx, "SUBSCRIBED from the page", |l| l == "SUBSCRIBED");
    let o =
        run("mosquitto_pub", &["-p", &h.port("tcp.default"), "-t", "browser/demo", "-m", "hello, browser", "-q", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    let got = line_where(&rx, "RECEIVED from the page", |l| l.starts_with("RECEIVED "));
    assert_eq!(got, "RECEIVED browser/demo: hello, browser");
    let status = page.0.wait().expect("wait");
    assert!(status.success(), "browser script exit {status}");
    assert!(Path::new(&shot).is_file(), "screenshot taken");
    // The page's client connected through the WebSocket listener (the broker's own log says so).
    h.log_line(&["client connected", "chromium-page"]);
}

/// The subject CN of the certificate a listener presents, as openssl s_client reports it.
fn served_cn(port: &str, ca: &str) -> String {
    let addr = format!("127.0.0.1:{port}");
    let o = run("openssl", &["s_client", "-connect", &addr, "-CAfile", ca, "-servername", "localhost", "-brief"]);
    let out = text(&o);
    out.lines()
        .find_map(|l| l.strip_prefix("Peer certificate: "))
        .and_then(|s| s.split("CN = ").nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("no peer certificate in: {out}"))
}

#[test]
fn sighup_and_changed_files_reload_the_server_certificate() {
    if !have("openssl", &["version"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new("Server CA");
    let ca_pem = ca.write(&dir.path().join("ca.pem"));
    let base = dir.path().join("server");
    let (cert, key) = ca.issue("first", true, &base);
    let h = Halyard::start(&format!(
        "[listeners.ssl.default]\nbind = \"127.0.0.1:0\"\n[listeners.ssl.default.ssl_options]\ncertfile = {cert:?}\nkeyfile = {key:?}\n"
    ));
    let port = h.port("ssl.default");
    assert_eq!(served_cn(&port, &ca_pem), "first");
    ca.issue("second", true, &base);
    let st = Command::new("kill").args(["-HUP", &h.b.child.id().to_string()]).status().expect("kill");
    assert!(st.success());
    h.log_line(&["TLS files reloaded", "listeners.ssl.default"]);
    assert_eq!(served_cn(&port, &ca_pem), "second", "after SIGHUP");
    // Without a signal: files are looked at (at most once a second) as connections arrive.
    ca.issue("third", true, &base);
    let deadline = Instant::now() + T;
    loop {
        if served_cn(&port, &ca_pem) == "third" {
            break;
        }
        assert!(Instant::now() < deadline, "the changed certificate was not picked up");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(h.b.log.text().contains("TLS certificate reloaded"));
}

#[test]
fn a_certificate_file_that_does_not_load_stops_start_up_naming_the_listener() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.pem").display().to_string();
    let out = Command::new(BIN)
        .arg("start")
        .envs(common::ONLY_TCP)
        .env("HALYARD_LISTENERS__TCP__DEFAULT__BIND", "127.0.0.1:0")
        .env("HALYARD_LISTENERS__SSL__DEFAULT__ENABLE", "true")
        .env("HALYARD_LISTENERS__SSL__DEFAULT__BIND", "127.0.0.1:0")
        .env("HALYARD_LISTENERS__SSL__DEFAULT__SSL_OPTIONS__CERTFILE", &missing)
        .env("HALYARD_LISTENERS__SSL__DEFAULT__SSL_OPTIONS__KEYFILE", &missing)
        .env("HALYARD_NODE__DATA_DIR", dir.path())
        .output()
        .expect("run halyard");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listeners.ssl.default") && err.contains(&missing), "{err}");
}
