//! A blocking netlink socket (rtnetlink or nfnetlink) with request/ack, dump and batch helpers.
//! Knows the netlink header and error format; knows nothing of nf_tables or links.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::NetlinkError;

pub const NETLINK_ROUTE: i32 = 0;
pub const NETLINK_NETFILTER: i32 = 12;

pub const NLMSG_HDRLEN: usize = 16;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
/// Set on dump messages when the data changed during the dump.
pub const NLM_F_DUMP_INTR: u16 = 0x10;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_APPEND: u16 = 0x800;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NETLINK_CAP_ACK: i32 = 10;
const NETLINK_EXT_ACK: i32 = 11;
const NETLINK_GET_STRICT_CHK: i32 = 12;
const RECV_BUF: usize = 256 * 1024;

/// One received netlink message (header fields and payload after the header).
#[derive(Debug, Clone)]
pub struct Message {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: Vec<u8>,
}

/// Serialises one netlink message: header then payload.
pub fn encode_message(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + payload.len();
    let mut out = Vec::with_capacity(super::attr::align(len));
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(super::attr::align(out.len()), 0);
    out
}

/// Splits a datagram into messages; malformed trailing bytes are ignored.
pub fn decode_messages(mut buf: &[u8]) -> Vec<Message> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            break;
        }
        out.push(Message {
            kind: u16::from_ne_bytes([buf[4], buf[5]]),
            flags: u16::from_ne_bytes([buf[6], buf[7]]),
            seq: u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]),
            payload: buf[NLMSG_HDRLEN..len].to_vec(),
        });
        buf = &buf[super::attr::align(len).min(buf.len())..];
    }
    out
}

/// Decodes an NLMSG_ERROR payload: (errno as a positive number or 0 for an ack, acked seq, message).
fn decode_error(msg: &Message) -> (i32, u32, Option<String>) {
    let p = &msg.payload;
    if p.len() < 4 + NLMSG_HDRLEN {
        return (libc::EPROTO, 0, None);
    }
    let err = i32::from_ne_bytes([p[0], p[1], p[2], p[3]]);
    let seq = u32::from_ne_bytes([p[12], p[13], p[14], p[15]]);
    let mut text = None;
    if msg.flags & NLM_F_ACK_TLVS != 0 {
        // With NETLINK_CAP_ACK the original payload is not echoed: TLVs follow its header.
        let orig_len = u32::from_ne_bytes([p[4], p[5], p[6], p[7]]) as usize;
        let skip = if msg.flags & 0x100 != 0 {
            4 + NLMSG_HDRLEN // NLM_F_CAPPED
        } else {
            4 + super::attr::align(orig_len)
        };
        if let Some(tlvs) = p.get(skip..) {
            if let Some(a) = super::attr::Attrs::new(tlvs).get(NLMSGERR_ATTR_MSG) {
                text = Some(a.string());
            }
        }
    }
    (-err, seq, text)
}

/// A netlink socket bound in the network namespace that was current when it was opened.
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
    /// Receive buffer, allocated once (a dump arrives in many datagrams) and never zeroed:
    /// only the bytes the kernel wrote are read, and zeroing 256 KiB per socket cost more
    /// than any netlink request of an ADD (it touched every page of it).
    buf: Vec<u8>,
}

