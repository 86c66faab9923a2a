//! Assembling a gateway from its config and running it: worker threads (one current-thread
//! runtime and one `SO_REUSEPORT` socket per listen address each), then drain on shutdown.
//!
//! The control runtime (the caller's) runs what is not per-connection: signals, the admin
//! server, the demo app and DNS lookups for custom domains.

use crate::admission::Refusal;
use crate::conn::{self, Shared};
use crate::listener;
use crate::metrics::{Metrics, Reject};
use crate::route::custom_domain::{CustomDomains, HickoryTxt};
use crate::route::{AppSpec, Routes};
use crate::terminate::certs::{CertResolver, CertSet};
use crate::terminate::TlsConfigs;
use gatehouse_config::Config;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A certificate or key could not be loaded.
    #[error("tls.certificates[{index}]: {source}")]
    Certificate {
        /// Index in the config.
        index: usize,
        /// Why.
        source: crate::terminate::certs::CertError,
    },
    /// The route table is inconsistent (two sources declared clashing apps).
    #[error("routes: {0}")]
    Routes(#[from] crate::route::table::BuildError),
    /// rustls refused the configuration.
    #[error("TLS config: {0}")]
    Tls(#[from] rustls::Error),
    /// The DNS resolver could not be set up.
    #[error("custom domains: {0}")]
    Resolver(String),
    /// ACME could not be set up (store, sealer, DNS provider).
    #[error("acme: {0}")]
    Acme(String),
    /// The TEE (quote provider, sealer) could not be set up.
    #[error("tee: {0}")]
    Tee(String),
    /// The Certificate Transparency watch could not be set up.
    #[error("ct: {0}")]
    Ct(String),
    /// The encrypted channel's keys could not be loaded or made.
    #[error("encrypted channel: {0}")]
    Channel(String),
    /// This node could not join the cluster (no key: it serves nothing from the store).
    #[error(transparent)]
    Cluster(#[from] gatehouse_cluster::ClusterError),
    /// A socket could not be bound.
    #[error("{0}")]
    Listen(#[from] std::io::Error),
}

/// A gateway ready to run: shared state and bound sockets.
#[derive(Debug)]
pub struct Gateway {
    /// What every connection reads.
    pub shared: Arc<Shared>,
    sockets: Vec<Vec<std::net::TcpListener>>,
    commands: Vec<tokio::sync::mpsc::UnboundedReceiver<WorkerCommand>>,
    listeners: Arc<Listeners>,
    drain: Duration,
}

/// What a worker is told at run time: take a listening socket, or stop accepting on one.
#[derive(Debug)]
enum WorkerCommand {
    Add(std::net::TcpListener),
    Remove(SocketAddr),
}

/// The listeners at run time: a reload adds (each worker gets its `SO_REUSEPORT` socket) and
/// removes them (each worker stops accepting there; connections already accepted go on).
#[derive(Debug)]
pub struct Listeners {
    workers: Vec<tokio::sync::mpsc::UnboundedSender<WorkerCommand>>,
    /// Each configured address and the address it is bound to (a port 0 resolved).
    bound: std::sync::Mutex<Vec<(SocketAddr, SocketAddr)>>,
}

/// Listeners a reload bound, not yet handed to the workers.
#[derive(Debug)]
pub struct NewListeners {
    add: Vec<(SocketAddr, Vec<std::net::TcpListener>)>,
    remove: Vec<SocketAddr>,
}

impl Listeners {
    /// Binds what `wanted` (configured addresses) adds and finds what it drops; changes
    /// nothing yet. The error names the address that could not be bound.
    pub fn prepare(&self, wanted: &[SocketAddr]) -> std::io::Result<NewListeners> {
        let bound = self.bound.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut add = Vec::new();
        for addr in wanted
            .iter()
            .filter(|a| !bound.iter().any(|(c, _)| c == *a))
        {
            let per_worker = listener::bind_all(&[*addr], self.workers.len())?;
            add.push((*addr, per_worker.into_iter().flatten().collect()));
        }
        let remove = bound
            .iter()
            .filter(|(c, _)| !wanted.contains(c))
            .map(|(c, _)| *c)
            .collect();
        Ok(NewListeners { add, remove })
    }

    /// Hands the new sockets to the workers and stops the removed ones; returns the
    /// addresses added and removed (as bound).
    pub fn apply(&self, new: NewListeners) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
        let mut bound = self.bound.lock().unwrap_or_else(|p| p.into_inner());
        let (mut added, mut removed) = (Vec::new(), Vec::new());
        for (configured, sockets) in new.add {
            let Some(actual) = sockets.first().and_then(|s| s.local_addr().ok()) else {
                continue;
            };
            for (worker, socket) in self.workers.iter().zip(sockets) {
                let _ = worker.send(WorkerCommand::Add(socket));
            }
            bound.push((configured, actual));
            added.push(actual);
        }
        for configured in new.remove {
            if let Some(i) = bound.iter().position(|(c, _)| *c == configured) {
                let (_, actual) = bound.remove(i);
                for worker in &self.workers {
                    let _ = worker.send(WorkerCommand::Remove(actual));
                }
                removed.push(actual);
            }
        }
        (added, removed)
    }

    /// The bound addresses.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        let bound = self.bound.lock().unwrap_or_else(|p| p.into_inner());
        bound.iter().map(|(_, a)| *a).collect()
    }
}

impl Gateway {
    /// Builds the shared state and binds every listener. `extra_apps` and `extra_certs` come
    /// from other sources than the config (the development demo app and CA).
    /// Must be called inside the control runtime (DNS lookups run there).
    pub fn build(
        config: &Config,
        extra_apps: Vec<AppSpec>,
        mut certs: CertSet,
    ) -> Result<Gateway, StartError> {
        for (index, pair) in config.tls.certificates.iter().enumerate() {
            certs
                .load(&pair.cert, &pair.key)
                .map_err(|source| StartError::Certificate { index, source })?;
        }
        let mut specs: Vec<AppSpec> = config.apps.iter().map(AppSpec::from).collect();
        specs.extend(extra_apps);
        let custom = &config.proxy.custom_domains;
        let lookup = HickoryTxt::new(custom).map_err(StartError::Resolver)?;
        let custom = CustomDomains::new(
            custom.clone(),
            Arc::new(lookup),
            tokio::runtime::Handle::current(),
        );
        let routes = Routes::new(config.proxy.base_domains.clone(), specs, custom)?;
        let tls = TlsConfigs::new(Arc::new(CertResolver::new(certs)), config.tls.resumption)?;
        let acme = crate::conn::AcmeTls::new()?;
        let shared = Arc::new_cyclic(|weak| Shared {
            routes,
            tls,
            tunables: arc_swap::ArcSwap::from_pointee(crate::conn::Tunables::of(&config.proxy)),
            admission: Arc::new(crate::admission::Admission::new(
                &config.proxy.limits,
                crate::fdlimit::current(),
            )),
            metrics: Metrics::default(),
            acme,
            attest: std::sync::OnceLock::new(),
            http: crate::http::HttpEngine::new(
                &config.proxy.timeouts,
                &config.proxy.http,
                weak.clone(),
            ),
            on_demand: std::sync::OnceLock::new(),
            channel: std::sync::OnceLock::new(),
        });
        let workers = match config.proxy.workers {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        };
        let sockets = listener::bind_all(&config.proxy.listen, workers)?;
        let (senders, commands) = (0..workers)
            .map(|_| tokio::sync::mpsc::unbounded_channel())
            .unzip();
        let actual = sockets
            .first()
            .map(|s| s.iter().filter_map(|l| l.local_addr().ok()).collect())
            .unwrap_or_else(Vec::new);
        let listeners = Arc::new(Listeners {
            workers: senders,
            bound: std::sync::Mutex::new(config.proxy.listen.iter().copied().zip(actual).collect()),
        });
        Ok(Gateway {
            shared,
            sockets,
            commands,
            listeners,
            drain: config.proxy.timeouts.drain,
        })
    }

    /// The listeners, for a reload to change.
    pub fn listeners(&self) -> Arc<Listeners> {
        self.listeners.clone()
    }

    /// The bound addresses (ports resolved).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets
            .first()
            .map(|s| s.iter().filter_map(|l| l.local_addr().ok()).collect())
            .unwrap_or_default()
    }

    /// Runs the workers until `stop` turns true, then stops accepting, lets live connections
    /// drain for the configured time and closes the rest. Returns when every worker is done.
    pub async fn run(self, stop: watch::Receiver<bool>) {
        let workers: Vec<_> = self
            .sockets
            .into_iter()
            .zip(self.commands)
            .enumerate()
            .map(|(i, (sockets, commands))| {
                let shared = self.shared.clone();
                let stop = stop.clone();
                let drain = self.drain;
                std::thread::Builder::new()
                    .name(format!("gatehouse-worker-{i}"))
                    .spawn(move || worker(i, sockets, commands, shared, stop, drain))
            })
            .collect();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            for w in workers.into_iter().flatten() {
                let _ = w.join();
            }
            let _ = done_tx.send(());
        });
        let _ = done_rx.await;
    }
}

