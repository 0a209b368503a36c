//! Hostile and broken images against the real registry: escapes, bombs, limits,
//! inconsistent content, interrupted and concurrent pulls, a full disk, and the
//! unpacked tree and ownership compared with what the image says.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use openshell_tests::{need_sandbox, stderr, stdout};

fn hostile_layers_never_write_outside() {
    let e = need_registry!();
    let sb = sb();
    let canaries = [
        "/tmp/os-testenv-evil-dotdot",
        "/tmp/os-testenv-evil-absolute",
        "/tmp/os-testenv-evil-symlink-same",
        "/tmp/os-testenv-evil-symlink-abs",
        "/tmp/os-testenv-evil-symlink-rel",
    ];
    for c in canaries {
        let _ = std::fs::remove_file(c);
    }
    for (tag, refused) in [
        ("dotdot", true),
        ("absolute", false),
        ("symlink", true),
        ("hardlink", true),
    ] {
        let out = os(&sb, &["image", "pull", &format!("{}/evil:{tag}", e.plain)]);
        assert_eq!(
            !out.status.success(),
            refused,
            "evil:{tag}: {}",
            stderr(&out)
        );
        if refused {
            let err = stderr(&out);
            assert!(
                err.lines()
                    .last()
                    .unwrap_or("")
                    .starts_with("openshell: layer sha256:"),
                "{err}"
            );
        }
    }
    for c in canaries {
        assert!(
            !std::path::Path::new(c).exists(),
            "{c} was written on the host"
        );
    }
    // Nothing of a refused layer stays; the absolute one landed inside its layer.
    let tmp = sb.state.path().join("images/tmp");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    // No file in the store is a hard link to the host's /etc/passwd.
    use std::os::unix::fs::MetadataExt;
    let passwd = std::fs::metadata("/etc/passwd").unwrap();
    let out = Command::new("find")
        .arg(sb.state.path().join("images"))
        .args(["-inum", &passwd.ino().to_string()])
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "");
}

