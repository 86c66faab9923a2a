//! Quote verification: dcap-qvl under the trust root the evidence calls for, at a given time,
//! with each failure its own error. The steps a caller reports separately are
//! [`verify_quote`] (signatures, chains, collateral window), then
//! [`Policy::check`](crate::policy::Policy::check), then [`expect_report_data`].

use crate::collateral::Collateral;
use crate::policy::Policy;
use crate::provider::{Evidence, TeeKind};
use crate::AttestError;
use dcap_qvl::quote::{Quote, TDReport10};
use dcap_qvl::verify::QuoteVerifier;
use dcap_qvl::{QuoteClaims, QuoteCollateralV3, QuotePolicy};
use std::sync::OnceLock;

/// What a verifier trusts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Root {
    /// Intel's SGX root CA (production).
    Intel,
    /// The simulator's public mock root (development; insecure).
    Simulator,
}

impl Root {
    /// The root's name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Root::Intel => "Intel SGX Root CA",
            Root::Simulator => "Gatehouse simulator root (insecure)",
        }
    }

    fn der(self) -> Result<Vec<u8>, AttestError> {
        match self {
            Root::Intel => Ok(QUOTE_ROOT_INTEL.to_vec()),
            Root::Simulator => {
                static ROOT: OnceLock<Vec<u8>> = OnceLock::new();
                if let Some(r) = ROOT.get() {
                    return Ok(r.clone());
                }
                let r = crate::simulator::default_root_der()?;
                Ok(ROOT.get_or_init(|| r).clone())
            }
        }
    }
}

/// Intel's SGX Root CA (the one dcap-qvl embeds), for `Root::Intel`.
const QUOTE_ROOT_INTEL: &[u8] = include_bytes!("intel_sgx_root_ca.der");

/// A quote whose signatures, chains and collateral verified.
#[derive(Debug, Clone)]
pub struct QuoteVerified {
    /// Which root it chains to.
    pub root: Root,
    /// dcap-qvl's claims (TCB status, platform, QE, collateral dates).
    pub claims: QuoteClaims,
    /// The TD report (measurements, attributes, report data).
    pub td: TDReport10,
}

impl QuoteVerified {
    /// The TCB status as Intel names it.
    pub fn tcb_status(&self) -> String {
        self.claims.tcb.status.to_string()
    }
}

/// MRTD and RTMR0-3 of a TDX quote, hex: what the quote says, not verified here.
pub fn measurements(quote: &[u8]) -> Result<(String, [String; 4]), AttestError> {
    let parsed =
        Quote::parse(quote).map_err(|e| AttestError::malformed("quote", format!("{e:#}")))?;
    let td = parsed
        .report
        .as_td10()
        .ok_or_else(|| AttestError::malformed("quote", "not a TDX quote"))?;
    let hex = crate::hex::encode;
    Ok((
        hex(&td.mr_td),
        [
            hex(&td.rt_mr0),
            hex(&td.rt_mr1),
            hex(&td.rt_mr2),
            hex(&td.rt_mr3),
        ],
    ))
}

/// The report data of a parsed TDX quote.
pub fn report_data_of(quote: &Quote) -> Result<[u8; 64], AttestError> {
    quote
        .report
        .as_td10()
        .map(|td| td.report_data)
        .ok_or_else(|| AttestError::malformed("quote", "not a TDX quote"))
}

/// Step 1: the quote is genuine under the root its kind calls for, at `now`, with this
/// collateral. A simulated quote is checked only when `trust_simulator` is set, and then
/// only under the simulator's root (a real quote never verifies under it, nor the reverse).
pub fn verify_quote(
    evidence: &Evidence,
    collateral: &Collateral,
    now: u64,
    trust_simulator: bool,
) -> Result<QuoteVerified, AttestError> {
    let root = match evidence.tee {
        TeeKind::Tdx => Root::Intel,
        TeeKind::Simulated if trust_simulator => Root::Simulator,
        TeeKind::Simulated => {
            return Err(AttestError::UntrustedRoot {
                root: Root::Intel.name(),
                reason: "this is a simulated quote; accepting it needs \
                         insecure_trust_simulator_root (--insecure-trust-simulator-root)"
                    .into(),
            })
        }
    };
    let parsed = Quote::parse(&evidence.quote)
        .map_err(|e| AttestError::malformed("quote", format!("{e:#}")))?;
    let td = parsed
        .report
        .as_td10()
        .cloned()
        .ok_or_else(|| AttestError::malformed("quote", "not a TDX quote"))?;
    collateral.check_time(now)?;
    let claims = QuoteVerifier::new(root.der()?)
        .allow_debug(true) // debug is a policy decision, reported as such
        .verify_with_policy(
            &evidence.quote,
            QuoteCollateralV3::from(collateral),
            now,
            &QuotePolicy::claims_only(now),
        )
        .map_err(|e| classify(root, e))?;
    Ok(QuoteVerified { root, claims, td })
}

