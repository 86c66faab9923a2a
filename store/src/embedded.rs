//! The embedded backend: one redb file. Values are stored as 8-byte big-endian version + bytes;
//! a `meta` table holds the store-wide revision, which every write raises by one and gives to
//! the key it writes (as etcd's `mod_revision`), so a version is never reused.

use crate::watch::{Mirror, WATCH_CHANNEL};
use crate::{
    check_key, lock_key, Event, Fence, Fenced, Listing, Lock, Store, StoreError, Version,
    Versioned, Watch,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";
/// Changes kept for watchers that are behind; one that falls further re-lists.
const WATCH_BUFFER: usize = 1024;

/// A redb-backed [`Store`] for a single node.
pub struct Embedded {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// The open file. redb refuses every operation on a handle after one of its writes
    /// failed (a full or read-only disk), until it is opened again: [`Inner::with_db`] does
    /// that once the next operation comes, so the store recovers when the disk does.
    db: RwLock<Option<Database>>,
    /// A write failed: open the file again before the next operation.
    failed: AtomicBool,
    /// When the last attempt to open it again was made (at most one a second), and why it
    /// failed.
    reopened: std::sync::Mutex<(Option<Instant>, String)>,
    /// Every committed change with its revision.
    events: broadcast::Sender<(u64, Event)>,
    /// Locks held by this process's tasks: key → (fence revision, holder).
    locks: std::sync::Mutex<std::collections::HashMap<String, (Version, String)>>,
    /// The next lock's fence revision.
    next_fence: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded").finish_non_exhaustive()
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The shortest time between two attempts to open a failed file again.
const REOPEN_EVERY: Duration = Duration::from_secs(1);

/// Opens (or creates) the redb file and makes sure it has its tables and revision.
fn open_db(path: &Path) -> Result<Database, StoreError> {
    let db = Database::create(path)
        .map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))?;
    let tx = db.begin_write().map_err(backend)?;
    {
        let table = tx.open_table(TABLE).map_err(backend)?;
        let mut meta = tx.open_table(META).map_err(backend)?;
        if meta.get(REVISION).map_err(backend)?.is_none() {
            // A file written before the store-wide revision: start above every version in
            // it, so no version is ever handed out twice.
            let mut highest = 0;
            for entry in table.iter().map_err(backend)? {
                let (_, v) = entry.map_err(backend)?;
                highest = highest.max(decode(v.value())?.version);
            }
            meta.insert(REVISION, highest).map_err(backend)?;
        }
    }
    tx.commit().map_err(backend)?;
    Ok(db)
}

fn decode(raw: &[u8]) -> Result<Versioned, StoreError> {
    if raw.len() < 8 {
        return Err(StoreError::Backend(
            "stored value shorter than its version header".into(),
        ));
    }
    let (v, value) = raw.split_at(8);
    let version = u64::from_be_bytes(v.try_into().map_err(backend)?);
    Ok(Versioned {
        value: value.to_vec(),
        version,
    })
}

fn encode(version: Version, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + value.len());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(value);
    out
}

impl Embedded {
    /// Opens (or creates) the store at `path`. redb holds a lock: a second process opening the
    /// same file gets an error instead of corrupting it.
    pub fn open(path: &Path) -> Result<Embedded, StoreError> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        // The file holds sealed secrets and state: owner-only, whatever the umask.
        let file_err = |e: std::io::Error| StoreError::Backend(format!("{}: {e}", path.display()));
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(0o600)))
            .map_err(file_err)?;
        let db = open_db(path)?;
        let (events, _) = broadcast::channel(WATCH_BUFFER);
        Ok(Embedded {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                db: RwLock::new(Some(db)),
                failed: AtomicBool::new(false),
                reopened: std::sync::Mutex::new((None, String::new())),
                events,
                locks: Default::default(),
                next_fence: std::sync::atomic::AtomicU64::new(1),
            }),
        })
    }
}

