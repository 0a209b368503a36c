//! `sandbox upload` / `download`: copy trees into and out of a sandbox's workspace (the
//! host directory bound at `/sandbox`), safely against what the sandbox put there.
//!
//! The workspace is written by the sandboxed processes, so every path in it is hostile:
//! a symlink planted at `/sandbox/dest -> /home/me/.ssh` must not redirect an upload.
//! Every directory and file is therefore opened with openat2 from a descriptor of the
//! workspace root with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` (and `O_NOFOLLOW`), so
//! no symlink is ever followed on the way in or out. On download, symlinks are copied as
//! symlinks when their target stays inside the workspace (checked lexically; never
//! followed), and refused otherwise — absolute targets
//! included. Contents are streamed (no whole-file buffering); set-id bits are dropped.
//! Holes stay holes (SEEK_DATA / SEEK_HOLE): a sparse 2 GiB file takes no more room
//! after a copy than before. A FIFO or device where a file is read or written is
//! refused without blocking (`O_NONBLOCK`, then fstat). On the host side, a DEST that is
//! a symlink, FIFO or device is refused, never replaced. `-` is a tar stream (download
//! to stdout, upload from stdin), unpacked with the same beneath-the-root rules.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use nix::dir::Dir;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;

/// What a transfer did.
#[derive(Debug, Default)]
pub struct Report {
    /// Regular files copied.
    pub files: u64,
    /// Bytes copied.
    pub bytes: u64,
    /// Entries refused or skipped, with why.
    pub refused: Vec<String>,
}

fn beneath(flags: OFlag) -> OpenHow {
    // openat2 refuses a mode unless a file may be created.
    let mode = if flags.contains(OFlag::O_CREAT) {
        0o644
    } else {
        0
    };
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .mode(Mode::from_bits_truncate(mode))
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        )
}

/// `/sandbox/a/b` or `a/b` → `a/b`; only plain components.
pub fn workspace_rel(path: &str) -> Result<PathBuf, String> {
    let p = Path::new(path);
    let p = p.strip_prefix("/sandbox").unwrap_or(p);
    if p.is_absolute() {
        return Err(format!(
            "{path}: only paths under /sandbox (the workspace) can be copied"
        ));
    }
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return Err(format!("{path}: '..' is not allowed")),
        }
    }
    Ok(out)
}

fn open_root(workspace: &Path) -> Result<OwnedFd, String> {
    nix::fcntl::open(
        workspace,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|e| format!("open the workspace {}: {e}", workspace.display()))
}

fn refused(rel: &Path, e: nix::errno::Errno) -> String {
    match e {
        nix::errno::Errno::ENOTDIR => format!(
            "/sandbox/{}: refused: not a directory (a symlink there is never followed)",
            rel.display()
        ),
        nix::errno::Errno::ELOOP | nix::errno::Errno::EXDEV => format!(
            "/sandbox/{}: refused: a symlink on the way (the sandbox may have planted it)",
            rel.display()
        ),
        e => format!("/sandbox/{}: {e}", rel.display()),
    }
}

/// Open (creating with `mode`) the directory `rel` beneath `root`, component by
/// component, never following a symlink.
fn mkdirs(root: BorrowedFd<'_>, rel: &Path, owner: Option<(u32, u32)>) -> Result<OwnedFd, String> {
    let mut cur = openat2(root, ".", beneath(OFlag::O_DIRECTORY | OFlag::O_RDONLY))
        .map_err(|e| refused(Path::new(""), e))?;
    let mut so_far = PathBuf::new();
    for c in rel.components() {
        let Component::Normal(name) = c else { continue };
        so_far.push(name);
        match nix::sys::stat::mkdirat(cur.as_fd(), name, Mode::from_bits_truncate(0o755)) {
            Ok(()) => {
                if let Some((u, g)) = owner {
                    let _ = nix::unistd::fchownat(
                        cur.as_fd(),
                        name,
                        Some(u.into()),
                        Some(g.into()),
                        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                    );
                }
            }
            Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(refused(&so_far, e)),
        }
        cur = openat2(
            cur.as_fd(),
            name,
            beneath(OFlag::O_DIRECTORY | OFlag::O_RDONLY),
        )
        .map_err(|e| refused(&so_far, e))?;
    }
    Ok(cur)
}