/// Maps dcap-qvl's error chain to the check that failed.
/// (dcap-qvl's errors are `anyhow` chains; `{:#}` prints the whole chain.)
fn classify(root: Root, e: impl std::fmt::Display) -> AttestError {
    let text = format!("{e:#}");
    let lower = text.to_ascii_lowercase();
    // A chain that ends elsewhere, or a root CRL the trusted root did not sign: the
    // quote and its collateral belong to another PKI.
    if text.contains("UnknownIssuer") || text.contains("InvalidCrlSignatureForPublicKey") {
        AttestError::UntrustedRoot {
            root: root.name(),
            reason: text,
        }
    } else if lower.contains("signature") || text.contains("BadSignature") {
        AttestError::BadSignature(text)
    } else if lower.contains("decode") || lower.contains("parse") {
        AttestError::malformed("quote", text)
    } else {
        AttestError::Quote(text)
    }
}

/// All three steps for a caller that does not report them separately.
pub fn verify(
    evidence: &Evidence,
    collateral: &Collateral,
    policy: &Policy,
    expected_report_data: &[u8; 64],
    now: u64,
) -> Result<QuoteVerified, AttestError> {
    let q = verify_quote(
        evidence,
        collateral,
        now,
        policy.insecure_trust_simulator_root,
    )?;
    policy.check(&q, &evidence.event_log, now)?;
    expect_report_data(&q, expected_report_data)?;
    Ok(q)
}

