//! The `Store` conformance suite (issue 19 §8) on both backends: each check runs once on the
//! embedded redb file and once on a real etcd (Debian's `etcd-server`, on loopback).
//! `cargo test store_conformance` runs both; `cargo test etcd` the etcd half and the tests of
//! what only etcd does (compaction, an unreachable cluster).

use gatehouse_store::{Embedded, Etcd, EtcdOptions, Store, StoreError};
use gatehouse_tests::etcd::EtcdCluster;
use gatehouse_tests::store_conformance as check;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

async fn etcd_store(cluster: &EtcdCluster, prefix: &str) -> Etcd {
    Etcd::connect(EtcdOptions {
        endpoints: cluster.endpoints(),
        prefix: prefix.into(),
        tls: None,
        timeout: Duration::from_secs(3),
    })
    .await
    .expect("connect to etcd")
}

macro_rules! on_both {
    ($($check:ident),* $(,)?) => {
        mod store_conformance_embedded {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let dir = tempfile::tempdir().unwrap();
                    let s: Arc<dyn Store> =
                        Arc::new(Embedded::open(&dir.path().join("state.redb")).unwrap());
                    run!($check, s);
                }
            )*
        }
        mod store_conformance_etcd {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    let cluster = EtcdCluster::single();
                    let s: Arc<dyn Store> = Arc::new(etcd_store(&cluster, "gatehouse/").await);
                    run!($check, s);
                }
            )*
        }
    };
}

macro_rules! run {
    (concurrent_creators_one_winner, $s:expr) => {
        check::concurrent_creators_one_winner($s).await
    };
    ($check:ident, $s:expr) => {
        check::$check(&*$s).await
    };
}

on_both!(
    put_get_delete,
    compare_and_swap,
    compare_and_delete,
    concurrent_creators_one_winner,
    list_by_prefix_in_key_order,
    values_are_bytes,
    bad_keys_are_refused,
    watch_follows_a_snapshot,
    a_slow_watcher_converges,
    locks_are_exclusive_and_fence_writes,
);

/// Issue 19 test 3 at the store: a holder that stops keeping its lock alive (a paused or
/// partitioned node) loses it when its lease runs out; another takes it, and the first
/// holder's fenced publish is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_a_paused_lock_holder_cannot_publish() {
    let cluster = EtcdCluster::single();
    let s = etcd_store(&cluster, "gatehouse/").await;
    let a = s
        .try_lock("renew/web", "node-a", Duration::from_secs(2))
        .await
        .unwrap()
        .unwrap();
    let fence = a.fence.clone();
    // While the holder keeps its lease alive, the lock outlives its TTL.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(s
        .try_lock("renew/web", "node-b", Duration::from_secs(2))
        .await
        .unwrap()
        .is_err());
    a.abandon();
    let started = std::time::Instant::now();
    let b = check::lock_within(&s, "renew/web", "node-b", Duration::from_secs(15)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "taken only once the lease ran out"
    );
    assert_eq!(
        s.compare_and_swap_fenced(&fence, "certs/web", 0, b"late")
            .await
            .unwrap(),
        gatehouse_store::Fenced::LockLost
    );
    assert!(s.get("certs/web").await.unwrap().is_none());
    assert!(matches!(
        s.compare_and_swap_fenced(&b.fence, "certs/web", 0, b"b")
            .await
            .unwrap(),
        gatehouse_store::Fenced::Written(_)
    ));
}

/// A watcher whose history etcd compacted away re-lists and receives the difference: the
/// changes made while it lagged arrive (collapsed to their latest state), none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watch_resyncs_after_compaction() {
    let cluster = EtcdCluster::single();
    let s = etcd_store(&cluster, "gatehouse/").await;
    s.put("certs/kept", b"0").await.unwrap();
    s.put("certs/gone", b"0").await.unwrap();
    // The snapshot a lagging watcher holds, and the revision it would resume after.
    let snapshot = s.list("certs/").await.unwrap();
    let revision = snapshot.iter().map(|(_, v)| v.version).max().unwrap();
    for i in 0..50 {
        s.put("certs/kept", format!("{i}").as_bytes())
            .await
            .unwrap();
    }
    s.put("certs/new", b"n").await.unwrap();
    s.delete("certs/gone").await.unwrap();
    let now = s.put("other/x", b"x").await.unwrap();
    cluster.etcdctl(&["compact", &now.to_string()]);

    let mut w = s.watch_after("certs/", &snapshot, revision);
    let seen: BTreeMap<String, Vec<u8>> = snapshot.into_iter().map(|(k, v)| (k, v.value)).collect();
    check::converges(&s, "certs/", &mut w, seen).await;
    // After the resync it follows live changes again.
    s.put("certs/after", b"a").await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.key(), "certs/after");
}

/// A watcher whose etcd goes away and comes back catches up on what changed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watch_survives_a_restart_of_etcd() {
    let mut cluster = EtcdCluster::single();
    let s = etcd_store(&cluster, "gatehouse/").await;
    s.put("routes/a", b"1").await.unwrap();
    let (snapshot, mut w) = s.watch("routes/").await.unwrap();
    let seen: BTreeMap<String, Vec<u8>> = snapshot.into_iter().map(|(k, v)| (k, v.value)).collect();
    cluster.members[0].stop();
    std::thread::sleep(Duration::from_millis(500));
    cluster.members[0].restart();
    cluster.wait_healthy(Duration::from_secs(30));
    s.put("routes/b", b"2").await.unwrap();
    s.delete("routes/a").await.unwrap();
    check::converges(&s, "routes/", &mut w, seen).await;
}

/// Two stores on one etcd with different prefixes never see each other's keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_prefixes_keep_tenants_apart() {
    let cluster = EtcdCluster::single();
    let a = etcd_store(&cluster, "gatehouse/a/").await;
    let b = etcd_store(&cluster, "gatehouse/b/").await;
    a.put("certs/x", b"a").await.unwrap();
    assert!(b.get("certs/x").await.unwrap().is_none());
    assert!(b.list("").await.unwrap().is_empty());
    let out = cluster.etcdctl(&["get", "--prefix", "--keys-only", "gatehouse/"]);
    assert!(out.contains("gatehouse/a/certs/x"), "{out}");
}

/// An etcd that is not there: connecting fails within its deadline naming the endpoints, and
/// a store whose etcd stopped answers `Unavailable` instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_unreachable_is_unavailable_not_a_hang() {
    let port = gatehouse_tests::knot::free_port();
    let started = std::time::Instant::now();
    let err = Etcd::connect(EtcdOptions {
        endpoints: vec![format!("http://127.0.0.1:{port}")],
        prefix: "gatehouse/".into(),
        tls: None,
        timeout: Duration::from_secs(1),
    })
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains(&port.to_string()), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));

    let mut cluster = EtcdCluster::single();
    let s = etcd_store(&cluster, "gatehouse/").await;
    s.put("acme/account", b"a").await.unwrap();
    cluster.members[0].stop();
    let started = std::time::Instant::now();
    let err = s.put("acme/account", b"b").await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded by the deadline"
    );
}

/// A prefix that would mix with others is refused at connect, by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_prefix_must_be_a_directory() {
    for bad in ["gatehouse", "/gatehouse/"] {
        let err = Etcd::connect(EtcdOptions {
            endpoints: vec!["http://127.0.0.1:1".into()],
            prefix: bad.into(),
            tls: None,
            timeout: Duration::from_secs(1),
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("prefix"), "{bad}: {err}");
    }
}
