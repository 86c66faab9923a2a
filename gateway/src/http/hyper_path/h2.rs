//! The h2 client connection's streams. hyper's h2 server runs each stream (its request's
//! handling and its response's body) in a task its executor spawns; ours, [`StreamExec`],
//! puts each under a deadline of the client's reading: a response body that has a frame ready
//! but waits for the client's flow-control window longer than `timeouts.write` ends the stream
//! (reset), freeing its instance connection, as a stalled write does on HTTP/1.1. A socket
//! the client stops reading altogether is the connection's write deadline
//! ([`super::stall::Stalled`]); this is the stream-level one that h2's flow control needs (a
//! client may keep its connection alive and read nothing on a stream).
//!
//! How the body and the task meet: while [`StreamExec`]'s task polls its stream, the stream's
//! [`ClientWait`] is in a thread-local slot ([`ClientWait::current`]), where a response body
//! made during that poll finds it.

use super::stall::Stall;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

thread_local! {
    static CURRENT: RefCell<Option<Arc<ClientWait>>> = const { RefCell::new(None) };
}

/// Whether one stream's response waits for the client: set by its body when it hands hyper a
/// frame, cleared when hyper asks for the next (hyper asks only once the client's window
/// has room for it).
#[derive(Debug, Default)]
pub struct ClientWait {
    waiting: AtomicBool,
    /// Frames handed over: a change is progress.
    frames: AtomicU32,
}

impl ClientWait {
    /// The wait of the stream being polled on this thread, if an h2 stream is.
    pub fn current() -> Option<Arc<ClientWait>> {
        CURRENT.with(|c| c.borrow().clone())
    }

    /// The body handed hyper a frame: from now on the stream waits for the client.
    pub fn handed(&self) {
        self.frames.fetch_add(1, Ordering::Relaxed);
        self.waiting.store(true, Ordering::Relaxed);
    }

    /// hyper asked for the next frame: the client took the last one.
    pub fn asked(&self) {
        self.waiting.store(false, Ordering::Relaxed);
    }
}

/// hyper's executor for the h2 server's streams: each in a tokio task, under its client's
/// reading deadline.
#[derive(Debug, Clone, Copy)]
pub struct StreamExec {
    /// `timeouts.write`.
    pub write: Duration,
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        tokio::spawn(Watched {
            stream,
            wait: Some(Arc::default()),
            stall: Stall::new(self.write, "the client's h2 window"),
            frames: 0,
        });
    }
}

pin_project_lite::pin_project! {
    /// One stream's task.
    struct Watched<F> {
        #[pin]
        stream: F,
        wait: Option<Arc<ClientWait>>,
        stall: Stall,
        frames: u32,
    }
}

impl<F: Future<Output = ()>> Future for Watched<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        // The wait goes into the slot for this poll and comes back after it (no count touched).
        let previous = CURRENT.with(|c| c.replace(this.wait.take()));
        let polled = this.stream.poll(cx);
        *this.wait = CURRENT.with(|c| c.replace(previous));
        if polled.is_ready() {
            return Poll::Ready(());
        }
        let Some(wait) = this.wait.as_ref() else {
            return Poll::Pending;
        };
        let frames = wait.frames.load(Ordering::Relaxed);
        if frames != *this.frames {
            *this.frames = frames;
            this.stall.progress();
        }
        if !wait.waiting.load(Ordering::Relaxed) {
            this.stall.progress(); // waiting on the instance (its own deadline) or done
            return Poll::Pending;
        }
        match this.stall.poll_waiting(cx) {
            Poll::Ready(e) => {
                tracing::debug!("h2 stream reset: {e}");
                Poll::Ready(()) // dropping the stream resets it and frees its instance
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
