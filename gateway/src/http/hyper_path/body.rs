//! The bodies of the hyper path: a request body on its way to an instance (counted against
//! `max_request_body`, bounded by `timeouts.idle` without progress), and a response body on
//! its way to the client (an instance's, bounded by `upstream_read_timeout` without progress,
//! or a short answer of ours) carrying the request's [`Finish`]: its statistics, access-log
//! line and balancer load end with the body. On h2 a response body also tells its stream's
//! task when it waits for the client's window ([`ClientWait`]).

use super::h2::ClientWait;
use super::stall::Stall;
use super::Conn;
use crate::upstream::balancer::Load;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

/// The error of either body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a body under a progress deadline failed.
struct Failed {
    error: BoxError,
    /// The deadline passed (else the body itself failed).
    stalled: bool,
}

/// Polls `body` under `stall`: a frame is progress; waiting past the deadline fails.
fn poll_under(
    body: &mut Incoming,
    stall: &mut Option<Stall>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, Failed>>> {
    match Pin::new(body).poll_frame(cx) {
        Poll::Ready(Some(Ok(frame))) => {
            if let Some(s) = stall {
                s.progress();
            }
            Poll::Ready(Some(Ok(frame)))
        }
        Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Failed {
            error: e.into(),
            stalled: false,
        }))),
        Poll::Ready(None) => Poll::Ready(None),
        Poll::Pending => match stall {
            Some(s) => s.poll_waiting(cx).map(|e| {
                Some(Err(Failed {
                    error: e.into(),
                    stalled: true,
                }))
            }),
            None => Poll::Pending,
        },
    }
}

/// A client's request body as sent to an instance.
#[derive(Debug)]
pub struct ReqBody {
    inner: Option<Incoming>,
    seen: u64,
    limit: u64,
    /// Set once the body passed the limit (none for an empty body).
    over: Option<Arc<AtomicBool>>,
    stall: Option<Stall>,
}

impl ReqBody {
    /// No body.
    pub fn empty() -> ReqBody {
        ReqBody {
            inner: None,
            seen: 0,
            limit: 0,
            over: None,
            stall: None,
        }
    }

