//! What a verifier accepts: TCB statuses and advisories, platform flags, debug, and the TD's
//! measurements (allowlists for MRTD and RTMR0-3, and RTMR3 runtime events by payload).
//!
//! ```toml
//! tcb_statuses = ["UpToDate", "SWHardeningNeeded"]   # UpToDate is always accepted
//! rejected_advisories = ["INTEL-SA-00334"]
//! allow_debug = false
//! allow_dynamic_platform = false                     # cloud hosts often need these true
//! allow_cached_keys = false
//! allow_smt = false
//! insecure_trust_simulator_root = false
//! mrtd = ["<96 hex>"]                                # empty = any (say so loudly)
//! rtmr0 = []
//! rtmr3 = []
//! [events]                                           # RTMR3 events that must be present
//! app-id = "<hex payload>"
//! ```

use crate::eventlog::{self, Event};
use crate::verify::QuoteVerified;
use crate::AttestError;
use dcap_qvl::policy::Policy as _;
use dcap_qvl::{QuotePolicy, TcbStatus};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A verification policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Accepted TCB statuses besides `UpToDate`.
    #[serde(default)]
    pub tcb_statuses: Vec<String>,
    /// Advisories that fail the quote even when the status is accepted.
    #[serde(default)]
    pub rejected_advisories: Vec<String>,
    /// Accept a TD with the DEBUG attribute (its memory is readable by the host).
    #[serde(default)]
    pub allow_debug: bool,
    /// Accept a platform whose PCK says dynamic platform.
    #[serde(default)]
    pub allow_dynamic_platform: bool,
    /// Accept a platform with cached keys.
    #[serde(default)]
    pub allow_cached_keys: bool,
    /// Accept SMT (hyper-threading) enabled.
    #[serde(default)]
    pub allow_smt: bool,
    /// Trust the simulator's public mock root: accepts quotes anyone can forge.
    #[serde(default)]
    pub insecure_trust_simulator_root: bool,
    /// Allowed MRTD values (hex); empty = any.
    #[serde(default)]
    pub mrtd: Vec<String>,
    /// Allowed RTMR0 values.
    #[serde(default)]
    pub rtmr0: Vec<String>,
    /// Allowed RTMR1 values.
    #[serde(default)]
    pub rtmr1: Vec<String>,
    /// Allowed RTMR2 values.
    #[serde(default)]
    pub rtmr2: Vec<String>,
    /// Allowed RTMR3 values.
    #[serde(default)]
    pub rtmr3: Vec<String>,
    /// RTMR3 runtime events that must be in the (replayed) event log, name → hex payload.
    #[serde(default)]
    pub events: BTreeMap<String, String>,
}

impl Default for Policy {
    fn default() -> Policy {
        toml::from_str("").expect("empty policy")
    }
}

impl Policy {
    /// Reads and validates a policy file.
    pub fn load(path: &std::path::Path) -> Result<Policy, AttestError> {
        let file = |reason: String| AttestError::PolicyFile {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file(e.to_string()))?;
        Policy::parse(&text).map_err(file)
    }

    /// Parses and validates policy TOML; the error names the key.
    pub fn parse(text: &str) -> Result<Policy, String> {
        let p: Policy = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        for s in &p.tcb_statuses {
            status(s).map_err(|_| format!("tcb_statuses: unknown status {s:?}"))?;
        }
        for (key, list) in p.measurement_lists() {
            for v in list {
                if crate::hex::decode_array::<48>(v).is_none() {
                    return Err(format!("{key}: {v:?} is not 48 bytes of hex"));
                }
            }
        }
        for (name, payload) in &p.events {
            if crate::hex::decode(payload).is_none() {
                return Err(format!("events.{name}: payload is not hex"));
            }
        }
        Ok(p)
    }

