//! The router's nftables rules, programmed directly over NETLINK_NETFILTER in one batch
//! (no `nft` process: that costs milliseconds of every sandbox start). The rules are
//! plain data ([`ruleset`]) turned into nf_tables messages by pure functions; the same
//! rules exist as nft text in `rules.rs`, used as the fallback when this path fails.

use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, SockProtocol, recv, send};

use crate::netlink::attr;
use crate::queue::{QUEUE_NUM, REFUSED_MARK};
use crate::{BYPASS_PORT, DNS_PORT, PROXY_PORT, ROUTER_IF, ROUTER_IP};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const NFPROTO_IPV4: u8 = 2;
const TABLE: &str = "openshell";

/// One expression of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// Load the input interface name into register 1.
    IifName,
    /// Load the layer-4 protocol into register 1.
    L4Proto,
    /// Load `len` bytes at `offset` of the network (false) or transport (true) header.
    Payload {
        transport: bool,
        offset: u32,
        len: u32,
    },
    /// Compare register 1 for equality with these bytes.
    CmpEq(Vec<u8>),
    /// Accept.
    Accept,
    /// Redirect to this local port.
    Redirect(u16),
    /// ICMP "administratively prohibited".
    Reject,
    /// Answer a TCP packet with a reset (the sender's connect fails with "refused").
    RejectTcpReset,
    /// Load the packet's mark into register 1.
    MetaMark,
    /// Register 1 = register 1 AND these bytes.
    And(Vec<u8>),
    /// Hand the packet to queue [`crate::queue::QUEUE_NUM`] (xt's NFQUEUE target through
    /// nft_compat: some kernels lack nf_tables' own `queue` expression); with nobody
    /// reading the queue the packet goes on as if accepted.
    Queue,
}

/// A chain with its hook, priority and policy, and its rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Name.
    pub name: &'static str,
    /// `nat` or `filter`.
    pub kind: &'static str,
    /// NF_INET_* hook number.
    pub hook: u32,
    /// Priority.
    pub priority: i32,
    /// Accept (true) or drop by default.
    pub accept: bool,
    /// Rules, each a list of expressions.
    pub rules: Vec<Vec<Expr>>,
}

fn iif() -> Vec<Expr> {
    let mut name = ROUTER_IF.as_bytes().to_vec();
    name.push(0);
    vec![Expr::IifName, Expr::CmpEq(name)]
}

fn proto(p: u8) -> Vec<Expr> {
    vec![Expr::L4Proto, Expr::CmpEq(vec![p])]
}

fn dport(port: u16) -> Vec<Expr> {
    vec![
        Expr::Payload {
            transport: true,
            offset: 2,
            len: 2,
        },
        Expr::CmpEq(port.to_be_bytes().to_vec()),
    ]
}

const TCP: u8 = 6;
const UDP: u8 = 17;

/// The destination is the router itself.
fn to_router() -> Vec<Expr> {
    vec![
        Expr::Payload {
            transport: false,
            offset: 16,
            len: 4,
        },
        Expr::CmpEq(ROUTER_IP.octets().to_vec()),
    ]
}

/// The packet queue's chain, before the redirect: a connection attempt (a TCP SYN) that
/// is not for the proxy waits in the queue for the supervisor's verdict; a refused one
/// comes back marked and is answered with a reset, so the kernel refuses it
/// (docs/network.md). Loaded with the ruleset when the kernel has what it needs
/// (nft_compat, xt NFQUEUE, reject at prerouting); the ruleset alone otherwise.
pub fn guard() -> Chain {
    // SYN set and ACK clear.
    let syn = vec![
        Expr::Payload {
            transport: true,
            offset: 13,
            len: 1,
        },
        Expr::And(vec![0x12]),
        Expr::CmpEq(vec![0x02]),
    ];
    let mark = vec![
        Expr::MetaMark,
        Expr::CmpEq(REFUSED_MARK.to_ne_bytes().to_vec()),
    ];
    Chain {
        name: "guard",
        kind: "filter",
        hook: 0,
        priority: -150,
        accept: true,
        rules: vec![
            [
                iif(),
                to_router(),
                proto(TCP),
                dport(PROXY_PORT),
                vec![Expr::Accept],
            ]
            .concat(),
            [iif(), mark, proto(TCP), vec![Expr::RejectTcpReset]].concat(),
            [iif(), proto(TCP), syn, vec![Expr::Queue]].concat(),
        ],
    }
}

