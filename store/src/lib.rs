//! Gatehouse's durable state: ACME account, sealed keys and certificates, VPC leases, routes.
//!
//! Callers see one narrow trait, [`Store`], with two backends behind it:
//! - keys are `/`-separated paths in namespaces (`acme/account`, `certs/<name>`, `leases/<ip>`),
//! - every value carries a [`Version`]: the store-wide revision of the write that made it
//!   (etcd's `mod_revision`), so versions only grow, also across a delete and re-create, and
//!   [`Store::compare_and_swap`] writes only when the caller saw the current version, which is
//!   how two writers (two tasks, or two nodes) avoid lost updates,
//! - [`Store::watch`] returns a snapshot of a prefix read at one revision and every change
//!   after it, without gaps or repeats (a watcher that falls behind, or whose history was
//!   compacted away, re-lists and receives the difference: see [`Watch`]).
//!
//! [`Embedded`] is a redb file for one node: each write is one ACID transaction committed with
//! fsync, so a crash or kill at any moment leaves the old or the new state. [`Etcd`] is an etcd
//! cluster for several nodes: versions are `mod_revision`s, conditional writes are `Txn`s.
//! The store holds bytes; secrets are sealed by the caller with a [`Sealer`] before they reach
//! it ([`seal`]: AES-256-GCM bound to the item's name), so no backend ever holds a key in the
//! clear (etcd runs outside the TEE's trust).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod embedded;
mod etcd;
pub mod seal;
mod watch;

pub use embedded::Embedded;
pub use etcd::{Etcd, EtcdOptions, EtcdTls};
pub use seal::{AesGcmSealer, SealError, Sealer};
pub use watch::Watch;
pub use zeroize::Zeroizing;

/// A key's version: 0 = absent, otherwise the store-wide revision of the write that made it.
/// Versions of one key only grow, also across a delete and re-create.
pub type Version = u64;

/// A stored value and its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The bytes.
    pub value: Vec<u8>,
    /// The version they were written at.
    pub version: Version,
}

/// One change seen by a watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `key` now holds `value` at `version`.
    Put {
        /// The key.
        key: String,
        /// The new value and version.
        value: Versioned,
    },
    /// `key` was deleted.
    Delete {
        /// The key.
        key: String,
    },
}

impl Event {
    /// The key this change is about.
    pub fn key(&self) -> &str {
        match self {
            Event::Put { key, .. } | Event::Delete { key } => key,
        }
    }
}

/// A prefix's entries, read at one revision, in key order.
pub type Listing = Vec<(String, Versioned)>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The key is empty, too long, or has an empty path segment.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The key.
        key: String,
        /// Why.
        reason: &'static str,
    },
    /// The backend failed (I/O, corruption, lock held by another process).
    #[error("store backend: {0}")]
    Backend(String),
    /// The backend could not be reached in time (etcd down or partitioned), or its disk
    /// failed a write (full, read-only; the embedded store opens its file again before the
    /// next operation). Nothing was written; what was read before still holds, and the caller
    /// may retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// What a lock holder's writes carry: the lock's key and the revision at which it was taken.
/// A fenced write succeeds only while the lock key is still at that revision, so a holder
/// that was paused past its lease (and lost the lock to another) cannot publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The lock's key (`locks/<name>`).
    pub key: String,
    /// The revision at which this holder took it.
    pub revision: Version,
}

/// A held lock. Dropping it releases the lock; with etcd, a holder that stops (crash, pause)
/// loses it when its lease runs out, since only a live holder keeps the lease alive.
pub struct Lock {
    /// What the holder's writes carry.
    pub fence: Fence,
    release: Option<Box<dyn FnOnce(bool) + Send + Sync>>,
}

impl std::fmt::Debug for Lock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lock").field("fence", &self.fence).finish()
    }
}

impl Lock {
    pub(crate) fn new(fence: Fence, release: impl FnOnce(bool) + Send + Sync + 'static) -> Lock {
        Lock {
            fence,
            release: Some(Box::new(release)),
        }
    }

