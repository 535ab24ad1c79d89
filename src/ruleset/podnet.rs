//! The pod's network identity on its interface: MAC, addresses with their on-link prefixes,
//! IPv6 link-local addresses and the gateway's MAC. Host placement pins every frame the pod
//! sends to it. Plain data; where it comes from (prevResult checked against the kernel) is the
//! plugin's business.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Serializes a type as its `Display` text and deserializes it with its `FromStr`.
macro_rules! serde_as_text {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_string())
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub fn as_u128(self) -> u128 {
        self.0.iter().fold(0u128, |acc, b| (acc << 8) | *b as u128)
    }
    /// Multicast and broadcast addresses have the group bit set.
    pub fn is_unicast(self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("\"{0}\" is not a MAC address (six hex bytes separated by ':')")]
pub struct MacError(pub String);

impl FromStr for Mac {
    type Err = MacError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || MacError(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in out.iter_mut() {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(out))
    }
}

serde_as_text!(Mac);

/// An interface address and the length of its on-link prefix (`10.22.0.5/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IfAddr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IfAddr {
    pub fn is_v4(&self) -> bool {
        self.addr.is_ipv4()
    }
    /// The address as a number (IPv4 in the low 32 bits).
    pub fn value(&self) -> u128 {
        ip_value(self.addr)
    }
    /// First and last address of the on-link prefix.
    pub fn subnet(&self) -> (u128, u128) {
        let bits = if self.is_v4() { 32 } else { 128 };
        let host = bits - (self.prefix as u32).min(bits);
        let span = if host >= 128 {
            u128::MAX
        } else {
            (1u128 << host) - 1
        };
        let lo = self.value() & !span;
        (lo, lo | span)
    }
}

pub fn ip_value(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u32::from(v) as u128,
        IpAddr::V6(v) => u128::from(v),
    }
}

impl fmt::Display for IfAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("\"{0}\" is not an interface address (ADDRESS/PREFIX)")]
pub struct IfAddrError(pub String);

impl FromStr for IfAddr {
    type Err = IfAddrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IfAddrError(s.to_string());
        let (a, p) = s.split_once('/').ok_or_else(bad)?;
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let prefix: u8 = p.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad());
        }
        Ok(IfAddr { addr, prefix })
    }
}

serde_as_text!(IfAddr);

/// Who the pod is on its interface. Every frame it sends must carry `mac` as Ethernet
/// source and one of `addrs` (or, for neighbour discovery, `link_local` or `::`) as IP source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodNet {
    pub mac: Mac,
    /// The pod's addresses on the interface, with their on-link prefixes.
    pub addrs: Vec<IfAddr>,
    /// IPv6 link-local addresses of the interface.
    #[serde(default)]
    pub link_local: Vec<Ipv6Addr>,
    /// The Ethernet destination of every frame to an off-link address: the gateway's MAC (the
    /// bridge or the host-side veth that holds the gateway address). `None` when the gateway
    /// is not on the node; off-link frames are then not pinned at layer 2.
    #[serde(default)]
    pub gateway_mac: Option<Mac>,
}

impl PodNet {
    /// The identity `render` shows a pod with when it is given none: one address per family
    /// on a bridge whose gateway is `.1`.
    pub fn example() -> PodNet {
        let ip = |s: &str| s.parse::<IfAddr>().expect("constant address");
        PodNet {
            mac: Mac([0x0a, 0x58, 0x0a, 0x16, 0x00, 0x05]),
            addrs: vec![ip("10.22.0.5/24"), ip("fd00:22::5/64")],
            link_local: vec![Ipv6Addr::new(
                0xfe80, 0, 0, 0, 0x0858, 0x0aff, 0xfe16, 0x0005,
            )],
            gateway_mac: Some(Mac([0x0a, 0x58, 0x0a, 0x16, 0x00, 0x01])),
        }
    }
    pub fn v4(&self) -> impl Iterator<Item = &IfAddr> {
        self.addrs.iter().filter(|a| a.is_v4())
    }
    pub fn v6(&self) -> impl Iterator<Item = &IfAddr> {
        self.addrs.iter().filter(|a| !a.is_v4())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_and_addresses_parse_and_print() {
        let m: Mac = "02:42:AC:11:00:02".parse().expect("mac");
        assert_eq!(m.to_string(), "02:42:ac:11:00:02");
        assert_eq!(m.as_u128(), 0x0242_ac11_0002);
        assert!(m.is_unicast());
        assert!(!"ff:ff:ff:ff:ff:ff"
            .parse::<Mac>()
            .expect("bcast")
            .is_unicast());
        for bad in [
            "02:42:ac:11:00",
            "02:42:ac:11:00:02:03",
            "0242ac110002",
            "zz:42:ac:11:00:02",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
        let a: IfAddr = "10.22.0.5/24".parse().expect("addr");
        assert_eq!(a.subnet(), (0x0a16_0000, 0x0a16_00ff));
        let b: IfAddr = "fd00:22::5/64".parse().expect("addr");
        assert_eq!(b.subnet().0, 0xfd00_0022_0000_0000_0000_0000_0000_0000);
        assert!("10.22.0.5/33".parse::<IfAddr>().is_err());
        assert!("10.22.0.5".parse::<IfAddr>().is_err());
    }
}
