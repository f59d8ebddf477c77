//! Routing one message to 10k subscribers of one topic and queueing it for each (fan-out): the per-subscriber cost.
//! And `Broker::publish` with no hook, and with no-op `message.publish` / `message.delivered` callbacks: what a
//! registered hook costs on the publish path (an unregistered one should cost nothing measurable).

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use halyard_codec::{QoS, SubscriptionOptions, Utf8};
use halyard_core::config::{Config, SharedStrategy};
use halyard_core::hooks::Fold;
use halyard_core::router::{Router, SubEntry};
use halyard_core::session::SessionHandle;
use halyard_core::{Broker, Message};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn bench(c: &mut Criterion) {
    let router = Router::default();
    // Pushes count their drops through a broker (none happen here: the queues are emptied every iteration).
    let broker = Broker::new(Config::default());
    let metrics = &broker.metrics;
    let sessions: Vec<Arc<SessionHandle>> = (0..10_000u64)
        .map(|i| Arc::new(SessionHandle::new(i + 1, Arc::from(format!("c{i}").as_str()), 1 << 20, true)))
        .collect();
    for s in &sessions {
        let options = SubscriptionOptions { qos: QoS::AtLeastOnce, ..Default::default() };
        router.subscribe("fan/out", None, SubEntry { session: s.clone(), options, sub_id: None });
    }
    let msg = Arc::new(Message {
        id: 0,
        topic: Utf8::from("fan/out"),
        payload: Bytes::from_static(&[0u8; 16]),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: None,
        publisher: None,
        expires_at: None,
    });
    let mut g = c.benchmark_group("route");
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("one message to 10k subscribers", |b| {
        // Only `route` is timed; emptying the queues between iterations keeps them from growing.
        let mut targets = Vec::new();
        let mut ops = Vec::new();
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                black_box(router.route(&msg, SharedStrategy::RoundRobin, metrics, &mut targets));
                for (session, d) in targets.drain(..) {
                    let _ = session.push(d, &broker, &mut ops);
                }
                total += t.elapsed();
                for s in &sessions {
                    s.clear_queue();
                }
            }
            total
        })
    });
    g.finish();
    publish(c);
}

/// One QoS 0 message to 100 subscribers through `Broker::publish`, three ways.
fn publish(c: &mut Criterion) {
    let mut g = c.benchmark_group("publish");
    g.throughput(Throughput::Elements(1));
    for case in ["no hooks", "no-op message.publish + message.delivered", "no-op callbacks unregistered"] {
        let broker = Broker::new(Config::default());
        let sessions: Vec<Arc<SessionHandle>> = (0..100u64)
            .map(|i| Arc::new(SessionHandle::new(i + 1, Arc::from(format!("p{i}").as_str()), 1 << 20, true)))
            .collect();
        for s in &sessions {
            let options = SubscriptionOptions { qos: QoS::AtMostOnce, ..Default::default() };
            broker.subscribe(s, "pub/hook", None, options, None);
        }
        if case != "no hooks" {
            let a = broker.hooks.message_publish.register(0, Box::new(Fold::Continue));
            let b = broker.hooks.message_delivered.register(0, Box::new(|_, _| {}));
            if case == "no-op callbacks unregistered" {
                // Registered once and gone: the hook is back to its unused cost.
                broker.hooks.message_publish.unregister(a);
                broker.hooks.message_delivered.unregister(b);
            }
        }
        let msg = Arc::new(Message {
            id: 0,
            topic: Utf8::from("pub/hook"),
            payload: Bytes::from_static(&[0u8; 16]),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: None,
            publisher: None,
            expires_at: None,
        });
        g.bench_function(case, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    black_box(broker.publish(msg.clone()));
                    total += t.elapsed();
                    for s in &sessions {
                        s.clear_queue();
                    }
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
