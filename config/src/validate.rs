//! Semantic checks across fields; every problem is collected, none stops the others.

use crate::{
    app_id_problem, AcmeConfig, AdminConfig, AppConfig, AppMode, DnsConfig, DnsProviderKind,
    Problem, ProxyConfig, StoreConfig, TlsConfig,
};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// The sections that decoded; apps keep their index in the document.
pub(crate) struct Parts<'a> {
    pub proxy: Option<&'a ProxyConfig>,
    pub apps: &'a [(usize, AppConfig)],
    pub tls: Option<&'a TlsConfig>,
    pub admin: Option<&'a AdminConfig>,
    pub acme: Option<&'a AcmeConfig>,
    pub dns: Option<&'a DnsConfig>,
    pub store: Option<&'a StoreConfig>,
}

pub(crate) fn check(c: Parts<'_>, problems: &mut Vec<Problem>) {
    let mut push = |path: String, reason: String| problems.push(Problem::new(path, reason));
    if let Some(proxy) = c.proxy {
        check_proxy(proxy, &mut push);
    }
    let allow_local = c.proxy.is_some_and(|p| p.allow_local_instances);
    let labelled: Vec<(String, &AppConfig)> = c
        .apps
        .iter()
        .map(|(i, a)| (format!("apps[{i}]"), a))
        .collect();
    check_apps(&labelled, allow_local, &mut push);
    let certificates = c.tls.map(|t| &t.certificates[..]).unwrap_or_default();
    for (i, pair) in certificates.iter().enumerate() {
        for (field, path) in [("cert", &pair.cert), ("key", &pair.key)] {
            if !path.is_file() {
                push(
                    format!("tls.certificates[{i}].{field}"),
                    format!("{} is not a readable file", path.display()),
                );
            }
        }
    }
    check_acme(&c, &mut push);
    if let Some(admin) = c.admin {
        let mut found = Vec::new();
        admin.check(&mut found);
        for p in found {
            push(p.path, p.reason);
        }
    }
}

