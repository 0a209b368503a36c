//! `openshell serve`: one API endpoint for all of this user's sandboxes, optional
//! (the CLI stays daemonless). See docs/api.md for the endpoints (`serve_api.rs`).
//!
//! It listens on a unix socket (`$XDG_RUNTIME_DIR/openshell/api.sock`, else
//! `serve/api.sock` in the state directory): the directory must be a real directory of
//! this user's that nobody else can write (made 0700), the socket is created 0600 and
//! the lock beside it is 0600, opened without following symlinks — so another local
//! user can neither connect, nor plant a socket or lock, nor hold the lock. Every
//! request is carried out by this very binary run as a child process (`openshell
//! sandbox list -o json`, ...): the server adds no second implementation of any
//! command, keeps the JSON shapes of `-o json`, and never forks sandboxes from its own
//! process (the runtime's fork paths require a single-threaded caller). Children get
//! the server's environment without `OPENSHELL_HOST`/`COMPLETE` (a server whose
//! environment points at itself would otherwise start copies of itself forever).
//!
//! Bounds: 64 connections at once (more wait), 10 s to send the request head, 30 s
//! for the body (1 MiB), 16 commands at once, 64 MiB of output and 64 KiB of error
//! text per command; accept errors (out of descriptors) pause the loop instead of
//! spinning.
//!
//! The keeper restarts sandboxes created with `--restart always|on-failure` that are
//! not running and were not stopped by the user (at start — after a reboot — and
//! within a second of a death; with a back-off), and runs the idle prune
//! (`config.toml`, [`Config`]), which never removes a `--restart` sandbox.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use hyper_util::rt::{TokioIo, TokioTimer};
use openshell_runtime::api::record::Phase;
use openshell_runtime::api::{state, store};
use tokio::io::AsyncReadExt;
use tokio::net::UnixListener;
use tokio::process::Command;
use tokio::sync::Semaphore;

use super::create::Restart;
use super::serve_cfg::Config;

/// Largest output of one command returned in a plain (not upgraded) answer.
pub const MAX_OUTPUT: usize = 64 << 20;
/// Largest error text of one command kept for an answer.
pub const MAX_ERROR: usize = 64 << 10;
/// Connections served at once.
const MAX_CONNECTIONS: usize = 64;
/// Commands run at once (each a process).
const MAX_COMMANDS: usize = 16;

/// `openshell serve [--socket PATH]`
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The socket to listen on (default: $XDG_RUNTIME_DIR/openshell/api.sock, else
    /// serve/api.sock in the state directory).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

/// Where `serve` listens by default, and where clients look.
pub fn default_socket() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("openshell").join("api.sock"),
        None => state::base_dir().join("serve").join("api.sock"),
    }
}

