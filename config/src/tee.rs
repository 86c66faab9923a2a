//! `[tee]`: where attestation quotes come from and what seals secrets.
//!
//! Absent, the section means `provider = "auto"`: a gateway that finds no TEE refuses to
//! start rather than run unattested. `provider = "none"` runs a plain router (no bundle,
//! development sealer unless `sealing` says otherwise) and says so at every start.

use crate::Problem;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// `[tee]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeeConfig {
    /// The quote source.
    #[serde(default)]
    pub provider: TeeProvider,
    /// configfs-tsm report directory.
    #[serde(default = "default_configfs")]
    pub configfs_path: PathBuf,
    /// The dstack guest agent socket (default: probe the usual places).
    #[serde(default)]
    pub dstack_socket: Option<PathBuf>,
    /// What seals keys at rest.
    #[serde(default)]
    pub sealing: Sealing,
    /// Also serve dstack's `/.dstack/acme-info` shape.
    #[serde(default)]
    pub dstack_acme_info: bool,
    /// Where collateral for real quotes comes from (PCCS API v4).
    #[serde(default = "default_pccs")]
    pub pccs_url: String,
    /// The simulated TD's measurements (`provider = "simulator"`).
    #[serde(default)]
    pub simulator: SimulatorSettings,
}

impl Default for TeeConfig {
    fn default() -> TeeConfig {
        TeeConfig {
            provider: TeeProvider::default(),
            configfs_path: default_configfs(),
            dstack_socket: None,
            sealing: Sealing::default(),
            dstack_acme_info: false,
            pccs_url: default_pccs(),
            simulator: SimulatorSettings::default(),
        }
    }
}

fn default_pccs() -> String {
    "https://pccs.phala.network".into()
}

fn default_configfs() -> PathBuf {
    PathBuf::from("/sys/kernel/config/tsm/report/com.intel.dcap")
}

/// `[tee] provider`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TeeProvider {
    /// A real TEE (configfs-tsm, then the dstack agent); never the simulator.
    #[default]
    Auto,
    /// Linux configfs-tsm.
    ConfigfsTsm,
    /// The dstack guest agent.
    Dstack,
    /// Simulated quotes under a public mock PKI (development).
    Simulator,
    /// No attestation at all.
    None,
}

/// `[tee] sealing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sealing {
    /// A key from the TEE (dstack KMS; the simulator's measurement-bound key).
    #[default]
    Tee,
    /// A key in a file in the state directory (development only).
    Development,
}

/// `[tee.simulator]`: measurements as 96 hex digits; absent ones have fixed defaults.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorSettings {
    /// MRTD.
    #[serde(default)]
    pub mrtd: Option<String>,
    /// RTMR0.
    #[serde(default)]
    pub rtmr0: Option<String>,
    /// RTMR1.
    #[serde(default)]
    pub rtmr1: Option<String>,
    /// RTMR2.
    #[serde(default)]
    pub rtmr2: Option<String>,
    /// Simulate a TD with DEBUG on (verifiers refuse it).
    #[serde(default)]
    pub debug: bool,
}

impl SimulatorSettings {
    /// `(key, value)` of each measurement set.
    pub fn measurements(&self) -> [(&'static str, &Option<String>); 4] {
        [
            ("mrtd", &self.mrtd),
            ("rtmr0", &self.rtmr0),
            ("rtmr1", &self.rtmr1),
            ("rtmr2", &self.rtmr2),
        ]
    }
}

impl TeeConfig {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        self.configfs_path = base.join(&self.configfs_path);
        if let Some(s) = &mut self.dstack_socket {
            *s = base.join(&*s);
        }
    }

    pub(crate) fn check(&self, problems: &mut Vec<Problem>) {
        for (key, value) in self.simulator.measurements() {
            if let Some(v) = value {
                let hex = v.len() == 96 && v.bytes().all(|b| b.is_ascii_hexdigit());
                if !hex {
                    problems.push(Problem::new(
                        format!("tee.simulator.{key}"),
                        "must be 48 bytes as 96 hex digits",
                    ));
                }
            }
        }
        let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"];
        if !self.pccs_url.starts_with("https://")
            && !loopback.iter().any(|p| self.pccs_url.starts_with(p))
        {
            problems.push(Problem::new(
                "tee.pccs_url",
                format!("{:?} must be an https:// URL", self.pccs_url),
            ));
        }
        if self.provider == TeeProvider::None && self.sealing == Sealing::Tee {
            problems.push(Problem::new(
                "tee.sealing",
                "provider = \"none\" has no TEE to seal with: set sealing = \"development\"",
            ));
        }
    }
}
