use crate::Problem;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// `[admin]`: the admin API, dashboard and metrics listener. Fails closed: a token is
/// required unless the listener is loopback-only and `insecure_no_auth = true` says so
/// explicitly.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Where the admin HTTP server listens.
    #[serde(deserialize_with = "crate::de::socket_addr")]
    pub listen: SocketAddr,
    /// A file holding a bearer token with the `write` scope, id `default` (surrounding
    /// whitespace ignored).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// More tokens, each with an id (named in the audit log) and a scope; several at once
    /// let one be rotated while the other still works.
    #[serde(default)]
    pub tokens: Vec<AdminToken>,
    /// Allow requests without a token; only accepted on a loopback listener.
    #[serde(default)]
    pub insecure_no_auth: bool,
}

/// `[[admin.tokens]]`: one bearer token.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminToken {
    /// Names the token in the audit log (never the token itself).
    pub id: String,
    /// The file holding the token.
    pub file: PathBuf,
    /// What the token may do.
    pub scope: Scope,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read everything (the dashboard's view, `GET` requests, metrics).
    Read,
    /// Read, and change: apps, instances, drains, renewals, reloads, signatures.
    Write,
}

impl AdminConfig {
    pub(crate) fn resolve_paths(&mut self, base: &std::path::Path) {
        if let Some(token) = &mut self.token_file {
            *token = base.join(&*token);
        }
        for t in &mut self.tokens {
            t.file = base.join(&t.file);
        }
    }

    /// Every token: `token_file` as id `default` (write), then `tokens`.
    pub fn all_tokens(&self) -> Vec<AdminToken> {
        let default = self.token_file.as_ref().map(|f| AdminToken {
            id: "default".into(),
            file: f.clone(),
            scope: Scope::Write,
        });
        default.into_iter().chain(self.tokens.clone()).collect()
    }

    pub(crate) fn check(&self, problems: &mut Vec<Problem>) {
        let mut push = |path: String, reason: String| problems.push(Problem::new(path, reason));
        let loopback = self.listen.ip().is_loopback();
        let has_tokens = self.token_file.is_some() || !self.tokens.is_empty();
        if self.insecure_no_auth && !loopback {
            push(
                "admin.insecure_no_auth".into(),
                format!(
                    "only allowed on a loopback listener, and {} is not",
                    self.listen
                ),
            );
        }
        if !has_tokens && !self.insecure_no_auth {
            push(
                "admin.token_file".into(),
                "required (or admin.tokens, or insecure_no_auth = true on a loopback listener)"
                    .into(),
            );
        }
        if has_tokens && self.insecure_no_auth {
            push(
                "admin.insecure_no_auth".into(),
                "contradicts the admin tokens: choose one".into(),
            );
        }
        if let Some(t) = self.token_file.as_ref().filter(|t| !t.is_file()) {
            push(
                "admin.token_file".into(),
                format!("{} is not a readable file", t.display()),
            );
        }
        let mut ids = std::collections::HashSet::new();
        if self.token_file.is_some() {
            ids.insert("default");
        }
        for (i, t) in self.tokens.iter().enumerate() {
            let valid = !t.id.is_empty()
                && t.id.len() <= 64
                && t.id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid {
                push(
                    format!("admin.tokens[{i}].id"),
                    format!("{:?} is not 1-64 letters, digits, '-' or '_'", t.id),
                );
            } else if !ids.insert(&t.id) {
                push(
                    format!("admin.tokens[{i}].id"),
                    format!("{:?} is already taken (token_file is \"default\")", t.id),
                );
            }
            if !t.file.is_file() {
                push(
                    format!("admin.tokens[{i}].file"),
                    format!("{} is not a readable file", t.file.display()),
                );
            }
        }
    }
}
