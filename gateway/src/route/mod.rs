//! Routing: from an SNI to an app, a port and a mode.
//!
//! [`Routes`] holds the current [`table::RouteTable`] snapshot (`ArcSwap`, lock-free reads) and
//! the custom-domain resolver. The static apps (config, the dev demo) are kept; run-time
//! sources (the VPC) set their instances per app with [`Routes::set_instances`], which
//! rebuilds the table from both and publishes it (load and health carry over).

pub mod custom_domain;
pub mod name;
pub mod table;

use arc_swap::ArcSwap;
use custom_domain::CustomDomains;
pub use name::Mode;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
pub use table::{App, AppSlot, AppSpec, BuildError, Route, RouteError, RouteTable};

/// Instances a run-time source adds, per app id.
pub type SourceInstances = BTreeMap<String, Vec<IpAddr>>;

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
    apps: Vec<AppSpec>,
    /// Per source name: its instances per app.
    dynamic: BTreeMap<&'static str, SourceInstances>,
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
                apps,
                dynamic: BTreeMap::new(),
            }),
        })
    }

    /// The current snapshot.
    pub fn table(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    /// Replaces what `source` says (instances per app id, appended to the app's static
    /// ones; ids with no app are ignored) and publishes the rebuilt table. Connections
    /// already routed keep their snapshot.
    pub fn set_instances(&self, source: &'static str, instances: SourceInstances) {
        let mut s = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        if s.dynamic.get(source) == Some(&instances) {
            return;
        }
        s.dynamic.insert(source, instances);
        let specs = s
            .apps
            .iter()
            .map(|app| {
                let mut app = app.clone();
                for added in s.dynamic.values().filter_map(|d| d.get(&app.id)) {
                    for ip in added {
                        if !app.instances.contains(ip) {
                            app.instances.push(*ip);
                        }
                    }
                }
                app
            })
            .collect();
        let previous = self.table.load();
        match RouteTable::build(&s.base_domains, specs, Some(&previous)) {
            Ok(t) => self.table.store(Arc::new(t)),
            // The static apps built once already: adding instances cannot break the table.
            Err(e) => tracing::error!("routes from {source} not published: {e}"),
        }
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
