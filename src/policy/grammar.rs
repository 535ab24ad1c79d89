//! Grammar of one allowlist entry: `CIDR [PROTO [PORT | PORT-PORT]]` or `@name`.
//! A bare address is a host route (/32 or /128). PROTO is tcp, udp, sctp, icmp, icmpv6 or any.

use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GrammarError {
    #[error("empty entry")]
    Empty,
    #[error("\"{0}\" is not an IPv4 or IPv6 address")]
    BadAddress(String),
    #[error("prefix length \"{token}\" is not a number from 0 to {max}")]
    BadPrefix { token: String, max: u8 },
    #[error("\"{token}\" has host bits set; the network is {network}")]
    HostBits { token: String, network: String },
    #[error("unknown protocol \"{0}\" (expected tcp, udp, sctp, icmp, icmpv6 or any)")]
    UnknownProto(String),
    #[error("protocol \"{proto}\" does not apply to {family} destination \"{cidr}\"")]
    ProtoFamily {
        proto: String,
        family: &'static str,
        cidr: String,
    },
    #[error("port \"{port}\" given for protocol \"{proto}\", which has no ports (ports need tcp, udp or sctp)")]
    PortWithoutPorts { proto: String, port: String },
    #[error("port \"{0}\" is not a number from 1 to 65535")]
    BadPort(String),
    #[error("port range \"{0}\" is reversed (the first port must not exceed the second)")]
    ReversedRange(String),
    #[error("unexpected \"{0}\" after the port (an entry is CIDR [PROTO [PORT|PORT-PORT]])")]
    Trailing(String),
    #[error("network name \"{0}\" is not valid (letters, digits, '-' and '_')")]
    BadNetworkName(String),
    #[error("\"{0}\": a network reference is not allowed here")]
    NetworkNotAllowed(String),
}

/// An IP network with its host bits clear. Ordered as `IpNetwork` is: IPv4 before IPv6, then
/// by address, then by prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr(IpNetwork);

impl Cidr {
    pub fn is_v4(&self) -> bool {
        self.0.is_ipv4()
    }
    /// The network address (host bits are always clear).
    pub fn addr(&self) -> IpAddr {
        self.0.ip()
    }
    pub fn prefix(&self) -> u8 {
        self.0.prefix()
    }
    pub fn network(&self) -> IpNetwork {
        self.0
    }
    /// Inclusive numeric range of addresses (IPv4 in the low 32 bits).
    pub fn range(&self) -> (u128, u128) {
        (addr_u128(self.0.network()), addr_u128(self.0.broadcast()))
    }
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.0.contains(addr)
    }

    /// `ADDR` (a host route) or `ADDR/LEN`. Host bits set are an error naming the network.
    pub fn parse(token: &str) -> Result<Cidr, GrammarError> {
        let (addr_s, prefix_s) = match token.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (token, None),
        };
        let addr: IpAddr = addr_s
            .parse()
            .map_err(|_| GrammarError::BadAddress(addr_s.to_string()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bad_prefix = || GrammarError::BadPrefix {
            token: token.to_string(),
            max,
        };
        let prefix = match prefix_s {
            None => max,
            Some(p) => {
                let digits = !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit());
                match p.parse::<u8>() {
                    Ok(n) if digits && n <= max => n,
                    _ => return Err(bad_prefix()),
                }
            }
        };
        let net = IpNetwork::new(addr, prefix).map_err(|_| bad_prefix())?;
        if net.network() != addr {
            return Err(GrammarError::HostBits {
                token: token.to_string(),
                network: format!("{}/{prefix}", net.network()),
            });
        }
        Ok(Cidr(net))
    }
}

fn addr_u128(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.0.ip(), self.0.prefix())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Any,
    Tcp,
    Udp,
    Sctp,
    Icmp,
    Icmpv6,
}

impl Proto {
    pub fn parse(s: &str) -> Option<Proto> {
        Some(match s {
            "any" => Proto::Any,
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            "sctp" => Proto::Sctp,
            "icmp" => Proto::Icmp,
            "icmpv6" => Proto::Icmpv6,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Any => "any",
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
            Proto::Icmp => "icmp",
            Proto::Icmpv6 => "icmpv6",
        }
    }
    /// IP protocol number; `None` for any.
    pub fn number(self) -> Option<u8> {
        match self {
            Proto::Any => None,
            Proto::Tcp => Some(6),
            Proto::Udp => Some(17),
            Proto::Sctp => Some(132),
            Proto::Icmp => Some(1),
            Proto::Icmpv6 => Some(58),
        }
    }
    pub fn has_ports(self) -> bool {
        matches!(self, Proto::Tcp | Proto::Udp | Proto::Sctp)
    }
}

/// One allowed destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Entry {
    pub cidr: Cidr,
    pub proto: Proto,
    /// Inclusive port range; only for tcp, udp and sctp.
    pub ports: Option<(u16, u16)>,
}

