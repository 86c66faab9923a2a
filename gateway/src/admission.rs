//! Who may hold connections, checked at accept before any work is done: a global cap that
//! leaves descriptors in reserve, and a cap per source address, so one client cannot take the
//! listener from everyone else (`[proxy.limits]`).
//!
//! A source is an IPv4 address or an IPv6 /64 (one subscriber usually holds a whole /64).
//! Load balancers in front are listed in `unlimited_sources`: their connections count
//! against the global cap only.

use gatehouse_config::ConnectionLimits;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// How many places each source holds, for a cap per source (here and per app).
#[derive(Debug, Default)]
pub struct SourceCounts(Mutex<HashMap<IpAddr, u32>>);

impl SourceCounts {
    /// Takes a place for `key` if it holds fewer than `limit`.
    pub fn take(&self, key: IpAddr, limit: u32) -> bool {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(key).or_insert(0);
        if *n >= limit {
            if *n == 0 {
                counts.remove(&key);
            }
            return false;
        }
        *n += 1;
        true
    }

    /// Gives back a place `key` took.
    pub fn give_back(&self, key: IpAddr) {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&key);
            }
        }
    }
}

/// The accept-time caps and what is held against them.
#[derive(Debug)]
pub struct Admission {
    max_total: AtomicUsize,
    per_source: std::sync::atomic::AtomicU32,
    unlimited: arc_swap::ArcSwap<Vec<ipnet::IpNet>>,
    total: AtomicUsize,
    sources: SourceCounts,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Every connection the gateway may hold is held.
    #[error("the gateway holds its maximum of {0} connections")]
    Global(usize),
    /// This source holds its maximum.
    #[error("source {0} holds its maximum of {1} connections")]
    Source(IpAddr, u32),
}

/// One admitted connection; released when dropped.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    source: Option<IpAddr>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.total.fetch_sub(1, Ordering::Relaxed);
        if let Some(source) = self.source {
            self.admission.sources.give_back(source);
        }
    }
}

/// The key a source is counted under: the address, or its /64 for IPv6.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(
                u128::from(v6) & 0xffff_ffff_ffff_ffff_0000_0000_0000_0000,
            )),
        },
    }
}

/// The global cap: the configured one, but never more than two descriptors per connection
/// fit in `nofile` after `reserve` (`None`: unlimited descriptors).
pub fn global_cap(configured: usize, nofile: Option<u64>, reserve: usize) -> usize {
    let by_descriptors = nofile.map_or(usize::MAX, |n| {
        (usize::try_from(n)
            .unwrap_or(usize::MAX)
            .saturating_sub(reserve)
            / 2)
        .max(1)
    });
    match configured {
        0 => by_descriptors,
        n => n.min(by_descriptors),
    }
}

impl Admission {
    /// The caps of `limits` under a descriptor limit of `nofile`.
    pub fn new(limits: &ConnectionLimits, nofile: Option<u64>) -> Admission {
        let a = Admission {
            max_total: AtomicUsize::new(0),
            per_source: std::sync::atomic::AtomicU32::new(0),
            unlimited: Default::default(),
            total: AtomicUsize::new(0),
            sources: SourceCounts::default(),
        };
        a.update(limits, nofile);
        a
    }

    /// Puts new caps in force (a reload). Connections held stay held and count against
    /// them: lowering a cap refuses new connections until enough old ones end.
    pub fn update(&self, limits: &ConnectionLimits, nofile: Option<u64>) {
        let max = global_cap(limits.max_connections, nofile, limits.descriptor_reserve);
        self.max_total.store(max, Ordering::Relaxed);
        let per_source = u32::try_from(limits.max_connections_per_source)
            .unwrap_or(u32::MAX)
            .max(1);
        self.per_source.store(per_source, Ordering::Relaxed);
        self.unlimited
            .store(Arc::new(limits.unlimited_sources.clone()));
    }

    /// The global cap in force.
    pub fn max_total(&self) -> usize {
        self.max_total.load(Ordering::Relaxed)
    }

    /// Connections held now.
    pub fn held(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Admits a connection from `peer`, or says which cap it would break.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Ticket, Refusal> {
        let max_total = self.max_total();
        if self.total.fetch_add(1, Ordering::Relaxed) >= max_total {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Refusal::Global(max_total));
        }
        let mut ticket = Ticket {
            admission: self.clone(),
            source: None,
        };
        if self.unlimited.load().iter().any(|n| n.contains(&peer)) {
            return Ok(ticket);
        }
        let key = source_key(peer);
        let per_source = self.per_source.load(Ordering::Relaxed);
        if !self.sources.take(key, per_source) {
            return Err(Refusal::Source(key, per_source)); // the ticket releases the total
        }
        ticket.source = Some(key);
        Ok(ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_source: usize, max: usize, unlimited: &[&str]) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: max,
            max_connections_per_source: per_source,
            unlimited_sources: unlimited.iter().map(|s| s.parse().unwrap()).collect(),
            ..ConnectionLimits::default()
        }
    }

    #[test]
    fn fairness_one_source_is_capped_and_others_still_admitted() {
        let a = Arc::new(Admission::new(&limits(2, 100, &[]), None));
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        let t1 = a.admit(one).unwrap();
        let _t2 = a.admit(one).unwrap();
        assert_eq!(a.admit(one).unwrap_err(), Refusal::Source(one, 2));
        assert!(a.admit("192.0.2.2".parse().unwrap()).is_ok());
        assert_eq!(a.held(), 2, "refused and released tickets do not count");
        drop(t1);
        assert!(
            a.admit(one).is_ok(),
            "a released ticket frees the source's place"
        );
    }

    #[test]
    fn fairness_ipv6_counts_by_64_and_balancers_are_exempt() {
        let a = Arc::new(Admission::new(&limits(1, 100, &["10.0.0.0/8"]), None));
        let _t = a.admit("2001:db8:1:2::1".parse().unwrap()).unwrap();
        assert!(
            a.admit("2001:db8:1:2::ffff".parse().unwrap()).is_err(),
            "same /64"
        );
        assert!(a.admit("2001:db8:1:3::1".parse().unwrap()).is_ok());
        let lb: IpAddr = "10.1.2.3".parse().unwrap();
        let held: Vec<_> = (0..10).map(|_| a.admit(lb).unwrap()).collect();
        assert_eq!(held.len(), 10);
        assert_eq!(
            source_key("::ffff:192.0.2.9".parse().unwrap()),
            "192.0.2.9".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn fairness_the_global_cap_keeps_a_descriptor_reserve() {
        assert_eq!(global_cap(0, Some(1024), 256), 384);
        assert_eq!(global_cap(100, Some(1024), 256), 100);
        assert_eq!(global_cap(10_000, Some(1024), 256), 384);
        assert_eq!(global_cap(0, None, 256), usize::MAX);
        assert_eq!(global_cap(0, Some(100), 256), 1, "never zero");
        let a = Arc::new(Admission::new(&limits(100, 3, &[]), None));
        let held: Vec<_> = (1..=3)
            .map(|i| a.admit(IpAddr::from([192, 0, 2, i])).unwrap())
            .collect();
        assert_eq!(
            a.admit("192.0.2.9".parse().unwrap()).unwrap_err(),
            Refusal::Global(3)
        );
        drop(held);
        assert_eq!(a.held(), 0);
    }
}
