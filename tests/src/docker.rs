//! A real Docker engine for the image and compose tests: finds `docker` and a compose
//! (v2 plugin or v1 `docker-compose`), builds the image's `prebuilt` stage around the binary
//! the tests built, and runs one compose project that is taken down (volumes too) on drop.
//!
//! Where no engine can run, [`Engine::find`] says why; the tests then skip with that line,
//! unless `GATEHOUSE_REQUIRE_DOCKER` is set (CI), where they fail with it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The repository root (docker/ lives there).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// A reachable Docker engine and the compose command that drives it.
#[derive(Debug, Clone)]
pub struct Engine {
    compose: Vec<String>,
}

/// Runs `program args`, returning its output (never panics on a missing program).
fn run(program: &str, args: &[&str], env: &[(String, String)]) -> Option<Output> {
    Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        // The legacy builder: it takes a local base image (BuildKit would ask a registry).
        .env("DOCKER_BUILDKIT", "0")
        .stdin(Stdio::null())
        .output()
        .ok()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

impl Engine {
    /// The engine, or why there is none here.
    pub fn find() -> Result<Engine, String> {
        match run("docker", &["info", "--format", "{{.ServerVersion}}"], &[]) {
            None => return Err("no docker command (Debian's docker.io)".into()),
            Some(o) if !o.status.success() => {
                return Err(format!(
                    "the Docker engine does not answer: {}",
                    text(&o).lines().last().unwrap_or_default()
                ))
            }
            Some(_) => {}
        }
        let base = run("docker", &["image", "inspect", "debian:bookworm-slim"], &[]);
        if !base.is_some_and(|o| o.status.success()) {
            return Err(
                "no debian:bookworm-slim image (./scripts/test.sh makes one with \
                        mmdebstrap; no registry is reachable here)"
                    .into(),
            );
        }
        for compose in [vec!["docker", "compose"], vec!["docker-compose"]] {
            let mut args = compose[1..].to_vec();
            args.push("version");
            if run(compose[0], &args, &[]).is_some_and(|o| o.status.success()) {
                return Ok(Engine {
                    compose: compose.iter().map(|s| s.to_string()).collect(),
                });
            }
        }
        Err("no compose (docker compose or Debian's docker-compose)".into())
    }

    /// The engine; `None` (after saying why) when there is none and none is required.
    pub fn or_skip(test: &str) -> Option<Engine> {
        match Engine::find() {
            Ok(e) => Some(e),
            Err(why) if std::env::var_os("GATEHOUSE_REQUIRE_DOCKER").is_some() => {
                panic!("{test}: docker is required here (GATEHOUSE_REQUIRE_DOCKER) but: {why}")
            }
            Err(why) => {
                eprintln!("SKIPPED {test}: docker cannot run here: {why}");
                None
            }
        }
    }

    /// `docker args`; panics with its output when it fails.
    pub fn docker(&self, args: &[&str]) -> String {
        let o = run("docker", args, &[]).expect("docker");
        assert!(
            o.status.success(),
            "docker {}: {}",
            args.join(" "),
            text(&o)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Builds the image's `prebuilt` stage around `binary` as `tag` (a context holding only
    /// the binary: the repository's target/ may be anywhere).
    pub fn build_gateway_image(&self, binary: &Path, tag: &str) {
        // Once per test process and tag (the tests of one binary share it).
        static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
        let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
        if built.iter().any(|t| t == tag) {
            return;
        }
        let context = tempfile::tempdir().unwrap();
        std::fs::copy(binary, context.path().join("gatehouse")).unwrap();
        let dockerfile = repo().join("docker/Dockerfile");
        self.docker(&[
            "build",
            "-q",
            "-f",
            dockerfile.to_str().unwrap(),
            "--target",
            "prebuilt",
            "--build-arg",
            "BINARY=gatehouse",
            "-t",
            tag,
            context.path().to_str().unwrap(),
        ]);
        built.push(tag.to_owned());
    }

    /// Builds docker/tools as `tag`.
    pub fn build_tools_image(&self, tag: &str) {
        let dir = repo().join("docker/tools");
        self.docker(&["build", "-q", "-t", tag, dir.to_str().unwrap()]);
    }

    /// A compose project on `file` with these environment variables; each has its own name
    /// (one's `down --remove-orphans` would take another's containers).
    pub fn project(&self, file: &Path, env: Vec<(String, String)>) -> Project {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        Project {
            engine: self.clone(),
            name: format!(
                "gatehouse-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
            file: file.to_owned(),
            env,
            profiles: Vec::new(),
        }
    }
}

/// One compose project, taken down with its volumes on drop (its logs printed first when
/// the test failed).
pub struct Project {
    engine: Engine,
    name: String,
    file: PathBuf,
    env: Vec<(String, String)>,
    profiles: Vec<String>,
}

impl Project {
    /// Runs `compose -p NAME -f FILE [--profile P]... args`; its output, and whether it passed.
    pub fn try_compose(&self, args: &[&str]) -> (bool, String) {
        let mut all: Vec<&str> = self.engine.compose[1..]
            .iter()
            .map(String::as_str)
            .collect();
        all.extend(["-p", &self.name, "-f", self.file.to_str().unwrap()]);
        for p in &self.profiles {
            all.extend(["--profile", p.as_str()]);
        }
        all.extend(args);
        let o = run(&self.engine.compose[0], &all, &self.env).expect("compose");
        (o.status.success(), text(&o))
    }

    /// As [`Project::try_compose`], panicking when it fails; returns stdout and stderr.
    pub fn compose(&self, args: &[&str]) -> String {
        let (ok, out) = self.try_compose(args);
        assert!(ok, "compose {}: {out}", args.join(" "));
        out
    }

    /// Adds a profile to every later command.
    pub fn with_profile(&mut self, profile: &str) {
        self.profiles.push(profile.to_owned());
    }

    /// The id of `service`'s container.
    pub fn container(&self, service: &str) -> String {
        let (_, out) = self.try_compose(&["ps", "-q", service]);
        out.lines()
            .map(str::trim)
            .find(|l| l.len() >= 12 && l.chars().all(|c| c.is_ascii_hexdigit()))
            .unwrap_or_else(|| panic!("no container for {service}: {out}"))
            .to_owned()
    }

    /// `cat PATH` inside `service`, when it succeeds.
    pub fn read(&self, service: &str, path: &str) -> Option<String> {
        let (ok, out) = self.try_compose(&["exec", "-T", service, "cat", path]);
        ok.then_some(out)
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let (_, logs) = self.try_compose(&["logs", "--no-color", "--tail", "60"]);
            eprintln!("compose logs of {}:\n{logs}", self.name);
        }
        let _ = self.try_compose(&["down", "-v", "--remove-orphans", "-t", "5"]);
    }
}
