use super::upstream::{connect, Binding, Kept, Pool};
use super::*;

/// An HTTP/1.1 origin on loopback answering `ok` to every request, keeping connections alive
/// (until `close_after` requests, when set); its address.
async fn origin(close_after: Option<usize>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let served = std::sync::atomic::AtomicUsize::new(0);
                let service = hyper::service::service_fn(|_req| {
                    let n = served.fetch_add(1, Ordering::Relaxed) + 1;
                    let mut resp = Response::new(http_body_util::Full::new(Bytes::from("ok")));
                    if close_after.is_some_and(|c| n >= c) {
                        resp.headers_mut()
                            .insert(CONNECTION, HeaderValue::from_static("close"));
                    }
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

/// A connection to `addr` whose driver runs in a task of its own.
async fn kept(addr: SocketAddr) -> Kept {
    let (k, driver) = connect(addr, Duration::from_secs(5)).await.unwrap();
    tokio::spawn(driver);
    k
}

async fn get(sender: &mut upstream::Sender, addr: SocketAddr) -> u16 {
    use http_body_util::BodyExt;
    let mut req = Request::new(ReqBody::empty());
    req.headers_mut().insert(
        http::header::HOST,
        HeaderValue::from_str(&addr.to_string()).unwrap(),
    );
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    resp.into_body().collect().await.unwrap();
    status
}

/// The pool hands out only live, ready, unexpired connections to the address asked for,
/// and keeps no more than its cap.
#[tokio::test]
async fn http_h1_pool_keeps_live_connections_per_instance_within_its_cap() {
    let a = origin(None).await;
    let b = origin(Some(1)).await;
    let pool = Pool::new(2, Duration::from_secs(60));
    let mut s1 = kept(a).await;
    assert_eq!(get(&mut s1.sender, a).await, 200);
    s1.sender.ready().await.unwrap();
    pool.put(a, s1);
    assert!(
        pool.take(b).is_none(),
        "a connection serves its own instance only"
    );
    let mut again = pool.take(a).expect("the kept connection");
    assert_eq!(get(&mut again.sender, a).await, 200, "and it still works");
    assert_eq!(pool.kept(), 0);

    // An instance that closes after answering: its connection is not kept.
    let mut closing = kept(b).await;
    assert_eq!(get(&mut closing.sender, b).await, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !closing.sender.is_closed() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    pool.put(b, closing);
    assert!(
        pool.take(b).is_none(),
        "a closed connection is never handed out"
    );

    // The cap: a third live connection is not kept.
    again.sender.ready().await.unwrap();
    pool.put(a, again);
    pool.put(a, kept(a).await);
    pool.put(a, kept(a).await);
    assert_eq!(pool.kept(), 2);
}

/// A kept connection is closed after `upstream_idle_timeout` unused: not handed out, and
/// its place is free; no lookup is needed for that (the sweeper closes it).
#[tokio::test]
async fn http_h1_pool_expires_idle_connections() {
    let a = origin(None).await;
    let pool = Pool::new(1, Duration::from_millis(50));
    pool.put(a, kept(a).await);
    assert_eq!(pool.kept(), 1);
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(pool.take(a).is_none(), "expired");
    assert_eq!(pool.kept(), 0);
    let mut k = kept(a).await;
    assert_eq!(get(&mut k.sender, a).await, 200);
    let closed = k.sender.is_closed();
    pool.put(a, k);
    assert!(!closed);
    assert_eq!(pool.kept(), 1);
    // Nobody asks for `a` again: the sweeper drops it, and so its connection.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pool.kept(), 0, "swept without a lookup");
}

/// A connection made for a client connection is run by that connection's task (here: the
/// test polling the binding); when it leaves for the pool (another instance was picked, or
/// the client went) its driver goes to a task of its own, so whoever takes it next is
/// answered.
#[tokio::test]
async fn http_h1_binding_runs_its_connection_and_hands_it_over_running() {
    let (a, b) = (origin(None).await, origin(None).await);
    let pool = Pool::new(8, Duration::from_secs(60));
    let mut binding = Binding::default();
    let (mut k, driver) = connect(a, Duration::from_secs(5)).await.unwrap();
    binding.adopt(k.id, driver);
    let binding = Mutex::new(binding);
    // Only the binding's poll runs the connection: the request is answered through it.
    let driven = std::future::poll_fn(|cx| {
        binding.lock().unwrap().poll_driver(cx);
        std::task::Poll::<()>::Pending
    });
    let status = tokio::select! {
        s = get(&mut k.sender, a) => s,
        () = driven => unreachable!(),
    };
    assert_eq!(status, 200);
    let mut binding = binding.into_inner().unwrap();
    binding.bind(a, k, &pool);
    assert!(binding.take(a, &pool).is_some_and(|k| k.sender.is_ready()));
    let mut binding = Binding::default();
    let (k, driver) = connect(a, Duration::from_secs(5)).await.unwrap();
    binding.adopt(k.id, driver);
    binding.bind(a, k, &pool);
    // Another instance now: the bound one goes to the pool, running on its own.
    assert!(binding.take(b, &pool).is_none());
    tokio::time::sleep(Duration::from_millis(50)).await; // its task runs: it says it is ready
    let mut k = pool.take(a).expect("pooled, and ready");
    let answered = tokio::time::timeout(Duration::from_secs(5), get(&mut k.sender, a)).await;
    assert_eq!(answered.expect("its driver runs in a task of its own"), 200);
}

/// Nothing of one hop reaches the next (the fields `Connection` names included); a length
/// beside chunking is dropped.
#[test]
fn http_h1_hop_by_hop_fields_are_not_forwarded() {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("connection", "keep-alive, x-secret"),
        ("keep-alive", "timeout=5"),
        ("te", "trailers"),
        ("proxy-connection", "keep-alive"),
        ("transfer-encoding", "chunked"),
        ("content-length", "10"),
        ("x-kept", "1"),
        ("x-secret", "for this hop"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    strip_hop_by_hop(&mut h);
    let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
    names.sort();
    assert_eq!(names, ["transfer-encoding", "x-kept"]);
}

/// The one-pass check keeps what it must: a message without hop-by-hop fields is unchanged,
/// `Connection: keep-alive` alone goes with its length kept, and a field `Connection` names
/// goes even when it is `transfer-encoding` (then the length stays: nothing else frames it).
#[test]
fn http_h1_hop_by_hop_common_cases_are_stripped_as_the_rule_says() {
    let map = |fields: &[(&'static str, &'static str)]| {
        let mut h = HeaderMap::new();
        for &(k, v) in fields {
            h.append(k, HeaderValue::from_static(v));
        }
        h
    };
    let names = |h: &HeaderMap| {
        let mut n: Vec<String> = h.keys().map(|k| k.to_string()).collect();
        n.sort();
        n
    };
    let plain = [("host", "a.example"), ("content-length", "3"), ("x-a", "1")];
    let mut h = map(&plain);
    strip_hop_by_hop(&mut h);
    assert_eq!(h, map(&plain), "nothing hop-by-hop: unchanged");

    let mut h = map(&[
        ("server", "nginx"),
        ("content-length", "0"),
        ("connection", "keep-alive"),
    ]);
    strip_hop_by_hop(&mut h);
    assert_eq!(names(&h), ["content-length", "server"]);

    let mut h = map(&[
        ("connection", "Keep-Alive, X-Named"),
        ("connection", "transfer-encoding"),
        ("transfer-encoding", "chunked"),
        ("content-length", "5"),
        ("x-named", "1"),
        ("upgrade", "websocket"),
    ]);
    strip_hop_by_hop(&mut h);
    assert_eq!(names(&h), ["content-length", "upgrade"]);

    let mut h = map(&[("transfer-encoding", "chunked"), ("content-length", "5")]);
    strip_hop_by_hop(&mut h);
    assert_eq!(
        names(&h),
        ["transfer-encoding"],
        "a length beside chunking goes"
    );
}

/// An h2c origin on loopback answering `ok` to every request, counting its connections.
async fn h2c_origin() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    let body = http_body_util::Full::new(Bytes::from("ok"));
                    Ok::<_, std::convert::Infallible>(Response::new(body))
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
            });
        }
    });
    (addr, accepted)
}

