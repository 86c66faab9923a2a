//! The keys that are ours: the SHA-256 of the SubjectPublicKeyInfo of every key that entered
//! one of our CSRs, recorded before the order is finalized (so before any CA could log a
//! certificate for it), and of every key the gateway serves (keys it holds).
//!
//! Stored at `ct/keys/<spki-sha256>`: a JSON record of why and when, nothing more (on etcd
//! the store is outside the TEE's trust: it holds sealed data or public hashes only). Records
//! are never removed: a certificate stays in CT logs after its key is retired.

use crate::CtError;
use gatehouse_store::Store;
use std::collections::HashSet;

/// Where the allowlist lives in the store.
pub const PREFIX: &str = "ct/keys/";

/// Why a key is on the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// It entered a CSR.
    Csr,
    /// The gateway serves it (a key it holds).
    Served,
}

/// Records `spki_sha256` (hex) as ours. Idempotent.
pub async fn record(
    store: &dyn Store,
    spki_sha256: &str,
    why: Why,
    now: u64,
) -> Result<(), CtError> {
    let key = format!("{PREFIX}{spki_sha256}");
    if store.get(&key).await?.is_some() {
        return Ok(());
    }
    let value = serde_json::json!({
        "why": match why { Why::Csr => "csr", Why::Served => "served" },
        "at": now,
    });
    store.put(&key, value.to_string().as_bytes()).await?;
    Ok(())
}

/// Every key on the list.
pub async fn load(store: &dyn Store) -> Result<HashSet<String>, CtError> {
    let listing = store.list(PREFIX).await?;
    Ok(listing
        .into_iter()
        .filter_map(|(k, _)| k.strip_prefix(PREFIX).map(str::to_owned))
        .collect())
}
