//! Where quotes come from: one trait, three sources, and the choice among them.
//!
//! `auto` probes for a real TEE (configfs-tsm with a `tdx_guest` provider, then the dstack
//! agent socket) and fails when there is none: it never falls back to the simulator. The
//! simulator runs only when asked for by name, refuses to run where a real TEE exists, and
//! says so loudly at every start.

use crate::collateral::Collateral;
use crate::eventlog::Event;
use crate::AttestError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;

/// The kind of evidence, which decides the trust root a verifier uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TeeKind {
    /// An Intel TDX quote from real hardware (verified under Intel's root).
    #[serde(rename = "tdx")]
    Tdx,
    /// A TDX-format quote signed by the simulator's mock Intel PKI (insecure, development).
    #[serde(rename = "tdx-simulated")]
    Simulated,
}

impl std::fmt::Display for TeeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TeeKind::Tdx => "tdx",
            TeeKind::Simulated => "tdx-simulated",
        })
    }
}

/// A quote and what a verifier needs beside it to interpret it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// Which root the quote chains to.
    pub tee: TeeKind,
    /// The raw quote.
    #[serde(with = "crate::hex::serde")]
    pub quote: Vec<u8>,
    /// Runtime (RTMR3) events, replayable against the quote's RTMR3; may be empty.
    #[serde(default)]
    pub event_log: Vec<Event>,
}

/// A source of quotes binding caller-chosen report data.
#[async_trait::async_trait]
pub trait QuoteProvider: Send + Sync + std::fmt::Debug {
    /// The kind of quotes it makes.
    fn kind(&self) -> TeeKind;
    /// One line for logs: which source, where.
    fn describe(&self) -> String;
    /// A quote whose report data is `report_data`.
    async fn quote(&self, report_data: [u8; 64]) -> Result<Evidence, AttestError>;
    /// Collateral the provider vouches for (the simulator's own); real TEEs return `None`
    /// and the collateral comes from a PCCS.
    fn collateral(&self) -> Option<Collateral> {
        None
    }
}

/// Which source `[tee] provider` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderChoice {
    /// Probe for a real TEE; fail without one.
    Auto,
    /// Linux configfs-tsm at this report directory.
    ConfigfsTsm(PathBuf),
    /// The dstack guest agent at this socket.
    Dstack(PathBuf),
    /// The simulator (development only).
    Simulator(Box<crate::simulator::SimulatorConfig>),
}

/// Where a real TEE would show itself on this machine, so tests can point elsewhere.
#[derive(Debug, Clone)]
pub struct Probe {
    /// configfs-tsm report root (`/sys/kernel/config/tsm/report`).
    pub tsm_root: PathBuf,
    /// Sockets of the dstack guest agent, first found wins.
    pub dstack_sockets: Vec<PathBuf>,
    /// Device nodes whose presence means a real TEE (`/dev/tdx_guest`...).
    pub devices: Vec<PathBuf>,
}

impl Default for Probe {
    fn default() -> Probe {
        Probe {
            tsm_root: PathBuf::from(crate::configfs::TSM_REPORT_ROOT),
            dstack_sockets: crate::dstack::DEFAULT_SOCKETS
                .iter()
                .map(PathBuf::from)
                .collect(),
            devices: ["/dev/tdx_guest", "/dev/sev-guest", "/dev/tdx-guest"]
                .iter()
                .map(PathBuf::from)
                .collect(),
        }
    }
}

impl Probe {
    /// The real TEE this machine shows, if any, as the choice `auto` would make.
    pub fn real_tee(&self) -> Option<ProviderChoice> {
        if crate::configfs::tdx_available(&self.tsm_root) {
            return Some(ProviderChoice::ConfigfsTsm(
                self.tsm_root.join(crate::configfs::REPORT_NAME),
            ));
        }
        if let Some(s) = self.dstack_sockets.iter().find(|p| p.exists()) {
            return Some(ProviderChoice::Dstack(s.clone()));
        }
        None
    }

