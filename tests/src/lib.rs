//! Harness for end-to-end tests: the real `gatehouse` binary with a generated config, and real
//! TLS/TCP servers on loopback (ephemeral ports, a temp dir per test, kill on drop).

pub mod acme_env;
pub mod admin;
pub mod ari;
pub mod browser;
pub mod ct_log;
pub mod docker;
pub mod etcd;
pub mod faults;
pub mod http;
pub mod intercept;
pub mod knot;
pub mod netns;
pub mod origins;
pub mod pebble;
pub mod pki;
pub mod servers;
pub mod store_conformance;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Builds the binary once per test process (a no-op when up to date) and returns its path.
pub fn binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        // The selection `cargo test --workspace` builds, so features unify the same way and
        // this is a no-op after it (`-p gatehouse` alone resolves features differently and
        // rebuilt part of the tree for every test binary).
        // Without the variables cargo sets for this test process (CARGO_MANIFEST_DIR,
        // CARGO_PKG_NAME, ...): ring's build script reruns when they change, and with it half
        // the tree, once here and once more in the next `cargo test`.
        let mut build = Command::new(cargo);
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_MANIFEST_")
                || name.starts_with("CARGO_BIN_")
                || matches!(
                    &*name,
                    "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR"
                )
            {
                build.env_remove(&*name);
            }
        }
        let status = build
            .args(["build", "-q", "--workspace", "--bins", "--tests"])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build --workspace failed");
        // tests run from target/<profile>/deps/
        let exe = std::env::current_exe().unwrap();
        let bin = exe.parent().unwrap().parent().unwrap().join("gatehouse");
        assert!(bin.is_file(), "{} not found", bin.display());
        bin
    })
    .clone()
}

/// A running gatehouse process. Killed on drop; its log is printed if the test failed.
pub struct Gateway {
    child: Option<Child>,
    /// The TLS listener.
    pub addr: SocketAddr,
    /// The admin listener, if configured.
    pub admin: Option<SocketAddr>,
    /// The plain-HTTP redirect listener, if configured.
    pub redirect: Option<SocketAddr>,
    /// The temp dir holding config and log.
    pub dir: tempfile::TempDir,
    /// `program args` run before the binary (e.g. `ip netns exec NS`).
    wrapper: Vec<String>,
    args: Vec<String>,
}

impl Gateway {
    /// Starts `gatehouse run --config` with `config` (TOML) written into a fresh temp dir.
    /// `listen` should be `127.0.0.1:0`; the bound port is read from the start-up output.
    pub fn start(config: &str) -> Gateway {
        Gateway::start_in(tempfile::tempdir().unwrap(), config)
    }

    /// Like [`Gateway::start`], in a temp dir the test already filled (certificates...).
    pub fn start_in(dir: tempfile::TempDir, config: &str) -> Gateway {
        let path = dir.path().join("gatehouse.toml");
        std::fs::write(&path, config).unwrap();
        Gateway::spawn(dir, &["run", "--config", path.to_str().unwrap()])
    }

    /// Starts `gatehouse` with `args` in `dir` (the working directory).
    pub fn spawn(dir: tempfile::TempDir, args: &[&str]) -> Gateway {
        Gateway::spawn_wrapped(dir, &[], args)
    }

