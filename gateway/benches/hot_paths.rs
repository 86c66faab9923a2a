//! Micro-benchmarks of the per-connection hot pieces (divan): ClientHello reassembly and parse,
//! route lookup against tables of 10, 10k and 1M apps (must stay flat), certificate choice.
//! Run: `cargo bench -p gatehouse --bench hot_paths`.

use divan::{black_box, Bencher};
use gatehouse::hello::{parse, record};
use gatehouse::route::{AppSpec, RouteTable};
use gatehouse::terminate::certs::{CertSet, KeyOrigin};

mod common;

fn main() {
    divan::main();
}

fn hello_bytes(padding: usize, record_size: usize) -> Vec<u8> {
    let m = parse::build::client_hello(
        Some("web-8080.gw.example.com"),
        &["h2", "http/1.1"],
        padding,
    );
    parse::build::records(&m, record_size)
}

/// A typical 512-byte hello in one record, and a post-quantum sized 1.8 KB one split in two.
#[divan::bench(args = [(300, 16_384), (1_700, 1_000)])]
fn client_hello(bencher: Bencher, (padding, record_size): (usize, usize)) {
    let raw = hello_bytes(padding, record_size);
    bencher.bench(|| {
        let message = record::reassemble(black_box(&raw)).unwrap().unwrap();
        parse::parse(&message).unwrap()
    });
}

fn table(apps: usize) -> RouteTable {
    let specs = (0..apps)
        .map(|i| {
            AppSpec::new(
                format!("app{i:07x}"),
                80,
                vec![std::net::IpAddr::from([10, 0, (i >> 8) as u8, i as u8])],
            )
        })
        .collect();
    RouteTable::build(
        &["gw.example.com".into(), "apps.example.org".into()],
        specs,
        None,
    )
    .unwrap()
}

/// Route lookup by SNI: must not grow with the number of apps.
#[divan::bench(args = [10, 10_000, 1_000_000], sample_count = 200)]
fn route_lookup(bencher: Bencher, apps: usize) {
    let t = table(apps);
    let names: Vec<String> = (0..64)
        .map(|i| format!("app{:07x}-80.gw.example.com", (i * 7919) % apps))
        .collect();
    let mut i = 0;
    bencher.bench_local(|| {
        i = (i + 1) % names.len();
        t.route_name(black_box(&names[i])).unwrap().unwrap()
    });
}

/// Certificate choice: exact hit, wildcard hit, miss, among 1,000 certificates.
#[divan::bench(args = ["exact", "wildcard", "miss"])]
fn certificate_choice(bencher: Bencher, kind: &str) {
    let ck = common::certified_key();
    let mut set = CertSet::default();
    for i in 0..500 {
        set.insert(
            &[format!("exact{i}.gw.test")],
            ck.clone(),
            KeyOrigin::Generated,
        );
        set.insert(
            &[format!("*.zone{i}.gw.test")],
            ck.clone(),
            KeyOrigin::Generated,
        );
    }
    let name = match kind {
        "exact" => "exact250.gw.test",
        "wildcard" => "app.zone250.gw.test",
        _ => "nothing.elsewhere.test",
    };
    bencher.bench(|| set.find(black_box(name)).is_some());
}
