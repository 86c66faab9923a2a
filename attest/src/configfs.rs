//! Quotes from Linux configfs-tsm (kernel ≥ 6.7): write the report data to
//! `<report>/inblob`, read the quote from `<report>/outblob`.
//!
//! The kernel increments `<report>/generation` on every write to the report's attributes. A
//! quote is ours only if the generation moved by exactly one across our write and did not
//! move while we read: otherwise another writer interleaved and the read is refused as busy.
//! Writers in this process are serialised by a mutex; other processes by `flock` on the
//! inblob (what Intel's and dstack's libraries also take).

use crate::provider::{Evidence, QuoteProvider, TeeKind};
use crate::AttestError;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The configfs-tsm report root.
pub const TSM_REPORT_ROOT: &str = "/sys/kernel/config/tsm/report";
/// The report directory name Intel's DCAP library uses (shared with it on purpose).
pub const REPORT_NAME: &str = "com.intel.dcap";
/// How long the kernel may take to produce a quote.
const QUOTE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `root` is a configfs-tsm report root backed by `tdx_guest`. Probing may create
/// the [`REPORT_NAME`] directory (as the kernel ABI intends) when none exists yet.
pub fn tdx_available(root: &Path) -> bool {
    let Ok(entries) = fs::read_dir(root) else {
        return false;
    };
    let mut dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    if dirs.is_empty() {
        let dir = root.join(REPORT_NAME);
        if fs::create_dir(&dir).is_ok() {
            dirs.push(dir);
        }
    }
    dirs.iter()
        .any(|d| fs::read_to_string(d.join("provider")).is_ok_and(|p| p.trim() == "tdx_guest"))
}

/// The configfs-tsm quote provider for one report directory.
#[derive(Debug, Clone)]
pub struct ConfigfsTsm {
    inner: std::sync::Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    report: PathBuf,
    lock: std::sync::Mutex<()>,
}

fn err(reason: impl Into<String>) -> AttestError {
    AttestError::Provider {
        provider: "configfs-tsm",
        reason: reason.into(),
    }
}

impl ConfigfsTsm {
    /// Uses the report directory `report` (created if missing).
    pub fn new(report: PathBuf) -> ConfigfsTsm {
        ConfigfsTsm {
            inner: std::sync::Arc::new(Inner {
                report,
                lock: std::sync::Mutex::new(()),
            }),
        }
    }

