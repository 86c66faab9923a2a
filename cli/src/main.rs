//! The `gatehouse` command line. Thin: parsing, logging set-up, the two modes of `run`, and
//! the admin API's client commands.

mod admin_client;
mod api_commands;
mod development;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gatehouse::app::Gateway;
use gatehouse::terminate::certs::CertSet;
use gatehouse_attest::policy::Policy;
use gatehouse_caa::{lookup::Checker, Verdict};
use gatehouse_config::Config;
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
#[command(name = "gatehouse", version, about, long_about)]
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
        /// A TOML config file (see config/examples/ and README.md's Configuration section).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Where the development defaults keep their CA.
        #[arg(long, default_value = ".gatehouse")]
        state_dir: PathBuf,
        /// Development defaults only: bind the TLS (:8443) and admin (:8001) listeners to
        /// this address instead of 127.0.0.1, e.g. 0.0.0.0 in a container. Beyond loopback
        /// the admin API needs the token kept in `<state-dir>/admin.token` (made once).
        #[arg(long, conflicts_with = "config")]
        bind: Option<std::net::IpAddr>,
        /// Development defaults only: the demo app's instance (`IP:PORT`, e.g. an origin in
        /// another container) instead of the built-in origin.
        #[arg(long, conflicts_with = "config")]
        demo_origin: Option<SocketAddr>,
    },
    /// Exit 0 when a running gateway's admin listener says it is healthy (`GET /healthz`),
    /// else 1 with the reason: a probe for container HEALTHCHECKs, which need no curl.
    Health {
        #[command(flatten)]
        target: admin_client::Target,
    },
    /// Validate a config file and print every problem with its key path (exit 2 if any).
    CheckConfig {
        /// The TOML config file.
        file: PathBuf,
    },
    /// CAA records: who may obtain certificates for a domain.
    #[command(subcommand)]
    Caa(CaaCommand),
    /// A cluster of nodes sharing one etcd store.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Apps of a running gateway (through its admin API): list, get, add, rm.
    #[command(subcommand)]
    Apps(api_commands::AppsCommand),
    /// Instances of a running gateway's apps: add, rm, drain, undrain.
    #[command(subcommand)]
    Instances(api_commands::InstancesCommand),
    /// Certificates a running gateway serves: list, renew.
    #[command(subcommand)]
    Certs(api_commands::CertsCommand),
    /// Make a running gateway re-read its config file (as SIGHUP does).
    ///
    /// All or nothing: a file with problems is refused (each printed with its key path) and
    /// the running config stays. Routes, certificates, limits, timeouts, admin tokens and
    /// admission change for new connections; established ones keep theirs.
    Reload {
        #[command(flatten)]
        target: admin_client::Target,
    },
    /// Check an attested gateway from the outside.
    ///
    /// One TLS connection (normal WebPKI validation, or --cacert) records the certificate
    /// the gateway serves for the name and fetches the attestation bundle over that same
    /// connection (ALPN gatehouse-attest/1). Then, in order: quote (dcap-qvl, with the
    /// bundle's collateral) → policy (TCB status, debug, measurements, RTMR3 events) →
    /// binding (report data = SHA-512("gatehouse-bundle-v1:" ‖ JCS(claims))) → certificate
    /// (the served key is in the claims) → channel (the encrypted channel's keys, when
    /// claimed, are X25519 keys ohttp accepts) → CAA (locked to the claimed ACME account). One
    /// line per step. Exit codes: 0 verified, 1 could not fetch, 2 bad usage, 10 quote,
    /// 11 policy, 12 binding, 13 certificate, 14 CAA, 15 channel.
    Verify {
        /// `https://host[:port]` of a name the gateway terminates.
        #[arg(required_unless_present = "offline")]
        url: Option<String>,
        /// A policy file (TOML: tcb_statuses, mrtd, rtmr0-3, [events], allow_* flags).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Trust this CA for the TLS connection (e.g. .gatehouse/dev-ca.pem).
        #[arg(long)]
        cacert: Option<PathBuf>,
        /// Accept quotes from the simulator's public mock root: proves nothing (development).
        #[arg(long)]
        insecure_trust_simulator_root: bool,
        /// Check a saved bundle (see --save) instead of connecting.
        #[arg(long)]
        offline: Option<PathBuf>,
        /// With --offline: the served certificate (PEM) to check against the claims.
        #[arg(long)]
        cert: Option<PathBuf>,
        /// Verification time, unix seconds (default: now); for reproducible checks.
        #[arg(long)]
        now: Option<u64>,
        /// DNS server(s) for the CAA check (`IP:PORT`; default: the system's).
        #[arg(long = "dns-server")]
        dns_servers: Vec<SocketAddr>,
        /// The CA that CAA records must name.
        #[arg(long, default_value = "letsencrypt.org")]
        caa_issuer: String,
        /// Save the fetched bundle to this file.
        #[arg(long)]
        save: Option<PathBuf>,
        /// Connect to this IP:PORT instead of resolving the URL's host (SNI and certificate
        /// checks still use the host).
        #[arg(long)]
        connect: Option<SocketAddr>,
        /// PCCS to fetch collateral from when the bundle carries none.
        #[arg(long, default_value = gatehouse_attest::pccs::DEFAULT_PCCS)]
        pccs: String,
        /// Pass although the policy pins no measurement: any TD, running any software,
        /// passes. Without it, an unpinned policy fails the policy step (see
        /// policy-from-bundle to pin).
        #[arg(long)]
        accept_any_measurements: bool,
        /// Pass a served key loaded from a file (`[tls].certificates`): the operator holds it.
        #[arg(long)]
        accept_imported_keys: bool,
        /// Pass a gateway whose secrets are sealed with a development key file.
        #[arg(long)]
        accept_development_sealing: bool,
    },
    /// Write a policy pinning the measurements of a bundle you trust (from `verify --save`).
    ///
    /// Prints TOML with MRTD, RTMR0-2 and each RTMR3 runtime event (name → payload), for
    /// `verify --policy`, `verify-statement --policy`, `agent --gateway-policy` and VPC app
    /// policies. Review it: it pins whatever that TD ran.
    PolicyFromBundle {
        /// The bundle JSON.
        bundle: PathBuf,
    },
    /// Join the VPC from an app CVM: register with the gateway and keep the tunnel up.
    ///
    /// Checks the gateway's RA-TLS certificate against --gateway-policy before sending
    /// anything, then sends a quote binding this CVM's WireGuard key and the gateway's nonce.
    /// On success configures the interface (address, the gateway as peer) and prints
    /// "registered <app> at <address>/<len>"; a refusal prints the check that failed. Without
    /// --once it stays: registers again (backing off 1-60 s) when the interface loses its
    /// configuration or the gateway stops answering.
    Agent(AgentArgs),
    /// Check a signed statement (from the admin API's POST /v1/sign) offline.
    ///
    /// Checks, each with its own error: the payload (if given) matches the digest, the key is
    /// listed in the attested claims, the Ed25519 signature, the claims binding, and the quote
    /// at the signing time under the policy. Exit 0 when valid, 1 when not, 2 bad usage.
    VerifyStatement {
        /// The statement JSON.
        proof: PathBuf,
        /// The payload that was signed (else only its digest is checked).
        #[arg(long)]
        payload: Option<PathBuf>,
        /// A policy file.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Accept simulator quotes (development).
        #[arg(long)]
        insecure_trust_simulator_root: bool,
        /// Verification time (default: the statement's signing time, which it signs).
        #[arg(long)]
        now: Option<u64>,
        /// Accept although the policy pins no measurement (any TD software).
        #[arg(long)]
        accept_any_measurements: bool,
    },
}

