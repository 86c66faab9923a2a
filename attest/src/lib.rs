//! TEE attestation for Gatehouse.
//!
//! - [`provider`]: where quotes come from ([`QuoteProvider`]): Linux configfs-tsm
//!   ([`configfs`]), the dstack guest agent ([`dstack`]), or the [`simulator`] (real-format TDX
//!   quotes under a mock Intel PKI made from a seed). `auto` never falls back to the simulator.
//! - [`verify`]: DCAP quote verification (dcap-qvl) at an injected time, against the
//!   [`policy`] (TCB statuses, measurements, RTMR3 event replay from the [`eventlog`]), with
//!   [`collateral`] from a PCCS or carried along.
//! - [`ratls`]: RA-TLS certificates (TCG DICE evidence extension; dstack's format parsed) and
//!   rustls verifiers that run the attestation check and fail closed; [`ratls_cert`]: a
//!   process's own rotating RA-TLS identity, for listeners and clients.
//! - [`bundle`]: the public attestation bundle binding served keys, account and signing keys.
//! - [`seal`]: the TEE-derived sealer; [`statement`]: verifiable signed messages.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bundle;
pub mod collateral;
pub mod configfs;
pub mod dstack;
mod error;
pub mod eventlog;
pub mod hex;
pub mod jcs;
pub mod pccs;
pub mod policy;
pub mod provider;
pub mod ratls;
pub mod ratls_cert;
pub mod seal;
pub mod simulator;
pub mod statement;
pub mod verify;

pub use error::AttestError;
pub use provider::{Evidence, QuoteProvider, TeeKind};

/// SHA-512 of `parts` concatenated.
pub fn sha512(parts: &[&[u8]]) -> [u8; 64] {
    digest(&aws_lc_rs::digest::SHA512, parts)
        .try_into()
        .expect("SHA-512 is 64 bytes")
}

/// SHA-384 of `parts` concatenated.
pub fn sha384(parts: &[&[u8]]) -> [u8; 48] {
    digest(&aws_lc_rs::digest::SHA384, parts)
        .try_into()
        .expect("SHA-384 is 48 bytes")
}

/// SHA-256 of `parts` concatenated.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    digest(&aws_lc_rs::digest::SHA256, parts)
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

fn digest(alg: &'static aws_lc_rs::digest::Algorithm, parts: &[&[u8]]) -> Vec<u8> {
    let mut ctx = aws_lc_rs::digest::Context::new(alg);
    for p in parts {
        ctx.update(p);
    }
    ctx.finish().as_ref().to_vec()
}

/// Seconds since the Unix epoch by the system clock (the production [`Clock`]).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
