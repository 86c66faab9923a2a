//! [`Watch`]: a gap-free stream of changes after a snapshot, shared by both backends.
//!
//! A backend feeds raw changes, each with the store-wide revision that made it, into a
//! [`Mirror`] of what the watcher has seen. The mirror drops whatever its snapshot already
//! holds (revision at or below the one it reflects), so a change is never delivered twice.
//! When the backend loses changes (the embedded broadcast overflowed, or etcd compacted the
//! history the watch needed), it re-lists the prefix and the mirror turns the difference into
//! events: a watcher never misses a change silently, it may only see several collapsed into
//! the latest state.

use crate::{Event, Listing, Version};
use std::collections::HashMap;
use tokio::sync::mpsc;

/// Events buffered between a backend's follower task and the watcher. A watcher that stops
/// reading makes the follower wait; the backend then falls behind and resynchronizes.
pub(crate) const WATCH_CHANNEL: usize = 256;

/// Every change under one prefix after the snapshot [`crate::Store::watch`] returned with it.
#[derive(Debug)]
pub struct Watch {
    events: mpsc::Receiver<Event>,
    follower: tokio::task::JoinHandle<()>,
}

impl Watch {
    pub(crate) fn new(
        events: mpsc::Receiver<Event>,
        follower: tokio::task::JoinHandle<()>,
    ) -> Watch {
        Watch { events, follower }
    }

    /// The next change, in commit order; `None` once the store is gone.
    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

/// What a watcher has been told: each key's version, and the revision that state reflects.
#[derive(Debug)]
pub(crate) struct Mirror {
    prefix: String,
    known: HashMap<String, Version>,
    revision: u64,
}

impl Mirror {
    /// The state of a snapshot read at `revision`.
    pub(crate) fn new(prefix: &str, listing: &Listing, revision: u64) -> Mirror {
        Mirror {
            prefix: prefix.to_owned(),
            known: listing
                .iter()
                .map(|(k, v)| (k.clone(), v.version))
                .collect(),
            revision,
        }
    }

    /// The revision the watcher's state reflects; a follower resumes after it.
    pub(crate) fn revision(&self) -> u64 {
        self.revision
    }

    /// A change committed at `revision`, if the watcher has not seen it yet and it is under
    /// the prefix.
    pub(crate) fn apply(&mut self, revision: u64, event: Event) -> Option<Event> {
        if revision <= self.revision || !event.key().starts_with(&self.prefix) {
            return None;
        }
        self.revision = revision;
        match &event {
            Event::Put { key, value } => {
                self.known.insert(key.clone(), value.version);
            }
            Event::Delete { key } => {
                self.known.remove(key)?;
            }
        }
        Some(event)
    }

    /// The events that take the watcher from what it saw to `listing`, read at `revision`:
    /// deletes for keys gone, puts for keys new or rewritten.
    pub(crate) fn resync(&mut self, listing: Listing, revision: u64) -> Vec<Event> {
        let mut out = Vec::new();
        let now: HashMap<&str, Version> = listing
            .iter()
            .map(|(k, v)| (k.as_str(), v.version))
            .collect();
        let mut gone: Vec<String> = self
            .known
            .keys()
            .filter(|k| !now.contains_key(k.as_str()))
            .cloned()
            .collect();
        gone.sort();
        for key in gone {
            self.known.remove(&key);
            out.push(Event::Delete { key });
        }
        for (key, value) in listing {
            if self.known.get(&key) != Some(&value.version) {
                self.known.insert(key.clone(), value.version);
                out.push(Event::Put { key, value });
            }
        }
        self.revision = self.revision.max(revision);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Versioned;

    fn put(key: &str, version: u64) -> Event {
        Event::Put {
            key: key.into(),
            value: Versioned {
                value: vec![],
                version,
            },
        }
    }

    #[test]
    fn changes_the_snapshot_holds_are_not_repeated() {
        let listing = vec![(
            "certs/a".to_string(),
            Versioned {
                value: vec![],
                version: 5,
            },
        )];
        let mut m = Mirror::new("certs/", &listing, 7);
        assert_eq!(m.apply(5, put("certs/a", 5)), None);
        assert_eq!(
            m.apply(
                7,
                Event::Delete {
                    key: "certs/a".into()
                }
            ),
            None
        );
        assert_eq!(m.apply(8, put("other/x", 8)), None, "outside the prefix");
        assert_eq!(m.apply(9, put("certs/b", 9)), Some(put("certs/b", 9)));
        assert_eq!(m.apply(9, put("certs/b", 9)), None, "delivered once");
    }

    #[test]
    fn resync_turns_the_difference_into_events() {
        let v = |version| Versioned {
            value: vec![],
            version,
        };
        let mut m = Mirror::new(
            "",
            &vec![("a".into(), v(1)), ("b".into(), v(2)), ("c".into(), v(3))],
            3,
        );
        let events = m.resync(
            vec![("b".into(), v(2)), ("c".into(), v(9)), ("d".into(), v(8))],
            10,
        );
        assert_eq!(
            events,
            vec![Event::Delete { key: "a".into() }, put("c", 9), put("d", 8)]
        );
        assert_eq!(m.revision(), 10);
        // a change of the old stream that the re-list already reflects is dropped
        assert_eq!(m.apply(9, put("c", 9)), None);
    }
}
