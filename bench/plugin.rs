//! Items 1, 3 and 5 of issue 6: egress-guard ADD/DEL against `nft -f` of the same ruleset with
//! 0/100/500 guarded pods on the node (host and pod placement, interleaved), 16 ADDs at once,
//! peak RSS and binary size.

use serde_json::json;

use crate::pods::{exec_ok, exec_timed, BenchNode, Pod};
use crate::stats::{lat_row, ratio, Report, Samples};

/// The eight series of one population, taken interleaved.
#[derive(Default)]
pub struct Stage {
    pub pods: usize,
    pub host_add: Samples,
    pub host_del: Samples,
    pub nft_host_add: Samples,
    pub nft_host_del: Samples,
    pub pod_add: Samples,
    pub pod_del: Samples,
    pub nft_pod_add: Samples,
    pub nft_pod_del: Samples,
    /// The floor of any exec'd plugin: `/bin/true`, and egress-guard's VERSION verb.
    pub true_exec: Samples,
    pub version: Samples,
}

/// The two measured pods (one per placement) and their rendered rulesets.
pub struct Measured {
    pub host: Pod,
    pub pod: Pod,
    /// `None` when `nft` cannot read the host table's text back (its sets are keyed on raw
    /// header loads, which nft 1.0.6 lists but cannot parse).
    host_rules: Option<String>,
    pod_rules: String,
}

impl Measured {
    pub fn new(bn: &mut BenchNode) -> Result<Measured, String> {
        let ann =
            json!({"egress-guard.io/mode": "enforce", "egress-guard.io/allow": crate::pods::ALLOW});
        let host = bn.attach("mh", ann.clone())?;
        let pod = bn.attach("mp", ann)?;
        let host_rules = bn.render(&host, "host")?;
        let host_rules = exec_timed(&bn.node_path(), "nft", &["-c", "-f", &host_rules], &[], b"")?
            .1
            .status
            .success()
            .then_some(host_rules);
        let pod_rules = bn.render(&pod, "pod")?;
        Ok(Measured {
            host,
            pod,
            host_rules,
            pod_rules,
        })
    }
}

/// `runs` rounds of: plugin ADD+DEL (host), nft -f + delete (host), plugin ADD+DEL (pod),
/// nft -f + delete (pod netns). Every run must succeed; the first of each kind is checked
/// to have installed its table.
pub fn latency_stage(
    bn: &BenchNode,
    m: &Measured,
    pods: usize,
    runs: usize,
) -> Result<Stage, String> {
    let mut st = Stage {
        pods,
        ..Default::default()
    };
    let (eh, ep) = (bn.entry("host"), bn.entry("pod"));
    let node = bn.node_path();
    let podns = m.pod.netns_path();
    let t_host = egress_guard::ruleset::table_name(&m.host.cid, "eth0");
    let t_pod = egress_guard::ruleset::table_name(&m.pod.cid, "eth0");
    for i in 0..runs {
        st.host_add.push(bn.guard("ADD", &eh, &m.host)?);
        if i == 0 && !BenchNode::has_table(&node, "netdev", &m.host.cid)? {
            return Err("host ADD installed no netdev table".into());
        }
        st.host_del.push(bn.guard("DEL", &eh, &m.host)?);
        if let Some(rules) = &m.host_rules {
            st.nft_host_add
                .push(exec_ok(&node, "nft", &["-f", rules], &[], b"")?.0);
            if i == 0 && !BenchNode::has_table(&node, "netdev", &m.host.cid)? {
                return Err("nft -f installed no netdev table".into());
            }
            st.nft_host_del.push(
                exec_ok(
                    &node,
                    "nft",
                    &["delete", "table", "netdev", &t_host],
                    &[],
                    b"",
                )?
                .0,
            );
        }
        st.pod_add.push(bn.guard("ADD", &ep, &m.pod)?);
        if i == 0 && !BenchNode::has_table(&podns, "netdev", &m.pod.cid)? {
            return Err("pod ADD installed no netdev table in the pod".into());
        }
        st.pod_del.push(bn.guard("DEL", &ep, &m.pod)?);
        st.nft_pod_add
            .push(exec_ok(&podns, "nft", &["-f", &m.pod_rules], &[], b"")?.0);
        st.nft_pod_del.push(
            exec_ok(
                &podns,
                "nft",
                &["delete", "table", "inet", &t_pod],
                &[],
                b"",
            )?
            .0,
        );
        st.true_exec
            .push(exec_ok(&node, "/bin/true", &[], &[], b"")?.0);
        let ver = br#"{"cniVersion":"1.0.0"}"#;
        st.version.push(
            exec_ok(
                &node,
                &crate::common::plugin_bin(),
                &[],
                &[("CNI_COMMAND", "VERSION".to_string())],
                ver,
            )?
            .0,
        );
    }
    if BenchNode::has_table(&node, "netdev", &m.host.cid)?
        || BenchNode::has_table(&podns, "netdev", &m.pod.cid)?
        || BenchNode::has_table(&podns, "inet", &m.pod.cid)?
    {
        return Err("a measured table survived its DEL".into());
    }
    Ok(st)
}

