//! Bidirectional byte relay with half-close, an idle timeout and a write-stall timeout.
//!
//! One task polls both directions (like `tokio::io::copy_bidirectional`), so there is no
//! split lock and no second task per connection. How a direction moves its bytes is the
//! `Pair`'s business: `buffered` reads into one scratch buffer per thread and writes at once,
//! keeping only what the writer refused (an idle connection holds no relay buffer: it held
//! 2 x 16 KiB before, benches/RESULTS.md M1); `splice` moves bytes between two TCP sockets
//! through a pooled pipe, kernel to kernel, so passthrough bytes never enter user space.
//! A read of 0 bytes (FIN, or TLS close_notify) is passed on as a write shutdown to the other
//! side, and the other direction keeps flowing until it ends too (a shutdown that fails finds
//! that side reset, and ends the relay: a reset flushes what it sent). One timer serves every
//! deadline: it fires, checks the last progress and any stalled write, and re-arms for the
//! earliest deadline, so activity costs no timer reset.

mod buffered;
mod splice;

pub use buffered::BUFFER_SIZE;
pub use splice::PIPES_MAX;

use std::future::{poll_fn, Future};
use std::io;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Limits of one relay.
#[derive(Debug, Clone, Copy)]
pub struct RelayLimits {
    /// No byte either way for this long ends the relay.
    pub idle: Duration,
    /// A write blocked this long (the reader is not reading) ends the relay.
    pub write: Duration,
    /// Once one side has closed, this long without a byte ends the relay (instead of `idle`).
    pub linger: Duration,
    /// No byte from the client for this long after the relay starts ends it.
    pub first_data: Duration,
}

/// Bytes moved each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transferred {
    /// Client to upstream.
    pub up: u64,
    /// Upstream to client.
    pub down: u64,
}

/// Which end of the relay failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The connection from the client.
    Client,
    /// The connection to the instance.
    Upstream,
}

/// Why a relay ended before both sides closed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// No byte moved for the idle limit.
    #[error("idle for {0:?}")]
    Idle(Duration),
    /// One side had closed and the other sent nothing for the linger limit.
    #[error("one side closed, the other idle for {0:?}")]
    Linger(Duration),
    /// The client sent no byte for the first-data limit.
    #[error("no data from the client within {0:?}")]
    NoData(Duration),
    /// A write to `End` made no progress for the write limit.
    #[error("write to {0:?} stalled for {1:?}")]
    WriteStalled(End, Duration),
    /// An I/O error on `End`.
    #[error("{0:?} I/O: {1}")]
    Io(End, io::Error),
}

/// Relays until both directions are closed, or a limit or error ends it.
pub async fn relay<C, U>(
    client: &mut C,
    upstream: &mut U,
    limits: RelayLimits,
) -> (Transferred, Result<(), RelayError>)
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let pair = buffered::BufferedPair {
        client,
        upstream,
        up: buffered::Half::new(End::Client, End::Upstream),
        down: buffered::Half::new(End::Upstream, End::Client),
    };
    drive(pair, limits).await
}

/// Relays between two TCP sockets: bulk by `splice(2)` through pooled pipes when `splice` is
/// on (the bytes never enter user space; a direction that cannot get a pipe copies through the
/// scratch buffer instead), everything else copied as [`relay`] does; a peer that reset ends
/// the relay when a shutdown towards it fails.
pub async fn relay_tcp(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    limits: RelayLimits,
    splice: bool,
) -> (Transferred, Result<(), RelayError>) {
    drive(splice::TcpPair::new(client, upstream, splice), limits).await
}

/// What the driver sees of one direction.
#[derive(Debug)]
pub(crate) struct Meter {
    from: End,
    to: End,
    /// Bytes written out.
    amount: u64,
    /// Ended: EOF passed on as a shutdown.
    done: bool,
    /// A byte moved since the driver last looked.
    progress: bool,
    /// Since when a write has been refused.
    stalled_since: Option<Instant>,
}

impl Meter {
    fn new(from: End, to: End) -> Meter {
        Meter {
            from,
            to,
            amount: 0,
            done: false,
            progress: false,
            stalled_since: None,
        }
    }

    /// `n` bytes were written out.
    fn wrote(&mut self, n: usize) {
        self.amount += n as u64;
        self.stalled_since = None;
        self.progress = true;
    }

    /// The writer refused bytes.
    fn stalled(&mut self) {
        self.stalled_since.get_or_insert_with(Instant::now);
    }
}

