//! [`ServerTls`]: rustls' unbuffered server connection driven over an async byte stream.

use crate::pool::Held;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, WriteTraffic};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Plaintext encrypted per record at most (TLS' maximum fragment).
const MAX_FRAGMENT: usize = 16 * 1024;

/// Room a record's header, content type, padding and tag may need beyond its plaintext.
const RECORD_OVERHEAD: usize = 64;

/// Unprocessed TLS bytes one connection may hold: a handshake message rustls accepts
/// (64 KiB) in records, and some. More is a peer that sends what no state takes.
const INCOMING_MAX: usize = 192 * 1024;

/// A server-side TLS stream: plaintext in [`AsyncRead`]/[`AsyncWrite`], TLS records on `IO`.
///
/// Made by [`crate::accept`]. Records are read and written through per-thread buffers
/// ([`crate::pool`]); between reads a connection keeps only the part of a record that has
/// arrived, and between writes only what the socket has not taken.
pub struct ServerTls<IO> {
    io: IO,
    conn: UnbufferedServerConnection,
    /// TLS bytes read from `io` and not yet processed.
    incoming: Held,
    /// TLS bytes made and not yet written to `io`.
    outgoing: Held,
    /// Decrypted bytes the reader has not taken yet (its buffer was smaller than a record,
    /// or a record arrived while writing).
    plaintext: Vec<u8>,
    plaintext_taken: usize,
    /// The peer sent close_notify: reads return end of stream.
    read_closed: bool,
    /// The peer's stream ended without close_notify.
    truncated: bool,
    /// We sent close_notify.
    write_closed: bool,
    /// A TLS error ended the session; every later call returns it.
    broken: Option<rustls::Error>,
    /// Encrypted bytes may wait for a flush up to this many (0: written at once).
    defer_up_to: usize,
    /// The reader waiting for bytes (woken when a write finds a record for it).
    reader: Option<Waker>,
}

impl<IO: std::fmt::Debug> std::fmt::Debug for ServerTls<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("io", &self.io)
            .field("incoming", &self.incoming.len())
            .field("outgoing", &self.outgoing.len())
            .field("read_closed", &self.read_closed)
            .field("write_closed", &self.write_closed)
            .finish_non_exhaustive()
    }
}

