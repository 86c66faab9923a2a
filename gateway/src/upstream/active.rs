//! Active health checks: for each app with `[apps.health_check]`, every `interval` the prober
//! sends `GET <path>` over plain HTTP/1.1 to each instance in the current route snapshot
//! (static and VPC instances alike) and feeds the answer into the instance's
//! [`ActiveHealth`](super::health::ActiveHealth), which the balancer reads. A 2xx or 3xx
//! answer within `timeout` is good; anything else (refused, reset, timeout, other status) is
//! a failure. Transitions are logged once, with the cause.

use crate::conn::Shared;
use crate::upstream::balancer::Instance;
use gatehouse_config::{HealthCheckConfig, HealthProtocol};
use http_body_util::Empty;
use hyper::body::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// Starts one probing task per app that has a health check, on the current runtime.
pub fn spawn(shared: &Arc<Shared>) {
    let table = shared.routes.table();
    for app in table.apps() {
        if let Some(hc) = &app.spec.health_check {
            let (id, port) = (app.spec.id.clone(), app.spec.default_port);
            tokio::spawn(probe_app(shared.clone(), id, hc.clone(), port));
        }
    }
}

async fn probe_app(shared: Arc<Shared>, id: String, hc: HealthCheckConfig, default_port: u16) {
    let port = hc.port.unwrap_or(default_port);
    let mut tick = tokio::time::interval(hc.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // The current snapshot: instances that joined since the last round are probed too.
        let Some(app) = shared.routes.table().app(&id).cloned() else {
            continue;
        };
        let mut round = tokio::task::JoinSet::new();
        for instance in app.instances.iter().cloned() {
            let hc = hc.clone();
            let id = id.clone();
            round.spawn(async move {
                let addr = SocketAddr::new(instance.addr, port);
                let outcome = probe(addr, &hc.path, hc.protocol, hc.timeout).await;
                record(&id, &instance, addr, &hc, outcome);
            });
        }
        while round.join_next().await.is_some() {}
    }
}

fn record(
    app: &str,
    instance: &Instance,
    addr: SocketAddr,
    hc: &HealthCheckConfig,
    outcome: Result<u16, String>,
) {
    let ok = matches!(outcome, Ok(200..=399));
    match instance.checked.record(ok, hc.rise, hc.fall) {
        Some(true) => {
            tracing::info!(app, %addr, "health check passes again; instance back in rotation")
        }
        Some(false) => {
            let why = match &outcome {
                Ok(code) => format!("answered {code}"),
                Err(e) => e.clone(),
            };
            tracing::warn!(app, %addr, path = %hc.path, "health check failed {} times: {why}; instance out of rotation", hc.fall);
        }
        None => {}
    }
}

/// One `GET path` to `addr` over `protocol`: the status code, or why there was none.
pub async fn probe(
    addr: SocketAddr,
    path: &str,
    protocol: HealthProtocol,
    timeout: Duration,
) -> Result<u16, String> {
    let attempt = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let io = hyper_util::rt::TokioIo::new(tcp);
        let http = |e: hyper::Error| format!("http: {e}");
        // HTTP/1.1 sends the path with a Host header; h2 needs the whole URI (:authority).
        let request = |uri: String, h1: bool| {
            let mut b = hyper::Request::get(uri)
                .header(hyper::header::USER_AGENT, "gatehouse-health-check");
            if h1 {
                b = b
                    .header(hyper::header::HOST, addr.to_string())
                    .header(hyper::header::CONNECTION, "close");
            }
            b.body(Empty::<Bytes>::new())
                .map_err(|e| format!("request: {e}"))
        };
        let resp = match protocol {
            HealthProtocol::Http1 => {
                let (mut send, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(http)?;
                tokio::spawn(conn);
                let req = request(path.to_owned(), true)?;
                send.send_request(req).await.map_err(http)?
            }
            HealthProtocol::H2c => {
                let exec = hyper_util::rt::TokioExecutor::new();
                let (mut send, conn) = hyper::client::conn::http2::handshake(exec, io)
                    .await
                    .map_err(http)?;
                tokio::spawn(conn);
                let req = request(format!("http://{addr}{path}"), false)?;
                send.send_request(req).await.map_err(http)?
            }
        };
        Ok(resp.status().as_u16())
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot server answering `status` and returning the request it read.
    async fn answer_once(status: &'static str) -> (SocketAddr, tokio::task::JoinHandle<String>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0; 4096];
            let n = s.read(&mut buf).await.unwrap();
            let resp = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
            s.write_all(resp.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (addr, task)
    }

    #[tokio::test]
    async fn probe_reports_the_status_and_sends_the_path() {
        let (addr, req) = answer_once("204 No Content").await;
        let (h1, two) = (HealthProtocol::Http1, Duration::from_secs(2));
        assert_eq!(probe(addr, "/healthz?deep=1", h1, two).await, Ok(204));
        let req = req.await.unwrap();
        assert!(req.starts_with("GET /healthz?deep=1 HTTP/1.1\r\n"), "{req}");
        let (addr, _req) = answer_once("503 Service Unavailable").await;
        assert_eq!(probe(addr, "/", h1, two).await, Ok(503));
    }

    #[tokio::test]
    async fn probe_speaks_h2c_to_an_h2_only_instance() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let service = hyper::service::service_fn(
                |req: hyper::Request<hyper::body::Incoming>| async move {
                    let code = if req.uri().path() == "/grpc.health"
                        && req.version() == hyper::Version::HTTP_2
                    {
                        200
                    } else {
                        404
                    };
                    let mut r = hyper::Response::new(Empty::<Bytes>::new());
                    *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
                    Ok::<_, std::convert::Infallible>(r)
                },
            );
            let exec = hyper_util::rt::TokioExecutor::new();
            let _ = hyper::server::conn::http2::Builder::new(exec)
                .serve_connection(hyper_util::rt::TokioIo::new(s), service)
                .await;
        });
        let two = Duration::from_secs(2);
        assert_eq!(
            probe(addr, "/grpc.health", HealthProtocol::H2c, two).await,
            Ok(200)
        );
    }

    #[tokio::test]
    async fn probe_names_a_refused_connect_and_a_silent_instance() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let h1 = HealthProtocol::Http1;
        let e = probe(addr, "/", h1, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(e.starts_with("connect: "), "{e}");
        // Accepts, never answers.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _hold = tokio::spawn(async move {
            let (_s, _) = l.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
        });
        let e = probe(addr, "/", h1, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(e.starts_with("no answer within"), "{e}");
    }
}
