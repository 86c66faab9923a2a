//! Keeps every certificate target fresh: serve what is stored at once, renew on schedule,
//! check CAA before each order, back off on failure, publish each new certificate to the
//! data plane without touching live connections.

use crate::account::{self, AccountSettings};
use crate::keys::KeyType;
use crate::order::{self, Request, Solver};
use crate::pending::{PendingOrder, SavePending};
use crate::schedule;
use crate::stored::{self, Issued};
use crate::CertbotError;
use gatehouse_caa::lookup::Checker;
use gatehouse_caa::{Policy, Verdict};
use gatehouse_store::{Event, Fence, Sealer, Store};
use instant_acme::Account;
use rustls::sign::CertifiedKey;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Receives the full set of ACME certificates whenever one changes.
pub trait Publish: Send + Sync {
    /// `certs`: (names, key) for every certificate currently held.
    fn publish(&self, certs: Vec<(Vec<String>, Arc<CertifiedKey>)>);
}

/// One certificate to keep: its names and how they are validated.
#[derive(Debug, Clone)]
pub struct Target {
    /// A stable id (store key segment): the first name, `*` spelled `_wildcard`.
    pub id: String,
    /// The names, e.g. `gw.example.com` and `*.gw.example.com`.
    pub names: Vec<String>,
    /// How challenges are answered.
    pub solver: Solver,
}

impl Target {
    /// A target for `names` answered by `solver`.
    pub fn new(names: Vec<String>, solver: Solver) -> Target {
        let id = names
            .first()
            .map(|n| n.replace('*', "_wildcard"))
            .unwrap_or_default();
        Target { id, names, solver }
    }
}

/// The CAA gate: checked before every order and periodically.
#[derive(Debug, Clone)]
pub struct CaaGate {
    /// Looks up the relevant record set.
    pub checker: Checker,
    /// Our CA's issuer domain.
    pub issuer: String,
    /// How often the running gateway re-checks.
    pub interval: Duration,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct CertStats {
    /// Certificates issued (first or renewal).
    pub issued: AtomicU64,
    /// Orders that failed (any step).
    pub failed: AtomicU64,
    /// Orders refused by the CAA check.
    pub caa_refused: AtomicU64,
    /// Names whose CAA was not `Locked` at the last check.
    pub caa_not_locked: AtomicU64,
    /// CAA checks whose verdict changed since the previous check (drift).
    pub caa_drift: AtomicU64,
    /// The ACME account URI, once the account is known (the attestation bundle claims it).
    pub account_uri: std::sync::OnceLock<String>,
    /// The last CAA verdict per name (`name: verdict`), from the periodic re-check.
    pub caa_verdicts: Mutex<BTreeMap<String, String>>,
    /// Each target's renewal plan (by target id), as last computed.
    pub schedule: Mutex<BTreeMap<String, schedule::Plan>>,
    /// When this node last renewed each target (by target id).
    pub renewed_at: Mutex<BTreeMap<String, SystemTime>>,
}

/// A certificate being served.
struct Held {
    names: Vec<String>,
    key: Arc<CertifiedKey>,
    not_before: SystemTime,
    not_after: SystemTime,
    /// The stored record's generation (a lower one is a rollback).
    generation: u64,
}

/// The manager's fixed parts.
pub struct CertManager {
    store: Arc<dyn Store>,
    sealer: Arc<dyn Sealer>,
    key_type: KeyType,
    profile: Option<String>,
    caa: Option<CaaGate>,
    publish: Arc<dyn Publish>,
    live: Mutex<BTreeMap<String, Held>>,
    lock: Option<CaaLock>,
    /// Whether the CA answered an ARI query (then orders say which certificate they replace).
    ari: std::sync::atomic::AtomicBool,
    /// Counters.
    pub stats: Arc<CertStats>,
    /// Who this node is, in the renewal locks it takes.
    node: String,
    /// Wakes a target's renewal loop to renew now (the admin API's "renew").
    wake: Mutex<BTreeMap<String, Arc<tokio::sync::Notify>>>,
    /// Every target kept (config and run time), the account once ready, and each target's
    /// renewal loop: one lock, so a target added while the account is being made gets
    /// exactly one loop.
    running: Mutex<Running>,
}

/// The targets and their renewal loops.
#[derive(Default)]
struct Running {
    targets: Vec<Target>,
    account: Option<Arc<Account>>,
    loops: BTreeMap<String, tokio::task::AbortHandle>,
}

/// How long a renewal lock outlives a holder that stopped keeping it alive (crash, pause,
/// partition); another node takes the renewal over after that.
pub const RENEWAL_LOCK_TTL: Duration = Duration::from_secs(10);
/// How long a node waits before looking again while another node renews.
const RENEWING_ELSEWHERE_WAIT: Duration = Duration::from_secs(3);
/// How often a renewal looks again for a store that did not answer (fail static: the node
/// serves what it holds meanwhile, and renews as soon as the store is back).
const STORE_WAIT: Duration = Duration::from_secs(3);

/// What a renewal attempt came to, besides an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewed {
    /// This node ordered (or resumed) the certificate and published it.
    Here,
    /// Another node holds the renewal lock (named), or renewed meanwhile; nothing ordered.
    Elsewhere(String),
}

