//! The supervisor's network service: the proxy on the listeners init handed over, and
//! the control API on `control.sock` (HTTP/1.1 + JSON over a unix socket, mode 0600):
//!
//! - `GET /v1/policy` → `{version, sha256, policy}` (policy as YAML)
//! - `PUT /v1/policy` (body: the whole policy YAML) → `{version, sha256, changed}`, or
//!   400 `{error: "invalid_policy", detail}` and the old policy stays active
//! - `GET /v1/policy/history` → the revisions with their status
//!
//! Runs on its own thread with a single-threaded tokio runtime, started only after init
//! exists (the supervisor clones before any thread) and stopped before cleanup.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openshell_policy::Policy;
use openshell_proxy::http::{self, HeadError};
use openshell_proxy::{Context, Listeners, Logger, PolicyState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// A running network service.
pub struct NetService {
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What init hands over from the router namespace (SCM_RIGHTS, `init::msg::NET`).
pub struct RouterFds {
    /// TCP 10.200.0.1:3128: the explicit proxy.
    pub proxy: OwnedFd,
    /// TCP 10.200.0.1:15001: connections redirected by the router's rules.
    pub bypass: OwnedFd,
    /// UDP 10.200.0.1:53: policy DNS.
    pub dns: OwnedFd,
    /// The agent namespace's sock_diag socket, when init could open one.
    pub diag: Option<OwnedFd>,
    /// The router's packet queue socket (connection attempts for a verdict), when the
    /// rules that use it are in.
    pub queue: Option<OwnedFd>,
    /// Whether the router's nftables rules are in place.
    pub rules: bool,
}

/// Everything the network service needs.
pub struct NetConfig {
    /// What init handed over from the router namespace.
    pub router: RouterFds,
    /// The sandbox's policy.
    pub policy: Policy,
    /// init's host pid (for socket owner lookups).
    pub init_pid: u32,
    /// Where logs go.
    pub log_dir: Option<PathBuf>,
    /// Echo decisions on stderr.
    pub verbose: bool,
    /// The control socket path.
    pub control: PathBuf,
    /// The sandbox CA.
    pub ca: Option<Arc<openshell_proxy::tls::SandboxCa>>,
    /// Extra CAs for upstream TLS.
    pub upstream_ca: Vec<PathBuf>,
    /// Provider credentials the proxy swaps for their placeholders.
    pub credentials: Vec<openshell_proxy::secrets::Credential>,
    /// The inference.local route.
    pub inference: Option<openshell_proxy::inference::Route>,
    /// Fallbacks init's setup took: logged once at start (`SETUP:FALLBACK`).
    pub notes: Vec<String>,
    /// Ports forwarded from the host from the start (`--forward`).
    pub forwards: Vec<crate::forward::Spec>,
}

impl NetService {
    /// Start the proxy and control API on a thread of their own.
    pub fn start(cfg: NetConfig) -> std::io::Result<Self> {
        let r = cfg.router;
        let listeners = Listeners {
            proxy: std::net::TcpListener::from(r.proxy),
            bypass: std::net::TcpListener::from(r.bypass),
            dns: std::net::UdpSocket::from(r.dns),
            queue: r.queue,
        };
        let log = Arc::new(Logger::new(cfg.log_dir.as_deref(), cfg.verbose));
        let state = PolicyState::new(cfg.policy);
        let cur = state.current();
        log.config(cur.version, &cur.sha256, true, "initial policy");
        for n in &cfg.notes {
            log.note("SETUP:FALLBACK", n);
        }
        if r.rules && listeners.queue.is_none() {
            log.note(
                "NET:QUEUE",
                "the router has no packet queue (its rules were loaded by the nft binary, or the kernel refused the queue): connections that ignore the proxy are reset after the handshake instead of refused",
            );
        }
        if !r.rules {
            log.note(
                "NET:MODE",
                "nftables unavailable: no route out of the sandbox (bypass attempts fail at once, unlogged); the explicit proxy works",
            );
        }
        // A bad --upstream-ca is an error now, not at the first inspected request.
        for f in &cfg.upstream_ca {
            std::fs::read(f).map_err(|e| {
                std::io::Error::other(format!("--upstream-ca {}: {e}", f.display()))
            })?;
        }
        let ctx = Context::new(
            state,
            Arc::new(crate::identity::SandboxProcs::new(cfg.init_pid, r.diag)),
            log,
            cfg.ca,
            cfg.upstream_ca,
        );
        ctx.credentials.set(cfg.credentials);
        ctx.inference.set(cfg.inference);
        let control = bind_control(&cfg.control)?;
        // The host listeners of --forward now: a taken port stops the start with a
        // message, before the sandbox is Ready.
        let forwards = Arc::new(crate::forward::Forwards::new(cfg.init_pid));
        let mut bound = Vec::new();
        for spec in cfg.forwards {
            let l = forwards.bind(&spec).map_err(std::io::Error::other)?;
            bound.push((spec, l));
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("openshell-net".into())
            .spawn(move || {
                // Two workers: identity lookups read /proc and must not stall relays.
                let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    // Once the sandbox has run a while, the supervisor only relays and
                    // serves: its start-up code need not stay resident.
                    let trim = tokio::spawn(async {
                        tokio::time::sleep(crate::trim::AFTER).await;
                        crate::trim::release_startup_code();
                    });
                    for (spec, l) in bound {
                        let _ = forwards.run(spec, l);
                    }
                    let c = ctx.clone();
                    let fw = forwards.clone();
                    let ctl = tokio::spawn(async move {
                        let Ok(l) = tokio::net::UnixListener::from_std(control) else {
                            return;
                        };
                        while let Ok((s, _)) = l.accept().await {
                            tokio::spawn(serve_control(c.clone(), fw.clone(), s));
                        }
                    });
                    openshell_proxy::serve(ctx, listeners, rx).await;
                    ctl.abort();
                    trim.abort();
                });
            })?;
        Ok(Self {
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// Stop serving and wait for the thread.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for NetService {
    fn drop(&mut self) {
        self.halt();
    }
}

fn bind_control(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let l = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Largest request body the control API reads.
const MAX_BODY: usize = 1 << 20;

async fn serve_control(ctx: Arc<Context>, fw: Arc<crate::forward::Forwards>, mut s: UnixStream) {
    let (head, mut body) = match http::read_head(&mut s, 16 * 1024).await {
        Ok(h) => h,
        Err(HeadError::TooLarge) => {
            return reply(&mut s, 431, serde_json::json!({"error": "head_too_large"})).await;
        }
        Err(_) => return,
    };
    let Ok(head) = http::parse_head(&head) else {
        return reply(&mut s, 400, serde_json::json!({"error": "bad_request"})).await;
    };
    let len: usize = head
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if len > MAX_BODY {
        return reply(
            &mut s,
            413,
            serde_json::json!({"error": "body_too_large", "limit": MAX_BODY}),
        )
        .await;
    }
    while body.len() < len {
        let mut chunk = vec![0u8; len - body.len()];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    let path = head.target.split('?').next().unwrap_or("");
    match (head.method.as_str(), path) {
        ("GET", "/v1/policy") => {
            // `?rev=N`: that revision as it was loaded (kept for the last
            // MAX_REVISIONS changes); otherwise the active one.
            let a = ctx.policy.current();
            let query = head.target.split_once('?').map_or("", |(_, q)| q);
            let rev = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("rev="))
                .map(|n| n.parse::<u64>().ok());
            let want = match rev {
                None => a.version,
                Some(Some(n)) => n,
                Some(None) => {
                    let v = serde_json::json!({"error": "bad_request", "detail": "rev must be a revision number"});
                    return reply(&mut s, 400, v).await;
                }
            };
            match ctx.policy.revision(want) {
                Some(r) => {
                    let yaml = r.policy.as_ref().map(|p| p.to_yaml()).unwrap_or_default();
                    let v = serde_json::json!({
                        "version": r.version, "sha256": r.sha256, "status": r.status,
                        "time": r.time, "active": r.version == a.version, "policy": yaml,
                    });
                    reply(&mut s, 200, v).await;
                }
                None => {
                    let v = serde_json::json!({"error": "not_found", "detail": format!("no revision {want} (kept: the last {} changes; see 'policy list')", openshell_proxy::state::MAX_REVISIONS)});
                    reply(&mut s, 404, v).await;
                }
            }
        }
        ("GET", "/v1/policy/history") => {
            let v = serde_json::to_value(ctx.policy.history()).unwrap_or_default();
            reply(&mut s, 200, v).await;
        }
        ("PUT", "/v1/policy") => {
            let text = String::from_utf8_lossy(&body);
            match ctx.policy.replace(&text) {
                Ok(l) => {
                    if l.changed {
                        ctx.log.config(l.version, &l.sha256, true, "policy set");
                    }
                    reply(&mut s, 200, serde_json::to_value(&l).unwrap_or_default()).await;
                }
                Err(e) => {
                    let cur = ctx.policy.current();
                    ctx.log.config(
                        cur.version,
                        &cur.sha256,
                        false,
                        e.lines().next().unwrap_or(""),
                    );
                    reply(&mut s, 400, serde_json::json!({"error": "invalid_policy", "detail": e, "active_version": cur.version})).await;
                }
            }
        }
        ("PUT", "/v1/inference") => {
            // The route inference.local forwards to ({"route": null} removes it).
            #[derive(serde::Deserialize)]
            struct Update {
                route: Option<openshell_proxy::inference::Route>,
            }
            match serde_json::from_slice::<Update>(&body) {
                Ok(u) => {
                    let what = u.route.as_ref().map_or("none".to_string(), |r| {
                        format!("{} {}", r.provider, r.model)
                    });
                    ctx.inference.set(u.route);
                    ctx.log.note("CONFIG:INFERENCE", &format!("route {what}"));
                    reply(&mut s, 200, serde_json::json!({"route": what})).await;
                }
                Err(e) => {
                    reply(
                        &mut s,
                        400,
                        serde_json::json!({"error": "bad_request", "detail": e.to_string()}),
                    )
                    .await;
                }
            }
        }
        ("PUT", "/v1/credentials") => {
            // One provider's credentials, replaced whole (rotation; [] after a delete).
            #[derive(serde::Deserialize)]
            struct Update {
                provider: String,
                credentials: Vec<openshell_proxy::secrets::Credential>,
            }
            match serde_json::from_slice::<Update>(&body) {
                Ok(u) => {
                    let n = u.credentials.len();
                    ctx.credentials.set_provider(&u.provider, u.credentials);
                    ctx.log.config(
                        ctx.policy.current().version,
                        &ctx.policy.current().sha256,
                        true,
                        &format!("credentials of provider {} replaced ({n})", u.provider),
                    );
                    reply(
                        &mut s,
                        200,
                        serde_json::json!({"provider": u.provider, "credentials": n}),
                    )
                    .await;
                }
                Err(e) => {
                    reply(
                        &mut s,
                        400,
                        serde_json::json!({"error": "bad_request", "detail": e.to_string()}),
                    )
                    .await;
                }
            }
        }
        ("GET", "/v1/forwards") => {
            let v = serde_json::to_value(fw.list()).unwrap_or_default();
            reply(&mut s, 200, v).await;
        }
        ("PUT", "/v1/forwards") => {
            let started = serde_json::from_slice::<crate::forward::Spec>(&body)
                .map_err(|e| (400, e.to_string()))
                .and_then(|spec| {
                    let l = fw.bind(&spec).map_err(|e| (409, e))?;
                    fw.run(spec.clone(), l).map_err(|e| (500, e))?;
                    Ok(spec)
                });
            match started {
                Ok(spec) => {
                    ctx.log.note(
                        "NET:FORWARD",
                        &format!(
                            "{}:{} -> sandbox 127.0.0.1:{}",
                            spec.bind, spec.port, spec.port
                        ),
                    );
                    reply(&mut s, 200, serde_json::to_value(&spec).unwrap_or_default()).await;
                }
                Err((code, e)) => {
                    reply(
                        &mut s,
                        code,
                        serde_json::json!({"error": "forward", "detail": e}),
                    )
                    .await;
                }
            }
        }
        ("DELETE", p) if p.starts_with("/v1/forwards/") => {
            match p["/v1/forwards/".len()..].parse::<u16>() {
                Ok(port) if fw.stop(port) => {
                    reply(&mut s, 200, serde_json::json!({"stopped": port})).await;
                }
                _ => reply(&mut s, 404, serde_json::json!({"error": "not_forwarded"})).await,
            }
        }
        _ => reply(&mut s, 404, serde_json::json!({"error": "not_found"})).await,
    }
}

async fn reply(s: &mut UnixStream, status: u16, v: serde_json::Value) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        413 => "Payload Too Large",
        _ => "Error",
    };
    let _ = http::respond(s, status, reason, &[], &v.to_string()).await;
    let _ = s.shutdown().await;
}
