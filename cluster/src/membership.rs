//! A node's registration, heartbeat and view of the store's health.

use gatehouse_store::{Lock, Store};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often a node writes its heartbeat (and so probes the store).
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long a dead node's registration outlives it.
pub const REGISTRATION_TTL: Duration = Duration::from_secs(6);

/// What a node says of itself in its registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's name (unique in the cluster).
    pub name: String,
    /// Its TLS listeners.
    pub listen: Vec<String>,
    /// Its admin listener, if any.
    pub admin: Option<String>,
    /// Its VPC WireGuard endpoint, if it runs the VPC.
    pub vpc: Option<String>,
    /// Its join listener (`host:port`), where it hands the cluster key to attested nodes.
    #[serde(default)]
    pub join: Option<String>,
    /// Its attestation bundle when it registered (quote, claims; without collateral, which
    /// a verifier fetches itself): what it runs, checkable with `gatehouse verify`'s code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<serde_json::Value>,
    /// The Gatehouse version it runs.
    pub version: String,
    /// When it started (unix seconds).
    pub started: u64,
}

/// This machine's hostname and this process's id: unique among live nodes, and it says
/// where to look.
pub fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether the store answers, as the heartbeat last found it.
#[derive(Debug, Default)]
pub struct Health {
    available: AtomicBool,
    last_success: AtomicU64,
    failures: AtomicU64,
}

impl Health {
    /// Whether the last heartbeat reached the store.
    pub fn available(&self) -> bool {
        self.available.load(Ordering::Relaxed)
    }

    /// When a heartbeat last reached the store (unix seconds; 0: never).
    pub fn last_success(&self) -> u64 {
        self.last_success.load(Ordering::Relaxed)
    }

    /// Heartbeats that failed.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Records one heartbeat's outcome; returns whether availability changed.
    fn record(&self, ok: bool) -> bool {
        if ok {
            self.last_success.store(unix_now(), Ordering::Relaxed);
        } else {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.available.swap(ok, Ordering::Relaxed) != ok
    }
}

/// A node's membership: registration and heartbeat, for as long as [`Membership::run`] runs.
pub struct Membership {
    store: Arc<dyn Store>,
    info: NodeInfo,
    health: Arc<Health>,
}

impl Membership {
    /// The membership of the node `info` describes.
    pub fn new(store: Arc<dyn Store>, info: NodeInfo) -> Membership {
        Membership {
            store,
            info,
            health: Arc::default(),
        }
    }

    /// The store's health as this node's heartbeat sees it.
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// Registers, then beats every [`HEARTBEAT`] forever; registers again whenever the
    /// registration was lost (its lease ran out while the store was unreachable).
    pub async fn run(self) {
        let name = &self.info.name;
        let holder = serde_json::to_string(&self.info).expect("node info serializes");
        let mut registration: Option<Lock> = None;
        loop {
            let beat = self.beat(&mut registration, &holder).await;
            let ok = beat.is_ok();
            if self.health.record(ok) {
                match beat {
                    Ok(()) => {
                        tracing::info!(node = %name, "store reachable: renewals and registrations go on")
                    }
                    Err(e) => tracing::error!(
                        node = %name,
                        "store unavailable, serving what this node holds; renewals and VPC registrations wait: {e}"
                    ),
                }
            }
            tokio::time::sleep(HEARTBEAT).await;
        }
    }

    async fn beat(
        &self,
        registration: &mut Option<Lock>,
        holder: &str,
    ) -> Result<(), gatehouse_store::StoreError> {
        let lock_name = format!("nodes/{}", self.info.name);
        let still = match registration {
            Some(lock) => self
                .store
                .get(&lock.fence.key)
                .await?
                .is_some_and(|v| v.version == lock.fence.revision),
            None => false,
        };
        if !still {
            *registration = None;
            match self
                .store
                .try_lock(&lock_name, holder, REGISTRATION_TTL)
                .await?
            {
                Ok(lock) => {
                    tracing::info!(node = %self.info.name, "registered in the cluster");
                    *registration = Some(lock);
                }
                Err(theirs) => {
                    tracing::error!(node = %self.info.name, "another process registered under this node's name: {theirs}")
                }
            }
        }
        let beat = serde_json::json!({ "at": unix_now() }).to_string();
        self.store
            .put(&format!("heartbeats/{}", self.info.name), beat.as_bytes())
            .await?;
        Ok(())
    }
}
