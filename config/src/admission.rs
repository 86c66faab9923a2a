//! `[admission]`: who decides that an app may exist (created through the admin API) and that
//! an app CVM may join the VPC. A webhook (the seam where an on-chain allow-list plugs in: a
//! service reading a contract answers it) or, simpler, an allow-list file.

use crate::Problem;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `[admission]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdmissionConfig {
    /// `http://host:port/path`: POSTed a JSON description of the app (id, measurements,
    /// event log digest); a 2xx answer admits, anything else (or no answer in `timeout`)
    /// denies.
    #[serde(default)]
    pub webhook: Option<String>,
    /// A file of admitted app ids, one per line (`#` starts a comment), read at each
    /// decision.
    #[serde(default)]
    pub allow_list: Option<PathBuf>,
    /// How long the webhook may take.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// How long a webhook's answer (admit or deny) is reused for the same question.
    #[serde(default = "default_cache_for", with = "humantime_serde")]
    pub cache_for: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(3)
}

fn default_cache_for() -> Duration {
    Duration::from_secs(60)
}

impl AdmissionConfig {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        if let Some(p) = &mut self.allow_list {
            *p = base.join(&*p);
        }
    }

    pub(crate) fn check(&self, problems: &mut Vec<Problem>) {
        match (&self.webhook, &self.allow_list) {
            (None, None) => problems.push(Problem::new(
                "admission",
                "set webhook or allow_list (without [admission] every app is admitted)",
            )),
            (Some(_), Some(_)) => problems.push(Problem::new(
                "admission.allow_list",
                "contradicts admission.webhook: choose one",
            )),
            _ => {}
        }
        if let Some(url) = &self.webhook {
            let ok = url
                .strip_prefix("http://")
                .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
            if !ok {
                problems.push(Problem::new(
                    "admission.webhook",
                    format!(
                        "{url:?} is not an http:// URL (the webhook is a local service: run it \
                         beside the gateway, or behind a TLS-terminating sidecar)"
                    ),
                ));
            }
        }
        if let Some(p) = self.allow_list.as_ref().filter(|p| !p.is_file()) {
            problems.push(Problem::new(
                "admission.allow_list",
                format!("{} is not a readable file", p.display()),
            ));
        }
        if self.timeout.is_zero() {
            problems.push(Problem::new("admission.timeout", "must be more than 0s"));
        }
    }
}
