//! The operator's ceiling for enforced namespaces (`enforcedAllow`): what the allow annotation
//! of a pod in an `enforceNamespaces` namespace may add, and the containment test that decides
//! it. Pure; nothing here does I/O.
//!
//! Without `enforcedAllow` such a pod may add only `@name` entries (the operator's `networks`).
//! With it, an annotation entry is within the ceiling when its address range, protocol and port
//! range all lie inside one CIDR entry of the ceiling; an annotation `@name` is within it when
//! the ceiling lists `@name` or every entry of that network lies inside one ceiling CIDR entry.
//! An empty `enforcedAllow` lets such a pod add nothing.

use std::collections::BTreeMap;

use super::grammar::{parse_entry, Entry, EntryRef, GrammarError, Proto};

/// One entry of `enforcedAllow`, with its text as the operator wrote it (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CeilingEntry {
    pub entry: EntryRef,
    pub text: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CeilingError {
    #[error(transparent)]
    Grammar(#[from] GrammarError),
    #[error("unknown network \"@{name}\" (\"networks\" defines {known})")]
    UnknownNetwork { name: String, known: String },
}

/// The names of `networks` as `@a, @b`, or "no networks".
pub(crate) fn known_networks(networks: &BTreeMap<String, Vec<Entry>>) -> String {
    if networks.is_empty() {
        return "no networks".to_string();
    }
    networks
        .keys()
        .map(|k| format!("@{k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl CeilingEntry {
    /// Parses one entry of `enforcedAllow`: `@name` (which `networks` must define) or
    /// `CIDR [PROTO [PORT | PORT-PORT]]` as in the allow annotation.
    pub fn parse(
        text: &str,
        networks: &BTreeMap<String, Vec<Entry>>,
    ) -> Result<CeilingEntry, CeilingError> {
        let entry = parse_entry(text)?;
        if let EntryRef::Network(name) = &entry {
            if !networks.contains_key(name) {
                return Err(CeilingError::UnknownNetwork {
                    name: name.clone(),
                    known: known_networks(networks),
                });
            }
        }
        Ok(CeilingEntry {
            entry,
            text: text.trim().to_string(),
        })
    }
}

/// What the allow annotation of a pod in an enforced namespace may add.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Ceiling {
    /// `enforcedAllow` is not set: only `@name` entries of `networks`.
    #[default]
    Networks,
    /// `enforcedAllow` as given; empty means nothing may be added.
    List(Vec<CeilingEntry>),
}

/// Whether every destination `inner` allows is allowed by `outer`: the address range, the
/// protocol and the port range of `inner` all lie inside those of `outer`.
pub fn contains(outer: &Entry, inner: &Entry) -> bool {
    if outer.cidr.is_v4() != inner.cidr.is_v4() {
        return false;
    }
    let (olo, ohi) = outer.cidr.range();
    let (ilo, ihi) = inner.cidr.range();
    if ilo < olo || ihi > ohi {
        return false;
    }
    if outer.proto != Proto::Any && outer.proto != inner.proto {
        return false;
    }
    match (outer.ports, inner.ports) {
        // All ports (or a protocol without ports).
        (None, _) => true,
        (Some((olo, ohi)), Some((ilo, ihi))) => olo <= ilo && ihi <= ohi,
        // All ports of `inner`, port 0 included, are more than a range.
        (Some(_), None) => false,
    }
}

impl Ceiling {
    /// Whether annotation entry `r` is within the ceiling. `networks` gives the entries of a
    /// `@name`; a name it does not define is outside the ceiling unless listed.
    pub fn permits(&self, r: &EntryRef, networks: &BTreeMap<String, Vec<Entry>>) -> bool {
        match (self, r) {
            (Ceiling::Networks, EntryRef::Network(name)) => networks.contains_key(name),
            (Ceiling::Networks, EntryRef::Literal(_)) => false,
            (Ceiling::List(_), EntryRef::Literal(e)) => self.covers(e),
            (Ceiling::List(list), EntryRef::Network(name)) => {
                list.iter()
                    .any(|c| matches!(&c.entry, EntryRef::Network(n) if n == name))
                    || networks
                        .get(name)
                        .is_some_and(|entries| entries.iter().all(|e| self.covers(e)))
            }
        }
    }

    /// Whether one CIDR entry of the ceiling contains `e`.
    fn covers(&self, e: &Entry) -> bool {
        match self {
            Ceiling::Networks => false,
            Ceiling::List(list) => list
                .iter()
                .any(|c| matches!(&c.entry, EntryRef::Literal(outer) if contains(outer, e))),
        }
    }

    /// The ceiling in words, for error messages.
    pub fn describe(&self, networks: &BTreeMap<String, Vec<Entry>>) -> String {
        match self {
            Ceiling::Networks if networks.is_empty() => {
                "enforcedAllow is not set, so only @names from networks, which defines none"
                    .to_string()
            }
            Ceiling::Networks => format!(
                "enforcedAllow is not set, so only @names from networks: {}",
                known_networks(networks)
            ),
            Ceiling::List(list) if list.is_empty() => {
                "enforcedAllow is empty, so nothing may be added".to_string()
            }
            Ceiling::List(list) => format!(
                "enforcedAllow: {}",
                list.iter()
                    .map(|c| c.text.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::grammar::parse_network_entry;
    use super::*;

    fn networks() -> BTreeMap<String, Vec<Entry>> {
        let mut n = BTreeMap::new();
        n.insert(
            "orchestrator".to_string(),
            vec![
                parse_network_entry("10.0.5.0/24 tcp 8443").unwrap(),
                parse_network_entry("fd00:5::/64 tcp 8443").unwrap(),
            ],
        );
        n.insert(
            "dns".to_string(),
            vec![
                parse_network_entry("10.96.0.10 udp 53").unwrap(),
                parse_network_entry("10.96.0.10 tcp 53").unwrap(),
            ],
        );
        n.insert("empty".to_string(), vec![]);
        n
    }

    fn list(items: &[&str]) -> Ceiling {
        let n = networks();
        Ceiling::List(
            items
                .iter()
                .map(|s| CeilingEntry::parse(s, &n).unwrap())
                .collect(),
        )
    }

    fn e(s: &str) -> EntryRef {
        parse_entry(s).unwrap()
    }

    fn lit(s: &str) -> Entry {
        parse_network_entry(s).unwrap()
    }

    fn permits(c: &Ceiling, s: &str) -> bool {
        c.permits(&e(s), &networks())
    }

    fn within(c: &Ceiling, entries: &[&str]) {
        for entry in entries {
            assert!(permits(c, entry), "{entry} should be within");
        }
    }

    fn beyond(c: &Ceiling, entries: &[&str]) {
        for entry in entries {
            assert!(!permits(c, entry), "{entry} should be beyond");
        }
    }

    #[test]
    fn cidr_containment() {
        let c = list(&["10.0.0.0/8"]);
        within(
            &c,
            &[
                "10.0.0.0/8",
                "10.1.2.0/24",
                "10.255.255.255",
                "10.0.0.1 udp 53",
            ],
        );
        beyond(
            &c,
            &[
                "0.0.0.0/0",
                "10.0.0.0/7",
                "11.0.0.1",
                "9.255.255.255",
                "169.254.169.254",
                "::/0",
                "::ffff:10.0.0.1",
            ],
        );
        assert!(permits(&list(&["0.0.0.0/0"]), "0.0.0.0/0"));
        assert!(!permits(&list(&["0.0.0.0/0"]), "::/0"));
    }

    #[test]
    fn proto_any_contains_every_protocol_but_tcp_contains_only_tcp() {
        let any = list(&["10.0.5.0/24 any"]);
        within(
            &any,
            &[
                "10.0.5.1",
                "10.0.5.1 tcp 443",
                "10.0.5.1 udp",
                "10.0.5.1 icmp",
                "10.0.5.0/24 sctp 1-65535",
            ],
        );
        let tcp = list(&["10.0.5.0/24 tcp"]);
        assert!(permits(&tcp, "10.0.5.1 tcp"));
        assert!(permits(&tcp, "10.0.5.1 tcp 1-65535"));
        beyond(
            &tcp,
            &[
                "10.0.5.1",
                "10.0.5.1 any",
                "10.0.5.1 udp 443",
                "10.0.5.1 icmp",
            ],
        );
    }

    #[test]
    fn port_ranges() {
        let c = list(&["10.0.5.0/24 tcp 8000-8999"]);
        within(
            &c,
            &[
                "10.0.5.1 tcp 8000",
                "10.0.5.1 tcp 8999",
                "10.0.5.0/25 tcp 8443-8444",
            ],
        );
        beyond(
            &c,
            &[
                "10.0.5.1 tcp 7999",
                "10.0.5.1 tcp 9000",
                "10.0.5.1 tcp 7999-8000",
                "10.0.5.1 tcp 8999-9000",
                // No port means every port, port 0 included.
                "10.0.5.1 tcp",
                "10.0.5.1 udp 8443",
            ],
        );
        // 1-65535 is not "every port": a ceiling of all ports needs no port.
        assert!(!permits(
            &list(&["10.0.5.0/24 tcp 1-65535"]),
            "10.0.5.1 tcp"
        ));
    }

    #[test]
    fn ipv6() {
        let c = list(&["fd00:5::/64 tcp 443-445", "2001:db8::/32"]);
        within(
            &c,
            &[
                "fd00:5::1 tcp 443",
                "fd00:5::/80 tcp 444-445",
                "2001:db8:1::/48 icmpv6",
                "2001:db8::/32",
            ],
        );
        beyond(
            &c,
            &[
                "fd00:5::1 tcp 446",
                "fd00:5::/63 tcp 443",
                "fd00:5::1",
                "2001:db8::/31",
                "::/0",
                "10.0.5.1 tcp 443",
            ],
        );
    }

    #[test]
    fn listed_name_is_within() {
        let c = list(&["@orchestrator", "@dns"]);
        assert!(permits(&c, "@orchestrator"));
        assert!(permits(&c, "@dns"));
        // A listed name does not let a literal through, even one inside its entries.
        assert!(!permits(&c, "10.96.0.10 udp 53"));
        assert!(!permits(&c, "0.0.0.0/0"));
    }

    #[test]
    fn unlisted_name_is_within_when_every_entry_is_contained() {
        let c = list(&["10.0.0.0/8 tcp", "fd00::/8 tcp 8443"]);
        assert!(permits(&c, "@orchestrator"));
        // dns has a udp entry no ceiling entry contains.
        assert!(!permits(&c, "@dns"));
        assert!(permits(&list(&["10.96.0.10"]), "@dns"));
        // One entry outside is enough to refuse the name.
        assert!(!permits(&list(&["10.0.5.0/24 tcp 8443"]), "@orchestrator"));
        // An empty network adds nothing, so it is within any ceiling; an unknown name is not.
        assert!(permits(&list(&[]), "@empty"));
        assert!(!permits(&list(&["0.0.0.0/0", "::/0"]), "@nowhere"));
    }

    #[test]
    fn default_without_the_field_allows_only_names() {
        let c = Ceiling::Networks;
        assert!(permits(&c, "@orchestrator"));
        assert!(permits(&c, "@dns"));
        assert!(!permits(&c, "@nowhere"));
        for outside in ["0.0.0.0/0", "::/0", "169.254.169.254", "10.96.0.10 udp 53"] {
            assert!(!permits(&c, outside), "{outside}");
        }
        assert_eq!(
            c.describe(&networks()),
            "enforcedAllow is not set, so only @names from networks: @dns, @empty, @orchestrator"
        );
        assert!(c.describe(&BTreeMap::new()).contains("defines none"));
    }

    #[test]
    fn empty_list_allows_nothing() {
        let c = list(&[]);
        for outside in ["@orchestrator", "@dns", "10.0.0.1", "::/0"] {
            assert!(!permits(&c, outside), "{outside}");
        }
        assert_eq!(
            c.describe(&networks()),
            "enforcedAllow is empty, so nothing may be added"
        );
    }

    #[test]
    fn describe_lists_entries_as_written() {
        let c = list(&["@orchestrator", " 10.96.0.0/12  udp 53 "]);
        assert_eq!(
            c.describe(&networks()),
            "enforcedAllow: @orchestrator, 10.96.0.0/12  udp 53"
        );
    }

    #[test]
    fn bad_ceiling_entries_name_the_value() {
        let n = networks();
        let err = CeilingEntry::parse("@nowhere", &n).unwrap_err().to_string();
        assert!(
            err.contains("@nowhere") && err.contains("@orchestrator"),
            "{err}"
        );
        let err = CeilingEntry::parse("10.0.0.0/33", &n)
            .unwrap_err()
            .to_string();
        assert!(err.contains("10.0.0.0/33"), "{err}");
        let err = CeilingEntry::parse("@x", &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no networks"), "{err}");
    }

    #[test]
    fn containment_is_the_reference_semantics_on_samples() {
        // Whatever `contains` says, a sample packet inner allows must be allowed by outer.
        let outers = [
            "10.0.0.0/8 tcp 80-90",
            "10.0.0.0/8",
            "0.0.0.0/0 udp",
            "10.0.5.0/24 icmp",
        ];
        let inners = [
            "10.0.0.1 tcp 80",
            "10.0.0.1 tcp 85-95",
            "10.0.0.0/9",
            "10.0.5.7 icmp",
            "10.0.5.7 udp 53",
            "10.0.0.1 tcp",
        ];
        let dsts = ["10.0.0.1", "10.0.5.7", "10.127.0.1", "11.0.0.1"];
        for o in outers {
            for i in inners {
                let (o, i) = (lit(o), lit(i));
                if !contains(&o, &i) {
                    continue;
                }
                for d in dsts {
                    for proto in [1u8, 6, 17, 132] {
                        for port in [None, Some(0), Some(53), Some(80), Some(90), Some(95)] {
                            let d = d.parse().unwrap();
                            if i.allows(d, proto, port) {
                                assert!(
                                    o.allows(d, proto, port),
                                    "{o} vs {i}: {d} {proto} {port:?}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
