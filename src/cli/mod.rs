//! The command line: one parser ([`parser`]), every subcommand's flags and help ([`COMMANDS`]),
//! and the dispatch from `argv` to the subcommand. Help goes to stdout with exit 0; a bad flag or
//! value goes to stderr with the usage and exit 2; what a subcommand does with valid flags is its
//! own module's business. The plugin path (`CNI_COMMAND` set) does not come through here.

pub mod explain;
pub mod parser;
mod plugin;
pub mod render;
pub mod suggest;
pub mod table;

use std::ffi::OsString;
use std::process::ExitCode;

pub use parser::{CliError, Command, Flag, Parsed};
pub use plugin::{fetch_pod_annotations, run_plugin};

/// `egress-guard render`.
pub const RENDER: Command = Command {
    name: "render",
    summary: "print the nft ruleset a conflist entry and annotations would install for a pod",
    notes: "exit status: 0 printed, 2 bad input (the message names the flag, field or entry)",
    positional: None,
    flags: &[
        Flag::value(
            "config",
            "FILE",
            "the egress-guard conflist entry, or a whole conflist holding one (required)",
        ),
        Flag::repeated("annotations", "FILE", "a JSON object of pod annotations"),
        Flag::repeated("annotation", "KEY=VALUE", "one pod annotation"),
        Flag::value(
            "namespace",
            "NS",
            "the pod's namespace (enforceNamespaces, ceilings)",
        ),
        Flag::value(
            "container-id",
            "ID",
            "the container ID the table is named after",
        ),
        Flag::value(
            "placement",
            "PLACEMENT",
            "host (default): netdev table on the pod's host-side veth;\n\
             pod: netdev table in the pod netns on the pod's interface;\n\
             pod-inet: inet table in the pod netns (kernels without the netdev egress hook)",
        ),
        Flag::value(
            "device",
            "IFNAME",
            "the interface the chains bind to (default veth0 for host, eth0 for pod)",
        ),
        Flag::value(
            "pod-net",
            "FILE",
            "the pod's identity on its interface (host and pod placement), a JSON object:\n\
             {\"mac\": \"0a:58:0a:16:00:05\", \"addrs\": [\"10.22.0.5/24\"],\n \
             \"link_local\": [\"fe80::1\"], \"gateway_mac\": \"0a:58:0a:16:00:01\"};\n\
             default: an example pod with those values and fd00:22::5/64",
        ),
        Flag::switch(
            "json",
            "print nftables JSON (`add` commands for `nft -j -f -`) instead of nft text;\n\
             nft 1.0.x cannot load the host and pod placements' raw-header set lookups\n\
             from JSON, and its JSON parser drops the table comment",
        ),
    ],
};

/// `egress-guard install`.
pub const INSTALL: Command = Command {
    name: "install",
    summary: "chain egress-guard into the node's CNI configuration and keep it chained (DaemonSet)",
    notes: "Without --once, --check or --uninstall it watches the conf dir until SIGTERM.\n\
            Defaults match deploy/daemonset.yaml. exit status of --check: 0 chained and installed.",
    positional: None,
    flags: &[
        Flag::value(
            "cni-conf-dir",
            "DIR",
            "the runtime's CNI conf dir (default /host/etc/cni/net.d)",
        ),
        Flag::value(
            "cni-bin-dir",
            "DIR",
            "the runtime's CNI bin dir (default /host/opt/cni/bin)",
        ),
        Flag::value(
            "plugin-config",
            "FILE",
            "the egress-guard conflist entry to chain (default /etc/egress-guard/plugin.json)",
        ),
        Flag::value(
            "binary",
            "FILE",
            "the binary to copy (default this executable)",
        ),
        Flag::value(
            "host-root",
            "DIR",
            "where the host's file system is mounted (default /host)",
        ),
        Flag::value("node-name", "NAME", "this node (default $NODE_NAME)"),
        Flag::value(
            "kubeconfig",
            "FILE",
            "the installer's own API access (default in-cluster credentials)",
        ),
        Flag::value(
            "api-server",
            "URL",
            "the server written into the plugin's kubeconfig",
        ),
        Flag::value(
            "service-account-dir",
            "DIR",
            "the mounted ServiceAccount token and CA",
        ),
        Flag::value(
            "log-level",
            "LEVEL",
            "error, warn, info (default), debug or trace",
        ),
        Flag::switch("uninstall-on-exit", "remove the chained entry on SIGTERM"),
        Flag::switch("once", "install, chain, mark the node ready and exit"),
        Flag::switch(
            "check",
            "exit 0 iff chained and installed (the readiness probe)",
        ),
        Flag::switch(
            "uninstall",
            "remove the chained entry, the kubeconfig and the binary",
        ),
    ],
};

