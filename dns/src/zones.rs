//! Which configured zone holds a name.

/// The longest of `zones` that is `name` or a parent of it (case-insensitive, trailing dots
/// ignored).
pub fn zone_of<'a>(name: &str, zones: &'a [String]) -> Option<&'a str> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    zones
        .iter()
        .map(|z| z.as_str())
        .filter(|z| {
            let z = z.trim_end_matches('.').to_ascii_lowercase();
            name == z || name.ends_with(&format!(".{z}"))
        })
        .max_by_key(|z| z.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_parent_zone_wins_and_lookalikes_do_not_match() {
        let zones = vec!["example.com".to_owned(), "gw.example.com".to_owned()];
        assert_eq!(zone_of("a.gw.example.com", &zones), Some("gw.example.com"));
        assert_eq!(zone_of("GW.example.com.", &zones), Some("gw.example.com"));
        assert_eq!(zone_of("x.example.com", &zones), Some("example.com"));
        assert_eq!(zone_of("badexample.com", &zones), None);
        assert_eq!(zone_of("example.org", &zones), None);
    }
}
