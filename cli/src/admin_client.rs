//! `gatehouse apps|instances|certs|reload ...`: a thin client of a running gateway's admin API.
//! Prints a short human summary, or the API's JSON with `--json` (for scripts and Ansible).
//! Exit codes: 0 done, 1 the API refused (its message printed), 2 bad usage or no answer.

use anyhow::Context;
use http_body_util::{BodyExt, Full};
use std::path::PathBuf;

/// Where the admin API is and how to authenticate.
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// The admin listener's URL.
    #[arg(long, env = "GATEHOUSE_ADMIN", default_value = "http://127.0.0.1:8001")]
    pub admin: String,
    /// A file holding a bearer token (`[admin] token_file` or one of `[[admin.tokens]]`).
    #[arg(long, env = "GATEHOUSE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Print the API's JSON answer instead of a summary.
    #[arg(long)]
    pub json: bool,
}

/// An answer: status and JSON body.
pub struct Answer {
    pub status: u16,
    pub body: serde_json::Value,
}

impl Target {
    /// Sends one request; `body` is JSON.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<Answer> {
        let token = match &self.token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("--token-file {}", f.display()))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let uri: hyper::Uri = format!("{}{path}", self.admin.trim_end_matches('/'))
            .parse()
            .with_context(|| format!("--admin {:?}", self.admin))?;
        anyhow::ensure!(
            uri.scheme_str() == Some("http"),
            "--admin {:?}: the admin API speaks plain http (keep it on loopback or a private network)",
            self.admin
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let host = uri.host().unwrap_or("127.0.0.1").to_owned();
            let port = uri.port_u16().unwrap_or(80);
            let stream = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                tokio::net::TcpStream::connect((host.as_str(), port)),
            )
            .await
            .map_err(|_| anyhow::anyhow!("{}: no answer within 10 s", self.admin))?
            .with_context(|| format!("cannot reach the admin API at {}", self.admin))?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let mut req = hyper::Request::builder()
                .method(method)
                .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
                .header(hyper::header::HOST, format!("{host}:{port}"));
            if let Some(t) = &token {
                req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
            }
            let bytes = match &body {
                Some(b) => {
                    req = req.header(hyper::header::CONTENT_TYPE, "application/json");
                    serde_json::to_vec(b)?
                }
                None => Vec::new(),
            };
            let resp = tokio::time::timeout(
                std::time::Duration::from_secs(60),
                sender.send_request(req.body(Full::new(bytes::Bytes::from(bytes)))?),
            )
            .await
            .map_err(|_| anyhow::anyhow!("{}: no answer within 60 s", self.admin))??;
            let status = resp.status().as_u16();
            let raw = resp.into_body().collect().await?.to_bytes();
            let body = serde_json::from_slice(&raw).unwrap_or_else(
                |_| serde_json::json!({ "error": String::from_utf8_lossy(&raw).trim().to_owned() }),
            );
            Ok(Answer { status, body })
        })
    }
}

/// Prints an answer: its JSON with `--json`, else `summary` of it; a refusal prints the
/// API's message and each problem. Returns the exit code.
pub fn print(
    target: &Target,
    answer: anyhow::Result<Answer>,
    summary: impl Fn(&serde_json::Value) -> String,
) -> std::process::ExitCode {
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            eprintln!("gatehouse: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let ok = (200..300).contains(&answer.status);
    if target.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&answer.body).unwrap_or_default()
        );
    } else if ok {
        print!("{}", summary(&answer.body));
    } else {
        eprintln!(
            "gatehouse: {} {}",
            answer.status,
            answer.body["error"].as_str().unwrap_or("refused")
        );
        for p in answer.body["problems"].as_array().into_iter().flatten() {
            eprintln!("  {}", p.as_str().unwrap_or_default());
        }
    }
    match ok {
        true => std::process::ExitCode::SUCCESS,
        false => std::process::ExitCode::from(1),
    }
}

/// `apps list`: one line per app.
pub fn apps_summary(v: &serde_json::Value) -> String {
    let mut out = String::new();
    let apps: Vec<&serde_json::Value> = match v.as_array() {
        Some(a) => a.iter().collect(),
        None => vec![v],
    };
    for app in apps {
        let instances: Vec<String> = app["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| {
                let mut s = i["address"].as_str().unwrap_or("?").to_owned();
                if i["drained"].as_bool() == Some(true) {
                    s.push_str(" (drained)");
                }
                if i["source"].as_str() == Some("vpc") {
                    s.push_str(" (vpc)");
                }
                s
            })
            .collect();
        out.push_str(&format!(
            "{:<20} {:<8} {:<5} port {:<5} {} connections  instances: {}\n",
            app["id"].as_str().unwrap_or("?"),
            app["origin"].as_str().unwrap_or("?"),
            app["mode"].as_str().unwrap_or("?"),
            app["default_port"],
            app["active_connections"],
            match instances.is_empty() {
                true => "none".to_owned(),
                false => instances.join(", "),
            }
        ));
    }
    out
}

/// `certs list`: one line per certificate.
pub fn certs_summary(v: &serde_json::Value) -> String {
    let mut out = String::new();
    for c in v.as_array().into_iter().flatten() {
        let names: Vec<&str> = c["names"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.as_str())
            .collect();
        out.push_str(&format!(
            "{:<32} {:>4} days left  key {:<9} {}{}\n",
            names.join(","),
            c["days_left"],
            c["key_origin"].as_str().unwrap_or("?"),
            c["issuer"].as_str().unwrap_or("?"),
            c["id"]
                .as_str()
                .map(|id| format!("  (renew: gatehouse certs renew {id})"))
                .unwrap_or_default()
        ));
    }
    out
}
