//! cargo-fuzz target `cni_args`: the checks live in tests/hostile/targets.rs (shared with the
//! stable loop in tests/hostile.rs). Seeds: tests/fuzz_corpus/cni_args.
#![no_main]

#[path = "../../tests/hostile/targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::cni_args(data));