/// The ruleset (the same as `rules::ruleset()` in nft syntax), without [`guard`].
pub fn ruleset() -> Vec<Chain> {
    let daddr = to_router();
    let join = |parts: Vec<Vec<Expr>>| parts.concat();
    vec![
        Chain {
            name: "prerouting",
            kind: "nat",
            hook: 0,
            priority: -100,
            accept: true,
            rules: vec![
                join(vec![
                    iif(),
                    daddr.clone(),
                    proto(TCP),
                    dport(PROXY_PORT),
                    vec![Expr::Accept],
                ]),
                join(vec![
                    iif(),
                    proto(UDP),
                    dport(53),
                    vec![Expr::Redirect(DNS_PORT)],
                ]),
                join(vec![iif(), proto(TCP), vec![Expr::Redirect(BYPASS_PORT)]]),
            ],
        },
        Chain {
            name: "input",
            kind: "filter",
            hook: 1,
            priority: 0,
            accept: false,
            rules: vec![
                vec![Expr::IifName, Expr::CmpEq(b"lo\0".to_vec()), Expr::Accept],
                join(vec![
                    iif(),
                    proto(TCP),
                    dport(PROXY_PORT),
                    vec![Expr::Accept],
                ]),
                join(vec![
                    iif(),
                    proto(TCP),
                    dport(BYPASS_PORT),
                    vec![Expr::Accept],
                ]),
                join(vec![iif(), proto(UDP), dport(DNS_PORT), vec![Expr::Accept]]),
                vec![Expr::Reject],
            ],
        },
        Chain {
            name: "forward",
            kind: "filter",
            hook: 2,
            priority: 0,
            accept: false,
            rules: vec![vec![Expr::Reject]],
        },
    ]
}

fn nested(kind: u16, payload: &[u8]) -> Vec<u8> {
    attr(kind | NLA_F_NESTED, payload)
}

fn be32(kind: u16, v: u32) -> Vec<u8> {
    attr(kind, &v.to_be_bytes())
}

fn string(kind: u16, s: &str) -> Vec<u8> {
    let mut b = s.as_bytes().to_vec();
    b.push(0);
    attr(kind, &b)
}

fn expr_bytes(e: &Expr) -> Vec<u8> {
    let (name, data): (&str, Vec<u8>) = match e {
        Expr::IifName => ("meta", [be32(2, 6), be32(1, 1)].concat()),
        Expr::L4Proto => ("meta", [be32(2, 16), be32(1, 1)].concat()),
        Expr::Payload {
            transport,
            offset,
            len,
        } => (
            "payload",
            [
                be32(1, 1),
                be32(2, if *transport { 2 } else { 1 }),
                be32(3, *offset),
                be32(4, *len),
            ]
            .concat(),
        ),
        Expr::CmpEq(v) => (
            "cmp",
            [be32(1, 1), be32(2, 0), nested(3, &attr(1, v))].concat(),
        ),
        Expr::Accept => (
            "immediate",
            [be32(1, 0), nested(2, &nested(2, &be32(1, 1)))].concat(),
        ),
        Expr::Redirect(port) => {
            // Load the port into register 1, then redirect to it.
            return [
                list_elem(
                    "immediate",
                    &[be32(1, 1), nested(2, &attr(1, &port.to_be_bytes()))].concat(),
                ),
                list_elem("redir", &be32(1, 1)),
            ]
            .concat();
        }
        // ICMP unreachable, code 13 (communication administratively prohibited).
        Expr::Reject => ("reject", [be32(1, 0), attr(2, &[13])].concat()),
        Expr::RejectTcpReset => ("reject", be32(1, 1)),
        Expr::MetaMark => ("meta", [be32(2, 3), be32(1, 1)].concat()),
        Expr::And(mask) => (
            "bitwise",
            [
                be32(1, 1),
                be32(2, 1),
                be32(3, mask.len() as u32),
                nested(4, &attr(1, mask)),
                nested(5, &attr(1, &vec![0; mask.len()])),
            ]
            .concat(),
        ),
        Expr::Queue => {
            // struct xt_NFQ_info_v3: queue number, number of queues, flags (bypass).
            let mut info = Vec::with_capacity(8);
            info.extend_from_slice(&QUEUE_NUM.to_ne_bytes());
            info.extend_from_slice(&1u16.to_ne_bytes());
            info.extend_from_slice(&1u16.to_ne_bytes());
            info.extend_from_slice(&[0, 0]);
            (
                "target",
                [string(1, "NFQUEUE"), be32(2, 3), attr(3, &info)].concat(),
            )
        }
    };
    list_elem(name, &data)
}

