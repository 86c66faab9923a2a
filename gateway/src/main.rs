//! The `gatehouse` command line. Thin: parsing, logging set-up, and the two modes of `run`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use gatehouse::app::Gateway;
use gatehouse::devca::DevCa;
use gatehouse::route::AppSpec;
use gatehouse::terminate::certs::CertSet;
use gatehouse_caa::{lookup::Checker, Verdict};
use gatehouse_config::{AdminConfig, Config};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// Gatehouse: an attested TLS gateway and SNI router for confidential VMs.
///
/// Routes `<app-id>[-<port>][s|g].<base-domain>` and DNS-mapped custom domains to app
/// instances, passing TLS through (`s`) or terminating it. Exit codes: 0 ok, 1 runtime
/// failure, 2 bad usage or bad config. Logs go to stderr; set RUST_LOG (e.g.
/// `RUST_LOG=gatehouse=debug`) for one line per refused connection.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway.
    ///
    /// With no --config: the embedded development defaults. TLS on 127.0.0.1:8443 for
    /// `*.localhost`, certificates from a local development CA created once in the state
    /// directory (trust `<state-dir>/dev-ca.pem`), a built-in `demo` app, admin and
    /// /metrics on 127.0.0.1:8001. The start-up output prints a ready `curl` line.
    Run {
        /// A TOML config file (see config/examples/ and INTERFACE.md).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Where the development defaults keep their CA.
        #[arg(long, default_value = ".gatehouse")]
        state_dir: PathBuf,
    },
    /// Validate a config file and print every problem with its key path (exit 2 if any).
    CheckConfig {
        /// The TOML config file.
        file: PathBuf,
    },
    /// CAA records: who may obtain certificates for a domain.
    #[command(subcommand)]
    Caa(CaaCommand),
}

#[derive(Subcommand, Debug)]
enum CaaCommand {
    /// Check that only our ACME account may issue for each domain (RFC 8659 + RFC 8657).
    ///
    /// Prints one line per domain: locked, unlocked (someone else could issue), blocked (our
    /// own orders would fail) or unknown (the lookup failed: fail closed), with the reason.
    /// Exit 0 when every domain is locked, 1 otherwise.
    Check {
        /// Domains to check (`*.example.com` for a wildcard).
        #[arg(required = true)]
        domains: Vec<String>,
        /// Our ACME account URI(s).
        #[arg(long = "account", required = true)]
        accounts: Vec<String>,
        /// CA issuer domain(s) we order from.
        #[arg(long = "issuer", default_value = "letsencrypt.org")]
        issuers: Vec<String>,
        /// ACME validation methods we use.
        #[arg(long = "method", default_values = ["dns-01", "tls-alpn-01"])]
        methods: Vec<String>,
        /// DNS server(s) to ask (`IP:PORT`); default: the system's resolvers.
        #[arg(long = "server")]
        servers: Vec<SocketAddr>,
    },
    /// Write CAA records locking each domain to our ACME account, through the config's [dns]
    /// provider, then check them as a CA would.
    ///
    /// Sets `issue` and `issuewild` to `<issuer>; accounturi=<account>;
    /// validationmethods=dns-01,tls-alpn-01`, removing other issuers' records. RFC 2136 applies
    /// the change in one atomic update; Cloudflare one record at a time, guard records (`;`)
    /// first, so no intermediate state lets anyone else issue. Other tags (iodef) stay.
    /// Exit 0 when every domain reads back locked.
    Set {
        /// Domains to lock (apex names; issuewild covers their wildcards).
        #[arg(required = true)]
        domains: Vec<String>,
        /// The gateway config (its [dns] section, and [acme]/[store] to find the account).
        #[arg(long, short)]
        config: PathBuf,
        /// Our ACME account URI; default: the account stored by `gatehouse run`.
        #[arg(long)]
        account: Option<String>,
        /// Where `gatehouse run` keeps its state (when [store] path is not set).
        #[arg(long, default_value = ".gatehouse")]
        state_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // Two providers may be compiled in (via dependencies); pin ours process-wide.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match cli.command {
        Command::CheckConfig { file } => match Config::from_file(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                for p in e.problems() {
                    eprintln!("{}: {p}", file.display());
                }
                ExitCode::from(2)
            }
        },
        Command::Caa(CaaCommand::Check {
            domains,
            accounts,
            issuers,
            methods,
            servers,
        }) => {
            let policy = gatehouse_caa::Policy {
                issuers,
                accounts,
                methods,
            };
            match caa_check(&domains, &policy, &servers) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("gatehouse: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Caa(CaaCommand::Set {
            domains,
            config,
            account,
            state_dir,
        }) => match caa_set(&domains, &config, account, &state_dir) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("gatehouse: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Run { config, state_dir } => {
            let config = match config.as_deref().map(Config::from_file).transpose() {
                Ok(c) => c,
                Err(e) => {
                    for p in e.problems() {
                        eprintln!("config: {p}");
                    }
                    return ExitCode::from(2);
                }
            };
            match run(config, &state_dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("gatehouse: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn run(config: Option<Config>, state_dir: &Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("gatehouse-control")
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let dev = config.is_none();
        let (config, apps, certs) = match config {
            Some(c) => (c, Vec::new(), CertSet::default()),
            None => development(state_dir).await?,
        };
        let gateway = Gateway::build(&config, apps, certs)?;
        let acme = gatehouse::acme::prepare(
            &config,
            state_dir,
            &gateway.shared,
            gateway.static_certs.clone(),
        )?;
        for addr in gateway.local_addrs() {
            println!("gatehouse: listening on {addr} (TLS)");
        }
        if let Some(admin) = &config.admin {
            let token = gatehouse::admin::load_token(admin).context("admin.token_file")?;
            let listener = tokio::net::TcpListener::bind(admin.listen)
                .await
                .with_context(|| format!("admin listener {}", admin.listen))?;
            println!(
                "gatehouse: admin on http://{}/metrics",
                listener.local_addr()?
            );
            tokio::spawn(gatehouse::admin::run(
                listener,
                token,
                gateway.shared.clone(),
            ));
        }
        if dev {
            let port = gateway
                .local_addrs()
                .first()
                .map(|a| a.port())
                .unwrap_or(8443);
            println!(
                "gatehouse: try it: curl --cacert {} https://demo.localhost:{port}/",
                state_dir.join("dev-ca.pem").display()
            );
        }
        if let Some(acme) = acme {
            acme.spawn();
        }
        println!("gatehouse: ready");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            if let Err(e) = gatehouse::shutdown::on_signal(stop_tx).await {
                tracing::error!("signal handler: {e}");
            }
        });
        gateway.run(stop_rx).await;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Prints one verdict line per domain; true when all are locked.
fn caa_check(
    domains: &[String],
    policy: &gatehouse_caa::Policy,
    servers: &[SocketAddr],
) -> anyhow::Result<bool> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let timeout = std::time::Duration::from_secs(5);
        let checker = match servers {
            [] => Checker::system(timeout)?,
            s => Checker::new(s, timeout)?,
        };
        let mut all_locked = true;
        for d in domains {
            let verdict = checker.check(d, policy).await;
            all_locked &= verdict == Verdict::Locked;
            println!("{d}: {verdict}");
        }
        Ok(all_locked)
    })
}

