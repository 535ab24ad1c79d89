//! Flow records: maps logged packets to the pod that sent them (by the container-id prefix in
//! the log prefix, disambiguated by input interface) and aggregates identical flows per
//! interval into one `egress-guard.flow/v1` JSON line each. No I/O beyond reading state files.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use super::nflog::{parse_ip, parse_prefix, protocol_name, FlowKey, LoggedPacket};
use crate::guard::record::{self as state, PodRecord};
use crate::guard::{pod_as_record_keys, PodIdentity};
use crate::ruleset::logprefix::Logged;

/// Schema of the flow lines (see docs/agent.md).
pub const FLOW_SCHEMA: &str = "egress-guard.flow/v1";
/// Do not re-read the state directory for unknown prefixes more often than this.
const RELOAD_MIN: Duration = Duration::from_millis(250);

#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    #[error("NFLOG prefix \"{0}\" is not one of egress-guard's")]
    Prefix(String),
    #[error("logged packet with prefix \"{prefix}\" is not IPv4 or IPv6 (hardware protocol {hw_protocol:#06x})")]
    NotIp { prefix: String, hw_protocol: u16 },
}

/// One JSON line on stdout.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FlowRecord {
    pub schema: &'static str,
    /// First packet of the flow in this interval (RFC 3339, UTC).
    pub time: String,
    /// Last packet of the flow in this interval.
    pub last_time: String,
    pub node: String,
    #[serde(flatten, serialize_with = "pod_as_record_keys")]
    pub pod: PodIdentity,
    /// Full container id when the pod is known, else the 16-character prefix from the log.
    pub container_id: String,
    pub verdict: &'static str,
    pub family: &'static str,
    pub protocol: String,
    pub src: String,
    pub sport: Option<u16>,
    pub dst: String,
    pub dport: Option<u16>,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
    /// Logged packets of this flow in the interval. The ruleset logs a destination, protocol
    /// and port once per `denyLogInterval`, so this is mostly 1; the table's counter counts
    /// every packet.
    pub count: u64,
    /// Their IP lengths summed.
    pub bytes: u64,
}

#[derive(Debug, Clone)]
struct Identity {
    pod: PodIdentity,
    container_id: String,
}

#[derive(Debug, Clone)]
struct Pending {
    identity: Identity,
    first: SystemTime,
    last: SystemTime,
    count: u64,
    bytes: u64,
}

/// Pod identities from the state directory, re-read when a prefix is unknown.
pub struct Directory {
    dir: PathBuf,
    states: Vec<PodRecord>,
    loaded: Option<Instant>,
}

impl Directory {
    pub fn new(dir: PathBuf) -> Directory {
        Directory {
            dir,
            states: Vec::new(),
            loaded: None,
        }
    }

    pub fn reload(&mut self) {
        self.states = state::load_dir(&self.dir).0;
        self.loaded = Some(Instant::now());
    }

    fn candidates(&self, prefix: &str) -> Vec<&PodRecord> {
        self.states
            .iter()
            .filter(|s| s.container_id.starts_with(prefix))
            .collect()
    }

    /// The pod whose log prefix this is. Several ids sharing the prefix are told apart by the
    /// interface the packet came in on (host placement) via `ifindex`.
    fn resolve(
        &mut self,
        prefix: &str,
        indev: Option<u32>,
        ifindex: &dyn Fn(&str) -> u32,
    ) -> Option<PodRecord> {
        if self.candidates(prefix).is_empty()
            && self
                .loaded
                .map(|t| t.elapsed() >= RELOAD_MIN)
                .unwrap_or(true)
        {
            self.reload();
        }
        let c = self.candidates(prefix);
        if c.len() <= 1 {
            return c.first().map(|s| (*s).clone());
        }
        let idx = indev?;
        c.into_iter()
            .find(|s| s.is_host() && s.device.as_deref().map(ifindex) == Some(idx))
            .cloned()
    }
}

/// Flows of the current interval.
#[derive(Default)]
pub struct Aggregator {
    pending: BTreeMap<(String, Logged, FlowKey), Pending>,
}

impl Aggregator {
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Adds one logged packet. Returns its verdict.
    pub fn add(
        &mut self,
        dir: &mut Directory,
        p: &LoggedPacket,
        now: SystemTime,
        ifindex: &dyn Fn(&str) -> u32,
    ) -> Result<Logged, FlowError> {
        let (verdict, prefix) =
            parse_prefix(&p.prefix).ok_or_else(|| FlowError::Prefix(p.prefix.clone()))?;
        let ip = parse_ip(&p.payload).ok_or_else(|| FlowError::NotIp {
            prefix: p.prefix.clone(),
            hw_protocol: p.hw_protocol,
        })?;
        let identity = match dir.resolve(&prefix, p.indev, ifindex) {
            Some(s) => Identity {
                pod: s.pod.clone(),
                container_id: s.container_id.clone(),
            },
            None => Identity {
                pod: PodIdentity::default(),
                container_id: prefix.clone(),
            },
        };
        let entry = self
            .pending
            .entry((identity.container_id.clone(), verdict, ip.key))
            .or_insert(Pending {
                identity,
                first: now,
                last: now,
                count: 0,
                bytes: 0,
            });
        entry.last = now;
        entry.count += 1;
        entry.bytes += ip.bytes;
        Ok(verdict)
    }

