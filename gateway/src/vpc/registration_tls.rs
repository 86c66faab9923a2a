//! The registration listener's TLS: an RA-TLS certificate whose key is made in the process
//! and replaced every day, each certificate valid for its key's life (two days: one in use,
//! one of margin for clients' clocks), quoted afresh by the attestor's provider.

use super::VpcError;
use arc_swap::ArcSwap;
use gatehouse_attest::provider::QuoteProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::Arc;
use std::time::Duration;

/// How long one registration key is used.
pub const KEY_LIFE: Duration = Duration::from_secs(86400);

/// Serves the current registration certificate.
#[derive(Debug)]
pub struct RegistrationCert {
    current: ArcSwap<CertifiedKey>,
    provider: Arc<dyn QuoteProvider>,
}

impl ResolvesServerCert for RegistrationCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl RegistrationCert {
    /// A first key and certificate from `provider`.
    pub async fn new(provider: Arc<dyn QuoteProvider>) -> Result<Arc<RegistrationCert>, VpcError> {
        let current = ArcSwap::from_pointee(fresh(provider.as_ref()).await?);
        Ok(Arc::new(RegistrationCert { current, provider }))
    }

    /// The acceptor for the registration listener.
    pub fn acceptor(self: &Arc<Self>) -> Result<tokio_rustls::TlsAcceptor, VpcError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| VpcError::Config(format!("registration TLS: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(tls)))
    }

    /// Replaces the key and certificate every [`KEY_LIFE`], until dropped; a failed quote
    /// is retried in a minute while the current certificate (still valid) is served.
    pub async fn rotate(self: Arc<Self>) {
        let mut wait = KEY_LIFE;
        loop {
            tokio::time::sleep(wait).await;
            match fresh(self.provider.as_ref()).await {
                Ok(next) => {
                    self.current.store(Arc::new(next));
                    tracing::info!("VPC registration certificate renewed (new key, new quote)");
                    wait = KEY_LIFE;
                }
                Err(e) => {
                    tracing::error!("VPC registration certificate not renewed, retrying: {e}");
                    wait = Duration::from_secs(60);
                }
            }
        }
    }
}

/// A fresh P-256 key in an RA-TLS certificate valid for two key lives.
async fn fresh(provider: &dyn QuoteProvider) -> Result<CertifiedKey, VpcError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| VpcError::Key(e.to_string()))?;
    let names = vec!["gatehouse-vpc-register".to_owned()];
    let cert = gatehouse_attest::ratls::certificate(provider, &key, &names, 2 * KEY_LIFE)
        .await
        .map_err(|e| VpcError::Config(format!("RA-TLS certificate: {e}")))?;
    let der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der)
        .map_err(|e| VpcError::Key(e.to_string()))?;
    Ok(CertifiedKey::new(vec![cert], signing))
}
