use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// `[admin]`: the admin and metrics listener. Fails closed: a token is required unless the
/// listener is loopback-only and `insecure_no_auth = true` says so explicitly.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Where the admin HTTP server listens.
    #[serde(deserialize_with = "crate::de::socket_addr")]
    pub listen: SocketAddr,
    /// A file holding the bearer token (surrounding whitespace ignored).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Allow requests without a token; only accepted on a loopback listener.
    #[serde(default)]
    pub insecure_no_auth: bool,
}

impl AdminConfig {
    pub(crate) fn resolve_paths(&mut self, base: &std::path::Path) {
        if let Some(token) = &mut self.token_file {
            *token = base.join(&*token);
        }
    }
}
