//! What each CNI verb does. Generic over `Kernel`, so the whole flow runs against the recording
//! fake in unit tests and against netlink in production. Fails closed: on any error ADD leaves
//! nothing of its own installed and returns an error naming the pod, the field and the value.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{json, Value};

use super::config::{NetConf, PlacementPref};
use super::identity;
use super::{
    code, parse_cni_args, valid_container_id, version_at_least, CniError, Env, PodIdentity, Verb,
    SUPPORTED_VERSIONS,
};
use crate::guard::devindex::DeviceIndex;
use crate::guard::inspect::{inspect, Inspection};
use crate::guard::record::{self, PodRecord};
use crate::kernel::{HostPeer, Kernel, KernelError, Where};
use crate::logging::{rfc3339, VerbRecord};
use crate::netlink::nft::TableInfo;
use crate::policy::{parse_annotations, Mode, Policy};
use crate::ruleset::{
    comment_container, comment_devices, compile, in_legacy_form, legacy_table_name, table_name,
    Attach, Family, PodNet, Table, Target, TABLE_PREFIX,
};

/// Reads a pod's annotations from the API server: (kubeconfig, namespace, name).
pub type FetchPod<'a> = &'a dyn Fn(&Path, &str, &str) -> Result<Vec<(String, String)>, String>;

/// Everything one invocation needs.
pub struct Invocation<'a, K: Kernel> {
    pub kernel: &'a mut K,
    pub env: &'a Env,
    pub stdin: &'a [u8],
    pub fetch_pod: FetchPod<'a>,
}

/// The outcome: what to print on success (if anything) or the error, plus the log record.
pub struct Outcome {
    pub result: Result<Option<Value>, CniError>,
    pub record: VerbRecord,
    pub cni_version: String,
    pub log_file: Option<PathBuf>,
    pub log_level: log::LevelFilter,
}

struct Ctx<'a, K: Kernel> {
    kernel: &'a mut K,
    env: &'a Env,
    conf: NetConf,
    pod: PodIdentity,
    fetch_pod: FetchPod<'a>,
}