/// The holder name of a manager not told its node's name.
fn node_name() -> String {
    format!("pid-{}", std::process::id())
}

/// CAA records to write at start, locking names to our account (`[acme] set_caa`).
#[derive(Debug, Clone)]
pub struct CaaLock {
    /// Writes the records.
    pub provider: Arc<dyn gatehouse_dns::DnsProvider>,
    /// The names to lock (their `issue` and `issuewild`).
    pub names: Vec<String>,
    /// Our CA's issuer domain.
    pub issuer: String,
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertManager")
            .field("targets", &self.live.lock().map(|l| l.len()).unwrap_or(0))
            .finish()
    }
}

impl CertManager {
    /// A manager keeping certificates in `store`, keys sealed by `sealer`.
    pub fn new(
        store: Arc<dyn Store>,
        sealer: Arc<dyn Sealer>,
        key_type: KeyType,
        profile: Option<String>,
        caa: Option<CaaGate>,
        publish: Arc<dyn Publish>,
    ) -> CertManager {
        CertManager {
            store,
            sealer,
            key_type,
            profile,
            caa,
            publish,
            live: Mutex::new(BTreeMap::new()),
            lock: None,
            ari: Default::default(),
            stats: Arc::default(),
            node: node_name(),
            wake: Mutex::default(),
            running: Mutex::default(),
        }
    }

    /// Names this node in the renewal locks it takes.
    pub fn with_node(mut self, node: impl Into<String>) -> CertManager {
        self.node = node.into();
        self
    }

    /// Also writes CAA records locking `lock.names` to our account once it is known.
    pub fn with_caa_lock(mut self, lock: Option<CaaLock>) -> CertManager {
        self.lock = lock;
        self
    }

    /// Writes the CAA lock (guard-first order, or one atomic update where the provider can).
    async fn lock_caa(&self, account: &Account) {
        let Some(lock) = &self.lock else { return };
        let wanted =
            gatehouse_caa::plan::wanted(&policy(account, &lock.issuer, &["dns-01", "tls-alpn-01"]));
        for name in &lock.names {
            match lock.provider.set_caa(name, &wanted).await {
                Ok(steps) if steps.is_empty() => {
                    tracing::info!(%name, "CAA already locked to our account")
                }
                Ok(steps) => {
                    tracing::info!(%name, changes = steps.len(), "CAA locked to our account")
                }
                Err(e) => tracing::error!(%name, "could not write CAA records: {e}"),
            }
        }
    }

    /// Loads the stored certificates of `targets` and publishes those still valid; returns
    /// how many. Called before the listeners accept, so a restart serves at once.
    pub async fn load_stored(&self, targets: &[Target]) -> usize {
        let mut n = 0;
        for t in targets {
            match Issued::load(&t.id, &*self.store, &*self.sealer, self.generation(t)).await {
                Ok(Some(issued))
                    if issued.names == t.names && issued.not_after > SystemTime::now() =>
                {
                    if self.install(t, &issued).is_ok() {
                        tracing::info!(names = ?t.names, not_after = ?humantime(issued.not_after), "serving the stored certificate");
                        n += 1;
                    }
                }
                Ok(Some(_)) => {
                    tracing::info!(names = ?t.names, "stored certificate expired or for other names: ordering anew")
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(names = ?t.names, "stored certificate unusable, ordering anew: {e}")
                }
            }
        }
        self.publish_all();
        n
    }

