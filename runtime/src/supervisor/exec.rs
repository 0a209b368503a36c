//! `sandbox exec`: run one more process in a running sandbox, confined exactly like its
//! first one.
//!
//! The CLI joins the namespaces of the sandbox's init (user first, which gives it the
//! capabilities to join the rest; then mount, uts, ipc, net, cgroup and pid), forks so
//! the child is born in the sandbox's pid namespace, and the child goes through the
//! same `spawn::exec_confined` as the sandbox's command: new session, capabilities
//! dropped, the sandbox user's ids, no_new_privs, the same Landlock rules (from the
//! stored policy, at the ABI recorded at start), the same seccomp filter, the sandbox's
//! environment (proxy variables, CA paths). Everything needed is read before the first
//! setns: afterwards this process sees only the sandbox's filesystem.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};
use openshell_policy::Policy;

use crate::record::{Phase, Record};
use crate::spawn::{ExecSpec, exec_confined};

/// The sandbox's environment for new processes.
const ENV_FILE: &str = "exec.env";

/// Exit status when `--timeout` ran out (as timeout(1)).
pub const EXIT_TIMEOUT: i32 = 124;

/// Store the environment new processes get (NUL-separated `K=V`, mode 0600).
pub fn save_env(dir: &Path, env: &[String]) -> Result<(), String> {
    let path = dir.join(ENV_FILE);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("write {}: {e}", path.display()))?;
    // One write, not two per variable.
    let mut all = Vec::with_capacity(env.iter().map(|kv| kv.len() + 1).sum());
    for kv in env {
        all.extend_from_slice(kv.as_bytes());
        all.push(0);
    }
    f.write_all(&all)
        .map_err(|e| format!("write {}: {e}", path.display()))
}

