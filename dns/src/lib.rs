//! Writing the DNS records Gatehouse owns: the ACME DNS-01 TXT (`_acme-challenge.<name>`) and
//! the CAA records that lock a domain to our ACME account.
//!
//! One trait, [`DnsProvider`], with two implementations:
//! - [`Rfc2136`]: dynamic updates (RFC 2136) signed with TSIG (RFC 8945), sent over TCP to the
//!   zone's primary server. Each change is one update message, which the server applies
//!   atomically, so a CAA replacement has no intermediate state at all.
//! - [`Cloudflare`]: the Cloudflare v4 API (one record per call); CAA changes follow
//!   [`gatehouse_caa::plan::update`]'s order (guards first) so no step opens issuance.
//!
//! [`propagation::wait_for_txt`] polls the zone's authoritative servers until a record is
//! visible on every one of them, bounded by a deadline.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cloudflare;
pub mod propagation;
pub mod rfc2136;
pub mod wire;
mod zones;

pub use cloudflare::Cloudflare;
pub use gatehouse_caa::CaaRecord;
pub use rfc2136::{Rfc2136, TsigKey};
pub use zones::zone_of;

use gatehouse_caa::plan::{self, Step};

/// Why a DNS change or read failed. Each message names the server or API and the cause.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// No configured zone contains the name.
    #[error("{name}: not inside any zone this provider manages ({zones})")]
    NoZone {
        /// The name.
        name: String,
        /// The zones configured.
        zones: String,
    },
    /// The server does not know the TSIG key (BADKEY) or the signature did not verify (BADSIG).
    #[error("{server}: TSIG key {key:?} refused ({why}); check the key name, algorithm and secret on both sides")]
    TsigRefused {
        /// The server.
        server: String,
        /// The key name.
        key: String,
        /// BADKEY / BADSIG / BADTIME as the server said.
        why: String,
    },
    /// The server answered with an error code.
    #[error("{server}: update of {zone} refused: {rcode}{hint}")]
    Rejected {
        /// The server.
        server: String,
        /// The zone.
        zone: String,
        /// The response code.
        rcode: String,
        /// What usually causes it.
        hint: &'static str,
    },
    /// The server's answer could not be trusted or read (bad TSIG on the response, garbage).
    #[error("{server}: bad response: {reason}")]
    BadResponse {
        /// The server.
        server: String,
        /// Why.
        reason: String,
    },
    /// Network failure or timeout talking to a server or API.
    #[error("{server}: {reason}")]
    Io {
        /// The server or API.
        server: String,
        /// Why.
        reason: String,
    },
    /// The API answered with an error.
    #[error("{api}: {status}: {message}")]
    Api {
        /// The API.
        api: String,
        /// HTTP status.
        status: u16,
        /// The API's own error messages.
        message: String,
    },
    /// A configuration value is unusable (key secret, algorithm, token).
    #[error("{0}")]
    Config(String),
    /// A record did not appear on every authoritative server before the deadline.
    #[error("{name} {kind} not visible on {missing} after {waited:?}")]
    NotPropagated {
        /// The record's name.
        name: String,
        /// TXT / CAA.
        kind: &'static str,
        /// The servers that did not have it yet.
        missing: String,
        /// How long we polled.
        waited: std::time::Duration,
    },
}

/// A DNS provider: the writes ACME and CAA locking need. Names are absolute, without the
/// trailing dot (`_acme-challenge.gw.example.com`).
#[async_trait::async_trait]
pub trait DnsProvider: Send + Sync + std::fmt::Debug {
    /// A short description for logs (`rfc2136 127.0.0.1:53`, `cloudflare`).
    fn describe(&self) -> String;

    /// Adds the TXT value at `name`, keeping other values there (the apex and wildcard
    /// challenges of one order share `_acme-challenge.<base>`). Idempotent.
    async fn add_txt(&self, name: &str, value: &str) -> Result<(), DnsError>;

    /// Removes the TXT value at `name` if present; other values stay.
    async fn remove_txt(&self, name: &str, value: &str) -> Result<(), DnsError>;

    /// The CAA records at exactly `name` (no climb; see `gatehouse_caa::lookup` for that).
    async fn list_caa(&self, name: &str) -> Result<Vec<CaaRecord>, DnsError>;

    /// Applies CAA steps at `name` in order. A provider that can apply them in one atomic
    /// transaction should.
    async fn apply_caa(&self, name: &str, steps: &[Step]) -> Result<(), DnsError>;

    /// Makes `name`'s issue/issuewild records exactly `wanted` (other tags untouched), in the
    /// order of [`plan::update`]; returns the steps taken (empty: it was already so).
    async fn set_caa(&self, name: &str, wanted: &[CaaRecord]) -> Result<Vec<Step>, DnsError> {
        let current = self.list_caa(name).await?;
        let steps = plan::update(&current, wanted);
        if !steps.is_empty() {
            self.apply_caa(name, &steps).await?;
        }
        Ok(steps)
    }
}
