//! Per-run scratch space, on tmpfs when there is one of ours, for the files a sandbox
//! only needs while init sets it up: the mount point of its root, the generated /etc
//! files and the CA files (bind sources: once bound, the mounts keep them alive). In a
//! state directory on ext4 these ten-odd small files per run made the inode allocator
//! (`recently_deleted`) the largest cost of a start after many runs; tmpfs has no such
//! cost. Where: `$XDG_RUNTIME_DIR/openshell`, else `/run/openshell` (root), else
//! `/dev/shm/openshell-<uid>` — the first on tmpfs, with room to spare, that is a real
//! directory owned by us and that nobody else can write; else the sandbox's directory.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// One run's scratch directory (`<name>-<pid>-<token>`); removed when dropped (unless it
/// is the sandbox's own), or by a later run once its process is gone.
#[derive(Debug)]
pub struct Scratch {
    /// Where the files go.
    pub path: PathBuf,
    own: bool,
}

impl Scratch {
    /// A fresh scratch directory for sandbox `name` (whose directory is `sandbox_dir`);
    /// `traversable`: root's sandboxes, whose directories are 0711.
    pub fn create(sandbox_dir: &Path, name: &str, traversable: bool) -> Result<Self, String> {
        let mode = if traversable { 0o711 } else { 0o700 };
        if let Some(root) = root(mode) {
            sweep(&root);
            let pid = std::process::id();
            for attempt in 0..8u32 {
                let p = root.join(format!("{name}-{pid}-{:08x}", token(attempt)));
                match DirBuilder::new().mode(mode).create(&p) {
                    Ok(()) => {
                        let _ = fs::set_permissions(&p, fs::Permissions::from_mode(mode));
                        let s = Self { path: p, own: true };
                        if s.subdirs().is_ok() {
                            return Ok(s);
                        }
                        break; // dropped (removed); the sandbox's directory will do
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                    Err(_) => break,
                }
            }
        }
        let s = Self {
            path: sandbox_dir.to_path_buf(),
            own: false,
        };
        s.subdirs()?;
        Ok(s)
    }

    fn subdirs(&self) -> Result<(), String> {
        for sub in ["rootfs", "etc"] {
            let p = self.path.join(sub);
            match fs::create_dir(&p) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(format!("create {}: {e}", p.display()));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Mount point of the sandbox's root.
    pub fn rootfs(&self) -> PathBuf {
        self.path.join("rootfs")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.own {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Remove what runs killed outright (SIGKILL) left behind: directories named after a
/// process that no longer exists. A live process with that pid (reused or not) keeps its
/// directory: never remove what may be in use.
fn sweep(root: &Path) {
    let Ok(rd) = fs::read_dir(root) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let mut parts = name.rsplitn(3, '-');
        let (Some(_token), Some(pid)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<i32>() else {
            continue;
        };
        if pid > 0
            && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None)
                == Err(nix::errno::Errno::ESRCH)
        {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// The user's private runtime directory (the scratch root: tmpfs, ours, 0700), for
/// things that live as long as processes do (the user-namespace holder's socket).
pub fn runtime_dir() -> Option<PathBuf> {
    root(0o700)
}

/// The first usable scratch root, created if missing.
fn root(mode: u32) -> Option<PathBuf> {
    let uid = nix::unistd::geteuid().as_raw();
    let mut candidates = Vec::new();
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from)
        && x.is_absolute()
    {
        candidates.push(x.join("openshell"));
    }
    if uid == 0 {
        candidates.push(PathBuf::from("/run/openshell"));
    }
    candidates.push(PathBuf::from(format!("/dev/shm/openshell-{uid}")));
    candidates.into_iter().find(|c| {
        // Only on tmpfs (without systemd, /run may well be on disk), and only with room
        // to spare (a small /dev/shm, as in containers or WSL, may be nearly full).
        if !c.parent().is_some_and(|p| on_tmpfs(p) && has_room(p)) {
            return false;
        }
        let _ = DirBuilder::new().mode(mode).create(c);
        ours(c, uid)
    })
}

/// At least 16 MiB free: a run writes ~0.3 MB there (the CA bundle is most of it).
fn has_room(p: &Path) -> bool {
    nix::sys::statvfs::statvfs(p)
        .is_ok_and(|v| v.blocks_available().saturating_mul(v.fragment_size()) >= 16 << 20)
}

fn on_tmpfs(p: &Path) -> bool {
    nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

/// A real directory (not a symlink) owned by `uid` that no one else may write to.
fn ours(p: &Path, uid: u32) -> bool {
    fs::symlink_metadata(p)
        .is_ok_and(|m| m.file_type().is_dir() && m.uid() == uid && m.mode() & 0o022 == 0)
}

/// A name part unlikely to collide (collisions are retried anyway).
fn token(attempt: u32) -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    t ^ std::process::id().rotate_left(16) ^ attempt.wrapping_mul(0x9e37_79b9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_others_can_write_is_not_ours() {
        let d = std::env::temp_dir().join(format!("scratch-test-{}", std::process::id()));
        fs::create_dir(&d).unwrap();
        let uid = nix::unistd::geteuid().as_raw();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
        assert!(ours(&d, uid));
        fs::set_permissions(&d, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(!ours(&d, uid));
        let link = d.with_extension("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
        assert!(!ours(&link, uid), "a symlink is never taken");
        assert!(!ours(&d, uid + 1), "someone else's directory is not ours");
        fs::remove_file(&link).unwrap();
        fs::remove_dir(&d).unwrap();
    }

    #[test]
    fn leftovers_of_dead_processes_are_swept_live_ones_kept() {
        let root = std::env::temp_dir().join(format!("scratch-sweep-{}", std::process::id()));
        fs::create_dir(&root).unwrap();
        // A pid that cannot exist (above pid_max's hard limit), and our own.
        let dead = root.join("a-b-4194305-00000001");
        let live = root.join(format!("a-b-{}-00000002", std::process::id()));
        let other = root.join("unrelated");
        for d in [&dead, &live, &other] {
            fs::create_dir(d).unwrap();
        }
        sweep(&root);
        assert!(!dead.exists(), "a dead run's directory stays");
        assert!(live.exists() && other.exists());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn scratch_is_made_and_removed() {
        let d = std::env::temp_dir().join(format!("scratch-sb-{}", std::process::id()));
        fs::create_dir(&d).unwrap();
        let s = Scratch::create(&d, "t", false).unwrap();
        assert!(s.rootfs().is_dir() && s.path.join("etc").is_dir());
        let p = s.path.clone();
        let own = s.own;
        drop(s);
        assert_eq!(p.exists(), !own, "an own scratch dir goes with the run");
        fs::remove_dir_all(&d).unwrap();
    }
}
