//! `max_conn_rate`: a token bucket the accept loop waits on before each `accept`, so connections beyond the rate
//! stay in the kernel's backlog (and are accepted later, or refused by the kernel when it is full) instead of
//! being accepted and dropped.
//!
//! For `count` connections per `per`, the bucket holds at most `count` tokens (a burst of one interval) and
//! refills continuously at `count / per`. It uses tokio's clock, so tests drive it with paused time.

use halyard_core::config::ConnRateLimit;
use std::time::Duration;
use tokio::time::Instant;

/// One listener's connection rate limiter.
#[derive(Debug)]
pub struct ConnRate {
    limit: Option<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Capacity and current fill, in nanotokens (1 token = `count` … see `per_token`).
    capacity: u128,
    tokens: u128,
    /// Time one token takes to refill, in nanoseconds (at least 1).
    per_token: u128,
    last: Instant,
}

const NANOS: u128 = 1_000_000_000;

impl ConnRate {
    pub fn new(limit: ConnRateLimit) -> ConnRate {
        let limit = match limit {
            ConnRateLimit::Unlimited => None,
            ConnRateLimit::Limited { count, per } => {
                let count = u128::from(count.max(1));
                let per_token = (per.as_nanos() / count).max(1);
                // Tokens are counted in units of NANOS so a partial refill is kept.
                Some(Bucket { capacity: count * NANOS, tokens: count * NANOS, per_token, last: Instant::now() })
            }
        };
        ConnRate { limit }
    }

    /// Takes a token if one is there now; otherwise says how long until one is.
    pub fn try_take(&mut self) -> Result<(), Duration> {
        let Some(b) = &mut self.limit else { return Ok(()) };
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(b.last).as_nanos();
        b.last = now;
        b.tokens = (b.tokens + elapsed * NANOS / b.per_token).min(b.capacity);
        if b.tokens >= NANOS {
            b.tokens -= NANOS;
            return Ok(());
        }
        let missing = NANOS - b.tokens;
        let wait = (missing * b.per_token).div_ceil(NANOS);
        Err(Duration::from_nanos(u64::try_from(wait).unwrap_or(u64::MAX)))
    }

    /// Waits until the next connection may be accepted, and takes its token. Returns at once when unlimited.
    pub async fn until_allowed(&mut self) {
        while let Err(wait) = self.try_take() {
            tokio::time::sleep(wait).await;
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.limit.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn unlimited_never_waits() {
        let mut r = ConnRate::new(ConnRateLimit::Unlimited);
        let t0 = Instant::now();
        for _ in 0..10_000 {
            r.until_allowed().await;
        }
        assert_eq!(Instant::now(), t0);
        assert!(r.is_unlimited());
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_steady_rate() {
        let mut r = ConnRate::new(ConnRateLimit::Limited { count: 10, per: Duration::from_secs(1) });
        let t0 = Instant::now();
        for _ in 0..10 {
            r.until_allowed().await;
        }
        assert_eq!(Instant::now(), t0, "a full bucket lets one interval's worth through at once");
        assert_eq!(r.try_take(), Err(Duration::from_millis(100)));
        for _ in 0..20 {
            r.until_allowed().await;
        }
        assert_eq!(Instant::now() - t0, Duration::from_secs(2), "then 10 per second");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_refills_only_up_to_capacity() {
        let mut r = ConnRate::new(ConnRateLimit::Limited { count: 3, per: Duration::from_secs(3) });
        for _ in 0..3 {
            r.try_take().unwrap();
        }
        tokio::time::advance(Duration::from_secs(3600)).await;
        for _ in 0..3 {
            r.try_take().unwrap();
        }
        assert!(r.try_take().is_err(), "an hour idle still buys only one burst");
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(r.try_take(), Err(Duration::from_millis(1)));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(r.try_take(), Ok(()));
    }
}
