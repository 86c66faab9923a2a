//! Gatehouse's server TLS stream: rustls' unbuffered connection API driven over a tokio
//! byte stream, with record buffers that belong to the thread, not the connection.
//!
//! Why not `tokio-rustls`: its `ServerConnection` keeps a 4 KiB read buffer per connection for
//! the connection's whole life, idle or not, and reads 4 KiB per system call. Here a
//! connection borrows a 64 KiB buffer from its thread ([`pool`]) while it reads or writes
//! records and gives it back when it waits, keeping only the bytes of a record that has
//! not fully arrived: an idle terminated connection holds no TLS buffer at all
//! (benches/M1-IDLE.md), and a bulk transfer reads many records per system call.
//!
//! [`accept`] runs the handshake (sending rustls' alert if it fails); the [`ServerTls`] it
//! returns reads and writes plaintext, answers key updates, sends close_notify on shutdown
//! and reports a peer that ended without one as `UnexpectedEof`, as tokio-rustls does.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod pool;
mod stream;
#[cfg(test)]
mod tests;

pub use stream::ServerTls;

use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};

/// How long a failed handshake waits for its alert to be written.
const ALERT_WAIT: Duration = Duration::from_secs(1);

/// Runs a server handshake over `io` with `config`. On failure the alert rustls chose is
/// sent (waiting at most a second) and the error returned (`InvalidData` for TLS errors,
/// `UnexpectedEof` for a peer that left).
pub async fn accept<IO>(config: Arc<rustls::ServerConfig>, io: IO) -> io::Result<ServerTls<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let conn = rustls::server::UnbufferedServerConnection::new(config)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut tls = ServerTls::new(io, conn);
    match std::future::poll_fn(|cx| tls.poll_handshake(cx)).await {
        Ok(()) => Ok(tls),
        Err(e) => {
            let alert = std::future::poll_fn(|cx| tls.poll_write_out(cx));
            let _ = tokio::time::timeout(ALERT_WAIT, alert).await;
            Err(e)
        }
    }
}