/// What the caller of [`ServerTls::step`] is after.
enum Want<'a, 'b> {
    Handshake,
    Read(&'a mut ReadBuf<'b>),
    Write(&'a [u8]),
    Close,
}

/// What one [`ServerTls::step`] came to.
#[derive(Debug, PartialEq)]
enum Step {
    /// Records were made or passed on; step again.
    Progress,
    /// Plaintext went to the reader.
    Delivered,
    /// Nothing more without bytes from the peer (also: the handshake is done and no record
    /// waits, when reading).
    NeedData,
    /// The handshake is far enough for application data to be sent.
    Writable,
    /// This many plaintext bytes were encrypted.
    Wrote(usize),
    /// close_notify is queued.
    CloseQueued,
    /// The peer sent close_notify.
    PeerClosed,
    /// Both sides sent close_notify.
    Closed,
}

fn io_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<IO: AsyncRead + AsyncWrite + Unpin> ServerTls<IO> {
    pub(crate) fn new(io: IO, conn: UnbufferedServerConnection) -> Self {
        ServerTls {
            io,
            conn,
            incoming: Held::default(),
            outgoing: Held::default(),
            plaintext: Vec::new(),
            plaintext_taken: 0,
            read_closed: false,
            truncated: false,
            write_closed: false,
            broken: None,
            defer_up_to: 0,
            reader: None,
        }
    }

    /// The byte stream and the TLS session (ALPN, version, cipher, resumption).
    pub fn get_ref(&self) -> (&IO, &UnbufferedServerConnection) {
        (&self.io, &self.conn)
    }

    /// Lets encrypted writes wait for a flush until `bytes` of records are waiting, so that
    /// a response's header and a small body leave in one system call.
    pub fn set_write_deferral(&mut self, bytes: usize) {
        self.defer_up_to = bytes;
    }

    /// Records made and not yet written to the byte stream.
    pub fn pending_output(&self) -> usize {
        self.outgoing.len()
    }

    /// Writes waiting records with `write` (e.g. a non-blocking `try_write`) until it takes
    /// none or fails: for a drop that cannot wait.
    pub fn write_pending_with(&mut self, mut write: impl FnMut(&IO, &[u8]) -> io::Result<usize>) {
        while !self.outgoing.is_empty() {
            match write(&self.io, self.outgoing.bytes()) {
                Ok(n) if n > 0 => self.outgoing.consume(n),
                _ => break,
            }
        }
        self.outgoing.park();
    }

    /// The peer's close_notify came: reads end (after what is buffered), and a reader
    /// waiting for records is woken to say so.
    fn peer_closed(&mut self) {
        self.read_closed = true;
        if let Some(reader) = self.reader.take() {
            reader.wake();
        }
    }

    /// Lets rustls process what has arrived, once, doing what it asks that needs no I/O.
    fn step(&mut self, want: &mut Want<'_, '_>) -> Result<Step, rustls::Error> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        let status = self.conn.process_tls_records(self.incoming.bytes_mut());
        let mut discard = status.discard;
        let step = match status.state {
            Err(e) => Err(e),
            Ok(ConnectionState::ReadTraffic(mut records)) => {
                let mut delivered = false;
                while let Some(record) = records.next_record() {
                    let record = record?;
                    discard += record.discard;
                    let payload = record.payload;
                    match want {
                        Want::Read(buf) if self.plaintext.is_empty() => {
                            let n = buf.remaining().min(payload.len());
                            buf.put_slice(&payload[..n]);
                            self.plaintext.extend_from_slice(&payload[n..]);
                            delivered = true;
                        }
                        _ => {
                            self.plaintext.extend_from_slice(payload);
                            if let Some(reader) = self.reader.take() {
                                reader.wake();
                            }
                        }
                    }
                    if !self.plaintext.is_empty() {
                        break;
                    }
                }
                Ok(match delivered {
                    true => Step::Delivered,
                    false => Step::Progress,
                })
            }
            Ok(ConnectionState::EncodeTlsData(mut record)) => {
                let mut want = RECORD_OVERHEAD;
                loop {
                    match record.encode(self.outgoing.spare(want)) {
                        Ok(n) => break self.outgoing.filled(n),
                        Err(EncodeError::InsufficientSize(s)) => want = s.required_size,
                        Err(EncodeError::AlreadyEncoded) => break,
                    }
                }
                Ok(Step::Progress)
            }
            Ok(ConnectionState::TransmitTlsData(sent)) => {
                // The records are ours to send (`outgoing`, in order): rustls may go on.
                sent.done();
                Ok(Step::Progress)
            }
            Ok(ConnectionState::BlockedHandshake) => Ok(Step::NeedData),
            Ok(ConnectionState::WriteTraffic(mut traffic)) => match want {
                Want::Handshake => Ok(Step::Writable),
                Want::Read(_) => Ok(Step::NeedData),
                Want::Write(data) => {
                    encrypt(&mut traffic, data, &mut self.outgoing).map(Step::Wrote)
                }
                Want::Close => {
                    close_notify(&mut traffic, &mut self.outgoing).map(|()| Step::CloseQueued)
                }
            },
            // Reported once, to whichever call saw it first (a write, too): remembered here,
            // so that the read side ends cleanly whoever that was.
            // (During a handshake the handshake fails on it instead.)
            Ok(ConnectionState::PeerClosed) => {
                self.peer_closed();
                Ok(Step::PeerClosed)
            }
            Ok(ConnectionState::Closed) => {
                self.peer_closed();
                Ok(Step::Closed)
            }
            // Early data is never enabled (`max_early_data_size` stays 0), so this state
            // means a session we did not configure.
            Ok(ConnectionState::ReadEarlyData(_)) => {
                Err(rustls::Error::General("early data is not accepted".into()))
            }
            Ok(other) => Err(rustls::Error::General(format!(
                "unexpected TLS state {other:?}"
            ))),
        };
        self.incoming.consume(discard);
        if let Err(e) = &step {
            self.broken = Some(e.clone());
        }
        step
    }