/// `egress-guard agent`.
pub const AGENT: Command = Command {
    name: "agent",
    summary: "node agent: deny telemetry, metrics, drift repair, garbage collection",
    notes: "Explicit --state-dir and --nflog-group win over the plugin config, in any order.",
    positional: None,
    flags: &[
        Flag::value(
            "plugin-config",
            "FILE",
            "the egress-guard conflist entry (plugin.json); its stateDir and nflogGroup\n\
             are the defaults of --state-dir (/run/egress-guard) and --nflog-group (100)",
        ),
        Flag::value("state-dir", "DIR", "the plugin's state directory"),
        Flag::value(
            "nflog-group",
            "N",
            "the NFLOG group the rules log to (0-65535)",
        ),
        Flag::value(
            "node-name",
            "NAME",
            "node name in records (default $NODE_NAME, else the host name)",
        ),
        Flag::value(
            "metrics-address",
            "ADDR",
            "where /metrics is served (default 0.0.0.0:9617; off disables)",
        ),
        Flag::value(
            "interval",
            "SECS",
            "seconds between reconciliations (default 30)",
        ),
        Flag::value(
            "flush-interval",
            "SECS",
            "seconds over which identical flows are aggregated (default 10)",
        ),
        Flag::switch("repair", "reinstall tables that drifted from their policy"),
        Flag::value(
            "kubeconfig",
            "FILE",
            "API access to find unguarded pods on this node (default: in-cluster\n\
             credentials when running in a pod; without either, no such check)",
        ),
        Flag::value(
            "unguarded-interval",
            "SECS",
            "seconds between checks for unguarded pods (default 60)",
        ),
        Flag::switch(
            "evict-unguarded",
            "evict unguarded pods (Eviction API) so they restart guarded",
        ),
        Flag::value(
            "log-file",
            "FILE",
            "where the agent's own log goes (default stderr)",
        ),
        Flag::value(
            "log-level",
            "LEVEL",
            "error, warn, info (default), debug or trace",
        ),
    ],
};

/// `egress-guard suggest`.
pub const SUGGEST: Command = Command {
    name: "suggest",
    summary: "the smallest allow annotation per pod that covers its recorded flows",
    notes: "Reads egress-guard.flow/v1 JSON lines (the agent's output) from FILEs, or stdin when\n\
            none are given; other lines are skipped and counted on stderr. Warnings (metadata\n\
            endpoint, node addresses, public addresses, DNS) go to stderr, or into --json.\n\
            exit status: 0 printed, 2 bad input",
    positional: Some("FILE..."),
    flags: &[
        Flag::switch(
            "json",
            "print {\"pods\":[{namespace, pod, allow, flows, warnings}]}",
        ),
        Flag::value(
            "config",
            "ENTRY.json",
            "the conflist entry: flows its networks hold become @name entries",
        ),
        Flag::value("namespace", "NS", "only pods of this namespace"),
        Flag::value("pod", "NAME", "only pods of this name"),
        Flag::repeated(
            "node-address",
            "ADDR",
            "an address of the node, warned about when a pod reaches it",
        ),
        Flag::switch("kubectl", "print the kubectl annotate command for each pod"),
    ],
};

/// `egress-guard explain`.
pub const EXPLAIN: Command = Command {
    name: "explain",
    summary: "whether a pod may open a flow, and which entry (or the default deny) decides",
    notes: "Compiles the pod's table as ADD does and runs the flow's first packet through it.\n\
            exit status: 0 allowed, 1 blocked (in audit mode: not allowed, passes and is logged),\n\
            2 bad input (the message names the flag, field or entry)",
    positional: None,
    flags: &[
        Flag::value(
            "config",
            "ENTRY.json",
            "the egress-guard conflist entry, or a whole conflist holding one (required)",
        ),
        Flag::repeated("annotations", "FILE", "a JSON object of pod annotations"),
        Flag::repeated("annotation", "KEY=VALUE", "one pod annotation"),
        Flag::value(
            "namespace",
            "NS",
            "the pod's namespace (enforceNamespaces, ceilings)",
        ),
        Flag::value("to", "ADDR", "the destination address (required)"),
        Flag::value(
            "proto",
            "PROTO",
            "tcp (default), udp, sctp, icmp, icmpv6 or an IP protocol number",
        ),
        Flag::value(
            "port",
            "PORT",
            "the destination port (required for tcp, udp, sctp); for icmp and icmpv6 the\n\
             message type (default: echo request)",
        ),
        Flag::value(
            "placement",
            "PLACEMENT",
            "host (default), pod or pod-inet, as for render",
        ),
        Flag::value(
            "pod-net",
            "FILE",
            "the pod's identity on its interface, as for render (default: the example pod\n\
             10.22.0.5/24, fd00:22::5/64 behind gateway .1)",
        ),
    ],
};

