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

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
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

/// Copy a local file to `rel` beneath the workspace root.
fn put_file(
    root: BorrowedFd<'_>,
    local: &Path,
    rel: &Path,
    owner: Option<(u32, u32)>,
    r: &mut Report,
) -> Result<(), String> {
    let (parent, name) = split(rel)?;
    let dir = mkdirs(root, parent, owner)?;
    let mut src = fs::File::open(local).map_err(|e| format!("{}: {e}", local.display()))?;
    let mode = src
        .metadata()
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0o644);
    let fd = openat2(
        dir.as_fd(),
        name,
        beneath(OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC),
    )
    .map_err(|e| refused(rel, e))?;
    let mut dst = fs::File::from(fd);
    let n = io::copy(&mut src, &mut dst).map_err(|e| format!("/sandbox/{}: {e}", rel.display()))?;
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
        fs::create_dir_all(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
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
            let _ = fs::remove_file(dest);
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
    let fd = openat2(dir, name, beneath(OFlag::O_RDONLY)).map_err(|e| refused(rel, e))?;
    let mut src = fs::File::from(fd);
    let _ = fs::remove_file(dest);
    let mut out = fs::File::create(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    let n = io::copy(&mut src, &mut out).map_err(|e| format!("{}: {e}", dest.display()))?;
    let _ = out.set_permissions(fs::Permissions::from_mode(mode));
    r.files += 1;
    r.bytes += n;
    Ok(())
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
