//! What every [`Store`] backend must do, as checks over `&dyn Store`. `tests/store_conformance.rs`
//! runs each on the embedded (redb) backend and on a real etcd.

use gatehouse_store::{Event, Fenced, Lock, Store, StoreError, Versioned};
use std::collections::BTreeMap;
use std::time::Duration;

/// Absent, written, rewritten, deleted, re-created: versions only grow, never reused.
pub async fn put_get_delete(s: &dyn Store) {
    assert_eq!(s.get("acme/account").await.unwrap(), None);
    let v1 = s.put("acme/account", b"a").await.unwrap();
    assert!(v1 > 0, "a written key has a version");
    let v2 = s.put("acme/account", b"b").await.unwrap();
    assert!(v2 > v1, "each write raises the version");
    assert_eq!(
        s.get("acme/account").await.unwrap(),
        Some(Versioned {
            value: b"b".to_vec(),
            version: v2
        })
    );
    assert!(s.delete("acme/account").await.unwrap());
    assert!(!s.delete("acme/account").await.unwrap(), "already gone");
    assert_eq!(s.get("acme/account").await.unwrap(), None);
    let v3 = s.put("acme/account", b"c").await.unwrap();
    assert!(
        v3 > v2,
        "a re-created key never gets a version seen before (no ABA for compare-and-swap)"
    );
}

/// Compare-and-swap: the first creator wins, a stale writer loses and learns the current value.
pub async fn compare_and_swap(s: &dyn Store) {
    let k = "leases/10.0.0.2";
    let v1 = s
        .compare_and_swap(k, 0, b"wg-key-1")
        .await
        .unwrap()
        .unwrap();
    let lost = s.compare_and_swap(k, 0, b"wg-key-2").await.unwrap();
    assert_eq!(
        lost,
        Err(Some(Versioned {
            value: b"wg-key-1".to_vec(),
            version: v1
        })),
        "a second creator loses"
    );
    let v2 = s
        .compare_and_swap(k, v1, b"wg-key-1b")
        .await
        .unwrap()
        .unwrap();
    assert!(v2 > v1);
    let stale = s.compare_and_swap(k, v1, b"stale").await.unwrap();
    assert!(
        matches!(stale, Err(Some(ref c)) if c.version == v2),
        "{stale:?}"
    );
    assert_eq!(s.get(k).await.unwrap().unwrap().value, b"wg-key-1b");
    assert_eq!(
        s.compare_and_swap("leases/absent", v2, b"x").await.unwrap(),
        Err(None),
        "a key that is not there is not at any version"
    );
    // After a delete and re-create, the version seen before the delete is stale.
    s.delete(k).await.unwrap();
    let v3 = s.put(k, b"again").await.unwrap();
    assert!(s.compare_and_swap(k, v2, b"aba").await.unwrap().is_err());
    assert!(s.compare_and_swap(k, v3, b"ok").await.unwrap().is_ok());
}

/// A delete conditioned on the version a reader saw does nothing once someone wrote since.
pub async fn compare_and_delete(s: &dyn Store) {
    let k = "leases/10.0.0.3";
    let v1 = s.put(k, b"a").await.unwrap();
    let v2 = s.put(k, b"b").await.unwrap();
    assert!(!s.compare_and_delete(k, v1).await.unwrap());
    assert_eq!(s.get(k).await.unwrap().unwrap().value, b"b");
    assert!(s.compare_and_delete(k, v2).await.unwrap());
    assert!(s.get(k).await.unwrap().is_none());
    assert!(!s.compare_and_delete(k, v2).await.unwrap());
    assert!(!s.compare_and_delete(k, 0).await.unwrap());
}

/// Sixteen concurrent creators of one key: exactly one wins.
pub async fn concurrent_creators_one_winner(s: std::sync::Arc<dyn Store>) {
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.compare_and_swap("acme/lock", 0, format!("{i}").as_bytes())
                    .await
                    .unwrap()
                    .is_ok()
            })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        winners += usize::from(t.await.unwrap());
    }
    assert_eq!(winners, 1);
}

/// A listing holds exactly the keys under the prefix, in key order, across many pages.
pub async fn list_by_prefix_in_key_order(s: &dyn Store) {
    for k in ["certs/b.test", "certs/a.test", "certsx/no", "acme/account"] {
        s.put(k, k.as_bytes()).await.unwrap();
    }
    let keys: Vec<String> = s
        .list("certs/")
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, vec!["certs/a.test", "certs/b.test"]);
    assert_eq!(s.list("").await.unwrap().len(), 4);
    assert!(s.list("nothing/").await.unwrap().is_empty());
    // More keys than one page of a backend that pages (etcd reads 500 at a time).
    for i in 0..520 {
        s.put(&format!("many/{i:04}"), &[i as u8]).await.unwrap();
    }
    let many = s.list("many/").await.unwrap();
    assert_eq!(many.len(), 520);
    assert!(many.windows(2).all(|w| w[0].0 < w[1].0), "in key order");
    assert_eq!(many[519].1.value, vec![(519 % 256) as u8]);
}

/// Values are bytes: empty, binary and large values come back as written.
pub async fn values_are_bytes(s: &dyn Store) {
    let binary: Vec<u8> = (0..=255).collect();
    let large = vec![0xa5u8; 256 * 1024];
    for (k, v) in [
        ("v/empty", &[][..]),
        ("v/binary", &binary),
        ("v/large", &large),
    ] {
        s.put(k, v).await.unwrap();
        assert_eq!(s.get(k).await.unwrap().unwrap().value, v, "{k}");
    }
}

