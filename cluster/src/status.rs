//! `gatehouse cluster status`: the cluster as the store holds it.

use crate::membership::{unix_now, NodeInfo};
use crate::ClusterError;
use gatehouse_store::Store;
use serde::Serialize;

/// One registered node.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    /// What it registered.
    pub info: NodeInfo,
    /// Its last heartbeat (unix seconds), if one is stored.
    pub last_heartbeat: Option<u64>,
}

/// One certificate's renewal lock and its holder.
#[derive(Debug, Clone, Serialize)]
pub struct RenewalLock {
    /// The certificate target (`gw.test`, a custom domain...).
    pub certificate: String,
    /// The node holding it.
    pub holder: String,
}

/// Members, renewal locks, and when this was read.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// Live members (their registration's lease is alive), by name.
    pub members: Vec<Member>,
    /// Heartbeats of nodes no longer registered (name, unix seconds): gone or cut off.
    pub departed: Vec<(String, u64)>,
    /// Renewals in progress.
    pub renewal_locks: Vec<RenewalLock>,
    /// Which cluster key the cluster uses, who founded it and when (none yet: no node ran).
    pub genesis: Option<crate::key::Genesis>,
    /// When this was read (unix seconds).
    pub read_at: u64,
}

fn heartbeat_of(key: &str, value: &[u8]) -> Result<u64, ClusterError> {
    serde_json::from_slice::<serde_json::Value>(value)
        .ok()
        .and_then(|v| v["at"].as_u64())
        .ok_or_else(|| ClusterError::Record {
            key: key.to_owned(),
            reason: "not a heartbeat".into(),
        })
}

/// Reads the cluster's members, heartbeats and renewal locks from `store`.
pub async fn status(store: &dyn Store) -> Result<ClusterStatus, ClusterError> {
    let mut heartbeats = std::collections::BTreeMap::new();
    for (key, v) in store.list("heartbeats/").await? {
        let name = key.trim_start_matches("heartbeats/").to_owned();
        heartbeats.insert(name, heartbeat_of(&key, &v.value)?);
    }
    let mut members = Vec::new();
    for (key, v) in store.list("locks/nodes/").await? {
        let info: NodeInfo =
            serde_json::from_slice(&v.value).map_err(|e| ClusterError::Record {
                key: key.clone(),
                reason: e.to_string(),
            })?;
        let last_heartbeat = heartbeats.remove(&info.name);
        members.push(Member {
            info,
            last_heartbeat,
        });
    }
    let renewal_locks = store
        .list("locks/renew/")
        .await?
        .into_iter()
        .map(|(key, v)| RenewalLock {
            certificate: key.trim_start_matches("locks/renew/").to_owned(),
            holder: String::from_utf8_lossy(&v.value).into_owned(),
        })
        .collect();
    Ok(ClusterStatus {
        genesis: crate::key::genesis(store).await?,
        members,
        departed: heartbeats.into_iter().collect(),
        renewal_locks,
        read_at: unix_now(),
    })
}

impl std::fmt::Display for ClusterStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ago = |t: u64| format!("{}s ago", self.read_at.saturating_sub(t));
        match &self.genesis {
            Some(g) => writeln!(
                f,
                "cluster key: {}, founded by {} {}",
                g.key_id,
                g.founded_by,
                ago(g.at)
            )?,
            None => writeln!(f, "cluster key: none yet (no node has started)")?,
        }
        writeln!(f, "members: {}", self.members.len())?;
        for m in &self.members {
            writeln!(
                f,
                "  {}  listen {}  admin {}  vpc {}  join {}  version {}  heartbeat {}",
                m.info.name,
                m.info.listen.join(","),
                m.info.admin.as_deref().unwrap_or("-"),
                m.info.vpc.as_deref().unwrap_or("-"),
                m.info.join.as_deref().unwrap_or("-"),
                m.info.version,
                m.last_heartbeat.map_or("never".into(), ago),
            )?;
        }
        for (name, at) in &self.departed {
            writeln!(
                f,
                "  {name}  not registered (gone or cut off)  heartbeat {}",
                ago(*at)
            )?;
        }
        writeln!(f, "renewal locks: {}", self.renewal_locks.len())?;
        for l in &self.renewal_locks {
            writeln!(f, "  {}  held by {}", l.certificate, l.holder)?;
        }
        Ok(())
    }
}
