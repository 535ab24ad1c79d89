//! What each CNI verb does: the protocol's checks, the pod's policy from its annotations, then
//! the guard (`crate::guard`), which is the only code that changes the node. Generic over
//! `Kernel`, so the whole flow runs against the recording fake in unit tests and against
//! netlink in production. Fails closed: on any error ADD leaves nothing of its own installed
//! and returns an error naming the pod, the field and the value.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::{json, Value};

use super::config::{NetConf, PlacementPref, Unknown};
use super::{
    code, parse_cni_args, valid_container_id, version_at_least, CniError, Env, PodIdentity, Verb,
    SUPPORTED_VERSIONS,
};
use super::{identity, policy};
use crate::guard::place::{PlaceInputs, PrevInterface};
use crate::guard::{self, Attachment, Guard};
use crate::kernel::{Kernel, Where};
use crate::logging::{rfc3339, VerbRecord};
use crate::policy::Mode;
use crate::ruleset::Family;

pub use super::policy::FetchPod;

/// Everything one invocation needs.
pub struct Invocation<'a, K: Kernel> {
    pub kernel: &'a mut K,
    pub env: &'a Env,
    pub stdin: &'a [u8],
    pub fetch_pod: FetchPod<'a>,
}

/// The outcome of one invocation: what to print on success (if anything) or the error, plus
/// the log record.
pub struct VerbOutcome {
    pub result: Result<Option<Value>, CniError>,
    pub record: VerbRecord,
    pub cni_version: String,
    pub log_file: Option<PathBuf>,
    pub log_level: log::LevelFilter,
    /// The state dir of the configuration, once it parsed (where failed ADDs are recorded).
    pub state_dir: Option<PathBuf>,
}

struct Ctx<'a, K: Kernel> {
    kernel: &'a mut K,
    env: &'a Env,
    conf: NetConf,
    pod: PodIdentity,
    fetch_pod: FetchPod<'a>,
}

impl<K: Kernel> Ctx<'_, K> {
    /// The guard for this invocation's node, naming `subject` in its messages.
    fn guard(&mut self, subject: &str) -> Guard<'_, K> {
        Guard::new(self.kernel, &self.conf.state_dir, subject.to_string())
    }
}

fn require<'e>(value: &'e Option<String>, var: &str) -> Result<&'e str, CniError> {
    match value.as_deref() {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(CniError::new(
            code::INVALID_ENV,
            format!("environment variable {var} is not set"),
        )),
    }
}

fn container_id(env: &Env) -> Result<&str, CniError> {
    let cid = require(&env.container_id, "CNI_CONTAINERID")?;
    if !valid_container_id(cid) {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_CONTAINERID \"{cid}\" is not valid (letters, digits, '_', '.', '-', at most 200)"),
        ));
    }
    Ok(cid)
}

fn ifname(env: &Env) -> Result<&str, CniError> {
    let name = require(&env.ifname, "CNI_IFNAME")?;
    if name.len() > 15 || name.contains('/') || name.chars().any(char::is_whitespace) {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("CNI_IFNAME \"{name}\" is not a valid interface name"),
        ));
    }
    Ok(name)
}

/// The attachment ADD and CHECK act on, its netns, and how messages name it.
struct VerbTarget {
    att: Attachment,
    netns: String,
    subject: String,
}

fn verb_target(env: &Env, pod: &PodIdentity) -> Result<VerbTarget, CniError> {
    let cid = container_id(env)?.to_string();
    Ok(VerbTarget {
        subject: guard::subject(pod, &cid),
        netns: require(&env.netns, "CNI_NETNS")?.to_string(),
        att: Attachment {
            container_id: cid,
            ifname: ifname(env)?.to_string(),
        },
    })
}

/// The pod's placement inputs from the configuration (prevResult's view of its interface).
fn place_inputs<'c>(
    conf: &'c NetConf,
    netns: &'c str,
    hints: &'c [String],
    prev: &'c PrevInterface,
) -> PlaceInputs<'c> {
    PlaceInputs {
        netns,
        pref: conf.placement,
        host_hints: hints,
        prev,
    }
}

fn prev_interface(conf: &NetConf, ifname: &str) -> Result<PrevInterface, CniError> {
    match &conf.prev_result {
        Some(p) => identity::prev_interface(p, ifname),
        None => Ok(PrevInterface::default()),
    }
}

