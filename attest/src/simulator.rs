//! The simulated TEE: real-format TDX v4 quotes signed under a mock Intel PKI derived from a
//! 32-byte seed (root CA, PCK platform CA, PCK leaf with the SGX extensions, TCB-info and
//! QE-identity signers, CRLs), with collateral on fixed dates, so dcap-qvl verifies them
//! against the mock root and refuses them under Intel's.
//!
//! Everything here is reproducible by anyone who knows the seed (the default one is public):
//! a simulated quote proves nothing. Verifiers trust the mock root only when told to
//! (`insecure_trust_simulator_root`).

use crate::collateral::Collateral;
use crate::eventlog::{self, Event};
use crate::provider::{Evidence, QuoteProvider, TeeKind};
use crate::AttestError;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use dcap_qvl::quote::{
    AuthData, AuthDataV4, CertificationData, Data, EnclaveReport, Header,
    QEReportCertificationData, Quote, Report, TDReport10,
};
use parity_scale_codec::Encode;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateRevocationListParams,
    CustomExtension, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose, SerialNumber,
};

/// The public seed of the development simulator: its root is what
/// `insecure_trust_simulator_root` trusts.
pub const DEFAULT_SEED: [u8; 32] = *b"gatehouse-simulator-public-seed!";

const PKI_NOT_BEFORE: i64 = 1_577_836_800; // 2020-01-01T00:00:00Z
const PKI_NOT_AFTER: i64 = 4_102_444_800; // 2100-01-01T00:00:00Z
/// When the simulated collateral was issued (2025-01-01T00:00:00Z).
pub const COLLATERAL_ISSUED: u64 = 1_735_689_600;
/// When the simulated collateral stops being valid (2090-01-01T00:00:00Z).
pub const COLLATERAL_NEXT_UPDATE: u64 = 3_786_912_000;
const ISSUED: &str = "2025-01-01T00:00:00Z";
const NEXT_UPDATE: &str = "2090-01-01T00:00:00Z";

/// What the simulated TD measures: its MRTD, RTMR0-2, and the runtime events behind RTMR3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulatorConfig {
    /// The mock PKI's seed.
    pub seed: [u8; 32],
    /// MRTD (the initial TD image).
    pub mrtd: [u8; 48],
    /// RTMR0-2 (firmware, kernel, command line).
    pub rtmrs: [[u8; 48]; 3],
    /// Runtime events; RTMR3 is their replay.
    pub events: Vec<Event>,
    /// Sets the TD's DEBUG attribute (for testing that verifiers refuse it).
    pub debug: bool,
}

impl Default for SimulatorConfig {
    fn default() -> SimulatorConfig {
        let m = |label: &str| crate::sha384(&[b"gatehouse-simulated-", label.as_bytes()]);
        SimulatorConfig {
            seed: DEFAULT_SEED,
            mrtd: m("mrtd"),
            rtmrs: [m("rtmr0"), m("rtmr1"), m("rtmr2")],
            events: Vec::new(),
            debug: false,
        }
    }
}

/// A P-256 key derived from the seed, usable by rcgen (certificates) and for raw r‖s signatures.
struct SeededKey {
    raw: EcdsaKeyPair,
    rcgen: KeyPair,
}

impl SeededKey {
    fn derive(seed: &[u8; 32], label: &str) -> Result<SeededKey, AttestError> {
        for counter in 0u32..16 {
            let scalar = crate::sha256(&[
                b"gatehouse-simulator-p256-v1",
                seed,
                label.as_bytes(),
                &counter.to_be_bytes(),
            ]);
            // RFC 5915 ECPrivateKey { version 1, privateKey, [0] prime256v1 }; the public key
            // is computed by the parser.
            let mut der = vec![0x30, 0x31, 0x02, 0x01, 0x01, 0x04, 0x20];
            der.extend_from_slice(&scalar);
            der.extend_from_slice(&[
                0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
            ]);
            let Ok(raw) =
                EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
            else {
                continue; // scalar out of range: next counter
            };
            let pkcs8 = raw.to_pkcs8v1().map_err(|_| sim_err("key encoding"))?;
            let rcgen = KeyPair::try_from(pkcs8.as_ref()).map_err(sim_err)?;
            return Ok(SeededKey { raw, rcgen });
        }
        Err(sim_err("no valid P-256 scalar from the seed"))
    }

    fn sign_raw(&self, message: &[u8]) -> Result<Vec<u8>, AttestError> {
        self.raw
            .sign(&SystemRandom::new(), message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| sim_err("ECDSA signing failed"))
    }
}

fn sim_err(e: impl std::fmt::Display) -> AttestError {
    AttestError::Provider {
        provider: "simulator",
        reason: e.to_string(),
    }
}

