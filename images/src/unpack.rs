//! Unpack one layer's tar stream into a directory, safely, in overlayfs's format.
//!
//! Every path is resolved with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) from the
//! layer's root fd and every entry is created with *at() calls on its parent's fd, so no
//! entry can land outside the layer, through a symlink, or hard-link to a file outside
//! it: `..` members are refused, absolute names are made relative, a parent that is a
//! symlink refuses the layer, hard links must point at a file of the same layer. OCI
//! whiteouts become overlay whiteouts (0/0 character devices, which Linux lets
//! unprivileged users create) and opaque markers the `user.overlay.opaque` xattr
//! (mounted with `userxattr`). Device nodes are skipped (sandboxes get their own /dev).
//! Directory modes are applied last so read-only directories can be filled first.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, mkdirat, mknodat, utimensat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchownat, linkat, mkfifoat, symlinkat, unlinkat};

/// Whose files these are on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ownership {
    /// Everything belongs to the unpacking user (rootless without id shifting).
    Flatten,
    /// Root: image id 0 stays 0, id N becomes `base + N` (the sandbox's id range).
    Shift {
        /// Host uid of image uid 0..65535 offset (image uid 0 stays 0).
        uid_base: u32,
        /// Same for gids.
        gid_base: u32,
    },
}

impl Ownership {
    fn map(&self, uid: u64, gid: u64) -> Option<(u32, u32)> {
        match *self {
            Ownership::Flatten => None,
            Ownership::Shift { uid_base, gid_base } => {
                let f = |id: u64, base: u32| match id {
                    0 => 0,
                    1..=65535 => base + id as u32,
                    _ => base + 65534,
                };
                Some((f(uid, uid_base), f(gid, gid_base)))
            }
        }
    }
}

/// What unpacking did besides writing files.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Entries processed.
    pub entries: u64,
    /// Device nodes not created (path list).
    pub skipped_devices: Vec<String>,
    /// Parent directories created without an entry of their own: they should take the
    /// attributes of the same directory in a lower layer (see `pull`).
    pub implicit_dirs: Vec<PathBuf>,
}

/// A refusal or failure while unpacking; the caller adds the layer name.
pub type UnpackResult<T> = std::result::Result<T, String>;

/// Most entries one layer may have.
pub const MAX_ENTRIES: u64 = 2_000_000;
const PATH_MAX: usize = 4096;

fn beneath(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        )
}

