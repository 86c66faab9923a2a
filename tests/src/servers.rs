//! Upstream servers for tests: plain TCP echo servers that say who they are and what header
//! preceded the data, and a TLS server that reports the SNI it received.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Binds `ip:port` (port 0 = any).
pub async fn bind(ip: [u8; 4], port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind(SocketAddr::new(IpAddr::from(ip), port)).await
}

/// A TCP connection to `addr` from the loopback address `source` (127.0.0.0/8 is all local,
/// so tests can be several clients).
pub async fn connect_from(
    source: [u8; 4],
    addr: SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::from(source), 0))?;
    socket.connect(addr).await
}

/// A listener that accepts and holds every connection without reading or writing; returns
/// how many it holds.
pub fn hold(listener: TcpListener) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    count
}

/// Binds the same free port on several loopback IPs (instances of one app differ by IP, as on
/// the VPC, and share the app's port).
pub async fn bind_same_port(ips: &[[u8; 4]]) -> (u16, Vec<TcpListener>) {
    for _ in 0..50 {
        let first = bind(ips[0], 0).await.unwrap();
        let port = first.local_addr().unwrap().port();
        let mut all = vec![first];
        for ip in &ips[1..] {
            match bind(*ip, port).await {
                Ok(l) => all.push(l),
                Err(_) => break,
            }
        }
        if all.len() == ips.len() {
            return (port, all);
        }
    }
    panic!("no common free port on {ips:?}");
}

/// An echo server: every connection first gets `<name>\n`, then its bytes echoed back; on EOF
/// from the client it sends `<name>: bye\n` (after the echo) and closes its side.
pub fn echo(listener: TcpListener, name: &'static str) {
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let _ = s.write_all(format!("{name}\n").as_bytes()).await;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = s.write_all(format!("{name}: bye\n").as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
}

/// A server that reads the first `n` bytes of each connection and sends them to the test.
pub fn capture_prefix(
    listener: TcpListener,
    n: usize,
) -> tokio::sync::mpsc::UnboundedReceiver<Vec<u8>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; n];
                if s.read_exact(&mut buf).await.is_ok() {
                    let _ = tx.send(buf);
                }
                let _ = s.write_all(b"ok\n").await;
                let mut sink = [0u8; 1024];
                while let Ok(n) = s.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    rx
}

/// A TLS server (the app terminates, passthrough): answers each connection with
/// `sni=<name the client sent>\n` and then echoes.
pub fn tls_sni_echo(listener: TcpListener, config: Arc<rustls::ServerConfig>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().unwrap_or("<none>").to_owned();
                let _ = tls.write_all(format!("sni={sni}\n").as_bytes()).await;
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = tls.shutdown().await;
            });
        }
    });
}

/// Reads one `\n`-terminated line.
pub async fn read_line<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while r.read_exact(&mut b).await.is_ok() {
        if b[0] == b'\n' {
            break;
        }
        out.push(b[0]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An HTTP/1.1 server answering every request with `<name>` and the forwarding headers it
/// received, one per line: `xff=…`, `xfp=…`, `xfh=…`, `forwarded=…`, `via=…`, `host=…`.
pub fn http_whoami(listener: TcpListener, name: &'static str) {
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| async move {
                        let h = |k: &str| {
                            req.headers()
                                .get_all(k)
                                .iter()
                                .filter_map(|v| v.to_str().ok())
                                .collect::<Vec<_>>()
                                .join(", ")
                        };
                        let body = format!(
                            "{name}\nxff={}\nxfp={}\nxfh={}\nforwarded={}\nvia={}\nhost={}\n",
                            h("x-forwarded-for"),
                            h("x-forwarded-proto"),
                            h("x-forwarded-host"),
                            h("forwarded"),
                            h("via"),
                            h("host"),
                        );
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(hyper::body::Bytes::from(body)),
                        ))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}
