//! The measurements of issue 6 (`bench/run`, results in docs/benchmarks.md): egress-guard's
//! ADD/DEL latency against `nft -f` and an init container, end to end through containerd's
//! CRI, 16 concurrent ADDs, the datapath cost of a guarded veth, peak RSS and size. Needs root;
//! run it through `bench/run`, which installs what it needs and builds the release plugin.
//! Without EGRESS_GUARD_BENCH set (plain `cargo bench`) it only says so and exits.
//! It reuses the namespace node of testkit/src/common and the containerd harness of testkit/src/cri.

use egress_guard_testkit::common;
use egress_guard_testkit::cri;

mod crib;
mod datapath;
mod plugin;
mod pods;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use pods::BenchNode;
use stats::Report;

/// Sizes of one run: full, or QUICK=1 (about two minutes).
struct Plan {
    quick: bool,
    runs: usize,
    populations: Vec<usize>,
    batches: usize,
    iperf_reps: usize,
    iperf_secs: u32,
    rr_count: usize,
    cri_rounds: usize,
    cri_per: usize,
}

impl Plan {
    fn from_env() -> Plan {
        if std::env::var("QUICK").is_ok_and(|v| v == "1") {
            Plan {
                quick: true,
                runs: 30,
                populations: vec![0, 500],
                batches: 4,
                iperf_reps: 2,
                iperf_secs: 1,
                rr_count: 2000,
                cri_rounds: 2,
                cri_per: 3,
            }
        } else {
            Plan {
                quick: false,
                runs: 200,
                populations: vec![0, 100, 500],
                batches: 20,
                iperf_reps: 5,
                iperf_secs: 3,
                rr_count: 5000,
                cri_rounds: 10,
                cri_per: 10,
            }
        }
    }
}

fn wanted(section: &str) -> bool {
    match std::env::var("BENCH_ONLY") {
        Ok(v) => v.split(',').any(|s| s.trim() == section),
        Err(_) => true,
    }
}

struct Progress(Instant);

impl Progress {
    fn say(&self, msg: &str) {
        eprintln!("[{:6.1} s] {msg}", self.0.elapsed().as_secs_f64());
    }
}

/// Items 1, 3, 4, 5 on the namespace node. Returns the 0-pod host ADD p50.
fn node_benches(plan: &Plan, r: &mut Report, p: &Progress) -> Result<f64, String> {
    let mut bn = BenchNode::new();
    let measured = plugin::Measured::new(&mut bn)?;
    let mut stages = Vec::new();
    let mut flows = Vec::new();
    let mut background = Vec::new();
    let mut pair: Option<datapath::Pair> = None;
    let mut servers: Option<datapath::Servers> = None;
    let mut single_p50 = f64::NAN;
    for &n in &plan.populations {
        if n > 0 && wanted("datapath") && pair.is_none() {
            let pr = datapath::Pair::new(&mut bn)?;
            servers = Some(datapath::Servers::start(&bn)?);
            p.say("datapath with 1 guarded pod");
            flows.push(datapath::measure(
                &pr,
                1,
                plan.iperf_reps,
                plan.iperf_secs,
                plan.rr_count,
            )?);
            pair = Some(pr);
        }
        // The guarded pods on the node: `background` plus the datapath pod.
        let guarded = |bg: &Vec<pods::Pod>| bg.len() + usize::from(pair.is_some());
        if n > guarded(&background) {
            p.say(&format!("adding guarded pods up to {n}"));
        }
        while guarded(&background) < n {
            background.push(bn.guarded_pod("bg")?);
        }
        if wanted("latency") {
            p.say(&format!(
                "ADD/DEL latency with {n} guarded pods, {} runs",
                plan.runs
            ));
            let st = plugin::latency_stage(&bn, &measured, n, plan.runs)?;
            if n == 0 {
                single_p50 = st.host_add.p50();
            }
            stages.push(st);
        }
        if n == 0 && wanted("names") {
            p.say("ADD next to 500 foreign tables, by name length");
            let rounds = 4;
            let st = plugin::name_length_stage(&bn, &measured, 500, plan.runs, rounds)?;
            plugin::report_names(r, &st, rounds);
        }
        if n == 0 && wanted("parallel") {
            p.say("16 concurrent ADDs");
            plugin::parallel(&mut bn, plan.batches, r, single_p50)?;
        }
        if let (Some(pr), true) = (&pair, n > 1 && Some(&n) == plan.populations.last()) {
            p.say(&format!("datapath with {n} guarded pods"));
            flows.push(datapath::measure(
                pr,
                n,
                plan.iperf_reps,
                plan.iperf_secs,
                plan.rr_count,
            )?);
        }
    }
    if !stages.is_empty() {
        plugin::report_latency(r, &stages, plan.runs);
    }
    if !flows.is_empty() {
        datapath::report(r, &flows, plan.iperf_reps, plan.iperf_secs, plan.rr_count);
    }
    if wanted("rss") {
        p.say("peak RSS");
        plugin::rss(&mut bn, r)?;
    }
    drop(servers);
    p.say("removing the namespace node");
    drop(pair);
    drop(background);
    drop(measured);
    drop(bn);
    Ok(single_p50)
}

