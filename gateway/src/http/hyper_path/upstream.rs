//! Connections to instances for the hyper path. HTTP/1.1 (every app but `g` names): a client
//! connection keeps the instance
//! connection of its last request bound to it ([`Binding`]): the next request that the
//! balancer sends to the same instance takes it without a lookup or a system call, and the
//! connection it made is run by its own task. A bound connection the client connection no
//! longer needs (another instance was picked, or the client went) goes to the process-wide
//! [`Pool`], where other client connections find it. h2 with prior knowledge (`g` names, gRPC):
//! the streams of every client multiplexed on the instance's connections, a connection opened
//! only when every other one carries [`STREAMS_PER_CONN`] streams ([`H2Conns`]).

use super::body::ReqBody;
use crate::upstream::health::now_ms;
use hyper::client::conn::http1::SendRequest;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
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
pub(super) fn spawn(driver: Driver) {
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

/// Idle instance connections, by instance address, each with when it went idle. Expired
/// ones are dropped (closing them) at the next lookup of their address and by a sweeper task
/// that runs while any are kept, so an instance no longer asked holds no connection of ours.
#[derive(Debug)]
pub struct Pool {
    idle: Mutex<Idle>,
    cap: usize,
    idle_ms: u64,
    sweeper: Sweeper<Pool>,
}

/// A task that calls a set's sweep every half of its idle limit while the set keeps
/// anything (started by the first keep, ended when the set is empty or gone).
#[derive(Debug)]
struct Sweeper<T> {
    set: Weak<T>,
    running: Arc<AtomicBool>,
}

impl<T: Send + Sync + 'static> Sweeper<T> {
    fn new(set: Weak<T>) -> Sweeper<T> {
        Sweeper {
            set,
            running: Arc::default(),
        }
    }

    /// Starts the task unless it runs; `sweep` drops what expired and says whether anything
    /// is left.
    fn ensure(&self, idle_ms: u64, sweep: fn(&T) -> bool) {
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.running.store(false, Ordering::Release);
            return;
        };
        let (set, running) = (self.set.clone(), self.running.clone());
        let every = Duration::from_millis((idle_ms / 2).max(10));
        rt.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(set) = set.upgrade() else { return };
                if sweep(&set) {
                    continue;
                }
                running.store(false, Ordering::Release);
                // Something kept meanwhile, its keeper saw us running: go on for it.
                if !sweep(&set) || running.swap(true, Ordering::AcqRel) {
                    return;
                }
            }
        });
    }
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
    pub fn new(cap: usize, idle: Duration) -> Arc<Pool> {
        Arc::new_cyclic(|me| Pool {
            idle: Mutex::default(),
            cap,
            idle_ms: idle.as_millis() as u64,
            sweeper: Sweeper::new(me.clone()),
        })
    }

    /// Drops the expired and closed connections; whether any are left.
    fn sweep(&self) -> bool {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.sweep(None, now_ms(), self.idle_ms);
        idle.count > 0
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
        drop(idle);
        self.sweeper.ensure(self.idle_ms, Pool::sweep);
    }

    /// How many connections are kept.
    #[cfg(test)]
    pub fn kept(&self) -> usize {
        self.idle.lock().unwrap().count
    }
}

/// The sending half of an h2 instance connection (cloned for each stream).
pub type H2Sender = hyper::client::conn::http2::SendRequest<ReqBody>;

/// Opens an h2 connection (prior knowledge, plaintext on the VPC) to `addr` within `timeout`;
/// its driver runs in a task of its own.
pub async fn connect_h2(addr: SocketAddr, timeout: Duration) -> Result<H2Sender, ConnectError> {
    let tcp = match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Err(_) => return Err(ConnectError::TimedOut),
        Ok(Err(e)) => return Err(ConnectError::Failed(e)),
        Ok(Ok(tcp)) => tcp,
    };
    let _ = tcp.set_nodelay(true);
    let handshake = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .handshake(hyper_util::rt::TokioIo::new(tcp));
    let (sender, conn) = match tokio::time::timeout(timeout, handshake).await {
        Err(_) => return Err(ConnectError::TimedOut),
        Ok(Err(e)) => return Err(ConnectError::Failed(std::io::Error::other(e))),
        Ok(Ok(pair)) => pair,
    };
    spawn(Box::pin(async move {
        if let Err(e) = conn.await {
            tracing::debug!(instance = %addr, "h2 instance connection ended: {e}");
        }
    }));
    Ok(sender)
}

