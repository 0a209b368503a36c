//! Confine the current (freshly started) process and exec the command, in one ordered
//! function (the per-process layers of docs/security.md, in that order).
//!
//! Runs in a child of init (one that shares init's memory until its exec: core/vfork.rs)
//! or of `sandbox exec`'s fork, inside every namespace and the pivoted root. Synchronous, no
//! allocation-heavy work, no logging: a failure is written to the child's own stderr
//! (which is the user's terminal or pipe) and ends the child with a distinct status.

use std::ffi::{CString, OsStr};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use caps::CapSet;
use libc::sock_filter;
use nix::errno::Errno;
use nix::unistd::{Gid, Uid};
use openshell_fs::landlock::{LandlockPlan, restrict_self};

/// Exit status when openshell itself failed to start the command.
pub const EXIT_SETUP: i32 = 125;
/// The command exists but cannot be executed.
pub const EXIT_NOEXEC: i32 = 126;
/// The command was not found.
pub const EXIT_NOTFOUND: i32 = 127;

/// What to run.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    /// argv[0] is the command as the user wrote it.
    pub argv: Vec<CString>,
    /// `KEY=VALUE` strings: the whole environment.
    pub env: Vec<CString>,
    /// Working directory inside the sandbox.
    pub cwd: PathBuf,
}

/// How every sandboxed process is confined.
#[derive(Debug, Clone)]
pub struct Confinement {
    /// Inside uid.
    pub uid: u32,
    /// Inside gid.
    pub gid: u32,
    /// setgroups(2) is permitted in this user namespace.
    pub setgroups: bool,
    /// Landlock rules.
    pub landlock: LandlockPlan,
    /// Compiled seccomp program.
    pub seccomp: Vec<sock_filter>,
    /// Limits set as rlimits (where the sandbox has no cgroup of its own).
    pub rlimits: Option<ProcessLimits>,
}

/// The rlimits standing in for a cgroup (docs/security.md, "Resources").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessLimits {
    /// `RLIMIT_NPROC`: processes of the sandbox user in its user namespace.
    pub nproc: u64,
    /// `RLIMIT_DATA`: memory of each process.
    pub data: u64,
}

/// Lower `res` to `v` (soft and hard); an rlimit can only be lowered here.
fn lower(res: nix::sys::resource::Resource, v: u64) -> Result<(), Errno> {
    let (_, hard) = nix::sys::resource::getrlimit(res)?;
    let v = v.min(hard);
    nix::sys::resource::setrlimit(res, v, v)
}

/// Confine this process and exec. Never returns.
///
/// `tty`: the pty slave to make the controlling terminal and stdio, if any.
pub fn exec_confined(spec: &ExecSpec, conf: &Confinement, tty: Option<RawFd>) -> ! {
    match confine(spec, conf, tty) {
        Ok(never) => match never {},
        Err((code, msg)) => die(code, &msg),
    }
}

enum Never {}

