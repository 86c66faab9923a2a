//! `gatehouse run` without `--config`: the development defaults. A simulated TEE, a local
//! CA in the state directory, a `demo` app, and the admin listener; on loopback unless
//! `--bind` says otherwise (a container), where the admin API then needs a token.

use anyhow::Context;
use gatehouse::devca::DevCa;
use gatehouse::route::AppSpec;
use gatehouse::terminate::certs::{CertSet, KeyOrigin};
use gatehouse_config::{AdminConfig, Config};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where and how the development defaults run.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// The address both listeners bind (TLS :8443, admin :8001).
    pub bind: IpAddr,
    /// The demo app's instance; `None` starts the built-in origin on loopback.
    pub demo_origin: Option<SocketAddr>,
}

impl Default for DevOptions {
    fn default() -> DevOptions {
        DevOptions {
            bind: IpAddr::from([127, 0, 0, 1]),
            demo_origin: None,
        }
    }
}

/// The config, apps and certificates of the development defaults.
pub async fn development(
    state_dir: &Path,
    options: &DevOptions,
) -> anyhow::Result<(Config, Vec<AppSpec>, CertSet)> {
    tracing::warn!(
        "DEVELOPMENT DEFAULTS: certificates from a local CA in {}, simulated TEE. \
         Never expose this to a network.",
        state_dir.display()
    );
    let mut config = Config::from_toml("", Path::new("."))?;
    config.proxy.listen = vec![SocketAddr::new(options.bind, 8443)];
    config.proxy.base_domains = vec!["localhost".into()];
    config.tee.provider = gatehouse_config::TeeProvider::Simulator;
    config.proxy.allow_local_instances = true; // the demo app listens on loopback
    config.admin = Some(admin(state_dir, options.bind)?);
    let ca = DevCa::load_or_create(state_dir).context("development CA")?;
    tracing::info!("development CA: trust {}", ca.cert_path.display());
    // curl (and browsers) refuse a wildcard directly under a single-label name like
    // `*.localhost`, so the demo's names (and the attestation name) are listed explicitly.
    let names: Vec<String> = [
        "localhost",
        "*.localhost",
        "demo.localhost",
        "demog.localhost",
        "attest.localhost",
    ]
    .map(String::from)
    .to_vec();
    let (chain, key) = ca.issue(&names)?;
    let mut certs = CertSet::default();
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let key = rustls::sign::CertifiedKey::from_der(chain, key, &provider)?;
    certs.insert(&names, Arc::new(key), KeyOrigin::Generated);
    let origin = match options.demo_origin {
        Some(origin) => origin,
        None => {
            let demo = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
            let addr = demo.local_addr()?;
            tokio::spawn(gatehouse::demo::run(demo));
            addr
        }
    };
    let app = AppSpec::new("demo", origin.port(), vec![origin.ip()]);
    Ok((config, vec![app], certs))
}

/// The admin listener: open on loopback; elsewhere it needs the token kept in
/// `<state_dir>/admin.token` (made on first use), as a configured one would.
fn admin(state_dir: &Path, bind: IpAddr) -> anyhow::Result<AdminConfig> {
    let listen = SocketAddr::new(bind, 8001);
    if bind.is_loopback() {
        return Ok(AdminConfig {
            listen,
            token_file: None,
            tokens: Vec::new(),
            insecure_no_auth: true,
        });
    }
    tracing::warn!(
        "development defaults bound to {bind}: reachable beyond this host; \
         the admin API needs the token in {}",
        token_path(state_dir).display()
    );
    Ok(AdminConfig {
        listen,
        token_file: Some(admin_token(state_dir)?),
        tokens: Vec::new(),
        insecure_no_auth: false,
    })
}

fn token_path(state_dir: &Path) -> PathBuf {
    state_dir.join("admin.token")
}

/// `<state_dir>/admin.token`, made once: 32 random bytes as hex, readable by the owner only.
fn admin_token(state_dir: &Path) -> anyhow::Result<PathBuf> {
    let path = token_path(state_dir);
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("state directory {}", state_dir.display()))?;
    let mut bytes = [0u8; 32];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("no randomness for the admin token"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = state_dir.join("admin.token.tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("{}", tmp.display()))?;
        f.write_all(token.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("{}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_beyond_loopback_needs_a_token_made_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let open = admin(dir.path(), IpAddr::from([127, 0, 0, 1])).unwrap();
        assert!(open.insecure_no_auth && open.token_file.is_none());
        assert!(!token_path(dir.path()).exists());

        let closed = admin(dir.path(), IpAddr::from([0, 0, 0, 0])).unwrap();
        assert!(!closed.insecure_no_auth);
        let file = closed.token_file.unwrap();
        let token = std::fs::read_to_string(&file).unwrap();
        assert_eq!(token.len(), 64);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A restart keeps the token.
        let again = admin(dir.path(), IpAddr::from([0, 0, 0, 0])).unwrap();
        assert_eq!(
            std::fs::read_to_string(again.token_file.unwrap()).unwrap(),
            token
        );
    }
}