impl Inner {
    /// A redb error as the store's: an I/O failure marks the handle for reopening and is
    /// `Unavailable` (nothing was written; a later try may succeed), naming the file.
    fn fail(&self, e: impl Into<redb::Error>) -> StoreError {
        let e: redb::Error = e.into();
        if matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo) {
            self.failed.store(true, Ordering::Release);
            return StoreError::Unavailable(format!("{}: {e}", self.path.display()));
        }
        StoreError::Backend(e.to_string())
    }

    /// Runs `op` on the open database, opening the file again first if a write failed.
    fn with_db<T>(
        &self,
        op: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if self.failed.load(Ordering::Acquire) {
            self.reopen()?;
        }
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        let db = guard.as_ref().ok_or_else(|| {
            StoreError::Unavailable(format!(
                "{}: not open after an I/O failure",
                self.path.display()
            ))
        })?;
        op(db)
    }

    /// Closes the failed handle and opens the file again (redb recovers the last committed
    /// transaction). At most one attempt a second; until one succeeds, operations are refused.
    fn reopen(&self) -> Result<(), StoreError> {
        let mut db = self.db.write().unwrap_or_else(|p| p.into_inner());
        if !self.failed.load(Ordering::Acquire) {
            return Ok(()); // another caller did it
        }
        let mut last = self.reopened.lock().unwrap_or_else(|p| p.into_inner());
        if last.0.is_some_and(|t| t.elapsed() < REOPEN_EVERY) && db.is_none() {
            return Err(StoreError::Unavailable(last.1.clone()));
        }
        last.0 = Some(Instant::now());
        drop(db.take()); // releases the file lock
        match open_db(&self.path) {
            Ok(opened) => {
                *db = Some(opened);
                self.failed.store(false, Ordering::Release);
                tracing::warn!(path = %self.path.display(), "store opened again after an I/O failure");
                Ok(())
            }
            Err(e) => {
                last.1 = format!("cannot open the store again after an I/O failure: {e}");
                tracing::warn!("{}", last.1);
                Err(StoreError::Unavailable(last.1.clone()))
            }
        }
    }

    /// Runs `f` on the current value of `key` in one write transaction; `f` returns the new
    /// value (`Some(None)` deletes, `None` leaves the key unchanged) and gets the revision a
    /// change would be written at. Commits with fsync.
    fn update<T>(
        &self,
        key: &str,
        f: impl FnOnce(Option<Versioned>, u64) -> (Option<Option<Vec<u8>>>, T),
    ) -> Result<T, StoreError> {
        check_key(key)?;
        self.with_db(|db| self.update_in(db, key, f))
    }

    fn update_in<T>(
        &self,
        db: &Database,
        key: &str,
        f: impl FnOnce(Option<Versioned>, u64) -> (Option<Option<Vec<u8>>>, T),
    ) -> Result<T, StoreError> {
        let tx = db.begin_write().map_err(|e| self.fail(e))?;
        let (change, out) = {
            let mut table = tx.open_table(TABLE).map_err(|e| self.fail(e))?;
            let mut meta = tx.open_table(META).map_err(|e| self.fail(e))?;
            let current = match table.get(key).map_err(|e| self.fail(e))? {
                Some(raw) => Some(decode(raw.value())?),
                None => None,
            };
            let revision = meta
                .get(REVISION)
                .map_err(|e| self.fail(e))?
                .map_or(0, |r| r.value())
                + 1;
            let (change, out) = f(current, revision);
            let event = match change {
                None => None,
                Some(Some(value)) => {
                    table
                        .insert(key, encode(revision, &value).as_slice())
                        .map_err(|e| self.fail(e))?;
                    Some(Event::Put {
                        key: key.to_owned(),
                        value: Versioned {
                            value,
                            version: revision,
                        },
                    })
                }
                Some(None) => {
                    table.remove(key).map_err(|e| self.fail(e))?;
                    Some(Event::Delete {
                        key: key.to_owned(),
                    })
                }
            };
            if event.is_some() {
                meta.insert(REVISION, revision).map_err(|e| self.fail(e))?;
            }
            (event.map(|e| (revision, e)), out)
        };
        if change.is_none() {
            tx.abort().map_err(|e| self.fail(e))?;
            return Ok(out);
        }
        tx.commit().map_err(|e| self.fail(e))?;
        if let Some(change) = change {
            let _ = self.events.send(change); // no watcher is fine
        }
        Ok(out)
    }

    /// Every key under `prefix`, and the revision they were read at.
    fn list(&self, prefix: &str) -> Result<(Listing, u64), StoreError> {
        self.with_db(|db| self.list_in(db, prefix))
    }

    fn list_in(&self, db: &Database, prefix: &str) -> Result<(Listing, u64), StoreError> {
        let tx = db.begin_read().map_err(|e| self.fail(e))?;
        let table = tx.open_table(TABLE).map_err(|e| self.fail(e))?;
        let meta = tx.open_table(META).map_err(|e| self.fail(e))?;
        let revision = meta
            .get(REVISION)
            .map_err(|e| self.fail(e))?
            .map_or(0, |r| r.value());
        let mut out = Vec::new();
        for entry in table.range(prefix..).map_err(|e| self.fail(e))? {
            let (k, v) = entry.map_err(|e| self.fail(e))?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_owned(), decode(v.value())?));
        }
        Ok((out, revision))
    }
}

