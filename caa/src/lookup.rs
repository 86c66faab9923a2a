//! The relevant record set of a name (RFC 8659 §3): query CAA at the name, then at each parent
//! of the *original* name, and stop at the first non-empty answer. CNAMEs are followed by the
//! resolver (the target's records govern the alias). Any failure before a non-empty answer
//! makes the result unknown: we fail closed, never read silence as "no record".

use crate::policy::{evaluate, Policy, Verdict};
use crate::CaaRecord;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;
use std::net::SocketAddr;
use std::time::Duration;

/// A resolver config asking exactly these servers (`IP:PORT`, UDP then TCP).
pub fn resolver_config(servers: &[SocketAddr]) -> ResolverConfig {
    let servers = servers
        .iter()
        .map(|a| {
            let mut ns = NameServerConfig::udp_and_tcp(a.ip());
            for c in &mut ns.connections {
                c.port = a.port();
            }
            ns
        })
        .collect();
    ResolverConfig::from_name_servers(servers)
}

/// Why the relevant set could not be determined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// A query failed (timeout, SERVFAIL, refused) before any non-empty answer.
    #[error("CAA lookup for {name} failed: {reason}")]
    Failed {
        /// The name queried.
        name: String,
        /// The resolver's reason.
        reason: String,
    },
    /// The resolver could not be built.
    #[error("DNS resolver: {0}")]
    Resolver(String),
}

/// Where the relevant records were found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelevantSet {
    /// The name whose CAA answer was non-empty (`None`: no CAA anywhere up to the root).
    pub found_at: Option<String>,
    /// The CAA records (after following any CNAME).
    pub records: Vec<CaaRecord>,
    /// CNAME targets met on the way, as (alias, target).
    pub aliases: Vec<(String, String)>,
}

/// A CAA checker asking the given servers (the zone's authoritative ones), without a cache.
#[derive(Debug, Clone)]
pub struct Checker(TokioResolver);

impl Checker {
    /// A checker querying `servers` (`IP:PORT`), each query bounded by `timeout`. The servers
    /// must answer for the name and every ancestor the climb reaches (a recursive resolver,
    /// or an authoritative server holding all of them): a REFUSED answer fails closed.
    pub fn new(servers: &[SocketAddr], timeout: Duration) -> Result<Checker, LookupError> {
        let mut opts = ResolverOpts::default();
        opts.cache_size = 0; // every check sees the zone as it is now
        opts.timeout = timeout;
        opts.attempts = 1;
        let resolver = TokioResolver::builder_with_config(
            resolver_config(servers),
            TokioRuntimeProvider::default(),
        )
        .with_options(opts)
        .build()
        .map_err(|e| LookupError::Resolver(e.to_string()))?;
        Ok(Checker(resolver))
    }

    /// A checker using the system's resolvers (`/etc/resolv.conf`), without a cache.
    pub fn system(timeout: Duration) -> Result<Checker, LookupError> {
        let mut opts = ResolverOpts::default();
        opts.cache_size = 0;
        opts.timeout = timeout;
        let resolver = TokioResolver::builder_tokio()
            .map_err(|e| LookupError::Resolver(e.to_string()))?
            .with_options(opts)
            .build()
            .map_err(|e| LookupError::Resolver(e.to_string()))?;
        Ok(Checker(resolver))
    }

    /// The relevant record set for `name` (a leading `*.` is stripped: the wildcard's records
    /// live at its parent).
    pub async fn relevant_set(&self, name: &str) -> Result<RelevantSet, LookupError> {
        let mut domain = name
            .strip_prefix("*.")
            .unwrap_or(name)
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let mut aliases = Vec::new();
        loop {
            let fqdn = format!("{domain}.");
            match self.0.lookup(fqdn.as_str(), RecordType::CAA).await {
                Ok(lookup) => {
                    let mut records = Vec::new();
                    for r in lookup.answers() {
                        match &r.data {
                            RData::CAA(caa) => records.push(CaaRecord {
                                flags: (u8::from(caa.issuer_critical) << 7) | caa.reserved_flags,
                                tag: caa.tag.clone(),
                                value: caa.value.clone(),
                            }),
                            RData::CNAME(target) => {
                                aliases.push((r.name.to_string(), target.0.to_string()));
                            }
                            _ => {}
                        }
                    }
                    if !records.is_empty() {
                        return Ok(RelevantSet {
                            found_at: Some(domain),
                            records,
                            aliases,
                        });
                    }
                }
                Err(e) if e.is_no_records_found() || e.is_nx_domain() => {}
                Err(e) => {
                    return Err(LookupError::Failed {
                        name: fqdn,
                        reason: e.to_string(),
                    })
                }
            }
            match domain.split_once('.') {
                Some((_, parent)) if !parent.is_empty() => domain = parent.to_owned(),
                _ => {
                    return Ok(RelevantSet {
                        found_at: None,
                        records: Vec::new(),
                        aliases,
                    })
                }
            }
        }
    }

    /// The verdict for `name`: `Unknown` when the lookup failed.
    pub async fn check(&self, name: &str, policy: &Policy) -> Verdict {
        match self.relevant_set(name).await {
            Ok(set) => evaluate(name, &set.records, policy),
            Err(e) => Verdict::Unknown {
                reason: e.to_string(),
            },
        }
    }
}
