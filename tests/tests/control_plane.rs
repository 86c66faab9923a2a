//! Issue 20: the live control plane through the real binary. The admin API (scoped tokens,
//! audit lines, apps stored and validated like the file's, instances drained without
//! dropping a connection, every answer checked against `control/openapi.json`), the CLI over
//! it, hot reload (SIGHUP and `POST /v1/reload`, all or nothing, under load), and admission
//! by a real local webhook (for apps made through the API and for app CVMs joining the VPC).
//! The dashboard's browser test is in `dashboard.rs`.

use gatehouse_tests::admin::{call, conforms, openapi, Answer};
use gatehouse_tests::pki::{tls_connect, TestCa};
use gatehouse_tests::servers::{bind_same_port, echo, read_line};
use gatehouse_tests::{base_config, binary, Gateway};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const OPS: &str = "ops-secret-4f1c2a";
const VIEW: &str = "view-secret-99b0e7";

/// `[admin]` with a write token `ops` and a read token `view` (files in `dir`).
fn with_tokens(config: String, dir: &Path) -> String {
    std::fs::write(dir.join("ops.token"), format!("{OPS}\n")).unwrap();
    std::fs::write(dir.join("view.token"), VIEW).unwrap();
    config.replace(
        "insecure_no_auth = true",
        "tokens = [{ id = \"ops\", file = \"ops.token\", scope = \"write\" }, \
         { id = \"view\", file = \"view.token\", scope = \"read\" }]",
    )
}

fn app(id: &str, port: u16, ips: &[&str]) -> String {
    let instances: String = ips
        .iter()
        .map(|ip| format!("[[apps.instances]]\naddress = \"{ip}\"\n"))
        .collect();
    format!("[[apps]]\nid = \"{id}\"\ndefault_port = {port}\n{instances}\n")
}

struct Api {
    admin: SocketAddr,
    doc: Value,
}

impl Api {
    fn new(gw: &Gateway) -> Api {
        Api {
            admin: gw.admin.expect("admin listener"),
            doc: openapi(),
        }
    }

    /// Calls with the `ops` token and checks the answer against the document (`template`
    /// is the path as the document spells it).
    fn ops(&self, method: &str, path: &str, template: &str, body: Option<Value>) -> Answer {
        let a = call(self.admin, method, path, Some(OPS), body.as_ref());
        conforms(&self.doc, method, template, &a);
        a
    }
}

/// The first line an instance sends through a new TLS connection to `name`.
async fn who(gw: &Gateway, ca: &TestCa, name: &str) -> Result<String, String> {
    let mut tls = tls_connect(gw.addr, name, ca.client(&[]))
        .await
        .map_err(|e| e.to_string())?;
    Ok(read_line(&mut tls).await)
}