fn split(rel: &Path) -> Result<(&Path, &OsStr), String> {
    match (rel.parent(), rel.file_name()) {
        (Some(p), Some(n)) => Ok((p, n)),
        _ => Err("the destination must name a file or directory under /sandbox".into()),
    }
}

/// Copy `src` to `dst` from offset 0, writing only its data: holes are skipped
/// (SEEK_DATA / SEEK_HOLE) and `dst` gets `src`'s length. Falls back to a plain copy
/// where the file system cannot tell. Returns the length.
pub fn copy_sparse(src: &fs::File, dst: &fs::File) -> io::Result<u64> {
    use nix::unistd::{Whence, lseek};
    let len = src.metadata()?.len();
    let mut buf = vec![0u8; 256 * 1024];
    let mut off: i64 = 0;
    let end = i64::try_from(len).unwrap_or(i64::MAX);
    while off < end {
        let data = match lseek(src, off, Whence::SeekData) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(_) => off,
        };
        let hole = lseek(src, data, Whence::SeekHole).unwrap_or(end).min(end);
        let mut at = data;
        while at < hole {
            let want = usize::try_from(hole - at)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            let n = src.read_at(&mut buf[..want], at as u64)?;
            if n == 0 {
                break;
            }
            dst.write_all_at(&buf[..n], at as u64)?;
            at += n as i64;
        }
        off = hole.max(data + 1);
    }
    dst.set_len(len)?;
    Ok(len)
}

/// Copy a stream into `dst` from offset 0, leaving all-zero blocks as holes (a tar
/// stream carries a sparse file's zeros; they need not land on disk). Returns the
/// length.
fn copy_stream_sparse<R: Read>(src: &mut R, dst: &fs::File) -> io::Result<u64> {
    const BLOCK: usize = 64 * 1024;
    let mut buf = vec![0u8; BLOCK];
    let mut at = 0u64;
    loop {
        let mut filled = 0;
        while filled < BLOCK {
            match src.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            break;
        }
        if buf[..filled].iter().any(|&b| b != 0) {
            dst.write_all_at(&buf[..filled], at)?;
        }
        at += filled as u64;
        if filled < BLOCK {
            break;
        }
    }
    dst.set_len(at)?;
    Ok(at)
}

/// A descriptor just opened with `O_NONBLOCK` must be a regular file (a FIFO or
/// device is refused, never read or written).
fn regular(fd: OwnedFd, what: &Path) -> Result<fs::File, String> {
    let st = nix::sys::stat::fstat(&fd).map_err(|e| format!("{}: {e}", what.display()))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(format!(
            "{}: refused: not a regular file (a FIFO or device is never opened for copying)",
            what.display()
        ));
    }
    Ok(fs::File::from(fd))
}

/// Open (create or truncate) `rel` beneath `root` for writing: never through a
/// symlink, never a FIFO or device.
fn open_in_workspace(
    root: BorrowedFd<'_>,
    rel: &Path,
    owner: Option<(u32, u32)>,
) -> Result<fs::File, String> {
    let (parent, name) = split(rel)?;
    let dir = mkdirs(root, parent, owner)?;
    let fd = openat2(
        dir.as_fd(),
        name,
        beneath(OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NONBLOCK),
    )
    .map_err(|e| match e {
        // A FIFO nobody reads (opened without blocking).
        nix::errno::Errno::ENXIO => format!(
            "/sandbox/{}: refused: not a regular file (a FIFO or device is never opened for copying)",
            rel.display()
        ),
        e => refused(rel, e),
    })?;
    let f = regular(fd, &Path::new("/sandbox").join(rel))?;
    f.set_len(0)
        .map_err(|e| format!("/sandbox/{}: {e}", rel.display()))?;
    Ok(f)
}