    /// After a TLS error: queues the alert rustls made for it, starts sending it, and
    /// returns the error.
    fn fail(&mut self, cx: &mut Context<'_>, e: rustls::Error) -> io::Error {
        self.broken = Some(e.clone());
        for _ in 0..4 {
            match self.conn.process_tls_records(&mut []).state {
                Ok(ConnectionState::EncodeTlsData(mut alert)) => {
                    if let Ok(n) = alert.encode(self.outgoing.spare(RECORD_OVERHEAD)) {
                        self.outgoing.filled(n);
                    }
                }
                Ok(ConnectionState::TransmitTlsData(sent)) => sent.done(),
                _ => break,
            }
        }
        let _ = self.poll_write_out(cx);
        io_error(e)
    }

    /// Writes `outgoing` until it is empty (then gives its buffer back) or `io` is full.
    pub(crate) fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.outgoing.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, self.outgoing.bytes()))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.outgoing.consume(n);
        }
        self.outgoing.park();
        Poll::Ready(Ok(()))
    }

    /// Reads from `io` into `incoming`: `Ok(0)` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.incoming.len() >= INCOMING_MAX {
            let e = rustls::Error::General("TLS input larger than any record or message".into());
            return Poll::Ready(Err(self.fail(cx, e)));
        }
        let mut buf = ReadBuf::new(self.incoming.spare(MAX_FRAGMENT + RECORD_OVERHEAD));
        match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len();
                self.incoming.filled(n);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                self.incoming.park();
                Poll::Pending
            }
        }
    }

    /// Drives the handshake until application data may flow both ways and our records are
    /// written.
    pub(crate) fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let step = match self.step(&mut Want::Handshake) {
                Ok(step) => step,
                Err(e) => return Poll::Ready(Err(self.fail(cx, e))),
            };
            match step {
                Step::Progress | Step::Delivered => continue,
                // A peer may finish its side and close in one flight (a CA's validation
                // does): the handshake is done; the close is the first thing read after it.
                Step::PeerClosed | Step::Closed if !self.conn.is_handshaking() => {
                    self.read_closed = true;
                    let _ = ready!(self.poll_write_out(cx));
                    self.incoming.park();
                    return Poll::Ready(Ok(()));
                }
                Step::Writable if !self.conn.is_handshaking() => {
                    ready!(self.poll_write_out(cx))?;
                    if self.incoming.is_empty() {
                        self.incoming.park();
                    }
                    return Poll::Ready(Ok(()));
                }
                Step::PeerClosed | Step::Closed => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed the connection during the TLS handshake",
                    )))
                }
                _ => {
                    if let Poll::Ready(Err(e)) = self.poll_write_out(cx) {
                        return Poll::Ready(Err(e));
                    }
                    if ready!(self.poll_fill(cx))? == 0 {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "tls handshake eof",
                        )));
                    }
                }
            }
        }
    }

    fn take_plaintext(&mut self, buf: &mut ReadBuf<'_>) {
        let waiting = &self.plaintext[self.plaintext_taken..];
        let n = buf.remaining().min(waiting.len());
        buf.put_slice(&waiting[..n]);
        self.plaintext_taken += n;
        if self.plaintext_taken == self.plaintext.len() {
            self.plaintext = Vec::new();
            self.plaintext_taken = 0;
        }
    }

    fn truncation() -> io::Error {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "peer closed connection without sending TLS close_notify",
        )
    }
}