async fn get_h2(mut sender: upstream::H2Sender, addr: SocketAddr) -> u16 {
    use http_body_util::BodyExt;
    let mut req = Request::new(ReqBody::empty());
    *req.uri_mut() = format!("http://{addr}/").parse().unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    resp.into_body().collect().await.unwrap();
    status
}

/// `g` names: the streams to an instance share its h2 connection, kept while used
/// and dropped once unused for the idle limit.
#[tokio::test]
async fn http_h2_instance_connection_is_shared_and_dropped_when_idle() {
    let (a, accepted) = h2c_origin().await;
    let (b, _) = h2c_origin().await;
    let conns = upstream::H2Conns::new(Duration::from_millis(200));
    assert!(conns.get(a).is_none());
    let sender = upstream::connect_h2(a, Duration::from_secs(5))
        .await
        .unwrap();
    drop(conns.put(a, sender));
    let mut streams = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (sender, slot) = conns.get(a).expect("kept");
        streams.spawn(async move {
            let status = get_h2(sender, a).await;
            drop(slot);
            status
        });
    }
    while let Some(status) = streams.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one connection, eight streams"
    );
    drop(
        conns.put(
            b,
            upstream::connect_h2(b, Duration::from_secs(5))
                .await
                .unwrap(),
        ),
    );
    assert_eq!(conns.kept(), 2);
    // Unused past the idle limit: the sweeper drops both, no lookup needed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(conns.kept(), 0);
    assert!(conns.get(a).is_none());
}

