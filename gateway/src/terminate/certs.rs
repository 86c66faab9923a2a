//! Certificates chosen by SNI: exact name first, then the wildcard one label up.
//!
//! The set is an immutable snapshot behind `ArcSwap`; the ACME manager (later) publishes new
//! sets without touching live connections.

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The PEM file could not be read or holds no certificate / key.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the key, or the key does not match the certificate.
    #[error("{path}: {source}")]
    Key {
        /// The key file.
        path: String,
        /// rustls' reason.
        source: rustls::Error,
    },
    /// The leaf certificate names no DNS host (no subjectAltName dNSName).
    #[error("{0}: the certificate has no DNS subjectAltName")]
    NoNames(String),
}

/// Where a served private key came from: the attestation claims say it per key, and a
/// verifier refuses to call an imported key attested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrigin {
    /// Generated in this process and held in memory only (development CA leaves).
    Generated,
    /// Generated in this process and kept in the store sealed by the sealer (ACME).
    Sealed,
    /// Loaded from a file (`[tls].certificates`): whoever wrote the file holds the key.
    Imported,
}

/// Certificates indexed by the names they cover.
#[derive(Debug, Default, Clone)]
pub struct CertSet {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// Each inserted key with its origin, by the key's address (held, so the address is
    /// not reused while it is a key).
    origins: HashMap<usize, (Arc<CertifiedKey>, KeyOrigin)>,
}

/// A key's identity: its allocation (one per certificate, shared by its names).
fn key_id(key: &Arc<CertifiedKey>) -> usize {
    Arc::as_ptr(key) as usize
}

impl CertSet {
    /// Adds `key` for each of `names` (lower-cased; `*.x` is a wildcard). Later adds win.
    pub fn insert(&mut self, names: &[String], key: Arc<CertifiedKey>, origin: KeyOrigin) {
        self.origins.insert(key_id(&key), (key.clone(), origin));
        for name in names {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix("*.") {
                Some(parent) => self.wildcard.insert(parent.to_owned(), key.clone()),
                None => self.exact.insert(name, key.clone()),
            };
        }
    }

    /// The certificate for a lower-case SNI: exact, then `*.` + its parent.
    pub fn find(&self, sni: &str) -> Option<&Arc<CertifiedKey>> {
        self.exact.get(sni).or_else(|| {
            let (_, parent) = sni.split_once('.')?;
            self.wildcard.get(parent)
        })
    }

    /// Loads a PEM chain and key, and adds it under the DNS names of its leaf.
    pub fn load(&mut self, cert: &Path, key: &Path) -> Result<Vec<String>, CertError> {
        let pem_err = |path: &Path, reason: String| CertError::Pem {
            path: path.display().to_string(),
            reason,
        };
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .map_err(|e| pem_err(cert, e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| pem_err(cert, e.to_string()))?;
        let leaf = chain
            .first()
            .ok_or_else(|| pem_err(cert, "no CERTIFICATE block".into()))?;
        let names = dns_names(leaf).map_err(|e| pem_err(cert, e))?;
        if names.is_empty() {
            return Err(CertError::NoNames(cert.display().to_string()));
        }
        let private = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, e.to_string()))?;
        let certified = CertifiedKey::from_der(
            chain,
            private,
            &rustls::crypto::aws_lc_rs::default_provider(),
        )
        .map_err(|source| CertError::Key {
            path: key.display().to_string(),
            source,
        })?;
        self.insert(&names, Arc::new(certified), KeyOrigin::Imported);
        Ok(names)
    }

    /// Whether no certificate is loaded.
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }
}

