//! The per-user *holder* of a user namespace mapped with the subordinate ids, so that a
//! rootless sandbox's own user namespace is made inside it and its maps are written
//! directly, without the setuid helpers newuidmap/newgidmap (two setuid execs: about
//! 3 ms of every rootless start, bench/RESULTS.md). Podman's rootless "pause process"
//! does the same; the trade-off is in docs/security.md ("Id maps").
//!
//! - The holder (`openshell: userns`, one per user and id layout) is a process in its
//!   own user namespace, mapped once by the helpers as `0 → you, 1.. → your subordinate
//!   range`. It listens on `userns.KEY.sock` in the user's private runtime directory and
//!   hands an fd of its namespace (SCM_RIGHTS) to each connecting process of the same
//!   user; anyone else gets nothing. It exits after ten idle minutes (or on SIGTERM).
//! - A supervisor checks what answers (the peer is its own uid, its maps are the layout
//!   it expects, the fd is the peer's namespace), then [`clone_nested`]: a short-lived
//!   child joins that namespace, clones init into new namespaces with `CLONE_PARENT`
//!   (init stays the supervisor's child) and writes init's maps — the same host ids as
//!   the helpers would write ([`crate::idmap::within`]), one level deeper.
//! - Whatever fails here, the caller falls back to the helpers: a holder is a speed-up,
//!   never a requirement.
//!
//! Nothing in a sandbox can use the holder: its socket is outside every sandbox's view,
//! and the fd would be useless there anyway (joining a user namespace needs
//! CAP_SYS_ADMIN in it, which no process below it has).

use std::fs;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, sockopt};
use nix::unistd::Pid;

use crate::idmap::{self, HolderLayout, IdPlan, Writer};

/// How long a holder waits for a connection before it exits.
const IDLE: Duration = Duration::from_secs(600);
/// How long a supervisor waits for a holder's answer.
const ANSWER: Duration = Duration::from_secs(2);

/// Why a sandbox could not be nested in a holder (the caller uses the helpers).
#[derive(Debug, thiserror::Error)]
pub enum NestError {
    /// Not a layout with a holder, or switched off.
    #[error("no holder for this id layout")]
    NotApplicable,
    /// Talking to a holder failed.
    #[error("user-namespace holder {}: {what}", path.display())]
    Holder { path: PathBuf, what: String },
    /// Starting a holder failed.
    #[error("start a user-namespace holder: {0}")]
    Start(String),
    /// The nested clone failed at `step`.
    #[error("nested clone: {step}: {source}")]
    Clone {
        step: &'static str,
        #[source]
        source: nix::errno::Errno,
    },
}

/// A holder's namespace and a sandbox's maps expressed in its ids.
#[derive(Debug)]
pub struct Nest {
    userns: OwnedFd,
    uid_map: String,
    gid_map: String,
}

/// Get (or start) the holder for `plan`'s layout, its socket in `dir` (the private
/// runtime directory). `OPENSHELL_USERNS_HOLDER=0` switches holders off. The caller
/// must be single-threaded (starting a holder forks).
pub fn nest(plan: &IdPlan, dir: &Path) -> Result<Nest, NestError> {
    let layout = match (&plan.holder, plan.writer) {
        (Some(l), Writer::Helper)
            if std::env::var_os("OPENSHELL_USERNS_HOLDER").is_none_or(|v| v != "0") =>
        {
            l
        }
        _ => return Err(NestError::NotApplicable),
    };
    let (Some(uid_map), Some(gid_map)) = (
        idmap::within(&plan.uid_map, &layout.uid_map),
        idmap::within(&plan.gid_map, &layout.gid_map),
    ) else {
        return Err(NestError::NotApplicable);
    };
    let path = dir.join(format!("userns.{:016x}.sock", key(layout)));
    let userns = match attach(&path, layout) {
        Ok(fd) => fd,
        Err(first) => {
            // One starter at a time; whoever waited may find the holder started.
            let lock_path = path.with_extension("lock");
            let lock = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)
                .map_err(|e| NestError::Start(format!("{}: {e}", lock_path.display())))?;
            let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| NestError::Start(format!("lock: {e}")))?;
            match attach(&path, layout) {
                Ok(fd) => fd,
                Err(_) => {
                    tracing::debug!("{first}; starting one");
                    start(&path, plan, layout)?;
                    attach(&path, layout)?
                }
            }
        }
    };
    Ok(Nest {
        userns,
        uid_map: idmap::render(&uid_map),
        gid_map: idmap::render(&gid_map),
    })
}

