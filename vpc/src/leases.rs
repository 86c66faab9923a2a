//! Instance addresses, leased from the VPC prefix and kept in the [`Store`]: one key per
//! address (`vpc/leases/<ip>`), created by compare-and-swap from "absent", so two
//! registrations racing for an address cannot both win, on one node or on several sharing a
//! store. A key that registers again keeps its address.
//!
//! Each record is sealed under the store's sealer (the cluster key on etcd), bound to its
//! key: whoever runs etcd cannot forge a lease (which would make every node add their
//! WireGuard key as a peer and route an app's traffic to it). A record that does not open is
//! ignored, and its address is skipped when leasing.

use super::VpcError;
use gatehouse_config::Ipv4Prefix;
use gatehouse_store::{Sealer, Store};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::sync::Arc;

/// Where the leases live.
pub const PREFIX: &str = "vpc/leases/";
/// Ordinal claims: `vpc/ordinals/<app>/<n>` holds the address whose lease has that ordinal.
const ORDINALS: &str = "vpc/ordinals/";
/// The ordinal of a lease written before its ordinal is claimed.
pub const CLAIMING: u32 = u32::MAX;

/// One lease: an address held by an instance's WireGuard key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The instance's VPC address.
    pub address: Ipv4Addr,
    /// The app it registered as.
    pub app_id: String,
    /// Its WireGuard public key (base64).
    pub public_key: String,
    /// When it last registered (unix seconds).
    pub registered_at: u64,
    /// Its ordinal among its app's instances (the name `<n>.<app>.<domain>`): the lowest
    /// free one when leased, kept while the lease lasts.
    #[serde(default)]
    pub ordinal: u32,
    /// What its last registration's quote measured (whois answers with it).
    #[serde(default)]
    pub measurements: Option<gatehouse::app_admission::Measurements>,
}

/// The lease table.
#[derive(Debug, Clone)]
pub struct Leases {
    store: Arc<dyn Store>,
    sealer: Arc<dyn Sealer>,
    prefix: Ipv4Prefix,
    reserved: Vec<Ipv4Addr>,
}

impl Leases {
    /// Leases from `prefix`, never handing out `reserved` (the gateway's own address) nor a
    /// gateway node's address (see [`super::gateways`]).
    pub fn new(
        store: Arc<dyn Store>,
        sealer: Arc<dyn Sealer>,
        prefix: Ipv4Prefix,
        reserved: Vec<Ipv4Addr>,
    ) -> Leases {
        Leases {
            store,
            sealer,
            prefix,
            reserved,
        }
    }

    /// Every lease that opens, in address order (see [`Leases::decode`]).
    pub async fn all(&self) -> Result<Vec<Lease>, VpcError> {
        let mut out: Vec<Lease> = self
            .store
            .list(PREFIX)
            .await?
            .into_iter()
            .filter_map(|(key, v)| self.decode(&key, &v.value))
            .collect();
        out.sort_by_key(|l| u32::from(l.address));
        Ok(out)
    }

    /// Deletes the lease records that do not open (forged, or sealed under a key this node
    /// no longer has: a single node whose TEE key changed); returns how many. Without this
    /// their addresses would stay taken forever.
    pub async fn purge_unreadable(&self) -> Result<usize, VpcError> {
        let mut purged = 0;
        for (key, v) in self.store.list(PREFIX).await? {
            if self.decode(&key, &v.value).is_none()
                && self.store.compare_and_delete(&key, v.version).await?
            {
                purged += 1;
            }
        }
        Ok(purged)
    }

    /// The lease stored at `key`, if its record opens under our sealer and names that
    /// address (a forged, replayed-under-another-name or foreign record is `None`).
    pub fn decode(&self, key: &str, value: &[u8]) -> Option<Lease> {
        let plain = self.sealer.unseal(key, value).ok()?;
        let lease: Lease = serde_json::from_slice(&plain).ok()?;
        (Leases::key(lease.address) == key).then_some(lease)
    }

    /// The gateway nodes' records that open (see [`super::gateways`]).
    pub async fn gateways(&self) -> Result<Vec<super::gateways::GatewayRecord>, VpcError> {
        super::gateways::all(self.store.as_ref(), self.sealer.as_ref()).await
    }

