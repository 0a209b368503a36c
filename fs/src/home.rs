//! Per-user directories when the environment does not name one: `$HOME/<rel>`, else the
//! account's home directory from the user database, else `/tmp/<name>-<uid>` only while
//! it is a directory of the caller's own that nobody else can write. Never a shared path
//! such as `/tmp/.local/...`, which another local user could create first and then read
//! or change what we keep there (sandbox state, image layers).

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::PathBuf;

/// Where a per-user directory `rel` (e.g. `.local/state/openshell`) lives; `tmp_name`
/// names the last-resort directory under /tmp (e.g. `openshell-state`).
pub fn per_user(rel: &str, tmp_name: &str) -> PathBuf {
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(home).join(rel);
    }
    let uid = nix::unistd::geteuid();
    if let Ok(Some(user)) = nix::unistd::User::from_uid(uid) {
        return user.dir.join(rel);
    }
    private_tmp(tmp_name, uid.as_raw())
}

/// `/tmp/<name>-<uid>`, made 0700 if missing, used only while it is a directory owned by
/// `uid` that only its owner can write; otherwise a path that cannot be created, after
/// saying why.
pub fn private_tmp(name: &str, uid: u32) -> PathBuf {
    let dir = PathBuf::from(format!("/tmp/{name}-{uid}"));
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() && m.uid() == uid && m.mode() & 0o022 == 0 => dir,
        _ => {
            eprintln!(
                "openshell: neither HOME nor a home directory is known, and {} is not a private directory of yours: set HOME (or OPENSHELL_STATE_DIR / OPENSHELL_IMAGE_DIR)",
                dir.display()
            );
            PathBuf::from(format!("/proc/self/{name}-unavailable"))
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_tmp_dir_not_ours_is_refused() {
        // A uid that is not ours: the directory made (or found) is not owned by it.
        let fake = 4_000_000_000u32;
        let got = super::private_tmp("openshell-test", fake);
        let _ = std::fs::remove_dir(format!("/tmp/openshell-test-{fake}"));
        assert_eq!(
            got,
            std::path::PathBuf::from("/proc/self/openshell-test-unavailable")
        );
    }

    #[test]
    fn our_own_private_tmp_dir_is_used_and_a_shared_one_is_not() {
        let uid = nix::unistd::geteuid().as_raw();
        let name = format!("openshell-test-{}", std::process::id());
        let dir = std::path::PathBuf::from(format!("/tmp/{name}-{uid}"));
        assert_eq!(super::private_tmp(&name, uid), dir);
        // Made writable by others (as an attacker's pre-made directory would be).
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let got = super::private_tmp(&name, uid);
        let _ = std::fs::remove_dir(&dir);
        assert_ne!(got, dir);
    }
}
