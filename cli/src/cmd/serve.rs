//! `openshell serve`: one API endpoint for all of this user's sandboxes, optional
//! (the CLI stays daemonless). See docs/api.md for the endpoints.
//!
//! It listens on a unix socket (`$XDG_RUNTIME_DIR/openshell/api.sock`, mode 0600 in a
//! 0700 directory: only this user connects) and speaks HTTP/1.1 + JSON. Every request
//! is carried out by this very binary run as a child process (`openshell sandbox list
//! -o json`, ...): the server adds no second implementation of any command, keeps the
//! JSON shapes of `-o json`, and never forks sandboxes from its own (multi-threaded)
//! process — the runtime's fork paths require a single-threaded caller.
//!
//! Besides answering, it restarts sandboxes created with `--restart always|on-failure`
//! whose supervisor died (at start, e.g. after a reboot, and within a second of a
//! death; with a back-off), and prunes idle sandboxes (`config.toml`, [`Config`]).
//! A second `serve` for the same socket refuses to start (a lock beside the socket).

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use openshell_runtime::record::Phase;
use openshell_runtime::{state, store};
use serde::Deserialize;
use tokio::net::UnixListener;
use tokio::process::Command;

use super::serve_cfg::Config;

/// Largest request body accepted (a policy, create options).
const MAX_BODY: usize = 1 << 20;
/// Largest output of one command returned in a plain (not upgraded) answer.
const MAX_OUTPUT: usize = 64 << 20;

/// `openshell serve [--socket PATH]`
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The socket to listen on (default: $XDG_RUNTIME_DIR/openshell/api.sock, else
    /// api.sock in the state directory).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

/// Where `serve` listens by default, and where clients look.
pub fn default_socket() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("openshell").join("api.sock"),
        None => state::base_dir().join("api.sock"),
    }
}

/// The pid of the `serve` holding the lock for `socket`, if one runs.
pub fn running(socket: &Path) -> Option<i32> {
    let lock = lock_path(socket);
    let f = std::fs::File::open(&lock).ok()?;
    match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockSharedNonblock) {
        Ok(_) => None,
        Err((f, _)) => {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut &f, &mut s);
            s.trim().parse().ok()
        }
    }
}

fn lock_path(socket: &Path) -> PathBuf {
    let mut name = socket.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    socket.with_file_name(name)
}

fn fail(e: impl std::fmt::Display) -> i32 {
    eprintln!("openshell: serve: {e}");
    1
}

/// Run the server until SIGINT/SIGTERM; returns the exit status.
pub fn run(args: ServeArgs) -> i32 {
    if std::env::var_os("OPENSHELL_VIA_SERVE").is_some() {
        return fail("refused: `serve` cannot be run through the API");
    }
    let config = match Config::load() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let socket = args.socket.unwrap_or_else(default_socket);
    let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return fail(format!("{}: not a socket path", socket.display()));
    };
    if let Err(e) = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        return fail(format!("create {}: {e}", dir.display()));
    }
    // The lock first: a second serve must not unlink the first one's socket.
    let lock = lock_path(&socket);
    let file = match std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .read(true)
        .open(&lock)
    {
        Ok(f) => f,
        Err(e) => return fail(format!("open {}: {e}", lock.display())),
    };
    let mut held = match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
    {
        Ok(l) => l,
        Err(_) => {
            let pid = running(&socket).map_or("?".into(), |p| p.to_string());
            return fail(format!(
                "another openshell serve (pid {pid}) already listens on {}; stop it first (systemctl --user stop openshell)",
                socket.display()
            ));
        }
    };
    let _ = held.set_len(0);
    let _ = writeln!(&mut *held, "{}", std::process::id());
    let _ = std::fs::remove_file(&socket);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("tokio runtime: {e}")),
    };
    let code = rt.block_on(serve(socket.clone(), config));
    let _ = std::fs::remove_file(&socket);
    drop(held);
    code
}

