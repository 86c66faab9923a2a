//! A TLS 1.3 handshake load client for the benchmark's post-quantum rows (H3): full handshakes
//! only (no resumption), each offering one key exchange group, `x25519` or `x25519mlkem768`
//! (what Chromium sends; OpenSSL 3.0's clients, wrk among them, cannot), AES-128-GCM as the
//! rest of the harness. Each connection sends one `GET /0` with `Connection: close` and reads
//! the response to its end, as `wrk -H 'Connection: close'` does.
//!
//! Usage: `tls_load <addr> <sni> <ca.pem> <group> <seconds> <concurrency>`; prints one JSON
//! line: `{"group":…,"connections":…,"errors":…,"seconds":…}`. Exits non-zero when the server
//! negotiated another group than the one offered.

use rustls::crypto::aws_lc_rs::{cipher_suite, default_provider, kx_group};
use rustls::pki_types::ServerName;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    errors: AtomicU64,
    wrong_group: AtomicU64,
}

fn client_config(ca: &str, group: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut provider = default_provider();
    provider.kx_groups = match group {
        "x25519" => vec![kx_group::X25519],
        "x25519mlkem768" => vec![kx_group::X25519MLKEM768],
        other => anyhow::bail!("group {other:?}: x25519 or x25519mlkem768"),
    };
    provider.cipher_suites = vec![cipher_suite::TLS13_AES_128_GCM_SHA256];
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

async fn one(
    connector: &tokio_rustls::TlsConnector,
    addr: &str,
    sni: &ServerName<'static>,
    request: &[u8],
    group: rustls::NamedGroup,
    counts: &Counts,
) -> std::io::Result<()> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut tls = connector.connect(sni.clone(), tcp).await?;
    if tls
        .get_ref()
        .1
        .negotiated_key_exchange_group()
        .map(|g| g.name())
        != Some(group)
    {
        counts.wrong_group.fetch_add(1, Ordering::Relaxed);
    }
    tls.write_all(request).await?;
    let mut sink = Vec::new();
    tls.read_to_end(&mut sink).await?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, sni, ca, group, seconds, concurrency] = args.as_slice() else {
        anyhow::bail!("usage: tls_load <addr> <sni> <ca.pem> <group> <seconds> <concurrency>");
    };
    let config = client_config(ca, group)?;
    let named = config.crypto_provider().kx_groups[0].name();
    let connector = tokio_rustls::TlsConnector::from(config);
    let server_name = ServerName::try_from(sni.clone())?;
    let request = format!("GET /0 HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n");
    let until = Instant::now() + Duration::from_secs_f64(seconds.parse()?);
    let concurrency: usize = concurrency.parse()?;
    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            let (connector, addr, sni, request, counts) = (
                connector.clone(),
                addr.clone(),
                server_name.clone(),
                request.clone(),
                counts.clone(),
            );
            tasks.spawn(async move {
                while Instant::now() < until {
                    match one(&connector, &addr, &sni, request.as_bytes(), named, &counts).await {
                        Ok(()) => counts.ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => counts.errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    });
    let wrong = counts.wrong_group.load(Ordering::Relaxed);
    println!(
        "{{\"group\":\"{group}\",\"connections\":{},\"errors\":{},\"seconds\":{:.3}}}",
        counts.ok.load(Ordering::Relaxed),
        counts.errors.load(Ordering::Relaxed) + wrong,
        started.elapsed().as_secs_f64()
    );
    anyhow::ensure!(
        wrong == 0,
        "{wrong} connections negotiated another group than {group}"
    );
    Ok(())
}
