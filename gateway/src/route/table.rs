//! The route table: an immutable snapshot of base domains and apps, rebuilt on change and
//! published through `ArcSwap` so the hot path reads it without a lock.

use super::name::{self, Mode, NameError, Readings};
use crate::http::stats::AppStats;
use crate::upstream::balancer::Instance;
use gatehouse_config::{AppConfig, AppMode, HealthCheckConfig, ProxyProtocolVersion};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// What a source (static config, the dev demo, later the VPC and the store) says about an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSpec {
    /// The app id (already valid).
    pub id: String,
    /// Port when the name has none.
    pub default_port: u16,
    /// Allowed ports; empty = any.
    pub ports: Vec<u16>,
    /// Connection cap; 0 = none.
    pub max_connections: u32,
    /// PROXY header to send to instances.
    pub proxy_protocol: Option<ProxyProtocolVersion>,
    /// After-TLS handling.
    pub mode: AppMode,
    /// Instance addresses.
    pub instances: Vec<IpAddr>,
    /// Active health checks.
    pub health_check: Option<HealthCheckConfig>,
}

impl AppSpec {
    /// Whether the app declared `port` (its default port or one of `ports`): only failures on
    /// declared ports count against an instance's health.
    pub fn declares(&self, port: u16) -> bool {
        port == self.default_port || self.ports.contains(&port)
    }

    /// A tcp-mode app with no cap, no port restriction and no PROXY header.
    pub fn new(id: impl Into<String>, default_port: u16, instances: Vec<IpAddr>) -> AppSpec {
        AppSpec {
            id: id.into(),
            default_port,
            ports: Vec::new(),
            max_connections: 0,
            proxy_protocol: None,
            mode: AppMode::Tcp,
            instances,
            health_check: None,
        }
    }
}

impl From<&AppConfig> for AppSpec {
    fn from(c: &AppConfig) -> Self {
        AppSpec {
            id: c.id.clone(),
            default_port: c.default_port,
            ports: c.ports.clone(),
            max_connections: c.max_connections,
            proxy_protocol: c.proxy_protocol,
            mode: c.mode,
            health_check: c.health_check.clone(),
            instances: c.instances.iter().map(|i| i.address).collect(),
        }
    }
}

/// An app as the data plane sees it.
#[derive(Debug)]
pub struct App {
    /// The spec it was built from.
    pub spec: AppSpec,
    /// Instances with their shared load and health.
    pub instances: Box<[Arc<Instance>]>,
    /// Live connections, shared across table rebuilds.
    active: Arc<AtomicU32>,
    /// Request statistics of the `http` mode, shared across table rebuilds.
    pub http_stats: Arc<AppStats>,
}

impl App {
    /// Takes a connection slot, or `None` when the app is at `max_connections`.
    pub fn admit(self: &Arc<Self>) -> Option<AppSlot> {
        let n = self.active.fetch_add(1, Ordering::Relaxed);
        let cap = self.spec.max_connections;
        if cap != 0 && n >= cap {
            self.active.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(AppSlot(self.active.clone()))
    }

    /// Live connections.
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }
}

/// One of an app's connection slots, given back on drop.
#[derive(Debug)]
pub struct AppSlot(Arc<AtomicU32>);

impl Drop for AppSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where one connection goes.
#[derive(Debug, Clone)]
pub struct Route {
    /// The app.
    pub app: Arc<App>,
    /// The instance port.
    pub port: u16,
    /// Terminate, passthrough or terminate-with-h2.
    pub mode: Mode,
}

/// Why a name does not route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The name is under a base domain but breaks the grammar.
    #[error("{0}")]
    Name(#[from] NameError),
    /// No app has that id.
    #[error("no app {0:?}")]
    UnknownApp(String),
    /// The app does not allow the port the name asks for.
    #[error("app {app:?} does not allow port {port}")]
    PortNotAllowed {
        /// App id.
        app: String,
        /// Requested port.
        port: u16,
    },
    /// A custom domain could not be mapped.
    #[error("custom domain: {0}")]
    CustomDomain(#[from] super::custom_domain::CustomDomainError),
}

/// Why a table could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// Two sources declared the same app id.
    #[error("app {0:?} is declared twice")]
    Duplicate(String),
    /// `x` and `xs`/`xg` would both exist.
    #[error("apps {0:?} and {1:?} make names ambiguous (flag suffix)")]
    Ambiguous(String, String),
}

/// The immutable snapshot.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Base domains, lower-case, longest first.
    bases: Vec<Box<str>>,
    apps: HashMap<Box<str>, Arc<App>>,
}

impl RouteTable {
    /// Builds a table. Load counters and health of apps and instances present in `previous`
    /// carry over, so a rebuild never resets the balancer or the connection caps.
    pub fn build(
        base_domains: &[String],
        specs: Vec<AppSpec>,
        previous: Option<&RouteTable>,
    ) -> Result<RouteTable, BuildError> {
        let mut bases: Vec<Box<str>> = base_domains
            .iter()
            .map(|b| b.to_ascii_lowercase().into())
            .collect();
        bases.sort_by_key(|b| std::cmp::Reverse(b.len()));
        let mut apps = HashMap::with_capacity(specs.len());
        for spec in specs {
            let old = previous.and_then(|p| p.apps.get(spec.id.as_str()));
            let instances = spec
                .instances
                .iter()
                .map(|addr| {
                    old.and_then(|o| o.instances.iter().find(|i| i.addr == *addr).cloned())
                        .unwrap_or_else(|| Arc::new(Instance::new(*addr)))
                })
                .collect();
            let active = old.map(|o| o.active.clone()).unwrap_or_default();
            let http_stats = old.map(|o| o.http_stats.clone()).unwrap_or_default();
            let id: Box<str> = spec.id.as_str().into();
            let app = Arc::new(App {
                spec,
                instances,
                active,
                http_stats,
            });
            if apps.insert(id.clone(), app).is_some() {
                return Err(BuildError::Duplicate(id.into()));
            }
        }
        for id in apps.keys() {
            if let Some(stem) = id.strip_suffix(['s', 'g']) {
                if apps.contains_key(stem) {
                    return Err(BuildError::Ambiguous(stem.into(), id.to_string()));
                }
            }
        }
        Ok(RouteTable { bases, apps })
    }

