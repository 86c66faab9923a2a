//! The copy through user space: one direction reads into the thread's scratch buffer and writes
//! straight from it; only bytes the writer refused are kept, in a buffer freed once the reader
//! goes idle. Any `AsyncRead`/`AsyncWrite` pair (TLS streams, the replayed hello) relays this
//! way; plain TCP on both sides can splice instead (`super::splice`).

use super::{End, Meter, Pair, RelayError};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The per-thread read buffer. 16 KiB is one full TLS record, so a terminated stream moves a
/// whole record per read.
pub const BUFFER_SIZE: usize = 16 * 1024;

thread_local! {
    static SCRATCH: std::cell::RefCell<Box<[u8]>> = std::cell::RefCell::new(vec![0; BUFFER_SIZE].into_boxed_slice());
}

/// Both directions between two streams of any kind.
pub(super) struct BufferedPair<'a, C: ?Sized, U: ?Sized> {
    pub client: &'a mut C,
    pub upstream: &'a mut U,
    pub up: Half,
    pub down: Half,
}

impl<C, U> Pair for BufferedPair<'_, C, U>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    fn poll_up(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RelayError>> {
        self.up
            .poll_copy(cx, &mut *self.client, &mut *self.upstream)
    }
    fn poll_down(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), RelayError>> {
        self.down
            .poll_copy(cx, &mut *self.upstream, &mut *self.client)
    }
    fn meters(&self) -> [&Meter; 2] {
        [&self.up.meter, &self.down.meter]
    }
    fn meters_mut(&mut self) -> [&mut Meter; 2] {
        [&mut self.up.meter, &mut self.down.meter]
    }
}

/// One direction: read into the thread's scratch buffer, write it out at once, keep only what
/// the writer refused; on EOF flush and shut the writer.
pub(super) struct Half {
    pub meter: Meter,
    /// Bytes read but not yet written (`pending[pos..]`); empty and unallocated when idle.
    pending: Vec<u8>,
    pos: usize,
    /// The reader has ended (a read of 0 bytes).
    pub eof: bool,
    need_flush: bool,
}

impl Half {
    pub fn new(from: End, to: End) -> Half {
        Half {
            meter: Meter::new(from, to),
            pending: Vec::new(),
            pos: 0,
            eof: false,
            need_flush: false,
        }
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<Result<(), RelayError>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        while !ready!(self.poll_drain(cx, writer))? {
            ready!(self.poll_read_and_write(cx, reader, writer))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Writes what the writer refused earlier; at EOF also flushes and shuts the writer.
    /// Ready(Ok(true)) means this direction is done.
    pub fn poll_drain<W: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut W,
    ) -> Poll<Result<bool, RelayError>> {
        while self.pos < self.pending.len() {
            let n = ready!(self.poll_write(cx, writer, None))?;
            self.pos += n;
        }
        self.pending.clear();
        self.pos = 0;
        if !self.eof {
            return Poll::Ready(Ok(false));
        }
        ready!(self.poll_flush(cx, writer))?;
        // A shutdown that fails finds the peer gone: it reset (ENOTCONN, EPIPE), and a reset
        // flushes what it had sent (RFC 9293 §3.10.7.4), so the other direction, which reads
        // from that peer, has nothing left to pass on: the relay ends here (nginx does the
        // same) instead of forwarding the dead peer's last bytes and reading its reset.
        if let Err(e) = ready!(Pin::new(&mut *writer).poll_shutdown(cx)) {
            return Poll::Ready(Err(RelayError::Io(self.meter.to, e)));
        }
        self.meter.done = true;
        self.pending = Vec::new();
        Poll::Ready(Ok(true))
    }

    /// One read into the thread's scratch buffer, written out at once: Ready(Ok(bytes read))
    /// (0 at EOF) means "drain and loop again".
    pub fn poll_read_and_write<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
    ) -> Poll<Result<usize, RelayError>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut buf) => self.read_and_write(cx, reader, writer, &mut buf),
            // Unreachable by construction (polls do not nest); stay correct regardless.
            Err(_) => self.read_and_write(cx, reader, writer, &mut vec![0; BUFFER_SIZE]),
        })
    }

    /// One read; the bytes are written at once and whatever is not taken is kept in `pending`.
    fn read_and_write<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        buf: &mut [u8],
    ) -> Poll<Result<usize, RelayError>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        let mut rb = ReadBuf::new(buf);
        match Pin::new(&mut *reader).poll_read(cx, &mut rb) {
            Poll::Pending => {
                // Idle: give back an outgrown pending buffer, push out what the writer holds.
                self.pending = Vec::new();
                if self.need_flush {
                    ready!(self.poll_flush(cx, writer))?;
                }
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(RelayError::Io(self.meter.from, e))),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    self.eof = true;
                    return Poll::Ready(Ok(0));
                }
                self.meter.progress = true;
                let mut off = 0;
                while off < n {
                    match self.poll_write(cx, writer, Some(&buf[off..n])) {
                        Poll::Ready(Ok(w)) => off += w,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {
                            self.pending.extend_from_slice(&buf[off..n]);
                            return Poll::Pending;
                        }
                    }
                }
                Poll::Ready(Ok(n))
            }
        }
    }

    /// Writes `bytes` (or `pending[pos..]` when `None`); returns how much was taken.
    fn poll_write<W: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut W,
        bytes: Option<&[u8]>,
    ) -> Poll<Result<usize, RelayError>> {
        let bytes = bytes.unwrap_or(&self.pending[self.pos..]);
        match Pin::new(&mut *writer).poll_write(cx, bytes) {
            Poll::Pending => {
                self.meter.stalled();
                Poll::Pending
            }
            Poll::Ready(Ok(0)) => {
                let e = io::Error::new(io::ErrorKind::WriteZero, "wrote 0 bytes");
                Poll::Ready(Err(RelayError::Io(self.meter.to, e)))
            }
            Poll::Ready(Ok(n)) => {
                self.meter.wrote(n);
                self.need_flush = true;
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(RelayError::Io(self.meter.to, e))),
        }
    }

    fn poll_flush<W: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        cx: &mut Context<'_>,
        writer: &mut W,
    ) -> Poll<Result<(), RelayError>> {
        match Pin::new(&mut *writer).poll_flush(cx) {
            Poll::Pending => {
                self.meter.stalled();
                Poll::Pending
            }
            Poll::Ready(Ok(())) => {
                self.need_flush = false;
                self.meter.stalled_since = None;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(RelayError::Io(self.meter.to, e))),
        }
    }
}