/// A stable name for a layout (FNV-1a of its maps): a holder of another layout (the
/// subordinate ranges changed) is left to time out.
fn key(layout: &HolderLayout) -> u64 {
    let text = format!(
        "{}/{}",
        idmap::render(&layout.uid_map),
        idmap::render(&layout.gid_map)
    );
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Ask the holder at `path` for its namespace and check everything about the answer.
fn attach(path: &Path, layout: &HolderLayout) -> Result<OwnedFd, NestError> {
    let err = |what: String| NestError::Holder {
        path: path.to_path_buf(),
        what,
    };
    let s = UnixStream::connect(path).map_err(|e| err(format!("connect: {e}")))?;
    s.set_read_timeout(Some(ANSWER))
        .map_err(|e| err(format!("timeout: {e}")))?;
    let cred = nix::sys::socket::getsockopt(&s, sockopt::PeerCredentials)
        .map_err(|e| err(format!("peer: {e}")))?;
    if cred.uid() != nix::unistd::geteuid().as_raw() {
        return Err(err(format!("answered by uid {}, not us", cred.uid())));
    }
    let pid = cred.pid();
    for (file, want) in [("uid_map", &layout.uid_map), ("gid_map", &layout.gid_map)] {
        let text = fs::read_to_string(format!("/proc/{pid}/{file}"))
            .map_err(|e| err(format!("{file}: {e}")))?;
        if idmap::parse_map(&text).as_ref() != Some(want) {
            return Err(err(format!("its {file} is not the expected layout")));
        }
    }
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = nix::sys::socket::recvmsg::<()>(
        s.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| err(format!("receive: {e}")))?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for c in msg.cmsgs().map_err(|e| err(format!("receive: {e}")))? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: SCM_RIGHTS fds were just installed in this process for us alone.
            fds.extend(raw.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
        }
    }
    let [fd] = <[OwnedFd; 1]>::try_from(fds).map_err(|v| err(format!("{} fds", v.len())))?;
    let got = nix::sys::stat::fstat(fd.as_fd()).map_err(|e| err(format!("fstat: {e}")))?;
    let want =
        fs::metadata(format!("/proc/{pid}/ns/user")).map_err(|e| err(format!("ns/user: {e}")))?;
    if got.st_dev != want.dev() || got.st_ino != want.ino() {
        return Err(err("the fd is not its user namespace".into()));
    }
    Ok(fd)
}

/// Start a holder listening on `path`: bind, run `openshell __userns-holder` with the
/// listener as fd 3 and a sync socket as fd 4, map it with the helpers when it has made
/// its namespace, and wait until it serves. Called under the layout's lock.
fn start(path: &Path, plan: &IdPlan, layout: &HolderLayout) -> Result<(), NestError> {
    let e = |what: &str, x: &dyn std::fmt::Display| NestError::Start(format!("{what}: {x}"));
    // A stale socket (its holder gone, or another layout's) is replaced.
    let _ = fs::remove_file(path);
    // Bound here, listened on by the holder: a peer's SO_PEERCRED names whoever called
    // listen(2), which must be the holder (its pid is how clients check its maps).
    let listener = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Stream,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|x| e("socket", &x))?;
    let addr = nix::sys::socket::UnixAddr::new(path).map_err(|x| e("socket path", &x))?;
    nix::sys::socket::bind(listener.as_raw_fd(), &addr).map_err(|x| e("bind", &x))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|x| e("chmod", &x))?;
    let (mut ours, theirs) = UnixStream::pair().map_err(|x| e("socketpair", &x))?;
    let (l, t) = (listener.as_raw_fd(), theirs.as_raw_fd());
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0("openshell: userns")
        .arg("__userns-holder")
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (setsid, fcntl, dup2, close) on fds it owns.
    unsafe {
        cmd.pre_exec(move || {
            let fail = || Err(std::io::Error::last_os_error());
            if libc::setsid() < 0 {
                return fail();
            }
            // Above 4 first, so that neither lands on the other's target.
            let (l2, t2) = (
                libc::fcntl(l, libc::F_DUPFD, 10),
                libc::fcntl(t, libc::F_DUPFD, 10),
            );
            if l2 < 0 || t2 < 0 || libc::dup2(l2, 3) < 0 || libc::dup2(t2, 4) < 0 {
                return fail();
            }
            libc::close(l2);
            libc::close(t2);
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|x| e("spawn", &x))?;
    drop(theirs);
    drop(listener);
    let pid = child.id() as i32;
    let kill = || {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
    };
    let step = |ours: &mut UnixStream, want: u8| -> Result<(), String> {
        let mut b = [0u8; 1];
        ours.read_exact(&mut b).map_err(|x| x.to_string())?;
        (b[0] == want)
            .then_some(())
            .ok_or_else(|| format!("unexpected {:?}", b[0] as char))
    };
    ours.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|x| e("timeout", &x))?;
    let mapped = step(&mut ours, b'u').and_then(|()| {
        let holder = IdPlan {
            uid_map: layout.uid_map.clone(),
            gid_map: layout.gid_map.clone(),
            writer: Writer::Helper,
            mode: plan.mode,
            holder: None,
        };
        idmap::apply(&holder, pid).map_err(|x| x.to_string())?;
        ours.write_all(b"m").map_err(|x| x.to_string())?;
        step(&mut ours, b'r')
    });
    if let Err(x) = mapped {
        kill();
        return Err(e("set up", &x));
    }
    // It outlives this process: never waited for here (a zombie at worst, until we exit).
    drop(child);
    Ok(())
}

