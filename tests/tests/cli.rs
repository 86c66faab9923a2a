//! The command line: check-config, --help/--version, and the embedded development defaults.

use gatehouse_tests::{binary, Gateway};
use std::process::Command;

#[test]
fn check_config_lists_every_problem_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[proxy]\nlisten = [\"10.0.0.1\"]\n[[apps]]\nid = \"Bad\"\n[[apps]]\nid = \"ok\"\n[[apps.instances]]\naddress = \"10.0.0.1:80\"\n",
    )
    .unwrap();
    let out = Command::new(binary())
        .args(["check-config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("proxy.listen: \"10.0.0.1\" is not a socket address (missing port)"),
        "{err}"
    );
    assert!(err.contains("apps[0].id: \"Bad\""), "{err}");
    assert!(
        err.contains("apps[1].instances[0].address: \"10.0.0.1:80\" is not an IP address"),
        "{err}"
    );

    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[proxy]\nlisten = [\"127.0.0.1:9443\"]\nbase_domains = [\"gw.test\"]\n\
         [[apps]]\nid = \"web\"\nmode = \"http\"\n[[apps]]\nid = \"shell\"\ndefault_port = 22\nports = [22, 2222]\n",
    )
    .unwrap();
    let out = Command::new(binary())
        .args(["check-config", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What each app exposes, the changed defaults named (issue 17 §4).
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("app web: port 80 only (no `ports` listed), reachable by terminate, h2 (http apps are not reached by passthrough"),
        "{said}"
    );
    assert!(
        said.contains("app shell: ports [22, 2222], reachable by terminate, passthrough, h2"),
        "{said}"
    );
    assert!(
        said.contains("limits: 512 connections per source"),
        "{said}"
    );

    // run refuses a bad config the same way, with exit 2 and nothing started
    let out = Command::new(binary())
        .args(["run", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("proxy.listen"));
}

#[test]
fn help_and_version() {
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["check-config", "--help"],
    ] {
        let out = Command::new(binary()).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
    let out = Command::new(binary()).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("gatehouse "));
    let out = Command::new(binary()).arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "bad usage exits 2");
}

/// `gatehouse run` with no config: the printed curl line works as printed (real curl).
#[test]
fn development_defaults_serve_the_demo_app_to_curl() {
    let gw = Gateway::spawn(tempfile::tempdir().unwrap(), &["run"]);
    assert_eq!(gw.addr.to_string(), "127.0.0.1:8443");
    let ca = gw.path().join(".gatehouse/dev-ca.pem");
    assert!(ca.is_file());
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            ca.to_str().unwrap(),
            "https://demo.localhost:8443/hi",
        ])
        .output()
        .expect("curl is installed by scripts/test.sh");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.contains("Hello from the Gatehouse demo app"),
        "{body}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(body.contains("GET /hi"), "{body}");
    assert!(gw.metric("gatehouse_connections_relayed_total") <= 1);
}

/// Issue 16 §7: a VPC app policy that pins no measurement, or one that trusts the simulator's
/// root on a gateway with a real TEE, is a config error named by `check-config`.
#[test]
fn security_check_config_refuses_unpinned_and_simulator_vpc_policies() {
    let dir = tempfile::tempdir().unwrap();
    let config = |tee: &str| {
        format!(
            "[proxy]\nlisten = [\"127.0.0.1:9443\"]\nbase_domains = [\"gw.test\"]\n[[apps]]\nid = \"shop\"\n[vpc]\nprefix = \"10.88.0.0/24\"\ngateway_address = \"10.88.0.1\"\nregister_listen = \"127.0.0.1:0\"\n[vpc.apps.shop]\npolicy = \"shop.toml\"\n{tee}"
        )
    };
    let check = |policy: &str, tee: &str| {
        std::fs::write(dir.path().join("shop.toml"), policy).unwrap();
        let path = dir.path().join("gw.toml");
        std::fs::write(&path, config(tee)).unwrap();
        let out = Command::new(binary())
            .args(["check-config", path.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let pinned = format!("mrtd = [\"{}\"]\n", "ab".repeat(48));
    let sim = "[tee]\nprovider = \"simulator\"\n";
    let (code, err) = check("allow_smt = true\n", sim);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("vpc.apps.shop.policy") && err.contains("pins no measurement"),
        "{err}"
    );
    let (code, err) = check(
        &format!("{pinned}insecure_trust_simulator_root = true\n"),
        "",
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("would admit forged quotes"), "{err}");
    let (code, err) = check(
        &format!("{pinned}insecure_trust_simulator_root = true\n"),
        sim,
    );
    assert_eq!(code, Some(0), "{err}");
}

/// Issue 16 §7: the agent refuses a gateway policy that pins nothing before it connects.
#[test]
fn security_agent_refuses_an_unpinned_gateway_policy() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("gateway.toml");
    std::fs::write(&policy, "insecure_trust_simulator_root = true\n").unwrap();
    let out = Command::new(binary())
        .args([
            "agent",
            "--register",
            "https://127.0.0.1:9",
            "--app-id",
            "shop",
            "--once",
        ])
        .arg("--gateway-policy")
        .arg(&policy)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pins no measurement"), "{err}");
}

/// On a machine without a TEE (this one), a config without `[tee]` refuses to start in one
/// line that says the fix; with the fix (`[tee] provider = "none"`, one setting) it starts as
/// a plain router and says it seals with the development key.
#[test]
fn config_ux_no_tee_says_the_fix_and_provider_none_alone_runs() {
    let minimal = "[proxy]\nlisten = [\"127.0.0.1:0\"]\nbase_domains = [\"gw.example.com\"]\n";
    let (err, _dir) =
        gatehouse_tests::run_until_refused(minimal, std::time::Duration::from_secs(60));
    let line = err
        .lines()
        .find(|l| l.starts_with("gatehouse: "))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.contains("needs a TEE") && line.contains("[tee] provider = \"none\""),
        "one line naming the cause and the fix: {line}"
    );
    let gw = Gateway::start(&format!("{minimal}[tee]\nprovider = \"none\"\n"));
    assert!(gw.log().contains("DEVELOPMENT SEALER"), "{}", gw.log());
}
