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

/// The longest wait between two ARI queries, whatever `Retry-After` says.
pub const MAX_ARI_POLL: Duration = Duration::from_secs(6 * 3600);
/// The shortest wait between two ARI queries (a `Retry-After` of 0 is not a busy loop).
pub const MIN_ARI_POLL: Duration = Duration::from_secs(1);

/// What the CA's renewal information said (RFC 9773).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ari {
    /// The suggested window.
    pub start: SystemTime,
    /// The suggested window.
    pub end: SystemTime,
    /// When to ask again (`Retry-After`).
    pub retry_after: Duration,
}

/// When to act next for one certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// When to renew.
    pub renew_at: SystemTime,
    /// When to ask the CA's renewal information again (`None`: the CA has none).
    pub poll_at: Option<SystemTime>,
    /// The window the CA suggested, if it did.
    pub window: Option<(SystemTime, SystemTime)>,
}

/// The latest moment to renew a leaf valid from `not_before` to `not_after`: a sixth of its
/// lifetime before expiry (15 days of a 90-day certificate), whatever a window says.
pub fn deadline(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    not_after
        .checked_sub(lifetime / 6)
        .unwrap_or(not_before)
        .max(not_before)
}

/// The plan for a leaf valid from `not_before` to `not_after`, given what ARI said (`None`:
/// no ARI; `Some(Err(retry))`: the query failed, ask again after `retry`) and one uniform
/// random draw kept for the whole cycle (so asking again does not move the moment within
/// an unchanged window).
pub fn plan(
    not_before: SystemTime,
    not_after: SystemTime,
    ari: Option<Result<Ari, Duration>>,
    now: SystemTime,
    unit_random: f64,
) -> Plan {
    let latest = deadline(not_before, not_after);
    let poll = |d: Duration| now + d.clamp(MIN_ARI_POLL, MAX_ARI_POLL);
    match ari {
        Some(Ok(a)) => Plan {
            renew_at: in_window(a.start, a.end, unit_random).min(latest),
            poll_at: Some(poll(a.retry_after)),
            window: Some((a.start, a.end)),
        },
        Some(Err(retry)) => Plan {
            renew_at: renew_at(not_before, not_after, unit_random).min(latest),
            poll_at: Some(poll(retry)),
            window: None,
        },
        None => Plan {
            renew_at: renew_at(not_before, not_after, unit_random).min(latest),
            poll_at: None,
            window: None,
        },
    }
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
    fn cert_lifecycle_ari_is_asked_again_at_retry_after_capped() {
        let nb = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let na = nb + Duration::from_secs(90 * 86400);
        let now = nb + Duration::from_secs(86400);
        let ari = |retry_secs: u64| Ari {
            start: nb + Duration::from_secs(60 * 86400),
            end: nb + Duration::from_secs(62 * 86400),
            retry_after: Duration::from_secs(retry_secs),
        };
        let p = plan(nb, na, Some(Ok(ari(3600))), now, 0.5);
        assert_eq!(p.poll_at, Some(now + Duration::from_secs(3600)));
        assert_eq!(p.renew_at, nb + Duration::from_secs(61 * 86400));
        assert_eq!(
            p.window.map(|w| w.0),
            Some(nb + Duration::from_secs(60 * 86400))
        );
        // a week is capped at 6 h, zero is raised to a second
        let far = plan(nb, na, Some(Ok(ari(7 * 86400))), now, 0.5);
        assert_eq!(far.poll_at, Some(now + MAX_ARI_POLL));
        let zero = plan(nb, na, Some(Ok(ari(0))), now, 0.5);
        assert_eq!(zero.poll_at, Some(now + MIN_ARI_POLL));
        // a failed query falls back to 2/3 of the lifetime and asks again
        let failed = plan(nb, na, Some(Err(Duration::from_secs(600))), now, 0.5);
        assert_eq!(failed.poll_at, Some(now + Duration::from_secs(600)));
        assert_eq!(failed.renew_at, renew_at(nb, na, 0.5));
        // no ARI at all: no polls
        assert_eq!(plan(nb, na, None, now, 0.5).poll_at, None);
    }

    #[test]
    fn cert_lifecycle_renewal_is_never_later_than_expiry_minus_a_margin() {
        let nb = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let na = nb + Duration::from_secs(90 * 86400);
        // a window after expiry (or too close to it) is clamped to 15 days before expiry
        let late = Ari {
            start: na + Duration::from_secs(86400),
            end: na + Duration::from_secs(2 * 86400),
            retry_after: Duration::from_secs(3600),
        };
        let p = plan(nb, na, Some(Ok(late)), nb, 0.3);
        assert_eq!(p.renew_at, na - Duration::from_secs(15 * 86400));
        assert_eq!(deadline(nb, na), na - Duration::from_secs(15 * 86400));
        // an earlier window (a mass revocation) is followed as it is
        let early = Ari {
            start: nb + Duration::from_secs(86400),
            end: nb + Duration::from_secs(86400),
            retry_after: Duration::from_secs(60),
        };
        assert_eq!(
            plan(nb, na, Some(Ok(early)), nb, 0.9).renew_at,
            nb + Duration::from_secs(86400)
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
