//! The subcommands that drive a running gateway through its admin API.

use crate::admin_client::{apps_summary, certs_summary, print, Target};
use clap::Subcommand;
use std::process::ExitCode;

/// `gatehouse apps ...`
#[derive(Subcommand, Debug)]
pub enum AppsCommand {
    /// Every app (config file, API, built in) with its instances and their state.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// One app.
    Get {
        /// The app id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Create an app (stored: it survives restarts, and reaches every node of a cluster).
    ///
    /// Checked like an `[[apps]]` entry of the config file, with the same messages, and by
    /// `[admission]` if configured. Example: `gatehouse apps add web --mode http --instance
    /// 10.0.0.2 --instance 10.0.0.3 --default-port 8080`.
    Add {
        /// The app id (`<id>.<base-domain>` reaches it).
        id: String,
        /// `tcp` (relay bytes) or `http` (L7 proxy).
        #[arg(long, default_value = "tcp")]
        mode: String,
        /// The instance port when the name has none.
        #[arg(long, default_value_t = 80)]
        default_port: u16,
        /// A port names may ask for (`<id>-<port>`); repeat for more.
        #[arg(long = "port")]
        ports: Vec<u16>,
        /// An instance address; repeat for more.
        #[arg(long = "instance")]
        instances: Vec<String>,
        /// Connections at once (0: no cap).
        #[arg(long, default_value_t = 0)]
        max_connections: u32,
        #[command(flatten)]
        target: Target,
    },
    /// Delete an app created through the API (config-file apps are changed in the file).
    Rm {
        /// The app id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
}

/// `gatehouse instances ...`
#[derive(Subcommand, Debug)]
pub enum InstancesCommand {
    /// Add an instance to an app created through the API.
    Add {
        /// The app id.
        app: String,
        /// The instance address.
        address: String,
        #[command(flatten)]
        target: Target,
    },
    /// Remove an instance from an app created through the API.
    Rm {
        /// The app id.
        app: String,
        /// The instance address.
        address: String,
        #[command(flatten)]
        target: Target,
    },
    /// Drain an instance (of any app): no new connection or request reaches it; open ones
    /// finish. Stored: it stays drained across restarts until undrained.
    Drain {
        /// The app id.
        app: String,
        /// The instance address.
        address: String,
        #[command(flatten)]
        target: Target,
    },
    /// Take a drained instance back.
    Undrain {
        /// The app id.
        app: String,
        /// The instance address.
        address: String,
        #[command(flatten)]
        target: Target,
    },
}

/// `gatehouse certs ...`
#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// The certificates served: names, days left, key origin, issuer.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Renew an ACME certificate now (by its id, from `certs list`), CAA-gated as always.
    Renew {
        /// The certificate target id.
        id: String,
        #[command(flatten)]
        target: Target,
    },
}

fn app_path(id: &str) -> String {
    format!("/v1/apps/{id}")
}

/// Runs `gatehouse apps ...`.
pub fn apps(cmd: AppsCommand) -> ExitCode {
    match cmd {
        AppsCommand::List { target } => {
            print(&target, target.call("GET", "/v1/apps", None), apps_summary)
        }
        AppsCommand::Get { id, target } => print(
            &target,
            target.call("GET", &app_path(&id), None),
            apps_summary,
        ),
        AppsCommand::Add {
            id,
            mode,
            default_port,
            ports,
            instances,
            max_connections,
            target,
        } => {
            let body = serde_json::json!({
                "id": id,
                "mode": mode,
                "default_port": default_port,
                "ports": ports,
                "max_connections": max_connections,
                "instances": instances.iter().map(|a| serde_json::json!({ "address": a })).collect::<Vec<_>>(),
            });
            let answer = target.call("POST", "/v1/apps", Some(body));
            print(&target, answer, |v| format!("created {}", apps_summary(v)))
        }
        AppsCommand::Rm { id, target } => {
            print(&target, target.call("DELETE", &app_path(&id), None), |_| {
                format!("deleted {id}\n")
            })
        }
    }
}

/// Runs `gatehouse instances ...`.
pub fn instances(cmd: InstancesCommand) -> ExitCode {
    let drain = |app: &str, address: &str, on: bool, target: &Target| {
        let path = format!("{}/instances/{address}/drain", app_path(app));
        let answer = target.call(if on { "POST" } else { "DELETE" }, &path, None);
        let word = if on { "drained" } else { "undrained" };
        print(target, answer, |_| format!("{app} {address}: {word}\n"))
    };
    match cmd {
        InstancesCommand::Add {
            app,
            address,
            target,
        } => {
            let path = format!("{}/instances", app_path(&app));
            let answer = target.call(
                "POST",
                &path,
                Some(serde_json::json!({ "address": address })),
            );
            print(&target, answer, apps_summary)
        }
        InstancesCommand::Rm {
            app,
            address,
            target,
        } => {
            let path = format!("{}/instances/{address}", app_path(&app));
            print(&target, target.call("DELETE", &path, None), apps_summary)
        }
        InstancesCommand::Drain {
            app,
            address,
            target,
        } => drain(&app, &address, true, &target),
        InstancesCommand::Undrain {
            app,
            address,
            target,
        } => drain(&app, &address, false, &target),
    }
}

/// Runs `gatehouse certs ...`.
pub fn certs(cmd: CertsCommand) -> ExitCode {
    match cmd {
        CertsCommand::List { target } => print(
            &target,
            target.call("GET", "/v1/certificates", None),
            certs_summary,
        ),
        CertsCommand::Renew { id, target } => {
            let path = format!("/v1/certificates/{id}/renew");
            print(&target, target.call("POST", &path, None), |_| {
                format!("{id}: renewal started (watch `gatehouse certs list`)\n")
            })
        }
    }
}

/// Runs `gatehouse reload`.
pub fn reload(target: Target) -> ExitCode {
    print(&target, target.call("POST", "/v1/reload", None), |v| {
        let list = |k: &str| -> String {
            let items: Vec<&str> = v[k]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str())
                .collect();
            match items.is_empty() {
                true => "none".into(),
                false => items.join(", "),
            }
        };
        format!(
            "reloaded: apps added {}; changed {}; removed {}; sections {}\n",
            list("apps_added"),
            list("apps_changed"),
            list("apps_removed"),
            list("changed")
        )
    })
}

/// `health`: `GET /healthz`; 0 when it answers 200, else 1 with what it saw.
pub fn health(target: Target) -> ExitCode {
    match target.call("GET", "/healthz", None) {
        Ok(a) if a.status == 200 => {
            println!("healthy");
            ExitCode::SUCCESS
        }
        Ok(a) => {
            eprintln!(
                "unhealthy: /healthz answered {} {}",
                a.status,
                a.body["error"].as_str().unwrap_or_default()
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("unhealthy: {e:#}");
            ExitCode::from(1)
        }
    }
}
