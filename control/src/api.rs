//! The JSON API under `/v1/` (see `openapi.json`): apps, instances and drains, custom
//! domains. The read-only views of certificates, CAA, attestation, the VPC and the cluster
//! are in [`crate::views`].

use crate::server::{error, json, problems, Reply};
use crate::tokens::Caller;
use crate::views;
use crate::vpc_reach;
use crate::Control;
use gatehouse::app_admission::Candidate;
use gatehouse::route::{App, Origin};
use hyper::body::Incoming;
use hyper::Request;
use serde::Serialize;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

/// The largest JSON body the API reads.
const BODY_LIMIT: usize = 64 * 1024;

/// Dispatches `/v1/<rest>`.
pub async fn route(
    control: &Arc<Control>,
    req: Request<Incoming>,
    caller: &Caller,
    method: &str,
    rest: &[&str],
) -> Reply {
    match (method, rest) {
        ("GET", ["apps"]) => json(200, &apps(control)),
        ("POST", ["apps"]) => match body(req).await {
            Ok(v) => create_app(control, v).await,
            Err(r) => r,
        },
        ("GET", ["apps", id]) => match app(control, id) {
            Some(a) => json(200, &a),
            None => error(404, format!("no app {id:?}")),
        },
        ("PUT", ["apps", id]) => match body(req).await {
            Ok(v) => replace_app(control, id, v).await,
            Err(r) => r,
        },
        ("DELETE", ["apps", id]) => delete_app(control, id).await,
        ("POST", ["apps", id, "instances"]) => match body(req).await {
            Ok(v) => add_instance(control, id, v).await,
            Err(r) => r,
        },
        ("DELETE", ["apps", id, "instances", addr]) => remove_instance(control, id, addr).await,
        ("POST", ["apps", id, "instances", addr, "drain"]) => {
            drain(control, id, addr, true, caller).await
        }
        ("DELETE", ["apps", id, "instances", addr, "drain"]) => {
            drain(control, id, addr, false, caller).await
        }
        ("GET", ["custom-domains"]) => json(200, &views::custom_domains(control)),
        ("POST", ["custom-domains"]) => views::add_domain(control, req, caller).await,
        ("DELETE", ["custom-domains", name]) => views::delete_domain(control, name).await,
        ("POST", ["custom-domains", name, "lookup"]) => views::relookup(control, name).await,
        ("GET", ["certificates"]) => json(200, &views::certificates(control)),
        ("POST", ["certificates", id, "renew"]) => views::renew(control, id),
        ("GET", ["caa"]) => json(200, &views::caa(control)),
        ("GET", ["attestation"]) => views::attestation(control).await,
        ("GET", ["ct"]) => crate::ct::get(control).await,
        ("POST", ["ct", "alerts", serial, "resolve"]) => match body(req).await {
            Ok(v) => crate::ct::resolve(control, serial, v, caller).await,
            Err(r) => r,
        },
        ("GET", ["vpc"]) => views::vpc(control).await,
        ("GET", ["vpc", "reach"]) => vpc_reach::get(control).await,
        ("PUT", ["vpc", "apps", id, "reach"]) => match body(req).await {
            Ok(v) => vpc_reach::set(control, id, Some(v), caller).await,
            Err(r) => r,
        },
        ("DELETE", ["vpc", "apps", id, "reach"]) => vpc_reach::set(control, id, None, caller).await,
        ("GET", ["nodes"]) => views::nodes(control).await,
        ("GET", ["overview"]) => json(200, &views::overview(control).await),
        ("GET", _) | ("POST", _) | ("PUT", _) | ("DELETE", _) => error(
            404,
            format!("no such resource: {method} /v1/{}", rest.join("/")),
        ),
        _ => error(405, format!("method {method} not allowed")),
    }
}

/// Reads a JSON body (null fields read as absent, as in TOML).
async fn body(req: Request<Incoming>) -> Result<serde_json::Value, Reply> {
    use http_body_util::BodyExt;
    let bytes = match http_body_util::Limited::new(req.into_body(), BODY_LIMIT)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Err(error(
                413,
                format!("body: {e} (at most {BODY_LIMIT} bytes)"),
            ))
        }
    };
    let mut v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| error(400, format!("the body is not JSON: {e}")))?;
    strip_nulls(&mut v);
    Ok(v)
}

