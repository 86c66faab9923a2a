//! The public attestation bundle: one quote over a set of claims (the served domains, the
//! SHA-256 of every served certificate key, the ACME account, the signing keys, the CAA
//! verdict, the time), bound by `report_data = SHA-512("gatehouse-bundle-v1:" ‖ JCS(claims))`.
//!
//! The claims travel as the JSON value that was hashed; a verifier canonicalizes what it
//! received, so fields it does not know still count.

use crate::collateral::Collateral;
use crate::provider::Evidence;
use crate::AttestError;
use serde::{Deserialize, Serialize};

/// Domain separation for bundle report data.
pub const BUNDLE_TAG: &[u8] = b"gatehouse-bundle-v1:";
/// The bundle's path on every terminating listener.
pub const WELL_KNOWN_PATH: &str = "/.well-known/gatehouse/attestation";

/// SHA-256 (hex) of certificate SubjectPublicKeyInfos, by where they are in their life.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpkiHashes {
    /// Keys served now.
    pub current: Vec<String>,
    /// Keys already made for the next renewal.
    #[serde(default)]
    pub next: Vec<String>,
    /// Keys served before (so old certificates in CT logs stay accounted for).
    #[serde(default)]
    pub previous: Vec<String>,
}

impl SpkiHashes {
    /// Whether `spki_sha256` (hex) is current or next.
    pub fn covers(&self, spki_sha256: &str) -> bool {
        self.current
            .iter()
            .chain(&self.next)
            .any(|h| h == spki_sha256)
    }
}

/// Where one served key came from and what protects it at rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyClaim {
    /// SHA-256 (hex) of the key's SubjectPublicKeyInfo.
    pub spki_sha256: String,
    /// `tee`: generated inside the TEE; `imported`: loaded from a file, so whoever wrote the
    /// file holds it.
    pub origin: String,
    /// What protects it at rest: `memory` (never stored), or the sealing of the store
    /// (`tee`, `simulator`, `development`); `file` for an imported key.
    pub sealing: String,
}

/// The origin of a key made inside the TEE.
pub const ORIGIN_TEE: &str = "tee";
/// The origin of a key loaded from a file.
pub const ORIGIN_IMPORTED: &str = "imported";

/// A key the gateway signs statements with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKey {
    /// `ed25519`.
    pub alg: String,
    /// The raw public key, hex.
    pub public_key: String,
}

/// What the bundle's quote vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The names the gateway serves (base domains, custom domains).
    pub domains: Vec<String>,
    /// Served certificate keys.
    pub spki_sha256: SpkiHashes,
    /// Where each current key came from (a key missing here is not vouched for).
    #[serde(default)]
    pub keys: Vec<KeyClaim>,
    /// The ACME account URI (the CAA `accounturi`), if certificates come from ACME.
    #[serde(default)]
    pub acme_account_uri: Option<String>,
    /// Keys that sign statements and responses.
    #[serde(default)]
    pub signing_keys: Vec<SigningKey>,
    /// The gateway's own last CAA verdict, one line per domain ("locked", or the reason).
    #[serde(default)]
    pub caa: Vec<String>,
    /// What protects sealed secrets (`tee`, `simulator`, `development`).
    #[serde(default)]
    pub sealing: String,
    /// The Certificate Transparency watch's status, when `[ct]` is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ct: Option<CtClaim>,
    /// The encrypted channel's keys, when the gateway serves the channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<ChannelClaim>,
    /// The client's nonce (hex) for a fresh bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// When the quote was taken (unix seconds).
    pub issued_at: u64,
}

/// The encrypted channel's HPKE keys (crate `gatehouse-channel`): made in the TEE, so a client
/// that seals a request to one of them knows only the TEE opens it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelClaim {
    /// The public key configurations as `application/ohttp-keys` (RFC 9458 §3.2), base64
    /// (standard, padded): the current key first, then predecessors still accepted.
    pub ohttp_keys: String,
    /// Where encapsulated requests go on each app's own name.
    pub path: String,
}

