//! A real ACME CA (Debian's Pebble) on loopback, resolving names through a test DNS server.

use crate::knot::free_port;
use crate::pki::TestCa;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to run Pebble.
#[derive(Debug, Clone)]
pub struct PebbleOptions {
    /// The DNS server Pebble resolves challenge names through (`-dnsserver`).
    pub dns: SocketAddr,
    /// Where Pebble connects for TLS-ALPN-01 (the gateway's listener port).
    pub tls_port: u16,
    /// Certificate lifetime in seconds (`None`: Pebble's 5 years).
    pub validity_secs: Option<u64>,
    /// Keep Pebble's default random rejection of 5 % of nonces (clients must retry).
    pub reject_nonces: bool,
    /// Reject this share of nonces instead (`PEBBLE_WFE_NONCEREJECT`, percent).
    pub reject_nonces_percent: Option<u8>,
    /// Let the validation authority wait up to this many seconds before each validation
    /// (`PEBBLE_VA_SLEEPTIME`; `None`: no wait).
    pub va_sleep_secs: Option<u32>,
    /// Require external account binding with this key id and base64url HMAC key.
    pub eab: Option<(String, String)>,
}

impl PebbleOptions {
    /// Resolving through `dns`; TLS-ALPN-01 to a free port; 5-year certificates; no nonce
    /// rejection; no EAB.
    pub fn new(dns: SocketAddr) -> PebbleOptions {
        PebbleOptions {
            dns,
            tls_port: free_port(),
            validity_secs: None,
            reject_nonces: false,
            reject_nonces_percent: None,
            va_sleep_secs: None,
            eab: None,
        }
    }
}

/// A running Pebble. Killed on drop.
pub struct Pebble {
    child: Child,
    /// The directory URL.
    pub directory: String,
    /// The CA file that signed Pebble's own HTTPS certificate (for the ACME client).
    pub api_ca: PathBuf,
    mgmt: SocketAddr,
    dir: tempfile::TempDir,
}

impl Pebble {
    /// Starts Pebble; panics with a clear message if it is not installed or does not start.
    /// Its ports are chosen free, then bound by Pebble seconds later (it makes its CA keys
    /// first): another process may take one meanwhile, so a bind refusal starts it again on
    /// new ports.
    pub fn start(opts: &PebbleOptions) -> Pebble {
        for _ in 0..4 {
            match Pebble::try_start(opts) {
                Ok(pebble) => return pebble,
                Err(log) if log.contains("address already in use") => continue,
                Err(log) => panic!("pebble did not start:\n{log}"),
            }
        }
        panic!("pebble did not start: its ports were taken four times over")
    }

    fn try_start(opts: &PebbleOptions) -> Result<Pebble, String> {
        assert!(
            std::path::Path::new("/usr/bin/pebble").exists(),
            "pebble not installed: run ./scripts/test.sh, which installs Debian's pebble"
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ca = TestCa::new();
        let api_ca = d.join("api-ca.pem");
        std::fs::write(&api_ca, &ca.pem).unwrap();
        let issued = ca.issue(&["localhost", "127.0.0.1"]);
        std::fs::write(d.join("cert.pem"), &issued.cert_pem).unwrap();
        std::fs::write(d.join("key.pem"), &issued.key_pem).unwrap();
        let (listen, mgmt) = (free_port(), free_port());
        let mut extra = opts
            .validity_secs
            .map(|s| format!(",\"certificateValidityPeriod\":{s}"))
            .unwrap_or_default();
        let eab_required = opts.eab.is_some();
        if let Some((kid, key)) = &opts.eab {
            extra.push_str(&format!(
                ",\"externalAccountMACKeys\":{{\"{kid}\":\"{key}\"}}"
            ));
        }
        std::fs::write(
            d.join("pebble.json"),
            format!(
                r#"{{"pebble":{{"listenAddress":"127.0.0.1:{listen}","managementListenAddress":"127.0.0.1:{mgmt}",
"certificate":"{c}","privateKey":"{k}","httpPort":{http},"tlsPort":{tls},"ocspResponderURL":"",
"externalAccountBindingRequired":{eab_required}{extra}}}}}"#,
                c = d.join("cert.pem").display(),
                k = d.join("key.pem").display(),
                http = free_port(),
                tls = opts.tls_port,
            ),
        )
        .unwrap();
        let log = std::fs::File::create(d.join("pebble.log")).unwrap();
        let mut cmd = Command::new("/usr/bin/pebble");
        cmd.args(["-config", d.join("pebble.json").to_str().unwrap()])
            .args(["-dnsserver", &opts.dns.to_string(), "-strict=false"])
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        match opts.va_sleep_secs {
            Some(s) => cmd.env("PEBBLE_VA_SLEEPTIME", s.to_string()),
            None => cmd.env("PEBBLE_VA_NOSLEEP", "1"),
        };
        match opts.reject_nonces_percent {
            Some(p) => cmd.env("PEBBLE_WFE_NONCEREJECT", p.to_string()),
            None if !opts.reject_nonces => cmd.env("PEBBLE_WFE_NONCEREJECT", "0"),
            None => &mut cmd,
        };
        let child = cmd.spawn().unwrap();
        let mut pebble = Pebble {
            child,
            directory: format!("https://127.0.0.1:{listen}/dir"),
            api_ca,
            mgmt: format!("127.0.0.1:{mgmt}").parse().unwrap(),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while pebble.get(&pebble.directory).is_none() {
            let exited = matches!(pebble.child.try_wait(), Ok(Some(_)));
            if exited || Instant::now() >= deadline {
                return Err(pebble.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(pebble)
    }

    fn get(&self, url: &str) -> Option<String> {
        let out = Command::new("curl")
            .args([
                "-sf",
                "--max-time",
                "5",
                "--cacert",
                self.api_ca.to_str().unwrap(),
                url,
            ])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The root that issues certificates (regenerated at each Pebble start), PEM.
    pub fn issuing_root(&self) -> String {
        self.get(&format!("https://{}/roots/0", self.mgmt))
            .expect("pebble management API: /roots/0")
    }

    /// Pebble's HTTPS address (`host:port`).
    pub fn api_addr(&self) -> String {
        self.directory
            .trim_start_matches("https://")
            .trim_end_matches("/dir")
            .to_owned()
    }

    /// The certificate and key Pebble serves its API with (issued by `api_ca`).
    pub fn api_tls_files(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join("cert.pem"),
            self.dir.path().join("key.pem"),
        )
    }

    /// Pebble's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- pebble log ----\n{}", self.log());
        }
    }
}
