//! Paths inside a root that an image controls, resolved *inside* it.
//!
//! An image's files are hostile: `/etc/hosts`, `/run` or `/proc` may be absolute
//! symlinks to host paths, FIFOs or devices. Every path operation on such a root goes
//! through a descriptor of the root and `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`,
//! so a symlink is followed as the sandbox will see it (an absolute target or `..`
//! stays under the root), and the operation then acts on the descriptor it got
//! (mkdirat, openat, mounting through `/proc/self/fd/N`). Nothing outside the root is
//! ever created, opened or mounted on because of what the root holds. Non-regular
//! files where a regular one is expected are refused; opening with `O_PATH` (or
//! `O_NONBLOCK`) never blocks on a FIFO.
//!
//! Missing mount points are created where the sandbox would look for them: a dangling
//! symlink (`/etc/resolv.conf -> ../run/systemd/resolve/stub-resolv.conf`) gets its
//! target created inside the root, at most [`MAX_HOPS`] links deep.
//!
//! See `docs/security.md` ("Image roots").

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{Mode, SFlag, fstat};

/// Symlinks followed while creating one path before giving up (ELOOP), as the kernel.
pub const MAX_HOPS: usize = 40;

/// Why an in-root operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum InRootError {
    /// The path exists but is not the kind of file expected.
    #[error("{path} in the sandbox root is a {found}, not a {wanted}")]
    WrongType {
        path: PathBuf,
        found: &'static str,
        wanted: &'static str,
    },
    /// A syscall failed.
    #[error("{op} {path} in the sandbox root: {source}")]
    Sys {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Errno,
    },
    /// A symlink where the sandbox mounts a directory of its own.
    #[error(
        "{path} in the image is a symlink: refused (the sandbox mounts its own {path} there; fix the image)"
    )]
    Symlink { path: PathBuf },
    /// Too many symlinks, or a loop.
    #[error("{path} in the sandbox root: too many levels of symbolic links")]
    Loop { path: PathBuf },
}

impl From<InRootError> for io::Error {
    fn from(e: InRootError) -> Self {
        let kind = match &e {
            InRootError::Sys { source, .. } => io::Error::from(*source).kind(),
            _ => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, e.to_string())
    }
}

fn sys(op: &'static str, path: &Path) -> impl FnOnce(Errno) -> InRootError {
    let path = path.to_path_buf();
    move |source| InRootError::Sys { op, path, source }
}

/// `/a/b` → `a/b`, `/` → `.` (the form openat2 wants relative to the root's descriptor).
pub fn rel(path: &Path) -> PathBuf {
    let r = path.strip_prefix("/").unwrap_or(path);
    if r.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        r.to_path_buf()
    }
}

/// Open `path` resolved inside `root` (symlinks followed as inside, never out of it;
/// magic links refused).
pub fn open_in(root: BorrowedFd<'_>, path: &Path, flags: OFlag) -> Result<OwnedFd, Errno> {
    open_with(root, path, flags, ResolveFlag::empty())
}

/// [`open_in`] with extra resolve flags (e.g. `RESOLVE_NO_SYMLINKS`).
pub fn open_with(
    root: BorrowedFd<'_>,
    path: &Path,
    flags: OFlag,
    extra: ResolveFlag,
) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS | extra);
    loop {
        match openat2(root, &rel(path), how) {
            Err(Errno::EAGAIN | Errno::EINTR) => continue, // a rename raced the lookup
            r => return r,
        }
    }
}

/// Open the root directory itself (the descriptor the other calls take).
pub fn open_root(root: &Path) -> Result<OwnedFd, InRootError> {
    nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(sys("open", root))
}

fn kind(mode: u32) -> &'static str {
    match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFREG => "regular file",
        SFlag::S_IFDIR => "directory",
        SFlag::S_IFLNK => "symlink",
        SFlag::S_IFIFO => "FIFO",
        SFlag::S_IFSOCK => "socket",
        SFlag::S_IFCHR => "character device",
        SFlag::S_IFBLK => "block device",
        _ => "special file",
    }
}

fn expect(fd: &OwnedFd, path: &Path, want: SFlag) -> Result<(), InRootError> {
    let st = fstat(fd).map_err(sys("stat", path))?;
    if st.st_mode & SFlag::S_IFMT.bits() != want.bits() {
        return Err(InRootError::WrongType {
            path: path.to_path_buf(),
            found: kind(st.st_mode),
            wanted: kind(want.bits()),
        });
    }
    Ok(())
}

/// The target of the symlink `name` in `dir`.
fn readlink_at(
    dir: BorrowedFd<'_>,
    name: &std::ffi::OsStr,
    path: &Path,
) -> Result<PathBuf, InRootError> {
    nix::fcntl::readlinkat(dir, name)
        .map(|t| PathBuf::from(OsString::from_vec(t.into_vec())))
        .map_err(sys("readlink", path))
}

