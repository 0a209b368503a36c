//! Property test of the layer unpacker: tar streams built from hostile entries (`..`,
//! absolute names, symlinks and hard links pointing out, files through a symlinked
//! parent, whiteouts, devices, FIFOs, long names, huge sizes) and then mutated byte by
//! byte. Whatever the stream, unpacking ends (no panic, no hang) and nothing is
//! created, changed or linked outside the destination: a sibling directory and a
//! planted file next to it stay exactly as they were.
//!
//! CI runs proptest's default case count; `bench/fuzz.sh` runs it with
//! `PROPTEST_CASES` in the tens of thousands (release build).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use openshell_images::unpack::{Ownership, unpack};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(&'static str),
    Hardlink(&'static str),
    Fifo,
    CharDev,
}

fn names() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "a",
            "a/b",
            "./a/c",
            "/abs",
            "../outside/x",
            "a/../../outside/y",
            "link/x",
            "link2/z",
            ".wh.a",
            "a/.wh..wh..opq",
            "a/.wh.b",
            "dir/",
            "//double",
            "a/./b/",
            "outside",
            "..",
            ".",
            "",
            "x/y/z/w",
        ])
        .prop_map(String::from),
        "[a-z./]{1,120}",
        Just("n".repeat(300)),
    ]
}

fn kinds() -> impl Strategy<Value = Kind> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Kind::File),
        Just(Kind::Dir),
        prop::sample::select(vec![
            "../outside",
            "/",
            "/etc/passwd",
            "a",
            "../../",
            "link"
        ])
        .prop_map(Kind::Symlink),
        prop::sample::select(vec!["../outside/planted", "/etc/passwd", "a", "abs", "x"])
            .prop_map(Kind::Hardlink),
        Just(Kind::Fifo),
        Just(Kind::CharDev),
    ]
}

fn build(entries: &[(String, Kind, u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, mode) in entries {
        let mut h = tar::Header::new_gnu();
        let (ty, data): (tar::EntryType, &[u8]) = match kind {
            Kind::File(d) => (tar::EntryType::Regular, d),
            Kind::Dir => (tar::EntryType::Directory, &[]),
            Kind::Symlink(_) => (tar::EntryType::Symlink, &[]),
            Kind::Hardlink(_) => (tar::EntryType::Link, &[]),
            Kind::Fifo => (tar::EntryType::Fifo, &[]),
            Kind::CharDev => (tar::EntryType::Char, &[]),
        };
        h.set_entry_type(ty);
        h.set_mode(*mode);
        h.set_size(data.len() as u64);
        h.set_uid(0);
        h.set_gid(0);
        // Raw name bytes: the builder's checks would refuse the hostile ones.
        let raw = name.as_bytes();
        let n = raw.len().min(100);
        h.as_old_mut().name[..n].copy_from_slice(&raw[..n]);
        if let Kind::Symlink(t) | Kind::Hardlink(t) = kind {
            let t = t.as_bytes();
            h.as_old_mut().linkname[..t.len()].copy_from_slice(t);
        }
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn snapshot(dir: &Path) -> Vec<(String, u64, u32, u64)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let m = e.path().symlink_metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                m.ino(),
                m.mode(),
                m.nlink(),
            )
        })
        .collect();
    v.sort();
    v
}

proptest! {
    #[test]
    fn hostile_layers_never_write_outside_their_directory(
        entries in prop::collection::vec((names(), kinds(), prop::sample::select(vec![0o644u32, 0o4755, 0o777, 0, 0o7777])), 1..12),
        edits in prop::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        cut in any::<Option<usize>>(),
    ) {
        let mut tarball = build(&entries);
        for (at, v) in edits {
            let i = at % tarball.len();
            tarball[i] = v;
        }
        if let Some(c) = cut {
            tarball.truncate(c % (tarball.len() + 1));
        }
        let case = tempdir();
        let dest = case.join("layer");
        let outside = case.join("outside");
        std::fs::create_dir(&dest).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("planted"), b"host").unwrap();
        let modes = || {
            [case.as_path(), case.parent().unwrap()].map(|d| {
                let m = std::fs::symlink_metadata(d).unwrap();
                (m.mode(), m.uid(), m.mtime())
            })
        };
        let before_modes = modes();
        let before_case = snapshot(&case);
        let before_out = snapshot(&outside);
        let _ = unpack(&tarball[..], &dest, Ownership::Flatten, &mut || Ok(()));
        let after_modes = modes();
        prop_assert_eq!(before_modes[1], after_modes[1], "the directory above the layer's parent changed");
        prop_assert_eq!(before_modes[0].0, after_modes[0].0, "the layer's parent changed mode");
        let after_case: Vec<_> = snapshot(&case);
        prop_assert_eq!(before_case.len(), after_case.len(), "something was created next to the layer");
        prop_assert_eq!(&before_out, &snapshot(&outside), "the outside directory changed");
        prop_assert_eq!(std::fs::read(outside.join("planted")).unwrap(), b"host".to_vec());
        prop_assert_eq!(std::fs::metadata(outside.join("planted")).unwrap().nlink(), 1, "hard-linked from the layer");
        remove(&case);
        let m = std::fs::symlink_metadata(std::env::temp_dir()).unwrap();
        prop_assert_eq!(m.mode(), before_modes[1].0, "cleaning up changed the temp dir");
    }
}

fn tempdir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let p = std::env::temp_dir().join(format!(
        "openshell-prop-unpack-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Remove a case directory whatever modes the layer left (0 dirs included).
fn remove(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fn open_up(p: &Path) {
        if let Ok(m) = p.symlink_metadata()
            && m.is_dir()
        {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700));
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    open_up(&e.path());
                }
            }
        }
    }
    open_up(p);
    let _ = std::fs::remove_dir_all(p);
}
