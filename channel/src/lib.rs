//! The encrypted channel from a browser into the TEE.
//!
//! Certificate Transparency and CAA let a page say "this domain's keys are attested"; they
//! cannot say that a response came from the TEE, because whoever terminates TLS in between (a
//! mis-issued certificate, a company's intercepting proxy, a CDN) reads every byte. This crate
//! is the gateway's half of a channel of its own, end to end between a verified service worker
//! and the TEE:
//!
//! - [`keys`]: an HPKE key pair (X25519, HKDF-SHA256, AES-128-GCM or ChaCha20-Poly1305) made
//!   inside the TEE, sealed into the store (so a cluster shares it as it shares
//!   certificates), rotated on a schedule with the previous key accepted for a grace period;
//!   its public key configuration is published in the attestation bundle's claims, which the
//!   quote binds.
//! - [`gate`]: an Oblivious HTTP request (RFC 9458) opened with the key its id names, the
//!   Binary HTTP request inside (RFC 9292) read, a replayed or stale request refused; the
//!   response sealed to that request's context.
//!
//! The encapsulation and the HPKE are the `ohttp` and `bhttp` crates (Martin Thomson's, the
//! RFCs' editor), not ours. The gateway proxies the inner request as any other request.

pub mod gate;
pub mod keys;

pub use gate::{Gate, Opened, REQUEST_MEDIA_TYPE, RESPONSE_MEDIA_TYPE};
pub use keys::{describe_key_list, KeySet, Rotation};

/// Why a channel request or a key operation failed. Each message names its cause.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The body is not an Oblivious HTTP request (too short, an unknown suite, bad framing).
    #[error("not an encapsulated request: {0}")]
    Malformed(String),
    /// The key id is not one the gateway holds now.
    #[error("unknown channel key id {0}: rotated out past its grace period, or never ours")]
    UnknownKey(u8),
    /// The ciphertext does not open with the key its id names.
    #[error(
        "the request does not open with channel key {0}: tampered with, or sealed to another key"
    )]
    Tampered(u8),
    /// The inner message is not a Binary HTTP request.
    #[error("the inner message is not a binary HTTP request: {0}")]
    Message(String),
    /// This encapsulation was opened before.
    #[error("replayed request: this encapsulation was opened before")]
    Replayed,
    /// The inner request has no `date` field.
    #[error("the inner request carries no date field: replay protection needs one")]
    NoDate,
    /// The inner request's date is outside the replay window.
    #[error("the inner request's date is {skew} s from the gateway's clock, outside the replay window of {window} s")]
    Stale {
        /// Its date minus now, in seconds.
        skew: i64,
        /// The window either side of now.
        window: u64,
    },
    /// So many requests arrived inside the replay window that the gateway cannot remember
    /// more: refused rather than forgotten.
    #[error(
        "too many channel requests inside the replay window to remember another; retry shortly"
    )]
    Busy,
    /// The response could not be sealed.
    #[error("sealing the response: {0}")]
    Seal(String),
    /// The key set could not be made, read or written.
    #[error("channel keys: {0}")]
    Keys(String),
    /// The store refused.
    #[error("store: {0}")]
    Store(#[from] gatehouse_store::StoreError),
    /// Sealing or unsealing the stored keys failed (a wrong sealing key, or tampered state).
    #[error("sealed channel keys: {0}")]
    Sealing(#[from] gatehouse_store::SealError),
}

impl ChannelError {
    /// The HTTP status a client is answered with: 400 for a request that cannot be opened or
    /// is refused, 503 when the gateway is too busy to remember it, 500 for the gateway's own
    /// failures.
    pub fn status(&self) -> u16 {
        match self {
            ChannelError::Malformed(_)
            | ChannelError::UnknownKey(_)
            | ChannelError::Tampered(_)
            | ChannelError::Message(_)
            | ChannelError::Replayed
            | ChannelError::NoDate
            | ChannelError::Stale { .. } => 400,
            ChannelError::Busy => 503,
            _ => 500,
        }
    }
}
