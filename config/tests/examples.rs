//! Every example config in `config/examples/` is valid. Certificate and token files an example
//! names are created empty in a temp copy (they are deployment secrets, not shipped).

use gatehouse_config::Config;
use std::path::Path;

#[test]
fn examples_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let doc: toml::Table = toml::from_str(&text).unwrap();
        for file in referenced_files(&doc) {
            let p = tmp.path().join(file);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"").unwrap();
        }
        if let Err(e) = Config::from_toml(&text, tmp.path()) {
            panic!("{} is invalid:\n{e}", path.display());
        }
        checked += 1;
    }
    assert!(
        checked >= 2,
        "expected example configs in {}",
        dir.display()
    );
}

fn referenced_files(doc: &toml::Table) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(certs) = doc
        .get("tls")
        .and_then(|t| t.get("certificates"))
        .and_then(|c| c.as_array())
    {
        for c in certs {
            for k in ["cert", "key"] {
                if let Some(s) = c.get(k).and_then(|v| v.as_str()) {
                    out.push(s.to_owned());
                }
            }
        }
    }
    for path in [
        &["admin", "token_file"][..],
        &["acme", "ca_file"],
        &["acme", "eab_hmac_key_file"],
        &["dns", "rfc2136", "key_file"],
        &["dns", "cloudflare", "api_token_file"],
    ] {
        let mut v: Option<&toml::Value> = doc.get(path[0]);
        for k in &path[1..] {
            v = v.and_then(|t| t.get(*k));
        }
        if let Some(s) = v.and_then(|v| v.as_str()) {
            out.push(s.to_owned());
        }
    }
    out
}
