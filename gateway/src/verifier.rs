//! `gatehouse verify`: checks an attested gateway from the outside, in order: the quote
//! (dcap-qvl), the policy, the report-data binding of the claims, the served leaf key in the
//! claims, the encrypted channel's keys, and CAA locked to the claimed ACME account. Each step has its own exit code.

use gatehouse_attest::bundle::{self, Bundle, Claims};
use gatehouse_attest::policy::Policy;
use gatehouse_attest::verify;
use http_body_util::{BodyExt, Empty};
use rustls_pki_types::CertificateDer;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Exit codes of the steps (0 = all passed, 1 = could not fetch, 2 = bad usage).
pub const EXIT_QUOTE: u8 = 10;
/// The policy refused the verified quote.
pub const EXIT_POLICY: u8 = 11;
/// The claims are not what the quote binds.
pub const EXIT_BINDING: u8 = 12;
/// The served certificate's key is not in the claims.
pub const EXIT_CERTIFICATE: u8 = 13;
/// CAA does not lock the domains to the claimed account.
pub const EXIT_CAA: u8 = 14;
/// The claimed encrypted-channel keys are unusable.
pub const EXIT_CHANNEL: u8 = 15;

/// What to check and how.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `https://host[:port]` (ignored with `offline`).
    pub url: String,
    /// The policy.
    pub policy: Policy,
    /// A private CA to trust for the TLS connection (else the system's roots).
    pub cacert: Option<PathBuf>,
    /// Check a saved bundle instead of connecting.
    pub offline: Option<PathBuf>,
    /// Offline: the served certificate to check against the claims.
    pub cert: Option<PathBuf>,
    /// Verification time (unix); default now.
    pub now: Option<u64>,
    /// DNS servers for the CAA check (default: the system's).
    pub dns_servers: Vec<SocketAddr>,
    /// The CA the CAA records must name.
    pub caa_issuer: String,
    /// Save the fetched bundle here.
    pub save: Option<PathBuf>,
    /// Connect to this address instead of resolving the URL's host (the name still goes in
    /// SNI and is checked against the certificate), like curl's `--connect-to`.
    pub connect: Option<SocketAddr>,
    /// Where to fetch collateral when the bundle carries none.
    pub pccs: String,
    /// Pass the policy step although the policy pins no measurement (any TD software).
    pub accept_any_measurements: bool,
    /// Pass the certificate step for a key the operator loaded from a file.
    pub accept_imported_keys: bool,
    /// Pass the certificate step for a gateway that seals with a development key file.
    pub accept_development_sealing: bool,
}

/// One step's outcome: passed, failed (with its exit code) or skipped.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Step {
    /// `quote`, `policy`, `binding`, `certificate`, `caa`.
    pub step: &'static str,
    /// `pass`, `fail`, `skip`.
    pub result: &'static str,
    /// The reason, in one line.
    pub detail: String,
}

/// The report: steps in order and the exit code.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// What was checked.
    pub target: String,
    /// The steps run (stops at the first failure).
    pub steps: Vec<Step>,
    /// 0 when all passed.
    pub exit_code: u8,
}

impl Report {
    fn push(&mut self, step: &'static str, r: Result<String, String>, code: u8) -> bool {
        let (result, detail, ok) = match r {
            Ok(d) => ("pass", d, true),
            Err(d) => ("fail", d, false),
        };
        self.steps.push(Step {
            step,
            result,
            detail,
        });
        if !ok {
            self.exit_code = code;
        }
        ok
    }

    fn skip(&mut self, step: &'static str, detail: String) {
        self.steps.push(Step {
            step,
            result: "skip",
            detail,
        });
    }

    /// One line per step: ✓/✗/– and the reason.
    pub fn human(&self) -> String {
        let mut out = format!("verifying {}\n", self.target);
        for s in &self.steps {
            let mark = match s.result {
                "pass" => "✓",
                "fail" => "✗",
                _ => "–",
            };
            out.push_str(&format!("{mark} {}: {}\n", s.step, s.detail));
        }
        out.push_str(match self.exit_code {
            0 => "verified\n",
            _ => "NOT verified\n",
        });
        out
    }
}

