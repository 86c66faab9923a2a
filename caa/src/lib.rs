//! CAA: who may obtain certificates for our names, and whether that is only us.
//!
//! [`value::parse_issue_value`] is our own RFC 8659 / RFC 8657 parser (hickory 0.26 rejects
//! legal whitespace and accepts a trailing-dot issuer; see shared/research/attestation.md §5.3):
//! a malformed value authorizes nobody, it never reads as "no record". [`policy::evaluate`]
//! turns the relevant record set of one served name into a [`Verdict`], and
//! [`lookup::Checker`] finds that set over DNS (hickory for transport only: tree climbing,
//! CNAMEs, fail-closed on any error). The DNS providers that write records come with the ACME
//! work. [`plan`] gives the records that lock a name and
//! the order to write them in (guards first: no intermediate state opens issuance).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod lookup;
pub mod plan;
pub mod policy;
pub mod value;

pub use policy::{evaluate, Policy, Verdict};

/// One CAA resource record as read from DNS (transport-neutral).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaaRecord {
    /// The flags octet; bit 7 (128) is issuer-critical.
    pub flags: u8,
    /// The property tag (`issue`, `issuewild`, `iodef`, ...), compared case-insensitively.
    pub tag: String,
    /// The raw value bytes.
    pub value: Vec<u8>,
}

impl CaaRecord {
    /// A record from its parts.
    pub fn new(flags: u8, tag: &str, value: &str) -> CaaRecord {
        CaaRecord {
            flags,
            tag: tag.to_owned(),
            value: value.as_bytes().to_vec(),
        }
    }
}