/// `openshell __userns-holder`: the holder itself (see the module header). fd 3 is the
/// listening socket, fd 4 the sync socket to its starter.
pub fn holder_main() -> i32 {
    // SAFETY: closes fds this process never uses (whatever the caller leaked past 4).
    unsafe { libc::syscall(libc::SYS_close_range, 5u32, u32::MAX, 0u32) };
    let is_socket = |fd: i32| {
        // SAFETY: a plain C struct of integers, for which all zeroes is valid.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat(2) on an fd number (one not open fails with EBADF) into `st`.
        let ok = unsafe { libc::fstat(fd, &mut st) } == 0;
        ok && st.st_mode & libc::S_IFMT == libc::S_IFSOCK
    };
    if !is_socket(3) || !is_socket(4) {
        eprintln!("openshell: __userns-holder is internal: started by openshell run");
        return 2;
    }
    // SAFETY: fds 3 and 4 were checked open above and are owned by nothing else here.
    let (listener, sync) = unsafe { (OwnedFd::from_raw_fd(3), OwnedFd::from_raw_fd(4)) };
    for fd in [&listener, &sync] {
        let _ = nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
    }
    let mut sync = UnixStream::from(sync);
    crate::proctitle::set("openshell: userns");
    // The starter had signals blocked (a supervisor relays them): a holder takes the
    // defaults, so that SIGTERM ends it.
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
    // SAFETY: installing SIG_IGN needs no handler code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    // SAFETY: unshare with a flag only; this process is single-threaded.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
        return 1;
    }
    let _ = sync.set_read_timeout(Some(Duration::from_secs(10)));
    let mut b = [0u8; 1];
    if sync.write_all(b"u").is_err() || sync.read_exact(&mut b).is_err() || b[0] != b'm' {
        return 1;
    }
    let Ok(ns) = fs::File::open("/proc/self/ns/user") else {
        return 1;
    };
    let backlog = nix::sys::socket::Backlog::new(128).unwrap_or(nix::sys::socket::Backlog::MAXCONN);
    if !nix::unistd::getuid().is_root()
        || nix::sys::socket::listen(&listener, backlog).is_err()
        || sync.write_all(b"r").is_err()
    {
        return 1;
    }
    drop(sync);
    serve(&listener, &ns);
    0
}

