//! Routing: from an SNI to an app, a port and a mode.
//!
//! [`Routes`] holds the current [`table::RouteTable`] snapshot (`ArcSwap`, lock-free reads) and
//! the custom-domain resolver. It keeps what the table is built from: the static apps (config
//! file, the dev demo; a reload replaces them), the apps created through the admin API, the
//! instances run-time sources (the VPC) add per app, and the instances an operator drained.
//! Each change rebuilds the table from all of them and publishes it (load and health carry
//! over); a change that would not build is refused and changes nothing.

pub mod custom_domain;
pub mod name;
pub mod table;

use arc_swap::ArcSwap;
use custom_domain::CustomDomains;
pub use name::Mode;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
pub use table::{App, AppSlot, AppSpec, BuildError, Origin, Route, RouteError, RouteTable};

/// Instances a run-time source adds, per app id.
pub type SourceInstances = BTreeMap<String, Vec<IpAddr>>;

/// Instances an operator drained: (app id, address).
pub type Drained = BTreeSet<(String, IpAddr)>;

/// The live routes.
#[derive(Debug)]
pub struct Routes {
    table: ArcSwap<RouteTable>,
    custom: CustomDomains,
    sources: Mutex<Sources>,
}

/// What the table is built from.
#[derive(Debug)]
struct Sources {
    base_domains: Vec<String>,
    /// The config file's apps and the built-in ones (a reload replaces them).
    static_apps: Vec<AppSpec>,
    /// Apps created through the admin API.
    api_apps: Vec<AppSpec>,
    /// Per source name: its instances per app.
    dynamic: BTreeMap<&'static str, SourceInstances>,
    drained: Drained,
}

impl Sources {
    /// Every app with the run-time sources' instances appended.
    fn specs(&self) -> Vec<AppSpec> {
        self.static_apps
            .iter()
            .chain(&self.api_apps)
            .map(|app| {
                let mut app = app.clone();
                for added in self.dynamic.values().filter_map(|d| d.get(&app.id)) {
                    for ip in added {
                        if !app.instances.contains(ip) {
                            app.instances.push(*ip);
                        }
                    }
                }
                app
            })
            .collect()
    }
}

impl Routes {
    /// Routes for `apps` under `base_domains`.
    pub fn new(
        base_domains: Vec<String>,
        apps: Vec<AppSpec>,
        custom: CustomDomains,
    ) -> Result<Routes, BuildError> {
        let table = RouteTable::build(&base_domains, apps.clone(), None)?;
        Ok(Routes {
            table: ArcSwap::from_pointee(table),
            custom,
            sources: Mutex::new(Sources {
                base_domains,
                static_apps: apps,
                api_apps: Vec::new(),
                dynamic: BTreeMap::new(),
                drained: Drained::new(),
            }),
        })
    }

    /// The current snapshot.
    pub fn table(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    /// The custom-domain resolver.
    pub fn custom_domains(&self) -> &CustomDomains {
        &self.custom
    }

    /// Applies `change` to the sources and publishes the rebuilt table; when the table does
    /// not build, nothing changes and the error says why. Connections already routed keep
    /// their snapshot.
    fn change(&self, change: impl FnOnce(&mut Sources)) -> Result<(), BuildError> {
        let mut s = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = Sources {
            base_domains: s.base_domains.clone(),
            static_apps: s.static_apps.clone(),
            api_apps: s.api_apps.clone(),
            dynamic: s.dynamic.clone(),
            drained: s.drained.clone(),
        };
        change(&mut next);
        let previous = self.table.load();
        let table = RouteTable::build_draining(
            &next.base_domains,
            next.specs(),
            Some(&previous),
            &next.drained,
        )?;
        self.table.store(Arc::new(table));
        *s = next;
        Ok(())
    }

    /// Replaces what `source` says (instances per app id, appended to the app's static
    /// ones; ids with no app are ignored) and publishes the rebuilt table.
    pub fn set_instances(&self, source: &'static str, instances: SourceInstances) {
        {
            let s = self.sources.lock().unwrap_or_else(|p| p.into_inner());
            if s.dynamic.get(source) == Some(&instances) {
                return;
            }
        }
        // The apps built once already: adding instances cannot break the table.
        if let Err(e) = self.change(|s| {
            s.dynamic.insert(source, instances);
        }) {
            tracing::error!("routes from {source} not published: {e}");
        }
    }

    /// Replaces the base domains and the static apps (a reload).
    pub fn set_static(
        &self,
        base_domains: Vec<String>,
        apps: Vec<AppSpec>,
    ) -> Result<(), BuildError> {
        self.change(|s| {
            s.base_domains = base_domains;
            s.static_apps = apps;
        })
    }

    /// Replaces the apps created through the admin API.
    pub fn set_api_apps(&self, apps: Vec<AppSpec>) -> Result<(), BuildError> {
        self.change(|s| s.api_apps = apps)
    }

    /// Replaces the set of drained instances.
    pub fn set_drained(&self, drained: Drained) {
        if let Err(e) = self.change(|s| s.drained = drained) {
            tracing::error!("drained instances not published: {e}");
        }
    }

    /// The instances drained now.
    pub fn drained(&self) -> Drained {
        self.sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drained
            .clone()
    }

    /// The apps created through the admin API, as published.
    pub fn api_apps(&self) -> Vec<AppSpec> {
        self.sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .api_apps
            .clone()
    }

    /// The static apps (config file and built-in) as declared, without run-time instances.
    pub fn static_apps(&self) -> Vec<AppSpec> {
        self.sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .static_apps
            .clone()
    }

    /// Routes a lower-case SNI: base-domain names without I/O, custom domains through DNS.
    pub async fn resolve(&self, sni: &str) -> Result<Route, RouteError> {
        if let Some(r) = self.table.load().route_name(sni) {
            return r;
        }
        // Boxed: the cache lookup's future is ~1.7 KB, and inlined it would size every
        // connection's task for this rare path.
        let target = Box::pin(self.custom.resolve(sni)).await?;
        self.table
            .load()
            .route(&target.app, target.port, target.mode)
    }
}