fn load_env(dir: &Path) -> Result<Vec<String>, String> {
    let path = dir.join(ENV_FILE);
    let raw = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(raw
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    /// Command and arguments.
    pub argv: Vec<String>,
    /// Extra `K=V` (override the sandbox's).
    pub env: Vec<(String, String)>,
    /// Working directory (default: the sandbox's).
    pub workdir: Option<String>,
    /// Kill it after this long (exit 124; not with a terminal).
    pub timeout: Option<Duration>,
    /// Give it a pty of the sandbox's own devpts, relayed to this terminal.
    pub tty: bool,
}

/// The parent pid of a process (`/proc/<pid>/stat` field 4).
pub fn ppid(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.get(stat.rfind(')')? + 2..)?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Run `req` in the sandbox at `dir`; returns the exit status (128+signal when killed).
pub fn exec(dir: &Path, rec: &Record, req: &ExecRequest) -> Result<i32, String> {
    let name = &rec.name;
    if rec.phase().0 != Phase::Ready {
        return Err(format!(
            "sandbox {name} is not running ({}); exec needs a running sandbox",
            rec.phase().0
        ));
    }
    let (Some(sup), Some(init)) = (rec.supervisor, rec.init_pid) else {
        return Err(format!("sandbox {name} is still starting; try again"));
    };
    // init must still be the supervisor's child: a reused pid would be someone else.
    if ppid(init) != Some(sup.pid) {
        return Err(format!("sandbox {name}: its init (pid {init}) is gone"));
    }
    if req.argv.is_empty() {
        return Err("no command given: openshell sandbox exec NAME -- CMD [ARGS]".into());
    }
    // Everything from the host side first.
    let policy_path = dir.join(crate::record::POLICY);
    let policy = fs::read_to_string(&policy_path)
        .map_err(|e| format!("{}: {e}", policy_path.display()))
        .and_then(|t| {
            Policy::parse_stored(&t).map_err(|e| e.render(&policy_path.display().to_string()))
        })?;
    let sandbox_workdir = if rec.enforced.workdir.is_empty() {
        "/sandbox".to_string()
    } else {
        rec.enforced.workdir.clone()
    };
    let workdir = req
        .workdir
        .clone()
        .unwrap_or_else(|| sandbox_workdir.clone());
    if !workdir.starts_with('/') {
        return Err(format!("--workdir {workdir}: must be absolute"));
    }
    let ids = crate::idmap::plan(&crate::idmap::facts(), rec.uid, rec.gid);
    ids.check_identity(rec.uid, rec.gid)?;
    let conf = crate::confine::build(&crate::confine::Inputs {
        policy: &policy,
        workdir: &sandbox_workdir,
        mounts: &rec.enforced.mounts,
        abi: rec.enforced.landlock_abi,
        ca_inside: rec.network == crate::record::NetworkKind::Proxy,
        uid: rec.uid,
        gid: rec.gid,
        setgroups: ids.setgroups_allowed(),
        // The sandbox's limits: its cgroup (joined below) or the same rlimits.
        rlimits: (rec.enforced.limits.cgroups.is_empty() && rec.enforced.limits.pids > 0)
            .then_some(crate::spawn::ProcessLimits {
                nproc: rec.enforced.limits.pids,
                data: rec.enforced.limits.memory,
            }),
    });
    let mut env = load_env(dir)?;
    if req.tty {
        let term = std::env::var("TERM").unwrap_or_else(|_| "xterm".into());
        env.retain(|kv| !kv.starts_with("TERM="));
        env.push(format!("TERM={term}"));
    }
    for (k, v) in &req.env {
        env.retain(|kv| kv.split('=').next() != Some(k.as_str()));
        env.push(format!("{k}={v}"));
    }
    let cstr = |s: &str| CString::new(s).map_err(|_| format!("{s:?}: contains a NUL byte"));
    let spec = ExecSpec {
        argv: req.argv.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?,
        env: env.iter().map(|a| cstr(a)).collect::<Result<_, _>>()?,
        cwd: PathBuf::from(&workdir),
    };
    // The namespaces, opened before joining any (paths change once we are in).
    let kinds = [
        ("user", CloneFlags::CLONE_NEWUSER),
        ("mnt", CloneFlags::CLONE_NEWNS),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("net", CloneFlags::CLONE_NEWNET),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("pid", CloneFlags::CLONE_NEWPID),
    ];
    let mut fds: Vec<(OwnedFd, CloneFlags, &str)> = Vec::new();
    for (kind, flag) in kinds {
        let p = format!("/proc/{init}/ns/{kind}");
        let f = fs::File::open(&p).map_err(|e| format!("sandbox {name}: open {p}: {e}"))?;
        fds.push((f.into(), flag, kind));
    }
    if ppid(init) != Some(sup.pid) {
        return Err(format!("sandbox {name}: its init (pid {init}) is gone"));
    }
    // Into the sandbox's cgroup while host paths still resolve: what we fork follows.
    crate::limits::join(&rec.enforced.limits.cgroups, std::process::id() as i32)
        .map_err(|e| format!("sandbox {name}: {e}"))?;
    for (fd, flag, kind) in &fds {
        setns(fd.as_fd(), *flag)
            .map_err(|e| format!("sandbox {name}: join its {kind} namespace: {e}"))?;
    }
    drop(fds);
    // With a terminal: a pty from the sandbox's devpts (we are in its mount namespace
    // now), and the signals we relay blocked before the child exists.
    let pty = if req.tty {
        let (master, slave, _) = crate::confine::open_pty().map_err(|e| e.to_string())?;
        Some((master, slave))
    } else {
        None
    };
    let sfd = if req.tty {
        let set = crate::confine::relayed_signals();
        nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_BLOCK, Some(&set), None)
            .map_err(|e| format!("sigprocmask: {e}"))?;
        Some(
            nix::sys::signalfd::SignalFd::with_flags(
                &set,
                nix::sys::signalfd::SfdFlags::SFD_CLOEXEC,
            )
            .map_err(|e| format!("signalfd: {e}"))?,
        )
    } else {
        None
    };
    crate::threads::check("sandbox exec: fork")?;
    // SAFETY: the CLI is single-threaded here (checked just above), so the child gets
    // a consistent copy of memory.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            // SAFETY: prctl with integer arguments only: die with the CLI.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
            let slave = pty
                .as_ref()
                .map(|(_, s)| std::os::fd::AsRawFd::as_raw_fd(s));
            exec_confined(&spec, &conf, slave)
        }
        ForkResult::Parent { child } => match (pty, sfd) {
            (Some((master, slave)), Some(sfd)) => {
                drop(slave);
                Ok(crate::relay::relay_pty(child, &sfd, master))
            }
            _ => Ok(wait(child, req.timeout)),
        },
    }
}

/// Wait for the child; kill it when the timeout runs out.
fn wait(child: Pid, timeout: Option<Duration>) -> i32 {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let flags = deadline.map(|_| WaitPidFlag::WNOHANG);
        match waitpid(child, flags) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return crate::spawn::EXIT_SETUP,
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = kill(child, Signal::SIGKILL);
            let _ = waitpid(child, None);
            eprintln!(
                "openshell: the command ran out of its --timeout ({} s) and was killed",
                timeout.unwrap_or_default().as_secs()
            );
            return EXIT_TIMEOUT;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
