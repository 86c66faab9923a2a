//! The verdict for one served name, from its relevant CAA record set (RFC 8659 §3 lookup done
//! by the caller) and our policy: which issuers we accept, our ACME account URIs, our methods.
//!
//! Records are read the way the strictest CA we order from reads them, and where CAs differ
//! the verdict assumes the reading that lets someone else issue. The behaviours encoded, each
//! with its `caa_conformance_*` test:
//!
//! | record (relevant set) | Boulder (`va/caa.go`) / RFC | our verdict |
//! | --- | --- | --- |
//! | `issue ";"` | nobody may issue (RFC 8659 §4.2) | blocked |
//! | `issue "<ca>; accounturi=<ours>"` | only our account | locked |
//! | `issue "<ca>; AccountURI=<ours>"` | tag is case-sensitive: no restriction | unlocked |
//! | `... accounturi=<ours>; accounturi=<other>` | a map: the last one wins | unlocked |
//! | `... accounturi=<other>; accounturi=<ours>` | the last one (ours) wins; another CA may take the first | unlocked |
//! | `issue "<ca>"` | any account of that CA | unlocked |
//! | a value that does not parse, naming our CA | skipped by Boulder, read otherwise by others | unlocked |
//! | `issue "<ca>."` (trailing dot) | no match in Boulder; others may normalise | unlocked |
//! | `issue "<ca>; accounturi=<ours>; validationmethods=http-01"` | our account, only that method | blocked (for us) |
//! | `... ValidationMethods=http-01` (other case) | ignored: any method | locked |
//! | unknown tag with flag 128, or flag 1 | critical (Boulder reads bit 1 as critical too) | blocked |
//! | `issue "<ours>"` beside `issue "<other ca>"` | records are additive | unlocked |

use crate::value::{parse_issue_value, IssueValue};
use crate::CaaRecord;

/// What we use: the CAs we order from (that honor RFC 8657), our accounts, our methods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Issuer domains of the CAs we order from, e.g. `letsencrypt.org`.
    pub issuers: Vec<String>,
    /// Our ACME account URIs (current, and the next one during a rotation).
    pub accounts: Vec<String>,
    /// The ACME validation methods we use (`dns-01`, `tls-alpn-01`, `http-01`).
    pub methods: Vec<String>,
}

/// Who may obtain a certificate for a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Only our accounts, at CAs we accept, may issue.
    Locked,
    /// Someone else could obtain a certificate.
    Unlocked {
        /// Why, naming the record.
        reason: String,
    },
    /// Nobody is authorized to issue to us: our own orders would fail.
    Blocked {
        /// Why, naming the record.
        reason: String,
    },
    /// The records could not be read (timeout, SERVFAIL): fail closed.
    Unknown {
        /// Why.
        reason: String,
    },
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Locked => f.write_str("locked: only our account may issue"),
            Verdict::Unlocked { reason } => write!(f, "UNLOCKED: {reason}"),
            Verdict::Blocked { reason } => write!(f, "BLOCKED: {reason}"),
            Verdict::Unknown { reason } => write!(f, "UNKNOWN: {reason}"),
        }
    }
}

/// Tags Boulder recognises (case-insensitively); any other tag with a critical flag blocks
/// issuance. A stricter list than RFC 8659's registry: a CA that does not know a critical tag
/// refuses, and our own orders would fail there.
const KNOWN_TAGS: &[&str] = &["issue", "issuewild", "iodef", "issuemail"];

/// The flag bits read as "critical": 128 per RFC 8659, and 1, which Boulder also reads as
/// critical because many zones set it by mistake.
const CRITICAL: u8 = 128 | 1;

/// What one issue/issuewild record allows.
enum Grant {
    /// Malformed, `;`, or unsatisfiable: nobody.
    Nobody(String),
    /// Another CA, or any / another account of an accepted CA.
    Others(String),
    /// One of our accounts at an accepted CA, with at least one of our methods.
    Us,
    /// Our account, but none of our methods: nobody we can use.
    UsWithoutOurMethods(String),
}

