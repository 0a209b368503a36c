//! The sandbox's init (PID 1): its ordered setup, then reaping and signal forwarding.
//!
//! Entered in the child of clone(NEWUSER|NEWNS|NEWPID|NEWNET|NEWUTS|NEWIPC|NEWCGROUP)
//! while the supervisor is still single-threaded. Synchronous and small: it sets the
//! sandbox up in the order docs/security.md lays out, starts the main command, reaps
//! every orphan, forwards signals to the command, and exits with the command's status
//! (which ends everything else in the pid namespace). It logs nothing: a failure goes up
//! the sync socket as a typed `setup::SetupError`, a fallback as a note, and the
//! supervisor reports them.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use openshell_fs::MountPlan;
use openshell_netns::NetworkMode;

use crate::setup::{SetupError, Step};
use crate::spawn::{Confinement, EXIT_SETUP, ExecSpec, exec_confined};

/// Messages on the sync socket, first byte.
pub mod msg {
    /// supervisor → init: init is in the sandbox's cgroup; its network may start (it
    /// needs no id map).
    pub const EARLY: u8 = b'S';
    /// supervisor → init: the id maps are written, go on.
    pub const GO: u8 = b'G';
    /// init → supervisor: the pty master fd rides along (SCM_RIGHTS).
    pub const PTY: u8 = b'P';
    /// init → supervisor: the command has been started.
    pub const READY: u8 = b'R';
    /// init → supervisor: setup failed; the rest is a `setup::SetupError` as JSON.
    pub const ERROR: u8 = b'E';
    /// init → supervisor: the router's listeners ride along (proxy, bypass, dns);
    /// the second byte is 1 when the nftables rules are in place.
    pub const NET: u8 = b'N';
    /// init → supervisor: a fallback setup took (one sentence, UTF-8); init itself stays
    /// silent, the supervisor logs and records it.
    pub const NOTE: u8 = b'W';
}

/// Everything init needs; built by the supervisor before clone.
#[derive(Debug)]
pub struct InitConfig {
    /// Network setup of the sandbox's net namespace.
    pub net: NetworkMode,
    /// The root filesystem plan.
    pub mounts: MountPlan,
    /// Sandbox hostname.
    pub hostname: String,
    /// Drop host supplementary groups (allowed in this user namespace).
    pub setgroups: bool,
    /// Give the command a pty.
    pub tty: bool,
    /// The main command.
    pub exec: ExecSpec,
    /// Start no command: keep the sandbox up (for `sandbox exec`) until SIGTERM.
    pub keepalive: bool,
    /// Its confinement.
    pub confinement: Confinement,
    /// Descriptors of the supervisor's that init must not keep (the sandbox name's lock
    /// file, still held while init sets up): closed first thing.
    pub close: Vec<std::os::fd::RawFd>,
}

/// The stack the command's child runs on until its exec (reserved, not committed).
const COMMAND_STACK: usize = 1 << 20;

/// Run init to completion. Never returns.
pub fn run(cfg: &InitConfig, sync: OwnedFd) -> ! {
    // A fork of the CLI: its argv (maybe `-e SECRET=...`) would be /proc/1/cmdline.
    crate::proctitle::set(&format!("openshell: init {}", cfg.hostname));
    for fd in &cfg.close {
        // SAFETY: the supervisor's own descriptors, copied into this fork; nothing here
        // uses them, and the Rust values that own them in the supervisor are never
        // dropped in init (it leaves with _exit). The supervisor's copy keeps the lock.
        unsafe { libc::close(*fd) };
    }
    let code = match setup_and_supervise(cfg, &sync) {
        Ok(code) => code,
        Err(e) => {
            let mut m = vec![msg::ERROR];
            m.extend_from_slice(&e.encode());
            let _ = nix::unistd::write(&sync, &m);
            EXIT_SETUP
        }
    };
    // SAFETY: leaving init at once; as PID 1 its exit ends the whole pid namespace.
    unsafe { libc::_exit(code) }
}

