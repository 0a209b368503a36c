//! Network setup of a sandbox's namespaces (docs/network.md).
//!
//! Every sandbox gets two network namespaces inside its user namespace, joined by a
//! veth pair: the *router* namespace (`vr` 10.200.0.1/30, the proxy, bypass and DNS
//! listeners, nftables rules) and the *agent* namespace (`va` 10.200.0.2/30, lo, a
//! default route via 10.200.0.1) where the sandboxed processes live. init calls
//! [`setup_router`] and [`Router::enter_agent`] on a thread of its own (network
//! namespaces are per thread) in the namespace it was created in, hands the listeners
//! to the supervisor, and moves its main thread in with [`Router::join_agent`]; nothing
//! runs in the router namespace afterwards, the listeners keep it alive. Without
//! nftables the agent gets no default route ("network unreachable" at once) and
//! [`Router::rules_loaded`] says so. Synchronous: runs in init.

pub mod netlink;
pub mod nft;
pub mod queue;
pub mod rules;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrIn, bind, listen, setsockopt, socket,
    sockopt,
};

/// The router's address (gateway, proxy, DNS).
pub const ROUTER_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
/// The agent's address.
pub const AGENT_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
/// Prefix length of the link.
pub const PREFIX: u8 = 30;
/// The explicit proxy port.
pub const PROXY_PORT: u16 = 3128;
/// Where connections that ignore the proxy are redirected.
pub const BYPASS_PORT: u16 = 15001;
/// DNS.
pub const DNS_PORT: u16 = 53;
/// Router-side veth name.
pub const ROUTER_IF: &str = "vr";
/// Agent-side veth name.
pub const AGENT_IF: &str = "va";

/// How the sandbox is networked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkMode {
    /// Own namespace, loopback only (no proxy).
    Isolated,
    /// Router/agent namespaces; every connection goes through the supervisor's proxy.
    Proxied {
        /// The nft binary on the host, if any (loaded before pivot_root).
        nft: Option<PathBuf>,
    },
}

/// A network setup step that failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Opening the ioctl socket failed.
    #[error("open a socket for interface setup: {0}")]
    Socket(#[source] Errno),
    /// Reading or setting interface flags failed.
    #[error("bring up interface {name}: {source}")]
    LinkUp {
        name: String,
        #[source]
        source: Errno,
    },
    /// A netlink request failed.
    #[error("{what}: {source}")]
    Netlink {
        what: &'static str,
        #[source]
        source: Errno,
    },
    /// Binding a listener failed.
    #[error("listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: Errno,
    },
}

fn nl(what: &'static str) -> impl FnOnce(Errno) -> NetError {
    move |source| NetError::Netlink { what, source }
}

/// Listeners bound in the router namespace, for the supervisor.
#[derive(Debug)]
pub struct Listeners {
    /// TCP 10.200.0.1:3128 (explicit proxy).
    pub proxy: OwnedFd,
    /// TCP 10.200.0.1:15001 (redirected connections).
    pub bypass: OwnedFd,
    /// UDP 10.200.0.1:53.
    pub dns: OwnedFd,
    /// NETLINK_SOCK_DIAG of the agent namespace (socket owner lookups).
    pub diag: Option<OwnedFd>,
    /// The router namespace's packet queue socket, when the rules that queue connection
    /// attempts are in (loaded over netlink; the `nft` text fallback has no queue).
    pub queue: Option<OwnedFd>,
}

/// The router namespace while init still holds it.
pub struct Router {
    agent_ns: std::fs::File,
    listeners: Option<Listeners>,
    nft: Option<std::process::Child>,
    rules_loaded: bool,
    agent_netlink: Option<netlink::Netlink>,
}

/// Configure the current (fresh) net namespace for `Isolated`: loopback only.
pub fn setup_isolated() -> Result<(), NetError> {
    link_up("lo")
}