/// `egress-guard status`.
pub const STATUS: Command = Command {
    name: "status",
    summary: "table of the guarded pods on this node: mode, placement, counters, drift",
    notes: "exit status: 0 every table matches its policy, 1 a table is missing, in drift or \
            unreadable, a state file is unreadable or the state dir does not exist, 2 usage",
    positional: None,
    flags: &[
        Flag::value(
            "plugin-config",
            "FILE",
            "the egress-guard conflist entry; its stateDir is the default state dir",
        ),
        Flag::value(
            "state-dir",
            "DIR",
            "the plugin's state directory (default /run/egress-guard)",
        ),
        Flag::switch("json", "print JSON instead of a table"),
    ],
};

/// `egress-guard report`.
pub const REPORT: Command = Command {
    name: "report",
    summary: "pods that ask for a guard but cannot have one (from the API server)",
    notes: "exit status: 0 no such pods, 1 some exist, 2 error",
    positional: None,
    flags: &[
        Flag::value(
            "kubeconfig",
            "FILE",
            "API access (default $KUBECONFIG, else in-cluster credentials)",
        ),
        Flag::value(
            "plugin-config",
            "FILE",
            "the egress-guard conflist entry (plugin.json): enforceNamespaces, defaultMode",
        ),
        Flag::repeated("enforce-namespace", "NS", "a namespace enforced in addition"),
        Flag::value("default-mode", "MODE", "off, audit or enforce"),
        Flag::value(
            "selector",
            "KEY=VALUE",
            "label of the egress-guard DaemonSet pods (default app.kubernetes.io/name=egress-guard);\n\
             a node counts as chained when such a pod on it is ready",
        ),
        Flag::switch("json", "print JSON instead of a table"),
    ],
};

/// `egress-guard version`.
pub const VERSION: Command = Command {
    name: "version",
    summary: "print the version",
    notes: "",
    positional: None,
    flags: &[],
};

/// `egress-guard help`.
pub const HELP: Command = Command {
    name: "help",
    summary: "print this overview, or a subcommand's help",
    notes: "",
    positional: Some("SUBCOMMAND"),
    flags: &[],
};

/// Every subcommand, in the order the overview lists them.
pub const COMMANDS: [&Command; 9] = [
    &RENDER, &INSTALL, &AGENT, &STATUS, &REPORT, &SUGGEST, &EXPLAIN, &VERSION, &HELP,
];

/// The package version and the build it came from (`0.1.0 (git 1a2b3c4d5e6f, 2026-12-04)`).
pub fn version() -> String {
    format!(
        "{} ({})",
        env!("CARGO_PKG_VERSION"),
        env!("EGRESS_GUARD_BUILD")
    )
}

/// The top-level help.
pub fn overview() -> String {
    let mut out = String::from(
        "egress-guard: chained CNI plugin guarding pod egress with nftables\n\n\
         As a CNI plugin it is run by the container runtime with CNI_COMMAND set.\n\
         usage: egress-guard SUBCOMMAND [FLAGS]   (egress-guard SUBCOMMAND --help for its flags)\n\n\
         subcommands:\n",
    );
    for c in COMMANDS {
        out.push_str(&format!("  {:<8}  {}\n", c.name, c.summary));
    }
    out
}

/// Runs the subcommand named by the first argument (`args` excludes the program name).
pub fn main(args: Vec<OsString>) -> ExitCode {
    let mut args = args.into_iter();
    let Some(first) = args.next() else {
        print!("{}", overview());
        return ExitCode::SUCCESS;
    };
    let rest: Vec<OsString> = args.collect();
    let name = first.to_string_lossy();
    match name.as_ref() {
        "render" => dispatch(&RENDER, rest, render::run),
        "install" => dispatch(&INSTALL, rest, crate::install::run),
        "agent" => dispatch(&AGENT, rest, crate::agent::run),
        "status" => dispatch(&STATUS, rest, crate::agent::status),
        "report" => dispatch(&REPORT, rest, crate::agent::report),
        "suggest" => dispatch(&SUGGEST, rest, suggest::run),
        "explain" => dispatch(&EXPLAIN, rest, explain::run),
        "version" | "--version" => dispatch(&VERSION, rest, |_| {
            println!("egress-guard {}", version());
            Ok(ExitCode::SUCCESS)
        }),
        "help" | "--help" | "-h" => dispatch(&HELP, rest, help),
        other => {
            eprint!(
                "egress-guard: unknown subcommand \"{other}\"\n\n{}",
                overview()
            );
            ExitCode::from(2)
        }
    }
}

