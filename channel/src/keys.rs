//! The channel's HPKE keys: made in the TEE (here, from 32 random bytes that never leave the
//! process unsealed), sealed into the store under [`STORE_KEY`], rotated every
//! [`Rotation::every`], the previous key still opening requests for [`Rotation::grace`] after
//! its successor was made (a page that verified the bundle a minute before the rotation keeps
//! working). Every write is a compare-and-swap: in a cluster the first node to rotate wins and
//! the others read its keys, so all nodes open the same requests.

use crate::ChannelError;
use gatehouse_store::{Sealer, Store, Version};
use ohttp::hpke::{Aead, Kdf, Kem};
use ohttp::{KeyConfig, SymmetricSuite};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use zeroize::Zeroizing;

/// Where the sealed key set lives in the store (shared by a cluster's nodes).
pub const STORE_KEY: &str = "channel/keys";

/// When keys rotate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// A key is current this long.
    pub every: Duration,
    /// Its predecessor still opens requests this long after it was made.
    pub grace: Duration,
}

impl Default for Rotation {
    fn default() -> Rotation {
        Rotation {
            every: Duration::from_secs(7 * 24 * 3600),
            grace: Duration::from_secs(24 * 3600),
        }
    }
}

/// One key as stored (inside the sealed blob).
#[derive(Serialize, Deserialize)]
struct StoredKey {
    /// The RFC 9458 key identifier.
    id: u8,
    /// The HPKE `DeriveKeyPair` input, hex.
    ikm: String,
    /// When it was made (unix seconds).
    created: u64,
}

#[derive(Serialize, Deserialize, Default)]
struct Stored {
    /// Oldest first; the last is current.
    keys: Vec<StoredKey>,
}

/// One usable key.
pub struct ChannelKey {
    /// The RFC 9458 key identifier (the first byte of every request sealed to it).
    pub id: u8,
    /// When it was made (unix seconds).
    pub created: u64,
    /// Until when it opens requests (unix seconds); `None` while it is current.
    pub retires: Option<u64>,
    server: ohttp::Server,
}

impl ChannelKey {
    /// The server half that opens requests sealed to this key.
    pub fn server(&self) -> &ohttp::Server {
        &self.server
    }

    /// The public key configuration (RFC 9458 §3), encoded.
    pub fn public_config(&self) -> Result<Vec<u8>, ChannelError> {
        self.server
            .config()
            .encode()
            .map_err(|e| ChannelError::Keys(format!("encoding key {}: {e}", self.id)))
    }
}

impl std::fmt::Debug for ChannelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChannelKey({}, created {})", self.id, self.created)
    }
}

/// The keys that open requests now: the current one last, earlier ones inside their grace.
#[derive(Debug)]
pub struct KeySet {
    keys: Vec<ChannelKey>,
    /// The store version they were read at.
    version: Version,
}

/// The symmetric suites offered, the client's choice: AES-128-GCM (WebCrypto has it in every
/// browser) and ChaCha20-Poly1305.
fn suites() -> Vec<SymmetricSuite> {
    vec![
        SymmetricSuite::new(Kdf::HkdfSha256, Aead::Aes128Gcm),
        SymmetricSuite::new(Kdf::HkdfSha256, Aead::ChaCha20Poly1305),
    ]
}

fn derive(k: &StoredKey) -> Result<ChannelKey, ChannelError> {
    let ikm = Zeroizing::new(
        hex_decode(&k.ikm).ok_or_else(|| ChannelError::Keys(format!("key {}: bad ikm", k.id)))?,
    );
    let config = KeyConfig::derive(k.id, Kem::X25519Sha256, suites(), &ikm)
        .map_err(|e| ChannelError::Keys(format!("deriving key {}: {e}", k.id)))?;
    let server =
        ohttp::Server::new(config).map_err(|e| ChannelError::Keys(format!("key {}: {e}", k.id)))?;
    Ok(ChannelKey {
        id: k.id,
        created: k.created,
        retires: None,
        server,
    })
}

fn fresh(id: u8, now: u64) -> Result<StoredKey, ChannelError> {
    let mut ikm = Zeroizing::new([0u8; 32]);
    aws_lc_rs::rand::fill(ikm.as_mut())
        .map_err(|_| ChannelError::Keys("no randomness for a new key".into()))?;
    Ok(StoredKey {
        id,
        ikm: hex_encode(ikm.as_ref()),
        created: now,
    })
}

