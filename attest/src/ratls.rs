//! RA-TLS: certificates that carry a quote binding their own key, and rustls verifiers that
//! accept a peer only if that quote verifies under the policy (fail closed).
//!
//! Emitted format: the interoperable TCG DICE "tagged evidence" extension (OID
//! `2.23.133.5.4.9`, used by Gramine, Intel's `sgx_ttls` and rats-tls): CBOR tag 60000
//! `[quote, claims]`, `claims` a CBOR map `{"pubkey-hash": bstr(CBOR [1, SHA-256(SPKI)])}`,
//! and the quote's `report_data = SHA-256(claims) ‖ 0³²`. Parsed also: dstack's versioned
//! attestation (`1.3.6.1.4.1.62397.1.8`, msgpack V1 with a TDX platform) and its legacy
//! extensions (`.1.1` raw quote, `.1.2` event log), whose report data is
//! `SHA-512("ratls-cert:" ‖ SPKI)`.

use crate::collateral::Collateral;
use crate::eventlog::Event;
use crate::policy::Policy;
use crate::provider::{Evidence, QuoteProvider, TeeKind};
use crate::verify::{self, QuoteVerified};
use crate::AttestError;
use rcgen::{CertificateParams, CustomExtension, DnType, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::sync::Arc;

/// TCG DICE tagged evidence (`tcg-dice-conceptual-message-wrapper`).
pub const OID_TCG_EVIDENCE: &[u64] = &[2, 23, 133, 5, 4, 9];
/// dstack's legacy raw-quote extension.
pub const OID_DSTACK_QUOTE: &[u64] = &[1, 3, 6, 1, 4, 1, 62397, 1, 1];
/// dstack's legacy event-log extension.
pub const OID_DSTACK_EVENT_LOG: &[u64] = &[1, 3, 6, 1, 4, 1, 62397, 1, 2];
/// dstack's versioned attestation extension.
pub const OID_DSTACK_ATTESTATION: &[u64] = &[1, 3, 6, 1, 4, 1, 62397, 1, 8];
/// CBOR tag of an Intel TEE quote (IANA).
const CBOR_TAG_INTEL_QUOTE: u64 = 60000;
/// IANA named-information hash ids accepted in `pubkey-hash`.
const HASH_SHA256: u64 = 1;
const HASH_SHA384: u64 = 7;
const HASH_SHA512: u64 = 8;

fn err(m: impl Into<String>) -> AttestError {
    AttestError::RaTls(m.into())
}

/// The CBOR claims binding `spki` (SHA-256).
pub fn claims_for(spki: &[u8]) -> Vec<u8> {
    let mut inner = minicbor::Encoder::new(Vec::new());
    inner
        .array(2)
        .and_then(|e| e.u64(HASH_SHA256))
        .and_then(|e| e.bytes(&crate::sha256(&[spki])))
        .expect("writing to a Vec cannot fail");
    let inner = inner.into_writer();
    let mut claims = minicbor::Encoder::new(Vec::new());
    claims
        .map(1)
        .and_then(|e| e.str("pubkey-hash"))
        .and_then(|e| e.bytes(&inner))
        .expect("writing to a Vec cannot fail");
    claims.into_writer()
}

/// Report data for TCG evidence: `SHA-256(claims)` then 32 zero bytes.
pub fn report_data_for_claims(claims: &[u8]) -> [u8; 64] {
    let mut rd = [0u8; 64];
    rd[..32].copy_from_slice(&crate::sha256(&[claims]));
    rd
}

/// Issues a self-signed RA-TLS certificate for `key` (names as SANs), its quote from
/// `provider` binding the key. It is valid from an hour ago (clock skew) for `validity`,
/// which should match the key's life, and carries the usual server-certificate extensions
/// (key usage digitalSignature, extended key usages serverAuth and clientAuth: the same
/// identity serves a listener and authenticates a client, as in a cluster join).
pub async fn certificate(
    provider: &dyn QuoteProvider,
    key: &KeyPair,
    names: &[String],
    validity: std::time::Duration,
) -> Result<CertificateDer<'static>, AttestError> {
    let spki = rcgen::PublicKeyData::subject_public_key_info(key);
    let claims = claims_for(&spki);
    let evidence = provider.quote(report_data_for_claims(&claims)).await?;
    let mut value = minicbor::Encoder::new(Vec::new());
    value
        .tag(minicbor::data::Tag::new(CBOR_TAG_INTEL_QUOTE))
        .and_then(|e| e.array(2))
        .and_then(|e| e.bytes(&evidence.quote))
        .and_then(|e| e.bytes(&claims))
        .expect("writing to a Vec cannot fail");
    let mut params = CertificateParams::new(names.to_vec()).map_err(|e| err(e.to_string()))?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().map(String::as_str).unwrap_or("gatehouse"),
    );
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + validity;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.custom_extensions = vec![CustomExtension::from_oid_content(
        OID_TCG_EVIDENCE,
        value.into_writer(),
    )];
    let cert = params.self_signed(key).map_err(|e| err(e.to_string()))?;
    Ok(cert.der().clone())
}

