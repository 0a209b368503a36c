//! What this kernel and host offer, probed for real (for `openshell doctor`).
//!
//! Each probe that needs a namespace runs in a forked child, so nothing it does touches
//! the caller. Every check says how to fix what is missing.

use std::path::Path;

use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, fork};

/// Outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Level {
    /// Present and working.
    Ok,
    /// Missing, but openshell degrades (says how).
    Warn,
    /// Missing; sandboxes cannot start.
    Fail,
}

/// One line of `doctor`.
#[derive(Debug, Clone)]
pub struct Check {
    /// Short name.
    pub name: &'static str,
    /// Result.
    pub level: Level,
    /// What was found.
    pub detail: String,
    /// How to fix it (empty when fine).
    pub fix: String,
}

fn check(
    name: &'static str,
    level: Level,
    detail: impl Into<String>,
    fix: impl Into<String>,
) -> Check {
    Check {
        name,
        level,
        detail: detail.into(),
        fix: fix.into(),
    }
}

/// Run `f` in a forked child; true when it exits 0.
fn in_child(f: impl FnOnce() -> bool) -> bool {
    if let Err(e) = crate::threads::check("doctor probe: fork") {
        eprintln!("openshell: {e}");
        return false;
    }
    // SAFETY: doctor runs single-threaded (checked above); the child only makes
    // syscalls and _exits.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let ok = f();
            // SAFETY: leave the child without unwinding into the parent's state.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        Ok(ForkResult::Parent { child }) => {
            matches!(waitpid(child, None), Ok(WaitStatus::Exited(_, 0)))
        }
        Err(_) => false,
    }
}

/// Enter a new user namespace (plus `extra` namespaces) mapped to ourselves as root.
fn enter_userns(extra: libc::c_int) -> bool {
    let (uid, gid) = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    // SAFETY: unshare with flags only.
    if unsafe { libc::unshare(libc::CLONE_NEWUSER | extra) } != 0 {
        return false;
    }
    std::fs::write("/proc/self/setgroups", "deny").is_ok()
        && std::fs::write("/proc/self/uid_map", format!("0 {uid} 1")).is_ok()
        && std::fs::write("/proc/self/gid_map", format!("0 {gid} 1")).is_ok()
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Probe everything.
pub fn probe() -> Vec<Check> {
    let mut out = Vec::new();
    let platform = crate::platform::detect(Path::new("/"));
    out.push(match platform {
        crate::platform::Platform::Wsl1 => check(
            "platform",
            Level::Fail,
            platform.describe(),
            platform.userns_fix(""),
        ),
        _ => check("platform", Level::Ok, platform.describe(), ""),
    });
    // User namespaces.
    let userns = in_child(|| enter_userns(0));
    out.push(if userns {
        check("user namespaces", Level::Ok, "unprivileged user namespaces work", "")
    } else {
        let mut fix = String::from("sysctl -w user.max_user_namespaces=15000");
        if read("/proc/sys/kernel/unprivileged_userns_clone").as_deref() == Some("0") {
            fix = "sysctl -w kernel.unprivileged_userns_clone=1".into();
        }
        if read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() == Some("1") {
            fix = "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0 (or an AppArmor profile for openshell)".into();
        }
        let fix = platform.userns_fix(&fix);
        check("user namespaces", Level::Fail, "cannot create a user namespace", fix)
    });
    // Landlock.
    let abi = openshell_fs::landlock::usable_abi();
    let missing = openshell_fs::landlock::gaps(abi);
    out.push(match abi {
        0 => check(
            "landlock",
            Level::Warn,
            "not available: best_effort policies run without filesystem rules, hard_requirement ones refuse",
            platform.landlock_fix("boot with lsm=...,landlock (Linux >= 5.13)"),
        ),
        _ if missing.is_empty() => check("landlock", Level::Ok, format!("ABI {abi}"), ""),
        _ => check(
            "landlock",
            Level::Warn,
            format!("ABI {abi}: not enforced: {}", missing.join(", ")),
            platform.landlock_fix("Linux >= 6.12 for scoping"),
        ),
    });
    // Seccomp.
    // SAFETY: prctl query with integer arguments.
    let seccomp = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) } >= 0;
    out.push(if seccomp {
        check("seccomp", Level::Ok, "filter mode available", "")
    } else {
        check(
            "seccomp",
            Level::Fail,
            "not available",
            "a kernel with CONFIG_SECCOMP_FILTER",
        )
    });
    // Overlayfs in a user namespace (for image roots).
    let overlay = userns && in_child(overlay_probe);
    out.push(if overlay {
        check("overlayfs in userns", Level::Ok, "mountable rootless", "")
    } else {
        check(
            "overlayfs in userns",
            Level::Warn,
            "cannot mount: image roots fall back to a private copy",
            "Linux >= 5.11 with the overlay module",
        )
    });
    // nftables in a user namespace (for the proxy redirect).
    let nft_bin = ["/usr/sbin/nft", "/sbin/nft"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    out.push(match nft_bin {
        None => check(
            "nftables in userns",
            Level::Warn,
            "nft not installed: proxy-bypass connections get 'network unreachable' instead of a logged refusal",
            "apt install nftables",
        ),
        Some(bin) if userns && in_child(|| nft_probe(bin)) => {
            check("nftables in userns", Level::Ok, "rules can be loaded rootless", "")
        }
        Some(_) => check(
            "nftables in userns",
            Level::Warn,
            "cannot load rules in a user namespace",
            "a kernel with nf_tables (modprobe nf_tables)",
        ),
    });
    // Subordinate ids.
    let f = crate::idmap::facts();
    out.push(match (f.euid, f.helpers, f.subuid) {
        (0, _, _) => check(
            "id mapping",
            Level::Ok,
            "root: sandbox ids map to an unprivileged range",
            "",
        ),
        (_, true, Some((s, c))) => check(
            "id mapping",
            Level::Ok,
            format!("newuidmap + /etc/subuid range {s}+{c}: several ids inside"),
            "",
        ),
        (_, false, _) => check(
            "id mapping",
            Level::Warn,
            "newuidmap missing: only one id exists inside (commands still run as the sandbox user)",
            "apt install uidmap",
        ),
        (_, true, None) => check(
            "id mapping",
            Level::Warn,
            "no /etc/subuid range for this user: only one id exists inside",
            format!(
                "usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {}",
                whoami()
            ),
        ),
    });
    out
}

fn whoami() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map_or_else(|| "$USER".into(), |u| u.name)
}

fn overlay_probe() -> bool {
    if !enter_userns(libc::CLONE_NEWNS) {
        return false;
    }
    let base = std::env::temp_dir().join(format!("openshell-doctor-{}", std::process::id()));
    let dirs = ["lower", "upper", "work", "merged"].map(|d| base.join(d));
    let ok = dirs.iter().all(|d| std::fs::create_dir_all(d).is_ok()) && {
        let data = format!(
            "lowerdir={},upperdir={},workdir={},userxattr",
            dirs[0].display(),
            dirs[1].display(),
            dirs[2].display()
        );
        nix::mount::mount(
            Some("overlay"),
            &dirs[3],
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(data.as_str()),
        )
        .is_ok()
    };
    let _ = nix::mount::umount2(&dirs[3], nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir_all(&base);
    ok
}

fn nft_probe(bin: &str) -> bool {
    if !enter_userns(libc::CLONE_NEWNET) {
        return false;
    }
    std::process::Command::new(bin)
        .args(["add", "table", "inet", "openshell_doctor"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
