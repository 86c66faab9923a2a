//! The image and the compose files in docker/, through a real Docker engine (Debian's
//! docker.io, a base image made with mmdebstrap: no registry). The image is the Dockerfile's
//! `prebuilt` stage around the binary these tests built.
//!
//! - The demo: TLS answered by the origin container through the gateway container, /healthz
//!   and the image's HEALTHCHECK healthy, `gatehouse verify` passing against the container,
//!   the gateway running as uid 10001 with no capability; the admin API closed to a caller
//!   without the token the container made.
//! - The profiles: Pebble + Knot issue the acme gateway's certificate by DNS-01 (verify with
//!   its CAA step passing through Knot), and two cluster nodes on three etcd members serve one
//!   certificate.
//! - The dstack app definition: a valid compose file whose embedded config the image accepts.

use gatehouse_tests::docker::{repo, Engine, Project};
use gatehouse_tests::knot::free_port;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const IMAGE: &str = "gatehouse:test";
const TOOLS: &str = "gatehouse-demo-tools:test";

/// Polls `f` every half second until it gives `Some`, or panics after `limit` naming `what`.
fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `curl` over TLS to `name` at 127.0.0.1:`port`, trusting `ca`; the body when it succeeds.
fn curl(name: &str, port: u16, ca: &Path, path: &str) -> Option<String> {
    let o = Command::new("curl")
        .args(["-sSf", "--max-time", "5", "--cacert", ca.to_str().unwrap()])
        .args(["--resolve", &format!("{name}:{port}:127.0.0.1")])
        .arg(format!("https://{name}:{port}{path}"))
        .output()
        .unwrap();
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Plain HTTP GET to the admin port; (status, body).
fn admin_get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    let mut args = vec![
        "-s".to_owned(),
        "--max-time".into(),
        "5".into(),
        "-w".into(),
        "\n%{http_code}".into(),
    ];
    if let Some(t) = token {
        args.extend(["-H".into(), format!("Authorization: Bearer {t}")]);
    }
    args.push(format!("http://127.0.0.1:{port}{path}"));
    let o = Command::new("curl").args(&args).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// `gatehouse verify` against a name served at 127.0.0.1:`port`; (exit code, output).
fn verify(dir: &Path, name: &str, port: u16, ca: &Path, extra: &[&str]) -> (i32, String) {
    let (url, connect) = (
        format!("https://{name}:{port}"),
        format!("127.0.0.1:{port}"),
    );
    let mut args = vec!["verify", &url, "--connect", &connect];
    args.extend(["--cacert", ca.to_str().unwrap()]);
    args.extend([
        "--insecure-trust-simulator-root",
        "--accept-any-measurements",
    ]);
    args.extend(extra);
    gatehouse_tests::run_binary(dir, &args)
}

/// The serial of the leaf served for `name` at 127.0.0.1:`port`.
fn served_serial(name: &str, port: u16) -> Option<String> {
    let s = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername {name} </dev/null 2>/dev/null \
             | openssl x509 -noout -serial"
        ))
        .output()
        .ok()?;
    let out = String::from_utf8_lossy(&s.stdout).trim().to_owned();
    out.starts_with("serial=").then_some(out)
}

/// The demo, then its profiles, in one compose project (they share the demo network).
#[test]
fn docker_image_compose_demo_and_profiles() {
    let Some(engine) = Engine::or_skip("docker_image_compose_demo_and_profiles") else {
        return;
    };
    let started = Instant::now();
    engine.build_gateway_image(&gatehouse_tests::binary(), IMAGE);
    engine.build_tools_image(TOOLS);
    eprintln!("images built in {:?}", started.elapsed());
    let ports: Vec<(&str, u16)> = [
        "GATEHOUSE_TLS_PORT",
        "GATEHOUSE_ADMIN_PORT",
        "ACME_TLS_PORT",
        "ACME_ADMIN_PORT",
        "PEBBLE_PORT",
        "KNOT_PORT",
        "NODE1_TLS_PORT",
        "NODE2_TLS_PORT",
    ]
    .into_iter()
    .map(|k| (k, free_port()))
    .collect();
    let port = |k: &str| ports.iter().find(|(n, _)| *n == k).unwrap().1;
    let mut env: Vec<(String, String)> = ports
        .iter()
        .map(|(k, p)| (k.to_string(), p.to_string()))
        .collect();
    env.push(("GATEHOUSE_IMAGE".into(), IMAGE.into()));
    env.push(("GATEHOUSE_TOOLS_IMAGE".into(), TOOLS.into()));
    let mut project = engine.project(&repo().join("docker/compose.yaml"), env);
    project.compose(&["up", "-d", "--no-build"]);
    let dir = tempfile::tempdir().unwrap();
    demo(
        &engine,
        &project,
        dir.path(),
        port("GATEHOUSE_TLS_PORT"),
        port("GATEHOUSE_ADMIN_PORT"),
    );

    project.with_profile("acme");
    project.with_profile("cluster");
    project.compose(&["up", "-d", "--no-build"]);
    acme_profile(&project, dir.path(), &port);
    cluster_profile(&project, dir.path(), &port);
}

