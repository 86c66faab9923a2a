use serde::Deserialize;
use std::path::PathBuf;

/// `[tls]`: static certificates served on the terminating path.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Certificate chains (PEM) and their keys; chosen by SNI: exact name, then wildcard.
    pub certificates: Vec<CertificatePair>,
    /// Session resumption (TLS 1.3 tickets with rotating keys, and a session cache). A resumed
    /// TLS 1.3 handshake still pays an ECDHE but skips the certificate signature; turning it
    /// off is for measuring full handshakes.
    pub resumption: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            certificates: Vec::new(),
            resumption: true,
        }
    }
}

/// One PEM certificate chain and its PEM private key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificatePair {
    /// The chain, leaf first.
    pub cert: PathBuf,
    /// The leaf's private key (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
}

impl TlsConfig {
    pub(crate) fn resolve_paths(&mut self, base: &std::path::Path) {
        for pair in &mut self.certificates {
            pair.cert = base.join(&pair.cert);
            pair.key = base.join(&pair.key);
        }
    }
}
