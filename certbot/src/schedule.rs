//! When to renew, and how long to wait after a failure.

use std::time::{Duration, SystemTime};

/// Without ARI: at 2/3 of the lifetime, moved by up to ±1/30 of it at random so a fleet
/// issued together does not renew together.
pub fn renew_at(not_before: SystemTime, not_after: SystemTime, unit_random: f64) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    let base = lifetime.mul_f64(2.0 / 3.0);
    let jitter = lifetime.mul_f64(1.0 / 30.0);
    let offset = base.saturating_sub(jitter) + jitter.mul_f64(2.0 * unit_random.clamp(0.0, 1.0));
    not_before + offset
}

/// With ARI (RFC 9773 §4.2): a uniformly random moment in the suggested window.
pub fn in_window(start: SystemTime, end: SystemTime, unit_random: f64) -> SystemTime {
    let width = end.duration_since(start).unwrap_or_default();
    start + width.mul_f64(unit_random.clamp(0.0, 1.0))
}

/// After `failures` consecutive failures: 30 s doubling to 6 h, ±20 % jitter; a rate limit
/// waits at least an hour.
pub fn backoff(failures: u32, rate_limited: bool, unit_random: f64) -> Duration {
    let base = Duration::from_secs(30).saturating_mul(1u32 << failures.min(12));
    let capped = base.min(Duration::from_secs(6 * 3600));
    let jittered = capped.mul_f64(0.8 + 0.4 * unit_random.clamp(0.0, 1.0));
    if rate_limited {
        jittered.max(Duration::from_secs(3600))
    } else {
        jittered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn renewal_lands_near_two_thirds_of_the_lifetime() {
        let nb = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let na = nb + Duration::from_secs(90 * 86400);
        let day = |t: SystemTime| t.duration_since(nb).unwrap().as_secs_f64() / 86400.0;
        assert!((day(renew_at(nb, na, 0.5)) - 60.0).abs() < 0.01);
        assert!((day(renew_at(nb, na, 0.0)) - 57.0).abs() < 0.01);
        assert!((day(renew_at(nb, na, 1.0)) - 63.0).abs() < 0.01);
        // a 30-second certificate renews after ~20 s
        let short = renew_at(nb, nb + Duration::from_secs(30), 0.5);
        assert_eq!(short.duration_since(nb).unwrap().as_secs(), 20);
    }

    #[test]
    fn ari_window_is_respected() {
        let s = UNIX_EPOCH + Duration::from_secs(100);
        let e = s + Duration::from_secs(100);
        assert_eq!(in_window(s, e, 0.0), s);
        assert_eq!(in_window(s, e, 1.0), e);
        assert_eq!(
            in_window(e, s, 0.7),
            e,
            "an inverted window collapses to its start"
        );
    }

    #[test]
    fn backoff_doubles_caps_and_waits_long_on_rate_limits() {
        assert_eq!(backoff(0, false, 0.5), Duration::from_secs(30));
        assert_eq!(backoff(3, false, 0.5), Duration::from_secs(240));
        assert_eq!(backoff(40, false, 0.5), Duration::from_secs(6 * 3600));
        assert!(backoff(0, false, 0.0) >= Duration::from_secs(24));
        assert_eq!(backoff(0, true, 0.5), Duration::from_secs(3600));
    }
}
