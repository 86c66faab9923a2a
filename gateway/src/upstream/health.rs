//! Passive health: an instance that refused or timed out a connect is skipped for a backoff
//! that doubles with each consecutive failure (1 s .. 60 s) and resets on the first success.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const BASE_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Milliseconds since the process's first call: a cheap monotonic clock for atomics.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// The passive health of one instance.
#[derive(Debug, Default)]
pub struct PassiveHealth {
    failures: AtomicU32,
    unhealthy_until_ms: AtomicU64,
}

impl PassiveHealth {
    /// Whether the instance may be chosen at `now` (ms, [`now_ms`]).
    pub fn is_healthy(&self, now: u64) -> bool {
        self.unhealthy_until_ms.load(Ordering::Relaxed) <= now
    }

    /// Records a failed connect; returns the backoff applied.
    pub fn record_failure(&self, now: u64) -> Duration {
        let n = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let backoff = BASE_BACKOFF
            .saturating_mul(1u32 << (n - 1).min(16))
            .min(MAX_BACKOFF);
        self.unhealthy_until_ms
            .store(now + backoff.as_millis() as u64, Ordering::Relaxed);
        backoff
    }

    /// Records a successful connect. Writes only when state changes, so the hot path does not
    /// bounce the cache line between cores.
    pub fn record_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
            self.unhealthy_until_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let h = PassiveHealth::default();
        assert!(h.is_healthy(0));
        assert_eq!(h.record_failure(1000), Duration::from_secs(1));
        assert!(!h.is_healthy(1999));
        assert!(h.is_healthy(2000));
        assert_eq!(h.record_failure(2000), Duration::from_secs(2));
        assert_eq!(h.record_failure(2000), Duration::from_secs(4));
        for _ in 0..20 {
            h.record_failure(2000);
        }
        assert_eq!(h.record_failure(2000), MAX_BACKOFF);
        h.record_success();
        assert!(h.is_healthy(2000));
        assert_eq!(h.failures(), 0);
    }
}
