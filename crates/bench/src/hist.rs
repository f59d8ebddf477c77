//! A log-linear histogram of `u64` values (HdrHistogram's bucketing with 7 bits of sub-bucket precision).
//!
//! Why our own and not the `hdrhistogram` crate: we need record, merge and quantiles only; this is ~100 lines,
//! has no dependencies, and its relative error (< 1/128 ≈ 0.8 %) is plenty for latency percentiles. Buckets grow
//! on demand, so an idle client's histogram costs nothing and a busy one holds a few KiB.

/// Sub-buckets per power of two: 2^SUB_BITS.
const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    min: u64,
    max: u64,
}

/// The bucket holding `v`: values below 128 have a bucket each; above, each power of two [2^e, 2^(e+1)) is split
/// into 128 equal buckets.
fn index(v: u64) -> usize {
    if v < SUB {
        v as usize
    } else {
        let exp = 63 - v.leading_zeros(); // >= SUB_BITS
        let shift = exp - SUB_BITS;
        let mantissa = (v >> shift) - SUB; // 0..SUB
        ((shift as u64 + 1) * SUB + mantissa) as usize
    }
}

/// The smallest value that falls into bucket `idx`.
fn lowest(idx: usize) -> u64 {
    let idx = idx as u64;
    if idx < SUB {
        idx
    } else {
        let shift = idx / SUB - 1;
        (SUB + idx % SUB) << shift
    }
}

/// The largest value that falls into bucket `idx`.
fn highest(idx: usize) -> u64 {
    let next = idx + 1;
    // The last bucket (of u64::MAX) has no successor that fits in u64.
    if next as u64 >= (65 - SUB_BITS as u64) * SUB {
        u64::MAX
    } else {
        lowest(next) - 1
    }
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram::default()
    }

    pub fn record(&mut self, v: u64) {
        self.record_n(v, 1);
    }

    pub fn record_n(&mut self, v: u64, n: u64) {
        if n == 0 {
            return;
        }
        let i = index(v);
        if i >= self.counts.len() {
            self.counts.resize(i + 1, 0);
        }
        self.counts[i] += n;
        if self.total == 0 || v < self.min {
            self.min = v;
        }
        self.max = self.max.max(v);
        self.total += n;
    }

    pub fn merge(&mut self, other: &Histogram) {
        if other.total == 0 {
            return;
        }
        if other.counts.len() > self.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        if self.total == 0 || other.min < self.min {
            self.min = other.min;
        }
        self.max = self.max.max(other.max);
        self.total += other.total;
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    pub fn min(&self) -> u64 {
        self.min
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0.0..=1.0): the highest value of the bucket holding the ceil(q·n)-th smallest
    /// recorded value, clamped to [min, max]. 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return highest(i).clamp(self.min, self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        let mut prev_high = None;
        for idx in 0..(index(u64::MAX) + 1) {
            let lo = lowest(idx);
            let hi = highest(idx);
            assert!(lo <= hi, "bucket {idx}");
            if let Some(p) = prev_high {
                assert_eq!(lo, p + 1, "bucket {idx} does not follow the previous one");
            }
            assert_eq!(index(lo), idx);
            assert_eq!(index(hi), idx);
            // Relative width below 1/128.
            assert!((hi - lo) as f64 <= lo as f64 / 128.0 + 1.0, "bucket {idx}: {lo}..={hi}");
            prev_high = Some(hi);
        }
        assert_eq!(prev_high, Some(u64::MAX));
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::new();
        for v in 0..100 {
            h.record(v);
        }
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile(0.5), 49);
        assert_eq!(h.quantile(0.99), 98);
        assert_eq!(h.quantile(1.0), 99);
        assert_eq!(h.min(), 0);
        assert_eq!(h.max(), 99);
    }

    #[test]
    fn quantiles_within_one_percent() {
        let mut h = Histogram::new();
        for v in 1..=1_000_000u64 {
            h.record(v);
        }
        for (q, want) in [(0.5, 500_000f64), (0.99, 990_000.0), (0.999, 999_000.0)] {
            let got = h.quantile(q) as f64;
            assert!((got - want).abs() / want < 0.01, "q{q}: got {got}, want ≈{want}");
        }
        assert_eq!(h.quantile(1.0), 1_000_000);
        assert_eq!(h.max(), 1_000_000);
    }

    #[test]
    fn empty_and_merge() {
        let mut a = Histogram::new();
        assert_eq!(a.quantile(0.5), 0);
        assert!(a.is_empty());
        let mut b = Histogram::new();
        b.record_n(1000, 3);
        b.record(5);
        a.merge(&b);
        a.merge(&Histogram::new());
        assert_eq!(a.count(), 4);
        assert_eq!(a.min(), 5);
        assert_eq!(a.max(), 1000);
        assert_eq!(a.quantile(0.25), 5);
        assert!(a.quantile(0.5) >= 1000 && a.quantile(0.5) <= 1007);
        let mut c = Histogram::new();
        c.record(2);
        a.merge(&c);
        assert_eq!(a.min(), 2);
        assert_eq!(a.quantile(1.0), 1000);
    }

    #[test]
    fn huge_values() {
        let mut h = Histogram::new();
        h.record(u64::MAX);
        assert_eq!(h.quantile(0.5), u64::MAX);
    }
}
