//! Shared set-up of the ACME end-to-end tests: apps, a verifying client, the gateway's
//! config against Pebble and Knot.

use crate::knot::Knot;
use crate::pebble::Pebble;
use crate::{Gateway, SIMULATED_TEE};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A loopback server running `handle` on a thread per connection.
pub fn serve_each(handle: fn(TcpStream)) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || handle(s));
        }
    });
    addr
}

/// A TCP echo app (for the long-lived connection).
pub fn echo_app() -> SocketAddr {
    serve_each(|s| {
        let mut r = s.try_clone().unwrap();
        let mut w = s;
        let _ = std::io::copy(&mut r, &mut w);
    })
}

pub fn client(root_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// A verified TLS connection to `sni` through the gateway; returns it and the leaf.
pub fn connect(
    gw: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> (
    rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    CertificateDer<'static>,
) {
    let tcp = TcpStream::connect(gw).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let conn = rustls::ClientConnection::new(config, ServerName::try_from(sni.to_owned()).unwrap())
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn
            .complete_io(&mut tls.sock)
            .expect("verified TLS handshake");
    }
    let leaf = tls.conn.peer_certificates().unwrap()[0]
        .clone()
        .into_owned();
    (tls, leaf)
}

/// Whether a verified TLS handshake for `sni` completes through the gateway.
pub fn handshake_ok(gw: SocketAddr, sni: &str, config: Arc<rustls::ClientConfig>) -> bool {
    let Ok(tcp) = TcpStream::connect(gw) else {
        return false;
    };
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let conn = rustls::ClientConnection::new(config, ServerName::try_from(sni.to_owned()).unwrap())
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        if tls.conn.complete_io(&mut tls.sock).is_err() {
            return false;
        }
    }
    true
}

/// `[[apps]]` for app `id` with one loopback instance on `port`.
pub fn one_app(id: &str, port: u16) -> String {
    format!("[[apps]]\nid = \"{id}\"\ndefault_port = {port}\n[[apps.instances]]\naddress = \"127.0.0.1\"\n")
}

/// One listener (`port` 0: any), base domain `gw.test`, admin on loopback.
pub fn proxy_head(port: u16) -> String {
    format!(
        r#"
[proxy]
listen = ["127.0.0.1:{port}"]
base_domains = ["gw.test"]
allow_local_instances = true
workers = 1
[proxy.custom_domains]
enabled = false
[admin]
listen = "127.0.0.1:0"
insecure_no_auth = true
{SIMULATED_TEE}"#
    )
}

pub fn acme_config(
    pebble: &Pebble,
    knot: &Knot,
    key_file: &Path,
    apps: &str,
    extra_acme: &str,
) -> String {
    format!(
        r#"{head}
{apps}
[acme]
directory = "{dir}"
ca_file = "{ca}"
{extra_acme}
[dns]
provider = "rfc2136"
resolvers = ["{knot}"]
authoritative = ["{knot}"]
propagation_timeout = "10s"
[dns.rfc2136]
server = "{knot}"
zones = ["test"]
key_name = "gatehouse-update"
key_file = "{key}"
[store]
path = "state"
"#,
        head = proxy_head(0),
        dir = pebble.directory,
        ca = pebble.api_ca.display(),
        knot = knot.addr,
        key = key_file.display(),
    )
}

/// A gateway ordering `domains` (a TOML list's inside) by TLS-ALPN-01 for the app `shop` on
/// `app_port` (no DNS provider), its TLS listener on `port` (0: any); `extra_acme` adds lines
/// to `[acme]`, and more sections may follow the returned text.
pub fn alpn_config(
    pebble: &Pebble,
    knot: &Knot,
    port: u16,
    app_port: u16,
    domains: &str,
    extra_acme: &str,
) -> String {
    format!(
        r#"{head}
[[apps]]
id = "shop"
default_port = {app_port}
[[apps.instances]]
address = "127.0.0.1"
[acme]
directory = "{dir}"
ca_file = "{ca}"
base_domains = false
domains = [{domains}]
caa_resolvers = ["{knot}"]
{extra_acme}
"#,
        head = proxy_head(port),
        dir = pebble.directory,
        ca = pebble.api_ca.display(),
        knot = knot.addr,
    )
}

pub fn wait_metric(gw: &Gateway, series: &str, at_least: u64, limit: Duration) -> u64 {
    let deadline = Instant::now() + limit;
    loop {
        let v = gw.metric(series);
        if v >= at_least {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{series} stayed at {v}:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