    /// Reads `target`'s stored record again: a newer generation (another node renewed) is
    /// served, an older one (a rollback) is refused and logged; what is held stays otherwise.
    pub async fn reload(&self, target: &Target) {
        let held = self.generation(target);
        match Issued::load(&target.id, &*self.store, &*self.sealer, held).await {
            Ok(Some(issued))
                if issued.generation > held
                    && issued.names == target.names
                    && issued.not_after > SystemTime::now() =>
            {
                if self.install(target, &issued).is_ok() {
                    tracing::info!(names = ?target.names, generation = issued.generation, "serving a newer stored certificate");
                    self.publish_all();
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(names = ?target.names, "stored certificate refused, keeping the one held: {e}")
            }
        }
    }

    /// The generation of the record held for `target` (0: none).
    fn generation(&self, target: &Target) -> u64 {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&target.id)
            .map_or(0, |h| h.generation)
    }

    fn install(&self, t: &Target, issued: &Issued) -> Result<(), CertbotError> {
        let certified = Arc::new(issued.key.certified(issued.chain.clone())?);
        self.live.lock().unwrap_or_else(|p| p.into_inner()).insert(
            t.id.clone(),
            Held {
                names: t.names.clone(),
                key: certified,
                not_before: issued.not_before,
                not_after: issued.not_after,
                generation: issued.generation,
            },
        );
        Ok(())
    }

