//! Port forwarding: a listener on the host (default 127.0.0.1) whose connections are
//! relayed to the same port on the sandbox's loopback — the dev server the agent
//! started. Rootless and without iptables: the supervisor owns the listener and relays
//! on its proxy runtime; the sandbox end of each connection is a socket *created in
//! the sandbox's network namespace* by the connector, a small helper process (this
//! binary, `__connector`) that joined the sandbox's user and network namespaces — a
//! multi-threaded supervisor cannot join them itself (setns of a user namespace needs
//! a single-threaded caller) — and hands each new socket over SCM_RIGHTS. A socket
//! keeps the namespace it was made in, so the supervisor then connects it to
//! 127.0.0.1:PORT from the host as if it were inside.
//!
//! Forwards live as long as the supervisor: they stop with the sandbox. Managed through
//! the control socket (`GET|PUT /v1/forwards`, `DELETE /v1/forwards/PORT`) by `openshell
//! forward`, and started at start-up from `run`/`create --forward`.

use std::collections::BTreeMap;
use std::io::IoSliceMut;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::{Arc, Mutex};

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socket,
};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// Connections one forward relays at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 512;

/// One forward as asked: listen on `bind:port` on the host, relay to the sandbox's
/// 127.0.0.1:`port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Host address to listen on (default 127.0.0.1).
    #[serde(default = "loopback")]
    pub bind: IpAddr,
    /// The port, on both sides.
    pub port: u16,
}

fn loopback() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

impl Spec {
    /// `[ADDR:]PORT` (`8080`, `127.0.0.1:8080`, `0.0.0.0:3000`, `[::1]:8080`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("--forward {s:?}: expected [ADDR:]PORT, e.g. 8080 or 127.0.0.1:8080");
        let (addr, port) = match s.rsplit_once(':') {
            Some((a, p)) => (
                a.trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .map_err(|_| bad())?,
                p,
            ),
            None => (loopback(), s),
        };
        let port: u16 = port.parse().map_err(|_| bad())?;
        if port == 0 {
            return Err(bad());
        }
        Ok(Self { bind: addr, port })
    }
}

/// The forwards of one sandbox.
pub struct Forwards {
    init_pid: u32,
    active: Mutex<BTreeMap<u16, (Spec, tokio::task::JoinHandle<()>)>>,
    connector: tokio::sync::Mutex<Option<Connector>>,
}

impl Forwards {
    /// None yet, for the sandbox whose init is `init_pid` (host pid).
    pub fn new(init_pid: u32) -> Self {
        Self {
            init_pid,
            active: Mutex::new(BTreeMap::new()),
            connector: tokio::sync::Mutex::new(None),
        }
    }

    /// The active forwards.
    pub fn list(&self) -> Vec<Spec> {
        self.lock().values().map(|(s, _)| s.clone()).collect()
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<u16, (Spec, tokio::task::JoinHandle<()>)>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bind the host listener of `spec` (synchronous: a taken port is an error at once,
    /// named so the user can act).
    pub fn bind(&self, spec: &Spec) -> Result<std::net::TcpListener, String> {
        if self.lock().contains_key(&spec.port) {
            return Err(format!("port {} is already forwarded", spec.port));
        }
        let addr = SocketAddr::new(spec.bind, spec.port);
        let l = std::net::TcpListener::bind(addr).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                format!("{addr} is in use on this host: choose another port or address")
            } else {
                format!("listen on {addr}: {e}")
            }
        })?;
        l.set_nonblocking(true)
            .map_err(|e| format!("listen on {addr}: {e}"))?;
        Ok(l)
    }

    /// Serve `spec` on `listener` (from [`Forwards::bind`]); on the proxy's runtime.
    pub fn run(
        self: &Arc<Self>,
        spec: Spec,
        listener: std::net::TcpListener,
    ) -> Result<(), String> {
        let listener = TcpListener::from_std(listener).map_err(|e| e.to_string())?;
        let me = self.clone();
        let port = spec.port;
        let task = tokio::spawn(async move {
            let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
            loop {
                // At the limit, new connections wait in the listen backlog.
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let client = match listener.accept().await {
                    Ok((c, _)) => c,
                    // Out of descriptors (or a connection reset before accept): the
                    // forward stays; try again shortly instead of spinning or ending.
                    Err(_) => {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = client.set_nodelay(true);
                let me = me.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    if let Ok(inside) = me.connect_inside(port).await {
                        relay(client, inside).await;
                    }
                    // Nothing listens inside (or the sandbox is going): the client's
                    // connection just closes, as a refused one would.
                });
            }
        });
        self.lock().insert(port, (spec, task));
        Ok(())
    }

    /// Stop forwarding `port`; false when it was not forwarded.
    pub fn stop(&self, port: u16) -> bool {
        match self.lock().remove(&port) {
            Some((_, task)) => {
                task.abort();
                true
            }
            None => false,
        }
    }

    /// A TCP connection to the sandbox's 127.0.0.1:`port`.
    async fn connect_inside(&self, port: u16) -> std::io::Result<tokio::net::TcpStream> {
        let fd = {
            let mut c = self.connector.lock().await;
            if c.is_none() {
                *c = Some(Connector::start(self.init_pid)?);
            }
            let conn = c.as_mut().expect("just set");
            match conn.socket() {
                Ok(fd) => fd,
                Err(e) => {
                    *c = None; // a dead connector is replaced on the next connection
                    return Err(e);
                }
            }
        };
        let sock = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
        let s = sock
            .connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }
}

