//! Issued certificates at rest: the whole record (names, chain, key, generation) sealed under
//! the record's own store key, one store value per certificate so a write is atomic (old or
//! new, never torn).
//!
//! Sealing the whole record, not only the key, is what stops someone who can write the store
//! but has no sealing key from pairing our key with a chain of their own (another CA, other
//! names, a validity to 2106), or from moving a record under another name. The generation
//! inside the sealed data grows on every write, so a record older than one already seen is
//! refused ([`Issued::load`] with `at_least`). Before a chain is first stored,
//! [`check_chain`] holds it to the order: the leaf names exactly the ordered names and chains
//! to the issuer the CA sent with it.

use crate::keys::CertKey;
use crate::CertbotError;
use base64::Engine;
use gatehouse_store::{Fence, Fenced, Sealer, Store, Zeroizing};
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One issued certificate as loaded: chain, key, validity.
pub struct Issued {
    /// The names it covers, as ordered.
    pub names: Vec<String>,
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Its key.
    pub key: CertKey,
    /// Validity of the leaf.
    pub not_before: SystemTime,
    /// Validity of the leaf.
    pub not_after: SystemTime,
    /// How many times this record has been written (0 = never stored).
    pub generation: u64,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("names", &self.names)
            .field("generation", &self.generation)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// What the store holds: a format number and the sealed contents.
#[derive(Serialize, Deserialize)]
struct Envelope {
    format: u8,
    sealed: String,
}

/// The sealed contents.
#[derive(Serialize, Deserialize)]
struct Contents {
    names: Vec<String>,
    chain_pem: String,
    key_pkcs8: String,
    generation: u64,
}

/// The format written by this version.
const FORMAT: u8 = 2;

/// Where certificate records live in the store.
pub const PREFIX: &str = "certs/";

/// The store key for target `id`.
pub fn store_key(id: &str) -> String {
    format!("{PREFIX}{id}")
}

impl Issued {
    /// Builds from a PEM chain returned by the CA and the key that signed the CSR.
    pub fn from_pem(
        names: Vec<String>,
        chain_pem: &str,
        key: CertKey,
    ) -> Result<Issued, CertbotError> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| CertbotError::Cert(format!("chain PEM: {e}")))?;
        let leaf = chain
            .first()
            .ok_or_else(|| CertbotError::Cert("empty chain".into()))?;
        let (not_before, not_after) = validity(leaf)?;
        Ok(Issued {
            names,
            chain,
            key,
            not_before,
            not_after,
            generation: 0,
        })
    }

    /// Writes it, sealed whole, at the generation after the stored one; sets
    /// `self.generation`. A concurrent writer makes this retry on the newer record.
    /// With `fence`, the write happens only while that renewal lock is held.
    pub async fn save(
        &mut self,
        id: &str,
        store: &dyn Store,
        sealer: &dyn Sealer,
        fence: Option<&Fence>,
    ) -> Result<(), CertbotError> {
        let key = store_key(id);
        let chain_pem = self
            .chain
            .iter()
            .map(|c| pem("CERTIFICATE", c))
            .collect::<String>();
        for _ in 0..8 {
            let current = store.get(&key).await?;
            let (version, stored_generation) = match &current {
                Some(v) => (
                    v.version,
                    open(&key, &v.value, sealer).map_or(0, |c| c.generation),
                ),
                None => (0, 0),
            };
            let generation = stored_generation.max(self.generation) + 1;
            let contents = Contents {
                names: self.names.clone(),
                chain_pem: chain_pem.clone(),
                key_pkcs8: self.key.pkcs8_base64(),
                generation,
            };
            let plain = Zeroizing::new(
                serde_json::to_vec(&contents).map_err(|e| CertbotError::Cert(e.to_string()))?,
            );
            drop(Zeroizing::new(contents.key_pkcs8));
            let envelope = Envelope {
                format: FORMAT,
                sealed: base64::engine::general_purpose::STANDARD
                    .encode(sealer.seal(&key, &plain)?),
            };
            let bytes =
                serde_json::to_vec(&envelope).map_err(|e| CertbotError::Cert(e.to_string()))?;
            let written = match fence {
                None => store.compare_and_swap(&key, version, &bytes).await?.is_ok(),
                Some(fence) => {
                    match store
                        .compare_and_swap_fenced(fence, &key, version, &bytes)
                        .await?
                    {
                        Fenced::Written(_) => true,
                        Fenced::Changed(_) => false,
                        Fenced::LockLost => {
                            return Err(CertbotError::Cert(format!(
                                "{key}: not published: this node lost the renewal lock (paused \
                                 or cut off past its lease); the node holding it now publishes"
                            )))
                        }
                    }
                }
            };
            if written {
                self.generation = generation;
                return Ok(());
            }
        }
        Err(CertbotError::Cert(format!(
            "{key}: other writers kept changing the record"
        )))
    }

    /// Reads target `id`'s certificate, if stored. Refuses a record that does not unseal
    /// under its own name, one in the earlier format whose chain was not sealed, and one
    /// older than generation `at_least` (a rollback).
    pub async fn load(
        id: &str,
        store: &dyn Store,
        sealer: &dyn Sealer,
        at_least: u64,
    ) -> Result<Option<Issued>, CertbotError> {
        let key = store_key(id);
        let Some(v) = store.get(&key).await? else {
            return Ok(None);
        };
        let contents = open(&key, &v.value, sealer)?;
        if contents.generation < at_least {
            return Err(CertbotError::Cert(format!(
                "stored {key} is generation {}, older than generation {at_least} already seen: refusing a rollback",
                contents.generation
            )));
        }
        let cert_key = CertKey::from_pkcs8_base64(contents.key_pkcs8)?;
        let mut issued = Issued::from_pem(contents.names, &contents.chain_pem, cert_key)?;
        issued.generation = contents.generation;
        Ok(Some(issued))
    }
}

