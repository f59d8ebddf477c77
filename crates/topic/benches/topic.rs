//! Matching a 5-level topic against 1M subscriptions (70% exact, 30% wildcard). Target: median < 2 µs.
//!
//! Two mixes of the same shape (70% exact, 10% one `+`, 10% trailing `#`, 10% two `+`):
//! - `match/5-level`: narrow level alphabets, so filters collide a lot (about 2,500 subscribers share each
//!   `t<n>/#`) and most of the time goes to reporting matches. This is the mix quoted in the docs.
//! - `match/5-level-distinct`: wide alphabets, so nearly every filter is distinct (per-device subscriptions)
//!   and the time goes to finding the few matches. Each looked-up topic is the topic some subscription was
//!   made from, so it always matches at least that one.
//!
//! Both print their matches per lookup before measuring. `TOPIC_BENCH_SUBS` sets the subscription count.

use std::collections::HashSet;

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

/// Wide alphabets: 10^4 tenants, 10^5 devices, ... so exact and wildcard filters rarely coincide.
fn wide_topic(r: &mut Lcg) -> String {
    format!("t{}/d{}/s{}/m{}/v{}", r.next(10_000), r.next(100_000), r.next(1_000), r.next(100), r.next(100))
}

/// Builds `n` subscriptions from topics made by `gen`; also returns the topics every `sample_every`-th
/// subscription was made from, and the number of distinct filters.
fn build(
    n: usize,
    gen: fn(&mut Lcg) -> String,
    sample_every: usize,
) -> (SubscriptionTrie<u32, ()>, Vec<String>, usize) {
    let mut r = Lcg(7);
    let mut t = SubscriptionTrie::new();
    let mut samples = Vec::new();
    let mut distinct = HashSet::new();
    for i in 0..n {
        let base = gen(&mut r);
        let filter = match r.next(10) {
            0..=6 => base.clone(),
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
        distinct.insert(filter);
        if i % sample_every == 0 {
            samples.push(base);
        }
    }
    (t, samples, distinct.len())
}

fn report(name: &str, trie: &SubscriptionTrie<u32, ()>, distinct: usize, topics: &[String]) {
    let counts: Vec<usize> = topics
        .iter()
        .map(|topic| {
            let mut hits = 0;
            trie.for_each_match(topic, |_, _, _| hits += 1);
            hits
        })
        .collect();
    let total: usize = counts.iter().sum();
    let min = counts.iter().min().copied().unwrap_or(0);
    let max = counts.iter().max().copied().unwrap_or(0);
    eprintln!(
        "{name}: {} subscriptions, {distinct} distinct filters; matches per lookup over {} topics: \
         mean {:.1}, min {min}, max {max}",
        trie.len(),
        topics.len(),
        total as f64 / topics.len().max(1) as f64,
    );
}

fn run(c: &mut Criterion, name: &str, trie: &SubscriptionTrie<u32, ()>, topics: &[String]) {
    if topics.is_empty() {
        return;
    }
    let mut i = 0;
    c.bench_function(name, |b| {
        b.iter(|| {
            i = (i + 1) % topics.len();
            // Reading every key keeps the compiler from turning a run of matches into one addition.
            let (mut hits, mut keys) = (0usize, 0u32);
            trie.for_each_match(black_box(&topics[i]), |_, k, _| {
                hits += 1;
                keys ^= *k;
            });
            black_box((hits, keys))
        })
    });
}

const TOPICS: usize = 4096;

fn bench(c: &mut Criterion) {
    let n = std::env::var("TOPIC_BENCH_SUBS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    {
        let name = format!("match/5-level/{n}-subs");
        let (trie, _, distinct) = build(n, topic, usize::MAX);
        let mut r = Lcg(99);
        let topics: Vec<String> = (0..TOPICS).map(|_| topic(&mut r)).collect();
        report(&name, &trie, distinct, &topics);
        run(c, &name, &trie, &topics);
    }
    {
        let name = format!("match/5-level-distinct/{n}-subs");
        let (trie, topics, distinct) = build(n, wide_topic, (n / TOPICS).max(1));
        report(&name, &trie, distinct, &topics);
        run(c, &name, &trie, &topics);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
