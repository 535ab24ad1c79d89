//! Item 4 of issue 6: allowed traffic from a guarded pod against an unguarded one on the same
//! bridge, to a server in the node's "orchestrator" netns: iperf3 TCP throughput both ways and
//! 1-byte TCP request/response latency. Configurations alternate rep by rep.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::node::ORCH4;
use crate::cri::net::in_netns;
use crate::pods::{BenchNode, Pod, ALLOW};
use crate::stats::{Report, Samples};

const IPERF_PORT: u16 = 5201;
const RR_PORT: u16 = 5202;

pub struct Pair {
    pub guarded: Pod,
    pub open: Pod,
}

impl Pair {
    pub fn new(bn: &mut BenchNode) -> Result<Pair, String> {
        let guarded = bn.attach(
            "dg",
            json!({"egress-guard.io/mode": "enforce",
                   "egress-guard.io/allow": format!("{ALLOW}, {ORCH4} tcp {IPERF_PORT}-{RR_PORT}")}),
        )?;
        bn.guard("ADD", &bn.entry("host"), &guarded)?;
        let open = bn.attach("do", json!({}))?;
        Ok(Pair { guarded, open })
    }
}

/// iperf3 server and the request/response echo server in the orchestrator netns.
pub struct Servers {
    iperf: Child,
    stop: Arc<AtomicBool>,
    rr: Option<std::thread::JoinHandle<()>>,
}

