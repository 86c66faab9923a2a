//! The terminating path: rustls (aws-lc-rs) with certificates chosen by SNI and ALPN chosen by
//! the route's mode and what the client offered.

pub mod certs;

use crate::hello::ClientHello;
use crate::route::Mode;
use certs::CertResolver;
use rustls::server::{
    NoServerSessionStorage, ServerConfig, ServerSessionMemoryCache, StoresServerSessions,
};
use std::sync::Arc;

/// Resumption cache entries shared by every config (about 150 bytes each).
const SESSION_CACHE: usize = 16 * 1024;

/// The server configs, one per ALPN offer, sharing the resolver, tickets and session cache.
///
/// rustls fails a handshake whose client ALPN list has no overlap with ours, so we pick the
/// config by what the client offered: a tcp-mode app reached with ALPN `ssh` or none still
/// gets a handshake.
#[derive(Debug, Clone)]
pub struct TlsConfigs {
    /// No ALPN.
    none: Arc<ServerConfig>,
    /// `http/1.1`.
    pub(crate) h1: Arc<ServerConfig>,
    /// `h2`, `http/1.1`.
    h2: Arc<ServerConfig>,
    /// `gatehouse-attest/1`: the attestation bundle over the name's own certificate.
    pub attest: Arc<ServerConfig>,
    /// The live certificates.
    pub resolver: Arc<CertResolver>,
}

impl TlsConfigs {
    /// Builds the configs over `resolver`: TLS 1.3 and 1.2, aws-lc-rs; with `resumption`,
    /// stateless tickets with rotating keys plus a stateful cache.
    pub fn new(resolver: Arc<CertResolver>, resumption: bool) -> Result<TlsConfigs, rustls::Error> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
        let cache: Arc<dyn StoresServerSessions> = match resumption {
            true => ServerSessionMemoryCache::new(SESSION_CACHE),
            false => Arc::new(NoServerSessionStorage {}),
        };
        let build = |alpn: &[&[u8]]| -> Result<Arc<ServerConfig>, rustls::Error> {
            let mut c = ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
                .with_no_client_auth()
                .with_cert_resolver(resolver.clone());
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            if resumption {
                c.ticketer = ticketer.clone();
            } else {
                c.send_tls13_tickets = 0;
            }
            c.session_storage = cache.clone();
            Ok(Arc::new(c))
        };
        Ok(TlsConfigs {
            none: build(&[])?,
            h1: build(&[b"http/1.1"])?,
            h2: build(&[b"h2", b"http/1.1"])?,
            attest: build(&[crate::attestation::ATTEST_ALPN])?,
            resolver,
        })
    }

    /// The config for a route's mode and the client's ALPN offer.
    pub fn for_hello(&self, mode: Mode, hello: &ClientHello) -> Arc<ServerConfig> {
        let h1 = hello.offers(b"http/1.1");
        match mode {
            Mode::TerminateH2 if h1 || hello.offers(b"h2") => self.h2.clone(),
            _ if h1 => self.h1.clone(),
            _ => self.none.clone(),
        }
    }
}
