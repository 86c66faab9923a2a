//! Why a connection was refused, classified once: metric label, TLS alert, log level.

use crate::hello::{alert, HelloError};
use crate::metrics::Reject;
use crate::proxy_protocol::ProxyHeaderError;
use crate::route::table::Full;
use crate::route::RouteError;
use crate::upstream::UpstreamError;
use std::io;

/// A connection refused before relaying (relay outcomes are not errors of the gateway).
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// PROXY header missing or malformed.
    #[error("{0}")]
    ProxyHeader(#[from] ProxyHeaderError),
    /// A connection expected to start with a PROXY header came from outside
    /// `proxy_protocol_trusted`.
    #[error("PROXY header from {0}, which is not in proxy_protocol_trusted")]
    UntrustedProxy(std::net::IpAddr),
    /// ClientHello unacceptable.
    #[error("{0}")]
    Hello(#[from] HelloError),
    /// PROXY header, hello or TLS handshake not complete in time.
    #[error("handshake not complete within {0:?}")]
    HandshakeTimeout(std::time::Duration),
    /// Reading from the client failed before routing.
    #[error("client I/O: {0}")]
    ClientIo(io::Error),
    /// The SNI does not route.
    #[error("no route for {sni:?}: {error}")]
    Route {
        /// The name.
        sni: String,
        /// Why.
        error: RouteError,
    },
    /// The app is at its connection cap.
    #[error("app {app:?} {}", match full {
        Full::App(max) => format!("is at max_connections = {max}"),
        Full::Share(n) => format!("already serves this client its share of {n} connections"),
    })]
    AppFull {
        /// App id.
        app: String,
        /// Which cap.
        full: Full,
    },

    /// No certificate covers the name.
    #[error("no certificate for {0:?}")]
    NoCertificate(String),
    /// rustls refused the handshake.
    #[error("TLS handshake: {0}")]
    Tls(io::Error),
    /// No instance reachable.
    #[error("{0}")]
    Upstream(#[from] UpstreamError),
}

impl ConnError {
    /// The metric label.
    pub fn reject(&self) -> Reject {
        match self {
            ConnError::ProxyHeader(ProxyHeaderError::Truncated) => Reject::Truncated,
            ConnError::ProxyHeader(_) => Reject::ProxyHeader,
            ConnError::UntrustedProxy(_) => Reject::UntrustedProxy,
            ConnError::Hello(h) => match h {
                HelloError::NotTls(_) => Reject::NotTls,
                HelloError::TooLarge => Reject::HelloTooLarge,
                HelloError::NoSni | HelloError::BadSni(_) => Reject::NoSni,
                HelloError::Truncated(_) => Reject::Truncated,
                HelloError::UnexpectedRecord(_)
                | HelloError::NotClientHello(_)
                | HelloError::Malformed(_) => Reject::MalformedHello,
            },
            ConnError::HandshakeTimeout(_) => Reject::HandshakeTimeout,
            ConnError::ClientIo(_) => Reject::ClientIo,
            ConnError::Route { .. } => Reject::NoRoute,
            ConnError::AppFull { .. } => Reject::AppFull,
            ConnError::NoCertificate(_) => Reject::NoCertificate,
            ConnError::Tls(_) => Reject::TlsHandshake,
            ConnError::Upstream(_) => Reject::Upstream,
        }
    }

    /// The alert to send the client before closing, while it still waits for a ServerHello.
    pub fn alert(&self) -> Option<u8> {
        match self {
            ConnError::Hello(h) => h.alert(),
            ConnError::Route { .. } | ConnError::NoCertificate(_) => Some(alert::UNRECOGNIZED_NAME),
            ConnError::AppFull { .. } | ConnError::Upstream(_) => Some(alert::INTERNAL_ERROR),
            _ => None,
        }
    }

    /// Whether an operator should see it at the default log level (the gateway or an app is
    /// in trouble), rather than at debug (a client sent something we refuse).
    pub fn is_operational(&self) -> bool {
        matches!(
            self,
            ConnError::AppFull {
                full: Full::App(_),
                ..
            } | ConnError::Upstream(_)
        )
    }
}
