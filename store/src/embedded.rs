//! The embedded backend: one redb file. Values are stored as 8-byte big-endian version + bytes.

use crate::{check_key, Event, Store, StoreError, Version, Versioned, Watch};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
/// Watchers that fall this many events behind are told to re-list.
const WATCH_BUFFER: usize = 1024;

/// A redb-backed [`Store`] for a single node.
pub struct Embedded {
    db: Database,
    events: tokio::sync::broadcast::Sender<Event>,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded").finish_non_exhaustive()
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
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
        let db = Database::create(path)
            .map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))?;
        let tx = db.begin_write().map_err(backend)?;
        tx.open_table(TABLE).map_err(backend)?;
        tx.commit().map_err(backend)?;
        let (events, _) = tokio::sync::broadcast::channel(WATCH_BUFFER);
        Ok(Embedded { db, events })
    }

    /// Runs `f` on the current value of `key` in one write transaction; `f` returns the new
    /// value (or `None` to leave the key unchanged). Commits with fsync.
    fn update<T>(
        &self,
        key: &str,
        f: impl FnOnce(Option<Versioned>) -> (Option<Option<Vec<u8>>>, T),
    ) -> Result<T, StoreError> {
        check_key(key)?;
        let tx = self.db.begin_write().map_err(backend)?;
        let (event, out) = {
            let mut table = tx.open_table(TABLE).map_err(backend)?;
            let current = match table.get(key).map_err(backend)? {
                Some(raw) => Some(decode(raw.value())?),
                None => None,
            };
            let next_version = current.as_ref().map_or(0, |c| c.version) + 1;
            let (change, out) = f(current);
            let event = match change {
                None => None,
                Some(Some(value)) => {
                    table
                        .insert(key, encode(next_version, &value).as_slice())
                        .map_err(backend)?;
                    Some(Event::Put {
                        key: key.to_owned(),
                        value: Versioned {
                            value,
                            version: next_version,
                        },
                    })
                }
                Some(None) => {
                    table.remove(key).map_err(backend)?;
                    Some(Event::Delete {
                        key: key.to_owned(),
                    })
                }
            };
            (event, out)
        };
        tx.commit().map_err(backend)?;
        if let Some(e) = event {
            let _ = self.events.send(e); // no watcher is fine
        }
        Ok(out)
    }
}

impl Store for Embedded {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        check_key(key)?;
        let tx = self.db.begin_read().map_err(backend)?;
        let table = tx.open_table(TABLE).map_err(backend)?;
        match table.get(key).map_err(backend)? {
            Some(raw) => decode(raw.value()).map(Some),
            None => Ok(None),
        }
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<Version, StoreError> {
        self.update(key, |current| {
            let version = current.map_or(0, |c| c.version) + 1;
            (Some(Some(value.to_vec())), version)
        })
    }

    fn compare_and_swap(
        &self,
        key: &str,
        expected: Version,
        value: &[u8],
    ) -> Result<Result<Version, Option<Versioned>>, StoreError> {
        self.update(key, |current| {
            let seen = current.as_ref().map_or(0, |c| c.version);
            if seen == expected {
                (Some(Some(value.to_vec())), Ok(seen + 1))
            } else {
                (None, Err(current))
            }
        })
    }

    fn delete(&self, key: &str) -> Result<bool, StoreError> {
        self.update(key, |current| match current {
            Some(_) => (Some(None), true),
            None => (None, false),
        })
    }

    fn compare_and_delete(&self, key: &str, expected: Version) -> Result<bool, StoreError> {
        self.update(key, |current| match current {
            Some(c) if c.version == expected => (Some(None), true),
            _ => (None, false),
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        let tx = self.db.begin_read().map_err(backend)?;
        let table = tx.open_table(TABLE).map_err(backend)?;
        let mut out = Vec::new();
        for entry in table.range(prefix..).map_err(backend)? {
            let (k, v) = entry.map_err(backend)?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_owned(), decode(v.value())?));
        }
        Ok(out)
    }