/// The embedded development defaults: a local CA, a demo app, loopback listeners.
async fn development(state_dir: &Path) -> anyhow::Result<(Config, Vec<AppSpec>, CertSet)> {
    tracing::warn!(
        "DEVELOPMENT DEFAULTS: certificates from a local CA in {}, no TEE attestation. \
         Never expose this to a network.",
        state_dir.display()
    );
    let mut config = Config::from_toml("", Path::new("."))?;
    config.proxy.listen = vec![SocketAddr::from(([127, 0, 0, 1], 8443))];
    config.proxy.base_domains = vec!["localhost".into()];
    config.admin = Some(AdminConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 8001)),
        token_file: None,
        insecure_no_auth: true,
    });
    let ca = DevCa::load_or_create(state_dir).context("development CA")?;
    tracing::info!("development CA: trust {}", ca.cert_path.display());
    // curl (and browsers) refuse a wildcard directly under a single-label name like
    // `*.localhost`, so the demo's names are listed explicitly beside it.
    let names: Vec<String> = [
        "localhost",
        "*.localhost",
        "demo.localhost",
        "demog.localhost",
    ]
    .map(String::from)
    .to_vec();
    let (chain, key) = ca.issue(&names)?;
    let mut certs = CertSet::default();
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let key = rustls::sign::CertifiedKey::from_der(chain, key, &provider)?;
    certs.insert(&names, Arc::new(key));
    let demo = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    let demo_port = demo.local_addr()?.port();
    tokio::spawn(gatehouse::demo::run(demo));
    let app = AppSpec::new(
        "demo",
        demo_port,
        vec![std::net::IpAddr::from([127, 0, 0, 1])],
    );
    Ok((config, vec![app], certs))
}

/// `caa set`: writes the lock through [dns], then reads it back; true when all are locked.
fn caa_set(
    domains: &[String],
    config_path: &Path,
    account: Option<String>,
    state_dir: &Path,
) -> anyhow::Result<bool> {
    let config = match Config::from_file(config_path) {
        Ok(c) => c,
        Err(e) => anyhow::bail!("{}: {}", config_path.display(), e.problems().join("; ")),
    };
    let dns = config
        .dns
        .as_ref()
        .context("the config has no [dns] section: nothing can write the records")?;
    let acme = config.acme.as_ref();
    let account = match account {
        Some(a) => a,
        None => {
            let acme =
                acme.context("pass --account, or a config with [acme] whose account exists")?;
            let state = gatehouse::acme::open_state(&config, state_dir).context(
                "reading the stored account (a running gateway holds the store: pass --account)",
            )?;
            gatehouse_certbot::account::stored_uri(&acme.directory, &*state.store, &*state.sealer)?
                .context("no ACME account stored yet: run the gateway once, or pass --account")?
        }
    };
    let issuer = acme
        .map(|a| a.caa_issuer.clone())
        .unwrap_or_else(|| "letsencrypt.org".into());
    let policy = gatehouse_caa::Policy {
        issuers: vec![issuer],
        accounts: vec![account],
        methods: vec!["dns-01".into(), "tls-alpn-01".into()],
    };
    let wanted = gatehouse_caa::plan::wanted(&policy);
    let provider = gatehouse::acme::dns_provider(dns)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let timeout = std::time::Duration::from_secs(5);
        let checker = match dns.resolvers.as_slice() {
            [] => Checker::system(timeout)?,
            s => Checker::new(s, timeout)?,
        };
        let mut all_locked = true;
        for d in domains {
            let steps = provider
                .set_caa(d, &wanted)
                .await
                .with_context(|| format!("{d}: writing CAA through {}", provider.describe()))?;
            let verdict = checker.check(d, &policy).await;
            all_locked &= verdict == Verdict::Locked;
            println!("{d}: {} change(s); now {verdict}", steps.len());
        }
        Ok(all_locked)
    })
}
