//! The `issue` / `issuewild` value grammar (RFC 8659 §4.2, RFC 8657 §3-4):
//!
//! ```text
//! issue-value = *WSP [issuer-domain-name *WSP] [";" *WSP [parameters *WSP]]
//! issuer-domain-name = label *("." label)      label = (ALPHA / DIGIT) *( *("-") (ALPHA / DIGIT))
//! parameters = (parameter *WSP ";" *WSP parameters) / parameter
//! parameter = tag *WSP "=" *WSP value           value = *(%x21-3A / %x3C-7E)
//! ```

/// A parsed `issue`/`issuewild` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueValue {
    /// The CA's issuer domain; `None` for `;` (nobody may issue).
    pub issuer: Option<String>,
    /// Parameters in order; tags as written.
    pub params: Vec<(String, String)>,
}

impl IssueValue {
    /// Values of every parameter whose tag is exactly `tag` (as Boulder matches them: a tag
    /// spelled in another case is another tag).
    pub fn param(&self, tag: &str) -> Vec<&str> {
        self.params
            .iter()
            .filter(|(t, _)| t == tag)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

fn is_wsp(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// Parses an issue value; `Err` names the first violation (the record then authorizes nobody).
pub fn parse_issue_value(raw: &[u8]) -> Result<IssueValue, &'static str> {
    let text = std::str::from_utf8(raw).map_err(|_| "not ASCII")?;
    if !text.is_ascii() {
        return Err("not ASCII");
    }
    let (name, rest) = match text.split_once(';') {
        Some((n, r)) => (n, Some(r)),
        None => (text, None),
    };
    let name = name.trim_matches(is_wsp);
    let issuer = if name.is_empty() {
        None
    } else {
        check_issuer(name)?;
        Some(name.to_owned())
    };
    let mut params = Vec::new();
    if let Some(rest) = rest {
        for part in rest.split(';') {
            let part = part.trim_matches(is_wsp);
            if part.is_empty() {
                continue; // "ca.example; " or a doubled ";" carries no parameter
            }
            let (tag, value) = part.split_once('=').ok_or("parameter without '='")?;
            let (tag, value) = (tag.trim_matches(is_wsp), value.trim_matches(is_wsp));
            if !is_label(tag) {
                return Err("parameter tag is not letters, digits and inner '-'");
            }
            if !value
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b';')
            {
                return Err("parameter value has a space or control character");
            }
            params.push((tag.to_owned(), value.to_owned()));
        }
    }
    Ok(IssueValue { issuer, params })
}

fn check_issuer(name: &str) -> Result<(), &'static str> {
    if name.ends_with('.') {
        return Err("issuer domain ends with '.'");
    }
    if name.split('.').all(is_label) {
        Ok(())
    } else {
        Err("issuer domain is not dot-separated letters, digits and inner '-'")
    }
}

/// `(ALPHA / DIGIT) *( *("-") (ALPHA / DIGIT))`
fn is_label(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &str) -> IssueValue {
        parse_issue_value(raw.as_bytes()).unwrap_or_else(|e| panic!("{raw:?}: {e}"))
    }

    #[test]
    fn accepted_values() {
        let v = ok("letsencrypt.org");
        assert_eq!(v.issuer.as_deref(), Some("letsencrypt.org"));
        assert!(v.params.is_empty());
        assert_eq!(ok(";").issuer, None, "RFC 8659: ';' authorizes nobody");
        assert_eq!(ok("").issuer, None);
        // whitespace is legal around the name, the ';' and the '=' (hickory 0.26 rejects these)
        let v = ok(" letsencrypt.org ; accounturi = https://acme/acct/1 ;validationmethods=dns-01,tls-alpn-01 ");
        assert_eq!(v.issuer.as_deref(), Some("letsencrypt.org"));
        assert_eq!(v.param("accounturi"), vec!["https://acme/acct/1"]);
        assert_eq!(v.param("validationmethods"), vec!["dns-01,tls-alpn-01"]);
        assert!(
            v.param("ValidationMethods").is_empty(),
            "tags match exactly"
        );
        assert_eq!(ok("ca.example.net; ").params, vec![]);
        assert_eq!(ok("ca.example.net;\tpolicy=ev").param("policy"), vec!["ev"]);
        assert_eq!(ok("ca.example.net; a=").param("a"), vec![""]);
    }

    #[test]
    fn malformed_values() {
        for (raw, why) in [
            (
                "%%%%%",
                "issuer domain is not dot-separated letters, digits and inner '-'",
            ),
            ("letsencrypt.org.", "issuer domain ends with '.'"),
            (
                "-ca.example",
                "issuer domain is not dot-separated letters, digits and inner '-'",
            ),
            (
                "ca..example",
                "issuer domain is not dot-separated letters, digits and inner '-'",
            ),
            ("letsencrypt.org; foo", "parameter without '='"),
            (
                "letsencrypt.org; a b=c",
                "parameter tag is not letters, digits and inner '-'",
            ),
            (
                "letsencrypt.org; a=b c",
                "parameter value has a space or control character",
            ),
            (
                "letsencrypt.org; a=\u{7f}",
                "parameter value has a space or control character",
            ),
            ("lets\u{e9}ncrypt.org", "not ASCII"),
        ] {
            assert_eq!(parse_issue_value(raw.as_bytes()), Err(why), "{raw:?}");
        }
        assert_eq!(parse_issue_value(&[0xff]), Err("not ASCII"));
    }
}