/// Hand `ns` to each peer that is our user, until [`IDLE`] passes unasked. (Which user
/// namespace the peer is in cannot be checked from here — /proc of the parent namespace
/// is closed to a child's processes — nor does it need to: the fd lets no process that
/// lacks CAP_SYS_ADMIN over this namespace, i.e. any but the user's own on the host, do
/// anything with it.)
fn serve(listener: &OwnedFd, ns: &fs::File) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let idle = PollTimeout::try_from(IDLE.as_millis() as i32).unwrap_or(PollTimeout::MAX);
    let me = nix::unistd::getuid().as_raw();
    loop {
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, idle) {
            Ok(0) => return,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
        let Ok(conn) = nix::sys::socket::accept4(
            listener.as_raw_fd(),
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        ) else {
            continue;
        };
        // SAFETY: accept4 just returned this fd to us alone.
        let conn = unsafe { OwnedFd::from_raw_fd(conn) };
        let Ok(cred) = nix::sys::socket::getsockopt(&conn, sockopt::PeerCredentials) else {
            continue;
        };
        // The peer's uid as this namespace sees it: ours only if it is our user.
        if cred.uid() != me {
            continue;
        }
        let fds = [ns.as_raw_fd()];
        let _ = nix::sys::socket::sendmsg::<()>(
            conn.as_raw_fd(),
            &[IoSlice::new(b"n")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            None,
        );
    }
}

/// Clone a child into new namespaces `flags` (CLONE_NEWUSER among them) made inside the
/// holder's user namespace, and write its maps. Returns `Ok(None)` in the child and its
/// pid in the caller, whose child it is. Fork-style: the caller must be single-threaded.
pub fn clone_nested(nest: Nest, flags: libc::c_int) -> Result<Option<Pid>, NestError> {
    let clone_err = |step| move |source| NestError::Clone { step, source };
    crate::threads::check("nested clone").map_err(|_| NestError::Clone {
        step: "thread check",
        source: nix::errno::Errno::EBUSY,
    })?;
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(clone_err("pipe"))?;
    // SAFETY: a fork-style clone (no new stack) of a single-threaded process (checked).
    let helper =
        unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0, 0, 0, 0) };
    if helper < 0 {
        return Err(clone_err("fork")(nix::errno::Errno::last()));
    }
    if helper == 0 {
        drop(r);
        // Reports (pid, errno, step) and leaves; never returns to the caller's code.
        let report = |pid: i32, step: u8, errno: i32| -> ! {
            let mut m = [0u8; 9];
            m[..4].copy_from_slice(&pid.to_ne_bytes());
            m[4..8].copy_from_slice(&errno.to_ne_bytes());
            m[8] = step;
            let _ = nix::unistd::write(&w, &m);
            // SAFETY: leave the helper without running the caller's destructors.
            unsafe { libc::_exit(0) }
        };
        // SAFETY: setns with an fd we own, in a single-threaded process.
        if unsafe { libc::setns(nest.userns.as_raw_fd(), libc::CLONE_NEWUSER) } != 0 {
            report(0, 1, nix::errno::Errno::last_raw());
        }
        // SAFETY: as above; CLONE_PARENT makes the new process the caller's child.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                (flags | libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong,
                0,
                0,
                0,
                0,
            )
        };
        if pid == 0 {
            // Nothing of the holder stays open in the new process.
            drop(w);
            drop(nest);
            return Ok(None);
        }
        if pid < 0 {
            report(0, 2, nix::errno::Errno::last_raw());
        }
        let pid = pid as i32;
        for (step, file, text) in [(3, "uid_map", &nest.uid_map), (4, "gid_map", &nest.gid_map)] {
            if let Err(e) = fs::write(format!("/proc/{pid}/{file}"), text) {
                let _ =
                    nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                report(pid, step, e.raw_os_error().unwrap_or(libc::EIO));
            }
        }
        report(pid, 0, 0);
    }
    drop(w);
    let mut m = [0u8; 9];
    let got = nix::unistd::read(&r, &mut m);
    let _ = nix::sys::wait::waitpid(Pid::from_raw(helper as i32), None);
    if got != Ok(9) {
        return Err(clone_err("helper")(nix::errno::Errno::EPIPE));
    }
    let pid = i32::from_ne_bytes([m[0], m[1], m[2], m[3]]);
    let errno = i32::from_ne_bytes([m[4], m[5], m[6], m[7]]);
    let step = match m[8] {
        0 => return Ok(Some(Pid::from_raw(pid))),
        1 => "join the holder's namespace",
        2 => "clone",
        3 => "write uid_map",
        _ => "write gid_map",
    };
    if pid > 0 {
        let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
    }
    Err(NestError::Clone {
        step,
        source: nix::errno::Errno::from_raw(errno),
    })
}
