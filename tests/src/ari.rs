//! An ACME front for Pebble that speaks ARI and `replaces` the way Boulder does
//! (`ari_shim.py`, beside this file): the test steers it through a control file and reads
//! what it saw from its event log.

use crate::knot::free_port;
use crate::pebble::Pebble;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running shim. Killed on drop.
pub struct AriShim {
    child: Child,
    /// The directory URL clients use instead of Pebble's.
    pub directory: String,
    dir: tempfile::TempDir,
}

impl AriShim {
    /// Starts the shim in front of `pebble` with `control` (JSON) in force.
    pub fn start(pebble: &Pebble, control: serde_json::Value) -> AriShim {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let (cert, key) = pebble.api_tls_files();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/src/ari_shim.py");
        let log = std::fs::File::create(dir.path().join("shim.log")).unwrap();
        let child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .arg(pebble.api_addr())
            .arg(&cert)
            .arg(&key)
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("python3 (installed by ./scripts/test.sh)");
        let shim = AriShim {
            child,
            directory: format!("https://127.0.0.1:{port}/dir"),
            dir,
        };
        shim.set(control);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "ARI shim did not start: {}",
                shim.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        shim
    }

    /// Replaces the control file (atomically).
    pub fn set(&self, control: serde_json::Value) {
        let tmp = self.dir.path().join("control.json.tmp");
        std::fs::write(&tmp, control.to_string()).unwrap();
        std::fs::rename(tmp, self.dir.path().join("control.json")).unwrap();
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("events.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The events named `ev`.
    pub fn named(&self, ev: &str) -> Vec<serde_json::Value> {
        self.events()
            .into_iter()
            .filter(|e| e["ev"] == ev)
            .collect()
    }

    /// Waits until at least `n` events named `ev` were seen.
    pub fn wait(&self, ev: &str, n: usize, limit: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + limit;
        loop {
            let seen = self.named(ev);
            if seen.len() >= n {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "ARI shim saw {} {ev} events, wanted {n}: {:?}\n{}",
                seen.len(),
                self.events(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The shim's stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("shim.log")).unwrap_or_default()
    }
}

impl Drop for AriShim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- ARI shim events ----\n{:?}\n{}",
                self.events(),
                self.log()
            );
        }
    }
}
