//! Passthrough without user space: `splice(2)` moves a direction's bytes from one TCP socket
//! into a pipe and from the pipe into the other socket, so they are never copied into the
//! gateway (pages move by reference on the way in).
//!
//! A direction splices only while its bytes come in bulk: it starts by copying through the
//! scratch buffer (`buffered`), splices once a read fills that buffer, and copies again once a
//! splice moves less. Small messages (handshakes, requests, short responses) are cheaper copied:
//! a short read tells that the socket is drained, while a short splice cannot (the pipe may
//! have run out of slots), so each splice burst ends with one more call that finds nothing.
//!
//! A direction holds a pipe only while it has bytes in it: pipes come from a small pool per
//! thread and go back as soon as they are empty, so an idle connection holds no pipe (and no
//! descriptor beyond its two sockets), and a new connection creates none once the pool is
//! warm. A direction whose writer refused bytes keeps its pipe until they leave; at most
//! [`PIPES_MAX`] pipes exist at once in the process, and a direction that cannot have one
//! (that cap, or a descriptor limit) copies through the scratch buffer as `buffered` does, so
//! splicing never refuses a connection.

use super::buffered::{Half, BUFFER_SIZE};
use super::{End, Meter, Pair, RelayError};
use rustix::pipe::{fcntl_setpipe_size, pipe_with, splice, PipeFlags, SpliceFlags};
use std::cell::RefCell;
use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncWrite, Interest};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

/// Pipes that may exist at once in the process (pooled or holding bytes): 2 descriptors
/// each, inside `[proxy.limits] descriptor_reserve`.
pub const PIPES_MAX: usize = 64;

/// Empty pipes kept per thread for the next direction that has bytes.
const POOL_PER_THREAD: usize = 4;

/// A pipe's capacity: what one `splice` moves at most. 256 KiB moves a socket buffer's worth
/// of bulk data per call (the default pipe, 64 KiB, takes four); its pages exist only while
/// bytes are in it.
const PIPE_SIZE: usize = 256 * 1024;

static PIPES: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static POOL: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

#[cfg(test)]
thread_local! {
    /// Tests: no pipe can be had on this thread (as under a descriptor limit).
    pub(super) static NO_PIPES: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Tests: bytes this thread spliced out of pipes.
    static SPLICED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Tests: pipes this thread created and has not closed.
    static LIVE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// One pipe: bytes go into `write` and come out of `read`.
#[derive(Debug)]
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    /// A pipe from this thread's pool, or a new one; `None` past [`PIPES_MAX`] or when the
    /// process has no descriptor left.
    fn take() -> Option<Pipe> {
        #[cfg(test)]
        if NO_PIPES.with(|n| n.get()) {
            return None;
        }
        if let Some(p) = POOL.with(|pool| pool.borrow_mut().pop()) {
            return Some(p);
        }
        if PIPES.fetch_add(1, Ordering::Relaxed) >= PIPES_MAX {
            PIPES.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        match pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK) {
            Ok((read, write)) => {
                // Best effort: a smaller pipe (a user's pipe quota) still works.
                let capacity = fcntl_setpipe_size(&write, PIPE_SIZE).unwrap_or(64 * 1024);
                #[cfg(test)]
                LIVE.with(|l| l.set(l.get() + 1));
                Some(Pipe {
                    read,
                    write,
                    capacity,
                })
            }
            Err(e) => {
                PIPES.fetch_sub(1, Ordering::Relaxed);
                tracing::debug!("no pipe for splice, copying instead: {e}");
                None
            }
        }
    }

    /// Returns an empty pipe to this thread's pool (or closes it when the pool is full).
    fn give_back(self) {
        POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < POOL_PER_THREAD {
                pool.push(self);
            }
        });
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        PIPES.fetch_sub(1, Ordering::Relaxed);
        #[cfg(test)]
        LIVE.with(|l| l.set(l.get() - 1));
    }
}

/// Both directions between two TCP sockets: spliced in bulk when `splice` is on, else copied.
pub(super) struct TcpPair<'a> {
    client_read: ReadHalf<'a>,
    client_write: TcpWrite<'a>,
    upstream_read: ReadHalf<'a>,
    upstream_write: TcpWrite<'a>,
    up: SpliceHalf,
    down: SpliceHalf,
}

