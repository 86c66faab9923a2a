//! Listening sockets: one `SO_REUSEPORT` socket per worker and address, so the kernel spreads
//! new connections across workers with no shared accept queue or lock.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;

/// Pending connections per socket; the kernel caps it at `net.core.somaxconn`.
const BACKLOG: i32 = 4096;

/// Binds `workers` sockets on each address; `result[w]` holds worker `w`'s sockets. A port 0
/// is resolved by the first bind and reused by the others, so all workers share one port.
pub fn bind_all(
    addrs: &[SocketAddr],
    workers: usize,
) -> io::Result<Vec<Vec<std::net::TcpListener>>> {
    let mut per_worker: Vec<Vec<std::net::TcpListener>> =
        (0..workers).map(|_| Vec::new()).collect();
    for addr in addrs {
        let mut addr = *addr;
        for sockets in per_worker.iter_mut() {
            let listener = bind_one(addr)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            addr = listener.local_addr()?;
            sockets.push(listener);
        }
    }
    Ok(per_worker)
}

fn bind_one(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    // Inherited by every accepted socket: one setsockopt per listener, not per connection.
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_share_one_port_and_accepted_sockets_have_nodelay() {
        let sockets = bind_all(&["127.0.0.1:0".parse().unwrap()], 3).unwrap();
        let port = sockets[0][0].local_addr().unwrap().port();
        assert!(sockets
            .iter()
            .all(|w| w[0].local_addr().unwrap().port() == port));
        let listener = &sockets[0][0];
        listener.set_nonblocking(false).unwrap();
        // with SO_REUSEPORT the kernel may hand the connection to any worker's socket
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        for w in &sockets {
            w[0].set_nonblocking(true).unwrap();
            if let Ok((accepted, _)) = w[0].accept() {
                assert!(
                    accepted.nodelay().unwrap(),
                    "TCP_NODELAY inherited from the listener"
                );
                return;
            }
        }
        panic!("no worker socket accepted the connection");
    }
}
