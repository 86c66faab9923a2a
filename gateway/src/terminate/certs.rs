//! Certificates chosen by SNI: exact name first, then the wildcard one label up.
//!
//! The live certificates are an immutable snapshot behind `ArcSwap`: the static set, and the
//! ACME certificates in copy-on-write shards (`route::shards::CowMap`), so the certificate
//! manager's publish of its whole list writes only what changed, without touching live
//! connections.

use crate::route::shards::CowMap;
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

/// The rustls resolver over the live certificates: the static ones (config files,
/// development CA; a reload replaces them) with the ACME ones on top.
#[derive(Debug, Default)]
pub struct CertResolver(ArcSwap<Live>, std::sync::Mutex<Published>);

/// What handshakes read: the static set, and the ACME certificates by name in copy-on-write
/// shards, so that one renewal among 10,000 copies a shard or two, not the whole set.
#[derive(Debug, Clone, Default)]
struct Live {
    base: Arc<CertSet>,
    acme_exact: CowMap<Arc<CertifiedKey>>,
    /// Keyed by the part after `*.`.
    acme_wildcard: CowMap<Arc<CertifiedKey>>,
}

/// The ACME list as last published (what the next one is compared with).
#[derive(Debug, Default)]
struct Published(Vec<(Vec<String>, Arc<CertifiedKey>)>);

impl Live {
    /// Exact names (ACME over static), then `*.` + the parent (ACME over static): what one
    /// set with the ACME certificates inserted after the static ones would answer.
    fn find(&self, sni: &str) -> Option<&Arc<CertifiedKey>> {
        self.acme_exact
            .get(sni)
            .or_else(|| self.base.exact.get(sni))
            .or_else(|| {
                let (_, parent) = sni.split_once('.')?;
                self.acme_wildcard
                    .get(parent)
                    .or_else(|| self.base.wildcard.get(parent))
            })
    }

    /// Serves `key` for `names` (lower-cased; `*.x` is a wildcard).
    fn put(&mut self, names: &[String], key: &Arc<CertifiedKey>) {
        for name in names {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix("*.") {
                Some(parent) => self.acme_wildcard.insert(parent.into(), key.clone()),
                None => self.acme_exact.insert(name.into(), key.clone()),
            };
        }
    }

    /// Stops serving `key` for `names`, where it is still the one served.
    fn withdraw(&mut self, names: &[String], key: &Arc<CertifiedKey>) {
        for name in names {
            let name = name.to_ascii_lowercase();
            let (map, name) = match name.strip_prefix("*.") {
                Some(parent) => (&mut self.acme_wildcard, parent),
                None => (&mut self.acme_exact, name.as_str()),
            };
            if map.get(name).is_some_and(|k| Arc::ptr_eq(k, key)) {
                map.remove(name);
            }
        }
    }

    /// Every served key once, with its origin: ACME keys are sealed.
    fn keys(&self) -> Vec<(&Arc<CertifiedKey>, KeyOrigin)> {
        let mut seen = std::collections::HashSet::new();
        let acme = self.acme_exact.values().chain(self.acme_wildcard.values());
        let acme = acme.map(|k| (k, KeyOrigin::Sealed));
        let base = self.base.exact.values().chain(self.base.wildcard.values());
        let base = base.map(|k| {
            let origin = self.base.origins.get(&key_id(k));
            (k, origin.map_or(KeyOrigin::Imported, |(_, o)| *o))
        });
        acme.chain(base)
            .filter(|(k, _)| seen.insert(key_id(k)))
            .collect()
    }
}

impl CertResolver {
    /// Starts with the static certificates `set`.
    pub fn new(set: CertSet) -> CertResolver {
        let live = Live {
            base: Arc::new(set),
            ..Live::default()
        };
        CertResolver(ArcSwap::from_pointee(live), Default::default())
    }