fn who(pod: &PodIdentity, cid: &str) -> String {
    let short: String = cid.chars().take(12).collect();
    format!("pod {} (container {short})", pod.display())
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

fn kernel_error(whom: &str, what: &str, e: &KernelError) -> CniError {
    let code = if e.netns_missing() {
        code::CONTAINER_UNKNOWN
    } else if e.is_transient() {
        code::TRY_AGAIN_LATER
    } else {
        match e {
            KernelError::Peer(_) => code::INTERFACE,
            _ => code::KERNEL_REJECTED,
        }
    };
    CniError::new(code, format!("{whom}: {what}: {e}"))
}

/// Annotations from runtimeConfig, else from the API server when a kubeconfig is configured.
fn pod_annotations<K: Kernel>(
    ctx: &Ctx<'_, K>,
    whom: &str,
) -> Result<Vec<(String, String)>, CniError> {
    if let Some(a) = &ctx.conf.annotations {
        return Ok(a.clone());
    }
    let Some(kubeconfig) = &ctx.conf.kubeconfig else {
        log::debug!("{whom}: the runtime passed no annotations and no kubeconfig is configured");
        return Ok(Vec::new());
    };
    let (Some(ns), Some(name)) = (&ctx.pod.namespace, &ctx.pod.name) else {
        return Err(CniError::new(
            code::API_LOOKUP,
            format!("{whom}: no annotations from the runtime and CNI_ARGS lacks K8S_POD_NAMESPACE/K8S_POD_NAME to look the pod up"),
        ));
    };
    match (ctx.fetch_pod)(kubeconfig, ns, name) {
        Ok(a) => Ok(a),
        Err(e) => {
            let enforced = ctx.conf.settings.enforce_namespaces.iter().any(|n| n == ns);
            if enforced || ctx.conf.settings.default_mode != Mode::Off {
                Err(CniError::new(
                    code::API_LOOKUP,
                    format!("{whom}: reading the pod from the API server failed: {e}"),
                ))
            } else {
                log::warn!("{whom}: reading the pod from the API server failed, treating it as unannotated: {e}");
                Ok(Vec::new())
            }
        }
    }
}

fn resolve_policy<K: Kernel>(ctx: &Ctx<'_, K>, whom: &str) -> Result<Policy, CniError> {
    let raw = pod_annotations(ctx, whom)?;
    let ann = parse_annotations(&raw)
        .map_err(|e| CniError::new(code::INVALID_POLICY, format!("{whom}: {e}")))?;
    let policy = Policy::resolve(&ctx.conf.settings, ctx.pod.namespace.as_deref(), &ann)
        .map_err(|e| CniError::new(code::INVALID_POLICY, format!("{whom}: {e}")))?;
    if policy.overrode_annotation(&ann) {
        log::warn!(
            "{whom}: namespace is in enforceNamespaces; annotation mode \"{}\" ignored, enforcing",
            ann.mode.map(|m| m.as_str()).unwrap_or("")
        );
    }
    Ok(policy)
}

/// Where the ruleset goes, from the configured preference, the kernel and the interface type.
/// The pod's host-side interface: name and ifindex.
type HostLink = (String, u32);

fn choose_attach<K: Kernel>(
    ctx: &mut Ctx<'_, K>,
    whom: &str,
    netns: &str,
    ifname: &str,
) -> Result<(Attach, Option<HostLink>), CniError> {
    let peer = match ctx.kernel.host_peer(
        Path::new(netns),
        ifname,
        &ctx.conf.host_interface_hints(),
    ) {
        Ok(peer) => peer,
        // Placement pod needs no host-side veth: without one found, nothing is cleared on the
        // node and the gateway's MAC is not pinned.
        Err(e) if ctx.conf.placement == PlacementPref::Pod => {
            log::warn!("{whom}: placement pod: the host-side interface of {ifname} was not found ({e}); frames to off-link addresses are not pinned to the gateway's MAC");
            HostPeer::None {
                kind: "interface whose host side was not found".into(),
            }
        }
        Err(e) => {
            return Err(kernel_error(
                whom,
                "finding the pod's host-side interface",
                &e,
            ))
        }
    };
    let egress = ctx.kernel.has_netdev_egress();
    let host = match peer {
        HostPeer::Veth { name, index } => Some((name, index)),
        HostPeer::None { kind } => {
            if ctx.conf.placement == PlacementPref::Host {
                return Err(CniError::new(
                    code::INTERFACE,
                    format!("{whom}: placement \"host\" needs a veth with its peer in the host namespace, but \"{ifname}\" is a {kind}"),
                ));
            }
            None
        }
    };
    match (&host, ctx.conf.placement, egress) {
        (Some((name, _)), PlacementPref::Host | PlacementPref::Auto, true) => {
            let pod = pod_identity(ctx, whom, netns, ifname, Some(name))?;
            Ok((
                Attach::Host {
                    device: name.clone(),
                    pod,
                },
                host,
            ))
        }
        (Some((name, _)), PlacementPref::Host, false) => Err(CniError::new(
            code::KERNEL_REJECTED,
            format!("{whom}: placement \"host\" needs the netdev egress hook (kernel 5.16 or later); use placement \"auto\" or \"pod\" (host interface {name})"),
        )),
        // Inside the pod: on its own interface where the kernel has the egress hook.
        (_, _, true) => {
            let device = host.as_ref().map(|(n, _)| n.as_str());
            let pod = pod_identity(ctx, whom, netns, ifname, device)?;
            Ok((
                Attach::PodLink {
                    device: ifname.to_string(),
                    pod,
                },
                host,
            ))
        }
        (_, _, false) => Ok((Attach::Pod, host)),
    }
}

/// Who the pod is on `ifname` (the table pins its frames to it): prevResult's container
/// interface checked against the kernel, and the gateway's MAC when the pod's host-side
/// `device` (or its bridge) holds the gateway.
fn pod_identity<K: Kernel>(
    ctx: &mut Ctx<'_, K>,
    whom: &str,
    netns: &str,
    ifname: &str,
    device: Option<&str>,
) -> Result<PodNet, CniError> {
    let prev = match &ctx.conf.prev_result {
        Some(p) => identity::prev_interface(p, ifname)?,
        None => Default::default(),
    };
    let iface = ctx
        .kernel
        .pod_interface(Path::new(netns), ifname)
        .map_err(|e| kernel_error(whom, "reading the pod's interface", &e))?;
    let gateway = match device {
        Some(device) => {
            let gateway = ctx
                .kernel
                .gateway_mac(device, &prev.gateways)
                .map_err(|e| kernel_error(whom, "finding the pod's gateway", &e))?;
            if gateway.is_none() && !prev.gateways.is_empty() {
                log::warn!("{whom}: no gateway of {ifname} is on {device} or its bridge: frames to off-link addresses are not pinned to the gateway's MAC");
            }
            gateway
        }
        None => {
            if !prev.gateways.is_empty() {
                log::info!("{whom}: {ifname} has no host-side veth: frames to off-link addresses are not pinned to the gateway's MAC");
            }
            None
        }
    };
    identity::pod_net(whom, ifname, &prev, &iface, gateway)
}

/// After a failed install whose outcome is unknown (a transient error such as ENOBUFS can come
/// after the kernel committed the batch), make sure no table of ours stays installed.
fn undo_uncertain<K: Kernel>(
    ctx: &mut Ctx<'_, K>,
    whom: &str,
    at: Where<'_>,
    family: Family,
    name: &str,
    e: &KernelError,
) {
    if !e.is_transient() {
        return;
    }
    if let Err(re) = ctx.kernel.remove(at, family, name) {
        log::error!("{whom}: removing table {name} after a failed install: {re}");
    }
}

/// Whether our table's comment names `device` as the one its chains are bound to.
fn bound_to(comment: &str, device: &str) -> bool {
    comment_devices(comment).any(|d| d == device)
}

/// The other container a table of container `cid`'s name belongs to, by its comment. Names
/// are a hash of the attachment: such a table (a collision) is never replaced or removed, which
/// would leave that container's pod unguarded. A table whose comment names no container (an
/// earlier build's, or an ID too long for the comment) is taken to be this attachment's.
fn other_owner<'a>(comment: &'a str, cid: &str) -> Option<&'a str> {
    comment_container(comment).filter(|owner| *owner != cid)
}

