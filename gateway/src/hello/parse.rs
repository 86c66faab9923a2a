//! ClientHello body parsing (RFC 8446 §4.1.2, RFC 6066 §3, RFC 7301 §3.1).
//!
//! Strict where routing depends on it: the SNI list must be well formed and hold exactly one
//! `host_name`; no extension may appear twice. Fields we do not use are only length-checked,
//! leaving their semantics to rustls (terminate) or the app (passthrough).

use super::{ClientHello, HelloError};

const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const MAX_SNI_LEN: usize = 253;

/// Parses a whole handshake message (header included) that is a ClientHello.
pub fn parse(message: &[u8]) -> Result<ClientHello, HelloError> {
    let mut r = Reader::new(message.get(4..).unwrap_or_default());
    let version = r.u16("legacy_version")?;
    if !(0x0300..=0x03ff).contains(&version) {
        return Err(HelloError::Malformed("legacy_version is not 3.x"));
    }
    r.skip(32, "random")?;
    let session_id = r.u8("session_id length")?;
    if session_id > 32 {
        return Err(HelloError::Malformed("session_id longer than 32 bytes"));
    }
    r.skip(usize::from(session_id), "session_id")?;
    let suites = r.vec_u16("cipher_suites")?;
    if suites.rest.is_empty() || suites.rest.len() % 2 != 0 {
        return Err(HelloError::Malformed("cipher_suites length"));
    }
    let compression = r.vec_u8("compression_methods")?;
    if compression.rest.is_empty() {
        return Err(HelloError::Malformed("no compression method"));
    }
    if r.rest.is_empty() {
        // RFC 5246 allows a hello without extensions; it has no SNI.
        return Err(HelloError::NoSni);
    }
    let mut exts = r.vec_u16("extensions")?;
    if !r.rest.is_empty() {
        return Err(HelloError::Malformed("bytes after extensions"));
    }
    let mut sni = None;
    let mut alpn = Vec::new();
    let mut seen: Vec<u16> = Vec::with_capacity(24);
    while !exts.rest.is_empty() {
        let kind = exts.u16("extension type")?;
        let mut data = exts.vec_u16("extension data")?;
        if seen.contains(&kind) {
            return Err(HelloError::Malformed("duplicate extension"));
        }
        seen.push(kind);
        match kind {
            EXT_SERVER_NAME => sni = Some(server_name(&mut data)?),
            EXT_ALPN => alpn = protocols(&mut data)?,
            _ => {}
        }
    }
    let sni = sni.ok_or(HelloError::NoSni)?;
    Ok(ClientHello { sni, alpn })
}

fn server_name(data: &mut Reader<'_>) -> Result<String, HelloError> {
    let mut list = data.vec_u16("server_name_list")?;
    if !data.rest.is_empty() {
        return Err(HelloError::Malformed("bytes after server_name_list"));
    }
    let mut host = None;
    while !list.rest.is_empty() {
        let kind = list.u8("name_type")?;
        let name = list.vec_u16("host_name")?.rest;
        if kind != 0 {
            continue; // unknown name types are skipped (RFC 6066 §3)
        }
        if host.is_some() {
            return Err(HelloError::BadSni("more than one host_name"));
        }
        host = Some(name);
    }
    let name = host.ok_or(HelloError::NoSni)?;
    validate_host(name)?;
    // validated as ASCII above, so this cannot fail.
    let mut s = String::from_utf8(name.to_vec()).map_err(|_| HelloError::BadSni("not ASCII"))?;
    s.make_ascii_lowercase();
    Ok(s)
}

/// A DNS host name: 1-253 bytes of LDH labels (`_` tolerated), no empty label, no trailing dot.
fn validate_host(name: &[u8]) -> Result<(), HelloError> {
    if name.is_empty() {
        return Err(HelloError::BadSni("empty"));
    }
    if name.len() > MAX_SNI_LEN {
        return Err(HelloError::BadSni("longer than 253 bytes"));
    }
    if name.last() == Some(&b'.') {
        return Err(HelloError::BadSni("trailing dot"));
    }
    for label in name.split(|b| *b == b'.') {
        if label.is_empty() || label.len() > 63 {
            return Err(HelloError::BadSni("empty or over-long label"));
        }
        if !label
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            return Err(HelloError::BadSni(
                "character outside letters, digits, '-', '_'",
            ));
        }
    }
    Ok(())
}

fn protocols(data: &mut Reader<'_>) -> Result<Vec<Vec<u8>>, HelloError> {
    let mut list = data.vec_u16("protocol_name_list")?;
    if !data.rest.is_empty() || list.rest.is_empty() {
        return Err(HelloError::Malformed("ALPN list length"));
    }
    let mut out = Vec::new();
    while !list.rest.is_empty() {
        let p = list.vec_u8("protocol name")?.rest;
        if p.is_empty() {
            return Err(HelloError::Malformed("empty ALPN protocol name"));
        }
        out.push(p.to_vec());
    }
    Ok(out)
}