fn add<K: Kernel>(ctx: &mut Ctx<'_, K>, rec: &mut VerbRecord) -> Result<Option<Value>, CniError> {
    let t = verb_target(ctx.env, &ctx.pod)?;
    let prev = ctx.conf.prev_result.clone().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("{}: prevResult is missing: egress-guard is a chained plugin and must come after the interface plugin in a conflist", t.subject),
        )
    })?;
    let policy = policy::pod_policy(&ctx.conf, &ctx.pod, ctx.fetch_pod, &t.subject)?;
    rec.mode = Some(policy.mode.to_string());
    rec.entries = Some(policy.entries.len());
    let hints = ctx.conf.host_interface_hints();

    if policy.mode == Mode::Off {
        if ctx.conf.placement != PlacementPref::Pod {
            ctx.guard(&t.subject)
                .clear_for_unguarded(&t.att, &t.netns, &hints)?;
        }
        log::info!(
            "{}: mode off ({:?}), nothing installed",
            t.subject,
            policy.mode_source
        );
        return Ok(Some(prev));
    }

    let prev_if = prev_interface(&ctx.conf, &t.att.ifname)?;
    let inputs = place_inputs(&ctx.conf, &t.netns, &hints, &prev_if);
    let group = ctx.conf.deny_log();
    let state_dir = ctx.conf.state_dir.clone();
    let mut guard = Guard::new(ctx.kernel, &state_dir, t.subject.clone());
    let Some(plan) = guard.plan(&t.att, &inputs, &policy, group)? else {
        return Ok(Some(prev));
    };
    note_plan(rec, &plan);
    guard.apply(&t.att, &t.netns, &plan, &policy, &ctx.pod, group)?;
    log::info!(
        "{}: {} egress policy installed ({} entries, {} placement)",
        t.subject,
        policy.mode,
        policy.entries.len(),
        plan.placed.attach.placement().as_str()
    );
    Ok(Some(prev))
}

/// Notes the placement and table in the verb record.
fn note_plan(rec: &mut VerbRecord, plan: &crate::guard::Plan) {
    rec.placement = Some(plan.placed.attach.placement().as_str().to_string());
    rec.table = Some(format!("{} {}", plan.table.family.name(), plan.table.name));
    rec.device = plan.placed.host_link.as_ref().map(|h| h.name.clone());
}

fn del<K: Kernel>(ctx: &mut Ctx<'_, K>, _rec: &mut VerbRecord) -> Result<Option<Value>, CniError> {
    let cid = container_id(ctx.env)?.to_string();
    let subject = guard::subject(&ctx.pod, &cid);
    // Runtimes always set CNI_IFNAME on DEL; without it, assume the main interface.
    let att = Attachment {
        container_id: cid,
        ifname: ctx.env.ifname.clone().unwrap_or_default(),
    };
    let netns = ctx.env.netns.clone();
    let removed = ctx.guard(&subject).remove(&att, netns.as_deref())?;
    log::info!(
        "{subject}: DEL removed host table: {}, pod table: {}",
        removed.host_table,
        removed.pod_table
    );
    Ok(None)
}

fn check<K: Kernel>(ctx: &mut Ctx<'_, K>, rec: &mut VerbRecord) -> Result<Option<Value>, CniError> {
    let t = verb_target(ctx.env, &ctx.pod)?;
    let policy = policy::pod_policy(&ctx.conf, &ctx.pod, ctx.fetch_pod, &t.subject)?;
    rec.mode = Some(policy.mode.to_string());
    rec.entries = Some(policy.entries.len());
    if policy.mode == Mode::Off {
        return match ctx.guard(&t.subject).installed_unasked(&t.att)? {
            Some(name) => Err(CniError::new(
                code::DRIFT,
                format!(
                    "{}: mode is off but table netdev {name} is installed",
                    t.subject
                ),
            )),
            None => Ok(None),
        };
    }
    let hints = ctx.conf.host_interface_hints();
    let prev_if = prev_interface(&ctx.conf, &t.att.ifname)?;
    let inputs = place_inputs(&ctx.conf, &t.netns, &hints, &prev_if);
    let (group, state_dir) = (ctx.conf.deny_log(), ctx.conf.state_dir.clone());
    let mut guard = Guard::new(ctx.kernel, &state_dir, t.subject.clone());
    let Some(plan) = guard.plan(&t.att, &inputs, &policy, group)? else {
        return Ok(None);
    };
    note_plan(rec, &plan);
    let problems = guard.drift(&t.att, &t.netns, &plan)?;
    if problems.is_empty() {
        return Ok(None);
    }
    Err(CniError::new(
        code::DRIFT,
        format!(
            "{}: installed egress policy differs from the pod's policy: {}",
            t.subject,
            problems.join("; ")
        ),
    ))
}

fn gc<K: Kernel>(ctx: &mut Ctx<'_, K>, _rec: &mut VerbRecord) -> Result<Option<Value>, CniError> {
    let Some(valid) = ctx.conf.valid_attachments.clone() else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "GC needs \"cni.dev/valid-attachments\" in the configuration",
        ));
    };
    let removed = ctx.guard("GC").collect_garbage(&valid)?;
    log::info!(
        "GC removed {} table(s): {}",
        removed.len(),
        removed.join(", ")
    );
    Ok(None)
}

