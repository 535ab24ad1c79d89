//! Makes allowlist boxes disjoint. Concatenated interval sets in the kernel reject overlapping
//! elements, so overlapping entries (say `10.0.0.0/8 tcp 443` and `10.0.5.0/24 tcp 400-500`) are
//! cut into non-overlapping boxes that cover exactly the same space. Pure arithmetic.

use super::Span;

/// A box in two dimensions: a span on the first axis times a span on the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct AddrPortBox {
    pub a: Span,
    pub b: Span,
}

/// Merges spans that overlap or touch; returns them sorted.
fn merge_spans(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort();
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    for s in spans {
        if let Some(last) = out.last_mut() {
            if s.lo <= last.hi.saturating_add(1) {
                last.hi = last.hi.max(s.hi);
                continue;
            }
        }
        out.push(s);
    }
    out
}

/// Returns boxes that do not overlap and whose union equals the union of `input`.
/// Output is sorted and deterministic for a given input set (order of input does not matter).
pub fn disjoint_boxes(input: &[AddrPortBox]) -> Vec<AddrPortBox> {
    if input.is_empty() {
        return Vec::new();
    }
    // Elementary intervals on the first axis: cut at every start and after every end.
    let mut cuts: Vec<u128> = Vec::with_capacity(input.len() * 2);
    for bx in input {
        cuts.push(bx.a.lo);
        if let Some(next) = bx.a.hi.checked_add(1) {
            cuts.push(next);
        }
    }
    cuts.sort_unstable();
    cuts.dedup();

    // For each elementary interval, the merged spans on the second axis that cover it.
    let mut rows: Vec<(Span, Vec<Span>)> = Vec::new();
    for (i, &lo) in cuts.iter().enumerate() {
        let hi = match cuts.get(i + 1) {
            Some(&n) => n - 1,
            None => input
                .iter()
                .filter(|b| b.a.contains(lo))
                .map(|b| b.a.hi)
                .max()
                .unwrap_or(lo),
        };
        let covering: Vec<Span> = input
            .iter()
            .filter(|b| b.a.contains(lo))
            .map(|b| b.b)
            .collect();
        if covering.is_empty() {
            continue;
        }
        let merged = merge_spans(covering);
        // Coalesce with the previous row when adjacent and identical on the second axis.
        if let Some((prev_a, prev_b)) = rows.last_mut() {
            if prev_a.hi.checked_add(1) == Some(lo) && *prev_b == merged {
                prev_a.hi = hi;
                continue;
            }
        }
        rows.push((Span::new(lo, hi), merged));
    }
    let mut out: Vec<AddrPortBox> = rows
        .into_iter()
        .flat_map(|(a, bs)| bs.into_iter().map(move |b| AddrPortBox { a, b }))
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bx(a: (u128, u128), b: (u128, u128)) -> AddrPortBox {
        AddrPortBox {
            a: Span::new(a.0, a.1),
            b: Span::new(b.0, b.1),
        }
    }

    fn covered(boxes: &[AddrPortBox], x: u128, y: u128) -> bool {
        boxes.iter().any(|b| b.a.contains(x) && b.b.contains(y))
    }

    fn overlap(p: &AddrPortBox, q: &AddrPortBox) -> bool {
        p.a.lo <= q.a.hi && q.a.lo <= p.a.hi && p.b.lo <= q.b.hi && q.b.lo <= p.b.hi
    }

    #[test]
    fn nested_boxes_become_disjoint_with_same_union() {
        let input = vec![bx((0, 255), (443, 443)), bx((10, 20), (400, 500))];
        let out = disjoint_boxes(&input);
        for (i, p) in out.iter().enumerate() {
            for q in &out[i + 1..] {
                assert!(!overlap(p, q), "{p:?} overlaps {q:?}");
            }
        }
        for x in 0..300u128 {
            for y in [0u128, 399, 400, 443, 444, 500, 501] {
                assert_eq!(covered(&input, x, y), covered(&out, x, y), "at {x},{y}");
            }
        }
    }

    #[test]
    fn identical_and_adjacent_merge() {
        let input = vec![bx((0, 9), (1, 1)), bx((10, 19), (1, 1)), bx((0, 9), (1, 1))];
        assert_eq!(disjoint_boxes(&input), vec![bx((0, 19), (1, 1))]);
    }

    #[test]
    fn full_range_does_not_overflow() {
        let input = vec![bx((0, u128::MAX), (0, 255)), bx((5, 5), (6, 6))];
        assert_eq!(disjoint_boxes(&input), vec![bx((0, u128::MAX), (0, 255))]);
    }

    #[test]
    fn pseudo_random_union_is_preserved() {
        let mut seed = 0x1234_5678_u64;
        let mut next = |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % m) as u128
        };
        for _ in 0..50 {
            let input: Vec<AddrPortBox> = (0..6)
                .map(|_| {
                    let (a0, a1) = (next(40), next(40));
                    let (b0, b1) = (next(12), next(12));
                    bx((a0.min(a1), a0.max(a1)), (b0.min(b1), b0.max(b1)))
                })
                .collect();
            let out = disjoint_boxes(&input);
            for (i, p) in out.iter().enumerate() {
                for q in &out[i + 1..] {
                    assert!(!overlap(p, q));
                }
            }
            for x in 0..42 {
                for y in 0..14 {
                    assert_eq!(covered(&input, x, y), covered(&out, x, y));
                }
            }
        }
    }
}
