//! Reassembly of the first handshake message from TLS records (RFC 8446 §5.1).

use super::HelloError;
use std::borrow::Cow;

const RECORD_HEADER: usize = 5;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// RFC 8446 §5.1: a plaintext record fragment is at most 2^14 bytes.
const MAX_FRAGMENT: usize = 1 << 14;
/// Records a ClientHello may span: real clients use one, or a few for large post-quantum key
/// shares; a client sending 1-byte records only makes the gateway work.
pub const MAX_RECORDS: usize = 32;

/// Where reassembly stands.
#[derive(Debug)]
pub enum Progress<'a> {
    /// The whole first handshake message (4-byte header + body).
    Done(Cow<'a, [u8]>),
    /// Nothing new can be learned before `raw` holds this many bytes (the end of the record
    /// header or fragment it waits for): the caller reads until then without asking again,
    /// so reassembly work is linear in the records, not in the reads.
    Need(usize),
}

/// The whole first handshake message once `raw` holds it; `Ok(None)`: need more bytes.
pub fn reassemble(raw: &[u8]) -> Result<Option<Cow<'_, [u8]>>, HelloError> {
    Ok(match progress(raw)? {
        Progress::Done(m) => Some(m),
        Progress::Need(_) => None,
    })
}

/// Reassembly of the first handshake message from `raw`.
///
/// The message is borrowed when it sits in one record (the common case) and copied together
/// when it spans several (at most [`MAX_RECORDS`]). Records after the one that completes the
/// message are not looked at.
pub fn progress(raw: &[u8]) -> Result<Progress<'_>, HelloError> {
    if let Some(&first) = raw.first() {
        if first != CONTENT_HANDSHAKE {
            return Err(HelloError::NotTls(first));
        }
    }
    let mut pos = 0;
    let mut joined: Option<Vec<u8>> = None;
    let mut first_fragment: &[u8] = &[];
    for _ in 0..MAX_RECORDS {
        let Some(header) = raw.get(pos..pos + RECORD_HEADER) else {
            return Ok(Progress::Need(pos + RECORD_HEADER));
        };
        if header[0] != CONTENT_HANDSHAKE {
            return Err(HelloError::UnexpectedRecord(header[0]));
        }
        if header[1] != 3 {
            return Err(HelloError::Malformed("record version is not 3.x"));
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 {
            return Err(HelloError::Malformed("empty handshake record"));
        }
        if len > MAX_FRAGMENT {
            return Err(HelloError::Malformed("record longer than 2^14 bytes"));
        }
        let Some(fragment) = raw.get(pos + RECORD_HEADER..pos + RECORD_HEADER + len) else {
            return Ok(Progress::Need(pos + RECORD_HEADER + len));
        };
        pos += RECORD_HEADER + len;
        let message: &[u8] = match &mut joined {
            None if pos == RECORD_HEADER + len && first_fragment.is_empty() => {
                first_fragment = fragment;
                fragment
            }
            None => {
                let mut v = Vec::with_capacity(first_fragment.len() + fragment.len());
                v.extend_from_slice(first_fragment);
                v.extend_from_slice(fragment);
                joined.insert(v)
            }
            Some(v) => {
                v.extend_from_slice(fragment);
                v
            }
        };
        if message.len() < 4 {
            continue;
        }
        if message[0] != HANDSHAKE_CLIENT_HELLO {
            return Err(HelloError::NotClientHello(message[0]));
        }
        let body =
            usize::from(message[1]) << 16 | usize::from(message[2]) << 8 | usize::from(message[3]);
        if body > super::MAX_HELLO_BYTES {
            return Err(HelloError::TooLarge);
        }
        if message.len() >= 4 + body {
            return Ok(Progress::Done(match joined {
                None => Cow::Borrowed(&first_fragment[..4 + body]),
                Some(mut v) => {
                    v.truncate(4 + body);
                    Cow::Owned(v)
                }
            }));
        }
    }
    Err(HelloError::Malformed(
        "ClientHello spread over more than 32 records",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(payload: &[u8]) -> Vec<u8> {
        let mut r = vec![22, 3, 1];
        r.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        r.extend_from_slice(payload);
        r
    }

    fn message(body_len: usize) -> Vec<u8> {
        let mut m = vec![1, 0, (body_len >> 8) as u8, body_len as u8];
        m.extend((0..body_len).map(|i| i as u8));
        m
    }

    /// Issue 16 §11: 1-byte records are refused after [`MAX_RECORDS`], and a waiting
    /// reassembly names the length it needs, so callers do not re-scan on every read.
    #[test]
    fn hardening_record_count_is_capped_and_progress_names_what_it_needs() {
        let m = message(100);
        let raw: Vec<u8> = m.iter().flat_map(|b| record(&[*b])).collect();
        assert!(matches!(
            progress(&raw),
            Err(HelloError::Malformed(m)) if m.contains("32 records")
        ));
        let raw = record(&m);
        assert!(matches!(progress(&raw[..3]), Ok(Progress::Need(5))));
        assert!(matches!(progress(&raw[..7]), Ok(Progress::Need(n)) if n == raw.len()));
    }

    #[test]
    fn one_record_is_borrowed() {
        let m = message(100);
        let raw = record(&m);
        let got = reassemble(&raw).unwrap().unwrap();
        assert!(matches!(got, Cow::Borrowed(_)));
        assert_eq!(&*got, &m[..]);
    }

    #[test]
    fn every_split_into_records_and_reads_gives_the_same_message() {
        let m = message(300);
        for cut in [1, 2, 3, 4, 5, 150, 303] {
            let mut raw = record(&m[..cut]);
            raw.extend(record(&m[cut..]));
            // every prefix is "need more", the whole is "done"
            for end in 0..raw.len() {
                assert_eq!(
                    reassemble(&raw[..end]).unwrap(),
                    None,
                    "cut {cut} end {end}"
                );
            }
            assert_eq!(&*reassemble(&raw).unwrap().unwrap(), &m[..], "cut {cut}");
        }
    }

    #[test]
    fn one_byte_records_up_to_the_cap() {
        let m = message(MAX_RECORDS - 4); // exactly MAX_RECORDS one-byte records
        let raw: Vec<u8> = m.iter().flat_map(|b| record(&[*b])).collect();
        assert_eq!(&*reassemble(&raw).unwrap().unwrap(), &m[..]);
    }

    #[test]
    fn rejections() {
        assert_eq!(
            reassemble(b"GET / HTTP/1.1\r\n"),
            Err(HelloError::NotTls(b'G'))
        );
        assert_eq!(
            reassemble(&[22, 3, 1, 0, 0]),
            Err(HelloError::Malformed("empty handshake record"))
        );
        assert_eq!(
            reassemble(&[22, 2, 0, 0, 1, 1]),
            Err(HelloError::Malformed("record version is not 3.x"))
        );
        assert_eq!(
            reassemble(&[22, 3, 1, 0x40, 0x01]),
            Err(HelloError::Malformed("record longer than 2^14 bytes"))
        );
        assert_eq!(
            reassemble(&record(&[2, 0, 0, 0])),
            Err(HelloError::NotClientHello(2))
        );
        let mut raw = record(&message(10)[..6]);
        raw.extend([21, 3, 3, 0, 2, 2, 40]);
        assert_eq!(reassemble(&raw), Err(HelloError::UnexpectedRecord(21)));
        assert_eq!(
            reassemble(&record(&[1, 0xff, 0, 0])),
            Err(HelloError::TooLarge)
        );
    }
}
