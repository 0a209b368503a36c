//! The supervisor's side of a sandbox's life: clone init into its new namespaces,
//! write its id maps, release it, take the listeners and pty it sends up, start the
//! network service, then relay the terminal and signals until init exits.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use nix::sys::signal::{SigmaskHow, Signal, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, socketpair,
};
use nix::unistd::Pid;
use openshell_policy::Policy;

use crate::error::{RunError, sys};
use crate::idmap;
use crate::init::{self, InitConfig, msg};

/// What the network service needs besides init's listeners.
pub(crate) struct NetSetup {
    pub(crate) ca: Option<std::sync::Arc<openshell_proxy::tls::SandboxCa>>,
    pub(crate) upstream_ca: Vec<PathBuf>,
    pub(crate) policy: Policy,
    pub(crate) log_dir: Option<PathBuf>,
    pub(crate) verbose: bool,
    pub(crate) control: PathBuf,
    pub(crate) credentials: Vec<openshell_proxy::secrets::Credential>,
    pub(crate) inference: Option<openshell_proxy::inference::Route>,
    pub(crate) forwards: Vec<crate::forward::Spec>,
}

/// Clone init, write its maps, release it, then supervise until it exits.
pub(crate) fn start_and_wait(
    cfg: &InitConfig,
    ids: &idmap::IdPlan,
    cgroup: Option<&crate::limits::Cgroup>,
    net: Option<NetSetup>,
    started: &mut dyn FnMut() -> Result<(), RunError>,
    on_ready: &mut dyn FnMut(i32, &[String]),
) -> Result<i32, RunError> {
    // A bad OPENSHELL_SETUP_TIMEOUT is refused before anything exists.
    let timeout = setup_timeout()?;
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(sys("socketpair"))?;
    // Block the signals we handle before the child exists, so none is lost in between;
    // init sets its own mask, and the command gets a clean one.
    let set = crate::confine::relayed_signals();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None).map_err(sys("sigprocmask"))?;
    let sfd = SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC).map_err(sys("signalfd"))?;

    let flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWCGROUP;
    // What the new init runs: its copies of the supervisor's ends closed. It never
    // returns, and a panic ends it here: unwinding further would run the supervisor's
    // destructors (closing its descriptors again) in init.
    let (ours_fd, sfd_fd, theirs_fd) = (ours.as_raw_fd(), sfd.as_raw_fd(), theirs.as_raw_fd());
    let init_main = move || -> std::convert::Infallible {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // SAFETY: in the new init (its own copy of memory and descriptors): the
            // supervisor's ends are closed, `theirs` is owned by init from here on (the
            // supervisor's frame, where its other copy lives, is never unwound here).
            unsafe {
                libc::close(ours_fd);
                libc::close(sfd_fd);
                init::run(cfg, OwnedFd::from_raw_fd(theirs_fd))
            }
        }));
        // SAFETY: leave at once, running nothing of the supervisor's.
        unsafe { libc::_exit(crate::spawn::EXIT_SETUP) }
    };
    // Rootless with subordinate ids: inside the user's holder namespace when there is
    // one (its maps need no setuid helper); otherwise, or if that fails, as before.
    let nested = match crate::userns::nest(ids, crate::scratch::runtime_dir)
        .and_then(|n| crate::userns::clone_nested(n, flags, init_main))
    {
        Ok(pid) => Some(libc::c_long::from(pid.as_raw())),
        Err(crate::userns::NestError::NotApplicable) => None,
        // Never a second init beside one that may exist.
        Err(e @ crate::userns::NestError::Lost) => {
            return Err(RunError::Invalid(format!("{e}; try again")));
        }
        Err(e) => {
            tracing::debug!("{e}; the id maps are written by newuidmap/newgidmap");
            None
        }
    };
    let pid = match nested {
        Some(pid) => pid,
        None => {
            crate::threads::check("supervisor: clone of init").map_err(RunError::Threads)?;
            // SAFETY: a fork-style clone (no new stack): this process is single-threaded
            // (no thread has been started yet; checked above), so the child gets a
            // consistent copy of memory.
            unsafe {
                libc::syscall(
                    libc::SYS_clone,
                    (flags | libc::SIGCHLD) as libc::c_ulong,
                    0usize,
                    0usize,
                    0usize,
                    0usize,
                )
            }
        }
    };
    if pid < 0 {
        return Err(RunError::Sys {
            what: "clone the sandbox (are unprivileged user namespaces enabled? see `openshell doctor`)",
            source: nix::errno::Errno::last(),
        });
    }
    if pid == 0 {
        init_main();
    }
    drop(theirs);
    let init_pid = Pid::from_raw(pid as i32);
    // OPENSHELL_DEBUG_HOLD_INIT=1 leaves init waiting before its setup (its namespaces
    // exist and can be entered with nsenter); the wait below then ends by the setup
    // timeout or a signal, as it would for a setup that hangs.
    let hold = std::env::var_os("OPENSHELL_DEBUG_HOLD_INIT").is_some();
    // Into the sandbox's cgroup before init starts anything: all it forks or allocates
    // follows. Then its network may start (EARLY) while the id maps are written.
    if let Some(cg) = cgroup
        && let Err(e) = cg.add(init_pid.as_raw())
    {
        let _ = nix::sys::signal::kill(init_pid, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(init_pid, None);
        return Err(RunError::Invalid(e));
    }
    if !hold {
        nix::unistd::write(&ours, &[msg::EARLY]).map_err(sys("release init"))?;
    }
    if nested.is_none()
        && let Err(e) = idmap::apply(ids, init_pid.as_raw())
    {
        let _ = nix::sys::signal::kill(init_pid, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(init_pid, None);
        return Err(e.into());
    }
    if !hold {
        nix::unistd::write(&ours, &[msg::GO]).map_err(sys("release init"))?;
    }
    // The caller's files, while init sets up.
    if let Err(e) = started() {
        let _ = nix::sys::signal::kill(init_pid, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(init_pid, None);
        return Err(e);
    }
    let deadline = std::time::Instant::now() + timeout;
    let mut master = None;
    let mut router: Option<crate::netsvc::RouterFds> = None;
    let mut notes: Vec<String> = Vec::new();
    loop {
        if let Err(e) = wait_for_init(&ours, &sfd, deadline) {
            let _ = nix::sys::signal::kill(init_pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(init_pid, None);
            return Err(e);
        }
        let mut buf = [0u8; 4096];
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 8]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let r = recvmsg::<()>(
            ours.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
        );
        let (n, fds) = match r {
            Ok(m) => {
                let fds: Vec<std::os::fd::RawFd> = m
                    .cmsgs()
                    .ok()
                    .map(|c| {
                        c.flat_map(|c| match c {
                            ControlMessageOwned::ScmRights(fds) => fds,
                            _ => vec![],
                        })
                        .collect()
                    })
                    .unwrap_or_default();
                (m.bytes, fds)
            }
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => continue,
            Err(e) => return Err(sys("read from init")(e)),
        };
        let data = &buf[..n];
        match data.first() {
            Some(&msg::PTY) => {
                // SAFETY: the fd arrived with SCM_RIGHTS and is ours alone.
                master = fds.first().map(|fd| unsafe { OwnedFd::from_raw_fd(*fd) });
            }
            Some(&msg::NET) if fds.len() >= 3 => {
                // SAFETY: the fds arrived with SCM_RIGHTS and are ours alone.
                let mut owned: Vec<OwnedFd> = fds
                    .iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(*fd) })
                    .collect();
                // The optional fds after the three listeners, as init's flags say.
                let optional = data.get(2).copied().unwrap_or(0);
                let mut extra = owned.split_off(3.min(owned.len())).into_iter();
                let diag = if optional & 1 != 0 {
                    extra.next()
                } else {
                    None
                };
                let queue = if optional & 2 != 0 {
                    extra.next()
                } else {
                    None
                };
                let mut it = owned.into_iter();
                if let (Some(proxy), Some(bypass), Some(dns)) = (it.next(), it.next(), it.next()) {
                    router = Some(crate::netsvc::RouterFds {
                        proxy,
                        bypass,
                        dns,
                        diag,
                        queue,
                        rules: data.get(1) == Some(&1),
                    });
                }
            }
            Some(&msg::NOTE) => {
                let note = String::from_utf8_lossy(&data[1..]).into_owned();
                tracing::info!("{note}");
                notes.push(note);
            }
            Some(&msg::READY) => break,
            Some(&msg::ERROR) => {
                let err = crate::setup::SetupError::decode(&data[1..]);
                let _ = nix::sys::wait::waitpid(init_pid, None);
                return Err(RunError::Init(err));
            }
            _ => {
                // EOF: init died without a word.
                let ws = nix::sys::wait::waitpid(init_pid, None).map_err(sys("wait for init"))?;
                return Err(RunError::Setup(format!("init ended early: {ws:?}")));
            }
        }
    }
    let service = match (net, router) {
        (Some(n), Some(router)) => Some(
            crate::netsvc::NetService::start(crate::netsvc::NetConfig {
                router,
                ca: n.ca,
                upstream_ca: n.upstream_ca,
                policy: n.policy,
                init_pid: init_pid.as_raw() as u32,
                log_dir: n.log_dir,
                verbose: n.verbose,
                control: n.control,
                credentials: n.credentials,
                inference: n.inference,
                notes: notes.clone(),
                forwards: n.forwards,
            })
            .map_err(|e| RunError::Setup(format!("start the proxy: {e}")))?,
        ),
        _ => None,
    };
    on_ready(init_pid.as_raw(), &notes);
    let code = match master {
        Some(m) => crate::relay::relay_pty(init_pid, &sfd, m),
        None => crate::relay::wait_plain(init_pid, &sfd),
    };
    // The proxy thread must be gone before anything forks again (cleanup).
    if let Some(s) = service {
        s.stop();
    }
    Ok(code)
}

