use crate::{decode, Problem};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// `[[apps]]`: one app, reachable as `<id>[-<port>][s|g].<base-domain>`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// Lowercase letters, digits and inner `-`; see [`app_id_problem`].
    pub id: String,
    /// The instance port used when the name carries none.
    #[serde(default = "default_port")]
    pub default_port: u16,
    /// What happens after TLS is terminated.
    #[serde(default)]
    pub mode: AppMode,
    /// Concurrent connections to this app; 0 = unlimited.
    #[serde(default)]
    pub max_connections: u32,
    /// Ports a name may ask for (`<app>-<port>`); empty = only `default_port`. Every other
    /// port of an instance stays unreachable from outside.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// How names may reach the app: `terminate` (`<app>`), `passthrough` (`<app>s`, or a custom
    /// domain's `mode=passthrough`), `h2` (`<app>g`). Default: all three for `tcp` apps,
    /// `terminate` and `h2` for `http` apps (passthrough would skip the Host check, the
    /// forwarding headers, the limits and the access log).
    #[serde(default)]
    pub reachable_by: Option<Vec<Reach>>,
    /// Send a PROXY protocol header to the instance before any byte of the client.
    #[serde(default)]
    pub proxy_protocol: Option<ProxyProtocolVersion>,
    /// The app's instances (the VPC adds more at run time).
    #[serde(default)]
    pub instances: Vec<InstanceConfig>,
    /// Active health checks of every instance (static and VPC), beside the passive ones.
    #[serde(default)]
    pub health_check: Option<crate::HealthCheckConfig>,
    /// Serve the end-to-end encrypted channel on the app's names (`mode = "http"` only):
    /// Oblivious HTTP requests to `/.well-known/gatehouse/channel` are opened in the TEE and
    /// proxied as any other request ([proxy.http.channel]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypted_channel: bool,
}

impl AppConfig {
    /// One line saying what the app exposes, for `check-config`: its ports and the ways
    /// names reach it, with the defaults that changed in this version called out.
    pub fn exposure(&self) -> String {
        let ports = match self.ports.is_empty() {
            true => format!("port {} only (no `ports` listed)", self.default_port),
            false => format!("ports {:?}", self.ports),
        };
        let reach = self
            .reachable_by
            .clone()
            .unwrap_or_else(|| Reach::defaults(self.mode));
        let names: Vec<&str> = reach
            .iter()
            .map(|r| match r {
                Reach::Terminate => "terminate",
                Reach::Passthrough => "passthrough",
                Reach::H2 => "h2",
            })
            .collect();
        let mut line = format!(
            "app {}: {ports}, reachable by {}",
            self.id,
            names.join(", ")
        );
        if self.mode == AppMode::Http && self.reachable_by.is_none() {
            line.push_str(
                " (http apps are not reached by passthrough unless reachable_by says so)",
            );
        }
        line
    }
}

fn default_port() -> u16 {
    80
}

/// What the gateway does with the bytes after terminating TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AppMode {
    /// Relay the plaintext bytes to the instance (SSH, databases, any TCP protocol).
    #[default]
    Tcp,
    /// L7 HTTP reverse proxy on Pingora (HTTP/1.1 and h2 from clients, per-request balancing).
    Http,
}

/// One way a name reaches an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reach {
    /// TLS terminated by the gateway (`<app>`).
    Terminate,
    /// TLS relayed to the instance untouched (`<app>s`).
    Passthrough,
    /// TLS terminated with h2 offered (`<app>g`).
    H2,
}

impl Reach {
    /// The default for an app in `mode`.
    pub fn defaults(mode: AppMode) -> Vec<Reach> {
        match mode {
            AppMode::Tcp => vec![Reach::Terminate, Reach::Passthrough, Reach::H2],
            AppMode::Http => vec![Reach::Terminate, Reach::H2],
        }
    }
}

/// PROXY protocol version sent to instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyProtocolVersion {
    /// Text header.
    V1,
    /// Binary header.
    V2,
}

/// `[[apps.instances]]`: where one instance of the app listens.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// The instance's IP (on the VPC); the port comes from the name or `default_port`.
    #[serde(deserialize_with = "crate::de::ip_addr")]
    pub address: IpAddr,
}

/// The label of the attestation name under each base domain (`attest.<base-domain>`): the
/// bundle for every app, whatever its mode, and the browser verification page. No app may
/// take it.
pub const ATTESTATION_LABEL: &str = "attest";