    /// Like [`Gateway::spawn`], through `wrapper` (e.g. `["ip", "netns", "exec", "gw"]`,
    /// which execs: the child's PID stays the gateway's).
    pub fn spawn_wrapped(dir: tempfile::TempDir, wrapper: &[&str], args: &[&str]) -> Gateway {
        let log = std::fs::File::create(dir.path().join("gatehouse.log")).unwrap();
        let bin = binary();
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let mut child = command
            .args(args)
            .current_dir(dir.path())
            .env("RUST_LOG", "gatehouse=debug,info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn gatehouse");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut gw = Gateway {
            child: Some(child),
            addr: "0.0.0.0:0".parse().unwrap(),
            admin: None,
            redirect: None,
            dir,
            wrapper: wrapper.iter().map(|a| a.to_string()).collect(),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => panic!("gatehouse did not start:\n{}", gw.log()),
            };
            if let Some(rest) = line.strip_prefix("gatehouse: listening on ") {
                gw.addr = rest.split(' ').next().unwrap().parse().unwrap();
            } else if let Some(rest) = line.strip_prefix("gatehouse: admin on http://") {
                gw.admin = Some(rest.trim_end_matches("/metrics").parse().unwrap());
            } else if let Some(rest) = line.strip_prefix("gatehouse: redirecting http://") {
                gw.redirect = Some(rest.split(' ').next().unwrap().parse().unwrap());
            } else if line.starts_with("gatehouse: ready") || line.starts_with("gatehouse: try it")
            {
                break;
            }
        }
        gw
    }

    /// Kills the process (SIGKILL: no clean shutdown) and starts it again with the same
    /// arguments in the same directory; the old log is kept as `gatehouse.log.<n>`.
    pub fn restart(mut self) -> Gateway {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let log = self.dir.path().join("gatehouse.log");
        let n = (1..)
            .find(|n| !self.dir.path().join(format!("gatehouse.log.{n}")).exists())
            .unwrap();
        std::fs::rename(&log, self.dir.path().join(format!("gatehouse.log.{n}"))).unwrap();
        let args = std::mem::take(&mut self.args);
        let wrapper = std::mem::take(&mut self.wrapper);
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        Gateway::spawn_wrapped(dir, &wrapper, &args)
    }

    /// Kills the process (SIGKILL) and waits for it; [`Gateway::restart`] starts it again.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Polls the log until it contains `needle` (bounded by `limit`); returns the log.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            if Instant::now() > deadline {
                panic!("{needle:?} not logged within {limit:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gatehouse.log")).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// How many descriptors the process holds now.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// The temp dir.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        assert!(Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Waits for the process to exit, with a bound.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut().unwrap();
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// `GET /metrics` from the admin listener, as text.
    pub fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.admin.expect("admin listener")).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    /// The value of one metric line (`name{labels}`), 0 if absent.
    pub fn metric(&self, series: &str) -> u64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0)
    }

    /// Polls `metric(series)` until it reaches `at_least` (bounded), returning the last value.
    pub fn wait_metric(&self, series: &str, at_least: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.metric(series);
            if v >= at_least || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- gatehouse log ----\n{}", self.log());
        }
    }
}

/// Runs `gatehouse args` in `dir` to its end: (exit code, stdout + stderr).
pub fn run_binary(dir: &Path, args: &[&str]) -> (i32, String) {
    let o = Command::new(binary())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.code().unwrap_or(-1), out)
}

/// Runs `gatehouse run` on `config` in a fresh directory and expects it to refuse to start
/// within `limit`; returns its stderr and the directory (to look at what it left).
pub fn run_until_refused(config: &str, limit: Duration) -> (String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(binary())
        .args(["run", "--config", path.to_str().unwrap()])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("still running after {limit:?}: it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    (String::from_utf8_lossy(&out.stderr).into_owned(), dir)
}

/// The config header used by most tests: one loopback listener, base domain `gw.test`, short
/// timeouts, admin on loopback.
pub fn base_config(extra_proxy: &str) -> String {
    format!(
        r#"
[proxy]
listen = ["127.0.0.1:0"]
base_domains = ["gw.test"]
workers = 2
allow_local_instances = true
{extra_proxy}
[proxy.timeouts]
handshake = "3s"
connect = "1s"
drain = "10s"
[proxy.custom_domains]
enabled = false

[admin]
listen = "127.0.0.1:0"
insecure_no_auth = true
{SIMULATED_TEE}"#
    )
}

/// The `[tee]` section of test gateways: this machine has no TEE, and `auto` (the default)
/// refuses to start without one.
pub const SIMULATED_TEE: &str = "\n[tee]\nprovider = \"simulator\"\n";
