//! Maps by name in copy-on-write shards: the route table's apps by id, and the certificate
//! resolver's ACME certificates by name. A snapshot that differs from the one before it in
//! one entry copies that entry's shard (1/256 of the map) and shares the rest, so a change
//! costs the same at 100 entries and at 100,000 (issue 22: a rebuild was O(all apps)).
//!
//! By hand rather than a persistent map crate (`im`, `rpds`): lookups stay one std `HashMap`
//! probe (plus the shard's hash), the hot path's cost before this change, and the whole thing
//! is a few lines over `Arc::make_mut`.

use super::table::App;
use std::collections::HashMap;
use std::sync::Arc;

const SHARDS: usize = 256;

/// Keys are shared (`Arc<str>`): copying a shard allocates its table, not its keys.
type Shard<V> = HashMap<Arc<str>, V>;

/// Values by name; `Clone` shares every shard.
#[derive(Debug, Clone)]
pub(crate) struct CowMap<V> {
    shards: Box<[Arc<Shard<V>>]>,
    len: usize,
}

/// The route table's apps by id.
pub(crate) type AppMap = CowMap<Arc<App>>;

impl<V: Clone> Default for CowMap<V> {
    fn default() -> Self {
        CowMap::with_capacity(0)
    }
}

/// The shard of `id`: FNV-1a, fixed (the same id lands in the same shard in every snapshot)
/// and a few nanoseconds for an id, as it runs on every lookup. The maps inside keep std's
/// keyed hasher, so ids chosen to collide cost no more than before.
fn shard_of(id: &str) -> usize {
    let h = id.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    h as usize % SHARDS
}

impl<V: Clone> CowMap<V> {
    /// An empty map sized for `n` entries.
    pub(crate) fn with_capacity(n: usize) -> CowMap<V> {
        CowMap {
            shards: (0..SHARDS)
                .map(|_| Arc::new(Shard::with_capacity(n.div_ceil(SHARDS))))
                .collect(),
            len: 0,
        }
    }

    pub(crate) fn get(&self, id: &str) -> Option<&V> {
        self.shards[shard_of(id)].get(id)
    }

    pub(crate) fn contains_key(&self, id: &str) -> bool {
        self.get(id).is_some()
    }

    /// Inserts (copying the shard if an older snapshot shares it); the value it replaced.
    pub(crate) fn insert(&mut self, id: Arc<str>, app: V) -> Option<V> {
        let old = Arc::make_mut(&mut self.shards[shard_of(&id)]).insert(id, app);
        self.len += usize::from(old.is_none());
        old
    }

    /// Removes (copying the shard if shared and the id is there).
    pub(crate) fn remove(&mut self, id: &str) -> Option<V> {
        let shard = &mut self.shards[shard_of(id)];
        if !shard.contains_key(id) {
            return None;
        }
        let old = Arc::make_mut(shard).remove(id);
        self.len -= usize::from(old.is_some());
        old
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &Arc<str>> {
        self.shards.iter().flat_map(|s| s.keys())
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|s| s.values())
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many shards `self` and `other` share (what a change did not copy).
    pub(crate) fn shared_with(&self, other: &CowMap<V>) -> usize {
        self.shards
            .iter()
            .zip(other.shards.iter())
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count()
    }
}
