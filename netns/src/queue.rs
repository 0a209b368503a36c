//! The kernel's packet queue (nfnetlink_queue) for the router's first TCP packets: the
//! router's rules queue a connection attempt that is not for the proxy (a SYN from the
//! agent), the supervisor looks up who made it and what the policy says, and answers
//! with a verdict: accept (on to the bypass listener, which relays a `protocol: tcp`
//! endpoint) or refuse (the packet comes back marked, and the rules answer it with a TCP
//! reset: the program sees "connection refused" at once and no handshake ever
//! completes). See docs/network.md.
//!
//! The messages are built and parsed here by hand, like the nf_tables batch in
//! `nft.rs`: the NFQUEUE crates either wrap libnetfilter_queue (a C library the
//! supervisor would need at run time) or open their own socket in the caller's network
//! namespace, while this socket is opened by init in the router namespace and handed
//! over. The packet itself (IPv4 and TCP headers) is parsed with `etherparse`.
//!
//! The socket is a plain netlink socket: [`socket_for_queue`] opens it and binds the
//! queue (in init); the supervisor reads with [`parse`] and answers with
//! [`verdict_msg`].

use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, SockProtocol, recv, send, setsockopt, sockopt};

use crate::netlink::attr;

/// The queue the router's rules use.
pub const QUEUE_NUM: u16 = 0;
/// The mark a refused packet comes back with; the router answers it with a TCP reset.
/// (A mark set inside the agent namespace never reaches the router: marks are cleared
/// when a packet crosses namespaces, and the agent cannot set one anyway.)
pub const REFUSED_MARK: u32 = 0x4f53_0001;
/// How many packets may wait for a verdict before the kernel lets further ones through
/// to the bypass listener (which refuses them after the handshake, as the fallback).
pub const MAX_WAITING: u32 = 1024;
/// Bytes of each packet copied to us: enough for the largest IPv4 and TCP headers.
pub const COPY_RANGE: u32 = 120;

const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_MARK: u16 = 3;
const NFQA_PAYLOAD: u16 = 10;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQA_CFG_MASK: u16 = 4;
const NFQA_CFG_FLAGS: u16 = 5;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_PACKET: u8 = 2;
const NFQA_CFG_F_FAIL_OPEN: u32 = 1;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLMSG_ERROR: u16 = 2;
const NLMSG_HDRLEN: usize = 16;

/// A verdict on a queued packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through (on to the bypass listener).
    Accept,
    /// Send it back through the rules marked [`REFUSED_MARK`]: answered with a reset.
    Refuse,
}

/// A NETLINK_NETFILTER socket of the current network namespace with queue
/// [`QUEUE_NUM`] bound to it. Opened and bound by init in the router namespace (the
/// queue belongs to the namespace the socket was made in) before anything in the
/// sandbox runs: packets queued before the supervisor reads wait in the socket, none
/// slips through to the listener for want of a reader.
pub fn socket_for_queue() -> Result<OwnedFd, Errno> {
    let fd = crate::netlink::bound_socket(SockProtocol::NetlinkNetFilter)?;
    // Best effort: a burst of attempts should not overflow the default buffer, and an
    // overflow must not stop the reader (it only loses packets the kernel then lets
    // through after MAX_WAITING, to the listener).
    let _ = setsockopt(&fd, sockopt::RcvBuf, &(1 << 20));
    send(fd.as_raw_fd(), &config_msg(), MsgFlags::empty())?;
    let mut buf = [0u8; 512];
    loop {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        if let Some(code) = parse(&buf[..n]).into_iter().find_map(|m| match m {
            Message::Ack(code) => Some(code),
            Message::Packet { .. } => None,
        }) {
            return if code == 0 {
                Ok(fd)
            } else {
                Err(Errno::from_raw(-code))
            };
        }
    }
}