/// Evaluates the relevant record set of `name` (`*.x` for a wildcard).
pub fn evaluate(name: &str, set: &[CaaRecord], policy: &Policy) -> Verdict {
    if let Some(r) = set.iter().find(|r| {
        r.flags & CRITICAL != 0 && !KNOWN_TAGS.iter().any(|t| r.tag.eq_ignore_ascii_case(t))
    }) {
        return Verdict::Blocked {
            reason: format!(
                "unknown tag {:?} with flags {} (critical) forbids all issuance",
                r.tag, r.flags
            ),
        };
    }
    let wildcard = name.starts_with("*.");
    let of = |tag: &'static str| -> Vec<&CaaRecord> {
        set.iter()
            .filter(|r| r.tag.eq_ignore_ascii_case(tag))
            .collect()
    };
    let wild = of("issuewild");
    let relevant = if wildcard && !wild.is_empty() {
        wild
    } else {
        of("issue")
    };
    if relevant.is_empty() {
        return Verdict::Unlocked {
            reason: format!("no CAA issue record applies to {name}: any CA may issue"),
        };
    }
    let grants: Vec<Grant> = relevant.iter().map(|r| grant(r, policy)).collect();
    if let Some(Grant::Others(reason)) = grants.iter().find(|g| matches!(g, Grant::Others(_))) {
        return Verdict::Unlocked {
            reason: reason.clone(),
        };
    }
    if grants.iter().any(|g| matches!(g, Grant::Us)) {
        return Verdict::Locked;
    }
    let reasons: Vec<&str> = grants
        .iter()
        .filter_map(|g| match g {
            Grant::Nobody(r) | Grant::UsWithoutOurMethods(r) => Some(r.as_str()),
            _ => None,
        })
        .collect();
    Verdict::Blocked {
        reason: format!(
            "no record authorizes our account for {name}: {}",
            reasons.join("; ")
        ),
    }
}

