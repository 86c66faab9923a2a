//! Verifiable message signing: an Ed25519 key made at start-up (listed in the bundle claims,
//! so the bundle's quote covers it) signs
//! `"gatehouse-msg-v2\0" ‖ signed_at (u64 BE) ‖ context ‖ "\0" ‖ SHA-512(payload)`, a message
//! no other protocol uses (no caller can make it sign a TLS transcript). The time is signed
//! because it is also the default verification time: an unsigned one could be moved back into
//! an old collateral window. Version 1 statements did not sign it and are refused by name. A [`Statement`] carries the signature
//! with the whole attestation (bundle with collateral), so it verifies offline.

use crate::bundle::{Bundle, SigningKey};
use crate::policy::Policy;
use crate::verify::QuoteVerified;
use crate::AttestError;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};

/// Domain separation for signed messages (v2: the signing time is signed).
pub const MSG_TAG: &[u8] = b"gatehouse-msg-v2\0";
/// The statement format that signs [`MSG_TAG`] messages.
pub const STATEMENT_VERSION: u32 = 2;

/// The signing key (never leaves the process).
pub struct Signer {
    key: Ed25519KeyPair,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer(ed25519 {})", self.public_key_hex())
    }
}

/// A portable signed statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    /// Format version ([`STATEMENT_VERSION`]).
    pub v: u32,
    /// `ed25519`.
    pub alg: String,
    /// The signer's public key (hex).
    pub public_key: String,
    /// What the payload is, in the signer's words (no NUL).
    pub context: String,
    /// SHA-512 of the payload (hex).
    pub payload_sha512: String,
    /// The signature (hex).
    pub signature: String,
    /// When it was signed (unix seconds; covered by the signature).
    pub signed_at: u64,
    /// The bundle whose claims list the key, with collateral.
    pub attestation: Bundle,
}

/// The signed message for `context`, the signing time and a payload digest.
pub fn message(context: &str, signed_at: u64, payload_sha512: &[u8; 64]) -> Vec<u8> {
    let mut m = MSG_TAG.to_vec();
    m.extend_from_slice(&signed_at.to_be_bytes());
    m.extend_from_slice(context.as_bytes());
    m.push(0);
    m.extend_from_slice(payload_sha512);
    m
}

impl Signer {
    /// A fresh key.
    pub fn generate() -> Result<Signer, AttestError> {
        let key = Ed25519KeyPair::generate()
            .map_err(|_| AttestError::Statement("Ed25519 key generation failed".into()))?;
        Ok(Signer { key })
    }

    /// The public key, hex.
    pub fn public_key_hex(&self) -> String {
        crate::hex::encode(self.key.public_key().as_ref())
    }

    /// The key as the bundle lists it.
    pub fn claim(&self) -> SigningKey {
        SigningKey {
            alg: "ed25519".into(),
            public_key: self.public_key_hex(),
        }
    }

    /// Signs `payload` under `context`, with `attestation` (a bundle listing this key).
    pub fn sign(
        &self,
        context: &str,
        payload: &[u8],
        signed_at: u64,
        attestation: Bundle,
    ) -> Result<Statement, AttestError> {
        if context.contains('\0') {
            return Err(AttestError::Statement(
                "the context contains a NUL byte".into(),
            ));
        }
        let digest = crate::sha512(&[payload]);
        let signature = self.key.sign(&message(context, signed_at, &digest));
        Ok(Statement {
            v: STATEMENT_VERSION,
            alg: "ed25519".into(),
            public_key: self.public_key_hex(),
            context: context.to_owned(),
            payload_sha512: crate::hex::encode(&digest),
            signature: crate::hex::encode(signature.as_ref()),
            signed_at,
            attestation,
        })
    }
}

