//! A minimal rtnetlink client on a plain NETLINK_ROUTE socket: create a veth pair,
//! bring links up, add IPv4 addresses and a default route, move a link to another
//! network namespace. Messages are built by pure functions (unit-tested byte for byte
//! where it matters); the socket only sends them and waits for the kernel's ack.
//! Synchronous: runs in init.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, send,
    socket,
};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_MTU: u16 = 4;
const IFLA_NUM_TX_QUEUES: u16 = 31;
const IFLA_NUM_RX_QUEUES: u16 = 32;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_GATEWAY: u16 = 5;
const RTA_OIF: u16 = 4;
const IFF_UP: u32 = 0x1;

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One route attribute: length, type, payload, padding.
pub fn attr(kind: u16, payload: &[u8]) -> Vec<u8> {
    let len = 4 + payload.len();
    let mut v = Vec::with_capacity(align4(len));
    v.extend_from_slice(&(len as u16).to_ne_bytes());
    v.extend_from_slice(&kind.to_ne_bytes());
    v.extend_from_slice(payload);
    v.resize(align4(len), 0);
    v
}

fn name_attr(name: &str) -> Vec<u8> {
    let mut b = name.as_bytes().to_vec();
    b.push(0);
    attr(IFLA_IFNAME, &b)
}

/// `struct ifinfomsg`.
fn ifinfo(index: i32, flags: u32, change: u32) -> Vec<u8> {
    let mut v = vec![libc::AF_UNSPEC as u8, 0, 0, 0];
    v.extend_from_slice(&index.to_ne_bytes());
    v.extend_from_slice(&flags.to_ne_bytes());
    v.extend_from_slice(&change.to_ne_bytes());
    v
}

/// MTU of both ends of the sandbox's veth pair. The link only ever joins two namespaces
/// of one host, like loopback, so it takes loopback's size: a bulk transfer through the
/// proxy then costs a fraction of the packets (and of the per-packet work) of 1500.
pub const VETH_MTU: u32 = 65535;

/// One tx and one rx queue, asked for explicitly: veth otherwise allocates one per
/// possible CPU and then cuts the real count down to one, which waits for an expedited
/// RCU grace period per end (about a millisecond of every sandbox start).
fn one_queue() -> Vec<u8> {
    let mut v = attr(IFLA_NUM_TX_QUEUES, &1u32.to_ne_bytes());
    v.extend(attr(IFLA_NUM_RX_QUEUES, &1u32.to_ne_bytes()));
    v
}

/// RTM_NEWLINK creating veth `name` with peer `peer`, the peer created directly in the
/// namespace behind `peer_ns` when given.
pub fn veth_msg(name: &str, peer: &str, peer_ns: Option<RawFd>) -> (u16, u16, Vec<u8>) {
    let mut peer_info = ifinfo(0, 0, 0);
    peer_info.extend(name_attr(peer));
    peer_info.extend(attr(IFLA_MTU, &VETH_MTU.to_ne_bytes()));
    peer_info.extend(one_queue());
    if let Some(fd) = peer_ns {
        peer_info.extend(attr(IFLA_NET_NS_FD, &(fd as u32).to_ne_bytes()));
    }
    let data = attr(VETH_INFO_PEER, &peer_info);
    let mut linkinfo = attr(IFLA_INFO_KIND, b"veth");
    linkinfo.extend(attr(IFLA_INFO_DATA, &data));
    let mut body = ifinfo(0, 0, 0);
    body.extend(name_attr(name));
    body.extend(attr(IFLA_MTU, &VETH_MTU.to_ne_bytes()));
    body.extend(one_queue());
    body.extend(attr(IFLA_LINKINFO, &linkinfo));
    (RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)
}

/// RTM_NEWLINK turning IPv6 address generation off on `index` (before it comes up):
/// no link-local address, so no duplicate address detection, router solicitations or
/// multicast reports on a link that only carries IPv4 — work the kernel would do at
/// every sandbox start and after it, for nothing.
pub fn no_ipv6_addr_msg(index: i32) -> (u16, u16, Vec<u8>) {
    const IFLA_AF_SPEC: u16 = 26;
    const IFLA_INET6_ADDR_GEN_MODE: u16 = 8;
    const IN6_ADDR_GEN_MODE_NONE: u8 = 1;
    let inet6 = attr(IFLA_INET6_ADDR_GEN_MODE, &[IN6_ADDR_GEN_MODE_NONE]);
    let spec = attr(libc::AF_INET6 as u16, &inet6);
    let mut body = ifinfo(index, 0, 0);
    body.extend(attr(IFLA_AF_SPEC, &spec));
    (RTM_NEWLINK, 0, body)
}

