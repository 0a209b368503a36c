//! The session keeper: the first command of `sandbox create` on a pty that outlives
//! the terminal that started it, so that one can detach (Ctrl-P Ctrl-Q) and attach again
//! (`sandbox connect NAME`), as with `docker run -it` / `docker attach`.
//!
//! `create` starts this binary as `__session NAME` (a hidden command), which makes a new
//! session (setsid: a closing terminal sends it no hang-up), opens a pty on the host and
//! runs `sandbox exec NAME --tty --argv-from-env` on its slave — the same confinement as
//! any exec, by construction (the command arrives in the environment, as for SSH). The
//! keeper holds the master: every byte of output goes to a replay buffer (the last
//! [`REPLAY`] bytes, sent to each client that attaches, so the screen comes back), to
//! `logs/sandbox.log` (`logs --source sandbox`; rotated at [`LOG_MAX`], one old file kept)
//! and to the attached clients. Clients connect to `session.sock` in the sandbox's
//! directory (0600 in a 0700 directory: the owner only).
//!
//! Frames both ways: one type byte, a big-endian u32 length, the payload (at most
//! [`MAX_FRAME`]). Client → keeper: `d` input bytes, `w` window size (cols, rows as two
//! big-endian u16). Keeper → client: `d` output bytes, `e` the command's exit status (i32)
//! when it ends. When the command ends the keeper writes `session.exit`, removes the
//! socket and, for `--no-keep`, deletes the sandbox.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast;

use openshell_runtime::api::{state, store};

/// Output kept for clients that attach later.
pub const REPLAY: usize = 1 << 20;
/// The sandbox log's size before it is rotated.
pub const LOG_MAX: u64 = 8 << 20;
/// The largest frame accepted.
pub const MAX_FRAME: usize = 64 << 10;
/// Input frames queued for the pty (each at most [`MAX_FRAME`]).
const INPUT_QUEUE: usize = 64;
/// The socket's name in the sandbox's directory.
pub const SOCKET: &str = "session.sock";

/// Where a sandbox's session socket is.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET)
}

/// The sandbox output log (`logs --source sandbox`).
pub fn log_path(dir: &Path) -> PathBuf {
    dir.join("logs").join("sandbox.log")
}

/// Write one frame.
pub async fn write_frame<W: AsyncWriteExt + Unpin>(
    w: &mut W,
    kind: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(std::io::Error::other)?;
    let mut head = [0u8; 5];
    head[0] = kind;
    head[1..].copy_from_slice(&len.to_be_bytes());
    w.write_all(&head).await?;
    w.write_all(payload).await
}

/// Read one frame; `None` at the end of the stream.
pub async fn read_frame<R: AsyncReadExt + Unpin>(
    r: &mut R,
) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!("frame of {len} bytes")));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some((head[0], payload)))
}

/// The output so far, bounded; and the log file.
struct Output {
    replay: VecDeque<u8>,
    log: Option<std::fs::File>,
    log_path: PathBuf,
    logged: u64,
}

impl Output {
    fn push(&mut self, data: &[u8]) {
        self.replay.extend(data);
        let over = self.replay.len().saturating_sub(REPLAY);
        self.replay.drain(..over);
        if self.logged + data.len() as u64 > LOG_MAX {
            let _ = std::fs::rename(&self.log_path, self.log_path.with_extension("log.1"));
            self.log = open_log(&self.log_path);
            self.logged = 0;
        }
        if let Some(f) = self.log.as_mut()
            && f.write_all(data).is_ok()
        {
            self.logged += data.len() as u64;
        }
    }
}

/// The sandbox's directory is the owner's alone (0700) and out of the sandbox's reach;
/// its files are still opened without following a link and made 0600.
fn open_log(path: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .ok()
}

/// `openshell __session NAME`: keep NAME's first command; returns when it has ended.
/// Says `ready` (or `error: ...`) on stdout once, then closes it.
pub fn keeper_main(name: &str, no_keep: bool) -> i32 {
    let _ = nix::unistd::setsid();
    let say = |line: &str| {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    let dir = match store::find(&state::base_dir(), name) {
        Ok(e) => e.dir,
        Err(e) => {
            say(&format!("error: {e}"));
            return 1;
        }
    };
    let size = std::env::var("OPENSHELL_SESSION_SIZE")
        .ok()
        .and_then(|s| {
            let (c, r) = s.split_once(',')?;
            Some((c.parse::<u16>().ok()?, r.parse::<u16>().ok()?))
        })
        .unwrap_or((80, 24));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say(&format!("error: runtime: {e}"));
            return 1;
        }
    };
    let r = rt.block_on(keep(name, &dir, size, no_keep, &say));
    // A write to the pty may still be blocked (a command that never read its input):
    // do not wait for it.
    rt.shutdown_background();
    match r {
        Ok(_) => 0,
        Err(e) => {
            say(&format!("error: {e}"));
            1
        }
    }
}