    /// Replaces the static certificates (a reload); the ACME ones stay on top.
    pub fn set_static(&self, set: CertSet) {
        let _published = self.1.lock().unwrap_or_else(|p| p.into_inner());
        let mut live = Live::clone(&self.0.load());
        live.base = Arc::new(set);
        self.0.store(Arc::new(live));
    }

    /// Replaces the ACME certificates (names, key): only the entries that differ from the
    /// last list are written, into copies of their shards; the rest is shared with the
    /// snapshot before. Handshakes in progress keep the snapshot they started with.
    pub fn set_acme(&self, certs: Vec<(Vec<String>, Arc<CertifiedKey>)>) {
        let mut published = self.1.lock().unwrap_or_else(|p| p.into_inner());
        let mut live = Live::clone(&self.0.load());
        let before = &published.0;
        let aligned =
            before.len() == certs.len() && before.iter().zip(&certs).all(|((a, _), (b, _))| a == b);
        if aligned {
            // The usual change (a renewal): the same names in the same order.
            for ((_, old), (names, key)) in before.iter().zip(&certs) {
                if !Arc::ptr_eq(old, key) {
                    live.put(names, key);
                }
            }
        } else {
            let mut gone: std::collections::HashMap<&[String], &Arc<CertifiedKey>> =
                before.iter().map(|(n, k)| (n.as_slice(), k)).collect();
            for (names, key) in &certs {
                match gone.remove(names.as_slice()) {
                    Some(old) if Arc::ptr_eq(old, key) => {}
                    _ => live.put(names, key),
                }
            }
            for (names, key) in gone {
                live.withdraw(names, key);
            }
        }
        published.0 = certs;
        self.0.store(Arc::new(live));
    }

    /// Whether a certificate covers the lower-case `sni`.
    pub fn has(&self, sni: &str) -> bool {
        self.0.load().find(sni).is_some()
    }

