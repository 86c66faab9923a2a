//! Wall-clock jumps. Renewal moments are wall-clock times (a certificate's dates, a CA's
//! window), but a tokio sleep runs on the monotonic clock: after the wall clock jumps (a VM
//! resumed from a pause, NTP stepping a wrong clock) a sleep computed before the jump would
//! end a day late or an hour early. One watcher compares the two clocks every second and
//! wakes every waiting renewal loop when they part by more than [`JUMP`]; each loop then
//! measures its wait again against the wall clock (no new query to the CA: no storm).

use std::sync::Once;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// The smallest disagreement between the clocks taken for a jump (NTP slews far less).
pub const JUMP: Duration = Duration::from_secs(2);
/// How often the watcher compares the clocks.
const EVERY: Duration = Duration::from_secs(1);

static JUMPED: Notify = Notify::const_new();
static WATCHER: Once = Once::new();

/// A future that completes at the next wall-clock jump. Starts the watcher on first use (on
/// the caller's tokio runtime). Create it before reading the wall clock, so a jump between
/// the read and the wait is not missed.
pub fn next_jump() -> Notified<'static> {
    WATCHER.call_once(|| {
        tokio::spawn(watch());
    });
    JUMPED.notified()
}

/// How far the wall clock moved beyond the monotonic clock between two readings (positive:
/// forward), in milliseconds.
pub fn drift(wall: (SystemTime, SystemTime), mono: (Instant, Instant)) -> i128 {
    let wall_ms = match wall.1.duration_since(wall.0) {
        Ok(d) => d.as_millis() as i128,
        Err(e) => -(e.duration().as_millis() as i128),
    };
    let mono_ms = mono.1.saturating_duration_since(mono.0).as_millis() as i128;
    wall_ms - mono_ms
}

async fn watch() {
    let mut last = (SystemTime::now(), Instant::now());
    loop {
        tokio::time::sleep(EVERY).await;
        let now = (SystemTime::now(), Instant::now());
        let moved = drift((last.0, now.0), (last.1, now.1));
        if moved.unsigned_abs() >= JUMP.as_millis() {
            tracing::warn!(
                by_seconds = moved as f64 / 1000.0,
                "the wall clock jumped: renewal times are measured again"
            );
            JUMPED.notify_waiters();
        }
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_injection_drift_sees_jumps_both_ways_and_not_steady_time() {
        let (w, m) = (SystemTime::now(), Instant::now());
        let s = Duration::from_secs(1);
        assert_eq!(drift((w, w + s), (m, m + s)), 0);
        assert_eq!(
            drift((w, w + s + Duration::from_secs(86400)), (m, m + s)),
            86_400_000
        );
        assert_eq!(
            drift((w, w - Duration::from_secs(3599)), (m, m + s)),
            -3_600_000
        );
    }

    #[tokio::test(start_paused = false)]
    async fn fault_injection_a_jump_wakes_waiters() {
        let waiting = next_jump();
        tokio::pin!(waiting);
        // nothing jumped: the waiter stays asleep
        assert!(
            tokio::time::timeout(Duration::from_millis(50), waiting.as_mut())
                .await
                .is_err()
        );
        JUMPED.notify_waiters();
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("woken by a jump");
    }
}