fn confine(
    spec: &ExecSpec,
    conf: &Confinement,
    tty: Option<RawFd>,
) -> Result<Never, (i32, String)> {
    let setup = |what: &str| {
        let what = what.to_string();
        move |e: Errno| (EXIT_SETUP, format!("{what}: {e}"))
    };
    // Not dumpable from the first instruction (not only once the ids change, where the
    // kernel clears the flag unless fs.suid_dumpable=1): no process can read or write
    // this one's memory, which until the exec may be init's own (core/vfork.rs; init
    // puts its flag back after). execve resets the flag for ordinary binaries.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    // A session of its own: terminal signals from the user's terminal reach openshell,
    // which forwards them; and the pty (if any) can become our controlling terminal.
    nix::unistd::setsid().map_err(setup("setsid"))?;
    if let Some(fd) = tty {
        // Ownership first, while we still may: the user owns their terminal.
        // SAFETY: fchown on an open fd with plain integer ids.
        unsafe { libc::fchown(fd, conf.uid, conf.gid) };
        // SAFETY: `fd` is an open pty slave; TIOCSCTTY takes an int argument.
        if unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) } < 0 {
            return Err((
                EXIT_SETUP,
                format!("set controlling terminal: {}", Errno::last()),
            ));
        }
        for target in 0..3 {
            // SAFETY: dup2 of an open fd onto stdio numbers.
            if unsafe { libc::dup2(fd, target) } < 0 {
                return Err((EXIT_SETUP, format!("dup2 pty: {}", Errno::last())));
            }
        }
        if fd > 2 {
            let _ = nix::unistd::close(fd);
        }
    }
    // Default signal dispositions and an empty mask: init blocked signals for itself.
    reset_signals();
    // Bounding and ambient sets go first: dropping from the bounding set needs
    // CAP_SETPCAP, which the id change below may take away.
    caps::clear(None, CapSet::Ambient)
        .map_err(|e| (EXIT_SETUP, format!("clear ambient caps: {e}")))?;
    drop_bounding_set().map_err(setup("drop bounding capabilities"))?;
    // Supplementary groups: only ours. Where setgroups is denied (single-id rootless
    // maps) there are none we could drop.
    if conf.setgroups {
        let groups = [conf.gid];
        // SAFETY: the raw system call with a one-element array that outlives it.
        Errno::result(unsafe { libc::syscall(libc::SYS_setgroups, 1usize, groups.as_ptr()) })
            .map_err(setup("setgroups"))?;
    }
    // The parent-death signal the caller set (`sandbox exec` dies with its CLI) is
    // cleared by the kernel when the ids change below: note it, set it again after.
    let mut pdeath: libc::c_int = 0;
    // SAFETY: PR_GET_PDEATHSIG writes one int through the valid pointer given.
    unsafe {
        libc::prctl(
            libc::PR_GET_PDEATHSIG,
            &mut pdeath as *mut libc::c_int,
            0,
            0,
            0,
        )
    };
    let parent = nix::unistd::getppid();
    // The raw system calls, not libc's wrappers: glibc's broadcast the change to every
    // thread it knows of, and in a child that shares init's memory (init.rs spawns the
    // command with CLONE_VM) its thread list is init's. Credentials are per task: the
    // calls change exactly this process, which has one thread.
    let (gid, uid) = (conf.gid, conf.uid);
    // SAFETY: plain integer arguments.
    Errno::result(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) })
        .map_err(setup("setresgid"))?;
    // SAFETY: as above.
    Errno::result(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) })
        .map_err(setup("setresuid"))?;
    verify_ids(conf)?;
    if pdeath != 0 {
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, pdeath as libc::c_ulong, 0, 0, 0) };
        // The parent may have died while the signal was unset: then it never comes.
        if nix::unistd::getppid() != parent {
            return Err((
                EXIT_SETUP,
                "the parent process went away during setup".into(),
            ));
        }
    }
    // The id change clears capabilities only when leaving uid 0; clear them always.
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        caps::clear(None, set).map_err(|e| (EXIT_SETUP, format!("clear {set:?} caps: {e}")))?;
    }
    // No exec may grant privileges again (setuid bits, file caps), and seccomp needs it.
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err((EXIT_SETUP, format!("no_new_privs: {}", Errno::last())));
    }
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0)
        .map_err(setup("RLIMIT_CORE"))?;
    if let Some(l) = conf.rlimits {
        lower(nix::sys::resource::Resource::RLIMIT_NPROC, l.nproc)
            .map_err(setup("RLIMIT_NPROC"))?;
        lower(nix::sys::resource::Resource::RLIMIT_DATA, l.data).map_err(setup("RLIMIT_DATA"))?;
    }
    nix::unistd::chdir(&spec.cwd).map_err(|e| {
        (
            EXIT_SETUP,
            format!("working directory {}: {e}", spec.cwd.display()),
        )
    })?;
    // Landlock after the chdir (the cwd need not be in the rules) and before seccomp
    // (its syscalls must still be allowed).
    restrict_self(&conf.landlock).map_err(|e| (EXIT_SETUP, e.to_string()))?;
    // Every fd but stdio closes at exec (CLOEXEC keeps our error reporting working).
    // SAFETY: close_range with the CLOEXEC flag only marks descriptors.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    let candidates = candidates(spec);
    // Seccomp last: everything above needs syscalls the filter refuses.
    crate::seccomp::install(&conf.seccomp)
        .map_err(|e| (EXIT_SETUP, format!("install seccomp filter: {e}")))?;
    exec_first(spec, &candidates)
}

