//! The thin executor of a [`MountPlan`]: mount(2), mount_setattr(2), pivot_root(2).
//!
//! Runs in the sandbox's init between clone and exec: synchronous, no threads, no
//! logging. Every failure names the step and the path. It must not decide anything:
//! what to mount is the plan's job.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::fcntl::{OFlag, ResolveFlag};
use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::inroot;
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
    /// A mount destination that the image's symlinks lead to the root itself.
    #[error(
        "{} leads to the sandbox's root through a symlink of the image: a mount there would cover the whole root (its /proc, /dev, /tmp and /sandbox); mount somewhere else or fix the image",
        path.display()
    )]
    OntoRoot { path: PathBuf },
}

/// What applying a plan had to do differently from the plan (for `-v` and `sandbox
/// explain`: a fallback is never silent).
#[derive(Debug, Default)]
pub struct Applied {
    /// One sentence per fallback taken.
    pub notes: Vec<String>,
}

/// Set by [`overlay`] when it copied the layers instead of mounting them.
static ROOT_COPIED: AtomicBool = AtomicBool::new(false);

/// Apply a whole plan: slave `/`, the pre-pivot steps, pivot_root, the post-pivot steps.
pub fn apply(plan: &MountPlan) -> Result<Applied, FsError> {
    apply_with(plan, || {})
}

/// [`apply`], calling `before_pivot` right before pivot_root (while the host's paths are
/// still there: init waits there for its network thread to be done with them).
pub fn apply_with(plan: &MountPlan, before_pivot: impl FnOnce()) -> Result<Applied, FsError> {
    ROOT_COPIED.store(false, Ordering::Relaxed);
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
    let mut root = Root::new(&plan.root);
    for op in &plan.before_pivot {
        run(op, &mut root)?;
    }
    drop(root);
    before_pivot();
    pivot(&plan.root)?;
    let mut root = Root::new(Path::new("/"));
    for op in &plan.after_pivot {
        run(op, &mut root)?;
    }
    drop(root);
    let mut applied = Applied::default();
    if ROOT_COPIED.load(Ordering::Relaxed) {
        applied.notes.push(
            "overlayfs: the image root is a private copy of its layers (the kernel refused overlayfs here, or OPENSHELL_NO_OVERLAY=1): slower to start, more disk".into(),
        );
    }
    Ok(applied)
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

fn in_root(path: &Path) -> impl FnOnce(inroot::InRootError) -> FsError {
    let path = path.to_path_buf();
    move |e| FsError::Create {
        path,
        source: e.into(),
    }
}

/// The root's descriptor, kept from step to step: every path below it is resolved
/// inside it (the root may be an image's, whose symlinks point anywhere). Mounts below
/// the root are seen through it (a path walk crosses mount points); a mount on the root
/// itself is not (the descriptor still names what is under it), so a step that mounts
/// there makes it reopen.
struct Root<'a> {
    path: &'a Path,
    fd: Option<OwnedFd>,
}

impl<'a> Root<'a> {
    fn new(path: &'a Path) -> Self {
        Self { path, fd: None }
    }

    fn fd(&mut self) -> Result<BorrowedFd<'_>, FsError> {
        let fd: &OwnedFd = match &mut self.fd {
            Some(fd) => fd,
            slot @ None => slot.insert(inroot::open_root(self.path).map_err(in_root(self.path))?),
        };
        Ok(fd.as_fd())
    }

    /// After `op`: forget the descriptor if `op` mounted on the root itself.
    fn after(&mut self, op: &MountOp) {
        let on_root = match op {
            MountOp::Mkdir { .. } | MountOp::Touch { .. } | MountOp::Symlink { .. } => false,
            MountOp::Overlay { .. } => true,
            MountOp::Tmpfs { path, .. }
            | MountOp::Bind { path, .. }
            | MountOp::Proc { path }
            | MountOp::Devpts { path }
            | MountOp::MaskFile { path }
            | MountOp::MaskDir { path }
            | MountOp::ReadOnly { path } => inroot::rel(path) == Path::new("."),
        };
        if on_root {
            self.fd = None;
        }
    }
}

