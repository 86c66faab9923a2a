//! Issued certificates at rest: the chain in the clear, the key sealed under the record's own
//! store key, one store value per certificate so a write is atomic (old or new, never torn).

use crate::keys::CertKey;
use crate::CertbotError;
use base64::Engine;
use gatehouse_store::{Sealer, Store};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
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
}

#[derive(Serialize, Deserialize)]
struct Record {
    names: Vec<String>,
    chain_pem: String,
    key_sealed: String,
}

/// The store key for target `id`.
pub fn store_key(id: &str) -> String {
    format!("certs/{id}")
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
        })
    }

    /// Writes it (key sealed) in one store put.
    pub fn save(
        &self,
        id: &str,
        store: &dyn Store,
        sealer: &dyn Sealer,
    ) -> Result<(), CertbotError> {
        let key = store_key(id);
        let chain_pem = self
            .chain
            .iter()
            .map(|c| pem("CERTIFICATE", c))
            .collect::<String>();
        let sealed = sealer.seal(&key, &self.key.pkcs8())?;
        let record = Record {
            names: self.names.clone(),
            chain_pem,
            key_sealed: base64::engine::general_purpose::STANDARD.encode(sealed),
        };
        let bytes = serde_json::to_vec(&record).map_err(|e| CertbotError::Cert(e.to_string()))?;
        store.put(&key, &bytes)?;
        Ok(())
    }

    /// Reads target `id`'s certificate, if stored.
    pub fn load(
        id: &str,
        store: &dyn Store,
        sealer: &dyn Sealer,
    ) -> Result<Option<Issued>, CertbotError> {
        let key = store_key(id);
        let Some(v) = store.get(&key)? else {
            return Ok(None);
        };
        let record: Record = serde_json::from_slice(&v.value)
            .map_err(|e| CertbotError::Cert(format!("stored {key}: {e}")))?;
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(&record.key_sealed)
            .map_err(|e| CertbotError::Cert(format!("stored {key}: {e}")))?;
        let cert_key = CertKey::from_pkcs8(&sealer.unseal(&key, &sealed)?)?;
        Issued::from_pem(record.names, &record.chain_pem, cert_key).map(Some)
    }
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
