//! Opening one encapsulated request and sealing its response.
//!
//! A request is `message/ohttp-req` (RFC 9458 §4.3): key id, KEM, KDF and AEAD ids, the
//! HPKE encapsulated key (`enc`, 32 bytes for X25519, fresh for every request), then the
//! sealed Binary HTTP request. The response is `message/ohttp-res`, sealed with keys only that
//! request's HPKE context can derive, so it opens for that request alone.
//!
//! **Replay.** OHTTP itself lets anyone who recorded a request send it again. Here, the inner
//! request must carry a `date` field within [`Gate::window`] of the gateway's clock, and the
//! `enc` of every request opened inside the window is remembered: a second request with the
//! same `enc` is refused by name. Both checks are needed: the window bounds what must be
//! remembered, the memory refuses a copy inside it. When more requests arrive inside one
//! window than [`MAX_REMEMBERED`], new ones are refused (503) rather than the oldest forgotten.

use crate::keys::KeySet;
use crate::ChannelError;
use std::collections::HashSet;
use std::io::Cursor;
use std::sync::Mutex;

/// The media type of an encapsulated request.
pub const REQUEST_MEDIA_TYPE: &str = "message/ohttp-req";
/// The media type of an encapsulated response.
pub const RESPONSE_MEDIA_TYPE: &str = "message/ohttp-res";
/// The media type of the key list (`application/ohttp-keys`).
pub const KEYS_MEDIA_TYPE: &str = "application/ohttp-keys";

/// Requests remembered per window generation (about 50 bytes each).
pub const MAX_REMEMBERED: usize = 500_000;

/// Header: key id (1), KEM (2), KDF (2), AEAD (2).
const HEADER_LEN: usize = 7;
/// `enc` of DHKEM(X25519).
const ENC_LEN: usize = 32;

/// An opened request: the inner Binary HTTP request and the context its response is sealed in.
pub struct Opened {
    /// The inner request.
    pub request: bhttp::Message,
    /// Seals the response to this request's context.
    pub response: ohttp::ServerResponse,
    /// The key it was sealed to.
    pub key_id: u8,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Opened(key {})", self.key_id)
    }
}

/// The `enc` values opened recently, in two generations of `2 × window` each: an entry lives
/// at least as long as a request's date can be accepted.
struct Seen {
    current: HashSet<[u8; ENC_LEN]>,
    previous: HashSet<[u8; ENC_LEN]>,
    /// When `current` started (unix seconds).
    since: u64,
}

/// Opens requests and remembers them for the replay window.
pub struct Gate {
    window: u64,
    /// Most requests remembered per generation.
    cap: usize,
    seen: Mutex<Seen>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gate(window {} s)", self.window)
    }
}

impl Gate {
    /// A gate accepting inner requests dated within `window` seconds of its clock.
    pub fn new(window: u64) -> Gate {
        Gate::with_memory(window, MAX_REMEMBERED)
    }

    /// The same, remembering at most `cap` requests per generation.
    pub fn with_memory(window: u64, cap: usize) -> Gate {
        Gate {
            window,
            cap,
            seen: Mutex::new(Seen {
                current: HashSet::new(),
                previous: HashSet::new(),
                since: 0,
            }),
        }
    }

    /// The replay window either side of now, in seconds.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// Opens `body` (a `message/ohttp-req`) with the key its id names, at `now` (unix
    /// seconds): the inner request, or the named reason it was refused.
    pub fn open(&self, keys: &KeySet, body: &[u8], now: u64) -> Result<Opened, ChannelError> {
        if body.len() <= HEADER_LEN + ENC_LEN {
            return Err(ChannelError::Malformed(format!(
                "{} bytes, shorter than a header and an X25519 key share",
                body.len()
            )));
        }
        let key_id = body[0];
        let key = keys
            .get(key_id, now)
            .ok_or(ChannelError::UnknownKey(key_id))?;
        let (inner, response) = key.server().decapsulate(body).map_err(|e| match e {
            ohttp::Error::Aead(_) | ohttp::Error::Hpke(_) => ChannelError::Tampered(key_id),
            other => ChannelError::Malformed(other.to_string()),
        })?;
        let request = bhttp::Message::read_bhttp(&mut Cursor::new(&inner[..]))
            .map_err(|e| ChannelError::Message(e.to_string()))?;
        if !request.control().is_request() {
            return Err(ChannelError::Message("a response, not a request".into()));
        }
        self.check_date(&request, now)?;
        let enc: [u8; ENC_LEN] = body[HEADER_LEN..HEADER_LEN + ENC_LEN]
            .try_into()
            .expect("length checked above");
        self.remember(enc, now)?;
        Ok(Opened {
            request,
            response,
            key_id,
        })
    }