fn demo(engine: &Engine, project: &Project, dir: &Path, tls: u16, admin: u16) {
    let ca = dir.join("dev-ca.pem");
    let pem = wait_for(
        "the development CA in the state volume",
        Duration::from_secs(60),
        || project.read("gateway", "/var/lib/gatehouse/dev-ca.pem"),
    );
    std::fs::write(&ca, pem).unwrap();

    // TLS terminated by the gateway container, the page from the origin container.
    let page = wait_for("the demo over TLS", Duration::from_secs(60), || {
        curl("demo.localhost", tls, &ca, "/")
    });
    assert!(page.contains("Hello from the demo origin"), "{page}");

    // /healthz needs no token; the API beyond loopback needs the one the container made.
    assert_eq!(admin_get(admin, "/healthz", None), (200, "ok\n".into()));
    assert_eq!(admin_get(admin, "/v1/apps", None).0, 401);
    let token = project
        .read("gateway", "/var/lib/gatehouse/admin.token")
        .expect("the admin token in the state volume");
    let (status, apps) = admin_get(admin, "/v1/apps", Some(token.trim()));
    assert_eq!(status, 200, "{apps}");
    assert!(
        apps.contains("172.31.250.10"),
        "the demo app's origin: {apps}"
    );

    // The image's HEALTHCHECK (`gatehouse health`) turns the container healthy.
    let id = project.container("gateway");
    wait_for("the container healthy", Duration::from_secs(90), || {
        let s = engine.docker(&["inspect", "--format", "{{.State.Health.Status}}", &id]);
        (s.trim() == "healthy").then_some(())
    });

    // The attestation checks out against the container.
    let (code, out) = verify(dir, "demo.localhost", tls, &ca, &[]);
    assert_eq!(code, 0, "{out}");
    for step in [
        "✓ quote",
        "✓ policy",
        "✓ binding",
        "✓ certificate",
        "verified",
    ] {
        assert!(out.contains(step), "{step} missing:\n{out}");
    }

    // Non-root, no capability, no new privileges: the image's user, and PID 1 as it runs.
    let user = engine.docker(&["inspect", "--format", "{{.Config.User}}", &id]);
    assert_eq!(user.trim(), "10001:10001");
    let status = project.read("gateway", "/proc/1/status").unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|| panic!("{k} in /proc/1/status"))
    };
    assert_eq!(field("Uid:"), "10001 10001 10001 10001");
    assert_eq!(field("CapEff:"), "0000000000000000");
    assert_eq!(field("CapPrm:"), "0000000000000000");
    assert_eq!(field("NoNewPrivs:"), "1");
}

/// Pebble's root (fetched over its management API, trusting the demo CA).
fn pebble_root(project: &Project, dir: &Path, pebble_port: u16) -> std::path::PathBuf {
    let demo_ca = dir.join("demo-ca.pem");
    let pem = wait_for("the demo secrets", Duration::from_secs(60), || {
        project.read("pebble", "/demo/ca.pem")
    });
    std::fs::write(&demo_ca, pem).unwrap();
    let root = wait_for("Pebble's root", Duration::from_secs(60), || {
        curl("pebble", pebble_port, &demo_ca, "/roots/0")
    });
    let path = dir.join("pebble-root.pem");
    std::fs::write(&path, root).unwrap();
    path
}