/// One of the sandbox's own mount points ([`crate::plan::OWN_MOUNT_POINTS`]): never
/// through a symlink.
fn exact(path: &Path) -> bool {
    crate::plan::OWN_MOUNT_POINTS
        .iter()
        .any(|p| Path::new(p) == path)
}

/// The existing directory `path` inside the root, as an `O_PATH` descriptor.
fn dir_in(root: &mut Root, path: &Path) -> Result<OwnedFd, FsError> {
    let r = root.fd()?;
    let at = if exact(path) {
        inroot::dir_exact(r, path)
    } else {
        inroot::dir(r, path)
    }
    .map_err(in_root(path))?;
    not_root(&at, r, path)?;
    Ok(at)
}

/// `at`, reached from `path` (which may go through the image's symlinks), must not be
/// the root itself unless `path` names it: a mount there would cover the whole root.
fn not_root(at: &OwnedFd, root: BorrowedFd<'_>, path: &Path) -> Result<(), FsError> {
    if inroot::rel(path) == Path::new(".") {
        return Ok(());
    }
    let same = match (nix::sys::stat::fstat(at), nix::sys::stat::fstat(root)) {
        (Ok(a), Ok(r)) => a.st_dev == r.st_dev && a.st_ino == r.st_ino,
        _ => false,
    };
    if same {
        return Err(FsError::OntoRoot { path: path.into() });
    }
    Ok(())
}

fn mount_on(
    src: Option<&Path>,
    target: &OwnedFd,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
    shown: &Path,
) -> Result<(), FsError> {
    let what = src.map_or_else(
        || fstype.unwrap_or("").to_string(),
        |s| s.display().to_string(),
    );
    mount(src, &inroot::fd_path(target), fstype, flags, data).map_err(mount_err(&what, shown))
}

fn run(op: &MountOp, root: &mut Root) -> Result<(), FsError> {
    let done = step(op, root);
    root.after(op);
    done
}