/// RTM_NEWLINK setting IFF_UP on `index`.
pub fn up_msg(index: i32) -> (u16, u16, Vec<u8>) {
    (RTM_NEWLINK, 0, ifinfo(index, IFF_UP, IFF_UP))
}

/// RTM_NEWLINK moving `index` into the namespace behind `ns_fd`.
pub fn move_msg(index: i32, ns_fd: RawFd) -> (u16, u16, Vec<u8>) {
    let mut body = ifinfo(index, 0, 0);
    body.extend(attr(IFLA_NET_NS_FD, &(ns_fd as u32).to_ne_bytes()));
    (RTM_NEWLINK, 0, body)
}

/// RTM_NEWADDR for `addr/prefix` on `index`.
pub fn addr_msg(index: i32, addr: Ipv4Addr, prefix: u8) -> (u16, u16, Vec<u8>) {
    let mut body = vec![libc::AF_INET as u8, prefix, 0, 0];
    body.extend_from_slice(&(index as u32).to_ne_bytes());
    body.extend(attr(IFA_LOCAL, &addr.octets()));
    body.extend(attr(IFA_ADDRESS, &addr.octets()));
    (RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body)
}

/// RTM_NEWROUTE: default route via `gw` out of `index`.
pub fn default_route_msg(index: i32, gw: Ipv4Addr) -> (u16, u16, Vec<u8>) {
    // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags.
    let mut body = vec![libc::AF_INET as u8, 0, 0, 0, libc::RT_TABLE_MAIN, 3, 0, 1];
    body.extend_from_slice(&0u32.to_ne_bytes());
    body.extend(attr(RTA_GATEWAY, &gw.octets()));
    body.extend(attr(RTA_OIF, &(index as u32).to_ne_bytes()));
    (RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body)
}

/// A NETLINK_ROUTE socket of the current network namespace (it stays bound to the
/// namespace it was opened in, even after the process moves).
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    /// Open and bind.
    pub fn open() -> Result<Self, Errno> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
        Ok(Self { fd, seq: 1 })
    }

    /// Send one request and wait for its ack.
    pub fn request(&mut self, (kind, flags, body): (u16, u16, Vec<u8>)) -> Result<(), Errno> {
        self.seq += 1;
        let len = NLMSG_HDRLEN + body.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&body);
        send(self.fd.as_raw_fd(), &msg, MsgFlags::empty())?;
        let mut buf = [0u8; 4096];
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
            let mut off = 0;
            while off + NLMSG_HDRLEN <= n {
                let mlen =
                    u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or([0; 4])) as usize;
                let mtype = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                let mseq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap_or([0; 4]));
                if mtype == NLMSG_ERROR && mseq == self.seq && off + NLMSG_HDRLEN + 4 <= n {
                    let err = i32::from_ne_bytes(
                        buf[off + NLMSG_HDRLEN..off + NLMSG_HDRLEN + 4]
                            .try_into()
                            .unwrap_or([0; 4]),
                    );
                    return if err == 0 {
                        Ok(())
                    } else {
                        Err(Errno::from_raw(-err))
                    };
                }
                if mlen < NLMSG_HDRLEN {
                    break;
                }
                off += align4(mlen);
            }
        }
    }
}

/// Index of interface `name` in the current network namespace.
pub fn index_of(name: &str) -> Result<i32, Errno> {
    nix::net::if_::if_nametoindex(name).map(|i| i as i32)
}

/// A NETLINK_SOCK_DIAG socket of the current network namespace: opened by init in the
/// agent namespace and handed to the supervisor, it answers "which socket is this
/// 4-tuple" in one round trip, however many sockets the namespace has.
pub fn sock_diag_socket() -> Result<OwnedFd, Errno> {
    bound_socket(SockProtocol::NetlinkSockDiag)
}

