//! `[ct]`: the Certificate Transparency watch (crate `gatehouse-ct`). Absent, nothing is
//! watched and the attestation claims carry no `ct` status (a browser shows "not watched").

use crate::Problem;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `[ct]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CtConfig {
    /// The sources asked each round: `certspotter`, `crtsh` (both by default).
    #[serde(default = "default_sources")]
    pub sources: Vec<CtSourceKind>,
    /// Cert Spotter's API.
    #[serde(default = "default_certspotter")]
    pub certspotter_url: String,
    /// A file holding a Cert Spotter API key (anonymous use is rate-limited).
    #[serde(default)]
    pub certspotter_key_file: Option<PathBuf>,
    /// crt.sh.
    #[serde(default = "default_crtsh")]
    pub crtsh_url: String,
    /// Between rounds.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// A source without a full answer for this long makes the status `stale`.
    #[serde(default = "default_stale_after", with = "humantime_serde")]
    pub stale_after: Duration,
    /// Where alerts are POSTed as JSON (https, or http on loopback).
    #[serde(default)]
    pub webhook: Option<String>,
    /// The domains watched with their subdomains; default: the base domains and
    /// `[acme] domains`.
    #[serde(default)]
    pub domains: Vec<String>,
}

/// One CT search service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CtSourceKind {
    /// SSLMate's Cert Spotter issuance API.
    Certspotter,
    /// Sectigo's crt.sh.
    Crtsh,
}

fn default_sources() -> Vec<CtSourceKind> {
    vec![CtSourceKind::Certspotter, CtSourceKind::Crtsh]
}
fn default_certspotter() -> String {
    "https://api.certspotter.com".into()
}
fn default_crtsh() -> String {
    "https://crt.sh".into()
}
fn default_interval() -> Duration {
    Duration::from_secs(600)
}
fn default_stale_after() -> Duration {
    Duration::from_secs(3 * 3600)
}

impl CtConfig {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        if let Some(f) = &mut self.certspotter_key_file {
            *f = base.join(&*f);
        }
    }

    pub(crate) fn check(&self, problems: &mut Vec<Problem>) {
        if self.sources.is_empty() {
            problems.push(Problem::new(
                "ct.sources",
                "names no source: the status would never be clean",
            ));
        }
        if self.interval < Duration::from_secs(1) {
            problems.push(Problem::new("ct.interval", "must be at least 1s"));
        }
        if self.stale_after < self.interval {
            problems.push(Problem::new(
                "ct.stale_after",
                "is shorter than ct.interval: the status would be stale between every two rounds",
            ));
        }
        for (key, url) in [
            ("ct.certspotter_url", &self.certspotter_url),
            ("ct.crtsh_url", &self.crtsh_url),
        ]
        .into_iter()
        .chain(self.webhook.iter().map(|w| ("ct.webhook", w)))
        {
            if !url.starts_with("https://")
                && !url.starts_with("http://127.0.0.1")
                && !url.starts_with("http://localhost")
            {
                problems.push(Problem::new(
                    key,
                    "must be https (plain http only to loopback)",
                ));
            }
        }
        for (i, d) in self.domains.iter().enumerate() {
            if let Some(p) = crate::dns_name_problem(d.trim_start_matches("*.")) {
                problems.push(Problem::new(format!("ct.domains[{i}]"), p));
            }
        }
    }
}
