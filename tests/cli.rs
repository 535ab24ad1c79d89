//! The command line as an operator meets it, through the binary: every subcommand answers
//! `--help` with its usage on stdout and exit 0, takes `--flag value` and `--flag=value` alike,
//! and reports a bad flag with the usage on stderr and exit 2. Needs no root.
#![allow(clippy::unwrap_used)]

use std::ffi::OsStr;
use std::process::{Command, Output};

const SUBCOMMANDS: [&str; 9] = [
    "render", "install", "agent", "status", "report", "suggest", "explain", "version", "help",
];

fn eg<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(env!("CARGO_BIN_EXE_egress-guard"))
        .args(args)
        .env_remove("CNI_COMMAND")
        .env("NODE_NAME", "cli-test-node")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn every_subcommand_prints_its_help_on_stdout_and_exits_0() {
    for sub in SUBCOMMANDS {
        for help in ["--help", "-h"] {
            let out = eg([sub, help]);
            let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
            assert_eq!(out.status.code(), Some(0), "{sub} {help}: {stderr}");
            assert!(
                stdout.starts_with(&format!("usage: egress-guard {sub}")),
                "{sub} {help}: {stdout}"
            );
            assert!(stdout.contains("--help"), "{sub} {help}: {stdout}");
            assert!(stderr.is_empty(), "{sub} {help}: {stderr}");
        }
        // `help SUBCOMMAND` prints the same text.
        assert_eq!(
            eg(["help", sub]).stdout,
            eg([sub, "--help"]).stdout,
            "{sub}"
        );
    }
}

#[test]
fn a_bad_flag_gets_the_usage_on_stderr_and_exit_2_everywhere() {
    for sub in SUBCOMMANDS {
        for bad in ["--bogus", "--bogus=1", "-x"] {
            let out = eg([sub, bad]);
            let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
            assert_eq!(out.status.code(), Some(2), "{sub} {bad}: {stderr}");
            assert!(stdout.is_empty(), "{sub} {bad}: {stdout}");
            let flag = bad.split('=').next().unwrap();
            assert!(
                stderr.starts_with(&format!("egress-guard {sub}: unknown flag {flag}")),
                "{sub} {bad}: {stderr}"
            );
            assert!(
                stderr.contains(&format!("\nusage: egress-guard {sub}")),
                "{sub} {bad}: {stderr}"
            );
        }
    }
}