fn strip_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// An app as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AppView {
    /// The app id.
    pub id: String,
    /// `config`, `api` or `builtin`.
    pub origin: Origin,
    /// `tcp` or `http`.
    pub mode: gatehouse_config::AppMode,
    /// The names that reach it under each base domain.
    pub names: Vec<String>,
    /// Port when the name has none.
    pub default_port: u16,
    /// Other ports a name may ask for.
    pub ports: Vec<u16>,
    /// Connection cap (0: none).
    pub max_connections: u32,
    /// Connections open now.
    pub active_connections: u32,
    /// Requests finished and the sum of their times (http mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<Requests>,
    /// Every instance.
    pub instances: Vec<InstanceView>,
}

/// Request totals of an `http` app; a client samples twice for rates and mean latency.
#[derive(Debug, Clone, Serialize)]
pub struct Requests {
    /// Requests finished.
    pub total: u64,
    /// Their times summed, in microseconds.
    pub sum_micros: u64,
    /// Answered with a 5xx.
    pub errors_5xx: u64,
}

/// One instance as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceView {
    /// Its address.
    pub address: IpAddr,
    /// Where it comes from: `config`, `api`, `builtin` or `vpc`.
    pub source: &'static str,
    /// Drained: no new connection or request.
    pub drained: bool,
    /// Passive health (recent connect failures back it off).
    pub healthy: bool,
    /// The active health check's verdict (always true without one).
    pub up: bool,
    /// Connections or requests in flight to it.
    pub active: u32,
}

fn origin_name(o: Origin) -> &'static str {
    match o {
        Origin::Config => "config",
        Origin::Api => "api",
        Origin::Builtin => "builtin",
    }
}

