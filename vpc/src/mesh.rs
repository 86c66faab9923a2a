//! The VPC as a network between apps: who may reach whom (`[vpc.apps.<id>] reach`), the
//! netmap each agent gets (the instances it peers with directly), and the names
//! `<app>.<domain>` and `<n>.<app>.<domain>`.
//!
//! The data path is a mesh: the gateway coordinates (it knows every lease, every peer's
//! endpoint as its WireGuard sees it, and who is live) and each agent peers directly with the
//! instances its app may talk to. Policy is what each side's WireGuard accepts: an instance
//! has a peer, with a /32 allowed IP, only for the instances of apps in a `reach` relation
//! with its own (or of its own app), so a packet from anyone else has no key to come in
//! with. WireGuard peering is symmetric: `web` reaching `db` makes them peers both ways at
//! the network layer; names answer only in the direction `reach` gives.

use super::leases::{Lease, CLAIMING};
use gatehouse_config::VpcConfig;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};

/// Who may reach whom.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    allowed: HashMap<String, BTreeSet<String>>,
}

impl Reach {
    /// From `[vpc.apps.<id>] reach`.
    pub fn from_config(c: &VpcConfig) -> Reach {
        Reach {
            allowed: c
                .apps
                .iter()
                .map(|(id, app)| (id.clone(), app.reach.iter().cloned().collect()))
                .collect(),
        }
    }

    /// Replaces what `app` may reach.
    pub fn set(&mut self, app: &str, reach: &[String]) {
        self.allowed
            .insert(app.to_owned(), reach.iter().cloned().collect());
    }

    /// What `app` may reach (itself aside).
    pub fn of(&self, app: &str) -> Vec<String> {
        self.allowed
            .get(app)
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether instances of `from` may reach instances of `to` (an app reaches itself).
    pub fn may_reach(&self, from: &str, to: &str) -> bool {
        from == to || self.allowed.get(from).is_some_and(|r| r.contains(to))
    }

    /// Whether instances of `a` and `b` are WireGuard peers (either may reach the other).
    pub fn peers(&self, a: &str, b: &str) -> bool {
        self.may_reach(a, b) || self.may_reach(b, a)
    }
}

/// What the coordinator knows now.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Changes with every change an agent would see.
    pub version: u64,
    /// Every lease (all nodes').
    pub leases: Vec<Lease>,
    /// Public keys (base64) of the instances in rotation (recent handshake or traffic).
    pub live: HashSet<String>,
    /// Each peer's endpoint as the gateway's WireGuard sees it, by public key (base64).
    pub endpoints: HashMap<String, SocketAddr>,
}

impl View {
    /// Whether `other` (leases, liveness, endpoints) differs in anything an agent sees.
    pub fn same_as(
        &self,
        leases: &[Lease],
        live: &HashSet<String>,
        endpoints: &HashMap<String, SocketAddr>,
    ) -> bool {
        self.leases == leases && &self.live == live && &self.endpoints == endpoints
    }

    /// The lease holding `address`.
    pub fn lease_at(&self, address: Ipv4Addr) -> Option<&Lease> {
        self.leases.iter().find(|l| l.address == address)
    }

    fn live_leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases
            .iter()
            .filter(|l| self.live.contains(&l.public_key))
    }
}

/// One instance an agent peers with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshPeer {
    /// Its app.
    pub app_id: String,
    /// Its ordinal (`<n>.<app>.<domain>`).
    pub ordinal: u32,
    /// Its VPC address (the /32 allowed IP).
    pub address: Ipv4Addr,
    /// Its WireGuard public key (base64).
    pub public_key: String,
    /// Where the gateway sees it (if it has seen it).
    pub endpoint: Option<SocketAddr>,
    /// Whether the asker's app may reach its app (else it only may reach the asker's).
    pub reachable: bool,
    /// What its registration's quote measured.
    pub measurements: Option<gatehouse::app_admission::Measurements>,
}

/// What an agent gets from the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Netmap {
    /// Ask again with `since` = this to wait for the next change.
    pub version: u64,
    /// The asker's app.
    pub app_id: String,
    /// The asker's address.
    pub address: Ipv4Addr,
    /// The names' domain.
    pub domain: String,
    /// The live instances the asker peers with, itself excluded.
    pub peers: Vec<MeshPeer>,
}

/// The netmap of the instance at `asker` (`None`: no lease there).
pub fn netmap(view: &View, reach: &Reach, asker: Ipv4Addr, domain: &str) -> Option<Netmap> {
    let me = view.lease_at(asker)?;
    let peers = view
        .live_leases()
        .filter(|l| l.address != asker && reach.peers(&me.app_id, &l.app_id))
        .map(|l| MeshPeer {
            app_id: l.app_id.clone(),
            ordinal: l.ordinal,
            address: l.address,
            public_key: l.public_key.clone(),
            endpoint: view.endpoints.get(&l.public_key).copied(),
            reachable: reach.may_reach(&me.app_id, &l.app_id),
            measurements: l.measurements.clone(),
        })
        .collect();
    Some(Netmap {
        version: view.version,
        app_id: me.app_id.clone(),
        address: asker,
        domain: domain.to_owned(),
        peers,
    })
}

