//! The controllers: set clients up (paced by --connrate, bounded by timeouts), run, stop, drain, aggregate.

use crate::client::{self, ConnectOpts};
use crate::engine::{
    self, run_publisher, run_subscriber, PubCfg, PubResult, Shared, SubCfg, SubResult, CLOSE, RUN, STOP,
};
use crate::{
    expand_topic, sys, BenchArgs, ConnectMs, Connections, Histogram, LatencyUs, PerClient, RssKib, Scenario, Summary,
};
use anyhow::{anyhow, Context, Result};
use halyard_codec::{ProtocolVersion, QoS};
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep, sleep_until, timeout, timeout_at, Instant};

/// Distinguishes runs of one process (tests), so client ids never collide and cause takeovers.
static RUN_NO: AtomicU32 = AtomicU32::new(0);

const MAX_ERRORS: usize = 20;

async fn connect_opts(a: &BenchArgs) -> Result<ConnectOpts> {
    let target = format!("{}:{}", a.host, a.port);
    let addr = tokio::net::lookup_host(&target)
        .await
        .with_context(|| format!("cannot resolve {target}"))?
        .next()
        .with_context(|| format!("{target} resolves to no address"))?;
    Ok(ConnectOpts {
        addr,
        ifaddrs: a.ifaddrs.clone(),
        version: if a.mqtt_version == 5 { ProtocolVersion::V5 } else { ProtocolVersion::V4 },
        clean: a.clean,
        session_expiry: a.session_expiry,
        keepalive: a.keepalive,
        username: a.username.clone(),
        password: a.password.clone(),
        timeout: Duration::from_secs_f64(a.connect_timeout),
        nodelay: a.nodelay,
        write_each: a.write == crate::WriteMode::Each,
    })
}

fn prefix(a: &BenchArgs) -> String {
    a.client_prefix.clone().unwrap_or_else(|| format!("hb{}r{}", std::process::id(), RUN_NO.fetch_add(1, Relaxed)))
}

/// Who publishes where and who subscribes to what.
struct Plan {
    /// (publisher index, topic)
    pubs: Vec<(u32, String)>,
    /// (subscriber index, filter)
    subs: Vec<(usize, String)>,
    /// Copies of each published message our subscribers should get (None: unknown, e.g. `pub` or `sub` alone).
    fanout: Option<u64>,
    /// Publishers share our clock.
    latency: bool,
}

fn plan(a: &BenchArgs) -> Plan {
    let topic = |default: &str| a.topic.clone().unwrap_or_else(|| default.to_string());
    let each =
        |n: usize, pattern: &str| -> Vec<(usize, String)> { (0..n).map(|i| (i, expand_topic(pattern, i))).collect() };
    let as_pubs = |v: Vec<(usize, String)>| v.into_iter().map(|(i, t)| (i as u32, t)).collect();
    match a.scenario {
        Scenario::Pub => {
            Plan { pubs: as_pubs(each(a.clients, &topic("bench/%i"))), subs: vec![], fanout: None, latency: false }
        }
        Scenario::Sub => Plan { pubs: vec![], subs: each(a.clients, &topic("bench/%i")), fanout: None, latency: false },
        Scenario::Fanin => Plan {
            pubs: as_pubs(each(a.publishers, &topic("bench/fanin/%i"))),
            subs: vec![(0, a.filter.clone().unwrap_or_else(|| "bench/fanin/+".into()))],
            fanout: Some(1),
            latency: true,
        },
        Scenario::Fanout => {
            let t = expand_topic(&topic("bench/fanout"), 0);
            Plan {
                pubs: vec![(0, t.clone())],
                subs: (0..a.subscribers).map(|i| (i, t.clone())).collect(),
                fanout: Some(a.subscribers as u64),
                latency: true,
            }
        }
        Scenario::Pairs => {
            let v = each(a.clients, &topic("bench/pair/%i"));
            Plan { pubs: as_pubs(v.clone()), subs: v, fanout: Some(1), latency: true }
        }
        Scenario::Conn => unreachable!("conn has its own controller"),
    }
}

/// Spawns `make(i)` for i in 0..n, at most `connrate` per second (0 = all at once).
async fn spawn_paced<T, F, Fut>(n: usize, connrate: f64, mut make: F) -> Vec<JoinHandle<T>>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let start = Instant::now();
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        if connrate > 0.0 && i > 0 {
            sleep_until(start + Duration::from_secs_f64(i as f64 / connrate)).await;
        }
        handles.push(tokio::spawn(make(i)));
    }
    handles
}

