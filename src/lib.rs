//! egress-guard: a chained CNI plugin that installs a per-pod default-deny egress policy in
//! nf_tables over netlink. The library holds all logic; `main.rs` only dispatches.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod agent;
pub mod cli;
pub mod cni;
pub mod guard;
pub mod install;
pub mod kernel;
pub mod kube;
pub mod logging;
pub mod netlink;
pub mod policy;
pub mod ruleset;
pub mod signal;
pub mod spelling;
