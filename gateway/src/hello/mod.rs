//! The ClientHello, read without being consumed.
//!
//! A hello may span several TLS records (browsers split post-quantum hellos of ~1.8 KB) and
//! arrive over many reads. [`read`] buffers raw bytes until [`record::reassemble`] has a whole
//! handshake message, [`parse::parse`] extracts SNI and ALPN, and the caller replays the
//! buffered bytes unchanged ([`replay::Prefixed`] for rustls, a plain write for passthrough).
//!
//! Each step answers "done", "need more bytes" or "reject (reason)", with a stated bound:
//! [`MAX_HELLO_BYTES`] of raw input.

pub mod parse;
pub mod record;
pub mod replay;

use std::io;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Raw bytes buffered while waiting for a complete ClientHello, record headers included.
/// Real hellos are 0.2-2 KB (Chrome's X25519MLKEM768 hello is ~1.8 KB); 16 KiB leaves room for
/// large extensions while bounding what one unauthenticated client can make us hold.
pub const MAX_HELLO_BYTES: usize = 16 * 1024;

/// What the gateway needs from a ClientHello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The `host_name` of the SNI extension, lower-cased.
    pub sni: String,
    /// ALPN protocols offered, in the client's order.
    pub alpn: Vec<Vec<u8>>,
}

impl ClientHello {
    /// Whether the client offered `proto` by ALPN.
    pub fn offers(&self, proto: &[u8]) -> bool {
        self.alpn.iter().any(|p| p == proto)
    }
}

/// Why a connection's first bytes were not an acceptable ClientHello.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// The first byte is not a TLS handshake record (plain HTTP, SSH, scanners...).
    #[error("not TLS (first byte {0:#04x})")]
    NotTls(u8),
    /// A record other than handshake arrived before the hello was complete.
    #[error("unexpected record type {0} inside the ClientHello")]
    UnexpectedRecord(u8),
    /// The first handshake message is not a ClientHello.
    #[error("first handshake message is type {0}, not ClientHello")]
    NotClientHello(u8),
    /// Structural violation of RFC 8446/5246 framing or of the hello's fields.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    /// More than [`MAX_HELLO_BYTES`] without a complete hello.
    #[error("ClientHello larger than {MAX_HELLO_BYTES} bytes")]
    TooLarge,
    /// The hello carries no SNI `host_name`: we cannot route it.
    #[error("no SNI in ClientHello")]
    NoSni,
    /// The SNI is present but not a host name.
    #[error("invalid SNI: {0}")]
    BadSni(&'static str),
    /// The client closed before the hello was complete.
    #[error("connection closed after {0} bytes, before a complete ClientHello")]
    Truncated(usize),
}

impl HelloError {
    /// The TLS alert description to send before closing, where one applies.
    pub fn alert(&self) -> Option<u8> {
        match self {
            HelloError::NotTls(_) | HelloError::Truncated(_) => None,
            HelloError::UnexpectedRecord(_) | HelloError::NotClientHello(_) => {
                Some(alert::UNEXPECTED_MESSAGE)
            }
            HelloError::Malformed(_) | HelloError::TooLarge | HelloError::BadSni(_) => {
                Some(alert::DECODE_ERROR)
            }
            HelloError::NoSni => Some(alert::HANDSHAKE_FAILURE),
        }
    }
}

/// TLS alert descriptions (RFC 8446 §6) we send on rejection.
pub mod alert {
    /// A message arrived out of order.
    pub const UNEXPECTED_MESSAGE: u8 = 10;
    /// No acceptable set of parameters (here: no SNI).
    pub const HANDSHAKE_FAILURE: u8 = 40;
    /// A message could not be decoded.
    pub const DECODE_ERROR: u8 = 50;
    /// We failed on our side (no instance reachable).
    pub const INTERNAL_ERROR: u8 = 80;
    /// The SNI names nothing we serve.
    pub const UNRECOGNIZED_NAME: u8 = 112;

    /// A fatal alert record, plaintext (sent before any key exchange).
    pub fn record(description: u8) -> [u8; 7] {
        [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, description]
    }
}

/// Reads from `io` into `buf` until `buf[start..]` holds a complete ClientHello, and parses it.
///
/// `buf[..start]` is whatever came before the hello (a PROXY header). Nothing is consumed:
/// every byte read stays in `buf`, including bytes after the hello. The caller bounds the time.
pub async fn read<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut Vec<u8>,
    start: usize,
) -> Result<Result<ClientHello, HelloError>, io::Error> {
    let mut need = 0;
    loop {
        if buf.len() - start >= need {
            match record::progress(&buf[start..]) {
                Ok(record::Progress::Done(message)) => return Ok(parse::parse(&message)),
                Ok(record::Progress::Need(n)) => need = n,
                Err(e) => return Ok(Err(e)),
            }
        }
        let held = buf.len() - start;
        if held >= MAX_HELLO_BYTES {
            return Ok(Err(HelloError::TooLarge));
        }
        // Read at most up to the bound: never buffer more than MAX_HELLO_BYTES of hello.
        let room = (MAX_HELLO_BYTES - held).min(4096);
        buf.reserve(room);
        let n = io.take(room as u64).read_buf(buf).await?;
        if n == 0 {
            return Ok(Err(HelloError::Truncated(held)));
        }
    }
}