fn acme_profile(project: &Project, dir: &Path, port: &dyn Fn(&str) -> u16) {
    let root = pebble_root(project, dir, port("PEBBLE_PORT"));
    let tls = port("ACME_TLS_PORT");
    // A certificate from Pebble, by DNS-01 through Knot, served for the demo origin.
    let page = wait_for(
        "the acme gateway's certificate",
        Duration::from_secs(90),
        || curl("demo.demo.test", tls, &root, "/"),
    );
    assert!(page.contains("Hello from the demo origin"), "{page}");
    // Attested, and CAA (as Knot serves it) locked to the account the claims name.
    let knot = format!("127.0.0.1:{}", port("KNOT_PORT"));
    let (code, out) = verify(
        dir,
        "demo.demo.test",
        tls,
        &root,
        &[
            "--dns-server",
            &knot,
            "--caa-issuer",
            "pebble.letsencrypt.org",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("✓ caa"), "{out}");
    assert!(out.contains("made in the TEE"), "{out}");
}

fn cluster_profile(project: &Project, dir: &Path, port: &dyn Fn(&str) -> u16) {
    let root = dir.join("pebble-root.pem");
    let name = "demo.cluster.demo.test";
    let (one, two) = (port("NODE1_TLS_PORT"), port("NODE2_TLS_PORT"));
    for p in [one, two] {
        let page = wait_for(
            "a cluster node's certificate",
            Duration::from_secs(120),
            || curl(name, p, &root, "/"),
        );
        assert!(page.contains("Hello from the demo origin"), "{page}");
    }
    // One order for the cluster: both nodes serve the same certificate.
    let serials = wait_for(
        "one certificate on both nodes",
        Duration::from_secs(30),
        || {
            let (a, b) = (served_serial(name, one)?, served_serial(name, two)?);
            (a == b).then_some(a)
        },
    );
    assert!(serials.starts_with("serial="));
    let (ok, status) = project.try_compose(&[
        "exec",
        "-T",
        "node1",
        "gatehouse",
        "cluster",
        "status",
        "--config",
        "/etc/gatehouse/cluster-node.toml",
    ]);
    assert!(ok && status.contains("members: 2"), "{status}");
}

/// The dstack compose file parses (its config reaching the service's environment), and the
/// config it embeds passes `check-config` in the image, with the two secret files its
/// entrypoint writes. (Running it needs a dstack guest agent; see the note in README.)
#[test]
fn docker_dstack_app_definition_is_valid() {
    let Some(engine) = Engine::or_skip("docker_dstack_app_definition_is_valid") else {
        return;
    };
    let file = repo().join("docker/dstack/compose.yaml");
    let project = engine.project(
        &file,
        vec![
            ("GATEHOUSE_ADMIN_TOKEN".into(), "t".into()),
            ("CLOUDFLARE_API_TOKEN".into(), "c".into()),
        ],
    );
    let config = project.compose(&["config"]);
    assert!(config.contains("/var/run/dstack.sock"), "{config}");
    assert!(
        config.contains("provider = \"dstack\""),
        "the config reaches the service: {config}"
    );
    assert!(
        config.contains("gatehouse@sha256:"),
        "the image is pinned by digest"
    );

    let compose = std::fs::read_to_string(&file).unwrap();
    let toml = embedded_config(&compose);
    assert!(toml.contains("provider = \"dstack\""), "{toml}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gatehouse.toml"), &toml).unwrap();
    engine.build_gateway_image(&gatehouse_tests::binary(), IMAGE);
    let mount = format!("{}:/etc/gatehouse:ro", dir.path().display());
    let out = engine.docker(&[
        "run",
        "--rm",
        "-v",
        &mount,
        "--tmpfs",
        "/run/gatehouse:uid=10001,gid=10001",
        "--entrypoint",
        "/bin/sh",
        IMAGE,
        "-c",
        "echo t > /run/gatehouse/admin.token && echo c > /run/gatehouse/cloudflare.token \
         && gatehouse check-config /etc/gatehouse/gatehouse.toml",
    ]);
    assert!(out.contains("store"), "check-config names the store: {out}");
}

/// The TOML of `x-gatehouse-config: &gatehouse-config |`, dedented.
fn embedded_config(compose: &str) -> String {
    let mut lines = compose
        .lines()
        .skip_while(|l| !l.starts_with("x-gatehouse-config:"));
    lines.next().expect("the config block in the compose file");
    let body: Vec<&str> = lines
        .take_while(|l| l.is_empty() || l.starts_with("  "))
        .collect();
    body.iter()
        .map(|l| l.get(2..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}