pub fn report_latency(r: &mut Report, stages: &[Stage], runs: usize) {
    r.section(
        "1. Plugin ADD/DEL latency, and the same ruleset through `nft -f`",
        &format!(
            "Milliseconds from spawn to exit, {runs} runs each, all series interleaved run by run. \
             \"guarded pods\" = pods already on the node with a host-placed egress-guard table \
             (the same 7-entry policy). `nft -f` applies the exact text `egress-guard render` \
             prints for the same pod where nft can read it back: the host table's sets are \
             keyed on raw header loads, which nft 1.0.6 lists but cannot parse, so its row is \
             empty (n 0); in the pod netns it loads the inet table an init container would \
             (`render --placement pod-inet`), while pod placement ADD installs the netdev table \
             on the pod's interface. Its DEL is `nft delete table`."
        ),
    );
    let mut rows = Vec::new();
    for s in stages {
        let p = s.pods.to_string();
        for (what, smp) in [
            ("egress-guard ADD, host placement", &s.host_add),
            ("`nft -f`, same table (node netns)", &s.nft_host_add),
            ("egress-guard DEL, host placement", &s.host_del),
            ("`nft delete table` (node netns)", &s.nft_host_del),
            ("egress-guard ADD, pod placement", &s.pod_add),
            ("`nft -f`, same table (pod netns)", &s.nft_pod_add),
            ("egress-guard DEL, pod placement", &s.pod_del),
            ("`nft delete table` (pod netns)", &s.nft_pod_del),
        ] {
            rows.push(lat_row(&[&p, what], smp));
        }
        for (what, smp) in [
            ("exec floor: `/bin/true`", &s.true_exec),
            ("exec floor: egress-guard VERSION", &s.version),
        ] {
            rows.push(lat_row(&[&p, what], smp));
        }
    }
    r.table(
        &["guarded pods", "what", "n", "p50 ms", "p90 ms", "p99 ms"],
        &rows,
    );
    let mut rrows = Vec::new();
    for s in stages {
        rrows.push(vec![
            s.pods.to_string(),
            ratio(s.nft_host_add.p50(), s.host_add.p50()),
            ratio(s.nft_pod_add.p50(), s.pod_add.p50()),
            ratio(s.host_add.p50(), stages[0].host_add.p50()),
            ratio(s.pod_add.p50(), stages[0].pod_add.p50()),
        ]);
    }
    r.table(
        &[
            "guarded pods",
            "`nft -f` / ADD p50 (host)",
            "`nft -f` / ADD p50 (pod)",
            "ADD p50 / 0-pod ADD p50 (host)",
            "(pod)",
        ],
        &rrows,
    );
    let first = &stages[0];
    let last = &stages[stages.len() - 1];
    let p50 = last.host_add.p50();
    r.target(
        &format!("ADD p50 <= 2.2 ms with {} guarded pods (host)", last.pods),
        format!("{p50:.2} ms"),
        p50 <= 2.2,
    );
    let g = p50 / first.host_add.p50();
    r.target(
        &format!(
            "ADD p50 with {} pods within 1.5x of 0 pods (host)",
            last.pods
        ),
        format!("{g:.2}x"),
        g <= 1.5,
    );
    let pg = last.pod_add.p50() / first.pod_add.p50();
    r.target(
        &format!("same, pod placement ({} pods)", last.pods),
        format!("{:.2} ms, {pg:.2}x", last.pod_add.p50()),
        last.pod_add.p50() <= 2.2 && pg <= 1.5,
    );
    // A series nft could not load (NaN) drops out of the minimum.
    let worst = stages
        .iter()
        .flat_map(|s| {
            [
                s.nft_host_add.p50() / s.host_add.p50(),
                s.nft_pod_add.p50() / s.pod_add.p50(),
            ]
        })
        .filter(|r| !r.is_nan())
        .fold(f64::INFINITY, f64::min);
    r.target(
        "ADD faster than `nft -f` of the rules nft can load (every population)",
        format!("`nft -f` p50 / ADD p50 >= {worst:.2}x"),
        worst > 1.0,
    );
}

