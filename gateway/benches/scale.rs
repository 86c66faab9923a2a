//! Scale (issue 22): the route table with 100k apps, the custom-domain cache with 1M domains,
//! the certificate resolver with 10k certificates. Time per operation, and (divan's allocation
//! profiler) the bytes allocated, which for a build or a fill is what the structure holds.
//! Run: `cargo bench -p gatehouse --bench scale`.

use divan::{black_box, AllocProfiler, Bencher};
use gatehouse::route::custom_domain::{BoxFuture, CustomDomains, TxtAnswer, TxtError, TxtLookup};
use gatehouse::route::{AppSpec, RouteTable, Routes};
use gatehouse::terminate::certs::{CertResolver, CertSet};
use rustls::sign::CertifiedKey;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

#[global_allocator]
static ALLOC: AllocProfiler = AllocProfiler::system();

mod common;
use common::certified_key;

fn main() {
    divan::main();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn spec(i: usize) -> AppSpec {
    AppSpec::new(
        format!("app{i:07x}"),
        80,
        vec![IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8])],
    )
}

const BASES: [&str; 1] = ["gw.example.com"];

fn bases() -> Vec<String> {
    BASES.iter().map(|b| b.to_string()).collect()
}

/// A whole table of `apps` apps (one instance each): bytes allocated / apps ≈ memory per app.
#[divan::bench(args = [100_000], sample_count = 5, sample_size = 1)]
fn route_table_build(bencher: Bencher, apps: usize) {
    bencher
        .with_inputs(|| (0..apps).map(spec).collect::<Vec<_>>())
        .bench_values(|specs| RouteTable::build(&bases(), specs, None).unwrap());
}

/// One app changes (an instance moves) among `apps` created through the admin API, published
/// as the control plane publishes a store event on an app's key (`Routes::upsert_api_app`).
#[divan::bench(args = [1_000, 100_000], sample_count = 50, sample_size = 1)]
fn route_upsert_one_app(bencher: Bencher, apps: usize) {
    let runtime = runtime();
    let _guard = runtime.enter();
    let routes = Routes::new(bases(), Vec::new(), custom_domains(runtime.handle())).unwrap();
    routes.set_api_apps((0..apps).map(spec).collect()).unwrap();
    let mut n = 0u8;
    bencher
        .with_inputs(|| {
            n = n.wrapping_add(1);
            let mut changed = spec(apps / 2);
            changed.instances = vec![IpAddr::from([192, 168, 0, n])];
            changed
        })
        .bench_local_values(|changed| routes.upsert_api_app(changed).unwrap());
}

/// The same change handed over as the whole list (`Routes::set_api_apps`: what a resync of
/// the store costs; the list is compared, only the changed app rebuilt).
#[divan::bench(args = [1_000, 100_000], sample_count = 10, sample_size = 1)]
fn route_change_one_app_in_full_list(bencher: Bencher, apps: usize) {
    let runtime = runtime();
    let _guard = runtime.enter();
    let routes = Routes::new(bases(), Vec::new(), custom_domains(runtime.handle())).unwrap();
    let mut specs: Vec<AppSpec> = (0..apps).map(spec).collect();
    routes.set_api_apps(specs.clone()).unwrap();
    let mut n = 0u8;
    bencher
        .with_inputs(|| {
            n = n.wrapping_add(1);
            specs[apps / 2].instances = vec![IpAddr::from([192, 168, 0, n])];
            specs.clone()
        })
        .bench_local_values(|specs| routes.set_api_apps(specs).unwrap());
}

/// Answers every TXT lookup at once with the same target.
#[derive(Debug)]
struct Instant;

impl TxtLookup for Instant {
    fn lookup_txt(&self, _name: String) -> BoxFuture<Result<TxtAnswer, TxtError>> {
        Box::pin(async {
            Ok(TxtAnswer {
                records: vec!["app0000001:443".into()],
                ttl: Duration::from_secs(3600),
            })
        })
    }
}

