//! Progress deadlines: an operation that stays pending longer than a limit since it last
//! made progress fails with `TimedOut`. The timer is lazy: progress only sets a flag; the
//! wait after it reads the clock ([`now_ms`]) once, the one sleep per deadline is armed when an
//! operation first waits, and when it fires early (progress came meanwhile) it is moved to
//! the new deadline, so a busy stream reads no clock and resets no timer per read or write.

use crate::http::io::HeaderDeadline;
use crate::upstream::health::now_ms;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// One progress deadline.
#[derive(Debug)]
pub struct Stall {
    limit_ms: u64,
    /// When the current wait began ([`now_ms`] clock).
    last: u64,
    /// Progress came since `last`: the next wait starts a new period (read then, so that
    /// progress itself reads no clock).
    moved: bool,
    sleep: Option<Pin<Box<Sleep>>>,
    what: &'static str,
}

impl Stall {
    /// A deadline of `limit` without progress; `what` names it in the error.
    pub fn new(limit: Duration, what: &'static str) -> Stall {
        Stall {
            limit_ms: limit.as_millis().max(1) as u64,
            last: 0,
            moved: true,
            sleep: None,
            what,
        }
    }

    /// The operation made progress.
    pub fn progress(&mut self) {
        self.moved = true;
    }

    /// The operation is pending: `Ready(error)` once the limit has passed since the last
    /// progress, else `Pending` with a wake-up registered at the deadline.
    pub fn poll_waiting(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if std::mem::take(&mut self.moved) {
            self.last = now_ms();
        }
        // A wake-up not yet due is at or before the deadline (`last` only moves later).
        if let Some(s) = &mut self.sleep {
            if !s.is_elapsed() && s.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        loop {
            let due = self.last + self.limit_ms;
            let now = now_ms();
            if now >= due {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{} made no progress for {} ms", self.what, self.limit_ms),
                ));
            }
            let at = Instant::now() + Duration::from_millis(due - now);
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            if sleep.is_elapsed() {
                sleep.as_mut().reset(at);
            }
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }

    /// Runs `poll` under this deadline: progress on `Ready`, the deadline on `Pending`.
    pub fn guard<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(r) => {
                self.progress();
                Poll::Ready(r)
            }
            Poll::Pending => self.poll_waiting(cx).map(Err),
        }
    }
}

/// A connection's header deadline as its reads see it: the deadline itself is an atomic the
/// request path arms and disarms ([`HeaderDeadline`]); the sleep that wakes the reader at it
/// is moved only when it fired early or the deadline came closer, not per request.
#[derive(Debug)]
struct HeaderWait {
    deadline: Arc<HeaderDeadline>,
    sleep: Option<Pin<Box<Sleep>>>,
    sleep_at: u64,
}

impl HeaderWait {
    /// `Ready` once the armed deadline has passed; a wake-up at it registered otherwise.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let Some(at) = self.deadline.get() else {
                return Poll::Pending;
            };
            // The common case costs no clock read: a wake-up not yet due, at or before the
            // deadline, is already registered; polling it keeps this task's waker.
            if let Some(s) = &mut self.sleep {
                if !s.is_elapsed() && self.sleep_at <= at {
                    return s.as_mut().poll(cx);
                }
            }
            let now = now_ms();
            if now >= at {
                return Poll::Ready(());
            }
            let when = Instant::now() + Duration::from_millis(at - now);
            let sleep = match &mut self.sleep {
                Some(s) => {
                    if s.is_elapsed() || at < self.sleep_at {
                        s.as_mut().reset(when);
                        self.sleep_at = at;
                    }
                    s
                }
                None => {
                    self.sleep_at = at;
                    self.sleep.insert(Box::pin(tokio::time::sleep_until(when)))
                }
            };
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

/// How long a client told GOAWAY at the header deadline has to close before it is closed.
pub const GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// A stream whose writes (and, when set, reads) fail once pending past their deadline, and
/// whose reads fail once a request header is not complete by its [`HeaderDeadline`].
#[derive(Debug)]
pub struct Stalled<T> {
    inner: T,
    read: Option<Stall>,
    write: Stall,
    header: Option<HeaderWait>,
    /// Set (instead of failing the read) the first time the header deadline passes, for a
    /// server that closes gracefully (h2's GOAWAY); a later expiry fails the read.
    graceful: Option<Arc<AtomicBool>>,
}