    /// Routes a lower-case SNI under a base domain. `None`: the name is under no base domain
    /// (a custom domain, resolved by [`super::custom_domain`]).
    pub fn route_name(&self, sni: &str) -> Option<Result<Route, RouteError>> {
        let label = match name::app_label(sni, &self.bases)? {
            Ok(l) => l,
            Err(e) => return Some(Err(e.into())),
        };
        Some(
            name::parse_label(label)
                .map_err(RouteError::from)
                .and_then(|r| match r {
                    Readings::One(r) => self.route(r.app, r.port, r.mode),
                    Readings::Two(whole, flagged) => match self.apps.contains_key(whole.app) {
                        true => self.route(whole.app, whole.port, whole.mode),
                        false => self.route(flagged.app, flagged.port, flagged.mode),
                    },
                }),
        )
    }

    /// A route to `app` on `port` (or its default port) in `mode`.
    pub fn route(&self, app: &str, port: Option<u16>, mode: Mode) -> Result<Route, RouteError> {
        let app = self
            .apps
            .get(app)
            .ok_or_else(|| RouteError::UnknownApp(app.to_owned()))?;
        let port = port.unwrap_or(app.spec.default_port);
        if !app.spec.ports.is_empty() && !app.spec.ports.contains(&port) {
            return Err(RouteError::PortNotAllowed {
                app: app.spec.id.clone(),
                port,
            });
        }
        Ok(Route {
            app: app.clone(),
            port,
            mode,
        })
    }

    /// The app with this id.
    pub fn app(&self, id: &str) -> Option<&Arc<App>> {
        self.apps.get(id)
    }

    /// Every app, in no particular order.
    pub fn apps(&self) -> impl Iterator<Item = &Arc<App>> {
        self.apps.values()
    }

    /// Number of apps.
    pub fn len(&self) -> usize {
        self.apps.len()
    }

    /// Whether the table has no app.
    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn spec(id: &str, instances: &[[u8; 4]]) -> AppSpec {
        AppSpec::new(id, 80, instances.iter().map(|a| IpAddr::from(*a)).collect())
    }

    fn table(specs: Vec<AppSpec>) -> RouteTable {
        RouteTable::build(&["gw.test".into(), "Other.Test".into()], specs, None).unwrap()
    }

    #[test]
    fn routes_by_grammar() {
        let mut ssh = spec("ssh", &[[10, 0, 0, 9]]);
        ssh.ports = vec![22];
        ssh.default_port = 22;
        let t = table(vec![spec("web", &[[10, 0, 0, 1]]), spec("demos", &[]), ssh]);
        let r = t.route_name("web.gw.test").unwrap().unwrap();
        assert_eq!(
            (&*r.app.spec.id, r.port, r.mode),
            ("web", 80, Mode::Terminate)
        );
        let r = t.route_name("web-8443s.other.test").unwrap().unwrap();
        assert_eq!((r.port, r.mode), (8443, Mode::Passthrough));
        let r = t.route_name("webg.gw.test").unwrap().unwrap();
        assert_eq!((&*r.app.spec.id, r.mode), ("web", Mode::TerminateH2));
        let r = t.route_name("demos.gw.test").unwrap().unwrap();
        assert_eq!((&*r.app.spec.id, r.mode), ("demos", Mode::Terminate));
        assert_eq!(
            t.route_name("ssh-2222.gw.test").unwrap().unwrap_err(),
            RouteError::PortNotAllowed {
                app: "ssh".into(),
                port: 2222
            }
        );
        assert_eq!(t.route_name("ssh.gw.test").unwrap().unwrap().port, 22);
        assert_eq!(
            t.route_name("nope.gw.test").unwrap().unwrap_err(),
            RouteError::UnknownApp("nope".into())
        );
        assert!(t.route_name("example.com").is_none());
    }

    #[test]
    fn ambiguous_and_duplicate_apps_are_refused() {
        let bases = ["gw.test".to_string()];
        assert_eq!(
            RouteTable::build(&bases, vec![spec("a", &[]), spec("ag", &[])], None).unwrap_err(),
            BuildError::Ambiguous("a".into(), "ag".into())
        );
        assert_eq!(
            RouteTable::build(&bases, vec![spec("a", &[]), spec("a", &[])], None).unwrap_err(),
            BuildError::Duplicate("a".into())
        );
    }

    #[test]
    fn rebuild_keeps_load_and_caps() {
        let mut web = spec("web", &[[10, 0, 0, 1], [10, 0, 0, 2]]);
        web.max_connections = 1;
        let t1 = table(vec![web.clone()]);
        let app1 = t1.app("web").unwrap().clone();
        let slot = app1.admit().unwrap();
        let _load = crate::upstream::balancer::Load::start(app1.instances[1].clone());
        web.instances.push(IpAddr::from([10, 0, 0, 3]));
        let t2 = RouteTable::build(&["gw.test".into()], vec![web], Some(&t1)).unwrap();
        let app2 = t2.app("web").unwrap();
        assert!(app2.admit().is_none(), "cap shared across rebuilds");
        assert_eq!(app2.instances[1].active(), 1, "instance load carried over");
        assert_eq!(app2.instances[2].active(), 0);
        drop(slot);
        assert!(app2.admit().is_some());
    }
}
