//! The per-sandbox proxy: every connection leaving a sandbox is decided here.
//!
//! Three listeners, bound by init in the sandbox's router namespace and served by the
//! supervisor in the host's: the explicit proxy (HTTP CONNECT and absolute-form
//! `http://` requests), the bypass listener (connections that ignored the proxy,
//! redirected by nftables: logged and refused, or relayed for `protocol: tcp`), and
//! DNS (answers only names some policy allows); with them, the router's packet queue
//! (`refuse`), where connection attempts that ignore the proxy are decided before
//! their handshake so that the kernel refuses them. Decisions come from
//! `openshell_policy::engine`; who owns a connection comes from an [`Identify`]
//! implementation (the runtime reads /proc); this crate knows nothing of namespaces.
#![forbid(unsafe_code)]

pub mod bypass;
pub mod connect;
pub mod dns;
pub mod http;
pub mod inference;
pub mod l7;
pub mod log;
pub mod pool;
pub mod prefixed;
pub mod refuse;
pub mod secrets;
pub mod splice;
pub mod state;
pub mod tls;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openshell_policy::engine::ip_permitted;
use openshell_policy::{Endpoint, Policy};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

pub use log::Logger;
pub use state::PolicyState;

/// The process that owns a sandbox connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Pid as seen from the host.
    pub pid: u32,
    /// Executable path as seen inside the sandbox.
    pub exe: String,
    /// `exe`, then the executables of its ancestors (up to, not including, init).
    pub chain: Vec<String>,
    /// SHA-256 of the executable's content, or why it could not be computed.
    pub sha256: Result<String, String>,
    /// Other programs holding the same socket (inherited or passed): not empty means
    /// the connection cannot be attributed to one program, and it is refused.
    pub shared_with: Vec<String>,
}

/// Finds the process behind a connection from the sandbox.
pub trait Identify: Send + Sync {
    /// `agent` is the connection's address on the agent side (10.200.0.2:port),
    /// `remote` where the agent's socket is connected to (the proxy, or the original
    /// destination of a redirected connection).
    fn identify(&self, agent: SocketAddr, remote: SocketAddr) -> Option<Peer>;

    /// What `path` resolves to inside the sandbox (symlinks followed there), if it
    /// exists.
    fn resolve(&self, _path: &str) -> Option<String> {
        None
    }
}

/// Under the system directories a sandbox only reads (`/usr`, `/bin`, `/sbin`, `/lib*`,
/// `/opt`)?
fn system_path(p: &str) -> bool {
    ["/usr/", "/bin/", "/sbin/", "/lib/", "/lib64/", "/opt/"]
        .iter()
        .any(|d| p.starts_with(d))
        && !p.split('/').any(|c| c == "..")
}

/// Executable paths whose first SHA-256 is remembered (see [`Context::who`]).
pub const MAX_PINNED: usize = 16384;
/// The bytes of those paths, at most.
pub const MAX_PINNED_BYTES: usize = 1 << 20;

/// First-seen SHA-256 of each executable path, and the bytes of those paths.
#[derive(Default)]
struct Pins {
    map: HashMap<String, String>,
    bytes: usize,
}

/// Everything the handlers share.
pub struct Context {
    /// The live policy.
    pub policy: Arc<PolicyState>,
    /// Socket owner lookup.
    pub identify: Arc<dyn Identify>,
    /// Decision log.
    pub log: Arc<Logger>,
    /// First-seen SHA-256 of each executable path.
    pins: Mutex<Pins>,
    /// Names our DNS answered, by address (for transparent `protocol: tcp`).
    pub dns_names: Mutex<HashMap<IpAddr, String>>,
    /// Upstream connect timeout.
    pub connect_timeout: Duration,
    /// Recent resolutions.
    resolved: Mutex<HashMap<String, (Vec<IpAddr>, std::time::Instant)>>,
    /// The sandbox CA (inspected endpoints).
    pub ca: Option<Arc<tls::SandboxCa>>,
    /// Extra CAs for TLS towards upstreams of inspected endpoints.
    upstream_ca: Vec<std::path::PathBuf>,
    /// That TLS config, built on first use (parsing the host's roots costs a
    /// millisecond every sandbox start would pay for nothing).
    upstream_tls: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
    /// The same offering HTTP/2 first.
    upstream_tls_h2: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
    /// Provider credentials swapped for their placeholders (`secrets`).
    pub credentials: secrets::Vault,
    /// The inference.local route (`inference`).
    pub inference: inference::Router,
    /// Idle upstream connections of forwarded `http://` requests (`pool`).
    pub pool: Arc<pool::Pool>,
}