impl Entry {
    /// Whether a packet to `dst` with protocol `proto` and destination port `port` is allowed.
    /// The reference semantics the compiled ruleset must implement.
    pub fn allows(&self, dst: IpAddr, proto: u8, port: Option<u16>) -> bool {
        if !self.cidr.contains(dst) {
            return false;
        }
        if let Some(n) = self.proto.number() {
            if n != proto {
                return false;
            }
        }
        match (self.ports, port) {
            (None, _) => true,
            (Some((lo, hi)), Some(p)) => lo <= p && p <= hi,
            (Some(_), None) => false,
        }
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.cidr, self.proto.as_str())?;
        match self.ports {
            Some((lo, hi)) if lo == hi => write!(f, " {lo}"),
            Some((lo, hi)) => write!(f, " {lo}-{hi}"),
            None => Ok(()),
        }
    }
}

/// An annotation entry: a literal destination or a reference to an operator-defined network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryRef {
    Literal(Entry),
    Network(String),
}

fn parse_port(token: &str) -> Result<u16, GrammarError> {
    let ok = !token.is_empty() && token.len() <= 5 && token.bytes().all(|b| b.is_ascii_digit());
    match token.parse::<u32>() {
        Ok(n) if ok && (1..=65535).contains(&n) => Ok(n as u16),
        _ => Err(GrammarError::BadPort(token.to_string())),
    }
}

fn parse_ports(token: &str) -> Result<(u16, u16), GrammarError> {
    match token.split_once('-') {
        Some((a, b)) => {
            let lo = parse_port(a)?;
            let hi = parse_port(b)?;
            if lo > hi {
                return Err(GrammarError::ReversedRange(token.to_string()));
            }
            Ok((lo, hi))
        }
        None => {
            let p = parse_port(token)?;
            Ok((p, p))
        }
    }
}

fn valid_network_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Parses one annotation entry (literal or `@name`).
pub fn parse_entry(text: &str) -> Result<EntryRef, GrammarError> {
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let Some(first) = tokens.first() else {
        return Err(GrammarError::Empty);
    };
    if let Some(name) = first.strip_prefix('@') {
        if !valid_network_name(name) {
            return Err(GrammarError::BadNetworkName(first.to_string()));
        }
        if let Some(extra) = tokens.get(1) {
            return Err(GrammarError::Trailing(extra.to_string()));
        }
        return Ok(EntryRef::Network(name.to_string()));
    }
    let cidr = Cidr::parse(first)?;
    let proto = match tokens.get(1) {
        None => Proto::Any,
        Some(p) => Proto::parse(p).ok_or_else(|| GrammarError::UnknownProto(p.to_string()))?,
    };
    let family_ok = match proto {
        Proto::Icmp => cidr.is_v4(),
        Proto::Icmpv6 => !cidr.is_v4(),
        _ => true,
    };
    if !family_ok {
        return Err(GrammarError::ProtoFamily {
            proto: proto.as_str().to_string(),
            family: if cidr.is_v4() { "IPv4" } else { "IPv6" },
            cidr: first.to_string(),
        });
    }
    let ports = match tokens.get(2) {
        None => None,
        Some(p) if !proto.has_ports() => {
            return Err(GrammarError::PortWithoutPorts {
                proto: proto.as_str().to_string(),
                port: p.to_string(),
            })
        }
        Some(p) => Some(parse_ports(p)?),
    };
    if let Some(extra) = tokens.get(3) {
        return Err(GrammarError::Trailing(extra.to_string()));
    }
    Ok(EntryRef::Literal(Entry { cidr, proto, ports }))
}

