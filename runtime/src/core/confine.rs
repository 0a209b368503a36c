//! What confines every process of a sandbox, built in one place: `run` (the first
//! command, through init) and `sandbox exec`/`connect` (later commands, joining the
//! namespaces) call the same builder, so a later command can never get a looser
//! Landlock plan, another seccomp program or other limits than the first. Also the
//! pieces both paths share: the pty pair, and the set of signals relayed to a command.

use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use openshell_fs::landlock::LandlockPlan;
use openshell_policy::{Compatibility, Policy};
use serde::{Deserialize, Serialize};

use crate::spawn::{Confinement, ProcessLimits};

/// A `--mount` destination and its mode (recorded with the sandbox: `exec` grants it too).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountGrant {
    /// Path inside.
    pub dest: std::path::PathBuf,
    /// `:ro`.
    pub readonly: bool,
}

/// Where the sandbox CA's files appear inside (proxied sandboxes).
pub const CA_DIR: &str = "/run/openshell";

/// What the confinement is built from.
pub struct Inputs<'a> {
    /// The sandbox's policy (filesystem part).
    pub policy: &'a Policy,
    /// The sandbox's working directory (`include_workdir`).
    pub workdir: &'a str,
    /// `--mount` destinations and their modes.
    pub mounts: &'a [MountGrant],
    /// The Landlock ABI decided at start.
    pub abi: i32,
    /// The sandbox CA's directory is inside (proxied network): readable.
    pub ca_inside: bool,
    /// The sandbox user.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
    /// setgroups(2) is allowed in this user namespace.
    pub setgroups: bool,
    /// Per-process limits where no cgroup holds the sandbox.
    pub rlimits: Option<ProcessLimits>,
}

/// The confinement of a sandbox's processes.
pub fn build(i: &Inputs<'_>) -> Confinement {
    let mut landlock = landlock_plan(i.policy, i.workdir, i.mounts, i.abi);
    if i.ca_inside {
        landlock.read_only.push(PathBuf::from(CA_DIR));
    }
    Confinement {
        uid: i.uid,
        gid: i.gid,
        setgroups: i.setgroups,
        landlock,
        seccomp: crate::seccomp::compile(&crate::seccomp::rules()),
        rlimits: i.rlimits,
    }
}

/// The Landlock rules a policy asks for, at the ABI this host offers.
///
/// Every `--mount` destination gets the rights of its mode (`ro`: read, else read and
/// write): a mount the user asked for is usable whatever the policy's paths.
pub fn landlock_plan(
    policy: &Policy,
    workdir: &str,
    mounts: &[MountGrant],
    abi: i32,
) -> LandlockPlan {
    let (ro, rw) = policy.fs_paths(workdir);
    let mut read_only: Vec<PathBuf> = ro.into_iter().map(PathBuf::from).collect();
    let mut read_write: Vec<PathBuf> = rw.into_iter().map(PathBuf::from).collect();
    for m in mounts {
        let list = if m.readonly {
            &mut read_only
        } else {
            &mut read_write
        };
        if !list.contains(&m.dest) {
            list.push(m.dest.clone());
        }
    }
    LandlockPlan {
        read_only,
        read_write,
        list_only: vec![PathBuf::from("/")],
        hard: policy.compatibility() == Compatibility::HardRequirement,
        abi,
    }
}

/// Signals relayed to a sandbox's command (by init, the supervisor and `exec`).
pub const FORWARDED: [Signal; 7] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// The signals relayed to a sandbox's command (init forwards them to its child, the
/// supervisor and `exec` to theirs), plus SIGCHLD, which each of them waits for.
pub fn relayed_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set.add(Signal::SIGCHLD);
    set
}

/// Why a pty could not be had: the step and the errno.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct PtyError {
    /// The step (`open /dev/ptmx`, `grantpt`, ...).
    pub what: String,
    /// The errno.
    #[source]
    pub source: Errno,
}

/// A pty pair from the devpts of the mount namespace we are in: (master, slave, the
/// slave's path).
pub fn open_pty() -> Result<(OwnedFd, OwnedFd, String), PtyError> {
    use nix::fcntl::OFlag;
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    let err = |what: &str| {
        let what = what.to_string();
        move |source| PtyError { what, source }
    };
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(err("open /dev/ptmx"))?;
    grantpt(&master).map_err(err("grantpt"))?;
    unlockpt(&master).map_err(err("unlockpt"))?;
    let name = ptsname_r(&master).map_err(err("ptsname"))?;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&name)
        .map_err(|e| PtyError {
            what: format!("open {name}"),
            source: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        })?;
    Ok((master.into(), slave.into(), name))
}