/// Our tables in the host netns that must go before this pod's table is created: one with the
/// same name (a repeated ADD) and any left bound to the same device name by a pod that died
/// without DEL (netdev chains re-attach to a new device of the same name).
///
/// With a complete device index (`crate::guard::devindex`) that is one lookup per recorded candidate,
/// whatever the number of pods on the node; a table of this pod's name recorded under another
/// device is not looked for here: its creation fails with EEXIST and `install_host` replaces it
/// then (every lookup costs the kernel a walk over all the node's tables). Otherwise every
/// netdev table is listed, and the index is rebuilt from the listing for the next ADD.
fn stale_host_tables<K: Kernel>(
    ctx: &mut Ctx<'_, K>,
    whom: &str,
    cid: &str,
    name: &str,
    device: &str,
) -> Result<Vec<String>, CniError> {
    let own = |t: &str, comment: &str| t == name && other_owner(comment, cid).is_none();
    let index = DeviceIndex::new(&ctx.conf.state_dir);
    if index.is_complete() {
        match index.tables(device) {
            Ok(candidates) => {
                let mut stale = Vec::new();
                for t in candidates
                    .into_iter()
                    .filter(|t| t.starts_with(TABLE_PREFIX))
                {
                    let info = ctx
                        .kernel
                        .table(Where::Host, Family::Netdev, &t)
                        .map_err(|e| kernel_error(whom, &format!("looking up table {t}"), &e))?;
                    match info {
                        Some(info) if own(&t, &info.comment) || bound_to(&info.comment, device) => {
                            stale.push(t)
                        }
                        // Re-created on another device since; recorded there as well.
                        Some(_) => {}
                        None if t != name => {
                            if let Err(e) = index.forget_missing(device, &t) {
                                log::warn!("{whom}: pruning the device index: {e}");
                            }
                        }
                        None => {}
                    }
                }
                return Ok(stale);
            }
            Err(e) => log::warn!(
                "{whom}: reading the device index for {device}: {e}; listing tables instead"
            ),
        }
    }
    let tables = ctx
        .kernel
        .tables(Where::Host, Family::Netdev)
        .map_err(|e| kernel_error(whom, "listing tables", &e))?;
    rebuild_index(&index, &tables, whom);
    Ok(tables
        .into_iter()
        .filter(|t| t.name.starts_with(TABLE_PREFIX))
        .filter(|t| own(&t.name, &t.comment) || bound_to(&t.comment, device))
        .map(|t| t.name)
        .collect())
}

