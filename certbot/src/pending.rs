//! An order between finalize and a stored certificate.
//!
//! Before the CSR goes to the CA, the order's URL and the certificate key are stored, sealed
//! whole under the target's own name. If the certificate is then lost (a download timeout, a
//! failed save, a crash), the next attempt fetches that order and downloads its certificate
//! instead of ordering again: no second certificate counts against the CA's duplicate limit,
//! and a CA speaking ARI does not answer `alreadyReplaced` to an order that replaces the same
//! certificate twice.
//!
//! The same save records the key's SPKI hash on the CT allowlist
//! ([`gatehouse_ct::allowlist`]): every key that enters a CSR is known as ours before the CA
//! sees the CSR.

use crate::keys::CertKey;
use crate::CertbotError;
use gatehouse_store::{Sealer, Store, Zeroizing};
use serde::{Deserialize, Serialize};

/// An order that reached finalize (or was about to), with the key its CSR was made from.
pub struct PendingOrder {
    /// The order's URL at the CA.
    pub url: String,
    /// The names ordered.
    pub names: Vec<String>,
    /// The key whose CSR finalizes it.
    pub key: CertKey,
}

#[derive(Serialize, Deserialize)]
struct Contents {
    url: String,
    names: Vec<String>,
    key_pkcs8: String,
}

/// The store key for target `id`'s pending order.
pub fn store_key(id: &str) -> String {
    format!("orders/{id}")
}

/// Where a new order is stored before its CSR goes out: the target's id in one store.
#[derive(Clone, Copy)]
pub struct SavePending<'a> {
    /// The target's id (the store key's last segment).
    pub id: &'a str,
    /// The store.
    pub store: &'a dyn Store,
    /// What seals the order's key.
    pub sealer: &'a dyn Sealer,
}

impl SavePending<'_> {
    /// Stores `order`, sealed.
    pub async fn save(&self, order: &PendingOrder) -> Result<(), CertbotError> {
        order.save(self.id, self.store, self.sealer).await
    }
}

impl PendingOrder {
    /// Stores it, sealed (one put: the old pending order or this one).
    pub async fn save(
        &self,
        id: &str,
        store: &dyn Store,
        sealer: &dyn Sealer,
    ) -> Result<(), CertbotError> {
        // The key goes on the CT allowlist before any CA can log a certificate for it.
        let spki = self.key.spki_sha256();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        gatehouse_ct::allowlist::record(store, &spki, gatehouse_ct::allowlist::Why::Csr, now)
            .await
            .map_err(|e| match e {
                gatehouse_ct::CtError::Store(s) => CertbotError::Store(s),
                other => CertbotError::Cert(other.to_string()),
            })?;
        let key = store_key(id);
        let contents = Contents {
            url: self.url.clone(),
            names: self.names.clone(),
            key_pkcs8: self.key.pkcs8_base64(),
        };
        let plain = Zeroizing::new(
            serde_json::to_vec(&contents).map_err(|e| CertbotError::Cert(e.to_string()))?,
        );
        drop(Zeroizing::new(contents.key_pkcs8));
        store.put(&key, &sealer.seal(&key, &plain)?).await?;
        Ok(())
    }

    /// Target `id`'s pending order, if one is stored.
    pub async fn load(
        id: &str,
        store: &dyn Store,
        sealer: &dyn Sealer,
    ) -> Result<Option<PendingOrder>, CertbotError> {
        let key = store_key(id);
        let Some(v) = store.get(&key).await? else {
            return Ok(None);
        };
        let plain = sealer.unseal(&key, &v.value)?;
        let bad = |why: String| CertbotError::Cert(format!("stored {key}: {why}"));
        let contents: Contents = serde_json::from_slice(&plain).map_err(|e| bad(e.to_string()))?;
        Ok(Some(PendingOrder {
            key: CertKey::from_pkcs8_base64(contents.key_pkcs8)?,
            url: contents.url,
            names: contents.names,
        }))
    }

    /// Forgets target `id`'s pending order (its certificate is stored, or the order is gone).
    pub async fn clear(id: &str, store: &dyn Store) -> Result<(), CertbotError> {
        store.delete(&store_key(id)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyType;
    use gatehouse_store::{AesGcmSealer, Embedded};

    #[tokio::test]
    async fn cert_lifecycle_a_pending_order_round_trips_sealed_and_clears() {
        let dir = tempfile::tempdir().unwrap();
        let store = Embedded::open(&dir.path().join("s.redb")).unwrap();
        let sealer = AesGcmSealer::from_key(&[3u8; 32], "development").unwrap();
        let key = CertKey::generate(KeyType::EcdsaP256).unwrap();
        let pending = PendingOrder {
            url: "https://ca.test/order/1".into(),
            names: vec!["a.test".into()],
            key,
        };
        pending.save("a.test", &store, &sealer).await.unwrap();
        let spki = pending.key.spki_sha256();
        assert!(
            gatehouse_ct::allowlist::load(&store)
                .await
                .unwrap()
                .contains(&spki),
            "ct_monitor: the key is on the CT allowlist before the CSR goes out"
        );
        let raw = store.get("orders/a.test").await.unwrap().unwrap().value;
        assert!(!String::from_utf8_lossy(&raw).contains("ca.test"), "sealed");
        let back = PendingOrder::load("a.test", &store, &sealer)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back.url, "https://ca.test/order/1");
        assert_eq!(back.names, vec!["a.test"]);
        assert_eq!(back.key.pkcs8(), pending.key.pkcs8());
        assert!(PendingOrder::load("b.test", &store, &sealer)
            .await
            .unwrap()
            .is_none());
        store.put("orders/b.test", &raw).await.unwrap();
        assert!(
            PendingOrder::load("b.test", &store, &sealer).await.is_err(),
            "bound to its name"
        );
        PendingOrder::clear("a.test", &store).await.unwrap();
        assert!(PendingOrder::load("a.test", &store, &sealer)
            .await
            .unwrap()
            .is_none());
    }
}
