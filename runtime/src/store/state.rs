//! On-disk state of a sandbox: its directory, workspace, generated /etc files, uploads.
//!
//! `$OPENSHELL_STATE_DIR`, else `$XDG_STATE_HOME/openshell`, else
//! `~/.local/state/openshell` (rootless) or `/var/lib/openshell` (root). One directory
//! per sandbox under `sandboxes/<name>/`; creating it atomically (mkdir) is what makes
//! a name unique.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A state operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The name is taken.
    #[error("a sandbox named {0} already exists; pick another --name or delete it")]
    Exists(String),
    /// The name is not usable.
    #[error(
        "invalid sandbox name {0:?}: use 1-63 of a-z, 0-9 and -, starting with a letter or digit"
    )]
    BadName(String),
    /// A file operation failed.
    #[error("{what} {}: {source}{}", path.display(), access_hint(source))]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// An upload was refused.
    #[error("--upload {0}")]
    Upload(String),
}

/// What to do when openshell's own state cannot be written.
fn access_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::PermissionDenied
        | io::ErrorKind::ReadOnlyFilesystem
        | io::ErrorKind::NotADirectory => {
            " (openshell keeps sandboxes there and cannot write it: fix its owner or mode, or set OPENSHELL_STATE_DIR to a directory of yours)"
        }
        _ => "",
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// A directory's identity (device, inode): tells a sandbox's directory from a later
/// one of the same name (after `sandbox delete` renamed it away and a new sandbox took
/// the name).
/// The birth time is part of it: a freed inode number is soon given to a new directory.
pub fn identity(path: &Path) -> Option<(u64, u64, u128)> {
    use std::os::unix::fs::MetadataExt;
    fs::symlink_metadata(path).ok().map(|m| {
        let born = m
            .created()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        (m.dev(), m.ino(), born)
    })
}

/// An exclusive lock on one sandbox name (`sandboxes/.locks/<name>`), held while its
/// directory is created and its first record written, and while it is deleted: a delete
/// never sees a half-made sandbox, and a create never works in a directory being
/// deleted. Released on drop (or when the holder dies).
pub struct NameLock(#[allow(dead_code)] nix::fcntl::Flock<fs::File>);

impl NameLock {
    /// The lock file's descriptor (for a forked child to close its copy).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.0.as_raw_fd()
    }

    /// Wait for the lock on `name`.
    pub fn acquire(base: &Path, name: &str) -> Result<Self, StateError> {
        loop {
            if let Some(l) = Self::take(base, name, true)? {
                return Ok(l);
            }
        }
    }

    /// The lock on `name` if it is free within `wait` (polled), else `None`.
    pub fn acquire_within(base: &Path, name: &str, wait: std::time::Duration) -> Option<Self> {
        let until = std::time::Instant::now() + wait;
        loop {
            match Self::take(base, name, false) {
                Ok(Some(l)) => return Some(l),
                Ok(None) if std::time::Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                _ => return None,
            }
        }
    }

    /// One attempt: `Ok(None)` when busy (`wait` false) or when the file locked was
    /// removed meanwhile (`forget_lock`: the lock held is on a file nobody else opens).
    fn take(base: &Path, name: &str, wait: bool) -> Result<Option<Self>, StateError> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        check_name(name)?;
        let dir = base.join("sandboxes/.locks");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err("create", &dir))?;
        let path = dir.join(name);
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let how = if wait {
            nix::fcntl::FlockArg::LockExclusive
        } else {
            nix::fcntl::FlockArg::LockExclusiveNonblock
        };
        let held = match nix::fcntl::Flock::lock(f, how) {
            Ok(h) => h,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if !wait => return Ok(None),
            Err((_, e)) => {
                return Err(StateError::Io {
                    what: "lock",
                    path,
                    source: e.into(),
                });
            }
        };
        let ours = held.metadata().map(|m| (m.dev(), m.ino())).ok();
        let current = fs::symlink_metadata(&path).map(|m| (m.dev(), m.ino())).ok();
        Ok((ours.is_some() && ours == current).then_some(Self(held)))
    }

    /// Let go, removing the lock file first when `name` has no sandbox directory (the
    /// name is free), so that `sandboxes/.locks` does not grow by a file per `run`.
    pub fn release_forgetting(self, base: &Path, name: &str) {
        if fs::symlink_metadata(base.join("sandboxes").join(name)).is_err() {
            let _ = fs::remove_file(base.join("sandboxes/.locks").join(name));
        }
        drop(self);
    }
}