fn status<K: Kernel>(
    ctx: &mut Ctx<'_, K>,
    _rec: &mut VerbRecord,
) -> Result<Option<Value>, CniError> {
    ctx.kernel
        .tables(Where::Host, Family::Netdev)
        .map_err(|e| CniError::new(code::NOT_AVAILABLE, format!("nf_tables is not usable: {e}")))?;
    Ok(None)
}

/// Runs one CNI invocation end to end (without printing).
pub fn run<K: Kernel>(inv: Invocation<'_, K>) -> VerbOutcome {
    let started = Instant::now();
    let mut rec = VerbRecord {
        time: rfc3339(std::time::SystemTime::now()),
        verb: inv.env.command.clone(),
        container_id: inv.env.container_id.clone().unwrap_or_default(),
        ..Default::default()
    };
    let mut outcome = VerbOutcome {
        result: Ok(None),
        record: VerbRecord::default(),
        cni_version: "1.1.0".to_string(),
        log_file: None,
        log_level: log::LevelFilter::Warn,
        state_dir: None,
    };
    outcome.result = (|| {
        let verb = Verb::parse(&inv.env.command).ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                format!(
                    "CNI_COMMAND \"{}\" is not one of ADD, DEL, CHECK, GC, STATUS, VERSION",
                    inv.env.command
                ),
            )
        })?;
        if verb == Verb::Version {
            let v = super::json::parse_strict(inv.stdin)
                .ok()
                .and_then(|v| {
                    v.get("cniVersion")
                        .and_then(|s| s.as_str())
                        .map(str::to_string)
                })
                .unwrap_or_else(|| "1.1.0".to_string());
            outcome.cni_version = v.clone();
            return Ok(Some(
                json!({ "cniVersion": v, "supportedVersions": SUPPORTED_VERSIONS }),
            ));
        }
        // DEL and GC only clean up: an entry read more strictly since ADD must not stop them.
        let unknown = if matches!(verb, Verb::Del | Verb::Gc) {
            Unknown::Ignore
        } else {
            Unknown::Reject
        };
        let conf = NetConf::parse_as(inv.stdin, unknown).map_err(|e| {
            let c = match e {
                super::config::ConfigError::Json(_) | super::config::ConfigError::Utf8 { .. } => {
                    code::DECODE_FAILURE
                }
                _ => code::INVALID_CONFIG,
            };
            CniError::new(c, e.to_string())
        })?;
        outcome.cni_version = conf.cni_version.clone();
        outcome.log_file = conf.log_file.clone();
        outcome.state_dir = Some(conf.state_dir.clone());
        outcome.log_level = conf.log_level;
        crate::logging::init_plugin(conf.log_file.as_deref(), conf.log_level);
        conf.warn_ignored_fields(verb.as_str());
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion \"{}\" is not supported (supported: {})",
                    conf.cni_version,
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        let needs = match verb {
            Verb::Check => Some("0.4.0"),
            Verb::Gc | Verb::Status => Some("1.1.0"),
            _ => None,
        };
        if let Some(min) = needs {
            if !version_at_least(&conf.cni_version, min) {
                return Err(CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    format!(
                        "{} needs cniVersion {min} or later, got \"{}\"",
                        verb.as_str(),
                        conf.cni_version
                    ),
                ));
            }
        }
        if matches!(verb, Verb::Add | Verb::Check | Verb::Status) {
            conf.check_annotation_source()
                .map_err(|e| CniError::new(code::INVALID_CONFIG, e.to_string()))?;
        }
        let pod = parse_cni_args(inv.env.args.as_deref().unwrap_or(""))
            .map_err(|e| CniError::new(code::INVALID_ENV, e.to_string()))?;
        rec.pod = pod.clone();
        let mut ctx = Ctx {
            kernel: inv.kernel,
            env: inv.env,
            conf,
            pod,
            fetch_pod: inv.fetch_pod,
        };
        match verb {
            Verb::Add => add(&mut ctx, &mut rec),
            Verb::Del => del(&mut ctx, &mut rec),
            Verb::Check => check(&mut ctx, &mut rec),
            Verb::Gc => gc(&mut ctx, &mut rec),
            Verb::Status => status(&mut ctx, &mut rec),
            Verb::Version => Ok(None),
        }
    })();
    rec.duration_us = started.elapsed().as_micros();
    match &outcome.result {
        Ok(_) => rec.outcome = "ok".into(),
        Err(e) => {
            rec.outcome = "error".into();
            rec.error_code = Some(e.code);
            rec.error = Some(e.msg.clone());
            log::error!("{} failed: {}", rec.verb, e.msg);
        }
    }
    outcome.record = rec;
    outcome
}