/// Relay `client` ↔ `inside`. The buffer sizes come from bench/forward.sh: 8 KiB (tokio's
/// default) cost half the throughput, 256 KiB gave 0.6–0.75× direct, 1 MiB towards the
/// client (downloads from a dev server: the bulk direction) 0.78–0.83×, larger no more.
/// Uploads get 64 KiB. The buffers are allocated zeroed, so their pages cost memory
/// only once bytes go through them; [`MAX_CONNECTIONS`] bounds the total.
async fn relay(mut client: tokio::net::TcpStream, mut inside: tokio::net::TcpStream) {
    const UP: usize = 64 << 10;
    const DOWN: usize = 1 << 20;
    let _ = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut inside, UP, DOWN).await;
    let _ = client.shutdown().await;
    let _ = inside.shutdown().await;
}

/// The connector process and our end of its socket pair: new TCP sockets of a
/// sandbox's network namespace, for the supervisor's forwards and for `ssh-proxy`'s
/// direct-tcpip channels.
pub struct Connector {
    child: std::process::Child,
    sock: StdUnixStream,
}

impl Drop for Connector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Connector {
    /// Start `__connector INIT_PID` (this binary) for the sandbox whose init that is.
    pub fn start(init_pid: u32) -> std::io::Result<Self> {
        let (ours, theirs) = StdUnixStream::pair()?;
        let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
        let child = std::process::Command::new(exe)
            .arg("__connector")
            .arg(init_pid.to_string())
            .stdin(std::process::Stdio::from(OwnedFd::from(theirs)))
            .stdout(std::process::Stdio::null())
            .env_remove("OPENSHELL_HOST")
            .env_remove("COMPLETE")
            .spawn()?;
        Ok(Self { child, sock: ours })
    }

    /// One new TCP socket of the sandbox's network namespace (unconnected,
    /// non-blocking).
    pub fn socket(&mut self) -> std::io::Result<OwnedFd> {
        use std::io::Write;
        self.sock.write_all(b"s")?;
        let mut byte = [0u8; 1];
        let mut iov = [IoSliceMut::new(&mut byte)];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let m = recvmsg::<()>(
            self.sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        let fd = m
            .cmsgs()
            .ok()
            .and_then(|mut c| {
                c.find_map(|c| match c {
                    ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
                    _ => None,
                })
            })
            .ok_or_else(|| std::io::Error::other("the connector sent no socket"))?;
        // SAFETY: the descriptor arrived with SCM_RIGHTS and is ours alone.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// `openshell __connector INIT_PID`: join the sandbox's user and network namespaces,
/// then answer each byte read on stdin (a unix socket) with a new TCP socket of that
/// namespace, sent back over SCM_RIGHTS. Single-threaded by construction (a fresh
/// process). Returns when stdin closes.
pub fn connector_main(init_pid: u32) -> i32 {
    match connector(init_pid) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("openshell: connector: {e}");
            125
        }
    }
}

fn connector(init_pid: u32) -> Result<(), String> {
    use nix::sched::{CloneFlags, setns};
    // Both opened before joining either (the paths resolve in our own mount namespace).
    let open = |kind: &str| {
        std::fs::File::open(format!("/proc/{init_pid}/ns/{kind}"))
            .map_err(|e| format!("open /proc/{init_pid}/ns/{kind}: {e}"))
    };
    let user = open("user")?;
    let net = open("net")?;
    // Already in that user namespace (root's sandboxes may share ours): skip it.
    let same_user = std::fs::read_link("/proc/self/ns/user").ok()
        == std::fs::read_link(format!("/proc/{init_pid}/ns/user")).ok();
    if !same_user {
        setns(&user, CloneFlags::CLONE_NEWUSER).map_err(|e| format!("join user namespace: {e}"))?;
    }
    setns(&net, CloneFlags::CLONE_NEWNET).map_err(|e| format!("join network namespace: {e}"))?;
    // SAFETY: fd 0 is the socket our parent gave us; we own it from here on.
    let sock = unsafe { OwnedFd::from_raw_fd(0) };
    let mut byte = [0u8; 1];
    loop {
        match nix::unistd::read(&sock, &mut byte) {
            Ok(0) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
        let s = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(|e| format!("socket: {e}"))?;
        let fds = [s.as_raw_fd()];
        sendmsg::<()>(
            sock.as_raw_fd(),
            &[std::io::IoSlice::new(b"s")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .map_err(|e| format!("send the socket: {e}"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(Spec::parse("8080").unwrap().port, 8080);
        assert_eq!(Spec::parse("8080").unwrap().bind, loopback());
        let s = Spec::parse("0.0.0.0:3000").unwrap();
        assert_eq!((s.bind.to_string().as_str(), s.port), ("0.0.0.0", 3000));
        assert_eq!(Spec::parse("[::1]:80").unwrap().bind.to_string(), "::1");
        for bad in ["", "0", "70000", "x:80", "host:80", "80:"] {
            assert!(Spec::parse(bad).is_err(), "{bad}");
        }
    }
}
