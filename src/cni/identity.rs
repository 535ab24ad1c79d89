//! What prevResult says of the pod's container interface (MAC, addresses, gateways). The guard
//! checks it against what the kernel has on that interface (`crate::guard::place::pod_net`).

use serde_json::Value;

use super::{code, CniError};

pub use crate::guard::place::PrevInterface;

fn bad(field: String, value: &Value, why: &str) -> CniError {
    CniError::new(
        code::INVALID_CONFIG,
        format!("prevResult field \"{field}\" = {value}: {why}"),
    )
}

/// Reads prevResult's entry for the container interface `ifname` (the one with a `sandbox`)
/// and the `ips` that name it (or name no interface).
pub fn prev_interface(prev: &Value, ifname: &str) -> Result<PrevInterface, CniError> {
    let mut out = PrevInterface::default();
    let interfaces = prev
        .get("interfaces")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let index = interfaces.iter().position(|i| {
        i.get("name").and_then(Value::as_str) == Some(ifname)
            && i.get("sandbox")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
    });
    if let Some(i) = index {
        if let Some(m) = interfaces[i].get("mac") {
            out.mac = Some(parsed(
                m,
                format!("interfaces[{i}].mac"),
                "not a MAC address",
            )?);
        }
    }
    let ips = prev
        .get("ips")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (n, ip) in ips.iter().enumerate() {
        match ip.get("interface").and_then(Value::as_u64) {
            Some(i) if Some(i as usize) != index => continue,
            _ => {}
        }
        let address = ip.get("address").unwrap_or(&Value::Null);
        out.addrs.push(parsed(
            address,
            format!("ips[{n}].address"),
            "not ADDRESS/PREFIX",
        )?);
        if let Some(g) = ip.get("gateway") {
            out.gateways
                .push(parsed(g, format!("ips[{n}].gateway"), "not an IP address")?);
        }
    }
    Ok(out)
}

/// A prevResult string field parsed as `T`; anything else is an error naming `field`.
fn parsed<T: std::str::FromStr>(v: &Value, field: String, want: &str) -> Result<T, CniError> {
    v.as_str()
        .unwrap_or_default()
        .parse()
        .map_err(|_| bad(field, v, want))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn prev() -> Value {
        json!({"cniVersion": "1.0.0",
            "interfaces": [{"name": "cni0", "mac": "0a:58:0a:16:00:01"}, {"name": "vethX"},
                           {"name": "eth0", "mac": "0a:58:0a:16:00:05", "sandbox": "/var/run/netns/p"}],
            "ips": [{"address": "10.22.0.5/24", "gateway": "10.22.0.1", "interface": 2},
                    {"address": "fd00:22::5/64", "gateway": "fd00:22::1", "interface": 2},
                    {"address": "10.99.0.1/24", "interface": 0}]})
    }

    #[test]
    fn the_container_interface_and_its_addresses_are_taken_and_checked() {
        let p = prev_interface(&prev(), "eth0").expect("prev");
        assert_eq!(
            p.addrs.len(),
            2,
            "the bridge's address is not the pod's: {p:?}"
        );
        assert_eq!(p.gateways.len(), 2);
        let text: Vec<String> = p.addrs.iter().map(|a| a.to_string()).collect();
        assert_eq!(text, ["10.22.0.5/24", "fd00:22::5/64"]);
        assert_eq!(p.mac, Some("0a:58:0a:16:00:05".parse().expect("mac")));
    }

    #[test]
    fn malformed_prev_results_name_the_field() {
        let mut v = prev();
        v["ips"][1]["address"] = json!("fd00:22::5");
        let e = prev_interface(&v, "eth0").expect_err("no prefix");
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.contains("ips[1].address"), "{}", e.msg);
        let mut v = prev();
        v["interfaces"][2]["mac"] = json!("nope");
        let e = prev_interface(&v, "eth0").expect_err("bad mac");
        assert!(e.msg.contains("interfaces[2].mac"), "{}", e.msg);
    }
}
