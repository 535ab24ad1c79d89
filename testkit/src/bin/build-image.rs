//! `build-image BINARY OUTDIR`: packs a statically linked egress-guard binary as the
//! DaemonSet's image (an OCI image-layout tarball for `ctr images import`), without Docker, a
//! registry or a base image. `install/build-image.sh` builds the binary and calls this.
use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [binary, out] = args.as_slice() else {
        eprintln!("usage: build-image BINARY OUTDIR");
        return ExitCode::from(2);
    };
    match egress_guard_testkit::cri::image::build_egress_guard(Path::new(out), Path::new(binary)) {
        Ok(tarball) => {
            println!("{}", tarball.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("build-image: {e}");
            ExitCode::FAILURE
        }
    }
}
