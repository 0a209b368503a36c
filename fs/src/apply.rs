//! The thin executor of a [`MountPlan`]: mount(2), mount_setattr(2), pivot_root(2).
//!
//! Runs in the sandbox's init between clone and exec: synchronous, no threads, no
//! logging. Every failure names the step and the path. It must not decide anything:
//! what to mount is the plan's job.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::plan::{MountOp, MountPlan};

/// A mount step that failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// Making `/` a slave mount failed.
    #[error("make / a slave mount: {0}")]
    MakeSlave(#[source] Errno),
    /// Creating a mount point failed.
    #[error("create {}: {source}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A mount(2) call failed.
    #[error("mount {what} on {}: {source}", path.display())]
    Mount {
        what: String,
        path: PathBuf,
        #[source]
        source: Errno,
    },
    /// Making a mount read-only failed.
    #[error("make {} read-only: {source}", path.display())]
    ReadOnly {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    /// pivot_root or detaching the old root failed.
    #[error("pivot_root into {}: {source}", path.display())]
    PivotRoot {
        path: PathBuf,
        #[source]
        source: Errno,
    },
}

/// Apply a whole plan: slave `/`, the pre-pivot steps, pivot_root, the post-pivot steps.
pub fn apply(plan: &MountPlan) -> Result<(), FsError> {
    apply_with(plan, || {})
}

/// [`apply`], calling `before_pivot` right before pivot_root (while the host's paths are
/// still there: init waits there for its network thread to be done with them).
pub fn apply_with(plan: &MountPlan, before_pivot: impl FnOnce()) -> Result<(), FsError> {
    // First, before any mount: nothing we do may propagate back to the host's mount
    // table, while host unmounts still propagate in (so a removed USB stick goes away).
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(FsError::MakeSlave)?;
    for op in &plan.before_pivot {
        run(op, &plan.root)?;
    }
    before_pivot();
    pivot(&plan.root)?;
    for op in &plan.after_pivot {
        run(op, Path::new("/"))?;
    }
    Ok(())
}

fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn create_err(path: &Path) -> impl FnOnce(std::io::Error) -> FsError + '_ {
    move |source| FsError::Create {
        path: path.to_path_buf(),
        source,
    }
}

fn mount_err(what: &str, path: &Path) -> impl FnOnce(Errno) -> FsError {
    let (what, path) = (what.to_string(), path.to_path_buf());
    move |source| FsError::Mount { what, path, source }
}