/// The evidence in a certificate and what its report data must be.
#[derive(Debug, Clone)]
pub struct CertEvidence {
    /// The quote (kind unknown from the certificate: decided by the trust root that verifies it).
    pub quote: Vec<u8>,
    /// Event log, if the format carries one.
    pub event_log: Vec<Event>,
    /// The report data that binds this certificate's key.
    pub expected_report_data: [u8; 64],
    /// Which format it came in.
    pub format: &'static str,
}

/// Finds and decodes the evidence in a DER certificate; refuses one without, or whose claims
/// bind another key.
pub fn evidence_of(cert_der: &[u8]) -> Result<CertEvidence, AttestError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| AttestError::malformed("certificate", e))?;
    let spki = cert.public_key().raw;
    let ext = |oid: &[u64]| {
        let oid = x509_parser::der_parser::oid::Oid::from(oid).ok()?;
        cert.extensions()
            .iter()
            .find(|e| e.oid == oid)
            .map(|e| e.value)
    };
    if let Some(value) = ext(OID_TCG_EVIDENCE) {
        let (quote, claims) = decode_tcg(value)?;
        check_pubkey_hash(&claims, spki)?;
        return Ok(CertEvidence {
            quote,
            event_log: Vec::new(),
            expected_report_data: report_data_for_claims(&claims),
            format: "tcg-dice",
        });
    }
    if let Some(value) = ext(OID_DSTACK_ATTESTATION) {
        let expected = crate::sha512(&[b"ratls-cert:", spki]);
        let (quote, event_log) = dstack::decode_v1(&der_octets(value)?, &expected)?;
        return Ok(CertEvidence {
            quote,
            event_log,
            expected_report_data: expected,
            format: "dstack-v1",
        });
    }
    if let Some(value) = ext(OID_DSTACK_QUOTE) {
        let quote = der_octets(value)?;
        let event_log = match ext(OID_DSTACK_EVENT_LOG) {
            None => Vec::new(),
            Some(v) => {
                let raw = der_octets(v)?;
                if raw.starts_with(b"ELGZv1") {
                    return Err(err(
                        "dstack's compressed event log (ELGZv1) is not supported",
                    ));
                }
                serde_json::from_slice(&raw)
                    .map_err(|e| AttestError::malformed("dstack event log", e))?
            }
        };
        return Ok(CertEvidence {
            quote,
            event_log,
            expected_report_data: crate::sha512(&[b"ratls-cert:", spki]),
            format: "dstack-legacy",
        });
    }
    Err(err(
        "the certificate carries no attestation evidence (no 2.23.133.5.4.9 or dstack extension)",
    ))
}

/// dstack's versioned attestation, V1: msgpack with named fields,
/// `{version: 1, platform: {kind, data: {quote, event_log}}, stack: {kind, data: {report_data,
/// runtime_events, config}}}` (dstack-attest `v1.rs`). Byte fields come as msgpack bin or as
/// arrays of integers (serde's default for `Vec<u8>`); both are read.
mod dstack {
    use super::{err, AttestError, Event};
    use serde::Deserialize;