/// Where an app's encrypted channel takes `message/ohttp-req` requests.
pub const CHANNEL_PATH: &str = "/.well-known/gatehouse/channel";

/// What the gateway's CT watch saw (crate `gatehouse-ct`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtClaim {
    /// `clean`: every certificate logged for our names carries one of our keys, as of
    /// `checked_at`; `alert`: one does not (`alerts` names it); `stale`: a source has not
    /// answered in time, so nothing is claimed.
    pub status: String,
    /// The oldest of the sources' last full answers (unix seconds).
    #[serde(default)]
    pub checked_at: Option<u64>,
    /// Serial numbers (hex) of logged certificates with keys that are not ours.
    #[serde(default)]
    pub alerts: Vec<String>,
}

/// The bundle as served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    /// Format version (1).
    pub version: u32,
    /// The quote and its event log.
    #[serde(flatten)]
    pub evidence: Evidence,
    /// The quote's report data (hex), for readers without a quote parser.
    pub report_data: String,
    /// The claims exactly as hashed.
    pub claims: serde_json::Value,
    /// Collateral the gateway used (verifiers may fetch their own instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collateral: Option<Collateral>,
    /// The certificate chains served now (base64 DER, leaf first), so a client without
    /// access to the TLS layer (a browser page) can recompute the SPKI hashes the claims
    /// list and see which names each key serves. Not covered by the quote: a chain only
    /// counts through its leaf's key hash, which is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<Vec<String>>,
}

/// `SHA-512(tag ‖ JCS(claims))`.
pub fn report_data(claims: &serde_json::Value) -> Result<[u8; 64], AttestError> {
    let canonical = crate::jcs::canonical(claims)
        .ok_or_else(|| AttestError::Claims("claims hold a non-integer number".into()))?;
    Ok(crate::sha512(&[BUNDLE_TAG, &canonical]))
}

impl Bundle {
    /// The typed view of the claims.
    pub fn claims(&self) -> Result<Claims, AttestError> {
        serde_json::from_value(self.claims.clone())
            .map_err(|e| AttestError::malformed("bundle claims", e))
    }

    /// The report data the claims call for.
    pub fn expected_report_data(&self) -> Result<[u8; 64], AttestError> {
        report_data(&self.claims)
    }
}

/// SHA-256 (hex) of a DER SubjectPublicKeyInfo.
pub fn spki_sha256(spki_der: &[u8]) -> String {
    crate::hex::encode(&crate::sha256(&[spki_der]))
}

/// SHA-256 (hex) of the SPKI of a DER certificate.
pub fn cert_spki_sha256(cert_der: &[u8]) -> Result<String, AttestError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| AttestError::malformed("certificate", e))?;
    Ok(spki_sha256(cert.public_key().raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_data_is_over_the_canonical_claims() {
        let claims = Claims {
            domains: vec!["gw.example".into()],
            spki_sha256: SpkiHashes {
                current: vec!["aa".into()],
                ..Default::default()
            },
            keys: vec![],
            acme_account_uri: Some("https://ca/acct/1".into()),
            signing_keys: vec![],
            caa: vec![],
            sealing: "tee".into(),
            ct: None,
            channel: None,
            nonce: None,
            issued_at: 1,
        };
        let value = serde_json::to_value(&claims).unwrap();
        // Member order and whitespace do not matter; any field does.
        let reordered: serde_json::Value =
            serde_json::from_str(&serde_json::to_string_pretty(&value).unwrap()).unwrap();
        assert_eq!(
            report_data(&value).unwrap(),
            report_data(&reordered).unwrap()
        );
        let mut extra = value.clone();
        extra["future_field"] = serde_json::json!("x");
        assert_ne!(report_data(&value).unwrap(), report_data(&extra).unwrap());
        let expected = crate::sha512(&[BUNDLE_TAG, &crate::jcs::canonical(&value).unwrap()]);
        assert_eq!(report_data(&value).unwrap(), expected);
    }
}