/// Item 3: `batches` rounds of 16 concurrent ADDs (then 16 concurrent DELs), each pod with a
/// policy of its own port; checks every table is bound to its own veth and holds only its port.
pub fn parallel(
    bn: &mut BenchNode,
    batches: usize,
    r: &mut Report,
    single_p50: f64,
) -> Result<(), String> {
    const N: usize = 16;
    let mut pods = Vec::new();
    for i in 0..N {
        pods.push(bn.attach(
            "par",
            json!({"egress-guard.io/mode": "enforce",
                   "egress-guard.io/allow": format!("10.0.5.10 tcp {}", 7000 + i)}),
        )?);
    }
    let entry = bn.entry("host");
    let mut add = crate::stats::Samples::default();
    let mut del = crate::stats::Samples::default();
    let mut slowest = crate::stats::Samples::default();
    for b in 0..batches {
        for (verb, acc) in [("ADD", &mut add), ("DEL", &mut del)] {
            let t0 = std::time::Instant::now();
            let results: Vec<Result<f64, String>> = std::thread::scope(|s| {
                let hs: Vec<_> = pods
                    .iter()
                    .map(|p| {
                        let (bn, entry) = (&*bn, &entry);
                        s.spawn(move || bn.guard(verb, entry, p))
                    })
                    .collect();
                hs.into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
                    .collect()
            });
            acc.push(t0.elapsed().as_secs_f64() * 1e3);
            let mut worst: f64 = 0.0;
            for res in results {
                worst = worst.max(res?);
            }
            if verb == "ADD" {
                slowest.push(worst);
                if b == 0 || b + 1 == batches {
                    for (i, p) in pods.iter().enumerate() {
                        let text = bn.table_text(&p.cid)?;
                        let own = format!("tcp . {}", 7000 + i);
                        let dev = format!("device \"{}\"", p.veth);
                        let others = (0..N)
                            .filter(|j| *j != i)
                            .any(|j| text.contains(&format!("tcp . {}", 7000 + j)));
                        if !text.contains(&own) || !text.contains(&dev) || others {
                            return Err(format!(
                                "parallel ADD: table of pod {i} is not its own policy on {}:\n{text}",
                                p.veth
                            ));
                        }
                    }
                }
            }
        }
    }
    r.section(
        "3. 16 ADDs at once",
        &format!(
            "16 pods attached by bridge + host-local, then egress-guard ADD exec'd for all 16 at \
             once, {batches} times (each followed by 16 DELs at once). Every ADD succeeded and, \
             checked after the first and last batch, each pod's table was bound to its own veth \
             and held only its own allowlisted port. Batch time = first spawn to last exit, ms."
        ),
    );
    r.table(
        &["batch of 16", "n", "p50 ms", "p90 ms", "p99 ms"],
        &[
            lat_row(&["ADD"], &add),
            lat_row(&["slowest single ADD in the batch"], &slowest),
            lat_row(&["DEL"], &del),
        ],
    );
    r.note(&format!(
        "Batch ADD p50 = {} the 0-pod single ADD p50 ({single_p50:.2} ms); 16 sequential ADDs would be 16x.",
        ratio(add.p50(), single_p50)
    ));
    r.target(
        "16 concurrent ADDs all succeed, each pod its own policy",
        format!("{} batches, all ok", batches),
        true,
    );
    Ok(())
}

