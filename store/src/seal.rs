//! Sealing secrets at rest: what the store holds for a key or an account is ciphertext bound to
//! the item's name, so a stored blob cannot be replayed under another name.
//!
//! [`Sealer`] is the seam: the attestation work provides one whose key is derived inside the
//! TEE. [`AesGcmSealer`] is the cipher under every sealer: with a key derived in the TEE (the
//! `attest` crate), or, for development only, a key kept in a file next to the state
//! ([`AesGcmSealer::load_or_create`]), which the gateway announces at start.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use std::path::Path;
use zeroize::Zeroizing;

/// Format byte of a sealed blob: `1 | nonce (12) | ciphertext | tag (16)`.
const FORMAT_V1: u8 = 1;

/// Why sealing or unsealing failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The blob is not ours, was sealed under another name or key, or was altered.
    #[error("cannot unseal {name:?}: wrong key, wrong name, or altered data")]
    Unseal {
        /// The item's name.
        name: String,
    },
    /// The blob is too short or of an unknown format.
    #[error("sealed {name:?} is malformed: {reason}")]
    Malformed {
        /// The item's name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// The sealing key could not be read or created.
    #[error("sealing key {path}: {reason}")]
    Key {
        /// The key file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The system random generator failed.
    #[error("random generator failed")]
    Random,
}

/// Seals and unseals named secrets.
pub trait Sealer: Send + Sync + std::fmt::Debug {
    /// Encrypts `plaintext`, binding it to `name`.
    fn seal(&self, name: &str, plaintext: &[u8]) -> Result<Vec<u8>, SealError>;
    /// Decrypts a blob sealed under `name`; the plaintext is wiped when dropped.
    fn unseal(&self, name: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError>;
    /// What protects the key, for logs and the attestation bundle ("development", "tee", ...).
    fn kind(&self) -> &'static str;
}

/// AES-256-GCM with the item's name as associated data, under a 32-byte key.
pub struct AesGcmSealer {
    key: LessSafeKey,
    kind: &'static str,
}

impl std::fmt::Debug for AesGcmSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AesGcmSealer({}, <key>)", self.kind)
    }
}

impl AesGcmSealer {
    /// The development sealer: the 32-byte key at `path`, created (mode 0600, atomically) on
    /// first use. Anyone who can read the file can unseal.
    pub fn load_or_create(path: &Path) -> Result<AesGcmSealer, SealError> {
        let err = |reason: String| SealError::Key {
            path: path.display().to_string(),
            reason,
        };
        let key = match std::fs::read(path) {
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut k = vec![0u8; 32];
                SystemRandom::new()
                    .fill(&mut k)
                    .map_err(|_| SealError::Random)?;
                crate::write_atomic(path, &k, 0o600).map_err(|e| err(e.to_string()))?;
                k
            }
            Err(e) => return Err(err(e.to_string())),
        };
        AesGcmSealer::from_key(&key, "development")
            .map_err(|_| err(format!("must hold 32 bytes, holds {}", key.len())))
    }

    /// A sealer over a raw 32-byte key; `kind` says what protects the key (see
    /// [`Sealer::kind`]).
    pub fn from_key(key: &[u8], kind: &'static str) -> Result<AesGcmSealer, SealError> {
        let unbound = UnboundKey::new(&AES_256_GCM, key).map_err(|_| SealError::Key {
            path: "<memory>".into(),
            reason: "not a 32-byte key".into(),
        })?;
        Ok(AesGcmSealer {
            key: LessSafeKey::new(unbound),
            kind,
        })
    }
}

impl Sealer for AesGcmSealer {
    fn seal(&self, name: &str, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut body = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                &mut body,
            )
            .map_err(|_| SealError::Random)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + body.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&body);
        Ok(out)
    }

    fn unseal(&self, name: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let malformed = |reason| SealError::Malformed {
            name: name.to_owned(),
            reason,
        };
        let (&format, rest) = sealed.split_first().ok_or(malformed("empty"))?;
        if format != FORMAT_V1 {
            return Err(malformed("unknown format"));
        }
        if rest.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(malformed("shorter than nonce and tag"));
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| malformed("nonce"))?;
        let mut body = Zeroizing::new(body.to_vec());
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(name.as_bytes()), &mut body)
            .map_err(|_| SealError::Unseal {
                name: name.to_owned(),
            })?;
        Ok(Zeroizing::new(plain.to_vec()))
    }

    fn kind(&self) -> &'static str {
        self.kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sealer() -> (tempfile::TempDir, AesGcmSealer) {
        let dir = tempfile::tempdir().unwrap();
        let s = AesGcmSealer::load_or_create(&dir.path().join("seal.key")).unwrap();
        (dir, s)
    }

    #[test]
    fn round_trip_and_fresh_nonces() {
        let (_d, s) = sealer();
        let a = s.seal("certs/web.key", b"secret key bytes").unwrap();
        let b = s.seal("certs/web.key", b"secret key bytes").unwrap();
        assert_ne!(a, b, "a fresh nonce per seal");
        assert!(
            !a.windows(6).any(|w| w == b"secret"),
            "no plaintext in the blob"
        );
        assert_eq!(*s.unseal("certs/web.key", &a).unwrap(), b"secret key bytes");
        assert_eq!(s.kind(), "development");
    }

    #[test]
    fn another_name_key_or_altered_byte_is_refused() {
        let (_d, s) = sealer();
        let sealed = s.seal("acme/account", b"account key").unwrap();
        assert!(
            matches!(
                s.unseal("acme/other", &sealed),
                Err(SealError::Unseal { .. })
            ),
            "bound to its name"
        );
        let (_d2, other) = sealer();
        assert!(
            matches!(
                other.unseal("acme/account", &sealed),
                Err(SealError::Unseal { .. })
            ),
            "bound to its key"
        );
        for i in 1..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert!(s.unseal("acme/account", &t).is_err(), "byte {i} altered");
        }
        assert!(matches!(
            s.unseal("acme/account", &[]),
            Err(SealError::Malformed { .. })
        ));
        assert!(matches!(
            s.unseal("acme/account", &[2; 40]),
            Err(SealError::Malformed { .. })
        ));
        assert!(matches!(
            s.unseal("acme/account", &sealed[..20]),
            Err(SealError::Malformed { .. })
        ));
    }

    #[test]
    fn key_file_is_created_once_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/seal.key");
        let s1 = AesGcmSealer::load_or_create(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let sealed = s1.seal("x", b"y").unwrap();
        let s2 = AesGcmSealer::load_or_create(&path).unwrap();
        assert_eq!(
            *s2.unseal("x", &sealed).unwrap(),
            b"y",
            "the same key after a restart"
        );
        std::fs::write(&path, b"short").unwrap();
        assert!(matches!(
            AesGcmSealer::load_or_create(&path),
            Err(SealError::Key { .. })
        ));
    }
}