impl Context {
    /// A context for one sandbox.
    pub fn new(
        policy: Arc<PolicyState>,
        identify: Arc<dyn Identify>,
        log: Arc<Logger>,
        ca: Option<Arc<tls::SandboxCa>>,
        upstream_ca: Vec<std::path::PathBuf>,
    ) -> Arc<Self> {
        Arc::new(Self {
            policy,
            identify,
            log,
            pins: Mutex::new(Pins::default()),
            dns_names: Mutex::new(HashMap::new()),
            connect_timeout: Duration::from_secs(10),
            resolved: Mutex::new(HashMap::new()),
            ca,
            upstream_ca,
            upstream_tls: std::sync::OnceLock::new(),
            upstream_tls_h2: std::sync::OnceLock::new(),
            credentials: secrets::Vault::default(),
            inference: inference::Router::default(),
            pool: Arc::default(),
        })
    }

    /// The client TLS config towards inspected upstreams.
    pub fn upstream_tls(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        self.upstream_tls
            .get_or_init(|| tls::upstream_client(&self.upstream_ca).map_err(|e| e.to_string()))
            .clone()
    }

    /// The client TLS config towards inspected upstreams, offering HTTP/2 first (for
    /// clients that chose HTTP/2 themselves).
    pub fn upstream_tls_h2(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        self.upstream_tls_h2
            .get_or_init(|| {
                let base = self.upstream_tls()?;
                let mut cfg = rustls::ClientConfig::clone(&base);
                cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
                Ok(Arc::new(cfg))
            })
            .clone()
    }