impl KeySet {
    /// The keys in the store, made (first start) or rotated (current older than
    /// `rotation.every`) and written back first when due; predecessors past their grace
    /// dropped with that write.
    pub async fn load(
        store: &dyn Store,
        sealer: &dyn Sealer,
        rotation: Rotation,
        now: u64,
    ) -> Result<KeySet, ChannelError> {
        // Two tries: losing a compare-and-swap means another node wrote keys just now.
        for _ in 0..3 {
            let (mut stored, version) = match store.get(STORE_KEY).await? {
                Some(v) => {
                    let plain = sealer.unseal(STORE_KEY, &v.value)?;
                    let stored: Stored = serde_json::from_slice(&plain)
                        .map_err(|e| ChannelError::Keys(format!("stored keys: {e}")))?;
                    (stored, v.version)
                }
                None => (Stored::default(), 0),
            };
            if !rotate(&mut stored, rotation, now)? {
                return KeySet::from_stored(&stored, version, rotation);
            }
            let plain = Zeroizing::new(
                serde_json::to_vec(&stored).map_err(|e| ChannelError::Keys(e.to_string()))?,
            );
            let sealed = sealer.seal(STORE_KEY, &plain)?;
            if let Ok(v) = store.compare_and_swap(STORE_KEY, version, &sealed).await? {
                let current = stored.keys.last().map_or(0, |k| k.id);
                tracing::info!(
                    key_id = current,
                    keys = stored.keys.len(),
                    "channel key made"
                );
                return KeySet::from_stored(&stored, v, rotation);
            }
        }
        Err(ChannelError::Keys(
            "the stored keys changed under every write; another node keeps rotating".into(),
        ))
    }

    fn from_stored(
        stored: &Stored,
        version: Version,
        rotation: Rotation,
    ) -> Result<KeySet, ChannelError> {
        let mut keys = stored
            .keys
            .iter()
            .map(derive)
            .collect::<Result<Vec<_>, _>>()?;
        for i in 1..keys.len() {
            keys[i - 1].retires = Some(keys[i].created + rotation.grace.as_secs());
        }
        if keys.is_empty() {
            return Err(ChannelError::Keys("the stored key set is empty".into()));
        }
        Ok(KeySet { keys, version })
    }

    /// The key new requests are sealed to (published in the claims).
    pub fn current(&self) -> &ChannelKey {
        self.keys.last().expect("a key set is never empty")
    }

    /// The key `id` names, if it opens requests at `now`.
    pub fn get(&self, id: u8, now: u64) -> Option<&ChannelKey> {
        self.keys
            .iter()
            .rev()
            .find(|k| k.id == id && k.retires.is_none_or(|r| now < r))
    }

    /// Every key, oldest first.
    pub fn keys(&self) -> &[ChannelKey] {
        &self.keys
    }

    /// The store version these keys were read or written at.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The public configurations as `application/ohttp-keys` (RFC 9458 §3.2): the current key
    /// first, then predecessors still in their grace at `now`.
    pub fn ohttp_keys(&self, now: u64) -> Result<Vec<u8>, ChannelError> {
        let configs: Vec<&KeyConfig> = self
            .keys
            .iter()
            .rev()
            .filter(|k| k.retires.is_none_or(|r| now < r))
            .map(|k| k.server.config())
            .collect();
        KeyConfig::encode_list(&configs)
            .map_err(|e| ChannelError::Keys(format!("encoding the key list: {e}")))
    }
}

/// What a verifier says about a claimed `application/ohttp-keys` list: the key ids it holds,
/// current first, each an X25519 key that `ohttp` accepts; an error names what is wrong.
pub fn describe_key_list(list: &[u8]) -> Result<String, ChannelError> {
    let configs = KeyConfig::decode_list(list)
        .map_err(|e| ChannelError::Keys(format!("the key list does not decode: {e}")))?;
    if configs.is_empty() {
        return Err(ChannelError::Keys("the key list is empty".into()));
    }
    // RFC 9458 §3.2: each entry is a 2-byte length, then key id (1) and KEM id (2).
    let mut ids = Vec::new();
    let mut rest = list;
    while rest.len() >= 5 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let (id, kem) = (rest[2], u16::from_be_bytes([rest[3], rest[4]]));
        if kem != Kem::X25519Sha256 as u16 {
            return Err(ChannelError::Keys(format!(
                "key {id} uses KEM {kem:#06x}, not X25519 (0x0020)"
            )));
        }
        ids.push(id);
        rest = rest.get(2 + len..).unwrap_or_default();
    }
    let more = match ids.len() {
        1 => String::new(),
        n => format!(", {} earlier in their grace ({:?})", n - 1, &ids[1..]),
    };
    Ok(format!(
        "current key {} (X25519, HKDF-SHA256){more}",
        ids[0]
    ))
}

