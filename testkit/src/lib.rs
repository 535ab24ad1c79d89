//! Test helpers of egress-guard, shared by its integration tests, its benchmarks and the demo:
//!
//! - [`common`]: root gating with visible skips, network namespaces and veths, a node built
//!   from namespaces with the reference CNI plugins, conflist chains, packet probes.
//! - [`cri`]: one containerd node driven through its CRI with a CNI chain, and a pause image
//!   built here.

pub mod common;
pub mod cri;
pub mod fakeapi;