    fn read_generation(&self) -> Result<u64, AttestError> {
        let path = self.inner.report.join("generation");
        let text =
            fs::read_to_string(&path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        text.trim()
            .parse()
            .map_err(|_| err(format!("{}: not a number: {text:?}", path.display())))
    }

    /// One quote, blocking (run it on a blocking thread).
    pub fn quote_blocking(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, AttestError> {
        let _one_at_a_time = self.inner.lock.lock().unwrap_or_else(|p| p.into_inner());
        let report = &self.inner.report;
        if !report.exists() {
            fs::create_dir(report).map_err(|e| err(format!("mkdir {}: {e}", report.display())))?;
        }
        let provider = fs::read_to_string(report.join("provider"))
            .map_err(|e| err(format!("{}/provider: {e}", report.display())))?;
        if provider.trim() != "tdx_guest" {
            return Err(err(format!(
                "provider is {:?}, only tdx_guest is supported",
                provider.trim()
            )));
        }
        let inblob_path = report.join("inblob");
        let inblob = fs::OpenOptions::new()
            .write(true)
            .open(&inblob_path)
            .map_err(|e| err(format!("{}: {e}", inblob_path.display())))?;
        inblob
            .lock()
            .map_err(|e| err(format!("flock {}: {e}", inblob_path.display())))?;
        let before = self.read_generation()?;
        std::io::Write::write_all(&mut &inblob, report_data)
            .map_err(|e| err(format!("write {}: {e}", inblob_path.display())))?;
        let deadline = Instant::now() + QUOTE_TIMEOUT;
        loop {
            let now = self.read_generation()?;
            if now == before + 1 {
                break;
            }
            if now > before + 1 {
                return Err(err(format!(
                    "busy: generation went from {before} to {now} across our write (another writer)"
                )));
            }
            if Instant::now() >= deadline {
                return Err(err(format!(
                    "timed out after {QUOTE_TIMEOUT:?} waiting for the quote (generation stuck at {now})"
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let outblob_path = report.join("outblob");
        let quote =
            fs::read(&outblob_path).map_err(|e| err(format!("{}: {e}", outblob_path.display())))?;
        let after = self.read_generation()?;
        if after != before + 1 {
            return Err(err(format!(
                "busy: generation moved to {after} while reading the quote (another writer)"
            )));
        }
        if !(1020..8192).contains(&quote.len()) {
            return Err(err(format!(
                "outblob is {} bytes, not a TDX quote",
                quote.len()
            )));
        }
        Ok(quote)
    }
}

#[async_trait::async_trait]
impl QuoteProvider for ConfigfsTsm {
    fn kind(&self) -> TeeKind {
        TeeKind::Tdx
    }

    fn describe(&self) -> String {
        format!("configfs-tsm ({})", self.inner.report.display())
    }

    async fn quote(&self, report_data: [u8; 64]) -> Result<Evidence, AttestError> {
        let this = self.clone();
        let quote = tokio::task::spawn_blocking(move || this.quote_blocking(&report_data))
            .await
            .map_err(|e| err(format!("quote task: {e}")))??;
        Ok(Evidence {
            tee: TeeKind::Tdx,
            quote,
            event_log: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// A report directory that behaves like the kernel's: a write to inblob bumps the
    /// generation and produces an outblob derived from the inblob (here: a fake quote that
    /// embeds the report data). `interloper` makes a second "writer" bump it once more.
    struct FakeKernel {
        dir: tempfile::TempDir,
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl FakeKernel {
        fn start(provider: &str, interloper: bool) -> FakeKernel {
            let dir = tempfile::tempdir().unwrap();
            let report = dir.path().join(REPORT_NAME);
            fs::create_dir(&report).unwrap();
            fs::write(report.join("provider"), format!("{provider}\n")).unwrap();
            fs::write(report.join("generation"), "0\n").unwrap();
            fs::write(report.join("inblob"), b"").unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            let thread = std::thread::spawn(move || {
                let mut seen = Vec::new();
                let mut generation = 0u64;
                while !flag.load(Ordering::Relaxed) {
                    let inblob = fs::read(report.join("inblob")).unwrap_or_default();
                    if inblob.len() == 64 && inblob != seen {
                        seen = inblob.clone();
                        let mut quote = b"FAKEQUOTE".to_vec();
                        quote.extend_from_slice(&inblob);
                        quote.resize(2000, 0);
                        // Each file replaced at once, as the kernel's attributes change: a
                        // reader never sees one half written.
                        let put = |name: &str, bytes: &[u8]| {
                            let tmp = report.with_extension(format!("{name}.tmp"));
                            fs::write(&tmp, bytes).unwrap();
                            fs::rename(&tmp, report.join(name)).unwrap();
                        };
                        put("outblob", &quote);
                        generation += if interloper { 2 } else { 1 };
                        put("generation", format!("{generation}\n").as_bytes());
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            });
            FakeKernel {
                dir,
                stop,
                thread: Some(thread),
            }
        }

        fn provider(&self) -> ConfigfsTsm {
            ConfigfsTsm::new(self.dir.path().join(REPORT_NAME))
        }
    }

    impl Drop for FakeKernel {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            let _ = self.thread.take().map(|t| t.join());
        }
    }

    #[test]
    fn quotes_bind_the_report_data_in_sequence() {
        let kernel = FakeKernel::start("tdx_guest", false);
        let tsm = kernel.provider();
        for i in 0..3u8 {
            let q = tsm.quote_blocking(&[i; 64]).unwrap();
            assert_eq!(&q[9..73], &[i; 64], "quote {i} is the one for our inblob");
        }
        assert!(tdx_available(kernel.dir.path()));
    }

    #[test]
    fn another_writer_is_detected() {
        let kernel = FakeKernel::start("tdx_guest", true);
        let e = kernel.provider().quote_blocking(&[7; 64]).unwrap_err();
        assert!(e.to_string().contains("busy"), "{e}");
    }

    #[test]
    fn other_providers_are_refused() {
        let kernel = FakeKernel::start("sev_guest", false);
        let e = kernel.provider().quote_blocking(&[7; 64]).unwrap_err();
        assert!(e.to_string().contains("sev_guest"), "{e}");
        assert!(!tdx_available(kernel.dir.path()));
    }
}
