//! `halyard-bench`: an MQTT load generator in the manner of emqtt-bench, run as `halyard bench <scenario>`.
//!
//! Scenarios: `conn` (open and hold many connections, measure connect latency and the broker's RSS), `pub`,
//! `sub`, and the combined `fanin`, `fanout` and `pairs`, where publishers and subscribers run in this one
//! process and share its monotonic clock, so every delivery's latency is measured. Payloads carry a 16-byte
//! header (send time, publisher index, sequence number) from which subscribers count duplicates, reordering and
//! losses. Every client is a task doing raw TCP with our own codec (`halyard-codec`) on a multi-threaded runtime.
//!
//! The result is a [`Summary`], printed as JSON on stdout by [`run`]; [`run_scenario`] returns it to callers
//! (tests) that bring their own runtime.

mod client;
mod engine;
pub mod hist;
pub mod payload;
mod scenario;
mod sys;

pub use hist::Histogram;
pub use payload::{expand_topic, Header, HEADER_LEN};

use anyhow::{bail, Context, Result};
use clap::{ArgAction, Parser, ValueEnum};
use serde::Serialize;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Open -c connections at --connrate and hold them for --duration (connect latency, broker RSS with --pid).
    Conn,
    /// -c publishers on -t (default bench/%i).
    Pub,
    /// -c subscribers on -t (default bench/%i); counts and checks what arrives.
    Sub,
    /// -P publishers on bench/fanin/%i -> 1 subscriber on --filter (default bench/fanin/+).
    Fanin,
    /// 1 publisher -> -S subscribers on one topic (default bench/fanout).
    Fanout,
    /// -c pairs: publisher i -> its own subscriber on bench/pair/%i.
    Pairs,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Conn => "conn",
            Scenario::Pub => "pub",
            Scenario::Sub => "sub",
            Scenario::Fanin => "fanin",
            Scenario::Fanout => "fanout",
            Scenario::Pairs => "pairs",
        }
    }
}

/// How clients hand their packets to the socket. `coalesce` is the default: it keeps the generator's own cost per
/// message low, so a fast broker is measured rather than the generator, and it does not change what Mosquitto 2.0
/// (which reads one packet per three system calls however the bytes arrive) can do; see docs/performance.md,
/// "Generator fairness".
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    /// As many packets per write as are ready: a publisher encodes up to 64 KiB of PUBLISH (its open window) and
    /// writes them at once, a subscriber acknowledges everything one read brought in one write.
    #[default]
    Coalesce,
    /// One write system call per packet (PUBLISH, and the subscribers' PUBACK/PUBREC/PUBCOMP), as client
    /// libraries such as Paho or libmosquitto do: a packet is written as soon as it is made. Packets still pile up
    /// in the buffer (and go out together) only while the socket does not take more.
    Each,
}

/// `halyard bench <scenario> [options]`. The options live in a box so the `halyard` command enum stays small;
/// fields are reached through `Deref` (`args.port`).
#[derive(clap::Args, Debug, Clone)]
#[command(
    about = "MQTT load generator: conn, pub, sub, fanin, fanout, pairs",
    after_help = "Prints a progress line on stderr every second and a JSON summary on stdout.\n\
Examples:\n  halyard bench pairs -c 100 --qos 1 --inflight 64 --duration 10\n  \
halyard bench fanin -P 50 --qos 1 --size 1024\n  halyard bench fanout -S 1000 --rate 100\n  \
halyard bench conn -c 19000 --connrate 2000 --pid $(pidof halyard) --ifaddrs 127.0.0.1,127.0.0.2,127.0.0.3"
)]
pub struct BenchArgs {
    #[command(flatten)]
    pub options: Box<BenchOptions>,
}

impl std::ops::Deref for BenchArgs {
    type Target = BenchOptions;
    fn deref(&self) -> &BenchOptions {
        &self.options
    }
}

impl std::ops::DerefMut for BenchArgs {
    fn deref_mut(&mut self) -> &mut BenchOptions {
        &mut self.options
    }
}