/// A connection carrying `STREAMS_PER_CONN` streams takes no more: the next stream finds
/// none (and opens another), a stream ending makes room again, and a connection with a stream
/// open is kept past the idle limit.
#[tokio::test]
async fn http_h2_instance_connections_grow_past_the_stream_limit() {
    let (a, accepted) = h2c_origin().await;
    let conns = upstream::H2Conns::new(Duration::from_millis(200));
    let first = upstream::connect_h2(a, Duration::from_secs(5))
        .await
        .unwrap();
    let mut slots = vec![conns.put(a, first)];
    while let Some((_, slot)) = conns.get(a) {
        slots.push(slot);
        assert!(slots.len() <= upstream::STREAMS_PER_CONN, "no limit");
    }
    assert_eq!(slots.len(), upstream::STREAMS_PER_CONN, "full");
    let second = upstream::connect_h2(a, Duration::from_secs(5))
        .await
        .unwrap();
    let on_second = conns.put(a, second);
    assert_eq!(conns.kept(), 2);
    let (sender, slot) = conns.get(a).expect("the second has room");
    assert_eq!(get_h2(sender, a).await, 200);
    drop(slot);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    // Idle past the limit: the second (no stream) goes, the full first stays while its
    // streams are open.
    drop(on_second);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(conns.kept(), 1);
    assert!(conns.get(a).is_none(), "the first is still full");
    slots.pop();
    let (sender, _slot) = conns.get(a).expect("a stream ended: room on the first");
    assert_eq!(get_h2(sender, a).await, 200);
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "no third connection");
}

/// A stream task whose response waits for the client's window (its body handed a frame and
/// was not asked for the next) ends after `timeouts.write`; one waiting on its instance does
/// not.
#[tokio::test]
async fn http_h2_stream_waiting_for_the_client_past_the_write_limit_ends() {
    use hyper::rt::Executor;
    let exec = h2::StreamExec {
        write: Duration::from_millis(100),
    };
    let stream = |handed: bool| {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        exec.execute(async move {
            let _alive = tx; // dropped when the task ends
            let wait = h2::ClientWait::current().expect("a stream task's wait");
            if handed {
                wait.handed();
            }
            std::future::pending::<()>().await;
        });
        rx
    };
    let (reading, not_reading) = (stream(false), stream(true));
    let ended = tokio::time::timeout(Duration::from_secs(5), not_reading).await;
    assert!(ended.is_ok(), "the stream the client does not read ends");
    let still = tokio::time::timeout(Duration::from_millis(400), reading).await;
    assert!(
        still.is_err(),
        "a stream waiting on its instance is not the client's to end"
    );
    assert!(
        h2::ClientWait::current().is_none(),
        "only inside a stream task"
    );
}