/// The DNS subjectAltNames of a certificate.
pub fn dns_names(der: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("not X.509: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subjectAltName: {e}"))?;
    Ok(san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// The rustls resolver over the live [`CertSet`]: the static certificates (config files,
/// development CA; a reload replaces them) with the ACME ones on top.
#[derive(Debug, Default)]
pub struct CertResolver(ArcSwap<CertSet>, std::sync::Mutex<Layers>);

/// What the live set is made of.
#[derive(Debug, Default)]
struct Layers {
    base: CertSet,
    acme: Vec<(Vec<String>, Arc<CertifiedKey>)>,
}

impl CertResolver {
    /// Starts with the static certificates `set`.
    pub fn new(set: CertSet) -> CertResolver {
        CertResolver(
            ArcSwap::from_pointee(set.clone()),
            std::sync::Mutex::new(Layers {
                base: set,
                acme: Vec::new(),
            }),
        )
    }

    /// Rebuilds and publishes the live set; handshakes in progress keep the one they
    /// started with.
    fn change(&self, change: impl FnOnce(&mut Layers)) {
        let mut layers = self.1.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut layers);
        let mut set = layers.base.clone();
        for (names, key) in &layers.acme {
            set.insert(names, key.clone(), KeyOrigin::Sealed);
        }
        self.0.store(Arc::new(set));
    }

    /// Replaces the static certificates (a reload).
    pub fn set_static(&self, set: CertSet) {
        self.change(|l| l.base = set);
    }

    /// Replaces the ACME certificates (names, key).
    pub fn set_acme(&self, certs: Vec<(Vec<String>, Arc<CertifiedKey>)>) {
        self.change(|l| l.acme = certs);
    }

    /// Whether a certificate covers the lower-case `sni`.
    pub fn has(&self, sni: &str) -> bool {
        self.0.load().find(sni).is_some()
    }

    /// The chains served now (leaf first), each once.
    pub fn chains(&self) -> Vec<Vec<CertificateDer<'static>>> {
        let set = self.0.load();
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for key in set.exact.values().chain(set.wildcard.values()) {
            if seen.insert(key_id(key)) {
                out.push(key.cert.iter().map(|c| c.clone().into_owned()).collect());
            }
        }
        out
    }

    /// The end-entity certificates served now, each once, with where their keys came from.
    pub fn leaves(&self) -> Vec<(CertificateDer<'static>, KeyOrigin)> {
        let set = self.0.load();
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for key in set.exact.values().chain(set.wildcard.values()) {
            if !seen.insert(key_id(key)) {
                continue;
            }
            let origin = set
                .origins
                .get(&key_id(key))
                .map_or(KeyOrigin::Imported, |(_, o)| *o);
            if let Some(leaf) = key.cert.first() {
                out.push((leaf.clone().into_owned(), origin));
            }
        }
        out
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?;
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.0.load().find(&name.to_ascii_lowercase()).cloned();
        }
        self.0.load().find(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Arc<CertifiedKey> {
        let kp = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&kp)
            .unwrap();
        let der = PrivateKeyDer::try_from(kp.serialize_der()).unwrap();
        Arc::new(
            CertifiedKey::from_der(
                vec![cert.der().clone()],
                der,
                &rustls::crypto::aws_lc_rs::default_provider(),
            )
            .unwrap(),
        )
    }

    #[test]
    fn exact_beats_wildcard_and_wildcard_is_one_label() {
        let mut set = CertSet::default();
        let wild = key("*.gw.test");
        let exact = key("api.gw.test");
        set.insert(&["*.gw.test".into()], wild.clone(), KeyOrigin::Generated);
        set.insert(&["API.gw.test".into()], exact.clone(), KeyOrigin::Generated);
        assert!(Arc::ptr_eq(set.find("api.gw.test").unwrap(), &exact));
        assert!(Arc::ptr_eq(set.find("web.gw.test").unwrap(), &wild));
        assert!(
            set.find("a.b.gw.test").is_none(),
            "wildcards cover one label only"
        );
        assert!(set.find("gw.test").is_none());
    }

    #[test]
    fn load_reads_names_and_rejects_mismatched_keys() {
        let dir = tempfile::tempdir().unwrap();
        let kp = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".into(), "*.b.test".into()])
            .unwrap()
            .self_signed(&kp)
            .unwrap();
        let (c, k, other) = (
            dir.path().join("c.pem"),
            dir.path().join("k.pem"),
            dir.path().join("o.pem"),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, kp.serialize_pem()).unwrap();
        std::fs::write(&other, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
        let mut set = CertSet::default();
        assert_eq!(set.load(&c, &k).unwrap(), vec!["a.test", "*.b.test"]);
        assert!(set.find("x.b.test").is_some());
        assert!(matches!(set.load(&c, &other), Err(CertError::Key { .. })));
        assert!(matches!(set.load(&k, &k), Err(CertError::Pem { .. })));
    }
}
