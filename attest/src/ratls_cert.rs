//! A process's own RA-TLS identity: a P-256 key made in the process and a certificate whose
//! quote binds it, replaced every [`KEY_LIFE`] (each certificate valid for two key lives: one
//! in use, one of margin for peers' clocks). Served by listeners (VPC registration, cluster
//! join) and presented as the client certificate of a node joining a cluster.

use crate::provider::QuoteProvider;
use crate::ratls::{check_after_handshake, CheckAfterHandshake};
use crate::AttestError;
use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::Arc;
use std::time::Duration;

/// How long one key is used.
pub const KEY_LIFE: Duration = Duration::from_secs(86400);

/// The current RA-TLS key and certificate, rotated by [`RotatingCert::rotate`].
#[derive(Debug)]
pub struct RotatingCert {
    current: ArcSwap<CertifiedKey>,
    provider: Arc<dyn QuoteProvider>,
    name: String,
}

impl ResolvesServerCert for RotatingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

impl rustls::client::ResolvesClientCert for RotatingCert {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl RotatingCert {
    /// A first key and certificate (subject `name`) quoted by `provider`.
    pub async fn new(
        provider: Arc<dyn QuoteProvider>,
        name: &str,
    ) -> Result<Arc<RotatingCert>, AttestError> {
        let current = ArcSwap::from_pointee(fresh(provider.as_ref(), name).await?);
        Ok(Arc::new(RotatingCert {
            current,
            provider,
            name: name.to_owned(),
        }))
    }

    /// A server config presenting this certificate; with `client_auth`, a client must present
    /// a certificate (any: the caller attests it after the handshake, with
    /// [`crate::ratls::check_peer`], before using the connection).
    pub fn server_config(
        self: &Arc<Self>,
        client_auth: bool,
    ) -> Result<rustls::ServerConfig, AttestError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| AttestError::RaTls(e.to_string()))?;
        let builder = if client_auth {
            builder.with_client_cert_verifier(Arc::new(CheckAfterHandshake::default()))
        } else {
            builder.with_no_client_auth()
        };
        Ok(builder.with_cert_resolver(self.clone()))
    }

    /// A client config presenting this certificate and deferring the server's check to
    /// [`crate::ratls::check_peer`] after the handshake.
    pub fn client_config(self: &Arc<Self>) -> Result<rustls::ClientConfig, AttestError> {
        Ok(check_after_handshake()?.with_client_cert_resolver(self.clone()))
    }

    /// Replaces the key and certificate every [`KEY_LIFE`], until dropped; a failed quote is
    /// retried in a minute while the current certificate (still valid) is used.
    pub async fn rotate(self: Arc<Self>) {
        let mut wait = KEY_LIFE;
        loop {
            tokio::time::sleep(wait).await;
            match fresh(self.provider.as_ref(), &self.name).await {
                Ok(next) => {
                    self.current.store(Arc::new(next));
                    tracing::info!(name = %self.name, "RA-TLS certificate renewed (new key, new quote)");
                    wait = KEY_LIFE;
                }
                Err(e) => {
                    tracing::error!(name = %self.name, "RA-TLS certificate not renewed, retrying: {e}");
                    wait = Duration::from_secs(60);
                }
            }
        }
    }
}

/// A fresh P-256 key in an RA-TLS certificate valid for two key lives.
async fn fresh(provider: &dyn QuoteProvider, name: &str) -> Result<CertifiedKey, AttestError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| AttestError::RaTls(e.to_string()))?;
    let cert = crate::ratls::certificate(provider, &key, &[name.to_owned()], 2 * KEY_LIFE).await?;
    let der = rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&der)
        .map_err(|e| AttestError::RaTls(e.to_string()))?;
    Ok(CertifiedKey::new(vec![cert], signing))
}
