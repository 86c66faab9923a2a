//! The DNS-01 records an order wrote, kept in the store until they are removed: a process
//! killed during an order leaves its `_acme-challenge` TXT records behind, and without this
//! ledger they would stay in the zone for good, one more per interrupted order, until the
//! answers outgrow a CA's UDP lookups (seen by `cargo test crash_consistency`: after a few
//! dozen kills Pebble found "no TXT records" and every order failed). Each target's next
//! order removes what its earlier ones left before adding its own. The values are public
//! (they are published in DNS), so the ledger is not sealed.

use crate::CertbotError;
use gatehouse_dns::DnsProvider;
use gatehouse_store::Store;
use serde::{Deserialize, Serialize};

/// One TXT record an order added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeRecord {
    /// The record's name (`_acme-challenge.<domain>`).
    pub name: String,
    /// Its value.
    pub value: String,
}

/// The store key of target `id`'s ledger.
pub fn store_key(id: &str) -> String {
    format!("acme/challenges/{id}")
}

/// Target `id`'s ledger (one writer at a time: the node holding the target's renewal).
#[derive(Clone, Copy)]
pub struct Ledger<'a> {
    /// The target's id.
    pub id: &'a str,
    /// The store.
    pub store: &'a dyn Store,
}

impl Ledger<'_> {
    /// The records written and not yet removed.
    pub async fn records(&self) -> Result<Vec<ChallengeRecord>, CertbotError> {
        match self.store.get(&store_key(self.id)).await? {
            None => Ok(Vec::new()),
            // An unreadable ledger is dropped: it can only name records to delete.
            Some(v) => Ok(serde_json::from_slice(&v.value).unwrap_or_default()),
        }
    }

    /// Notes `record` before it is written to DNS.
    pub async fn add(&self, record: ChallengeRecord) -> Result<(), CertbotError> {
        let mut all = self.records().await?;
        if !all.contains(&record) {
            all.push(record);
        }
        self.write(&all).await
    }

    /// Removes every noted record from DNS; forgets those removed (a failure keeps the rest
    /// for the next try, and is logged).
    pub async fn sweep(&self, provider: &dyn DnsProvider) -> Result<(), CertbotError> {
        let all = self.records().await?;
        if all.is_empty() {
            return Ok(());
        }
        let mut left = Vec::new();
        for r in all {
            match provider.remove_txt(&r.name, &r.value).await {
                Ok(()) => {
                    tracing::debug!(name = %r.name, "challenge record removed");
                }
                Err(e) => {
                    tracing::warn!("could not remove the challenge record {}: {e}", r.name);
                    left.push(r);
                }
            }
        }
        self.write(&left).await
    }

    async fn write(&self, records: &[ChallengeRecord]) -> Result<(), CertbotError> {
        let key = store_key(self.id);
        if records.is_empty() {
            self.store.delete(&key).await?;
            return Ok(());
        }
        let bytes = serde_json::to_vec(records).map_err(|e| CertbotError::Cert(e.to_string()))?;
        self.store.put(&key, &bytes).await?;
        Ok(())
    }
}