/// Keys that are not `/`-separated non-empty segments are refused by name.
pub async fn bad_keys_are_refused(s: &dyn Store) {
    for k in ["", "/a", "a/", "a//b"] {
        assert!(
            matches!(s.put(k, b"x").await, Err(StoreError::InvalidKey { .. })),
            "put {k:?}"
        );
        assert!(
            matches!(s.get(k).await, Err(StoreError::InvalidKey { .. })),
            "get {k:?}"
        );
    }
}

/// A watch starts from a snapshot and then sees every later change under its prefix, in
/// order, once, and nothing from elsewhere.
pub async fn watch_follows_a_snapshot(s: &dyn Store) {
    s.put("certs/before", b"0").await.unwrap();
    let (snapshot, mut w) = s.watch("certs/").await.unwrap();
    assert_eq!(snapshot.len(), 1);
    assert_eq!(snapshot[0].0, "certs/before");
    s.put("acme/account", b"ignored").await.unwrap();
    let v1 = s.put("certs/a", b"1").await.unwrap();
    let v2 = s.put("certs/a", b"2").await.unwrap();
    s.delete("certs/a").await.unwrap();
    s.delete("certs/before").await.unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(next(&mut w).await);
    }
    let put = |value: &[u8], version| Event::Put {
        key: "certs/a".into(),
        value: Versioned {
            value: value.to_vec(),
            version,
        },
    };
    assert_eq!(
        got,
        vec![
            put(b"1", v1),
            put(b"2", v2),
            Event::Delete {
                key: "certs/a".into()
            },
            Event::Delete {
                key: "certs/before".into()
            },
        ]
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), w.next())
            .await
            .is_err(),
        "nothing more, nothing repeated"
    );
}

/// A watcher that reads nothing while hundreds of changes land still ends at the store's
/// state, however the backend caught it up.
pub async fn a_slow_watcher_converges(s: &dyn Store) {
    let (_, mut w) = s.watch("k/").await.unwrap();
    for i in 0..600 {
        s.put(&format!("k/{}", i % 40), format!("{i}").as_bytes())
            .await
            .unwrap();
    }
    for i in 0..10 {
        s.delete(&format!("k/{i}")).await.unwrap();
    }
    converges(s, "k/", &mut w, BTreeMap::new()).await;
}

/// A lock has one holder at a time, per name; a holder's writes are fenced: once it released
/// the lock (or lost it), a write through its old fence changes nothing.
pub async fn locks_are_exclusive_and_fence_writes(s: &dyn Store) {
    let ttl = Duration::from_secs(5);
    let a = s
        .try_lock("renew/web", "node-a", ttl)
        .await
        .unwrap()
        .unwrap();
    let refused = s.try_lock("renew/web", "node-b", ttl).await.unwrap();
    assert_eq!(
        refused.unwrap_err(),
        "node-a",
        "the refusal names the holder"
    );
    let _api = s
        .try_lock("renew/api", "node-b", ttl)
        .await
        .unwrap()
        .expect("another name is another lock");
    let Fenced::Written(v1) = s
        .compare_and_swap_fenced(&a.fence, "certs/web", 0, b"by a")
        .await
        .unwrap()
    else {
        panic!("the holder writes")
    };
    assert!(
        matches!(
            s.compare_and_swap_fenced(&a.fence, "certs/web", 0, b"x").await.unwrap(),
            Fenced::Changed(Some(ref c)) if c.version == v1
        ),
        "a stale expected version is refused as in compare_and_swap"
    );
    let old = a.fence.clone();
    drop(a);
    let b = lock_within(s, "renew/web", "node-b", Duration::from_secs(10)).await;
    assert_eq!(
        s.compare_and_swap_fenced(&old, "certs/web", v1, b"late a")
            .await
            .unwrap(),
        Fenced::LockLost,
        "a released lock's fence writes nothing"
    );
    assert_eq!(s.get("certs/web").await.unwrap().unwrap().value, b"by a");
    assert!(matches!(
        s.compare_and_swap_fenced(&b.fence, "certs/web", v1, b"by b")
            .await
            .unwrap(),
        Fenced::Written(_)
    ));
}

/// Tries `name` until it is free (a released etcd lock goes when its lease is revoked).
pub async fn lock_within(s: &dyn Store, name: &str, holder: &str, limit: Duration) -> Lock {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match s
            .try_lock(name, holder, Duration::from_secs(5))
            .await
            .unwrap()
        {
            Ok(lock) => return lock,
            Err(theirs) => assert!(
                std::time::Instant::now() < deadline,
                "{name} still held by {theirs} after {limit:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads `w` until what it reported, applied to `seen`, equals a listing of `prefix`.
pub async fn converges(
    s: &dyn Store,
    prefix: &str,
    w: &mut gatehouse_store::Watch,
    mut seen: BTreeMap<String, Vec<u8>>,
) {
    let want: BTreeMap<String, Vec<u8>> = s
        .list(prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.value))
        .collect();
    while seen != want {
        match next(w).await {
            Event::Put { key, value } => seen.insert(key, value.value),
            Event::Delete { key } => seen.remove(&key),
        };
    }
}

async fn next(w: &mut gatehouse_store::Watch) -> Event {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("a change within 10 s")
        .expect("the watch is open")
}
