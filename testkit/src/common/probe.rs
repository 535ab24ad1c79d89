//! Traffic inside namespaces: echo servers that record what reaches them, and probes (TCP, UDP,
//! ICMP echo, a hand-crafted raw TCP SYN) that run on a thread moved into a pod's namespace.
//! Every probe is bounded in time; a probe "passes" only when a reply comes back.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

fn enter(ns: &str) {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}"))
        .unwrap_or_else(|e| panic!("open netns {ns}: {e}"));
    // SAFETY: valid fd; affects only the calling (test-owned) thread.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// Runs `f` on a new thread inside namespace `ns`.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        enter(&ns);
        f()
    })
    .join()
    .expect("probe thread panicked")
}

/// A server in a namespace; stops on drop. `seen` holds what reached it.
pub struct Server {
    stop: Arc<AtomicBool>,
    pub seen: Arc<Mutex<Vec<String>>>,
    handle: Option<JoinHandle<()>>,
}

impl Server {
    fn spawn(
        ns: &str,
        body: impl FnOnce(Arc<AtomicBool>, Arc<Mutex<Vec<String>>>, std::sync::mpsc::Sender<()>)
            + Send
            + 'static,
    ) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, sn, ns) = (stop.clone(), seen.clone(), ns.to_string());
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            enter(&ns);
            body(s, sn, tx);
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("server did not start");
        Server {
            stop,
            seen,
            handle: Some(handle),
        }
    }

    /// TCP echo server on [::]:port (IPv4 and IPv6): echoes one line per connection.
    pub fn tcp(ns: &str, port: u16) -> Server {
        Server::spawn(ns, move |stop, seen, ready| {
            let l =
                TcpListener::bind(("::", port)).unwrap_or_else(|e| panic!("bind tcp {port}: {e}"));
            l.set_nonblocking(true).unwrap();
            ready.send(()).unwrap();
            while !stop.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        c.set_nonblocking(false).unwrap();
                        c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                        let mut line = String::new();
                        if BufReader::new(c.try_clone().unwrap())
                            .read_line(&mut line)
                            .is_ok()
                        {
                            seen.lock().unwrap().push(line.trim().to_string());
                            let _ = c.write_all(line.as_bytes());
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        })
    }

    /// UDP echo server on [::]:port.
    pub fn udp(ns: &str, port: u16) -> Server {
        Server::spawn(ns, move |stop, seen, ready| {
            let s =
                UdpSocket::bind(("::", port)).unwrap_or_else(|e| panic!("bind udp {port}: {e}"));
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            ready.send(()).unwrap();
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::SeqCst) {
                if let Ok((n, from)) = s.recv_from(&mut buf) {
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf[..n]).to_string());
                    let _ = s.send_to(&buf[..n], from);
                }
            }
        })
    }

    /// UDP echo servers on [::]:port for each of `ports`, served by one thread.
    pub fn udp_ports(ns: &str, ports: Vec<u16>) -> Server {
        Server::spawn(ns, move |stop, seen, ready| {
            let socks: Vec<UdpSocket> = ports
                .iter()
                .map(|p| {
                    let s =
                        UdpSocket::bind(("::", *p)).unwrap_or_else(|e| panic!("bind udp {p}: {e}"));
                    s.set_nonblocking(true).unwrap();
                    s
                })
                .collect();
            ready.send(()).unwrap();
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::SeqCst) {
                let mut idle = true;
                for s in &socks {
                    while let Ok((n, from)) = s.recv_from(&mut buf) {
                        idle = false;
                        seen.lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&buf[..n]).to_string());
                        let _ = s.send_to(&buf[..n], from);
                    }
                }
                if idle {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        })
    }

    /// TCP echo servers on [::]:port for each of `ports` (one line per connection), served by
    /// one thread.
    pub fn tcp_ports(ns: &str, ports: Vec<u16>) -> Server {
        Server::spawn(ns, move |stop, seen, ready| {
            let listeners: Vec<TcpListener> = ports
                .iter()
                .map(|p| {
                    let l = TcpListener::bind(("::", *p))
                        .unwrap_or_else(|e| panic!("bind tcp {p}: {e}"));
                    l.set_nonblocking(true).unwrap();
                    l
                })
                .collect();
            ready.send(()).unwrap();
            while !stop.load(Ordering::SeqCst) {
                let mut idle = true;
                for l in &listeners {
                    while let Ok((c, _)) = l.accept() {
                        idle = false;
                        c.set_nonblocking(false).unwrap();
                        c.set_read_timeout(Some(Duration::from_millis(500)))
                            .unwrap();
                        let mut line = String::new();
                        let mut w = c.try_clone().unwrap();
                        if BufReader::new(c).read_line(&mut line).is_ok() {
                            seen.lock().unwrap().push(line.trim().to_string());
                            let _ = w.write_all(line.as_bytes());
                        }
                    }
                }
                if idle {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        })
    }

    /// Records every IPv4 TCP segment arriving in the namespace as "tcp SPORT>DPORT".
    pub fn raw_tcp_sniffer(ns: &str) -> Server {
        Server::raw_sniffer(ns, libc::AF_INET, libc::IPPROTO_TCP, |l4| {
            let ports = l4.get(..4)?;
            let sport = u16::from_be_bytes([ports[0], ports[1]]);
            let dport = u16::from_be_bytes([ports[2], ports[3]]);
            Some(format!("tcp {sport}>{dport}"))
        })
    }

    /// Records the payload (after the IPv4 header) of every packet of IP protocol `proto`.
    pub fn raw_ip_sniffer(ns: &str, proto: i32) -> Server {
        Server::raw_sniffer(ns, libc::AF_INET, proto, |l4| {
            Some(String::from_utf8_lossy(l4).to_string())
        })
    }

    /// A raw socket for `proto` in `ns` (`fam` AF_INET or AF_INET6); `record` turns what follows
    /// the IP header (an IPv4 socket reads it, an IPv6 one does not) into the entry stored in
    /// `seen` (or nothing).
    fn raw_sniffer(ns: &str, fam: i32, proto: i32, record: fn(&[u8]) -> Option<String>) -> Server {
        Server::spawn(ns, move |stop, seen, ready| {
            // SAFETY: plain socket call; checked below.
            let fd = unsafe { libc::socket(fam, libc::SOCK_RAW, proto) };
            assert!(
                fd >= 0,
                "raw socket {proto}: {}",
                std::io::Error::last_os_error()
            );
            set_timeout(fd, Duration::from_millis(50));
            ready.send(()).unwrap();
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::SeqCst) {
                // SAFETY: buf is valid for writes of its length.
                let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n <= 0 {
                    continue;
                }
                let head = if fam == libc::AF_INET {
                    ((buf[0] & 0x0f) as usize) * 4
                } else {
                    0
                };
                if let Some(entry) = buf.get(head..n as usize).and_then(record) {
                    seen.lock().unwrap().push(entry);
                }
            }
            // SAFETY: fd is ours.
            unsafe { libc::close(fd) };
        })
    }

    /// Records every ICMPv6 message arriving in the namespace (any interface, multicast
    /// included) as "TYPE TEXT", TEXT being what follows the 4-byte ICMPv6 header.
    pub fn icmp6_sniffer(ns: &str) -> Server {
        Server::raw_sniffer(ns, libc::AF_INET6, libc::IPPROTO_ICMPV6, |msg| {
            let (head, text) = (msg.get(..4)?, msg.get(4..)?);
            Some(format!("{} {}", head[0], String::from_utf8_lossy(text)))
        })
    }

    pub fn saw(&self, marker: &str) -> bool {
        self.seen.lock().unwrap().iter().any(|s| s == marker)
    }

    /// Whether any record contains `marker` (after a moment for it to arrive).
    pub fn saw_containing(&self, marker: &str) -> bool {
        std::thread::sleep(Duration::from_millis(300));
        self.seen.lock().unwrap().iter().any(|s| s.contains(marker))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn set_timeout(fd: i32, d: Duration) {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as _,
        tv_usec: d.subsec_micros() as _,
    };
    // SAFETY: tv is valid for the call.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
}

/// Connects from `ns` to `addr`, sends `marker`, expects it echoed back.
pub fn tcp(ns: &str, addr: &str, port: u16, marker: &str) -> bool {
    let target = SocketAddr::new(addr.parse().unwrap(), port);
    let marker = marker.to_string();
    in_ns(ns, move || {
        let Ok(mut c) = TcpStream::connect_timeout(&target, PROBE_TIMEOUT) else {
            return false;
        };
        c.set_read_timeout(Some(PROBE_TIMEOUT)).unwrap();
        if c.write_all(format!("{marker}\n").as_bytes()).is_err() {
            return false;
        }
        let mut line = String::new();
        BufReader::new(c).read_line(&mut line).is_ok() && line.trim() == marker
    })
}

/// Sends a UDP datagram from `ns` and expects it echoed back (two tries).
pub fn udp(ns: &str, addr: &str, port: u16, marker: &str) -> bool {
    udp_from(ns, None, addr, port, marker)
}

/// `udp` from the source address `src` (the kernel's choice when `None`).
pub fn udp_from(ns: &str, src: Option<&str>, addr: &str, port: u16, marker: &str) -> bool {
    let ip: IpAddr = addr.parse().unwrap();
    let target = SocketAddr::new(ip, port);
    let marker = marker.to_string();
    let src: Option<IpAddr> = src.map(|s| s.parse().unwrap());
    in_ns(ns, move || {
        let s = match src {
            Some(a) => UdpSocket::bind(SocketAddr::new(a, 0)).unwrap(),
            None if ip.is_ipv4() => UdpSocket::bind("0.0.0.0:0").unwrap(),
            None => UdpSocket::bind("[::]:0").unwrap(),
        };
        s.set_read_timeout(Some(PROBE_TIMEOUT / 2)).unwrap();
        let mut buf = [0u8; 1500];
        for _ in 0..2 {
            let _ = s.send_to(marker.as_bytes(), target);
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                if &buf[..n] == marker.as_bytes() {
                    return true;
                }
            }
        }
        false
    })
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += word as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn sockaddr(ip: IpAddr) -> (libc::sockaddr_storage, u32) {
    // SAFETY: sockaddr_storage is plain data.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match ip {
        IpAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large enough and aligned for sockaddr_in.
            let sin = unsafe {
                &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as u16;
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
            (ss, std::mem::size_of::<libc::sockaddr_in>() as u32)
        }
        IpAddr::V6(a) => {
            // SAFETY: as above for sockaddr_in6.
            let sin6 = unsafe {
                &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as u16;
            sin6.sin6_addr.s6_addr = a.octets();
            (ss, std::mem::size_of::<libc::sockaddr_in6>() as u32)
        }
    }
}

/// ICMP/ICMPv6 echo from `ns` to `dst`; true if a matching echo reply arrives.
pub fn ping(ns: &str, dst: &str) -> bool {
    let ip: IpAddr = dst.parse().unwrap();
    in_ns(ns, move || {
        let (fam, proto, req, rep) = match ip {
            IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, 8u8, 0u8),
            IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, 128u8, 129u8),
        };
        // SAFETY: plain socket call.
        let fd = unsafe { libc::socket(fam, libc::SOCK_RAW, proto) };
        assert!(
            fd >= 0,
            "raw icmp socket: {}",
            std::io::Error::last_os_error()
        );
        set_timeout(fd, Duration::from_millis(100));
        let id: u16 = (std::process::id() as u16) ^ 0x5a5a;
        let mut pkt = vec![req, 0, 0, 0, (id >> 8) as u8, id as u8, 0, 1];
        pkt.extend_from_slice(b"egress-guard-ping");
        if ip.is_ipv4() {
            let c = checksum(&pkt);
            pkt[2..4].copy_from_slice(&c.to_be_bytes());
        }
        let (ss, len) = sockaddr(ip);
        let deadline = Instant::now() + PROBE_TIMEOUT;
        let mut ok = false;
        // SAFETY: pkt and ss are valid for the call.
        unsafe {
            libc::sendto(
                fd,
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&ss as *const libc::sockaddr_storage).cast(),
                len,
            )
        };
        let mut buf = [0u8; 1500];
        while Instant::now() < deadline && !ok {
            // SAFETY: buf is valid for writes.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                continue;
            }
            let n = n as usize;
            let off = if ip.is_ipv4() {
                ((buf[0] & 0x0f) as usize) * 4
            } else {
                0
            };
            if n >= off + 8
                && buf[off] == rep
                && u16::from_be_bytes([buf[off + 4], buf[off + 5]]) == id
            {
                ok = true;
            }
        }
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
        ok
    })
}

