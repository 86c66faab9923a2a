//! `gatehouse caa set` through a TSIG-only Knot: the lock is written, read back as a CA
//! would, and a refused key is one clear line.

use gatehouse_tests::binary;
use gatehouse_tests::knot::{Knot, TsigSecret};
use std::process::Command;

const ACCOUNT: &str = "https://acme-v02.api.letsencrypt.org/acme/acct/12345";

fn config(dir: &std::path::Path, knot: &Knot, key_name: &str, secret: &str) -> std::path::PathBuf {
    std::fs::write(dir.join("tsig.key"), secret).unwrap();
    let path = dir.join("gatehouse.toml");
    std::fs::write(
        &path,
        format!(
            "[dns]\nprovider = \"rfc2136\"\nresolvers = [\"{k}\"]\n[dns.rfc2136]\nserver = \"{k}\"\nzones = [\"test\"]\nkey_name = \"{key_name}\"\nkey_file = \"tsig.key\"\n",
            k = knot.addr
        ),
    )
    .unwrap();
    path
}

fn gatehouse(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn caa_check(names: &[&str], server: &str) -> (i32, String, String) {
    let mut args = vec!["caa", "check"];
    args.extend_from_slice(names);
    args.extend_from_slice(&["--account", ACCOUNT, "--server", server]);
    gatehouse(&args)
}

fn caa_set(cfg: &std::path::Path) -> (i32, String, String) {
    gatehouse(&[
        "caa",
        "set",
        "gw.test",
        "--config",
        cfg.to_str().unwrap(),
        "--account",
        ACCOUNT,
    ])
}

#[test]
fn caa_set_replaces_a_foreign_issuer_and_the_lock_reads_back() {
    let key = TsigSecret::random("gatehouse-update");
    let knot = Knot::start_updatable("test", &["gw 60 CAA 0 issue \"someca.example\""], &key);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &knot, &key.name, &key.secret_b64);
    let server = knot.addr.to_string();
    let (code, _, _) = caa_check(&["gw.test"], &server);
    assert_eq!(code, 1, "someca.example may issue before");

    let (code, out, err) = caa_set(&cfg);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("gw.test: ") && out.contains("locked: only our account may issue"),
        "{out}"
    );

    let (code, out, _) = caa_check(&["gw.test", "*.gw.test"], &server);
    assert_eq!(code, 0, "{out}");
    let (_, out, _) = caa_set(&cfg);
    assert!(out.contains("0 change(s)"), "idempotent: {out}");
}

#[test]
fn a_refused_tsig_key_is_one_line_naming_the_key() {
    let key = TsigSecret::random("gatehouse-update");
    let knot = Knot::start_updatable("test", &[], &key);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &knot, "stolen-key", &key.secret_b64);
    let (code, out, err) = caa_set(&cfg);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("TSIG key \"stolen-key\" refused (BADKEY"),
        "{err}"
    );
}
