//! Samples, percentiles and the markdown report `bench/run` prints. No measuring here.

use std::fmt::Write as _;

/// Latencies (or any values) of one configuration, in the order they were taken.
#[derive(Clone, Debug, Default)]
pub struct Samples(pub Vec<f64>);

impl Samples {
    pub fn push(&mut self, v: f64) {
        self.0.push(v);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Nearest-rank percentile (`q` in 0..=100); NaN when empty.
    pub fn pct(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        let rank = ((q / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1]
    }

    pub fn p50(&self) -> f64 {
        self.pct(50.0)
    }

    /// How far this series sits above `base` (Hodges-Lehmann shift): the median of the
    /// differences of every pair of one value from each. Unlike the difference of the two
    /// medians it stays put when both series are mixtures of the same two modes in shares
    /// near one half, where each median lands in either mode by chance.
    pub fn shift_from(&self, base: &Samples) -> f64 {
        let diffs: Vec<f64> = self
            .0
            .iter()
            .flat_map(|a| base.0.iter().map(move |b| a - b))
            .collect();
        Samples(diffs).p50()
    }
}

/// One target of issue 6 and whether this run met it.
pub struct Target {
    pub what: String,
    pub measured: String,
    pub met: bool,
}

/// The whole output: markdown sections (printed sorted by title, which starts with the item
/// number of issue 6), then the targets.
#[derive(Default)]
pub struct Report {
    sections: Vec<(String, String)>,
    pub targets: Vec<Target>,
}

impl Report {
    fn cur(&mut self) -> &mut String {
        if self.sections.is_empty() {
            self.sections.push((String::new(), String::new()));
        }
        let last = self.sections.len() - 1;
        &mut self.sections[last].1
    }

    pub fn section(&mut self, title: &str, intro: &str) {
        let mut body = format!("\n### {title}\n\n");
        if !intro.is_empty() {
            let _ = write!(body, "{intro}\n\n");
        }
        self.sections.push((title.to_string(), body));
    }

    pub fn table(&mut self, header: &[&str], rows: &[Vec<String>]) {
        let t = self.cur();
        let _ = writeln!(t, "| {} |", header.join(" | "));
        let _ = writeln!(
            t,
            "|{}|",
            header.iter().map(|_| "---").collect::<Vec<_>>().join("|")
        );
        for r in rows {
            let _ = writeln!(t, "| {} |", r.join(" | "));
        }
        t.push('\n');
    }

    pub fn note(&mut self, line: &str) {
        let _ = writeln!(self.cur(), "{line}");
    }

    pub fn target(&mut self, what: &str, measured: String, met: bool) {
        self.targets.push(Target {
            what: what.to_string(),
            measured,
            met,
        });
    }

    /// The sections in item order, then the targets table.
    pub fn render(&self) -> String {
        let mut secs: Vec<&(String, String)> = self.sections.iter().collect();
        secs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: String = secs.iter().map(|s| s.1.as_str()).collect();
        out.push_str("\n### Targets\n\n| target | measured | |\n|---|---|---|\n");
        for t in &self.targets {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                t.what,
                t.measured,
                if t.met { "met" } else { "**missed**" }
            );
        }
        out
    }
}

/// A latency row: label columns, then n, p50, p90, p99 in milliseconds.
pub fn lat_row(labels: &[&str], s: &Samples) -> Vec<String> {
    let mut r: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
    r.push(s.len().to_string());
    for q in [50.0, 90.0, 99.0] {
        r.push(format!("{:.2}", s.pct(q)));
    }
    r
}

/// `a / b` formatted as a ratio.
pub fn ratio(a: f64, b: f64) -> String {
    format!("{:.2}x", a / b)
}
