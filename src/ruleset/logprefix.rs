//! The log prefix the closing rule of a pod's table writes and the agent reads back:
//! `eg:deny:<id> ` or `eg:audit:<id> `, where `<id>` is the first 16 characters of the
//! container ID. The one definition of that format, for both sides.

/// Which closing rule logged a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Logged {
    /// Enforce mode: the packet was dropped.
    Deny,
    /// Audit mode: the packet was let through but would have been dropped.
    Audit,
}

impl Logged {
    /// The verdict as flow records and metrics name it.
    pub fn verdict(self) -> &'static str {
        match self {
            Logged::Deny => "denied",
            Logged::Audit => "audited",
        }
    }
}

const START: &str = "eg:";

/// How many characters of the container ID the prefix carries.
pub const ID_CHARS: usize = 16;

/// The prefix for `container_id`'s closing rule.
pub fn format(logged: Logged, container_id: &str) -> String {
    let word = match logged {
        Logged::Deny => "deny",
        Logged::Audit => "audit",
    };
    let short: String = container_id.chars().take(ID_CHARS).collect();
    format!("{START}{word}:{short} ")
}

/// The kind and container ID (prefix) of a prefix written by [`format`]; `None` for others.
pub fn parse(prefix: &str) -> Option<(Logged, &str)> {
    let rest = prefix.trim_end().strip_prefix(START)?;
    let (word, id) = rest.split_once(':')?;
    let logged = match word {
        "deny" => Logged::Deny,
        "audit" => Logged::Audit,
        _ => return None,
    };
    (!id.is_empty()).then_some((logged, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_others() {
        let cid = "0123456789abcdef0123";
        assert_eq!(format(Logged::Deny, cid), "eg:deny:0123456789abcdef ");
        assert_eq!(format(Logged::Audit, "ab"), "eg:audit:ab ");
        for kind in [Logged::Deny, Logged::Audit] {
            assert_eq!(parse(&format(kind, cid)), Some((kind, "0123456789abcdef")));
        }
        for other in ["eg:deny: ", "eg:allow:abc", "deny:abc", "", "eg:"] {
            assert_eq!(parse(other), None, "{other:?}");
        }
    }
}