    /// `chain` plus every literal `binaries` path of `policy` (under the read-only
    /// system directories: a link the sandbox could write or retarget never counts)
    /// that is a symlink inside
    /// the sandbox resolving to an executable of the chain: a policy naming
    /// `/usr/bin/claude` matches the `node_modules/.../claude.exe` the kernel reports.
    /// Resolved on the blocking pool.
    pub async fn chain_with_links(&self, policy: &Policy, chain: &[String]) -> Vec<String> {
        let literals: Vec<String> = policy
            .network_policies
            .values()
            .flat_map(|np| np.binaries.iter().map(|b| b.path.clone()))
            .filter(|p| !p.contains('*') && !chain.contains(p) && system_path(p))
            .collect();
        let mut out = chain.to_vec();
        if literals.is_empty() || chain.is_empty() {
            return out;
        }
        let identify = self.identify.clone();
        let resolved = tokio::task::spawn_blocking(move || {
            literals
                .into_iter()
                .filter_map(|l| identify.resolve(&l).map(|r| (l, r)))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for (literal, target) in resolved {
            if literal != target
                && system_path(&target)
                && chain.contains(&target)
                && !out.contains(&literal)
            {
                out.push(literal);
            }
        }
        out
    }

    /// Log a denied connection (`kind`: `NET:OPEN`, `NET:BYPASS`) of `who` to
    /// `host:port`.
    pub(crate) fn log_denied(&self, kind: &str, who: &Peer, host: &str, port: u16, reason: &str) {
        self.log.net(&log::NetEvent {
            kind,
            allowed: false,
            binary: &who.exe,
            pid: who.pid,
            host,
            port,
            policy: None,
            reason: Some(reason),
        });
    }

    /// Who owns the connection, and whether its binary still is the one first seen at
    /// that path (SHA-256 pinning). Unknown owners get an empty chain (matching no
    /// policy). The lookup reads /proc and may hash a new executable: it runs on the
    /// blocking pool, never on the threads serving other connections.
    pub async fn who(&self, agent: SocketAddr, remote: SocketAddr) -> (Peer, Result<(), String>) {
        let identify = self.identify.clone();
        let found = tokio::task::spawn_blocking(move || identify.identify(agent, remote))
            .await
            .ok()
            .flatten();
        let Some(peer) = found else {
            return (
                Peer {
                    pid: 0,
                    exe: "?".into(),
                    chain: Vec::new(),
                    sha256: Err("unknown process".into()),
                    shared_with: Vec::new(),
                },
                Err("the connection's process could not be identified".into()),
            );
        };
        if !peer.shared_with.is_empty() {
            let err = format!(
                "the socket is shared with other programs ({}); a connection must come from one program",
                peer.shared_with.join(", ")
            );
            return (peer, Err(err));
        }
        let pinned = match &peer.sha256 {
            Ok(h) => {
                let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
                // Bounded in number and in bytes (paths are up to 4 KiB): past that a
                // new executable is refused (never forgotten: a forgotten pin would
                // accept a changed binary).
                if !pins.map.contains_key(&peer.exe)
                    && (pins.map.len() >= MAX_PINNED
                        || pins.bytes + peer.exe.len() > MAX_PINNED_BYTES)
                {
                    return (
                        peer,
                        Err(format!(
                            "more than {MAX_PINNED} different executables (or {} MiB of their paths) have connected from this sandbox; a new one is refused",
                            MAX_PINNED_BYTES >> 20
                        )),
                    );
                }
                if !pins.map.contains_key(&peer.exe) {
                    pins.bytes += peer.exe.len();
                }
                let first = pins
                    .map
                    .entry(peer.exe.clone())
                    .or_insert_with(|| h.clone());
                if first == h {
                    Ok(())
                } else {
                    Err(format!(
                        "{} changed since its first use (sha256 differs)",
                        peer.exe
                    ))
                }
            }
            Err(e) => Err(e.clone()),
        };
        (peer, pinned)
    }
}

/// A host name as the policy and the resolver see it: ASCII lower-case, one trailing
/// dot dropped, at most 253 bytes in labels of 1 to 63 letters, digits, `-` or `_`; or
/// an IP literal (brackets of `[v6]` removed). `None` for anything else, which is
/// refused before any policy lookup or resolution (a name the host's resolver would
/// treat differently from the policy, e.g. `api.test.openshell.` with its dot or
/// `%`-escapes, never reaches it).
pub fn normalize_name(raw: &str) -> Option<String> {
    let unbracketed = raw
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(raw);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Some(ip.to_string());
    }
    let name = raw.strip_suffix('.').unwrap_or(raw).to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            (1..=63).contains(&l.len())
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        });
    ok.then_some(name)
}

/// Why a dial failed: a policy refusal (403) or an unreachable upstream (502).
#[derive(Debug)]
pub enum DialError {
    /// SSRF guard.
    Refused(String),
    /// Resolution or connection failed.
    Unreachable(String),
}

/// How long a resolution is reused.
const RESOLVE_TTL: Duration = Duration::from_secs(5);

/// Resolve with the host's resolver, reusing answers for a few seconds (a busy client
/// opening many connections to one host must not pay getaddrinfo each time).
pub async fn resolve(ctx: &Context, host: &str) -> std::io::Result<Vec<IpAddr>> {
    if let Some((ips, at)) = ctx
        .resolved
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(host)
        && at.elapsed() < RESOLVE_TTL
    {
        return Ok(ips.clone());
    }
    let ips: Vec<IpAddr> = tokio::net::lookup_host((host, 0))
        .await?
        .map(|a| a.ip())
        .collect();
    ctx.resolved
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(host.to_string(), (ips.clone(), std::time::Instant::now()));
    Ok(ips)
}