fn grant(record: &CaaRecord, policy: &Policy) -> Grant {
    let shown = String::from_utf8_lossy(&record.value);
    let what = format!("{} {:?}", record.tag, shown);
    // Nobody: no issuer before the first ';' (whatever follows, no CA reads an issuer here).
    let before = record
        .value
        .split(|b| *b == b';')
        .next()
        .unwrap_or_default();
    if before.iter().all(|b| *b == b' ' || *b == b'\t') {
        return Grant::Nobody(format!("{what} authorizes nobody"));
    }
    let value: IssueValue = match parse_issue_value(&record.value) {
        Ok(v) => v,
        Err(e) => {
            return Grant::Others(format!(
                "{what} is malformed ({e}): a CA may read it as authorizing others"
            ))
        }
    };
    let Some(issuer) = &value.issuer else {
        return Grant::Nobody(format!("{what} authorizes nobody"));
    };
    if !policy.issuers.iter().any(|i| i == issuer) {
        return Grant::Others(format!(
            "{what} authorizes CA {issuer}, which we do not use"
        ));
    }
    // Boulder matches the tag exactly; another spelling restricts nothing there.
    if let Some((tag, _)) = value
        .params
        .iter()
        .find(|(t, _)| t != "accounturi" && t.eq_ignore_ascii_case("accounturi"))
    {
        return Grant::Others(format!(
            "{what} spells the tag {tag:?}: Boulder reads only \"accounturi\", so any \
             {issuer} account may issue"
        ));
    }
    let accounts = value.param("accounturi");
    let account = match accounts[..] {
        [] => {
            return Grant::Others(format!(
                "{what} has no accounturi: any {issuer} account may issue"
            ))
        }
        [one] => one,
        _ => {
            return Grant::Others(format!(
                "{what} repeats accounturi: Boulder keeps the last, others may keep another"
            ))
        }
    };
    if !policy.accounts.iter().any(|a| a == account) {
        return Grant::Others(format!("{what} authorizes another account, {account}"));
    }
    let methods = value.param("validationmethods");
    let listed = match methods[..] {
        [] => return Grant::Us, // our account only; every method of it is ours
        [one] => one,
        _ => {
            return Grant::UsWithoutOurMethods(format!(
                "{what} repeats validationmethods; CAs disagree on which one counts"
            ))
        }
    };
    let names: Vec<&str> = listed.split(',').collect();
    if names
        .iter()
        .any(|m| m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    {
        return Grant::UsWithoutOurMethods(format!(
            "{what} has a malformed validationmethods list"
        ));
    }
    if names
        .iter()
        .any(|m| policy.methods.iter().any(|ours| ours == m))
    {
        Grant::Us
    } else {
        Grant::UsWithoutOurMethods(format!("{what} allows only {listed}, none of which we use"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ACCOUNT: &str = "https://acme-v02.api.letsencrypt.org/acme/acct/123";

    fn policy() -> Policy {
        Policy {
            issuers: vec!["letsencrypt.org".into()],
            accounts: vec![ACCOUNT.into()],
            methods: vec!["dns-01".into(), "tls-alpn-01".into()],
        }
    }

    fn issue(tag: &str, value: &str) -> CaaRecord {
        CaaRecord::new(0, tag, value)
    }

    fn ours(extra: &str) -> String {
        format!("letsencrypt.org; accounturi={ACCOUNT}{extra}")
    }

    fn verdict(name: &str, set: &[CaaRecord]) -> Verdict {
        evaluate(name, set, &policy())
    }

    fn is_unlocked(v: &Verdict) -> bool {
        matches!(v, Verdict::Unlocked { .. })
    }

    fn is_blocked(v: &Verdict) -> bool {
        matches!(v, Verdict::Blocked { .. })
    }

    #[test]
    fn locked_only_by_our_account() {
        assert_eq!(
            verdict(
                "a.gw.test",
                &[issue("issue", &ours("; validationmethods=dns-01"))]
            ),
            Verdict::Locked
        );
        assert_eq!(
            verdict("a.gw.test", &[issue("Issue", &ours(""))]),
            Verdict::Locked,
            "tag case-insensitive"
        );
        // a guard record beside ours adds nothing, the lock holds
        assert_eq!(
            verdict(
                "a.gw.test",
                &[issue("issue", ";"), issue("issue", &ours(""))]
            ),
            Verdict::Locked
        );
        // iodef is recognized and ignored
        assert_eq!(
            verdict(
                "a.gw.test",
                &[issue("iodef", "mailto:x@y"), issue("issue", &ours(""))]
            ),
            Verdict::Locked
        );
    }

    #[test]
    fn unlocked_when_someone_else_could_issue() {
        assert!(is_unlocked(&verdict("a.gw.test", &[])), "no CAA at all");
        assert!(
            is_unlocked(&verdict("a.gw.test", &[issue("issue", "letsencrypt.org")])),
            "no accounturi"
        );
        assert!(is_unlocked(&verdict(
            "a.gw.test",
            &[issue(
                "issue",
                "letsencrypt.org; accounturi=https://x/acct/9"
            )]
        )));
        let v = verdict(
            "a.gw.test",
            &[issue("issue", &ours("")), issue("issue", "ca.example.net")],
        );
        assert!(
            is_unlocked(&v),
            "records are additive: another CA beside ours unlocks"
        );
        assert!(
            is_unlocked(&verdict("a.gw.test", &[issue("issuewild", &ours(""))])),
            "issuewild does not apply to a plain name"
        );
    }

    #[test]
    fn wildcards_use_issuewild_when_present() {
        let set = [
            issue("issue", "ca.example.net"),
            issue("issuewild", &ours("")),
        ];
        assert_eq!(verdict("*.gw.test", &set), Verdict::Locked);
        assert!(is_unlocked(&verdict("gw.test", &set)));
        assert!(
            is_unlocked(&verdict("*.gw.test", &[issue("issue", "letsencrypt.org")])),
            "no issuewild: issue applies"
        );
    }

    #[test]
    fn blocked_when_nothing_authorizes_us() {
        assert!(is_blocked(&verdict("a.gw.test", &[issue("issue", ";")])));
        assert!(
            is_blocked(&verdict(
                "a.gw.test",
                &[issue("issue", &ours("; validationmethods=http-01"))]
            )),
            "none of our methods"
        );
        assert!(
            is_blocked(&verdict(
                "a.gw.test",
                &[issue("issue", &ours("; validationmethods=dns_01"))]
            )),
            "bad method label"
        );

        assert_eq!(
            verdict(
                "a.gw.test",
                &[CaaRecord::new(0, "tbs", "x"), issue("issue", &ours(""))]
            ),
            Verdict::Locked,
            "non-critical unknown tag ignored"
        );
    }

    #[test]
    fn reasons_name_the_record() {
        let Verdict::Unlocked { reason } =
            verdict("a.gw.test", &[issue("issue", "ca.example.net")])
        else {
            panic!()
        };
        assert!(
            reason.contains("ca.example.net") && reason.contains("which we do not use"),
            "{reason}"
        );
        let Verdict::Unlocked { reason } = verdict("a.gw.test", &[issue("issue", "%%%%%")]) else {
            panic!()
        };
        assert!(
            reason.contains("malformed") && reason.contains("%%%%%"),
            "{reason}"
        );
    }

    #[test]
    fn rotation_accepts_either_account() {
        let mut p = policy();
        p.accounts
            .push("https://acme-v02.api.letsencrypt.org/acme/acct/456".into());
        let set = [
            issue("issue", &ours("")),
            issue(
                "issue",
                "letsencrypt.org; accounturi=https://acme-v02.api.letsencrypt.org/acme/acct/456",
            ),
        ];
        assert_eq!(evaluate("a.gw.test", &set, &p), Verdict::Locked);
    }

    // One test per row of the table in the module doc (issue 18 §1).

    const OTHER: &str = "https://acme-v02.api.letsencrypt.org/acme/acct/999";

    #[test]
    fn caa_conformance_bare_semicolon_authorizes_nobody() {
        assert!(is_blocked(&verdict("a.gw.test", &[issue("issue", ";")])));
        assert!(is_blocked(&verdict("a.gw.test", &[issue("issue", " ; ")])));
    }

    #[test]
    fn caa_conformance_our_exact_account_locks() {
        assert_eq!(
            verdict("a.gw.test", &[issue("issue", &ours(""))]),
            Verdict::Locked
        );
    }

    #[test]
    fn caa_conformance_tag_spelled_otherwise_restricts_nothing() {
        let v = verdict(
            "a.gw.test",
            &[issue(
                "issue",
                &format!("letsencrypt.org; AccountURI={ACCOUNT}"),
            )],
        );
        assert!(is_unlocked(&v), "{v:?}");
        assert!(v.to_string().contains("AccountURI"), "{v}");
    }

    #[test]
    fn caa_conformance_repeated_accounturi_ours_first_unlocks() {
        let set = [
            issue("issue", &ours("")),
            issue("issue", &format!("{}; accounturi={OTHER}", ours(""))),
        ];
        assert!(
            is_unlocked(&verdict("a.gw.test", &set)),
            "Boulder keeps the last: {OTHER}"
        );
    }

    #[test]
    fn caa_conformance_repeated_accounturi_ours_last_unlocks() {
        let v = format!("letsencrypt.org; accounturi={OTHER}; accounturi={ACCOUNT}");
        assert!(is_unlocked(&verdict("a.gw.test", &[issue("issue", &v)])));
    }

    #[test]
    fn caa_conformance_no_accounturi_unlocks() {
        assert!(is_unlocked(&verdict(
            "a.gw.test",
            &[issue("issue", "letsencrypt.org")]
        )));
    }

    #[test]
    fn caa_conformance_malformed_value_naming_our_ca_unlocks() {
        for raw in [
            format!("{}; foo", ours("")),
            format!("letsencrypt.org; accounturi={ACCOUNT} x"),
            "%%%%%".to_owned(),
        ] {
            let v = verdict("a.gw.test", &[issue("issue", &raw)]);
            assert!(is_unlocked(&v), "{raw}: {v:?}");
        }
    }

    #[test]
    fn caa_conformance_trailing_dot_issuer_unlocks() {
        let raw = format!("letsencrypt.org.; accounturi={ACCOUNT}");
        assert!(is_unlocked(&verdict("a.gw.test", &[issue("issue", &raw)])));
    }

    #[test]
    fn caa_conformance_our_account_without_our_methods_blocks_us() {
        let v = verdict(
            "a.gw.test",
            &[issue("issue", &ours("; validationmethods=http-01"))],
        );
        assert!(is_blocked(&v), "{v:?}");
    }

    #[test]
    fn caa_conformance_methods_tag_spelled_otherwise_is_ignored() {
        let v = verdict(
            "a.gw.test",
            &[issue("issue", &ours("; ValidationMethods=http-01"))],
        );
        assert_eq!(v, Verdict::Locked);
    }

    #[test]
    fn caa_conformance_critical_unknown_tag_blocks_with_flag_128_or_1() {
        for flags in [128, 1, 129] {
            let v = verdict(
                "a.gw.test",
                &[CaaRecord::new(flags, "tbs", "x"), issue("issue", &ours(""))],
            );
            assert!(is_blocked(&v), "flags {flags}: {v:?}");
        }
        let v = verdict(
            "a.gw.test",
            &[
                CaaRecord::new(128, "issuevmc", "x"),
                issue("issue", &ours("")),
            ],
        );
        assert!(is_blocked(&v), "a tag Boulder does not know: {v:?}");
        let v = verdict(
            "a.gw.test",
            &[
                CaaRecord::new(128, "iodef", "mailto:x@y"),
                issue("issue", &ours("")),
            ],
        );
        assert_eq!(v, Verdict::Locked, "a known critical tag is fine");
    }

    #[test]
    fn caa_conformance_records_are_additive() {
        let set = [issue("issue", &ours("")), issue("issue", "ca.example.net")];
        assert!(is_unlocked(&verdict("a.gw.test", &set)));
    }
}
