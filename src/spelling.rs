//! The known name closest to a misspelt one, for error messages that say what was meant.

/// Levenshtein distance of two short strings, by characters.
pub fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let swap = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + swap).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The candidate closest to `name`, if one is close: at most two edits, or a quarter of the
/// candidate's length for long names. A candidate differing only in letter case always counts.
pub fn closest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|known| {
            let d = if known.eq_ignore_ascii_case(name) {
                0
            } else {
                distance(name, known)
            };
            (d, known)
        })
        .filter(|(d, known)| *d <= 2.max(known.len() / 4))
        .min()
        .map(|(_, known)| known)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_known_names() {
        let known = ["defaultMode", "enforceNamespaces", "logLevel", "logFile"];
        let cases: &[(&str, Option<&str>)] = &[
            ("defaultmode", Some("defaultMode")),
            ("enforceNamespace", Some("enforceNamespaces")),
            ("loglevel", Some("logLevel")),
            ("logFil", Some("logFile")),
            ("placement", None),
            ("x", None),
        ];
        for (name, want) in cases {
            assert_eq!(closest(name, known), *want, "{name}");
        }
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("", "abc"), 3);
    }
}