/// Copy a local file to `rel` beneath the workspace root.
fn put_file(
    root: BorrowedFd<'_>,
    local: &Path,
    rel: &Path,
    owner: Option<(u32, u32)>,
    r: &mut Report,
) -> Result<(), String> {
    let src = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(local)
        .map_err(|e| format!("{}: {e}", local.display()))?;
    let src = regular(OwnedFd::from(src), local)?;
    let mode = src
        .metadata()
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0o644);
    let dst = open_in_workspace(root, rel, owner)?;
    let n = copy_sparse(&src, &dst).map_err(|e| format!("/sandbox/{}: {e}", rel.display()))?;
    let _ = dst.set_permissions(fs::Permissions::from_mode(mode));
    if let Some((u, g)) = owner {
        let _ = nix::unistd::fchown(&dst, Some(u.into()), Some(g.into()));
    }
    r.files += 1;
    r.bytes += n;
    Ok(())
}

/// Copy `local` (file or tree; `.gitignore` honoured unless `all`) to `rel` in the
/// workspace. `owner`: chown what is created (root's sandboxes).
pub fn upload(
    local: &Path,
    workspace: &Path,
    rel: &Path,
    all: bool,
    owner: Option<(u32, u32)>,
) -> Result<Report, String> {
    let root = open_root(workspace)?;
    let mut r = Report::default();
    let meta = fs::symlink_metadata(local).map_err(|e| format!("{}: {e}", local.display()))?;
    if meta.is_file() {
        put_file(root.as_fd(), local, rel, owner, &mut r)?;
        return Ok(r);
    }
    if !meta.is_dir() {
        return Err(format!("{}: not a file or directory", local.display()));
    }
    mkdirs(root.as_fd(), rel, owner)?;
    let walker = ignore::WalkBuilder::new(local)
        .hidden(false)
        .git_ignore(!all)
        .git_exclude(!all)
        .git_global(false)
        .ignore(false)
        .parents(!all)
        .require_git(false)
        .follow_links(false)
        .build();
    for entry in walker {
        let entry = entry.map_err(|e| format!("{}: {e}", local.display()))?;
        let Ok(sub) = entry.path().strip_prefix(local) else {
            continue;
        };
        if sub.as_os_str().is_empty() {
            continue;
        }
        let dst = rel.join(sub);
        let Some(ft) = entry.file_type() else {
            continue;
        };
        if ft.is_dir() {
            mkdirs(root.as_fd(), &dst, owner)?;
        } else if ft.is_file() {
            put_file(root.as_fd(), entry.path(), &dst, owner, &mut r)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(entry.path()).map_err(|e| e.to_string())?;
            let (parent, name) = split(&dst)?;
            let dir = mkdirs(root.as_fd(), parent, owner)?;
            nix::unistd::symlinkat(&target, dir.as_fd(), name)
                .map_err(|e| format!("/sandbox/{}: {e}", dst.display()))?;
            if let Some((u, g)) = owner {
                let _ = nix::unistd::fchownat(
                    dir.as_fd(),
                    name,
                    Some(u.into()),
                    Some(g.into()),
                    nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                );
            }
        } else {
            r.refused.push(format!(
                "{}: not a regular file, skipped",
                entry.path().display()
            ));
        }
    }
    Ok(r)
}

