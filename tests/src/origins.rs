//! HTTP origins for the `http` mode's tests, each a real server on a loopback listener:
//! WebSocket echo, gRPC over h2c (unary and server streaming, with trailers), a
//! server-sent-events stream paced by the test, a health endpoint the test can flip, and
//! instances that fail in chosen ways (reset before answering, never answering).

use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

/// Serves `f` over HTTP/1.1 (with upgrades) on every connection of `listener`.
fn serve_h1<F, Fut>(listener: TcpListener, f: F)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let f = f.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let f = f.clone();
                    async move { Ok::<_, Infallible>(f(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
}

/// A WebSocket endpoint: answers the RFC 6455 upgrade with 101, then echoes every byte back
/// prefixed by nothing (frames pass through the gateway untouched, so echoing bytes echoes
/// frames). Plain requests get `426`.
pub fn websocket_echo(listener: TcpListener) {
    serve_h1(listener, |mut req: Request<Incoming>| async move {
        let key = req
            .headers()
            .get("sec-websocket-key")
            .and_then(|k| k.to_str().ok())
            .map(str::to_owned);
        let upgrade = req
            .headers()
            .get(hyper::header::UPGRADE)
            .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"));
        let Some(key) = key.filter(|_| upgrade) else {
            return Response::builder().status(426).body(full("426\n")).unwrap();
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on_upgrade.await {
                let mut io = TokioIo::new(up);
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .header("sec-websocket-accept", websocket_accept(&key))
            .body(full(""))
            .unwrap()
    });
}

/// `Sec-WebSocket-Accept` for `key` (RFC 6455 §4.2.2): base64(SHA-1(key ‖ GUID)).
pub fn websocket_accept(key: &str) -> String {
    let mut input = key.as_bytes().to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    base64(digest.as_ref())
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A gRPC message frame: uncompressed flag, big-endian length, payload.
pub fn grpc_frame(payload: &[u8]) -> Bytes {
    let mut b = vec![0u8];
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(payload);
    b.into()
}

/// Splits a gRPC body into its message payloads.
pub fn grpc_messages(mut body: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let n = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        out.push(body[5..5 + n].to_vec());
        body = &body[5 + n..];
    }
    out
}

/// A gRPC server over h2c (prior knowledge), as `tonic` serves one:
/// `/echo.Echo/Unary` answers its one message reversed; `/echo.Echo/Stream` answers
/// `<msg>-1` .. `<msg>-3` as three messages. Both end with trailers `grpc-status: 0` and
/// `x-served-by: <name>`; anything else ends `grpc-status: 12` (unimplemented).
pub fn grpc_h2c(listener: TcpListener, name: &'static str) {
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<Incoming>| async move {
                        Ok::<_, Infallible>(grpc_answer(req, name).await)
                    });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

async fn grpc_answer(req: Request<Incoming>, name: &'static str) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let grpc = req
        .headers()
        .get("content-type")
        .is_some_and(|c| c.as_bytes().starts_with(b"application/grpc"));
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    let msg = body
        .ok()
        .and_then(|b| grpc_messages(&b).into_iter().next())
        .unwrap_or_default();
    let mut frames: Vec<Frame<Bytes>> = Vec::new();
    let status = match (grpc, path.as_str()) {
        (true, "/echo.Echo/Unary") => {
            let mut r = msg.clone();
            r.reverse();
            frames.push(Frame::data(grpc_frame(&r)));
            "0"
        }
        (true, "/echo.Echo/Stream") => {
            for i in 1..=3 {
                let mut m = msg.clone();
                m.extend_from_slice(format!("-{i}").as_bytes());
                frames.push(Frame::data(grpc_frame(&m)));
            }
            "0"
        }
        _ => "12",
    };
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("grpc-status", status.parse().unwrap());
    trailers.insert("x-served-by", name.parse().unwrap());
    frames.push(Frame::trailers(trailers));
    let stream = futures_stream(frames);
    Response::builder()
        .header("content-type", "application/grpc")
        .body(StreamBody::new(stream).boxed())
        .unwrap()
}

/// A stream of ready frames.
fn futures_stream(frames: Vec<Frame<Bytes>>) -> ReceiverStream<Result<Frame<Bytes>, Infallible>> {
    let (tx, rx) = mpsc::channel(frames.len().max(1));
    for f in frames {
        let _ = tx.try_send(Ok(f)); // capacity is the frame count: never full
    }
    ReceiverStream(rx)
}

/// A server-sent-events endpoint that sends event `n` only after the test says the client
/// received event `n - 1` (through `acks`): if anything on the way buffered the stream, the
/// client would never see event 1 and the test would stall instead of passing.
/// Sends `events` events, then ends the stream.
pub fn sse_paced(listener: TcpListener, events: usize, acks: mpsc::UnboundedReceiver<usize>) {
    let acks = Arc::new(tokio::sync::Mutex::new(acks));
    serve_h1(listener, move |_req: Request<Incoming>| {
        let acks = acks.clone();
        async move {
            let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
            tokio::spawn(async move {
                let mut acks = acks.lock().await;
                for n in 1..=events {
                    let event = format!("id: {n}\ndata: token {n}\n\n");
                    if tx.send(Ok(Frame::data(event.into()))).await.is_err() {
                        return;
                    }
                    if n < events && acks.recv().await != Some(n) {
                        return;
                    }
                }
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .header("cache-control", "no-cache")
                .body(StreamBody::new(ReceiverStream(rx)).boxed())
                .unwrap()
        }
    });
}

/// An mpsc receiver as a `Stream` (of body frames, here).
pub struct ReceiverStream<T>(pub mpsc::Receiver<T>);

impl<T> futures_core::Stream for ReceiverStream<T> {
    type Item = T;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}

/// An app instance answering `<name>` on every path but `/health`, which answers 200 while
/// `healthy` is true and 503 otherwise. Counts the health probes it got in `probes`.
pub fn with_health(
    listener: TcpListener,
    name: &'static str,
    healthy: Arc<AtomicBool>,
    probes: Arc<AtomicUsize>,
) {
    serve_h1(listener, move |req: Request<Incoming>| {
        let (healthy, probes) = (healthy.clone(), probes.clone());
        async move {
            if req.uri().path() == "/health" {
                probes.fetch_add(1, Ordering::Relaxed);
                let code = if healthy.load(Ordering::Relaxed) {
                    200
                } else {
                    503
                };
                return Response::builder().status(code).body(full("")).unwrap();
            }
            Response::new(full(format!("{name}\n")))
        }
    });
}

/// An instance that reads each request's first bytes, then closes without answering.
pub fn reset_before_answer(listener: TcpListener) {
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
            });
        }
    });
}

/// An instance that answers one request per connection as if keeping it alive (no
/// `Connection: close`), then closes it silently after `linger`: every connection a proxy
/// keeps for later is dead when the next request comes. Counts its connections.
pub fn closes_idle_connections(
    listener: TcpListener,
    linger: std::time::Duration,
    accepted: Arc<AtomicUsize>,
) {
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                    .await;
                tokio::time::sleep(linger).await;
            });
        }
    });
}

