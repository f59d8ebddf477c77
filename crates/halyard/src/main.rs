//! `halyard`: the broker's command line. Thin glue: parse arguments, load configuration, start the listeners,
//! wait for a signal, shut down.

use anyhow::Context;
use clap::{Parser, Subcommand};
use halyard_core::config::{self, Source};
use halyard_core::Broker;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "halyard", version, about = "Halyard MQTT broker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the broker (embedded defaults: MQTT over TCP on 0.0.0.0:1883, TLS on 8883, WebSocket on 8083,
    /// WebSocket over TLS on 8084). HALYARD_<SECTION>__<KEY> variables override the file, e.g.
    /// HALYARD_LISTENERS__TCP__DEFAULT__BIND=127.0.0.1:1884. SIGHUP reloads the TLS certificates.
    Start {
        /// A TOML configuration file (see halyard.toml in the repository for every key).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Operations on a stopped broker's files.
    Ctl {
        #[command(subcommand)]
        what: Ctl,
    },
    /// Load and check the configuration, print the effective listeners and zones, and exit.
    CheckConfig {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Load generator: conn, pub, sub, fanin, fanout, pairs (see `halyard bench --help`)
    Bench(halyard_bench::BenchArgs),
}

#[derive(Subcommand)]
enum Ctl {
    /// The durable store in the data directory (stop the broker first: the file is locked while it runs).
    Store {
        #[command(subcommand)]
        action: StoreAction,
    },
}

#[derive(Subcommand)]
enum StoreAction {
    /// Read every record and check that queue entries and message reference counts agree.
    Check {
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
    },
    /// Let redb repair the file, then fix reference counts and drop entries whose message is gone.
    Repair {
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("halyard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Start { config } => {
            let cfg = config::load(&Source::from_process(config)).context("cannot start")?;
            init_logging(&cfg.log.level);
            // One TLS crypto provider for the whole process (ring), before anything could pick another.
            if !halyard_transport::install_default_provider() {
                tracing::warn!("another TLS crypto provider was installed first; Halyard's listeners use ring anyway");
            }
            ignore_sigxfsz();
            limit_malloc_arenas();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("halyard")
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(start(cfg))
        }
        Command::Ctl { what: Ctl::Store { action } } => match action {
            StoreAction::Check { data_dir } => {
                let report = halyard_store::check(&data_dir).context("store check failed")?;
                println!("{report}");
                Ok(())
            }
            StoreAction::Repair { data_dir } => {
                let report = halyard_store::repair(&data_dir).context("store repair failed")?;
                println!("{report}");
                Ok(())
            }
        },
        Command::CheckConfig { config } => {
            let cfg = config::load(&Source::from_process(config))?;
            for (kind, name, l) in cfg.listeners.all() {
                println!("listener {kind}.{name}: bind {} zone {} enable {}", l.bind(), l.zone(), l.enable());
            }
            for (name, l) in &cfg.listeners.ssl {
                println!("listener ssl.{name}: {:?}", l.ssl_options);
            }
            for (name, l) in &cfg.listeners.ws {
                println!("listener ws.{name}: {:?}", l.websocket);
            }
            for (name, l) in &cfg.listeners.wss {
                println!("listener wss.{name}: {:?} {:?}", l.ssl_options, l.websocket);
            }
            for (name, z) in &cfg.zones {
                println!("zone {name}: {z:?}");
            }
            println!("configuration OK");
            Ok(())
        }
        Command::Bench(args) => halyard_bench::run(args),
    }
}

async fn start(cfg: config::Config) -> anyhow::Result<()> {
    raise_fd_limit(&cfg);
    let data_dir = cfg.node.data_dir.clone();
    // Stored sessions are routable before any listener accepts a connection.
    let broker = Broker::open(cfg).with_context(|| format!("cannot open the store in {data_dir}"))?;
    let server = halyard_server::start(broker.clone()).await.context("cannot start listeners")?;
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "halyard started");
    wait_for_signal(&server).await?;
    tracing::info!("shutting down");
    server.shutdown().await;
    broker.store.flush().context("cannot flush the store")?;
    let st = broker.store.stats();
    tracing::info!(
        commits = st.commits,
        fsyncs = st.fsyncs,
        ops = st.ops,
        largest_batch = st.largest_batch_ops,
        "store statistics"
    );
    Ok(())
}

/// Waits for SIGINT or SIGTERM; SIGHUP meanwhile reloads the TLS listeners' certificate files.
async fn wait_for_signal(server: &halyard_server::Server) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot install SIGHUP handler")?;
    loop {
        tokio::select! {
            r = tokio::signal::ctrl_c() => return r.context("cannot listen for SIGINT"),
            _ = term.recv() => return Ok(()),
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading TLS certificates");
                server.reload_certificates();
            }
        }
    }
}

/// Every connection is a file descriptor: raise the soft limit to the hard one, and say so when even that is
/// below what the listeners' `max_connections` allow (the limit, not the setting, then caps connections).
fn raise_fd_limit(cfg: &config::Config) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read or write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        tracing::warn!("cannot read the open-file limit");
        return;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::info!(from = lim.rlim_cur, to = lim.rlim_max, "raised the open-file limit to its hard limit");
            lim = raised;
        }
    }
    let wanted: u64 =
        cfg.listeners.all().filter(|(_, _, l)| l.enable()).map(|(_, _, l)| l.max_connections() as u64).sum();
    // A few descriptors go to listeners, the store and logs.
    let usable = lim.rlim_cur.saturating_sub(64);
    if usable < wanted {
        tracing::warn!(
            open_file_limit = lim.rlim_cur,
            max_connections = wanted,
            "the open-file limit caps connections at about {usable}, below the listeners' max_connections; raise it with `ulimit -n` / LimitNOFILE"
        );
    }
}

/// A write past the file-size limit (RLIMIT_FSIZE, e.g. systemd's LimitFSIZE) raises SIGXFSZ, whose default
/// action kills the process without a word. Ignored, the write fails with EFBIG instead: the store logs which
/// file and why, refuses new QoS 1/2 work (0x97 / disconnect) and keeps what it acknowledged, as for a full disk.
fn ignore_sigxfsz() {
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler and affects only this process.
    if unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) } == libc::SIG_ERR {
        tracing::warn!("cannot ignore SIGXFSZ: exceeding the file-size limit will kill the broker");
    }
}

/// glibc gives each thread that allocates its own arena (up to eight per core), so per-connection objects made
/// on different runtime threads spread over several heaps and fragment them. Two arenas: 1.91 KiB per idle
/// connection instead of 2.06 (10,000 connections), with no throughput difference measurable here
/// (docs/performance.md). A `MALLOC_ARENA_MAX` set by the operator wins. Called before the runtime starts
/// its threads.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only tunes the allocator, and no other thread is allocating yet.
        if unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) } == 0 {
            tracing::debug!("mallopt(M_ARENA_MAX) refused; keeping glibc's default arenas");
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn init_logging(level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: a log file or journald gets plain `key=value` fields.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
}
