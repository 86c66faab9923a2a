//! The local development CA of the embedded defaults, kept in the state directory.
//!
//! Created once (`dev-ca.pem` to trust, `dev-ca.key` readable by the owner only), then reused
//! so a user trusts it once. Serving certificates are issued from it in memory at each start.
//! Development only: production keys come from ACME and are sealed (see the certbot crate).

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};

/// Why the development CA could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum DevCaError {
    /// Reading or writing the state directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Generating or parsing a certificate failed.
    #[error("development CA: {0}")]
    Cert(#[from] rcgen::Error),
}

/// The CA, ready to issue.
pub struct DevCa {
    /// The CA certificate to trust (`curl --cacert`).
    pub cert_path: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

impl DevCa {
    /// Loads the CA from `dir`, creating it (and `dir`) on first use.
    pub fn load_or_create(dir: &Path) -> Result<DevCa, DevCaError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| DevCaError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let cert_path = dir.join("dev-ca.pem");
        let key_path = dir.join("dev-ca.key");
        if cert_path.is_file() && key_path.is_file() {
            let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
            let cert_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
            let key = KeyPair::from_pem(&key_pem)?;
            let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
            return Ok(DevCa { cert_path, issuer });
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "Gatehouse development CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        // Key first: a crash between the two writes leaves no CA cert without its key.
        gatehouse_store::write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)
            .map_err(io(&key_path))?;
        gatehouse_store::write_atomic(&cert_path, cert.pem().as_bytes(), 0o644)
            .map_err(io(&cert_path))?;
        Ok(DevCa {
            cert_path,
            issuer: Issuer::new(params, key),
        })
    }

    /// Issues a serving certificate for `names` (a fresh key, in memory only).
    pub fn issue(
        &self,
        names: &[String],
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), DevCaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().map(String::as_str).unwrap_or("gatehouse"),
        );
        let cert = params.signed_by(&key, &self.issuer)?;
        let key = PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| rcgen::Error::PemError(e.to_string()))?;
        Ok((vec![cert.der().clone()], key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_once_then_reused_and_key_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::load_or_create(dir.path()).unwrap();
        let first = std::fs::read(&ca.cert_path).unwrap();
        let mode = std::fs::metadata(dir.path().join("dev-ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = DevCa::load_or_create(dir.path()).unwrap();
        assert_eq!(std::fs::read(&again.cert_path).unwrap(), first);
        let (chain, _) = again.issue(&["demo.localhost".into()]).unwrap();
        let names = crate::terminate::certs::dns_names(&chain[0]).unwrap();
        assert_eq!(names, vec!["demo.localhost"]);
    }
}
