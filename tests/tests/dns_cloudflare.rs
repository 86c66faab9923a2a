//! The Cloudflare provider's real HTTP client against a local server that replays the v4
//! API's recorded response shapes (envelope, zone list, DNS record objects with `data` for
//! CAA, error objects). No live test is possible here: there is no internet.

use gatehouse_caa::plan::{self, Step};
use gatehouse_caa::{CaaRecord, Policy};
use gatehouse_dns::{Cloudflare, DnsError, DnsProvider};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TOKEN: &str = "test-token-abc";
const ZONE_ID: &str = "023e105f4ecef8ad9ca31a8372d0c353";

/// The replaying API: zone `example.com`, an in-memory record list, every request logged.
#[derive(Default)]
struct Api {
    records: Vec<Value>,
    log: Vec<String>,
    next_id: u32,
}

fn envelope(result: Value) -> Value {
    json!({"result": result, "success": true, "errors": [], "messages": [],
           "result_info": {"page": 1, "per_page": 100, "count": 1, "total_count": 1}})
}

fn handle(api: &Mutex<Api>, method: &str, target: &str, auth: &str, body: &str) -> (u16, Value) {
    let mut api = api.lock().unwrap();
    api.log
        .push(format!("{method} {}", target.split('?').next().unwrap()));
    if auth != format!("Bearer {TOKEN}") {
        // recorded shape of an invalid token
        return (
            403,
            json!({"success": false, "errors": [{"code": 10000, "message": "Authentication error"}],
                   "messages": [], "result": null}),
        );
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let param = |k: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .unwrap_or("")
            .to_owned()
    };
    let records_path = format!("/client/v4/zones/{ZONE_ID}/dns_records");
    match (method, path) {
        ("GET", "/client/v4/zones") => {
            let zones = if param("name") == "example.com" {
                json!([{"id": ZONE_ID, "name": "example.com", "status": "active", "paused": false,
                         "type": "full", "name_servers": ["bob.ns.cloudflare.com", "lola.ns.cloudflare.com"]}])
            } else {
                json!([])
            };
            (200, envelope(zones))
        }
        ("GET", p) if p == records_path => {
            let (t, n) = (param("type"), param("name"));
            let found: Vec<Value> = api
                .records
                .iter()
                .filter(|r| r["type"] == t.as_str() && r["name"] == n.as_str())
                .cloned()
                .collect();
            (200, envelope(Value::Array(found)))
        }
        ("POST", p) if p == records_path => {
            let mut r: Value = serde_json::from_str(body).unwrap();
            api.next_id += 1;
            r["id"] = json!(format!("372e67954025e0ba6aaa6d586b9e0b{:02}", api.next_id));
            r["zone_id"] = json!(ZONE_ID);
            r["proxied"] = json!(false);
            if r["type"] == "CAA" {
                let d = &r["data"];
                r["content"] = json!(format!(
                    "{} {} \"{}\"",
                    d["flags"],
                    d["tag"].as_str().unwrap(),
                    d["value"].as_str().unwrap()
                ));
            } else {
                // Cloudflare returns TXT content quoted
                r["content"] = json!(format!("\"{}\"", r["content"].as_str().unwrap()));
            }
            api.records.push(r.clone());
            (200, envelope(r))
        }
        ("DELETE", p) if p.starts_with(&format!("{records_path}/")) => {
            let id = p.rsplit('/').next().unwrap().to_owned();
            api.records.retain(|r| r["id"] != id.as_str());
            (200, envelope(json!({"id": id})))
        }
        _ => (
            404,
            json!({"success": false, "errors": [{"code": 7003, "message": "Could not route"}], "messages": [], "result": null}),
        ),
    }
}

fn start(api: Arc<Mutex<Api>>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let api = api.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let mut parts = line.split_whitespace();
                let (method, target) = (
                    parts.next().unwrap().to_owned(),
                    parts.next().unwrap().to_owned(),
                );
                let (mut auth, mut len) = (String::new(), 0usize);
                loop {
                    let mut h = String::new();
                    r.read_line(&mut h).unwrap();
                    if h.trim().is_empty() {
                        break;
                    }
                    let (k, v) = h.split_once(':').unwrap();
                    match k.to_ascii_lowercase().as_str() {
                        "authorization" => auth = v.trim().to_owned(),
                        "content-length" => len = v.trim().parse().unwrap(),
                        _ => {}
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                let (status, out) = handle(
                    &api,
                    &method,
                    &target,
                    &auth,
                    &String::from_utf8(body).unwrap(),
                );
                let out = out.to_string();
                let mut s = s;
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{out}",
                    out.len()
                );
            });
        }
    });
    addr
}