/// Remove `name`'s lock file if the name is free and nobody holds its lock (whoever
/// does removes it when done); whoever waited on a removed file notices and takes a new
/// one (`NameLock::acquire`).
pub fn forget_lock(base: &Path, name: &str) {
    if let Ok(Some(lock)) = NameLock::take(base, name, false) {
        lock.release_forgetting(base, name);
    }
}

/// The state root for this user.
pub fn base_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("OPENSHELL_STATE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("openshell");
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/openshell");
    }
    // Never a shared directory (docs/sandboxes.md, "Where the state lives").
    openshell_fs::home::per_user(".local/state/openshell", "openshell-state")
}

/// Check a user-given sandbox name.
pub fn check_name(name: &str) -> Result<(), StateError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(StateError::BadName(name.to_string()))
    }
}

/// A fresh name like `sbx-3f9a1c`.
pub fn generate_name() -> String {
    let mut b = [0u8; 3];
    let _ = fs::File::open("/dev/urandom").and_then(|mut f| io::Read::read_exact(&mut f, &mut b));
    format!("sbx-{:02x}{:02x}{:02x}", b[0], b[1], b[2])
}

/// Paths of one sandbox's state.
#[derive(Debug, Clone)]
pub struct SandboxDir {
    /// `sandboxes/<name>`.
    pub path: PathBuf,
}

impl SandboxDir {
    /// The directory of an existing (stopped) sandbox, for `sandbox start`.
    pub fn open(base: &Path, name: &str) -> Result<Self, StateError> {
        check_name(name)?;
        let path = base.join("sandboxes").join(name);
        if !path.join("workspace").is_dir() {
            return Err(StateError::Io {
                what: "find",
                path,
                source: io::ErrorKind::NotFound.into(),
            });
        }
        Ok(Self { path })
    }

