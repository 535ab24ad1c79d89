//! Build identity for `egress-guard version`: `EGRESS_GUARD_BUILD` from the environment (an
//! image build passes it), else the git commit of the source tree, else "unknown".
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=EGRESS_GUARD_BUILD");
    let build = std::env::var("EGRESS_GUARD_BUILD")
        .ok()
        .filter(|b| !b.is_empty())
        .or_else(|| {
            let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
            let date = git(&["show", "-s", "--format=%cs", "HEAD"]).unwrap_or_default();
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some();
            // Rebuild when HEAD moves (a worktree's .git is a file naming the real dir).
            if let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]) {
                println!("cargo:rerun-if-changed={head}");
            }
            if let Some(refs) = git(&["rev-parse", "--git-path", "refs/heads"]) {
                println!("cargo:rerun-if-changed={refs}");
            }
            Some(format!(
                "git {commit}{}{}",
                if dirty { "-dirty" } else { "" },
                if date.is_empty() {
                    String::new()
                } else {
                    format!(", {date}")
                }
            ))
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=EGRESS_GUARD_BUILD={build}");
}