/// Forwards the broadcast of committed changes to one watcher through its mirror; re-lists
/// when the broadcast overflowed. Holds the store weakly: it ends when the store is dropped.
async fn follow(
    store: Weak<Inner>,
    mut changes: broadcast::Receiver<(u64, Event)>,
    mut mirror: Mirror,
    prefix: String,
    out: mpsc::Sender<Event>,
) {
    loop {
        let events = match changes.recv().await {
            Ok((revision, event)) => mirror.apply(revision, event).into_iter().collect(),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                let Some(store) = store.upgrade() else { return };
                match store.list(&prefix) {
                    Ok((listing, revision)) => {
                        tracing::debug!(missed, prefix, "watcher fell behind; re-listed");
                        mirror.resync(listing, revision)
                    }
                    Err(e) => {
                        tracing::error!(error = %e, prefix, "watcher could not re-list");
                        return;
                    }
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        for event in events {
            if out.send(event).await.is_err() {
                return;
            }
        }
    }
}

#[async_trait::async_trait]
impl Store for Embedded {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        check_key(key)?;
        let inner = &self.inner;
        inner.with_db(|db| {
            let tx = db.begin_read().map_err(|e| inner.fail(e))?;
            let table = tx.open_table(TABLE).map_err(|e| inner.fail(e))?;
            match table.get(key).map_err(|e| inner.fail(e))? {
                Some(raw) => decode(raw.value()).map(Some),
                None => Ok(None),
            }
        })
    }

    async fn put(&self, key: &str, value: &[u8]) -> Result<Version, StoreError> {
        self.inner
            .update(key, |_, revision| (Some(Some(value.to_vec())), revision))
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Version,
        value: &[u8],
    ) -> Result<Result<Version, Option<Versioned>>, StoreError> {
        self.inner.compare_and_swap(key, expected, value)
    }

    async fn try_lock(
        &self,
        name: &str,
        holder: &str,
        _ttl: std::time::Duration,
    ) -> Result<Result<Lock, String>, StoreError> {
        let key = lock_key(name)?;
        let mut locks = self.inner.locks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, theirs)) = locks.get(&key) {
            return Ok(Err(theirs.clone()));
        }
        let revision = self
            .inner
            .next_fence
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        locks.insert(key.clone(), (revision, holder.to_owned()));
        let inner = Arc::downgrade(&self.inner);
        let fence = Fence { key, revision };
        let held = fence.clone();
        Ok(Ok(Lock::new(fence, move |_| {
            let Some(inner) = inner.upgrade() else { return };
            let mut locks = inner.locks.lock().unwrap_or_else(|p| p.into_inner());
            if locks
                .get(&held.key)
                .is_some_and(|(r, _)| *r == held.revision)
            {
                locks.remove(&held.key);
            }
        })))
    }

    async fn compare_and_swap_fenced(
        &self,
        fence: &Fence,
        key: &str,
        expected: Version,
        value: &[u8],
    ) -> Result<Fenced, StoreError> {
        // The lock table stays locked across the write: the lock cannot change hands mid-way.
        let locks = self.inner.locks.lock().unwrap_or_else(|p| p.into_inner());
        if locks.get(&fence.key).map(|(r, _)| *r) != Some(fence.revision) {
            return Ok(Fenced::LockLost);
        }
        Ok(match self.inner.compare_and_swap(key, expected, value)? {
            Ok(v) => Fenced::Written(v),
            Err(current) => Fenced::Changed(current),
        })
    }
    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.inner.update(key, |current, _| match current {
            Some(_) => (Some(None), true),
            None => (None, false),
        })
    }

    async fn compare_and_delete(&self, key: &str, expected: Version) -> Result<bool, StoreError> {
        self.inner.update(key, |current, _| match current {
            Some(c) if c.version == expected => (Some(None), true),
            _ => (None, false),
        })
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        Ok(self.inner.list(prefix)?.0)
    }

    async fn watch(&self, prefix: &str) -> Result<(Listing, Watch), StoreError> {
        // Subscribe before reading: a change committed between the two is in both, and the
        // mirror drops the copy the snapshot already holds.
        let changes = self.inner.events.subscribe();
        let (listing, revision) = self.inner.list(prefix)?;
        let mirror = Mirror::new(prefix, &listing, revision);
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL);
        let follower = tokio::spawn(follow(
            Arc::downgrade(&self.inner),
            changes,
            mirror,
            prefix.to_owned(),
            tx,
        ));
        Ok((listing, Watch::new(rx, follower)))
    }
}