/// Makes the first key, or a successor when the current one is due, and drops predecessors
/// past their grace; whether anything changed.
fn rotate(stored: &mut Stored, rotation: Rotation, now: u64) -> Result<bool, ChannelError> {
    let due = match stored.keys.last() {
        None => true,
        Some(k) => now >= k.created.saturating_add(rotation.every.as_secs()),
    };
    let mut changed = false;
    if due {
        let id = next_id(stored);
        stored.keys.push(fresh(id, now)?);
        changed = true;
    }
    // A predecessor opens requests until its successor is `grace` old.
    let grace = rotation.grace.as_secs();
    let n = stored.keys.len();
    let keep_from = (1..n)
        .rev()
        .find(|&i| now >= stored.keys[i].created.saturating_add(grace))
        .unwrap_or(0);
    if keep_from > 0 {
        stored.keys.drain(..keep_from);
        changed = true;
    }
    Ok(changed)
}

/// An id no kept key uses (ids wrap at 256; a set holds a handful).
fn next_id(stored: &Stored) -> u8 {
    let mut id = stored.keys.last().map_or(1, |k| k.id.wrapping_add(1));
    while stored.keys.iter().any(|k| k.id == id) {
        id = id.wrapping_add(1);
    }
    id
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_store::{AesGcmSealer, Embedded};

    const DAY: u64 = 24 * 3600;

    async fn setup() -> (tempfile::TempDir, Embedded, AesGcmSealer) {
        let dir = tempfile::tempdir().unwrap();
        let store = Embedded::open(&dir.path().join("state.redb")).unwrap();
        (
            dir,
            store,
            AesGcmSealer::from_key(&[7; 32], "test").unwrap(),
        )
    }

    #[tokio::test]
    async fn encrypted_channel_keys_are_made_once_sealed_and_the_same_after_a_restart() {
        let (_dir, store, sealer) = setup().await;
        let r = Rotation::default();
        let a = KeySet::load(&store, &sealer, r, 1_000).await.unwrap();
        let b = KeySet::load(&store, &sealer, r, 2_000).await.unwrap();
        assert_eq!(a.current().id, b.current().id);
        assert_eq!(
            a.current().public_config().unwrap(),
            b.current().public_config().unwrap(),
            "the same key read back"
        );
        let raw = store.get(STORE_KEY).await.unwrap().unwrap().value;
        let ikm_hex = {
            let plain = sealer.unseal(STORE_KEY, &raw).unwrap();
            let s: Stored = serde_json::from_slice(&plain).unwrap();
            s.keys[0].ikm.clone()
        };
        assert!(
            !String::from_utf8_lossy(&raw).contains(&ikm_hex),
            "the stored record is sealed"
        );
        let other = AesGcmSealer::from_key(&[8; 32], "test").unwrap();
        assert!(
            KeySet::load(&store, &other, r, 2_000).await.is_err(),
            "another sealing key cannot open them"
        );
    }

    #[tokio::test]
    async fn encrypted_channel_keys_rotate_and_the_predecessor_opens_only_in_its_grace() {
        let (_dir, store, sealer) = setup().await;
        let r = Rotation::default();
        let t0 = 10 * DAY;
        let first = KeySet::load(&store, &sealer, r, t0).await.unwrap();
        let id1 = first.current().id;
        let t1 = t0 + 7 * DAY;
        let second = KeySet::load(&store, &sealer, r, t1).await.unwrap();
        let id2 = second.current().id;
        assert_ne!(id1, id2, "rotated after a week");
        assert!(second.get(id1, t1 + DAY - 1).is_some(), "in its grace");
        assert!(second.get(id1, t1 + DAY).is_none(), "past it");
        assert!(second.get(id2, t1 + DAY).is_some());
        let list = second.ohttp_keys(t1).unwrap();
        let configs = KeyConfig::decode_list(&list).unwrap();
        assert_eq!(configs.len(), 2, "both published during the grace");
        assert_eq!(
            list[2], id2,
            "the current key first (after its 2-byte length)"
        );
        // Past the grace, the next load drops the predecessor from the store.
        let third = KeySet::load(&store, &sealer, r, t1 + DAY).await.unwrap();
        assert_eq!(third.keys().len(), 1);
        assert_eq!(third.current().id, id2);
    }

    #[tokio::test]
    async fn encrypted_channel_key_list_is_described_and_garbage_refused() {
        let (_dir, store, sealer) = setup().await;
        let keys = KeySet::load(&store, &sealer, Rotation::default(), 1_000)
            .await
            .unwrap();
        let list = keys.ohttp_keys(1_000).unwrap();
        let said = describe_key_list(&list).unwrap();
        assert!(
            said.starts_with(&format!("current key {} (X25519", keys.current().id)),
            "{said}"
        );
        assert!(describe_key_list(&list[..list.len() - 3]).is_err());
        assert!(describe_key_list(b"").is_err());
    }

    #[test]
    fn encrypted_channel_key_ids_skip_ones_in_use() {
        let k = |id| StoredKey {
            id,
            ikm: String::new(),
            created: 0,
        };
        let s = Stored {
            keys: vec![k(0), k(255)],
        };
        assert_eq!(next_id(&s), 1, "255 + 1 wraps to 0, in use");
    }
}
