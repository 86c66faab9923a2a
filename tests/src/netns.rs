//! Network namespaces and userspace WireGuard daemons made by a test, removed (daemons killed
//! by PID, namespaces deleted) when the [`Net`] is dropped, also on failure.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Whether this process may create namespaces and TUN devices.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
}

/// Whether WireGuard tests can run here; prints why not.
pub fn wireguard_ready() -> bool {
    let ok = is_root()
        && Command::new("wireguard-go")
            .arg("--version")
            .output()
            .is_ok();
    if !ok {
        eprintln!("SKIPPED: needs root and wireguard-go (scripts/test.sh installs it)");
    }
    ok
}

/// Runs `ip` with `args`, panicking with its stderr on failure.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Namespaces and processes of one test.
#[derive(Default)]
pub struct Net {
    namespaces: Vec<String>,
    processes: Vec<Child>,
    daemons: Vec<(String, Child)>,
    /// The daemons' logs, removed on drop unless the test failed.
    logs: Vec<std::path::PathBuf>,
}

impl Net {
    /// A new namespace (loopback up).
    pub fn namespace(&mut self, name: &str) {
        ip(&["netns", "add", name]);
        self.namespaces.push(name.to_owned());
        ip(&["-n", name, "link", "set", "lo", "up"]);
    }

    /// Starts `wireguard-go -f <ifname>` inside `ns` and waits for its UAPI socket (interface
    /// names must be unique: the socket directory is shared by all namespaces).
    pub fn wireguard(&mut self, ns: &str, ifname: &str) {
        let path = std::env::temp_dir().join(format!("{ifname}.log"));
        let log = std::fs::File::create(&path).unwrap();
        self.logs.push(path);
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "wireguard-go", "-f", ifname])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemons.push((ifname.to_owned(), child));
        let sock = format!("/var/run/wireguard/{ifname}.sock");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::path::Path::new(&sock).exists() {
            assert!(Instant::now() < deadline, "{sock} never appeared");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the WireGuard daemon of `ifname` (SIGTERM, so it removes its socket and
    /// interface) and waits for it.
    pub fn stop_wireguard(&mut self, ifname: &str) {
        let i = self
            .daemons
            .iter()
            .position(|(n, _)| n == ifname)
            .expect("a daemon this Net started");
        let (_, mut child) = self.daemons.remove(i);
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }

    /// A veth pair `<name>a` in `a` with `a_cidr`, `<name>b` in `b` with `b_cidr` (`None`:
    /// this namespace), both up. Names: at most 14 characters (the ends add one).
    pub fn link(
        &mut self,
        name: &str,
        a: Option<&str>,
        a_cidr: &str,
        b: Option<&str>,
        b_cidr: &str,
    ) {
        let (ea, eb) = (format!("{name}a"), format!("{name}b"));
        ip(&["link", "add", &ea, "type", "veth", "peer", "name", &eb]);
        for (end, ns, cidr) in [(&ea, a, a_cidr), (&eb, b, b_cidr)] {
            let mut pre: Vec<&str> = Vec::new();
            if let Some(ns) = ns {
                ip(&["link", "set", end, "netns", ns]);
                pre = vec!["-n", ns];
            }
            ip(&[&pre[..], &["addr", "add", cidr, "dev", end]].concat());
            ip(&[&pre[..], &["link", "set", end, "up"]].concat());
        }
    }

    /// Keeps `child` to be killed on drop.
    pub fn keep(&mut self, child: Child) {
        self.processes.push(child);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let daemons = self.daemons.iter_mut().map(|(_, c)| c);
        for p in self.processes.iter_mut().chain(daemons) {
            let _ = p.kill();
            let _ = p.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        if !std::thread::panicking() {
            for log in &self.logs {
                let _ = std::fs::remove_file(log);
            }
        }
    }
}

/// A `gatehouse agent` in a namespace, its stdout lines collected; killed on drop.
pub struct AgentProc {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl AgentProc {
    pub fn start(ns: &str, args: &[&str]) -> AgentProc {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(crate::binary())
            .arg("agent")
            .args(args)
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        AgentProc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for the `n`-th line containing `needle` (1-based); returns it.
    pub fn wait_line(&mut self, needle: &str, n: usize, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self.seen.iter().filter(|l| l.contains(needle)).nth(n - 1) {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => panic!(
                    "agent never printed {needle:?} ×{n}:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
