//! The admin listener: the API, the dashboard, `/metrics` and `/healthz`.
//!
//! Fails closed: every request but the dashboard's static page and the OpenAPI document needs
//! a bearer token (unless `insecure_no_auth` on a loopback listener, which config validation
//! enforces). `GET` needs the `read` scope, anything else `write`. Every request that changes
//! something (or tried to, with a known token) leaves one audit line naming the token's id,
//! never the token: `gatehouse::audit: token=ops POST /v1/apps -> 201`.

use crate::tokens::{Caller, Denied};
use crate::Control;
use gatehouse::http_server::{serve, Limits};
use gatehouse_config::Scope;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use std::sync::Arc;
use tokio::net::TcpListener;

/// A response of the admin listener.
pub type Reply = Response<Full<Bytes>>;

/// A JSON answer.
pub fn json<T: serde::Serialize>(status: u16, value: &T) -> Reply {
    gatehouse::http_server::json(status, value)
}

/// A JSON error: `{"error": "<one line>"}`.
pub fn error(status: u16, message: impl std::fmt::Display) -> Reply {
    json(status, &serde_json::json!({ "error": message.to_string() }))
}

/// A JSON refusal listing every problem with its key path.
pub fn problems(status: u16, message: &str, problems: Vec<String>) -> Reply {
    json(
        status,
        &serde_json::json!({ "error": message, "problems": problems }),
    )
}

/// Serves the admin listener until the task is dropped.
pub async fn run(listener: TcpListener, control: Arc<Control>) {
    serve(listener, Limits::default(), move |req, _peer| {
        let control = control.clone();
        async move { handle(&control, req).await }
    })
    .await
}

/// Paths anyone may fetch: they hold no data (the page asks for a token before any;
/// `/healthz` says only "ok", for container and load-balancer probes, which carry no token).
fn public(path: &str) -> bool {
    matches!(
        path,
        "/" | "/dashboard" | "/dashboard.js" | "/dashboard.css" | "/v1/openapi.json" | "/healthz"
    )
}

async fn handle(control: &Arc<Control>, req: Request<Incoming>) -> Reply {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    if method == hyper::Method::GET && public(&path) {
        return match path.as_str() {
            "/healthz" => gatehouse::http_server::text(200, "ok\n"),
            _ => crate::dashboard::asset(&path),
        };
    }
    let auth = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let caller = match control.tokens.load().caller(auth) {
        Ok(c) => c,
        Err(denied) => {
            if denied == Denied::Unknown {
                tracing::warn!(target: "gatehouse::audit", "{method} {path} -> 401 (a token that matches none)");
            }
            let mut r = gatehouse::http_server::text(
                401,
                "401 unauthorized: send Authorization: Bearer <token>\n",
            );
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
    };
    let reads = method == hyper::Method::GET || method == hyper::Method::HEAD;
    let needed = if reads { Scope::Read } else { Scope::Write };
    if caller.scope < needed {
        tracing::warn!(target: "gatehouse::audit", "token={} {method} {path} -> 403 (read scope)", caller.id);
        return error(
            403,
            format!(
                "token {:?} has the read scope; {method} needs write",
                caller.id
            ),
        );
    }
    let reply = route(control, req, &caller).await;
    if !reads {
        tracing::info!(target: "gatehouse::audit", "token={} {method} {path} -> {}", caller.id, reply.status().as_u16());
    }
    reply
}

async fn route(control: &Arc<Control>, req: Request<Incoming>, caller: &Caller) -> Reply {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["metrics"]) => metrics(control),
        ("POST", ["v1", "sign"]) => sign(control, req).await,
        ("POST", ["v1", "reload"]) => match control.reload("api").await {
            Ok(report) => json(200, &report),
            Err(p) => problems(400, "the config was refused; the running one stays", p),
        },
        (_, ["v1", ..]) => crate::api::route(control, req, caller, &method, &segments[1..]).await,
        _ => gatehouse::http_server::text(404, "404 not found\n"),
    }
}

fn metrics(control: &Control) -> Reply {
    let shared = &control.shared;
    let mut out = shared.metrics.render();
    let table = shared.routes.table();
    let apps = table
        .apps()
        .filter(|a| a.spec.mode == gatehouse_config::AppMode::Http);
    let apps = apps.map(|a| (a.spec.id.as_str(), &*a.http_stats));
    gatehouse::http::stats::render(&mut out, apps);
    gatehouse::http_server::text(200, out)
}

/// The largest payload `/v1/sign` accepts.
const SIGN_BODY_LIMIT: usize = 1 << 20;

#[derive(serde::Deserialize)]
struct SignRequest {
    context: String,
    payload_b64: String,
}

/// `POST /v1/sign {"context", "payload_b64"}` → a signed statement with the attestation.
async fn sign(control: &Control, req: Request<Incoming>) -> Reply {
    use base64::Engine as _;
    let shared = &control.shared;
    let Some(attestor) = shared.attest.get() else {
        return error(503, "attestation is off ([tee] provider = \"none\")");
    };
    let r: SignRequest = match gatehouse::http_server::read_json(
        req,
        SIGN_BODY_LIMIT,
        "{\"context\", \"payload_b64\"}",
    )
    .await
    {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let payload = match base64::engine::general_purpose::STANDARD.decode(r.payload_b64.trim()) {
        Ok(p) => p,
        Err(e) => return error(400, format!("payload_b64: {e}")),
    };
    match attestor.sign(shared, &r.context, &payload).await {
        Ok(statement) => json(200, &statement),
        Err(e) => error(400, e),
    }
}