/// Encrypts as much of `data` as fits in `out` without growing it (at least one record).
fn encrypt(
    traffic: &mut WriteTraffic<'_, ServerConnectionData>,
    data: &[u8],
    out: &mut Held,
) -> Result<usize, rustls::Error> {
    let mut taken = 0;
    while taken < data.len() {
        let chunk = &data[taken..data.len().min(taken + MAX_FRAGMENT)];
        let mut want = chunk.len() + RECORD_OVERHEAD;
        if !out.make_room(want) && taken > 0 {
            break;
        }
        loop {
            match traffic.encrypt(chunk, out.spare(want)) {
                Ok(n) => break out.filled(n),
                Err(EncryptError::InsufficientSize(s)) => want = s.required_size,
                Err(EncryptError::EncryptExhausted) => return Err(rustls::Error::EncryptError),
            }
        }
        taken += chunk.len();
    }
    Ok(taken)
}

fn close_notify(
    traffic: &mut WriteTraffic<'_, ServerConnectionData>,
    out: &mut Held,
) -> Result<(), rustls::Error> {
    let mut want = RECORD_OVERHEAD;
    loop {
        match traffic.queue_close_notify(out.spare(want)) {
            Ok(n) => {
                out.filled(n);
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(s)) => want = s.required_size,
            Err(EncryptError::EncryptExhausted) => return Err(rustls::Error::EncryptError),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for ServerTls<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.plaintext.is_empty() {
            this.take_plaintext(buf);
            return Poll::Ready(Ok(()));
        }
        if this.read_closed {
            return Poll::Ready(Ok(()));
        }
        if this.truncated {
            return Poll::Ready(Err(Self::truncation()));
        }
        let before = buf.filled().len();
        loop {
            let step = match this.step(&mut Want::Read(buf)) {
                Ok(step) => step,
                Err(e) => return Poll::Ready(Err(this.fail(cx, e))),
            };
            match step {
                Step::Progress => continue,
                // More records may be complete already: take them while there is room.
                Step::Delivered if buf.remaining() > 0 && this.plaintext.is_empty() => continue,
                Step::Delivered => break,
                Step::PeerClosed | Step::Closed => {
                    this.read_closed = true;
                    break;
                }
                _ if buf.filled().len() > before => break,
                _ => {
                    if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
                        return Poll::Ready(Err(e));
                    }
                    match this.poll_fill(cx) {
                        Poll::Ready(Ok(0)) => {
                            this.truncated = true;
                            return Poll::Ready(Err(Self::truncation()));
                        }
                        Poll::Ready(Ok(_)) => continue,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {
                            this.reader = Some(cx.waker().clone());
                            return Poll::Pending;
                        }
                    }
                }
            }
        }
        if this.incoming.is_empty() {
            this.incoming.park();
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ServerTls<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.write_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "TLS stream already sent close_notify",
            )));
        }
        let threshold = this.defer_up_to.max(1);
        if this.outgoing.len() >= threshold {
            ready!(this.poll_write_out(cx))?;
        }
        let n = loop {
            match this.step(&mut Want::Write(data)) {
                Ok(Step::Wrote(n)) => break n,
                Ok(Step::Closed) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "TLS session closed",
                    )))
                }
                Ok(Step::NeedData) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        "TLS handshake not complete",
                    )))
                }
                Ok(_) => continue,
                Err(e) => return Poll::Ready(Err(this.fail(cx, e))),
            }
        };
        if this.outgoing.len() >= threshold {
            if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed && this.broken.is_none() {
            loop {
                match this.step(&mut Want::Close) {
                    Ok(Step::CloseQueued) | Ok(Step::Closed) => break,
                    Ok(Step::NeedData) => break, // no session to close yet
                    Ok(_) => continue,
                    Err(e) => return Poll::Ready(Err(this.fail(cx, e))),
                }
            }
            this.write_closed = true;
        }
        ready!(this.poll_write_out(cx))?;
        match ready!(Pin::new(&mut this.io).poll_shutdown(cx)) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }
}