fn check_proxy(p: &ProxyConfig, push: &mut impl FnMut(String, String)) {
    if p.listen.is_empty() {
        push(
            "proxy.listen".into(),
            "at least one listener is required".into(),
        );
    }
    let mut seen = HashSet::new();
    for (i, addr) in p.listen.iter().enumerate() {
        if !seen.insert(addr) {
            push(
                format!("proxy.listen[{i}]"),
                format!("{addr} is listed twice"),
            );
        }
    }
    let mut domains = HashSet::new();
    for (i, d) in p.base_domains.iter().enumerate() {
        if let Some(why) = dns_name_problem(d) {
            push(format!("proxy.base_domains[{i}]"), why);
        } else if !domains.insert(d.to_ascii_lowercase()) {
            push(
                format!("proxy.base_domains[{i}]"),
                format!("{d:?} is listed twice"),
            );
        }
    }
    if p.workers > 1024 {
        push(
            "proxy.workers".into(),
            format!("{} is more than 1024", p.workers),
        );
    }
    let t = &p.timeouts;
    for (name, d) in [
        ("handshake", t.handshake),
        ("connect", t.connect),
        ("idle", t.idle),
        ("write", t.write),
        ("linger", t.linger),
        ("first_data", t.first_data),
    ] {
        if d.is_zero() {
            push(
                format!("proxy.timeouts.{name}"),
                "must be more than 0s".into(),
            );
        }
    }
    if p.proxy_protocol_inbound && p.proxy_protocol_trusted.is_empty() {
        push(
            "proxy.proxy_protocol_trusted".into(),
            "required with proxy_protocol_inbound: list the load balancers' addresses or \
             ranges (e.g. [\"10.0.0.0/8\"]); a PROXY header from anyone else would let a \
             client claim any address"
                .into(),
        );
    }
    if !p.proxy_protocol_inbound && !p.proxy_protocol_trusted.is_empty() {
        push(
            "proxy.proxy_protocol_trusted".into(),
            "set, but proxy_protocol_inbound is false: no PROXY header is read".into(),
        );
    }
    let l = &p.limits;
    if l.max_connections_per_source == 0 {
        push(
            "proxy.limits.max_connections_per_source".into(),
            "must be at least 1 (list load balancers in unlimited_sources instead)".into(),
        );
    }
    if !(l.app_share_per_source > 0.0 && l.app_share_per_source <= 1.0) {
        push(
            "proxy.limits.app_share_per_source".into(),
            format!("{} is not in (0, 1]", l.app_share_per_source),
        );
    }
    check_http(&p.http, push);
    let cd = &p.custom_domains;
    let prefix_ok = cd.txt_prefix.starts_with('_')
        && cd.txt_prefix.len() <= 63
        && cd.txt_prefix[1..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !prefix_ok {
        push(
            "proxy.custom_domains.txt_prefix".into(),
            format!(
                "{:?} must be one DNS label starting with '_'",
                cd.txt_prefix
            ),
        );
    }
    if cd.min_ttl > cd.max_ttl {
        push(
            "proxy.custom_domains.min_ttl".into(),
            format!(
                "{} is more than max_ttl {}",
                show(cd.min_ttl),
                show(cd.max_ttl)
            ),
        );
    }
    if cd.lookup_timeout.is_zero() {
        push(
            "proxy.custom_domains.lookup_timeout".into(),
            "must be more than 0s".into(),
        );
    }
    if cd.max_concurrent_lookups == 0 {
        push(
            "proxy.custom_domains.max_concurrent_lookups".into(),
            "must be at least 1".into(),
        );
    }
    if cd.max_lookups_per_zone == 0 {
        push(
            "proxy.custom_domains.max_lookups_per_zone".into(),
            "must be at least 1".into(),
        );
    }
    for (i, server) in cd.dns_over_tls.iter().enumerate() {
        if let Err(why) = crate::proxy::parse_dot_server(server) {
            push(format!("proxy.custom_domains.dns_over_tls[{i}]"), why);
        }
    }
    if let Some(ca) = &cd.dns_tls_ca_file {
        if !ca.is_file() {
            push(
                "proxy.custom_domains.dns_tls_ca_file".into(),
                format!("{} is not a readable file", ca.display()),
            );
        }
    }
}

/// Loopback, link-local or unspecified: an address on (or meaning) the gateway host itself.
pub fn is_local_address(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback() || v4.is_link_local() || v4.is_unspecified(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Checks apps each labelled with its key path (`apps[1]` in a file, `app` through the API).
pub(crate) fn check_apps(
    apps: &[(String, &AppConfig)],
    allow_local: bool,
    push: &mut impl FnMut(String, String),
) {
    let mut ids: HashMap<&str, &str> = HashMap::new();
    for (at, app) in apps {
        if let Some(why) = app_id_problem(&app.id) {
            push(format!("{at}.id"), why);
        } else if let Some(first) = ids.insert(&app.id, at) {
            push(
                format!("{at}.id"),
                format!("{:?} is already {first}.id", app.id),
            );
        }
        if app.mode == AppMode::Http && app.proxy_protocol.is_some() {
            push(
                format!("{at}.proxy_protocol"),
                "not sent in mode \"http\" (instances get X-Forwarded-For and Forwarded)".into(),
            );
        }
        if app.encrypted_channel && app.mode != AppMode::Http {
            push(
                format!("{at}.encrypted_channel"),
                "needs mode = \"http\" (the gateway opens and proxies the inner requests)".into(),
            );
        }
        if app.default_port == 0 {
            push(format!("{at}.default_port"), "must be 1-65535".into());
        }
        for (j, port) in app.ports.iter().enumerate() {
            if *port == 0 {
                push(format!("{at}.ports[{j}]"), "must be 1-65535".into());
            }
        }
        if !app.ports.is_empty() && !app.ports.contains(&app.default_port) {
            push(
                format!("{at}.default_port"),
                format!("{} is not in {at}.ports", app.default_port),
            );
        }
        if app.reachable_by.as_ref().is_some_and(|r| r.is_empty()) {
            push(
                format!("{at}.reachable_by"),
                "empty: no name could reach the app (list terminate, passthrough or h2)".into(),
            );
        }
        if let Some(hc) = &app.health_check {
            check_health_check(hc, &format!("{at}.health_check"), push);
        }
        let mut addrs = HashSet::new();
        for (j, inst) in app.instances.iter().enumerate() {
            if is_local_address(inst.address) && (!allow_local || inst.address.is_unspecified()) {
                push(
                    format!("{at}.instances[{j}].address"),
                    format!(
                        "{} is on the gateway host itself (loopback, link-local or unspecified): \
                         names of this app could reach the gateway's own services; set \
                         proxy.allow_local_instances = true to allow loopback and link-local",
                        inst.address
                    ),
                );
            }
            if !addrs.insert(inst.address) {
                push(
                    format!("{at}.instances[{j}].address"),
                    format!("{} is listed twice", inst.address),
                );
            }
        }
    }
    // `demo` and `demos` cannot both exist: `demos.<base>` would mean either.
    for (at, app) in apps {
        if let Some(stem) = app.id.strip_suffix(['s', 'g']) {
            if let Some(&other) = ids.get(stem) {
                push(
                    format!("{at}.id"),
                    format!(
                        "{:?} is ambiguous: it also reads as app {stem:?} ({other}) with the '{}' flag",
                        app.id,
                        &app.id[stem.len()..]
                    ),
                );
            }
        }
    }
}

fn check_http(h: &crate::HttpConfig, push: &mut impl FnMut(String, String)) {
    if h.max_header_bytes < 1024 {
        push(
            "proxy.http.max_header_bytes".into(),
            format!("{} is less than 1024", h.max_header_bytes),
        );
    }
    if h.max_headers == 0 || h.max_headers > 256 {
        push(
            "proxy.http.max_headers".into(),
            format!("{} is not in 1..=256 (the parser's bound)", h.max_headers),
        );
    }
    for (name, d) in [
        ("header_read_timeout", h.header_read_timeout),
        ("upstream_read_timeout", h.upstream_read_timeout),
        ("upstream_idle_timeout", h.upstream_idle_timeout),
    ] {
        if d.is_zero() {
            push(format!("proxy.http.{name}"), "must be more than 0s".into());
        }
    }
    let c = &h.channel;
    for (name, d) in [
        ("rotate", c.rotate),
        ("grace", c.grace),
        ("replay_window", c.replay_window),
    ] {
        if d.is_zero() {
            push(
                format!("proxy.http.channel.{name}"),
                "must be more than 0s".into(),
            );
        }
    }
    if c.grace > c.rotate {
        push(
            "proxy.http.channel.grace".into(),
            "is longer than rotate: more than two keys would open requests at once".into(),
        );
    }
    for (name, v) in [
        ("max_request", c.max_request),
        ("max_response", c.max_response),
    ] {
        if v == 0 {
            push(
                format!("proxy.http.channel.{name}"),
                "must be more than 0".into(),
            );
        }
    }
}

fn check_health_check(
    hc: &crate::HealthCheckConfig,
    at: &str,
    push: &mut impl FnMut(String, String),
) {
    if !hc.path.starts_with('/') || hc.path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        push(
            format!("{at}.path"),
            format!(
                "{:?} must start with '/' and hold no space or control byte",
                hc.path
            ),
        );
    }
    if hc.port == Some(0) {
        push(format!("{at}.port"), "must be 1-65535".into());
    }
    if hc.interval.is_zero() || hc.timeout.is_zero() {
        push(
            format!("{at}.interval"),
            "interval and timeout must be more than 0s".into(),
        );
    } else if hc.timeout > hc.interval {
        push(
            format!("{at}.timeout"),
            format!(
                "{} is longer than interval {}",
                show(hc.timeout),
                show(hc.interval)
            ),
        );
    }
    for (name, n) in [("fall", hc.fall), ("rise", hc.rise)] {
        if n == 0 {
            push(format!("{at}.{name}"), "must be at least 1".into());
        }
    }
}

/// Why `name` is not a DNS host name we accept (LDH labels, no trailing dot), if it is not.
pub fn dns_name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 253 {
        return Some(format!("{name:?} must be 1 to 253 characters"));
    }
    if name.ends_with('.') {
        return Some(format!("{name:?} must not end with '.'"));
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Some(format!("{name:?} has an invalid label {label:?}"));
        }
    }
    None
}