fn worker(
    index: usize,
    sockets: Vec<std::net::TcpListener>,
    mut commands: tokio::sync::mpsc::UnboundedReceiver<WorkerCommand>,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(worker = index, "cannot start worker runtime: {e}");
            return;
        }
    };
    shared.metrics.count_tasks_of(runtime.handle().clone());
    runtime.block_on(async move {
        let tracker = Arc::new(Tracker::default());
        // Each listener's own stop, for a reload that removes it.
        let mut own: std::collections::HashMap<SocketAddr, watch::Sender<bool>> =
            Default::default();
        let global = stop.clone();
        let start = |socket: std::net::TcpListener, own: &mut std::collections::HashMap<_, _>| {
            let addr = socket.local_addr();
            match (tokio::net::TcpListener::from_std(socket), addr) {
                (Ok(l), Ok(addr)) => {
                    let (tx, rx) = watch::channel(false);
                    own.insert(addr, tx);
                    tokio::spawn(accept_loop(
                        l,
                        shared.clone(),
                        global.clone(),
                        rx,
                        tracker.clone(),
                    ));
                }
                (Err(e), _) | (_, Err(e)) => tracing::error!(worker = index, "listener: {e}"),
            }
        };
        for socket in sockets {
            start(socket, &mut own);
        }
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => break,
                command = commands.recv() => match command {
                    Some(WorkerCommand::Add(socket)) => start(socket, &mut own),
                    Some(WorkerCommand::Remove(addr)) => {
                        if let Some(tx) = own.remove(&addr) {
                            let _ = tx.send(true);
                        }
                    }
                    None => {
                        stopped(&mut stop).await;
                        break;
                    }
                },
            }
        }
        let deadline = tokio::time::Instant::now() + drain;
        while tracker.count() > 0 {
            let notified = tracker.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable(); // registered before the check: no lost wake-up
            if tracker.count() == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::info!(
                    worker = index,
                    open = tracker.count(),
                    "drain deadline reached; closing"
                );
                break;
            }
        }
    });
    // Dropping the runtime cancels the connections still open.
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    mut removed: watch::Receiver<bool>,
    tracker: Arc<Tracker>,
) {
    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => return, // drops the listener: no more accepts
            _ = stopped(&mut removed) => return, // a reload removed it: the same
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Checked before any work: a refused connection costs one accept and
                    // one close, and the descriptor reserve keeps both possible.
                    let ticket = match shared.admission.admit(peer.ip()) {
                        Ok(t) => t,
                        Err(refusal) => {
                            shared.metrics.rejected(match refusal {
                                Refusal::Global(_) => Reject::GlobalLimit,
                                Refusal::Source(..) => Reject::SourceLimit,
                            });
                            tracing::debug!(client = %peer, "refused at accept: {refusal}");
                            drop(stream);
                            continue;
                        }
                    };
                    let shared = shared.clone();
                    let guard = Tracker::start(&tracker);
                    tokio::spawn(async move {
                        conn::serve(shared, stream, peer).await;
                        drop((ticket, guard));
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Resolves once the stop flag is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Connections open on one worker, and a wake-up when the count reaches zero.
#[derive(Debug, Default)]
struct Tracker {
    open: AtomicUsize,
    idle: Notify,
}

impl Tracker {
    fn start(this: &Arc<Tracker>) -> TrackerGuard {
        this.open.fetch_add(1, Ordering::Relaxed);
        TrackerGuard(this.clone())
    }

    fn count(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

struct TrackerGuard(Arc<Tracker>);

impl Drop for TrackerGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
