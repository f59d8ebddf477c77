//! Matching a 5-level topic against 1M subscriptions (70% exact, 30% wildcard). Target: median < 2 µs.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use halyard_topic::SubscriptionTrie;

/// Deterministic pseudo-random numbers so every run builds the same trie.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn topic(r: &mut Lcg) -> String {
    format!("t{}/d{}/s{}/m{}/v{}", r.next(10), r.next(100), r.next(100), r.next(10), r.next(10))
}

fn build(n: usize) -> SubscriptionTrie<u32, ()> {
    let mut r = Lcg(7);
    let mut t = SubscriptionTrie::new();
    for i in 0..n {
        let base = topic(&mut r);
        let filter = match r.next(10) {
            0..=6 => base,
            7 => {
                let mut levels: Vec<&str> = base.split('/').collect();
                let k = r.next(5) as usize;
                levels[k] = "+";
                levels.join("/")
            }
            8 => {
                let levels: Vec<&str> = base.split('/').collect();
                format!("{}/#", levels[..1 + r.next(4) as usize].join("/"))
            }
            _ => {
                let mut levels: Vec<&str> = base.split('/').collect();
                levels[1] = "+";
                levels[3] = "+";
                levels.join("/")
            }
        };
        t.insert(&filter, i as u32, ());
    }
    t
}

fn bench(c: &mut Criterion) {
    let n = std::env::var("TOPIC_BENCH_SUBS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let trie = build(n);
    let mut r = Lcg(99);
    let topics: Vec<String> = (0..4096).map(|_| topic(&mut r)).collect();
    let mut i = 0;
    c.bench_function(&format!("match/5-level/{n}-subs"), |b| {
        b.iter(|| {
            i = (i + 1) % topics.len();
            let mut hits = 0usize;
            trie.for_each_match(black_box(&topics[i]), |_, _, _| hits += 1);
            black_box(hits)
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