/// Resolve `host` and connect to the first address the endpoint permits.
pub async fn dial(
    ctx: &Context,
    ep: &Endpoint,
    host: &str,
    port: u16,
) -> Result<TcpStream, DialError> {
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => resolve(ctx, host)
            .await
            .map_err(|e| DialError::Unreachable(format!("cannot resolve {host}: {e}")))?
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect(),
    };
    let mut refused = None;
    let mut last_err = None;
    for a in addrs {
        if let Err(why) = ip_permitted(ep, a.ip()) {
            tracing::debug!("{host}:{port}: address {a} refused: {why}");
            refused = Some(why);
            continue;
        }
        match tokio::time::timeout(ctx.connect_timeout, TcpStream::connect(a)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                tracing::debug!("{host}:{port}: connected to {a}");
                return Ok(s);
            }
            Ok(Err(e)) => {
                tracing::debug!("{host}:{port}: {a}: {e}; trying the next address");
                last_err = Some(format!("{a}: {e}"));
            }
            Err(_) => {
                tracing::debug!("{host}:{port}: {a}: connect timed out; trying the next address");
                last_err = Some(format!("{a}: connect timed out"));
            }
        }
    }
    Err(match (last_err, refused) {
        (Some(e), _) => DialError::Unreachable(e),
        (None, Some(r)) => DialError::Refused(r),
        (None, None) => DialError::Unreachable(format!("{host} has no address")),
    })
}

/// Relay both ways until either side closes, or until the policy changes.
///
/// `generation` was taken when the connection was accepted: a change since then (even
/// one during the TLS handshake or the upstream dial) ends the relay at once.
pub async fn relay<A, B>(a: &mut A, b: &mut B, mut generation: watch::Receiver<u64>, bulk: bool)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    // Tunnels carry bulk transfers: large buffers. A forwarded request/response pair is
    // small and short-lived: allocating (and zeroing) large buffers would dominate it.
    let size = if bulk { 256 * 1024 } else { 16 * 1024 };
    tokio::select! {
        _ = tokio::io::copy_bidirectional_with_sizes(a, b, size, size) => {}
        _ = generation.changed() => {}
    }
}

/// The listeners, as handed over by init.
pub struct Listeners {
    /// Explicit proxy.
    pub proxy: std::net::TcpListener,
    /// Redirected connections.
    pub bypass: std::net::TcpListener,
    /// DNS.
    pub dns: std::net::UdpSocket,
    /// The router's packet queue (connection attempts to refuse in the kernel), if any.
    pub queue: Option<std::os::fd::OwnedFd>,
}

/// Serve until `shutdown` fires.
pub async fn serve(
    ctx: Arc<Context>,
    l: Listeners,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    let prep = |r: std::io::Result<()>| r.is_ok();
    if !(prep(l.proxy.set_nonblocking(true))
        && prep(l.bypass.set_nonblocking(true))
        && prep(l.dns.set_nonblocking(true)))
    {
        return;
    }
    let (Ok(proxy), Ok(bypass), Ok(dns)) = (
        tokio::net::TcpListener::from_std(l.proxy),
        tokio::net::TcpListener::from_std(l.bypass),
        tokio::net::UdpSocket::from_std(l.dns),
    ) else {
        return;
    };
    let c1 = ctx.clone();
    let explicit = tokio::spawn(async move {
        while let Ok((sock, peer)) = proxy.accept().await {
            // Small writes (a response head, then its body, each its own TLS record
            // on inspected tunnels) must not wait for the client's delayed ACK.
            let _ = sock.set_nodelay(true);
            tokio::spawn(connect::handle(c1.clone(), sock, peer));
        }
    });
    let c2 = ctx.clone();
    let redirected = tokio::spawn(async move {
        while let Ok((sock, peer)) = bypass.accept().await {
            let _ = sock.set_nodelay(true);
            tokio::spawn(bypass::handle(c2.clone(), sock, peer));
        }
    });
    let resolver = tokio::spawn(dns::serve(ctx.clone(), dns));
    let queue = l.queue.map(|q| tokio::spawn(refuse::serve(ctx.clone(), q)));
    let _ = (&mut shutdown).await;
    if let Some(q) = queue {
        q.abort();
    }
    explicit.abort();
    redirected.abort();
    resolver.abort();
}

