//! Collateral: what a verifier needs beside a quote (Intel's CRLs, TCB info, QE identity and
//! their signing chains), in the JSON shape dcap-qvl's samples and PCCS-derived tools use
//! (byte fields as hex), and its validity window.

use crate::AttestError;
use dcap_qvl::QuoteCollateralV3;
use serde::{Deserialize, Serialize};

/// Collateral for one quote, serializable with hex byte fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collateral {
    /// PEM chain of the PCK CRL's issuer.
    pub pck_crl_issuer_chain: String,
    /// DER root CA CRL.
    #[serde(with = "crate::hex::serde")]
    pub root_ca_crl: Vec<u8>,
    /// DER PCK CRL.
    #[serde(with = "crate::hex::serde")]
    pub pck_crl: Vec<u8>,
    /// PEM chain of the TCB info signer.
    pub tcb_info_issuer_chain: String,
    /// The exact signed TCB info JSON.
    pub tcb_info: String,
    /// Raw r‖s signature over `tcb_info`.
    #[serde(with = "crate::hex::serde")]
    pub tcb_info_signature: Vec<u8>,
    /// PEM chain of the QE identity signer.
    pub qe_identity_issuer_chain: String,
    /// The exact signed QE identity JSON.
    pub qe_identity: String,
    /// Raw r‖s signature over `qe_identity`.
    #[serde(with = "crate::hex::serde")]
    pub qe_identity_signature: Vec<u8>,
}

impl From<&Collateral> for QuoteCollateralV3 {
    fn from(c: &Collateral) -> QuoteCollateralV3 {
        QuoteCollateralV3 {
            pck_crl_issuer_chain: c.pck_crl_issuer_chain.clone(),
            root_ca_crl: c.root_ca_crl.clone(),
            pck_crl: c.pck_crl.clone(),
            tcb_info_issuer_chain: c.tcb_info_issuer_chain.clone(),
            tcb_info: c.tcb_info.clone(),
            tcb_info_signature: c.tcb_info_signature.clone(),
            qe_identity_issuer_chain: c.qe_identity_issuer_chain.clone(),
            qe_identity: c.qe_identity.clone(),
            qe_identity_signature: c.qe_identity_signature.clone(),
            pck_certificate_chain: None,
        }
    }
}

/// When a part of the collateral starts and stops being valid (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// The latest issue date and which part it is.
    pub issued: (u64, String),
    /// The earliest nextUpdate and which part it is.
    pub expires: (u64, String),
}

impl Collateral {
    /// The window in which every part (TCB info, QE identity, both CRLs) is current.
    pub fn window(&self) -> Result<Window, AttestError> {
        let mut parts = vec![
            json_window("TCB info", &self.tcb_info, "tcbInfo")?,
            json_window("QE identity", &self.qe_identity, "enclaveIdentity")?,
        ];
        parts.push(crl_window("root CA CRL", &self.root_ca_crl)?);
        parts.push(crl_window("PCK CRL", &self.pck_crl)?);
        let issued = parts
            .iter()
            .max_by_key(|p| p.1)
            .map(|p| (p.1, p.0.to_owned()))
            .expect("four parts");
        let expires = parts
            .iter()
            .min_by_key(|p| p.2)
            .map(|p| (p.2, p.0.to_owned()))
            .expect("four parts");
        Ok(Window { issued, expires })
    }

    /// Refuses a verification time outside the window, naming the part at fault.
    pub fn check_time(&self, now: u64) -> Result<Window, AttestError> {
        let w = self.window()?;
        if now < w.issued.0 {
            return Err(AttestError::CollateralNotYetValid {
                what: w.issued.1,
                from: w.issued.0,
                now,
            });
        }
        if now >= w.expires.0 {
            return Err(AttestError::CollateralExpired {
                what: w.expires.1,
                until: w.expires.0,
                now,
            });
        }
        Ok(w)
    }
}

/// `(name, issueDate, nextUpdate)` of a signed JSON document, which PCS serves either bare or
/// wrapped as `{"tcbInfo": {...}, "signature": ...}`.
fn json_window(
    name: &'static str,
    json: &str,
    wrapper: &str,
) -> Result<(&'static str, u64, u64), AttestError> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| AttestError::Collateral(format!("{name}: {e}")))?;
    let body = v.get(wrapper).unwrap_or(&v);
    let date = |key: &str| -> Result<u64, AttestError> {
        let s = body[key]
            .as_str()
            .ok_or_else(|| AttestError::Collateral(format!("{name}: no {key}")))?;
        let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .map_err(|e| AttestError::Collateral(format!("{name}: {key} {s:?}: {e}")))?;
        u64::try_from(t.unix_timestamp())
            .map_err(|_| AttestError::Collateral(format!("{name}: {key} before 1970")))
    };
    Ok((name, date("issueDate")?, date("nextUpdate")?))
}

fn crl_window(name: &'static str, der: &[u8]) -> Result<(&'static str, u64, u64), AttestError> {
    use x509_parser::prelude::FromDer;
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(der)
        .map_err(|e| AttestError::Collateral(format!("{name}: {e}")))?;
    let this = crl.last_update().timestamp();
    let next = crl
        .next_update()
        .ok_or_else(|| AttestError::Collateral(format!("{name}: no nextUpdate")))?
        .timestamp();
    let unix = |t: i64| u64::try_from(t).unwrap_or(0);
    Ok((name, unix(this), unix(next)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// dcap-qvl's shipped TDX collateral: issued 2025-06-19, PCK CRL next update 2025-07-19.
    pub(crate) fn sample() -> Collateral {
        serde_json::from_str(include_str!("../testdata/tdx_quote_collateral.json")).unwrap()
    }

    #[test]
    fn window_of_the_recorded_collateral() {
        let w = sample().window().unwrap();
        assert_eq!(w.issued.1, "QE identity");
        assert_eq!(w.expires.1, "PCK CRL");
        assert!(w.issued.0 < 1_750_331_763 && 1_750_331_763 < w.expires.0);
        let e = sample().check_time(w.expires.0).unwrap_err();
        assert!(matches!(e, AttestError::CollateralExpired { .. }), "{e}");
        assert!(e.to_string().contains("PCK CRL"), "{e}");
        let e = sample().check_time(w.issued.0 - 1).unwrap_err();
        assert!(
            matches!(e, AttestError::CollateralNotYetValid { .. }),
            "{e}"
        );
    }
}
