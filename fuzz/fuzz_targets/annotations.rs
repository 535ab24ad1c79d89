//! cargo-fuzz target `annotations`: the checks live in tests/hostile/targets.rs (shared with the
//! stable loop in tests/hostile.rs). Seeds: tests/fuzz_corpus/annotations.
#![no_main]

#[path = "../../tests/hostile/targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::annotations(data));