/// After the id change, every id must be the intended one: `(uid_t)-1` means "leave
/// unchanged" to setresuid(2), so a bad id silently keeps init's root. Checked through
/// getresuid/getresgid/getgroups, never assumed.
fn verify_ids(conf: &Confinement) -> Result<(), (i32, String)> {
    if conf.uid == 0
        || conf.gid == 0
        || conf.uid > openshell_policy::MAX_ID
        || conf.gid > openshell_policy::MAX_ID
    {
        return Err((
            EXIT_SETUP,
            format!(
                "refusing to run as uid {} gid {}: sandboxed processes run as 1..={}",
                conf.uid,
                conf.gid,
                openshell_policy::MAX_ID
            ),
        ));
    }
    let r = nix::unistd::getresuid().map_err(|e| (EXIT_SETUP, format!("getresuid: {e}")))?;
    let g = nix::unistd::getresgid().map_err(|e| (EXIT_SETUP, format!("getresgid: {e}")))?;
    let want_u = Uid::from_raw(conf.uid);
    let want_g = Gid::from_raw(conf.gid);
    if [r.real, r.effective, r.saved] != [want_u; 3]
        || [g.real, g.effective, g.saved] != [want_g; 3]
    {
        return Err((
            EXIT_SETUP,
            format!(
                "id change did not take: uids {}/{}/{} gids {}/{}/{}, wanted {} and {}",
                r.real, r.effective, r.saved, g.real, g.effective, g.saved, conf.uid, conf.gid
            ),
        ));
    }
    if conf.setgroups {
        let groups =
            nix::unistd::getgroups().map_err(|e| (EXIT_SETUP, format!("getgroups: {e}")))?;
        if groups.iter().any(|x| *x != want_g) {
            return Err((
                EXIT_SETUP,
                format!(
                    "supplementary groups {groups:?} remain after setgroups([{}])",
                    conf.gid
                ),
            ));
        }
    }
    Ok(())
}

/// Where to look for argv[0]: itself if it has a `/`, else each PATH entry.
fn candidates(spec: &ExecSpec) -> Vec<CString> {
    let cmd = spec.argv[0].as_bytes();
    if cmd.contains(&b'/') {
        return vec![spec.argv[0].clone()];
    }
    let path = spec
        .env
        .iter()
        .find_map(|kv| kv.as_bytes().strip_prefix(b"PATH="))
        .unwrap_or(b"/usr/local/bin:/usr/bin:/bin");
    path.split(|b| *b == b':')
        .filter(|d| !d.is_empty())
        .filter_map(|d| {
            let full = Path::new(OsStr::from_bytes(d)).join(OsStr::from_bytes(cmd));
            CString::new(full.as_os_str().as_bytes()).ok()
        })
        .collect()
}

fn exec_first(spec: &ExecSpec, candidates: &[CString]) -> Result<Never, (i32, String)> {
    let name = spec.argv[0].to_string_lossy().into_owned();
    let mut denied = None;
    for path in candidates {
        let Err(e) = nix::unistd::execve(path, &spec.argv, &spec.env);
        match e {
            Errno::ENOENT | Errno::ENOTDIR => continue,
            Errno::EACCES | Errno::EPERM => denied = Some(e),
            other => return Err((EXIT_NOEXEC, format!("cannot execute {name}: {other}"))),
        }
    }
    Err(match denied {
        Some(e) => (EXIT_NOEXEC, format!("cannot execute {name}: {e}")),
        None => (EXIT_NOTFOUND, format!("no such command: {name}")),
    })
}

fn drop_bounding_set() -> Result<(), Errno> {
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            match Errno::last() {
                Errno::EINVAL => break, // past the last capability this kernel knows
                e => return Err(e),
            }
        }
    }
    Ok(())
}

/// Default dispositions for every catchable signal and an empty mask.
pub fn reset_signals() {
    use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, sigprocmask};
    for sig in Signal::iterator() {
        if sig == Signal::SIGKILL || sig == Signal::SIGSTOP {
            continue;
        }
        // SAFETY: installing SIG_DFL is always sound.
        let _ = unsafe { nix::sys::signal::signal(sig, SigHandler::SigDfl) };
    }
    // The real-time signals too, glibc's own two (32, 33) among them, which its
    // sigaction refuses: the kernel's rt_sigaction with a zeroed action is SIG_DFL.
    let dfl = [0u64; 4]; // handler, flags, restorer, mask: the kernel's layout
    for sig in 32..=libc::SIGRTMAX() {
        // SAFETY: a valid kernel sigaction (all zero: SIG_DFL, no flags, empty mask),
        // no old action asked for, the kernel's sigset size.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                dfl.as_ptr(),
                std::ptr::null_mut::<u64>(),
                8usize,
            )
        };
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// SIGPIPE back to its default (the process ends quietly on a closed pipe), for CLI
/// commands that only print.
pub fn default_sigpipe() {
    use nix::sys::signal::{SigHandler, Signal};
    // SAFETY: installing SIG_DFL is always sound.
    let _ = unsafe { nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}

/// Write `openshell: msg` to stderr and leave with `code`, without unwinding.
pub fn die(code: i32, msg: &str) -> ! {
    let line = format!("openshell: {msg}\n");
    let _ = nix::unistd::write(std::io::stderr(), line.as_bytes());
    // SAFETY: _exit ends the process at once; nothing of ours needs flushing.
    unsafe { libc::_exit(code) }
}