    /// `inner`, failing past `limit` bytes (0: none; `over` is then set) or after `idle`
    /// without a byte from the client.
    pub fn new(inner: Incoming, limit: u64, over: Arc<AtomicBool>, idle: Duration) -> ReqBody {
        ReqBody {
            inner: Some(inner),
            seen: 0,
            limit,
            over: Some(over),
            stall: Some(Stall::new(idle, "the request body")),
        }
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(inner) = &mut this.inner else {
            return Poll::Ready(None);
        };
        let frame = match ready!(poll_under(inner, &mut this.stall, cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Poll::Ready(Some(Err(e.error))),
            None => return Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref() {
            this.seen += data.len() as u64;
            if this.limit > 0 && this.seen > this.limit {
                if let Some(over) = &this.over {
                    over.store(true, Ordering::Relaxed);
                }
                return Poll::Ready(Some(Err("request body over the limit".into())));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or(SizeHint::with_exact(0), Body::size_hint)
    }
}

/// What a request leaves when its response ends: per-app statistics, the access-log line,
/// the load unit on its instance.
pub struct Finish {
    pub(super) conn: Arc<Conn>,
    started: Instant,
    pub(super) status: u16,
    /// The instance that answered (its index in the app's list), and how many were tried.
    pub(super) instance: Option<usize>,
    pub(super) attempts: usize,
    pub(super) load: Option<Load>,
    /// The stream's place on a shared h2 instance connection (`g` names), given back at the end.
    pub(super) stream: Option<super::upstream::StreamSlot>,
    pub(super) error: &'static str,
    /// Whether this request counts in the statistics here (not when another path served it
    /// and counted it).
    pub(super) counted: bool,
    /// Whether the connection's header deadline is armed again at the end (not after an
    /// upgrade: no header comes on a tunnel).
    pub(super) rearm: bool,
    /// The method, path and version for the access log, when it is on.
    log: Option<(http::Method, String, http::Version)>,
}

impl Finish {
    /// The finish of `req` on `conn`, started at `started`: one more open request on `conn`
    /// until it drops.
    pub fn new<B>(conn: Arc<Conn>, req: &http::Request<B>, started: Instant, log: bool) -> Finish {
        conn.open.fetch_add(1, Ordering::Relaxed);
        let log = log.then(|| {
            let path = if conn.info.channel {
                "(sealed)".to_owned()
            } else {
                req.uri().path().to_owned()
            };
            (req.method().clone(), path, req.version())
        });
        Finish {
            conn,
            started,
            status: 0,
            instance: None,
            attempts: 0,
            load: None,
            stream: None,
            error: "-",
            counted: true,
            rearm: true,
            log,
        }
    }

    /// The instance broke off the response after it began: counted in its passive health.
    fn broke(&mut self, why: &'static str) {
        self.error = why;
        if let Some(i) = self.instance {
            super::instance_failed(&self.conn, i, "broke off mid-response");
        }
        self.load = None;
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        let took = self.started.elapsed();
        let info = &self.conn.info;
        // The last open request ended (on h2 others may still be open; on HTTP/1.1 there is
        // one at a time): the connection waits for a header again.
        let last = self.conn.open.fetch_sub(1, Ordering::Relaxed) == 1;
        if let (true, true, Some(limit)) = (last, self.rearm, info.rearm_after_response) {
            info.header_deadline.arm(limit); // until the next request's header
        }
        let route = &info.route;
        if self.counted {
            route.app.http_stats.record(self.status, took);
        }
        if let Some((method, path, version)) = &self.log {
            let instance = self
                .instance
                .map(|i| route.app.instances[i].addr.to_string());
            tracing::info!(
                target: "gatehouse::access",
                app = %route.app.spec.id,
                client = %self.conn.client.ip(),
                method = %method,
                path = %path,
                version = ?version,
                status = self.status,
                ms = took.as_millis() as u64,
                instance = %instance.as_deref().unwrap_or("-"),
                attempts = self.attempts,
                error = %self.error,
            );
        }
    }
}

/// A response body on its way to the client.
pub struct RespBody {
    upstream: Option<Incoming>,
    fixed: Option<Bytes>,
    stall: Option<Stall>,
    finish: Option<Finish>,
    /// The h2 stream's wait for the client (none on HTTP/1.1).
    wait: Option<Arc<ClientWait>>,
}

impl RespBody {
    /// A body of ours.
    pub fn fixed(body: Bytes, finish: Option<Finish>) -> RespBody {
        RespBody {
            upstream: None,
            fixed: (!body.is_empty()).then_some(body),
            stall: None,
            finish,
            wait: None,
        }
    }

    /// An instance's body, failing after `read_timeout` without a byte from it (on h2, made
    /// in its stream's task: it joins that stream's [`ClientWait`]).
    pub fn upstream(body: Incoming, read_timeout: Duration, finish: Finish) -> RespBody {
        RespBody {
            upstream: Some(body),
            fixed: None,
            stall: Some(Stall::new(read_timeout, "the instance's response")),
            finish: Some(finish),
            wait: ClientWait::current(),
        }
    }

    fn broke(&mut self, why: &'static str) {
        self.upstream = None;
        if let Some(f) = &mut self.finish {
            f.broke(why);
        }
    }
}

impl Body for RespBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(b) = this.fixed.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        let Some(up) = &mut this.upstream else {
            return Poll::Ready(None);
        };
        if let Some(w) = &this.wait {
            w.asked();
        }
        match ready!(poll_under(up, &mut this.stall, cx)) {
            Some(Ok(frame)) => {
                if let (Some(w), true) = (&this.wait, frame.is_data()) {
                    w.handed();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                this.broke(if e.stalled { "timeout" } else { "upstream" });
                Poll::Ready(Some(Err(e.error)))
            }
            None => {
                this.upstream = None;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.fixed.is_none() && self.upstream.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.fixed, &self.upstream) {
            (Some(b), _) => SizeHint::with_exact(b.len() as u64),
            (None, Some(up)) => up.size_hint(),
            (None, None) => SizeHint::with_exact(0),
        }
    }
}