/// Unseals a stored record's contents.
fn open(key: &str, bytes: &[u8], sealer: &dyn Sealer) -> Result<Contents, CertbotError> {
    let bad = |why: String| CertbotError::Cert(format!("stored {key}: {why}"));
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    if value.get("key_sealed").is_some() {
        return Err(bad(
            "written by an earlier version that sealed only the key (its names and chain could have been swapped)".into(),
        ));
    }
    let envelope: Envelope = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
    if envelope.format != FORMAT {
        return Err(bad(format!("unknown format {}", envelope.format)));
    }
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(&envelope.sealed)
        .map_err(|e| bad(e.to_string()))?;
    let plain = sealer.unseal(key, &sealed)?;
    serde_json::from_slice(&plain).map_err(|e| bad(e.to_string()))
}

/// Holds a chain from the CA to what was ordered: the leaf's DNS names are exactly `names`
/// (no more, no fewer), and the leaf chains, through the certificates sent with it, to the
/// last of them (the issuer the CA named), valid now for server authentication.
pub fn check_chain(
    names: &[String],
    chain: &[CertificateDer<'static>],
) -> Result<(), CertbotError> {
    let bad = |why: String| CertbotError::Cert(format!("the CA's chain: {why}"));
    let leaf = chain.first().ok_or_else(|| bad("empty".into()))?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| bad(format!("leaf is not X.509: {e}")))?;
    let mut got: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        Some(d.to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let mut want: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
    got.sort();
    want.sort();
    if got != want {
        return Err(bad(format!("the leaf names {got:?}, the order {want:?}")));
    }
    let anchor = chain
        .get(1..)
        .and_then(<[_]>::last)
        .ok_or_else(|| bad("no issuer certificate came with the leaf".into()))?;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(anchor.clone())
        .map_err(|e| bad(format!("issuer certificate: {e}")))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| bad(e.to_string()))?;
    let intermediates = &chain[1..chain.len() - 1];
    let now = rustls_pki_types::UnixTime::now();
    for name in names {
        // A wildcard is checked with one label in its place.
        let concrete = match name.strip_prefix("*.") {
            Some(rest) => format!("wildcard-check.{rest}"),
            None => name.clone(),
        };
        let server = rustls_pki_types::ServerName::try_from(concrete)
            .map_err(|e| bad(format!("{name}: {e}")))?;
        verifier
            .verify_server_cert(leaf, intermediates, &server, &[], now)
            .map_err(|e| bad(format!("{name}: {e}")))?;
    }
    Ok(())
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The leaf's notBefore and notAfter.
pub fn validity(leaf: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), CertbotError> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| CertbotError::Cert(format!("leaf is not X.509: {e}")))?;
    let at = |t: i64| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    Ok((
        at(cert.validity().not_before.timestamp()),
        at(cert.validity().not_after.timestamp()),
    ))
}

#[cfg(test)]
#[path = "stored_tests.rs"]
mod tests;
