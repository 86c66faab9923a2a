//! Record buffers shared by a thread's connections.
//!
//! A TLS connection needs room for a whole record (16 KiB and overhead) while it reads or
//! writes one, and none while it waits. Each thread keeps a few buffers; a [`Held`] queue
//! borrows one when it first holds bytes and gives it back once it is empty again (or, when
//! the connection waits with part of a record, keeps those bytes in an allocation of their
//! own size). So an idle connection holds no buffer, where rustls' buffered connection keeps
//! a 4 KiB one each (benches/M1-IDLE.md).

use std::cell::{Cell, RefCell};

/// Bytes in a pooled buffer: several whole records per read or write system call.
pub const BUF_LEN: usize = 64 * 1024;

/// Buffers a thread keeps for reuse; more are freed when given back.
const KEPT_PER_THREAD: usize = 8;

thread_local! {
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static LENT: Cell<isize> = const { Cell::new(0) };
}

/// Pooled buffers lent out on this thread and not given back on it: what the connections
/// this thread serves hold (exact on a current-thread runtime; tests read it).
pub fn lent_on_this_thread() -> isize {
    LENT.with(Cell::get)
}

fn take() -> Vec<u8> {
    LENT.with(|l| l.set(l.get() + 1));
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| vec![0; BUF_LEN])
}

fn give(buf: Vec<u8>) {
    LENT.with(|l| l.set(l.get() - 1));
    if buf.len() == BUF_LEN {
        POOL.with(|p| {
            let mut pool = p.borrow_mut();
            if pool.len() < KEPT_PER_THREAD {
                pool.push(buf);
            }
        });
    }
}

/// A byte queue (`buf[start..end]`) whose storage is a pooled buffer while it is in use.
#[derive(Debug, Default)]
pub(crate) struct Held {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// `buf` came from the pool (and goes back to it).
    pooled: bool,
}

impl Held {
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.end]
    }

    /// Drops `n` bytes from the front.
    pub fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Makes room for `want` more bytes without growing past a pooled buffer; returns whether
    /// there is that much room now.
    pub fn make_room(&mut self, want: usize) -> bool {
        if !self.pooled {
            let mut pooled = take();
            let len = self.len();
            if pooled.len() < len {
                pooled.resize(len, 0);
            }
            pooled[..len].copy_from_slice(self.bytes());
            self.buf = pooled;
            self.pooled = true;
            self.start = 0;
            self.end = len;
        }
        if self.buf.len() - self.end < want && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        self.buf.len() - self.end >= want
    }

    /// Room for at least `want` more bytes (growing the buffer if it must); fill it, then
    /// call [`Held::filled`].
    pub fn spare(&mut self, want: usize) -> &mut [u8] {
        if !self.make_room(want) {
            let grown = (self.end + want).max(self.buf.len() * 2);
            self.buf.resize(grown, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Counts `n` bytes written into [`Held::spare`].
    pub fn filled(&mut self, n: usize) {
        self.end += n;
        debug_assert!(self.end <= self.buf.len());
    }

    /// The connection waits: gives the pooled buffer back, keeping any bytes in an
    /// allocation of their own size.
    pub fn park(&mut self) {
        if !self.pooled {
            return;
        }
        let kept = match self.is_empty() {
            true => Vec::new(),
            false => self.bytes().to_vec(),
        };
        self.end = kept.len();
        self.start = 0;
        self.pooled = false;
        give(std::mem::replace(&mut self.buf, kept));
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.pooled {
            give(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_queue_borrows_a_buffer_only_while_in_use_and_keeps_waiting_bytes() {
        let before = lent_on_this_thread();
        let mut q = Held::default();
        q.spare(5)[..5].copy_from_slice(b"hello");
        q.filled(5);
        assert_eq!(lent_on_this_thread(), before + 1);
        q.consume(2);
        q.park();
        assert_eq!(lent_on_this_thread(), before, "parked: the buffer is back");
        assert_eq!(q.bytes(), b"llo", "and the waiting bytes are kept");
        q.spare(3)[..3].copy_from_slice(b"!!!");
        q.filled(3);
        assert_eq!(q.bytes(), b"llo!!!");
        q.consume(6);
        q.park();
        assert_eq!(lent_on_this_thread(), before);
        assert!(
            q.buf.is_empty(),
            "an empty parked queue holds no allocation"
        );
    }

    #[test]
    fn held_queue_grows_past_the_pool_size_when_one_message_needs_it() {
        let mut q = Held::default();
        let n = BUF_LEN + 10;
        q.spare(n)[..n].fill(7);
        q.filled(n);
        assert_eq!(q.len(), n);
        assert!(!q.make_room(BUF_LEN), "no room without growing");
        q.consume(n);
        drop(q); // a grown buffer is freed, not pooled
        POOL.with(|p| assert!(p.borrow().iter().all(|b| b.len() == BUF_LEN)));
    }
}