/// What a killed run can leave: namespaces named `egbench*` (only this benchmark uses the tag)
/// and the CRI harness directory when this benchmark made it (it holds `bench-image`).
fn cleanup() {
    let list = common::run(&["ip", "netns", "list"]);
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        if ns.starts_with("egbench") {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .output();
            eprintln!("bench cleanup: deleted netns {ns}");
        }
    }
    if let Ok(dirs) = std::fs::read_dir(pods::STATE_BASE) {
        for d in dirs.flatten() {
            let name = d.file_name().to_string_lossy().to_string();
            if name.starts_with(&format!("eg{}", pods::STATE_TAG)) {
                let _ = std::fs::remove_dir_all(d.path());
                eprintln!("bench cleanup: removed {}", d.path().display());
            }
        }
    }
    let base = std::path::Path::new(cri::node::BASE);
    if base.join("bench-image").exists() {
        for n in cri::node::teardown(base) {
            eprintln!("bench cleanup: {n}");
        }
    }
}

fn main() -> ExitCode {
    match std::env::var("EGRESS_GUARD_BENCH").as_deref() {
        Err(_) => {
            eprintln!("egress-guard benchmarks: run `bench/run` (QUICK=1 for a short run)");
            return ExitCode::SUCCESS;
        }
        Ok("cleanup") => {
            cleanup();
            return ExitCode::SUCCESS;
        }
        Ok(_) => {}
    }
    if !common::can_run_root_tests("bench") {
        return ExitCode::FAILURE;
    }
    let plan = Plan::from_env();
    let p = Progress(Instant::now());
    let plugin = PathBuf::from(common::plugin_bin());
    let mut r = Report::default();
    let mut failed = Vec::new();
    p.say(&format!(
        "plugin {} ({})",
        plugin.display(),
        if plan.quick { "QUICK" } else { "full run" }
    ));
    let node_wanted = ["latency", "names", "parallel", "datapath", "rss"]
        .iter()
        .any(|s| wanted(s));
    let add_p50 = match node_wanted.then(|| node_benches(&plan, &mut r, &p)) {
        None => f64::NAN,
        Some(Ok(v)) => v,
        Some(Err(e)) => {
            failed.push(format!("namespace node: {e}"));
            f64::NAN
        }
    };
    if wanted("cri") {
        p.say("CRI: RunPodSandbox with/without egress-guard, + init container");
        match crib::bench(&plugin, plan.cri_rounds, plan.cri_per, &mut r) {
            // Without the latency section there is no ADD figure to compare with.
            Ok(init_cost) if add_p50.is_finite() => {
                r.target(
                    "ADD >= 10x faster than the init-container way (init container's added p50 vs egress-guard ADD p50, 0 pods)",
                    format!("{init_cost:.1} ms / {add_p50:.2} ms = {:.0}x", init_cost / add_p50),
                    init_cost >= 10.0 * add_p50,
                );
            }
            Ok(_) => {}
            Err(e) => failed.push(format!("CRI: {e}")),
        }
    }
    p.say("done");
    let mut text = format!(
        "Run: {} UTC, kernel {}, {} CPUs, {}.\n",
        common::run(&["date", "-u", "+%Y-%m-%d %H:%M"]).trim(),
        common::run(&["uname", "-r"]).trim(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        if plan.quick { "QUICK=1" } else { "full run" }
    );
    text.push_str(&r.render());
    for f in &failed {
        text.push_str(&format!("\nNOT MEASURED: {f}\n"));
    }
    println!("{text}");
    if let Ok(out) = std::env::var("BENCH_OUT") {
        if let Err(e) = std::fs::write(&out, &text) {
            eprintln!("writing {out}: {e}");
        }
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