/// Why `id` is not a valid app id, or `None` if it is.
///
/// An app id is lowercase ASCII letters and digits in `-`-separated groups, at most 63 bytes.
/// Its last group must not be all digits (optionally followed by `s`/`g`), because
/// `<app>-<port>[s|g]` would then read it as a port.
pub fn app_id_problem(id: &str) -> Option<String> {
    if id.is_empty() || id.len() > 63 {
        return Some(format!("{id:?} must be 1 to 63 characters"));
    }
    if id == ATTESTATION_LABEL {
        return Some(format!(
            "{id:?} is reserved: {id}.<base-domain> serves the attestation bundle and the \
             verification page"
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Some(format!(
            "{id:?} contains {c:?}: only lowercase letters, digits and '-' are allowed"
        ));
    }
    if id.starts_with('-') || id.ends_with('-') || id.contains("--") {
        return Some(format!("{id:?}: '-' must separate two non-empty groups"));
    }
    if let Some((_, last)) = id.rsplit_once('-') {
        let digits = last.trim_end_matches(['s', 'g']);
        if !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && last.len() - digits.len() <= 1
        {
            return Some(format!(
                "{id:?} ends in '-{last}', which names would read as a port"
            ));
        }
    }
    None
}

/// Decodes `apps` element by element so that each bad app is reported; returns the apps that
/// decoded with their index, and whether all did.
pub(crate) fn decode_all(
    value: Option<&toml::Value>,
    problems: &mut Vec<Problem>,
) -> (Vec<(usize, AppConfig)>, bool) {
    let Some(value) = value else {
        return (Vec::new(), true);
    };
    let Some(list) = value.as_array() else {
        problems.push(Problem::new(
            "apps",
            "must be an array of tables ([[apps]])",
        ));
        return (Vec::new(), false);
    };
    let apps: Vec<(usize, AppConfig)> = list
        .iter()
        .enumerate()
        .filter_map(|(i, v)| decode(v.clone(), &format!("apps[{i}]"), problems).map(|a| (i, a)))
        .collect();
    let complete = apps.len() == list.len();
    (apps, complete)
}

/// The ids [`check_app`] compares a new app `id` with: the id itself, the id with a flag
/// (`web`: `webs`, `webg`) and the id without one (`webs`: `web`). Every other check of a
/// new app is of the app alone, so a caller beside many apps (100k in a store) hands over
/// only the apps with these ids.
pub fn related_ids(id: &str) -> Vec<String> {
    let mut ids = vec![id.to_owned(), format!("{id}s"), format!("{id}g")];
    ids.extend(id.strip_suffix(['s', 'g']).map(str::to_owned));
    ids
}

/// Checks one app given at run time (the admin API), in the schema of `[[apps]]` and with
/// the same messages; key paths start with `app`. `others` are the apps it will sit beside,
/// each labelled with where it comes from (e.g. `apps[0]` for the file's first, `api app
/// "web"`): those with the [`related_ids`] of its id are enough. An app replacing one of
/// them must be left out of `others`.
pub fn check_app(
    value: toml::Value,
    others: &[(String, AppConfig)],
    allow_local: bool,
) -> Result<AppConfig, Vec<Problem>> {
    let mut problems = Vec::new();
    let Some(app) = decode::<AppConfig>(value, "app", &mut problems) else {
        return Err(problems);
    };
    let mut all: Vec<(String, &AppConfig)> =
        others.iter().map(|(label, a)| (label.clone(), a)).collect();
    all.push(("app".into(), &app));
    // `web` beside `webs`: either order is ambiguous, reported on the new one.
    for (label, other) in others {
        if other.id.strip_suffix(['s', 'g']) == Some(app.id.as_str()) {
            problems.push(Problem::new(
                "app.id",
                format!(
                    "{:?} is ambiguous: {label} {:?} also reads as this app with the '{}' flag",
                    app.id,
                    other.id,
                    &other.id[app.id.len()..]
                ),
            ));
        }
    }
    let mut push = |path: String, reason: String| problems.push(Problem::new(path, reason));
    crate::validate::check_apps(&all, allow_local, &mut push);
    // Only the new app's problems: the others were accepted already.
    problems.retain(|p| p.path == "app" || p.path.starts_with("app."));
    match problems.is_empty() {
        true => Ok(app),
        false => Err(problems),
    }
}
