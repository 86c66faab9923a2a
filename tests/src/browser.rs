//! Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
//! JSON messages ended by NUL on file descriptors 3 and 4), so a test can type, click and
//! take screenshots the way a person would, with no WebSocket client and no driver binary.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A throwaway NSS database under `home` trusting `ca_pem` (Chromium's trust store on
/// Linux, read from `$HOME/.pki/nssdb`).
pub fn trust_in_nss(home: &Path, ca_pems: &[&Path]) {
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).unwrap();
    let db = format!("sql:{}", db.display());
    let run = |args: &[&str]| {
        let out = Command::new("certutil")
            .args(args)
            .output()
            .expect("certutil (libnss3-tools)");
        assert!(out.status.success(), "certutil {args:?}: {out:?}");
    };
    run(&["-d", &db, "-N", "--empty-password"]);
    for (i, ca) in ca_pems.iter().enumerate() {
        let nick = format!("gatehouse-test-{i}");
        run(&[
            "-d",
            &db,
            "-A",
            "-t",
            "C,,",
            "-n",
            &nick,
            "-i",
            ca.to_str().unwrap(),
        ]);
    }
}

/// Keeps a screenshot as `target/artifacts/<name>` (the README's pictures come from there).
pub fn save_artifact(png: &[u8], name: &str) {
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/artifacts");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join(name), png).unwrap();
    println!("screenshot: {}", out.join(name).display());
}

/// A running headless Chromium with one page attached.
pub struct Browser {
    child: Child,
    to_browser: std::io::PipeWriter,
    from_browser: mpsc::Receiver<Value>,
    next_id: u64,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium (`/usr/bin/chromium`, as root without its sandbox) with a blank page.
    /// `args` are extra command-line switches (e.g. `--host-resolver-rules=...`).
    pub fn launch(args: &[&str]) -> Browser {
        Browser::launch_trusting(&[], args)
    }

    /// Like [`Browser::launch`], with the CAs in `ca_pems` trusted for TLS (in the profile's
    /// own NSS database: nothing outside the test changes).
    pub fn launch_trusting(ca_pems: &[&Path], args: &[&str]) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        if !ca_pems.is_empty() {
            trust_in_nss(profile.path(), ca_pems);
        }
        let (ours_r, theirs_w) = std::io::pipe().unwrap(); // Chromium writes to fd 4
        let (theirs_r, ours_w) = std::io::pipe().unwrap(); // Chromium reads fd 3
        let (r_fd, w_fd): (OwnedFd, OwnedFd) = (theirs_r.into(), theirs_w.into());
        let (r, w) = (r_fd.as_raw_fd(), w_fd.as_raw_fd());
        let mut cmd = Command::new("chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--remote-debugging-pipe",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .env("HOME", profile.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Moved out of the way first, in case either already is 3 or 4.
                let a = libc::fcntl(r, libc::F_DUPFD, 10);
                let b = libc::fcntl(w, libc::F_DUPFD, 10);
                if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start chromium");
        drop((r_fd, w_fd));
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(ours_r);
            let mut buf = Vec::new();
            while reader
                .read_until(0, &mut buf)
                .map(|n| n > 0)
                .unwrap_or(false)
            {
                buf.pop_if(|b| *b == 0);
                if let Ok(v) = serde_json::from_slice::<Value>(&buf) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
                buf.clear();
            }
        });
        let mut b = Browser {
            child,
            to_browser: ours_w,
            from_browser: rx,
            next_id: 0,
            session: String::new(),
            _profile: profile,
        };
        let target = b.send("Target.createTarget", json!({ "url": "about:blank" }));
        let target = target["targetId"].as_str().unwrap().to_owned();
        let attached = b.send(
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
        );
        b.session = attached["sessionId"].as_str().unwrap().to_owned();
        b.send("Page.enable", json!({}));
        b
    }

    /// Sends a command (to the page once attached) and waits for its result.
    pub fn send(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to_browser.write_all(&bytes).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self
                .from_browser
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("chromium did not answer {method}"));
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    panic!("{method}: {e}");
                }
                return v["result"].clone();
            }
        }
    }

    /// Opens `url` in the page.
    pub fn goto(&mut self, url: &str) {
        self.send("Page.navigate", json!({ "url": url }));
    }

    /// Evaluates `js` in the page (promises awaited); its value.
    pub fn eval(&mut self, js: &str) -> Value {
        let r = self.send(
            "Runtime.evaluate",
            json!({ "expression": js, "awaitPromise": true, "returnByValue": true }),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{js}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Evaluates `js` until it is `true` (panics after `limit`, naming `what`).
    pub fn wait_for(&mut self, js: &str, what: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.eval(js) == json!(true) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let text = self.eval("document.body ? document.body.innerText : ''");
        panic!("{what}: not within {limit:?}; the page shows:\n{text}");
    }

    /// On the verification page (`https://attest.<base>/`, already open), verifies `domain`
    /// pinned to `mrtd`, trusting the simulator's root as tests must; the verdict:
    /// `{state, failed, source, measurements, snippet, text}`.
    pub fn verify_on_page(&mut self, domain: &str, mrtd: &str) -> Value {
        self.wait_for(
            "document.body && document.body.dataset.ready === '1'",
            "the page's handlers",
            Duration::from_secs(10),
        );
        self.eval(&format!(
            "document.getElementById('domain').value = '{domain}';
             document.getElementById('mrtd').value = '{mrtd}';
             document.getElementById('sim').checked = true;
             document.body.dataset.state = 'pending';
             document.getElementById('go').click(); true"
        ));
        self.wait_for(
            "document.body.dataset.state !== 'pending'",
            "the page's verdict",
            Duration::from_secs(30),
        );
        self.eval(
            "({ state: document.body.dataset.state, failed: document.body.dataset.failed,
                source: document.getElementById('source').textContent,
                measurements: document.getElementById('measurements').textContent,
                snippet: document.getElementById('snippet').textContent,
                text: document.getElementById('badge').shadowRoot.textContent })",
        )
    }

    /// A PNG screenshot of the page.
    pub fn screenshot(&mut self) -> Vec<u8> {
        use base64::Engine as _;
        let r = self.send("Page.captureScreenshot", json!({ "format": "png" }));
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