/// The addresses `qname` names for the instance at `asker`: `<app>.<domain>` every live
/// instance of an app it may reach, `<n>.<app>.<domain>` one of them; `None` for any other
/// name (unknown, not in the domain, or an app it may not reach: the same answer, so a name
/// does not tell an app it may not reach that it exists).
pub fn resolve(
    view: &View,
    reach: &Reach,
    asker: Ipv4Addr,
    qname: &str,
    domain: &str,
) -> Option<Vec<Ipv4Addr>> {
    let me = view.lease_at(asker)?;
    let name = qname.trim_end_matches('.').to_ascii_lowercase();
    let head = name.strip_suffix(&format!(".{}", domain.to_ascii_lowercase()))?;
    let (ordinal, app) = match head.split_once('.') {
        Some((n, app)) => (Some(n.parse::<u32>().ok()?), app),
        None => (None, head),
    };
    if !reach.may_reach(&me.app_id, app) {
        return None;
    }
    let found: Vec<Ipv4Addr> = view
        .live_leases()
        .filter(|l| l.app_id == app && l.ordinal != CLAIMING)
        .filter(|l| ordinal.is_none_or(|n| l.ordinal == n))
        .map(|l| l.address)
        .collect();
    (!found.is_empty()).then_some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(ip: u8, app: &str, ordinal: u32) -> Lease {
        Lease {
            address: Ipv4Addr::new(10, 88, 0, ip),
            app_id: app.into(),
            public_key: format!("key{ip}"),
            registered_at: 1,
            ordinal,
            measurements: None,
        }
    }

    fn world() -> (View, Reach) {
        let leases = vec![
            lease(2, "db", 0),
            lease(3, "db", 1),
            lease(4, "db", 2),
            lease(5, "web", 0),
            lease(6, "other", 0),
        ];
        let live = leases
            .iter()
            .filter(|l| l.address != Ipv4Addr::new(10, 88, 0, 4))
            .map(|l| l.public_key.clone())
            .collect();
        let view = View {
            version: 7,
            leases,
            live,
            endpoints: HashMap::from([("key2".into(), "192.0.2.2:40000".parse().unwrap())]),
        };
        let mut reach = Reach::default();
        reach.allowed.insert("web".into(), ["db".into()].into());
        (view, reach)
    }

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 88, 0, last)
    }

    #[test]
    fn mesh_netmaps_follow_reach_both_ways_and_only_live_instances() {
        let (view, reach) = world();
        let web = netmap(&view, &reach, ip(5), "vpc.internal").unwrap();
        let addrs: Vec<_> = web.peers.iter().map(|p| p.address).collect();
        assert_eq!(addrs, [ip(2), ip(3)], "db's live instances (.4 is stale)");
        assert!(web.peers.iter().all(|p| p.reachable));
        assert_eq!(
            web.peers[0].endpoint,
            Some("192.0.2.2:40000".parse().unwrap())
        );
        let db = netmap(&view, &reach, ip(2), "vpc.internal").unwrap();
        let addrs: Vec<_> = db.peers.iter().map(|p| (p.address, p.reachable)).collect();
        assert_eq!(
            addrs,
            [(ip(3), true), (ip(5), false)],
            "its own app, and web (which may reach it) without reach back"
        );
        let other = netmap(&view, &reach, ip(6), "vpc.internal").unwrap();
        assert!(other.peers.is_empty(), "other reaches nobody: {other:?}");
        assert!(netmap(&view, &reach, ip(9), "vpc.internal").is_none());
    }

    #[test]
    fn mesh_names_answer_only_in_the_allowed_direction() {
        let (view, reach) = world();
        let d = "vpc.internal";
        assert_eq!(
            resolve(&view, &reach, ip(5), "db.vpc.internal.", d),
            Some(vec![ip(2), ip(3)])
        );
        assert_eq!(
            resolve(&view, &reach, ip(5), "1.DB.vpc.internal", d),
            Some(vec![ip(3)])
        );
        assert_eq!(
            resolve(&view, &reach, ip(5), "2.db.vpc.internal", d),
            None,
            "stale"
        );
        assert_eq!(
            resolve(&view, &reach, ip(2), "0.db.vpc.internal", d),
            Some(vec![ip(2)])
        );
        assert_eq!(
            resolve(&view, &reach, ip(2), "web.vpc.internal", d),
            None,
            "db may not reach web"
        );
        assert_eq!(resolve(&view, &reach, ip(6), "db.vpc.internal", d), None);
        assert_eq!(
            resolve(&view, &reach, ip(6), "other.vpc.internal", d),
            Some(vec![ip(6)])
        );
        assert_eq!(resolve(&view, &reach, ip(5), "db.example.com", d), None);
        assert_eq!(
            resolve(&view, &reach, ip(5), "x.1.db.vpc.internal", d),
            None
        );
        assert_eq!(
            resolve(&view, &reach, ip(9), "db.vpc.internal", d),
            None,
            "not a lease"
        );
    }
}