/// Streams one h2 instance connection carries at once before the next stream opens another
/// connection: under every common server's `SETTINGS_MAX_CONCURRENT_STREAMS` (nginx 128, Go
/// 250, hyper 200, Envoy more), so a stream never waits in the `h2` crate's queue behind the
/// instance's limit while a second connection could carry it. hyper does not expose the
/// limit the instance announced, so this bound stands for it.
pub const STREAMS_PER_CONN: usize = 100;

/// The h2 instance connections, by instance address: the first with room for a stream
/// carries it ([`STREAMS_PER_CONN`]), another is opened when none has. A connection with no
/// open stream and unused for `idle` is closed (dropped) by the sweeper, a closed one also at
/// its lookup.
#[derive(Debug)]
pub struct H2Conns {
    by_addr: Mutex<HashMap<SocketAddr, Vec<Shared>>>,
    idle_ms: u64,
    sweeper: Sweeper<H2Conns>,
}

/// One h2 instance connection: its sender, when it was last used, its open streams.
#[derive(Debug)]
struct Shared {
    sender: H2Sender,
    used: u64,
    streams: Arc<AtomicUsize>,
}

/// A stream's place on its h2 instance connection, given back when it drops (when the
/// response to the client ends).
#[derive(Debug)]
pub struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Shared {
    fn slot(&mut self, now: u64) -> (H2Sender, StreamSlot) {
        self.used = now;
        self.streams.fetch_add(1, Ordering::Relaxed);
        (self.sender.clone(), StreamSlot(self.streams.clone()))
    }
}

impl H2Conns {
    /// The set, each connection closed after `idle` unused (by the sweeper, as the
    /// [`Pool`]'s).
    pub fn new(idle: Duration) -> Arc<H2Conns> {
        Arc::new_cyclic(|me| H2Conns {
            by_addr: Mutex::default(),
            idle_ms: idle.as_millis().max(1) as u64,
            sweeper: Sweeper::new(me.clone()),
        })
    }

    /// Drops the connections closed or unused past the limit with no stream open; whether any
    /// are left.
    fn sweep(&self) -> bool {
        let mut set = self.lock();
        let (now, idle_ms) = (now_ms(), self.idle_ms);
        set.retain(|_, conns| {
            conns.retain(|c| {
                !c.sender.is_closed()
                    && (now.saturating_sub(c.used) < idle_ms
                        || c.streams.load(Ordering::Relaxed) > 0)
            });
            !conns.is_empty()
        });
        !set.is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Vec<Shared>>> {
        self.by_addr.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A stream on an open connection to `addr` with room for it, if there is one.
    pub fn get(&self, addr: SocketAddr) -> Option<(H2Sender, StreamSlot)> {
        let mut set = self.lock();
        let conns = set.get_mut(&addr)?;
        conns.retain(|c| !c.sender.is_closed());
        let now = now_ms();
        let found = conns
            .iter_mut()
            .find(|c| c.streams.load(Ordering::Relaxed) < STREAMS_PER_CONN)
            .map(|c| c.slot(now));
        if conns.is_empty() {
            set.remove(&addr);
        }
        found
    }

    /// Keeps `sender` as one more connection to `addr`, with its first stream.
    pub fn put(&self, addr: SocketAddr, sender: H2Sender) -> StreamSlot {
        let mut shared = Shared {
            sender,
            used: 0,
            streams: Arc::default(),
        };
        let (_, slot) = shared.slot(now_ms());
        self.lock().entry(addr).or_default().push(shared);
        self.sweeper.ensure(self.idle_ms, H2Conns::sweep);
        slot
    }

    /// How many connections are kept.
    #[cfg(test)]
    pub fn kept(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }
}
