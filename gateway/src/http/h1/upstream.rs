//! Connections to instances for the HTTP/1.1 path. A client connection keeps the instance
//! connection of its last request bound to it ([`Binding`]): the next request that the
//! balancer sends to the same instance takes it without a lookup or a system call, and the
//! connection it made is run by its own task. A bound connection the client connection no
//! longer needs (another instance was picked, or the client went) goes to the process-wide
//! [`Pool`], where other client connections find it.

use super::body::ReqBody;
use crate::upstream::health::now_ms;
use hyper::client::conn::http1::SendRequest;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::Context;
use std::time::Duration;

/// The sending half of an instance connection.
pub type Sender = SendRequest<ReqBody>;

/// The reading and writing half of an instance connection: a future some task must run.
pub type Driver = Pin<Box<dyn Future<Output = ()> + Send>>;

/// An instance connection's sending half and the id that pairs it with its driver.
#[derive(Debug)]
pub struct Kept {
    /// The sending half.
    pub sender: Sender,
    /// Unique in the process.
    pub id: u64,
}

/// Why no connection to an instance was made.
#[derive(Debug)]
pub enum ConnectError {
    /// Not within `timeouts.connect`.
    TimedOut,
    /// Refused, unreachable, or the HTTP/1.1 handshake failed.
    Failed(std::io::Error),
}

/// Opens an HTTP/1.1 connection to `addr` within `timeout`; its driver is the caller's to run.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<(Kept, Driver), ConnectError> {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let tcp = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Err(_) => return Err(ConnectError::TimedOut),
        Ok(Err(e)) => return Err(ConnectError::Failed(e)),
        Ok(Ok(tcp)) => tcp,
    };
    let _ = tcp.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .map_err(|e| ConnectError::Failed(std::io::Error::other(e)))?;
    let driver = Box::pin(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(instance = %addr, "instance connection ended: {e}");
        }
    });
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    Ok((Kept { sender, id }, driver))
}

/// Runs `driver` in a task of its own (dropped, closing its connection, outside a runtime).
fn spawn(driver: Driver) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(driver);
    }
}

/// The instance connection bound to one client connection.
#[derive(Debug)]
struct Bound {
    addr: SocketAddr,
    kept: Kept,
}

/// A client connection's instance connections: the one bound to it, and the driver its own
/// task runs beside hyper's server (no task switch between the client's request and the
/// instance's answer). A connection leaving for the pool takes its driver into a task of its
/// own first.
#[derive(Default)]
pub struct Binding {
    bound: Option<Bound>,
    driver: Option<(u64, Driver)>,
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binding")
            .field("bound", &self.bound)
            .field("driver", &self.driver.as_ref().map(|(id, _)| id))
            .finish()
    }
}

impl Binding {
    /// The bound connection, if it goes to `addr`; one to another instance goes to `pool`.
    pub fn take(&mut self, addr: SocketAddr, pool: &Pool) -> Option<Kept> {
        match self.bound.take() {
            Some(b) if b.addr == addr => Some(b.kept),
            Some(b) => {
                self.retire(b, pool);
                None
            }
            None => None,
        }
    }

    /// Runs the driver of a new connection `id` in this client connection's task, unless it
    /// runs one already.
    pub fn adopt(&mut self, id: u64, driver: Driver) {
        match &self.driver {
            None => self.driver = Some((id, driver)),
            Some(_) => spawn(driver),
        }
    }

    /// Binds `kept` (to `addr`) for the next request; the one bound before goes to `pool`.
    pub fn bind(&mut self, addr: SocketAddr, kept: Kept, pool: &Pool) {
        if let Some(old) = self.bound.replace(Bound { addr, kept }) {
            self.retire(old, pool);
        }
    }

    /// The client connection ended: its connections serve others.
    pub fn release(&mut self, pool: &Pool) {
        if let Some((_, driver)) = self.driver.take() {
            spawn(driver);
        }
        if let Some(b) = self.bound.take() {
            pool.put(b.addr, b.kept);
        }
    }

    /// Runs the adopted driver; forgets it once its connection has ended.
    pub fn poll_driver(&mut self, cx: &mut Context<'_>) {
        if let Some((_, d)) = &mut self.driver {
            if d.as_mut().poll(cx).is_ready() {
                self.driver = None;
            }
        }
    }

    fn retire(&mut self, b: Bound, pool: &Pool) {
        if self.driver.as_ref().is_some_and(|(id, _)| *id == b.kept.id) {
            if let Some((_, driver)) = self.driver.take() {
                spawn(driver);
            }
        }
        pool.put(b.addr, b.kept);
    }
}

/// Idle instance connections, by instance address, each with when it went idle.
#[derive(Debug)]
pub struct Pool {
    idle: Mutex<Idle>,
    cap: usize,
    idle_ms: u64,
}

#[derive(Debug, Default)]
struct Idle {
    by_addr: HashMap<SocketAddr, Vec<(Kept, u64)>>,
    count: usize,
}

impl Idle {
    /// Drops the closed and expired connections of `addr`'s list (all lists with `None`).
    fn sweep(&mut self, addr: Option<SocketAddr>, now: u64, idle_ms: u64) {
        let live = |(k, since): &(Kept, u64)| {
            !k.sender.is_closed() && now.saturating_sub(*since) < idle_ms
        };
        let mut dropped = 0;
        match addr {
            Some(a) => {
                if let Some(list) = self.by_addr.get_mut(&a) {
                    let before = list.len();
                    list.retain(live);
                    dropped += before - list.len();
                    if list.is_empty() {
                        self.by_addr.remove(&a);
                    }
                }
            }
            None => {
                for list in self.by_addr.values_mut() {
                    let before = list.len();
                    list.retain(live);
                    dropped += before - list.len();
                }
                self.by_addr.retain(|_, l| !l.is_empty());
            }
        }
        self.count -= dropped;
    }
}

impl Pool {
    /// A pool of at most `cap` connections, each closed after `idle` unused.
    pub fn new(cap: usize, idle: Duration) -> Pool {
        Pool {
            idle: Mutex::default(),
            cap,
            idle_ms: idle.as_millis() as u64,
        }
    }

    /// An idle connection to `addr` ready for a request, if one is kept; closed and expired
    /// ones of `addr` are dropped on the way.
    pub fn take(&self, addr: SocketAddr) -> Option<Kept> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.sweep(Some(addr), now_ms(), self.idle_ms);
        let list = idle.by_addr.get_mut(&addr)?;
        let i = list.iter().rposition(|(k, _)| k.sender.is_ready())?;
        let (kept, _) = list.swap_remove(i);
        if list.is_empty() {
            idle.by_addr.remove(&addr);
        }
        idle.count -= 1;
        Some(kept)
    }

    /// Keeps `kept` (its driver running in a task of its own) for later requests to `addr`,
    /// unless it is closed or the pool is full of live connections.
    pub fn put(&self, addr: SocketAddr, kept: Kept) {
        if kept.sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_ms();
        idle.sweep(Some(addr), now, self.idle_ms);
        if idle.count >= self.cap {
            idle.sweep(None, now, self.idle_ms);
            if idle.count >= self.cap {
                return;
            }
        }
        idle.by_addr.entry(addr).or_default().push((kept, now));
        idle.count += 1;
    }

    /// How many connections are kept.
    #[cfg(test)]
    pub fn kept(&self) -> usize {
        self.idle.lock().unwrap().count
    }
}
