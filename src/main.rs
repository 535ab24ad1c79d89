//! egress-guard: one static binary. With CNI_COMMAND set it is the CNI plugin; otherwise the
//! first argument picks a subcommand (`egress-guard help`). All logic lives in the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::var_os("CNI_COMMAND").is_some() {
        return egress_guard::cli::run_plugin();
    }
    egress_guard::cli::main(std::env::args_os().skip(1).collect())
}