/// Records every host table of ours found in a full listing, then marks the index complete.
/// Tables created meanwhile by other plugin runs recorded themselves before they were created.
fn rebuild_index(index: &DeviceIndex, tables: &[TableInfo], whom: &str) {
    let recorded = tables
        .iter()
        .filter(|t| t.name.starts_with(TABLE_PREFIX))
        .filter_map(|t| {
            let dev = comment_devices(&t.comment).next()?;
            Some((dev, t.name.as_str()))
        })
        .try_for_each(|(dev, t)| index.add(dev, t));
    if let Err(e) = recorded.and_then(|_| index.mark_complete()) {
        log::warn!(
            "{whom}: cannot build the device index (tables will be listed on each ADD): {e}"
        );
        if let Err(e) = index.invalidate() {
            log::warn!("{whom}: cannot remove the device index marker: {e}");
        }
    }
}

/// Installs `table` in the host netns replacing `stale`. If a table of the same name exists that
/// `stale` does not hold (a repeated ADD the device index recorded under another device), it is
/// looked up and the transaction retried once replacing it too.
fn install_host<K: Kernel>(
    ctx: &mut Ctx<'_, K>,
    whom: &str,
    cid: &str,
    stale: &mut Vec<String>,
    table: &Table,
) -> Result<usize, KernelError> {
    let first = ctx
        .kernel
        .install(Where::Host, Family::Netdev, stale, Some(table));
    match first {
        Err(e) if e.already_exists() && !stale.contains(&table.name) => {
            let Some(existing) = ctx.kernel.table(Where::Host, Family::Netdev, &table.name)? else {
                return Err(e);
            };
            if let Some(owner) = other_owner(&existing.comment, cid) {
                return Err(KernelError::NameTaken {
                    table: table.name.clone(),
                    owner: owner.to_string(),
                });
            }
            log::info!(
                "{whom}: table {} already existed outside the device index; replacing it",
                table.name
            );
            stale.push(table.name.clone());
            ctx.kernel
                .install(Where::Host, Family::Netdev, stale, Some(table))
        }
        other => other,
    }
}

/// Notes in the device index that `name` may be bound to `device`, before it is installed. If
/// that fails the index stops being trusted; if even that fails, ADD fails rather than leave an
/// index that could hide this table from a later pod on the same device name.
fn record_in_index<K: Kernel>(
    ctx: &Ctx<'_, K>,
    whom: &str,
    device: &str,
    name: &str,
) -> Result<(), CniError> {
    match DeviceIndex::new(&ctx.conf.state_dir).record(device, name) {
        Ok(None) => Ok(()),
        Ok(Some(e)) => {
            log::warn!("{whom}: cannot record table {name} for {device} in the device index under {}: {e}; ADD will list tables until it is rebuilt", ctx.conf.state_dir.display());
            Ok(())
        }
        Err((e, e2)) => Err(CniError::new(
            code::IO_FAILURE,
            format!(
                "{whom}: cannot record table {name} for {device} in the device index under {} ({e}) nor mark the index stale ({e2})",
                ctx.conf.state_dir.display()
            ),
        )),
    }
}

/// Forgets tables that are gone from the device index (best effort: leftovers are harmless).
fn forget_in_index<K: Kernel>(ctx: &Ctx<'_, K>, device: &str, tables: &[String]) {
    let index = DeviceIndex::new(&ctx.conf.state_dir);
    for t in tables {
        if let Err(e) = index.remove(device, t) {
            log::warn!("device index: forgetting {t} on {device}: {e}");
        }
    }
}

