//! A real authoritative DNS server (Knot, from Debian) on a loopback port, for one zone.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running knotd serving one zone. Killed on drop.
pub struct Knot {
    child: Child,
    /// Where it answers (UDP and TCP).
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Knot {
    /// Serves `zone` (e.g. `custom.test`) with `records`, lines of zone-file syntax relative
    /// to the zone (`www 60 TXT "x"`). Panics with a clear message if knotd is missing.
    pub fn start(zone: &str, records: &[&str]) -> Knot {
        Knot::start_with(zone, records, &[])
    }

    /// Like [`Knot::start`], plus `broken` zones that are configured but have no zone file:
    /// Knot answers SERVFAIL for names in them (a failing authoritative server, for tests
    /// that must fail closed).
    pub fn start_with(zone: &str, records: &[&str], broken: &[&str]) -> Knot {
        Knot::launch(zone, records, broken, None)
    }

    /// Like [`Knot::start`], and the zone accepts RFC 2136 updates signed with the TSIG key
    /// `key` (hmac-sha256) and nothing else.
    pub fn start_updatable(zone: &str, records: &[&str], key: &TsigSecret) -> Knot {
        Knot::launch(zone, records, &[], Some(key))
    }

    fn launch(zone: &str, records: &[&str], broken: &[&str], key: Option<&TsigSecret>) -> Knot {
        let knotd = ["/usr/sbin/knotd", "/usr/bin/knotd"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("knotd not installed: run ./scripts/test.sh, which installs Debian's knot");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in ["zones", "db", "run"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let body: String = records.iter().map(|r| format!("{r}\n")).collect();
        std::fs::write(
            d.join(format!("zones/{zone}.zone")),
            format!("$ORIGIN {zone}.\n$TTL 60\n@ SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 60\n@ NS ns.{zone}.\nns A 127.0.0.1\n{body}"),
        )
        .unwrap();
        for _ in 0..20 {
            let port = free_port();
            let conf = format!(
                "server:\n    rundir: \"{run}\"\n    listen: 127.0.0.1@{port}\ndatabase:\n    storage: \"{db}\"\n{keys}template:\n  - id: default\n    storage: \"{zones}\"\n    file: \"%s.zone\"\n    zonefile-sync: -1\n    zonefile-load: difference-no-serial\n    journal-content: all\nzone:\n  - domain: {zone}\n{acl}{extra}",
                keys = key.map(|k| format!("key:\n  - id: {}\n    algorithm: hmac-sha256\n    secret: {}\nacl:\n  - id: tsig_update\n    key: {}\n    action: update\n", k.name, k.secret_b64, k.name)).unwrap_or_default(),
                acl = if key.is_some() { "    acl: [tsig_update]\n" } else { "" },
                extra = broken.iter().map(|b| format!("  - domain: {b}\n")).collect::<String>(),
                run = d.join("run").display(),
                db = d.join("db").display(),
                zones = d.join("zones").display(),
            );
            std::fs::write(d.join("knot.conf"), conf).unwrap();
            let log = std::fs::File::create(d.join("knotd.log")).unwrap();
            let mut child = Command::new(knotd)
                .args(["-c", d.join("knot.conf").to_str().unwrap()])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Some(status) = child.try_wait().unwrap() {
                    let _ = child.wait();
                    eprintln!(
                        "knotd exited ({status}) on port {port}, retrying: {}",
                        std::fs::read_to_string(d.join("knotd.log")).unwrap_or_default()
                    );
                    break;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                    // the zone loads right after the listener opens
                    std::thread::sleep(Duration::from_millis(100));
                    return Knot {
                        child,
                        addr,
                        _dir: dir,
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("knotd did not start");
    }
}

impl Knot {
    /// Stops the server (SIGKILL, as a crash or an outage would): nothing answers at
    /// [`Knot::addr`] until [`Knot::resume`].
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same address with the same zones; the updates it took
    /// before are kept (its journal).
    pub fn resume(&mut self) {
        let d = self._dir.path();
        let log = std::fs::File::create(d.join("knotd.log")).unwrap();
        let knotd = ["/usr/sbin/knotd", "/usr/bin/knotd"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap();
        self.child = Command::new(knotd)
            .args(["-c", d.join("knot.conf").to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_err() {
            assert!(Instant::now() < deadline, "knotd did not come back");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TSIG key (hmac-sha256) shared by a test's Knot and its client.
#[derive(Debug, Clone)]
pub struct TsigSecret {
    /// The key's name.
    pub name: String,
    /// The secret, base64 (32 random bytes).
    pub secret_b64: String,
}

impl TsigSecret {
    /// A fresh random key named `name`.
    pub fn random(name: &str) -> TsigSecret {
        const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        // 30 random bytes = 40 base64 characters, no padding
        let secret_b64 = (0..40)
            .map(|_| B64[fastrand::usize(..64)] as char)
            .collect();
        TsigSecret {
            name: name.to_owned(),
            secret_b64,
        }
    }
}

/// A port free for both UDP and TCP on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// An RFC 2136 provider for `zones` on `knot`, signing its updates with `key` (HMAC-SHA256).
pub fn rfc2136(knot: &Knot, zones: &[&str], key: &TsigSecret) -> gatehouse_dns::Rfc2136 {
    let key =
        gatehouse_dns::TsigKey::from_base64(&key.name, "hmac-sha256", &key.secret_b64).unwrap();
    gatehouse_dns::Rfc2136::new(
        knot.addr,
        zones.iter().map(|z| z.to_string()).collect(),
        Some(key),
        Duration::from_secs(5),
    )
    .unwrap()
}