/// What `path` resolves to inside `root`: every symlink followed as the sandbox would
/// (absolute targets from the root, `..` never above it; at most 40 links), or `None`
/// when a component is missing or unreadable. The proxy uses it so that a policy
/// naming `/usr/bin/claude` (a symlink into node_modules) matches the executable the
/// kernel reports.
pub fn realpath(root: BorrowedFd<'_>, path: &Path) -> Option<PathBuf> {
    let mut todo: Vec<OsString> = Vec::new();
    let push = |todo: &mut Vec<OsString>, p: &Path| {
        for c in p.components().rev() {
            match c {
                Component::Normal(n) => todo.push(n.to_os_string()),
                Component::ParentDir => todo.push("..".into()),
                _ => {}
            }
        }
    };
    push(&mut todo, path);
    let mut out = PathBuf::from("/");
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            out.pop();
            continue;
        }
        let dir = open_with(
            root,
            &out,
            OFlag::O_PATH | OFlag::O_DIRECTORY,
            ResolveFlag::RESOLVE_NO_SYMLINKS,
        )
        .ok()?;
        let st = nix::sys::stat::fstatat(
            &dir,
            c.as_os_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .ok()?;
        if st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFLNK.bits() {
            hops += 1;
            if hops > 40 {
                return None;
            }
            let target = readlink_at(dir.as_fd(), &c, &out).ok()?;
            if target.is_absolute() {
                out = PathBuf::from("/");
            }
            push(&mut todo, &target);
        } else {
            out.push(&c);
        }
    }
    Some(out)
}

/// Where a dangling link at `path` points, as a path inside the root.
fn follow(path: &Path, target: &Path) -> PathBuf {
    if target.is_absolute() {
        target.to_path_buf()
    } else {
        path.parent().unwrap_or(Path::new("/")).join(target)
    }
}

/// `mkdir -p` inside the root: returns an `O_PATH` descriptor of the directory. Missing
/// components are made with `mode` (exactly: the umask does not apply); existing ones,
/// followed through symlinks inside the root, are left as they are.
pub fn mkdir_all(root: BorrowedFd<'_>, path: &Path, mode: u32) -> Result<OwnedFd, InRootError> {
    mkdir_hops(root, path, mode, 0, ResolveFlag::empty())
}

/// [`mkdir_all`] where no component may be a symlink (the sandbox's own mount points:
/// `/proc`, `/dev`, `/tmp`, `/sandbox`, ...).
pub fn mkdir_exact(root: BorrowedFd<'_>, path: &Path, mode: u32) -> Result<OwnedFd, InRootError> {
    mkdir_hops(root, path, mode, 0, ResolveFlag::RESOLVE_NO_SYMLINKS)
}

