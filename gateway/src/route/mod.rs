//! Routing: from an SNI to an app, a port and a mode.
//!
//! [`Routes`] holds the current [`table::RouteTable`] snapshot (`ArcSwap`, lock-free reads) and
//! the custom-domain resolver. Sources (static config, the dev demo; later the VPC and the
//! store) build a new table and [`Routes::publish`] it.

pub mod custom_domain;
pub mod name;
pub mod table;

use arc_swap::ArcSwap;
use custom_domain::CustomDomains;
pub use name::Mode;
use std::sync::Arc;
pub use table::{App, AppSlot, AppSpec, Route, RouteError, RouteTable};

/// The live routes.
#[derive(Debug)]
pub struct Routes {
    table: ArcSwap<RouteTable>,
    custom: CustomDomains,
}

impl Routes {
    /// Starts with `table`.
    pub fn new(table: RouteTable, custom: CustomDomains) -> Routes {
        Routes {
            table: ArcSwap::from_pointee(table),
            custom,
        }
    }

    /// The current snapshot.
    pub fn table(&self) -> Arc<RouteTable> {
        self.table.load_full()
    }

    /// Replaces the snapshot; connections already routed keep theirs.
    pub fn publish(&self, table: RouteTable) {
        self.table.store(Arc::new(table));
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