    /// Evidence of a real TEE (a device node or an agent socket), for the simulator's refusal.
    pub fn any_tee_sign(&self) -> Option<PathBuf> {
        if crate::configfs::tdx_available(&self.tsm_root) {
            return Some(self.tsm_root.clone());
        }
        self.devices
            .iter()
            .chain(&self.dstack_sockets)
            .find(|p| p.exists())
            .cloned()
    }
}

/// Opens the provider `choice` names. `auto` without a TEE is an error naming what was probed.
pub fn open(choice: &ProviderChoice, probe: &Probe) -> Result<Arc<dyn QuoteProvider>, AttestError> {
    match choice {
        ProviderChoice::Auto => match probe.real_tee() {
            Some(real) => open(&real, probe),
            None => Err(AttestError::NoTee(format!(
                "tee.provider = \"auto\" found no TEE (no tdx_guest provider under {}, no dstack \
                 agent at {}); add `[tee] provider = \"none\"` to run as a plain router without \
                 attestation, or `provider = \"simulator\"` to try it with simulated quotes",
                probe.tsm_root.display(),
                probe
                    .dstack_sockets
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        },
        ProviderChoice::ConfigfsTsm(dir) => {
            Ok(Arc::new(crate::configfs::ConfigfsTsm::new(dir.clone())))
        }
        ProviderChoice::Dstack(socket) => {
            Ok(Arc::new(crate::dstack::DstackAgent::new(socket.clone())))
        }
        ProviderChoice::Simulator(config) => {
            if let Some(sign) = probe.any_tee_sign() {
                return Err(AttestError::SimulatorRefused(format!(
                    "a real TEE is present ({}); use tee.provider = \"auto\"",
                    sign.display()
                )));
            }
            tracing::warn!(
                "SIMULATED TEE: quotes are signed by a mock Intel PKI anyone can reproduce; \
                 they prove nothing about this machine. For development and tests only."
            );
            Ok(Arc::new(crate::simulator::Simulator::new(
                (**config).clone(),
            )?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty_probe(dir: &std::path::Path) -> Probe {
        Probe {
            tsm_root: dir.join("tsm"),
            dstack_sockets: vec![dir.join("dstack.sock")],
            devices: vec![dir.join("tdx_guest")],
        }
    }

    #[test]
    fn auto_without_a_tee_fails_and_never_simulates() {
        let dir = tempfile::tempdir().unwrap();
        let e = open(&ProviderChoice::Auto, &empty_probe(dir.path())).unwrap_err();
        assert!(matches!(e, AttestError::NoTee(_)), "{e}");
        assert!(
            e.to_string().contains("simulator"),
            "hint names the option: {e}"
        );
    }

    #[test]
    fn simulator_refuses_where_a_real_tee_exists() {
        let dir = tempfile::tempdir().unwrap();
        let probe = empty_probe(dir.path());
        let sim = ProviderChoice::Simulator(Box::default());
        assert_eq!(open(&sim, &probe).unwrap().kind(), TeeKind::Simulated);
        std::fs::write(dir.path().join("tdx_guest"), b"").unwrap();
        let e = open(&sim, &probe).unwrap_err();
        assert!(matches!(e, AttestError::SimulatorRefused(_)), "{e}");
    }

    #[test]
    fn auto_picks_configfs_then_dstack() {
        let dir = tempfile::tempdir().unwrap();
        let probe = empty_probe(dir.path());
        std::fs::write(dir.path().join("dstack.sock"), b"").unwrap();
        assert!(matches!(probe.real_tee(), Some(ProviderChoice::Dstack(_))));
        let report = probe.tsm_root.join("probe");
        std::fs::create_dir_all(&report).unwrap();
        std::fs::write(report.join("provider"), b"tdx_guest\n").unwrap();
        assert!(matches!(
            probe.real_tee(),
            Some(ProviderChoice::ConfigfsTsm(_))
        ));
    }
}