/// Removes, on their own, our host tables left bound to `device` (and this attachment's own
/// table), for when no new host table is created in the same transaction.
fn clear_stale_host_tables<K: Kernel>(
    ctx: &mut Ctx<'_, K>,
    whom: &str,
    cid: &str,
    name: &str,
    device: &str,
) -> Result<(), CniError> {
    let mut stale = stale_host_tables(ctx, whom, cid, name, device)?;
    // This attachment's own host table, wherever the index recorded it: nothing is created
    // here whose EEXIST would reveal it.
    if !stale.iter().any(|t| t == name) {
        if let Some(own) = ctx
            .kernel
            .table(Where::Host, Family::Netdev, name)
            .map_err(|e| kernel_error(whom, &format!("looking up table {name}"), &e))?
        {
            match other_owner(&own.comment, cid) {
                Some(owner) => log::warn!(
                    "{whom}: table {name} belongs to container {owner} (a collision of hashed table names); left alone"
                ),
                None => stale.push(name.to_string()),
            }
        }
    }
    if stale.is_empty() {
        return Ok(());
    }
    log::info!(
        "{whom}: removing stale table(s) {} bound to {device}",
        stale.join(", ")
    );
    ctx.kernel
        .install(Where::Host, Family::Netdev, &stale, None)
        .map_err(|e| kernel_error(whom, "removing stale tables", &e))?;
    forget_in_index(ctx, device, &stale);
    Ok(())
}

/// Removes a record; a failure is logged (the table is already gone).
fn remove_record(dir: &Path, key: &str) {
    if let Err(e) = record::remove(dir, key) {
        log::warn!("{e}");
    }
}

/// Chooses the placement, compiles the pod's table and notes both in the verb record.
/// `None` when the policy installs nothing.
fn plan<K: Kernel>(
    ctx: &mut Ctx<'_, K>,
    rec: &mut VerbRecord,
    whom: &str,
    policy: &Policy,
    cid: &str,
    netns: &str,
    ifname: &str,
) -> Result<Option<(Table, Attach, Option<HostLink>)>, CniError> {
    let (attach, device) = choose_attach(ctx, whom, netns, ifname)?;
    let target = Target {
        container_id: cid.to_string(),
        ifname: ifname.to_string(),
        attach: attach.clone(),
        log_group: ctx.conf.nflog_group,
    };
    let Some(table) = compile(policy, &target) else {
        return Ok(None);
    };
    rec.placement = Some(target.placement().as_str().to_string());
    rec.table = Some(format!("{} {}", table.family.name(), table.name));
    rec.device = device.as_ref().map(|(name, _)| name.clone());
    Ok(Some((table, attach, device)))
}

