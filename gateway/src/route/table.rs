//! The route table: an immutable snapshot of base domains and apps, rebuilt on change and
//! published through `ArcSwap` so the hot path reads it without a lock.

use super::name::{self, Mode, NameError, Readings};
use super::shards::AppMap;
use crate::http::stats::AppStats;
use crate::upstream::balancer::Instance;
use gatehouse_config::{AppConfig, AppMode, HealthCheckConfig, ProxyProtocolVersion, Reach};
use std::collections::BTreeSet;
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
    /// Ports a name may ask for besides `default_port`.
    pub ports: Vec<u16>,
    /// How names may reach the app.
    pub reach: Vec<Reach>,
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
    /// Whether the encrypted channel is served on its names (`http` mode).
    pub encrypted_channel: bool,
    /// Where the app was declared.
    pub origin: Origin,
}

/// Where an app was declared: what may change it at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// `[[apps]]` in the config file: changed by editing the file and reloading.
    Config,
    /// Created through the admin API: stored, changed through the API.
    Api,
    /// Built in (the development demo app).
    Builtin,
}

impl AppSpec {
    /// Whether the app declared `port` (its default port or one of `ports`): only failures on
    /// declared ports count against an instance's health.
    pub fn declares(&self, port: u16) -> bool {
        port == self.default_port || self.ports.contains(&port)
    }

    /// Whether a name in `mode` may reach the app.
    pub fn reachable_by(&self, mode: Mode) -> bool {
        let reach = match mode {
            Mode::Terminate => Reach::Terminate,
            Mode::Passthrough => Reach::Passthrough,
            Mode::TerminateH2 => Reach::H2,
        };
        self.reach.contains(&reach)
    }

    /// A tcp-mode app with no cap, only its default port, every mode, no PROXY header.
    pub fn new(id: impl Into<String>, default_port: u16, instances: Vec<IpAddr>) -> AppSpec {
        AppSpec {
            id: id.into(),
            default_port,
            ports: Vec::new(),
            reach: Reach::defaults(AppMode::Tcp),
            max_connections: 0,
            proxy_protocol: None,
            mode: AppMode::Tcp,
            instances,
            health_check: None,
            encrypted_channel: false,
            origin: Origin::Builtin,
        }
    }
}

impl From<&AppConfig> for AppSpec {
    fn from(c: &AppConfig) -> Self {
        AppSpec {
            id: c.id.clone(),
            default_port: c.default_port,
            ports: c.ports.clone(),
            reach: c
                .reachable_by
                .clone()
                .unwrap_or_else(|| Reach::defaults(c.mode)),
            max_connections: c.max_connections,
            proxy_protocol: c.proxy_protocol,
            mode: c.mode,
            health_check: c.health_check.clone(),
            instances: c.instances.iter().map(|i| i.address).collect(),
            encrypted_channel: c.encrypted_channel,
            origin: Origin::Config,
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
    active: Arc<Slots>,
    /// Request statistics of the `http` mode, shared across table rebuilds.
    pub http_stats: Arc<AppStats>,
}

/// An app's live connections: the total, and per client address when the app is capped.
#[derive(Debug, Default)]
pub struct Slots {
    total: AtomicU32,
    by_source: crate::admission::SourceCounts,
}

/// Why an app refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// Every slot (`max_connections`) is held.
    App(u32),
    /// This client address holds its share of the slots.
    Share(u32),
}

impl App {
    /// Takes a connection slot for a client at `source`: refused when the app is at
    /// `max_connections`, or when that source already holds `share` of them (rounded up, at
    /// least one). Uncapped apps count only the total.
    pub fn admit(self: &Arc<Self>, source: IpAddr, share: f64) -> Result<AppSlot, Full> {
        let cap = self.spec.max_connections;
        let n = self.active.total.fetch_add(1, Ordering::Relaxed);
        let mut slot = AppSlot {
            slots: self.active.clone(),
            source: None,
        };
        if cap == 0 {
            return Ok(slot);
        }
        if n >= cap {
            return Err(Full::App(cap)); // the slot gives the count back
        }
        let per_source = ((f64::from(cap) * share).ceil() as u32).clamp(1, cap);
        let key = crate::admission::source_key(source);
        if !self.active.by_source.take(key, per_source) {
            return Err(Full::Share(per_source));
        }
        slot.source = Some(key);
        Ok(slot)
    }