#[cfg(test)]
mod tests {
    use super::normalize_name;
    use super::*;

    /// Every connection is made by the executable `path(agent port)`, all with one hash.
    struct ByPort(fn(u16) -> String);
    impl Identify for ByPort {
        fn identify(&self, agent: SocketAddr, _remote: SocketAddr) -> Option<Peer> {
            let exe = (self.0)(agent.port());
            Some(Peer {
                pid: 2,
                exe: exe.clone(),
                chain: vec![exe],
                sha256: Ok("h".into()),
                shared_with: Vec::new(),
            })
        }
    }

    fn context(paths: fn(u16) -> String) -> Arc<Context> {
        Context::new(
            PolicyState::new(Policy::parse("version: 1\n").unwrap()),
            Arc::new(ByPort(paths)),
            Arc::new(Logger::new(None, false)),
            None,
            Vec::new(),
        )
    }

    #[tokio::test]
    async fn pins_are_bounded_and_never_forgotten() {
        let ctx = context(|port| format!("/bin/p{port}"));
        let remote: SocketAddr = "192.0.2.1:443".parse().unwrap();
        let at = |port: u16| SocketAddr::from(([10, 200, 0, 2], port));
        for port in 0..MAX_PINNED as u16 {
            assert!(ctx.who(at(port), remote).await.1.is_ok(), "{port}");
        }
        let (_, new) = ctx.who(at(MAX_PINNED as u16), remote).await;
        assert!(new.unwrap_err().contains("different executables"));
        // The ones pinned before still pass.
        assert!(ctx.who(at(7), remote).await.1.is_ok());
    }

    #[tokio::test]
    async fn pinned_paths_are_bounded_in_bytes() {
        // 3995-byte paths ending in the agent port.
        let ctx = context(|port| format!("/{}{port}", "d/".repeat(1995)));
        let remote: SocketAddr = "192.0.2.1:443".parse().unwrap();
        let at = |port: u16| SocketAddr::from(([10, 200, 0, 2], port));
        let fits = (MAX_PINNED_BYTES / 3995) as u16;
        for port in 1000..1000 + fits {
            assert!(ctx.who(at(port), remote).await.1.is_ok(), "{port}");
        }
        let (_, refused) = ctx.who(at(2000 + fits), remote).await;
        assert!(refused.unwrap_err().contains("MiB of their paths"));
        assert!(ctx.who(at(1001), remote).await.1.is_ok());
    }

    #[test]
    fn names_are_normalised_or_refused() {
        let n = |s: &str| normalize_name(s);
        assert_eq!(
            n("API.Test.OpenShell.").as_deref(),
            Some("api.test.openshell")
        );
        assert_eq!(n("_acme-x.a1.com").as_deref(), Some("_acme-x.a1.com"));
        assert_eq!(n("[::1]").as_deref(), Some("::1"));
        assert_eq!(n("10.0.0.1").as_deref(), Some("10.0.0.1"));
        for bad in [
            "",
            ".",
            "a..b",
            "a.b..",
            "api%2etest",
            "a b",
            "a\0b",
            "ünï.com",
            "a/b",
            "*.com",
        ] {
            assert_eq!(n(bad), None, "{bad:?}");
        }
        assert_eq!(n(&"a".repeat(64)), None);
        assert_eq!(n(&["a"; 130].join(".")), None);
    }
}