/// An existing directory, reached without any symlink.
pub fn dir_exact(root: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd, InRootError> {
    match open_with(
        root,
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY,
        ResolveFlag::RESOLVE_NO_SYMLINKS,
    ) {
        Ok(fd) => Ok(fd),
        Err(Errno::ELOOP) => Err(InRootError::Symlink { path: path.into() }),
        Err(e) => Err(sys("open", path)(e)),
    }
}

fn mkdir_hops(
    root: BorrowedFd<'_>,
    path: &Path,
    mode: u32,
    hops: usize,
    extra: ResolveFlag,
) -> Result<OwnedFd, InRootError> {
    let exact = extra.contains(ResolveFlag::RESOLVE_NO_SYMLINKS);
    let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
    let mut cur = PathBuf::from("/");
    let comps: Vec<Component> = path.components().collect();
    for (i, c) in comps.iter().enumerate() {
        let name = match c {
            Component::RootDir | Component::CurDir => continue,
            Component::ParentDir => {
                cur.push("..");
                continue;
            }
            Component::Prefix(_) => continue,
            Component::Normal(n) => *n,
        };
        let next = cur.join(name);
        match open_with(root, &next, dir_flags, extra) {
            Ok(_) => {
                cur = next;
                continue;
            }
            Err(Errno::ENOENT) => {}
            Err(Errno::ELOOP) if exact => return Err(InRootError::Symlink { path: next }),
            Err(Errno::ELOOP) => return Err(InRootError::Loop { path: next }),
            Err(Errno::ENOTDIR) => {
                return Err(InRootError::WrongType {
                    path: next,
                    found: "non-directory",
                    wanted: "directory",
                });
            }
            Err(e) => return Err(sys("open", &next)(e)),
        }
        let parent = open_in(root, &cur, dir_flags).map_err(sys("open", &cur))?;
        match nix::sys::stat::mkdirat(parent.as_fd(), name, Mode::from_bits_truncate(mode)) {
            Ok(()) => {
                let fd = open_in(root, &next, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
                    .map_err(sys("open", &next))?;
                nix::sys::stat::fchmod(fd.as_fd(), Mode::from_bits_truncate(mode))
                    .map_err(sys("chmod", &next))?;
                cur = next;
            }
            Err(Errno::EEXIST) if exact => return Err(InRootError::Symlink { path: next }),
            Err(Errno::EEXIST) => {
                // Present but unresolvable: a dangling symlink. Create its target
                // (inside the root) and go on from there.
                if hops >= MAX_HOPS {
                    return Err(InRootError::Loop { path: next });
                }
                let target = readlink_at(parent.as_fd(), name, &next)?;
                let mut again = follow(&next, &target);
                for rest in &comps[i + 1..] {
                    again.push(rest.as_os_str());
                }
                return mkdir_hops(root, &again, mode, hops + 1, extra);
            }
            Err(e) => return Err(sys("mkdir", &next)(e)),
        }
    }
    open_with(root, &cur, dir_flags, extra).map_err(sys("open", &cur))
}

/// An empty regular file at `path` (parents made 0755), as a mount point or to be
/// written: an existing regular file is kept, anything else is refused. Returns an
/// `O_PATH` descriptor of the file.
pub fn touch(root: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd, InRootError> {
    touch_hops(root, path, 0)
}

fn touch_hops(root: BorrowedFd<'_>, path: &Path, hops: usize) -> Result<OwnedFd, InRootError> {
    match open_in(root, path, OFlag::O_PATH) {
        Ok(fd) => {
            expect(&fd, path, SFlag::S_IFREG)?;
            return Ok(fd);
        }
        Err(Errno::ENOENT) => {}
        Err(Errno::ELOOP) => return Err(InRootError::Loop { path: path.into() }),
        Err(e) => return Err(sys("open", path)(e)),
    }
    let (Some(parent_path), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(InRootError::WrongType {
            path: path.into(),
            found: "directory",
            wanted: "regular file",
        });
    };
    let parent = mkdir_all(root, parent_path, 0o755)?;
    let how = OpenHow::new()
        .flags(
            OFlag::O_CREAT
                | OFlag::O_EXCL
                | OFlag::O_WRONLY
                | OFlag::O_NOFOLLOW
                | OFlag::O_NONBLOCK
                | OFlag::O_CLOEXEC,
        )
        .mode(Mode::from_bits_truncate(0o644))
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    // O_PATH descriptors cannot be a base for creating: reopen the parent for that.
    let pdir = open_in(root, parent_path, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
        .map_err(sys("open", parent_path))?;
    drop(parent);
    match openat2(pdir.as_fd(), Path::new(name), how) {
        Ok(f) => drop(f),
        Err(Errno::EEXIST) => {
            if hops >= MAX_HOPS {
                return Err(InRootError::Loop { path: path.into() });
            }
            let target = readlink_at(pdir.as_fd(), name, path)?;
            return touch_hops(root, &follow(path, &target), hops + 1);
        }
        Err(e) => return Err(sys("create", path)(e)),
    }
    let fd = open_in(root, path, OFlag::O_PATH).map_err(sys("open", path))?;
    expect(&fd, path, SFlag::S_IFREG)?;
    Ok(fd)
}

/// A symlink `path -> target` inside the root (its parent made 0755).
pub fn symlink(root: BorrowedFd<'_>, target: &Path, path: &Path) -> Result<(), InRootError> {
    let (Some(parent_path), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(InRootError::WrongType {
            path: path.into(),
            found: "directory",
            wanted: "symlink",
        });
    };
    drop(mkdir_all(root, parent_path, 0o755)?);
    let pdir = open_in(root, parent_path, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
        .map_err(sys("open", parent_path))?;
    nix::unistd::symlinkat(target, pdir.as_fd(), name).map_err(sys("symlink", path))
}

/// A directory at `path` that must already exist inside the root (`O_PATH`).
pub fn dir(root: BorrowedFd<'_>, path: &Path) -> Result<OwnedFd, InRootError> {
    match open_in(root, path, OFlag::O_PATH | OFlag::O_DIRECTORY) {
        Ok(fd) => Ok(fd),
        Err(Errno::ELOOP) => Err(InRootError::Loop { path: path.into() }),
        Err(e) => Err(sys("open", path)(e)),
    }
}

/// The path through which mount(2) and friends reach what `fd` refers to.
pub fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Read a regular file of at most `cap` bytes at `path` inside the root directory
/// `root` (a host path). `Ok(None)`: it does not exist (or resolves nowhere). Symlinks
/// resolve inside the root; a FIFO, device or directory is refused without blocking.
pub fn read_file(root: &Path, path: &Path, cap: u64) -> Result<Option<Vec<u8>>, InRootError> {
    use std::io::Read;
    let rfd = open_root(root)?;
    let fd = match open_in(rfd.as_fd(), path, OFlag::O_RDONLY | OFlag::O_NONBLOCK) {
        Ok(fd) => fd,
        Err(Errno::ENOENT | Errno::ENOTDIR) => return Ok(None),
        Err(Errno::ELOOP) => return Err(InRootError::Loop { path: path.into() }),
        Err(e) => return Err(sys("open", path)(e)),
    };
    expect(&fd, path, SFlag::S_IFREG)?;
    let mut buf = Vec::new();
    std::fs::File::from(fd)
        .take(cap + 1)
        .read_to_end(&mut buf)
        .map_err(|e| sys("read", path)(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
    if buf.len() as u64 > cap {
        return Err(InRootError::WrongType {
            path: path.into(),
            found: "file larger than allowed",
            wanted: "small regular file",
        });
    }
    Ok(Some(buf))
}

/// Whether `path` exists inside the root directory `root` (a host path), resolved as
/// inside.
pub fn exists(root: &Path, path: &Path) -> bool {
    open_root(root).is_ok_and(|r| open_in(r.as_fd(), path, OFlag::O_PATH).is_ok())
}

/// Lossy display form of a path relative to nothing (for messages).
pub fn show(path: &Path) -> String {
    String::from_utf8_lossy(path.as_os_str().as_bytes()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink as ln;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("openshell-inroot-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("root")).unwrap();
        std::fs::create_dir_all(d.join("host")).unwrap();
        d
    }

    #[test]
    fn absolute_and_dotdot_symlinks_stay_inside() {
        let d = tmp("abs");
        let host = d.join("host");
        let root = d.join("root");
        ln(&host, root.join("run")).unwrap();
        ln("../../../../host/x", root.join("up")).unwrap();
        std::fs::create_dir(root.join("etc")).unwrap();
        ln(host.join("hosts"), root.join("etc/hosts")).unwrap();
        let r = open_root(&root).unwrap();
        mkdir_all(r.as_fd(), Path::new("/run/openshell/deep"), 0o755).unwrap();
        mkdir_all(r.as_fd(), Path::new("/up/y"), 0o700).unwrap();
        touch(r.as_fd(), Path::new("/etc/hosts")).unwrap();
        assert_eq!(
            std::fs::read_dir(&host).unwrap().count(),
            0,
            "host dir untouched"
        );
        // The targets were made inside the root, where the sandbox will look.
        let inside = root.join(host.strip_prefix("/").unwrap());
        assert!(inside.join("openshell/deep").is_dir());
        assert!(inside.join("hosts").is_file());
        assert!(root.join("host/x/y").is_dir());
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn fifos_devices_and_loops_are_refused_without_blocking() {
        let d = tmp("fifo");
        let root = d.join("root");
        std::fs::create_dir(root.join("etc")).unwrap();
        nix::unistd::mkfifo(&root.join("etc/hostname"), Mode::from_bits_truncate(0o644)).unwrap();
        ln("/dev/null", root.join("etc/hosts")).unwrap();
        ln("/loop", root.join("loop")).unwrap();
        std::fs::create_dir(root.join("etc/resolv.conf")).unwrap();
        let r = open_root(&root).unwrap();
        let e = touch(r.as_fd(), Path::new("/etc/hostname")).unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
        // /dev/null of the host is not reached: inside the root it does not exist, so
        // it is created there as a regular file.
        touch(r.as_fd(), Path::new("/etc/hosts")).unwrap();
        assert!(root.join("dev/null").is_file());
        let e = touch(r.as_fd(), Path::new("/etc/resolv.conf")).unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
        let e = mkdir_all(r.as_fd(), Path::new("/loop/x"), 0o755).unwrap_err();
        assert!(e.to_string().contains("symbolic links"), "{e}");
        let e = read_file(&root, Path::new("/etc/hostname"), 100).unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn reads_resolve_inside_and_are_capped() {
        let d = tmp("read");
        let root = d.join("root");
        std::fs::create_dir(root.join("etc")).unwrap();
        ln("/etc/passwd", root.join("etc/passwd")).unwrap();
        std::fs::write(root.join("etc/group"), "x".repeat(200)).unwrap();
        // etc/passwd -> /etc/passwd resolves to itself inside the root: a loop, never
        // the host's file.
        assert!(read_file(&root, Path::new("/etc/passwd"), 1 << 20).is_err());
        assert!(read_file(&root, Path::new("/etc/group"), 100).is_err());
        assert_eq!(
            read_file(&root, Path::new("/etc/group"), 200)
                .unwrap()
                .unwrap()
                .len(),
            200
        );
        assert!(
            read_file(&root, Path::new("/etc/none"), 10)
                .unwrap()
                .is_none()
        );
        let _ = std::fs::remove_dir_all(d);
    }
}
