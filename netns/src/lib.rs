//! Network setup of a sandbox's namespaces.
//!
//! Today the sandbox gets a net namespace of its own with only loopback up: no route
//! out, so outside connections fail at once with "network unreachable" and host
//! loopback services are out of reach. The router/agent namespace pair, veth and
//! nftables of DESIGN.md §3 slot in here as [`NetworkMode::Proxied`] later; init calls
//! [`setup`] at the same point of its ordered setup either way. Synchronous: runs in init.

use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

/// How the sandbox is networked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkMode {
    /// Own namespace, loopback only.
    Isolated,
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
}

/// Configure the current (fresh) net namespace for `mode`.
pub fn setup(mode: NetworkMode) -> Result<(), NetError> {
    match mode {
        NetworkMode::Isolated => link_up("lo"),
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
