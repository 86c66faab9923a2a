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
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}
