//! TLS-ALPN-01 (RFC 8737): while a challenge is pending, a handshake for its name offering
//! only ALPN `acme-tls/1` is answered with a self-signed certificate carrying the critical
//! `acmeIdentifier` extension (the SHA-256 of the key authorization), then closed.
//!
//! The gateway's accept loop routes such hellos here before any app routing.
//!
//! In a cluster the CA's validation may reach any node behind the name's address, so the
//! renewer also writes each pending challenge to the shared store (`challenges/<name>`: the
//! digest) and every node answers what [`AlpnChallenges::follow`] reads there. The digest is
//! not secret, but it is sealed (the cluster key, bound to the name): whoever runs etcd must
//! not make our nodes answer a validation for an order of theirs.

use crate::CertbotError;
use gatehouse_store::{Event, Sealer, Store};
use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

/// Where pending challenges live in the shared store.
const PREFIX: &str = "challenges/";

/// The ALPN protocol id of TLS-ALPN-01.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Pending TLS-ALPN-01 challenge certificates by lower-case name (with their digest).
#[derive(Debug, Default)]
pub struct AlpnChallenges {
    local: RwLock<HashMap<String, Answer>>,
    shared: OnceLock<Shared>,
}

/// The store challenges are shared through and the sealer that vouches for them.
type Shared = (Arc<dyn Store>, Arc<dyn Sealer>);

/// A challenge's digest and the certificate that answers it.
type Answer = (Vec<u8>, Arc<CertifiedKey>);

impl AlpnChallenges {
    /// Also writes challenges to `store` sealed by `sealer`, for the other nodes of a
    /// cluster (and reads theirs, with [`AlpnChallenges::follow`]).
    pub fn share_through(&self, store: Arc<dyn Store>, sealer: Arc<dyn Sealer>) {
        let _ = self.shared.set((store, sealer));
    }

    /// Answers `name` for `digest` here and, in a cluster, on every node.
    pub async fn publish(&self, name: &str, digest: &[u8]) -> Result<(), CertbotError> {
        self.insert(name, digest)?;
        if let Some((store, sealer)) = self.shared.get() {
            let key = format!("{PREFIX}{}", name.to_ascii_lowercase());
            let sealed = sealer
                .seal(&key, digest)
                .map_err(|e| CertbotError::Cert(format!("{key}: {e}")))?;
            store.put(&key, &sealed).await?;
        }
        Ok(())
    }

    /// Stops answering `name` here and, in a cluster, on every node.
    pub async fn withdraw(&self, name: &str) {
        self.remove(name);
        if let Some((store, _)) = self.shared.get() {
            let key = format!("{PREFIX}{}", name.to_ascii_lowercase());
            if let Err(e) = store.delete(&key).await {
                tracing::warn!("could not withdraw the shared challenge for {name}: {e}");
            }
        }
    }

    /// Answers the challenges other nodes publish in the store given to
    /// [`AlpnChallenges::share_through`], forever (at once if none was given).
    pub async fn follow(self: Arc<Self>) {
        let Some((store, sealer)) = self.shared.get().cloned() else {
            return;
        };
        loop {
            match store.watch(PREFIX).await {
                Ok((now, mut changes)) => {
                    for (key, v) in now {
                        self.apply(Event::Put { key, value: v }, sealer.as_ref());
                    }
                    while let Some(change) = changes.next().await {
                        self.apply(change, sealer.as_ref());
                    }
                }
                Err(e) => tracing::warn!("cannot watch the shared challenges, retrying: {e}"),
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    fn apply(&self, change: Event, sealer: &dyn Sealer) {
        let name = change.key().trim_start_matches(PREFIX).to_owned();
        match change {
            Event::Put { key, value } => match sealer.unseal(&key, &value.value) {
                Ok(digest) if self.digest(&name).as_deref() != Some(&digest[..]) => {
                    if let Err(e) = self.insert(&name, &digest) {
                        tracing::warn!("cannot answer the shared challenge for {name}: {e}");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("shared challenge for {name} not answered: {e}"),
            },
            Event::Delete { .. } => self.remove(&name),
        }
    }

    fn digest(&self, name: &str) -> Option<Vec<u8>> {
        self.local
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .map(|(d, _)| d.clone())
    }

    /// Answers `name` with a certificate for `digest` (SHA-256 of the key authorization).
    pub fn insert(&self, name: &str, digest: &[u8]) -> Result<(), CertbotError> {
        let key = KeyPair::generate().map_err(|e| CertbotError::Cert(e.to_string()))?;
        let mut params = CertificateParams::new(vec![name.to_owned()])
            .map_err(|e| CertbotError::Cert(e.to_string()))?;
        params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
        let cert = params
            .self_signed(&key)
            .map_err(|e| CertbotError::Cert(e.to_string()))?;
        let der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der)
            .map_err(|e| CertbotError::Cert(e.to_string()))?;
        let certified = Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing));
        self.local
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_ascii_lowercase(), (digest.to_vec(), certified));
        Ok(())
    }

    /// Stops answering for `name`.
    pub fn remove(&self, name: &str) {
        self.local
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name.to_ascii_lowercase());
    }

    /// Whether a challenge for the lower-case `name` is pending.
    pub fn has(&self, name: &str) -> bool {
        self.local
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(name)
    }

    /// A rustls server config answering pending challenges (ALPN `acme-tls/1` only).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for AlpnChallenges {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.to_ascii_lowercase();
        self.local
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&name)
            .map(|(_, key)| key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_challenge_certificate_carries_the_critical_acme_identifier() {
        let c = AlpnChallenges::default();
        let digest = [7u8; 32];
        c.insert("Shop.Example.test", &digest).unwrap();
        assert!(c.has("shop.example.test"));
        let key = c
            .local
            .read()
            .unwrap()
            .get("shop.example.test")
            .map(|(_, k)| k.clone())
            .unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&key.cert[0]).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        // DER OCTET STRING of the 32-byte digest
        assert_eq!(&ext.value[..2], &[0x04, 32]);
        assert_eq!(&ext.value[2..], &digest);
        c.remove("shop.example.test");
        assert!(!c.has("shop.example.test"));
    }

    /// A challenge one node publishes is answered by another that follows the same store,
    /// and withdrawn there too.
    #[tokio::test]
    async fn cluster_challenges_published_on_one_node_are_answered_on_another() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(gatehouse_store::Embedded::open(&dir.path().join("s.redb")).unwrap());
        let sealer: Arc<dyn Sealer> =
            Arc::new(gatehouse_store::AesGcmSealer::from_key(&[3; 32], "test").unwrap());
        let renewer = AlpnChallenges::default();
        renewer.share_through(store.clone(), sealer.clone());
        let other = Arc::new(AlpnChallenges::default());
        other.share_through(store.clone(), sealer.clone());
        tokio::spawn(other.clone().follow());
        // Written without the sealing key (whoever runs etcd): never answered.
        store
            .put("challenges/forged.example.test", &[7u8; 32])
            .await
            .unwrap();
        renewer
            .publish("Shop.Example.test", &[9u8; 32])
            .await
            .unwrap();
        let seen = |want: bool| {
            let other = other.clone();
            async move {
                for _ in 0..100 {
                    if other.has("shop.example.test") == want {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                panic!(
                    "the other node never saw the challenge {}",
                    if want { "arrive" } else { "go" }
                );
            }
        };
        seen(true).await;
        assert_eq!(other.digest("shop.example.test"), Some(vec![9u8; 32]));
        assert!(
            !other.has("forged.example.test"),
            "a challenge written without the key is not answered"
        );
        renewer.withdraw("shop.example.test").await;
        seen(false).await;
    }
}