/// The mock Intel PKI of one seed.
pub struct MockPki {
    root_der: Vec<u8>,
    root_pem: String,
    pck_ca_pem: String,
    pck_pem: String,
    pck_key: SeededKey,
    tcb_signer_pem: String,
    tcb_key: SeededKey,
    qe_signer_pem: String,
    qe_key: SeededKey,
    root_crl: Vec<u8>,
    pck_crl: Vec<u8>,
}

impl std::fmt::Debug for MockPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MockPki(<keys>)")
    }
}

fn params(name: &str, ca: bool) -> Result<CertificateParams, AttestError> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(sim_err)?;
    p.distinguished_name.push(DnType::CommonName, name);
    p.distinguished_name.push(
        DnType::OrganizationName,
        "Gatehouse simulated TEE (insecure)",
    );
    p.serial_number = Some(SerialNumber::from(1u64));
    p.not_before = time::OffsetDateTime::from_unix_timestamp(PKI_NOT_BEFORE).map_err(sim_err)?;
    p.not_after = time::OffsetDateTime::from_unix_timestamp(PKI_NOT_AFTER).map_err(sim_err)?;
    p.key_identifier_method = KeyIdMethod::Sha256;
    if ca {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
    } else {
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    }
    Ok(p)
}

fn crl(issuer: &Issuer<'_, &KeyPair>) -> Result<Vec<u8>, AttestError> {
    let at = |t: u64| time::OffsetDateTime::from_unix_timestamp(t as i64).map_err(sim_err);
    let crl = CertificateRevocationListParams {
        this_update: at(COLLATERAL_ISSUED)?,
        next_update: at(COLLATERAL_NEXT_UPDATE)?,
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: Vec::new(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(issuer)
    .map_err(sim_err)?;
    Ok(crl.der().to_vec())
}

impl MockPki {
    /// Derives the whole PKI from `seed`. The same seed gives the same keys (and so the same
    /// trust anchor); certificate signatures differ between derivations, which no verifier
    /// looks at for a trust anchor.
    pub fn from_seed(seed: &[u8; 32]) -> Result<MockPki, AttestError> {
        let root_key = SeededKey::derive(seed, "root")?;
        let root_params = params("Gatehouse Simulated SGX Root CA", true)?;
        let root = root_params.self_signed(&root_key.rcgen).map_err(sim_err)?;
        let root_issuer = Issuer::from_params(&root_params, &root_key.rcgen);

        let pck_ca_key = SeededKey::derive(seed, "pck-ca")?;
        let pck_ca_params = params("Gatehouse Simulated SGX PCK Platform CA", true)?;
        let pck_ca = pck_ca_params
            .signed_by(&pck_ca_key.rcgen, &root_issuer)
            .map_err(sim_err)?;
        let pck_ca_issuer = Issuer::from_params(&pck_ca_params, &pck_ca_key.rcgen);

        let pck_key = SeededKey::derive(seed, "pck")?;
        let mut pck_params = params("Gatehouse Simulated SGX PCK Certificate", false)?;
        pck_params.custom_extensions.push(pck_extension());
        let pck = pck_params
            .signed_by(&pck_key.rcgen, &pck_ca_issuer)
            .map_err(sim_err)?;

        let signer = |label: &str, name: &str| -> Result<(Certificate, SeededKey), AttestError> {
            let key = SeededKey::derive(seed, label)?;
            let cert = params(name, false)?
                .signed_by(&key.rcgen, &root_issuer)
                .map_err(sim_err)?;
            Ok((cert, key))
        };
        let (tcb_signer, tcb_key) = signer("tcb-signer", "Gatehouse Simulated SGX TCB Signing")?;
        let (qe_signer, qe_key) = signer("qe-signer", "Gatehouse Simulated SGX QE Signing")?;
        Ok(MockPki {
            root_der: root.der().to_vec(),
            root_pem: root.pem(),
            pck_ca_pem: pck_ca.pem(),
            pck_pem: pck.pem(),
            pck_key,
            tcb_signer_pem: tcb_signer.pem(),
            tcb_key,
            qe_signer_pem: qe_signer.pem(),
            qe_key,
            root_crl: crl(&root_issuer)?,
            pck_crl: crl(&pck_ca_issuer)?,
        })
    }

    /// The mock root certificate (DER): the trust anchor for simulated quotes.
    pub fn root_der(&self) -> &[u8] {
        &self.root_der
    }

    /// Collateral for this PKI's quotes, valid from [`COLLATERAL_ISSUED`] to
    /// [`COLLATERAL_NEXT_UPDATE`].
    pub fn collateral(&self) -> Result<Collateral, AttestError> {
        let zeros = |n: usize| "00".repeat(n);
        let svns = vec![serde_json::json!({"svn": 0}); 16];
        let tcb_info = serde_json::json!({
            "id": "TDX", "version": 3, "issueDate": ISSUED, "nextUpdate": NEXT_UPDATE,
            "fmspc": "000000000000", "pceId": "0000", "tcbType": 0, "tcbEvaluationDataNumber": 1,
            "tdxModule": {"mrsigner": zeros(48), "attributes": zeros(8), "attributesMask": zeros(8)},
            "tcbLevels": [{
                "tcb": {"sgxtcbcomponents": svns, "pcesvn": 0, "tdxtcbcomponents": svns},
                "tcbDate": ISSUED, "tcbStatus": "UpToDate"
            }]
        })
        .to_string();
        let qe_identity = serde_json::json!({
            "id": "TD_QE", "version": 2, "issueDate": ISSUED, "nextUpdate": NEXT_UPDATE,
            "tcbEvaluationDataNumber": 1, "miscselect": "00000000", "miscselectMask": "00000000",
            "attributes": zeros(16), "attributesMask": zeros(16), "mrsigner": "44".repeat(32),
            "isvprodid": 1,
            "tcbLevels": [{"tcb": {"isvsvn": 1}, "tcbDate": ISSUED, "tcbStatus": "UpToDate"}]
        })
        .to_string();
        Ok(Collateral {
            pck_crl_issuer_chain: format!("{}{}", self.pck_ca_pem, self.root_pem),
            root_ca_crl: self.root_crl.clone(),
            pck_crl: self.pck_crl.clone(),
            tcb_info_issuer_chain: format!("{}{}", self.tcb_signer_pem, self.root_pem),
            tcb_info_signature: self.tcb_key.sign_raw(tcb_info.as_bytes())?,
            tcb_info,
            qe_identity_issuer_chain: format!("{}{}", self.qe_signer_pem, self.root_pem),
            qe_identity_signature: self.qe_key.sign_raw(qe_identity.as_bytes())?,
            qe_identity,
        })
    }

    /// A TDX v4 quote of a TD with these measurements, binding `report_data`.
    pub fn quote(
        &self,
        report_data: [u8; 64],
        mrtd: [u8; 48],
        rtmrs: [[u8; 48]; 4],
        debug: bool,
    ) -> Result<Vec<u8>, AttestError> {
        // The attestation key is fresh per quote, certified by the QE report the PCK key signs.
        let attest_key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| sim_err("attestation key generation failed"))?;
        let attest_pub: [u8; 64] = attest_key.public_key().as_ref()[1..]
            .try_into()
            .map_err(|_| sim_err("unexpected P-256 public key length"))?;
        let qe_auth = vec![0u8; 32];
        let mut qe_report = EnclaveReport {
            cpu_svn: [0; 16],
            misc_select: 0,
            reserved1: [0; 28],
            attributes: [0; 16],
            mr_enclave: [0; 32],
            reserved2: [0; 32],
            mr_signer: [0x44; 32],
            reserved3: [0; 96],
            isv_prod_id: 1,
            isv_svn: 1,
            reserved4: [0; 60],
            report_data: [0; 64],
        };
        qe_report.report_data[..32].copy_from_slice(&crate::sha256(&[&attest_pub, &qe_auth]));
        let qe_report_bytes: [u8; 384] = qe_report
            .encode()
            .try_into()
            .map_err(|_| sim_err("QE report is not 384 bytes"))?;
        let qe_sig: [u8; 64] = self
            .pck_key
            .sign_raw(&qe_report_bytes)?
            .try_into()
            .map_err(|_| sim_err("signature is not 64 bytes"))?;
        let chain = format!("{}{}{}", self.pck_pem, self.pck_ca_pem, self.root_pem);
        let qe_data = QEReportCertificationData {
            qe_report: qe_report_bytes,
            qe_report_signature: qe_sig,
            qe_auth_data: Data::new(qe_auth),
            certification_data: CertificationData {
                cert_type: 5,
                body: Data::new(chain.into_bytes()),
            },
        };
        // TD attributes: SEPT_VE_DISABLE (bit 28) always, DEBUG (bit 0) when asked.
        let td_attributes = [u8::from(debug), 0, 0, 0x10, 0, 0, 0, 0];
        let report = TDReport10 {
            tee_tcb_svn: [0; 16],
            mr_seam: [0; 48],
            mr_signer_seam: [0; 48],
            seam_attributes: [0; 8],
            td_attributes,
            xfam: [0; 8],
            mr_td: mrtd,
            mr_config_id: [0; 48],
            mr_owner: [0; 48],
            mr_owner_config: [0; 48],
            rt_mr0: rtmrs[0],
            rt_mr1: rtmrs[1],
            rt_mr2: rtmrs[2],
            rt_mr3: rtmrs[3],
            report_data,
        };
        let mut auth = AuthDataV4 {
            ecdsa_signature: [0; 64],
            ecdsa_attestation_key: attest_pub,
            certification_data: CertificationData {
                cert_type: 6,
                body: Data::new(qe_data.encode()),
            },
            qe_report_data: qe_data,
        };
        let mut quote = Quote {
            header: Header {
                version: 4,
                attestation_key_type: 2,
                tee_type: 0x81,
                qe_svn: 1,
                pce_svn: 0,
                qe_vendor_id: dcap_qvl::INTEL_QE_VENDOR_ID,
                user_data: [0; 20],
            },
            report: Report::TD10(report),
            auth_data: AuthData::V4(auth.clone()),
        };
        let unsigned = quote.encode();
        let sig = attest_key
            .sign(&SystemRandom::new(), &unsigned[..quote.signed_length()])
            .map_err(|_| sim_err("quote signing failed"))?;
        auth.ecdsa_signature = sig
            .as_ref()
            .try_into()
            .map_err(|_| sim_err("signature is not 64 bytes"))?;
        quote.auth_data = AuthData::V4(auth);
        Ok(quote.encode())
    }
}

/// The PCK certificate's Intel SGX extension (`1.2.840.113741.1.13.1`): PPID, TCB (PCE SVN,
/// CPU SVN), PCE-ID, FMSPC and SGX type, all zero, as the simulated TCB info expects.
fn pck_extension() -> CustomExtension {
    const SGX: [u64; 7] = [1, 2, 840, 113741, 1, 13, 1];
    let oid = |tail: &[u64]| {
        let mut v = SGX.to_vec();
        v.extend_from_slice(tail);
        yasna::models::ObjectIdentifier::from_slice(&v)
    };
    let der = yasna::construct_der(|w| {
        w.write_sequence(|w| {
            for (tail, value) in [(1u64, vec![0u8; 16]), (3, vec![0; 2]), (4, vec![0; 6])] {
                w.next().write_sequence(|w| {
                    w.next().write_oid(&oid(&[tail]));
                    w.next().write_bytes(&value);
                });
            }
            w.next().write_sequence(|w| {
                w.next().write_oid(&oid(&[5]));
                w.next().write_enum(0);
            });
            w.next().write_sequence(|w| {
                w.next().write_oid(&oid(&[2]));
                w.next().write_sequence(|w| {
                    w.next().write_sequence(|w| {
                        w.next().write_oid(&oid(&[2, 17]));
                        w.next().write_u8(0);
                    });
                    w.next().write_sequence(|w| {
                        w.next().write_oid(&oid(&[2, 18]));
                        w.next().write_bytes(&[0; 16]);
                    });
                });
            });
        })
    });
    CustomExtension::from_oid_content(&SGX, der)
}

/// The simulator as a quote provider.
#[derive(Debug)]
pub struct Simulator {
    config: SimulatorConfig,
    pki: MockPki,
    collateral: Collateral,
}

impl Simulator {
    /// Builds the PKI and collateral for `config`.
    pub fn new(config: SimulatorConfig) -> Result<Simulator, AttestError> {
        let pki = MockPki::from_seed(&config.seed)?;
        let collateral = pki.collateral()?;
        Ok(Simulator {
            config,
            pki,
            collateral,
        })
    }

    /// The simulated TD's measurements, RTMR3 included.
    pub fn measurements(&self) -> Result<([u8; 48], [[u8; 48]; 4]), AttestError> {
        let c = &self.config;
        let rtmr3 = eventlog::replay(&c.events, 3)?;
        Ok((c.mrtd, [c.rtmrs[0], c.rtmrs[1], c.rtmrs[2], rtmr3]))
    }
}

#[async_trait::async_trait]
impl QuoteProvider for Simulator {
    fn kind(&self) -> TeeKind {
        TeeKind::Simulated
    }

    fn describe(&self) -> String {
        "simulator (mock Intel PKI; insecure)".into()
    }

    async fn quote(&self, report_data: [u8; 64]) -> Result<Evidence, AttestError> {
        let (mrtd, rtmrs) = self.measurements()?;
        let quote = self
            .pki
            .quote(report_data, mrtd, rtmrs, self.config.debug)?;
        Ok(Evidence {
            tee: TeeKind::Simulated,
            quote,
            event_log: self.config.events.clone(),
        })
    }

    fn collateral(&self) -> Option<Collateral> {
        Some(self.collateral.clone())
    }
}

/// The root `insecure_trust_simulator_root` trusts: the default seed's.
pub fn default_root_der() -> Result<Vec<u8>, AttestError> {
    Ok(MockPki::from_seed(&DEFAULT_SEED)?.root_der().to_vec())
}
