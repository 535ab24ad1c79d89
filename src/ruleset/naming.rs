//! Table names and comments: the hashed name of an attachment, the names releases before it
//! used, and the `key=value` words a table's comment carries for DEL, CHECK and GC.

use super::{Attach, Table, Target};
use crate::policy::Policy;

/// Every table egress-guard creates starts with this; nothing else is ever touched.
pub const TABLE_PREFIX: &str = "egress_guard_";

/// Longest container ID a table's comment carries in full (the kernel keeps at most 256 bytes
/// of comment; CNI allows IDs of 200 characters).
const COMMENT_ID_MAX: usize = 100;

/// The table of one attachment: `egress_guard_` and 16 hex digits of the SHA-256 of the
/// container ID and interface name (`eth0` when none is given), 29 characters whatever the
/// ID's length. The kernel measures every table's name on every message of every nf_tables
/// batch while it looks a table up, so on a node full of guarded pods short names keep ADD
/// fast (docs/benchmarks.md, section 1b). The container ID and interface are in the table's
/// comment (`id=`, `if=`); another interface of the same container (a Multus secondary
/// network chained with egress-guard too) gets its own table, so neither replaces the other.
pub fn table_name(container_id: &str, ifname: &str) -> String {
    use sha2::{Digest, Sha256};
    let ifname = if ifname.is_empty() { "eth0" } else { ifname };
    let digest = Sha256::new()
        .chain_update(container_id.as_bytes())
        .chain_update([0u8])
        .chain_update(ifname.as_bytes())
        .finalize();
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    format!("{TABLE_PREFIX}{:016x}", u64::from_be_bytes(head))
}

/// The name releases before the hashed names gave the same attachment: `egress_guard_<id>`,
/// or `egress_guard_<id>_<ifname>` for an interface other than `eth0`. DEL, CHECK and GC
/// still find tables of pods added by such a release, so that an upgrade of the node's
/// plugin neither orphans nor unguards running pods.
pub fn legacy_table_name(container_id: &str, ifname: &str) -> String {
    if ifname == "eth0" || ifname.is_empty() {
        format!("{TABLE_PREFIX}{container_id}")
    } else {
        format!("{TABLE_PREFIX}{container_id}_{ifname}")
    }
}

/// The attachment in a table name of a release that named tables after the container ID
/// (`<id>` or `<id>_<ifname>`), the inverse of `legacy_table_name`; `None` for a hashed name
/// (16 hex digits), which names no container, and for names not ours.
pub fn legacy_container(table: &str) -> Option<&str> {
    let rest = table.strip_prefix(TABLE_PREFIX)?;
    let hashed = rest.len() == 16 && rest.bytes().all(|b| b.is_ascii_hexdigit());
    (!hashed && !rest.is_empty()).then_some(rest)
}

/// The container ID a table's comment names (`id=`); `None` for tables of older releases and
/// for IDs too long to keep in a comment.
pub fn comment_container(comment: &str) -> Option<&str> {
    comment
        .split_whitespace()
        .find_map(|w| w.strip_prefix("id="))
}

/// `table` as a release before the hashed names installed it under `legacy_name` (from
/// [`legacy_table_name`]): that name, and a comment without `id=` and `if=`. A table whose name
/// is already `legacy_name` is unchanged.
pub fn in_legacy_form(mut table: Table, legacy_name: &str) -> Table {
    if table.name != legacy_name {
        table.name = legacy_name.to_string();
        table.comment = table
            .comment
            .split_whitespace()
            .filter(|w| !w.starts_with("id=") && !w.starts_with("if="))
            .collect::<Vec<_>>()
            .join(" ");
    }
    table
}

/// The devices a host table's comment (written by `comment`) names as its chains' device, in
/// order; ours name exactly one.
pub fn comment_devices(comment: &str) -> impl Iterator<Item = &str> {
    comment
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("dev="))
}