/// Normalise a member name to a relative path with only normal components.
/// `None` for the root itself. `..` anywhere is refused.
pub fn normalize(name: &Path) -> UnpackResult<Option<PathBuf>> {
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir => {
                return Err(format!(
                    "member {} contains '..' (refused: it would escape the layer)",
                    name.display()
                ));
            }
            Component::Prefix(_) => {
                return Err(format!("member {} is not a Unix path", name.display()));
            }
        }
    }
    if out.as_os_str().len() > PATH_MAX {
        return Err(format!("member name longer than {PATH_MAX} bytes"));
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// The layer being written.
struct Layer {
    root: OwnedFd,
    own: Ownership,
    dirs: Vec<(PathBuf, u32, i64, u64, u64)>,
    implicit: std::collections::BTreeSet<PathBuf>,
}

impl Layer {
    /// Open `rel` (a directory) beneath the root, creating missing directories 0755.
    fn dir(&mut self, rel: &Path) -> UnpackResult<OwnedFd> {
        let mut cur = openat2(
            self.root.as_fd(),
            ".",
            beneath(OFlag::O_DIRECTORY | OFlag::O_RDONLY),
        )
        .map_err(|e| format!("open layer root: {e}"))?;
        let mut so_far = PathBuf::new();
        for comp in rel.components() {
            let Component::Normal(name) = comp else {
                continue;
            };
            so_far.push(name);
            let open = |fd: &OwnedFd| {
                openat2(
                    fd.as_fd(),
                    name,
                    beneath(OFlag::O_DIRECTORY | OFlag::O_RDONLY),
                )
            };
            cur = match open(&cur) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => {
                    mkdirat(cur.as_fd(), name, Mode::from_bits_truncate(0o755))
                        .map_err(|e| format!("create {}: {e}", rel.display()))?;
                    self.implicit.insert(so_far.clone());
                    open(&cur).map_err(|e| format!("open {}: {e}", rel.display()))?
                }
                Err(Errno::ENOTDIR) if is_symlink(&cur, name) => {
                    return Err(format!(
                        "{} goes through a symlink (refused: it could point outside the layer)",
                        rel.display()
                    ));
                }
                Err(Errno::ENOTDIR) => {
                    // A file of this layer is replaced by a directory.
                    unlinkat(cur.as_fd(), name, UnlinkatFlags::NoRemoveDir)
                        .map_err(|e| format!("replace {}: {e}", rel.display()))?;
                    mkdirat(cur.as_fd(), name, Mode::from_bits_truncate(0o755))
                        .map_err(|e| format!("create {}: {e}", rel.display()))?;
                    open(&cur).map_err(|e| format!("open {}: {e}", rel.display()))?
                }
                Err(Errno::ELOOP) | Err(Errno::EXDEV) => {
                    return Err(format!(
                        "{} goes through a symlink (refused: it could point outside the layer)",
                        rel.display()
                    ));
                }
                Err(e) => return Err(format!("open {}: {e}", rel.display())),
            };
        }
        Ok(cur)
    }

    /// Remove whatever this layer already has at `name` in `parent`.
    fn clear(
        &self,
        parent: &OwnedFd,
        rel: &Path,
        name: &std::ffi::OsStr,
        keep_dir: bool,
    ) -> UnpackResult<()> {
        match unlinkat(parent.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(Errno::EISDIR) if keep_dir => Ok(()),
            Err(Errno::EISDIR) => {
                // Only reachable through verified, symlink-free parents.
                let full = fd_path(&self.root)?.join(rel);
                crate::store::force_remove(&full).map_err(|e| e.to_string())
            }
            Err(e) => Err(format!("replace {}: {e}", rel.display())),
        }
    }

    fn chown(
        &self,
        parent: &OwnedFd,
        name: &std::ffi::OsStr,
        uid: u64,
        gid: u64,
    ) -> UnpackResult<()> {
        if let Some((u, g)) = self.own.map(uid, gid) {
            fchownat(
                parent.as_fd(),
                name,
                Some(Uid::from_raw(u)),
                Some(Gid::from_raw(g)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| format!("chown: {e}"))?;
        }
        Ok(())
    }
}

fn is_symlink(dir: &OwnedFd, name: &std::ffi::OsStr) -> bool {
    nix::sys::stat::fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFLNK)
}

fn fd_path(fd: &OwnedFd) -> UnpackResult<PathBuf> {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(|e| e.to_string())
}

fn set_mtime(parent: &OwnedFd, name: &std::ffi::OsStr, mtime: i64) {
    let t = TimeSpec::new(mtime, 0);
    let _ = utimensat(
        parent.as_fd(),
        name,
        &t,
        &t,
        UtimensatFlags::NoFollowSymlink,
    );
}