    /// Stops keeping the lock alive without releasing it: what a frozen or partitioned holder
    /// looks like to the others (the lock expires after its lease). For tests of fencing.
    #[doc(hidden)]
    pub fn abandon(mut self) {
        if let Some(r) = self.release.take() {
            r(false);
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        if let Some(r) = self.release.take() {
            r(true);
        }
    }
}

/// What a fenced compare-and-swap did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fenced {
    /// Written at this version.
    Written(Version),
    /// The key was not at the expected version (nothing written): its current value.
    Changed(Option<Versioned>),
    /// The lock is no longer held at the fence's revision (nothing written).
    LockLost,
}

/// The state every gateway node reads and writes.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// The value at `key`, if any.
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError>;

    /// Writes `value` at `key` unconditionally; returns the new version.
    async fn put(&self, key: &str, value: &[u8]) -> Result<Version, StoreError>;

    /// Writes `value` only if `key` is at version `expected` (0 = absent). `Ok(Ok(v))`: written
    /// at version `v`; `Ok(Err(current))`: someone else wrote first, nothing changed.
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Version,
        value: &[u8],
    ) -> Result<Result<Version, Option<Versioned>>, StoreError>;

    /// Deletes `key`; returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool, StoreError>;

    /// Deletes `key` only if it is at version `expected`; returns whether it did (false: it
    /// changed or went away meanwhile, nothing was deleted).
    async fn compare_and_delete(&self, key: &str, expected: Version) -> Result<bool, StoreError>;

    /// Every key under `prefix` with its value, in key order, read at one revision.
    async fn list(&self, prefix: &str) -> Result<Listing, StoreError>;

    /// The entries under `prefix` now, and a [`Watch`] of every change after them.
    async fn watch(&self, prefix: &str) -> Result<(Listing, Watch), StoreError>;

    /// Takes the lock `name` for `holder` unless someone holds it (`Err(their holder)`).
    /// With etcd the lock lives under a lease of `ttl` that the returned [`Lock`] keeps alive;
    /// the embedded store's locks coordinate the tasks of its one process.
    async fn try_lock(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Result<Lock, String>, StoreError>;

    /// [`Store::compare_and_swap`], and only while `fence`'s lock is still held.
    async fn compare_and_swap_fenced(
        &self,
        fence: &Fence,
        key: &str,
        expected: Version,
        value: &[u8],
    ) -> Result<Fenced, StoreError>;
}

/// The key of lock `name`.
pub fn lock_key(name: &str) -> Result<String, StoreError> {
    let key = format!("locks/{name}");
    check_key(&key)?;
    Ok(key)
}

/// Checks a key: 1-1024 bytes, `/`-separated non-empty segments, no leading `/`.
pub fn check_key(key: &str) -> Result<(), StoreError> {
    let bad = |reason| {
        Err(StoreError::InvalidKey {
            key: key.to_owned(),
            reason,
        })
    };
    if key.is_empty() || key.len() > 1024 {
        return bad("must be 1 to 1024 bytes");
    }
    if key.split('/').any(str::is_empty) {
        return bad("empty path segment (leading, trailing or double '/')");
    }
    Ok(())
}

/// Writes `bytes` to `path` so that a crash at any moment leaves the old file or the new one:
/// a temporary file in the same directory (created with `mode`), fsync, rename over, fsync the
/// directory. Creates the directory if needed.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    // A fresh name, created exclusively (O_EXCL, which also refuses a symlink in its place): a
    // file or link planted at a predictable temp name can neither receive the secret nor lend
    // it its mode.
    let mut suffix = [0u8; 8];
    aws_lc_rs::rand::fill(&mut suffix).map_err(|_| std::io::Error::other("random"))?;
    let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = dir.join(format!(".{name}.{suffix}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    let written = (|| {
        // The umask may have narrowed `mode`; never widened, but set it exactly.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    drop(f);
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod write_tests {
    use std::os::unix::fs::PermissionsExt;

    /// Issue 16 §11: the written file has exactly `mode` even where a world-readable file was
    /// planted before, and no temporary file is left behind.
    #[test]
    fn hardening_write_atomic_sets_its_mode_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seal.key");
        std::fs::write(&path, b"planted").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        super::write_atomic(&path, b"secret", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"secret");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
