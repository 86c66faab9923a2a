//! Upstream instances: choice ([`balancer`]), passive and active health ([`health`],
//! [`active`]) and connecting with bounded failover.

pub mod active;
pub mod balancer;
pub mod health;
pub mod own;

use crate::route::Route;
use balancer::Load;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpStream;

/// Instances tried for one connection before giving up.
pub const MAX_ATTEMPTS: usize = 3;

/// Why no instance could be reached.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The app has no instance at all.
    #[error("app {0:?} has no instance")]
    NoInstance(String),
    /// Every attempt failed; the last error is kept.
    #[error("{attempts} connect attempt(s) failed, last to {addr}: {error}")]
    Unreachable {
        /// Attempts made.
        attempts: usize,
        /// The last address tried.
        addr: SocketAddr,
        /// Its error.
        error: io::Error,
    },
}

/// Connects to an instance of the route's app: power of two choices among healthy instances,
/// then the next untried one on failure (at most [`MAX_ATTEMPTS`]), each attempt bounded by
/// `timeout`. A failed instance is marked unhealthy with exponential backoff.
pub async fn connect(route: &Route, timeout: Duration) -> Result<(TcpStream, Load), UpstreamError> {
    let instances = &route.app.instances;
    let mut tried = [usize::MAX; MAX_ATTEMPTS];
    let mut last = None;
    for attempt in 0..MAX_ATTEMPTS {
        let Some(i) = balancer::pick(instances, &tried[..attempt]) else {
            break;
        };
        tried[attempt] = i;
        let instance = &instances[i];
        let addr = SocketAddr::new(instance.addr, route.port);
        if own::is_own(addr) {
            let why = "one of the gateway's own listeners, never an instance target";
            last = Some((addr, io::Error::new(io::ErrorKind::PermissionDenied, why)));
            continue;
        }
        let load = Load::start(instance.clone());
        let result = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {timeout:?}"),
            )),
        };
        match result {
            Ok(stream) => {
                instance.health.record_success();
                let _ = stream.set_nodelay(true);
                return Ok((stream, load));
            }
            Err(error) if route.app.spec.declares(route.port) => {
                let backoff = instance.health.record_failure(health::now_ms());
                tracing::warn!(app = %route.app.spec.id, %addr, %error, ?backoff, "instance connect failed; marked unhealthy");
                last = Some((addr, error));
            }
            Err(error) => {
                // A port the app did not declare says nothing about the instance: a client
                // naming closed ports must not take it out of rotation for everyone.
                tracing::debug!(app = %route.app.spec.id, %addr, %error, "connect to an undeclared port failed");
                last = Some((addr, error));
            }
        }
    }
    match last {
        None => Err(UpstreamError::NoInstance(route.app.spec.id.clone())),
        Some((addr, error)) => Err(UpstreamError::Unreachable {
            attempts: tried.iter().filter(|t| **t != usize::MAX).count(),
            addr,
            error,
        }),
    }
}
