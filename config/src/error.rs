use std::fmt;
use std::path::PathBuf;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The document is not TOML.
    #[error("not valid TOML{}: {message}", span.as_ref().map(|s| format!(" at bytes {}..{}", s.start, s.end)).unwrap_or_default())]
    Syntax {
        /// The parser's message.
        message: String,
        /// Where in the document.
        span: Option<std::ops::Range<usize>>,
    },
    /// The document is TOML but breaks the schema; every problem found is listed.
    #[error("{} problem(s):\n{}", .0.len(), Problems(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// Every problem found, or the one parse/read error.
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid(p) => p.iter().map(|p| p.to_string()).collect(),
            other => vec![other.to_string()],
        }
    }
}

/// One problem: the key path it is about and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key path, e.g. `apps[1].instances[0].address`.
    pub path: String,
    /// The reason.
    pub reason: String,
}

impl Problem {
    pub(crate) fn new(path: impl Into<String>, reason: impl Into<String>) -> Problem {
        Problem {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

struct Problems<'a>(&'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  {p}")?;
        }
        Ok(())
    }
}