fn message(kind: u16, flags: u16, res_id: u16, attrs: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + 4 + attrs.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | kind).to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version, resource id (the queue number, big-endian).
    m.extend_from_slice(&[libc::AF_INET as u8, 0]);
    m.extend_from_slice(&res_id.to_be_bytes());
    m.extend_from_slice(attrs);
    m
}

/// Bind queue [`QUEUE_NUM`] to this socket, copy [`COPY_RANGE`] bytes of each packet,
/// hold at most [`MAX_WAITING`] and let the rest through when full (fail-open: they go
/// on to the bypass listener, which still refuses them). Asks for an ack.
pub fn config_msg() -> Vec<u8> {
    let cmd = [NFQNL_CFG_CMD_BIND, 0, 0, 0];
    let mut params = COPY_RANGE.to_be_bytes().to_vec();
    params.push(NFQNL_COPY_PACKET);
    let attrs = [
        attr(NFQA_CFG_CMD, &cmd),
        attr(NFQA_CFG_PARAMS, &params),
        attr(NFQA_CFG_QUEUE_MAXLEN, &MAX_WAITING.to_be_bytes()),
        attr(NFQA_CFG_MASK, &NFQA_CFG_F_FAIL_OPEN.to_be_bytes()),
        attr(NFQA_CFG_FLAGS, &NFQA_CFG_F_FAIL_OPEN.to_be_bytes()),
    ]
    .concat();
    message(
        NFQNL_MSG_CONFIG,
        NLM_F_REQUEST | NLM_F_ACK,
        QUEUE_NUM,
        &attrs,
    )
}

/// The verdict on packet `id`.
pub fn verdict_msg(id: u32, verdict: Verdict) -> Vec<u8> {
    let (code, mark) = match verdict {
        Verdict::Accept => (libc::NF_ACCEPT as u32, None),
        Verdict::Refuse => (libc::NF_REPEAT as u32, Some(REFUSED_MARK)),
    };
    let mut hdr = code.to_be_bytes().to_vec();
    hdr.extend_from_slice(&id.to_be_bytes());
    let mut attrs = attr(NFQA_VERDICT_HDR, &hdr);
    if let Some(m) = mark {
        attrs.extend(attr(NFQA_MARK, &m.to_be_bytes()));
    }
    message(NFQNL_MSG_VERDICT, NLM_F_REQUEST, QUEUE_NUM, &attrs)
}

/// One message read from the queue socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A queued packet: its id (for the verdict) and the start of its bytes.
    Packet { id: u32, payload: Vec<u8> },
    /// An ack (0) or an error (a negative errno) for a request of ours.
    Ack(i32),
}

/// The messages in one datagram read from the queue socket. Malformed ones (lengths
/// that do not fit) end the walk; what came before is returned.
pub fn parse(buf: &[u8]) -> Vec<Message> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let len = u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]);
        let len = len as usize;
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        let body = &buf[off + NLMSG_HDRLEN..off + len];
        if kind == NLMSG_ERROR && body.len() >= 4 {
            out.push(Message::Ack(i32::from_ne_bytes([
                body[0], body[1], body[2], body[3],
            ])));
        } else if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET && body.len() >= 4 {
            if let Some(p) = packet(&body[4..]) {
                out.push(p);
            }
        }
        off += (len + 3) & !3;
    }
    out
}

fn packet(mut attrs: &[u8]) -> Option<Message> {
    let (mut id, mut payload) = (None, None);
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            break;
        }
        let data = &attrs[4..len];
        match kind {
            NFQA_PACKET_HDR if data.len() >= 4 => {
                id = Some(u32::from_be_bytes([data[0], data[1], data[2], data[3]]));
            }
            NFQA_PAYLOAD => payload = Some(data.to_vec()),
            _ => {}
        }
        attrs = &attrs[((len + 3) & !3).min(attrs.len())..];
    }
    Some(Message::Packet {
        id: id?,
        payload: payload.unwrap_or_default(),
    })
}