async fn keep(
    name: &str,
    dir: &Path,
    (cols, rows): (u16, u16),
    no_keep: bool,
    say: &dyn Fn(&str),
) -> Result<i32, String> {
    let sock_path = socket_path(dir);
    let _ = std::fs::remove_file(&sock_path);
    let _ = std::fs::remove_file(dir.join("session.exit"));
    let listener =
        UnixListener::bind(&sock_path).map_err(|e| format!("{}: {e}", sock_path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&sock_path, std::fs::Permissions::from_mode(0o600));
    }
    let (master, slave, _) =
        openshell_runtime::api::session::open_pty().map_err(|e| format!("host pty: {e}"))?;
    let _ = openshell_runtime::api::session::set_winsize(master.as_fd(), cols, rows);
    let dup = |fd: &std::os::fd::OwnedFd| {
        fd.try_clone()
            .map(std::process::Stdio::from)
            .map_err(|e| format!("host pty: {e}"))
    };
    let exe = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
    let mut child = tokio::process::Command::new(exe)
        .args(["sandbox", "exec", name, "--tty", "--argv-from-env"])
        .env_remove("OPENSHELL_SESSION_SIZE")
        .env_remove("OPENSHELL_HOST")
        .stdin(dup(&slave)?)
        .stdout(dup(&slave)?)
        .stderr(std::process::Stdio::from(slave))
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("start sandbox exec: {e}"))?;
    let child_pid = child.id().and_then(|p| i32::try_from(p).ok());
    let logs = log_path(dir);
    if let Some(d) = logs.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    let out = Arc::new(Mutex::new(Output {
        replay: VecDeque::new(),
        log: open_log(&logs),
        logged: std::fs::metadata(&logs).map_or(0, |m| m.len()),
        log_path: logs,
    }));
    let (tx, _) = broadcast::channel::<Arc<Vec<u8>>>(256);
    let winsize_fd = master.try_clone().map_err(|e| e.to_string())?;
    let master = std::fs::File::from(master);
    // Input from every client goes to the pty through one task and a bounded queue:
    // a command that stops reading its input stalls only the clients typing to it.
    let (writer, mut input) = tokio::sync::mpsc::channel::<Vec<u8>>(INPUT_QUEUE);
    let mut pty_in = tokio::fs::File::from_std(master.try_clone().map_err(|e| e.to_string())?);
    tokio::spawn(async move {
        while let Some(data) = input.recv().await {
            if pty_in.write_all(&data).await.is_err() {
                return;
            }
            let _ = pty_in.flush().await;
        }
    });
    let mut reader = tokio::fs::File::from_std(master);
    say("ready");
    // Output: the replay buffer, the log, every client.
    let pump = {
        let (out, tx) = (out.clone(), tx.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        out.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(&buf[..n]);
                        let _ = tx.send(Arc::new(buf[..n].to_vec()));
                    }
                }
            }
        })
    };
    let (done_tx, done_rx) = tokio::sync::watch::channel(None::<i32>);
    let accept = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                // Out of descriptors, say: wait rather than spin.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            if !same_user(&s) {
                continue;
            }
            let ctx = Client {
                out: out.clone(),
                rx: tx.subscribe(),
                writer: writer.clone(),
                winsize: winsize_fd.try_clone().ok(),
                child_pid,
                done: done_rx.clone(),
            };
            tokio::spawn(ctx.serve(s));
        }
    });
    let status = child.wait().await.map_err(|e| e.to_string())?;
    let _ = pump.await;
    let code = {
        use std::os::unix::process::ExitStatusExt;
        status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(255)
    };
    let _ = std::fs::remove_file(&sock_path);
    if let Some(mut f) = open_log(&dir.join("session.exit")) {
        let _ = f.set_len(0);
        let _ = writeln!(f, "{code}");
    }
    // --no-keep: the sandbox goes with its command, before the attached client hears
    // the end (so that `create` returns with it gone).
    if no_keep {
        let _ = store::delete(&state::base_dir(), name);
    }
    let _ = done_tx.send(Some(code));
    // Let the attached clients get the end before the process goes.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    accept.abort();
    Ok(code)
}