fn list_elem(name: &str, data: &[u8]) -> Vec<u8> {
    nested(1, &[string(1, name), nested(2, data)].concat())
}

fn message(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &[u8]) -> Vec<u8> {
    let len = 16 + 4 + attrs.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[family, 0]);
    m.extend_from_slice(&res_id.to_be_bytes());
    m.extend_from_slice(attrs);
    m
}

/// The whole batch: begin, table, chains, rules, end. Returns (bytes, number of
/// messages that will be acked).
pub fn batch(chains: &[Chain]) -> (Vec<u8>, u32) {
    let ty = |cmd: u16| (NFNL_SUBSYS_NFTABLES << 8) | cmd;
    let req = NLM_F_REQUEST | NLM_F_ACK;
    let mut seq = 1;
    let mut out = message(
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    let mut acked = 0;
    seq += 1;
    out.extend(message(
        ty(NFT_MSG_NEWTABLE),
        req | NLM_F_CREATE,
        seq,
        NFPROTO_IPV4,
        0,
        &string(1, TABLE),
    ));
    acked += 1;
    for c in chains {
        seq += 1;
        let hook = nested(4, &[be32(1, c.hook), be32(2, c.priority as u32)].concat());
        let attrs = [
            string(1, TABLE),
            string(3, c.name),
            hook,
            be32(5, u32::from(c.accept)),
            string(7, c.kind),
        ]
        .concat();
        out.extend(message(
            ty(NFT_MSG_NEWCHAIN),
            req | NLM_F_CREATE,
            seq,
            NFPROTO_IPV4,
            0,
            &attrs,
        ));
        acked += 1;
        for r in &c.rules {
            seq += 1;
            let exprs: Vec<u8> = r.iter().flat_map(expr_bytes).collect();
            let attrs = [string(1, TABLE), string(2, c.name), nested(4, &exprs)].concat();
            out.extend(message(
                ty(NFT_MSG_NEWRULE),
                req | NLM_F_CREATE | NLM_F_APPEND,
                seq,
                NFPROTO_IPV4,
                0,
                &attrs,
            ));
            acked += 1;
        }
    }
    seq += 1;
    out.extend(message(
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    ));
    (out, acked)
}

/// Load the ruleset and the [`guard`] chain into the current network namespace, in one
/// batch; where the kernel refuses the guard, the ruleset alone. Ok(true) when the
/// guard is in.
pub fn load() -> Result<bool, Errno> {
    let mut all = vec![guard()];
    all.extend(ruleset());
    if send_batch(&all).is_ok() {
        return Ok(true);
    }
    send_batch(&ruleset()).map(|()| false)
}

/// Send one batch on a socket of its own; Ok once every message is acked.
fn send_batch(chains: &[Chain]) -> Result<(), Errno> {
    let fd = crate::netlink::bound_socket(SockProtocol::NetlinkNetFilter)?;
    let (msg, mut acked) = batch(chains);
    send(fd.as_raw_fd(), &msg, MsgFlags::empty())?;
    let mut buf = vec![0u8; 16384];
    while acked > 0 {
        let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        let mut off = 0;
        while off + 20 <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or([0; 4])) as usize;
            let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
            if kind == 2 {
                // NLMSG_ERROR: an ack (0) or the failure of one message.
                let err = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().unwrap_or([0; 4]));
                if err != 0 {
                    return Err(Errno::from_raw(-err));
                }
                acked -= 1;
            }
            if len < 16 {
                break;
            }
            off += (len + 3) & !3;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_shape() {
        let (b, acked) = batch(&ruleset());
        // table + 3 chains + 3 + 5 + 1 rules.
        assert_eq!(acked, 1 + 3 + 9);
        let mut all = vec![guard()];
        all.extend(ruleset());
        let (_, acked) = batch(&all);
        assert_eq!(acked, 1 + 4 + 3 + 9);
        let first_type = u16::from_ne_bytes([b[4], b[5]]);
        assert_eq!(first_type, NFNL_MSG_BATCH_BEGIN);
        assert!(b.windows(10).any(|w| w == b"openshell\0"));
        assert!(b.windows(6).any(|w| w == b"redir\0"));
    }

    /// Load the rules for real in a fresh network namespace (forked child) and compare
    /// what the kernel holds with the nft text of the same rules.
    #[test]
    fn kernel_accepts_the_batch() {
        let nft = ["/usr/sbin/nft", "/sbin/nft"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        // SAFETY: the child only makes syscalls, runs nft, and _exits.
        match unsafe { libc::fork() } {
            0 => {
                // SAFETY: unshare with flags only; fall back to a user namespace rootless.
                let ok = unsafe { libc::unshare(libc::CLONE_NEWNET) } == 0 || {
                    let (u, g) = (
                        nix::unistd::geteuid().as_raw(),
                        nix::unistd::getegid().as_raw(),
                    );
                    // SAFETY: as above.
                    let entered =
                        unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) } == 0;
                    entered
                        && std::fs::write("/proc/self/setgroups", "deny").is_ok()
                        && std::fs::write("/proc/self/uid_map", format!("0 {u} 1")).is_ok()
                        && std::fs::write("/proc/self/gid_map", format!("0 {g} 1")).is_ok()
                };
                let code = if !ok {
                    77
                } else {
                    let _ = std::process::Command::new("ip")
                        .args(["link", "add", "vr", "type", "veth", "peer", "name", "va"])
                        .status();
                    match load() {
                        Err(e) => {
                            eprintln!("load: {e}");
                            1
                        }
                        // The queue the rules use binds in the same namespace.
                        Ok(false) => 4,
                        Ok(true) if crate::queue::socket_for_queue().is_err() => 3,
                        Ok(true) => match nft {
                            None => 0,
                            Some(bin) => {
                                let out = std::process::Command::new(bin)
                                    .args(["list", "ruleset"])
                                    .output();
                                let text = out
                                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                                    .unwrap_or_default();
                                let want = [
                                    "iifname \"vr\" ip daddr 10.200.0.1 tcp dport 3128 accept",
                                    "iifname \"vr\" udp dport 53 redirect to :53",
                                    "iifname \"vr\" meta l4proto tcp redirect to :15001",
                                    "iifname \"vr\" tcp dport 15001 accept",
                                    "reject with icmp admin-prohibited",
                                    "tcp flags syn / syn,ack queue num 0 bypass",
                                    "meta mark 0x4f530001",
                                    "reject with tcp reset",
                                ];
                                if want.iter().all(|w| text.contains(w)) {
                                    0
                                } else {
                                    eprintln!("{text}");
                                    if !text.contains("queue num 0") {
                                        eprintln!(
                                            "nft shows no queue rule: without iptables' x_tables extension libraries (libxt_NFQUEUE.so; Debian: apt install iptables) it cannot print the NFQUEUE target the kernel holds"
                                        );
                                    }
                                    2
                                }
                            }
                        },
                    }
                };
                // SAFETY: leave the forked child.
                unsafe { libc::_exit(code) }
            }
            pid => {
                let mut st = 0;
                // SAFETY: waiting for our child.
                unsafe { libc::waitpid(pid, &mut st, 0) };
                let code = libc::WEXITSTATUS(st);
                if code == 77 {
                    // The standard harness cannot report a skip: fail where the
                    // kernel features are required (CI), say so otherwise.
                    let required = std::env::var("OPENSHELL_TEST_REQUIRE")
                        .is_ok_and(|v| v.split(',').any(|f| f == "userns" || f == "all"));
                    assert!(!required, "cannot create a network namespace here");
                    eprintln!("skipped: cannot create a network namespace here");
                    return;
                }
                let why = match code {
                    1 => "the kernel refused the nf_tables batch",
                    2 => {
                        "`nft list ruleset` does not show the rules (run with --nocapture; without iptables installed nft cannot print the NFQUEUE target)"
                    }
                    3 => "the packet queue's socket could not bind",
                    4 => "the batch loaded without the packet queue",
                    _ => "the child failed",
                };
                assert_eq!(code, 0, "{why}");
            }
        }
    }
}
