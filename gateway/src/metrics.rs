//! Process-wide counters, read by the admin `/metrics` endpoint (Prometheus text format).
//! Plain relaxed atomics: the hot path pays one uncontended add per event.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a connection ended without being relayed, as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Reject {
    /// First bytes were not TLS.
    NotTls,
    /// Malformed ClientHello (framing or fields).
    MalformedHello,
    /// ClientHello over the size bound.
    HelloTooLarge,
    /// ClientHello without SNI, or with an invalid one.
    NoSni,
    /// Closed before the hello (or PROXY header) was complete.
    Truncated,
    /// Hello or PROXY header not complete within the handshake timeout.
    HandshakeTimeout,
    /// PROXY header missing or malformed.
    ProxyHeader,
    /// The name does not route (grammar, unknown app, port not allowed, custom domain).
    NoRoute,
    /// The app is at `max_connections`.
    AppFull,
    /// No certificate covers the name.
    NoCertificate,
    /// The TLS handshake failed.
    TlsHandshake,
    /// No instance could be reached.
    Upstream,
    /// I/O error on the client before routing.
    ClientIo,
    /// A connection from outside `proxy_protocol_trusted` where a PROXY header is expected.
    UntrustedProxy,
    /// The source held `max_connections_per_source` (refused at accept).
    SourceLimit,
    /// The gateway held its global cap (refused at accept).
    GlobalLimit,
    /// The client sent nothing after its handshake within `first_data`.
    NoData,
}

impl Reject {
    const ALL: [Reject; 17] = [
        Reject::NotTls,
        Reject::MalformedHello,
        Reject::HelloTooLarge,
        Reject::NoSni,
        Reject::Truncated,
        Reject::HandshakeTimeout,
        Reject::ProxyHeader,
        Reject::NoRoute,
        Reject::AppFull,
        Reject::NoCertificate,
        Reject::TlsHandshake,
        Reject::Upstream,
        Reject::ClientIo,
        Reject::UntrustedProxy,
        Reject::SourceLimit,
        Reject::GlobalLimit,
        Reject::NoData,
    ];

    /// The label in `/metrics` and logs.
    pub fn label(self) -> &'static str {
        match self {
            Reject::NotTls => "not_tls",
            Reject::MalformedHello => "malformed_hello",
            Reject::HelloTooLarge => "hello_too_large",
            Reject::NoSni => "no_sni",
            Reject::Truncated => "truncated",
            Reject::HandshakeTimeout => "handshake_timeout",
            Reject::ProxyHeader => "proxy_header",
            Reject::NoRoute => "no_route",
            Reject::AppFull => "app_full",
            Reject::NoCertificate => "no_certificate",
            Reject::TlsHandshake => "tls_handshake",
            Reject::Upstream => "upstream_unreachable",
            Reject::ClientIo => "client_io",
            Reject::UntrustedProxy => "untrusted_proxy",
            Reject::SourceLimit => "source_limit",
            Reject::GlobalLimit => "global_limit",
            Reject::NoData => "no_data",
        }
    }
}

/// The counters.
#[derive(Debug, Default)]
pub struct Metrics {
    accepted: AtomicU64,
    active: AtomicU64,
    relayed: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    handshakes_full: AtomicU64,
    handshakes_resumed: AtomicU64,
    acme_challenges: AtomicU64,
    attestations: AtomicU64,
    /// ACME certificate counters, once the manager runs.
    pub acme: std::sync::OnceLock<std::sync::Arc<gatehouse_certbot::manager::CertStats>>,
    /// The Certificate Transparency watch, when `[ct]` is configured.
    pub ct: std::sync::OnceLock<std::sync::Arc<gatehouse_ct::Monitor>>,
    /// The shared store's health, on a cluster node (etcd backend).
    pub store: std::sync::OnceLock<std::sync::Arc<gatehouse_cluster::Health>>,
    rejected: [AtomicU64; Reject::ALL.len()],
    /// The runtimes whose tasks `gatehouse_tasks_alive` counts (the workers', the control's).
    runtimes: std::sync::Mutex<Vec<tokio::runtime::Handle>>,
}