/// Only the sandbox's owner (the socket is 0600 in a 0700 directory; checked again).
fn same_user(s: &UnixStream) -> bool {
    s.peer_cred()
        .is_ok_and(|c| c.uid() == nix::unistd::geteuid().as_raw())
}

struct Client {
    out: Arc<Mutex<Output>>,
    rx: broadcast::Receiver<Arc<Vec<u8>>>,
    writer: tokio::sync::mpsc::Sender<Vec<u8>>,
    winsize: Option<std::os::fd::OwnedFd>,
    child_pid: Option<i32>,
    done: tokio::sync::watch::Receiver<Option<i32>>,
}

impl Client {
    async fn serve(mut self, s: UnixStream) {
        let (mut r, mut w) = s.into_split();
        // The screen so far, then whatever comes.
        let replay: Vec<u8> = {
            let o = self.out.lock().unwrap_or_else(|p| p.into_inner());
            o.replay.iter().copied().collect()
        };
        for chunk in replay.chunks(MAX_FRAME) {
            if write_frame(&mut w, b'd', chunk).await.is_err() {
                return;
            }
        }
        let mut done = self.done.clone();
        let out_task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    m = self.rx.recv() => match m {
                        Ok(data) => {
                            if write_frame(&mut w, b'd', &data).await.is_err() {
                                return;
                            }
                        }
                        // Too slow a client misses output rather than stalling the command.
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = done.changed() => {
                        let code = done.borrow().unwrap_or(255);
                        // Output still queued first.
                        while let Ok(data) = self.rx.try_recv() {
                            let _ = write_frame(&mut w, b'd', &data).await;
                        }
                        let _ = write_frame(&mut w, b'e', &code.to_be_bytes()).await;
                        return;
                    }
                }
            }
        });
        while let Ok(Some((kind, payload))) = read_frame(&mut r).await {
            if kind == b'd' {
                if self.writer.send(payload).await.is_err() {
                    break;
                }
                continue;
            }
            match kind {
                b'w' if payload.len() == 4 => {
                    let c = u16::from_be_bytes([payload[0], payload[1]]);
                    let r = u16::from_be_bytes([payload[2], payload[3]]);
                    if let Some(fd) = &self.winsize {
                        let _ = openshell_runtime::api::session::set_winsize(fd.as_fd(), c, r);
                        if let Some(pid) = self.child_pid {
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(pid),
                                nix::sys::signal::Signal::SIGWINCH,
                            );
                        }
                    }
                }
                _ => {}
            }
        }
        let _ = out_task.await;
    }
}

/// Start the keeper for `name` with `argv`; returns once it runs the command.
pub fn start(name: &str, argv: &[String], no_keep: bool) -> Result<(), String> {
    use std::io::BufRead;
    let exe = std::env::current_exe().map_err(|e| format!("find openshell itself: {e}"))?;
    let dir = store::find(&state::base_dir(), name)
        .map_err(|e| e.to_string())?
        .dir;
    let logs = dir.join("logs");
    let _ = std::fs::create_dir_all(&logs);
    let err_log = open_log(&logs.join("session.err"))
        .ok_or_else(|| format!("{}: cannot open session.err", logs.display()))?;
    let size = openshell_runtime::api::session::get_winsize(std::io::stdout().as_fd())
        .filter(|(c, r)| *c > 0 && *r > 0)
        .map_or("80,24".to_string(), |(c, r)| format!("{c},{r}"));
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["__session", name]);
    if no_keep {
        cmd.arg("--no-keep");
    }
    let mut child = cmd
        .env(
            "OPENSHELL_EXEC_ARGV",
            serde_json::to_string(argv).unwrap_or_default(),
        )
        .env("OPENSHELL_EXEC_ENV", "[]")
        .env("OPENSHELL_SESSION_SIZE", size)
        .env_remove("OPENSHELL_HOST")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::from(err_log))
        .spawn()
        .map_err(|e| format!("start the session keeper: {e}"))?;
    let mut line = String::new();
    let out = child.stdout.take().ok_or("no stdout")?;
    let _ = std::io::BufReader::new(out).read_line(&mut line);
    match line.trim() {
        "ready" => Ok(()),
        "" => Err(format!(
            "the session keeper of {name} ended before it started the command (see {})",
            logs.join("session.err").display()
        )),
        other => Err(other.trim_start_matches("error: ").to_string()),
    }
}