fn add<K: Kernel>(ctx: &mut Ctx<'_, K>, rec: &mut VerbRecord) -> Result<Option<Value>, CniError> {
    let env = ctx.env;
    let cid = container_id(env)?.to_string();
    let netns = require(&env.netns, "CNI_NETNS")?.to_string();
    let ifname = ifname(env)?.to_string();
    let whom = who(&ctx.pod, &cid);
    let prev = ctx.conf.prev_result.clone().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("{whom}: prevResult is missing: egress-guard is a chained plugin and must come after the interface plugin in a conflist"),
        )
    })?;
    let policy = resolve_policy(ctx, &whom)?;
    rec.mode = Some(policy.mode.to_string());
    rec.entries = Some(policy.entries.len());
    let name = table_name(&cid, &ifname);

    if policy.mode == Mode::Off {
        // Nothing to install, but a stale table bound to this device name must not guard (or
        // break) a pod that asked for nothing.
        if ctx.conf.placement != PlacementPref::Pod {
            let hints = ctx.conf.host_interface_hints();
            match ctx.kernel.host_peer(Path::new(&netns), &ifname, &hints) {
                Ok(HostPeer::Veth { name: dev, .. }) => {
                    clear_stale_host_tables(ctx, &whom, &cid, &name, &dev)?
                }
                Ok(HostPeer::None { .. }) => {}
                Err(e) => log::warn!("{whom}: mode off; host interface lookup failed: {e}"),
            }
        }
        log::info!(
            "{whom}: mode off ({:?}), nothing installed",
            policy.mode_source
        );
        return Ok(Some(prev));
    }

    let Some((table, attach, peer)) = plan(ctx, rec, &whom, &policy, &cid, &netns, &ifname)? else {
        return Ok(Some(prev));
    };

    match &attach {
        Attach::Host { device, .. } => {
            let mut stale = stale_host_tables(ctx, &whom, &cid, &name, device)?;
            log::debug!(
                "{whom}: installing table netdev {} on {device} in host netns: {} rules, {} set elements, replacing [{}]",
                table.name,
                table.rule_count(),
                table.element_count(),
                stale.join(",")
            );
            record_in_index(ctx, &whom, device, &name)?;
            let installed = install_host(ctx, &whom, &cid, &mut stale, &table);
            if let Err(e) = installed {
                undo_uncertain(ctx, &whom, Where::Host, Family::Netdev, &name, &e);
                return Err(kernel_error(&whom, "installing the egress policy", &e));
            }
            let gone: Vec<String> = stale.into_iter().filter(|t| *t != name).collect();
            forget_in_index(ctx, device, &gone);
            // The veth may have vanished while we installed (this kernel hooks absent names).
            let index = peer.as_ref().map(|(_, i)| *i).unwrap_or(0);
            match ctx
                .kernel
                .host_link_is(Path::new(&netns), &ifname, device, index)
            {
                Ok(true) => {}
                other => {
                    if let Err(e) = ctx.kernel.remove(Where::Host, Family::Netdev, &name) {
                        log::error!(
                            "{whom}: removing table {name} after its device went away: {e}"
                        );
                    }
                    let why = match other {
                        Err(e) => e.to_string(),
                        Ok(_) => format!("ifindex {index} is gone or renamed"),
                    };
                    return Err(CniError::new(
                        code::INTERFACE,
                        format!("{whom}: host interface {device} went away during ADD: {why}"),
                    ));
                }
            }
        }
        Attach::PodLink { .. } | Attach::Pod => {
            if let Some((dev, _)) = &peer {
                clear_stale_host_tables(ctx, &whom, &cid, &name, dev)?;
            }
            let at = Where::Netns(Path::new(&netns));
            let family = attach.family();
            // This attachment's table from an earlier ADD, under either name, in the family
            // this ADD installs (replaced in the same transaction) or the other one (removed
            // once the new table is in: until then both guard the pod).
            let (mut replace, mut other) = (Vec::new(), Vec::new());
            for n in [name.clone(), legacy_table_name(&cid, &ifname)] {
                for f in [Family::Netdev, Family::Inet] {
                    if let Some(t) = ctx
                        .kernel
                        .table(at, f, &n)
                        .map_err(|e| kernel_error(&whom, "looking up the pod's table", &e))?
                    {
                        if f == family {
                            replace.push(t.name);
                        } else {
                            other.push((f, t.name));
                        }
                    }
                }
            }
            log::debug!(
                "{whom}: installing table {} {} in pod netns {netns}: {} rules, {} set elements",
                family.name(),
                table.name,
                table.rule_count(),
                table.element_count()
            );
            if let Err(e) = ctx.kernel.install(at, family, &replace, Some(&table)) {
                undo_uncertain(ctx, &whom, at, family, &name, &e);
                return Err(kernel_error(&whom, "installing the egress policy", &e));
            }
            for (f, n) in other {
                ctx.kernel
                    .remove(at, f, &n)
                    .map_err(|e| kernel_error(&whom, "removing the pod's earlier table", &e))?;
            }
        }
    }
    let record = PodRecord {
        container_id: cid.clone(),
        ifname: ifname.clone(),
        netns: netns.clone(),
        pod_namespace: ctx.pod.namespace.clone(),
        pod_name: ctx.pod.name.clone(),
        pod_uid: ctx.pod.uid.clone(),
        mode: policy.mode.to_string(),
        placement: attach.placement().as_str().to_string(),
        table: table.name.clone(),
        device: peer.as_ref().map(|(n, _)| n.clone()),
        pod_net: attach.pod_net().cloned(),
        policy: policy.digest(),
        entries: policy.entries.iter().map(|e| e.to_string()).collect(),
        nflog_group: ctx.conf.nflog_group,
        created: rfc3339(std::time::SystemTime::now()),
    };
    if let Err(e) = record.write(&ctx.conf.state_dir) {
        log::warn!("{whom}: {e}");
    }
    log::info!(
        "{whom}: {} egress policy installed ({} entries, {} placement)",
        policy.mode,
        policy.entries.len(),
        attach.placement().as_str()
    );
    Ok(Some(prev))
}