impl Inner {
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Version,
        value: &[u8],
    ) -> Result<Result<Version, Option<Versioned>>, StoreError> {
        self.update(key, |current, revision| {
            let seen = current.as_ref().map_or(0, |c| c.version);
            if seen == expected {
                (Some(Some(value.to_vec())), Ok(revision))
            } else {
                (None, Err(current))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    //! What only the embedded backend has: a file. The behaviour every backend shares is the
    //! conformance suite in `tests/` (`cargo test store_conformance`), run on redb and etcd.
    use super::*;

    fn open() -> (tempfile::TempDir, Embedded) {
        let dir = tempfile::tempdir().unwrap();
        let store = Embedded::open(&dir.path().join("state.redb")).unwrap();
        (dir, store)
    }

    /// Issue 16 §11: the database file is owner-only whatever the umask.
    #[test]
    fn hardening_database_file_is_0600() {
        use std::os::unix::fs::PermissionsExt;
        let (d, _s) = open();
        let mode = std::fs::metadata(d.path().join("state.redb"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn state_and_revision_survive_reopen_and_the_file_is_locked_while_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let written = {
            let s = Embedded::open(&path).unwrap();
            s.put("acme/account", b"persisted").await.unwrap();
            let v = s.put("certs/x", b"x").await.unwrap();
            s.delete("certs/x").await.unwrap();
            assert!(
                Embedded::open(&path).is_err(),
                "a second opener must not share the file"
            );
            v
        };
        let s = Embedded::open(&path).unwrap();
        assert_eq!(
            s.get("acme/account").await.unwrap().unwrap().value,
            b"persisted"
        );
        assert!(
            s.put("certs/x", b"again").await.unwrap() > written + 1,
            "versions are never handed out twice, across a reopen"
        );
    }

    /// A file from before the store-wide revision: new versions start above its highest.
    #[tokio::test]
    async fn a_file_without_a_revision_counts_on_from_its_highest_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let db = Database::create(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(TABLE)
                .unwrap()
                .insert("leases/10.0.0.2", encode(41, b"old").as_slice())
                .unwrap();
            tx.commit().unwrap();
        }
        let s = Embedded::open(&path).unwrap();
        assert_eq!(s.get("leases/10.0.0.2").await.unwrap().unwrap().version, 41);
        assert_eq!(s.put("leases/10.0.0.3", b"new").await.unwrap(), 42);
    }

    /// A watcher that stops reading while the broadcast overflows re-lists and still ends at
    /// the store's state (the lagging path; etcd's compaction takes the same one).
    #[tokio::test]
    async fn a_watcher_past_the_broadcast_buffer_resyncs() {
        let (_d, s) = open();
        let (_, mut w) = s.watch("k/").await.unwrap();
        for i in 0..(WATCH_BUFFER + WATCH_CHANNEL + 200) {
            s.put(&format!("k/{}", i % 50), format!("{i}").as_bytes())
                .await
                .unwrap();
        }
        s.delete("k/7").await.unwrap();
        let want: std::collections::BTreeMap<String, Vec<u8>> = s
            .list("k/")
            .await
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, v.value))
            .collect();
        let mut seen = std::collections::BTreeMap::new();
        while seen != want {
            let e = tokio::time::timeout(std::time::Duration::from_secs(5), w.next())
                .await
                .expect("the watcher converges")
                .unwrap();
            match e {
                Event::Put { key, value } => seen.insert(key, value.value),
                Event::Delete { key } => seen.remove(&key),
            };
        }
    }
}
