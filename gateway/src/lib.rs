//! Gatehouse's data plane: the SNI router that passes TLS through or terminates it, and the
//! pieces around it (admin endpoints, the development CA and demo app).
//!
//! The life of a connection is [`conn::serve`]: PROXY header (optional) → ClientHello read
//! without consuming ([`hello`]) → route by SNI ([`route`]) → admission (per-app cap) →
//! passthrough, or rustls termination ([`terminate`]) → instance choice with failover
//! ([`upstream`]) → byte relay with half-close and timeouts ([`relay`]).
//!
//! ACME certificates come from the `certbot` crate ([`acme`] wires it in); TLS-ALPN-01
//! validations are answered in [`conn`] before routing, and so are verifiers fetching the
//! attestation bundle ([`attestation`], quotes from the `attest` crate). It does not (yet)
//! speak HTTP to apps: that comes with the `http` mode.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod acme;
pub mod admission;
pub mod app;
pub mod app_admission;
pub mod attestation;
pub mod channel;
pub mod client_tls;
pub mod cluster_node;
pub mod conn;
pub mod ct_watch;
pub mod demo;
pub mod devca;
pub mod error;
pub mod fdlimit;
pub mod hello;
pub mod http;
pub mod http_server;
pub mod listener;
pub mod metrics;
pub mod proxy_protocol;
pub mod relay;
pub mod route;
pub mod shutdown;
pub mod terminate;
pub mod upstream;
pub mod verifier;
pub mod verify_site;
