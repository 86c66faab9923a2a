//! Gatehouse's control plane: what lets an operator change a running gateway, and see it.
//!
//! - [`server`]: the admin listener. Bearer tokens with a scope each ([`tokens`]), an audit
//!   line for every change, the JSON API of [`api`] (described by `openapi.json`), the
//!   dashboard ([`dashboard`]), `/metrics` and `/healthz`.
//! - [`records`]: apps created and instances drained through the API, sealed in the store; a
//!   watch republishes them, so with etcd a change made on one node applies on every node.
//! - [`reload`]: re-reading the config file (SIGHUP, `POST /v1/reload`): all or nothing.
//! - [`admission`]: the operator's decision on new apps and joining app CVMs.
//!
//! The control plane changes the data plane only through its published snapshots (routes,
//! certificates, tunables): a change never touches an established connection.

pub mod admission;
pub mod api;
pub mod ct;
pub mod dashboard;
pub mod on_demand;
pub mod records;
pub mod reload;
pub mod server;
pub mod tokens;
pub mod views;
pub mod vpc_reach;

use arc_swap::{ArcSwap, ArcSwapOption};
use gatehouse::conn::Shared;
use gatehouse_certbot::manager::CertManager;
use gatehouse_config::Config;
use gatehouse_store::Store;
use gatehouse_vpc::node::VpcNode;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

/// Why the control plane could not do something.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A token file could not be used.
    #[error("admin token {0}")]
    Token(String),
    /// A setting could not be used.
    #[error("{0}")]
    Config(String),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] gatehouse_store::StoreError),
    /// Sealing a record failed.
    #[error("sealing: {0}")]
    Seal(#[from] gatehouse_store::SealError),
    /// A record could not be encoded.
    #[error("record: {0}")]
    Record(String),
}

/// The ACME side the API shows and drives.
#[derive(Debug, Clone)]
pub struct AcmeHandle {
    /// Renewals and their counters.
    pub manager: Arc<CertManager>,
    /// Each certificate target: id and names.
    pub targets: Vec<(String, Vec<String>)>,
}

/// The control plane of one gateway process.
pub struct Control {
    /// The data plane's shared state.
    pub shared: Arc<Shared>,
    tokens: ArcSwap<tokens::Tokens>,
    config: ArcSwap<Config>,
    config_path: Option<PathBuf>,
    records: OnceLock<records::Records>,
    admission: ArcSwapOption<admission::Admission>,
    acme: OnceLock<AcmeHandle>,
    vpc: OnceLock<Arc<VpcNode>>,
    cluster: OnceLock<Arc<dyn Store>>,
    listeners: OnceLock<Arc<gatehouse::app::Listeners>>,
    on_demand: OnceLock<Arc<on_demand::OnDemand>>,
    /// The custom domains this node added to ACME (from the stored records).
    domains: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// One reload (or API change of apps) at a time.
    changing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("config_path", &self.config_path)
            .finish_non_exhaustive()
    }
}

impl Control {
    /// The control plane over `shared`, started from `config` (read from `config_path`, if
    /// any: a reload reads it again), accepting `tokens`.
    pub fn new(
        shared: Arc<Shared>,
        config: Config,
        config_path: Option<PathBuf>,
        tokens: tokens::Tokens,
    ) -> Result<Control, ControlError> {
        let admission = config
            .admission
            .as_ref()
            .map(admission::Admission::new)
            .transpose()?
            .map(Arc::new);
        Ok(Control {
            shared,
            tokens: ArcSwap::from_pointee(tokens),
            config: ArcSwap::from_pointee(config),
            config_path,
            records: OnceLock::new(),
            admission: ArcSwapOption::new(admission),
            acme: OnceLock::new(),
            vpc: OnceLock::new(),
            cluster: OnceLock::new(),
            listeners: OnceLock::new(),
            on_demand: OnceLock::new(),
            domains: Default::default(),
            changing: tokio::sync::Mutex::new(()),
        })
    }

    /// Stores apps and drains in `records` (the store opens after the admin listener
    /// serves: until then changes are refused with 503).
    pub fn set_records(&self, records: records::Records) {
        let _ = self.records.set(records);
    }

    /// Shows and drives the ACME certificates; with `[acme.on_demand]` enabled, the data
    /// plane asks for certificates of custom domains at their first handshake.
    pub fn set_acme(self: &Arc<Self>, acme: AcmeHandle) {
        let _ = self.acme.set(acme);
        let config = self.config();
        if let Some(limits) = config
            .acme
            .as_ref()
            .map(|a| &a.on_demand)
            .filter(|o| o.enabled)
        {
            let gate = Arc::new(on_demand::OnDemand::new(self, limits.clone()));
            let _ = self.on_demand.set(gate.clone());
            let _ = self.shared.on_demand.set(gate);
        }
    }