    fn watch(&self, prefix: &str) -> Watch {
        Watch {
            prefix: prefix.to_owned(),
            events: self.events.subscribe(),
        }
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn put_get_versions_and_delete() {
        let (_d, s) = open();
        assert_eq!(s.get("acme/account").unwrap(), None);
        assert_eq!(s.put("acme/account", b"a").unwrap(), 1);
        assert_eq!(s.put("acme/account", b"b").unwrap(), 2);
        assert_eq!(
            s.get("acme/account").unwrap(),
            Some(Versioned {
                value: b"b".to_vec(),
                version: 2
            })
        );
        assert!(s.delete("acme/account").unwrap());
        assert!(!s.delete("acme/account").unwrap());
        assert_eq!(s.get("acme/account").unwrap(), None);
        assert_eq!(
            s.put("acme/account", b"c").unwrap(),
            1,
            "a re-created key starts again"
        );
    }

    #[test]
    fn compare_and_swap_refuses_stale_writers() {
        let (_d, s) = open();
        assert_eq!(
            s.compare_and_swap("leases/10.0.0.2", 0, b"wg-key-1")
                .unwrap(),
            Ok(1)
        );
        // a second writer that also saw "absent" loses and learns the current value
        let lost = s
            .compare_and_swap("leases/10.0.0.2", 0, b"wg-key-2")
            .unwrap();
        assert_eq!(
            lost,
            Err(Some(Versioned {
                value: b"wg-key-1".to_vec(),
                version: 1
            }))
        );
        assert_eq!(
            s.compare_and_swap("leases/10.0.0.2", 1, b"wg-key-1b")
                .unwrap(),
            Ok(2)
        );
        assert_eq!(
            s.get("leases/10.0.0.2").unwrap().unwrap().value,
            b"wg-key-1b"
        );
    }

    /// Issue 16 §11: a delete conditioned on the version a reader saw does nothing once
    /// someone wrote after that read.
    #[test]
    fn hardening_compare_and_delete_refuses_a_stale_version() {
        let (_d, s) = open();
        let v1 = s.put("leases/10.0.0.3", b"a").unwrap();
        let v2 = s.put("leases/10.0.0.3", b"b").unwrap();
        assert!(!s.compare_and_delete("leases/10.0.0.3", v1).unwrap());
        assert_eq!(s.get("leases/10.0.0.3").unwrap().unwrap().value, b"b");
        assert!(s.compare_and_delete("leases/10.0.0.3", v2).unwrap());
        assert!(s.get("leases/10.0.0.3").unwrap().is_none());
        assert!(!s.compare_and_delete("leases/10.0.0.3", v2).unwrap());
    }

    #[test]
    fn concurrent_cas_gives_each_version_to_one_writer() {
        let (_d, s) = open();
        let s = std::sync::Arc::new(s);
        let winners: Vec<bool> = (0..16)
            .map(|i| {
                let s = s.clone();
                std::thread::spawn(move || {
                    s.compare_and_swap("leases/x", 0, format!("{i}").as_bytes())
                        .unwrap()
                        .is_ok()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert_eq!(winners.iter().filter(|w| **w).count(), 1);
    }

    #[test]
    fn list_by_prefix_in_key_order() {
        let (_d, s) = open();
        for k in ["certs/b.test", "certs/a.test", "certsx/no", "acme/account"] {
            s.put(k, k.as_bytes()).unwrap();
        }
        let keys: Vec<String> = s
            .list("certs/")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec!["certs/a.test", "certs/b.test"]);
        assert_eq!(s.list("").unwrap().len(), 4);
    }

    #[test]
    fn state_survives_reopen_and_the_file_is_locked_while_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let s = Embedded::open(&path).unwrap();
            s.put("acme/account", b"persisted").unwrap();
            assert!(
                Embedded::open(&path).is_err(),
                "a second opener must not share the file"
            );
        }
        let s = Embedded::open(&path).unwrap();
        assert_eq!(
            s.get("acme/account").unwrap().unwrap(),
            Versioned {
                value: b"persisted".to_vec(),
                version: 1
            }
        );
    }

    #[test]
    fn bad_keys_are_refused() {
        let (_d, s) = open();
        for k in ["", "/a", "a/", "a//b"] {
            assert!(
                matches!(s.put(k, b"x"), Err(StoreError::InvalidKey { .. })),
                "{k:?}"
            );
        }
    }

    #[tokio::test]
    async fn watch_sees_changes_under_its_prefix_in_order() {
        let (_d, s) = open();
        let mut w = s.watch("certs/");
        s.put("acme/account", b"ignored").unwrap();
        s.put("certs/a", b"1").unwrap();
        s.put("certs/a", b"2").unwrap();
        s.delete("certs/a").unwrap();
        assert_eq!(
            w.next().await.unwrap(),
            Event::Put {
                key: "certs/a".into(),
                value: Versioned {
                    value: b"1".to_vec(),
                    version: 1
                }
            }
        );
        assert_eq!(
            w.next().await.unwrap(),
            Event::Put {
                key: "certs/a".into(),
                value: Versioned {
                    value: b"2".to_vec(),
                    version: 2
                }
            }
        );
        assert_eq!(
            w.next().await.unwrap(),
            Event::Delete {
                key: "certs/a".into()
            }
        );
    }
}
