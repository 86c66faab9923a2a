//! Passive health: an instance that refused or timed out a connect is skipped for a backoff
//! that doubles with each consecutive failure (1 s .. 60 s) and resets on the first success.
//! Active health: the verdict of `[apps.health_check]` probes (see `active.rs`), with
//! HAProxy's rise/fall hysteresis.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
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

/// The active-check verdict of one instance: up until `fall` failed probes in a row, then
/// down until `rise` good ones in a row. Up by default (no check configured, or none run yet).
#[derive(Debug, Default)]
pub struct ActiveHealth {
    down: AtomicBool,
    /// Good probes in a row (> 0) or failed ones (< 0). One prober writes it.
    streak: AtomicI32,
}

impl ActiveHealth {
    /// Whether the last verdict lets the instance be chosen.
    pub fn is_up(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }

    /// Records one probe; returns the new verdict when it changed (`Some(true)` = back up).
    pub fn record(&self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        let prev = self.streak.load(Ordering::Relaxed);
        let streak = match (ok, prev) {
            (true, p) if p > 0 => p.saturating_add(1),
            (true, _) => 1,
            (false, p) if p < 0 => p.saturating_sub(1),
            (false, _) => -1,
        };
        self.streak.store(streak, Ordering::Relaxed);
        let down = self.down.load(Ordering::Relaxed);
        let flip = if down {
            ok && streak >= rise as i32
        } else {
            !ok && -streak >= fall as i32
        };
        if !flip {
            return None;
        }
        self.down.store(!down, Ordering::Relaxed);
        Some(down)
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

    #[test]
    fn active_verdict_needs_fall_failures_and_rise_successes_in_a_row() {
        let a = ActiveHealth::default();
        assert!(a.is_up());
        assert_eq!(a.record(false, 2, 3), None);
        assert_eq!(a.record(false, 2, 3), None);
        assert_eq!(
            a.record(true, 2, 3),
            None,
            "a good probe resets the failure streak"
        );
        assert_eq!(a.record(false, 2, 3), None);
        assert_eq!(a.record(false, 2, 3), None);
        assert_eq!(a.record(false, 2, 3), Some(false));
        assert!(!a.is_up());
        assert_eq!(a.record(false, 2, 3), None);
        assert_eq!(a.record(true, 2, 3), None);
        assert!(!a.is_up());
        assert_eq!(a.record(true, 2, 3), Some(true));
        assert!(a.is_up());
    }
}