#[test]
fn a_missing_or_bad_value_is_a_usage_error_in_both_spellings() {
    let cases: [(&[&str], &str); 8] = [
        (&["agent", "--interval"], "--interval needs a value (SECS)"),
        (
            &["agent", "--interval", "0"],
            "--interval \"0\" is not a number of seconds",
        ),
        (
            &["agent", "--interval=0"],
            "--interval \"0\" is not a number of seconds",
        ),
        (
            &["agent", "--log-level=loud"],
            "--log-level \"loud\" is not error, warn",
        ),
        (
            &["install", "--log-level", "loud"],
            "--log-level \"loud\" is not error, warn",
        ),
        (&["install", "--once", "--check"], "exclude each other"),
        (
            &["report", "--selector=nokey"],
            "--selector \"nokey\" is not KEY=VALUE",
        ),
        (
            &["render", "--placement=moon"],
            "--placement \"moon\" is not host, pod or pod-inet",
        ),
    ];
    for (args, want) in cases {
        let out = eg(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(
            stderr.contains("\nusage: egress-guard "),
            "{args:?}: {stderr}"
        );
    }
    // A switch given a value, and a single flag given twice.
    for (args, want) in [
        (&["status", "--json=yes"][..], "--json"),
        (
            &["status", "--state-dir", "a", "--state-dir", "b"],
            "--state-dir given twice",
        ),
    ] {
        let out = eg(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            text(&out.stderr).contains(want),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn flag_equals_value_means_the_same_as_flag_space_value() {
    let dir = std::env::temp_dir().join(format!("eg-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let entry = dir.join("entry.json");
    std::fs::write(
        &entry,
        r#"{"type":"egress-guard","defaultMode":"enforce","networks":{}}"#,
    )
    .unwrap();
    let entry = entry.to_str().unwrap();
    let spaced = eg([
        "render",
        "--config",
        entry,
        "--placement",
        "pod",
        "--annotation",
        "egress-guard.io/allow=10.0.5.0/24 tcp 8443",
    ]);
    let joined = eg([
        "render",
        &format!("--config={entry}"),
        "--placement=pod",
        "--annotation=egress-guard.io/allow=10.0.5.0/24 tcp 8443",
    ]);
    assert_eq!(spaced.status.code(), Some(0), "{}", text(&spaced.stderr));
    assert!(
        text(&spaced.stdout).contains("10.0.5.0/24"),
        "{}",
        text(&spaced.stdout)
    );
    assert_eq!(spaced.stdout, joined.stdout);
    assert_eq!(joined.status.code(), Some(0), "{}", text(&joined.stderr));
    // status reads the state dir given either way (an empty one here).
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let a = eg(["status", "--json", "--state-dir", state.to_str().unwrap()]);
    let b = eg([
        "status",
        "--json",
        &format!("--state-dir={}", state.display()),
    ]);
    assert_eq!(a.status.code(), b.status.code());
    assert_eq!(text(&a.stdout).trim(), "[]", "{}", text(&a.stderr));
    assert_eq!(a.stdout, b.stdout);
    assert_eq!(a.status.code(), Some(0), "an empty state dir is no error");
    // A state dir that does not exist is not "no guarded pods".
    let gone = dir.join("no-such-state");
    let out = eg(["status", "--state-dir", gone.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).is_empty(), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("does not exist") && text(&out.stderr).contains("no-such-state"),
        "{}",
        text(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn top_level_overview_unknown_subcommand_and_version() {
    for args in [&[][..], &["help"], &["--help"], &["-h"]] {
        let out = eg(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let stdout = text(&out.stdout);
        for sub in SUBCOMMANDS {
            assert!(
                stdout.contains(&format!("\n  {sub:<8}  ")),
                "{args:?}: {stdout}"
            );
        }
    }
    let out = eg(["lunch"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).starts_with("egress-guard: unknown subcommand \"lunch\""));
    let out = eg(["help", "lunch"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown subcommand \"lunch\""));
    let out = eg(["version"]);
    assert_eq!(out.status.code(), Some(0));
    let printed = text(&out.stdout);
    assert!(
        printed.starts_with(&format!("egress-guard {} (", env!("CARGO_PKG_VERSION")))
            && printed.ends_with(")\n"),
        "{printed}"
    );
    // From a git checkout the build names its commit.
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| text(&o.stdout).trim().to_string());
    match head {
        Some(commit) if std::env::var_os("EGRESS_GUARD_BUILD").is_none() => {
            assert!(
                printed.contains(&format!("(git {commit}")),
                "{printed} vs {commit}"
            )
        }
        _ => eprintln!("version: not built from a git checkout; commit not checked"),
    }
    assert_eq!(eg(["--version"]).stdout, out.stdout);
    assert_eq!(eg(["version", "--bogus"]).status.code(), Some(2));
}

#[test]
fn arguments_that_are_not_utf8_are_an_error_not_a_panic() {
    use std::os::unix::ffi::OsStrExt;
    let bad = OsStr::from_bytes(b"--state-dir=\xff\xfe");
    let out = eg([OsStr::new("status"), bad]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("not valid UTF-8"),
        "{}",
        text(&out.stderr)
    );
    let out = eg([OsStr::new("help"), OsStr::from_bytes(b"\xff")]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn suggest_reads_flow_records_from_files_and_stdin() {
    let dir = std::env::temp_dir().join(format!("eg-suggest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let records = dir.join("flows.jsonl");
    std::fs::write(
        &records,
        [
            r#"{"schema":"egress-guard.flow/v1","namespace":"ml","pod":"llm-0","dst":"10.0.5.1","protocol":"tcp","dport":8443}"#,
            r#"{"schema":"egress-guard.flow/v1","namespace":"ml","pod":"llm-0","dst":"10.0.5.1","protocol":"tcp","dport":8444}"#,
            r#"{"schema":"egress-guard.flow/v1","namespace":"ml","pod":"llm-0","dst":"10.96.0.10","protocol":"udp","dport":53}"#,
            r#"{"schema":"egress-guard.flow/v1","namespace":"ml","pod":"llm-0","dst":"169.254.169.254","protocol":"tcp","dport":80}"#,
            "garbage",
        ]
        .join("\n"),
    )
    .unwrap();
    let config = dir.join("entry.json");
    std::fs::write(&config, r#"{"networks":{"dns":["10.96.0.10 udp 53"]}}"#).unwrap();
    let out = eg([
        OsStr::new("suggest"),
        OsStr::new("--json"),
        OsStr::new("--config"),
        config.as_os_str(),
        records.as_os_str(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pod = &doc["pods"][0];
    assert_eq!(pod["namespace"], "ml");
    assert_eq!(pod["pod"], "llm-0");
    assert_eq!(
        pod["allow"],
        "10.0.5.1 tcp 8443-8444, 169.254.169.254 tcp 80, @dns"
    );
    assert_eq!(pod["flows"], 4);
    let warnings = pod["warnings"].to_string();
    assert!(
        warnings.contains("metadata") && warnings.contains("DNS"),
        "{warnings}"
    );
    assert!(
        text(&out.stderr).contains("skipped 1 line"),
        "{}",
        text(&out.stderr)
    );
    // From stdin, as text, and as a kubectl command.
    let piped = |args: &[&str]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_egress-guard"))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(&std::fs::read(&records).unwrap())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = piped(&["suggest"]);
    assert_eq!(
        text(&out.stdout),
        "ml/llm-0: 10.0.5.1 tcp 8443-8444, 10.96.0.10 udp 53, 169.254.169.254 tcp 80\n"
    );
    assert!(
        text(&out.stderr).contains("review 169.254.169.254"),
        "{}",
        text(&out.stderr)
    );
    let out = piped(&["suggest", "--kubectl", "--pod", "llm-0"]);
    assert!(
        text(&out.stdout).starts_with("kubectl -n ml annotate pod llm-0 --overwrite 'egress-guard.io/allow=10.0.5.1 tcp 8443-8444"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        eg(["suggest", "--node-address", "nope"]).status.code(),
        Some(2)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn explain_exits_0_allowed_1_blocked_2_bad_input() {
    let dir = std::env::temp_dir().join(format!("eg-explain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("entry.json");
    std::fs::write(
        &config,
        r#"{"type":"egress-guard","cniVersion":"1.0.0","name":"k8s",
            "capabilities":{"io.kubernetes.cri.pod-annotations":true},
            "networks":{"orchestrator":["10.0.5.0/24 tcp 8443"]}}"#,
    )
    .unwrap();
    let ann = dir.join("ann.json");
    std::fs::write(
        &ann,
        r#"{"egress-guard.io/mode":"enforce","egress-guard.io/allow":"@orchestrator, 198.51.100.7 udp 53"}"#,
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let a = ann.to_str().unwrap();
    let explain = |more: &[&str]| {
        let mut args = vec!["explain", "--config", cfg, "--annotations", a];
        args.extend_from_slice(more);
        eg(args)
    };
    let out = explain(&["--to", "10.0.5.3", "--port", "8443"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.starts_with("allowed: tcp to 10.0.5.3 port 8443\n"),
        "{said}"
    );
    assert!(said.contains("entry 1 \"@orchestrator\""), "{said}");
    let out = explain(&["--to", "198.51.100.7", "--proto", "udp", "--port", "53"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("entry 2 \"198.51.100.7 udp 53\""));
    let out = explain(&["--to=198.51.100.7", "--proto=tcp", "--port=53"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("the default deny"));
    for (bad, says) in [
        (&["--port", "53"][..], "--to is required"),
        (&["--to", "10.0.5"], "--to \"10.0.5\" is not an IP address"),
        (&["--to", "10.0.5.3"], "--port is required with tcp"),
        (
            &["--to", "10.0.5.3", "--port", "70000"],
            "--port \"70000\" is not a number from 0 to 65535",
        ),
        (
            &["--to", "10.0.5.3", "--proto", "gre", "--port", "1"],
            "--proto \"gre\" is not",
        ),
        (
            &["--to", "10.0.5.3", "--proto", "47", "--port", "1"],
            "--port is not allowed with 47",
        ),
        (&["--to", "fd00::1", "--proto", "icmp"], "use icmpv6"),
    ] {
        let out = explain(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(
            text(&out.stderr).contains(says),
            "{bad:?}: {}",
            text(&out.stderr)
        );
    }
    // Bad input in the files: the field or the entry is named.
    std::fs::write(
        &ann,
        r#"{"egress-guard.io/mode":"enforce","egress-guard.io/allow":"10.0.5.0/33"}"#,
    )
    .unwrap();
    let out = explain(&["--to", "10.0.5.3", "--port", "8443"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("10.0.5.0/33"),
        "{}",
        text(&out.stderr)
    );
    std::fs::write(&config, r#"{"type":"egress-guard","netwroks":{}}"#).unwrap();
    let out = explain(&["--to", "10.0.5.3", "--port", "8443"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("netwroks"),
        "{}",
        text(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
