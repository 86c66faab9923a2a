//! Waiting until a record is visible on every authoritative server of its zone: polled, with
//! a deadline, never a fixed sleep.

use crate::wire::{self, fqdn};
use crate::DnsError;
use hickory_proto::rr::{RData, RecordType};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::time::Instant;

/// How to poll.
#[derive(Debug, Clone)]
pub struct Poll {
    /// The zone's authoritative servers (each must show the record).
    pub servers: Vec<SocketAddr>,
    /// Give up after this long.
    pub timeout: Duration,
    /// Wait between rounds.
    pub interval: Duration,
}

/// Returns once every server in `poll` answers `name` TXT with `value` among its values.
/// Errors name the servers that never showed it.
pub async fn wait_for_txt(poll: &Poll, name: &str, value: &str) -> Result<(), DnsError> {
    let fq = fqdn(name)?;
    let start = Instant::now();
    let per_query = poll.interval.max(Duration::from_secs(2));
    let mut pending: Vec<SocketAddr> = poll.servers.clone();
    loop {
        let mut still = Vec::new();
        for server in pending {
            let seen = match wire::query(server, &fq, RecordType::TXT, per_query).await {
                Ok(answers) => answers.iter().any(|r| match &r.data {
                    RData::TXT(t) => {
                        let joined: Vec<u8> =
                            t.txt_data.iter().flat_map(|d| d.iter().copied()).collect();
                        joined == value.as_bytes()
                    }
                    _ => false,
                }),
                Err(e) => {
                    tracing::debug!(%server, "propagation poll: {e}");
                    false
                }
            };
            if !seen {
                still.push(server);
            }
        }
        if still.is_empty() {
            tracing::debug!(name, waited = ?start.elapsed(), "TXT visible on every authoritative server");
            return Ok(());
        }
        if start.elapsed() + poll.interval > poll.timeout {
            return Err(DnsError::NotPropagated {
                name: name.to_owned(),
                kind: "TXT",
                missing: still
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                waited: start.elapsed(),
            });
        }
        pending = still;
        tokio::time::sleep(poll.interval).await;
    }
}

/// The authoritative servers of `zone` (its NS targets' addresses, port 53), found through
/// `resolvers` (`IP:PORT`; empty = the system's).
pub async fn authoritative_servers(
    zone: &str,
    resolvers: &[SocketAddr],
) -> Result<Vec<SocketAddr>, DnsError> {
    let resolver = resolver(resolvers)?;
    let fail = |reason: String| DnsError::Io {
        server: "resolver".into(),
        reason,
    };
    let ns = resolver
        .lookup(
            format!("{}.", zone.trim_end_matches('.')).as_str(),
            RecordType::NS,
        )
        .await
        .map_err(|e| fail(format!("NS of {zone}: {e}")))?;
    let mut out = Vec::new();
    for record in ns.answers() {
        if let RData::NS(target) = &record.data {
            let ips = resolver
                .lookup_ip(target.0.to_string().as_str())
                .await
                .map_err(|e| fail(format!("address of {}: {e}", target.0)))?;
            out.extend(ips.iter().map(|ip| SocketAddr::new(ip, 53)));
        }
    }
    if out.is_empty() {
        return Err(fail(format!("{zone} has no NS records")));
    }
    Ok(out)
}

fn resolver(servers: &[SocketAddr]) -> Result<hickory_resolver::TokioResolver, DnsError> {
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    use hickory_resolver::TokioResolver;
    let built = if servers.is_empty() {
        TokioResolver::builder_tokio().map(|b| b.build())
    } else {
        Ok(TokioResolver::builder_with_config(
            gatehouse_caa::lookup::resolver_config(servers),
            TokioRuntimeProvider::default(),
        )
        .build())
    };
    match built {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) | Err(e) => Err(DnsError::Config(format!("DNS resolver: {e}"))),
    }
}