/// Echo instances "one" on 127.0.0.1 and "two" on 127.0.0.2 (one port), a test CA, and a
/// directory holding its `*.gw.test` certificate: (CA, port, directory, `[tls]` entry).
async fn two_echoes() -> (TestCa, u16, tempfile::TempDir, String) {
    let ca = TestCa::new();
    let (port, mut listeners) = bind_same_port(&[[127, 0, 0, 1], [127, 0, 0, 2]]).await;
    echo(listeners.remove(0), "one");
    echo(listeners.remove(0), "two");
    let dir = tempfile::tempdir().unwrap();
    let cert = ca.write(dir.path(), "wild", &["*.gw.test"]);
    (ca, port, dir, cert)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_apps_instances_drain_tokens_audit_and_the_document() {
    let (ca, port, dir, cert) = two_echoes().await;
    let config = format!(
        "{}\n{}\n[tls]\ncertificates = [{cert}]\n",
        base_config(""),
        app("static", port, &["127.0.0.1"])
    );
    let config = with_tokens(config, dir.path());
    let gw = Gateway::start_in(dir, &config);
    let api = Api::new(&gw);

    // Auth fails closed, and scopes hold.
    let web =
        json!({ "id": "web", "default_port": port, "instances": [{ "address": "127.0.0.1" }] });
    let none = call(api.admin, "GET", "/v1/apps", None, None);
    assert_eq!(none.status, 401, "{:?}", none.body);
    let wrong = call(api.admin, "GET", "/v1/apps", Some("not-a-token"), None);
    assert_eq!(wrong.status, 401);
    // Probes carry no token: /healthz answers them, and says nothing else; /metrics does not.
    assert_eq!(call(api.admin, "GET", "/healthz", None, None).status, 200);
    assert_eq!(call(api.admin, "GET", "/metrics", None, None).status, 401);
    let read = call(api.admin, "GET", "/v1/apps", Some(VIEW), None);
    assert_eq!(read.status, 200);
    let refused = call(api.admin, "POST", "/v1/apps", Some(VIEW), Some(&web));
    assert_eq!(refused.status, 403, "{:?}", refused.body);
    conforms(&api.doc, "POST", "/v1/apps", &refused);

    // The same validation, with the same messages, as an [[apps]] entry of the file.
    let bad = json!({ "id": "web", "default_port": port, "instances": [{ "address": "0.0.0.0" }], "colour": "red" });
    let a = api.ops("POST", "/v1/apps", "/v1/apps", Some(bad));
    assert_eq!(a.status, 422);
    let problems: Vec<String> = serde_json::from_value(a.body["problems"].clone()).unwrap();
    assert!(
        problems[0].starts_with("app.colour: unknown field `colour`"),
        "{problems:?}"
    );
    let bad = json!({ "id": "web", "default_port": port, "instances": [{ "address": "0.0.0.0" }] });
    let a = api.ops("POST", "/v1/apps", "/v1/apps", Some(bad));
    let problems: Vec<String> = serde_json::from_value(a.body["problems"].clone()).unwrap();
    let file = tempfile::tempdir().unwrap();
    let path = file.path().join("g.toml");
    std::fs::write(
        &path,
        format!("{}\n{}", base_config(""), app("web", port, &["0.0.0.0"])),
    )
    .unwrap();
    let out = std::process::Command::new(binary())
        .args(["check-config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (_, from_file) = stderr
        .split_once("apps[0].instances[0].address: ")
        .expect("check-config names the instance");
    let (_, from_api) = problems[0]
        .split_once("app.instances[0].address: ")
        .expect("the API names the instance");
    assert_eq!(from_api.trim(), from_file.trim(), "the same message");

    // Create: stored, published, routed.
    let a = api.ops("POST", "/v1/apps", "/v1/apps", Some(web.clone()));
    assert_eq!(a.status, 201, "{:?}", a.body);
    assert_eq!(a.body["origin"], "api");
    assert_eq!(who(&gw, &ca, "web.gw.test").await.unwrap(), "one");
    let again = api.ops("POST", "/v1/apps", "/v1/apps", Some(web.clone()));
    assert_eq!(again.status, 409);
    // An id that reads as another app with a flag is refused beside a stored app and beside
    // a config-file app alike (the check reads the related records, not all).
    for (id, beside) in [
        ("webs", "(api app \"web\")"),
        ("webg", "(api app \"web\")"),
        ("statics", "(config apps[0])"),
    ] {
        let mut body = web.clone();
        body["id"] = json!(id);
        let a = api.ops("POST", "/v1/apps", "/v1/apps", Some(body));
        assert_eq!(a.status, 422, "{id}: {:?}", a.body);
        let problems: Vec<String> = serde_json::from_value(a.body["problems"].clone()).unwrap();
        let problems = problems.join("\n");
        assert!(
            problems.contains("is ambiguous") && problems.contains(beside),
            "{id}: {problems}"
        );
    }
    let a = api.ops(
        "POST",
        "/v1/apps/web/instances",
        "/v1/apps/{id}/instances",
        Some(json!({ "address": "127.0.0.2" })),
    );
    assert_eq!(a.status, 201, "{:?}", a.body);
    let a = api.ops("GET", "/v1/apps", "/v1/apps", None);
    let listed: Vec<&str> = a
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["static", "web"]);
    // A config-file app is changed in the file, not here.
    let a = api.ops(
        "POST",
        "/v1/apps/static/instances",
        "/v1/apps/{id}/instances",
        Some(json!({ "address": "127.0.0.2" })),
    );
    assert_eq!(a.status, 409);
    assert!(
        a.body["error"].as_str().unwrap().contains("config file"),
        "{:?}",
        a.body
    );

    // Drain: an open connection to the instance goes on; new ones go elsewhere.
    let mut open = None;
    for _ in 0..20 {
        let mut tls = tls_connect(gw.addr, "web.gw.test", ca.client(&[]))
            .await
            .unwrap();
        if read_line(&mut tls).await == "one" {
            open = Some(tls);
            break;
        }
    }
    let mut open = open.expect("instance one answers");
    let a = api.ops(
        "POST",
        "/v1/apps/web/instances/127.0.0.1/drain",
        "/v1/apps/{id}/instances/{address}/drain",
        None,
    );
    assert_eq!((a.status, &a.body["drained"]), (200, &json!(true)));
    for _ in 0..10 {
        assert_eq!(
            who(&gw, &ca, "web.gw.test").await.unwrap(),
            "two",
            "drained: nothing new"
        );
    }
    open.write_all(b"still here\n").await.unwrap();
    assert_eq!(
        read_line(&mut open).await,
        "still here",
        "the open connection goes on"
    );
    drop(open);
    let a = api.ops("GET", "/v1/apps/web", "/v1/apps/{id}", None);
    let drained: Vec<bool> = a.body["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["drained"].as_bool().unwrap())
        .collect();
    assert_eq!(drained, [true, false]);

    // The CLI drives the same API.
    let dir = gw.path().to_owned();
    let cli = |args: &[&str]| {
        std::process::Command::new(binary())
            .args(args)
            .args(["--admin", &format!("http://{}", api.admin), "--token-file"])
            .arg(dir.join("ops.token"))
            .output()
            .unwrap()
    };
    let out = cli(&["apps", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[1]["instances"][0]["drained"], true);
    let out = cli(&["apps", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("127.0.0.1 (drained), 127.0.0.2"), "{text}");
    let out = cli(&["instances", "undrain", "web", "127.0.0.1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&[
        "apps",
        "add",
        "db",
        "--default-port",
        "5432",
        "--instance",
        "999.1.1.1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("app.instances[0].address"),
        "the CLI prints the key path: {err}"
    );
    let out = cli(&["instances", "drain", "web", "127.0.0.2"]);
    assert!(out.status.success());

    // Every change left an audit line naming its token, and no token is in the log.
    let log = gw.log();
    assert!(
        log.contains("token=ops") && log.contains("POST /v1/apps -> 201"),
        "{log}"
    );
    assert!(
        log.contains("token=view") && log.contains("-> 403"),
        "{log}"
    );
    assert!(
        log.contains("DELETE /v1/apps/web/instances/127.0.0.1/drain -> 200"),
        "{log}"
    );
    assert!(
        !log.contains(OPS) && !log.contains(VIEW),
        "a token leaked into the log"
    );

    // The other resources answer as documented.
    for (path, template) in [
        ("/v1/certificates", "/v1/certificates"),
        ("/v1/caa", "/v1/caa"),
        ("/v1/attestation", "/v1/attestation"),
        ("/v1/custom-domains", "/v1/custom-domains"),
        ("/v1/overview", "/v1/overview"),
    ] {
        let a = api.ops("GET", path, template, None);
        assert_eq!(a.status, 200, "{path}: {:?}", a.body);
    }
    let a = api.ops("GET", "/v1/certificates", "/v1/certificates", None);
    assert_eq!(a.body[0]["key_origin"], "imported");
    let a = api.ops(
        "POST",
        "/v1/custom-domains/shop.example.com/lookup",
        "/v1/custom-domains/{name}/lookup",
        None,
    );
    assert_eq!(
        a.body["error"], "custom domains are disabled",
        "{:?}",
        a.body
    );
    let a = api.ops("GET", "/v1/vpc", "/v1/vpc", None);
    assert_eq!(a.status, 404);
    let served = call(api.admin, "GET", "/v1/openapi.json", None, None);
    assert_eq!(served.body, api.doc, "the served document is the tree's");

    // Stored: a restart keeps the app and its drain.
    let gw = gw.restart();
    let api = Api::new(&gw);
    let a = api.ops("GET", "/v1/apps/web", "/v1/apps/{id}", None);
    assert_eq!(a.status, 200, "{:?}", a.body);
    let drained: Vec<bool> = a.body["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["drained"].as_bool().unwrap())
        .collect();
    assert_eq!(drained, [false, true], "the drain survived the restart");
    assert_eq!(who(&gw, &ca, "web.gw.test").await.unwrap(), "one");
    let a = api.ops("DELETE", "/v1/apps/web", "/v1/apps/{id}", None);
    assert_eq!(a.status, 200);
    let a = api.ops("GET", "/v1/apps/web", "/v1/apps/{id}", None);
    assert_eq!(a.status, 404);
    assert!(
        who(&gw, &ca, "web.gw.test").await.is_err(),
        "deleted: no route"
    );
}

/// TLS connections to `name` in a loop, each a round trip through the echo instance:
/// (successes, failures with their reasons).
fn load(
    addr: SocketAddr,
    ca: &TestCa,
    name: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    let client = ca.client(&[]);
    tokio::spawn(async move {
        let (mut ok, mut failed) = (0, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            let round = async {
                let mut tls = tls_connect(addr, name, client.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                let _instance = read_line(&mut tls).await;
                tls.write_all(b"ping\n").await.map_err(|e| e.to_string())?;
                match read_line(&mut tls).await.as_str() {
                    "ping" => Ok(()),
                    other => Err(format!("echo answered {other:?}")),
                }
            };
            match tokio::time::timeout(Duration::from_secs(5), round).await {
                Ok(Ok(())) => ok += 1,
                Ok(Err(e)) => failed.push(e),
                Err(_) => failed.push("timed out".into()),
            }
        }
        (ok, failed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_drops_nothing_and_a_bad_reload_changes_nothing() {
    let (ca, port, dir, cert) = two_echoes().await;
    let head = base_config("");
    let file = |apps: &str, cert: &str| format!("{head}\n{apps}\n[tls]\ncertificates = [{cert}]\n");
    let gw = Gateway::start_in(dir, &file(&app("web", port, &["127.0.0.1"]), &cert));
    let path = gw.path().join("gatehouse.toml");
    let api = Api::new(&gw);
    let stop = Arc::new(AtomicBool::new(false));
    let loads: Vec<_> = (0..4)
        .map(|_| load(gw.addr, &ca, "web.gw.test", stop.clone()))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // SIGHUP: a second instance and a new app, without a restart.
    let two = file(
        &(app("web", port, &["127.0.0.1", "127.0.0.2"]) + &app("api", port, &["127.0.0.2"])),
        &cert,
    );
    std::fs::write(&path, &two).unwrap();
    gw.signal("HUP");
    gw.wait_log("config reloaded", Duration::from_secs(10));
    assert_eq!(who(&gw, &ca, "api.gw.test").await.unwrap(), "two");
    let mut seen = std::collections::HashSet::new();
    for _ in 0..30 {
        seen.insert(who(&gw, &ca, "web.gw.test").await.unwrap());
    }
    assert_eq!(
        seen.len(),
        2,
        "both instances serve web after the reload: {seen:?}"
    );

    // A bad file is refused whole: every problem with its key path, and nothing changes.
    let bad = two.replace("[proxy]\n", "[proxy]\nbogus = 1\n").replace(
        "address = \"127.0.0.2\"\n\n[[apps]]\nid = \"api\"",
        "address = \"300.0.0.2\"\n\n[[apps]]\nid = \"api\"",
    );
    std::fs::write(&path, &bad).unwrap();
    let a = api.ops("POST", "/v1/reload", "/v1/reload", None);
    assert_eq!(a.status, 400, "{:?}", a.body);
    let problems = a.body["problems"].to_string();
    assert!(
        problems.contains("proxy.bogus") && problems.contains("apps[0].instances[1].address"),
        "{problems}"
    );
    // Settings bound at start are refused by name.
    let workers = two.replace("workers = 2", "workers = 3");
    std::fs::write(&path, &workers).unwrap();
    let a = api.ops("POST", "/v1/reload", "/v1/reload", None);
    let first = a.body["problems"][0].as_str().unwrap_or_default();
    assert!(first.starts_with("proxy.workers: changed"), "{:?}", a.body);

    // A listener added starts; removed, it stops accepting while its connections go on.
    let extra = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let more = two.replace(
        "listen = [\"127.0.0.1:0\"]",
        &format!("listen = [\"127.0.0.1:0\", \"{extra}\"]"),
    );
    std::fs::write(&path, &more).unwrap();
    let a = api.ops("POST", "/v1/reload", "/v1/reload", None);
    assert_eq!(
        a.body["listeners_added"],
        json!([extra.to_string()]),
        "{:?}",
        a.body
    );
    let mut held = tls_connect(extra, "web.gw.test", ca.client(&[]))
        .await
        .unwrap();
    assert!(
        !read_line(&mut held).await.is_empty(),
        "served on the new listener"
    );
    std::fs::write(&path, &two).unwrap();
    let a = api.ops("POST", "/v1/reload", "/v1/reload", None);
    assert_eq!(
        a.body["listeners_removed"],
        json!([extra.to_string()]),
        "{:?}",
        a.body
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        tokio::net::TcpStream::connect(extra).await.is_err(),
        "the removed listener accepts nothing"
    );
    held.write_all(b"after\n").await.unwrap();
    assert_eq!(
        read_line(&mut held).await,
        "after",
        "its connection goes on"
    );
    std::fs::write(&path, &bad).unwrap();
    gw.signal("HUP");
    gw.wait_log("config reload refused", Duration::from_secs(10));
    assert_eq!(
        who(&gw, &ca, "api.gw.test").await.unwrap(),
        "two",
        "the running config stays"
    );

    // The CLI reloads too: a new certificate (another CA) and the app `api` gone.
    let ca2 = TestCa::new();
    let cert2 = ca2.write(gw.path(), "wild2", &["*.gw.test"]);
    std::fs::write(
        &path,
        file(&app("web", port, &["127.0.0.1", "127.0.0.2"]), &cert2),
    )
    .unwrap();
    let out = std::process::Command::new(binary())
        .args(["reload", "--admin", &format!("http://{}", api.admin)])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("removed api") && said.contains("tls.certificates"),
        "{said}"
    );
    assert!(who(&gw, &ca, "api.gw.test").await.is_err(), "api removed");
    let mut tls = tls_connect(gw.addr, "web.gw.test", ca2.client(&[]))
        .await
        .unwrap();
    assert!(
        !read_line(&mut tls).await.is_empty(),
        "the new certificate is served"
    );

    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0, Vec::new());
    for l in loads {
        let (o, f) = l.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    // Connections verify against the first CA: those made after the certificate changed fail
    // their handshake by design; every other one must have succeeded.
    failed.retain(|e| !e.contains("UnknownIssuer") && !e.contains("invalid peer certificate"));
    assert!(ok > 50, "load ran: {ok}");
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );

    // Admin tokens change by reload: once the file names one, a request without it is
    // refused; a rotated token file refuses the old token and takes the new one.
    std::fs::write(gw.path().join("ops.token"), OPS).unwrap();
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "insecure_no_auth = true",
        "tokens = [{ id = \"ops\", file = \"ops.token\", scope = \"write\" }]",
    );
    std::fs::write(&path, text).unwrap();
    let a = call(api.admin, "POST", "/v1/reload", None, None);
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(call(api.admin, "GET", "/v1/apps", None, None).status, 401);
    assert_eq!(
        call(api.admin, "GET", "/v1/apps", Some(OPS), None).status,
        200
    );
    std::fs::write(gw.path().join("ops.token"), "ops-rotated-7d3e").unwrap();
    let a = call(api.admin, "POST", "/v1/reload", Some(OPS), None);
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(
        call(api.admin, "GET", "/v1/apps", Some(OPS), None).status,
        401
    );
    let rotated = call(api.admin, "GET", "/v1/apps", Some("ops-rotated-7d3e"), None);
    assert_eq!(rotated.status, 200);
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_on_sighup_without_an_admin_listener() {
    // Without [admin] there is no API, but SIGHUP still reloads the file (it used to end
    // the process: the default action of the signal).
    let (ca, port, dir, cert) = two_echoes().await;
    let head = base_config("").replace(
        "[admin]\nlisten = \"127.0.0.1:0\"\ninsecure_no_auth = true\n",
        "",
    );
    assert!(!head.contains("[admin]"));
    let file = |apps: &str| format!("{head}\n{apps}\n[tls]\ncertificates = [{cert}]\n");
    let gw = Gateway::start_in(dir, &file(&app("web", port, &["127.0.0.1"])));
    assert!(gw.admin.is_none());
    assert_eq!(who(&gw, &ca, "web.gw.test").await.unwrap(), "one");
    assert!(who(&gw, &ca, "api.gw.test").await.is_err());
    std::fs::write(
        gw.path().join("gatehouse.toml"),
        file(&(app("web", port, &["127.0.0.1"]) + &app("api", port, &["127.0.0.2"]))),
    )
    .unwrap();
    gw.signal("HUP");
    gw.wait_log("config reloaded", Duration::from_secs(10));
    assert_eq!(who(&gw, &ca, "api.gw.test").await.unwrap(), "two");
    assert_eq!(who(&gw, &ca, "web.gw.test").await.unwrap(), "one");
}

/// A webhook that admits the apps in `allowed` and records every question.
async fn webhook(
    allowed: &'static [&'static str],
) -> (
    SocketAddr,
    Arc<Mutex<Vec<Value>>>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let log = asked.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            use http_body_util::BodyExt;
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            let ok = allowed.contains(&v["app_id"].as_str().unwrap_or(""));
                            log.lock().unwrap().push(v);
                            let mut r = hyper::Response::new(http_body_util::Full::new(
                                hyper::body::Bytes::from(if ok {
                                    "welcome"
                                } else {
                                    "not on the list"
                                }),
                            ));
                            *r.status_mut() = if ok {
                                hyper::StatusCode::OK
                            } else {
                                hyper::StatusCode::FORBIDDEN
                            };
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, asked, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_webhook_admits_one_app_denies_another_and_fails_closed() {
    let (hook, asked, task) = webhook(&["good"]).await;
    let config = format!(
        "{}\n[admission]\nwebhook = \"http://{hook}/admit\"\ntimeout = \"2s\"\ncache_for = \"1h\"\n",
        base_config("")
    );
    let gw = Gateway::start(&config);
    let api = Api::new(&gw);
    let create = |id: &str| json!({ "id": id, "instances": [{ "address": "127.0.0.1" }] });
    let a = call(api.admin, "POST", "/v1/apps", None, Some(&create("good")));
    assert_eq!(a.status, 201, "{:?}", a.body);
    let a = call(api.admin, "POST", "/v1/apps", None, Some(&create("evil")));
    assert_eq!(a.status, 403, "{:?}", a.body);
    conforms(&api.doc, "POST", "/v1/apps", &a);
    let why = a.body["error"].as_str().unwrap();
    assert!(
        why.contains("admission denied") && why.contains("not on the list"),
        "{why}"
    );
    let seen = asked.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0], json!({ "app_id": "good", "purpose": "create" }));
    // The webhook is gone: nothing is admitted (fail closed), and the app does not exist.
    task.abort();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let a = call(api.admin, "POST", "/v1/apps", None, Some(&create("later")));
    assert_eq!(a.status, 403, "{:?}", a.body);
    let a = call(api.admin, "GET", "/v1/apps/later", None, None);
    assert_eq!(a.status, 404);
    assert!(gw.log().contains("denied: webhook"), "{}", gw.log());
}

/// The VPC asks the same webhook after the quote passed: a denied CVM gets no lease and no
/// peer, and the webhook saw its measurements.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_webhook_decides_vpc_registrations_after_the_quote() {
    use gatehouse_attest::pccs::{CollateralSource, Pccs, DEFAULT_PCCS};
    use gatehouse_attest::simulator::{Simulator, SimulatorConfig};
    use gatehouse_attest::QuoteProvider;
    use gatehouse_vpc::leases::Leases;
    use gatehouse_vpc::register::{report_data, RegisterRequest, Registrar};
    use gatehouse_vpc::wireguard::{base64, KeyPair, Uapi, WireGuard};
    if !gatehouse_tests::netns::wireguard_ready() {
        return;
    }
    let (hook, asked, _task) = webhook(&["shop"]).await;
    let tag = std::process::id() % 100_000;
    let (ns, ifname) = (format!("ghad{tag}"), format!("wga{tag}"));
    let mut net = gatehouse_tests::netns::Net::default();
    net.namespace(&ns);
    net.wireguard(&ns, &ifname);
    let wg: Arc<dyn WireGuard> = Arc::new(Uapi::new(&ifname));
    let gw_key = KeyPair::generate().unwrap();
    wg.configure(&gw_key, Some(51820)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(gatehouse_store::Embedded::open(&dir.path().join("s.redb")).unwrap());
    let text = "[vpc]\nprefix = \"10.89.0.0/24\"\ngateway_address = \"10.89.0.1\"\nregister_listen = \"127.0.0.1:0\"\n";
    let config = gatehouse_config::Config::from_toml(text, Path::new("."))
        .unwrap()
        .vpc
        .unwrap();
    let sealer = Arc::new(gatehouse_store::AesGcmSealer::from_key(&[7; 32], "test").unwrap());
    let leases = Leases::new(store, sealer, config.prefix, vec![config.gateway_address]);
    let sim = Simulator::new(SimulatorConfig::default()).unwrap();
    let policy = gatehouse_attest::policy::Policy::parse(&format!(
        "insecure_trust_simulator_root = true\nmrtd = [\"{}\"]",
        gatehouse_attest::hex::encode(&SimulatorConfig::default().mrtd)
    ))
    .unwrap();
    let policies = [("shop", policy.clone()), ("bank", policy)]
        .map(|(a, p)| (a.to_owned(), p))
        .into_iter()
        .collect();
    let registrar = Registrar::new(
        config,
        leases.clone(),
        wg.clone(),
        gw_key,
        policies,
        Arc::new(CollateralSource::new(
            Some(sim.collateral().unwrap()),
            Pccs::new(DEFAULT_PCCS, Duration::from_secs(1)).unwrap(),
        )),
    );
    let admission = gatehouse_config::AdmissionConfig {
        webhook: Some(format!("http://{hook}/admit")),
        allow_list: None,
        timeout: Duration::from_secs(2),
        cache_for: Duration::from_secs(60),
    };
    let _ = registrar.admission.set(Arc::new(
        gatehouse_control::admission::Admission::new(&admission).unwrap(),
    ));
    let cvm = KeyPair::generate().unwrap();
    let now = gatehouse_attest::unix_now();
    let attempt = |app: &'static str| {
        let registrar = &registrar;
        let (sim, cvm) = (&sim, &cvm);
        async move {
            let nonce = registrar.challenge().unwrap();
            let evidence = sim
                .quote(report_data(app, &cvm.public, &nonce))
                .await
                .unwrap();
            let req = RegisterRequest {
                app_id: app.into(),
                wg_public_key: base64(&cvm.public),
                nonce: gatehouse_attest::hex::encode(&nonce),
                evidence,
            };
            registrar.register(&req, now).await
        }
    };
    let denied = attempt("bank").await.unwrap_err();
    assert_eq!(denied.check, "admission", "{denied}");
    assert!(denied.reason.contains("not on the list"), "{denied}");
    assert!(leases.all().await.unwrap().is_empty(), "denied: no lease");
    assert!(wg.state().await.unwrap().1.is_empty(), "denied: no peer");
    let ok = attempt("shop").await.unwrap();
    assert_eq!(ok.address.to_string(), "10.89.0.2");
    let seen = asked.lock().unwrap().clone();
    assert_eq!(seen[0]["purpose"], "vpc-register");
    assert_eq!(
        seen[0]["measurements"]["mrtd"],
        gatehouse_attest::hex::encode(&SimulatorConfig::default().mrtd)
    );
    assert_eq!(seen[0]["measurements"]["tee"], "tdx-simulated");
    drop(net);
}

/// The README's curl examples of the admin API run as shown against the development defaults
/// (`gatehouse run`: admin on 127.0.0.1:8001, no token), each answering JSON that is not an
/// error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_readme_examples_run_as_shown() {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("## Control plane")
        .nth(1)
        .expect("the README has a control-plane section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a shell block");
    let commands: Vec<String> = block
        .replace("\\\n", " ")
        .lines()
        .map(|l| l.split(" # ").next().unwrap_or("").trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    assert!(commands.len() >= 6, "{commands:?}");
    let gw = Gateway::spawn(tempfile::tempdir().unwrap(), &["run"]);
    for c in &commands {
        assert!(c.starts_with("curl "), "{c}");
        let out = tokio::task::block_in_place(|| {
            std::process::Command::new("sh")
                .args(["-c", c])
                .current_dir(gw.path())
                .output()
                .unwrap()
        });
        assert!(
            out.status.success(),
            "{c}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{c}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        assert!(v.get("error").is_none(), "{c}: {v}");
    }
    let log = gw.log();
    assert!(log.contains("POST /v1/apps -> 201"), "{log}");
}
