//! The name grammar: `<app-id>[-<port>][s|g].<base-domain>` (README.md, "Names that route").
//!
//! Parsing is strict and never guesses. A label ending in `s`/`g` without a port is read two
//! ways (`demos` = app `demos`, or app `demo` with the `s` flag); the route table resolves
//! it, and it refuses to hold two apps for which both readings would exist.

/// What happens to a connection after routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Terminate TLS at the gateway (no flag).
    Terminate,
    /// Relay the TLS bytes untouched; the app terminates (`s`).
    Passthrough,
    /// Terminate TLS and offer h2 by ALPN (`g`, gRPC).
    TerminateH2,
}

impl Mode {
    fn from_flag(flag: u8) -> Option<Mode> {
        match flag {
            b's' => Some(Mode::Passthrough),
            b'g' => Some(Mode::TerminateH2),
            _ => None,
        }
    }
}

/// One way to read an app label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading<'a> {
    /// The app id.
    pub app: &'a str,
    /// The port the name asks for, if any.
    pub port: Option<u16>,
    /// The flag.
    pub mode: Mode,
}

/// The readings of an app label: one, or two for `<id>s`/`<id>g` without a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readings<'a> {
    /// The label has exactly one meaning.
    One(Reading<'a>),
    /// First: the whole label is the app id; second: its last letter is a flag.
    Two(Reading<'a>, Reading<'a>),
}

/// Why a name does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is one of our base domains itself, or deeper than one label under it.
    #[error("{0}")]
    NotAnAppName(&'static str),
    /// The port part is not 1-65535 in canonical decimal.
    #[error("port is not 1-65535 without leading zeros")]
    BadPort,
    /// The app id part breaks the app id grammar.
    #[error("invalid app id")]
    BadAppId,
}

/// Splits `name` (already lower-case) into its app label if it is under one of `bases`
/// (longest base first). `None`: not under any base (a custom domain).
pub fn app_label<'a>(name: &'a str, bases: &[Box<str>]) -> Option<Result<&'a str, NameError>> {
    for base in bases {
        if name == &**base {
            return Some(Err(NameError::NotAnAppName(
                "the base domain itself names no app",
            )));
        }
        let Some(head) = name.strip_suffix(&**base) else {
            continue;
        };
        let Some(label) = head.strip_suffix('.') else {
            continue;
        };
        if label.contains('.') {
            return Some(Err(NameError::NotAnAppName(
                "more than one label under the base domain",
            )));
        }
        return Some(Ok(label));
    }
    None
}

/// Reads an app label.
pub fn parse_label(label: &str) -> Result<Readings<'_>, NameError> {
    if let Some((head, tail)) = label.rsplit_once('-') {
        let bytes = tail.as_bytes();
        let (digits, mode) = match bytes.last().copied().and_then(Mode::from_flag) {
            Some(mode) => (&tail[..tail.len() - 1], mode),
            None => (tail, Mode::Terminate),
        };
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            let port = parse_port(digits)?;
            check_id(head)?;
            return Ok(Readings::One(Reading {
                app: head,
                port: Some(port),
                mode,
            }));
        }
    }
    let whole = Reading {
        app: label,
        port: None,
        mode: Mode::Terminate,
    };
    let flagged = label
        .as_bytes()
        .last()
        .copied()
        .and_then(Mode::from_flag)
        .map(|mode| Reading {
            app: &label[..label.len() - 1],
            port: None,
            mode,
        })
        .filter(|r| check_id(r.app).is_ok());
    match (check_id(label).is_ok(), flagged) {
        (true, Some(f)) => Ok(Readings::Two(whole, f)),
        (true, None) => Ok(Readings::One(whole)),
        (false, Some(f)) => Ok(Readings::One(f)),
        (false, None) => Err(NameError::BadAppId),
    }
}

fn parse_port(digits: &str) -> Result<u16, NameError> {
    if digits.len() > 5 || digits.starts_with('0') {
        return Err(NameError::BadPort);
    }
    match digits.parse::<u32>() {
        Ok(p @ 1..=65535) => Ok(p as u16),
        _ => Err(NameError::BadPort),
    }
}

fn check_id(id: &str) -> Result<(), NameError> {
    // Same grammar as config validation, minus the allocation of an explanation.
    let ok = !id.is_empty()
        && id.len() <= 63
        && !id.starts_with('-')
        && !id.ends_with('-')
        && !id.contains("--")
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(NameError::BadAppId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Mode::*;

    fn one(app: &str, port: Option<u16>, mode: Mode) -> Result<Readings<'_>, NameError> {
        Ok(Readings::One(Reading { app, port, mode }))
    }

    #[test]
    fn grammar_table() {
        let cases: Vec<(&str, Result<Readings<'_>, NameError>)> = vec![
            ("app", one("app", None, Terminate)),
            ("app-8080", one("app", Some(8080), Terminate)),
            ("app-443s", one("app", Some(443), Passthrough)),
            ("app-50051g", one("app", Some(50051), TerminateH2)),
            ("my-app-22", one("my-app", Some(22), Terminate)),
            ("my-app", one("my-app", None, Terminate)),
            ("app-1x", one("app-1x", None, Terminate)),
            (
                "demos",
                Ok(Readings::Two(
                    Reading {
                        app: "demos",
                        port: None,
                        mode: Terminate,
                    },
                    Reading {
                        app: "demo",
                        port: None,
                        mode: Passthrough,
                    },
                )),
            ),
            ("app-0", Err(NameError::BadPort)),
            ("app-080", Err(NameError::BadPort)),
            ("app-65536", Err(NameError::BadPort)),
            ("app-999999", Err(NameError::BadPort)),
            ("app-65535", one("app", Some(65535), Terminate)),
            ("-22", Err(NameError::BadAppId)),
            ("a--22", Err(NameError::BadAppId)),
            ("app_x", Err(NameError::BadAppId)),
            ("", Err(NameError::BadAppId)),
            ("s", one("s", None, Terminate)),
        ];
        for (label, expected) in cases {
            assert_eq!(parse_label(label), expected, "{label}");
        }
    }

    #[test]
    fn base_domain_split() {
        let bases: Vec<Box<str>> = vec!["apps.gw.test".into(), "gw.test".into()];
        assert_eq!(app_label("x.apps.gw.test", &bases), Some(Ok("x")));
        assert_eq!(app_label("x.gw.test", &bases), Some(Ok("x")));
        assert!(matches!(app_label("gw.test", &bases), Some(Err(_))));
        assert!(matches!(app_label("a.b.gw.test", &bases), Some(Err(_))));
        assert_eq!(app_label("xgw.test", &bases), None);
        assert_eq!(app_label("example.com", &bases), None);
    }
}
