//! Routing: from an SNI to an app, a port and a mode.
//!
//! [`Routes`] holds the current [`table::RouteTable`] snapshot (`ArcSwap`, lock-free reads) and
//! the custom-domain resolver. It keeps what the table is built from: the static apps (config
//! file, the dev demo; a reload replaces them), the apps created through the admin API, the
//! instances run-time sources (the VPC) add per app, and the instances an operator drained.
//! A change to the base domains or the static apps rebuilds the table from all of them; any
//! other change rebuilds only the apps it touched, sharing the rest with the snapshot before
//! (`RouteTable::patch`). Load and health carry over; a change that would not build is
//! refused and changes nothing.

pub mod custom_domain;
pub mod name;
pub(crate) mod shards;
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
    /// Apps created through the admin API, by id.
    api_apps: BTreeMap<String, AppSpec>,
    /// Per source name: its instances per app.
    dynamic: BTreeMap<&'static str, SourceInstances>,
    drained: Drained,
}

impl Sources {
    /// The app `id` as declared: in the config (or built in), else through the API.
    fn declared(&self, id: &str) -> Option<&AppSpec> {
        self.static_apps
            .iter()
            .find(|a| a.id == id)
            .or_else(|| self.api_apps.get(id))
    }

    /// What the table holds for `app`: it with the run-time sources' instances appended.
    fn with_dynamic(&self, app: &AppSpec) -> AppSpec {
        let mut app = app.clone();
        for added in self.dynamic.values().filter_map(|d| d.get(&app.id)) {
            for ip in added {
                if !app.instances.contains(ip) {
                    app.instances.push(*ip);
                }
            }
        }
        app
    }

    /// Every app as the table holds it (static first: an API app with a static id is a
    /// duplicate).
    fn specs(&self) -> Vec<AppSpec> {
        self.static_apps
            .iter()
            .chain(self.api_apps.values())
            .map(|app| self.with_dynamic(app))
            .collect()
    }
}