async fn serve(socket: PathBuf, config: Config) -> i32 {
    let listener = match UnixListener::bind(&socket) {
        Ok(l) => l,
        Err(e) => return fail(format!("listen on {}: {e}", socket.display())),
    };
    if let Err(e) = std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600)) {
        return fail(format!("chmod {}: {e}", socket.display()));
    }
    eprintln!("openshell serve: listening on {}", socket.display());
    tokio::spawn(keeper(config));
    let (mut int, mut term) = match (
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        _ => return fail("cannot handle signals"),
    };
    loop {
        tokio::select! {
            _ = int.recv() => break,
            _ = term.recv() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(handle);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        }
    }
    eprintln!("openshell serve: stopped");
    0
}

/// The keeper: restarts what asks for it, prunes what is idle.
async fn keeper(config: Config) {
    let mut restarts: HashMap<String, Backoff> = HashMap::new();
    let mut last_prune: Option<Instant> = None;
    loop {
        let base = state::base_dir();
        for e in store::list(&base) {
            let (phase, _) = e.phase();
            let policy = super::create::restart_policy(&e.dir);
            if policy == super::create::Restart::No {
                continue;
            }
            let b = restarts.entry(e.name.clone()).or_default();
            if phase == Phase::Ready {
                b.settle();
                continue;
            }
            // Error: its supervisor is gone without having been stopped (killed,
            // crashed, or the host rebooted). A stopped sandbox stays stopped.
            if phase != Phase::Error || !b.due() {
                continue;
            }
            let out = cli(&["sandbox", "start", &e.name]).await;
            match out {
                Ok(o) if o.status.success() => eprintln!("openshell serve: restarted {}", e.name),
                Ok(o) => eprintln!(
                    "openshell serve: restart {}: {}",
                    e.name,
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(err) => eprintln!("openshell serve: restart {}: {err}", e.name),
            }
            b.tried();
        }
        if config.prune.enabled && last_prune.is_none_or(|t| t.elapsed() >= config.prune.every) {
            last_prune = Some(Instant::now());
            let out = cli(&[
                "sandbox",
                "prune",
                "--idle",
                &config.prune.idle,
                "--max-age",
                &config.prune.max_age,
            ])
            .await;
            if let Ok(o) = out {
                for line in String::from_utf8_lossy(&o.stdout).lines() {
                    eprintln!("openshell serve: prune: {line}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Restart back-off of one sandbox: 1 s, 2 s, 4 s ... 60 s; reset once it has run
/// for 30 s.
#[derive(Default)]
struct Backoff {
    attempts: u32,
    next: Option<Instant>,
    ready_since: Option<Instant>,
}

impl Backoff {
    fn due(&self) -> bool {
        self.next.is_none_or(|t| Instant::now() >= t)
    }
    fn tried(&mut self) {
        let delay = Duration::from_secs(1u64 << self.attempts.min(6)).min(Duration::from_secs(60));
        self.attempts += 1;
        self.next = Some(Instant::now() + delay);
        self.ready_since = None;
    }
    fn settle(&mut self) {
        let since = *self.ready_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= Duration::from_secs(30) {
            self.attempts = 0;
            self.next = None;
        }
    }
}

/// Run this binary with `args` (no terminal, no stdin); its output whole.
async fn cli(args: &[&str]) -> std::io::Result<std::process::Output> {
    command(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
}

/// This binary with `args`, marked as run by the server, killed when dropped.
pub fn command(args: &[&str]) -> Command {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let mut c = Command::new(exe);
    c.args(args)
        .env("OPENSHELL_VIA_SERVE", "1")
        .kill_on_drop(true);
    c
}

/// A response body: whole, or streamed (`logs` following).
pub type Body = BoxBody<Bytes, std::io::Error>;
/// A response.
pub type Answer = Response<Body>;

fn json(status: StatusCode, body: impl Into<Bytes>) -> Answer {
    let mut r = Response::new(Full::new(body.into()).map_err(|n| match n {}).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("static"));
    r
}

/// A JSON error answer: `{"error": MSG, "status": N}`.
pub fn error(status: StatusCode, msg: &str) -> Answer {
    let body = serde_json::json!({ "error": msg, "status": status.as_u16() });
    json(status, body.to_string())
}

/// The answer for a finished command: its stdout (JSON) on success, else its message
/// with a status that says whose fault it was.
fn answer(out: std::io::Result<std::process::Output>, content_type: &str) -> Answer {
    let out = match out {
        Ok(o) => o,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    if out.stdout.len() > MAX_OUTPUT {
        return error(StatusCode::INSUFFICIENT_STORAGE, "output too large");
    }
    if out.status.success() {
        let mut r = json(StatusCode::OK, out.stdout);
        r.headers_mut()
            .insert("content-type", content_type.parse().expect("static"));
        return r;
    }
    let msg = String::from_utf8_lossy(&out.stderr);
    let msg = msg.trim().trim_start_matches("openshell: ");
    let status = if msg.contains("no sandbox named") || msg.contains("not found") {
        StatusCode::NOT_FOUND
    } else if msg.contains("already") {
        StatusCode::CONFLICT
    } else {
        StatusCode::BAD_REQUEST
    };
    error(status, msg)
}

/// `POST /v1/sandboxes`: what `sandbox create` takes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: Option<String>,
    from: Option<String>,
    /// Path of a policy file on this host.
    policy: Option<String>,
    restart: Option<String>,
    #[serde(default)]
    providers: Vec<String>,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    /// Further `sandbox create` options, as on the command line.
    #[serde(default)]
    args: Vec<String>,
}

/// `POST /v1/exec` and `/v1/cli`: a command line to run, with stdio over the upgraded
/// connection.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CliBody {
    args: Vec<String>,
}

async fn body(req: Request<Incoming>) -> Result<Bytes, Answer> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(_) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large (limit 1 MiB)",
        )),
    }
}

async fn handle(mut req: Request<Incoming>) -> Result<Answer, Infallible> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    let r = match (method, parts.as_slice()) {
        (Method::GET, ["v1", "version"]) => answer(cli(&["--version"]).await, "text/plain"),
        (Method::GET, ["v1", "status"]) => answer(cli(&["status", "-o", "json"]).await, JSON),
        (Method::GET, ["v1", "sandboxes"]) => {
            answer(cli(&["sandbox", "list", "-o", "json"]).await, JSON)
        }
        (Method::POST, ["v1", "sandboxes"]) => match body(req).await {
            Ok(b) => create(&b).await,
            Err(a) => a,
        },
        (Method::GET, ["v1", "sandboxes", name]) => {
            answer(cli(&["sandbox", "get", name, "-o", "json"]).await, JSON)
        }
        (Method::DELETE, ["v1", "sandboxes", name]) => {
            answer(cli(&["sandbox", "delete", name]).await, "text/plain")
        }
        (Method::POST, ["v1", "sandboxes", name, "start"]) => {
            answer(cli(&["sandbox", "start", name]).await, "text/plain")
        }
        (Method::POST, ["v1", "sandboxes", name, "stop"]) => {
            answer(cli(&["sandbox", "stop", name]).await, "text/plain")
        }
        (Method::GET, ["v1", "sandboxes", name, "policy"]) => {
            answer(cli(&["policy", "get", name]).await, "application/yaml")
        }
        (Method::PUT, ["v1", "sandboxes", name, "policy"]) => {
            let name = name.to_string();
            match body(req).await {
                Ok(b) => set_policy(&name, &b).await,
                Err(a) => a,
            }
        }
        (Method::GET, ["v1", "sandboxes", name, "logs"]) => {
            let name = name.to_string();
            return Ok(logs(&name, &query).await);
        }
        (Method::GET, ["v1", "providers"]) => {
            answer(cli(&["provider", "list", "-o", "json"]).await, JSON)
        }
        (Method::GET, ["v1", "providers", name]) => {
            answer(cli(&["provider", "get", name, "-o", "json"]).await, JSON)
        }
        (Method::POST, ["v1", "sandboxes", name, "exec"]) => {
            let name = name.to_string();
            let upgrade = hyper::upgrade::on(&mut req);
            match body(req).await {
                Ok(b) => match serde_json::from_slice::<CliBody>(&b) {
                    Ok(c) => {
                        let mut args = vec!["sandbox".into(), "exec".into(), name, "--".into()];
                        args.extend(c.args);
                        super::remote::serve_upgraded(upgrade, args)
                    }
                    Err(e) => error(StatusCode::BAD_REQUEST, &format!("body: {e}")),
                },
                Err(a) => a,
            }
        }
        (Method::POST, ["v1", "cli"]) => {
            let upgrade = hyper::upgrade::on(&mut req);
            match body(req).await {
                Ok(b) => match serde_json::from_slice::<CliBody>(&b) {
                    Ok(c) if c.args.first().is_some_and(|a| a == "serve") => error(
                        StatusCode::BAD_REQUEST,
                        "`serve` cannot be run through the API",
                    ),
                    Ok(c) => super::remote::serve_upgraded(upgrade, c.args),
                    Err(e) => error(StatusCode::BAD_REQUEST, &format!("body: {e}")),
                },
                Err(a) => a,
            }
        }
        (_, ["v1", ..]) => error(
            StatusCode::NOT_FOUND,
            &format!(
                "no such endpoint: {} {path} (see docs/api.md)",
                req.method()
            ),
        ),
        _ => error(StatusCode::NOT_FOUND, "the API lives under /v1/"),
    };
    Ok(r)
}

const JSON: &str = "application/json";

async fn create(b: &[u8]) -> Answer {
    let c: CreateBody = if b.is_empty() {
        CreateBody::default()
    } else {
        match serde_json::from_slice(b) {
            Ok(c) => c,
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("body: {e}")),
        }
    };
    let name = c.name.unwrap_or_else(state::generate_name);
    let mut args: Vec<String> = vec![
        "sandbox".into(),
        "create".into(),
        "--detach".into(),
        "--name".into(),
        name.clone(),
    ];
    for (flag, v) in [
        ("--from", c.from),
        ("--policy", c.policy),
        ("--restart", c.restart),
    ] {
        if let Some(v) = v {
            args.extend([flag.to_string(), v]);
        }
    }
    for p in c.providers {
        args.extend(["--provider".to_string(), p]);
    }
    for (k, v) in c.labels {
        args.extend(["--label".to_string(), format!("{k}={v}")]);
    }
    if c.args.iter().any(|a| a == "--") {
        return error(
            StatusCode::BAD_REQUEST,
            "args: no command here (`--`); run one with POST /v1/sandboxes/NAME/exec",
        );
    }
    args.extend(c.args);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = cli(&refs).await;
    match out {
        Ok(o) if o.status.success() => json(
            StatusCode::CREATED,
            serde_json::json!({ "name": name }).to_string(),
        ),
        other => answer(other, JSON),
    }
}

async fn set_policy(name: &str, b: &[u8]) -> Answer {
    // A private file for the CLI to read: the policy may name internal hosts.
    let dir = state::base_dir().join("tmp");
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir);
    let file = dir.join(format!("policy-{}-{name}.yaml", std::process::id()));
    if let Err(e) = openshell_runtime::record::write_whole(&file, b, false) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, &e);
    }
    let f = file.to_string_lossy().into_owned();
    let out = cli(&["policy", "set", name, "--policy", &f]).await;
    let _ = std::fs::remove_file(&file);
    answer(out, "text/plain")
}

/// `GET /v1/sandboxes/NAME/logs[?follow=1][&n=N]`: JSON lines, streamed while
/// following (chunked, until the client goes or the sandbox is deleted).
async fn logs(name: &str, query: &str) -> Answer {
    let mut args: Vec<String> = vec!["logs".into(), name.into(), "-o".into(), "json".into()];
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        match kv.split_once('=').unwrap_or((kv, "")) {
            ("follow", "1" | "true" | "") => args.push("-f".into()),
            ("n", v) if v.parse::<u32>().is_ok() => args.extend(["-n".into(), v.into()]),
            (k, _) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("unknown parameter {k} (follow, n)"),
                );
            }
        }
    }
    if !args.iter().any(|a| a == "-f") {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        return answer(cli(&refs).await, "application/x-ndjson");
    }
    super::remote::stream_follow(args).await
}
