//! A local server speaking the public CT search APIs the gateway's watch reads, filled with
//! real certificates by the test: SSLMate Cert Spotter's `GET /v1/issuances` (issuance
//! objects as the API documents them, `after` cursor, `expand=dns_names`/`cert_der`) and
//! crt.sh's `GET /?q=<name>&output=json` rows and `GET /?d=<id>` PEM downloads. It also takes
//! the watch's alert webhook at `POST /webhook`, and can be taken down (every request 503).

use base64::Engine as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// What the server holds and saw.
#[derive(Default)]
pub struct CtLogState {
    /// Logged certificates (DER), in discovery order; id = 1000 + index.
    pub logged: Mutex<Vec<Vec<u8>>>,
    /// Request targets seen (`/v1/issuances?...`).
    pub requests: Mutex<Vec<String>>,
    /// Webhook bodies received.
    pub webhooks: Mutex<Vec<serde_json::Value>>,
    /// Answer 503 to everything while set.
    pub down: AtomicBool,
}

/// The running server (threads end with the test process).
pub struct CtLog {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Its state.
    pub state: Arc<CtLogState>,
}

const FIRST_ID: u64 = 1000;

impl CtLog {
    /// Starts the server on a free loopback port.
    pub fn start() -> CtLog {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let state = Arc::new(CtLogState::default());
        let s = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || serve(stream, &s));
            }
        });
        CtLog {
            url: format!("http://{addr}"),
            state,
        }
    }

    /// Logs `der` (as a CA submitting it would); returns its id.
    pub fn log(&self, der: &[u8]) -> u64 {
        let mut l = self.state.logged.lock().unwrap();
        l.push(der.to_vec());
        FIRST_ID + l.len() as u64 - 1
    }

    /// Takes the server down (`true`) or back up.
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// The `after=` values of the issuance requests seen so far.
    pub fn cursors_asked(&self) -> Vec<Option<String>> {
        self.state
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.starts_with("/v1/issuances"))
            .map(|r| param(r, "after").map(str::to_owned))
            .collect()
    }
}

fn param<'a>(target: &'a str, name: &str) -> Option<&'a str> {
    target
        .split_once('?')?
        .1
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

fn serve(mut s: TcpStream, state: &CtLogState) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let (method, target) = (
        first.next().unwrap_or(""),
        first.next().unwrap_or("").to_owned(),
    );
    let length: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = &buf[head_end..head_end + length];
    state.requests.lock().unwrap().push(target.clone());
    let (status, kind, out) = if state.down.load(Ordering::SeqCst) {
        (
            503,
            "application/json",
            br#"{"code":"unavailable","message":"Service unavailable"}"#.to_vec(),
        )
    } else if method == "POST" && target == "/webhook" {
        let v = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
        state.webhooks.lock().unwrap().push(v);
        (204, "text/plain", Vec::new())
    } else if target.starts_with("/v1/issuances") {
        (
            200,
            "application/json",
            issuances(&target, state).to_string().into_bytes(),
        )
    } else if let Some(id) = param(&target, "d") {
        crtsh_download(id, state)
    } else if param(&target, "output") == Some("json") {
        (
            200,
            "application/json",
            crtsh_rows(&target, state).to_string().into_bytes(),
        )
    } else {
        (404, "text/plain", b"not found".to_vec())
    };
    let _ = write!(
        s,
        "HTTP/1.1 {status} X\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        out.len()
    );
    let _ = s.write_all(&out);
}

/// The names a certificate is valid for (SANs).
fn names(der: &[u8]) -> Vec<String> {
    let der = rustls_pki_types::CertificateDer::from(der.to_vec());
    gatehouse::terminate::certs::dns_names(&der).unwrap_or_default()
}

fn under(domain: &str, name: &str) -> bool {
    let name = name.trim_start_matches("*.");
    name == domain || name.ends_with(&format!(".{domain}"))
}

fn hex_sha256(b: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Cert Spotter: issuances for `domain` (and subdomains) discovered after `after`, oldest
/// first, 100 per page.
fn issuances(target: &str, state: &CtLogState) -> serde_json::Value {
    let domain = param(target, "domain").unwrap_or("");
    let after: u64 = param(target, "after")
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    let expand: Vec<&str> = target
        .split_once('?')
        .map(|(_, q)| {
            q.split('&')
                .filter_map(|kv| kv.strip_prefix("expand="))
                .collect()
        })
        .unwrap_or_default();
    let logged = state.logged.lock().unwrap();
    let list: Vec<serde_json::Value> = logged
        .iter()
        .enumerate()
        .map(|(i, der)| (FIRST_ID + i as u64, der))
        .filter(|(id, der)| *id > after && names(der).iter().any(|n| under(domain, n)))
        .take(100)
        .map(|(id, der)| {
            let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
            let mut o = serde_json::json!({
                "id": id.to_string(),
                "tbs_sha256": hex_sha256(cert.tbs_certificate.as_ref()),
                "cert_sha256": hex_sha256(der),
                "pubkey_sha256": hex_sha256(cert.public_key().raw),
                "not_before": cert.validity().not_before.to_datetime().to_string(),
                "not_after": cert.validity().not_after.to_datetime().to_string(),
                "revoked": false,
            });
            if expand.contains(&"dns_names") {
                o["dns_names"] = serde_json::json!(names(der));
            }
            if expand.contains(&"cert_der") {
                o["cert_der"] = base64::engine::general_purpose::STANDARD.encode(der).into();
            }
            o
        })
        .collect();
    serde_json::Value::Array(list)
}

/// crt.sh: one row per logged entry whose names match `q` (`%.` = subdomains).
fn crtsh_rows(target: &str, state: &CtLogState) -> serde_json::Value {
    let q = param(target, "q").unwrap_or("").replace("%25", "%");
    let logged = state.logged.lock().unwrap();
    let rows: Vec<serde_json::Value> = logged
        .iter()
        .enumerate()
        .filter(|(_, der)| {
            names(der).iter().any(|n| match q.strip_prefix("%.") {
                Some(d) => n.ends_with(&format!(".{d}")),
                None => n == &q,
            })
        })
        .map(|(i, der)| {
            let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
            serde_json::json!({
                "issuer_ca_id": 1,
                "issuer_name": cert.issuer().to_string(),
                "common_name": names(der).first().cloned().unwrap_or_default(),
                "name_value": names(der).join("\n"),
                "id": FIRST_ID + i as u64,
                "entry_timestamp": "2026-12-04T00:00:00.000",
                "not_before": cert.validity().not_before.to_datetime().to_string(),
                "not_after": cert.validity().not_after.to_datetime().to_string(),
                "serial_number": cert.raw_serial_as_string().replace(':', ""),
                "result_count": 2,
            })
        })
        .collect();
    serde_json::Value::Array(rows)
}

fn crtsh_download(id: &str, state: &CtLogState) -> (u16, &'static str, Vec<u8>) {
    let logged = state.logged.lock().unwrap();
    let der = id
        .parse::<u64>()
        .ok()
        .and_then(|id| id.checked_sub(FIRST_ID))
        .and_then(|i| logged.get(i as usize));
    match der {
        Some(der) => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(der);
            let lines: Vec<&str> = b64
                .as_bytes()
                .chunks(64)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect();
            let pem = format!(
                "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                lines.join("\n")
            );
            (200, "application/pkix-cert", pem.into_bytes())
        }
        None => (404, "text/plain", b"Certificate not found".to_vec()),
    }
}