/// Every app in the live table, sorted by id.
pub fn apps(control: &Control) -> Vec<AppView> {
    let routes = &control.shared.routes;
    let declared: std::collections::HashMap<String, gatehouse::route::AppSpec> = routes
        .static_apps()
        .into_iter()
        .chain(routes.api_apps())
        .map(|d| (d.id.clone(), d))
        .collect();
    let bases = control.config().proxy.base_domains.clone();
    let table = routes.table();
    let mut out: Vec<AppView> = table
        .apps()
        .map(|app| view(app, declared.get(&app.spec.id), &bases))
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// One app's view (without building every app's).
pub fn app(control: &Control, id: &str) -> Option<AppView> {
    let routes = &control.shared.routes;
    let table = routes.table();
    let app = table.app(id)?;
    let bases = control.config().proxy.base_domains.clone();
    Some(view(app, routes.declared(id).as_ref(), &bases))
}

/// The view of `app`, declared as `own` (its instances not there came from the VPC).
fn view(app: &Arc<App>, own: Option<&gatehouse::route::AppSpec>, bases: &[String]) -> AppView {
    let spec = &app.spec;
    let now = gatehouse::upstream::health::now_ms();
    let instances = app
        .instances
        .iter()
        .map(|i| InstanceView {
            address: i.addr,
            source: match own.is_some_and(|d| d.instances.contains(&i.addr)) {
                true => origin_name(spec.origin),
                false => "vpc",
            },
            drained: i.is_drained(),
            healthy: i.health.is_healthy(now),
            up: i.checked.is_up(),
            active: i.active(),
        })
        .collect();
    let requests = (spec.mode == gatehouse_config::AppMode::Http).then(|| {
        let (total, sum_micros) = app.http_stats.totals();
        Requests {
            total,
            sum_micros,
            errors_5xx: app.http_stats.count_class(5),
        }
    });
    AppView {
        id: spec.id.clone(),
        origin: spec.origin,
        mode: spec.mode,
        names: bases.iter().map(|b| format!("{}.{b}", spec.id)).collect(),
        default_port: spec.default_port,
        ports: spec.ports.clone(),
        max_connections: spec.max_connections,
        active_connections: app.active(),
        requests,
        instances,
    }
}

/// The apps a new or changed API app `id` sits beside, labelled as its messages name them:
/// those with ids it could be confused with (`gatehouse_config::related_ids`), the only ones
/// its checks compare it with. The store is asked for those few records, not all of them
/// (one app created among 100k reads four records). Without an id (the check refuses the
/// body for that) there is nothing to compare with.
async fn neighbours(
    control: &Control,
    id: Option<&str>,
    leave_out: &str,
) -> Result<Vec<(String, gatehouse_config::AppConfig)>, Reply> {
    let records = control.records.get().ok_or_else(no_store)?;
    let Some(id) = id else {
        return Ok(Vec::new());
    };
    let related: Vec<String> = gatehouse_config::related_ids(id)
        .into_iter()
        .filter(|r| r != leave_out)
        .collect();
    let config = control.config();
    let mut others: Vec<(String, gatehouse_config::AppConfig)> = config
        .apps
        .iter()
        .enumerate()
        .filter(|(_, a)| related.contains(&a.id))
        .map(|(i, a)| (format!("config apps[{i}]"), a.clone()))
        .collect();
    for r in &related {
        if let Some(stored) = records.app(r).await.map_err(|e| error(503, e))? {
            others.push((format!("api app {r:?}"), stored.app));
        }
    }
    // Built-in apps (the development demo) have no config; their ids are taken all the same.
    for spec in control.shared.routes.static_apps() {
        if spec.origin == Origin::Builtin && related.iter().any(|r| **r == *spec.id) {
            let mut builtin: gatehouse_config::AppConfig =
                toml::from_str(&format!("id = {:?}", spec.id)).map_err(|e| error(500, e))?;
            builtin.default_port = spec.default_port;
            others.push((format!("built-in app {:?}", spec.id), builtin));
        }
    }
    Ok(others)
}

fn no_store() -> Reply {
    error(
        503,
        "this gateway has no store for apps made through the API",
    )
}

/// Checks `value` as an `[[apps]]` entry beside the others; the error lists every problem.
async fn check(
    control: &Control,
    value: serde_json::Value,
    leave_out: &str,
) -> Result<gatehouse_config::AppConfig, Reply> {
    let id = value.get("id").and_then(|v| v.as_str());
    let others = neighbours(control, id, leave_out).await?;
    let value = toml::Value::try_from(value)
        .map_err(|e| error(400, format!("the body does not map to [[apps]]: {e}")))?;
    let allow_local = control.config().proxy.allow_local_instances;
    gatehouse_config::check_app(value, &others, allow_local).map_err(|p| {
        problems(
            422,
            "the app was refused",
            p.iter().map(|p| p.to_string()).collect(),
        )
    })
}

async fn create_app(control: &Arc<Control>, value: serde_json::Value) -> Reply {
    let _one = control.changing.lock().await;
    if let Some(id) = value.get("id").and_then(|v| v.as_str()) {
        if let Some(origin) = owner(control, id) {
            let from = origin_name(origin);
            return error(409, format!("app {id:?} exists already (origin: {from})"));
        }
    }
    let app = match check(control, value, "").await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let candidate = Candidate {
        app_id: app.id.clone(),
        purpose: "create",
        measurements: None,
        domain: None,
    };
    if let Err(why) = control.admit(&candidate).await {
        return error(403, format!("admission denied app {:?}: {why}", app.id));
    }
    let records = control.records.get().expect("checked by neighbours");
    match records.create(&app).await {
        Ok(true) => {}
        Ok(false) => return error(409, format!("app {:?} exists already", app.id)),
        Err(e) => return error(503, e),
    }
    published(control, &app.id, 201).await
}

/// Publishes the records and answers with the app's view.
async fn published(control: &Control, id: &str, status: u16) -> Reply {
    if let Err(e) = control.publish_app(id).await {
        return error(503, format!("stored, but not yet published: {e}"));
    }
    match app(control, id) {
        Some(a) => json(status, &a),
        None => error(
            500,
            format!("app {id:?} stored but not in the route table (see the log)"),
        ),
    }
}

/// Where an app comes from, for a refusal to change one the API does not own.
fn owner(control: &Control, id: &str) -> Option<Origin> {
    control.shared.routes.table().app(id).map(|a| a.spec.origin)
}

fn not_ours(id: &str, origin: Origin) -> Reply {
    let how = match origin {
        Origin::Config => "comes from the config file ([[apps]]): change it there and reload",
        _ => "is built in",
    };
    error(409, format!("app {id:?} {how}"))
}

async fn stored<'c>(
    control: &'c Control,
    id: &str,
) -> Result<(crate::records::StoredApp, &'c crate::records::Records), Reply> {
    if let Some(o) = owner(control, id).filter(|o| *o != Origin::Api) {
        return Err(not_ours(id, o));
    }
    let records = control.records.get().ok_or_else(no_store)?;
    match records.app(id).await.map_err(|e| error(503, e))? {
        Some(s) => Ok((s, records)),
        None => Err(error(404, format!("no app {id:?}"))),
    }
}