    /// Largest input accepted (dstack's own cap).
    const MAX: usize = 10 << 20;

    #[derive(Deserialize)]
    struct V1 {
        version: u64,
        platform: Tagged<Platform>,
        stack: Tagged<Stack>,
    }

    #[derive(Deserialize)]
    struct Tagged<T> {
        kind: String,
        data: T,
    }

    #[derive(Deserialize)]
    struct Platform {
        #[serde(default)]
        quote: Option<Bytes>,
        #[serde(default)]
        event_log: Vec<TdxEvent>,
    }

    #[derive(Deserialize)]
    struct Stack {
        report_data: Bytes,
    }

    #[derive(Deserialize)]
    struct TdxEvent {
        imr: u32,
        event_type: u32,
        #[serde(default)]
        digest: Bytes,
        #[serde(default)]
        event: String,
        #[serde(default)]
        event_payload: Bytes,
        #[serde(default)]
        version: Option<u32>,
    }

    /// Bytes as msgpack bin, an array of integers, or a hex string.
    #[derive(Default)]
    struct Bytes(Vec<u8>);

    impl<'de> Deserialize<'de> for Bytes {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Bytes;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                    Ok(Bytes(v.to_vec()))
                }
                fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Bytes, E> {
                    crate::hex::decode(v)
                        .map(Bytes)
                        .ok_or_else(|| E::custom("not hex"))
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut a: A,
                ) -> Result<Bytes, A::Error> {
                    let mut out = Vec::with_capacity(a.size_hint().unwrap_or(0).min(1 << 16));
                    while let Some(b) = a.next_element::<u8>()? {
                        out.push(b);
                    }
                    Ok(Bytes(out))
                }
            }
            d.deserialize_any(V)
        }
    }

    /// The quote and event log, after checking the stack's report data is `expected`.
    pub(super) fn decode_v1(
        bytes: &[u8],
        expected: &[u8; 64],
    ) -> Result<(Vec<u8>, Vec<Event>), AttestError> {
        if bytes.len() > MAX {
            return Err(err("dstack attestation larger than 10 MiB"));
        }
        match bytes.first() {
            Some(0x80..=0x8f | 0xde | 0xdf) => {}
            Some(0) => {
                return Err(err(
                    "dstack's SCALE-encoded V0 attestation is not supported",
                ))
            }
            _ => {
                return Err(AttestError::malformed(
                    "dstack attestation",
                    "not a msgpack map",
                ))
            }
        }
        let v: V1 = rmp_serde::from_slice(bytes)
            .map_err(|e| AttestError::malformed("dstack attestation", e))?;
        if v.version != 1 {
            return Err(err(format!(
                "dstack attestation version {} is not supported",
                v.version
            )));
        }
        if v.platform.kind != "tdx" {
            return Err(err(format!(
                "dstack platform {:?} is not supported (tdx only)",
                v.platform.kind
            )));
        }
        if !v.stack.kind.starts_with("dstack") {
            return Err(err(format!(
                "dstack stack kind {:?} is not supported",
                v.stack.kind
            )));
        }
        if v.stack.data.report_data.0 != expected {
            return Err(err("the evidence binds another key than the certificate's"));
        }
        let quote = v
            .platform
            .data
            .quote
            .ok_or_else(|| AttestError::malformed("dstack attestation", "no quote"))?
            .0;
        let events = v
            .platform
            .data
            .event_log
            .into_iter()
            .map(|e| Event {
                imr: e.imr,
                event_type: e.event_type,
                digest: e.digest.0,
                event: e.event,
                event_payload: e.event_payload.0,
                version: e.version.unwrap_or(1),
            })
            .collect();
        Ok((quote, events))
    }
}

/// dstack wraps each value in a DER OCTET STRING inside the extension's own.
fn der_octets(value: &[u8]) -> Result<Vec<u8>, AttestError> {
    yasna::parse_der(value, |r| r.read_bytes())
        .map_err(|e| AttestError::malformed("dstack extension", format!("{e:?}")))
}