/// `gatehouse agent` options.
#[derive(clap::Args, Debug)]
struct AgentArgs {
    /// The gateway's registration listener, `https://HOST:PORT` (its `[vpc] register_listen`).
    #[arg(long)]
    register: String,
    /// The app id to register as (the gateway's `[vpc.apps.<id>]`).
    #[arg(long)]
    app_id: String,
    /// The policy the gateway's RA-TLS quote must meet (TOML, as for `gatehouse verify`).
    /// Required: the agent never sends its quote to an unattested gateway.
    #[arg(long)]
    gateway_policy: PathBuf,
    /// This CVM's WireGuard interface (it must exist: `wireguard-go NAME`, or
    /// `ip link add NAME type wireguard`).
    #[arg(long, default_value = "gatehouse0")]
    interface: String,
    /// How the interface is driven: `userspace` (UAPI socket) or `kernel` (the `wg` tool).
    #[arg(long, default_value = "userspace")]
    kind: String,
    /// A gatehouse config file whose `[tee]` section picks the quote provider and sealing
    /// (default: `[tee]` defaults, i.e. a real TEE or nothing).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Where the sealed WireGuard key is kept (and the development sealing key, if any).
    #[arg(long, default_value = ".gatehouse-agent")]
    state_dir: PathBuf,
    /// Register once, configure the interface, print the address and exit (0 registered,
    /// 1 refused or failed).
    #[arg(long)]
    once: bool,
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// The members (registered under a lease: a dead node is gone within seconds), each
    /// one's last heartbeat, nodes that stopped heartbeating, and who holds each renewal
    /// lock, as etcd holds them. Reads the store of `--config` (`[store] backend = "etcd"`).
    /// Exit codes: 0 ok, 1 etcd unreachable, 2 bad config.
    Status {
        /// The config file of any node of the cluster.
        #[arg(long, short)]
        config: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
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

/// mimalloc, measured against glibc's allocator on the `http` mode (Pingora allocates per
/// request): 34.9 → 28.4 µs of proxy CPU per keep-alive request (benches/RESULTS.md, K1-http).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        Command::Apps(c) => api_commands::apps(c),
        Command::Instances(c) => api_commands::instances(c),
        Command::Certs(c) => api_commands::certs(c),
        Command::Reload { target } => api_commands::reload(target),
        Command::Health { target } => api_commands::health(target),
        Command::CheckConfig { file } => match Config::from_file(&file) {
            Ok(config) => {
                let simulated = config.tee.provider == gatehouse_config::TeeProvider::Simulator;
                let vpc = config.vpc.as_ref();
                if let Some(Err(p)) = vpc.map(|v| gatehouse_vpc::node::app_policies(v, simulated)) {
                    eprintln!("{}: {p}", file.display());
                    return ExitCode::from(2);
                }
                println!("{}: ok", file.display());
                for app in &config.apps {
                    println!("  {}", app.exposure());
                }
                let l = &config.proxy.limits;
                let t = &config.proxy.timeouts;
                println!(
                    "  limits: {} connections per source{}, a capped app's share per client {}, \
                     first data within {:?}, linger {:?} after one side closes",
                    l.max_connections_per_source,
                    match l.unlimited_sources.len() {
                        0 => String::new(),
                        n => format!(" ({n} unlimited source ranges)"),
                    },
                    l.app_share_per_source,
                    t.first_data,
                    t.linger,
                );
                match &config.store.etcd {
                    Some(e) if config.store.backend == gatehouse_config::StoreBackend::Etcd => {
                        println!(
                            "  store: etcd {:?} under {:?}{}, {:?} per call",
                            e.endpoints,
                            e.prefix,
                            if e.ca_file.is_some() { " (TLS)" } else { "" },
                            e.timeout
                        );
                        let c = &config.cluster;
                        println!(
                            "  cluster: join listener {}, policy {}, a new node looks {:?} for a member",
                            c.advertise.clone().unwrap_or_else(|| c.listen.to_string()),
                            c.policy_file.as_ref().map_or(
                                "= this node's own MRTD and RTMR0-3 (default)".into(),
                                |p| p.display().to_string()
                            ),
                            c.join_timeout
                        )
                    }
                    _ => println!("  store: embedded (state.redb in the state directory)"),
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                for p in e.problems() {
                    eprintln!("{}: {p}", file.display());
                }
                ExitCode::from(2)
            }
        },
        Command::Cluster(ClusterCommand::Status { config, json }) => {
            let config = match Config::from_file(&config) {
                Ok(c) => c,
                Err(e) => {
                    for p in e.problems() {
                        eprintln!("{}: {p}", config.display());
                    }
                    return ExitCode::from(2);
                }
            };
            match cluster_status(&config, json) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("gatehouse: cluster status: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
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
        Command::Verify {
            url,
            policy,
            json,
            cacert,
            insecure_trust_simulator_root,
            offline,
            cert,
            now,
            dns_servers,
            caa_issuer,
            save,
            connect,
            pccs,
            accept_any_measurements,
            accept_imported_keys,
            accept_development_sealing,
        } => {
            let mut policy = match policy.as_deref().map(Policy::load).transpose() {
                Ok(p) => p.unwrap_or_default(),
                Err(e) => {
                    eprintln!("gatehouse: {e}");
                    return ExitCode::from(2);
                }
            };
            policy.insecure_trust_simulator_root |= insecure_trust_simulator_root;
            let options = gatehouse::verifier::Options {
                url: url.unwrap_or_default(),
                policy,
                cacert,
                offline,
                cert,
                now,
                dns_servers,
                caa_issuer,
                save,
                connect,
                pccs,
                accept_any_measurements,
                accept_imported_keys,
                accept_development_sealing,
            };
            verify(&options, json)
        }
        Command::PolicyFromBundle { bundle } => match policy_from_bundle(&bundle) {
            Ok(toml) => {
                print!("{toml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gatehouse: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::VerifyStatement {
            proof,
            payload,
            policy,
            insecure_trust_simulator_root,
            now,
            accept_any_measurements,
        } => match verify_statement(
            &proof,
            payload,
            policy,
            (insecure_trust_simulator_root, accept_any_measurements),
            now,
        ) {
            Ok(summary) => {
                println!("✓ statement: {summary}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("✗ statement: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Agent(args) => match agent(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gatehouse agent: {e:#}");
                ExitCode::from(1)
            }
        },
        Command::Run {
            config: path,
            state_dir,
            bind,
            demo_origin,
        } => {
            let mut dev = development::DevOptions::default();
            if let Some(ip) = bind {
                dev.bind = ip;
            }
            dev.demo_origin = demo_origin;
            let config = match path.as_deref().map(Config::from_file).transpose() {
                Ok(c) => c,
                Err(e) => {
                    for p in e.problems() {
                        eprintln!("config: {p}");
                    }
                    return ExitCode::from(2);
                }
            };
            match run(config, path, &state_dir, &dev) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("gatehouse: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn run(
    config: Option<Config>,
    path: Option<PathBuf>,
    state_dir: &Path,
    dev_options: &development::DevOptions,
) -> anyhow::Result<()> {
    match gatehouse::fdlimit::raise_to_hard() {
        Ok((before, after)) if before != after => {
            tracing::info!("descriptor limit raised from {before} to {after}")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("descriptor limit: {e}"),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("gatehouse-control")
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let dev = config.is_none();
        let (config, apps, certs) = match config {
            Some(c) => (c, Vec::new(), CertSet::default()),
            None => development::development(state_dir, dev_options).await?,
        };
        let tee = gatehouse::attestation::open(&config, state_dir).await?;
        let gateway = Gateway::build(&config, apps, certs)?;
        gateway
            .shared
            .metrics
            .count_tasks_of(tokio::runtime::Handle::current());
        if let Some(attestor) = tee.attestor {
            let _ = gateway.shared.attest.set(attestor);
        }
        let mut admin_addr = None;
        let mut control = None;
        if let Some(admin) = &config.admin {
            let tokens = gatehouse_control::tokens::Tokens::load(admin)?;
            let listener = tokio::net::TcpListener::bind(admin.listen)
                .await
                .with_context(|| format!("admin listener {}", admin.listen))?;
            gatehouse::upstream::own::register(listener.local_addr()?);
            admin_addr = Some(listener.local_addr()?);
            println!(
                "gatehouse: admin on http://{}/metrics",
                listener.local_addr()?
            );
            println!(
                "gatehouse: dashboard on http://{}/ (API under /v1/)",
                listener.local_addr()?
            );
            let c = Arc::new(gatehouse_control::Control::new(
                gateway.shared.clone(),
                config.clone(),
                path.clone(),
                tokens,
            )?);
            c.set_listeners(gateway.listeners());
            tokio::spawn(gatehouse_control::server::run(listener, c.clone()));
            tokio::spawn(c.clone().reload_on_sighup());
            control = Some(c);
        }
        // SIGHUP reloads the file with or without an admin listener (without one, the
        // control plane runs for reloads only: no API, no stored records).
        let reloader = match &control {
            Some(c) => c.clone(),
            None => {
                let c = Arc::new(gatehouse_control::Control::new(
                    gateway.shared.clone(),
                    config.clone(),
                    path.clone(),
                    gatehouse_control::tokens::Tokens::from_pairs(&[]),
                )?);
                c.set_listeners(gateway.listeners());
                tokio::spawn(c.clone().reload_on_sighup());
                c
            }
        };
        let etcd = config.store.backend == gatehouse_config::StoreBackend::Etcd;
        let node_name = gatehouse_cluster::node_name();
        let mut state = if config.acme.is_some()
            || config.vpc.is_some()
            || config.ct.is_some()
            || etcd
            || control.is_some()
            || config.apps.iter().any(|a| a.encrypted_channel)
        {
            Some(gatehouse::acme::open_state(&config, state_dir, tee.sealer.clone()).await?)
        } else {
            None
        };
        if let (Some(state), true) = (&mut state, etcd) {
            let attestor = gateway.shared.attest.get().context(
                "[store] backend = \"etcd\" needs attestation ([tee] provider): nodes join \
                 the cluster by mutual RA-TLS",
            )?;
            let joined =
                gatehouse::cluster_node::join(&config, state, attestor, &node_name).await?;
            let info = gatehouse_cluster::NodeInfo {
                name: node_name.clone(),
                listen: gateway
                    .local_addrs()
                    .iter()
                    .map(|a| a.to_string())
                    .collect(),
                admin: admin_addr.map(|a| a.to_string()),
                vpc: config.vpc.as_ref().map(|v| {
                    v.endpoint
                        .map_or(format!(":{}", v.listen_port), |e| e.to_string())
                }),
                join: Some(joined.join),
                attestation: match attestor.bundle(&gateway.shared, None).await {
                    Ok(mut b) => {
                        b.collateral = None;
                        serde_json::to_value(b).ok()
                    }
                    Err(e) => {
                        tracing::warn!("no attestation bundle in this node's registration: {e}");
                        None
                    }
                },
                version: env!("CARGO_PKG_VERSION").into(),
                started: gatehouse_attest::unix_now(),
            };
            if let Some(c) = &control {
                c.set_cluster(state.store.clone());
            }
            let membership = gatehouse_cluster::Membership::new(state.store.clone(), info);
            let _ = gateway.shared.metrics.store.set(membership.health());
            tokio::spawn(membership.run());
        }
        if let (Some(c), Some(state)) = (&control, &state) {
            c.set_records(gatehouse_control::records::Records::new(
                state.store.clone(),
                state.sealer.clone(),
            ));
            c.publish_records()
                .await
                .context("apps stored through the admin API")?;
            tokio::spawn(c.clone().follow_records());
        }
        let acme = match &state {
            Some(state) => gatehouse::acme::prepare(&config, state, &gateway.shared).await?,
            None => None,
        };
        if let Some(state) = &state {
            gatehouse::ct_watch::start(&config, state.store.clone(), &gateway.shared).await?;
            // The channel's key is quoted in the claims: without attestation there is none.
            if gateway.shared.attest.get().is_some() {
                gatehouse::channel::Channel::start(
                    &config.proxy.http.channel,
                    state.store.clone(),
                    state.sealer.clone(),
                    &gateway.shared,
                )
                .await?;
            }
        }
        if let (Some(c), Some(acme)) = (&control, &acme) {
            c.set_acme(gatehouse_control::AcmeHandle {
                manager: acme.manager(),
                targets: acme.targets(),
            });
            // The custom domains added through the API join the certificate targets.
            c.publish_records()
                .await
                .context("custom domains stored through the admin API")?;
        }
        if let (Some(vpc), Some(state)) = (&config.vpc, &state) {
            let attestor = gateway.shared.attest.get().context(
                "[vpc] needs attestation ([tee] provider): app CVMs only register with an \
                 attested gateway",
            )?;
            let node = gatehouse_vpc::node::VpcNode::start(
                vpc,
                state.store.clone(),
                state.sealer.clone(),
                attestor,
                &node_name,
            )
            .await
            .context("vpc")?;
            let node = Arc::new(node);
            // Admission decisions and reloads of who may reach whom, with or without an
            // admin API.
            reloader.set_vpc(node.clone());
            // `reach` set through the API (stored) replaces the file's.
            reloader
                .publish_reach()
                .await
                .context("vpc reach stored through the admin API")?;
            let listener = tokio::net::TcpListener::bind(vpc.register_listen)
                .await
                .with_context(|| format!("vpc.register_listen {}", vpc.register_listen))?;
            gatehouse::upstream::own::register(listener.local_addr()?);
            println!(
                "gatehouse: VPC registration on {} (RA-TLS), WireGuard {} at {}",
                listener.local_addr()?,
                vpc.interface,
                vpc.gateway_address
            );
            tokio::spawn(node.clone().serve(listener));
            tokio::spawn(node.clone().follow_leases());
            tokio::spawn(node.watch(gateway.shared.clone()));
        }
        for addr in gateway.local_addrs() {
            gatehouse::upstream::own::register(addr);
            println!("gatehouse: listening on {addr} (TLS)");
        }
        if gateway.shared.attest.get().is_some() {
            let port = gateway.local_addrs().first().map_or(443, |a| a.port());
            for base in &config.proxy.base_domains {
                tracing::info!(
                    "verification page on https://attest.{base}:{port}/ (widget {})",
                    gatehouse::verify_site::widget_integrity()
                );
            }
        }
        if let Some(addr) = config.proxy.http.redirect_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("proxy.http.redirect_listen {addr}"))?;
            gatehouse::upstream::own::register(listener.local_addr()?);
            println!(
                "gatehouse: redirecting http://{} to https (308)",
                listener.local_addr()?
            );
            tokio::spawn(gatehouse::http::redirect::run(
                listener,
                gateway.shared.clone(),
            ));
        }
        gatehouse::upstream::active::spawn(&gateway.shared);
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

fn agent(a: AgentArgs) -> anyhow::Result<()> {
    let config = match &a.config {
        Some(path) => Config::from_file(path)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.problems().join("; ")))?,
        None => Config::from_toml("", Path::new(".")).map_err(|e| anyhow::anyhow!("{e}"))?,
    };
    let kind = match a.kind.as_str() {
        "userspace" => gatehouse_config::WireGuardKind::Userspace,
        "kernel" => gatehouse_config::WireGuardKind::Kernel,
        k => anyhow::bail!("--kind {k:?}: expected userspace or kernel"),
    };
    let gateway_policy = Policy::load(&a.gateway_policy)?;
    anyhow::ensure!(
        gateway_policy.pins_measurements(),
        "--gateway-policy {} pins no measurement: any TD could pose as the gateway (pin them \
         with gatehouse policy-from-bundle)",
        a.gateway_policy.display()
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let sealer = gatehouse::attestation::sealer(&config, &a.state_dir).await?;
        let (provider, collateral) = gatehouse::attestation::quote_provider(&config.tee)?
            .context("[tee] provider = \"none\": the agent has no quote to register with")?;
        let key = gatehouse_vpc::agent::load_or_create_key(&a.state_dir, sealer.as_ref())?;
        let agent = gatehouse_vpc::agent::Agent {
            register_url: a.register,
            app_id: a.app_id,
            gateway_policy,
            provider,
            collateral,
            wg: gatehouse_vpc::node::wireguard_for(kind, &a.interface),
            key,
            identity_file: Some(a.state_dir.join("peers.json")),
        };
        agent.run(a.once).await?;
        Ok(())
    })
}

/// Prints one verdict line per domain; true when all are locked.
/// `gatehouse cluster status`: what the etcd of `config` says of the cluster.
fn cluster_status(config: &Config, json: bool) -> anyhow::Result<String> {
    let etcd = match (&config.store.backend, &config.store.etcd) {
        (gatehouse_config::StoreBackend::Etcd, Some(e)) => e,
        _ => anyhow::bail!(
            "the config's store is embedded: a cluster needs [store] backend = \"etcd\""
        ),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let store = gatehouse_store::Etcd::connect(gatehouse::acme::etcd_options(etcd)?).await?;
        let status = gatehouse_cluster::status(&store).await?;
        Ok(if json {
            serde_json::to_string_pretty(&status)? + "\n"
        } else {
            status.to_string()
        })
    })
}

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
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let sealer = gatehouse::attestation::sealer(&config, state_dir).await?;
                let mut state = gatehouse::acme::open_state(&config, state_dir, sealer)
                    .await
                    .context(
                        "reading the stored account (a running gateway holds the store: pass --account)",
                    )?;
                gatehouse::cluster_node::use_local_copy(&config, &mut state)?;
                gatehouse_certbot::account::stored_uri(
                    &acme.directory,
                    &*state.store,
                    &*state.sealer,
                )
                .await
                .map_err(anyhow::Error::from)
            })?
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

/// Runs `gatehouse verify` and prints the report; the exit code is the failed step's.
fn verify(options: &gatehouse::verifier::Options, json: bool) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gatehouse: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(gatehouse::verifier::run(options)) {
        Ok(report) => {
            match json {
                true => println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                ),
                false => print!("{}", report.human()),
            }
            ExitCode::from(report.exit_code)
        }
        Err(e) => {
            eprintln!("gatehouse verify: {e}");
            ExitCode::from(1)
        }
    }
}

/// A policy pinning the measurements of a saved bundle.
fn policy_from_bundle(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read(path).with_context(|| path.display().to_string())?;
    let bundle: gatehouse_attest::bundle::Bundle = serde_json::from_slice(&text)
        .with_context(|| format!("{}: not a bundle", path.display()))?;
    Ok(gatehouse_attest::policy::pinning(&bundle.evidence)?)
}

/// Checks a signed statement; the summary names the key, context and TCB status.
fn verify_statement(
    proof: &Path,
    payload: Option<PathBuf>,
    policy: Option<PathBuf>,
    (insecure_trust_simulator_root, accept_any_measurements): (bool, bool),
    now: Option<u64>,
) -> anyhow::Result<String> {
    let text = std::fs::read(proof).with_context(|| proof.display().to_string())?;
    let statement: gatehouse_attest::statement::Statement = serde_json::from_slice(&text)
        .with_context(|| format!("{}: not a statement", proof.display()))?;
    let payload = payload
        .map(|p| std::fs::read(&p).with_context(|| p.display().to_string()))
        .transpose()?;
    let mut policy = policy
        .as_deref()
        .map(Policy::load)
        .transpose()?
        .unwrap_or_default();
    policy.insecure_trust_simulator_root |= insecure_trust_simulator_root;
    anyhow::ensure!(
        policy.pins_measurements() || accept_any_measurements,
        "the policy pins no measurement, so any TD software would pass: pin them (gatehouse \
         policy-from-bundle) or pass --accept-any-measurements"
    );
    let q = gatehouse_attest::statement::verify_statement(
        &statement,
        payload.as_deref(),
        &policy,
        now,
    )?;
    Ok(format!(
        "signed by {} for {:?} at {}; {} quote, TCB {}",
        statement.public_key,
        statement.context,
        statement.signed_at,
        statement.attestation.evidence.tee,
        q.tcb_status()
    ))
}
