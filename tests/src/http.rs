//! The `http` mode's test set-up: a gateway with a wildcard certificate for `*.gw.test` from a
//! test CA, and clients that speak to it as a browser or gRPC client would: curl, and hyper
//! HTTP/1.1 or h2 over rustls.

use crate::pki::{tls_connect, TestCa};
use crate::{base_config, Gateway};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::path::PathBuf;
use std::process::Command;

/// A running gateway for `http`-mode apps.
pub struct HttpGateway {
    /// The process.
    pub gw: Gateway,
    /// The CA that issued the gateway's certificate.
    pub ca: TestCa,
    /// Its PEM file, for curl.
    pub ca_pem: PathBuf,
}

/// A request body.
pub type ReqBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// A body of `b`.
pub fn body(b: impl Into<Bytes>) -> ReqBody {
    Full::new(b.into()).boxed()
}

impl HttpGateway {
    /// Starts a gateway with `proxy_extra` in its `[proxy]` section (e.g. a `[proxy.http]`
    /// table) and the `apps` TOML.
    pub fn start(proxy_extra: &str, apps: &str) -> HttpGateway {
        HttpGateway::start_edited(proxy_extra, apps, |c| c)
    }

    /// Like [`HttpGateway::start`], the config text passed through `edit` first (e.g. to
    /// replace the `[tee]` section or add to `[proxy.timeouts]`).
    pub fn start_edited(
        proxy_extra: &str,
        apps: &str,
        edit: impl FnOnce(String) -> String,
    ) -> HttpGateway {
        HttpGateway::start_wrapped(proxy_extra, apps, edit, &[])
    }

    /// Like [`HttpGateway::start_edited`], the binary run through `wrapper` (e.g.
    /// `["prlimit", "--nofile=2048:2048"]`).
    pub fn start_wrapped(
        proxy_extra: &str,
        apps: &str,
        edit: impl FnOnce(String) -> String,
        wrapper: &[&str],
    ) -> HttpGateway {
        let ca = TestCa::new();
        let dir = tempfile::tempdir().unwrap();
        let wild = ca.write(dir.path(), "wild", &["*.gw.test"]);
        let ca_pem = dir.path().join("ca.pem");
        std::fs::write(&ca_pem, &ca.pem).unwrap();
        let config = format!(
            "{}\n{apps}\n[tls]\ncertificates = [{wild}]\n",
            base_config(proxy_extra)
        );
        let path = dir.path().join("gatehouse.toml");
        std::fs::write(&path, edit(config)).unwrap();
        let args = ["run", "--config", path.to_str().unwrap()];
        HttpGateway {
            gw: Gateway::spawn_wrapped(dir, wrapper, &args),
            ca,
            ca_pem,
        }
    }

    /// `https://<host>:<port><path>` on the gateway.
    pub fn url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.gw.addr.port())
    }

    /// Runs curl with `args`, resolving `host` to the gateway; its stdout. Panics when curl
    /// itself fails (not on HTTP error codes).
    pub fn curl(&self, host: &str, args: &[&str]) -> String {
        let out = self.curl_output(host, args);
        assert!(
            out.status.success(),
            "curl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs curl with `args`, resolving `host` to the gateway.
    pub fn curl_output(&self, host: &str, args: &[&str]) -> std::process::Output {
        let port = self.gw.addr.port();
        Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(&self.ca_pem)
            .args(["--resolve", &format!("{host}:{port}:127.0.0.1")])
            .args(args)
            .output()
            .unwrap()
    }

    /// A TLS connection to the gateway for `host`, offering `alpn`.
    pub async fn tls(
        &self,
        host: &str,
        alpn: &[&str],
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        tls_connect(self.gw.addr, host, self.ca.client(alpn))
            .await
            .unwrap()
    }

    /// An HTTP/1.1 client connection for `host`.
    pub async fn h1(&self, host: &str) -> hyper::client::conn::http1::SendRequest<ReqBody> {
        let tls = self.tls(host, &["http/1.1"]).await;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn.with_upgrades());
        send
    }

    /// An h2 client connection for `host` (ALPN h2).
    pub async fn h2(&self, host: &str) -> hyper::client::conn::http2::SendRequest<ReqBody> {
        let tls = self.tls(host, &["h2"]).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        send
    }
}

/// `[[apps]]` TOML for a `mode = "http"` app `id` on `port` with instances at `ips`, plus
/// `extra` keys or tables (e.g. `[apps.health_check]`).
pub fn http_app(id: &str, port: u16, ips: &[&str], extra: &str) -> String {
    let mut s = format!("[[apps]]\nid = \"{id}\"\nmode = \"http\"\ndefault_port = {port}\n");
    for ip in ips {
        s += &format!("[[apps.instances]]\naddress = \"{ip}\"\n");
    }
    s + extra
}

/// An HTTP/1.1 request to `host` (origin-form target, `Host` header).
pub fn request(method: &str, host: &str, path: &str) -> hyper::http::request::Builder {
    hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, host)
}

/// An h2 request to `host` (`:authority`).
pub fn request_h2(method: &str, host: &str, path: &str) -> hyper::http::request::Builder {
    hyper::Request::builder()
        .method(method)
        .uri(format!("https://{host}{path}"))
}

/// The whole body of a response as text.
pub async fn text(resp: hyper::Response<Incoming>) -> String {
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&b).into_owned()
}
