//! The plain-HTTP listener (`proxy.http.redirect_listen`, usually port 80): every request is
//! answered `308 Permanent Redirect` to the same host and path over HTTPS (308 keeps the
//! method and body, unlike 301). Only names the gateway routes are redirected, so the
//! listener is not an open redirector for arbitrary `Host` values.

use crate::conn::Shared;
use crate::http_server::{serve, text, Limits};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use std::sync::Arc;
use tokio::net::TcpListener;

/// Serves redirects on `listener` until the task is dropped.
pub async fn run(listener: TcpListener, shared: Arc<Shared>) {
    serve(listener, Limits::default(), move |req, _peer| {
        let shared = shared.clone();
        async move { redirect(&req, &shared).await }
    })
    .await
}

async fn redirect(req: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| h.rsplit_once(':').map_or(h, |(name, _port)| name))
        .map(|h| h.trim_end_matches('.').to_ascii_lowercase());
    let Some(host) = host.filter(|h| !h.is_empty() && !h.starts_with('[')) else {
        return text(400, "400 a Host header naming the site is required\n");
    };
    if shared.routes.resolve(&host).await.is_err() {
        return text(404, "404 this gateway serves no such name\n");
    }
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{host}{path}");
    let mut resp = text(308, format!("308 moved to {location}\n"));
    if let Ok(v) = hyper::header::HeaderValue::from_str(&location) {
        resp.headers_mut().insert(hyper::header::LOCATION, v);
    }
    resp
}