/// The TCP connection attempt a queued packet opens: (source, destination). None for
/// anything but an IPv4 TCP packet whose headers are all there.
pub fn tcp_tuple(payload: &[u8]) -> Option<(SocketAddrV4, SocketAddrV4)> {
    let ip = etherparse::Ipv4HeaderSlice::from_slice(payload).ok()?;
    if ip.protocol() != etherparse::IpNumber::TCP {
        return None;
    }
    let tcp = etherparse::TcpHeaderSlice::from_slice(payload.get(ip.slice().len()..)?).ok()?;
    Some((
        SocketAddrV4::new(ip.source_addr(), tcp.source_port()),
        SocketAddrV4::new(ip.destination_addr(), tcp.destination_port()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn syn(src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ipv4(src.ip().octets(), dst.ip().octets(), 64)
            .tcp(src.port(), dst.port(), 1000, 64240)
            .syn();
        let mut out = Vec::new();
        b.write(&mut out, &[]).unwrap();
        out
    }

    fn packet_msg(id: u32, payload: &[u8]) -> Vec<u8> {
        let mut hdr = id.to_be_bytes().to_vec();
        hdr.extend_from_slice(&0x0800u16.to_be_bytes());
        hdr.push(0);
        let attrs = [attr(NFQA_PACKET_HDR, &hdr), attr(NFQA_PAYLOAD, payload)].concat();
        message(NFQNL_MSG_PACKET, 0, QUEUE_NUM, &attrs)
    }

    #[test]
    fn packets_and_acks_are_read() {
        let src = SocketAddrV4::new(Ipv4Addr::new(10, 200, 0, 2), 40000);
        let dst = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 443);
        let p = syn(src, dst);
        let mut buf = packet_msg(7, &p);
        // An ack after it, in the same datagram.
        let mut ack = Vec::new();
        ack.extend_from_slice(&((NLMSG_HDRLEN + 4) as u32).to_ne_bytes());
        ack.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        ack.extend_from_slice(&[0; 10]);
        ack.extend_from_slice(&(-1i32).to_ne_bytes());
        buf.extend(ack);
        let msgs = parse(&buf);
        assert_eq!(
            msgs,
            vec![
                Message::Packet {
                    id: 7,
                    payload: p.clone()
                },
                Message::Ack(-1)
            ]
        );
        assert_eq!(tcp_tuple(&p), Some((src, dst)));
    }

    #[test]
    fn hostile_bytes_neither_panic_nor_parse() {
        // Truncated at every length, and lengths that lie.
        let p = syn(
            SocketAddrV4::new(Ipv4Addr::new(10, 200, 0, 2), 1),
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 2),
        );
        let m = packet_msg(1, &p);
        for n in 0..m.len() {
            let _ = parse(&m[..n]);
        }
        for n in 0..p.len() {
            assert_eq!(tcp_tuple(&p[..n]), None, "{n}");
        }
        let mut lying = m.clone();
        lying[0] = 0xff;
        assert!(parse(&lying).is_empty());
        // UDP is not a TCP connection attempt.
        let b = etherparse::PacketBuilder::ipv4([10, 200, 0, 2], [10, 0, 0, 1], 64).udp(1, 53);
        let mut udp = Vec::new();
        b.write(&mut udp, &[1, 2, 3]).unwrap();
        assert_eq!(tcp_tuple(&udp), None);
    }

    #[test]
    fn verdicts_carry_the_id_and_the_mark() {
        let v = verdict_msg(0x01020304, Verdict::Refuse);
        assert!(v.windows(8).any(|w| w == [0, 0, 0, 4, 1, 2, 3, 4]));
        assert!(v.windows(4).any(|w| w == REFUSED_MARK.to_be_bytes()));
        let a = verdict_msg(9, Verdict::Accept);
        assert!(a.windows(8).any(|w| w == [0, 0, 0, 1, 0, 0, 0, 9]));
        assert!(!a.windows(4).any(|w| w == REFUSED_MARK.to_be_bytes()));
        let c = config_msg();
        assert_eq!(u16::from_ne_bytes([c[4], c[5]]), (3 << 8) | 2);
    }
}