/// The keys whose values differ between `a` and `b` (missing on one side counts), in one
/// ordered pass over both.
fn changed_keys<V: PartialEq>(a: &BTreeMap<String, V>, b: &BTreeMap<String, V>) -> Vec<String> {
    use std::cmp::Ordering::{Equal, Greater, Less};
    let (mut a, mut b) = (a.iter().peekable(), b.iter().peekable());
    let mut out = Vec::new();
    loop {
        let order = match (a.peek(), b.peek()) {
            (None, None) => return out,
            (Some(_), None) => Less,
            (None, Some(_)) => Greater,
            (Some((ka, _)), Some((kb, _))) => ka.cmp(kb),
        };
        match order {
            Less => out.extend(a.next().map(|(k, _)| k.clone())),
            Greater => out.extend(b.next().map(|(k, _)| k.clone())),
            Equal => {
                if let (Some((k, va)), Some((_, vb))) = (a.next(), b.next()) {
                    if va != vb {
                        out.push(k.clone());
                    }
                }
            }
        }
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
                api_apps: BTreeMap::new(),
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

    fn sources(&self) -> std::sync::MutexGuard<'_, Sources> {
        self.sources.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes the table rebuilt from every source (the base domains or the static apps
    /// changed). Connections already routed keep their snapshot.
    fn rebuild(&self, s: &Sources) -> Result<(), BuildError> {
        let previous = self.table.load();
        let table =
            RouteTable::build_draining(&s.base_domains, s.specs(), Some(&previous), &s.drained)?;
        self.table.store(Arc::new(table));
        Ok(())
    }

    /// Publishes the table with the apps `ids` brought in line with the sources and the rest
    /// shared: a change costs what the changed apps cost, not the table (issue 22).
    fn patch(&self, s: &Sources, ids: Vec<String>) -> Result<(), BuildError> {
        if ids.is_empty() {
            return Ok(());
        }
        let (mut upserts, mut removed) = (Vec::new(), Vec::new());
        for id in ids {
            match s.declared(&id) {
                Some(app) => upserts.push(s.with_dynamic(app)),
                None => removed.push(id),
            }
        }
        let table = self.table.load().patch(upserts, &removed, &s.drained)?;
        self.table.store(Arc::new(table));
        Ok(())
    }

    /// Replaces what `source` says (instances per app id, appended to the app's static
    /// ones; ids with no app are ignored) and publishes the apps whose instances changed.
    pub fn set_instances(&self, source: &'static str, instances: SourceInstances) {
        let mut s = self.sources();
        let empty = SourceInstances::new();
        let ids = changed_keys(s.dynamic.get(source).unwrap_or(&empty), &instances);
        let old = s.dynamic.insert(source, instances);
        // The apps built once already: adding instances cannot break the table.
        if let Err(e) = self.patch(&s, ids) {
            tracing::error!("routes from {source} not published: {e}");
            match old {
                Some(old) => s.dynamic.insert(source, old),
                None => s.dynamic.remove(source),
            };
        }
    }

    /// Replaces the base domains and the static apps (a reload): the whole table is rebuilt.
    pub fn set_static(
        &self,
        base_domains: Vec<String>,
        apps: Vec<AppSpec>,
    ) -> Result<(), BuildError> {
        let mut s = self.sources();
        let old_bases = std::mem::replace(&mut s.base_domains, base_domains);
        let old_apps = std::mem::replace(&mut s.static_apps, apps);
        self.rebuild(&s).inspect_err(|_| {
            s.base_domains = old_bases;
            s.static_apps = old_apps;
        })
    }

    /// Replaces the apps created through the admin API; only those that changed are rebuilt.
    pub fn set_api_apps(&self, apps: Vec<AppSpec>) -> Result<(), BuildError> {
        let mut next = BTreeMap::new();
        for app in apps {
            if let Some(twice) = next.insert(app.id.clone(), app) {
                return Err(BuildError::Duplicate(twice.id));
            }
        }
        let mut s = self.sources();
        let ids = changed_keys(&s.api_apps, &next);
        if let Some(id) = ids
            .iter()
            .find(|id| next.contains_key(*id) && s.static_apps.iter().any(|a| a.id == **id))
        {
            return Err(BuildError::Duplicate(id.clone()));
        }
        let old = std::mem::replace(&mut s.api_apps, next);
        self.patch(&s, ids).inspect_err(|_| s.api_apps = old)
    }

    /// Adds or replaces one app created through the admin API.
    pub fn upsert_api_app(&self, app: AppSpec) -> Result<(), BuildError> {
        let mut s = self.sources();
        if s.static_apps.iter().any(|a| a.id == app.id) {
            return Err(BuildError::Duplicate(app.id));
        }
        if s.api_apps.get(&app.id) == Some(&app) {
            return Ok(());
        }
        let id = app.id.clone();
        let old = s.api_apps.insert(id.clone(), app);
        self.patch(&s, vec![id.clone()]).inspect_err(|_| match old {
            Some(old) => {
                s.api_apps.insert(id.clone(), old);
            }
            None => {
                s.api_apps.remove(&id);
            }
        })
    }

    /// Removes one app created through the admin API (nothing when there is none).
    pub fn remove_api_app(&self, id: &str) {
        let mut s = self.sources();
        if s.api_apps.remove(id).is_some() {
            // Removing an app cannot make the table ambiguous.
            if let Err(e) = self.patch(&s, vec![id.to_owned()]) {
                tracing::error!("removal of app {id:?} not published: {e}");
            }
        }
    }

    /// Replaces the set of drained instances; the apps whose marks changed are rebuilt.
    pub fn set_drained(&self, drained: Drained) {
        let mut s = self.sources();
        let ids: BTreeSet<String> = s
            .drained
            .symmetric_difference(&drained)
            .map(|(id, _)| id.clone())
            .collect();
        let old = std::mem::replace(&mut s.drained, drained);
        if let Err(e) = self.patch(&s, ids.into_iter().collect()) {
            tracing::error!("drained instances not published: {e}");
            s.drained = old;
        }
    }

    /// The instances drained now.
    pub fn drained(&self) -> Drained {
        self.sources().drained.clone()
    }

    /// The app `id` as declared (config, built in or the admin API), without the instances
    /// run-time sources add.
    pub fn declared(&self, id: &str) -> Option<AppSpec> {
        self.sources().declared(id).cloned()
    }

    /// The apps created through the admin API, as published.
    pub fn api_apps(&self) -> Vec<AppSpec> {
        self.sources().api_apps.values().cloned().collect()
    }

    /// The static apps (config file and built-in) as declared, without run-time instances.
    pub fn static_apps(&self) -> Vec<AppSpec> {
        self.sources().static_apps.clone()
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

#[cfg(test)]
mod tests {
    use super::*;
    use custom_domain::{BoxFuture, TxtAnswer, TxtError, TxtLookup};

    #[derive(Debug)]
    struct NoDns;

    impl TxtLookup for NoDns {
        fn lookup_txt(&self, _: String) -> BoxFuture<Result<TxtAnswer, TxtError>> {
            Box::pin(async { Err(TxtError::NotFound) })
        }
    }

    fn spec(id: &str, last: u8) -> AppSpec {
        let mut s = AppSpec::new(id, 80, vec![IpAddr::from([10, 0, 0, last])]);
        s.origin = table::Origin::Api;
        s
    }

    fn routes(statics: Vec<AppSpec>) -> Routes {
        let custom = CustomDomains::new(
            Default::default(),
            Arc::new(NoDns),
            tokio::runtime::Handle::current(),
        );
        Routes::new(vec!["gw.test".into()], statics, custom).unwrap()
    }

    #[test]
    fn scale_changed_keys_finds_added_removed_and_changed() {
        let a: BTreeMap<String, u8> = [("a", 1), ("b", 2), ("c", 3), ("e", 5)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        let mut b = a.clone();
        b.remove("a");
        b.insert("c".into(), 9);
        b.insert("d".into(), 4);
        b.insert("f".into(), 6);
        assert_eq!(changed_keys(&a, &b), ["a", "c", "d", "f"]);
        assert_eq!(changed_keys(&b, &b), Vec::<String>::new());
    }

    #[tokio::test]
    async fn scale_an_api_change_rebuilds_only_the_apps_it_touched() {
        let r = routes(vec![AppSpec::new("static", 80, vec![])]);
        let apps: Vec<AppSpec> = (0..300)
            .map(|i| spec(&format!("app{i}"), i as u8))
            .collect();
        r.set_api_apps(apps.clone()).unwrap();
        let t1 = r.table();
        assert_eq!(t1.len(), 301);
        let mut next = apps.clone();
        next[5].max_connections = 9;
        next.remove(6);
        r.set_api_apps(next).unwrap();
        let t2 = r.table();
        assert_eq!(t2.app("app5").unwrap().spec.max_connections, 9);
        assert!(t2.app("app6").is_none());
        assert!(Arc::ptr_eq(
            t1.app("app7").unwrap(),
            t2.app("app7").unwrap()
        ));
        assert!(t2.shards_shared_with(&t1) >= 254);

        // one app alone, and its removal
        r.upsert_api_app(spec("one", 1)).unwrap();
        assert!(r.table().app("one").is_some());
        r.remove_api_app("one");
        assert!(r.table().app("one").is_none() && r.declared("one").is_none());

        // refused changes leave the sources and the table as they were
        assert_eq!(
            r.upsert_api_app(spec("static", 1)).unwrap_err(),
            BuildError::Duplicate("static".into())
        );
        assert_eq!(
            r.upsert_api_app(spec("app5s", 1)).unwrap_err(),
            BuildError::Ambiguous("app5".into(), "app5s".into())
        );
        assert!(r.declared("app5s").is_none() && r.table().app("app5s").is_none());
        assert_eq!(r.api_apps().len(), 299);
    }

    #[tokio::test]
    async fn scale_run_time_instances_and_drains_patch_their_apps() {
        let r = routes(vec![]);
        r.set_api_apps(vec![spec("web", 1), spec("db", 2)]).unwrap();
        let t1 = r.table();
        let vpc_ip = IpAddr::from([10, 9, 0, 1]);
        r.set_instances("vpc", [("web".to_string(), vec![vpc_ip])].into());
        let web = r.table().app("web").unwrap().clone();
        assert_eq!(web.instances.len(), 2);
        assert!(Arc::ptr_eq(
            t1.app("db").unwrap(),
            r.table().app("db").unwrap()
        ));
        r.set_drained([("web".to_string(), vpc_ip)].into());
        let web = r.table().app("web").unwrap().clone();
        assert!(web.instances[1].is_drained() && !web.instances[0].is_drained());
        r.set_instances("vpc", Default::default());
        assert_eq!(r.table().app("web").unwrap().instances.len(), 1);
        // an upsert keeps the run-time instances of its app
        r.set_instances("vpc", [("db".to_string(), vec![vpc_ip])].into());
        let mut db = spec("db", 2);
        db.max_connections = 4;
        r.upsert_api_app(db).unwrap();
        assert_eq!(r.table().app("db").unwrap().instances.len(), 2);
    }
}
