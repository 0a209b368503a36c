//! Landlock: the policy's filesystem rules as a ruleset, plus kernel capability checks.
//!
//! The supervisor calls [`kernel_abi`] and [`gaps`] before anything starts (so
//! `best_effort` can say what it will not enforce and `hard_requirement` can refuse
//! early); each sandboxed child calls [`restrict_self`] just before seccomp and exec.

use std::path::PathBuf;

use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible, PathBeneath, PathFd, RestrictionStatus,
    Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};

/// The ABI whose rights and scopes we ask for: ABI 6 adds scoping (abstract unix
/// sockets, signals); ABI 7 only adds audit logging, which needs no rule of ours.
pub const TARGET_ABI: i32 = 6;

/// The rules for one sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LandlockPlan {
    /// Readable and executable beneath.
    pub read_only: Vec<PathBuf>,
    /// Fully accessible beneath.
    pub read_write: Vec<PathBuf>,
    /// Directories whose entries may be listed (not read) beneath: `/`, so `ls /`
    /// works without granting the files under it.
    pub list_only: Vec<PathBuf>,
    /// Refuse to run unless everything is enforced (`hard_requirement`).
    pub hard: bool,
    /// The ABI to build the ruleset for: [`usable_abi`] at plan time.
    pub abi: i32,
}

/// Landlock could not be applied as asked.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    /// Building or applying the ruleset failed.
    #[error("landlock: {0}")]
    Ruleset(#[from] landlock::RulesetError),
    /// `hard_requirement` and the kernel cannot enforce everything.
    #[error("landlock is {0:?} on this kernel and the policy says hard_requirement")]
    NotEnforced(RulesetStatus),
}

/// The kernel's Landlock ABI version; 0 when Landlock is missing or disabled.
pub fn kernel_abi() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a NULL attr and size 0 this call only queries the ABI version; it
    // takes no pointers we own and returns a number or -1.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    i32::try_from(v).unwrap_or(0).max(0)
}

/// The ABI sandboxes use: the kernel's, capped by `OPENSHELL_LANDLOCK_MAX_ABI` when set
/// (to see how a policy behaves on an older kernel; it can only lower, never raise).
pub fn usable_abi() -> i32 {
    let cap = std::env::var("OPENSHELL_LANDLOCK_MAX_ABI")
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(i32::MAX);
    kernel_abi().min(cap).max(0)
}

/// What this kernel cannot enforce compared with [`TARGET_ABI`], in words.
pub fn gaps(abi: i32) -> Vec<&'static str> {
    let mut out = Vec::new();
    if abi < 1 {
        out.push("all filesystem rules (Landlock unavailable)");
        return out;
    }
    let checks: [(i32, &str); 5] = [
        (2, "cross-directory rename/link control (refer, ABI 2)"),
        (3, "truncate control (ABI 3)"),
        (5, "device ioctl control (ABI 5)"),
        (6, "abstract unix socket scoping (ABI 6)"),
        (6, "signal scoping (ABI 6)"),
    ];
    out.extend(
        checks
            .iter()
            .filter(|(need, _)| abi < *need)
            .map(|(_, what)| *what),
    );
    out
}

fn abi_of(v: i32) -> ABI {
    ABI::from(v.min(TARGET_ABI))
}

/// Restrict the calling process (and its future children) to the plan's paths.
/// Paths that do not exist in the sandbox are skipped: nothing there to reach.
/// Returns `None` when Landlock is unavailable (best_effort: reported before start).
pub fn restrict_self(plan: &LandlockPlan) -> Result<Option<RestrictionStatus>, LandlockError> {
    if plan.abi < 1 {
        return Ok(None);
    }
    let abi = abi_of(plan.abi);
    let level = if plan.hard {
        CompatLevel::HardRequirement
    } else {
        CompatLevel::BestEffort
    };
    let mut base = Ruleset::default()
        .set_compatibility(level)
        .handle_access(AccessFs::from_all(abi))?;
    let scopes = Scope::from_all(abi);
    if !scopes.is_empty() {
        base = base.scope(scopes)?;
    }
    let mut ruleset = base.create()?;
    for (paths, rights) in [
        (&plan.list_only, AccessFs::ReadDir.into()),
        (&plan.read_only, AccessFs::from_read(abi)),
        (&plan.read_write, AccessFs::from_all(abi)),
    ] {
        for path in paths {
            let Ok(fd) = PathFd::new(path) else { continue };
            let is_dir = std::fs::metadata(path).map(|m| m.is_dir()).unwrap_or(false);
            let access = if is_dir {
                rights
            } else {
                rights & AccessFs::from_file(abi)
            };
            ruleset = ruleset.add_rule(PathBeneath::new(fd, access))?;
        }
    }
    let status = ruleset.restrict_self()?;
    if plan.hard && status.ruleset != RulesetStatus::FullyEnforced {
        return Err(LandlockError::NotEnforced(status.ruleset));
    }
    Ok(Some(status))
}

#[cfg(test)]
mod tests {
    use super::gaps;

    #[test]
    fn gaps_by_abi() {
        assert!(gaps(7).is_empty());
        assert!(gaps(6).is_empty());
        assert_eq!(gaps(5).len(), 2);
        assert_eq!(gaps(1).len(), 5);
        assert_eq!(gaps(0), vec!["all filesystem rules (Landlock unavailable)"]);
    }
}