    /// Shows the VPC, and asks `[admission]` before each registration.
    pub fn set_vpc(self: &Arc<Self>, vpc: Arc<VpcNode>) {
        vpc.set_admission(Arc::new(LiveAdmission(self.clone())));
        let _ = self.vpc.set(vpc);
    }

    /// Lets a reload add and remove the data plane's listeners.
    pub fn set_listeners(&self, listeners: Arc<gatehouse::app::Listeners>) {
        let _ = self.listeners.set(listeners);
    }

    /// Shows the cluster's members from this store.
    pub fn set_cluster(&self, store: Arc<dyn Store>) {
        let _ = self.cluster.set(store);
    }

    /// The config in force (the last one loaded or reloaded).
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Reads every stored record (apps, drains, custom domains, VPC reach) and publishes
    /// them: at start and when a watch of the store begins again.
    pub async fn publish_records(&self) -> Result<(), ControlError> {
        let Some(records) = self.records.get() else {
            return Ok(());
        };
        let apps = records.apps().await?;
        let specs = apps.values().map(|a| records::spec(&a.app)).collect();
        if let Err(e) = self.shared.routes.set_api_apps(specs) {
            tracing::error!("apps from the admin API not published: {e}");
        }
        self.publish_others().await
    }

    /// Reads one stored app and publishes it (or its removal): a change to one app costs the
    /// same with 10 apps stored and with 100,000 (issue 22).
    pub async fn publish_app(&self, id: &str) -> Result<(), ControlError> {
        let Some(records) = self.records.get() else {
            return Ok(());
        };
        match records.app(id).await? {
            Some(stored) => {
                if let Err(e) = self
                    .shared
                    .routes
                    .upsert_api_app(records::spec(&stored.app))
                {
                    tracing::error!("app {id:?} from the admin API not published: {e}");
                }
            }
            None => self.shared.routes.remove_api_app(id),
        }
        Ok(())
    }

    /// Publishes the stored records that are not apps: drains, custom domains (their
    /// certificate targets) and VPC reach.
    pub async fn publish_others(&self) -> Result<(), ControlError> {
        let Some(records) = self.records.get() else {
            return Ok(());
        };
        self.shared.routes.set_drained(records.drained().await?);
        if let Some(acme) = self.acme.get() {
            let wanted: std::collections::BTreeSet<String> =
                records.domains().await?.into_keys().collect();
            let held = self
                .domains
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            for gone in held.difference(&wanted) {
                acme.manager
                    .remove_target(&domain_target(&self.shared, gone).id);
            }
            for new in wanted.difference(&held) {
                acme.manager
                    .add_target(domain_target(&self.shared, new))
                    .await;
            }
            *self.domains.lock().unwrap_or_else(|p| p.into_inner()) = wanted;
        }
        self.publish_reach().await
    }

    /// Follows the store: every change to a control record (made here or on another node) is
    /// published; a change to an app publishes that app alone. Runs forever.
    pub async fn follow_records(self: Arc<Self>) {
        let Some(records) = self.records.get().cloned() else {
            return;
        };
        loop {
            let mut watch = match records.store().watch(records::PREFIX).await {
                Ok((_, w)) => w,
                Err(e) => {
                    tracing::warn!("control records: cannot watch, retrying: {e}");
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    continue;
                }
            };
            if let Err(e) = self.publish_records().await {
                tracing::warn!("control records: {e}");
            }
            while let Some(event) = watch.next().await {
                let published = match records::app_of_key(event.key()) {
                    Some(id) => self.publish_app(id).await,
                    None => self.publish_others().await,
                };
                if let Err(e) = published {
                    tracing::warn!("control records: {e}");
                }
            }
        }
    }

    /// Asks `[admission]` (if configured) about `candidate`.
    pub async fn admit(
        &self,
        candidate: &gatehouse::app_admission::Candidate,
    ) -> Result<(), String> {
        match self.admission.load_full() {
            Some(a) => gatehouse::app_admission::AdmitApps::admit(&*a, candidate).await,
            None => Ok(()),
        }
    }
}

/// The certificate target of a custom domain: TLS-ALPN-01, answered by every node.
pub fn domain_target(shared: &Shared, domain: &str) -> gatehouse_certbot::manager::Target {
    gatehouse_certbot::manager::Target::new(
        vec![domain.to_owned()],
        gatehouse_certbot::order::Solver::TlsAlpn01(shared.acme.challenges.clone()),
    )
}

/// The admission in force, as the VPC asks it (a reload may change it).
#[derive(Debug)]
struct LiveAdmission(Arc<Control>);

#[async_trait::async_trait]
impl gatehouse::app_admission::AdmitApps for LiveAdmission {
    async fn admit(&self, candidate: &gatehouse::app_admission::Candidate) -> Result<(), String> {
        self.0.admit(candidate).await
    }
}
