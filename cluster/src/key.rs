//! The cluster sealing key: made inside the first node's TEE, handed only to nodes that pass
//! the cluster policy (see [`crate::join`]), never written anywhere in the clear.
//!
//! Every shared secret (ACME account, certificate keys) is sealed under it before it reaches
//! etcd, so etcd can deny service but never read a key or forge a sealed record. The store
//! holds only the *genesis* record, `cluster/genesis`: which key the cluster uses (an HMAC
//! of the key, not the key), who founded it and when. Each node keeps its own copy of the
//! key in its state directory, sealed under its own TEE-derived key (`cluster-key.sealed`),
//! so a restart does not need another member; a node whose TEE key changed (an upgrade)
//! cannot open its copy and joins again, if the cluster policy admits its new measurements.

use crate::join::{ask, Asked, Attested};
use crate::ClusterError;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use gatehouse_store::{AesGcmSealer, Sealer, Store, Zeroizing};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, Instant};

/// Where the store names the cluster's key.
pub const GENESIS: &str = "cluster/genesis";
/// The node's sealed copy, in its state directory.
pub const LOCAL_FILE: &str = "cluster-key.sealed";
/// The name the copy is sealed under.
const SEAL_NAME: &str = "cluster/key";

/// The 32-byte cluster sealing key and its public id.
pub struct ClusterKey {
    key: Zeroizing<Vec<u8>>,
    id: String,
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterKey({}, <key>)", self.id)
    }
}

/// `cluster/genesis`: public facts about the cluster key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Genesis {
    /// [`ClusterKey::id`] of the cluster's key.
    pub key_id: String,
    /// The node that made it.
    pub founded_by: String,
    /// When (unix seconds).
    pub at: u64,
}

fn key_err(e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Key(e.to_string())
}

impl ClusterKey {
    /// A new random key (inside this TEE).
    pub fn generate() -> Result<ClusterKey, ClusterError> {
        let mut key = Zeroizing::new(vec![0u8; 32]);
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| key_err("random generator failed"))?;
        Ok(ClusterKey::from_bytes(key))
    }

    /// A key from its 32 bytes (as a member handed it over).
    pub fn from_bytes(key: Zeroizing<Vec<u8>>) -> ClusterKey {
        let mac = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key),
            b"gatehouse-cluster-key-id-v1",
        );
        let id = gatehouse_attest::hex::encode(&mac.as_ref()[..16]);
        ClusterKey { key, id }
    }

    /// The key's public id: an HMAC under the key, which names it without revealing it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key's bytes, for handing it to a joining node over attested TLS.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.key
    }

    /// The sealer of every shared secret.
    pub fn sealer(&self) -> Result<AesGcmSealer, ClusterError> {
        AesGcmSealer::from_key(&self.key, "cluster").map_err(key_err)
    }

    /// The copy in `dir`, if one is there and opens under `local` (a copy that does not is
    /// reported and ignored: the node joins again).
    pub fn load(dir: &Path, local: &dyn Sealer) -> Result<Option<ClusterKey>, ClusterError> {
        let path = dir.join(LOCAL_FILE);
        let sealed = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(key_err(format!("{}: {e}", path.display()))),
        };
        match local.unseal(SEAL_NAME, &sealed) {
            Ok(key) if key.len() == 32 => Ok(Some(ClusterKey::from_bytes(key))),
            Ok(_) => {
                tracing::warn!("{}: not a cluster key; joining again", path.display());
                Ok(None)
            }
            Err(e) => {
                tracing::warn!(
                    "{}: {e} (this node's TEE key changed, or the file is not ours); joining \
                     again",
                    path.display()
                );
                Ok(None)
            }
        }
    }

    /// Writes the copy to `dir`, sealed under `local` (atomically, mode 0600).
    pub fn save(&self, dir: &Path, local: &dyn Sealer) -> Result<(), ClusterError> {
        let sealed = local.seal(SEAL_NAME, &self.key).map_err(key_err)?;
        let path = dir.join(LOCAL_FILE);
        gatehouse_store::write_atomic(&path, &sealed, 0o600)
            .map_err(|e| key_err(format!("{}: {e}", path.display())))
    }
}

/// The genesis record, if the cluster has one.
pub async fn genesis(store: &dyn Store) -> Result<Option<Genesis>, ClusterError> {
    let Some(v) = store.get(GENESIS).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&v.value)
        .map(Some)
        .map_err(|e| ClusterError::Record {
            key: GENESIS.into(),
            reason: e.to_string(),
        })
}

/// How this node obtains the cluster key.
pub struct Obtain<'a> {
    /// The shared store.
    pub store: &'a dyn Store,
    /// This node's own TEE sealer (protects the local copy).
    pub local: &'a dyn Sealer,
    /// This node's state directory.
    pub dir: &'a Path,
    /// This node's name.
    pub node: &'a str,
    /// Its RA-TLS identity and the cluster policy.
    pub attested: &'a Attested,
    /// How long to look for a member that hands the key over.
    pub timeout: Duration,
}