fn tcp_listener(port: u16) -> Result<OwnedFd, NetError> {
    let addr = SocketAddrV4::new(ROUTER_IP, port);
    let err = |source| NetError::Listen {
        addr: addr.to_string(),
        source,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(err)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(err)?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(addr)).map_err(err)?;
    listen(&fd, Backlog::new(1024).unwrap_or(Backlog::MAXCONN)).map_err(err)?;
    Ok(fd)
}

fn udp_socket(port: u16) -> Result<OwnedFd, NetError> {
    let addr = SocketAddrV4::new(ROUTER_IP, port);
    let err = |source| NetError::Listen {
        addr: format!("udp {addr}"),
        source,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(err)?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(addr)).map_err(err)?;
    Ok(fd)
}

/// The calling thread's network namespace (thread-self: init sets its network up on a
/// thread of its own, and namespaces are per thread).
fn ns_file(what: &'static str) -> Result<std::fs::File, NetError> {
    std::fs::File::open("/proc/thread-self/ns/net").map_err(|e| NetError::Netlink {
        what,
        source: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })
}

/// The calling thread's network namespace, from a directory fd of its /proc/<tid>.
fn ns_file_at(task: &std::fs::File, what: &'static str) -> Result<std::fs::File, NetError> {
    let fd = nix::fcntl::openat(
        task,
        "ns/net",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(nl(what))?;
    Ok(std::fs::File::from(fd))
}

fn setns(ns: &std::fs::File, what: &'static str) -> Result<(), NetError> {
    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(nl(what))
}

/// In the namespace init was created in (the router's): create the agent namespace
/// (and come back), the nftables rules (over netlink; the host's `nft` as a fallback
/// child, started once `before_fallback` returns), then — after `paths_done`, from when on nothing here resolves a path, so the
/// caller may pivot its root meanwhile — the veth pair with its agent end created
/// directly inside the agent namespace (moving a device costs an RCU grace period: tens
/// of milliseconds), the router address and the listeners.
///
/// Network namespaces are per thread: init runs this (and [`Router::enter_agent`]) on a
/// thread of its own while its main thread builds the root filesystem, then moves its
/// main thread in with [`Router::join_agent`].
pub fn setup_router(
    nft: Option<&std::path::Path>,
    before_fallback: impl FnOnce(),
    paths_done: impl FnOnce(),
) -> Result<Router, NetError> {
    // Paths first (the namespace files through a /proc directory fd that outlives a
    // pivot_root of the main thread).
    let task = std::fs::File::open("/proc/thread-self").map_err(|e| NetError::Netlink {
        what: "open /proc/thread-self",
        source: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })?;
    let router_ns = ns_file("open the router namespace")?;
    // The rules straight over netlink (fast); the nft binary only where that fails. The
    // rules name interfaces, so they may come before the veth pair.
    // OPENSHELL_NFT_FALLBACK=1 takes the fallback on purpose (tests, odd kernels).
    let loaded = if std::env::var_os("OPENSHELL_NFT_FALLBACK").is_none_or(|v| v != "1") {
        nft::load().ok()
    } else {
        None
    };
    let direct = loaded.is_some();
    let nft = if direct {
        None
    } else {
        before_fallback();
        nft.and_then(|bin| rules::load(bin).ok())
    };
    paths_done();
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(nl("create the agent namespace"))?;
    let agent_ns = ns_file_at(&task, "open the agent namespace")?;
    setns(&router_ns, "return to the router namespace")?;
    link_up("lo")?;
    let mut nl_router = netlink::Netlink::open().map_err(nl("open netlink"))?;
    nl_router
        .request(netlink::veth_msg(
            ROUTER_IF,
            AGENT_IF,
            Some(agent_ns.as_raw_fd()),
        ))
        .map_err(nl("create the veth pair"))?;
    let vr = netlink::index_of(ROUTER_IF).map_err(nl("find vr"))?;
    nl_router
        .request(netlink::addr_msg(vr, ROUTER_IP, PREFIX))
        .map_err(nl("address vr"))?;
    // Best effort: a kernel without IPv6 has nothing to turn off.
    let _ = nl_router.request(netlink::no_ipv6_addr_msg(vr));
    nl_router
        .request(netlink::up_msg(vr))
        .map_err(nl("bring up vr"))?;
    let listeners = Listeners {
        proxy: tcp_listener(PROXY_PORT)?,
        bypass: tcp_listener(BYPASS_PORT)?,
        dns: udp_socket(DNS_PORT)?,
        diag: None,
        queue: if loaded == Some(true) {
            queue::socket_for_queue().ok()
        } else {
            None
        },
    };
    Ok(Router {
        agent_ns,
        listeners: Some(listeners),
        nft,
        rules_loaded: direct,
        agent_netlink: None,
    })
}

impl Router {
    /// Move the calling thread into the agent namespace and configure lo and `va`.
    /// No route out yet: see [`Router::route_out`].
    pub fn enter_agent(&mut self) -> Result<(), NetError> {
        setns(&self.agent_ns, "enter the agent namespace")?;
        let mut nl_agent = netlink::Netlink::open().map_err(nl("open netlink"))?;
        link_up("lo")?;
        let va = netlink::index_of(AGENT_IF).map_err(nl("find va"))?;
        nl_agent
            .request(netlink::addr_msg(va, AGENT_IP, PREFIX))
            .map_err(nl("address va"))?;
        let _ = nl_agent.request(netlink::no_ipv6_addr_msg(va));
        nl_agent
            .request(netlink::up_msg(va))
            .map_err(nl("bring up va"))?;
        self.agent_netlink = Some(nl_agent);
        if let Some(l) = self.listeners.as_mut() {
            l.diag = netlink::sock_diag_socket().ok();
        }
        Ok(())
    }

    /// Move the calling thread (init's main thread, whose children become the
    /// sandbox's processes) into the agent namespace.
    pub fn join_agent(&self) -> Result<(), NetError> {
        setns(&self.agent_ns, "enter the agent namespace")
    }

    /// Whether the rules are already in place (loaded over netlink).
    pub fn rules_loaded(&self) -> bool {
        self.rules_loaded
    }

    /// The pid of the child loading the nftables rules, if one was started (fallback). The
    /// caller reaps it (init's reaper) and calls [`Router::route_out`] when it succeeded.
    pub fn rules_loader(&self) -> Option<u32> {
        self.nft.as_ref().map(std::process::Child::id)
    }

    /// Add the default route via the router: only once its rules are in place, so that
    /// without them nothing can even try to leave (on-link 10.200.0.1 — proxy, DNS —
    /// works either way).
    pub fn route_out(&mut self) -> Result<(), NetError> {
        self.nft = None;
        let Some(nl_agent) = self.agent_netlink.as_mut() else {
            return Ok(());
        };
        let va = netlink::index_of(AGENT_IF).map_err(nl("find va"))?;
        nl_agent
            .request(netlink::default_route_msg(va, ROUTER_IP))
            .map_err(nl("default route"))
    }

    /// Hand over the listeners (init sends them to the supervisor, then drops its copies).
    pub fn take_listeners(&mut self) -> Option<Listeners> {
        self.listeners.take()
    }
}

/// Set IFF_UP on an interface of the current namespace.
pub fn link_up(name: &str) -> Result<(), NetError> {
    let sock: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(NetError::Socket)?;
    let err = |source| NetError::LinkUp {
        name: name.to_string(),
        source,
    };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(err(Errno::ENAMETOOLONG));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `sock` is an open socket, `req` a valid ifreq naming the interface; the
    // kernel writes the flags into the union.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(err(Errno::last()));
    }
    // SAFETY: SIOCGIFFLAGS just filled the flags member of the union.
    unsafe {
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    }
    // SAFETY: as above; the kernel only reads `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(err(Errno::last()));
    }
    Ok(())
}
