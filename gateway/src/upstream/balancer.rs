//! Instance choice: power of two choices on active connections, among healthy instances.
//!
//! One [`Instance`] value per (app, address) lives as long as the address stays in the route
//! table, so every mode (tcp relay today, HTTP requests later) shares its load and health.

use super::health::{now_ms, ActiveHealth, PassiveHealth};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// One instance of an app and its shared load and health state.
#[derive(Debug)]
pub struct Instance {
    /// Where it listens (the port comes from the route).
    pub addr: IpAddr,
    active: AtomicU32,
    /// Passive health from connect outcomes.
    pub health: PassiveHealth,
    /// The active checks' verdict (always up for apps without `health_check`).
    pub checked: ActiveHealth,
    /// Drained by an operator: no new connection or request; open ones finish.
    drained: std::sync::atomic::AtomicBool,
}

impl Instance {
    /// A fresh instance with no load and good health.
    pub fn new(addr: IpAddr) -> Self {
        Instance {
            addr,
            active: AtomicU32::new(0),
            health: PassiveHealth::default(),
            checked: ActiveHealth::default(),
            drained: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether an operator drained it.
    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::Relaxed)
    }

    /// Drains it (no new connection or request) or takes it back.
    pub fn set_drained(&self, drained: bool) {
        self.drained.store(drained, Ordering::Relaxed);
    }

    /// Connections (or requests) in flight to it.
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }
}

/// Holds one unit of an instance's load until dropped.
#[derive(Debug)]
pub struct Load(Arc<Instance>);

impl Load {
    /// Counts one more unit of load on `instance`.
    pub fn start(instance: Arc<Instance>) -> Load {
        instance.active.fetch_add(1, Ordering::Relaxed);
        Load(instance)
    }

    /// The instance.
    pub fn instance(&self) -> &Arc<Instance> {
        &self.0
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Picks an instance index not in `tried`: two random candidates among the healthy ones, the
/// less loaded wins. When none is healthy, the untried instances that pass their active checks
/// are candidates (passive data may be stale, and refusing every connection is worse than one
/// more try); an instance that fails its active checks, or that an operator drained, is never
/// chosen.
pub fn pick(instances: &[Arc<Instance>], tried: &[usize]) -> Option<usize> {
    let now = now_ms();
    let eligible = |i: usize| {
        !tried.contains(&i) && instances[i].checked.is_up() && !instances[i].is_drained()
    };
    let healthy = |i: usize| eligible(i) && instances[i].health.is_healthy(now);
    choose(instances, &healthy).or_else(|| choose(instances, &eligible))
}

fn choose(instances: &[Arc<Instance>], ok: &dyn Fn(usize) -> bool) -> Option<usize> {
    let n = instances.len();
    if n == 0 {
        return None;
    }
    // Two independent random starts, each moving forward to the first acceptable index:
    // no allocation, and uniform enough when most instances are acceptable.
    let first_from = |start: usize| (0..n).map(|k| (start + k) % n).find(|&i| ok(i));
    let a = first_from(fastrand::usize(..n))?;
    let b = first_from(fastrand::usize(..n))
        .filter(|&b| b != a)
        .or_else(|| (1..n).map(|k| (a + k) % n).find(|&i| ok(i)));
    Some(match b {
        Some(b) if instances[b].active() < instances[a].active() => b,
        _ => a,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instances(n: u8) -> Vec<Arc<Instance>> {
        (0..n)
            .map(|i| Arc::new(Instance::new(IpAddr::from([10, 0, 0, i]))))
            .collect()
    }

    #[test]
    fn empty_and_all_tried() {
        assert_eq!(pick(&[], &[]), None);
        let v = instances(2);
        assert_eq!(pick(&v, &[0, 1]), None);
        assert_eq!(pick(&v, &[0]), Some(1));
    }

    #[test]
    fn two_choices_prefer_the_less_loaded() {
        let v = instances(2);
        let _busy: Vec<Load> = (0..5).map(|_| Load::start(v[0].clone())).collect();
        for _ in 0..100 {
            assert_eq!(pick(&v, &[]), Some(1));
        }
    }

    #[test]
    fn load_spreads_evenly() {
        let v = instances(4);
        let mut held = Vec::new();
        for _ in 0..400 {
            let i = pick(&v, &[]).unwrap();
            held.push(Load::start(v[i].clone()));
        }
        for inst in &v {
            // P2C keeps the gap tiny; a uniform random pick would wander far more.
            assert!((95..=105).contains(&inst.active()), "{:?}", inst.active());
        }
        drop(held);
        assert!(v.iter().all(|i| i.active() == 0));
    }

    #[test]
    fn unhealthy_skipped_unless_nothing_else() {
        let v = instances(3);
        v[0].health.record_failure(now_ms());
        v[1].health.record_failure(now_ms());
        for _ in 0..50 {
            assert_eq!(pick(&v, &[]), Some(2));
        }
        // all unhealthy: still answers with an untried one
        assert_eq!(pick(&v, &[2]).map(|i| i < 2), Some(true));
    }

    #[test]
    fn admin_api_drained_instances_get_nothing_new_even_when_alone() {
        let v = instances(2);
        v[0].set_drained(true);
        for _ in 0..50 {
            assert_eq!(pick(&v, &[]), Some(1));
        }
        v[1].health.record_failure(now_ms());
        assert_eq!(pick(&v, &[]), Some(1), "unhealthy beats drained");
        v[1].set_drained(true);
        assert_eq!(pick(&v, &[]), None, "all drained: nothing");
        v[0].set_drained(false);
        assert_eq!(pick(&v, &[]), Some(0));
    }

    #[test]
    fn actively_down_instances_are_never_chosen() {
        let v = instances(2);
        for _ in 0..3 {
            v[0].checked.record(false, 1, 3);
        }
        for _ in 0..50 {
            assert_eq!(pick(&v, &[]), Some(1));
        }
        assert_eq!(pick(&v, &[1]), None, "no fallback to a failed active check");
        v[0].checked.record(true, 1, 3);
        assert_eq!(pick(&v, &[1]), Some(0));
    }
}