/// Unpack a tar stream into `dest` (an empty directory). `check` is called with the
/// bytes written so far while file data is copied; an error from it aborts (limits).
pub fn unpack<R: Read>(
    tar: R,
    dest: &Path,
    own: Ownership,
    check: &mut dyn FnMut() -> UnpackResult<()>,
) -> UnpackResult<Stats> {
    let root = nix::fcntl::open(
        dest,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("open {}: {e}", dest.display()))?;
    let mut layer = Layer {
        root,
        own,
        dirs: Vec::new(),
        implicit: Default::default(),
    };
    let mut stats = Stats::default();
    let mut archive = tar::Archive::new(tar);
    let entries = archive
        .entries()
        .map_err(|e| format!("not a tar stream: {e}"))?;
    let mut buf = vec![0u8; 256 * 1024];
    for entry in entries {
        let mut e = entry.map_err(|e| format!("broken tar stream: {e}"))?;
        stats.entries += 1;
        if stats.entries > MAX_ENTRIES {
            return Err(format!("more than {MAX_ENTRIES} entries (limit)"));
        }
        let raw = e
            .path()
            .map_err(|e| format!("bad member name: {e}"))?
            .into_owned();
        let Some(rel) = normalize(&raw)? else {
            continue;
        };
        let hdr = e.header();
        let kind = hdr.entry_type();
        let mode = hdr.mode().unwrap_or(0o644) & 0o7777;
        let (uid, gid) = (hdr.uid().unwrap_or(0), hdr.gid().unwrap_or(0));
        let mtime = hdr.mtime().unwrap_or(0) as i64;
        let parent_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        let name = rel
            .file_name()
            .ok_or("member without a name")?
            .to_os_string();
        let name_str = name.to_string_lossy();
        if let Some(hidden) = name_str.strip_prefix(".wh.") {
            let parent = layer.dir(&parent_rel)?;
            if hidden == ".wh..opq" {
                let f = File::from(parent);
                xattr::FileExt::set_xattr(&f, "user.overlay.opaque", b"y").map_err(|e| {
                    format!(
                        "mark {} opaque: {e} (the store's filesystem needs user xattrs)",
                        parent_rel.display()
                    )
                })?;
            } else {
                let target = std::ffi::OsString::from(hidden);
                layer.clear(&parent, &parent_rel.join(&target), &target, false)?;
                mknodat(
                    parent.as_fd(),
                    target.as_os_str(),
                    SFlag::S_IFCHR,
                    Mode::empty(),
                    0,
                )
                .map_err(|e| format!("whiteout {}: {e}", parent_rel.join(hidden).display()))?;
            }
            continue;
        }
        let parent = layer.dir(&parent_rel)?;
        use tar::EntryType as T;
        match kind {
            T::Directory => {
                layer.implicit.remove(&rel);
                layer.clear(&parent, &rel, &name, true)?;
                match mkdirat(
                    parent.as_fd(),
                    name.as_os_str(),
                    Mode::from_bits_truncate(0o700),
                ) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(format!("create {}: {e}", rel.display())),
                }
                layer.chown(&parent, &name, uid, gid)?;
                layer.dirs.push((rel.clone(), mode, mtime, uid, gid));
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                layer.clear(&parent, &rel, &name, false)?;
                let fd = nix::fcntl::openat(
                    parent.as_fd(),
                    name.as_os_str(),
                    OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_WRONLY
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| format!("create {}: {e}", rel.display()))?;
                let mut f = File::from(fd);
                loop {
                    let n = e
                        .read(&mut buf)
                        .map_err(|err| format!("{}: {err}", rel.display()))?;
                    if n == 0 {
                        break;
                    }
                    f.write_all(&buf[..n])
                        .map_err(|err| format!("write {}: {err}", rel.display()))?;
                    check()?;
                }
                if let Ok(Some(exts)) = e.pax_extensions() {
                    for ext in exts.flatten() {
                        if let Some(k) =
                            ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr."))
                            && k.starts_with("user.")
                            && !k.starts_with("user.overlay.")
                        {
                            let _ = xattr::FileExt::set_xattr(&f, k, ext.value_bytes());
                        }
                    }
                }
                layer.chown(&parent, &name, uid, gid)?;
                // After chown (it clears setuid bits), on the descriptor of the file we
                // created: never through a name another entry could have replaced.
                nix::sys::stat::fchmod(&f, Mode::from_bits_truncate(mode))
                    .map_err(|e| format!("chmod {}: {e}", rel.display()))?;
                drop(f);
                set_mtime(&parent, &name, mtime);
            }
            T::Symlink => {
                let target = e
                    .link_name()
                    .map_err(|e| format!("bad link target: {e}"))?
                    .ok_or_else(|| format!("symlink {} without target", rel.display()))?
                    .into_owned();
                layer.clear(&parent, &rel, &name, false)?;
                symlinkat(target.as_os_str(), parent.as_fd(), name.as_os_str())
                    .map_err(|e| format!("symlink {}: {e}", rel.display()))?;
                layer.chown(&parent, &name, uid, gid)?;
                set_mtime(&parent, &name, mtime);
            }
            T::Link => {
                let raw_target = e
                    .link_name()
                    .map_err(|e| format!("bad link target: {e}"))?
                    .ok_or_else(|| format!("hard link {} without target", rel.display()))?
                    .into_owned();
                let target = normalize(&raw_target)?
                    .ok_or_else(|| format!("hard link {} to the root", rel.display()))?;
                let tparent = layer.dir(target.parent().unwrap_or(Path::new("")))?;
                let tname = target
                    .file_name()
                    .ok_or("hard link target without a name")?;
                layer.clear(&parent, &rel, &name, false)?;
                linkat(
                    tparent.as_fd(),
                    tname,
                    parent.as_fd(),
                    name.as_os_str(),
                    AtFlags::empty(),
                )
                .map_err(|err| match err {
                    Errno::ENOENT => format!(
                        "hard link {} -> {} points at nothing in this layer (refused)",
                        rel.display(),
                        raw_target.display()
                    ),
                    other => format!("hard link {}: {other}", rel.display()),
                })?;
            }
            T::Fifo => {
                layer.clear(&parent, &rel, &name, false)?;
                mkfifoat(
                    parent.as_fd(),
                    name.as_os_str(),
                    Mode::from_bits_truncate(mode),
                )
                .map_err(|e| format!("fifo {}: {e}", rel.display()))?;
                layer.chown(&parent, &name, uid, gid)?;
            }
            T::Char | T::Block => stats.skipped_devices.push(rel.display().to_string()),
            // PAX/GNU metadata records are consumed by the tar reader itself.
            _ => {}
        }
    }
    // Directory modes last, deepest first, so restrictive modes do not block filling.
    layer
        .dirs
        .sort_by_key(|(p, ..)| std::cmp::Reverse(p.components().count()));
    let dirs = std::mem::take(&mut layer.dirs);
    for (rel, mode, mtime, _, _) in &dirs {
        let parent = layer.dir(rel.parent().unwrap_or(Path::new("")))?;
        let name = rel.file_name().unwrap_or_default();
        // Opened without following anything: a later entry may have replaced the
        // directory by a symlink (`d/` then `d -> /etc`), whose target is not ours to
        // chmod; a directory that is gone or replaced keeps no mode of this entry.
        let Ok(fd) = openat2(
            parent.as_fd(),
            name,
            beneath(OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_NOFOLLOW),
        ) else {
            continue;
        };
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(*mode))
            .map_err(|e| format!("chmod {}: {e}", rel.display()))?;
        set_mtime(&parent, name, *mtime);
    }
    stats.implicit_dirs = layer.implicit.into_iter().collect();
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(if *kind == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            });
            h.set_size(data.len() as u64);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            // Bypass the builder's own path checks: write the raw name.
            let raw = &mut h.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// A directory entry later replaced by a symlink to a host path: its mode (set
    /// last) must not land on the symlink's target. Found by images/tests/prop.rs: it
    /// made /tmp setuid.
    #[test]
    fn directory_modes_never_follow_a_later_symlink() {
        let case = tmp("dirmode");
        let victim = case.join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o700)).unwrap();
        let dest = case.join("layer");
        std::fs::create_dir(&dest).unwrap();
        let target = victim.display().to_string();
        for link in [target.as_str(), "../victim", "../../"] {
            let t = tar_of(&[
                ("d", tar::EntryType::Directory, b"", None),
                ("d", tar::EntryType::Symlink, b"", Some(link)),
            ]);
            let _ = unpack(&t[..], &dest, Ownership::Flatten, &mut || Ok(()));
            let m = std::fs::metadata(&victim).unwrap().permissions().mode() & 0o7777;
            assert_eq!(m, 0o700, "{link}");
            let _ = std::fs::remove_file(dest.join("d"));
        }
        let _ = crate::store::force_remove(&case);
    }

    fn tmp(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("openshell-unpack-{tag}-{}", std::process::id()));
        let _ = crate::store::force_remove(&p);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn run(
        tag: &str,
        entries: &[(&str, tar::EntryType, &[u8], Option<&str>)],
    ) -> (PathBuf, UnpackResult<Stats>) {
        let d = tmp(tag);
        let t = tar_of(entries);
        let r = unpack(&t[..], &d, Ownership::Flatten, &mut || Ok(()));
        (d, r)
    }

    #[test]
    fn normalize_paths() {
        assert_eq!(
            normalize(Path::new("./a/b")).unwrap(),
            Some(PathBuf::from("a/b"))
        );
        assert_eq!(
            normalize(Path::new("/abs/x")).unwrap(),
            Some(PathBuf::from("abs/x"))
        );
        assert_eq!(normalize(Path::new("./")).unwrap(), None);
        assert!(normalize(Path::new("a/../../x")).is_err());
    }

    #[test]
    fn files_dirs_links_and_whiteouts() {
        use tar::EntryType as T;
        let (d, r) = run(
            "ok",
            &[
                ("d/", T::Directory, b"", None),
                ("d/f", T::Regular, b"hi", None),
                ("d/l", T::Symlink, b"", Some("/etc/passwd")),
                ("d/h", T::Link, b"", Some("d/f")),
                ("d/.wh.gone", T::Regular, b"", None),
                ("o/.wh..wh..opq", T::Regular, b"", None),
            ],
        );
        r.unwrap();
        assert_eq!(std::fs::read_to_string(d.join("d/f")).unwrap(), "hi");
        assert_eq!(
            std::fs::read_link(d.join("d/l")).unwrap(),
            PathBuf::from("/etc/passwd")
        );
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        assert_eq!(
            std::fs::metadata(d.join("d/h")).unwrap().ino(),
            std::fs::metadata(d.join("d/f")).unwrap().ino()
        );
        let wh = std::fs::symlink_metadata(d.join("d/gone")).unwrap();
        assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
        assert_eq!(
            xattr::get(d.join("o"), "user.overlay.opaque").unwrap(),
            Some(b"y".to_vec())
        );
        crate::store::force_remove(&d).unwrap();
    }

    #[test]
    fn escapes_are_refused() {
        use tar::EntryType as T;
        let (d, r) = run("dotdot", &[("../../x", T::Regular, b"x", None)]);
        assert!(r.unwrap_err().contains("'..'"));
        crate::store::force_remove(&d).unwrap();
        let (d, r) = run(
            "symparent",
            &[
                ("s", T::Symlink, b"", Some("/tmp")),
                ("s/evil", T::Regular, b"x", None),
            ],
        );
        assert!(r.unwrap_err().contains("goes through a symlink"));
        crate::store::force_remove(&d).unwrap();
        let (d, r) = run("hardlink", &[("h", T::Link, b"", Some("/etc/passwd"))]);
        assert!(r.unwrap_err().contains("points at nothing in this layer"));
        crate::store::force_remove(&d).unwrap();
        // Absolute names land inside.
        let (d, r) = run("abs", &[("/abs-file", T::Regular, b"x", None)]);
        r.unwrap();
        assert!(d.join("abs-file").exists());
        crate::store::force_remove(&d).unwrap();
    }
}