/// An instance that accepts and reads, and never answers.
pub fn never_answer(listener: TcpListener) {
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
}

/// An instance answering `ok` to every request, counting the TCP connections it accepted
/// (so a test sees whether the gateway pools upstream connections).
pub fn counting_accepts(listener: TcpListener, accepted: Arc<AtomicUsize>) {
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(full("ok\n")))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// An upload sink: reports the size of every request-body chunk as it arrives (through
/// `chunks`), and answers with the total once the body ends.
pub fn upload_sink(listener: TcpListener, chunks: mpsc::UnboundedSender<usize>) {
    serve_h1(listener, move |req: Request<Incoming>| {
        let chunks = chunks.clone();
        async move {
            let mut body = req.into_body();
            let mut total = 0;
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(data) = frame.data_ref() {
                    total += data.len();
                    let _ = chunks.send(data.len());
                }
            }
            Response::new(full(format!("got {total}\n")))
        }
    });
}

/// The files a [`static_site`] serves, by path: `(content type, body)`; filled at any time.
pub type Files = Arc<std::sync::Mutex<std::collections::HashMap<String, (String, Bytes)>>>;

/// An origin serving `files` by path (404 elsewhere), e.g. an app's page that embeds the
/// attestation widget.
pub fn static_site(listener: TcpListener) -> Files {
    let files = Files::default();
    let served = files.clone();
    serve_h1(listener, move |req: Request<Incoming>| {
        let file = served.lock().unwrap().get(req.uri().path()).cloned();
        async move {
            match file {
                Some((ctype, body)) => Response::builder()
                    .header("content-type", ctype)
                    .body(full(body))
                    .unwrap(),
                None => Response::builder().status(404).body(full("404\n")).unwrap(),
            }
        }
    });
    files
}