impl Servers {
    pub fn start(bn: &BenchNode) -> Result<Servers, String> {
        let orch = bn.n.orch.name.clone();
        let iperf = Command::new("ip")
            .args([
                "netns",
                "exec",
                &orch,
                "iperf3",
                "-s",
                "-p",
                &IPERF_PORT.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("iperf3 -s: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let st = stop.clone();
        let path = bn.n.orch.path();
        let rr = std::thread::spawn(move || {
            let r = in_netns(Some(Path::new(&path)), || {
                let l = match TcpListener::bind((ORCH4, RR_PORT)) {
                    Ok(l) => {
                        let _ = tx.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                };
                if l.set_nonblocking(true).is_err() {
                    return;
                }
                while !st.load(Ordering::SeqCst) {
                    let mut c = match l.accept() {
                        Ok((c, _)) => c,
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                    };
                    let _ = c.set_nonblocking(false);
                    let _ = c.set_nodelay(true);
                    // One thread per connection: the guarded and the unguarded pod's
                    // connections are served at the same time.
                    std::thread::spawn(move || {
                        let mut b = [0u8; 1];
                        while c.read_exact(&mut b).is_ok() {
                            if c.write_all(&b).is_err() {
                                break;
                            }
                        }
                    });
                }
            });
            if let Err(e) = r {
                let _ = tx.send(Err(e));
            }
        });
        let mut s = Servers {
            iperf,
            stop,
            rr: Some(rr),
        };
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                s.shutdown();
                return Err(format!("echo server: {e}"));
            }
            Err(_) => {
                s.shutdown();
                return Err("echo server did not start".into());
            }
        }
        Ok(s)
    }

    fn shutdown(&mut self) {
        let _ = self.iperf.kill();
        let _ = self.iperf.wait();
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.rr.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Busy CPU time of the whole machine so far (user, nice, system, irq, softirq), seconds.
fn busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: f64 = stat
        .lines()
        .next()
        .filter(|l| l.starts_with("cpu "))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .enumerate()
                .filter(|(i, _)| [0, 1, 2, 5, 6].contains(i))
                .filter_map(|(_, v)| v.parse::<f64>().ok())
                .sum()
        })
        .unwrap_or(f64::NAN);
    // USER_HZ is 100 on Linux/x86_64 (sysconf(_SC_CLK_TCK)).
    ticks / 100.0
}

/// One iperf3 run from `pod` (reverse: server sends): Gbit/s received, and the machine's busy
/// CPU milliseconds per GB received (both ends, the whole stack and the rules: with the CPUs
/// saturated, throughput is what this allows).
fn iperf(pod: &Pod, secs: u32, reverse: bool) -> Result<(f64, f64), String> {
    let port = IPERF_PORT.to_string();
    let t = secs.to_string();
    let mut args = vec![
        "netns",
        "exec",
        &pod.ns.name,
        "iperf3",
        "-c",
        ORCH4,
        "-p",
        &port,
        "-t",
        &t,
        "-J",
    ];
    if reverse {
        args.push("-R");
    }
    let mut last = String::new();
    for _ in 0..20 {
        let busy0 = busy_secs();
        let out = Command::new("ip")
            .args(&args)
            .output()
            .map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let busy = busy_secs() - busy0;
        let got = &v["end"]["sum_received"];
        if let (Some(bps), Some(bytes)) = (got["bits_per_second"].as_f64(), got["bytes"].as_f64()) {
            return Ok((bps / 1e9, busy * 1e3 / (bytes / 1e9)));
        }
        last = format!("{} {}", v["error"], String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(250));
    }
    Err(format!("iperf3 from {}: {last}", pod.ns.name))
}

/// A TCP connection to the echo server made from inside `pod` (the socket stays in the pod's
/// netns whichever thread uses it).
fn connect_from(pod: &Pod) -> Result<TcpStream, String> {
    in_netns(Some(Path::new(&pod.netns_path())), || {
        let addr: SocketAddr = format!("{ORCH4}:{RR_PORT}")
            .parse()
            .map_err(|e| format!("{e}"))?;
        let c = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            .map_err(|e| format!("connect from {}: {e}", pod.ns.name))?;
        c.set_nodelay(true).map_err(|e| e.to_string())?;
        c.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(c)
    })?
}

fn round_trip(c: &mut TcpStream) -> Result<f64, String> {
    let mut b = [7u8; 1];
    let t = Instant::now();
    c.write_all(&b).map_err(|e| e.to_string())?;
    c.read_exact(&mut b).map_err(|e| e.to_string())?;
    Ok(t.elapsed().as_secs_f64() * 1e6)
}

/// `count` 1-byte request/response round trips from each pod, strictly alternating between
/// the two pods' connections (same thread, same moment, same noise), microseconds each. The
/// first 100 of each warm up (ARP, caches) and are not counted.
/// Which pod connects first (and so which server thread the scheduler places first)
/// alternates with `rep`.
fn rr(
    pair: &Pair,
    rep: usize,
    count: usize,
    g: &mut Samples,
    o: &mut Samples,
) -> Result<(), String> {
    let (mut cg, mut co) = if rep % 2 == 0 {
        let cg = connect_from(&pair.guarded)?;
        (cg, connect_from(&pair.open)?)
    } else {
        let co = connect_from(&pair.open)?;
        (connect_from(&pair.guarded)?, co)
    };
    for i in 0..count + 100 {
        let (a, b) = if i % 2 == 0 {
            (round_trip(&mut cg)?, round_trip(&mut co)?)
        } else {
            let b = round_trip(&mut co)?;
            (round_trip(&mut cg)?, b)
        };
        if i >= 100 {
            g.push(a);
            o.push(b);
        }
    }
    Ok(())
}

/// Results of one population.
#[derive(Default)]
pub struct Flow {
    pub pods: usize,
    pub up_g: Samples,
    pub up_o: Samples,
    pub down_g: Samples,
    pub down_o: Samples,
    /// Busy CPU ms per GB received, per run.
    pub up_cpu_g: Samples,
    pub up_cpu_o: Samples,
    pub down_cpu_g: Samples,
    pub down_cpu_o: Samples,
    pub rr_g: Samples,
    pub rr_o: Samples,
    /// Per run: the unguarded pod's RR p50, and the guarded minus the unguarded p50 (µs).
    pub rep_open: Vec<f64>,
    pub rep_added: Vec<f64>,
}

pub fn measure(
    pair: &Pair,
    pods: usize,
    reps: usize,
    secs: u32,
    rr_count: usize,
) -> Result<Flow, String> {
    let mut f = Flow {
        pods,
        ..Default::default()
    };
    for i in 0..reps {
        // Alternate which pod goes first.
        let order: [(&Pod, bool); 2] = if i % 2 == 0 {
            [(&pair.guarded, true), (&pair.open, false)]
        } else {
            [(&pair.open, false), (&pair.guarded, true)]
        };
        for (pod, g) in order {
            let (up, up_cpu) = iperf(pod, secs, false)?;
            let (down, down_cpu) = iperf(pod, secs, true)?;
            let (u, d, uc, dc) = if g {
                (
                    &mut f.up_g,
                    &mut f.down_g,
                    &mut f.up_cpu_g,
                    &mut f.down_cpu_g,
                )
            } else {
                (
                    &mut f.up_o,
                    &mut f.down_o,
                    &mut f.up_cpu_o,
                    &mut f.down_cpu_o,
                )
            };
            u.push(up);
            d.push(down);
            uc.push(up_cpu);
            dc.push(down_cpu);
        }
        let (mut g, mut o) = (Samples::default(), Samples::default());
        rr(pair, i, rr_count, &mut g, &mut o)?;
        f.rep_open.push(o.p50());
        f.rep_added.push(g.p50() - o.p50());
        if std::env::var_os("BENCH_VERBOSE").is_some() {
            eprintln!(
                "  rep {i}: RR p50 guarded {:.1} µs, unguarded {:.1} µs",
                g.p50(),
                o.p50()
            );
        }
        f.rr_g.0.extend(g.0);
        f.rr_o.0.extend(o.0);
    }
    Ok(f)
}

pub fn report(r: &mut Report, flows: &[Flow], reps: usize, secs: u32, rr_count: usize) {
    r.section(
        "4. Datapath: allowed traffic through a guarded veth vs an unguarded one",
        &format!(
            "Two pods on the same bridge; one guarded (host placement, the policy plus \
             `{ORCH4} tcp {IPERF_PORT}-{RR_PORT}`), one without a table. Server in the \
             orchestrator netns behind the node's router. iperf3 {secs} s per run, {reps} runs \
             per direction and pod, alternating pods; \"up\" = pod sends (frames cross the \
             ingress-hook chain, allowlist lookup), \"down\" = `-R`, pod receives (every frame \
             crosses the egress-hook chain, which refreshes the reply-flow set) and its ACKs go \
             up through the allowlist. Request/response: one TCP connection from each pod, 1-byte \
             ping-pong alternating between the two connections transaction by transaction, \
             {rr_count} round trips per pod and run (after 100 warm-up), microseconds. \
             \"busy CPU ms per GB\": the whole machine's busy CPU time (`/proc/stat`) during an \
             iperf3 run divided by the GB received; with both vCPUs saturated it is what sets \
             the throughput, and it includes the rules' cost."
        ),
    );
    let mut rows = Vec::new();
    for f in flows {
        for (what, g, o) in [
            ("TCP up, Gbit/s (median)", &f.up_g, &f.up_o),
            ("TCP down, Gbit/s (median)", &f.down_g, &f.down_o),
            (
                "TCP up, busy CPU ms per GB (median)",
                &f.up_cpu_g,
                &f.up_cpu_o,
            ),
            (
                "TCP down, busy CPU ms per GB (median)",
                &f.down_cpu_g,
                &f.down_cpu_o,
            ),
        ] {
            rows.push(vec![
                f.pods.to_string(),
                what.into(),
                format!("{:.2}", g.p50()),
                format!("{:.2}", o.p50()),
                format!("{:.1}%", 100.0 * g.p50() / o.p50()),
            ]);
        }
        for (what, q) in [
            ("RR p50 µs", 50.0),
            ("RR p90 µs", 90.0),
            ("RR p99 µs", 99.0),
        ] {
            rows.push(vec![
                f.pods.to_string(),
                what.into(),
                format!("{:.1}", f.rr_g.pct(q)),
                format!("{:.1}", f.rr_o.pct(q)),
                format!("{:.1}%", 100.0 * f.rr_g.pct(q) / f.rr_o.pct(q)),
            ]);
        }
    }
    r.table(
        &[
            "guarded pods",
            "metric",
            "guarded",
            "unguarded",
            "guarded/unguarded",
        ],
        &rows,
    );
    let worst = flows
        .iter()
        .flat_map(|f| [f.up_g.p50() / f.up_o.p50(), f.down_g.p50() / f.down_o.p50()])
        .fold(f64::INFINITY, f64::min);
    r.target(
        "allowed traffic keeps >= 95% of unguarded throughput",
        format!("worst median ratio {:.1}%", worst * 100.0),
        worst >= 0.95,
    );
    if flows.len() >= 2 {
        let (a, b) = (&flows[0], &flows[flows.len() - 1]);
        // Per-packet cost: what the guarded veth adds to a round trip (median over runs of the
        // per-run p50 difference) may not grow from the first to the last population by more
        // than the unguarded pod's own p50 moved between runs of this benchmark, with no rule
        // involved: a smaller change is not distinguishable from this machine's noise.
        let added = |f: &Flow| Samples(f.rep_added.clone()).p50();
        let spread = flows
            .iter()
            .map(|f| {
                let lo = f.rep_open.iter().copied().fold(f64::INFINITY, f64::min);
                let hi = f.rep_open.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                hi - lo
            })
            .fold(0.0, f64::max);
        let (add_a, add_b) = (added(a), added(b));
        r.target(
            &format!(
                "per-packet cost flat from {} to {} guarded pods",
                a.pods, b.pods
            ),
            format!(
                "guarded veth adds {add_a:+.1} -> {add_b:+.1} µs per round trip (median of \
                 per-run p50 differences); the unguarded p50 alone moved {spread:.1} µs \
                 between runs"
            ),
            add_b - add_a <= spread.max(1.0),
        );
    }
}
