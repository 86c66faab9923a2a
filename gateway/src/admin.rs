//! The admin listener: `/metrics` (Prometheus text) and `/healthz`. Fails closed: without a
//! configured token, only a loopback listener with `insecure_no_auth = true` answers (config
//! validation enforces that pairing).

use crate::conn::Shared;
use crate::http_server::{json, read_json, serve, text, Limits};
use gatehouse_config::AdminConfig;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Reads the token file (trimmed). An empty token is refused: it would match nothing useful.
pub fn load_token(config: &AdminConfig) -> std::io::Result<Option<Arc<str>>> {
    let Some(path) = &config.token_file else {
        return Ok(None);
    };
    let token = std::fs::read_to_string(path)?.trim().to_owned();
    if token.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is empty", path.display()),
        ));
    }
    Ok(Some(token.into()))
}

/// Serves the admin endpoints on `listener`.
pub async fn run(listener: TcpListener, token: Option<Arc<str>>, shared: Arc<Shared>) {
    serve(listener, Limits::default(), move |req, _peer| {
        let token = token.clone();
        let shared = shared.clone();
        async move {
            if let Some(t) = &token {
                let given = req
                    .headers()
                    .get(hyper::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or("");
                if !constant_time_eq(given.as_bytes(), t.as_bytes()) {
                    return text(
                        401,
                        "401 unauthorized: send Authorization: Bearer <token>\n",
                    );
                }
            }
            match (req.method().as_str(), req.uri().path()) {
                ("GET", "/metrics") => {
                    let mut out = shared.metrics.render();
                    let table = shared.routes.table();
                    let apps = table
                        .apps()
                        .filter(|a| a.spec.mode == gatehouse_config::AppMode::Http);
                    let apps = apps.map(|a| (a.spec.id.as_str(), &*a.http_stats));
                    crate::http::stats::render(&mut out, apps);
                    text(200, out)
                }
                ("GET", "/healthz") => text(200, "ok\n"),
                ("POST", "/v1/sign") => sign(&shared, req).await,
                _ => text(404, "404 not found\n"),
            }
        }
    })
    .await
}

/// The largest payload `/v1/sign` accepts.
const SIGN_BODY_LIMIT: usize = 1 << 20;

#[derive(serde::Deserialize)]
struct SignRequest {
    context: String,
    payload_b64: String,
}

/// `POST /v1/sign {"context", "payload_b64"}` → a signed statement with the attestation.
async fn sign(
    shared: &Shared,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    use base64::Engine as _;
    let Some(attestor) = shared.attest.get() else {
        return text(503, "503 attestation is off ([tee] provider = \"none\")\n");
    };
    let r: SignRequest =
        match read_json(req, SIGN_BODY_LIMIT, "{\"context\", \"payload_b64\"}").await {
            Ok(r) => r,
            Err(resp) => return resp,
        };
    let payload = match base64::engine::general_purpose::STANDARD.decode(r.payload_b64.trim()) {
        Ok(p) => p,
        Err(e) => return text(400, format!("400 payload_b64: {e}\n")),
    };
    match attestor.sign(shared, &r.context, &payload).await {
        Ok(statement) => json(200, &statement),
        Err(e) => text(400, format!("400 {e}\n")),
    }
}

/// Compares without an early exit on the first differing byte.
/// Compares the SHA-256 of both in constant time: neither the content nor the length of the
/// token leaks through the time a refusal takes.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let digest = |x: &[u8]| aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, x);
    let (a, b) = (digest(a), digest(b));
    aws_lc_rs::constant_time::verify_slices_are_equal(a.as_ref(), b.as_ref()).is_ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn constant_time_eq() {
        assert!(super::constant_time_eq(b"abc", b"abc"));
        assert!(!super::constant_time_eq(b"abc", b"abd"));
        assert!(!super::constant_time_eq(b"abc", b"ab"));
    }
}
