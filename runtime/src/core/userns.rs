//! The per-user *holder* of a user namespace mapped with the subordinate ids, so that a
//! rootless sandbox's own user namespace is made inside it and its maps are written
//! directly, without the setuid helpers newuidmap/newgidmap (two setuid execs: about
//! 3 ms of every rootless start, bench/RESULTS.md). Podman's rootless "pause process"
//! does the same; the trade-off is in docs/security.md ("Id maps").
//!
//! - The holder (`openshell: userns`, one per user and id layout) is a process in its
//!   own user namespace, mapped once by the helpers as `0 → you, 1.. → your subordinate
//!   range`. It listens on `userns.KEY.sock` in the user's private runtime directory (the
//!   key covers the layout and the limits a namespace records from its creator) and
//!   hands an fd of its namespace (SCM_RIGHTS) to each connecting process of the same
//!   user; anyone else gets nothing. It exits after ten idle minutes (or on SIGTERM).
//! - A supervisor checks what answers (the peer is its own uid, its maps are the layout
//!   it expects, the fd is the peer's namespace), then [`clone_nested`]: a short-lived
//!   child joins that namespace, clones init into new namespaces with `CLONE_PARENT`
//!   (init stays the supervisor's child) and writes init's maps — the same host ids as
//!   the helpers would write ([`crate::idmap::within`]), one level deeper.
//! - Whatever fails here, the caller falls back to the helpers: a holder is a speed-up,
//!   never a requirement — except [`NestError::Lost`] (the short-lived child died
//!   between cloning init and saying so), which stops the run.
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
const ANSWER: Duration = Duration::from_secs(1);
/// How long starting a holder may take (the helpers' execs included).
const STARTING: Duration = Duration::from_secs(5);
/// After a failed start, how long runs use the helpers without trying again.
const BACKOFF: Duration = Duration::from_secs(600);
/// Init's stack: it runs on (its copy of) the nested clone helper's stack, as deep as
/// the main thread's usual 8 MiB. Reserved, not committed: pages are allocated as used.
const INIT_STACK: usize = 8 << 20;
/// The limits a user namespace records from its creator (the kernel applies them to
/// everything below it too): part of a holder's key, so that a sandbox nested in a
/// holder is limited exactly as one made beside it.
const RECORDED_LIMITS: [nix::sys::resource::Resource; 4] = [
    nix::sys::resource::Resource::RLIMIT_NPROC,
    nix::sys::resource::Resource::RLIMIT_MSGQUEUE,
    nix::sys::resource::Resource::RLIMIT_SIGPENDING,
    nix::sys::resource::Resource::RLIMIT_MEMLOCK,
];

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
    /// The short-lived child died without saying whether init exists: the run must
    /// stop (a second init could share the first one's sync socket).
    #[error("nested clone: its helper died before reporting")]
    Lost,
    /// The nested clone failed at `step` (nothing of it is left).
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

