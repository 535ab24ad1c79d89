//! The one text-table printer of the command line: columns padded to their widest cell,
//! two spaces apart, no trailing blanks.

/// `header` and `rows` as aligned lines, each ending in a newline.
pub fn text_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let head: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&head).chain(rows) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell() {
        let t = text_table(
            &["A", "LONGER", "C"],
            &[
                vec!["wide-cell".into(), "x".into(), "".into()],
                vec!["b".into(), "yy".into(), "z".into()],
            ],
        );
        assert_eq!(
            t,
            "A          LONGER  C\nwide-cell  x\nb          yy      z\n"
        );
    }
}
