//! `[cluster]`: how a node on the etcd backend joins the others (mutual RA-TLS) and hands the
//! cluster sealing key to nodes that join after it. Ignored on the embedded store.

use crate::Problem;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The join listener: members hand the cluster key to attested nodes here.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// How the other nodes reach the join listener (`host:port`); default: `listen` when
    /// it names an address, else this machine's hostname and the listener's port.
    #[serde(default)]
    pub advertise: Option<String>,
    /// The policy a node must pass to join (and a member to hand the key out). Default: the
    /// measurements of this node (MRTD, RTMR0-2 and its runtime events), so only nodes that
    /// run the same software join; give a file listing both versions for a rolling upgrade.
    #[serde(default)]
    pub policy_file: Option<PathBuf>,
    /// How long a new node looks for a member to join before it gives up.
    #[serde(default = "default_join_timeout", with = "humantime_serde")]
    pub join_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig {
            listen: default_listen(),
            advertise: None,
            policy_file: None,
            join_timeout: default_join_timeout(),
        }
    }
}

fn default_listen() -> SocketAddr {
    "0.0.0.0:8445".parse().expect("a socket address")
}

fn default_join_timeout() -> Duration {
    Duration::from_secs(60)
}

impl ClusterConfig {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        if let Some(p) = &mut self.policy_file {
            *p = base.join(&*p);
        }
    }

    pub(crate) fn check(&self, problems: &mut Vec<Problem>) {
        if let Some(a) = &self.advertise {
            let ok = a
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                problems.push(Problem::new(
                    "cluster.advertise",
                    format!("{a:?} is not host:port"),
                ));
            }
        }
        if self.join_timeout.is_zero() {
            problems.push(Problem::new("cluster.join_timeout", "must be more than 0"));
        }
    }
}
