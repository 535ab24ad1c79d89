//! Network namespaces and traffic for the CRI suite: run code inside a netns on its own thread,
//! echo servers (TCP, UDP), and probes (TCP, UDP, ICMP echo) that report whether a round trip
//! succeeded. Knows nothing about containerd or egress-guard.
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

const PAYLOAD: &[u8] = b"egress-guard-cri-probe";

fn enter(ns: &Path) -> Result<(), String> {
    let f = File::open(ns).map_err(|e| format!("open {}: {e}", ns.display()))?;
    // SAFETY: setns on a valid fd only changes this thread's network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(format!(
            "setns {}: {}",
            ns.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Runs `f` on a fresh thread inside `ns` (the host netns when None); the thread ends with `f`,
/// so the caller's namespace never changes.
pub fn in_netns<T: Send>(ns: Option<&Path>, f: impl FnOnce() -> T + Send) -> Result<T, String> {
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(ns) = ns {
                enter(ns)?;
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

/// An echo server running on its own thread in a netns; stops when dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
    pub addr: SocketAddr,
    pub proto: Proto,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Starts a TCP or UDP echo server bound to `addr` inside `ns`. Retries the bind for a few
/// seconds (an IPv6 address may still be tentative).
pub fn serve(ns: Option<&Path>, addr: SocketAddr, proto: Proto) -> Result<Server, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<Result<(), String>>();
    let ns: Option<PathBuf> = ns.map(Path::to_path_buf);
    let flag = stop.clone();
    std::thread::spawn(move || {
        if let Some(ns) = ns.as_deref() {
            if let Err(e) = enter(ns) {
                let _ = tx.send(Err(e));
                return;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        match proto {
            Proto::Tcp => {
                let l = loop {
                    match TcpListener::bind(addr) {
                        Ok(l) => break l,
                        Err(e) if Instant::now() > deadline => {
                            let _ = tx.send(Err(format!("bind tcp {addr}: {e}")));
                            return;
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                };
                let _ = l.set_nonblocking(true);
                let _ = tx.send(Ok(()));
                while !flag.load(Ordering::SeqCst) {
                    match l.accept() {
                        Ok((mut s, _)) => {
                            std::thread::spawn(move || {
                                let _ = s.set_nonblocking(false);
                                let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                                let mut buf = [0u8; 256];
                                if let Ok(n) = s.read(&mut buf) {
                                    let _ = s.write_all(&buf[..n]);
                                }
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            }
            Proto::Udp => {
                let s = loop {
                    match UdpSocket::bind(addr) {
                        Ok(s) => break s,
                        Err(e) if Instant::now() > deadline => {
                            let _ = tx.send(Err(format!("bind udp {addr}: {e}")));
                            return;
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                };
                let _ = s.set_read_timeout(Some(Duration::from_millis(100)));
                let _ = tx.send(Ok(()));
                let mut buf = [0u8; 256];
                while !flag.load(Ordering::SeqCst) {
                    if let Ok((n, peer)) = s.recv_from(&mut buf) {
                        let _ = s.send_to(&buf[..n], peer);
                    }
                }
            }
            Proto::Icmp => {
                let _ = tx.send(Err("no server for icmp: the kernel answers echo".into()));
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(10))
        .map_err(|e| format!("server {addr}: {e}"))??;
    Ok(Server { stop, addr, proto })
}

/// One round trip from inside a netns.
#[derive(Clone, Debug)]
pub struct Probe {
    pub proto: Proto,
    pub dst: IpAddr,
    /// Ignored for ICMP.
    pub port: u16,
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.proto {
            Proto::Icmp => write!(f, "icmp {}", self.dst),
            p => write!(
                f,
                "{} {}",
                format!("{p:?}").to_lowercase(),
                SocketAddr::new(self.dst, self.port)
            ),
        }
    }
}

/// True when the round trip completed within `timeout`.
pub fn probe(ns: &Path, p: &Probe, timeout: Duration) -> bool {
    in_netns(Some(ns), || match p.proto {
        Proto::Tcp => tcp_echo(SocketAddr::new(p.dst, p.port), timeout),
        Proto::Udp => udp_echo(SocketAddr::new(p.dst, p.port), timeout),
        Proto::Icmp => icmp_echo(p.dst, timeout),
    })
    .unwrap_or(false)
}

/// Retries a probe until it passes or `total` elapses (for positive controls and allowed
/// traffic: the first packets may wait for neighbour resolution or DAD).
pub fn probe_until_pass(ns: &Path, p: &Probe, total: Duration) -> bool {
    let deadline = Instant::now() + total;
    loop {
        if probe(ns, p, Duration::from_millis(700)) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
    }
}

fn tcp_echo(dst: SocketAddr, timeout: Duration) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&dst, timeout) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(timeout));
    if s.write_all(PAYLOAD).is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(n) if &buf[..n] == PAYLOAD)
}

fn udp_echo(dst: SocketAddr, timeout: Duration) -> bool {
    let local: SocketAddr = if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
        .parse()
        .expect("literal address");
    let Ok(s) = UdpSocket::bind(local) else {
        return false;
    };
    if s.connect(dst).is_err() || s.set_read_timeout(Some(timeout)).is_err() {
        return false;
    }
    if s.send(PAYLOAD).is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.recv(&mut buf), Ok(n) if &buf[..n] == PAYLOAD)
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

static ICMP_ID: AtomicU16 = AtomicU16::new(0);

/// ICMP / ICMPv6 echo over a raw socket (root): true when the matching echo reply arrives.
fn icmp_echo(dst: IpAddr, timeout: Duration) -> bool {
    let (domain, proto, req, rep) = match dst {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, 8u8, 0u8),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128u8, 129u8),
    };
    let id = ICMP_ID.fetch_add(1, Ordering::SeqCst) ^ (std::process::id() as u16);
    let mut pkt = vec![req, 0, 0, 0];
    pkt.extend_from_slice(&id.to_be_bytes());
    pkt.extend_from_slice(&1u16.to_be_bytes());
    pkt.extend_from_slice(PAYLOAD);
    if dst.is_ipv4() {
        let c = checksum(&pkt);
        pkt[2..4].copy_from_slice(&c.to_be_bytes());
    } // the kernel fills in the ICMPv6 checksum on raw ICMPv6 sockets
      // SAFETY: plain socket syscalls on a descriptor this function owns and closes.
    unsafe {
        let fd = libc::socket(domain, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto);
        if fd < 0 {
            return false;
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        let mut ss: libc::sockaddr_storage = std::mem::zeroed();
        let len = match dst {
            IpAddr::V4(a) => {
                let sin = (&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                (*sin).sin_family = libc::AF_INET as libc::sa_family_t;
                (*sin).sin_addr.s_addr = u32::from_ne_bytes(a.octets());
                std::mem::size_of::<libc::sockaddr_in>()
            }
            IpAddr::V6(a) => {
                let sin6 = (&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                (*sin6).sin6_family = libc::AF_INET6 as libc::sa_family_t;
                (*sin6).sin6_addr.s6_addr = a.octets();
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        let sent = libc::sendto(
            fd,
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&ss as *const libc::sockaddr_storage).cast(),
            len as libc::socklen_t,
        );
        let deadline = Instant::now() + timeout;
        let mut ok = false;
        let mut buf = [0u8; 1500];
        while sent > 0 && !ok && Instant::now() < deadline {
            let n = libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0);
            if n <= 0 {
                continue;
            }
            let data = &buf[..n as usize];
            let icmp = match dst {
                IpAddr::V4(a) => {
                    let ihl = usize::from(data[0] & 0x0f) * 4;
                    if data.len() < ihl + 8 || data[12..16] != a.octets() {
                        continue;
                    }
                    &data[ihl..]
                }
                IpAddr::V6(_) => data,
            };
            ok = icmp.len() >= 8 && icmp[0] == rep && icmp[4..6] == id.to_be_bytes();
        }
        libc::close(fd);
        ok
    }
}

/// Name of the host-side veth whose peer is `eth0` in the netns at `ns`.
pub fn host_veth(ns: &Path) -> Result<String, String> {
    let out = crate::cri::node::run(
        "nsenter",
        &[
            &format!("--net={}", ns.display()),
            "ip",
            "-j",
            "link",
            "show",
            "dev",
            "eth0",
        ],
    )?;
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| format!("ip -j: {e}"))?;
    let peer = v[0]["link_index"]
        .as_u64()
        .ok_or_else(|| format!("no link_index in {out}"))?;
    let host = crate::cri::node::run("ip", &["-j", "link", "show"])?;
    let links: serde_json::Value =
        serde_json::from_str(&host).map_err(|e| format!("ip -j: {e}"))?;
    links
        .as_array()
        .and_then(|a| a.iter().find(|l| l["ifindex"].as_u64() == Some(peer)))
        .and_then(|l| l["ifname"].as_str())
        .map(str::to_string)
        .ok_or_else(|| format!("no host link with ifindex {peer}"))
}
