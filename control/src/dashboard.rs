//! The dashboard: one page, its script and style, embedded in the binary (no CDN, nothing
//! fetched from elsewhere). The page holds no data: it asks for a token, keeps it in the
//! tab's session storage, and reads `/v1/overview` with it every few seconds; its buttons
//! call the same API as the CLI (drain, undrain, renew).

use crate::server::Reply;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};

const INDEX: &str = include_str!("../dashboard/index.html");
const SCRIPT: &str = include_str!("../dashboard/dashboard.js");
const STYLE: &str = include_str!("../dashboard/dashboard.css");
/// The API's description (OpenAPI 3.1), served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// One of the public assets.
pub fn asset(path: &str) -> Reply {
    let (body, kind) = match path {
        "/" | "/dashboard" => (INDEX, "text/html; charset=utf-8"),
        "/dashboard.js" => (SCRIPT, "text/javascript; charset=utf-8"),
        "/dashboard.css" => (STYLE, "text/css; charset=utf-8"),
        _ => (OPENAPI, "application/json"),
    };
    let mut r = gatehouse::http_server::text(200, body);
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Only our own script and style; no frame may hold the page (clickjacking of the buttons).
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    r
}