fn cbor_err(e: minicbor::decode::Error) -> AttestError {
    AttestError::malformed("TCG evidence", e)
}

fn decode_tcg(value: &[u8]) -> Result<(Vec<u8>, Vec<u8>), AttestError> {
    let mut d = minicbor::Decoder::new(value);
    let tag = d.tag().map_err(cbor_err)?;
    if tag.as_u64() != CBOR_TAG_INTEL_QUOTE {
        return Err(err(format!(
            "evidence tag {} is not an Intel TEE quote (60000)",
            tag.as_u64()
        )));
    }
    if d.array().map_err(cbor_err)? != Some(2) {
        return Err(AttestError::malformed(
            "TCG evidence",
            "expected [quote, claims]",
        ));
    }
    let quote = d.bytes().map_err(cbor_err)?.to_vec();
    let claims = d.bytes().map_err(cbor_err)?.to_vec();
    Ok((quote, claims))
}

/// Checks `{"pubkey-hash": [alg, hash]}` (the array bstr-wrapped or inline) against `spki`.
fn check_pubkey_hash(claims: &[u8], spki: &[u8]) -> Result<(), AttestError> {
    let mut d = minicbor::Decoder::new(claims);
    let n = d.map().map_err(cbor_err)?.unwrap_or(0);
    for _ in 0..n {
        let key = d.str().map_err(cbor_err)?;
        if key != "pubkey-hash" {
            d.skip().map_err(cbor_err)?;
            continue;
        }
        let (alg, hash) = match d.datatype().map_err(cbor_err)? {
            minicbor::data::Type::Bytes => {
                let mut inner = minicbor::Decoder::new(d.bytes().map_err(cbor_err)?);
                hash_pair(&mut inner)?
            }
            _ => hash_pair(&mut d)?,
        };
        let ours: Vec<u8> = match alg {
            HASH_SHA256 => crate::sha256(&[spki]).to_vec(),
            HASH_SHA384 => crate::sha384(&[spki]).to_vec(),
            HASH_SHA512 => crate::sha512(&[spki]).to_vec(),
            other => {
                return Err(err(format!(
                    "pubkey-hash algorithm {other} is not supported"
                )))
            }
        };
        return match ours == hash {
            true => Ok(()),
            false => Err(err("the evidence binds another key than the certificate's")),
        };
    }
    Err(err("the evidence claims have no pubkey-hash"))
}

fn hash_pair(d: &mut minicbor::Decoder<'_>) -> Result<(u64, Vec<u8>), AttestError> {
    if d.array().map_err(cbor_err)? != Some(2) {
        return Err(AttestError::malformed(
            "pubkey-hash",
            "expected [alg, hash]",
        ));
    }
    Ok((
        d.u64().map_err(cbor_err)?,
        d.bytes().map_err(cbor_err)?.to_vec(),
    ))
}

/// Verifies a peer's RA-TLS certificate: evidence binding its key, quote (Intel's root, or
/// the simulator's when the policy trusts it), policy, report data. rustls calls verifiers
/// synchronously, so collateral is provided up front (cached from a PCCS, or the
/// simulator's) and time comes from `clock`.
#[derive(Clone)]
pub struct AttestedPeer {
    policy: Policy,
    collateral: Collateral,
    clock: Arc<dyn Fn() -> u64 + Send + Sync>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl std::fmt::Debug for AttestedPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AttestedPeer")
    }
}

impl AttestedPeer {
    /// A verifier under `policy` with `collateral`, at the system clock.
    pub fn new(policy: Policy, collateral: Collateral) -> AttestedPeer {
        AttestedPeer {
            policy,
            collateral,
            clock: Arc::new(crate::unix_now),
            provider: Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        }
    }

    /// Uses `clock` for the verification time.
    pub fn with_clock(mut self, clock: Arc<dyn Fn() -> u64 + Send + Sync>) -> AttestedPeer {
        self.clock = clock;
        self
    }