/// Step 3: the quote binds exactly `expected`.
pub fn expect_report_data(q: &QuoteVerified, expected: &[u8; 64]) -> Result<(), AttestError> {
    if &q.td.report_data != expected {
        return Err(AttestError::ReportData {
            found: crate::hex::encode(&q.td.report_data),
            expected: crate::hex::encode(expected),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::{Simulator, SimulatorConfig, COLLATERAL_NEXT_UPDATE};
    use crate::QuoteProvider;

    /// dcap-qvl's recorded TDX sample verifies at its collateral's time.
    const SAMPLE_NOW: u64 = 1_750_331_763;

    fn sample() -> (Evidence, Collateral) {
        let evidence = Evidence {
            tee: TeeKind::Tdx,
            quote: include_bytes!("../testdata/tdx_quote").to_vec(),
            event_log: Vec::new(),
        };
        let collateral =
            serde_json::from_str(include_str!("../testdata/tdx_quote_collateral.json")).unwrap();
        (evidence, collateral)
    }

    fn cloud_policy() -> Policy {
        Policy::parse("allow_dynamic_platform = true\nallow_smt = true\nallow_cached_keys = true")
            .unwrap()
    }

    #[test]
    fn recorded_tdx_quote_verifies_at_its_time() {
        let (ev, col) = sample();
        let q = verify_quote(&ev, &col, SAMPLE_NOW, false).unwrap();
        assert_eq!(q.root, Root::Intel);
        assert_eq!(q.tcb_status(), "UpToDate");
        assert_eq!(crate::hex::encode(&q.td.mr_td[..4]), "91eb2b44");
        cloud_policy().check(&q, &[], SAMPLE_NOW).unwrap();
        // The strict default refuses the cloud host's dynamic-platform flag, by name.
        let e = Policy::default().check(&q, &[], SAMPLE_NOW).unwrap_err();
        assert!(
            e.to_string().contains("policy: tcb") && e.to_string().contains("ynamic"),
            "{e}"
        );
        let rd = q.td.report_data;
        verify(&ev, &col, &cloud_policy(), &rd, SAMPLE_NOW).unwrap();
        let e = verify(&ev, &col, &cloud_policy(), &[0; 64], SAMPLE_NOW).unwrap_err();
        assert!(matches!(e, AttestError::ReportData { .. }), "{e}");
    }

    #[test]
    fn recorded_quote_fails_at_the_real_clock_and_when_flipped() {
        let (ev, col) = sample();
        let e = verify_quote(&ev, &col, crate::unix_now(), false).unwrap_err();
        assert!(matches!(e, AttestError::CollateralExpired { .. }), "{e}");

        let mut flipped = ev.clone();
        let rd = crate::hex::encode(
            &verify_quote(&ev, &col, SAMPLE_NOW, false)
                .unwrap()
                .td
                .report_data,
        );
        let at = 568; // report_data in a v4 quote (checked below)
        assert_eq!(crate::hex::encode(&ev.quote[at..at + 64]), rd);
        flipped.quote[at] ^= 1;
        let e = verify_quote(&flipped, &col, SAMPLE_NOW, false).unwrap_err();
        assert!(matches!(e, AttestError::BadSignature(_)), "{e}");

        // The real quote under the simulator root: untrusted.
        let mut relabelled = ev.clone();
        relabelled.tee = TeeKind::Simulated;
        let e = verify_quote(&relabelled, &col, SAMPLE_NOW, true).unwrap_err();
        assert!(matches!(e, AttestError::UntrustedRoot { .. }), "{e}");
    }

    fn simulator(config: SimulatorConfig) -> Simulator {
        Simulator::new(config).unwrap()
    }

    async fn simulated(config: SimulatorConfig, rd: [u8; 64]) -> (Evidence, Collateral) {
        let sim = simulator(config);
        (sim.quote(rd).await.unwrap(), sim.collateral().unwrap())
    }

    #[tokio::test]
    async fn simulated_quotes_verify_only_under_the_simulator_root() {
        let (ev, col) = simulated(SimulatorConfig::default(), [7; 64]).await;
        let now = crate::unix_now();
        let q = verify_quote(&ev, &col, now, true).unwrap();
        assert_eq!(q.root, Root::Simulator);
        assert_eq!(q.td.report_data, [7; 64]);
        Policy::default().check(&q, &ev.event_log, now).unwrap();

        let e = verify_quote(&ev, &col, now, false).unwrap_err();
        assert!(matches!(e, AttestError::UntrustedRoot { .. }), "{e}");
        let mut as_real = ev.clone();
        as_real.tee = TeeKind::Tdx;
        let e = verify_quote(&as_real, &col, now, true).unwrap_err();
        assert!(
            matches!(e, AttestError::UntrustedRoot { .. }),
            "production root: {e}"
        );

        let e = verify_quote(&ev, &col, COLLATERAL_NEXT_UPDATE, true).unwrap_err();
        assert!(matches!(e, AttestError::CollateralExpired { .. }), "{e}");

        let mut flipped = ev.clone();
        flipped.quote[200] ^= 1; // inside MRTD
        let e = verify_quote(&flipped, &col, now, true).unwrap_err();
        assert!(matches!(e, AttestError::BadSignature(_)), "{e}");
    }

    #[tokio::test]
    async fn another_seed_is_another_root() {
        let config = SimulatorConfig {
            seed: [9; 32],
            ..Default::default()
        };
        let (ev, col) = simulated(config, [1; 64]).await;
        let e = verify_quote(&ev, &col, crate::unix_now(), true).unwrap_err();
        assert!(matches!(e, AttestError::UntrustedRoot { .. }), "{e}");
    }

    #[tokio::test]
    async fn policy_checks_measurements_debug_and_events() {
        let events = vec![
            crate::eventlog::Event::runtime("app-id", b"shop"),
            crate::eventlog::Event::runtime("gatehouse-version", b"0.1.0"),
        ];
        let config = SimulatorConfig {
            events: events.clone(),
            ..Default::default()
        };
        let (ev, col) = simulated(config.clone(), [0; 64]).await;
        let now = crate::unix_now();
        let q = verify_quote(&ev, &col, now, true).unwrap();
        let mrtd = crate::hex::encode(&config.mrtd);
        let hex_shop = crate::hex::encode(b"shop");

        let pinned = Policy::parse(&format!(
            "mrtd = [\"{mrtd}\"]\n[events]\napp-id = \"{hex_shop}\""
        ))
        .unwrap();
        pinned.check(&q, &ev.event_log, now).unwrap();

        let other = Policy::parse(&format!("mrtd = [\"{}\"]", "ab".repeat(48))).unwrap();
        let e = other.check(&q, &ev.event_log, now).unwrap_err();
        assert!(e.to_string().starts_with("policy: mrtd"), "{e}");

        let wrong_app = Policy::parse(&format!(
            "[events]\napp-id = \"{}\"",
            crate::hex::encode(b"bank")
        ))
        .unwrap();
        let e = wrong_app.check(&q, &ev.event_log, now).unwrap_err();
        assert!(e.to_string().starts_with("policy: event:app-id"), "{e}");

        // A forged event log (payload swapped) no longer replays to the quoted RTMR3.
        let mut forged = ev.event_log.clone();
        forged[0] = crate::eventlog::Event::runtime("app-id", b"bank");
        let e = Policy::default().check(&q, &forged, now).unwrap_err();
        assert!(e.to_string().starts_with("policy: rtmr3"), "{e}");

        let (dbg, col) = simulated(
            SimulatorConfig {
                debug: true,
                ..Default::default()
            },
            [0; 64],
        )
        .await;
        let q = verify_quote(&dbg, &col, now, true).unwrap();
        let e = Policy::default().check(&q, &[], now).unwrap_err();
        assert!(e.to_string().starts_with("policy: debug"), "{e}");
        Policy::parse("allow_debug = true")
            .unwrap()
            .check(&q, &[], now)
            .unwrap();
    }
}
