//! The CAA records that lock a name to our account, and the order in which to write them so
//! that no intermediate state lets anyone new issue: guard records (`;`, nobody) go in first,
//! then foreign records go out, ours come in, and the guards leave last.

use crate::policy::Policy;
use crate::CaaRecord;

/// One DNS change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Add this record.
    Add(CaaRecord),
    /// Remove this record.
    Remove(CaaRecord),
}

/// `issue` and `issuewild` for each of our accounts at each accepted issuer:
/// `<issuer>; accounturi=<account>; validationmethods=<methods>`.
pub fn wanted(policy: &Policy) -> Vec<CaaRecord> {
    let methods = policy.methods.join(",");
    let mut out = Vec::new();
    for tag in ["issue", "issuewild"] {
        for issuer in &policy.issuers {
            for account in &policy.accounts {
                let value = format!("{issuer}; accounturi={account}; validationmethods={methods}");
                out.push(CaaRecord::new(0, tag, &value));
            }
        }
    }
    out
}

fn is_issue(r: &CaaRecord) -> bool {
    r.tag.eq_ignore_ascii_case("issue") || r.tag.eq_ignore_ascii_case("issuewild")
}

/// The steps that turn `current` (the records at the name) into `wanted`'s issue/issuewild
/// records. Records with other tags (iodef, ...) are left alone. Empty when already there.
pub fn update(current: &[CaaRecord], wanted: &[CaaRecord]) -> Vec<Step> {
    let has = |set: &[CaaRecord], r: &CaaRecord| set.iter().any(|c| c == r);
    let foreign: Vec<&CaaRecord> = current
        .iter()
        .filter(|r| is_issue(r) && !has(wanted, r))
        .collect();
    let missing: Vec<&CaaRecord> = wanted.iter().filter(|r| !has(current, r)).collect();
    if foreign.is_empty() && missing.is_empty() {
        return Vec::new();
    }
    let guards = [
        CaaRecord::new(0, "issue", ";"),
        CaaRecord::new(0, "issuewild", ";"),
    ];
    let mut steps = Vec::new();
    for g in &guards {
        if !has(current, g) {
            steps.push(Step::Add(g.clone()));
        }
    }
    for r in foreign {
        if !guards.contains(r) {
            steps.push(Step::Remove(r.clone()));
        }
    }
    for r in missing {
        steps.push(Step::Add(r.clone()));
    }
    for g in &guards {
        if !has(wanted, g) {
            steps.push(Step::Remove(g.clone()));
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{evaluate, Verdict};

    fn policy() -> Policy {
        Policy {
            issuers: vec!["letsencrypt.org".into()],
            accounts: vec!["https://acme/acct/1".into()],
            methods: vec!["dns-01".into(), "tls-alpn-01".into()],
        }
    }

    fn apply(set: &mut Vec<CaaRecord>, step: &Step) {
        match step {
            Step::Add(r) => set.push(r.clone()),
            Step::Remove(r) => set.retain(|c| c != r),
        }
    }

    /// The parties a set lets issue for `name`, by the policy's own judgement of each record.
    fn someone_else_can_issue(set: &[CaaRecord], name: &str) -> bool {
        matches!(evaluate(name, set, &policy()), Verdict::Unlocked { .. })
    }

    #[test]
    fn records_carry_account_and_methods() {
        let w = wanted(&policy());
        assert_eq!(w.len(), 2);
        let v =
            "letsencrypt.org; accounturi=https://acme/acct/1; validationmethods=dns-01,tls-alpn-01";
        assert_eq!(w[0], CaaRecord::new(0, "issue", v));
        assert_eq!(w[1], CaaRecord::new(0, "issuewild", v));
        assert_eq!(evaluate("a.gw.test", &w, &policy()), Verdict::Locked);
        assert_eq!(evaluate("*.gw.test", &w, &policy()), Verdict::Locked);
    }

    #[test]
    fn no_intermediate_state_opens_issuance_to_anyone_new() {
        let iodef = CaaRecord::new(0, "iodef", "mailto:ops@gw.test");
        let starts: Vec<Vec<CaaRecord>> = vec![
            vec![],                                             // nothing: open, must close
            vec![iodef.clone()],                                // only iodef
            vec![CaaRecord::new(0, "issue", "ca.example.net")], // another CA
            vec![
                CaaRecord::new(
                    0,
                    "issue",
                    "letsencrypt.org; accounturi=https://acme/acct/9",
                ),
                iodef.clone(),
            ],
            vec![CaaRecord::new(0, "issue", ";")], // frozen
        ];
        let w = wanted(&policy());
        for start in starts {
            let steps = update(&start, &w);
            let mut set = start.clone();
            let was_open = someone_else_can_issue(&start, "a.gw.test");
            for (i, step) in steps.iter().enumerate() {
                apply(&mut set, step);
                let issue_records = set.iter().filter(|r| r.tag == "issue").count();
                assert!(
                    issue_records > 0,
                    "step {i} left no issue record (open to every CA): {start:?}"
                );
                if !was_open {
                    assert!(
                        !someone_else_can_issue(&set, "a.gw.test"),
                        "step {i} opened issuance: {start:?}"
                    );
                }
            }
            assert_eq!(
                evaluate("a.gw.test", &set, &policy()),
                Verdict::Locked,
                "end state from {start:?}"
            );
            assert_eq!(
                evaluate("*.gw.test", &set, &policy()),
                Verdict::Locked,
                "end state from {start:?}"
            );
            assert_eq!(
                set.contains(&iodef),
                start.contains(&iodef),
                "iodef untouched"
            );
            assert!(update(&set, &w).is_empty(), "converged");
        }
    }

    #[test]
    fn first_step_is_the_guard() {
        let steps = update(
            &[CaaRecord::new(0, "issue", "ca.example.net")],
            &wanted(&policy()),
        );
        assert_eq!(steps[0], Step::Add(CaaRecord::new(0, "issue", ";")));
        assert_eq!(
            steps.last(),
            Some(&Step::Remove(CaaRecord::new(0, "issuewild", ";")))
        );
    }
}