/// The comment of a table: `egress-guard`, the device (host tables) or placement, the mode and
/// the policy digest, then `id=` and `if=` when the container ID fits.
pub(super) fn comment(policy: &Policy, target: &Target) -> String {
    let mut c = match &target.attach {
        Attach::Host { device: dev, .. } => format!(
            "egress-guard dev={dev} mode={} policy={}",
            policy.mode,
            policy.digest()
        ),
        _ => format!(
            "egress-guard placement={} mode={} policy={}",
            target.placement().as_str(),
            policy.mode,
            policy.digest()
        ),
    };
    if target.container_id.len() <= COMMENT_ID_MAX {
        let ifname = match target.ifname.as_str() {
            "" => "eth0",
            other => other,
        };
        c.push_str(&format!(" id={} if={ifname}", target.container_id));
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruleset::compile;
    use crate::ruleset::compile::fixtures::{enforce, target};

    #[test]
    fn table_names_are_a_fixed_length_hash_of_the_attachment() {
        // sha256("c0ffee0001\0eth0"), first 8 bytes: stable across releases, which is what
        // DEL, CHECK and GC of a pod added by an earlier run rely on.
        assert_eq!(
            table_name("c0ffee0001", "eth0"),
            "egress_guard_1026a4e8be8d6b89"
        );
        assert_eq!(
            table_name("c0ffee0001", ""),
            table_name("c0ffee0001", "eth0")
        );
        assert_eq!(
            table_name("c0ffee0001", "net1"),
            "egress_guard_c654734bf38efc9f"
        );
        let long = "f".repeat(200);
        assert_eq!(table_name(&long, "eth0").len(), 29);
        assert_ne!(table_name("a", "eth0"), table_name("b", "eth0"));
        // The separator keeps (id, ifname) pairs apart that concatenate alike.
        assert_ne!(table_name("ab", "c"), table_name("a", "bc"));
    }

    #[test]
    fn legacy_names_are_the_container_id() {
        assert_eq!(legacy_table_name("c1", "eth0"), "egress_guard_c1");
        assert_eq!(legacy_table_name("c1", ""), "egress_guard_c1");
        assert_eq!(legacy_table_name("c1", "net1"), "egress_guard_c1_net1");
        assert_eq!(legacy_container("egress_guard_abc"), Some("abc"));
        assert_eq!(legacy_container("egress_guard_abc_net1"), Some("abc_net1"));
        assert_eq!(legacy_container(&table_name("abc", "eth0")), None);
        assert_eq!(legacy_container("egress_guard_"), None);
        assert_eq!(legacy_container("other"), None);
    }

    #[test]
    fn the_comment_names_the_container_and_interface_when_they_fit() {
        let t = compile(&enforce(), &target("c1", "")).expect("table");
        assert_eq!(comment_container(&t.comment), Some("c1"));
        assert!(t.comment.ends_with(" id=c1 if=eth0"), "{}", t.comment);
        assert_eq!(comment_devices(&t.comment).collect::<Vec<_>>(), ["veth1"]);
        let long = "a".repeat(COMMENT_ID_MAX + 1);
        let t = compile(&enforce(), &target(&long, "eth0")).expect("table");
        assert_eq!(comment_container(&t.comment), None);
        assert!(t.comment.len() < 256);
    }

    #[test]
    fn in_legacy_form_gives_the_legacy_form_and_leaves_current_tables_alone() {
        let t = compile(&enforce(), &target("c1", "eth0")).expect("table");
        let same = in_legacy_form(t.clone(), &t.name);
        assert_eq!(same.comment, t.comment);
        let old = in_legacy_form(t.clone(), "egress_guard_c1");
        assert_eq!(old.name, "egress_guard_c1");
        assert_eq!(comment_container(&old.comment), None);
        assert!(!old.comment.contains("if="), "{}", old.comment);
        assert!(old
            .comment
            .starts_with("egress-guard dev=veth1 mode=enforce policy="));
    }
}