/// The pid of the `serve` holding the lock for `socket`, if one runs.
pub fn running(socket: &Path) -> Option<i32> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(lock_path(socket))
        .ok()?;
    match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockSharedNonblock) {
        Ok(_) => None,
        Err((f, _)) => {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut std::io::Read::take(&f, 32), &mut s);
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

/// Open (creating 0600) the lock file: never through a symlink, only a regular file
/// of ours.
fn open_lock(lock: &Path) -> Result<std::fs::File, String> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .read(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(lock)
        .map_err(|e| {
            format!(
                "open {}: {e} (remove it if it is not yours)",
                lock.display()
            )
        })?;
    let m = file
        .metadata()
        .map_err(|e| format!("stat {}: {e}", lock.display()))?;
    if !m.is_file() || m.uid() != nix::unistd::geteuid().as_raw() {
        return Err(format!(
            "{} is not a file of yours: remove it",
            lock.display()
        ));
    }
    let _ = nix::sys::stat::fchmod(&file, nix::sys::stat::Mode::from_bits_truncate(0o600));
    Ok(file)
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
    // A directory of ours that nobody else can write (0700), never a symlink.
    if let Err(e) = openshell_providers::store::private_dir(dir) {
        return fail(e);
    }
    // The lock first: a second serve must not unlink the first one's socket.
    let lock = lock_path(&socket);
    let file = match open_lock(&lock) {
        Ok(f) => f,
        Err(e) => return fail(e),
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

/// Bind with a umask that leaves the socket 0600 from its first moment (no window in
/// which it is connectable by others, no chmod through a path).
fn bind_private(socket: &Path) -> std::io::Result<UnixListener> {
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let l = UnixListener::bind(socket);
    nix::sys::stat::umask(old);
    l
}

async fn serve(socket: PathBuf, config: Config) -> i32 {
    let listener = match bind_private(&socket) {
        Ok(l) => l,
        Err(e) => return fail(format!("listen on {}: {e}", socket.display())),
    };
    eprintln!("openshell serve: listening on {}", socket.display());
    tokio::spawn(keeper(config));
    let (mut int, mut term) = match (
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        _ => return fail("cannot handle signals"),
    };
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = int.recv() => break,
            _ = term.recv() => break,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = int.recv() => break,
            _ = term.recv() => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors (or another transient error): wait, do not spin.
                eprintln!("openshell serve: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(super::serve_api::handle);
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades()
                .await;
            drop(permit);
        });
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
        let entries = store::list(&base);
        restarts.retain(|name, _| entries.iter().any(|e| &e.name == name));
        for e in entries {
            let (phase, _) = e.phase();
            if super::create::restart_policy(&e.dir) == Restart::No {
                continue;
            }
            let b = restarts.entry(e.name.clone()).or_default();
            match phase {
                Phase::Ready => {
                    b.settle();
                    continue;
                }
                Phase::Provisioning => continue,
                // Stopped or Error: down without the user having asked (killed,
                // crashed, stopped by the host's shutdown). `sandbox stop` leaves a
                // mark, which keeps it down.
                Phase::Stopped | Phase::Error => {}
            }
            if super::create::stopped_by_user(&e.dir) || !b.due() {
                continue;
            }
            match cli(&["sandbox", "start", &e.name]).await {
                Ok(o) if o.success => eprintln!("openshell serve: restarted {}", e.name),
                Ok(o) => eprintln!("openshell serve: restart {}: {}", e.name, o.stderr.trim()),
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

/// What a finished command left.
pub struct Finished {
    /// Exit status 0.
    pub success: bool,
    /// Its exit code; None when a signal ended it.
    pub code: Option<i32>,
    /// Its output (at most [`MAX_OUTPUT`] + 1 bytes: more means too much).
    pub stdout: Vec<u8>,
    /// Its error text (at most [`MAX_ERROR`] bytes, lossy UTF-8).
    pub stderr: String,
}

/// The commands running at once.
fn command_slots() -> &'static Semaphore {
    static SLOTS: std::sync::OnceLock<Semaphore> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| Semaphore::new(MAX_COMMANDS))
}

/// Run this binary with `args` (no terminal, no stdin), bounded: its output up to
/// [`MAX_OUTPUT`] (+1 to tell), its errors up to [`MAX_ERROR`].
pub async fn cli(args: &[&str]) -> std::io::Result<Finished> {
    let _slot = command_slots()
        .acquire()
        .await
        .map_err(|_| std::io::Error::other("shutting down"))?;
    let mut child = command(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(std::io::Error::other("no pipes"));
    };
    // Both pipes are read to their end (a child blocked on a full pipe would never
    // exit), keeping at most the caps; output beyond its cap ends the command.
    let (stdout, stderr) = tokio::join!(
        capped(out, MAX_OUTPUT + 1, true),
        capped(err, MAX_ERROR, false)
    );
    let (stdout, stderr) = (stdout?, stderr?);
    if stdout.len() > MAX_OUTPUT {
        let _ = child.kill().await;
    }
    let status = child.wait().await?;
    Ok(Finished {
        success: status.success(),
        code: status.code(),
        stdout,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

/// What `r` gives, keeping the first `cap` bytes: read to the end (the rest is
/// dropped), or, with `stop`, only until the cap is reached.
async fn capped(
    mut r: impl tokio::io::AsyncRead + Unpin,
    cap: usize,
    stop: bool,
) -> std::io::Result<Vec<u8>> {
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(kept);
        }
        let room = cap.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
        if stop && kept.len() >= cap {
            return Ok(kept);
        }
    }
}

/// This binary with `args`, marked as run by the server, killed when dropped; the
/// server's environment without what would point the child back at a server or into
/// completion mode.
pub fn command(args: &[&str]) -> Command {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let mut c = Command::new(exe);
    c.args(args)
        .env("OPENSHELL_VIA_SERVE", "1")
        .env_remove("OPENSHELL_HOST")
        .env_remove("COMPLETE")
        .kill_on_drop(true);
    c
}