    fn check_date(&self, request: &bhttp::Message, now: u64) -> Result<(), ChannelError> {
        let date = request.header().get(b"date").ok_or(ChannelError::NoDate)?;
        let date = std::str::from_utf8(date)
            .ok()
            .and_then(|d| httpdate::parse_http_date(d).ok())
            .ok_or_else(|| ChannelError::Message("the date field is not an HTTP date".into()))?;
        let at = date
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let skew = at as i64 - now as i64;
        if skew.unsigned_abs() > self.window {
            return Err(ChannelError::Stale {
                skew,
                window: self.window,
            });
        }
        Ok(())
    }

    fn remember(&self, enc: [u8; ENC_LEN], now: u64) -> Result<(), ChannelError> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let generation = 2 * self.window.max(1);
        if now >= seen.since + generation {
            // Entries of the generation before last are older than any acceptable date.
            let moved = if now >= seen.since + 2 * generation {
                HashSet::new()
            } else {
                std::mem::take(&mut seen.current)
            };
            seen.previous = moved;
            seen.current.clear();
            seen.since = now;
        }
        if seen.current.contains(&enc) || seen.previous.contains(&enc) {
            return Err(ChannelError::Replayed);
        }
        if seen.current.len() >= self.cap {
            return Err(ChannelError::Busy);
        }
        seen.current.insert(enc);
        Ok(())
    }
}

/// Seals `response` (a Binary HTTP response) to the context of the request it answers.
pub fn seal_response(
    context: ohttp::ServerResponse,
    response: &bhttp::Message,
) -> Result<Vec<u8>, ChannelError> {
    let mut plain = Vec::new();
    response
        .write_bhttp(bhttp::Mode::KnownLength, &mut plain)
        .map_err(|e| ChannelError::Seal(e.to_string()))?;
    context
        .encapsulate(&plain)
        .map_err(|e| ChannelError::Seal(e.to_string()))
}

/// The client half, for tests and `gatehouse verify`: `request` sealed to the first key of
/// `ohttp_keys` (an `application/ohttp-keys` list), and the context that opens its response.
pub fn seal_request(
    ohttp_keys: &[u8],
    request: &bhttp::Message,
) -> Result<(Vec<u8>, ohttp::ClientResponse), ChannelError> {
    let mut plain = Vec::new();
    request
        .write_bhttp(bhttp::Mode::KnownLength, &mut plain)
        .map_err(|e| ChannelError::Seal(e.to_string()))?;
    ohttp::ClientRequest::from_encoded_config_list(ohttp_keys)
        .and_then(|c| c.encapsulate(&plain))
        .map_err(|e| ChannelError::Seal(e.to_string()))
}

/// Opens a response with the context of the request it should answer.
pub fn open_response(
    context: ohttp::ClientResponse,
    body: &[u8],
) -> Result<bhttp::Message, ChannelError> {
    let plain = context.decapsulate(body).map_err(|e| match e {
        ohttp::Error::Aead(_) | ohttp::Error::Hpke(_) => ChannelError::Seal(
            "the response does not open with this request's context: tampered with, or the answer to another request".into(),
        ),
        other => ChannelError::Malformed(other.to_string()),
    })?;
    bhttp::Message::read_bhttp(&mut Cursor::new(&plain[..]))
        .map_err(|e| ChannelError::Message(e.to_string()))
}

#[cfg(test)]
#[path = "gate_tests.rs"]
mod tests;
