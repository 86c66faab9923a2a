//! A test CA (rcgen) that issues certificates, writes PEM files, and makes rustls clients.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A CA for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate.
    pub cert: CertificateDer<'static>,
    /// Its PEM.
    pub pem: String,
}

/// A certificate and key issued by a [`TestCa`].
pub struct Issued {
    /// Leaf.
    pub cert: CertificateDer<'static>,
    /// Key.
    pub key: PrivateKeyDer<'static>,
    /// PEM of the leaf.
    pub cert_pem: String,
    /// PEM of the key.
    pub key_pem: String,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    /// A fresh CA.
    pub fn new() -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "gatehouse test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Issues a leaf for `names`.
    pub fn issue(&self, names: &[&str]) -> Issued {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert: cert.der().clone(),
            key: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Issues a leaf for `names` and writes `<stem>.pem` / `<stem>.key` in `dir`; returns the
    /// TOML line for `[tls] certificates`.
    pub fn write(&self, dir: &Path, stem: &str, names: &[&str]) -> String {
        let issued = self.issue(names);
        let (c, k): (PathBuf, PathBuf) = (
            dir.join(format!("{stem}.pem")),
            dir.join(format!("{stem}.key")),
        );
        std::fs::write(&c, &issued.cert_pem).unwrap();
        std::fs::write(&k, &issued.key_pem).unwrap();
        format!(
            "{{ cert = {:?}, key = {:?} }}",
            c.display().to_string(),
            k.display().to_string()
        )
    }

    /// A rustls client config trusting this CA, offering `alpn`.
    pub fn client(&self, alpn: &[&str]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
        let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(c)
    }

    /// A rustls server config with one certificate.
    pub fn server(&self, issued: &Issued) -> Arc<rustls::ServerConfig> {
        let c = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![issued.cert.clone()], issued.key.clone_key())
        .unwrap();
        Arc::new(c)
    }
}

/// Connects with TLS to `addr` presenting `sni`.
pub async fn tls_connect(
    addr: std::net::SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name =
        ServerName::try_from(sni.to_owned()).map_err(|e| std::io::Error::other(e.to_string()))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// Like [`tls_connect`], from the loopback address `source` (e.g. 127.0.0.2: another client).
pub async fn tls_connect_from(
    source: [u8; 4],
    addr: std::net::SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = crate::servers::connect_from(source, addr).await?;
    let name =
        ServerName::try_from(sni.to_owned()).map_err(|e| std::io::Error::other(e.to_string()))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// The DNS names of the leaf a TLS client received.
pub fn peer_names(conn: &rustls::ClientConnection) -> Vec<String> {
    let leaf = &conn.peer_certificates().expect("peer certificate")[0];
    gatehouse::terminate::certs::dns_names(leaf).unwrap()
}
