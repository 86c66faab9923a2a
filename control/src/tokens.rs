//! Bearer tokens with a scope each. Only SHA-256 digests are kept in memory; a presented token
//! is hashed and compared with every digest in constant time, so neither its content, its
//! length nor which token matched leaks through timing. Logs name a token by its id.

use gatehouse_config::{AdminConfig, Scope};

/// Who made a request: the token's id and scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's id (`default` for `token_file`), or `anonymous` without auth.
    pub id: String,
    /// What it may do.
    pub scope: Scope,
}

/// The tokens the admin listener accepts.
#[derive(Debug, Clone)]
pub struct Tokens {
    entries: Vec<(String, Scope, [u8; 32])>,
    /// `insecure_no_auth` on a loopback listener: every request is a writer.
    open: bool,
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A token that matches none.
    Unknown,
}

fn digest(token: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token);
    d.as_ref().try_into().expect("32 bytes")
}

impl Tokens {
    /// Reads every token file of `[admin]`; an unreadable or empty file is an error naming it.
    pub fn load(config: &AdminConfig) -> Result<Tokens, crate::ControlError> {
        let mut entries = Vec::new();
        for t in config.all_tokens() {
            let text = std::fs::read_to_string(&t.file).map_err(|e| {
                crate::ControlError::Token(format!("{} ({}): {e}", t.id, t.file.display()))
            })?;
            let token = text.trim();
            if token.is_empty() {
                return Err(crate::ControlError::Token(format!(
                    "{} ({}) is empty",
                    t.id,
                    t.file.display()
                )));
            }
            entries.push((t.id, t.scope, digest(token.as_bytes())));
        }
        Ok(Tokens {
            entries,
            open: config.insecure_no_auth,
        })
    }

    /// Tokens from (id, scope, token) triples (tests).
    pub fn from_pairs(pairs: &[(&str, Scope, &str)]) -> Tokens {
        Tokens {
            entries: pairs
                .iter()
                .map(|(id, scope, t)| (id.to_string(), *scope, digest(t.as_bytes())))
                .collect(),
            open: false,
        }
    }

    /// Who sent `authorization` (the header's value, if any).
    pub fn caller(&self, authorization: Option<&str>) -> Result<Caller, Denied> {
        if self.open {
            return Ok(Caller {
                id: "anonymous".into(),
                scope: Scope::Write,
            });
        }
        let given = authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(Denied::Missing)?;
        let given = digest(given.trim().as_bytes());
        let mut found = None;
        for (id, scope, d) in &self.entries {
            let same = aws_lc_rs::constant_time::verify_slices_are_equal(&given, d).is_ok();
            if same && found.is_none() {
                found = Some(Caller {
                    id: id.clone(),
                    scope: *scope,
                });
            }
        }
        found.ok_or(Denied::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_api_tokens_match_by_digest_with_their_scope() {
        let t = Tokens::from_pairs(
            &[("ops", Scope::Write), ("view", Scope::Read)]
                .map(|(id, s)| (id, s, if id == "ops" { "secret-1" } else { "secret-2" })),
        );
        let ops = t.caller(Some("Bearer secret-1")).unwrap();
        assert_eq!((ops.id.as_str(), ops.scope), ("ops", Scope::Write));
        let view = t.caller(Some("Bearer secret-2")).unwrap();
        assert_eq!(view.scope, Scope::Read);
        assert_eq!(t.caller(Some("Bearer secret-3")), Err(Denied::Unknown));
        assert_eq!(t.caller(Some("Basic secret-1")), Err(Denied::Missing));
        assert_eq!(t.caller(None), Err(Denied::Missing));
        assert!(Scope::Write > Scope::Read);
    }
}