/// Every option of `halyard bench`.
#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct BenchOptions {
    /// The scenario to run.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Broker host (name or address).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Broker port.
    #[arg(short = 'p', long, default_value_t = 1883)]
    pub port: u16,
    /// Clients: connections (conn), publishers (pub), subscribers (sub), pairs (pairs).
    #[arg(short = 'c', long = "clients", default_value_t = 1)]
    pub clients: usize,
    /// Publishers of fanin.
    #[arg(short = 'P', long, default_value_t = 10)]
    pub publishers: usize,
    /// Subscribers of fanout.
    #[arg(short = 'S', long, default_value_t = 10)]
    pub subscribers: usize,
    /// Topic pattern; %i is the client index. Defaults: pub and sub bench/%i, fanin bench/fanin/%i,
    /// fanout bench/fanout, pairs bench/pair/%i.
    #[arg(short = 't', long)]
    pub topic: Option<String>,
    /// The fanin subscriber's filter (default bench/fanin/+).
    #[arg(long)]
    pub filter: Option<String>,
    /// QoS of publishing and of subscriptions.
    #[arg(short = 'q', long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload bytes (at least 16: the bench header).
    #[arg(short = 's', long, default_value_t = 16)]
    pub size: usize,
    /// Messages per second per publisher; 0 = as fast as the inflight window (QoS 1/2) or the socket (QoS 0) allows.
    #[arg(short = 'r', long, default_value_t = 0.0)]
    pub rate: f64,
    /// Outstanding QoS 1/2 messages per publisher (capped by the broker's v5 Receive Maximum).
    #[arg(short = 'i', long, default_value_t = 64)]
    pub inflight: usize,
    /// MQTT version: 4 (3.1.1) or 5.
    #[arg(long = "version", value_name = "4|5", default_value_t = 4, value_parser = clap::value_parser!(u8).range(4..=5))]
    pub mqtt_version: u8,
    /// Seconds of publishing (conn: of holding after all connected); also the hard cap with --count.
    #[arg(short = 'd', long, default_value_t = 10.0)]
    pub duration: f64,
    /// Messages per publisher (sub: per subscriber); the run ends when all are sent (received) or at --duration.
    #[arg(short = 'n', long)]
    pub count: Option<u64>,
    /// New connections per second (0 = all at once).
    #[arg(long, default_value_t = 1000.0)]
    pub connrate: f64,
    /// Keepalive in seconds; a PINGREQ goes out at this interval (0 = none).
    #[arg(short = 'k', long, default_value_t = 60)]
    pub keepalive: u16,
    /// The broker's process id: report its RSS (VmRSS) before connecting and after, and its CPU use.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Local source addresses for client sockets, used round-robin (e.g. 127.0.0.1,127.0.0.2) so many
    /// connections do not exhaust the ephemeral ports of one address.
    #[arg(long, value_delimiter = ',')]
    pub ifaddrs: Vec<IpAddr>,
    /// How packets are written: `coalesce` (every packet that is ready in one write) or `each` (one write system
    /// call per packet, like client libraries). See docs/performance.md, "Generator fairness".
    #[arg(long = "write", value_enum, default_value_t = WriteMode::Coalesce)]
    pub write: WriteMode,
    /// TCP_NODELAY on client sockets: `--nodelay false` leaves Nagle's algorithm on.
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub nodelay: bool,
    /// Worker threads of the generator's runtime (default: all cores it may run on).
    #[arg(long)]
    pub threads: Option<usize>,
    /// After publishers stop: wait at most this long for outstanding acks and deliveries.
    #[arg(long, default_value_t = 2000)]
    pub drain_ms: u64,
    #[arg(short = 'u', long)]
    pub username: Option<String>,
    #[arg(long)]
    #[serde(skip)]
    pub password: Option<String>,
    /// Clean session (v3.1.1) / clean start (v5): `--clean` or `--clean false`.
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub clean: bool,
    /// Session Expiry Interval in seconds (v5 CONNECT property).
    #[arg(long)]
    pub session_expiry: Option<u32>,
    /// Seconds allowed for TCP connect + CONNACK, and for SUBACK.
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Client id prefix (default hb<pid>r<run>): ids are <prefix>-p<i>, -s<i>, -c<i>.
    #[arg(long)]
    pub client_prefix: Option<String>,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Parser)]
#[command(name = "bench", no_binary_name = true)]
struct Standalone {
    #[command(flatten)]
    args: BenchArgs,
}

