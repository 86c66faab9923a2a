//! The process's descriptor limit (`RLIMIT_NOFILE`): raised to the hard limit at start, and
//! read by the servers that size their connection caps from it.

use rustix::process::{getrlimit, setrlimit, Resource};

/// The soft limit now (`None`: unlimited).
pub fn current() -> Option<u64> {
    getrlimit(Resource::Nofile).current
}

/// Raises the soft limit to the hard one (a gateway holds two descriptors per relayed
/// connection; distributions default the soft limit to 1024). Returns `(before, after)`,
/// `u64::MAX` standing for unlimited.
pub fn raise_to_hard() -> std::io::Result<(u64, u64)> {
    let mut r = getrlimit(Resource::Nofile);
    let before = r.current.unwrap_or(u64::MAX);
    if r.current != r.maximum {
        r.current = r.maximum;
        setrlimit(Resource::Nofile, r)?;
    }
    Ok((before, r.current.unwrap_or(u64::MAX)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn raising_reaches_the_hard_limit() {
        let (before, after) = super::raise_to_hard().unwrap();
        assert!(after >= before);
        assert_eq!(super::current().unwrap_or(u64::MAX), after);
    }
}