    /// Create the directory of a new sandbox; refuse an existing name.
    pub fn create(base: &Path, name: &str, traversable: bool) -> Result<Self, StateError> {
        check_name(name)?;
        let parent = base.join("sandboxes");
        // Private for everyone else (0700), root's state too: the sandbox reaches its
        // workspace through init's bind mount, never by a host path.
        let mode = 0o700;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(&parent)
            .map_err(io_err("create", &parent))?;
        let path = parent.join(name);
        match fs::DirBuilder::new().mode(mode).create(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(StateError::Exists(name.to_string()));
            }
            Err(e) => return Err(io_err("create", &path)(e)),
        }
        // Root's base too (rootless: removing files of subordinate ids happens in a
        // mapped user namespace that must still traverse the user's own base).
        let dirs: &[&Path] = if traversable {
            &[base, parent.as_path(), path.as_path()]
        } else {
            &[parent.as_path(), path.as_path()]
        };
        for d in dirs {
            fs::set_permissions(d, fs::Permissions::from_mode(0o700))
                .map_err(io_err("chmod 0700", d))?;
        }
        let dir = Self { path };
        // The root's mount point and the generated files go in a run's scratch
        // directory (`scratch.rs`).
        let p = dir.workspace();
        fs::create_dir(&p).map_err(io_err("create", &p))?;
        Ok(dir)
    }

    /// Host directory bound at /sandbox.
    pub fn workspace(&self) -> PathBuf {
        self.path.join("workspace")
    }

    /// Write the generated /etc files into `scratch`/etc; return (sandbox path, host
    /// file) pairs. `accounts`: also passwd/group (host view; an image keeps its own).
    pub fn write_etc(
        &self,
        scratch: &Path,
        hostname: &str,
        uid: u32,
        gid: u32,
        accounts: bool,
        proxied: bool,
    ) -> Result<Vec<(PathBuf, PathBuf)>, StateError> {
        let mut files = Vec::new();
        if accounts {
            let host_passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
            let host_group = fs::read_to_string("/etc/group").unwrap_or_default();
            files.push(("passwd", passwd(&host_passwd, uid, gid)));
            files.push(("group", group(&host_group, gid)));
        }
        files.extend([
            ("hostname", format!("{hostname}\n")),
            (
                "hosts",
                format!("127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t{hostname}\n"),
            ),
            (
                "resolv.conf",
                if proxied {
                    "# openshell: answers only names the policy allows\nnameserver 10.200.0.1\n"
                        .to_string()
                } else {
                    "# openshell: no DNS in this sandbox\n".to_string()
                },
            ),
        ]);
        let mut out = Vec::new();
        for (name, content) in files {
            let host = scratch.join("etc").join(name);
            fs::write(&host, content).map_err(io_err("write", &host))?;
            let _ = fs::set_permissions(&host, fs::Permissions::from_mode(0o644));
            out.push((Path::new("/etc").join(name), host));
        }
        Ok(out)
    }

    /// Create the overlay upper and work dirs of an image sandbox and record which
    /// image it uses (so `image rm` can refuse). Returns (upper, work).
    pub fn image_dirs(&self, digest: &str) -> Result<(PathBuf, PathBuf), StateError> {
        let (upper, work) = (self.path.join("upper"), self.path.join("work"));
        for d in [&upper, &work] {
            // Not create_dir_all: a sandbox directory deleted meanwhile must not come back.
            // (Present already when a stopped sandbox starts again.)
            match fs::create_dir(d) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(io_err("create", d)(e));
                }
                _ => {}
            }
        }
        let f = self.path.join("image");
        fs::write(&f, format!("{digest}\n")).map_err(io_err("write", &f))?;
        Ok((upper, work))
    }

    /// Remove everything of this sandbox.
    pub fn remove(&self) -> Result<(), StateError> {
        if fs::remove_dir_all(&self.path).is_ok() {
            return Ok(());
        }
        // overlayfs leaves its `work/work` at mode 0: make what we own traversable
        // (never following a symlink), then try again.
        open_up(&self.path);
        fs::remove_dir_all(&self.path).map_err(io_err("remove", &self.path))
    }
}

/// chmod 0700 every directory under `dir` that we own and could not enter.
fn open_up(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    let Ok(md) = fs::symlink_metadata(dir) else {
        return;
    };
    if !md.is_dir() {
        return;
    }
    if md.uid() == me && md.mode() & 0o700 != 0o700 {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                open_up(&e.path());
            }
        }
    }
}