/// Parses bench arguments (without the `halyard bench` words), e.g. `["pairs", "-c", "4"]`.
pub fn parse_args<I, T>(args: I) -> Result<BenchArgs, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    Standalone::try_parse_from(args).map(|s| s.args)
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct LatencyUs {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub samples: u64,
}

/// Connect latency (TCP connect to CONNACK) in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct ConnectMs {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// The broker's resident set size in KiB.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct RssKib {
    pub before: u64,
    pub after: u64,
    /// (after - before) / established connections. For message scenarios "after" is read when publishing stops.
    pub per_conn: f64,
}

/// How evenly the broker served clients: min, mean and max of a per-client count (see `Summary::per_subscriber`
/// and `Summary::per_publisher`).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct PerClient {
    pub min: u64,
    pub mean: f64,
    pub max: u64,
    /// min / mean (1 when all got the same; 0 when one got nothing, or when nothing arrived at all).
    pub min_over_mean: f64,
}

impl PerClient {
    /// None for no clients.
    pub fn of(counts: &[u64]) -> Option<PerClient> {
        let min = *counts.iter().min()?;
        let max = *counts.iter().max()?;
        let mean = counts.iter().sum::<u64>() as f64 / counts.len() as f64;
        let ratio = if mean > 0.0 { min as f64 / mean } else { 0.0 };
        Some(PerClient {
            min,
            mean: (mean * 100.0).round() / 100.0,
            max,
            min_over_mean: (ratio * 1000.0).round() / 1000.0,
        })
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Connections {
    pub established: u64,
    pub failed: u64,
    /// Closed by the broker (or broken) before the run ended.
    pub dropped: u64,
}

/// What a run measured; printed as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub scenario: Scenario,
    pub parameters: BenchOptions,
    pub publishers: usize,
    pub subscribers: usize,
    /// Seconds of publishing (conn: of holding).
    pub duration_s: f64,
    /// PUBLISH packets written.
    pub sent: u64,
    /// Acknowledged with success (QoS 0: equal to sent).
    pub acked: u64,
    /// v5 PUBACK/PUBREC with a failure reason code.
    pub ack_failures: u64,
    /// Sent but not acknowledged when publishers stopped (drain ran out).
    pub unacked: u64,
    /// PUBLISH packets delivered to our subscribers, duplicates included.
    pub received: u64,
    pub received_unique: u64,
    /// PUBLISH packets each subscriber received (duplicates included): min, mean, max (None without subscribers).
    /// The least-served subscriber of a fan-out is `min`.
    pub per_subscriber: Option<PerClient>,
    /// Messages of each publisher that reached our subscribers (unique, summed over subscribers): min, mean, max
    /// (None without publishers, or when the scenario cannot tell: `pub` alone). The least-served publisher of a
    /// fan-in is `min`.
    pub per_publisher: Option<PerClient>,
    /// Deliveries owed: acked × subscribers per message (None when the scenario cannot know).
    pub expected: Option<u64>,
    /// Delivered messages per second (from the start of publishing to the last delivery).
    pub msgs_per_s: f64,
    /// Deliveries per second while publishers were publishing (below msgs_per_s: a backlog built up and was
    /// delivered, or dropped, afterwards).
    pub msgs_per_s_while_publishing: f64,
    /// Published messages per second over duration_s.
    pub sent_per_s: f64,
    /// expected − received unique, per publisher (None when the scenario cannot know). At QoS 0 a broker may
    /// drop what it cannot deliver, so loss there is a measurement, not an error (see `loss_expected`).
    pub lost: Option<u64>,
    /// lost / expected (None when the scenario cannot know, or nothing was expected).
    pub lost_ratio: Option<f64>,
    /// True for QoS 0 runs: the protocol lets a broker drop such messages, so `lost` is reported, not an error.
    pub loss_expected: bool,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Deliveries without a bench header.
    pub malformed: u64,
    /// Whether every expected delivery arrived before the drain period ran out.
    pub drain_complete: bool,
    pub latency_us: Option<LatencyUs>,
    pub connections: Connections,
    pub connect_ms: Option<ConnectMs>,
    pub broker_rss_kib: Option<RssKib>,
    /// The broker's CPU (with --pid) over the same period as generator_cpu_pct, in % of one core.
    pub broker_cpu_pct: Option<f64>,
    /// The generator's CPU (user + system) while publishing (conn: over the whole run), in % of one core.
    pub generator_cpu_pct: f64,
    pub generator_threads: usize,
    /// The first errors clients met (at most 20), and how many there were in all.
    pub errors: Vec<String>,
    pub error_count: usize,
}

fn default_threads() -> usize {
    // Respects the CPU affinity mask, so under `taskset -c 1` this is 1.
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// `halyard bench ...`: runs the scenario on its own multi-threaded runtime and prints the JSON summary.
pub fn run(args: BenchArgs) -> Result<()> {
    let threads = args.threads.unwrap_or_else(default_threads).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .thread_name("bench")
        .build()
        .context("cannot start the async runtime")?;
    let summary = runtime.block_on(run_scenario(args))?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    // Clients have closed; do not wait on anything left.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    Ok(())
}

/// Runs one scenario on the current (multi-threaded) runtime and returns its summary.
pub async fn run_scenario(args: BenchArgs) -> Result<Summary> {
    validate(&args)?;
    engine::now_ns(); // fix the process-wide start instant
    if let Err(e) = sys::raise_nofile_limit() {
        eprintln!("bench: cannot raise the open-file limit: {e}");
    }
    match args.scenario {
        Scenario::Conn => scenario::run_conn(args).await,
        _ => scenario::run_pubsub(args).await,
    }
}

fn validate(a: &BenchOptions) -> Result<()> {
    if a.size < HEADER_LEN {
        bail!("--size must be at least {HEADER_LEN} (the bench header)");
    }
    if !(a.duration > 0.0 && a.duration.is_finite()) {
        bail!("--duration must be a positive number of seconds");
    }
    if !(a.rate >= 0.0 && a.rate.is_finite() && a.connrate >= 0.0 && a.connrate.is_finite()) {
        bail!("--rate and --connrate must be >= 0");
    }
    if !(a.connect_timeout > 0.0 && a.connect_timeout.is_finite()) {
        bail!("--connect-timeout must be positive");
    }
    let clients = match a.scenario {
        Scenario::Fanin => a.publishers,
        Scenario::Fanout => a.subscribers,
        _ => a.clients,
    };
    if clients == 0 {
        bail!("the client count (-c, -P or -S) must be at least 1");
    }
    if a.inflight == 0 {
        bail!("--inflight must be at least 1");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_emqtt_bench_style_arguments() {
        let a =
            parse_args(["pairs", "-c", "4", "-q", "1", "--version", "5", "--ifaddrs", "127.0.0.1,127.0.0.2"]).unwrap();
        assert_eq!(a.scenario, Scenario::Pairs);
        assert_eq!(a.clients, 4);
        assert_eq!(a.qos, 1);
        assert_eq!(a.mqtt_version, 5);
        assert_eq!(a.ifaddrs.len(), 2);
        assert!(a.clean);
        let a = parse_args(["conn", "--clean", "false", "--session-expiry", "60"]).unwrap();
        assert!(!a.clean);
        assert_eq!(a.session_expiry, Some(60));
        let a = parse_args(["sub", "--clean"]).unwrap();
        assert!(a.clean);
        assert!(parse_args(["pub", "--qos", "3"]).is_err());
        assert!(parse_args(["nope"]).is_err());
        assert!(validate(&parse_args(["pub", "--size", "15"]).unwrap()).is_err());
        assert!(validate(&parse_args(["fanin", "-P", "0"]).unwrap()).is_err());
        let a = parse_args(["pairs"]).unwrap();
        assert_eq!(a.write, WriteMode::Coalesce);
        assert!(a.nodelay);
        let a = parse_args(["pairs", "--write", "each", "--nodelay", "false"]).unwrap();
        assert_eq!(a.write, WriteMode::Each);
        assert!(!a.nodelay);
        assert!(parse_args(["pairs", "--write", "sometimes"]).is_err());
    }

    #[test]
    fn per_client_min_mean_max() {
        assert_eq!(PerClient::of(&[]), None);
        let p = PerClient::of(&[10, 20, 30, 40]).unwrap();
        assert_eq!((p.min, p.mean, p.max, p.min_over_mean), (10, 25.0, 40, 0.4));
        let p = PerClient::of(&[0, 0]).unwrap();
        assert_eq!((p.min, p.mean, p.max, p.min_over_mean), (0, 0.0, 0, 0.0));
    }
}