/// The progress line on stderr, once a second.
fn spawn_progress(shared: Arc<Shared>, t0: Instant, conns: bool) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(t0 + Duration::from_secs(1), Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let (mut last, mut ls, mut la, mut lr) = (t0, 0u64, 0u64, 0u64);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let dt = (now - last).as_secs_f64().max(1e-3);
            let elapsed = (now - t0).as_secs_f64();
            if conns {
                eprintln!(
                    "[{elapsed:7.1}s] connections: {} up, {} failed, {} dropped",
                    shared.established.load(Relaxed),
                    shared.failed.load(Relaxed),
                    shared.dropped.load(Relaxed)
                );
            } else {
                let (s, a, r) = (shared.sent.load(Relaxed), shared.acked.load(Relaxed), shared.received.load(Relaxed));
                eprintln!(
                    "[{elapsed:7.1}s] sent {:.0}/s  acked {:.0}/s  received {:.0}/s  inflight {}  (totals {s} / {a} / {r})",
                    (s - ls) as f64 / dt,
                    (a - la) as f64 / dt,
                    (r - lr) as f64 / dt,
                    shared.inflight.load(Relaxed)
                );
                (ls, la, lr) = (s, a, r);
            }
            last = now;
        }
    })
}

#[derive(Default)]
struct Errors {
    first: Vec<String>,
    count: usize,
}

impl Errors {
    fn add(&mut self, e: Option<String>) {
        if let Some(e) = e {
            self.count += 1;
            if self.first.len() < MAX_ERRORS {
                self.first.push(e);
            }
        }
    }
}

fn cpu_pct(cpu: Duration, wall: Duration) -> f64 {
    round2(100.0 * cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9))
}

/// The broker's CPU since `before`, in % of one core over `wall` (None without --pid or when it cannot be read).
fn broker_cpu(pid: Option<u32>, before: Option<Duration>, wall: Duration) -> Option<f64> {
    let now = sys::process_cpu(pid?).ok()?;
    Some(cpu_pct(now.saturating_sub(before?), wall))
}