/// Parses an entry of the conflist's `networks`, where references are not allowed.
pub fn parse_network_entry(text: &str) -> Result<Entry, GrammarError> {
    match parse_entry(text)? {
        EntryRef::Literal(e) => Ok(e),
        EntryRef::Network(_) => Err(GrammarError::NetworkNotAllowed(text.trim().to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(s: &str) -> Entry {
        match parse_entry(s).unwrap() {
            EntryRef::Literal(e) => e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn accepts_the_documented_forms() {
        assert_eq!(
            lit("10.0.5.0/24 tcp 8443").to_string(),
            "10.0.5.0/24 tcp 8443"
        );
        assert_eq!(lit("10.96.0.10 udp 53").to_string(), "10.96.0.10/32 udp 53");
        assert_eq!(
            lit("fd00:5::/64 tcp 443-445").to_string(),
            "fd00:5::/64 tcp 443-445"
        );
        assert_eq!(lit("10.0.0.1").to_string(), "10.0.0.1/32 any");
        assert_eq!(lit("2001:db8::1").cidr.prefix(), 128);
        assert_eq!(lit("0.0.0.0/0 icmp").proto, Proto::Icmp);
        assert_eq!(lit("::/0 icmpv6").proto, Proto::Icmpv6);
        assert_eq!(lit("  10.0.0.1   sctp   9  ").ports, Some((9, 9)));
        assert_eq!(
            parse_entry("@orchestrator").unwrap(),
            EntryRef::Network("orchestrator".into())
        );
    }

    #[test]
    fn every_error_names_the_value() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("10.0.0.256", "10.0.0.256"),
            ("host.example", "host.example"),
            ("10.0.0.0/33", "10.0.0.0/33"),
            ("10.0.0.0/", "10.0.0.0/"),
            ("10.0.0.0/-1", "10.0.0.0/-1"),
            ("fd00::/129", "fd00::/129"),
            ("10.0.5.1/24", "10.0.5.0/24"),
            ("10.0.0.1 tcpp", "tcpp"),
            ("10.0.0.1 TCP", "TCP"),
            ("10.0.0.1 icmpv6", "icmpv6"),
            ("fd00::1 icmp", "icmp"),
            ("10.0.0.1 icmp 8", "8"),
            ("10.0.0.1 any 53", "53"),
            ("10.0.0.1 tcp 0", "\"0\""),
            ("10.0.0.1 tcp 65536", "65536"),
            ("10.0.0.1 tcp 99999999999", "99999999999"),
            ("10.0.0.1 tcp http", "http"),
            ("10.0.0.1 tcp +80", "+80"),
            ("10.0.0.1 tcp 445-443", "445-443"),
            ("10.0.0.1 tcp 1-", "\"\""),
            ("10.0.0.1 tcp 80 extra", "extra"),
            ("@bad.name", "@bad.name"),
            ("@", "@"),
            ("@dns extra", "extra"),
        ];
        for (input, needle) in cases {
            let err = parse_entry(input).expect_err(input).to_string();
            assert!(err.contains(needle), "{input:?}: {err:?} lacks {needle:?}");
        }
        assert!(parse_network_entry("@dns").is_err());
    }

    #[test]
    fn cidrs_keep_host_bits_clear_and_span_their_range() {
        assert_eq!(
            parse_entry("fd00::1/64").unwrap_err().to_string(),
            "\"fd00::1/64\" has host bits set; the network is fd00::/64"
        );
        assert_eq!(
            parse_entry("10.0.5.1/24").unwrap_err().to_string(),
            "\"10.0.5.1/24\" has host bits set; the network is 10.0.5.0/24"
        );
        assert_eq!(lit("10.0.5.0/24").cidr.range(), (0x0a00_0500, 0x0a00_05ff));
        assert_eq!(lit("0.0.0.0/0").cidr.range(), (0, u32::MAX as u128));
        assert_eq!(lit("::/0").cidr.range(), (0, u128::MAX));
        assert_eq!(lit("10.0.0.1").cidr.range(), (0x0a00_0001, 0x0a00_0001));
        // IPv4 sorts before IPv6, then by address, then by prefix length.
        let mut v = [lit("fd00::/8"), lit("10.0.0.0/16"), lit("10.0.0.0/8")];
        v.sort();
        let text: Vec<String> = v.iter().map(|e| e.cidr.to_string()).collect();
        assert_eq!(text, ["10.0.0.0/8", "10.0.0.0/16", "fd00::/8"]);
    }

    #[test]
    fn reference_semantics() {
        let e = lit("10.0.5.0/24 tcp 8443-8444");
        assert!(e.allows("10.0.5.9".parse().unwrap(), 6, Some(8444)));
        assert!(!e.allows("10.0.5.9".parse().unwrap(), 6, Some(8445)));
        assert!(!e.allows("10.0.5.9".parse().unwrap(), 17, Some(8443)));
        assert!(!e.allows("10.0.6.1".parse().unwrap(), 6, Some(8443)));
        assert!(!e.allows("::ffff:10.0.5.9".parse().unwrap(), 6, Some(8443)));
        let any = lit("0.0.0.0/0");
        assert!(any.allows("8.8.8.8".parse().unwrap(), 47, None));
        assert!(!any.allows("::1".parse().unwrap(), 6, Some(1)));
    }
}
