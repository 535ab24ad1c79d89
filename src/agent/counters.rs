//! Reads the packet and byte counters of a pod table's closing rule (a lone `counter`, the last
//! rule of each chain before the chain's policy; `counter limit ... log ...` in tables of
//! releases before the log of distinct flows) through the `Kernel`. Read-only: never changes a
//! table.

use crate::kernel::{Kernel, KernelError, TableRef, Where};
use crate::netlink::nft::{CountedRule, Expr};
use crate::ruleset::Family;

pub use crate::netlink::nft::Counts;

/// Sums the counters of the closing rule of each chain. `Ok(None)` when the table does not
/// exist or holds no rule.
pub fn read<K: Kernel + ?Sized>(
    kernel: &mut K,
    at: Where<'_>,
    family: Family,
    table: &str,
) -> Result<Option<Counts>, KernelError> {
    let Some(rules) = kernel.counted_rules(TableRef::new(at, family, table))? else {
        return Ok(None);
    };
    if rules.is_empty() {
        return Ok(None);
    }
    let mut total = Counts::default();
    for c in rules.iter().filter_map(closing_rule_counts) {
        total.packets += c.packets;
        total.bytes += c.bytes;
    }
    Ok(Some(total))
}

/// The counts of a closing rule: a lone counter; a counter, a limit and a log (earlier
/// releases); or, in tables whose chains log in a rule of their own, exactly a counter and an
/// immediate verdict.
fn closing_rule_counts(rule: &CountedRule) -> Option<Counts> {
    match rule.exprs.as_slice() {
        [Expr::Counter]
        | [Expr::Counter, Expr::Limit { .. }, Expr::Log { .. }]
        | [Expr::Counter, Expr::Immediate { .. }] => rule.counter,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::RecordingKernel;
    use crate::kernel::Transaction;
    use crate::ruleset::Stmt;

    fn rule(exprs: Vec<Expr>, counter: Option<Counts>) -> CountedRule {
        CountedRule {
            chain: "c".into(),
            exprs,
            counter,
        }
    }

    const SEEN: Counts = Counts {
        packets: 3,
        bytes: 1500,
    };

    fn limit() -> Expr {
        Expr::Limit {
            rate: 1,
            unit: 1,
            burst: 5,
            kind: 0,
        }
    }

    fn log() -> Expr {
        Expr::Log {
            group: 100,
            prefix: "eg:deny:x ".into(),
        }
    }

    #[test]
    fn only_the_closing_rules_count() {
        let accept = Expr::Immediate { verdict: 1 };
        assert_eq!(
            closing_rule_counts(&rule(vec![Expr::Counter, accept.clone()], Some(SEEN))),
            Some(SEEN)
        );
        assert_eq!(
            closing_rule_counts(&rule(vec![Expr::Counter], Some(SEEN))),
            Some(SEEN)
        );
        assert_eq!(
            closing_rule_counts(&rule(vec![Expr::Counter, limit(), log()], Some(SEEN))),
            Some(SEEN)
        );
        assert_eq!(closing_rule_counts(&rule(vec![limit(), log()], None)), None);
        let lookup = Expr::Lookup {
            set: "allow".into(),
            sreg: 8,
            invert: false,
        };
        assert_eq!(
            closing_rule_counts(&rule(vec![Expr::Counter, lookup, accept], Some(SEEN))),
            None
        );
    }

    #[test]
    fn counters_are_read_through_the_kernel() {
        let s = crate::guard::record::tests::sample("enforce", &["10.0.5.0/24 tcp 8443"]);
        let table = s.expected_table().expect("sample table");
        let mut k = RecordingKernel::new();
        let (at, family) = (s.place(), s.family());
        assert_eq!(read(&mut k, at, family, &table.name).expect("read"), None);

        k.install(Transaction::create(at, &table)).expect("install");
        assert_eq!(
            read(&mut k, at, family, &table.name).expect("read"),
            Some(Counts::default())
        );
        // Each chain's counters read differently; only chains with a closing rule add up.
        let mut expected = Counts::default();
        for (i, chain) in table.chains.iter().enumerate() {
            let n = i as u64 + 1;
            let counts = Counts {
                packets: n,
                bytes: 100 * n,
            };
            k.set_counters(at, family, &table.name, &chain.name, counts);
            let closes = chain
                .rules
                .iter()
                .any(|r| matches!(r.stmts.as_slice(), [Stmt::Counter]));
            if closes {
                expected.packets += counts.packets;
                expected.bytes += counts.bytes;
            }
        }
        assert_ne!(expected, Counts::default(), "the table has a closing rule");
        assert_eq!(
            read(&mut k, at, family, &table.name).expect("read"),
            Some(expected)
        );
        let wanted = format!(
            "counters {} {} {}",
            at.describe(),
            family.name(),
            table.name
        );
        assert_eq!(k.calls.iter().filter(|c| **c == wanted).count(), 3);
    }
}