fn decompression_bomb_is_stopped() {
    let e = need_registry!();
    let sb = sb();
    let out = os(&sb, &["image", "pull", &format!("{}/evil:bomb", e.plain)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("decompression bomb"),
        "{}",
        stderr(&out)
    );
    // A lower absolute limit is reported as such.
    let out = sb
        .cmd()
        .env("OPENSHELL_IMAGE_DIR", sb.state.path().join("images"))
        .env("OPENSHELL_MAX_LAYER_BYTES", "1000000")
        .args(["image", "pull", &format!("{}/busybox:latest", e.plain)])
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("exceeds the limit of 1000000 bytes"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_dir(sb.state.path().join("images/layers"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(sb.state.path().join("images/tmp"))
            .unwrap()
            .count(),
        0
    );
}

fn interrupted_and_concurrent_pulls() {
    let e = need_registry!();
    let sb = sb();
    let big = format!("{}/big:latest", e.plain);
    let spawn = |r: &str| {
        sb.cmd()
            .env("OPENSHELL_IMAGE_DIR", sb.state.path().join("images"))
            .args(["image", "pull", "-q", r])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // kill -9 in the middle: nothing half-written is ever used, the next pull completes.
    let mut p = spawn(&big);
    std::thread::sleep(Duration::from_millis(400));
    p.kill().unwrap();
    let _ = p.wait();
    let layers = sb.state.path().join("images/layers");
    for l in std::fs::read_dir(&layers).unwrap().flatten() {
        assert!(l.path().is_dir() && !l.file_name().to_string_lossy().contains("tmp"));
    }
    ok(&os(&sb, &["image", "pull", &big]));
    // Two pulls of the same image at once: both succeed, one copy of each layer.
    let zstd = format!("{}/big:zstd", e.plain);
    let (a, b) = (spawn(&zstd), spawn(&zstd));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(ok(&a), ok(&b));
    assert_eq!(std::fs::read_dir(&layers).unwrap().count(), 4);
}

fn inconsistent_images_are_refused_and_nothing_is_kept() {
    let e = need_registry!();
    let sb = sb();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/push_hostile.py");
    let push = Command::new("python3")
        .arg(&script)
        .arg(&e.plain)
        .output()
        .unwrap();
    assert!(push.status.success(), "push: {}", stderr(&push));
    for (tag, want) in [
        ("wrong-diffid", "uncompressed content hashes to"),
        ("wrong-size", "the manifest says"),
    ] {
        let out = os(
            &sb,
            &[
                "image",
                "pull",
                &format!("{}/openshell-test/hostile:{tag}", e.plain),
            ],
        );
        assert_eq!(out.status.code(), Some(1), "{tag}");
        let err = stderr(&out);
        assert!(
            err.contains(want) && err.contains("nothing of it was kept"),
            "{tag}: {err}"
        );
    }
    assert_eq!(
        std::fs::read_dir(sb.state.path().join("images/layers"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(sb.state.path().join("images/tmp"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(ok(&os(&sb, &["image", "list", "-q"])), "");
}

fn a_full_disk_is_a_clear_error() {
    let e = need_registry!();
    need_sandbox!();
    let sb = sb();
    let store = sb.state.path().join("tiny");
    std::fs::create_dir_all(&store).unwrap();
    // A 256 KiB tmpfs as the store, in a private mount namespace of our own.
    let script = format!(
        "mount -t tmpfs -o size=256k none {s} && OPENSHELL_IMAGE_DIR={s} {os} image pull {r}/busybox:latest",
        s = store.display(),
        os = openshell_tests::openshell_bin().display(),
        r = e.plain
    );
    let out = Command::new("unshare")
        .args(["-Urm", "sh", "-c", &script])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains("no space left on the device holding the image store"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

fn check_tree_script() -> String {
    std::env::var("OS_TEST_CHECK_TREE")
        .unwrap_or_else(|_| format!("{}/env/lib/check_tree.py", env!("CARGO_MANIFEST_DIR")))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn unpacked_layers_give_the_expected_tree() {
    let e = need_registry!();
    need_sandbox!();
    let sb = sb();
    let store = sb.state.path().join("images");
    // Rootless with subordinate ids keeps owners, which a plain `unshare -U` cannot
    // read back; compare the tree of a flattened-ownership store there.
    let out = sb
        .cmd()
        .env("OPENSHELL_IMAGE_DIR", &store)
        .env("OPENSHELL_NO_SUBIDS", "1")
        .args([
            "image",
            "pull",
            "-q",
            &format!("{}/busybox:multilayer", e.plain),
        ])
        .output()
        .unwrap();
    let digest = ok(&out).trim().trim_start_matches("sha256:").to_string();
    let rec: String =
        std::fs::read_to_string(store.join(format!("records/{digest}.json"))).unwrap();
    let diffs: Vec<String> = rec
        .split("\"diff_id\": \"sha256:")
        .skip(1)
        .map(|s| s[..64].to_string())
        .collect();
    assert_eq!(diffs.len(), 4);
    let lower: Vec<String> = diffs
        .iter()
        .rev()
        .map(|d| store.join("layers").join(d).display().to_string())
        .collect();
    let m = sb.state.path().join("merged");
    for d in ["u", "w", "m"] {
        std::fs::create_dir_all(m.join(d)).unwrap();
    }
    let expected = format!(
        "{}/expected/busybox_multilayer.tsv",
        var("OS_TEST_IMAGES_DIR")
    );
    let script = format!(
        "mount -t overlay overlay -o lowerdir={},upperdir={u},workdir={w},userxattr {mnt} && python3 {ct} {mnt} {exp} --rootless",
        lower.join(":"),
        u = m.join("u").display(),
        w = m.join("w").display(),
        mnt = m.join("m").display(),
        ct = check_tree_script(),
        exp = expected,
    );
    let out = Command::new("unshare")
        .args(["-Urm", "sh", "-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("matches busybox_multilayer.tsv"),
        "{}",
        stdout(&out)
    );
}

fn image_ownership_is_kept_where_ids_allow() {
    let e = need_registry!();
    need_sandbox!();
    let sb = sb();
    let ml = format!("{}/busybox:multilayer", e.plain);
    let subids = std::path::Path::new("/usr/bin/newuidmap").exists()
        && std::fs::read_to_string("/etc/subuid")
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with(&format!("{}:", std::env::var("USER").unwrap_or_default())));
    let files =
        "/bin/busybox /data/owner/uid1000.txt /data/owner/uid65534.txt /data/owner/dir-uid1000";
    let out = os(
        &sb,
        &[
            "run",
            "--from",
            &ml,
            "--",
            "sh",
            "-c",
            &format!("stat -c '%u %g %n' {files}"),
        ],
    );
    let text = ok(&out);
    if is_root() || subids {
        assert_eq!(
            text,
            "0 0 /bin/busybox\n1000 1000 /data/owner/uid1000.txt\n65534 65534 /data/owner/uid65534.txt\n1000 1000 /data/owner/dir-uid1000\n"
        );
    } else {
        eprintln!("ownership flattened (no subordinate ids for this user): {text}");
    }
}

openshell_tests::suite!(
    hostile_layers_never_write_outside,
    decompression_bomb_is_stopped,
    interrupted_and_concurrent_pulls,
    inconsistent_images_are_refused_and_nothing_is_kept,
    a_full_disk_is_a_clear_error,
    unpacked_layers_give_the_expected_tree,
    image_ownership_is_kept_where_ids_allow,
);