/// Verifies a statement offline, each failure its own error: the payload (if given) matches
/// the digest, the key is listed in the claims, the signature verifies, the claims are what
/// the quote binds, and the quote verifies under `policy` at `now` (default: `signed_at`).
pub fn verify_statement(
    s: &Statement,
    payload: Option<&[u8]>,
    policy: &Policy,
    now: Option<u64>,
) -> Result<QuoteVerified, AttestError> {
    let bad = |m: &str| AttestError::Statement(m.to_owned());
    if s.v == 1 {
        return Err(bad(
            "statement version 1 does not sign its time (refused: have it signed again)",
        ));
    }
    if s.v != STATEMENT_VERSION || s.alg != "ed25519" {
        return Err(AttestError::Statement(format!(
            "unsupported statement version {} or algorithm {:?}",
            s.v, s.alg
        )));
    }
    let digest: [u8; 64] = crate::hex::decode_array(&s.payload_sha512)
        .ok_or_else(|| bad("payload_sha512 is not 64 bytes of hex"))?;
    if let Some(p) = payload {
        if crate::sha512(&[p]) != digest {
            return Err(bad("the payload does not match payload_sha512"));
        }
    }
    let claims = s.attestation.claims()?;
    if !claims
        .signing_keys
        .iter()
        .any(|k| k.alg == s.alg && k.public_key.eq_ignore_ascii_case(&s.public_key))
    {
        return Err(AttestError::Claims(format!(
            "the signing key {} is not listed in the attested claims",
            s.public_key
        )));
    }
    let key = crate::hex::decode(&s.public_key).ok_or_else(|| bad("public_key is not hex"))?;
    let sig = crate::hex::decode(&s.signature).ok_or_else(|| bad("signature is not hex"))?;
    UnparsedPublicKey::new(&ED25519, &key)
        .verify(&message(&s.context, s.signed_at, &digest), &sig)
        .map_err(|_| bad("the signature does not verify under the public key"))?;
    let collateral = s
        .attestation
        .collateral
        .as_ref()
        .ok_or_else(|| AttestError::Collateral("the statement carries no collateral".into()))?;
    let expected = s.attestation.expected_report_data()?;
    crate::verify::verify(
        &s.attestation.evidence,
        collateral,
        policy,
        &expected,
        now.unwrap_or(s.signed_at),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{Claims, SpkiHashes};
    use crate::simulator::{Simulator, SimulatorConfig};
    use crate::QuoteProvider;

    async fn statement() -> (Statement, Policy) {
        let signer = Signer::generate().unwrap();
        let claims = serde_json::to_value(Claims {
            domains: vec!["gw.test".into()],
            spki_sha256: SpkiHashes::default(),
            keys: vec![],
            acme_account_uri: None,
            signing_keys: vec![signer.claim()],
            caa: vec![],
            sealing: "simulator".into(),
            ct: None,
            channel: None,
            nonce: None,
            issued_at: 1,
        })
        .unwrap();
        let rd = crate::bundle::report_data(&claims).unwrap();
        let sim = Simulator::new(SimulatorConfig::default()).unwrap();
        let evidence = sim.quote(rd).await.unwrap();
        let bundle = Bundle {
            version: 1,
            report_data: crate::hex::encode(&rd),
            evidence,
            claims,
            collateral: sim.collateral(),
            certificates: Vec::new(),
        };
        let s = signer
            .sign("chat-reply", b"hello", crate::unix_now(), bundle)
            .unwrap();
        let policy = Policy::parse("insecure_trust_simulator_root = true").unwrap();
        (s, policy)
    }

    #[tokio::test]
    async fn security_sign_verify_and_each_tamper_fails_distinctly() {
        let (s, policy) = statement().await;
        verify_statement(&s, Some(b"hello"), &policy, None).unwrap();

        let err = |s: &Statement, payload: &[u8]| {
            verify_statement(s, Some(payload), &policy, None)
                .unwrap_err()
                .to_string()
        };
        let mut errors = vec![err(&s, b"hellO")];
        let mut t = s.clone();
        // One bit of the signature flipped (replacing the first byte with 00 left it unchanged
        // one time in 256).
        let first = u8::from_str_radix(&s.signature[..2], 16).unwrap() ^ 1;
        t.signature = format!("{first:02x}{}", &s.signature[2..]);
        errors.push(err(&t, b"hello"));
        let mut t = s.clone();
        t.public_key = Signer::generate().unwrap().public_key_hex();
        errors.push(err(&t, b"hello"));
        let mut t = s.clone();
        t.attestation.claims["domains"][0] = "evil.test".into();
        errors.push(err(&t, b"hello"));
        let mut t = s.clone();
        t.attestation.evidence.quote[200] ^= 1;
        errors.push(err(&t, b"hello"));
        let mut t = s.clone();
        t.context = "other".into();
        errors.push(err(&t, b"hello"));
        let mut t = s.clone();
        t.signed_at -= 86_400 * 365; // backdated into an older collateral window
        errors.push(err(&t, b"hello"));
        let mut t = s.clone();
        t.v = 1;
        errors.push(err(&t, b"hello"));

        assert!(errors[0].contains("payload"), "{}", errors[0]);
        assert!(
            errors[1].contains("signature does not verify"),
            "{}",
            errors[1]
        );
        assert!(errors[2].contains("not listed"), "{}", errors[2]);
        assert!(errors[3].contains("report data mismatch"), "{}", errors[3]);
        assert!(errors[4].contains("bad signature"), "{}", errors[4]);
        assert!(
            errors[5].contains("signature does not verify"),
            "{}",
            errors[5]
        );
        // Issue 16 §6 (security): the signing time is signed, and v1 is refused by name.
        assert!(
            errors[6].contains("signature does not verify"),
            "{}",
            errors[6]
        );
        assert!(errors[7].contains("version 1"), "{}", errors[7]);
        let distinct: std::collections::BTreeSet<_> = errors[..5].iter().collect();
        assert_eq!(distinct.len(), 5, "{errors:#?}");

        // Without the simulator root the (genuine) statement is refused at the quote.
        let e = verify_statement(&s, None, &Policy::default(), None).unwrap_err();
        assert!(matches!(e, AttestError::UntrustedRoot { .. }), "{e}");
    }
}
