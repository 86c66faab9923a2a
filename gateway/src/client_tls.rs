//! The TLS client configuration of the gateway's outbound checks (`gatehouse verify`, DNS over
//! TLS): a private CA's roots when one is given, else the platform's verifier.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::path::Path;
use std::sync::Arc;

/// A client config trusting the PEM certificates in `ca_file`, or the platform's roots (full
/// WebPKI validation) when `None`. Errors name the file.
pub fn config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    Ok(match ca_file {
        Some(path) => {
            let shown = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(path).map_err(|e| shown(&e))? {
                roots
                    .add(c.map_err(|e| shown(&e))?)
                    .map_err(|e| shown(&e))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => {
            let v = rustls_platform_verifier::Verifier::new(provider).map_err(|e| e.to_string())?;
            builder
                .dangerous() // not dangerous: the platform verifier does full WebPKI validation
                .with_custom_certificate_verifier(Arc::new(v))
                .with_no_client_auth()
        }
    })
}
