//! Certificate keys, generated in-process. The private half leaves this module only sealed
//! ([`crate::stored`]) or inside a rustls `CertifiedKey`; nothing here implements `Debug` over
//! key bytes.

use crate::CertbotError;
use rcgen::{CertificateParams, KeyPair};
use rustls::crypto::aws_lc_rs::sign::any_supported_type;
use rustls::sign::{CertifiedKey, SigningKey};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;

/// The key algorithms we issue with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyType {
    /// ECDSA P-256 / SHA-256 (default: smallest, fastest handshakes).
    #[default]
    EcdsaP256,
    /// ECDSA P-384 / SHA-384.
    EcdsaP384,
}

/// A fresh certificate key. Its PKCS#8 form is returned for sealing only.
pub struct CertKey(KeyPair);

impl CertKey {
    /// Generates a key of `kind` from the process's CSPRNG (aws-lc-rs).
    pub fn generate(kind: KeyType) -> Result<CertKey, CertbotError> {
        let alg = match kind {
            KeyType::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        };
        KeyPair::generate_for(alg)
            .map(CertKey)
            .map_err(|e| CertbotError::Cert(format!("key generation: {e}")))
    }

    /// A key from its PKCS#8 DER (after unsealing).
    pub fn from_pkcs8(der: &[u8]) -> Result<CertKey, CertbotError> {
        let der = PrivatePkcs8KeyDer::from(der.to_vec());
        KeyPair::try_from(&der)
            .map(CertKey)
            .map_err(|e| CertbotError::Cert(format!("stored key unusable: {e}")))
    }

    /// The PKCS#8 DER, to be sealed before it goes anywhere.
    pub fn pkcs8(&self) -> Vec<u8> {
        self.0.serialize_der()
    }

    /// The PKCS#8 DER as base64, for a record that is sealed whole; the caller wipes the text
    /// once it is sealed.
    pub fn pkcs8_base64(&self) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .encode(&*gatehouse_store::Zeroizing::new(self.pkcs8()))
    }

    /// A key from [`CertKey::pkcs8_base64`]'s text (after unsealing); the text and the
    /// decoded bytes are wiped.
    pub fn from_pkcs8_base64(text: String) -> Result<CertKey, CertbotError> {
        use base64::Engine;
        let text = gatehouse_store::Zeroizing::new(text);
        let der = gatehouse_store::Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.as_bytes())
                .map_err(|e| CertbotError::Cert(format!("stored key is not base64: {e}")))?,
        );
        CertKey::from_pkcs8(&der)
    }

    /// A CSR (DER) for `names`, signed by this key.
    pub fn csr(&self, names: &[String]) -> Result<Vec<u8>, CertbotError> {
        let params = CertificateParams::new(names.to_vec())
            .map_err(|e| CertbotError::Cert(format!("CSR names: {e}")))?;
        let csr = params
            .serialize_request(&self.0)
            .map_err(|e| CertbotError::Cert(format!("CSR: {e}")))?;
        Ok(csr.der().to_vec())
    }

    /// This key with its chain, ready for rustls. Fails if the chain's leaf is for another key.
    pub fn certified(
        &self,
        chain: Vec<CertificateDer<'static>>,
    ) -> Result<CertifiedKey, CertbotError> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.pkcs8()));
        let signing: Arc<dyn SigningKey> =
            any_supported_type(&key).map_err(|e| CertbotError::Cert(format!("key: {e}")))?;
        let certified = CertifiedKey::new(chain, signing);
        certified
            .keys_match()
            .map_err(|e| CertbotError::Cert(format!("the certificate is not for our key: {e}")))?;
        Ok(certified)
    }

    #[cfg(test)]
    pub(crate) fn pair(&self) -> &KeyPair {
        &self.0
    }

    /// SHA-256 (hex) of the key's SubjectPublicKeyInfo (the CT allowlist's entry).
    pub fn spki_sha256(&self) -> String {
        use rcgen::PublicKeyData as _;
        gatehouse_ct::sha256_hex(&self.0.subject_public_key_info())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::FromDer;

    #[test]
    fn keys_round_trip_through_pkcs8_and_sign_their_csr() {
        for kind in [KeyType::EcdsaP256, KeyType::EcdsaP384] {
            let k = CertKey::generate(kind).unwrap();
            let again = CertKey::from_pkcs8(&k.pkcs8()).unwrap();
            assert_eq!(k.pair().public_key_raw(), again.pair().public_key_raw());
            let csr = k.csr(&["a.test".into(), "*.a.test".into()]).unwrap();
            let (_, req) =
                x509_parser::certification_request::X509CertificationRequest::from_der(&csr)
                    .unwrap();
            req.verify_signature().unwrap();
        }
        assert!(CertKey::from_pkcs8(b"not a key").is_err());
    }

    #[test]
    fn a_chain_for_another_key_is_refused() {
        let ours = CertKey::generate(KeyType::EcdsaP256).unwrap();
        let other = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["a.test".into()])
            .unwrap()
            .self_signed(&other)
            .unwrap();
        let err = ours.certified(vec![cert.der().clone()]).unwrap_err();
        assert!(err.to_string().contains("not for our key"), "{err}");
    }
}