    /// Live connections.
    pub fn active(&self) -> u32 {
        self.active.total.load(Ordering::Relaxed)
    }
}

/// One of an app's connection slots, given back on drop.
#[derive(Debug)]
pub struct AppSlot {
    slots: Arc<Slots>,
    source: Option<IpAddr>,
}

impl Drop for AppSlot {
    fn drop(&mut self) {
        self.slots.total.fetch_sub(1, Ordering::Relaxed);
        if let Some(source) = self.source {
            self.slots.by_source.give_back(source);
        }
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
    /// The app may not be reached this way (`reachable_by`).
    #[error("app {app:?} may not be reached by {mode} (its reachable_by)")]
    ModeNotAllowed {
        /// App id.
        app: String,
        /// The mode the name asked for.
        mode: &'static str,
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
    apps: AppMap,
}

/// The instances an operator drained: (app id, address).
type Drained = BTreeSet<(String, IpAddr)>;

/// The data plane's app for `spec`, sharing the load counters, health and statistics of `old`
/// (the same app in the snapshot before), with the `drained` instances marked.
fn make_app(spec: AppSpec, old: Option<&Arc<App>>, drained: &Drained) -> Arc<App> {
    let instances = spec
        .instances
        .iter()
        .map(|addr| {
            let instance = old
                .and_then(|o| o.instances.iter().find(|i| i.addr == *addr).cloned())
                .unwrap_or_else(|| Arc::new(Instance::new(*addr)));
            // (the set's key is owned: no allocation for the common case of no drains)
            instance
                .set_drained(!drained.is_empty() && drained.contains(&(spec.id.clone(), *addr)));
            instance
        })
        .collect();
    Arc::new(App {
        active: old.map(|o| o.active.clone()).unwrap_or_default(),
        http_stats: old.map(|o| o.http_stats.clone()).unwrap_or_default(),
        spec,
        instances,
    })
}

impl RouteTable {
    /// Builds a table. Load counters and health of apps and instances present in `previous`
    /// carry over, so a rebuild never resets the balancer or the connection caps.
    pub fn build(
        base_domains: &[String],
        specs: Vec<AppSpec>,
        previous: Option<&RouteTable>,
    ) -> Result<RouteTable, BuildError> {
        RouteTable::build_draining(base_domains, specs, previous, &Default::default())
    }

    /// [`RouteTable::build`], with the `drained` instances (app id, address) marked: the
    /// balancer gives them no new connection or request, and the mark is shared with older
    /// snapshots (connections already open see it too).
    pub fn build_draining(
        base_domains: &[String],
        specs: Vec<AppSpec>,
        previous: Option<&RouteTable>,
        drained: &Drained,
    ) -> Result<RouteTable, BuildError> {
        let mut bases: Vec<Box<str>> = base_domains
            .iter()
            .map(|b| b.to_ascii_lowercase().into())
            .collect();
        bases.sort_by_key(|b| std::cmp::Reverse(b.len()));
        let mut apps = AppMap::with_capacity(specs.len());
        for spec in specs {
            let old = previous.and_then(|p| p.apps.get(spec.id.as_str()));
            let id: Arc<str> = spec.id.as_str().into();
            if apps
                .insert(id.clone(), make_app(spec, old, drained))
                .is_some()
            {
                return Err(BuildError::Duplicate(id.to_string()));
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

    /// This table with the apps of `upserts` rebuilt or added and the ids of `removed` gone,
    /// everything else shared: the cost is that of the changed apps (each copies its shard of
    /// the map), not of the table. Load and health carry over as in [`RouteTable::build`];
    /// `drained` marks the rebuilt apps' instances.
    pub fn patch(
        &self,
        upserts: Vec<AppSpec>,
        removed: &[String],
        drained: &Drained,
    ) -> Result<RouteTable, BuildError> {
        let mut apps = self.apps.clone();
        for id in removed {
            apps.remove(id);
        }
        let mut changed = std::collections::HashSet::with_capacity(upserts.len());
        for spec in upserts {
            let id: Arc<str> = spec.id.as_str().into();
            if !changed.insert(id.clone()) {
                return Err(BuildError::Duplicate(id.to_string()));
            }
            apps.insert(id.clone(), make_app(spec, self.apps.get(&id), drained));
        }
        for id in &changed {
            if let Some(stem) = id.strip_suffix(['s', 'g']).filter(|s| apps.contains_key(s)) {
                return Err(BuildError::Ambiguous(stem.into(), id.to_string()));
            }
            for flag in ["s", "g"] {
                let flagged = format!("{id}{flag}");
                if apps.contains_key(&flagged) {
                    return Err(BuildError::Ambiguous(id.to_string(), flagged));
                }
            }
        }
        Ok(RouteTable {
            bases: self.bases.clone(),
            apps,
        })
    }

    /// Whether `sni` (lower case) is the attestation name of a base domain
    /// (`attest.<base>`, [`gatehouse_config::ATTESTATION_LABEL`]).
    pub fn is_attestation_name(&self, sni: &str) -> bool {
        sni.split_once('.').is_some_and(|(label, base)| {
            label == gatehouse_config::ATTESTATION_LABEL && self.bases.iter().any(|b| &**b == base)
        })
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
        if !app.spec.declares(port) {
            return Err(RouteError::PortNotAllowed {
                app: app.spec.id.clone(),
                port,
            });
        }
        if !app.spec.reachable_by(mode) {
            return Err(RouteError::ModeNotAllowed {
                app: app.spec.id.clone(),
                mode: match mode {
                    Mode::Terminate => "terminate",
                    Mode::Passthrough => "passthrough",
                    Mode::TerminateH2 => "h2",
                },
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

    /// How many of the app map's 256 shards this table shares with `other` (a patched
    /// table shares every shard its changes did not touch).
    pub fn shards_shared_with(&self, other: &RouteTable) -> usize {
        self.apps.shared_with(&other.apps)
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
        let mut web = spec("web", &[[10, 0, 0, 1]]);
        web.ports = vec![80, 8443];
        let t = table(vec![web, spec("demos", &[]), ssh]);
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
    fn exposure_only_declared_ports_and_modes_are_reachable() {
        let mut web = spec("web", &[[10, 0, 0, 1]]);
        web.mode = AppMode::Http;
        web.reach = Reach::defaults(AppMode::Http);
        let t = table(vec![web, spec("shell", &[[10, 0, 0, 2]])]);
        // only the default port without a `ports` list
        assert_eq!(
            t.route_name("web-22.gw.test").unwrap().unwrap_err(),
            RouteError::PortNotAllowed {
                app: "web".into(),
                port: 22
            }
        );
        assert_eq!(t.route_name("web-80.gw.test").unwrap().unwrap().port, 80);
        // an http app is not reached as raw TLS unless it says so
        assert_eq!(
            t.route_name("webs.gw.test").unwrap().unwrap_err(),
            RouteError::ModeNotAllowed {
                app: "web".into(),
                mode: "passthrough"
            }
        );
        assert_eq!(
            t.route("web", None, Mode::Passthrough)
                .unwrap_err()
                .to_string(),
            "app \"web\" may not be reached by passthrough (its reachable_by)"
        );
        assert!(t.route_name("webg.gw.test").unwrap().is_ok());
        assert!(
            t.route_name("shells.gw.test").unwrap().is_ok(),
            "tcp apps keep all three"
        );
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
        let client = IpAddr::from([192, 0, 2, 1]);
        let slot = app1.admit(client, 1.0).unwrap();
        let _load = crate::upstream::balancer::Load::start(app1.instances[1].clone());
        web.instances.push(IpAddr::from([10, 0, 0, 3]));
        let t2 = RouteTable::build(&["gw.test".into()], vec![web], Some(&t1)).unwrap();
        let app2 = t2.app("web").unwrap();
        assert_eq!(
            app2.admit(client, 1.0).unwrap_err(),
            Full::App(1),
            "cap shared across rebuilds"
        );
        assert_eq!(app2.instances[1].active(), 1, "instance load carried over");
        assert_eq!(app2.instances[2].active(), 0);
        drop(slot);
        assert!(app2.admit(client, 1.0).is_ok());
    }

    #[test]
    fn scale_patch_rebuilds_the_changed_app_and_shares_the_rest() {
        let specs: Vec<AppSpec> = (0..1000u32)
            .map(|i| spec(&format!("app{i}"), &[[10, 0, (i >> 8) as u8, i as u8]]))
            .collect();
        let t1 = table(specs);
        let before = t1.app("app7").unwrap().clone();
        let _load = crate::upstream::balancer::Load::start(before.instances[0].clone());
        let mut changed = spec("app7", &[[10, 0, 0, 7], [10, 9, 9, 9]]);
        changed.max_connections = 3;
        let t2 = t1
            .patch(
                vec![changed, spec("new", &[])],
                &["app8".into()],
                &Default::default(),
            )
            .unwrap();
        assert_eq!(t2.len(), 1000, "one added, one removed");
        assert!(t2.app("app8").is_none() && t2.app("new").is_some());
        let after = t2.app("app7").unwrap();
        assert_eq!(after.spec.max_connections, 3);
        assert_eq!(
            after.instances[0].active(),
            1,
            "the kept instance's load carried over"
        );
        assert!(Arc::ptr_eq(&before.instances[0], &after.instances[0]));
        assert!(
            Arc::ptr_eq(t1.app("app500").unwrap(), t2.app("app500").unwrap()),
            "an untouched app is the same object"
        );
        // app7, app8 and new live in at most three shards; the other 253+ are shared.
        assert!(
            t2.shards_shared_with(&t1) >= 253,
            "{}",
            t2.shards_shared_with(&t1)
        );
        assert!(
            t1.app("app8").is_some() && t1.app("new").is_none(),
            "the old snapshot is intact"
        );
        assert_eq!(t1.app("app7").unwrap().spec.max_connections, 0);
    }

    #[test]
    fn scale_patch_refuses_what_a_build_refuses() {
        let t = table(vec![spec("web", &[]), spec("dbg", &[])]);
        let none = Drained::default();
        assert_eq!(
            t.patch(vec![spec("webs", &[])], &[], &none).unwrap_err(),
            BuildError::Ambiguous("web".into(), "webs".into())
        );
        assert_eq!(
            t.patch(vec![spec("db", &[])], &[], &none).unwrap_err(),
            BuildError::Ambiguous("db".into(), "dbg".into())
        );
        assert_eq!(
            t.patch(vec![spec("x", &[]), spec("x", &[])], &[], &none)
                .unwrap_err(),
            BuildError::Duplicate("x".into())
        );
        // removing the flagged one makes room
        assert!(t
            .patch(vec![spec("db", &[])], &["dbg".into()], &none)
            .is_ok());
    }

    #[test]
    fn fairness_one_client_holds_at_most_its_share_of_an_apps_slots() {
        let mut web = spec("web", &[[10, 0, 0, 1]]);
        web.max_connections = 4;
        let t = table(vec![web]);
        let app = t.app("web").unwrap();
        let a = IpAddr::from([192, 0, 2, 1]);
        let held: Vec<_> = (0..2).map(|_| app.admit(a, 0.5).unwrap()).collect();
        assert_eq!(app.admit(a, 0.5).unwrap_err(), Full::Share(2));
        let b = IpAddr::from([192, 0, 2, 2]);
        let _b = app.admit(b, 0.5).unwrap();
        assert_eq!(app.active(), 3, "refusals give their count back");
        drop(held);
        assert!(app.admit(a, 0.5).is_ok());
    }
}
