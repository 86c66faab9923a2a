//! What the benches share.

use rustls::sign::CertifiedKey;
use std::sync::Arc;

/// A self-signed ECDSA certificate and its key, ready to serve.
pub fn certified_key() -> Arc<CertifiedKey> {
    let kp = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["x.test".to_string()])
        .unwrap()
        .self_signed(&kp)
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::try_from(kp.serialize_der()).unwrap();
    Arc::new(
        CertifiedKey::from_der(
            vec![cert.der().clone()],
            key,
            &rustls::crypto::aws_lc_rs::default_provider(),
        )
        .unwrap(),
    )
}