impl Metrics {
    /// A connection was accepted; the returned guard counts it as active until dropped.
    pub fn accepted(&self) -> ActiveGuard<'_> {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self)
    }

    /// Counts the tasks of `runtime` in `gatehouse_tasks_alive` (a leak shows as a climb).
    pub fn count_tasks_of(&self, runtime: tokio::runtime::Handle) {
        self.runtimes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(runtime);
    }

    /// Tasks alive now in every counted runtime.
    pub fn tasks_alive(&self) -> u64 {
        self.runtimes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|h| h.metrics().num_alive_tasks() as u64)
            .sum()
    }

    /// A connection was refused for `why`.
    pub fn rejected(&self, why: Reject) {
        self.rejected[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A relay ended after moving these bytes.
    pub fn relayed(&self, up: u64, down: u64) {
        self.relayed.fetch_add(1, Ordering::Relaxed);
        self.bytes_up.fetch_add(up, Ordering::Relaxed);
        self.bytes_down.fetch_add(down, Ordering::Relaxed);
    }

    /// A TLS handshake completed, resumed or full.
    pub fn handshake(&self, resumed: bool) {
        let c = if resumed {
            &self.handshakes_resumed
        } else {
            &self.handshakes_full
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// A verifier connected for the attestation bundle.
    pub fn attestation_served(&self) {
        self.attestations.fetch_add(1, Ordering::Relaxed);
    }

    /// A TLS-ALPN-01 validation handshake was answered.
    pub fn acme_challenge_answered(&self) {
        self.acme_challenges.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections accepted since start.
    pub fn accepted_total(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections open now.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    /// Connections refused for `why` so far.
    pub fn rejected_count(&self, why: Reject) -> u64 {
        self.rejected[why as usize].load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut counter = |name: &str, help: &str, kind: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        counter(
            "gatehouse_connections_accepted_total",
            "TCP connections accepted.",
            "counter",
            get(&self.accepted),
        );
        counter(
            "gatehouse_connections_active",
            "Connections open now.",
            "gauge",
            get(&self.active),
        );
        counter(
            "gatehouse_tasks_alive",
            "Tasks alive now in the workers' and the control runtime.",
            "gauge",
            self.tasks_alive(),
        );
        counter(
            "gatehouse_connections_relayed_total",
            "Connections that reached an instance and ended.",
            "counter",
            get(&self.relayed),
        );
        counter(
            "gatehouse_relay_bytes_up_total",
            "Bytes relayed client to instance.",
            "counter",
            get(&self.bytes_up),
        );
        counter(
            "gatehouse_relay_bytes_down_total",
            "Bytes relayed instance to client.",
            "counter",
            get(&self.bytes_down),
        );
        counter(
            "gatehouse_attestation_connections_total",
            "Connections that fetched the attestation bundle (ALPN gatehouse-attest/1).",
            "counter",
            get(&self.attestations),
        );
        counter(
            "gatehouse_acme_tls_alpn_answered_total",
            "TLS-ALPN-01 validation handshakes answered.",
            "counter",
            get(&self.acme_challenges),
        );
        if let Some(store) = self.store.get() {
            for (name, help, kind, v) in [
                (
                    "gatehouse_store_available",
                    "1 while the shared store answers this node's heartbeat; 0: serving what it holds, renewals and registrations wait.",
                    "gauge",
                    u64::from(store.available()),
                ),
                (
                    "gatehouse_store_last_success_timestamp_seconds",
                    "When a heartbeat last reached the shared store (unix seconds).",
                    "gauge",
                    store.last_success(),
                ),
                (
                    "gatehouse_store_heartbeat_failures_total",
                    "Heartbeats that did not reach the shared store.",
                    "counter",
                    store.failures(),
                ),
            ] {
                counter(name, help, kind, v);
            }
        }
        if let Some(ct) = self.ct.get() {
            let status = ct.status();
            let (raised, webhook_failures) = ct.counters();
            for (name, help, kind, v) in [
                (
                    "gatehouse_ct_alerts",
                    "Logged certificates for our names with a key that never entered our CSRs (stored alerts).",
                    "gauge",
                    status.alerts.len() as u64,
                ),
                (
                    "gatehouse_ct_alerts_raised_total",
                    "CT alerts raised since start.",
                    "counter",
                    raised,
                ),
                (
                    "gatehouse_ct_webhook_failures_total",
                    "CT alert webhook deliveries that failed.",
                    "counter",
                    webhook_failures,
                ),
                (
                    "gatehouse_ct_stale",
                    "1 while some CT source has not answered within ct.stale_after (the status claims nothing).",
                    "gauge",
                    u64::from(status.status == "stale"),
                ),
                (
                    "gatehouse_ct_checked_timestamp_seconds",
                    "The oldest of the CT sources' last full answers (unix seconds; 0 before all answered).",
                    "gauge",
                    status.checked_at.unwrap_or(0),
                ),
            ] {
                counter(name, help, kind, v);
            }
        }
        if let Some(acme) = self.acme.get() {
            for (name, help, kind, v) in [
                (
                    "gatehouse_acme_certificates_issued_total",
                    "ACME certificates issued (first or renewal).",
                    "counter",
                    &acme.issued,
                ),
                (
                    "gatehouse_acme_orders_failed_total",
                    "ACME orders that failed at any step.",
                    "counter",
                    &acme.failed,
                ),
                (
                    "gatehouse_acme_caa_refused_total",
                    "Orders refused because CAA was Unknown or Blocked.",
                    "counter",
                    &acme.caa_refused,
                ),
                (
                    "gatehouse_caa_not_locked",
                    "Served names whose CAA does not lock them to our account, at the last check.",
                    "gauge",
                    &acme.caa_not_locked,
                ),
                (
                    "gatehouse_caa_drift_total",
                    "CAA verdict changes seen by the periodic re-check.",
                    "counter",
                    &acme.caa_drift,
                ),
            ] {
                counter(name, help, kind, get(v));
            }
            render_schedule(&mut out, acme);
        }
        let _ = writeln!(
            out,
            "# HELP gatehouse_tls_handshakes_total TLS handshakes completed, by kind."
        );
        let _ = writeln!(out, "# TYPE gatehouse_tls_handshakes_total counter");
        for (kind, value) in [
            ("full", &self.handshakes_full),
            ("resumed", &self.handshakes_resumed),
        ] {
            let _ = writeln!(
                out,
                "gatehouse_tls_handshakes_total{{kind=\"{kind}\"}} {}",
                get(value)
            );
        }
        let _ = writeln!(
            out,
            "# HELP gatehouse_connections_rejected_total Connections refused, by reason."
        );
        let _ = writeln!(out, "# TYPE gatehouse_connections_rejected_total counter");
        for r in Reject::ALL {
            let _ = writeln!(
                out,
                "gatehouse_connections_rejected_total{{reason=\"{}\"}} {}",
                r.label(),
                get(&self.rejected[r as usize])
            );
        }
        if let Some(ct) = self.ct.get() {
            let _ = writeln!(
                out,
                "# HELP gatehouse_ct_source_up 1 if the CT source's last round succeeded.\n# TYPE gatehouse_ct_source_up gauge"
            );
            for (source, up) in ct.sources_up() {
                let _ = writeln!(
                    out,
                    "gatehouse_ct_source_up{{source=\"{source}\"}} {}",
                    u64::from(up)
                );
            }
        }
        out
    }
}

/// Counts one active connection until dropped.
#[derive(Debug)]
pub struct ActiveGuard<'a>(&'a Metrics);

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Each certificate's renewal plan as Unix-time gauges (labelled by target id).
fn render_schedule(out: &mut String, acme: &gatehouse_certbot::manager::CertStats) {
    let plans = acme
        .schedule
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let secs = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    for (name, help, pick) in [
        (
            "gatehouse_acme_renewal_timestamp_seconds",
            "When each certificate is next renewed (Unix time).",
            (|p: &gatehouse_certbot::schedule::Plan| Some(p.renew_at))
                as fn(&gatehouse_certbot::schedule::Plan) -> Option<std::time::SystemTime>,
        ),
        (
            "gatehouse_acme_ari_poll_timestamp_seconds",
            "When the CA's renewal information is next asked (Unix time).",
            |p| p.poll_at,
        ),
        (
            "gatehouse_acme_ari_window_start_timestamp_seconds",
            "Start of the renewal window the CA suggested (Unix time).",
            |p| p.window.map(|w| w.0),
        ),
        (
            "gatehouse_acme_ari_window_end_timestamp_seconds",
            "End of the renewal window the CA suggested (Unix time).",
            |p| p.window.map(|w| w.1),
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (id, plan) in &plans {
            if let Some(t) = pick(plan) {
                let _ = writeln!(out, "{name}{{certificate=\"{id}\"}} {}", secs(t));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_slot_and_label() {
        let m = Metrics::default();
        for (i, r) in Reject::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            for _ in 0..=i {
                m.rejected(*r);
            }
        }
        let text = m.render();
        for (i, r) in Reject::ALL.iter().enumerate() {
            let line = format!(
                "gatehouse_connections_rejected_total{{reason=\"{}\"}} {}",
                r.label(),
                i + 1
            );
            assert!(text.contains(&line), "{line}");
        }
        let g = m.accepted();
        assert_eq!(m.active(), 1);
        drop(g);
        assert_eq!(m.active(), 0);
    }
}