fn show(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn check_acme(c: &Parts<'_>, push: &mut impl FnMut(String, String)) {
    let file = |push: &mut dyn FnMut(String, String), key: &str, path: &std::path::Path| {
        if !path.is_file() {
            push(
                key.into(),
                format!("{} is not a readable file", path.display()),
            );
        }
    };
    if let Some(store) = c.store {
        store.check(push);
    }
    if let Some(dns) = c.dns {
        match (dns.provider, &dns.rfc2136, &dns.cloudflare) {
            (DnsProviderKind::Rfc2136, None, _) => push(
                "dns.rfc2136".into(),
                "required when provider = \"rfc2136\" (server, zones, key_name, key_file)".into(),
            ),
            (DnsProviderKind::Cloudflare, _, None) => push(
                "dns.cloudflare".into(),
                "required when provider = \"cloudflare\" (api_token_file)".into(),
            ),
            _ => {}
        }
        if let Some(r) = &dns.rfc2136 {
            file(push, "dns.rfc2136.key_file", &r.key_file);
            if r.zones.is_empty() {
                push("dns.rfc2136.zones".into(), "at least one zone".into());
            }
        }
        if let Some(cf) = &dns.cloudflare {
            file(push, "dns.cloudflare.api_token_file", &cf.api_token_file);
        }
    }
    let Some(acme) = c.acme else { return };
    if !(acme.directory.starts_with("https://")) {
        push(
            "acme.directory".into(),
            format!("{:?} must be an https:// URL", acme.directory),
        );
    }
    if let Some(ca) = &acme.ca_file {
        file(push, "acme.ca_file", ca);
    }
    match (&acme.eab_kid, &acme.eab_hmac_key_file) {
        (Some(_), None) | (None, Some(_)) => push(
            "acme.eab_kid".into(),
            "eab_kid and eab_hmac_key_file go together".into(),
        ),
        (Some(_), Some(f)) => file(push, "acme.eab_hmac_key_file", f),
        _ => {}
    }
    let has_bases = c.proxy.is_some_and(|p| !p.base_domains.is_empty());
    if acme.base_domains && has_bases && c.dns.is_none() {
        push(
            "acme.base_domains".into(),
            "wildcard certificates need DNS-01: configure [dns], or set base_domains = false"
                .into(),
        );
    }
    if acme.set_caa && c.dns.is_none() {
        push(
            "acme.set_caa".into(),
            "needs a [dns] provider to write records".into(),
        );
    }
    for (i, d) in acme.domains.iter().enumerate() {
        if d.starts_with("*.") {
            push(
                format!("acme.domains[{i}]"),
                format!(
                    "{d:?}: wildcards need DNS-01; custom domains are validated by TLS-ALPN-01"
                ),
            );
        } else if d.is_empty()
            || !d
                .split('.')
                .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
            || !d.contains('.')
        {
            push(
                format!("acme.domains[{i}]"),
                format!("{d:?} is not a DNS name"),
            );
        }
    }
}