fn help(p: &Parsed) -> Result<ExitCode, CliError> {
    match p.positional.as_slice() {
        [] => print!("{}", overview()),
        [name] => {
            let cmd = COMMANDS
                .iter()
                .find(|c| c.name == name)
                .ok_or_else(|| CliError::usage(format!("unknown subcommand \"{name}\"")))?;
            print!("{}", cmd.usage());
        }
        _ => return Err(CliError::usage("help takes one subcommand")),
    }
    Ok(ExitCode::SUCCESS)
}

/// Parses `args` for `cmd` and runs `body`: help on stdout (exit 0), a usage error on stderr
/// with the usage (exit 2), else `body`'s exit code.
pub fn dispatch(
    cmd: &Command,
    args: Vec<OsString>,
    body: impl FnOnce(&Parsed) -> Result<ExitCode, CliError>,
) -> ExitCode {
    match cmd.parse(args).and_then(|p| body(&p)) {
        Ok(code) => code,
        Err(CliError::Help) => {
            print!("{}", cmd.usage());
            ExitCode::SUCCESS
        }
        Err(CliError::Usage(problem)) => {
            eprint!("egress-guard {}: {problem}\n\n{}", cmd.name, cmd.usage());
            ExitCode::from(2)
        }
    }
}

/// Parses a log level flag's value.
pub fn log_level(flag: &str, v: &str) -> Result<log::LevelFilter, CliError> {
    use log::LevelFilter as L;
    Ok(match v {
        "error" => L::Error,
        "warn" => L::Warn,
        "info" => L::Info,
        "debug" => L::Debug,
        "trace" => L::Trace,
        _ => {
            return Err(CliError::usage(format!(
                "--{flag} \"{v}\" is not error, warn, info, debug or trace"
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid value for each placeholder used in the commands above.
    fn value_for(placeholder: &str, plugin_config: &str) -> String {
        match placeholder {
            "FILE" => plugin_config.to_string(),
            "LEVEL" => "debug".into(),
            "SECS" => "1.5".into(),
            "N" => "7".into(),
            "ADDR" => "127.0.0.1:0".into(),
            "MODE" => "audit".into(),
            "KEY=VALUE" => "k=v".into(),
            "PLACEMENT" => "pod".into(),
            _ => "x".into(),
        }
    }

    /// Every command line with every declared flag once (exclusive modes: the first).
    fn every_flag(cmd: &Command, plugin_config: &str) -> Vec<String> {
        let mut out = Vec::new();
        for f in cmd.flags {
            if cmd.name == "install" && matches!(f.name, "check" | "uninstall") {
                continue;
            }
            match f.value {
                Some(p) => out.push(format!("--{}={}", f.name, value_for(p, plugin_config))),
                None => out.push(format!("--{}", f.name)),
            }
        }
        out
    }

    #[test]
    fn every_declared_flag_is_interpreted() {
        let cfg = std::env::temp_dir().join(format!("eg-cli-cfg-{}.json", std::process::id()));
        std::fs::write(&cfg, r#"{"stateDir":"/run/eg-cli","nflogGroup":5}"#).unwrap();
        let cfg_s = cfg.to_str().unwrap();
        let parse = |cmd: &Command| cmd.parse(every_flag(cmd, cfg_s)).unwrap();
        let agent = crate::agent::parse_options(&parse(&AGENT)).unwrap();
        assert_eq!(agent.nflog_group, 7, "explicit flag over the plugin config");
        assert_eq!(agent.log_level, log::LevelFilter::Debug);
        let install = crate::install::Options::from_flags(&parse(&INSTALL)).unwrap();
        assert!(install.uninstall_on_exit && install.plugin_config_required);
        let (dir, json) = crate::agent::status::parse(&parse(&STATUS)).unwrap();
        assert_eq!((dir.to_str(), json), (Some("x"), true));
        let report = crate::agent::report::parse(&parse(&REPORT)).unwrap();
        assert!(report.json);
        assert!(render::Args::from_flags(&parse(&RENDER)).is_ok());
        let _ = std::fs::remove_file(&cfg);
    }

    #[test]
    fn install_modes_exclude_each_other() {
        let p = INSTALL.parse(["--once", "--check"]).unwrap();
        assert!(matches!(
            crate::install::Options::from_flags(&p),
            Err(CliError::Usage(m)) if m.contains("exclude each other")
        ));
    }

    #[test]
    fn overview_names_every_subcommand() {
        let o = overview();
        for c in COMMANDS {
            assert!(
                o.contains(&format!("  {:<8}  {}\n", c.name, c.summary)),
                "{o}"
            );
        }
    }
}