fn setup_and_supervise(cfg: &InitConfig, sync: &OwnedFd) -> Result<i32, SetupError> {
    let e = |step: Step, what: &'static str| move |err: Errno| SetupError::sys(step, what, err);
    // 1. Nothing of the sandbox may outlive the supervisor. The parent lives in another
    //    pid namespace (getppid() is 0 here), so the check that it is still there is the
    //    sync socket: EOF below means it died before we got going.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    // 2-5. Network and root filesystem, side by side: a thread of ours (network
    //    namespaces are per thread) sets up the router namespace we were created in —
    //    agent namespace, nftables, veth, listeners — and configures the agent's side,
    //    while this thread waits for the id maps, then builds the root filesystem
    //    (slave /, build, pivot, masks, read-only remounts). The network needs no id
    //    map (only the capabilities a new user namespace starts with; it creates no
    //    file), so it starts before them and overlaps the supervisor's
    //    newuidmap/newgidmap — except the `nft` fallback child, which waits until our
    //    host groups are dropped.
    //    pivot_root waits until the thread is done with host paths (the nft fallback
    //    binary). Then this thread joins the agent's namespace.
    //    Nothing runs before the supervisor has put us in the sandbox's cgroup (EARLY):
    //    what the network allocates is charged to the sandbox.
    let mut b = [0u8; 1];
    match nix::unistd::read(sync, &mut b) {
        Ok(1) if b[0] == msg::EARLY => {}
        _ => {
            // SAFETY: the supervisor is gone; end quietly.
            unsafe { libc::_exit(EXIT_SETUP) }
        }
    }
    let (paths_tx, paths_rx) = std::sync::mpsc::channel::<()>();
    // The nft fallback child starts once our host groups are dropped (after GO).
    let (groups_tx, groups_rx) = std::sync::mpsc::channel::<()>();
    let (fs_result, router) = std::thread::scope(|scope| {
        let net = match &cfg.net {
            NetworkMode::Isolated => {
                drop(paths_tx);
                None
            }
            NetworkMode::Proxied { nft } => Some(scope.spawn(move || {
                let mut r = openshell_netns::setup_router(
                    nft.as_deref(),
                    move || {
                        let _ = groups_rx.recv();
                    },
                    move || {
                        let _ = paths_tx.send(());
                    },
                )
                .map_err(|err| SetupError::net(&err))?;
                r.enter_agent().map_err(|err| SetupError::net(&err))?;
                Ok::<_, SetupError>(r)
            })),
        };
        // 2. Wait until the supervisor has written our uid/gid maps.
        let mut b = [0u8; 1];
        match nix::unistd::read(sync, &mut b) {
            Ok(1) if b[0] == msg::GO => {}
            _ => {
                // SAFETY: the supervisor is gone; end quietly (the network thread too).
                unsafe { libc::_exit(EXIT_SETUP) }
            }
        }
        // 3. Our host supplementary groups mean nothing here; drop them where allowed
        //    (for every thread: the C library applies set*id calls process-wide).
        if cfg.setgroups
            && let Err(err) = nix::unistd::setgroups(&[])
        {
            return (Err(e(Step::Groups, "setgroups")(err)), Ok(None));
        }
        drop(groups_tx);
        // A failed thread drops its sender: recv returns at once.
        let fs = openshell_fs::apply_with(&cfg.mounts, || {
            let _ = paths_rx.recv();
        })
        .map_err(|err| SetupError::fs(&err));
        let router = match net {
            None => Ok(None),
            Some(h) => h
                .join()
                .map_err(|_| SetupError::new(Step::Network, "the network setup thread panicked"))
                .and_then(|r| r.map(Some)),
        };
        (fs, router)
    });
    let mut router = router?;
    let applied = fs_result?;
    let note = |text: &str| {
        let mut m = vec![msg::NOTE];
        m.extend_from_slice(text.as_bytes());
        let _ = nix::unistd::write(sync, &m);
    };
    for n in &applied.notes {
        note(n);
    }
    match &router {
        None => openshell_netns::setup_isolated().map_err(|err| SetupError::net(&err))?,
        Some(r) => r.join_agent().map_err(|err| SetupError::net(&err))?,
    }
    // 6. Hostname (own uts namespace).
    nix::unistd::sethostname(&cfg.hostname).map_err(e(Step::Hostname, "sethostname"))?;
    // 6b. The route out exists only once the router's rules do, and before the command
    //     starts (so that even its first bypass attempt is caught and logged). The rules
    //     loaded while we mounted. Then the listeners go to the supervisor (the router
    //     namespace lives on through them; our copies close here).
    if let Some(mut r) = router.take() {
        let rules = match r.rules_loader() {
            Some(pid) => matches!(
                waitpid(Pid::from_raw(pid as i32), None),
                Ok(WaitStatus::Exited(_, 0))
            ),
            None => r.rules_loaded(),
        };
        if r.rules_loader().is_some() {
            note(if rules {
                "nftables: the kernel refused the rules over netlink; the host's nft loaded them"
            } else {
                "nftables: no rules could be loaded; connections that ignore the proxy fail with 'network unreachable' and are not logged"
            });
        } else if !rules {
            note(
                "nftables: no rules could be loaded (no nft binary for the fallback); connections that ignore the proxy fail with 'network unreachable' and are not logged",
            );
        }
        if rules {
            r.route_out().map_err(|err| SetupError {
                step: Step::Route,
                ..SetupError::net(&err)
            })?;
        }
        if let Some(l) = r.take_listeners() {
            let mut fds = vec![l.proxy.as_raw_fd(), l.bypass.as_raw_fd(), l.dns.as_raw_fd()];
            fds.extend(l.diag.as_ref().map(|d| d.as_raw_fd()));
            fds.extend(l.queue.as_ref().map(|d| d.as_raw_fd()));
            // Which of the optional fds follow the three listeners, in this order.
            let optional = u8::from(l.diag.is_some()) | (u8::from(l.queue.is_some()) << 1);
            let cmsg = [ControlMessage::ScmRights(&fds)];
            sendmsg::<()>(
                sync.as_raw_fd(),
                &[IoSlice::new(&[msg::NET, u8::from(rules), optional])],
                &cmsg,
                MsgFlags::empty(),
                None,
            )
            .map_err(e(Step::Listeners, "send the listeners"))?;
        }
    }
    // 7. A pty from the sandbox's own devpts, its master handed to the supervisor.
    let slave = if cfg.tty { Some(open_pty(sync)?) } else { None };
    // 8. Block the signals we forward, then start the command.
    let set = crate::confine::relayed_signals();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .map_err(e(Step::Signals, "sigprocmask"))?;
    if cfg.keepalive {
        let _ = nix::unistd::write(sync, &[msg::READY]);
        return Ok(keep_alive(&set));
    }
    crate::threads::check("init: start of the command")
        .map_err(|m| SetupError::new(Step::Start, m))?;
    // The command starts in a child that shares init's memory until its exec
    // (core/vfork.rs): init's address space is a copy of the supervisor's, and copying
    // it again for a process that replaces it at once was a measurable part of a start.
    let stack = crate::vfork::Stack::new(COMMAND_STACK).map_err(e(Step::Start, "map a stack"))?;
    let (exec, confinement) = (&cfg.exec, &cfg.confinement);
    // No handler of init's may run in the child (on init's memory) before it resets
    // them: everything is blocked around the start, as posix_spawn does.
    let mut mask = SigSet::empty();
    sigprocmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut mask),
    )
    .map_err(e(Step::Signals, "sigprocmask"))?;
    let dumpable = crate::vfork::dumpable();
    // SAFETY: init is single-threaded (its network thread has been joined; checked
    // above) and suspended until the child execs or exits, so the allocator's state the
    // child uses is consistent; the child reads `cfg`, writes init's memory only through
    // the allocator and thread-locals (errno), changes its own task state (session,
    // signals, credentials, Landlock, seccomp: all per task, or per process without
    // CLONE_THREAD/SIGHAND/FILES/FS) and the dumpable flag (put back below), and leaves
    // by exec or `die` (_exit); what it allocates stays allocated in init (a few
    // hundred bytes, once).
    let main = unsafe {
        crate::vfork::spawn(&stack, move || -> std::convert::Infallible {
            exec_confined(exec, confinement, slave)
        })
    };
    // The child made the memory it shared with init non-dumpable first thing (the flag
    // is the address space's): init's own setting back, or the rootless supervisor could
    // no longer open /proc/<init>/root and ns/ (owner lookups, `sandbox exec`). In
    // between, no process of the sandbox but these two exists (`sandbox exec` waits for
    // READY), and the host user could already reach init. A connection the command made
    // before this line would be refused as unidentified (fail closed).
    crate::vfork::set_dumpable(dumpable);
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&mask), None);
    let main = main.map_err(e(Step::Start, "start the command"))?;
    drop(stack);
    let main = Pid::from_raw(main);
    if let Some(fd) = slave {
        let _ = nix::unistd::close(fd);
    }
    let _ = nix::unistd::write(sync, &[msg::READY]);
    Ok(supervise(main, &set))
}

