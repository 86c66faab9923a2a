//! TLS-ALPN-01 (RFC 8737): while a challenge is pending, a handshake for its name offering
//! only ALPN `acme-tls/1` is answered with a self-signed certificate carrying the critical
//! `acmeIdentifier` extension (the SHA-256 of the key authorization), then closed.
//!
//! The gateway's accept loop routes such hellos here before any app routing.

use crate::CertbotError;
use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// The ALPN protocol id of TLS-ALPN-01.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Pending TLS-ALPN-01 challenge certificates by lower-case name.
#[derive(Debug, Default)]
pub struct AlpnChallenges(RwLock<HashMap<String, Arc<CertifiedKey>>>);

impl AlpnChallenges {
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
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_ascii_lowercase(), certified);
        Ok(())
    }

    /// Stops answering for `name`.
    pub fn remove(&self, name: &str) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name.to_ascii_lowercase());
    }

    /// Whether a challenge for the lower-case `name` is pending.
    pub fn has(&self, name: &str) -> bool {
        self.0
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
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&name)
            .cloned()
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
        let key =
            c.0.read()
                .unwrap()
                .get("shop.example.test")
                .cloned()
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
}
