//! The one HTTP client of the CT watch: https (plain http only to loopback, for local
//! servers in tests), a deadline per exchange, a cap on answer sizes.

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use std::time::Duration;

type Https = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// Answers over this are refused (a CT search answer for one domain is far smaller).
const MAX_BODY: usize = 16 << 20;

#[derive(Clone)]
pub(crate) struct HttpClient {
    client: Client<Https, Full<Bytes>>,
    timeout: Duration,
}

/// Checks that `url` is https, or http to a loopback address.
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("URL {url:?}: {e}"))?;
    let loopback = matches!(
        uri.host(),
        Some("127.0.0.1" | "localhost" | "[::1]" | "::1")
    );
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if loopback => Ok(()),
        _ => Err(format!("URL {url:?} must be https")),
    }
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HttpClient(timeout {:?})", self.timeout)
    }
}

impl HttpClient {
    pub(crate) fn new(timeout: Duration) -> HttpClient {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_platform_verifier()
            .https_or_http()
            .enable_http1()
            .build();
        HttpClient {
            client: Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector),
            timeout,
        }
    }

    /// One exchange; the status and the body (at most [`MAX_BODY`]).
    pub(crate) async fn send(
        &self,
        req: hyper::Request<Full<Bytes>>,
    ) -> Result<(hyper::StatusCode, Bytes), String> {
        let what = format!("{} {}", req.method(), req.uri());
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("{what}: {}", chain(&e)))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| format!("{what}: {e}"))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("{what}: no answer within {:?}", self.timeout))?
    }

    /// GET `url` with `headers`; the body of a 2xx answer.
    pub(crate) async fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<Bytes, String> {
        let mut b = hyper::Request::get(url).header("user-agent", "gatehouse-ct/1");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(Bytes::new())).map_err(|e| e.to_string())?;
        let (status, body) = self.send(req).await?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(format!("GET {url}: HTTP {status}: {}", text.trim()));
        }
        Ok(body)
    }

    /// POST `json` to `url`; an error unless 2xx.
    pub(crate) async fn post_json(&self, url: &str, json: Vec<u8>) -> Result<(), String> {
        let req = hyper::Request::post(url)
            .header("content-type", "application/json")
            .header("user-agent", "gatehouse-ct/1")
            .body(Full::new(Bytes::from(json)))
            .map_err(|e| e.to_string())?;
        let (status, _) = self.send(req).await?;
        match status.is_success() {
            true => Ok(()),
            false => Err(format!("POST {url}: HTTP {status}")),
        }
    }
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}
