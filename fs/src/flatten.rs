//! The fallback image root: copy overlay-format layers into one directory, applying
//! whiteouts (0/0 character devices) and opaque directories (`user.overlay.opaque`)
//! the way overlayfs would, for hosts where overlay cannot be mounted.
//!
//! Runs in init before pivot_root; synchronous. Hard links become copies.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Copy `lowers` (top first, like overlay's lowerdir) into `dest`.
pub fn flatten(lowers: &[PathBuf], dest: &Path) -> io::Result<()> {
    fs::create_dir_all(dest)?;
    for layer in lowers.iter().rev() {
        copy_dir(layer, dest)?;
    }
    Ok(())
}

fn is_whiteout(m: &fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o700));
            for e in fs::read_dir(p)? {
                remove_any(&e?.path())?;
            }
            fs::remove_dir(p)
        }
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn copy_dir(src: &Path, dst: &Path) -> io::Result<()> {
    // Writable while we fill it; the layer's mode is restored below.
    let _ = fs::set_permissions(dst, fs::Permissions::from_mode(0o700));
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let m = fs::symlink_metadata(&from)?;
        if is_whiteout(&m) {
            remove_any(&to)?;
        } else if m.is_dir() {
            let opaque = xattr_is_set(&from);
            match fs::symlink_metadata(&to) {
                Ok(t) if t.is_dir() && !opaque => {}
                Ok(_) => {
                    remove_any(&to)?;
                    fs::create_dir(&to)?;
                }
                Err(_) => fs::create_dir(&to)?,
            }
            copy_dir(&from, &to)?;
        } else {
            remove_any(&to)?;
            if m.file_type().is_symlink() {
                std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
                continue;
            } else if m.file_type().is_fifo() {
                nix::unistd::mkfifo(&to, nix::sys::stat::Mode::from_bits_truncate(m.mode()))
                    .map_err(io::Error::from)?;
            } else if m.is_file() {
                let _ = fs::set_permissions(&from, fs::Permissions::from_mode(m.mode() | 0o400));
                fs::copy(&from, &to)?;
                let _ = fs::set_permissions(&from, fs::Permissions::from_mode(m.mode() & 0o7777));
            } else {
                continue; // devices are never in our layers
            }
            fs::set_permissions(&to, fs::Permissions::from_mode(m.mode() & 0o7777))?;
        }
    }
    let m = fs::metadata(src)?;
    fs::set_permissions(dst, fs::Permissions::from_mode(m.mode() & 0o7777))
}

fn xattr_is_set(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut v = [0u8; 1];
    // SAFETY: lgetxattr with a valid path, a NUL-terminated name and a 1-byte buffer.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            c"user.overlay.opaque".as_ptr(),
            v.as_mut_ptr().cast(),
            1,
        )
    };
    n == 1 && v[0] == b'y'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiteouts_and_opaque_dirs_apply() {
        let base = std::env::temp_dir().join(format!("openshell-flatten-{}", std::process::id()));
        let _ = remove_any(&base);
        let (l1, l2, out) = (base.join("l1"), base.join("l2"), base.join("out"));
        fs::create_dir_all(l1.join("d")).unwrap();
        fs::create_dir_all(l2.join("d")).unwrap();
        fs::create_dir_all(l1.join("o")).unwrap();
        fs::create_dir_all(l2.join("o")).unwrap();
        fs::write(l1.join("gone"), "x").unwrap();
        fs::write(l1.join("d/keep"), "k").unwrap();
        fs::write(l1.join("o/old"), "o").unwrap();
        fs::write(l2.join("o/new"), "n").unwrap();
        nix::sys::stat::mknod(
            &l2.join("gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .unwrap();
        let c = std::ffi::CString::new(l2.join("o").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: setxattr with valid NUL-terminated path/name and a 1-byte value.
        let rc = unsafe {
            libc::setxattr(
                c.as_ptr(),
                c"user.overlay.opaque".as_ptr(),
                b"y".as_ptr().cast(),
                1,
                0,
            )
        };
        assert_eq!(rc, 0);
        flatten(&[l2.clone(), l1.clone()], &out).unwrap();
        assert!(!out.join("gone").exists());
        assert_eq!(fs::read_to_string(out.join("d/keep")).unwrap(), "k");
        assert!(!out.join("o/old").exists());
        assert!(out.join("o/new").exists());
        remove_any(&base).unwrap();
    }
}