fn run(op: &MountOp, root: &Path) -> Result<(), FsError> {
    match op {
        MountOp::Mkdir { path, mode } => {
            let at = inside(root, path);
            // An existing directory (an image's /proc, /tmp, ...) is only a mount point
            // or keeps the image's mode: touching it would copy it up for nothing.
            if at.is_dir() {
                return Ok(());
            }
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(*mode)
                .create(&at)
                .map_err(create_err(&at))?;
            // The umask must not weaken /tmp's sticky 1777.
            std::fs::set_permissions(&at, std::fs::Permissions::from_mode(*mode))
                .map_err(create_err(&at))
        }
        MountOp::Touch { path } => {
            let at = inside(root, path);
            if let Some(parent) = at.parent() {
                std::fs::create_dir_all(parent).map_err(create_err(parent))?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&at)
                .map(drop)
                .map_err(create_err(&at))
        }
        MountOp::Symlink { target, path } => {
            let at = inside(root, path);
            std::os::unix::fs::symlink(target, &at).map_err(create_err(&at))
        }
        MountOp::Tmpfs { path, mode, noexec } => {
            let at = inside(root, path);
            let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
            if *noexec {
                flags |= MsFlags::MS_NOEXEC;
            }
            let data = format!("mode={mode:o}");
            mount(
                Some("tmpfs"),
                &at,
                Some("tmpfs"),
                flags,
                Some(data.as_str()),
            )
            .map_err(mount_err("tmpfs", &at))
        }
        MountOp::Bind {
            src,
            path,
            readonly,
            device,
        } => {
            let at = inside(root, path);
            if !at.exists() {
                // An /etc secret that is a broken link, or a mount point we could not
                // make: skip rather than fail, the path is not visible either way.
                return Ok(());
            }
            mount(
                Some(src),
                &at,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(mount_err(&src.display().to_string(), &at))?;
            let mut attrs = MOUNT_ATTR_NOSUID;
            if !device {
                attrs |= MOUNT_ATTR_NODEV;
            }
            if *readonly {
                attrs |= MOUNT_ATTR_RDONLY;
            }
            set_attrs(&at, attrs, true)
        }
        MountOp::Proc { path } => {
            let at = inside(root, path);
            let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            mount(Some("proc"), &at, Some("proc"), flags, None::<&str>)
                .map_err(mount_err("proc", &at))
        }
        MountOp::Devpts { path } => {
            let at = inside(root, path);
            let flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
            mount(
                Some("devpts"),
                &at,
                Some("devpts"),
                flags,
                Some("newinstance,ptmxmode=0666,mode=0620"),
            )
            .map_err(mount_err("devpts", &at))
        }
        MountOp::MaskFile { path } => {
            if !path.exists() {
                return Ok(());
            }
            mount(
                Some("/dev/null"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(mount_err("/dev/null", path))
        }
        MountOp::MaskDir { path } => {
            if !path.is_dir() {
                return Ok(());
            }
            let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
            mount(
                Some("tmpfs"),
                path,
                Some("tmpfs"),
                flags,
                Some("size=0,mode=0555"),
            )
            .map_err(mount_err("tmpfs", path))
        }
        MountOp::Overlay {
            lowers,
            upper,
            work,
            path,
        } => overlay(lowers, upper, work, &inside(root, path)),
        MountOp::ReadOnly { path } => {
            if !path.exists() {
                return Ok(());
            }
            if path != Path::new("/") {
                // Bind onto itself so the read-only flag applies to this subtree only.
                mount(
                    Some(path),
                    path,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(mount_err("bind", path))?;
            }
            // `/` alone: the mounts on top of it (/sandbox, /tmp, ...) keep their mode.
            set_attrs(
                path,
                MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID,
                path != Path::new("/"),
            )
        }
    }
}

/// Mount the overlay; where the kernel refuses (or `OPENSHELL_NO_OVERLAY=1`), copy the
/// layers into `upper` and bind that instead, so the sandbox still gets a private root.
fn overlay(lowers: &[PathBuf], upper: &Path, work: &Path, at: &Path) -> Result<(), FsError> {
    let join = |ps: &[PathBuf]| {
        ps.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    };
    let data = format!(
        "lowerdir={},upperdir={},workdir={},userxattr",
        join(lowers),
        upper.display(),
        work.display()
    );
    let forced_copy = std::env::var_os("OPENSHELL_NO_OVERLAY").is_some_and(|v| v == "1");
    if !forced_copy {
        match mount(
            Some("overlay"),
            at,
            Some("overlay"),
            MsFlags::MS_NOSUID,
            Some(data.as_str()),
        ) {
            Ok(()) => return Ok(()),
            Err(Errno::EPERM | Errno::EINVAL | Errno::ENODEV | Errno::EOPNOTSUPP) => {}
            Err(source) => {
                return Err(FsError::Mount {
                    what: "overlay".into(),
                    path: at.to_path_buf(),
                    source,
                });
            }
        }
    }
    crate::flatten::flatten(lowers, upper).map_err(|source| FsError::Create {
        path: upper.to_path_buf(),
        source,
    })?;
    mount(
        Some(upper),
        at,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(mount_err("copied root", at))
}

/// Swap the root: the new root is `root`; the old one is detached and forgotten.
fn pivot(root: &Path) -> Result<(), FsError> {
    let err = |source| FsError::PivotRoot {
        path: root.to_path_buf(),
        source,
    };
    nix::unistd::chdir(root).map_err(err)?;
    // pivot_root(".", ".") stacks the old root under the new one at "/"; detaching "."
    // then removes it without needing a directory to park it in.
    nix::unistd::pivot_root(".", ".").map_err(err)?;
    umount2(".", MntFlags::MNT_DETACH).map_err(err)?;
    nix::unistd::chdir("/").map_err(err)
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const AT_RECURSIVE: libc::c_uint = 0x8000;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Set mount attributes on a mount or a whole subtree (mount_setattr, Linux 5.12); fall back to a
/// classic bind remount of the top mount where the syscall is missing.
fn set_attrs(path: &Path, attrs: u64, recursive: bool) -> Result<(), FsError> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| FsError::ReadOnly {
        path: path.to_path_buf(),
        source: Errno::EINVAL,
    })?;
    let attr = MountAttr {
        attr_set: attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call, `attr` is a
    // properly sized, initialised `struct mount_attr` and its size is passed with it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            c.as_ptr(),
            if recursive { AT_RECURSIVE } else { 0 },
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let errno = Errno::last();
    if errno != Errno::ENOSYS {
        return Err(FsError::ReadOnly {
            path: path.to_path_buf(),
            source: errno,
        });
    }
    remount_classic(path, attrs)
}

fn remount_classic(path: &Path, attrs: u64) -> Result<(), FsError> {
    // In a user namespace the flags the host locked (nosuid, nodev, noexec, atime) must
    // be kept on remount or the kernel refuses it: start from the current ones.
    let current = nix::sys::statvfs::statvfs(path).map_err(|source| FsError::ReadOnly {
        path: path.to_path_buf(),
        source,
    })?;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT;
    let have = current.flags();
    use nix::sys::statvfs::FsFlags;
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if have.contains(fs) {
            flags |= ms;
        }
    }
    if attrs & MOUNT_ATTR_RDONLY != 0 {
        flags |= MsFlags::MS_RDONLY;
    }
    if attrs & MOUNT_ATTR_NOSUID != 0 {
        flags |= MsFlags::MS_NOSUID;
    }
    if attrs & MOUNT_ATTR_NODEV != 0 {
        flags |= MsFlags::MS_NODEV;
    }
    mount(None::<&str>, path, None::<&str>, flags, None::<&str>).map_err(|source| {
        FsError::ReadOnly {
            path: path.to_path_buf(),
            source,
        }
    })
}