fn client(addr: SocketAddr, token: &str) -> Cloudflare {
    Cloudflare::new(
        &format!("http://{addr}/client/v4"),
        token,
        Duration::from_secs(5),
    )
    .unwrap()
}

#[tokio::test]
async fn txt_records_are_created_once_found_by_zone_and_deleted() {
    let api = Arc::new(Mutex::new(Api::default()));
    let cf = client(start(api.clone()), TOKEN);
    let name = "_acme-challenge.gw.example.com";
    cf.add_txt(name, "token-1").await.unwrap();
    cf.add_txt(name, "token-1").await.unwrap();
    cf.add_txt(name, "token-2").await.unwrap();
    {
        let api = api.lock().unwrap();
        let posts = api.log.iter().filter(|l| l.starts_with("POST")).count();
        assert_eq!(
            posts, 2,
            "an existing value is not posted again: {:?}",
            api.log
        );
        // the zone was looked up by suffix once, then cached
        let zone_lookups = api
            .log
            .iter()
            .filter(|l| *l == "GET /client/v4/zones")
            .count();
        assert_eq!(zone_lookups, 3, "{:?}", api.log); // _acme-challenge.gw..., gw.example.com, example.com
    }
    cf.remove_txt(name, "token-1").await.unwrap();
    let left: Vec<String> = api
        .lock()
        .unwrap()
        .records
        .iter()
        .map(|r| r["content"].to_string())
        .collect();
    assert_eq!(left, vec!["\"\\\"token-2\\\"\"".to_owned()]);
}

#[tokio::test]
async fn caa_is_replaced_guard_first_one_call_per_step() {
    let api = Arc::new(Mutex::new(Api::default()));
    let cf = client(start(api.clone()), TOKEN);
    let foreign = CaaRecord::new(0, "issue", "someca.example");
    cf.apply_caa("gw.example.com", &[Step::Add(foreign.clone())])
        .await
        .unwrap();
    api.lock().unwrap().log.clear();

    let policy = Policy {
        issuers: vec!["letsencrypt.org".into()],
        accounts: vec!["https://acme-v02.api.letsencrypt.org/acme/acct/1".into()],
        methods: vec!["dns-01".into()],
    };
    let wanted = plan::wanted(&policy);
    let steps = cf.set_caa("gw.example.com", &wanted).await.unwrap();
    assert_eq!(steps, plan::update(&[foreign], &wanted));
    let mut now = cf.list_caa("gw.example.com").await.unwrap();
    now.sort_by(|a, b| a.tag.cmp(&b.tag));
    assert_eq!(now, wanted, "only our records remain, guards removed");
    // the first writes were the guards
    let log = api.lock().unwrap().log.clone();
    let writes: Vec<&String> = log.iter().filter(|l| !l.starts_with("GET")).collect();
    assert!(
        writes[0].starts_with("POST") && writes[1].starts_with("POST"),
        "{log:?}"
    );
    assert!(matches!(&steps[0], Step::Add(r) if r.value == b";"));
}

#[tokio::test]
async fn api_errors_and_unsafe_endpoints_are_clear() {
    let api = Arc::new(Mutex::new(Api::default()));
    let addr = start(api);
    let err = client(addr, "wrong")
        .add_txt("_acme-challenge.gw.example.com", "x")
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::Api { status: 403, .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("Authentication error (code 10000)"),
        "{err}"
    );

    let err = client(addr, TOKEN)
        .add_txt("_acme-challenge.other.org", "x")
        .await
        .unwrap_err();
    assert!(matches!(err, DnsError::NoZone { .. }), "{err}");

    let err = Cloudflare::new(
        "http://api.cloudflare.com/client/v4",
        TOKEN,
        Duration::from_secs(1),
    )
    .unwrap_err();
    assert!(err.to_string().contains("must be https"), "{err}");
    assert!(
        !format!("{:?}", client(addr, TOKEN)).contains(TOKEN),
        "the token is never printed"
    );
}