/// A netlink socket of `protocol` in the current network namespace, bound (the kernel
/// picks its port id).
pub fn bound_socket(protocol: SockProtocol) -> Result<OwnedFd, Errno> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        protocol,
    )?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
    Ok(fd)
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;

/// The request for one TCP socket by its exact addresses (`src` is the socket's own).
pub fn inet_diag_msg(src: std::net::SocketAddrV4, dst: std::net::SocketAddrV4) -> Vec<u8> {
    let mut body = vec![libc::AF_INET as u8, libc::IPPROTO_TCP as u8, 0, 0];
    body.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    body.extend_from_slice(&src.port().to_be_bytes());
    body.extend_from_slice(&dst.port().to_be_bytes());
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&src.ip().octets());
    body.extend_from_slice(&a);
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&dst.ip().octets());
    body.extend_from_slice(&b);
    body.extend_from_slice(&0u32.to_ne_bytes()); // interface
    body.extend_from_slice(&u32::MAX.to_ne_bytes()); // no cookie
    body.extend_from_slice(&u32::MAX.to_ne_bytes());
    let len = NLMSG_HDRLEN + body.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as u32).to_ne_bytes());
    msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&body);
    msg
}

/// The inode of the TCP socket `src` → `dst` in the diag socket's namespace.
pub fn socket_inode(
    diag: &OwnedFd,
    src: std::net::SocketAddrV4,
    dst: std::net::SocketAddrV4,
) -> Option<u64> {
    send(
        diag.as_raw_fd(),
        &inet_diag_msg(src, dst),
        MsgFlags::empty(),
    )
    .ok()?;
    let mut buf = [0u8; 1024];
    let n = recv(diag.as_raw_fd(), &mut buf, MsgFlags::empty()).ok()?;
    let kind = u16::from_ne_bytes([*buf.get(4)?, *buf.get(5)?]);
    if kind != SOCK_DIAG_BY_FAMILY || n < NLMSG_HDRLEN + 72 {
        return None;
    }
    // struct inet_diag_msg: 4 bytes, sockid (48), expires, rqueue, wqueue, uid, inode.
    let at = NLMSG_HDRLEN + 4 + 48 + 16;
    Some(u32::from_ne_bytes(buf[at..at + 4].try_into().ok()?).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded() {
        assert_eq!(attr(3, b"lo\0"), vec![7, 0, 3, 0, b'l', b'o', 0, 0]);
        assert_eq!(attr(1, b"veth").len(), 8);
    }

    #[test]
    fn veth_message_nests_the_peer() {
        let (kind, flags, body) = veth_msg("vr", "va", Some(7));
        assert_eq!(kind, RTM_NEWLINK);
        assert_eq!(flags, NLM_F_CREATE | NLM_F_EXCL);
        // ifinfomsg, then IFLA_IFNAME "vr", IFLA_MTU, the queue counts, IFLA_LINKINFO.
        assert_eq!(&body[16..24], &attr(IFLA_IFNAME, b"vr\0")[..]);
        assert_eq!(&body[24..32], &attr(IFLA_MTU, &65535u32.to_ne_bytes())[..]);
        assert_eq!(&body[32..48], &one_queue()[..]);
        let linkinfo = &body[48..];
        assert_eq!(
            u16::from_ne_bytes([linkinfo[2], linkinfo[3]]),
            IFLA_LINKINFO
        );
        assert!(linkinfo.windows(4).any(|w| w == b"veth"));
        assert!(linkinfo.windows(3).any(|w| w == b"va\0"));
        let ns_attr = attr(IFLA_NET_NS_FD, &7u32.to_ne_bytes());
        assert!(
            linkinfo
                .windows(ns_attr.len())
                .any(|w| w == ns_attr.as_slice())
        );
    }

    #[test]
    fn route_and_address_messages() {
        let (_, _, a) = addr_msg(5, Ipv4Addr::new(10, 200, 0, 2), 30);
        assert_eq!(&a[..4], &[libc::AF_INET as u8, 30, 0, 0]);
        assert!(a.windows(4).any(|w| w == [10, 200, 0, 2]));
        let (k, _, r) = default_route_msg(5, Ipv4Addr::new(10, 200, 0, 1));
        assert_eq!(k, RTM_NEWROUTE);
        assert_eq!(r[4], libc::RT_TABLE_MAIN);
    }
}