/// Whether a symlink at `link_rel` (relative to the workspace) pointing to `target`
/// stays inside the workspace, judged on the names alone.
fn link_stays_inside(link_rel: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: i64 = link_rel.components().count() as i64 - 1;
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

/// Copy `rel` (file or tree) out of the workspace to `dest` on the host.
pub fn download(workspace: &Path, rel: &Path, dest: &Path) -> Result<Report, String> {
    let root = open_root(workspace)?;
    let mut r = Report::default();
    let (parent, name) = match (rel.parent(), rel.file_name()) {
        (Some(p), Some(n)) => (p, n),
        _ => (Path::new(""), OsStr::new(".")),
    };
    let pdir = openat2(
        root.as_fd(),
        if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        },
        beneath(OFlag::O_DIRECTORY | OFlag::O_RDONLY),
    )
    .map_err(|e| refused(parent, e))?;
    get_entry(pdir.as_fd(), name, rel, dest, &mut r)?;
    Ok(r)
}

fn get_entry(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    rel: &Path,
    dest: &Path,
    r: &mut Report,
) -> Result<(), String> {
    let st = nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(|e| refused(rel, e))?;
    let fmt = st.st_mode & libc::S_IFMT;
    let mode = st.st_mode & 0o777;
    if fmt == libc::S_IFDIR {
        let fd = openat2(dir, name, beneath(OFlag::O_DIRECTORY | OFlag::O_RDONLY))
            .map_err(|e| refused(rel, e))?;
        host_dest_dir(dest)?;
        let _ = fs::set_permissions(dest, fs::Permissions::from_mode(mode | 0o700));
        let listing = fd
            .try_clone()
            .map_err(|e| format!("/sandbox/{}: {e}", rel.display()))?;
        let mut d = Dir::from_fd(listing).map_err(|e| refused(rel, e))?;
        let mut names = Vec::new();
        for e in d.iter().flatten() {
            let n = OsStr::from_bytes(e.file_name().to_bytes()).to_os_string();
            if n != "." && n != ".." {
                names.push(n);
            }
        }
        names.sort();
        for n in names {
            get_entry(fd.as_fd(), &n, &rel.join(&n), &dest.join(&n), r)?;
        }
        return Ok(());
    }
    if fmt == libc::S_IFLNK {
        let target = nix::fcntl::readlinkat(dir, name).map_err(|e| refused(rel, e))?;
        let target = PathBuf::from(target);
        if link_stays_inside(rel, &target) {
            match fs::symlink_metadata(dest) {
                // Replaced only when it is a symlink itself (what we would write).
                Ok(m) if m.file_type().is_symlink() => {
                    let _ = fs::remove_file(dest);
                }
                Ok(m) => {
                    return Err(format!(
                        "{}: refused: it is {}, not a symlink to replace",
                        dest.display(),
                        kind_of(&m)
                    ));
                }
                Err(_) => {}
            }
            std::os::unix::fs::symlink(&target, dest)
                .map_err(|e| format!("{}: {e}", dest.display()))?;
        } else {
            r.refused.push(format!(
                "/sandbox/{} -> {}: refused: the symlink points outside the sandbox's workspace",
                rel.display(),
                target.display()
            ));
        }
        return Ok(());
    }
    if fmt != libc::S_IFREG {
        r.refused.push(format!(
            "/sandbox/{}: not a regular file, skipped",
            rel.display()
        ));
        return Ok(());
    }
    let fd = openat2(dir, name, beneath(OFlag::O_RDONLY | OFlag::O_NONBLOCK))
        .map_err(|e| refused(rel, e))?;
    let src = regular(fd, &Path::new("/sandbox").join(rel))?;
    let out = host_dest_file(dest)?;
    let n = copy_sparse(&src, &out).map_err(|e| format!("{}: {e}", dest.display()))?;
    let _ = out.set_permissions(fs::Permissions::from_mode(mode));
    r.files += 1;
    r.bytes += n;
    Ok(())
}