/// No command of our own: reap what `sandbox exec` leaves behind until told to stop.
fn keep_alive(set: &SigSet) -> i32 {
    // Once idle, only this loop runs: its start-up code need not stay resident.
    let mut trimmed = false;
    loop {
        match crate::trim::wait_signal(set, &mut trimmed) {
            Ok(Signal::SIGCHLD) | Err(_) => {
                while let Ok(ws) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    if ws == WaitStatus::StillAlive {
                        break;
                    }
                }
            }
            Ok(Signal::SIGTERM | Signal::SIGINT | Signal::SIGHUP | Signal::SIGQUIT) => return 0,
            Ok(_) => {}
        }
    }
}

/// Reap every child; forward signals to `main`; return its status when it ends.
fn supervise(main: Pid, set: &SigSet) -> i32 {
    // A child may have exited before SIGCHLD was blocked (its signal then discarded):
    // reap once before waiting.
    let mut sig = Signal::SIGCHLD;
    // Once idle, only this loop runs: its start-up code need not stay resident.
    let mut trimmed = false;
    loop {
        if sig != Signal::SIGCHLD {
            let _ = kill(main, sig);
            sig = crate::trim::wait_signal(set, &mut trimmed).unwrap_or(Signal::SIGCHLD);
            continue;
        }
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == main => return code,
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == main => return 128 + sig as i32,
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {} // an orphan reaped
            }
        }
        sig = loop {
            if let Ok(s) = crate::trim::wait_signal(set, &mut trimmed) {
                break s;
            }
        };
    }
}

/// Open a pty pair in the sandbox's devpts; send the master up, return the slave.
fn open_pty(sync: &OwnedFd) -> Result<RawFd, SetupError> {
    let (master, slave, name) = crate::confine::open_pty().map_err(|err| SetupError {
        path: err.what.strip_prefix("open ").map(std::path::PathBuf::from),
        ..SetupError::sys(Step::Pty, &err.what, err.source)
    })?;
    let fds = [master.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(
        sync.as_raw_fd(),
        &[IoSlice::new(&[msg::PTY])],
        &cmsg,
        MsgFlags::empty(),
        None,
    )
    .map_err(|err| SetupError {
        path: Some(name.into()),
        ..SetupError::sys(Step::Pty, "send the pty", err)
    })?;
    drop(master);
    // Kept open for the child (it becomes its stdio); closed in init once it started.
    Ok(std::os::fd::IntoRawFd::into_raw_fd(slave))
}