/// A cursor over a byte slice; every read is bounds-checked and names what it read.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(rest: &'a [u8]) -> Self {
        Reader { rest }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], HelloError> {
        if self.rest.len() < n {
            return Err(HelloError::Malformed(what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn skip(&mut self, n: usize, what: &'static str) -> Result<(), HelloError> {
        self.take(n, what).map(|_| ())
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, HelloError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, HelloError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn vec_u8(&mut self, what: &'static str) -> Result<Reader<'a>, HelloError> {
        let n = self.u8(what)?;
        Ok(Reader::new(self.take(usize::from(n), what)?))
    }

    fn vec_u16(&mut self, what: &'static str) -> Result<Reader<'a>, HelloError> {
        let n = self.u16(what)?;
        Ok(Reader::new(self.take(usize::from(n), what)?))
    }
}

/// Builds ClientHello handshake messages for tests, benches and fuzz seeds.
#[doc(hidden)]
pub mod build {
    /// A handshake message (header included) with the given SNI, ALPN and padding extension.
    pub fn client_hello(sni: Option<&str>, alpn: &[&str], padding: usize) -> Vec<u8> {
        let mut exts = Vec::new();
        if let Some(name) = sni {
            let mut list = vec![0];
            list.extend((name.len() as u16).to_be_bytes());
            list.extend(name.as_bytes());
            ext(&mut exts, 0, &prefixed16(&list));
        }
        if !alpn.is_empty() {
            let mut list = Vec::new();
            for p in alpn {
                list.push(p.len() as u8);
                list.extend(p.as_bytes());
            }
            ext(&mut exts, 16, &prefixed16(&list));
        }
        ext(&mut exts, 43, &[2, 3, 4]); // supported_versions: TLS 1.3
        if padding > 0 {
            ext(&mut exts, 21, &vec![0; padding]);
        }
        let mut body = vec![3, 3];
        body.extend([7u8; 32]);
        body.push(0);
        body.extend(prefixed16(&[0x13, 0x01]));
        body.extend([1, 0]);
        body.extend(prefixed16(&exts));
        let mut msg = vec![1];
        msg.extend(&(body.len() as u32).to_be_bytes()[1..]);
        msg.extend(body);
        msg
    }

    /// `message` cut into TLS records of at most `max` bytes each.
    pub fn records(message: &[u8], max: usize) -> Vec<u8> {
        message
            .chunks(max)
            .flat_map(|c| {
                let mut r = vec![22, 3, 1];
                r.extend((c.len() as u16).to_be_bytes());
                r.extend(c);
                r
            })
            .collect()
    }

    fn ext(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
        out.extend(kind.to_be_bytes());
        out.extend(prefixed16(data));
    }

    fn prefixed16(data: &[u8]) -> Vec<u8> {
        let mut v = (data.len() as u16).to_be_bytes().to_vec();
        v.extend(data);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::build::client_hello;
    use super::*;

    #[test]
    fn extracts_sni_and_alpn() {
        let h = parse(&client_hello(Some("App-1.GW.test"), &["h2", "http/1.1"], 0)).unwrap();
        assert_eq!(h.sni, "app-1.gw.test");
        assert_eq!(h.alpn, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert!(h.offers(b"h2"));
    }

    #[test]
    fn large_post_quantum_sized_hello() {
        let h = parse(&client_hello(Some("a.b"), &[], 1800)).unwrap();
        assert_eq!(h.sni, "a.b");
    }

    #[test]
    fn missing_or_bad_sni() {
        assert_eq!(
            parse(&client_hello(None, &["h2"], 0)),
            Err(HelloError::NoSni)
        );
        for (name, why) in [
            ("a.b.", "trailing dot"),
            ("a..b", "empty or over-long label"),
            ("a b", "character outside letters, digits, '-', '_'"),
        ] {
            assert_eq!(
                parse(&client_hello(Some(name), &[], 0)),
                Err(HelloError::BadSni(why))
            );
        }
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let m = client_hello(Some("x.y"), &["h2"], 10);
        for end in 0..m.len() {
            let mut cut = m[..end].to_vec();
            if cut.len() >= 4 {
                let body = (cut.len() - 4) as u32;
                cut[1..4].copy_from_slice(&body.to_be_bytes()[1..]);
            }
            assert!(parse(&cut).is_err(), "prefix of {end} bytes parsed");
        }
    }

    #[test]
    fn duplicate_extension_is_rejected() {
        let mut m = client_hello(Some("x.y"), &[], 0);
        // duplicate supported_versions by appending it again and fixing lengths
        let extra = [0u8, 43, 0, 3, 2, 3, 4];
        m.extend(extra);
        let n = m.len();
        let body = (n - 4) as u32;
        m[1..4].copy_from_slice(&body.to_be_bytes()[1..]);
        // extensions length sits right after compression methods (offset 4+2+32+1+4+2)
        let ext_len_at = 4 + 2 + 32 + 1 + 4 + 2;
        let ext_len = u16::from_be_bytes([m[ext_len_at], m[ext_len_at + 1]]) + extra.len() as u16;
        m[ext_len_at..ext_len_at + 2].copy_from_slice(&ext_len.to_be_bytes());
        assert_eq!(parse(&m), Err(HelloError::Malformed("duplicate extension")));
    }
}
