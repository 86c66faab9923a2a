//! Reassembly of the first handshake message from TLS records (RFC 8446 §5.1).

use super::HelloError;
use std::borrow::Cow;

const RECORD_HEADER: usize = 5;
const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// RFC 8446 §5.1: a plaintext record fragment is at most 2^14 bytes.
const MAX_FRAGMENT: usize = 1 << 14;

/// The whole first handshake message (4-byte header + body) once `raw` holds it.
///
/// `Ok(None)`: need more bytes. The message is borrowed when it sits in one record (the common
/// case) and copied together when it spans several. Records after the one that completes the
/// message are not looked at.
pub fn reassemble(raw: &[u8]) -> Result<Option<Cow<'_, [u8]>>, HelloError> {
    if let Some(&first) = raw.first() {
        if first != CONTENT_HANDSHAKE {
            return Err(HelloError::NotTls(first));
        }
    }
    let mut pos = 0;
    let mut joined: Option<Vec<u8>> = None;
    let mut first_fragment: &[u8] = &[];
    loop {
        let Some(header) = raw.get(pos..pos + RECORD_HEADER) else {
            return Ok(None);
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
            return Ok(None);
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
            return Ok(Some(match joined {
                None => Cow::Borrowed(&first_fragment[..4 + body]),
                Some(mut v) => {
                    v.truncate(4 + body);
                    Cow::Owned(v)
                }
            }));
        }
    }
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
    fn one_byte_records() {
        let m = message(40);
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