impl Obtain<'_> {
    /// The cluster key: this node's copy if it is the cluster's; else founds the cluster
    /// (no genesis yet: makes the key, keeps its copy, then creates the genesis record by
    /// compare-and-swap, so of two founders one wins and the other joins it); else asks
    /// the registered members, in turn, over mutual RA-TLS. Fails closed: a member's
    /// refusal (this node fails the cluster policy) or no member within the timeout is an
    /// error, and the node holds no key.
    pub async fn run(&self) -> Result<ClusterKey, ClusterError> {
        let deadline = Instant::now() + self.timeout;
        let mut said_waiting = false;
        loop {
            let Some(genesis) = genesis(self.store).await? else {
                if let Some(key) = self.found().await? {
                    return Ok(key);
                }
                continue; // another node founded it meanwhile
            };
            if let Some(key) = ClusterKey::load(self.dir, self.local)? {
                if key.id == genesis.key_id {
                    tracing::info!(key = %key.id, "cluster key restored from this node's sealed copy");
                    return Ok(key);
                }
                tracing::warn!(
                    mine = %key.id, cluster = %genesis.key_id,
                    "this node's cluster key is not the cluster's (the cluster was founded anew); joining again"
                );
            }
            let (key, why) = self.ask_members(&genesis).await?;
            if let Some(key) = key {
                key.save(self.dir, self.local)?;
                return Ok(key);
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::NoMember {
                    waited: self.timeout,
                    last: why,
                });
            }
            if !said_waiting {
                tracing::info!("waiting for a cluster member to hand over the cluster key: {why}");
                said_waiting = true;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn found(&self) -> Result<Option<ClusterKey>, ClusterError> {
        let key = ClusterKey::generate()?;
        // The copy first: a crash after the genesis record but before the copy would leave a
        // cluster whose key nobody holds.
        key.save(self.dir, self.local)?;
        let record = serde_json::to_vec(&Genesis {
            key_id: key.id.clone(),
            founded_by: self.node.to_owned(),
            at: crate::membership::unix_now(),
        })
        .expect("genesis serializes");
        match self.store.compare_and_swap(GENESIS, 0, &record).await? {
            Ok(_) => {
                tracing::info!(key = %key.id, "founded the cluster: a new cluster sealing key, made in this TEE");
                Ok(Some(key))
            }
            Err(_) => Ok(None),
        }
    }

    /// One round over the registered members: the key, or why none handed it over. A
    /// refusal ends the round with an error unless another member hands the key over.
    async fn ask_members(
        &self,
        genesis: &Genesis,
    ) -> Result<(Option<ClusterKey>, String), ClusterError> {
        let members = crate::status::status(self.store).await?.members;
        let mut why = "no member is registered with a join listener".to_owned();
        let mut refusal = None;
        for m in members.iter().filter(|m| m.info.name != self.node) {
            let Some(addr) = &m.info.join else { continue };
            match ask(addr, self.node, self.attested).await {
                Asked::Key(key) if key.id == genesis.key_id => {
                    tracing::info!(member = %m.info.name, key = %key.id, "joined the cluster: the cluster key was handed over by an attested member");
                    return Ok((Some(key), String::new()));
                }
                Asked::Key(key) => {
                    why = format!(
                        "{} handed over key {}, not the cluster's {}",
                        m.info.name, key.id, genesis.key_id
                    );
                }
                Asked::Refused(reason) => {
                    refusal.get_or_insert((m.info.name.clone(), reason));
                }
                Asked::Failed(reason) => why = format!("{} ({addr}): {reason}", m.info.name),
            }
        }
        match refusal {
            Some((member, reason)) => Err(ClusterError::JoinRefused { member, reason }),
            None => Ok((None, why)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_key_copy_opens_only_under_the_node_sealer_that_made_it() {
        let dir = tempfile::tempdir().unwrap();
        let mine = AesGcmSealer::from_key(&[1; 32], "test").unwrap();
        let other = AesGcmSealer::from_key(&[2; 32], "test").unwrap();
        assert!(ClusterKey::load(dir.path(), &mine).unwrap().is_none());
        let key = ClusterKey::generate().unwrap();
        key.save(dir.path(), &mine).unwrap();
        let back = ClusterKey::load(dir.path(), &mine).unwrap().unwrap();
        assert_eq!(back.id(), key.id());
        assert_eq!(back.bytes(), key.bytes());
        assert!(
            ClusterKey::load(dir.path(), &other).unwrap().is_none(),
            "another TEE key cannot open the copy: the node joins again"
        );
        let stored = std::fs::read(dir.path().join(LOCAL_FILE)).unwrap();
        assert!(
            !stored.windows(32).any(|w| w == key.bytes()),
            "the copy is sealed"
        );
        assert_ne!(ClusterKey::generate().unwrap().id(), key.id());
        assert_eq!(key.id().len(), 32, "16 bytes of HMAC, hex");
    }
}