impl<'a> TcpPair<'a> {
    /// Copies only when `splice` is off.
    pub fn new(
        client: &'a mut TcpStream,
        upstream: &'a mut TcpStream,
        splice: bool,
    ) -> TcpPair<'a> {
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream.split();
        TcpPair {
            client_read,
            client_write: TcpWrite(client_write),
            upstream_read,
            upstream_write: TcpWrite(upstream_write),
            up: SpliceHalf::new(End::Client, End::Upstream, splice),
            down: SpliceHalf::new(End::Upstream, End::Client, splice),
        }
    }
}

impl Pair for TcpPair<'_> {
    fn poll_up(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RelayError>> {
        self.up
            .poll_copy(cx, &mut self.client_read, &mut self.upstream_write)
    }
    fn poll_down(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RelayError>> {
        self.down
            .poll_copy(cx, &mut self.upstream_read, &mut self.client_write)
    }
    fn meters(&self) -> [&Meter; 2] {
        [&self.up.copy.meter, &self.down.copy.meter]
    }
    fn meters_mut(&mut self) -> [&mut Meter; 2] {
        [&mut self.up.copy.meter, &mut self.down.copy.meter]
    }
}

/// A socket's write half whose shutdown tells that the peer reset (`ENOTCONN`), which tokio's
/// maps to success: the relay then ends at once instead of reading the reset from the other
/// side after passing on what the peer sent before it (`Half::poll_drain`).
pub(super) struct TcpWrite<'a>(WriteHalf<'a>);

impl AsyncWrite for TcpWrite<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(self.0.as_ref()).shutdown(std::net::Shutdown::Write))
    }
}

/// One direction: copies small messages (`Half`), splices bulk while a pipe can be had.
struct SpliceHalf {
    /// The copying fallback; it also keeps the meter and the EOF flag.
    copy: Half,
    /// The pipe holding `in_pipe` bytes not yet written out.
    pipe: Option<Pipe>,
    in_pipe: usize,
    /// Bulk: the last read filled the scratch buffer, or the last splice moved as much.
    splicing: bool,
    /// `[proxy] splice`: off, every byte is copied.
    may_splice: bool,
}

impl SpliceHalf {
    fn new(from: End, to: End, may_splice: bool) -> SpliceHalf {
        SpliceHalf {
            copy: Half::new(from, to),
            pipe: None,
            in_pipe: 0,
            splicing: false,
            may_splice,
        }
    }

    fn poll_copy(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut ReadHalf<'_>,
        writer: &mut TcpWrite<'_>,
    ) -> Poll<Result<(), RelayError>> {
        loop {
            // 1. the pipe's bytes leave first; the emptied pipe goes back to the pool
            while self.in_pipe > 0 {
                let n = ready!(self.poll_splice_out(cx, writer.0.as_ref()))?;
                self.in_pipe -= n;
            }
            if let Some(pipe) = self.pipe.take() {
                pipe.give_back();
            }
            // 2. what a copy left behind, and EOF passed on as a shutdown
            if ready!(self.copy.poll_drain(cx, writer))? {
                return Poll::Ready(Ok(()));
            }
            // 3. small messages are copied; a read that fills the buffer starts splicing
            if !self.splicing {
                let n = ready!(self.copy.poll_read_and_write(cx, reader, writer))?;
                self.splicing = self.may_splice && n == BUFFER_SIZE;
                continue;
            }
            // 4. bulk: wait for bytes, then into a pipe (copied when no pipe can be had)
            let from = self.copy.meter.from;
            let socket = reader.as_ref();
            ready!(socket.poll_read_ready(cx)).map_err(|e| RelayError::Io(from, e))?;
            let Some(pipe) = Pipe::take() else {
                self.splicing = false;
                continue;
            };
            let moved = socket.try_io(Interest::READABLE, || {
                let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
                Ok(splice(
                    socket,
                    None,
                    &pipe.write,
                    None,
                    pipe.capacity,
                    flags,
                )?)
            });
            match moved {
                Ok(0) => {
                    pipe.give_back();
                    self.copy.eof = true;
                }
                Ok(n) => {
                    self.pipe = Some(pipe);
                    self.in_pipe = n;
                    self.splicing = n >= BUFFER_SIZE;
                }
                // Readiness was stale; it is cleared and the next poll waits.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => pipe.give_back(),
                Err(e) => {
                    pipe.give_back();
                    return Poll::Ready(Err(RelayError::Io(from, e)));
                }
            }
        }
    }

