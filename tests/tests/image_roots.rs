//! Hostile images built by the test itself (docker-archive tars): ids the kernel treats
//! specially, account files that point at the host's, and symlinks, FIFOs and loops at
//! the paths setup creates, opens or mounts onto. Nothing may run as root, read a host
//! file, or create, open or mount anything outside the image's root; setup never hangs.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use openshell_tests::archive::{self, Node, accounts, base, docker_archive};
use openshell_tests::{need_sandbox, stderr, stdout};
use serde_json::json;

/// `run --from ARCHIVE OPTS -- ARGV`, killed (and failed) after 60 s: setup must never
/// hang.
fn run_image(
    sb: &openshell_tests::Sandbox,
    image: &str,
    opts: &[&str],
    argv: &[&str],
) -> std::process::Output {
    let mut args = vec!["run", "--network", "none", "--from", image];
    args.extend_from_slice(opts);
    args.push("--");
    args.extend_from_slice(argv);
    let mut child = sb
        .cmd()
        .env("OPENSHELL_IMAGE_DIR", sb.state.path().join("images"))
        .env("XDG_RUNTIME_DIR", sb.state.path().join("run"))
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("run --from {image} hung: {}", stderr(&out));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn image_with(dir: &Path, name: &str, extra: archive::Layer, config: serde_json::Value) -> String {
    let mut first = base();
    first.extend(accounts());
    docker_archive(&dir.join(format!("{name}.tar")), &[first, extra], config)
}

fn image_user_ids_the_kernel_treats_specially_never_run() {
    need_sandbox!();
    let sb = sb();
    let dir = archive::scratch("ids");
    let huge = vec![(
        "etc/passwd".to_string(),
        Node::File(
            b"root:x:0:0::/:/bin/sh\nhuge:x:4294967295:1000::/:/bin/sh\nbiggid:x:1500:4294967295::/:/bin/sh\nwide:x:65536:65536::/:/bin/sh\n".to_vec(),
            0o644,
        ),
    )];
    for (n, user, extra) in [
        (0, "4294967295:1000", vec![]),
        (1, "1000:4294967295", vec![]),
        (2, "4294967295", vec![]),
        (3, "65535:65535", vec![]),
        (4, "65536", vec![]),
        (5, "99999999999:1", vec![]),
        (6, "huge", huge.clone()),
        (7, "biggid", huge.clone()),
        (8, "wide", huge.clone()),
        (9, "1000:-1", vec![]),
    ] {
        let img = image_with(dir.path(), &format!("u{n}"), extra, json!({"User": user}));
        let out = run_image(&sb, &img, &[], &["sh", "-c", "id; touch /sandbox/ran"]);
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(125),
            "User {user:?} ran: {}{err}",
            stdout(&out)
        );
        assert!(
            err.contains("out of range") || err.contains("not in the image"),
            "User {user:?}: {err}"
        );
        assert!(
            !stdout(&out).contains("uid="),
            "User {user:?}: {}",
            stdout(&out)
        );
    }
    // A good id from the image is used exactly, and verified inside.
    let img = image_with(dir.path(), "good", vec![], json!({"User": "app"}));
    let out = run_image(&sb, &img, &[], &["id"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("uid=1500(app) gid=1600(app)"),
        "{}",
        stdout(&out)
    );
    let img = image_with(dir.path(), "root", vec![], json!({"User": "0:0"}));
    let out = run_image(&sb, &img, &[], &["id", "-u"]);
    assert_eq!(
        stdout(&out).trim(),
        "1000",
        "root in the image runs as the sandbox user"
    );
}

fn policy_ids_the_kernel_treats_specially_are_refused_before_anything_runs() {
    need_sandbox!();
    let sb = sb();
    for v in [
        "4294967295",
        "-1",
        "65535",
        "65536",
        "0x0",
        "0xFFFFFFFF",
        "4294967296",
    ] {
        for key in ["run_as_user", "run_as_group"] {
            let pol = openshell_tests::policy_file(
                sb.state.path(),
                "p.yaml",
                &format!("version: 1\nprocess:\n  {key}: {v}\n"),
            );
            let p = pol.display().to_string();
            let out = sb.cli(&["policy", "validate", &p]);
            assert!(!out.status.success(), "{key}: {v} validated");
            let out = sb.run(&["--network", "none", "--policy", &p], &["id"]);
            assert_eq!(
                out.status.code(),
                Some(125),
                "{key}: {v} ran: {}",
                stdout(&out)
            );
            assert!(stderr(&out).contains(key), "{}", stderr(&out));
            assert!(!stdout(&out).contains("uid="), "{}", stdout(&out));
        }
    }
}

fn account_files_are_read_from_the_image_only() {
    need_sandbox!();
    let sb = sb();
    let dir = archive::scratch("acct");
    // `daemon` (uid 1) exists in the host's /etc/passwd, not in the image's.
    for (n, layer) in [
        (
            0,
            vec![("etc/passwd".to_string(), Node::Link("/etc/passwd".into()))],
        ),
        (
            1,
            vec![(
                "etc/passwd".to_string(),
                Node::Link("../../../../../../etc/passwd".into()),
            )],
        ),
        (2, vec![("etc/passwd".to_string(), Node::Fifo)]),
    ] {
        let mut first = base();
        first.extend(layer);
        let img = docker_archive(
            &dir.path().join(format!("a{n}.tar")),
            &[first],
            json!({"User": "daemon"}),
        );
        let out = run_image(&sb, &img, &[], &["id"]);
        assert_eq!(
            out.status.code(),
            Some(125),
            "variant {n}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        assert!(
            !stdout(&out).contains("uid="),
            "variant {n}: {}",
            stdout(&out)
        );
    }
    // The whole /etc a link to the host's.
    let mut first = base();
    first.retain(|(p, _)| p != "etc");
    first.push(("etc".into(), Node::Link("/etc".into())));
    let img = docker_archive(
        &dir.path().join("etc.tar"),
        &[first],
        json!({"User": "daemon"}),
    );
    let out = run_image(&sb, &img, &[], &["id"]);
    assert_eq!(
        out.status.code(),
        Some(125),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
}

/// Every file and directory under `dir` (the test's canary area).
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A host path outside /tmp that no run may create.
const OUTSIDE_TMP: &str = "/var/openshell-canary-image-tmp";

fn setup_never_creates_opens_or_mounts_outside_the_root() {
    need_sandbox!();
    let sb = sb();
    let dir = archive::scratch("setup");
    let host = dir.path().join("host");
    std::fs::create_dir(&host).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o777)).unwrap();
    let fifo = host.join("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o666)).unwrap();
    let h = |n: &str| host.join(n).display().to_string();
    let before = listing(&host);
    // (name, layer, None = runs with our files in place | Some(what the refusal says))
    let variants: Vec<(&str, archive::Layer, Option<&str>)> = vec![
        (
            "hosts",
            vec![("etc/hosts".into(), Node::Link(h("hosts")))],
            None,
        ),
        (
            "hostname",
            vec![("etc/hostname".into(), Node::Link(h("hostname")))],
            None,
        ),
        (
            "resolv",
            vec![("etc/resolv.conf".into(), Node::Link(h("resolv.conf")))],
            None,
        ),
        (
            "fifo-link",
            vec![(
                "etc/hostname".into(),
                Node::Link(fifo.display().to_string()),
            )],
            None,
        ),
        ("run", vec![("run".into(), Node::Link(h("run")))], None),
        (
            "relative",
            vec![(
                "etc/hosts".into(),
                Node::Link("../../../../../../../../".to_string() + &h("rel")),
            )],
            None,
        ),
        // The sandbox's own mount points are never reached through a link.
        (
            "tmp",
            vec![("tmp".into(), Node::Link(OUTSIDE_TMP.into()))],
            Some("/tmp in the image is a symlink"),
        ),
        (
            "dev",
            vec![("dev".into(), Node::Link(h("dev")))],
            Some("/dev in the image is a symlink"),
        ),
        (
            "sandbox",
            vec![("sandbox".into(), Node::Link(h("sandbox")))],
            Some("/sandbox in the image is a symlink"),
        ),
        // Under the sandbox's own /dev tmpfs: the image's /dev/shm link is never seen.
        (
            "shm",
            vec![
                ("dev".into(), Node::Dir(0o755)),
                ("dev/shm".into(), Node::Link(h("shm"))),
            ],
            None,
        ),
        (
            "proc",
            vec![("proc".into(), Node::Link(h("proc")))],
            Some("/proc in the image is a symlink"),
        ),
    ];
    for (name, layer, refused) in variants {
        let img = image_with(dir.path(), name, layer, json!({}));
        let out = run_image(&sb, &img, &[], &["cat", "/etc/hostname", "/etc/hosts"]);
        match refused {
            None => {
                assert!(out.status.success(), "{name}: {}", stderr(&out));
                assert!(
                    stdout(&out).contains("127.0.0.1"),
                    "{name}: our /etc/hosts: {}",
                    stdout(&out)
                );
            }
            Some(why) => {
                assert_eq!(out.status.code(), Some(125), "{name}: {}", stderr(&out));
                assert!(stderr(&out).contains(why), "{name}: {}", stderr(&out));
            }
        }
        assert_eq!(
            listing(&host),
            before,
            "{name}: setup created something on the host"
        );
        assert!(
            !Path::new(OUTSIDE_TMP).exists(),
            "{name}: {OUTSIDE_TMP} was created"
        );
    }
    // The same with the proxy: /run/openshell gets the CA files.
    let img = image_with(
        dir.path(),
        "run-proxy",
        vec![("run".into(), Node::Link(h("run")))],
        json!({}),
    );
    let out = os(&sb, &["run", "--from", &img, "--", "ls", "/run/openshell"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        listing(&host),
        before,
        "proxy run created something on the host"
    );
}

fn non_regular_files_and_loops_are_refused_without_blocking() {
    need_sandbox!();
    let sb = sb();
    let dir = archive::scratch("fifo");
    for (name, layer, want) in [
        (
            "fifo-hostname",
            vec![("etc/hostname".to_string(), Node::Fifo)],
            "FIFO",
        ),
        (
            "fifo-hosts",
            vec![("etc/hosts".to_string(), Node::Fifo)],
            "FIFO",
        ),
        (
            "dir-resolv",
            vec![("etc/resolv.conf".to_string(), Node::Dir(0o755))],
            "directory",
        ),
        (
            "proc-loop",
            vec![("proc".to_string(), Node::Link("/proc".into()))],
            "/proc",
        ),
        (
            "proc-elsewhere",
            vec![("proc".to_string(), Node::Link("/sandbox/p".into()))],
            "symlink",
        ),
        (
            "dev-loop",
            vec![("dev".to_string(), Node::Link("/dev".into()))],
            "symlink",
        ),
        (
            "etc-loop",
            vec![("etc/hosts".to_string(), Node::Link("/etc/hosts".into()))],
            "symbolic links",
        ),
        (
            "tmp-file",
            vec![("tmp".to_string(), Node::File(b"x".to_vec(), 0o644))],
            "tmp",
        ),
    ] {
        let img = image_with(dir.path(), name, layer, json!({}));
        let t = Instant::now();
        let out = run_image(&sb, &img, &[], &["true"]);
        assert_eq!(out.status.code(), Some(125), "{name}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{name}: {}", stderr(&out));
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "{name} took {:?}",
            t.elapsed()
        );
    }
}

fn the_store_and_state_are_private_so_setuid_files_of_images_are_out_of_reach() {
    need_sandbox!();
    use std::os::unix::fs::PermissionsExt;
    let sb = sb();
    let dir = archive::scratch("suid");
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let img = image_with(
        dir.path(),
        "suid",
        vec![("bin/suid-sh".into(), Node::File(busybox, 0o4755))],
        json!({}),
    );
    let out = run_image(&sb, &img, &["--keep", "--name", "keep"], &["id"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let store = sb.state.path().join("images");
    let sandbox = sb.state.path().join("sandboxes/keep");
    for p in [
        store.clone(),
        sb.state.path().join("sandboxes"),
        sandbox.clone(),
    ] {
        assert_eq!(mode(&p), 0o700, "{} is {:o}", p.display(), mode(&p));
    }
    // The set-id file is in the store, but nobody else can reach it.
    let found = std::process::Command::new("find")
        .arg(&store)
        .args(["-perm", "-4000", "-name", "suid-sh"])
        .output()
        .unwrap();
    let path = stdout(&found)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        !path.is_empty(),
        "the test image's setuid file is in the store"
    );
    if nix_is_root() {
        for who in ["nobody", "daemon"] {
            let o = std::process::Command::new("/usr/sbin/runuser")
                .args(["-u", who, "--", &path, "id", "-u"])
                .output()
                .unwrap();
            assert!(!o.status.success(), "{who} ran {path}: {}", stdout(&o));
            let o = std::process::Command::new("/usr/sbin/runuser")
                .args(["-u", who, "--", "ls", &sandbox.display().to_string()])
                .output()
                .unwrap();
            assert!(!o.status.success(), "{who} listed the sandbox dir");
        }
    }
}

fn nix_is_root() -> bool {
    // The effective uid as the kernel reports it.
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        .unwrap_or(false)
}

/// A user's mount whose destination the image links to the root itself (`/work -> /`,
/// `work -> .`, a chain) is refused with a clear error: mounted there it would cover
/// the whole root, the sandbox's /proc, /dev, /tmp and /sandbox with it.
fn a_mount_destination_linked_to_the_root_is_refused() {
    need_sandbox!();
    let sb = sb();
    let dir = archive::scratch("ontoroot");
    let host = dir.path().join("host");
    std::fs::create_dir(&host).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mount = format!("{}:/work", host.display());
    let variants: Vec<(&str, archive::Layer)> = vec![
        ("absolute", vec![("work".into(), Node::Link("/".into()))]),
        ("dot", vec![("work".into(), Node::Link(".".into()))]),
        (
            "chain",
            vec![
                ("a".into(), Node::Link("..".into())),
                ("work".into(), Node::Link("a".into())),
            ],
        ),
    ];
    for (name, layer) in variants {
        let img = image_with(dir.path(), name, layer, json!({}));
        let out = run_image(&sb, &img, &["--mount", &mount], &["ls", "/proc/self"]);
        assert_eq!(out.status.code(), Some(125), "{name}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("leads to the sandbox's root"),
            "{name}: {}",
            stderr(&out)
        );
    }
    // A real directory there is mounted as usual.
    let img = image_with(
        dir.path(),
        "plain",
        vec![("work".into(), Node::Dir(0o755))],
        json!({}),
    );
    std::fs::write(host.join("seen"), "").unwrap();
    let out = run_image(&sb, &img, &["--mount", &mount], &["ls", "/work"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("seen"), "{}", stdout(&out));
}

openshell_tests::suite!(
    image_user_ids_the_kernel_treats_specially_never_run,
    policy_ids_the_kernel_treats_specially_are_refused_before_anything_runs,
    account_files_are_read_from_the_image_only,
    setup_never_creates_opens_or_mounts_outside_the_root,
    non_regular_files_and_loops_are_refused_without_blocking,
    the_store_and_state_are_private_so_setuid_files_of_images_are_out_of_reach,
    a_mount_destination_linked_to_the_root_is_refused,
);
