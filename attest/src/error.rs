//! One error type for the crate; each variant names a distinct failed check.

/// Why attestation, verification, sealing or signing failed.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// No TEE is available where one was required.
    #[error("no TEE: {0}")]
    NoTee(String),
    /// The simulator would not start (a real TEE is present).
    #[error("simulator refused: {0}")]
    SimulatorRefused(String),
    /// A quote source failed (device, agent socket).
    #[error("{provider}: {reason}")]
    Provider {
        /// Which source.
        provider: &'static str,
        /// Why.
        reason: String,
    },
    /// Bytes that should be a quote, certificate, event log or bundle are not.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being parsed.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The quote does not chain to the trusted root (e.g. a simulator quote checked against
    /// Intel's root, or the reverse).
    #[error("quote is not signed under the trusted root ({root}): {reason}")]
    UntrustedRoot {
        /// Which root was trusted.
        root: &'static str,
        /// dcap-qvl's reason.
        reason: String,
    },
    /// A signature over the quote, QE report or collateral does not verify.
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// The collateral is outside its validity window at the verification time.
    #[error(
        "collateral expired: {what} was valid until {until} (unix), verification time is {now}"
    )]
    CollateralExpired {
        /// Which part expired first.
        what: String,
        /// Its nextUpdate (unix seconds).
        until: u64,
        /// The verification time.
        now: u64,
    },
    /// The collateral was issued after the verification time.
    #[error(
        "collateral not yet valid: {what} issued at {from} (unix), verification time is {now}"
    )]
    CollateralNotYetValid {
        /// Which part.
        what: String,
        /// Its issue date (unix seconds).
        from: u64,
        /// The verification time.
        now: u64,
    },
    /// Collateral could not be obtained or parsed.
    #[error("collateral: {0}")]
    Collateral(String),
    /// Any other quote verification failure reported by dcap-qvl.
    #[error("quote verification failed: {0}")]
    Quote(String),
    /// The verified quote does not satisfy the policy.
    #[error("policy: {check}: {reason}")]
    Policy {
        /// The policy item that failed (`tcb_status`, `mrtd`, `rtmr3`, `event:<name>`...).
        check: String,
        /// Why.
        reason: String,
    },
    /// A policy file is invalid.
    #[error("policy file {path}: {reason}")]
    PolicyFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The quote's report data does not bind what it should.
    #[error("report data mismatch: the quote binds {found}, expected {expected}")]
    ReportData {
        /// Hex of the quote's report data.
        found: String,
        /// Hex of what the claims/key give.
        expected: String,
    },
    /// An RA-TLS certificate is missing its evidence or binds another key.
    #[error("RA-TLS: {0}")]
    RaTls(String),
    /// A bundle's claims do not cover what was checked.
    #[error("claims: {0}")]
    Claims(String),
    /// A signed statement does not verify.
    #[error("statement: {0}")]
    Statement(String),
    /// Sealing key derivation or sealing failed.
    #[error("sealing: {0}")]
    Seal(String),
}

impl AttestError {
    pub(crate) fn malformed(what: &'static str, reason: impl std::fmt::Display) -> AttestError {
        AttestError::Malformed {
            what,
            reason: reason.to_string(),
        }
    }

    /// A policy refusal naming its check.
    pub fn policy(check: impl Into<String>, reason: impl Into<String>) -> AttestError {
        AttestError::Policy {
            check: check.into(),
            reason: reason.into(),
        }
    }
}
