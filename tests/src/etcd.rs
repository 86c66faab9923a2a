//! Real etcd members (Debian's `etcd-server`) on loopback ports with temporary data
//! directories: one for the store's conformance suite, several for a cluster.

use crate::knot::free_port;
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One running etcd member. Killed on drop.
pub struct EtcdMember {
    child: Option<Child>,
    /// `http://127.0.0.1:<port>` (or each `https://<host>:<port>` of a TLS member, joined
    /// by commas), where clients connect.
    pub client_url: String,
    /// The CA of a TLS member's certificate.
    ca_file: Option<std::path::PathBuf>,
    name: String,
    args: Vec<String>,
    dir: tempfile::TempDir,
}

/// A running etcd cluster of one or more members.
pub struct EtcdCluster {
    /// The members, in start order.
    pub members: Vec<EtcdMember>,
}

fn etcd_binary() -> &'static str {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("etcd not installed: run ./scripts/test.sh, which installs Debian's etcd-server")
}

impl EtcdCluster {
    /// A one-member cluster.
    pub fn single() -> EtcdCluster {
        EtcdCluster::start(1)
    }

    /// One member serving clients over TLS on `hosts` (IP addresses, one port), with a
    /// certificate from `ca` naming them; `etcdctl` is pointed at the CA.
    pub fn single_tls(hosts: &[&str], ca: &crate::pki::TestCa) -> EtcdCluster {
        let mut cluster = EtcdCluster::start_members(1, false);
        let m = &mut cluster.members[0];
        let port = free_port();
        let dir = m.dir.path().to_owned();
        ca.write(&dir, "etcd", hosts);
        std::fs::write(dir.join("ca.pem"), &ca.pem).unwrap();
        let urls: Vec<String> = hosts
            .iter()
            .map(|h| format!("https://{h}:{port}"))
            .collect();
        m.client_url = urls.join(",");
        m.ca_file = Some(dir.join("ca.pem"));
        let listen = m
            .args
            .iter()
            .position(|a| a == "--listen-client-urls")
            .unwrap();
        m.args[listen + 1] = m.client_url.clone();
        m.args[listen + 3] = m.client_url.clone();
        m.args.extend([
            "--cert-file".to_owned(),
            dir.join("etcd.pem").display().to_string(),
            "--key-file".to_owned(),
            dir.join("etcd.key").display().to_string(),
        ]);
        m.launch();
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    /// `n` members on fresh loopback ports, each with its own data directory; returns once
    /// every member answers its client port and the cluster has a leader.
    pub fn start(n: usize) -> EtcdCluster {
        let cluster = EtcdCluster::start_members(n, true);
        cluster.wait_healthy(Duration::from_secs(30));
        cluster
    }

    fn start_members(n: usize, launch: bool) -> EtcdCluster {
        let token = format!("gatehouse-test-{}", fastrand::u64(..));
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let initial = initial.join(",");
        let members = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| {
                let name = format!("m{i}");
                let dir = tempfile::tempdir().unwrap();
                let client_url = format!("http://127.0.0.1:{client}");
                let peer_url = format!("http://127.0.0.1:{peer}");
                let args = vec![
                    "--name".into(),
                    name.clone(),
                    "--data-dir".into(),
                    dir.path().join("data").display().to_string(),
                    "--listen-client-urls".into(),
                    client_url.clone(),
                    "--advertise-client-urls".into(),
                    client_url.clone(),
                    "--listen-peer-urls".into(),
                    peer_url.clone(),
                    "--initial-advertise-peer-urls".into(),
                    peer_url,
                    "--initial-cluster".into(),
                    initial.clone(),
                    "--initial-cluster-token".into(),
                    token.clone(),
                    "--initial-cluster-state".into(),
                    "new".into(),
                    // Short elections: tests stop members on purpose.
                    "--heartbeat-interval".into(),
                    "50".into(),
                    "--election-timeout".into(),
                    "500".into(),
                ];
                let mut m = EtcdMember {
                    child: None,
                    client_url,
                    ca_file: None,
                    name,
                    args,
                    dir,
                };
                if launch {
                    m.launch();
                }
                m
            })
            .collect();
        EtcdCluster { members }
    }

    /// The client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// Runs `etcdctl` against the cluster; its stdout, or a panic with its stderr.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let live: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| m.client_url.clone())
            .collect();
        let out = self
            .ctl(&live.join(","))
            .args(args)
            .output()
            .expect("etcdctl not installed: run ./scripts/test.sh (Debian's etcd-client)");
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the running members answer `endpoint health`.
    pub fn wait_healthy(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            let port: u16 = m.client_url.rsplit(':').next().unwrap().parse().unwrap();
            let host = m
                .client_url
                .split(',')
                .next()
                .and_then(|u| u.split("://").nth(1))
                .and_then(|u| u.rsplit_once(':'))
                .map_or("127.0.0.1".to_owned(), |(h, _)| h.to_owned());
            while TcpStream::connect((host.as_str(), port)).is_err() {
                assert!(Instant::now() < deadline, "etcd {} never listened", m.name);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        loop {
            let first = self.endpoints()[0].split(',').next().unwrap().to_owned();
            let ok = self
                .ctl(&first)
                .args(["endpoint", "health", "--command-timeout=2s"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "etcd never became healthy");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl EtcdCluster {
    /// `etcdctl` for `endpoints`, trusting a TLS member's CA.
    fn ctl(&self, endpoints: &str) -> Command {
        let mut c = Command::new("etcdctl");
        c.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"));
        if let Some(ca) = self.members.iter().find_map(|m| m.ca_file.as_ref()) {
            c.arg(format!("--cacert={}", ca.display()));
        }
        c
    }
}

impl EtcdMember {
    fn launch(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).unwrap();
        let child = Command::new(etcd_binary())
            .args(&self.args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
    }

    /// Stops the member (SIGKILL); its data stays for [`EtcdMember::restart`].
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a stopped member again on the same ports and data.
    pub fn restart(&mut self) {
        if self.child.is_none() {
            // An existing data directory rejoins; the initial-cluster flags are ignored.
            self.launch();
        }
    }

    /// What the member logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for EtcdMember {
    fn drop(&mut self) {
        self.stop();
    }
}