/// Both directions of one relay, polled by `drive`.
pub(crate) trait Pair {
    /// Client to upstream until it would block; Ready(Ok) once it is done.
    fn poll_up(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RelayError>>;
    /// Upstream to client, likewise.
    fn poll_down(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RelayError>>;
    /// Up, down.
    fn meters(&self) -> [&Meter; 2];
    /// Up, down.
    fn meters_mut(&mut self) -> [&mut Meter; 2];
}

/// Polls both directions of `pair` under the limits.
async fn drive<P: Pair>(mut pair: P, limits: RelayLimits) -> (Transferred, Result<(), RelayError>) {
    let started = Instant::now();
    let mut last_progress = started;
    let mut half_closed = false;
    let linger = limits.linger.min(limits.idle);
    let timer = tokio::time::sleep(limits.idle.min(limits.write).min(limits.first_data));
    tokio::pin!(timer);
    let result = poll_fn(|cx| {
        if !pair.meters()[0].done {
            if let Poll::Ready(Err(e)) = pair.poll_up(cx) {
                return Poll::Ready(Err(e));
            }
        }
        if !pair.meters()[1].done {
            if let Poll::Ready(Err(e)) = pair.poll_down(cx) {
                return Poll::Ready(Err(e));
            }
        }
        let mut progress = false;
        for m in pair.meters_mut() {
            progress |= std::mem::take(&mut m.progress);
        }
        let [up, down] = pair.meters();
        if up.done && down.done {
            return Poll::Ready(Ok(()));
        }
        if progress {
            last_progress = Instant::now();
        }
        if !half_closed && (up.done || down.done) {
            // One side left: the other gets `linger` without a byte, not the full idle time.
            half_closed = true;
            let at = Instant::now() + linger;
            if at < timer.deadline() {
                timer.as_mut().reset(at);
            }
        }
        while timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let (idle, idle_error) = match half_closed {
                true => (linger, RelayError::Linger(linger)),
                false => (limits.idle, RelayError::Idle(limits.idle)),
            };
            let mut next = last_progress + idle;
            if now >= next {
                return Poll::Ready(Err(idle_error));
            }
            if up.amount == 0 && !up.done {
                let deadline = started + limits.first_data;
                if now >= deadline {
                    return Poll::Ready(Err(RelayError::NoData(limits.first_data)));
                }
                next = next.min(deadline);
            }
            for half in [up, down] {
                if let Some(since) = half.stalled_since {
                    let deadline = since + limits.write;
                    if now >= deadline {
                        return Poll::Ready(Err(RelayError::WriteStalled(half.to, limits.write)));
                    }
                    next = next.min(deadline);
                }
            }
            timer.as_mut().reset(next);
        }
        Poll::Pending
    })
    .await;
    let [up, down] = pair.meters();
    (
        Transferred {
            up: up.amount,
            down: down.amount,
        },
        result,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, ReadBuf};

    const LIMITS: RelayLimits = RelayLimits {
        idle: Duration::from_secs(5),
        write: Duration::from_secs(5),
        linger: Duration::from_secs(600),
        first_data: Duration::from_secs(600),
    };

    #[tokio::test]
    async fn half_close_each_way_keeps_the_other_open() {
        let (mut client, mut c_side) = duplex(64);
        let (mut u_side, mut upstream) = duplex(64);
        let relay = tokio::spawn(async move { relay(&mut c_side, &mut u_side, LIMITS).await });
        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap(); // FIN from the client
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap(); // the upstream sees EOF
        assert_eq!(got, b"request");
        // the other direction still flows after the client's FIN
        let writer = tokio::spawn(async move {
            upstream.write_all(&vec![7u8; 100_000]).await.unwrap();
            upstream.shutdown().await.unwrap();
        });
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        writer.await.unwrap();
        assert_eq!(back.len(), 100_000);
        let (t, r) = relay.await.unwrap();
        r.unwrap();
        assert_eq!(
            t,
            Transferred {
                up: 7,
                down: 100_000
            }
        );
    }

    /// A stream that takes at most 3 bytes per write and refuses every other write (waking
    /// itself), so the relay's "keep what the writer refused" path runs constantly.
    struct Stingy<S> {
        inner: S,
        refuse: bool,
    }

    impl<S: AsyncRead + Unpin> AsyncRead for Stingy<S> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl<S: AsyncWrite + Unpin> AsyncWrite for Stingy<S> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.refuse = !self.refuse;
            if self.refuse {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = buf.len().min(3);
            Pin::new(&mut self.inner).poll_write(cx, &buf[..n])
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn partial_and_refused_writes_lose_nothing() {
        let (mut client, c_side) = duplex(1 << 16);
        let (u_side, mut upstream) = duplex(1 << 16);
        let mut c_side = Stingy {
            inner: c_side,
            refuse: false,
        };
        let mut u_side = Stingy {
            inner: u_side,
            refuse: true,
        };
        let relay = tokio::spawn(async move { relay(&mut c_side, &mut u_side, LIMITS).await });
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        let sent = data.clone();
        let up_writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap();
        assert!(got == data, "client to upstream intact");
        upstream.write_all(&data[..50_000]).await.unwrap();
        upstream.shutdown().await.unwrap();
        assert!(
            up_writer.await.unwrap() == data[..50_000],
            "upstream to client intact"
        );
        let (t, r) = relay.await.unwrap();
        r.unwrap();
        assert_eq!(
            t,
            Transferred {
                up: 200_000,
                down: 50_000
            }
        );
    }

    /// A client that reset: nothing to read yet (what it sent before the reset is flushed),
    /// and a shutdown fails as `shutdown(2)` does on a reset TCP socket.
    struct Reset;

    impl AsyncRead for Reset {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Reset {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Err(io::ErrorKind::NotConnected.into()))
        }
    }

    /// The instance closes after a client reset: its EOF cannot be passed on, and the relay
    /// ends then, without waiting `linger` for a client that is gone.
    #[tokio::test(start_paused = true)]
    async fn half_close_to_a_reset_peer_ends_the_relay_at_once() {
        let mut client = Reset;
        let (mut u_side, upstream) = duplex(64);
        drop(upstream); // the instance's FIN
        let started = Instant::now();
        let (t, r) = relay(&mut client, &mut u_side, LIMITS).await;
        assert!(
            matches!(&r, Err(RelayError::Io(End::Client, e)) if e.kind() == io::ErrorKind::NotConnected),
            "{r:?}"
        );
        assert_eq!(started.elapsed(), Duration::ZERO, "no limit was waited for");
        assert_eq!(t, Transferred::default());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_ends_the_relay() {
        let (_client, mut c_side) = duplex(64);
        let (mut u_side, _upstream) = duplex(64);
        let limits = RelayLimits {
            idle: Duration::from_secs(3),
            write: Duration::from_secs(60),
            linger: Duration::from_secs(600),
            first_data: Duration::from_secs(600),
        };
        let (_, r) = relay(&mut c_side, &mut u_side, limits).await;
        assert!(matches!(r, Err(RelayError::Idle(_))), "{r:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn activity_postpones_idle() {
        let (mut client, mut c_side) = duplex(64);
        let (mut u_side, mut upstream) = duplex(64);
        let limits = RelayLimits {
            idle: Duration::from_secs(3),
            write: Duration::from_secs(60),
            linger: Duration::from_secs(600),
            first_data: Duration::from_secs(600),
        };
        let start = Instant::now();
        let relay = tokio::spawn(async move { relay(&mut c_side, &mut u_side, limits).await });
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            client.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            upstream.read_exact(&mut b).await.unwrap();
        }
        let (_, r) = relay.await.unwrap();
        assert!(matches!(r, Err(RelayError::Idle(_))));
        assert!(
            start.elapsed() >= Duration::from_secs(13),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn fairness_linger_ends_a_relay_once_one_side_left() {
        let (mut client, mut c_side) = duplex(64);
        let (mut u_side, _upstream_holds) = duplex(64);
        let limits = RelayLimits {
            linger: Duration::from_secs(2),
            ..LIMITS
        };
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap(); // the client left; the instance holds on
        let start = Instant::now();
        let (t, r) = relay(&mut c_side, &mut u_side, limits).await;
        assert!(matches!(r, Err(RelayError::Linger(_))), "{r:?}");
        assert_eq!(t.up, 5);
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "not the idle limit"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn fairness_linger_lets_a_busy_side_keep_sending() {
        let (mut client, mut c_side) = duplex(1 << 16);
        let (mut u_side, mut upstream) = duplex(1 << 16);
        let limits = RelayLimits {
            linger: Duration::from_secs(2),
            ..LIMITS
        };
        let relay = tokio::spawn(async move { relay(&mut c_side, &mut u_side, limits).await });
        client.write_all(b"get").await.unwrap();
        client.shutdown().await.unwrap();
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            upstream.write_all(b"chunk").await.unwrap();
        }
        upstream.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        assert_eq!(back.len(), 20, "a response still flowing is not cut");
        relay.await.unwrap().1.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn fairness_no_data_from_the_client_ends_the_relay() {
        let (_client_silent, mut c_side) = duplex(64);
        let (mut u_side, _upstream) = duplex(64);
        let limits = RelayLimits {
            first_data: Duration::from_secs(2),
            ..LIMITS
        };
        let start = Instant::now();
        let (_, r) = relay(&mut c_side, &mut u_side, limits).await;
        assert!(matches!(r, Err(RelayError::NoData(_))), "{r:?}");
        assert!(start.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn stalled_writer_ends_the_relay() {
        let (mut client, mut c_side) = duplex(1 << 20);
        let (mut u_side, _upstream_never_reads) = duplex(1024);
        let limits = RelayLimits {
            idle: Duration::from_secs(600),
            write: Duration::from_secs(2),
            linger: Duration::from_secs(600),
            first_data: Duration::from_secs(600),
        };
        client.write_all(&vec![1u8; 100_000]).await.unwrap();
        let (_, r) = relay(&mut c_side, &mut u_side, limits).await;
        assert!(
            matches!(r, Err(RelayError::WriteStalled(End::Upstream, _))),
            "{r:?}"
        );
    }
}