impl<T> Stalled<T> {
    /// `inner` with a write deadline and an optional read deadline.
    pub fn new(inner: T, read: Option<Duration>, write: Duration) -> Stalled<T> {
        Stalled {
            inner,
            read: read.map(|d| Stall::new(d, "a read")),
            write: Stall::new(write, "a write to the client"),
            header: None,
            graceful: None,
        }
    }

    /// The first expiry of the header deadline sets `asked`, re-arms the deadline
    /// [`GOAWAY_GRACE`] ahead and leaves the read pending (the server, which polls this read,
    /// then closes gracefully); only a later expiry fails it.
    pub fn with_graceful_expiry(mut self, asked: Arc<AtomicBool>) -> Stalled<T> {
        self.graceful = Some(asked);
        self
    }

    /// Bounds reads by `deadline` while it is armed (a read that waits past it fails).
    pub fn with_header_deadline(mut self, deadline: Arc<HeaderDeadline>) -> Stalled<T> {
        self.header = Some(HeaderWait {
            deadline,
            sleep: None,
            sleep_at: 0,
        });
        self
    }

    /// The wrapped stream.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Stalled<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let (true, Some(header)) = (poll.is_pending(), &mut this.header) {
            if header.poll_expired(cx).is_ready() {
                if let Some(asked) = &this.graceful {
                    if !asked.swap(true, Ordering::Relaxed) {
                        // The server sees `asked` in this same poll and says GOAWAY; a client
                        // that does not close within the grace is closed.
                        header.deadline.arm(GOAWAY_GRACE);
                        let _ = header.poll_expired(cx);
                        return Poll::Pending;
                    }
                }
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request header not complete within proxy.http.header_read_timeout",
                )));
            }
        }
        match &mut this.read {
            Some(stall) => stall.guard(cx, poll),
            None => poll,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stalled<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.write.guard(cx, poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_flush(cx);
        this.write.guard(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.write.guard(cx, poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A write the peer never reads fails after the write limit; reads wait unbounded
    /// unless a read limit is set; progress keeps a slow but moving stream alive.
    #[tokio::test]
    async fn http_h1_stall_ends_a_stuck_write_and_spares_a_moving_one() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut s = Stalled::new(a, None, Duration::from_millis(300));
        let started = std::time::Instant::now();
        let e = s.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert!(started.elapsed() >= Duration::from_millis(250));

        let (a, mut b2) = tokio::io::duplex(64);
        let mut s = Stalled::new(a, Some(Duration::from_millis(300)), Duration::from_secs(60));
        // A reader draining 64 bytes every 100 ms: a 1 KiB write takes 1.6 s, always moving.
        let drain = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = [0u8; 64];
            while got < 1024 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                got += b2.read(&mut buf).await.unwrap();
            }
            b2
        });
        s.write_all(&[1u8; 1024]).await.unwrap();
        let _b2 = drain.await.unwrap();
        // Nothing to read for longer than the read limit: the read fails.
        let mut one = [0u8; 1];
        let e = s.read(&mut one).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        b.shutdown().await.unwrap();
    }

    /// While the header deadline is armed a read waiting past it fails; disarmed, reads wait;
    /// a deadline brought closer is kept even with a later wake-up registered.
    #[tokio::test]
    async fn http_h1_header_deadline_bounds_waiting_reads_only_while_armed() {
        let deadline = Arc::new(HeaderDeadline::default());
        let (a, mut b) = tokio::io::duplex(64);
        let mut s =
            Stalled::new(a, None, Duration::from_secs(60)).with_header_deadline(deadline.clone());
        deadline.arm(Duration::from_secs(30));
        let mut one = [0u8; 1];
        let quick = tokio::time::timeout(Duration::from_millis(100), s.read(&mut one)).await;
        assert!(quick.is_err(), "armed 30 s away: still waiting");
        // Brought closer (a response ended; the keep-alive limit is shorter).
        deadline.arm(Duration::from_millis(200));
        let started = std::time::Instant::now();
        let e = s.read(&mut one).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
        // Disarmed (a header arrived): a read waits past it, and data is read.
        deadline.disarm();
        let late = async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            b.write_all(b"x").await.unwrap();
        };
        let (got, ()) = tokio::join!(s.read(&mut one), late);
        assert_eq!(got.unwrap(), 1);
    }
}