async fn replace_app(control: &Arc<Control>, id: &str, mut value: serde_json::Value) -> Reply {
    let _one = control.changing.lock().await;
    let (old, records) = match stored(control, id).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match value.get("id") {
        None => {
            if let Some(m) = value.as_object_mut() {
                m.insert("id".into(), id.into());
            }
        }
        Some(v) if v == id => {}
        Some(v) => return error(422, format!("app.id: {v} is not {id:?} (the path's id)")),
    }
    let app = match check(control, value, id).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    match records.replace(&app, old.version).await {
        Ok(true) => published(control, id, 200).await,
        Ok(false) => error(409, format!("app {id:?} changed meanwhile: read it again")),
        Err(e) => error(503, e),
    }
}

async fn delete_app(control: &Arc<Control>, id: &str) -> Reply {
    let _one = control.changing.lock().await;
    let records = match stored(control, id).await {
        Ok((_, r)) => r,
        Err(r) => return r,
    };
    match records.delete(id).await {
        Ok(_) => match control.publish_app(id).await {
            Ok(()) => json(200, &serde_json::json!({ "deleted": id })),
            Err(e) => error(503, format!("deleted, but not yet published: {e}")),
        },
        Err(e) => error(503, e),
    }
}

async fn add_instance(control: &Arc<Control>, id: &str, value: serde_json::Value) -> Reply {
    let _one = control.changing.lock().await;
    let (old, records) = match stored(control, id).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut whole = match serde_json::to_value(&old.app) {
        Ok(v) => v,
        Err(e) => return error(500, e),
    };
    strip_nulls(&mut whole);
    if let Some(list) = whole.get_mut("instances").and_then(|l| l.as_array_mut()) {
        list.push(value);
    }
    let app = match check(control, whole, id).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    match records.replace(&app, old.version).await {
        Ok(true) => published(control, id, 201).await,
        Ok(false) => error(409, format!("app {id:?} changed meanwhile: try again")),
        Err(e) => error(503, e),
    }
}

async fn remove_instance(control: &Arc<Control>, id: &str, addr: &str) -> Reply {
    let _one = control.changing.lock().await;
    let Ok(addr) = addr.parse::<IpAddr>() else {
        return error(400, format!("{addr:?} is not an IP address"));
    };
    let (old, records) = match stored(control, id).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut app = old.app.clone();
    let before = app.instances.len();
    app.instances.retain(|i| i.address != addr);
    if app.instances.len() == before {
        return error(404, format!("app {id:?} has no instance {addr} of its own"));
    }
    match records.replace(&app, old.version).await {
        Ok(true) => {
            let _ = records.set_drained(id, addr, false, "").await;
            published(control, id, 200).await
        }
        Ok(false) => error(409, format!("app {id:?} changed meanwhile: try again")),
        Err(e) => error(503, e),
    }
}

async fn drain(control: &Arc<Control>, id: &str, addr: &str, on: bool, caller: &Caller) -> Reply {
    let Ok(addr) = addr.parse::<IpAddr>() else {
        return error(400, format!("{addr:?} is not an IP address"));
    };
    let table = control.shared.routes.table();
    let Some(app) = table.app(id) else {
        return error(404, format!("no app {id:?}"));
    };
    if on && !app.instances.iter().any(|i| i.addr == addr) {
        return error(404, format!("app {id:?} has no instance {addr}"));
    }
    let Some(records) = control.records.get() else {
        return no_store();
    };
    if let Err(e) = records.set_drained(id, addr, on, &caller.id).await {
        return error(503, e);
    }
    if let Err(e) = control.publish_others().await {
        return error(503, format!("stored, but not yet published: {e}"));
    }
    let drained: BTreeSet<_> = control.shared.routes.drained();
    json(
        200,
        &serde_json::json!({
            "app": id,
            "address": addr,
            "drained": drained.contains(&(id.to_owned(), addr)),
        }),
    )
}