/// Connects (or reads the saved bundle) and runs every step.
pub async fn run(o: &Options) -> Result<Report, String> {
    let (bundle, leaf, target) = match &o.offline {
        Some(path) => {
            let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let bundle: Bundle = serde_json::from_slice(&text)
                .map_err(|e| format!("{}: not a bundle: {e}", path.display()))?;
            let leaf = match &o.cert {
                None => None,
                Some(p) => Some(read_leaf(p)?),
            };
            (bundle, leaf, path.display().to_string())
        }
        None => {
            let (bundle, leaf) = fetch(o).await?;
            (bundle, Some(leaf), o.url.clone())
        }
    };
    if let Some(path) = &o.save {
        let json = serde_json::to_vec_pretty(&bundle).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(check(o, &bundle, leaf.as_ref(), target).await)
}

/// The steps over a bundle and (when known) the served leaf certificate.
pub async fn check(
    o: &Options,
    b: &Bundle,
    leaf: Option<&CertificateDer<'static>>,
    target: String,
) -> Report {
    let mut r = Report {
        target,
        steps: Vec::new(),
        exit_code: 0,
    };
    let now = o.now.unwrap_or_else(gatehouse_attest::unix_now);
    let fetched;
    let collateral = match &b.collateral {
        Some(c) => c,
        None => match fetch_collateral(o, b, now).await {
            Ok(c) => {
                fetched = c;
                &fetched
            }
            Err(e) => {
                let e = format!("the bundle carries no collateral; {e}");
                r.push("quote", Err(e), EXIT_QUOTE);
                return r;
            }
        },
    };
    let trust_sim = o.policy.insecure_trust_simulator_root;
    let q = match verify::verify_quote(&b.evidence, collateral, now, trust_sim) {
        Ok(q) => q,
        Err(e) => {
            r.push("quote", Err(e.to_string()), EXIT_QUOTE);
            return r;
        }
    };
    let until = collateral.window().map(|w| w.expires.0).unwrap_or(0);
    r.push(
        "quote",
        Ok(format!(
            "{} quote under {}, TCB {}, collateral valid until {} (unix)",
            b.evidence.tee,
            q.root.name(),
            q.tcb_status(),
            until
        )),
        0,
    );
    let policy = o.policy.check(&q, &b.evidence.event_log, now);
    let policy = match (o.policy.pins_measurements(), o.accept_any_measurements) {
        (false, false) => policy.and(Err(gatehouse_attest::AttestError::policy(
            "measurements",
            "the policy pins none, so any TD software would pass: pin them (gatehouse \
             policy-from-bundle) or pass --accept-any-measurements",
        ))),
        _ => policy,
    };
    let policy = policy.map(|()| {
        let pins = match o.policy.pins_measurements() {
            true => "measurements pinned",
            false => "no measurements pinned (any software accepted: --accept-any-measurements)",
        };
        format!(
            "MRTD {}…, {} runtime events replayed, {pins}",
            &gatehouse_attest::hex::encode(&q.td.mr_td)[..16],
            b.evidence.event_log.iter().filter(|e| e.imr == 3).count()
        )
    });
    if !r.push("policy", policy.map_err(|e| e.to_string()), EXIT_POLICY) {
        return r;
    }
    let binding = b
        .expected_report_data()
        .and_then(|rd| verify::expect_report_data(&q, &rd))
        .map(|()| "the quote binds SHA-512(gatehouse-bundle-v1 ‖ JCS(claims))".to_owned());
    if !r.push("binding", binding.map_err(|e| e.to_string()), EXIT_BINDING) {
        return r;
    }
    let claims = match b.claims() {
        Ok(c) => c,
        Err(e) => {
            r.push("binding", Err(e.to_string()), EXIT_BINDING);
            return r;
        }
    };
    if let Err(e) = sealing(o, &claims, q.root) {
        r.push("certificate", Err(e), EXIT_CERTIFICATE);
        return r;
    }
    match leaf {
        None => r.skip("certificate", "offline without --cert".into()),
        Some(leaf) => {
            let result = bundle::cert_spki_sha256(leaf)
                .map_err(|e| e.to_string())
                .and_then(|h| served_key(o, &claims, &h));
            if !r.push("certificate", result, EXIT_CERTIFICATE) {
                return r;
            }
        }
    }
    match &claims.channel {
        None => r.skip("channel", "the gateway serves no encrypted channel".into()),
        Some(c) => {
            use base64::Engine;
            let result = base64::engine::general_purpose::STANDARD
                .decode(&c.ohttp_keys)
                .map_err(|e| format!("the claimed key list is not base64: {e}"))
                .and_then(|list| {
                    gatehouse_channel::describe_key_list(&list).map_err(|e| e.to_string())
                })
                .map(|keys| {
                    format!(
                        "{keys}, attested: requests sealed to it open only in the TEE ({})",
                        c.path
                    )
                });
            if !r.push("channel", result, EXIT_CHANNEL) {
                return r;
            }
        }
    }
    match &claims.acme_account_uri {
        None => r.skip(
            "caa",
            "the claims name no ACME account (certificates from a private CA)".into(),
        ),
        Some(account) => {
            let result = caa(o, &claims.domains, account).await;
            r.push("caa", result, EXIT_CAA);
        }
    }
    r
}

/// Whether what seals the gateway's secrets is worth the name: a development key file (anyone
/// who reads it unseals the keys and the ACME account) only with its flag, and simulator
/// sealing only under a simulated quote.
fn sealing(o: &Options, claims: &Claims, root: verify::Root) -> Result<(), String> {
    let development =
        claims.sealing == "development" || claims.keys.iter().any(|k| k.sealing == "development");
    if development && !o.accept_development_sealing {
        return Err(
            "the gateway seals its keys and ACME account with a development key file \
             (whoever can read it can unseal them); --accept-development-sealing accepts that"
                .into(),
        );
    }
    if claims.sealing == "simulator" && root != verify::Root::Simulator {
        return Err("the claims say simulator sealing under a real TEE quote".into());
    }
    Ok(())
}

/// The served key `h` must be among the current or next keys, and made inside the TEE
/// (an imported key only with `--accept-imported-keys`).
fn served_key(o: &Options, claims: &Claims, h: &str) -> Result<String, String> {
    let short = &h[..16.min(h.len())];
    if !claims.spki_sha256.covers(h) {
        return Err(format!(
            "the served key {h} is not among the {} attested keys",
            claims.spki_sha256.current.len() + claims.spki_sha256.next.len()
        ));
    }
    let Some(key) = claims.keys.iter().find(|k| k.spki_sha256 == h) else {
        return Err(format!(
            "the claims do not say where the served key {short}… came from: not vouched for"
        ));
    };
    match key.origin.as_str() {
        bundle::ORIGIN_TEE => Ok(format!(
            "the served key {short}… was made in the TEE (at rest: {})",
            key.sealing
        )),
        bundle::ORIGIN_IMPORTED if o.accept_imported_keys => Ok(format!(
            "the served key {short}… is listed, but imported from a file (accepted by \
             --accept-imported-keys)"
        )),
        bundle::ORIGIN_IMPORTED => Err(format!(
            "the served key {short}… was imported from a file, not made in the TEE: whoever \
             configured the gateway holds it (--accept-imported-keys accepts that)"
        )),
        other => Err(format!(
            "the served key {short}… has an unknown origin {other:?}"
        )),
    }
}

async fn fetch_collateral(
    o: &Options,
    b: &Bundle,
    now: u64,
) -> Result<gatehouse_attest::collateral::Collateral, gatehouse_attest::AttestError> {
    let pccs = gatehouse_attest::pccs::Pccs::new(&o.pccs, std::time::Duration::from_secs(30))?;
    pccs.collateral(&b.evidence.quote, now).await
}

async fn caa(o: &Options, domains: &[String], account: &str) -> Result<String, String> {
    let timeout = std::time::Duration::from_secs(5);
    let checker = match o.dns_servers.as_slice() {
        [] => gatehouse_caa::lookup::Checker::system(timeout),
        s => gatehouse_caa::lookup::Checker::new(s, timeout),
    }
    .map_err(|e| format!("DNS resolver: {e}"))?;
    let policy = gatehouse_caa::Policy {
        issuers: vec![o.caa_issuer.clone()],
        accounts: vec![account.to_owned()],
        methods: vec!["dns-01".into(), "tls-alpn-01".into()],
    };
    for d in domains {
        for name in [d.clone(), format!("*.{d}")] {
            let v = checker.check(&name, &policy).await;
            if v != gatehouse_caa::Verdict::Locked {
                return Err(format!("{name}: {v}"));
            }
        }
    }
    Ok(format!(
        "{} domain(s) locked to {account} at {}",
        domains.len(),
        o.caa_issuer
    ))
}

fn read_leaf(path: &std::path::Path) -> Result<CertificateDer<'static>, String> {
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .next()
        .ok_or_else(|| format!("{}: no certificate", path.display()))?
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Text a server sent, safe to print on a terminal: control characters (escape sequences, CR,
/// newlines) shown escaped, at most `max` characters, and a mark when cut. The exit code says
/// what happened; this only keeps a hostile server from drawing "✓ verified" lines.
pub fn printable(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n == max {
            out.push_str("… (cut)");
            break;
        }
        match c {
            c if c.is_control() => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out
}

/// One TLS connection (WebPKI validation on), ALPN `gatehouse-attest/1`: the leaf it served
/// and the bundle fetched over it.
async fn fetch(o: &Options) -> Result<(Bundle, CertificateDer<'static>), String> {
    let uri: hyper::Uri = o.url.parse().map_err(|e| format!("{}: {e}", o.url))?;
    if uri.scheme_str() != Some("https") {
        return Err(format!("{}: only https:// URLs can be verified", o.url));
    }
    let host = uri
        .host()
        .ok_or_else(|| format!("{}: no host", o.url))?
        .to_owned();
    let port = uri.port_u16().unwrap_or(443);
    let mut config = crate::client_tls::config(o.cacert.as_deref())?;
    config.alpn_protocols = vec![crate::attestation::ATTEST_ALPN.to_vec()];
    // RFC 6761: `localhost` and its subdomains are loopback (curl and browsers agree; the
    // system resolver often knows only `localhost` itself).
    let connect_host = match host == "localhost" || host.ends_with(".localhost") {
        true => "127.0.0.1",
        false => host.as_str(),
    };
    let tcp = match o.connect {
        Some(addr) => tokio::net::TcpStream::connect(addr).await,
        None => tokio::net::TcpStream::connect((connect_host, port)).await,
    }
    .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    let name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {host}:{port}: {e}"))?;
    let (_, session) = tls.get_ref();
    if session.alpn_protocol() != Some(crate::attestation::ATTEST_ALPN) {
        return Err(format!(
            "{host}:{port} did not accept ALPN gatehouse-attest/1 (not a Gatehouse, attestation \
             off, or a passthrough name whose key the gateway does not hold)"
        ));
    }
    let leaf = session
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no server certificate")?
        .clone()
        .into_owned();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::get(bundle::WELL_KNOWN_PATH)
        .header(hyper::header::HOST, host.as_str())
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("bundle: HTTP {status}: {}", printable(&body, 200)));
    }
    let bundle = serde_json::from_slice(&body).map_err(|e| format!("bundle: {e}"))?;
    Ok((bundle, leaf))
}

#[cfg(test)]
mod tests {
    /// Issue 17 §8: a server's error text cannot draw on the user's terminal.
    #[test]
    fn exposure_server_text_is_escaped_and_capped() {
        let hostile = b"503 \x1b[2K\r\xe2\x9c\x93 quote: verified\nverified\x07";
        let shown = super::printable(hostile, 200);
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(
            shown.contains("\\u{1b}") && shown.contains("\\n"),
            "{shown}"
        );
        let long = super::printable(&[b'a'; 5000], 200);
        assert_eq!(long.chars().count(), 200 + "… (cut)".chars().count());
    }
}
