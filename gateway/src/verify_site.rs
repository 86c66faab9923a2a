//! The browser verifier's files, served at the attestation name `https://attest.<base>/`
//! (issue 21 §4): the verification page (`/`, `/page.css`) and the badge widget apps embed
//! (`/widget.js`, which is also the page's script). They are built from `web/` by esbuild into `web/dist/`, which is
//! committed, so the Rust build embeds them without npm (`./scripts/test.sh` rebuilds and
//! refuses a stale `dist/`).

/// One embedded file and the headers it is served with.
pub struct Asset {
    /// `content-type`.
    pub content_type: &'static str,
    /// The file's bytes.
    pub body: &'static [u8],
    /// `content-security-policy` for documents.
    pub csp: Option<&'static str>,
}

/// The page's policy: its own scripts and styles only; it fetches bundles from any HTTPS
/// origin (a domain's own `/.well-known/gatehouse/attestation`); nothing may frame it.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     connect-src 'self' https:; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The file at `path`, if it is one of the verifier's.
pub fn asset(path: &str) -> Option<Asset> {
    let (content_type, body, csp): (_, &'static [u8], _) = match path {
        "/" | "/index.html" => (
            "text/html; charset=utf-8",
            include_bytes!("../../web/dist/index.html"),
            Some(PAGE_CSP),
        ),
        "/page.css" => (
            "text/css; charset=utf-8",
            include_bytes!("../../web/dist/page.css"),
            None,
        ),
        "/widget.js" => (
            "text/javascript; charset=utf-8",
            include_bytes!("../../web/dist/widget.js"),
            None,
        ),
        _ => return None,
    };
    Some(Asset {
        content_type,
        body,
        csp,
    })
}

/// The encrypted channel's service worker, served on the own origin of each app that enables
/// the channel (a service worker must come from the origin it serves).
pub const CHANNEL_WORKER: &[u8] = include_bytes!("../../web/dist/channel-worker.js");

/// The widget's Subresource Integrity value (`sha384-<base64>`), for the script tag apps
/// copy: with it a browser runs exactly this build, whoever serves it.
pub fn widget_integrity() -> String {
    use base64::Engine as _;
    let body = include_bytes!("../../web/dist/widget.js");
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA384, body);
    format!(
        "sha384-{}",
        base64::engine::general_purpose::STANDARD.encode(d.as_ref())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browser_assets_are_embedded_with_their_types_and_the_page_has_a_policy() {
        let page = asset("/").unwrap();
        assert!(page.content_type.starts_with("text/html"));
        let html = std::str::from_utf8(page.body).unwrap();
        assert!(
            html.contains("src=\"/widget.js\" data-page"),
            "the page runs the widget's script in page mode"
        );
        assert!(page.csp.unwrap().contains("frame-ancestors 'none'"));
        let widget = asset("/widget.js").unwrap();
        assert!(widget.content_type.starts_with("text/javascript"));
        assert!(widget.body.len() > 10_000, "the verifier is bundled in");
        assert!(asset("/page.css").is_some() && asset("/page.js").is_none());
        assert!(asset("/../Cargo.toml").is_none() && asset("/nothing").is_none());
        assert!(widget_integrity().starts_with("sha384-"));
    }
}