    /// The store the leases live in.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn key(address: Ipv4Addr) -> String {
        format!("{PREFIX}{address}")
    }

    fn encode(&self, lease: &Lease) -> Result<Vec<u8>, VpcError> {
        let plain = serde_json::to_vec(lease).expect("a lease serializes");
        let key = Leases::key(lease.address);
        self.sealer
            .seal(&key, &plain)
            .map_err(|e| VpcError::Key(format!("{key}: {e}")))
    }

    /// The address for `public_key` registering as `app_id`: its existing lease (kept, app and
    /// time updated), or the lowest free address. `Ok((lease, true))` when newly allocated.
    pub async fn acquire(
        &self,
        app_id: &str,
        public_key: &[u8; 32],
        now: u64,
    ) -> Result<(Lease, bool), VpcError> {
        self.acquire_measured(app_id, public_key, None, now).await
    }

    /// As [`Leases::acquire`], recording what the registration's quote measured.
    pub async fn acquire_measured(
        &self,
        app_id: &str,
        public_key: &[u8; 32],
        measurements: Option<gatehouse::app_admission::Measurements>,
        now: u64,
    ) -> Result<(Lease, bool), VpcError> {
        let key_b64 = super::wireguard::base64(public_key);
        let existing = self.all().await?;
        if let Some(mut lease) = existing.iter().find(|l| l.public_key == key_b64).cloned() {
            if lease.app_id != app_id {
                // Recorded as claiming first, so that the claim looks live to others.
                lease.app_id = app_id.to_owned();
                lease.ordinal = CLAIMING;
                self.store
                    .put(&Leases::key(lease.address), &self.encode(&lease)?)
                    .await?;
            }
            // A crash inside `settle` can leave this key a second, higher address: given
            // back now (the lowest is the one kept, as `settle` would have).
            for extra in existing
                .iter()
                .filter(|l| l.public_key == key_b64 && l.address != lease.address)
            {
                self.release_if_unchanged(extra).await?;
            }
            // Also a lease a crash left between its write and its ordinal's claim.
            if lease.ordinal == CLAIMING {
                lease.ordinal = self.claim_ordinal(app_id, lease.address).await?;
            }
            lease.registered_at = now;
            lease.measurements = measurements;
            self.store
                .put(&Leases::key(lease.address), &self.encode(&lease)?)
                .await?;
            return Ok((lease, false));
        }
        let mut taken: std::collections::HashSet<Ipv4Addr> =
            existing.iter().map(|l| l.address).collect();
        let leased = taken.len();
        taken.extend(super::gateways::addresses(self.store.as_ref()).await?);
        for address in self.prefix.hosts() {
            if taken.contains(&address) || self.reserved.contains(&address) {
                continue;
            }
            let lease = Lease {
                address,
                app_id: app_id.to_owned(),
                public_key: key_b64.clone(),
                registered_at: now,
                ordinal: CLAIMING,
                measurements: measurements.clone(),
            };
            match self
                .store
                .compare_and_swap(&Leases::key(address), 0, &self.encode(&lease)?)
                .await?
            {
                Ok(_) => return self.settle(lease).await,
                Err(_) => continue, // another registration took it first: try the next
            }
        }
        Err(VpcError::PoolExhausted {
            prefix: self.prefix.to_string(),
            leased,
        })
    }

    /// If the same key won two addresses in a race with itself, keeps the lowest; then
    /// claims the lease's ordinal and records it.
    async fn settle(&self, mut ours: Lease) -> Result<(Lease, bool), VpcError> {
        let same: Vec<Lease> = self
            .all()
            .await?
            .into_iter()
            .filter(|l| l.public_key == ours.public_key)
            .collect();
        if let Some(first) = same.first().filter(|f| f.address != ours.address) {
            self.store.delete(&Leases::key(ours.address)).await?;
            return Ok((first.clone(), false));
        }
        ours.ordinal = self.claim_ordinal(&ours.app_id, ours.address).await?;
        self.store
            .put(&Leases::key(ours.address), &self.encode(&ours)?)
            .await?;
        Ok((ours, true))
    }

    /// The lowest ordinal of `app_id` free for the lease at `address`, taken by
    /// compare-and-swap on `vpc/ordinals/<app>/<n>` (which holds the address). A claim is
    /// free again once its address holds no lease of the app with that ordinal (or one
    /// still claiming): released and reclaimed leases need no clean-up.
    async fn claim_ordinal(&self, app_id: &str, address: Ipv4Addr) -> Result<u32, VpcError> {
        let mine = address.to_string();
        for _ in 0..8 {
            let leases = self.store.list(PREFIX).await?.len() as u32;
            for n in 0..=leases {
                let key = format!("{ORDINALS}{app_id}/{n}");
                let (version, free) = match self.store.get(&key).await? {
                    None => (0, true),
                    Some(v) => {
                        let holder = String::from_utf8_lossy(&v.value).into_owned();
                        if holder == mine {
                            return Ok(n);
                        }
                        // The holder's lease as it is now (a claim is made after its lease
                        // is written, so a list read earlier could miss it).
                        let key = format!("{PREFIX}{holder}");
                        let lease = match self.store.get(&key).await? {
                            Some(l) => self.decode(&key, &l.value),
                            None => None,
                        };
                        let live = lease.is_some_and(|l| {
                            l.app_id == app_id && (l.ordinal == n || l.ordinal == CLAIMING)
                        });
                        (v.version, !live)
                    }
                };
                if free
                    && self
                        .store
                        .compare_and_swap(&key, version, mine.as_bytes())
                        .await?
                        .is_ok()
                {
                    return Ok(n);
                }
            }
        }
        Err(VpcError::Lease {
            key: format!("{ORDINALS}{app_id}"),
            reason: "no ordinal could be claimed (the store keeps changing)".into(),
        })
    }

    /// Gives `lease`'s address back if it is still exactly `lease` (not re-registered or
    /// re-leased meanwhile); whether it was released.
    pub async fn release_if_unchanged(&self, lease: &Lease) -> Result<bool, VpcError> {
        let key = Leases::key(lease.address);
        match self.store.get(&key).await? {
            // Deleted only at the version read: a registration between the read and the
            // delete (on this node or another) keeps its lease.
            Some(v) if self.decode(&key, &v.value).as_ref() == Some(lease) => {
                Ok(self.store.compare_and_delete(&key, v.version).await?)
            }
            _ => Ok(false),
        }
    }

    /// Gives `address` back; whether it was leased.
    pub async fn release(&self, address: Ipv4Addr) -> Result<bool, VpcError> {
        Ok(self.store.delete(&Leases::key(address)).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_store::Embedded;

    fn leases(dir: &std::path::Path, prefix: &str) -> Leases {
        let store = Arc::new(Embedded::open(&dir.join("state.redb")).unwrap());
        let prefix: Ipv4Prefix = prefix.parse().unwrap();
        let gw = prefix.hosts().next().unwrap();
        let sealer = Arc::new(gatehouse_store::AesGcmSealer::from_key(&[7; 32], "test").unwrap());
        Leases::new(store, sealer, prefix, vec![gw])
    }

    fn key(i: u8) -> [u8; 32] {
        [i; 32]
    }

    #[tokio::test]
    async fn a_key_keeps_its_address_and_the_gateway_address_is_never_leased() {
        let dir = tempfile::tempdir().unwrap();
        let l = leases(dir.path(), "10.88.0.0/24");
        let (a, new) = l.acquire("shop", &key(1), 1).await.unwrap();
        assert!(new);
        assert_eq!(
            a.address,
            Ipv4Addr::new(10, 88, 0, 2),
            "10.88.0.1 is the gateway's"
        );
        let (again, new) = l.acquire("shop", &key(1), 2).await.unwrap();
        assert!(!new);
        assert_eq!(again.address, a.address);
        assert_eq!(again.registered_at, 2);
        let (b, _) = l.acquire("shop", &key(2), 3).await.unwrap();
        assert_eq!(b.address, Ipv4Addr::new(10, 88, 0, 3));
        assert!(l.release(a.address).await.unwrap());
        let (c, _) = l.acquire("bank", &key(3), 4).await.unwrap();
        assert_eq!(c.address, a.address, "a released address is reused");
    }

    /// Whoever writes the store without the sealing key cannot add a lease (every node would
    /// make its WireGuard key a peer): a forged record is ignored and its address skipped, a
    /// sealed lease replayed under another address does not open there.
    #[tokio::test]
    async fn security_a_forged_lease_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let l = leases(dir.path(), "10.88.0.0/24");
        let forged = Lease {
            address: Ipv4Addr::new(10, 88, 0, 2),
            app_id: "shop".into(),
            public_key: super::super::wireguard::base64(&key(66)),
            registered_at: 1,
            ordinal: 0,
            measurements: None,
        };
        l.store
            .put(
                "vpc/leases/10.88.0.2",
                &serde_json::to_vec(&forged).unwrap(),
            )
            .await
            .unwrap();
        assert!(
            l.all().await.unwrap().is_empty(),
            "the forged lease does not open"
        );
        let (real, _) = l.acquire("shop", &key(1), 2).await.unwrap();
        assert_eq!(
            real.address,
            Ipv4Addr::new(10, 88, 0, 3),
            "its address is skipped"
        );
        let sealed = l.store.get("vpc/leases/10.88.0.3").await.unwrap().unwrap();
        l.store
            .put("vpc/leases/10.88.0.9", &sealed.value)
            .await
            .unwrap();
        let all = l.all().await.unwrap();
        assert_eq!(
            all,
            vec![real],
            "a sealed lease moved to another address does not open"
        );
    }

    /// Ordinals name instances (`<n>.<app>`): the lowest free per app, kept by a key that
    /// registers again, freed with the lease, unique under concurrent registrations.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn mesh_ordinals_are_per_app_stable_and_unique() {
        let dir = tempfile::tempdir().unwrap();
        let l = leases(dir.path(), "10.88.0.0/24");
        let (a, _) = l.acquire("db", &key(1), 1).await.unwrap();
        let (b, _) = l.acquire("db", &key(2), 1).await.unwrap();
        let (w, _) = l.acquire("web", &key(3), 1).await.unwrap();
        assert_eq!((a.ordinal, b.ordinal, w.ordinal), (0, 1, 0));
        assert_eq!(l.acquire("db", &key(2), 2).await.unwrap().0.ordinal, 1);
        assert!(l.release(a.address).await.unwrap());
        assert_eq!(l.acquire("db", &key(4), 3).await.unwrap().0.ordinal, 0);
        let racing: Vec<_> = (10..30u8)
            .map(|i| {
                let l = l.clone();
                tokio::spawn(async move { l.acquire("cache", &key(i), 1).await.unwrap() })
            })
            .collect();
        for r in racing {
            r.await.unwrap();
        }
        let mut ordinals: Vec<u32> = l
            .all()
            .await
            .unwrap()
            .into_iter()
            .filter(|l| l.app_id == "cache")
            .map(|l| l.ordinal)
            .collect();
        ordinals.sort();
        assert_eq!(ordinals, (0..20).collect::<Vec<u32>>());
    }

    /// A crash between a lease's first write (claiming) and its ordinal's claim leaves the
    /// lease claiming, and one inside `settle` a second address for the same key; the
    /// instance registering again gets its ordinal and one address.
    #[tokio::test]
    async fn crash_consistency_a_lease_left_half_made_is_completed_on_return() {
        let dir = tempfile::tempdir().unwrap();
        let l = leases(dir.path(), "10.88.0.0/24");
        let (a, _) = l.acquire("db", &key(1), 1).await.unwrap();
        let mut cut = Lease {
            address: "10.88.0.9".parse().unwrap(),
            app_id: "db".into(),
            public_key: super::super::wireguard::base64(&key(2)),
            registered_at: 1,
            ordinal: CLAIMING,
            measurements: None,
        };
        l.store
            .put(&Leases::key(cut.address), &l.encode(&cut).unwrap())
            .await
            .unwrap();
        // ... and, as a crash inside `settle` can, a second address for the same key.
        let extra = Lease {
            address: "10.88.0.12".parse().unwrap(),
            ..cut.clone()
        };
        l.store
            .put(&Leases::key(extra.address), &l.encode(&extra).unwrap())
            .await
            .unwrap();
        let (back, new) = l.acquire("db", &key(2), 2).await.unwrap();
        assert!(!new);
        assert_eq!(back.address, cut.address);
        assert_eq!(back.ordinal, 1, "{back:?}");
        cut.ordinal = 1;
        cut.registered_at = 2;
        let all = l.all().await.unwrap();
        assert!(all.contains(&cut), "{all:?}");
        assert!(!all.iter().any(|l| l.address == extra.address), "{all:?}");
        assert_eq!(a.ordinal, 0);
    }

    #[tokio::test]
    async fn leases_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let first = leases(dir.path(), "10.88.0.0/24")
            .acquire("shop", &key(7), 1)
            .await
            .unwrap()
            .0;
        let again = leases(dir.path(), "10.88.0.0/24")
            .acquire("shop", &key(7), 2)
            .await
            .unwrap()
            .0;
        assert_eq!(first.address, again.address);
    }

    #[tokio::test]
    async fn an_exhausted_pool_says_so_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let l = leases(dir.path(), "10.88.0.0/30"); // hosts .1 (gateway) and .2
        l.acquire("shop", &key(1), 1).await.unwrap();
        let e = l.acquire("shop", &key(2), 1).await.unwrap_err();
        assert!(
            matches!(e, VpcError::PoolExhausted { leased: 1, .. }),
            "{e}"
        );
        assert_eq!(l.all().await.unwrap().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn fifty_concurrent_registrations_get_fifty_distinct_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let l = leases(dir.path(), "10.88.0.0/24");
        let threads: Vec<_> = (0..50u8)
            .map(|i| {
                let l = l.clone();
                tokio::spawn(async move { l.acquire("shop", &key(i), 1).await.unwrap().0.address })
            })
            .collect();
        let mut got = Vec::new();
        for t in threads {
            got.push(t.await.unwrap());
        }
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 50);
        assert_eq!(l.all().await.unwrap().len(), 50, "no stray leases");
    }
}