    fn publish_all(&self) {
        let all = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|h| (h.names.clone(), h.key.clone()))
            .collect();
        self.publish.publish(all);
    }

    /// Obtains the account (retrying with backoff while the CA is unreachable), then keeps
    /// every target fresh and re-checks CAA, forever. Stored certificates are served
    /// meanwhile: the data plane never waits for the CA.
    pub async fn run(self: Arc<Self>, settings: AccountSettings, targets: Vec<Target>) {
        let mut failures = 0u32;
        let account = loop {
            match account::load_or_create(&settings, &*self.store, &*self.sealer).await {
                Ok((account, created)) => {
                    let how = if created { "created" } else { "restored" };
                    tracing::info!(uri = account.id(), "ACME account {how}");
                    let _ = self.stats.account_uri.set(account.id().to_owned());
                    break Arc::new(account);
                }
                Err(e) => {
                    let wait = schedule::backoff(failures, e.is_rate_limit(), fastrand::f64());
                    failures = failures.saturating_add(1);
                    tracing::error!(directory = %settings.directory, retry_in = ?wait, "ACME account: {e}");
                    tokio::time::sleep(wait).await;
                }
            }
        };
        self.lock_caa(&account).await;
        {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            running.account = Some(account.clone());
            for t in &targets {
                if !running.targets.iter().any(|r| r.id == t.id) {
                    running.targets.push(t.clone());
                }
            }
            let all = running.targets.clone();
            for t in all {
                let task = tokio::spawn(self.clone().maintain(account.clone(), t.clone()));
                running.loops.insert(t.id.clone(), task.abort_handle());
            }
        }
        tokio::spawn(self.clone().follow_store());
        self.watch_caa(account, targets).await;
    }

    /// Keeps `target` too, from now on (a custom domain added at run time): its stored
    /// certificate is served at once, and it is ordered and renewed like the others (once the
    /// account is ready). False when a target with its id is kept already.
    pub async fn add_target(self: &Arc<Self>, target: Target) -> bool {
        {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            if running.targets.iter().any(|t| t.id == target.id) {
                return false;
            }
            running.targets.push(target.clone());
            if let Some(account) = running.account.clone() {
                let task = tokio::spawn(self.clone().maintain(account, target.clone()));
                running.loops.insert(target.id.clone(), task.abort_handle());
            }
        }
        tracing::info!(names = ?target.names, "certificate target added");
        self.load_stored(std::slice::from_ref(&target)).await;
        true
    }

    /// Stops keeping target `id`: its renewal loop ends and its certificate is no longer
    /// served (the stored record stays, for a later add). False when no such target.
    pub fn remove_target(&self, id: &str) -> bool {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let Some(i) = running.targets.iter().position(|t| t.id == id) else {
            return false;
        };
        let target = running.targets.remove(i);
        if let Some(task) = running.loops.remove(id) {
            task.abort();
        }
        drop(running);
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        self.publish_all();
        tracing::info!(names = ?target.names, "certificate target removed");
        true
    }

    /// The ids of every target kept.
    pub fn target_ids(&self) -> Vec<String> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.targets.iter().map(|t| t.id.clone()).collect()
    }

    /// Serves each certificate another node (or an earlier run) stores, as the store's watch
    /// reports it, so a renewal anywhere reaches every node's new handshakes.
    pub async fn follow_store(self: Arc<Self>) {
        loop {
            match self.store.watch(stored::PREFIX).await {
                Ok((_, mut changes)) => {
                    while let Some(change) = changes.next().await {
                        let Event::Put { key, .. } = change else {
                            continue;
                        };
                        let targets = {
                            let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
                            running.targets.clone()
                        };
                        for t in targets.iter().filter(|t| stored::store_key(&t.id) == key) {
                            self.reload(t).await;
                        }
                    }
                }
                Err(e) => tracing::warn!("cannot watch the stored certificates, retrying: {e}"),
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    fn waker(&self, id: &str) -> Arc<tokio::sync::Notify> {
        self.wake
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    /// Asks the renewal loop of target `id` to renew now rather than on schedule (it still
    /// takes the renewal lock and checks CAA first). False when no loop keeps that target.
    pub fn renew_now(&self, id: &str) -> bool {
        let wake = self.wake.lock().unwrap_or_else(|p| p.into_inner());
        match wake.get(id) {
            Some(n) => {
                // Wakes a loop waiting for its renewal time; one renewing already is not
                // asked again (no stored permit to renew twice).
                n.notify_waiters();
                true
            }
            None => false,
        }
    }

    /// Keeps `target` fresh forever: asks the CA's renewal information again whenever it
    /// says to (`Retry-After`, capped at 6 h), renews in its window and never later than
    /// expiry minus a margin.
    pub async fn maintain(self: Arc<Self>, account: Arc<Account>, target: Target) {
        let mut failures = 0u32;
        let mut draw = fastrand::f64();
        let mut store_down = false;
        let wake = self.waker(&target.id);
        loop {
            self.reload(&target).await;
            let plan = self.plan(&account, &target, draw).await;
            let mut asked = std::pin::pin!(wake.notified());
            if plan.renew_at > SystemTime::now() {
                let wake_at = plan.poll_at.map_or(plan.renew_at, |p| p.min(plan.renew_at));
                tracing::info!(
                    names = ?target.names,
                    renew = %humantime(plan.renew_at),
                    next_ari_poll = %plan.poll_at.map_or("none".into(), humantime),
                    ari_window = %plan.window.map_or("none".into(), |(s, e)| format!("{} to {}", humantime(s), humantime(e))),
                    "next renewal"
                );
                let asked = until_wall_clock(wake_at, asked.as_mut()).await;
                if asked {
                    tracing::info!(names = ?target.names, "renewal asked for: renewing now");
                } else if wake_at < plan.renew_at {
                    continue; // ask the CA again before renewing
                }
            }
            let renewed = self.renew(&account, &target).await;
            let was_down = std::mem::replace(
                &mut store_down,
                renewed
                    .as_ref()
                    .is_err_and(CertbotError::is_store_unavailable),
            );
            match renewed {
                Ok(Renewed::Here) => {
                    failures = 0;
                    draw = fastrand::f64();
                    self.stats
                        .renewed_at
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(target.id.clone(), SystemTime::now());
                }
                Ok(Renewed::Elsewhere(who)) => {
                    tracing::info!(names = ?target.names, by = %who, "renewal in hand elsewhere: serving what the store gets");
                    tokio::time::sleep(RENEWING_ELSEWHERE_WAIT).await;
                }
                Err(e) if e.is_store_unavailable() => {
                    if !was_down {
                        tracing::warn!(names = ?target.names, "renewal waits for the store, serving the certificate held: {e}");
                    }
                    tokio::time::sleep(STORE_WAIT).await;
                    continue;
                }
                Err(e) => {
                    self.stats.failed.fetch_add(1, Ordering::Relaxed);
                    let wait = schedule::backoff(failures, e.is_rate_limit(), fastrand::f64());
                    failures = failures.saturating_add(1);
                    tracing::error!(names = ?target.names, retry_in = ?wait, "certificate order failed: {e}");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// When to renew `target` and when to ask the CA again: now if we hold none or an order
    /// is pending; else by the ARI window when the CA has one, 2/3 of the lifetime otherwise.
    async fn plan(&self, account: &Account, target: &Target, draw: f64) -> schedule::Plan {
        let now = SystemTime::now();
        let immediately = schedule::Plan {
            renew_at: now,
            poll_at: None,
            window: None,
        };
        let held = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&target.id)
            .map(|h| (h.key.cert[0].clone(), h.not_before, h.not_after));
        let Some((leaf, not_before, not_after)) = held else {
            return immediately;
        };
        let ari = match instant_acme::CertificateIdentifier::try_from(&leaf) {
            Ok(id) => match account.renewal_info(&id).await {
                Ok((info, retry_after)) => {
                    self.ari.store(true, Ordering::Relaxed);
                    let at = |t: time::OffsetDateTime| {
                        SystemTime::UNIX_EPOCH
                            + Duration::from_secs(t.unix_timestamp().max(0) as u64)
                    };
                    Some(Ok(schedule::Ari {
                        start: at(info.suggested_window.start),
                        end: at(info.suggested_window.end),
                        retry_after,
                    }))
                }
                Err(instant_acme::Error::Unsupported(_)) => None,
                Err(e) => {
                    tracing::warn!(names = ?target.names, "ARI query failed, using 2/3 of the lifetime until it answers: {e}");
                    Some(Err(Duration::from_secs(3600)))
                }
            },
            Err(_) => None,
        };
        // A pending order is resumed at once (ARI was still asked: the CA's answer says
        // whether a new order may name the certificate it replaces).
        if matches!(
            PendingOrder::load(&target.id, &*self.store, &*self.sealer).await,
            Ok(Some(_))
        ) {
            return immediately;
        }
        let plan = schedule::plan(not_before, not_after, ari, now, draw);
        self.stats
            .schedule
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(target.id.clone(), plan);
        plan
    }

    /// One certificate for `target`, stored and published: the pending order's, if one is
    /// stored and the CA still has it; else a new order, CAA-gated. Only the holder of the
    /// target's renewal lock orders (one order per renewal across a cluster), it looks at the
    /// store again once it holds the lock (another node may just have renewed), and its
    /// publish is fenced by the lock.
    pub async fn renew(&self, account: &Account, target: &Target) -> Result<Renewed, CertbotError> {
        let lock = match self
            .store
            .try_lock(
                &format!("renew/{}", target.id),
                &self.node,
                RENEWAL_LOCK_TTL,
            )
            .await?
        {
            Ok(lock) => lock,
            Err(holder) => return Ok(Renewed::Elsewhere(holder)),
        };
        let held = self.generation(target);
        self.reload(target).await;
        if self.generation(target) > held {
            return Ok(Renewed::Elsewhere("a node that renewed meanwhile".into()));
        }
        let issued = match self.resume(account, target).await? {
            Some(issued) => issued,
            None => self.order(account, target).await?,
        };
        self.keep(target, issued, &lock.fence).await?;
        drop(lock);
        Ok(Renewed::Here)
    }

    /// Downloads the pending order's certificate, if there is one the CA can still give.
    async fn resume(
        &self,
        account: &Account,
        target: &Target,
    ) -> Result<Option<Issued>, CertbotError> {
        let pending = match PendingOrder::load(&target.id, &*self.store, &*self.sealer).await {
            Ok(Some(p)) if p.names == target.names => p,
            Ok(None) => return Ok(None),
            Ok(Some(_)) | Err(_) => {
                tracing::warn!(names = ?target.names, "dropping a pending order for other names or unreadable");
                PendingOrder::clear(&target.id, &*self.store).await?;
                return Ok(None);
            }
        };
        let url = pending.url.clone();
        match order::resume(account, pending).await? {
            order::Resumed::Issued(issued) => {
                tracing::info!(names = ?target.names, order = %url, "resumed the pending order: its certificate is downloaded, not ordered again");
                Ok(Some(issued))
            }
            order::Resumed::Gone(why) => {
                tracing::warn!(names = ?target.names, order = %url, "the pending order cannot be resumed ({why}): ordering anew");
                PendingOrder::clear(&target.id, &*self.store).await?;
                Ok(None)
            }
        }
    }

    /// A new order for `target`, CAA-gated; the order and key are stored before finalize.
    async fn order(&self, account: &Account, target: &Target) -> Result<Issued, CertbotError> {
        self.caa_gate(account, target).await?;
        let previous = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&target.id)
            .map(|h| h.key.cert[0].to_vec());
        tracing::info!(names = ?target.names, method = target.solver.method(), "ordering a certificate");
        let save_pending = SavePending {
            id: &target.id,
            store: &*self.store,
            sealer: &*self.sealer,
        };
        order::issue(
            account,
            &target.solver,
            Request {
                names: &target.names,
                key_type: self.key_type,
                profile: self.profile.as_deref(),
                replaces: previous
                    .as_deref()
                    .filter(|_| self.ari.load(Ordering::Relaxed)),
            },
            save_pending,
        )
        .await
    }

    /// Stores `issued` (the next generation), forgets the pending order, serves it.
    async fn keep(
        &self,
        target: &Target,
        mut issued: Issued,
        fence: &Fence,
    ) -> Result<(), CertbotError> {
        issued.generation = self.generation(target);
        issued
            .save(&target.id, &*self.store, &*self.sealer, Some(fence))
            .await?;
        PendingOrder::clear(&target.id, &*self.store).await?;
        self.install(target, &issued)?;
        self.publish_all();
        self.stats.issued.fetch_add(1, Ordering::Relaxed);
        tracing::info!(names = ?target.names, not_after = ?humantime(issued.not_after), generation = issued.generation, "certificate issued and live");
        Ok(())
    }

    /// Refuses the order when any name's CAA verdict is `Unknown` or `Blocked`; warns on
    /// `Unlocked` (issuance works, but so would anyone else's).
    async fn caa_gate(&self, account: &Account, target: &Target) -> Result<(), CertbotError> {
        let Some(gate) = &self.caa else { return Ok(()) };
        let policy = policy(account, &gate.issuer, &[target.solver.method()]);
        for name in &target.names {
            match gate.checker.check(name, &policy).await {
                Verdict::Locked => {}
                Verdict::Unlocked { reason } => tracing::warn!(
                    %name, "CAA does not lock this name to our account ({}): {reason}", account.id()
                ),
                v @ (Verdict::Unknown { .. } | Verdict::Blocked { .. }) => {
                    self.stats.caa_refused.fetch_add(1, Ordering::Relaxed);
                    return Err(CertbotError::Caa {
                        name: name.clone(),
                        verdict: v.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Re-checks the CAA of every target's names forever, logging and counting changes.
    pub async fn watch_caa(self: Arc<Self>, account: Arc<Account>, targets: Vec<Target>) {
        let Some(gate) = self.caa.clone() else { return };
        let mut last: BTreeMap<String, String> = BTreeMap::new();
        loop {
            let mut not_locked = 0;
            for t in &targets {
                let policy = policy(&account, &gate.issuer, &[t.solver.method()]);
                for name in &t.names {
                    let v = gate.checker.check(name, &policy).await;
                    if !matches!(v, Verdict::Locked) {
                        not_locked += 1;
                    }
                    let now = v.to_string();
                    match last.insert(name.clone(), now.clone()) {
                        Some(before) if before != now => {
                            self.stats.caa_drift.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(%name, %before, %now, "CAA changed");
                        }
                        None if !matches!(v, Verdict::Locked) => {
                            tracing::warn!(%name, "CAA: {now}");
                        }
                        _ => {}
                    }
                }
            }
            self.stats
                .caa_not_locked
                .store(not_locked, Ordering::Relaxed);
            *self
                .stats
                .caa_verdicts
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = last.clone();
            tracing::debug!(names = last.len(), not_locked, "CAA re-checked");
            tokio::time::sleep(gate.interval).await;
        }
    }
}

/// The policy a CAA record set must satisfy: our issuer, our account, these methods.
pub fn policy(account: &Account, issuer: &str, methods: &[&str]) -> Policy {
    Policy {
        issuers: vec![issuer.to_owned()],
        accounts: vec![account.id().to_owned()],
        methods: methods.iter().map(|m| m.to_string()).collect(),
    }
}

/// Waits until the wall clock reads `at`; true if `asked` completed first. The sleep is
/// measured again after every wall-clock jump ([`crate::clock`]) and when it ends before the
/// wall clock reads `at` (a jump back), so a jump neither skips a renewal nor brings one
/// forward.
async fn until_wall_clock(
    at: SystemTime,
    mut asked: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
) -> bool {
    loop {
        let jumped = crate::clock::next_jump();
        let Ok(left) = at.duration_since(SystemTime::now()) else {
            return false;
        };
        if left.is_zero() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(left) => {}
            _ = asked.as_mut() => return true,
            _ = jumped => {}
        }
    }
}

fn humantime(t: SystemTime) -> String {
    match t.duration_since(SystemTime::now()) {
        Ok(d) => format!("in {}s", d.as_secs()),
        Err(e) => format!("{}s ago", e.duration().as_secs()),
    }
}