/// Peak RSS of `prog` under `/usr/bin/time -v`, in KiB.
fn max_rss(
    ns: &str,
    prog: &str,
    args: &[&str],
    env: &[(&str, String)],
    stdin: &[u8],
) -> Result<u64, String> {
    let mut a = vec!["-v", prog];
    a.extend_from_slice(args);
    let (_, out) = exec_ok(ns, "/usr/bin/time", &a, env, stdin)?;
    let err = String::from_utf8_lossy(&out.stderr);
    err.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")
        })
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no RSS in /usr/bin/time output: {err}"))
}

/// Total size of `nft` and the shared libraries it loads (what an init image must carry).
pub fn nft_closure_bytes() -> Result<(u64, Vec<String>), String> {
    let files = crate::crib::nft_files()?;
    let mut total = 0;
    for f in &files {
        total += std::fs::metadata(f).map_err(|e| format!("{f}: {e}"))?.len();
    }
    Ok((total, files))
}

/// Item 5.
pub fn rss(bn: &mut BenchNode, r: &mut Report) -> Result<(), String> {
    let m = Measured::new(bn)?;
    let bin = crate::common::plugin_bin();
    let mut rows = Vec::new();
    let mut worst = 0;
    let node = bn.node_path();
    for (placement, pod) in [("host", &m.host), ("pod", &m.pod)] {
        let entry = bn.entry(placement);
        let conf = bn.netconf(&entry, pod);
        let (mut add, mut del) = (0u64, 0u64);
        for _ in 0..5 {
            add = add.max(max_rss(
                &node,
                &bin,
                &[],
                &BenchNode::cni_env("ADD", pod),
                &conf,
            )?);
            del = del.max(max_rss(
                &node,
                &bin,
                &[],
                &BenchNode::cni_env("DEL", pod),
                &conf,
            )?);
        }
        worst = worst.max(add).max(del);
        rows.push(vec![
            format!("egress-guard ADD, {placement} placement"),
            format!("{:.2}", add as f64 / 1024.0),
        ]);
        rows.push(vec![
            format!("egress-guard DEL, {placement} placement"),
            format!("{:.2}", del as f64 / 1024.0),
        ]);
    }
    let (mut nft_node, mut nft_pod) = (0, 0);
    let podns = m.pod.netns_path();
    let bg = BenchNode::count_tables(&bn.node_path())?;
    for _ in 0..5 {
        if let Some(rules) = &m.host_rules {
            nft_node = nft_node.max(max_rss(&bn.node_path(), "nft", &["-f", rules], &[], b"")?);
            exec_ok(
                &bn.node_path(),
                "nft",
                &[
                    "delete",
                    "table",
                    "netdev",
                    &egress_guard::ruleset::table_name(&m.host.cid, "eth0"),
                ],
                &[],
                b"",
            )?;
        }
        nft_pod = nft_pod.max(max_rss(&podns, "nft", &["-f", &m.pod_rules], &[], b"")?);
        exec_ok(
            &podns,
            "nft",
            &[
                "delete",
                "table",
                "inet",
                &egress_guard::ruleset::table_name(&m.pod.cid, "eth0"),
            ],
            &[],
            b"",
        )?;
    }
    rows.push(vec![
        format!("`nft -f` of the same table, node netns holding {bg} tables"),
        format!("{:.2}", nft_node as f64 / 1024.0),
    ]);
    rows.push(vec![
        "`nft -f` of the same table, pod netns (empty ruleset)".into(),
        format!("{:.2}", nft_pod as f64 / 1024.0),
    ]);
    let size = std::fs::metadata(&bin)
        .map_err(|e| format!("{bin}: {e}"))?
        .len();
    let (nft_size, nft_files) = nft_closure_bytes()?;
    r.section(
        "5. Peak RSS and size",
        "`/usr/bin/time -v`, maximum resident set size of one run, worst of 5, taken after the \
         latency runs (the node still holds every guarded pod).",
    );
    r.table(&["run", "peak RSS MiB"], &rows);
    r.note(&format!(
        "egress-guard binary (release, stripped, statically linked): {:.2} MiB ({size} bytes). For comparison \
         `nft` and the {} shared libraries it loads (what an init image must carry): {:.2} MiB.",
        size as f64 / 1048576.0,
        nft_files.len() - 1,
        nft_size as f64 / 1048576.0
    ));
    r.target(
        "peak RSS <= 8 MiB",
        format!("{:.2} MiB", worst as f64 / 1024.0),
        worst <= 8 * 1024,
    );
    Ok(())
}