fn custom_domains(runtime: &tokio::runtime::Handle) -> CustomDomains {
    let config = gatehouse_config::CustomDomainsConfig {
        cache_capacity: 2_000_000,
        max_concurrent_lookups: 100_000,
        max_lookups_per_zone: 100_000,
        ..Default::default()
    };
    CustomDomains::new(config, Arc::new(Instant), runtime.clone())
}

/// The custom-domain cache filled with `domains` distinct names: bytes allocated / domains ≈
/// memory per cached domain (moka's entry, our answer, the name).
#[divan::bench(args = [1_000_000], sample_count = 1, sample_size = 1)]
fn custom_domain_cache_fill(bencher: Bencher, domains: usize) {
    let runtime = runtime();
    bencher
        .with_inputs(|| custom_domains(runtime.handle()))
        .bench_local_values(|cache| {
            runtime.block_on(async {
                for i in 0..domains {
                    cache
                        .resolve(&format!("d{i}.customer{}.example", i % 1000))
                        .await
                        .unwrap();
                }
            });
            cache
        });
}

/// A cached custom domain among `domains`.
#[divan::bench(args = [1_000_000], sample_count = 200)]
fn custom_domain_cached_lookup(bencher: Bencher, domains: usize) {
    let runtime = runtime();
    let cache = custom_domains(runtime.handle());
    let names: Vec<String> = (0..domains)
        .map(|i| format!("d{i}.customer{}.example", i % 1000))
        .collect();
    runtime.block_on(async {
        for n in &names {
            cache.resolve(n).await.unwrap();
        }
    });
    let mut i = 0;
    bencher.bench_local(|| {
        i = (i + 7919) % domains;
        runtime
            .block_on(cache.resolve(black_box(&names[i])))
            .unwrap()
    });
}

/// `n` ACME certificates, each its own key (one name and its wildcard).
fn acme_certs(n: usize) -> Vec<(Vec<String>, Arc<CertifiedKey>)> {
    let keys: Vec<Arc<CertifiedKey>> = (0..64).map(|_| certified_key()).collect();
    (0..n)
        .map(|i| {
            let key = Arc::new(CertifiedKey::new(
                keys[i % 64].cert.clone(),
                keys[i % 64].key.clone(),
            ));
            (
                vec![format!("d{i}.example"), format!("*.d{i}.example")],
                key,
            )
        })
        .collect()
}

/// One certificate renewed among `certs`: the resolver's rebuild and publish.
#[divan::bench(args = [10_000], sample_count = 10, sample_size = 1)]
fn cert_resolver_change_one(bencher: Bencher, certs: usize) {
    let resolver = CertResolver::new(CertSet::default());
    let mut all = acme_certs(certs);
    resolver.set_acme(all.clone());
    let spare = certified_key();
    bencher
        .with_inputs(|| {
            all[certs / 2].1 = Arc::new(CertifiedKey::new(spare.cert.clone(), spare.key.clone()));
            all.clone()
        })
        .bench_local_values(|all| resolver.set_acme(all));
}

/// The chains and leaves served (CT watch, metrics, dashboard) among `certs`.
#[divan::bench(args = [10_000], sample_count = 10, sample_size = 1)]
fn cert_resolver_leaves(bencher: Bencher, certs: usize) {
    let resolver = CertResolver::new(CertSet::default());
    resolver.set_acme(acme_certs(certs));
    bencher.bench_local(|| (resolver.leaves().len(), resolver.chains().len()));
}

/// A handshake's certificate choice among `certs` (exact name, then wildcard).
#[divan::bench(args = [10_000], sample_count = 200)]
fn cert_choice(bencher: Bencher, certs: usize) {
    let mut set = CertSet::default();
    for (names, key) in acme_certs(certs) {
        set.insert(&names, key, gatehouse::terminate::certs::KeyOrigin::Sealed);
    }
    let mut i = 0;
    let names: Vec<String> = (0..certs).map(|i| format!("app.d{i}.example")).collect();
    bencher.bench_local(|| {
        i = (i + 7919) % certs;
        set.find(black_box(&names[i])).is_some()
    });
}