fn kind_of(m: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_symlink() {
        "a symlink"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_dir() {
        "a directory"
    } else {
        "a file"
    }
}

/// The host file a download writes: created, or an existing regular file truncated;
/// a symlink, FIFO, device or directory there is refused (never replaced, never
/// opened: `/dev/stdout` stays what it is).
fn host_dest_file(dest: &Path) -> Result<fs::File, String> {
    if let Ok(m) = fs::symlink_metadata(dest)
        && !m.file_type().is_file()
    {
        return Err(format!(
            "{}: refused: it is {}; name a new file or a regular one to overwrite (`-` streams a tar to stdout)",
            dest.display(),
            kind_of(&m)
        ));
    }
    let f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(dest)
        .map_err(|e| format!("{}: {e}", dest.display()))?;
    let f = regular(OwnedFd::from(f), dest)?;
    f.set_len(0)
        .map_err(|e| format!("{}: {e}", dest.display()))?;
    Ok(f)
}

/// The host directory a download fills: created, or an existing real directory.
fn host_dest_dir(dest: &Path) -> Result<(), String> {
    match fs::symlink_metadata(dest) {
        Ok(m) if m.file_type().is_dir() => Ok(()),
        Ok(m) => Err(format!(
            "{}: refused: it is {}, not a directory",
            dest.display(),
            kind_of(&m)
        )),
        Err(_) => fs::create_dir_all(dest).map_err(|e| format!("{}: {e}", dest.display())),
    }
}

/// Write `rel` (file or tree) out of the workspace as a tar stream (`download ... -`).
/// Names in the archive start with `rel`'s last component.
pub fn download_tar<W: Write>(workspace: &Path, rel: &Path, out: W) -> Result<Report, String> {
    let root = open_root(workspace)?;
    let mut r = Report::default();
    let (parent, name) = match (rel.parent(), rel.file_name()) {
        (Some(p), Some(n)) => (p, n),
        _ => (Path::new(""), OsStr::new(".")),
    };
    let pdir = openat2(
        root.as_fd(),
        if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        },
        beneath(OFlag::O_DIRECTORY | OFlag::O_RDONLY),
    )
    .map_err(|e| refused(parent, e))?;
    let mut b = tar::Builder::new(out);
    let top = if name == "." {
        PathBuf::from("sandbox")
    } else {
        PathBuf::from(name)
    };
    tar_entry(pdir.as_fd(), name, rel, &top, &mut b, &mut r)?;
    b.into_inner()
        .and_then(|mut w| w.flush())
        .map_err(|e| format!("writing the tar stream: {e}"))?;
    Ok(r)
}

fn tar_entry<W: Write>(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    rel: &Path,
    path: &Path,
    b: &mut tar::Builder<W>,
    r: &mut Report,
) -> Result<(), String> {
    let io_err = |e: io::Error| format!("writing the tar stream: {e}");
    let st = nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        .map_err(|e| refused(rel, e))?;
    let fmt = st.st_mode & libc::S_IFMT;
    let mut h = tar::Header::new_gnu();
    h.set_mode(st.st_mode & 0o777);
    h.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
    if fmt == libc::S_IFDIR {
        let fd = openat2(dir, name, beneath(OFlag::O_DIRECTORY | OFlag::O_RDONLY))
            .map_err(|e| refused(rel, e))?;
        h.set_entry_type(tar::EntryType::Directory);
        h.set_size(0);
        b.append_data(&mut h, path, io::empty()).map_err(io_err)?;
        let listing = fd
            .try_clone()
            .map_err(|e| format!("/sandbox/{}: {e}", rel.display()))?;
        let mut d = Dir::from_fd(listing).map_err(|e| refused(rel, e))?;
        let mut names: Vec<_> = d
            .iter()
            .flatten()
            .map(|e| OsStr::from_bytes(e.file_name().to_bytes()).to_os_string())
            .filter(|n| n != "." && n != "..")
            .collect();
        names.sort();
        for n in names {
            tar_entry(fd.as_fd(), &n, &rel.join(&n), &path.join(&n), b, r)?;
        }
        return Ok(());
    }
    if fmt == libc::S_IFLNK {
        let target = PathBuf::from(nix::fcntl::readlinkat(dir, name).map_err(|e| refused(rel, e))?);
        if link_stays_inside(rel, &target) {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, path, &target).map_err(io_err)?;
        } else {
            r.refused.push(format!(
                "/sandbox/{} -> {}: refused: the symlink points outside the sandbox's workspace",
                rel.display(),
                target.display()
            ));
        }
        return Ok(());
    }
    if fmt != libc::S_IFREG {
        r.refused.push(format!(
            "/sandbox/{}: not a regular file, skipped",
            rel.display()
        ));
        return Ok(());
    }
    let fd = openat2(dir, name, beneath(OFlag::O_RDONLY | OFlag::O_NONBLOCK))
        .map_err(|e| refused(rel, e))?;
    let f = regular(fd, &Path::new("/sandbox").join(rel))?;
    let size = f.metadata().map_err(|e| e.to_string())?.len();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    // Exactly `size` bytes even if the sandbox shrinks or grows the file meanwhile.
    let data = (&f).chain(io::repeat(0)).take(size);
    b.append_data(&mut h, path, data).map_err(io_err)?;
    r.files += 1;
    r.bytes += size;
    Ok(())
}

