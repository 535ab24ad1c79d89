//! egress-guard: one static binary. With CNI_COMMAND set it is the CNI plugin; otherwise the
//! first argument picks a subcommand. All logic lives in the library.

use std::process::ExitCode;

const USAGE: &str = "egress-guard: chained CNI plugin guarding pod egress with nftables

As a CNI plugin: run by the container runtime with CNI_COMMAND set.
Subcommands:
  render    print the nft ruleset a conflist entry and annotations would install
  install   chain egress-guard into the node's CNI configuration (DaemonSet)
  agent     node agent: deny telemetry, metrics, drift repair, garbage collection
  status    table of the guarded pods on this node
  report    pods that ask for a guard but cannot have one (from the API server)
  version   print the version";

fn main() -> ExitCode {
    if std::env::var_os("CNI_COMMAND").is_some() {
        return egress_guard::cli::run_plugin();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or(&[]);
    match args.first().map(String::as_str) {
        Some("render") => egress_guard::cli::render_command(rest),
        Some("install") => egress_guard::install::run(rest),
        Some("agent") => egress_guard::agent::run(rest),
        Some("status") => egress_guard::agent::status(rest),
        Some("report") => egress_guard::agent::report(rest),
        Some("version") | Some("--version") => {
            println!("egress-guard {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("help") | Some("--help") | Some("-h") | None => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("egress-guard: unknown subcommand \"{other}\"\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