    fn measurement_lists(&self) -> [(&'static str, &Vec<String>); 5] {
        [
            ("mrtd", &self.mrtd),
            ("rtmr0", &self.rtmr0),
            ("rtmr1", &self.rtmr1),
            ("rtmr2", &self.rtmr2),
            ("rtmr3", &self.rtmr3),
        ]
    }

    /// Whether any measurement is pinned (an unpinned policy accepts any software).
    pub fn pins_measurements(&self) -> bool {
        self.measurement_lists().iter().any(|(_, l)| !l.is_empty()) || !self.events.is_empty()
    }

    fn dcap_policy(&self, now: u64) -> QuotePolicy {
        let mut p = QuotePolicy::strict(now)
            .reject_advisories(&self.rejected_advisories)
            .allow_dynamic_platform(self.allow_dynamic_platform)
            .allow_cached_keys(self.allow_cached_keys)
            .allow_smt(self.allow_smt);
        for s in &self.tcb_statuses {
            if let Ok(s) = status(s) {
                p = p.allow_status(s);
            }
        }
        p
    }

    /// Applies the policy to a verified quote and its event log.
    pub fn check(
        &self,
        quote: &QuoteVerified,
        events: &[Event],
        now: u64,
    ) -> Result<(), AttestError> {
        self.dcap_policy(now)
            .validate(&quote.claims)
            .map_err(|e| AttestError::policy("tcb", format!("{e:#}")))?;
        let td = &quote.td;
        if td.td_attributes[0] & 1 != 0 && !self.allow_debug {
            return Err(AttestError::policy(
                "debug",
                "the TD runs with DEBUG on (the host can read its memory)",
            ));
        }
        let values = [&td.mr_td, &td.rt_mr0, &td.rt_mr1, &td.rt_mr2, &td.rt_mr3];
        for ((key, allowed), value) in self.measurement_lists().into_iter().zip(values) {
            let hex = crate::hex::encode(value);
            if !allowed.is_empty() && !allowed.iter().any(|a| a.eq_ignore_ascii_case(&hex)) {
                return Err(AttestError::policy(
                    key,
                    format!("{hex} is not among the {} allowed", allowed.len()),
                ));
            }
        }
        if !events.is_empty() || !self.events.is_empty() {
            eventlog::check_rtmr3(events, &td.rt_mr3)?;
        }
        for (name, payload) in &self.events {
            let want = crate::hex::decode(payload).unwrap_or_default();
            let e = eventlog::pinned_event(events, name)?;
            if e.event_payload != want {
                return Err(AttestError::policy(
                    format!("event:{name}"),
                    format!(
                        "payload {} is not the allowed {payload}",
                        crate::hex::encode(&e.event_payload)
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn td_report(
    evidence: &crate::provider::Evidence,
) -> Result<dcap_qvl::quote::TDReport10, AttestError> {
    let quote = dcap_qvl::quote::Quote::parse(&evidence.quote)
        .map_err(|e| AttestError::malformed("quote", format!("{e:#}")))?;
    quote
        .report
        .as_td10()
        .cloned()
        .ok_or_else(|| AttestError::malformed("quote", "not a TDX quote"))
}

/// A policy admitting exactly the measurements of `evidence`: its MRTD and RTMR0-3 (no event
/// log needed: RTMR3 itself is pinned, so any other runtime event is refused). The default
/// of a cluster: members and joiners run the same software. Other settings are the defaults.
pub fn same_measurements(evidence: &crate::provider::Evidence) -> Result<Policy, AttestError> {
    let td = td_report(evidence)?;
    let pin = |v: &[u8]| vec![crate::hex::encode(v)];
    Ok(Policy {
        mrtd: pin(&td.mr_td),
        rtmr0: pin(&td.rt_mr0),
        rtmr1: pin(&td.rt_mr1),
        rtmr2: pin(&td.rt_mr2),
        rtmr3: pin(&td.rt_mr3),
        ..Policy::default()
    })
}

/// A policy pinning what `evidence` measured: MRTD, RTMR0-2 and every runtime event whose name
/// appears once (RTMR3 itself changes with any event; the events say what it means), as TOML
/// with a comment per line. For `gatehouse policy-from-bundle`: pin a gateway you trust once.
pub fn pinning(evidence: &crate::provider::Evidence) -> Result<String, AttestError> {
    let td = td_report(evidence)?;
    let hex = crate::hex::encode;
    let mut out = String::from(
        "# Pinned from an attestation bundle: the measurements of the TD that served it.\n",
    );
    for (key, value, what) in [
        ("mrtd", &td.mr_td, "the TD's initial image (firmware)"),
        ("rtmr0", &td.rt_mr0, "firmware configuration"),
        ("rtmr1", &td.rt_mr1, "the OS loader and kernel"),
        ("rtmr2", &td.rt_mr2, "the kernel command line and initrd"),
    ] {
        out.push_str(&format!("{key} = [\"{}\"]  # {what}\n", hex(value)));
    }
    out.push_str("\n[events]  # RTMR3 runtime events that must be present with these payloads\n");
    let runtime: Vec<&Event> = evidence
        .event_log
        .iter()
        .filter(|e| e.is_runtime())
        .collect();
    for e in &runtime {
        if runtime.iter().filter(|o| o.event == e.event).count() == 1 {
            let name = toml::Value::String(e.event.clone());
            out.push_str(&format!("{name} = \"{}\"\n", hex(&e.event_payload)));
        }
    }
    Policy::parse(&out).map_err(|e| AttestError::malformed("pinned policy", e))?;
    Ok(out)
}

fn status(name: &str) -> Result<TcbStatus, serde_json::Error> {
    serde_json::from_value(serde_json::Value::String(name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_names_the_bad_key() {
        assert!(Policy::parse("").unwrap() == Policy::default());
        let e = Policy::parse("tcb_statuses = [\"Fine\"]").unwrap_err();
        assert!(e.contains("tcb_statuses") && e.contains("Fine"), "{e}");
        let e = Policy::parse("mrtd = [\"abcd\"]").unwrap_err();
        assert!(e.contains("mrtd"), "{e}");
        let e = Policy::parse("[events]\napp-id = \"xyz\"").unwrap_err();
        assert!(e.contains("events.app-id"), "{e}");
        let e = Policy::parse("allow_everything = true").unwrap_err();
        assert!(e.contains("allow_everything"), "{e}");
        let ok = Policy::parse("tcb_statuses = [\"SWHardeningNeeded\"]\nallow_smt = true").unwrap();
        assert!(ok.allow_smt && !ok.pins_measurements());
    }
}
