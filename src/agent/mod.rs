//! `egress-guard agent`, `status` and `report`: node telemetry and coverage (issue 5).

use std::process::ExitCode;

/// Entry point of the `agent` subcommand; `args` excludes the program and subcommand names.
pub fn run(_args: &[String]) -> ExitCode {
    eprintln!("egress-guard agent: not implemented yet");
    ExitCode::from(2)
}

/// Entry point of the `status` subcommand.
pub fn status(_args: &[String]) -> ExitCode {
    eprintln!("egress-guard status: not implemented yet");
    ExitCode::from(2)
}

/// Entry point of the `report` subcommand.
pub fn report(_args: &[String]) -> ExitCode {
    eprintln!("egress-guard report: not implemented yet");
    ExitCode::from(2)
}