/// Unpack a tar stream into `rel` in the workspace (`upload NAME - [DEST]`): every
/// name must be relative with plain components; directories, regular files and
/// symlinks are created beneath the root like any upload (never through a symlink);
/// other entry types are skipped and reported.
pub fn upload_tar<R: Read>(
    input: R,
    workspace: &Path,
    rel: &Path,
    owner: Option<(u32, u32)>,
) -> Result<Report, String> {
    let root = open_root(workspace)?;
    let mut r = Report::default();
    mkdirs(root.as_fd(), rel, owner)?;
    let mut a = tar::Archive::new(input);
    let entries = a
        .entries()
        .map_err(|e| format!("reading the tar stream: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("reading the tar stream: {e}"))?;
        let name = entry
            .path()
            .map_err(|e| format!("reading the tar stream: {e}"))?
            .into_owned();
        if name.is_absolute()
            || name
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(format!(
                "tar entry {}: refused: names must be relative, without ..",
                name.display()
            ));
        }
        let dst = rel.join(&name);
        if dst.as_os_str().is_empty() || dst == rel {
            continue;
        }
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                mkdirs(root.as_fd(), &dst, owner)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let f = open_in_workspace(root.as_fd(), &dst, owner)?;
                let n = copy_stream_sparse(&mut entry, &f)
                    .map_err(|e| format!("/sandbox/{}: {e}", dst.display()))?;
                let _ = f.set_permissions(fs::Permissions::from_mode(mode));
                if let Some((u, g)) = owner {
                    let _ = nix::unistd::fchown(&f, Some(u.into()), Some(g.into()));
                }
                r.files += 1;
                r.bytes += n;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .ok()
                    .flatten()
                    .ok_or_else(|| format!("tar entry {}: no link target", name.display()))?
                    .into_owned();
                let (parent, leaf) = split(&dst)?;
                let dir = mkdirs(root.as_fd(), parent, owner)?;
                nix::unistd::symlinkat(&target, dir.as_fd(), leaf)
                    .map_err(|e| format!("/sandbox/{}: {e}", dst.display()))?;
            }
            other => r.refused.push(format!(
                "tar entry {}: {other:?} entries are not uploaded, skipped",
                name.display()
            )),
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_links() {
        assert_eq!(workspace_rel("/sandbox/a/b").unwrap(), PathBuf::from("a/b"));
        assert_eq!(workspace_rel("a/./b").unwrap(), PathBuf::from("a/b"));
        assert!(workspace_rel("/etc/passwd").is_err());
        assert!(workspace_rel("/sandbox/../etc").is_err());
        assert!(link_stays_inside(Path::new("d/l"), Path::new("../f")));
        assert!(link_stays_inside(Path::new("d/l"), Path::new("x/../y")));
        assert!(!link_stays_inside(Path::new("d/l"), Path::new("../../f")));
        assert!(!link_stays_inside(Path::new("l"), Path::new("/etc/passwd")));
    }
}