    /// Moves bytes from the pipe into `socket`; returns how many.
    fn poll_splice_out(
        &mut self,
        cx: &mut Context<'_>,
        socket: &TcpStream,
    ) -> Poll<Result<usize, RelayError>> {
        let meter = &mut self.copy.meter;
        let pipe = self.pipe.as_ref().expect("bytes in a pipe");
        loop {
            match socket.poll_write_ready(cx) {
                Poll::Pending => {
                    meter.stalled();
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(RelayError::Io(meter.to, e))),
                Poll::Ready(Ok(())) => {}
            }
            let moved = socket.try_io(Interest::WRITABLE, || {
                let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
                Ok(splice(&pipe.read, None, socket, None, self.in_pipe, flags)?)
            });
            match moved {
                Ok(0) => {
                    let e = io::Error::new(io::ErrorKind::WriteZero, "wrote 0 bytes");
                    return Poll::Ready(Err(RelayError::Io(meter.to, e)));
                }
                Ok(n) => {
                    meter.wrote(n);
                    #[cfg(test)]
                    SPLICED.with(|s| s.set(s.get() + n as u64));
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(RelayError::Io(meter.to, e))),
            }
        }
    }
}

impl Drop for SpliceHalf {
    fn drop(&mut self) {
        // A pipe still holding bytes is closed with them; an empty one is pooled.
        if let Some(pipe) = self.pipe.take() {
            if self.in_pipe == 0 {
                pipe.give_back();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::{relay_tcp, RelayLimits, Transferred};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const LIMITS: RelayLimits = RelayLimits {
        idle: Duration::from_secs(30),
        write: Duration::from_secs(30),
        linger: Duration::from_secs(30),
        first_data: Duration::from_secs(30),
    };

    /// Two connected loopback sockets: (the far end, the gateway's end).
    async fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let far = TcpStream::connect(listener.local_addr().unwrap());
        let (far, near) = tokio::join!(far, listener.accept());
        (far.unwrap(), near.unwrap().0)
    }

    type Relay = tokio::task::JoinHandle<(Transferred, Result<(), RelayError>)>;

    /// A splicing relay between two loopback connections: (client, upstream, the relay).
    async fn spliced_relay(limits: RelayLimits) -> (TcpStream, TcpStream, Relay) {
        tcp_relay(limits, true).await
    }

    /// A TCP relay (`splice` on or off) between two loopback connections.
    async fn tcp_relay(limits: RelayLimits, splice: bool) -> (TcpStream, TcpStream, Relay) {
        let (client, mut near_client) = socket_pair().await;
        let (mut near_upstream, upstream) = socket_pair().await;
        let relay = tokio::spawn(async move {
            relay_tcp(&mut near_client, &mut near_upstream, limits, splice).await
        });
        (client, upstream, relay)
    }

    fn pattern(len: usize, seed: u32) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 13) as u8)
            .collect()
    }

    fn spliced() -> u64 {
        SPLICED.with(|s| s.get())
    }

    fn pooled() -> usize {
        POOL.with(|p| p.borrow().len())
    }

    fn live() -> usize {
        LIVE.with(|l| l.get())
    }

    /// Sends `bytes` and half-closes while reading to the end; returns what was read.
    async fn send_and_read(socket: &mut TcpStream, bytes: &[u8]) -> Vec<u8> {
        let (mut r, mut w) = socket.split();
        let send = async {
            w.write_all(bytes).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut got = Vec::new();
        tokio::join!(send, r.read_to_end(&mut got)).1.unwrap();
        got
    }

    /// 8 MiB up and 3 MiB down at once, each side half-closing when done: intact, counted.
    async fn both_ways(splice: bool) {
        let (mut client, mut upstream, relay) = tcp_relay(LIMITS, splice).await;
        let (up, down) = (pattern(8 << 20, 1), pattern(3 << 20, 2));
        let up2 = up.clone();
        let client_side = tokio::spawn(async move { send_and_read(&mut client, &up2).await });
        let got = send_and_read(&mut upstream, &down).await;
        assert!(got == up, "client to upstream intact");
        assert!(
            client_side.await.unwrap() == down,
            "upstream to client intact"
        );
        let (moved, result) = relay.await.unwrap();
        result.unwrap();
        let (up, down) = (8 << 20, 3 << 20);
        assert_eq!(moved, Transferred { up, down });
    }

    #[tokio::test]
    async fn splice_moves_both_ways_intact_through_pipes() {
        let before = spliced();
        both_ways(true).await;
        // Bulk: after the first full read, the bytes go through pipes.
        assert!(
            spliced() - before > (10 << 20) as u64,
            "{}",
            spliced() - before
        );
        assert!(pooled() >= 1, "the emptied pipes went back to the pool");
        assert_eq!(pooled(), live(), "none is held once the relay ended");
    }

    #[tokio::test]
    async fn splice_without_pipes_copies_and_loses_nothing() {
        NO_PIPES.with(|n| n.set(true));
        let before = spliced();
        both_ways(true).await;
        NO_PIPES.with(|n| n.set(false));
        assert_eq!(spliced(), before, "copied, not spliced");
    }

    #[tokio::test]
    async fn splice_off_copies_every_byte() {
        let before = spliced();
        both_ways(false).await;
        assert_eq!(spliced(), before, "`splice = false`: copied, not spliced");
        assert_eq!(live(), 0, "no pipe made");
    }

    /// tokio's shutdown reports success on a socket whose peer reset; the relay's own write
    /// half reports `ENOTCONN`, so that the relay can end then.
    #[tokio::test]
    async fn half_close_tcp_write_tells_a_reset_peer() {
        let (far, mut near) = socket_pair().await;
        far.set_zero_linger().unwrap();
        drop(far); // an RST, not a FIN
        let mut b = [0u8; 1];
        let read = near.peek(&mut b).await;
        assert!(read.is_err(), "the reset arrived: {read:?}");
        let (_, w) = near.split();
        let mut w = TcpWrite(w);
        let shut = std::future::poll_fn(|cx| Pin::new(&mut w).poll_shutdown(cx)).await;
        assert!(
            matches!(&shut, Err(e) if e.kind() == io::ErrorKind::NotConnected),
            "{shut:?}"
        );
        assert!(near.shutdown().await.is_ok(), "tokio's own hides it");
    }

    #[tokio::test]
    async fn splice_idle_connection_holds_no_pipe() {
        let (mut client, mut upstream, relay) = spliced_relay(LIMITS).await;
        const BURST: usize = 1 << 20;
        for round in 0..3u8 {
            let sent = vec![round; BURST];
            let mut got = vec![0u8; BURST];
            tokio::join!(client.write_all(&sent), upstream.read_exact(&mut got))
                .0
                .unwrap();
            assert!(got == sent);
            let mut back = vec![0u8; BURST];
            tokio::join!(upstream.write_all(&got), client.read_exact(&mut back))
                .0
                .unwrap();
            assert!(back == sent);
            // idle now: every pipe this thread made is back in the pool
            assert!(live() >= 1, "a bulk burst is spliced");
            assert_eq!(pooled(), live(), "an idle relay holds no pipe");
        }
        drop(client);
        drop(upstream);
        let (moved, _) = relay.await.unwrap();
        let total = 3 * BURST as u64;
        assert_eq!(
            moved,
            Transferred {
                up: total,
                down: total
            }
        );
    }

    #[tokio::test]
    async fn splice_small_messages_are_copied() {
        let (mut client, mut upstream, relay) = spliced_relay(LIMITS).await;
        let before = spliced();
        for round in 0..20u8 {
            client.write_all(&[round; 300]).await.unwrap();
            let mut b = [0u8; 300];
            upstream.read_exact(&mut b).await.unwrap();
            upstream.write_all(&b).await.unwrap();
            client.read_exact(&mut b).await.unwrap();
            assert_eq!(b, [round; 300]);
        }
        assert_eq!(
            spliced(),
            before,
            "request-sized messages never take a pipe"
        );
        assert_eq!(live(), 0);
        drop(client);
        drop(upstream);
        let (moved, _) = relay.await.unwrap();
        assert_eq!(
            moved,
            Transferred {
                up: 6000,
                down: 6000
            }
        );
    }

    #[tokio::test]
    async fn splice_stalled_writer_ends_the_relay() {
        let limits = RelayLimits {
            write: Duration::from_millis(300),
            ..LIMITS
        };
        let (mut client, _upstream_never_reads, relay) = spliced_relay(limits).await;
        // More than both sockets' buffers and a pipe hold: the relay's write must stall.
        let writer = tokio::spawn(async move {
            let chunk = vec![7u8; 1 << 20];
            for _ in 0..64 {
                if client.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        });
        let (moved, result) = relay.await.unwrap();
        assert!(
            matches!(result, Err(RelayError::WriteStalled(End::Upstream, _))),
            "{result:?}"
        );
        assert!(moved.up > 0);
        writer.abort();
    }
}