/// Sends a hand-built IPv4 TCP SYN (IP header included) from `ns`; fire and forget.
pub fn raw_tcp_syn(ns: &str, src: &str, dst: &str, sport: u16, dport: u16) {
    let (s, d): (Ipv4Addr, Ipv4Addr) = (src.parse().unwrap(), dst.parse().unwrap());
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&s.octets());
    pseudo.extend_from_slice(&d.octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(&tcp);
    let c = checksum(&pseudo);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 40, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&s.octets());
    ip.extend_from_slice(&d.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&tcp);
    // IPPROTO_RAW: the buffer carries its own IP header.
    raw_send(ns, IpAddr::V4(d), None, libc::IPPROTO_RAW, ip);
}

/// Sends `payload` three times as raw IPv4 packets of protocol `proto` from `ns` to `dst`.
pub fn raw_ip_send(ns: &str, dst: &str, proto: i32, payload: &str) {
    let dst = IpAddr::V4(dst.parse().unwrap());
    raw_send(ns, dst, None, proto, payload.as_bytes().to_vec());
}

/// Sends `bytes` three times on a raw socket of `proto` from `ns` to `dst` (IPv4 or IPv6; out
/// of interface `dev` when given, as a link-local destination needs); fire and forget.
fn raw_send(ns: &str, dst: IpAddr, dev: Option<&str>, proto: i32, bytes: Vec<u8>) {
    let dev = dev.map(|d| std::ffi::CString::new(d).unwrap());
    in_ns(ns, move || {
        let fam = if dst.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: plain socket call.
        let fd = unsafe { libc::socket(fam, libc::SOCK_RAW, proto) };
        assert!(
            fd >= 0,
            "raw socket {proto}: {}",
            std::io::Error::last_os_error()
        );
        let (mut ss, len) = sockaddr(dst);
        if let (Some(dev), IpAddr::V6(_)) = (&dev, dst) {
            // SAFETY: dev is a valid C string.
            let ifindex = unsafe { libc::if_nametoindex(dev.as_ptr()) };
            assert!(ifindex > 0, "no interface {dev:?}");
            // SAFETY: sockaddr() filled a sockaddr_in6 into ss.
            unsafe {
                (*(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>())
                    .sin6_scope_id = ifindex
            };
        }
        for _ in 0..3 {
            // SAFETY: buffers valid for the call.
            unsafe {
                libc::sendto(
                    fd,
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    0,
                    (&ss as *const libc::sockaddr_storage).cast(),
                    len,
                )
            };
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
    });
    std::thread::sleep(Duration::from_millis(200));
}

/// Sends an ICMPv6 message of `icmp_type` (code 0, `text` after the 4-byte header; the kernel
/// fills in the checksum) three times from `ns` out of `dev` to the link-local multicast group
/// `group`; fire and forget.
pub fn icmp6_multicast(ns: &str, dev: &str, group: &str, icmp_type: u8, text: &str) {
    let mut msg = vec![icmp_type, 0, 0, 0];
    msg.extend_from_slice(text.as_bytes());
    raw_send(
        ns,
        group.parse().unwrap(),
        Some(dev),
        libc::IPPROTO_ICMPV6,
        msg,
    );
}

/// Sends a UDP datagram from `ns` on a connected socket and expects the ICMP (ICMPv6) port
/// unreachable error back, which the kernel reports as ECONNREFUSED (two tries).
pub fn udp_refused(ns: &str, addr: &str, port: u16) -> bool {
    let ip: IpAddr = addr.parse().unwrap();
    let target = SocketAddr::new(ip, port);
    in_ns(ns, move || {
        let bind = if ip.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let s = UdpSocket::bind(bind).unwrap();
        s.connect(target).unwrap();
        s.set_read_timeout(Some(PROBE_TIMEOUT / 2)).unwrap();
        let mut buf = [0u8; 64];
        for _ in 0..2 {
            let _ = s.send(b"closed?");
            match s.recv(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return true,
                _ => continue,
            }
        }
        false
    })
}

/// Records every frame seen on `dev` in `ns` (AF_PACKET, all protocols, both directions), as
/// raw bytes; `saw_bytes` finds a marker anywhere in one.
pub struct FrameSniffer {
    /// Stops the capture when the sniffer is dropped.
    _server: Server,
    frames: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl FrameSniffer {
    pub fn new(ns: &str, dev: &str) -> FrameSniffer {
        let frames = Arc::new(Mutex::new(Vec::new()));
        let (store, dev) = (frames.clone(), dev.to_string());
        let server = Server::spawn(ns, move |stop, _seen, ready| {
            let fd = packet_socket(&dev);
            set_timeout(fd, Duration::from_millis(50));
            // Room for a flood: frames the reader has not taken yet are not lost.
            let size: libc::c_int = 64 << 20;
            // SAFETY: fd is a socket; the option value is a c_int.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                )
            };
            ready.send(()).unwrap();
            let mut buf = [0u8; 4096];
            while !stop.load(Ordering::SeqCst) {
                // SAFETY: buf is valid for writes of its length.
                let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n > 0 {
                    store.lock().unwrap().push(buf[..n as usize].to_vec());
                }
            }
            // SAFETY: fd is ours.
            unsafe { libc::close(fd) };
        });
        FrameSniffer {
            _server: server,
            frames,
        }
    }

    /// How many frames seen so far contain `marker`.
    pub fn count_bytes(&self, marker: &[u8]) -> usize {
        self.frames
            .lock()
            .unwrap()
            .iter()
            .filter(|f| f.windows(marker.len()).any(|w| w == marker))
            .count()
    }

    pub fn saw_bytes(&self, marker: &[u8]) -> bool {
        std::thread::sleep(Duration::from_millis(300));
        self.frames
            .lock()
            .unwrap()
            .iter()
            .any(|f| f.windows(marker.len()).any(|w| w == marker))
    }
}

/// An AF_PACKET socket bound to `dev` for every protocol.
fn packet_socket(dev: &str) -> i32 {
    let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
    // SAFETY: plain socket call; checked below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto) };
    assert!(
        fd >= 0,
        "packet socket: {}",
        std::io::Error::last_os_error()
    );
    let name = std::ffi::CString::new(dev).unwrap();
    // SAFETY: valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(index > 0, "no interface {dev}");
    // SAFETY: zeroed sockaddr_ll is valid; fields set below.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = proto as u16;
    sa.sll_ifindex = index as i32;
    // SAFETY: sa is a valid sockaddr_ll for the call.
    let rc = unsafe {
        libc::bind(
            fd,
            (&sa as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(
        rc,
        0,
        "bind packet socket: {}",
        std::io::Error::last_os_error()
    );
    fd
}

/// Sends one whole Ethernet frame out of `dev` in `ns` through a packet socket (what a
/// process with CAP_NET_RAW can do).
pub fn send_frame(ns: &str, dev: &str, frame: Vec<u8>) {
    send_frame_as(ns, dev, frame, None, false);
}

/// Sends every frame of `frames` out of `dev` in `ns` from one packet socket, as fast as the
/// device takes them (a flood); returns how many the kernel accepted.
pub fn send_frames(ns: &str, dev: &str, frames: Vec<Vec<u8>>) -> usize {
    let dev = dev.to_string();
    let (tx, rx) = std::sync::mpsc::channel();
    in_ns(ns, move || {
        let fd = packet_socket(&dev);
        let mut sent = 0;
        for f in &frames {
            // SAFETY: f is valid for reads of its length.
            let n = unsafe { libc::send(fd, f.as_ptr().cast(), f.len(), 0) };
            if n as usize == f.len() {
                sent += 1;
            }
        }
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
        tx.send(sent).unwrap();
    });
    rx.recv().unwrap()
}

/// Sends `frame` from a packet socket with `protocol` as the packet's protocol (what the
/// kernel's `meta protocol` then says, whatever the frame's type) and, with `bypass`, the
/// socket's `PACKET_QDISC_BYPASS` set (the frame skips the queueing layer). A frame that a
/// filter on the sending device drops is not an error: whether it arrived is for the caller's
/// sniffer to say.
pub fn send_frame_as(ns: &str, dev: &str, frame: Vec<u8>, protocol: Option<u16>, bypass: bool) {
    let dev = dev.to_string();
    in_ns(ns, move || {
        let fd = packet_socket(&dev);
        if bypass {
            let one: libc::c_int = 1;
            // SAFETY: fd is a packet socket; the option value is a c_int.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_PACKET,
                    libc::PACKET_QDISC_BYPASS,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                )
            };
            assert_eq!(
                rc,
                0,
                "PACKET_QDISC_BYPASS: {}",
                std::io::Error::last_os_error()
            );
        }
        let name = std::ffi::CString::new(dev.as_str()).unwrap();
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_protocol = protocol.unwrap_or(libc::ETH_P_ALL as u16).to_be();
        // SAFETY: valid C string.
        sa.sll_ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        sa.sll_halen = 6;
        sa.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: frame and sa are valid for reads of their lengths.
        let n = unsafe {
            libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sa as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        let err = std::io::Error::last_os_error();
        // ENOBUFS: a filter on the sending device (pod placement) dropped the frame.
        assert!(
            n as usize == frame.len() || err.raw_os_error() == Some(libc::ENOBUFS),
            "send frame: {err}"
        );
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
    });
}