impl Socket {
    pub fn open(protocol: i32) -> Result<Self, NetlinkError> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(NetlinkError::io("socket", io::Error::last_os_error()));
        }
        // SAFETY: fd is a freshly created, valid descriptor that we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let sock = Socket {
            fd,
            seq: std::process::id().wrapping_mul(1000),
            buf: Vec::with_capacity(RECV_BUF),
        };
        sock.setopt_int(libc::SOL_NETLINK, NETLINK_CAP_ACK, 1)?;
        sock.setopt_int(libc::SOL_NETLINK, NETLINK_EXT_ACK, 1)?;
        // Large batches produce one ack per message; keep them from overflowing.
        let _ = sock.setopt_int(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 4 << 20);
        let _ = sock.setopt_int(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 4 << 20);
        let tv = libc::timeval {
            tv_sec: 10,
            tv_usec: 0,
        };
        // SAFETY: tv outlives the call; the size matches the pointed-to type.
        let rc = unsafe {
            libc::setsockopt(
                sock.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(NetlinkError::io("setsockopt", io::Error::last_os_error()));
        }
        // SAFETY: sockaddr_nl is plain data; zeroed is a valid "any" address.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: addr is a valid sockaddr_nl for the duration of the call.
        let rc = unsafe {
            libc::bind(
                sock.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(NetlinkError::io("bind", io::Error::last_os_error()));
        }
        Ok(sock)
    }

    /// Raises the receive buffer to `bytes` (past `rmem_max` with CAP_NET_ADMIN, else as far
    /// as the system allows): for subscriptions whose messages arrive in bursts.
    pub fn grow_recv_buffer(&self, bytes: i32) {
        if self
            .setopt_int(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, bytes)
            .is_err()
        {
            let _ = self.setopt_int(libc::SOL_SOCKET, libc::SO_RCVBUF, bytes);
        }
    }

    fn setopt_int(&self, level: i32, name: i32, value: i32) -> Result<(), NetlinkError> {
        // SAFETY: value outlives the call and the length is that of an i32.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&value as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(NetlinkError::io("setsockopt", io::Error::last_os_error()));
        }
        Ok(())
    }

    pub fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    pub fn send(&self, bytes: &[u8]) -> Result<(), NetlinkError> {
        // SAFETY: sockaddr_nl zeroed = the kernel (pid 0).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: bytes and addr are valid for the duration of the call.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(NetlinkError::io("sendto", io::Error::last_os_error()));
        }
        if rc as usize != bytes.len() {
            return Err(NetlinkError::io(
                "sendto",
                io::Error::new(io::ErrorKind::WriteZero, "short netlink send"),
            ));
        }
        Ok(())
    }

    /// The descriptor, for checks that two handles are one socket.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Receives one datagram. `nonblocking` returns `Ok(None)` when nothing is queued.
    pub fn recv(&mut self, nonblocking: bool) -> Result<Option<Vec<Message>>, NetlinkError> {
        let buf = &mut self.buf;
        buf.clear();
        let flags = if nonblocking { libc::MSG_DONTWAIT } else { 0 };
        loop {
            let room = buf.spare_capacity_mut();
            // SAFETY: the spare capacity is valid for writes of its length.
            let rc = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    room.as_mut_ptr().cast(),
                    room.len(),
                    flags,
                )
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::EAGAIN) if nonblocking => return Ok(None),
                    _ => return Err(NetlinkError::io("recv", e)),
                }
            }
            // recv(2) without MSG_TRUNC returns at most the length it was given.
            let n = (rc as usize).min(buf.capacity());
            // SAFETY: the kernel initialised the first `n` bytes, which fit the capacity.
            unsafe { buf.set_len(n) };
            return Ok(Some(decode_messages(buf)));
        }
    }

    /// Sends one request with ACK and waits for the ack; returns any non-ack replies.
    pub fn request(
        &mut self,
        op: &'static str,
        kind: u16,
        flags: u16,
        payload: &[u8],
    ) -> Result<Vec<Message>, NetlinkError> {
        let (replies, _) = self.exchange(op, kind, flags | NLM_F_REQUEST | NLM_F_ACK, payload)?;
        Ok(replies)
    }

    /// Sends a dump request and collects every message until NLMSG_DONE. A dump the kernel
    /// marks as interrupted (NLM_F_DUMP_INTR: the data changed while it was being read) may be
    /// incomplete, so it is repeated; after a few interrupted tries the error is returned.
    /// A dump the kernel filters by the header in `payload` (strict checking, Linux 4.20 and
    /// later). `None` where the kernel does not check strictly: then it would ignore the
    /// filter, and the caller must dump everything.
    pub fn dump_filtered(
        &mut self,
        op: &'static str,
        kind: u16,
        payload: &[u8],
    ) -> Result<Option<Vec<Message>>, NetlinkError> {
        if self
            .setopt_int(libc::SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
            .is_err()
        {
            return Ok(None);
        }
        let result = self.dump(op, kind, payload);
        self.setopt_int(libc::SOL_NETLINK, NETLINK_GET_STRICT_CHK, 0)?;
        result.map(Some)
    }

    pub fn dump(
        &mut self,
        op: &'static str,
        kind: u16,
        payload: &[u8],
    ) -> Result<Vec<Message>, NetlinkError> {
        const TRIES: usize = 8;
        for _ in 0..TRIES {
            let (messages, interrupted) =
                self.exchange(op, kind, NLM_F_REQUEST | NLM_F_DUMP, payload)?;
            if !interrupted {
                return Ok(messages);
            }
        }
        Err(NetlinkError::kernel(
            op,
            libc::EINTR,
            Some(format!(
                "dump interrupted {TRIES} times by concurrent changes"
            )),
        ))
    }

    /// Sends one message and collects the replies to it until the kernel's ack (an
    /// NLMSG_ERROR with errno 0) or NLMSG_DONE; says whether any reply was marked
    /// NLM_F_DUMP_INTR. A kernel error ends it as an error.
    fn exchange(
        &mut self,
        op: &'static str,
        kind: u16,
        flags: u16,
        payload: &[u8],
    ) -> Result<(Vec<Message>, bool), NetlinkError> {
        let seq = self.next_seq();
        self.send(&encode_message(kind, flags, seq, payload))?;
        let mut out = Vec::new();
        let mut interrupted = false;
        loop {
            let Some(msgs) = self.recv(false)? else {
                continue;
            };
            for m in msgs.into_iter().filter(|m| m.seq == seq) {
                interrupted |= m.flags & NLM_F_DUMP_INTR != 0;
                match m.kind {
                    NLMSG_DONE => return Ok((out, interrupted)),
                    NLMSG_ERROR => match decode_error(&m) {
                        (0, _, _) => return Ok((out, interrupted)),
                        (errno, _, text) => return Err(NetlinkError::kernel(op, errno, text)),
                    },
                    _ => out.push(m),
                }
            }
        }
    }

    /// Sends pre-encoded messages (already carrying sequence numbers `seqs`, each with ACK) in one
    /// datagram and waits until every one is acknowledged. The first kernel error is returned.
    pub fn transact(
        &mut self,
        op: &'static str,
        bytes: &[u8],
        seqs: &[u32],
    ) -> Result<(), NetlinkError> {
        self.send(bytes)?;
        let mut pending: std::collections::BTreeSet<u32> = seqs.iter().copied().collect();
        let mut first_err: Option<NetlinkError> = None;
        while !pending.is_empty() {
            // After a failure the kernel aborts the batch; stop once nothing more is queued.
            let msgs = match self.recv(first_err.is_some())? {
                Some(m) => m,
                None => break,
            };
            for m in msgs {
                if m.kind != NLMSG_ERROR {
                    continue;
                }
                let (errno, seq, text) = decode_error(&m);
                pending.remove(&seq);
                if errno != 0 && first_err.is_none() {
                    first_err = Some(NetlinkError::kernel(op, errno, text));
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trip() {
        let a = encode_message(7, NLM_F_REQUEST, 42, &[1, 2, 3]);
        let b = encode_message(3, 0, 43, &[]);
        let mut both = a.clone();
        both.extend_from_slice(&b);
        let msgs = decode_messages(&both);
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].kind, 7);
        assert_eq!(msgs[0].seq, 42);
        assert_eq!(msgs[0].payload[..3], [1, 2, 3]);
        assert_eq!(msgs[1].kind, 3);
    }

    #[test]
    fn decodes_error_with_extack_text() {
        let mut p = Vec::new();
        p.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
        p.extend_from_slice(&encode_message(1, 0, 9, &[])[..NLMSG_HDRLEN]);
        let mut tlv = super::super::attr::AttrBuf::new();
        tlv.put_str(NLMSGERR_ATTR_MSG, "no such table");
        p.extend_from_slice(tlv.bytes());
        let m = Message {
            kind: NLMSG_ERROR,
            flags: NLM_F_ACK_TLVS | 0x100,
            seq: 9,
            payload: p,
        };
        let (errno, seq, text) = decode_error(&m);
        assert_eq!(errno, libc::ENOENT);
        assert_eq!(seq, 9);
        assert_eq!(text.as_deref(), Some("no such table"));
    }
}