fn del<K: Kernel>(ctx: &mut Ctx<'_, K>, _rec: &mut VerbRecord) -> Result<Option<Value>, CniError> {
    let cid = container_id(ctx.env)?.to_string();
    let whom = who(&ctx.pod, &cid);
    // Runtimes always set CNI_IFNAME on DEL; without it, assume the main interface.
    let ifname = ctx.env.ifname.clone().unwrap_or_default();
    let mut names = vec![table_name(&cid, &ifname)];
    // A pod added by a release that named tables after the container ID wrote its state file
    // under that name: remove its table too.
    let legacy = legacy_table_name(&cid, &ifname);
    if record::state_path(&ctx.conf.state_dir, record::key_of_table(&legacy)).exists() {
        names.push(legacy);
    }
    let (mut removed_host, mut removed_pod) = (false, false);
    for name in &names {
        // A table, state file and index entry of this name that another container's record or
        // comment claims (a collision of hashed names, as after an ADD refused for it) are that
        // container's: removing them would unguard its pod.
        let (owner, device) = match record::find(&ctx.conf.state_dir, record::key_of_table(name)) {
            Some(r) => (Some(r.container_id), r.device),
            None => (None, None),
        };
        let host = ctx
            .kernel
            .table(Where::Host, Family::Netdev, name)
            .map_err(|e| kernel_error(&whom, "looking up the host table", &e))?;
        let claimed = owner.filter(|o| *o != cid).or_else(|| {
            host.as_ref()
                .and_then(|t| other_owner(&t.comment, &cid).map(str::to_string))
        });
        if let Some(other) = claimed {
            log::warn!("{whom}: table {name} belongs to container {other} (a collision of hashed table names); left alone");
            continue;
        }
        if host.is_some() {
            removed_host |= ctx
                .kernel
                .remove(Where::Host, Family::Netdev, name)
                .map_err(|e| kernel_error(&whom, "removing the host table", &e))?;
        }
        if let Some(netns) = ctx.env.netns.as_deref().filter(|n| !n.is_empty()) {
            for family in [Family::Netdev, Family::Inet] {
                match ctx
                    .kernel
                    .remove(Where::Netns(Path::new(netns)), family, name)
                {
                    Ok(r) => removed_pod |= r,
                    Err(e) if e.netns_missing() => break,
                    Err(e) => return Err(kernel_error(&whom, "removing the pod table", &e)),
                }
            }
        }
        if let Some(device) = device {
            forget_in_index(ctx, &device, std::slice::from_ref(name));
        }
        remove_record(&ctx.conf.state_dir, record::key_of_table(name));
    }
    log::info!("{whom}: DEL removed host table: {removed_host}, pod table: {removed_pod}");
    Ok(None)
}