    /// The chains served now (leaf first), each once.
    pub fn chains(&self) -> Vec<Vec<CertificateDer<'static>>> {
        let live = self.0.load();
        live.keys()
            .into_iter()
            .map(|(key, _)| key.cert.iter().map(|c| c.clone().into_owned()).collect())
            .collect()
    }

    /// The end-entity certificates served now, each once, with where their keys came from.
    pub fn leaves(&self) -> Vec<(CertificateDer<'static>, KeyOrigin)> {
        let live = self.0.load();
        live.keys()
            .into_iter()
            .filter_map(|(key, origin)| Some((key.cert.first()?.clone().into_owned(), origin)))
            .collect()
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

    /// `n` ACME entries (a name and its wildcard), each its own `Arc` over one real key.
    fn acme_list(n: usize) -> Vec<(Vec<String>, Arc<CertifiedKey>)> {
        let real = key("real.test");
        (0..n)
            .map(|i| {
                let k = Arc::new(CertifiedKey::new(real.cert.clone(), real.key.clone()));
                (vec![format!("D{i}.example"), format!("*.d{i}.example")], k)
            })
            .collect()
    }

    fn served(r: &CertResolver, sni: &str) -> Option<Arc<CertifiedKey>> {
        r.0.load().find(sni).cloned()
    }

    #[test]
    fn resolver_acme_renewal_copies_only_the_changed_shards() {
        let resolver = CertResolver::new(CertSet::default());
        let mut list = acme_list(2000);
        resolver.set_acme(list.clone());
        let before = Live::clone(&resolver.0.load());
        let renewed = Arc::new(CertifiedKey::new(
            list[7].1.cert.clone(),
            list[7].1.key.clone(),
        ));
        list[7].1 = renewed.clone();
        resolver.set_acme(list.clone());
        let after = resolver.0.load();
        assert!(Arc::ptr_eq(
            &served(&resolver, "d7.example").unwrap(),
            &renewed
        ));
        assert!(Arc::ptr_eq(
            &served(&resolver, "app.d7.example").unwrap(),
            &renewed
        ));
        assert!(Arc::ptr_eq(
            &served(&resolver, "d8.example").unwrap(),
            &list[8].1
        ));
        assert_eq!(after.acme_exact.shared_with(&before.acme_exact), 255);
        assert_eq!(after.acme_wildcard.shared_with(&before.acme_wildcard), 255);
        assert_eq!(resolver.leaves().len(), 2000);
    }

    #[test]
    fn resolver_acme_list_changes_add_remove_and_keep_the_rest() {
        let resolver = CertResolver::new(CertSet::default());
        let list = acme_list(10);
        resolver.set_acme(list.clone());
        // One removed, one added, the rest unchanged (not aligned: the diff by names).
        let mut next: Vec<_> = list
            .iter()
            .filter(|(n, _)| n[0] != "D3.example")
            .cloned()
            .collect();
        let added = acme_list(1).pop().unwrap().1;
        next.push((vec!["new.example".into()], added.clone()));
        resolver.set_acme(next.clone());
        assert!(served(&resolver, "d3.example").is_none(), "removed");
        assert!(
            served(&resolver, "x.d3.example").is_none(),
            "its wildcard too"
        );
        assert!(Arc::ptr_eq(
            &served(&resolver, "new.example").unwrap(),
            &added
        ));
        assert!(Arc::ptr_eq(
            &served(&resolver, "d4.example").unwrap(),
            &list[4].1
        ));
        assert_eq!(resolver.leaves().len(), 10);
        // A name moved from one certificate to another is not withdrawn by the old one leaving.
        let moved = acme_list(1).pop().unwrap().1;
        let last = vec![(vec!["D4.example".into()], moved.clone())];
        resolver.set_acme(last);
        assert!(Arc::ptr_eq(
            &served(&resolver, "d4.example").unwrap(),
            &moved
        ));
        assert!(served(&resolver, "x.d4.example").is_none());
        assert!(served(&resolver, "new.example").is_none());
        assert_eq!(resolver.leaves().len(), 1);
    }

    #[test]
    fn resolver_acme_over_static_and_exact_over_wildcard_across_layers() {
        let mut base = CertSet::default();
        let static_exact = key("api.gw.test");
        let static_wild = key("*.gw.test");
        base.insert(
            &["api.gw.test".into()],
            static_exact.clone(),
            KeyOrigin::Imported,
        );
        base.insert(
            &["*.gw.test".into()],
            static_wild.clone(),
            KeyOrigin::Imported,
        );
        let resolver = CertResolver::new(base.clone());
        let acme_wild = key("*.gw.test");
        let acme_exact = key("web.gw.test");
        resolver.set_acme(vec![
            (vec!["*.gw.test".into()], acme_wild.clone()),
            (vec!["web.gw.test".into()], acme_exact.clone()),
        ]);
        let pick = |sni| served(&resolver, sni).unwrap();
        assert!(
            Arc::ptr_eq(&pick("api.gw.test"), &static_exact),
            "a static exact name beats an ACME wildcard"
        );
        assert!(
            Arc::ptr_eq(&pick("other.gw.test"), &acme_wild),
            "ACME over static for the same wildcard"
        );
        assert!(Arc::ptr_eq(&pick("web.gw.test"), &acme_exact));
        let origins: Vec<KeyOrigin> = resolver.leaves().into_iter().map(|(_, o)| o).collect();
        assert_eq!(
            origins.iter().filter(|o| **o == KeyOrigin::Sealed).count(),
            2
        );
        assert_eq!(
            origins
                .iter()
                .filter(|o| **o == KeyOrigin::Imported)
                .count(),
            2
        );
        // A reload replaces the static set and keeps the ACME one on top.
        resolver.set_static(CertSet::default());
        assert!(Arc::ptr_eq(&pick("api.gw.test"), &acme_wild));
        assert!(Arc::ptr_eq(&pick("web.gw.test"), &acme_exact));
    }
}