fn rss(before: Option<u64>, after: Option<u64>, conns: u64) -> Option<RssKib> {
    let (before, after) = (before?, after?);
    Some(RssKib { before, after, per_conn: round3(after.saturating_sub(before) as f64 / conns.max(1) as f64) })
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// pub, sub, fanin, fanout, pairs.
pub async fn run_pubsub(a: BenchArgs) -> Result<Summary> {
    let opts = Arc::new(connect_opts(&a).await?);
    let plan = plan(&a);
    let qos = QoS::from_u8(a.qos).context("--qos")?;
    let prefix = prefix(&a);
    let shared = Arc::new(Shared::default());
    let (phase_tx, phase_rx) = watch::channel(RUN);
    let mut errors = Errors::default();
    let (nsubs, npubs) = (plan.subs.len(), plan.pubs.len());
    let sub_count = if a.scenario == Scenario::Sub { a.count } else { None };
    let rss_before = a.pid.map(sys::rss_kib).transpose()?;

    // 1. Subscribers: connected and their SUBACK in hand before anything is published.
    let setup = spawn_paced(nsubs, a.connrate, |k| {
        let (_, filter) = plan.subs[k].clone();
        let (o, id) = (opts.clone(), format!("{prefix}-s{}", plan.subs[k].0));
        async move {
            let mut conn = client::connect(&o, k, &id).await?;
            conn.subscribe(&filter, qos, o.timeout).await?;
            anyhow::Ok(conn)
        }
    })
    .await;
    let mut sub_handles = Vec::with_capacity(nsubs);
    for (k, h) in setup.into_iter().enumerate() {
        let conn = h.await.context("subscriber set-up task")?.with_context(|| format!("subscriber {k}"))?;
        shared.established.fetch_add(1, Relaxed);
        let cfg = SubCfg { index: plan.subs[k].0, count: sub_count, latency: plan.latency };
        sub_handles.push(tokio::spawn(run_subscriber(conn, cfg, shared.clone(), phase_rx.clone())));
    }

    // 2. Publishers: connected, not yet publishing.
    let setup = spawn_paced(npubs, a.connrate, |k| {
        let (o, id) = (opts.clone(), format!("{prefix}-p{}", plan.pubs[k].0));
        async move { client::connect(&o, nsubs + k, &id).await }
    })
    .await;
    let mut pub_conns = Vec::with_capacity(npubs);
    for (k, h) in setup.into_iter().enumerate() {
        pub_conns.push(h.await.context("publisher set-up task")?.with_context(|| format!("publisher {k}"))?);
        shared.established.fetch_add(1, Relaxed);
    }

    // 3. Go. Rate-limited publishers are staggered over one period so they do not fire in lockstep.
    let cpu0 = sys::cpu_time();
    let broker_cpu0 = a.pid.map(sys::process_cpu).transpose()?;
    let t0 = Instant::now();
    let t0_ns = engine::now_ns();
    let mut pub_handles = Vec::with_capacity(npubs);
    for (k, conn) in pub_conns.into_iter().enumerate() {
        let stagger =
            if a.rate > 0.0 { Duration::from_secs_f64(k as f64 / npubs as f64 / a.rate) } else { Duration::ZERO };
        let cfg = PubCfg {
            index: plan.pubs[k].0,
            topic: plan.pubs[k].1.clone(),
            qos,
            size: a.size,
            rate: a.rate,
            inflight: a.inflight,
            count: a.count,
            t0: t0 + stagger,
        };
        pub_handles.push(tokio::spawn(run_publisher(conn, cfg, shared.clone(), phase_rx.clone())));
    }
    let progress = (!a.quiet).then(|| spawn_progress(shared.clone(), t0, false));

    // 4. Until --duration, or every publisher sent --count (sub: every subscriber received --count).
    let end = t0 + Duration::from_secs_f64(a.duration);
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if a.count.is_some() {
            if npubs > 0 && shared.pubs_done.load(Relaxed) >= npubs {
                break;
            }
            if npubs == 0 && shared.subs_done.load(Relaxed) >= nsubs {
                break;
            }
        }
        if npubs > 0 && pub_handles.iter().all(|h| h.is_finished()) {
            break; // every publisher died
        }
        sleep_until((now + Duration::from_millis(10)).min(end)).await;
    }
    let _ = phase_tx.send(STOP);
    let stop_at = Instant::now();
    // CPU over the publishing phase: that is where saturation would distort the result.
    let cpu = sys::cpu_time().saturating_sub(cpu0);
    let broker_cpu = broker_cpu(a.pid, broker_cpu0, stop_at - t0);
    let received_while_publishing = shared.received.load(Relaxed);
    let rss_after = a.pid.map(sys::rss_kib).transpose()?;
    let deadline = stop_at + Duration::from_millis(a.drain_ms);

    // 5. Publishers collect their outstanding acks, until the drain deadline at most.
    let mut pubs: Vec<PubResult> = Vec::with_capacity(npubs);
    for mut h in pub_handles {
        let r = match timeout_at(deadline, &mut h).await {
            Ok(r) => r,
            Err(_) => {
                let _ = phase_tx.send(CLOSE);
                timeout(Duration::from_secs(5), h).await.map_err(|_| anyhow!("a publisher did not stop"))?
            }
        };
        pubs.push(r.context("publisher task")?);
    }

    // 6. Subscribers: until every expected delivery arrived, or the drain deadline.
    let acked: u64 = pubs.iter().map(|r| r.acked).sum();
    let expected = plan.fanout.map(|f| acked * f);
    let drain_complete = match expected {
        Some(e) => loop {
            if shared.unique.load(Relaxed) >= e {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            sleep(Duration::from_millis(5)).await;
        },
        None => true,
    };
    let _ = phase_tx.send(CLOSE);
    let mut subs: Vec<SubResult> = Vec::with_capacity(nsubs);
    for h in sub_handles {
        let r = timeout(Duration::from_secs(5), h).await.map_err(|_| anyhow!("a subscriber did not stop"))?;
        subs.push(r.context("subscriber task")?);
    }
    if let Some(p) = progress {
        p.abort();
    }

    // 7. Aggregate.
    let mut hist = Histogram::new();
    let mut unique_by_pub: Vec<u64> = Vec::new();
    let (mut received, mut unique, mut dups, mut ooo, mut malformed, mut last_ns) = (0, 0, 0, 0, 0, 0);
    for s in &subs {
        hist.merge(&s.hist);
        received += s.received;
        unique += s.unique;
        malformed += s.malformed;
        last_ns = last_ns.max(s.last_recv_ns);
        if unique_by_pub.len() < s.tracks.len() {
            unique_by_pub.resize(s.tracks.len(), 0);
        }
        for (i, t) in s.tracks.iter().enumerate() {
            unique_by_pub[i] += t.unique;
            dups += t.duplicates;
            ooo += t.out_of_order;
        }
        errors.add(s.error.clone());
    }
    for p in &pubs {
        errors.add(p.error.clone());
    }
    let lost = plan.fanout.map(|f| {
        pubs.iter()
            .map(|p| (p.acked * f).saturating_sub(unique_by_pub.get(p.index as usize).copied().unwrap_or(0)))
            .sum()
    });
    let lost_ratio = match (lost, expected) {
        (Some(l), Some(e)) if e > 0 => Some(round3(l as f64 / e as f64)),
        _ => None,
    };
    let per_subscriber = PerClient::of(&subs.iter().map(|s| s.received).collect::<Vec<_>>());
    let per_publisher = plan.fanout.and_then(|_| {
        PerClient::of(
            &pubs.iter().map(|p| unique_by_pub.get(p.index as usize).copied().unwrap_or(0)).collect::<Vec<_>>(),
        )
    });
    let sent: u64 = pubs.iter().map(|r| r.sent).sum();
    let duration_s = (stop_at - t0).as_secs_f64();
    let recv_span = last_ns.saturating_sub(t0_ns) as f64 / 1e9;
    let windows: Vec<usize> = pubs.iter().map(|p| p.window).collect();
    if qos != QoS::AtMostOnce && windows.iter().any(|&w| w < a.inflight) {
        errors.add(Some(format!(
            "the broker's Receive Maximum capped --inflight {} to {}",
            a.inflight,
            windows.iter().min().copied().unwrap_or(0)
        )));
    }
    let unexpected: u64 = pubs.iter().map(|p| p.unexpected).sum();
    if unexpected > 0 {
        errors.add(Some(format!("publishers got {unexpected} unexpected packets or acks for unknown packet ids")));
    }
    Ok(Summary {
        scenario: a.scenario,
        publishers: npubs,
        subscribers: nsubs,
        duration_s: round3(duration_s),
        sent,
        acked,
        ack_failures: pubs.iter().map(|p| p.ack_failures).sum(),
        unacked: pubs.iter().map(|p| p.unacked_at_end as u64).sum(),
        received,
        received_unique: unique,
        per_subscriber,
        per_publisher,
        expected,
        msgs_per_s: if recv_span > 0.0 { round2(received as f64 / recv_span) } else { 0.0 },
        msgs_per_s_while_publishing: round2(received_while_publishing as f64 / duration_s.max(1e-9)),
        sent_per_s: round2(sent as f64 / duration_s.max(1e-9)),
        lost,
        lost_ratio,
        loss_expected: qos == QoS::AtMostOnce,
        duplicates: dups,
        out_of_order: ooo,
        malformed,
        drain_complete,
        latency_us: (!hist.is_empty()).then(|| LatencyUs {
            p50: hist.quantile(0.5),
            p99: hist.quantile(0.99),
            p999: hist.quantile(0.999),
            max: hist.max(),
            samples: hist.count(),
        }),
        connections: Connections {
            established: shared.established.load(Relaxed),
            failed: shared.failed.load(Relaxed),
            dropped: shared.dropped.load(Relaxed),
        },
        connect_ms: None,
        broker_rss_kib: rss(rss_before, rss_after, (nsubs + npubs) as u64),
        broker_cpu_pct: broker_cpu,
        generator_cpu_pct: cpu_pct(cpu, stop_at - t0),
        generator_threads: tokio::runtime::Handle::current().metrics().num_workers(),
        errors: errors.first,
        error_count: errors.count,
        parameters: *a.options,
    })
}

/// conn: open -c connections at --connrate, hold them (PINGREQ at the keepalive) for --duration.
pub async fn run_conn(a: BenchArgs) -> Result<Summary> {
    let opts = Arc::new(connect_opts(&a).await?);
    let prefix = prefix(&a);
    let shared = Arc::new(Shared::default());
    let (phase_tx, phase_rx) = watch::channel(RUN);
    let rss_before = a.pid.map(sys::rss_kib).transpose()?;
    let cpu0 = sys::cpu_time();
    let broker_cpu0 = a.pid.map(sys::process_cpu).transpose()?;
    let t0 = Instant::now();
    let progress = (!a.quiet).then(|| spawn_progress(shared.clone(), t0, true));
    let n = a.clients;

    let handles = spawn_paced(n, a.connrate, |i| {
        let (o, id, shared, phase) = (opts.clone(), format!("{prefix}-c{i}"), shared.clone(), phase_rx.clone());
        async move {
            let t = Instant::now();
            match client::connect(&o, i, &id).await {
                Ok(conn) => {
                    let us = t.elapsed().as_micros() as u64;
                    shared.established.fetch_add(1, Relaxed);
                    let r = run_subscriber(conn, SubCfg { index: i, count: None, latency: false }, shared, phase).await;
                    (Some(us), r.error)
                }
                Err(e) => {
                    shared.failed.fetch_add(1, Relaxed);
                    (None, Some(format!("connection {i}: {e:#}")))
                }
            }
        }
    })
    .await;
    // Every attempt has started; each ends within the connect timeout.
    let cap = Instant::now() + opts.timeout + Duration::from_secs(1);
    while shared.established.load(Relaxed) + shared.failed.load(Relaxed) < n as u64 && Instant::now() < cap {
        sleep(Duration::from_millis(20)).await;
    }
    let connected_s = t0.elapsed().as_secs_f64();
    let established = shared.established.load(Relaxed);
    // Let the broker settle before reading its RSS.
    let rss_after = match a.pid {
        Some(pid) => {
            sleep(Duration::from_millis(500)).await;
            Some(sys::rss_kib(pid)?)
        }
        None => None,
    };
    if !a.quiet {
        eprintln!("bench: {established} of {n} connected in {connected_s:.2}s; holding for {}s", a.duration);
    }
    let hold_start = Instant::now();
    sleep(Duration::from_secs_f64(a.duration)).await;
    let held_s = hold_start.elapsed().as_secs_f64();
    let dropped = shared.dropped.load(Relaxed);
    let _ = phase_tx.send(CLOSE);

    let mut hist = Histogram::new();
    let mut errors = Errors::default();
    let join_deadline = Instant::now() + Duration::from_secs(15);
    for h in handles {
        match timeout_at(join_deadline, h).await {
            Ok(Ok((lat, err))) => {
                if let Some(us) = lat {
                    hist.record(us);
                }
                errors.add(err);
            }
            Ok(Err(e)) => errors.add(Some(format!("connection task: {e}"))),
            Err(_) => errors.add(Some("a connection did not close in time".into())),
        }
    }
    let wall = t0.elapsed();
    let cpu = sys::cpu_time().saturating_sub(cpu0);
    let broker_cpu = broker_cpu(a.pid, broker_cpu0, wall);
    if let Some(p) = progress {
        p.abort();
    }
    let ms = |us: u64| round3(us as f64 / 1000.0);
    Ok(Summary {
        scenario: a.scenario,
        publishers: 0,
        subscribers: 0,
        duration_s: round3(held_s),
        sent: 0,
        acked: 0,
        ack_failures: 0,
        unacked: 0,
        received: 0,
        received_unique: 0,
        per_subscriber: None,
        per_publisher: None,
        expected: None,
        msgs_per_s: 0.0,
        msgs_per_s_while_publishing: 0.0,
        sent_per_s: 0.0,
        lost: None,
        lost_ratio: None,
        loss_expected: false,
        duplicates: 0,
        out_of_order: 0,
        malformed: 0,
        drain_complete: true,
        latency_us: None,
        connections: Connections { established, failed: shared.failed.load(Relaxed), dropped },
        connect_ms: (!hist.is_empty()).then(|| ConnectMs {
            p50: ms(hist.quantile(0.5)),
            p99: ms(hist.quantile(0.99)),
            max: ms(hist.max()),
        }),
        broker_rss_kib: rss(rss_before, rss_after, established),
        broker_cpu_pct: broker_cpu,
        generator_cpu_pct: cpu_pct(cpu, wall),
        generator_threads: tokio::runtime::Handle::current().metrics().num_workers(),
        errors: errors.first,
        error_count: errors.count,
        parameters: *a.options,
    })
}