fn check<K: Kernel>(ctx: &mut Ctx<'_, K>, rec: &mut VerbRecord) -> Result<Option<Value>, CniError> {
    let cid = container_id(ctx.env)?.to_string();
    let netns = require(&ctx.env.netns, "CNI_NETNS")?.to_string();
    let ifname = ifname(ctx.env)?.to_string();
    let whom = who(&ctx.pod, &cid);
    let policy = resolve_policy(ctx, &whom)?;
    rec.mode = Some(policy.mode.to_string());
    rec.entries = Some(policy.entries.len());
    let legacy = legacy_table_name(&cid, &ifname);
    if policy.mode == Mode::Off {
        for name in [table_name(&cid, &ifname), legacy] {
            let present = ctx
                .kernel
                .read(Where::Host, Family::Netdev, &name)
                .map_err(|e| kernel_error(&whom, "reading the host table", &e))?;
            if present.is_some() {
                return Err(CniError::new(
                    code::DRIFT,
                    format!("{whom}: mode is off but table netdev {name} is installed"),
                ));
            }
        }
        return Ok(None);
    }
    let Some((table, attach, _)) = plan(ctx, rec, &whom, &policy, &cid, &netns, &ifname)? else {
        return Ok(None);
    };
    let at = match &attach {
        Attach::Host { .. } => Where::Host,
        Attach::PodLink { .. } | Attach::Pod => Where::Netns(Path::new(&netns)),
    };
    let read_err = |e: KernelError| kernel_error(&whom, "reading the installed table", &e);
    let mut table = table;
    let mut found = inspect(ctx.kernel, at, &table).map_err(read_err)?;
    if found == Inspection::Missing {
        // A pod added by a release that named tables after the container ID.
        let recorded = in_legacy_form(table.clone(), &legacy);
        let legacy_found = inspect(ctx.kernel, at, &recorded).map_err(read_err)?;
        if legacy_found != Inspection::Missing {
            (table, found) = (recorded, legacy_found);
        }
    }
    let problems = found.problems(&table);
    if problems.is_empty() {
        return Ok(None);
    }
    Err(CniError::new(
        code::DRIFT,
        format!(
            "{whom}: installed egress policy differs from the pod's policy: {}",
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
    // Under both names: pods added before an upgrade keep the name they got then.
    let keep: std::collections::BTreeSet<String> = valid
        .iter()
        .flat_map(|a| {
            [
                table_name(&a.container_id, &a.ifname),
                legacy_table_name(&a.container_id, &a.ifname),
            ]
        })
        .collect();
    let listed_at = std::time::SystemTime::now();
    let tables = ctx
        .kernel
        .tables(Where::Host, Family::Netdev)
        .map_err(|e| kernel_error("GC", "listing tables", &e))?;
    let mut removed = Vec::new();
    let mut live = std::collections::BTreeSet::new();
    for t in tables
        .into_iter()
        .filter(|t| t.name.starts_with(TABLE_PREFIX))
    {
        if keep.contains(&t.name) {
            live.insert(t.name);
            continue;
        }
        ctx.kernel
            .remove(Where::Host, Family::Netdev, &t.name)
            .map_err(|e| kernel_error("GC", &format!("removing table {}", t.name), &e))?;
        removed.push(t.name);
    }
    // Entries of tables that are gone (never fresh ones: a concurrent ADD records its table
    // just before installing it, after this listing).
    if let Err(e) = DeviceIndex::new(&ctx.conf.state_dir).prune(&live, listed_at) {
        log::warn!("GC: pruning the device index: {e}");
    }
    for key in record::keys(&ctx.conf.state_dir) {
        if !keep.contains(&format!("{TABLE_PREFIX}{key}")) {
            remove_record(&ctx.conf.state_dir, &key);
        }
    }
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
pub fn run<K: Kernel>(inv: Invocation<'_, K>) -> Outcome {
    let started = Instant::now();
    let mut rec = VerbRecord {
        time: rfc3339(std::time::SystemTime::now()),
        verb: inv.env.command.clone(),
        container_id: inv.env.container_id.clone().unwrap_or_default(),
        ..Default::default()
    };
    let mut outcome = Outcome {
        result: Ok(None),
        record: VerbRecord::default(),
        cni_version: "1.1.0".to_string(),
        log_file: None,
        log_level: log::LevelFilter::Warn,
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
        let conf = NetConf::parse(inv.stdin).map_err(|e| {
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
        outcome.log_level = conf.log_level;
        crate::logging::init_plugin(conf.log_file.as_deref(), conf.log_level);
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
        let pod = parse_cni_args(inv.env.args.as_deref().unwrap_or(""))
            .map_err(|e| CniError::new(code::INVALID_ENV, e.to_string()))?;
        rec.pod_namespace = pod.namespace.clone();
        rec.pod_name = pod.name.clone();
        rec.pod_uid = pod.uid.clone();
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