/// Get (or start) the holder for `plan`'s layout, its socket in the private runtime
/// directory `dir` gives (asked only when the layout has a holder).
/// `OPENSHELL_USERNS_HOLDER=0` switches holders off. The caller must be
/// single-threaded (starting a holder forks).
pub fn nest(plan: &IdPlan, dir: impl FnOnce() -> Option<PathBuf>) -> Result<Nest, NestError> {
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
    let dir = dir().ok_or(NestError::NotApplicable)?;
    let path = dir.join(format!("userns.{:016x}.sock", key(layout)));
    let failed = path.with_extension("failed");
    if fs::metadata(&failed)
        .and_then(|m| m.modified())
        .is_ok_and(|t| t.elapsed().is_ok_and(|a| a < BACKOFF))
    {
        return Err(NestError::NotApplicable);
    }
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
                    let started = start(&path, plan, layout).and_then(|()| attach(&path, layout));
                    if started.is_err() {
                        // Not again for a while: each run would pay for the attempt.
                        let _ = fs::write(&failed, b"");
                    }
                    started?
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

/// A stable name for a layout and the limits a namespace records (FNV-1a): a holder of
/// another layout (the subordinate ranges changed) or other limits is left to time out.
fn key(layout: &HolderLayout) -> u64 {
    let limits: Vec<String> = RECORDED_LIMITS
        .iter()
        .map(|r| {
            nix::sys::resource::getrlimit(*r)
                .map_or_else(|_| "?".into(), |(soft, _)| soft.to_string())
        })
        .collect();
    let text = format!(
        "{}/{}/{}",
        idmap::render(&layout.uid_map),
        idmap::render(&layout.gid_map),
        limits.join(",")
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
    let s = connect(path).map_err(|e| err(format!("connect: {e}")))?;
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

/// Connect without blocking: a holder whose backlog is full (stopped, or swamped) is
/// not waited for.
fn connect(path: &Path) -> Result<UnixStream, nix::errno::Errno> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, socket};
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    nix::sys::socket::connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    let s = UnixStream::from(fd);
    s.set_nonblocking(false)
        .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    Ok(s)
}

/// Start a holder listening on `path`: bind, run `openshell __userns-holder` with the
/// listener as fd 3 and a sync socket as fd 4 (double-forked: it is nobody's child, so
/// never a zombie of a long-lived supervisor), map it with the helpers when it has made
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
    // async-signal-safe functions (fork-style clone, _exit, setsid, fcntl, dup2, close)
    // on fds it owns; the child is a copy of a process that was single-threaded.
    unsafe {
        cmd.pre_exec(move || {
            let fail = || Err(std::io::Error::last_os_error());
            // The first child leaves at once; the second goes on to exec the holder
            // (std's exec-status pipe stays with it, so spawn still reports exec errors).
            match libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0, 0, 0, 0) {
                0 => {}
                n if n > 0 => libc::_exit(0),
                _ => return fail(),
            }
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
    let mut first = cmd.spawn().map_err(|x| e("spawn", &x))?;
    let _ = first.wait();
    drop(theirs);
    drop(listener);
    ours.set_read_timeout(Some(STARTING))
        .map_err(|x| e("timeout", &x))?;
    // It says 'u' and its pid once it has made its namespace.
    let mut hello = [0u8; 5];
    ours.read_exact(&mut hello).map_err(|x| e("holder", &x))?;
    let pid = i32::from_ne_bytes([hello[1], hello[2], hello[3], hello[4]]);
    if hello[0] != b'u' || pid <= 0 {
        return Err(e("holder", &"unexpected greeting"));
    }
    let kill = || {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    };
    let mapped = (|| {
        let holder = IdPlan {
            uid_map: layout.uid_map.clone(),
            gid_map: layout.gid_map.clone(),
            writer: Writer::Helper,
            mode: plan.mode,
            holder: None,
        };
        idmap::apply(&holder, pid).map_err(|x| x.to_string())?;
        ours.write_all(b"m").map_err(|x| x.to_string())?;
        let mut b = [0u8; 1];
        ours.read_exact(&mut b).map_err(|x| x.to_string())?;
        (b[0] == b'r')
            .then_some(())
            .ok_or_else(|| "not serving".to_string())
    })();
    if let Err(x) = mapped {
        kill();
        return Err(e("set up", &x));
    }
    Ok(())
}

/// `openshell __userns-holder`: the holder itself (see the module header). fd 3 is the
/// listening socket, fd 4 the sync socket to its starter.
pub fn holder_main() -> i32 {
    close_from(5);
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
    // The starter had signals blocked (a supervisor relays them), and ignored ones stay
    // ignored across exec: a holder takes the defaults, so that SIGTERM ends it.
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
    // SAFETY: installing SIG_DFL / SIG_IGN needs no handler code.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
        libc::signal(libc::SIGINT, libc::SIG_DFL);
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    // SAFETY: unshare with a flag only; this process is single-threaded.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER) } != 0 {
        return 1;
    }
    let _ = sync.set_read_timeout(Some(STARTING));
    let mut hello = vec![b'u'];
    hello.extend_from_slice(&(std::process::id() as i32).to_ne_bytes());
    let mut b = [0u8; 1];
    if sync.write_all(&hello).is_err() || sync.read_exact(&mut b).is_err() || b[0] != b'm' {
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

/// Close every fd from `low` up (what the caller leaked): close_range(2), else one by
/// one from /proc/self/fd.
fn close_from(low: i32) {
    // SAFETY: closes fds this process does not use; nothing here owns them.
    if unsafe { libc::syscall(libc::SYS_close_range, low as u32, u32::MAX, 0u32) } == 0 {
        return;
    }
    let fds: Vec<i32> = fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= low)
        .collect();
    for fd in fds {
        // SAFETY: as above (the directory's own fd is closed too, harmlessly).
        unsafe { libc::close(fd) };
    }
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

/// Clone init into new namespaces `flags` (CLONE_NEWUSER among them) made inside the
/// holder's user namespace, and write its maps; `init` is what the new process runs.
/// Returns init's pid to the caller, whose child it is. The caller must be
/// single-threaded (checked).
///
/// The short-lived helper that joins the holder's namespace shares the caller's memory
/// ([`crate::vfork`]): it allocates nothing and leaves with `_exit`. Init, a fork-style
/// clone of it, has its own copy of that memory, on the helper's stack (`INIT_STACK`).
pub fn clone_nested<G: FnOnce() -> std::convert::Infallible>(
    nest: Nest,
    flags: libc::c_int,
    init: G,
) -> Result<Pid, NestError> {
    let clone_err = |step| move |source| NestError::Clone { step, source };
    crate::threads::check("nested clone").map_err(|_| NestError::Clone {
        step: "thread check",
        source: nix::errno::Errno::EBUSY,
    })?;
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(clone_err("pipe"))?;
    let stack = crate::vfork::Stack::new(INIT_STACK).map_err(clone_err("map a stack"))?;
    let (rfd, wfd, nsfd) = (r.as_raw_fd(), w.as_raw_fd(), nest.userns.as_raw_fd());
    // No signal handler may run in the helper (it would run on the supervisor's memory):
    // all are blocked around it, as posix_spawn does; init gets the caller's mask back.
    let mut mask = nix::sys::signal::SigSet::empty();
    nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::all()),
        Some(&mut mask),
    )
    .map_err(clone_err("block signals"))?;
    let maps = [
        (b'u', b"uid_map\0".as_slice(), nest.uid_map.as_bytes()),
        (b'g', b"gid_map\0".as_slice(), nest.gid_map.as_bytes()),
    ];
    // The helper's reports, in order: `c` (about to clone) then `p`+pid, or `j`/`e`
    // +errno (setns/clone failed); then `k` (maps written) or `u`/`g`+errno.
    let helper = move || -> std::convert::Infallible {
        let say = |tag: u8, n: i32| {
            let mut m = [tag, 0, 0, 0, 0];
            m[1..].copy_from_slice(&n.to_ne_bytes());
            // SAFETY: a write from a stack buffer to our pipe.
            unsafe { libc::write(wfd, m.as_ptr().cast(), m.len()) };
        };
        let errno = nix::errno::Errno::last_raw;
        // SAFETY: leave the helper without running any destructor (the memory is the
        // caller's).
        let leave = || -> ! { unsafe { libc::_exit(0) } };
        // SAFETY: setns with the holder's fd; this child has its own thread group and
        // fs (CLONE_VM only), which is what joining a user namespace requires.
        if unsafe { libc::setns(nsfd, libc::CLONE_NEWUSER) } != 0 {
            say(b'j', errno());
            leave();
        }
        say(b'c', 0);
        // SAFETY: a fork-style clone: the new process gets its own copy of this memory
        // (the caller is single-threaded and suspended); CLONE_PARENT makes it the
        // caller's child.
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
            // Init, on its own copy: nothing of the holder's or the pipe's stays open in
            // it, and its signal mask is the caller's.
            // SAFETY: closing this process's copies of three descriptors.
            unsafe {
                libc::close(rfd);
                libc::close(wfd);
                libc::close(nsfd);
            }
            let _ = nix::sys::signal::sigprocmask(
                nix::sys::signal::SigmaskHow::SIG_SETMASK,
                Some(&mask),
                None,
            );
            match init() {}
        }
        if pid < 0 {
            say(b'e', errno());
            leave();
        }
        let pid = pid as i32;
        say(b'p', pid);
        for (tag, file, text) in maps {
            let mut path = [0u8; 40];
            let n = proc_path(&mut path, pid, file);
            // SAFETY: `path` is NUL-terminated (proc_path); `text` is the caller's
            // string, only read.
            let ok = unsafe {
                let fd = libc::open(path[..n].as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC);
                let ok = fd >= 0
                    && libc::write(fd, text.as_ptr().cast(), text.len()) == text.len() as isize;
                let e = errno();
                if fd >= 0 {
                    libc::close(fd);
                }
                if ok { Ok(()) } else { Err(e) }
            };
            if let Err(e) = ok {
                // SAFETY: init has not been released; it never ran a thing.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                say(tag, e);
                leave();
            }
        }
        say(b'k', 0);
        leave();
    };
    let dumpable = crate::vfork::dumpable();
    // SAFETY: single-threaded (checked above); the helper allocates nothing, writes
    // only its stack, and leaves with _exit; `nest` and `w` outlive it.
    let helper = unsafe { crate::vfork::spawn(&stack, helper) };
    // (Joining a namespace our uid owns leaves the flag as it was on today's kernels;
    // put back whatever a credential change in the helper did to the shared memory.)
    crate::vfork::set_dumpable(dumpable);
    let _ =
        nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_SETMASK, Some(&mask), None);
    let helper = helper.map_err(clone_err("clone the helper"))?;
    drop(w);
    // Everything the helper said, until it left (init holds no end of the pipe).
    let mut said = Vec::new();
    let mut buf = [0u8; 64];
    loop {
        match nix::unistd::read(&r, &mut buf) {
            Ok(0) => break,
            Ok(n) => said.extend_from_slice(&buf[..n]),
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    let _ = nix::sys::wait::waitpid(Pid::from_raw(helper), None);
    drop(stack);
    let msgs: Vec<(u8, i32)> = said
        .chunks_exact(5)
        .map(|m| (m[0], i32::from_ne_bytes([m[1], m[2], m[3], m[4]])))
        .collect();
    let fail = |step, errno| NestError::Clone {
        step,
        source: nix::errno::Errno::from_raw(errno),
    };
    match msgs.as_slice() {
        [] => Err(fail("helper", libc::EPIPE)),
        [(b'j', e)] => Err(fail("join the holder's namespace", *e)),
        [(b'c', _), (b'e', e)] => Err(fail("clone", *e)),
        [(b'c', _), (b'p', pid), rest @ ..] => {
            let pid = Pid::from_raw(*pid);
            if let [(b'k', _)] = rest {
                return Ok(pid);
            }
            // Its maps were not written (or the helper died): it never ran a thing.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
            Err(match rest {
                [(b'u', e)] => fail("write uid_map", *e),
                [(b'g', e)] => fail("write gid_map", *e),
                _ => fail("helper", libc::EPIPE),
            })
        }
        // It may have cloned without saying so: an init may exist that nobody knows of.
        _ => Err(NestError::Lost),
    }
}

/// `/proc/PID/FILE` into `buf` without allocating (the nested clone helper runs on its
/// caller's heap); `file` ends with its NUL. Returns the length, NUL included.
fn proc_path(buf: &mut [u8; 40], pid: i32, file: &[u8]) -> usize {
    let mut digits = [0u8; 10];
    let mut n = pid.unsigned_abs();
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut len = 0;
    for part in [b"/proc/".as_slice(), &digits[i..], b"/", file] {
        buf[len..len + part.len()].copy_from_slice(part);
        len += part.len();
    }
    len
}

#[cfg(test)]
mod tests {
    #[test]
    fn proc_paths_are_built_without_allocating() {
        let mut buf = [0u8; 40];
        let n = super::proc_path(&mut buf, 4_194_304, b"uid_map\0");
        assert_eq!(&buf[..n], b"/proc/4194304/uid_map\0");
        let n = super::proc_path(&mut buf, 1, b"gid_map\0");
        assert_eq!(&buf[..n], b"/proc/1/gid_map\0");
    }
}