/// Host ADD next to `count` empty foreign tables whose names have `len` characters (`len` 0:
/// none). The kernel finds the table of every message in a batch by walking the netns' list of
/// tables, measuring each name and comparing it; this shows what that costs per table and how
/// much of it the names' length decides.
pub struct NameStage {
    pub count: usize,
    pub series: Vec<(usize, Samples)>,
}

/// Name lengths compared: none, 29 characters (egress-guard's table names: `egress_guard_`
/// and 16 hex digits of a hash), and 77 (`egress_guard_` and a 64-hex container ID, the form
/// containerd and CRI-O use: the names of earlier builds).
pub const NAME_LENGTHS: [usize; 3] = [0, 29, 77];

fn foreign_names(count: usize, len: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("egbench_{i:0w$x}", w = len - "egbench_".len()))
        .collect()
}

fn foreign_tables(node: &str, names: &[String], verb: &str) -> Result<(), String> {
    let script: String = names
        .iter()
        .map(|n| format!("{verb} table inet {n}\n"))
        .collect();
    exec_ok(node, "nft", &["-f", "/dev/stdin"], &[], script.as_bytes()).map(|_| ())
}

fn count_foreign(node: &str) -> Result<usize, String> {
    let (_, out) = exec_ok(node, "nft", &["list", "tables", "inet"], &[], b"")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("table inet egbench_"))
        .count())
}

/// `rounds` rounds; in each, every name length in turn: create the tables, `runs / rounds`
/// host ADD+DEL pairs (ADD timed), delete the tables.
pub fn name_length_stage(
    bn: &BenchNode,
    m: &Measured,
    count: usize,
    runs: usize,
    rounds: usize,
) -> Result<NameStage, String> {
    let node = bn.node_path();
    let eh = bn.entry("host");
    let mut series: Vec<(usize, Samples)> = NAME_LENGTHS
        .iter()
        .map(|&l| (l, Samples::default()))
        .collect();
    let per = (runs / rounds).max(1);
    for _ in 0..rounds {
        for (len, smp) in series.iter_mut() {
            let names = if *len == 0 {
                Vec::new()
            } else {
                foreign_names(count, *len)
            };
            if !names.is_empty() {
                foreign_tables(&node, &names, "add")?;
            }
            let present = count_foreign(&node)?;
            if present != names.len() {
                return Err(format!(
                    "expected {} foreign tables, found {present}",
                    names.len()
                ));
            }
            for _ in 0..per {
                smp.push(bn.guard("ADD", &eh, &m.host)?);
                bn.guard("DEL", &eh, &m.host)?;
            }
            if !names.is_empty() {
                foreign_tables(&node, &names, "delete")?;
            }
        }
    }
    Ok(NameStage { count, series })
}

pub fn report_names(r: &mut Report, st: &NameStage, rounds: usize) {
    r.section(
        "1b. What the growth with pods is made of: the kernel's table lookup",
        &format!(
            "Host ADD (spawn to exit, ms) on the node without guarded pods, next to {} empty \
             inet tables created by `nft -f` whose names have the given length, or none. \
             {rounds} rounds, each taking every configuration in turn. For every message of a \
             batch the kernel walks the netns' list of tables (a new table is appended at its \
             end) and, for each table, measures its name (`strlen`) before comparing it.",
            st.count
        ),
    );
    let rows: Vec<Vec<String>> = st
        .series
        .iter()
        .map(|(len, s)| {
            let what = if *len == 0 {
                "none".to_string()
            } else {
                format!("{} tables, names of {len} characters", st.count)
            };
            lat_row(&[&what], s)
        })
        .collect();
    r.table(
        &["foreign tables", "n", "p50 ms", "p90 ms", "p99 ms"],
        &rows,
    );
    let base = st.series[0].1.p50();
    for (len, s) in st.series.iter().skip(1) {
        r.note(&format!(
            "- {len}-character names: +{:.2} ms over none at p50, {:.2} µs per table.",
            s.p50() - base,
            (s.p50() - base) * 1000.0 / st.count as f64
        ));
    }
    r.note("");
}