/// How long init's setup may take: `OPENSHELL_SETUP_TIMEOUT` seconds (fractions allowed,
/// 0 < t <= 86400), default 60 — a setup that hangs ends with a message instead of
/// holding the terminal (or a `create`) forever.
fn setup_timeout() -> Result<std::time::Duration, RunError> {
    const DEFAULT: f64 = 60.0;
    let secs = match std::env::var("OPENSHELL_SETUP_TIMEOUT") {
        Err(_) => DEFAULT,
        Ok(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86400.0)
            .ok_or_else(|| {
                RunError::Invalid(format!(
                    "OPENSHELL_SETUP_TIMEOUT={v}: give seconds, more than 0 and at most 86400 (e.g. 60 or 0.5)"
                ))
            })?,
    };
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// Wait until init has something to say, while the signals we block are still
/// answered: SIGINT/SIGTERM/SIGHUP/SIGQUIT end the setup (the caller kills init), the
/// death of init is reported, and the deadline ends a setup that hangs.
fn wait_for_init(
    sync: &OwnedFd,
    sfd: &SignalFd,
    deadline: std::time::Instant,
) -> Result<(), RunError> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(RunError::Setup(format!(
                "the sandbox's setup did not finish within {:?} (OPENSHELL_SETUP_TIMEOUT); it was stopped",
                setup_timeout().unwrap_or_default()
            )));
        }
        let ms = PollTimeout::try_from(left.as_millis().clamp(1, 60_000) as i32)
            .unwrap_or(PollTimeout::MAX);
        let mut fds = [
            PollFd::new(sync.as_fd(), PollFlags::POLLIN),
            PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, ms) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(sys("wait for init's setup")(e)),
        }
        let ev = |i: usize| fds[i].revents().unwrap_or(PollFlags::empty());
        if ev(0).intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            return Ok(());
        }
        if ev(1).contains(PollFlags::POLLIN)
            && let Ok(Some(info)) = sfd.read_signal()
            && let Ok(sig) = Signal::try_from(info.ssi_signo as i32)
        {
            match sig {
                Signal::SIGINT | Signal::SIGTERM | Signal::SIGHUP | Signal::SIGQUIT => {
                    return Err(RunError::Setup(format!(
                        "{sig} during the sandbox's setup: stopped"
                    )));
                }
                // init's death shows as EOF on the socket; anything else waits.
                _ => {}
            }
        }
    }
}