    /// Ends the interval: one record per flow.
    pub fn drain(&mut self, node: &str) -> Vec<FlowRecord> {
        std::mem::take(&mut self.pending)
            .into_iter()
            .map(|((_, verdict, k), p)| FlowRecord {
                schema: FLOW_SCHEMA,
                time: crate::logging::rfc3339(p.first),
                last_time: crate::logging::rfc3339(p.last),
                node: node.to_string(),
                pod: p.identity.pod,
                container_id: p.identity.container_id,
                verdict: verdict.verdict(),
                family: if k.src.is_ipv4() { "ipv4" } else { "ipv6" },
                protocol: protocol_name(k.protocol),
                src: k.src.to_string(),
                sport: k.sport,
                dst: k.dst.to_string(),
                dport: k.dport,
                icmp_type: k.icmp.map(|i| i.0),
                icmp_code: k.icmp.map(|i| i.1),
                count: p.count,
                bytes: p.bytes,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(prefix: &str, dport: u8, indev: Option<u32>) -> LoggedPacket {
        let mut p = vec![
            0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 22, 0, 2, 198, 51, 100, 10,
        ];
        p.extend_from_slice(&[0x9c, 0x40, 0, dport, 0, 0, 0, 1]);
        LoggedPacket {
            prefix: prefix.into(),
            hw_protocol: 0x0800,
            indev,
            outdev: None,
            payload: p,
        }
    }

    fn write_state(dir: &std::path::Path, cid: &str, pod: &str, device: &str) {
        let v = serde_json::json!({"container_id": cid, "netns": "/x", "pod_namespace": "ml", "pod_name": pod,
            "pod_uid": format!("uid-{pod}"), "mode": "enforce", "placement": "host", "table": format!("egress_guard_{cid}"),
            "device": device, "policy": "0", "entries": [], "nflog_group": 100});
        std::fs::write(dir.join(format!("{cid}.json")), v.to_string()).unwrap();
    }

    #[test]
    fn identical_flows_aggregate_and_pods_are_told_apart() {
        let dir = std::env::temp_dir().join(format!("eg-flows-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Two ids with the same 16-character prefix: the input interface decides.
        write_state(&dir, "0123456789abcdefAAAA", "a", "veth-a");
        write_state(&dir, "0123456789abcdefBBBB", "b", "veth-b");
        let ifindex = |d: &str| if d == "veth-a" { 11 } else { 12 };
        let mut d = Directory::new(dir.clone());
        let mut agg = Aggregator::default();
        let now = SystemTime::now();
        for _ in 0..3 {
            agg.add(
                &mut d,
                &packet("eg:deny:0123456789abcdef ", 80, Some(12)),
                now,
                &ifindex,
            )
            .unwrap();
        }
        agg.add(
            &mut d,
            &packet("eg:deny:0123456789abcdef ", 81, Some(11)),
            now,
            &ifindex,
        )
        .unwrap();
        agg.add(
            &mut d,
            &packet("eg:audit:ffffffffffffffff ", 80, None),
            now,
            &ifindex,
        )
        .unwrap();
        assert!(agg
            .add(&mut d, &packet("other", 80, None), now, &ifindex)
            .is_err());
        let recs = agg.drain("n1");
        assert!(agg.is_empty());
        assert_eq!(recs.len(), 3, "{recs:?}");
        let b = recs
            .iter()
            .find(|r| r.pod.name.as_deref() == Some("b"))
            .unwrap();
        assert_eq!(
            (b.count, b.bytes, b.dport, b.verdict),
            (3, 120, Some(80), "denied")
        );
        assert_eq!(b.container_id, "0123456789abcdefBBBB");
        let a = recs
            .iter()
            .find(|r| r.pod.name.as_deref() == Some("a"))
            .unwrap();
        assert_eq!((a.count, a.dport), (1, Some(81)));
        let unknown = recs.iter().find(|r| r.pod.name.is_none()).unwrap();
        assert_eq!(
            (unknown.container_id.as_str(), unknown.verdict),
            ("ffffffffffffffff", "audited")
        );
        let line = serde_json::to_value(b).unwrap();
        assert_eq!(line["schema"], FLOW_SCHEMA);
        assert_eq!(line["protocol"], "tcp");
        assert_eq!(line["family"], "ipv4");
        assert_eq!(line["src"], "10.22.0.2");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