/// The host's system accounts plus `sandbox` at `uid:gid` (replacing whoever had it).
pub fn passwd(host: &str, uid: u32, gid: u32) -> String {
    let mut out: String = host
        .lines()
        .filter(|l| {
            let id = l.split(':').nth(2).and_then(|s| s.parse::<u32>().ok());
            matches!(id, Some(i) if (i < 1000 || i == 65534) && i != uid)
                && !l.starts_with("sandbox:")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(&format!("sandbox:x:{uid}:{gid}:sandbox:/sandbox:/bin/sh\n"));
    out
}

/// The host's system groups plus `sandbox` at `gid`.
pub fn group(host: &str, gid: u32) -> String {
    let mut out: String = host
        .lines()
        .filter(|l| {
            let id = l.split(':').nth(2).and_then(|s| s.parse::<u32>().ok());
            matches!(id, Some(i) if (i < 1000 || i == 65534) && i != gid)
                && !l.starts_with("sandbox:")
        })
        .map(|l| {
            // Members listed there are host users; they mean nothing inside.
            let mut f: Vec<&str> = l.split(':').collect();
            if f.len() == 4 {
                f[3] = "";
            }
            format!("{}\n", f.join(":"))
        })
        .collect();
    out.push_str(&format!("sandbox:x:{gid}:\n"));
    out
}

/// Parse `LOCAL[:DEST]`: DEST (default `/sandbox/<basename>`) must be under /sandbox.
/// Returns the local path and DEST relative to /sandbox.
pub fn parse_upload(arg: &str) -> Result<(PathBuf, PathBuf), StateError> {
    let (local, dest) = match arg.rsplit_once(':') {
        Some((l, d)) if d.starts_with('/') => (l, Some(d)),
        _ => (arg, None),
    };
    let local =
        fs::canonicalize(local).map_err(|e| StateError::Upload(format!("{arg}: {local}: {e}")))?;
    let dest = match dest {
        Some(d) => PathBuf::from(d),
        None => Path::new("/sandbox").join(local.file_name().unwrap_or_default()),
    };
    let rel = dest
        .strip_prefix("/sandbox")
        .map_err(|_| StateError::Upload(format!("{arg}: DEST must be under /sandbox")))?;
    if rel
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(StateError::Upload(format!(
            "{arg}: DEST must be a plain path under /sandbox"
        )));
    }
    Ok((local, rel.to_path_buf()))
}

/// Copy `local` to `workspace/rel`, skipping what .gitignore files exclude (unless
/// `all`). Symlinks are copied as symlinks, never followed. Returns files copied.
pub fn upload(local: &Path, workspace: &Path, rel: &Path, all: bool) -> Result<u64, StateError> {
    let target = workspace.join(rel);
    if local.is_file() {
        if let Some(p) = target.parent() {
            fs::create_dir_all(p).map_err(io_err("create", p))?;
        }
        fs::copy(local, &target).map_err(io_err("copy", local))?;
        return Ok(1);
    }
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
    let mut n = 0;
    for entry in walker {
        let entry = entry.map_err(|e| StateError::Upload(format!("{}: {e}", local.display())))?;
        let Ok(sub) = entry.path().strip_prefix(local) else {
            continue;
        };
        let dst = target.join(sub);
        let ft = entry
            .file_type()
            .ok_or_else(|| StateError::Upload("stdin".into()))?;
        if ft.is_dir() {
            fs::create_dir_all(&dst).map_err(io_err("create", &dst))?;
        } else if ft.is_symlink() {
            let link = fs::read_link(entry.path()).map_err(io_err("read link", entry.path()))?;
            std::os::unix::fs::symlink(link, &dst).map_err(io_err("create link", &dst))?;
        } else if ft.is_file() {
            fs::copy(entry.path(), &dst).map_err(io_err("copy", entry.path()))?;
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("dev-1").is_ok());
        for bad in ["", "-x", "Dev", "a/b", "a b", &"x".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(generate_name().starts_with("sbx-"));
    }

    #[test]
    fn passwd_replaces_uid_owner_and_drops_humans() {
        let host = "root:x:0:0::/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\nbob:x:1001:1001::/home/bob:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n";
        let p = passwd(host, 1000, 1000);
        assert_eq!(
            p,
            "root:x:0:0::/root:/bin/bash\nnobody:x:65534:65534::/:/bin/false\nsandbox:x:1000:1000:sandbox:/sandbox:/bin/sh\n"
        );
        let g = group("root:x:0:\nsudo:x:27:alice\nalice:x:1000:\n", 1000);
        assert_eq!(g, "root:x:0:\nsudo:x:27:\nsandbox:x:1000:\n");
    }

    #[test]
    fn upload_parsing() {
        let (l, r) = parse_upload("/tmp").unwrap();
        assert_eq!((l, r), (PathBuf::from("/tmp"), PathBuf::from("tmp")));
        let (_, r) = parse_upload("/tmp:/sandbox/x/y").unwrap();
        assert_eq!(r, PathBuf::from("x/y"));
        assert!(parse_upload("/tmp:/etc/x").is_err());
        assert!(parse_upload("/tmp:/sandbox/../x").is_err());
        assert!(parse_upload("/no/such").is_err());
    }
}