fn step(op: &MountOp, root: &mut Root) -> Result<(), FsError> {
    match op {
        MountOp::Mkdir { path, mode } => {
            let r = root.fd()?;
            // An existing directory (an image's /proc, /tmp, ...) is only a mount point
            // or keeps the image's mode: touching it would copy it up for nothing.
            if exact(path) {
                inroot::mkdir_exact(r, path, *mode)
            } else {
                inroot::mkdir_all(r, path, *mode)
            }
            .map(drop)
            .map_err(in_root(path))
        }
        MountOp::Touch { path } => {
            let r = root.fd()?;
            inroot::touch(r, path).map(drop).map_err(in_root(path))
        }
        MountOp::Symlink { target, path } => {
            let r = root.fd()?;
            inroot::symlink(r, target, path).map_err(in_root(path))
        }
        MountOp::Tmpfs {
            path,
            mode,
            noexec,
            size,
        } => {
            let at = dir_in(root, path)?;
            let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
            if *noexec {
                flags |= MsFlags::MS_NOEXEC;
            }
            let data = format!("mode={mode:o},size={size}");
            mount_on(
                Some(Path::new("tmpfs")),
                &at,
                Some("tmpfs"),
                flags,
                Some(&data),
                path,
            )
        }
        MountOp::Bind {
            src,
            path,
            readonly,
            device,
        } => {
            let r = root.fd()?;
            let found = if exact(path) {
                inroot::dir_exact(r, path).map_err(in_root(path))?;
                inroot::open_with(r, path, OFlag::O_PATH, ResolveFlag::RESOLVE_NO_SYMLINKS)
            } else {
                inroot::open_in(r, path, OFlag::O_PATH)
            };
            let at = match found {
                Ok(fd) => fd,
                // An /etc secret that is a broken link, or a file the host does not
                // have: the path is not visible either way.
                Err(Errno::ENOENT) => return Ok(()),
                Err(e) => return Err(mount_err(&src.display().to_string(), path)(e)),
            };
            not_root(&at, r, path)?;
            mount_on(
                Some(src),
                &at,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None,
                path,
            )?;
            let mut attrs = MOUNT_ATTR_NOSUID;
            if !device {
                attrs |= MOUNT_ATTR_NODEV;
            }
            if *readonly {
                attrs |= MOUNT_ATTR_RDONLY;
            }
            // The descriptor taken after the mount is the new mount's root.
            if inroot::rel(path) == Path::new(".") {
                root.fd = None;
            }
            let r = root.fd()?;
            let mounted = inroot::open_in(r, path, OFlag::O_PATH)
                .map_err(mount_err(&src.display().to_string(), path))?;
            set_attrs(&mounted, path, attrs, true)
        }
        MountOp::Proc { path } => {
            // Exactly here, not where an image's symlink points: the supervisor looks
            // for the sandbox's procfs at this path.
            let at = dir_in(root, path)?;
            let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
            mount_on(
                Some(Path::new("proc")),
                &at,
                Some("proc"),
                flags,
                None,
                path,
            )
        }
        MountOp::Devpts { path } => {
            let at = dir_in(root, path)?;
            let flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
            mount_on(
                Some(Path::new("devpts")),
                &at,
                Some("devpts"),
                flags,
                Some("newinstance,ptmxmode=0666,mode=0620"),
                path,
            )
        }
        MountOp::MaskFile { path } => {
            let r = root.fd()?;
            let Ok(at) = inroot::open_in(r, path, OFlag::O_PATH) else {
                return Ok(());
            };
            mount_on(
                Some(Path::new("/dev/null")),
                &at,
                None,
                MsFlags::MS_BIND,
                None,
                path,
            )
        }
        MountOp::MaskDir { path } => {
            let r = root.fd()?;
            let Ok(at) = inroot::dir(r, path) else {
                return Ok(());
            };
            not_root(&at, r, path)?;
            let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
            mount_on(
                Some(Path::new("tmpfs")),
                &at,
                Some("tmpfs"),
                flags,
                Some("size=0,mode=0555"),
                path,
            )
        }
        MountOp::Overlay {
            lowers,
            upper,
            work,
            path,
        } => {
            // Only ever the root itself, a directory of ours.
            let at = root.path.join(path.strip_prefix("/").unwrap_or(path));
            std::fs::create_dir_all(&at).map_err(create_err(&at))?;
            overlay(lowers, upper, work, &at)
        }
        MountOp::ReadOnly { path } => {
            let r = root.fd()?;
            let Ok(at) = inroot::open_in(r, path, OFlag::O_PATH) else {
                return Ok(());
            };
            let whole = inroot::rel(path) == Path::new(".");
            not_root(&at, r, path)?;
            if !whole {
                // Bind onto itself so the read-only flag applies to this subtree only.
                let p = inroot::fd_path(&at);
                mount(
                    Some(&p),
                    &p,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(mount_err("bind", path))?;
            }
            let r = root.fd()?;
            let at = inroot::open_in(r, path, OFlag::O_PATH).map_err(mount_err("bind", path))?;
            // `/` alone: the mounts on top of it (/sandbox, /tmp, ...) keep their mode.
            set_attrs(&at, path, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, !whole)
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
    ROOT_COPIED.store(true, Ordering::Relaxed);
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

/// Set mount attributes on a mount (the one `fd` is the root of) or its whole subtree
/// (mount_setattr, Linux 5.12); fall back to a classic bind remount of the top mount
/// where the syscall is missing.
fn set_attrs(fd: &OwnedFd, path: &Path, attrs: u64, recursive: bool) -> Result<(), FsError> {
    let attr = MountAttr {
        attr_set: attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = libc::AT_EMPTY_PATH as libc::c_uint | if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: `fd` is an open descriptor, the path is an empty NUL-terminated string
    // (AT_EMPTY_PATH), `attr` is a properly sized, initialised `struct mount_attr` and
    // its size is passed with it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
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
    remount_classic(&inroot::fd_path(fd), attrs)
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
