//! `mode = "http"` streams through the real binary: a WebSocket upgrade whose frames flow both
//! ways after the 101, gRPC over h2 end to end (client h2 → gateway → h2c instance, `g` name)
//! with unary and server-streaming calls and their trailers, a server-sent-events stream
//! whose events reach the client one at a time, an upload whose chunks reach the instance
//! one at a time, and upstream connections reused across requests and client connections.

use gatehouse_tests::http::{body, http_app as app, request, request_h2, HttpGateway};
use gatehouse_tests::origins::{
    counting_accepts, grpc_frame, grpc_h2c, grpc_messages, sse_paced, upload_sink,
    websocket_accept, websocket_echo, ReceiverStream,
};
use gatehouse_tests::servers::bind_same_port;
use http_body_util::BodyExt;
use std::collections::HashSet;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A masked client frame (RFC 6455 §5.2) with `opcode` and `payload`.
fn ws_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 65536 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [0x11, 0x22, 0x33, 0x44];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_and_frames_flow_both_ways() {
    let (port, mut ls) = bind_same_port(&[[127, 0, 0, 1]]).await;
    websocket_echo(ls.remove(0));
    let g = HttpGateway::start("", &app("chat", port, &["127.0.0.1"], ""));
    let mut tls = g.tls("chat.gw.test", &["http/1.1"]).await;
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let upgrade = format!(
        "GET /ws HTTP/1.1\r\nHost: chat.gw.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tls.write_all(upgrade.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(tls.read(&mut b).await.unwrap(), 1, "closed before the 101");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    // The RFC 6455 example key's accept value, computed by the origin, reaches the client.
    assert_eq!(websocket_accept(key), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    // A small text frame and a 70 000-byte binary one (64-bit length), echoed back intact.
    let big: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    for frame in [ws_frame(1, b"hello"), ws_frame(2, &big)] {
        tls.write_all(&frame).await.unwrap();
        let mut back = vec![0u8; frame.len()];
        tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut back))
            .await
            .expect("echo within 10 s")
            .unwrap();
        assert!(
            back == frame,
            "frame of {} bytes echoed intact",
            frame.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_h2_keeps_trailers_and_streams() {
    let (port, ls) = bind_same_port(&[[127, 0, 0, 1], [127, 0, 0, 2]]).await;
    for (l, name) in ls.into_iter().zip(["one", "two"]) {
        grpc_h2c(l, name);
    }
    let g = HttpGateway::start("", &app("rpc", port, &["127.0.0.1", "127.0.0.2"], ""));
    // `rpcg`: app `rpc` with the `g` flag: h2 from the client and h2 (prior knowledge) to
    // the instance, which speaks nothing else.
    let mut h2 = g.h2("rpcg.gw.test").await;
    let mut served_by = HashSet::new();
    for _ in 0..12 {
        let (messages, trailers) = grpc_call(&mut h2, "/echo.Echo/Unary", b"hello").await;
        assert_eq!(messages, vec![b"olleh".to_vec()]);
        assert_eq!(trailers.get("grpc-status").unwrap(), "0");
        served_by.insert(
            trailers
                .get("x-served-by")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(
        served_by.len(),
        2,
        "calls on one h2 connection spread: {served_by:?}"
    );
    let (messages, trailers) = grpc_call(&mut h2, "/echo.Echo/Stream", b"tok").await;
    assert_eq!(
        messages,
        vec![b"tok-1".to_vec(), b"tok-2".to_vec(), b"tok-3".to_vec()]
    );
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    let (_, trailers) = grpc_call(&mut h2, "/echo.Echo/Nope", b"x").await;
    assert_eq!(trailers.get("grpc-status").unwrap(), "12");
}

/// One gRPC call on `h2`: the answer's messages and its trailers (which must arrive).
async fn grpc_call(
    h2: &mut hyper::client::conn::http2::SendRequest<gatehouse_tests::http::ReqBody>,
    path: &str,
    msg: &[u8],
) -> (Vec<Vec<u8>>, hyper::HeaderMap) {
    let req = request_h2("POST", "rpcg.gw.test", path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body(grpc_frame(msg)))
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected
        .trailers()
        .cloned()
        .expect("trailers reach the client");
    (grpc_messages(&collected.to_bytes()), trailers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_arrive_one_at_a_time() {
    let (port, mut ls) = bind_same_port(&[[127, 0, 0, 1]]).await;
    let (ack, acks) = tokio::sync::mpsc::unbounded_channel();
    const EVENTS: usize = 5;
    sse_paced(ls.remove(0), EVENTS, acks);
    let g = HttpGateway::start("", &app("llm", port, &["127.0.0.1"], ""));
    for h2 in [false, true] {
        let req = match h2 {
            false => request("GET", "llm.gw.test", "/events"),
            true => request_h2("GET", "llm.gw.test", "/events"),
        };
        let req = req
            .header("accept", "text/event-stream")
            .body(body(""))
            .unwrap();
        let resp = match h2 {
            false => g.h1("llm.gw.test").await.send_request(req).await.unwrap(),
            true => g.h2("llm.gw.test").await.send_request(req).await.unwrap(),
        };
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let mut text = String::new();
        let mut seen = 0;
        // The origin sends event n+1 only after this loop acknowledged event n: a gateway
        // that held the stream back would stall here (bounded by the timeout).
        let read = async {
            while let Some(frame) = body.frame().await {
                let frame = frame.unwrap();
                if let Some(data) = frame.data_ref() {
                    text.push_str(&String::from_utf8_lossy(data));
                }
                while text.matches("\n\n").count() > seen {
                    seen += 1;
                    if seen < EVENTS {
                        let _ = ack.send(seen); // the origin waits for no ack after the last
                    }
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .unwrap_or_else(|_| panic!("h2={h2}: stalled after {seen} events: {text:?}"));
        let ids: Vec<&str> = text.lines().filter(|l| l.starts_with("id: ")).collect();
        assert_eq!(
            ids,
            ["id: 1", "id: 2", "id: 3", "id: 4", "id: 5"],
            "h2={h2}"
        );
        assert!(text.contains("data: token 5\n\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_stream_to_the_instance_chunk_by_chunk() {
    let (port, mut ls) = bind_same_port(&[[127, 0, 0, 1]]).await;
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    upload_sink(ls.remove(0), seen_tx);
    let g = HttpGateway::start("", &app("up", port, &["127.0.0.1"], ""));
    let (tx, rx) = tokio::sync::mpsc::channel::<
        Result<hyper::body::Frame<hyper::body::Bytes>, std::convert::Infallible>,
    >(1);
    let stream = http_body_util::StreamBody::new(ReceiverStream(rx));
    let req = request("POST", "up.gw.test", "/upload")
        .header("transfer-encoding", "chunked")
        .body(http_body_util::BodyExt::boxed(stream))
        .unwrap();
    let mut h1 = g.h1("up.gw.test").await;
    let answer = tokio::spawn(async move { h1.send_request(req).await.map(|r| r.status()) });
    // The next chunk is sent only once the instance has the previous one: a gateway that
    // collected the body before forwarding it would stall here (bounded by the timeout).
    let mut got = 0;
    for n in [1000usize, 2000, 3000] {
        tx.send(Ok(hyper::body::Frame::data(vec![b'u'; n].into())))
            .await
            .unwrap();
        let mut arrived = 0;
        while arrived < n {
            arrived += tokio::time::timeout(Duration::from_secs(10), seen.recv())
                .await
                .unwrap_or_else(|_| panic!("chunk of {n} never reached the instance"))
                .unwrap();
        }
        got += arrived;
    }
    drop(tx);
    assert_eq!(got, 6000);
    assert_eq!(answer.await.unwrap().unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_pooled_across_requests_and_clients() {
    let (port, mut ls) = bind_same_port(&[[127, 0, 0, 1]]).await;
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    counting_accepts(ls.remove(0), accepted.clone());
    let g = HttpGateway::start("", &app("pool", port, &["127.0.0.1"], ""));
    let url = g.url("pool.gw.test", "/");
    // Three client processes (three downstream connections), 10 sequential requests each.
    for _ in 0..3 {
        let urls: Vec<&str> = std::iter::repeat_n(url.as_str(), 10).collect();
        let out = g.curl("pool.gw.test", &[&["--http1.1"][..], &urls].concat());
        assert_eq!(out.matches("ok\n").count(), 10, "{out}");
    }
    let n = accepted.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        (1..=3).contains(&n),
        "30 requests took {n} upstream connections"
    );
}