    /// The whole check on a DER certificate.
    pub fn check(&self, cert_der: &[u8]) -> Result<QuoteVerified, AttestError> {
        let ev = evidence_of(cert_der)?;
        let now = (self.clock)();
        let mut evidence = Evidence {
            tee: TeeKind::Tdx,
            quote: ev.quote,
            event_log: ev.event_log,
        };
        let trust_sim = self.policy.insecure_trust_simulator_root;
        let q = match verify::verify_quote(&evidence, &self.collateral, now, trust_sim) {
            Err(AttestError::UntrustedRoot { .. }) if trust_sim => {
                evidence.tee = TeeKind::Simulated;
                verify::verify_quote(&evidence, &self.collateral, now, true)?
            }
            other => other?,
        };
        self.policy.check(&q, &evidence.event_log, now)?;
        verify::expect_report_data(&q, &ev.expected_report_data)?;
        Ok(q)
    }

    fn to_rustls(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        self.check(cert).map(|_| ()).map_err(|e| {
            tracing::warn!("RA-TLS peer refused: {e}");
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })
    }
}

impl ServerCertVerifier for AttestedPeer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The peer is identified by its measurements (the policy), not by a name.
        self.to_rustls(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A server-certificate verifier for RA-TLS clients that need the peer's quote before they
/// can check it (collateral fetched from a PCCS for that quote's platform): it checks the
/// handshake signature (the peer holds the certificate's key) and defers everything else.
/// The caller MUST run [`AttestedPeer::check`] on the peer's certificate after the handshake
/// and before sending any byte.
#[derive(Debug)]
pub struct CheckAfterHandshake(Arc<rustls::crypto::CryptoProvider>);

impl Default for CheckAfterHandshake {
    fn default() -> CheckAfterHandshake {
        CheckAfterHandshake(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
    }
}

impl ServerCertVerifier for CheckAfterHandshake {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algs = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client config whose server check is deferred to [`check_peer`] (see
/// [`CheckAfterHandshake`]); the caller picks the client certificate.
pub fn check_after_handshake(
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, AttestError>
{
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(e.to_string()))?
        .dangerous() // check_peer runs before any byte is sent
        .with_custom_certificate_verifier(Arc::new(CheckAfterHandshake::default())))
}

/// The whole attestation check of a peer's RA-TLS certificate after a handshake, with
/// collateral fetched for its quote's platform (the simulator's own, else the PCCS).
pub async fn check_peer(
    policy: &Policy,
    collateral: &crate::pccs::CollateralSource,
    cert_der: &[u8],
) -> Result<QuoteVerified, AttestError> {
    let ev = evidence_of(cert_der)?;
    let collateral = collateral.for_quote(&ev.quote, crate::unix_now()).await?;
    AttestedPeer::new(policy.clone(), collateral).check(cert_der)
}

/// A client must present a certificate (mandatory), checked here only for the handshake
/// signature: its attestation is checked with [`check_peer`] after the handshake, before
/// the server reads a byte.
impl ClientCertVerifier for CheckAfterHandshake {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls12_signature(self, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls13_signature(self, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ServerCertVerifier::supported_verify_schemes(self)
    }
}

impl ClientCertVerifier for AttestedPeer {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.to_rustls(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls12_signature(self, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        ServerCertVerifier::verify_tls13_signature(self, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ServerCertVerifier::supported_verify_schemes(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::{Simulator, SimulatorConfig};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn sim() -> Simulator {
        Simulator::new(SimulatorConfig::default()).unwrap()
    }

    fn trusting() -> AttestedPeer {
        let policy = Policy::parse("insecure_trust_simulator_root = true").unwrap();
        AttestedPeer::new(policy, sim().collateral().unwrap())
    }

    async fn ra_tls_cert(names: &[&str]) -> (CertificateDer<'static>, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let cert = certificate(&sim(), &key, &names, std::time::Duration::from_secs(86400))
            .await
            .unwrap();
        (cert, key)
    }

    #[tokio::test]
    async fn cert_lifecycle_ra_tls_certificates_live_as_long_as_their_key() {
        let (cert, _) = ra_tls_cert(&["gw.test"]).await;
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert).unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let v = parsed.validity();
        let (from, to) = (v.not_before.timestamp(), v.not_after.timestamp());
        assert!(
            (now - 3700..=now - 3500).contains(&from),
            "an hour of skew: {from} vs {now}"
        );
        assert!(
            (now + 86300..=now + 86500).contains(&to),
            "the key's day: {to} vs {now}"
        );
        let ku = parsed.key_usage().unwrap().unwrap().value;
        assert!(ku.digital_signature() && !ku.key_cert_sign(), "{ku:?}");
        let eku = parsed.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.any, "{eku:?}");
        assert!(!parsed.is_ca());
        trusting().check(&cert).unwrap();
    }

    /// A certificate for `key` carrying `extension` instead of honest evidence.
    fn cert_with(key: &KeyPair, extension: Option<CustomExtension>) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(vec!["peer.test".into()]).unwrap();
        params.custom_extensions = extension.into_iter().collect();
        params.self_signed(key).unwrap().der().clone()
    }

    #[tokio::test]
    async fn emitted_evidence_parses_and_verifies() {
        let (cert, key) = ra_tls_cert(&["gw.test"]).await;
        let ev = evidence_of(&cert).unwrap();
        assert_eq!(ev.format, "tcg-dice");
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        assert_eq!(
            ev.expected_report_data,
            report_data_for_claims(&claims_for(&spki))
        );
        let q = trusting().check(&cert).unwrap();
        assert_eq!(q.td.report_data, ev.expected_report_data);
        // Without trusting the simulator root: refused at the quote.
        let strict = AttestedPeer::new(Policy::default(), sim().collateral().unwrap());
        assert!(matches!(
            strict.check(&cert),
            Err(AttestError::UntrustedRoot { .. })
        ));
    }

    #[tokio::test]
    async fn a_certificate_without_evidence_or_binding_another_key_is_refused() {
        let key = KeyPair::generate().unwrap();
        let e = trusting().check(&cert_with(&key, None)).unwrap_err();
        assert!(e.to_string().contains("no attestation evidence"), "{e}");

        // Honest evidence for another key, pasted into this key's certificate.
        let (other_cert, _) = ra_tls_cert(&["other.test"]).await;
        let (_, parsed) = x509_parser::parse_x509_certificate(&other_cert).unwrap();
        let oid = x509_parser::der_parser::oid::Oid::from(OID_TCG_EVIDENCE).unwrap();
        let value = parsed
            .extensions()
            .iter()
            .find(|e| e.oid == oid)
            .unwrap()
            .value;
        let stolen = CustomExtension::from_oid_content(OID_TCG_EVIDENCE, value.to_vec());
        let e = trusting()
            .check(&cert_with(&key, Some(stolen)))
            .unwrap_err();
        assert!(e.to_string().contains("binds another key"), "{e}");
    }

    #[tokio::test]
    async fn dstack_legacy_extension_verifies() {
        let key = KeyPair::generate().unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let rd = crate::sha512(&[b"ratls-cert:", &spki]);
        let quote = sim().quote(rd).await.unwrap().quote;
        let wrapped = yasna::construct_der(|w| w.write_bytes(&quote));
        let ext = CustomExtension::from_oid_content(OID_DSTACK_QUOTE, wrapped);
        let cert = cert_with(&key, Some(ext));
        assert_eq!(evidence_of(&cert).unwrap().format, "dstack-legacy");
        trusting().check(&cert).unwrap();
        // The same quote in another key's certificate binds the wrong report data.
        let other = KeyPair::generate().unwrap();
        let wrapped = yasna::construct_der(|w| w.write_bytes(&quote));
        let ext = CustomExtension::from_oid_content(OID_DSTACK_QUOTE, wrapped);
        let e = trusting().check(&cert_with(&other, Some(ext))).unwrap_err();
        assert!(matches!(e, AttestError::ReportData { .. }), "{e}");
    }

    /// dstack's V1 attestation extension as dstack-attest writes it (`rmp_serde::to_vec_named`
    /// of its `Attestation`: quote as an integer array, event digests as bin, the stack's
    /// report data), carrying `events` as given.
    fn dstack_v1_extension(quote: Vec<u8>, rd: [u8; 64], events: &[Event]) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct Ev<'a> {
            imr: u32,
            event_type: u32,
            #[serde(with = "serde_bytes_like")]
            digest: &'a [u8],
            event: &'a str,
            #[serde(with = "serde_bytes_like")]
            event_payload: &'a [u8],
        }
        mod serde_bytes_like {
            pub fn serialize<S: serde::Serializer>(b: &&[u8], s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(b)
            }
        }
        let event_log: Vec<Ev<'_>> = events
            .iter()
            .map(|e| Ev {
                imr: e.imr,
                event_type: e.event_type,
                digest: &e.digest,
                event: &e.event,
                event_payload: &e.event_payload,
            })
            .collect();
        #[derive(serde::Serialize)]
        struct Tagged<T> {
            kind: &'static str,
            data: T,
        }
        #[derive(serde::Serialize)]
        struct Platform<'a> {
            quote: Vec<u8>,
            event_log: Vec<Ev<'a>>,
        }
        #[derive(serde::Serialize)]
        struct Stack {
            report_data: Vec<u8>,
            runtime_events: Vec<u8>,
            config: &'static str,
        }
        #[derive(serde::Serialize)]
        struct V1<'a> {
            version: u64,
            platform: Tagged<Platform<'a>>,
            stack: Tagged<Stack>,
        }
        let v1 = V1 {
            version: 1,
            platform: Tagged {
                kind: "tdx",
                data: Platform { quote, event_log },
            },
            stack: Tagged {
                kind: "dstack",
                data: Stack {
                    report_data: rd.to_vec(),
                    runtime_events: vec![],
                    config: "{}",
                },
            },
        };
        let msgpack = rmp_serde::to_vec_named(&v1).unwrap();
        yasna::construct_der(|w| w.write_bytes(&msgpack))
    }

    /// A simulated TD that measured `events`, its dstack V1 certificate for `key` sending
    /// `sent` as its event log (the measured events, stripped, unless a test edits them).
    async fn dstack_v1_cert(
        events: &[Event],
        key: &KeyPair,
        edit: impl FnOnce(&mut Vec<Event>),
    ) -> (Simulator, Vec<u8>) {
        let config = SimulatorConfig {
            events: events.to_vec(),
            ..Default::default()
        };
        let sim = Simulator::new(config).unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(key);
        let rd = crate::sha512(&[b"ratls-cert:", &spki]);
        let quote = sim.quote(rd).await.unwrap().quote;
        let mut sent: Vec<Event> = events.to_vec();
        for e in &mut sent {
            e.digest.clear(); // dstack sends runtime events stripped
        }
        edit(&mut sent);
        (sim, dstack_v1_extension(quote, rd, &sent))
    }

    #[tokio::test]
    async fn dstack_v1_extension_verifies() {
        let events = [
            Event::runtime("app-id", b"shop"),
            Event::runtime("compose-hash", b"c"),
        ];
        let key = KeyPair::generate().unwrap();
        let (sim, wrapped) = dstack_v1_cert(&events, &key, |_| {}).await;
        let ext = CustomExtension::from_oid_content(OID_DSTACK_ATTESTATION, wrapped.clone());
        let cert = cert_with(&key, Some(ext));
        let ev = evidence_of(&cert).unwrap();
        assert_eq!(ev.format, "dstack-v1");
        assert_eq!(ev.event_log.len(), 2);
        let pinned = Policy::parse(&format!(
            "insecure_trust_simulator_root = true\n[events]\napp-id = \"{}\"",
            crate::hex::encode(b"shop")
        ))
        .unwrap();
        AttestedPeer::new(pinned, sim.collateral().unwrap())
            .check(&cert)
            .unwrap();

        // The same attestation in another key's certificate: refused before the quote.
        let other = KeyPair::generate().unwrap();
        let ext = CustomExtension::from_oid_content(OID_DSTACK_ATTESTATION, wrapped);
        let e = trusting().check(&cert_with(&other, Some(ext))).unwrap_err();
        assert!(e.to_string().contains("binds another key"), "{e}");
        // SCALE V0 is named, not misparsed.
        let v0 = yasna::construct_der(|w| w.write_bytes(&[0, 1, 2]));
        let ext = CustomExtension::from_oid_content(OID_DSTACK_ATTESTATION, v0);
        let e = trusting().check(&cert_with(&key, Some(ext))).unwrap_err();
        assert!(e.to_string().contains("V0"), "{e}");
    }

    /// Issue 16 §1, as the agent checks a gateway: a TD that measured `app-id = evil` relabels
    /// that event (its real digest kept, so RTMR3 replays) as another type named `app-id`
    /// with payload `shop`; a policy pinning `shop` refuses it.
    #[tokio::test]
    async fn security_relabelled_event_fails_the_attested_peer_check() {
        let events = [Event::runtime("app-id", b"evil")];
        let pinned = Policy::parse(&format!(
            "insecure_trust_simulator_root = true\n[events]\napp-id = \"{}\"",
            crate::hex::encode(b"shop")
        ))
        .unwrap();
        let key = KeyPair::generate().unwrap();
        let real_digest = events[0].digest.clone();
        let relabel = |sent: &mut Vec<Event>| {
            sent[0].event_type = 0;
            sent[0].digest = real_digest;
            sent[0].event_payload = b"shop".to_vec();
        };
        let (sim, wrapped) = dstack_v1_cert(&events, &key, relabel).await;
        let ext = CustomExtension::from_oid_content(OID_DSTACK_ATTESTATION, wrapped);
        let peer = AttestedPeer::new(pinned, sim.collateral().unwrap());
        let e = peer.check(&cert_with(&key, Some(ext))).unwrap_err();
        assert!(e.to_string().contains("event:app-id"), "{e}");
    }

    /// Mutual RA-TLS over loopback with rustls on both sides: the attested pair talks; a
    /// server without evidence is refused by the client's verifier.
    #[tokio::test]
    async fn rustls_round_trip_with_the_verifiers() {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server_config = |cert: CertificateDer<'static>, key: &KeyPair| {
            let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
            rustls::ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(Arc::new(trusting()))
                .with_single_cert(vec![cert], key)
                .unwrap()
        };
        let (server_cert, server_key) = ra_tls_cert(&["gw.test"]).await;
        let (client_cert, client_key) = ra_tls_cert(&["agent.test"]).await;
        let client_config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous() // the custom verifier is the attestation check, not a bypass
            .with_custom_certificate_verifier(Arc::new(trusting()))
            .with_client_auth_cert(
                vec![client_cert],
                rustls::pki_types::PrivateKeyDer::Pkcs8(client_key.serialize_der().into()),
            )
            .unwrap();

        let run = |server: rustls::ServerConfig| {
            let client = client_config.clone();
            async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
                let server = tokio::spawn(async move {
                    let (tcp, _) = listener.accept().await.unwrap();
                    let mut tls = acceptor.accept(tcp).await.ok()?;
                    tls.write_all(b"attested").await.ok()?;
                    tls.shutdown().await.ok()
                });
                let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                let name = ServerName::try_from("gw.test").unwrap();
                let result = tokio_rustls::TlsConnector::from(Arc::new(client))
                    .connect(name, tcp)
                    .await;
                let out = match result {
                    Ok(mut tls) => {
                        let mut buf = Vec::new();
                        tls.read_to_end(&mut buf).await.map(|_| buf)
                    }
                    Err(e) => Err(e),
                };
                let _ = server.await;
                out
            }
        };
        let got = run(server_config(server_cert, &server_key)).await.unwrap();
        assert_eq!(got, b"attested");

        let plain_key = KeyPair::generate().unwrap();
        let plain = cert_with(&plain_key, None);
        let e = run(server_config(plain, &plain_key)).await.unwrap_err();
        assert!(e.to_string().contains("no attestation evidence"), "{e}");
    }
}
