//! `openshell sandbox upload|download` as a user drives them: a tree with .gitignore and
//! a large file round-trips and the sandbox sees what arrived; symlinks the sandbox
//! plants in its workspace never redirect an upload or leak host files on download.

use std::path::Path;
use std::time::{Duration, Instant};

use openshell_tests::{Sandbox, TempDir, need_sandbox, stderr, stdout};

fn wait_file(p: &Path) {
    let until = Instant::now() + Duration::from_secs(20);
    while !p.exists() {
        assert!(Instant::now() < until, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

fn upload_and_download_round_trip_a_tree() {
    need_sandbox!();
    let sb = Sandbox::new();
    let local = TempDir::new("up");
    let proj = local.path().join("proj");
    std::fs::create_dir_all(proj.join("sub")).unwrap();
    std::fs::write(proj.join("a.txt"), "hello\n").unwrap();
    std::fs::write(proj.join(".env"), "TOKEN=secret\n").unwrap();
    std::fs::write(proj.join(".gitignore"), ".env\n").unwrap();
    std::fs::write(proj.join("sub/b.txt"), "deep\n").unwrap();
    let big = pattern(24 << 20);
    std::fs::write(proj.join("big.bin"), &big).unwrap();
    std::os::unix::fs::symlink("a.txt", proj.join("link")).unwrap();

    // The sandbox reports what it sees once /sandbox/go arrives.
    let script = "while [ ! -e /sandbox/go ]; do sleep 0.02; done; \
        { cat /sandbox/proj/a.txt /sandbox/proj/sub/b.txt; readlink /sandbox/proj/link; \
          ls -A /sandbox/proj; wc -c < /sandbox/proj/big.bin; } > /sandbox/seen.tmp; \
        mv /sandbox/seen.tmp /sandbox/seen; sleep 30";
    let mut child = sb.start_kept("tx", script);
    let o = sb.cli(&["sandbox", "upload", "tx", proj.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("uploaded 4 files"), "{}", stdout(&o));
    let go = local.path().join("go");
    std::fs::write(&go, "").unwrap();
    let o = sb.cli(&[
        "sandbox",
        "upload",
        "tx",
        go.to_str().unwrap(),
        "/sandbox/go",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));

    let back = TempDir::new("down");
    let seen = back.path().join("seen");
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let o = sb.cli(&[
            "sandbox",
            "download",
            "tx",
            "/sandbox/seen",
            seen.to_str().unwrap(),
        ]);
        if o.status.success() {
            break;
        }
        assert!(Instant::now() < until, "{}", stderr(&o));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap(),
        format!(
            "hello\ndeep\na.txt\n.gitignore\na.txt\nbig.bin\nlink\nsub\n{}\n",
            big.len()
        ),
        ".env stays out (gitignored); the sandbox sees the rest"
    );
    let o = sb.cli(&[
        "sandbox",
        "download",
        "tx",
        "proj",
        back.path().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = back.path().join("proj");
    assert!(
        std::fs::read(got.join("big.bin")).unwrap() == big,
        "big file differs"
    );
    assert_eq!(
        std::fs::read_link(got.join("link")).unwrap(),
        Path::new("a.txt")
    );
    assert!(!got.join(".env").exists());

    // --no-git-ignore takes everything.
    let o = sb.cli(&[
        "sandbox",
        "upload",
        "tx",
        proj.to_str().unwrap(),
        "/sandbox/all",
        "--no-git-ignore",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = sb.cli(&[
        "sandbox",
        "download",
        "tx",
        "/sandbox/all/.env",
        back.path().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(back.path().join(".env")).unwrap(),
        "TOKEN=secret\n"
    );
    assert!(sb.cli(&["sandbox", "delete", "tx"]).status.success());
    child.wait().unwrap();
}

fn planted_symlinks_never_redirect_a_copy() {
    need_sandbox!();
    let sb = Sandbox::new();
    // A host directory the sandbox must not reach through the CLI.
    let victim = TempDir::new("victim");
    std::fs::write(victim.path().join("secret"), "host secret\n").unwrap();
    let v = victim.path().display().to_string();
    let script = format!(
        "ln -s {v} /sandbox/evil; ln -s {v}/secret /sandbox/f; ln -s ../../../../../../../../{v} /sandbox/esc; \
         mkdir /sandbox/out; echo mine > /sandbox/out/mine; ln -s mine /sandbox/out/ok; \
         ln -s {v}/secret /sandbox/out/abs; ln -s ../../x /sandbox/out/up; touch /sandbox/ready; sleep 30"
    );
    let mut child = sb.start_kept("trap", &script);
    let ws = {
        let o = sb.cli(&["sandbox", "get", "trap", "-o", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        std::path::PathBuf::from(v["path"].as_str().unwrap()).join("workspace")
    };
    wait_file(&ws.join("ready"));
    let local = TempDir::new("payload");
    let payload = local.path().join("payload");
    std::fs::write(&payload, "overwritten\n").unwrap();
    for dest in [
        "/sandbox/evil/secret",
        "/sandbox/f",
        "/sandbox/esc/secret",
        "/sandbox/evil",
    ] {
        let o = sb.cli(&["sandbox", "upload", "trap", payload.to_str().unwrap(), dest]);
        assert_eq!(o.status.code(), Some(1), "{dest}: {}", stdout(&o));
        assert!(stderr(&o).contains("refused"), "{dest}: {}", stderr(&o));
    }
    assert_eq!(
        std::fs::read_to_string(victim.path().join("secret")).unwrap(),
        "host secret\n",
        "the host file was written through a planted symlink"
    );
    assert_eq!(std::fs::read_dir(victim.path()).unwrap().count(), 1);

    let back = TempDir::new("back");
    let o = sb.cli(&[
        "sandbox",
        "download",
        "trap",
        "/sandbox/out",
        back.path().to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "refusals make it fail");
    let err = stderr(&o);
    assert!(
        err.contains("/sandbox/out/abs -> ") && err.contains("/sandbox/out/up -> ../../x"),
        "{err}"
    );
    let out = back.path().join("out");
    assert_eq!(std::fs::read_to_string(out.join("mine")).unwrap(), "mine\n");
    assert_eq!(
        std::fs::read_link(out.join("ok")).unwrap(),
        Path::new("mine")
    );
    assert!(std::fs::symlink_metadata(out.join("abs")).is_err());
    assert!(std::fs::symlink_metadata(out.join("up")).is_err());
    for path in ["/sandbox/f", "/sandbox/evil/secret", "/sandbox/esc"] {
        let o = sb.cli(&[
            "sandbox",
            "download",
            "trap",
            path,
            back.path().to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(1), "{path}");
        assert!(!stdout(&o).contains("host secret"));
    }
    let leaked = std::fs::read_dir(back.path())
        .unwrap()
        .flatten()
        .any(|e| std::fs::read(e.path()).is_ok_and(|c| c == b"host secret\n"));
    assert!(!leaked, "a host file came out");

    for (args, want) in [
        (
            vec!["download", "trap", "/etc/passwd"],
            "only paths under /sandbox",
        ),
        (
            vec!["download", "trap", "/sandbox/../etc"],
            "'..' is not allowed",
        ),
        (vec!["upload", "trap", "/nonexistent/x"], "/nonexistent/x"),
        (
            vec!["upload", "nope", "/etc/hostname"],
            "no sandbox named nope",
        ),
    ] {
        let mut a = vec!["sandbox"];
        a.extend(args);
        let o = sb.cli(&a);
        assert_eq!(o.status.code(), Some(1), "{a:?}");
        assert!(stderr(&o).contains(want), "{a:?}: {}", stderr(&o));
    }
    assert!(sb.cli(&["sandbox", "delete", "trap"]).status.success());
    child.wait().unwrap();
}

/// `cli` with a deadline: a transfer that blocks on a FIFO fails the test instead of
/// hanging it.
fn cli_within(sb: &Sandbox, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut c = sb
        .cmd()
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(data) = stdin {
        let mut w = c.stdin.take().unwrap();
        let data = data.to_vec();
        std::thread::spawn(move || {
            let _ = w.write_all(&data);
        });
    }
    // Read its output while waiting (a tar stream fills any pipe).
    let pid = c.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(c.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(o) => o.unwrap(),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
            panic!("openshell {args:?} blocked for 60 s");
        }
    }
}

fn blocks(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().blocks() * 512
}

fn holes_stay_holes_both_ways() {
    need_sandbox!();
    let sb = Sandbox::new();
    let o = sb.run(
        &["--keep", "--name", "sp", "--network", "none"],
        &[
            "sh",
            "-c",
            "truncate -s 2G /sandbox/sparse && printf end >> /sandbox/sparse",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let local = TempDir::new("sparse");
    let got = local.path().join("got");
    let o = cli_within(
        &sb,
        &[
            "sandbox",
            "download",
            "sp",
            "/sandbox/sparse",
            got.to_str().unwrap(),
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::metadata(&got).unwrap().len(), (2 << 30) + 3);
    assert!(
        blocks(&got) < 1 << 20,
        "{} bytes written for a sparse file",
        blocks(&got)
    );
    let tail = std::fs::read(&got)
        .map(|d| d[d.len() - 3..].to_vec())
        .unwrap();
    assert_eq!(tail, b"end");
    // And in: a sparse host file stays sparse in the workspace.
    let o = cli_within(
        &sb,
        &[
            "sandbox",
            "upload",
            "sp",
            got.to_str().unwrap(),
            "/sandbox/back",
        ],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let back = sb.state.path().join("sandboxes/sp/workspace/back");
    assert_eq!(std::fs::metadata(&back).unwrap().len(), (2 << 30) + 3);
    assert!(blocks(&back) < 1 << 20, "{} bytes", blocks(&back));
    // Through a tar stream (which carries the zeros) it lands sparse too.
    let o = cli_within(
        &sb,
        &["sandbox", "download", "sp", "/sandbox/sparse", "-"],
        None,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = cli_within(
        &sb,
        &["sandbox", "upload", "sp", "-", "/sandbox/t"],
        Some(&o.stdout),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let t = sb.state.path().join("sandboxes/sp/workspace/t/sparse");
    assert_eq!(std::fs::metadata(&t).unwrap().len(), (2 << 30) + 3);
    assert!(blocks(&t) < 1 << 20, "{} bytes", blocks(&t));
    assert!(sb.cli(&["sandbox", "delete", "sp"]).status.success());
}

fn special_files_are_refused_on_both_sides_without_blocking() {
    need_sandbox!();
    let sb = Sandbox::new();
    let o = sb.run(
        &["--keep", "--name", "ff", "--network", "none"],
        &[
            "sh",
            "-c",
            "echo data > /sandbox/f; mkfifo /sandbox/fifo /sandbox/infifo",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let local = TempDir::new("special");
    // DEST a symlink (to a file of the user's), a FIFO, a device: refused, left as is.
    let victim = local.path().join("victim");
    std::fs::write(&victim, "mine").unwrap();
    let link = local.path().join("link");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let fifo = local.path().join("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    for (dest, kind) in [
        (link.to_str().unwrap(), "a symlink"),
        (fifo.to_str().unwrap(), "a FIFO"),
        ("/dev/null", "a device"),
    ] {
        let o = cli_within(
            &sb,
            &["sandbox", "download", "ff", "/sandbox/f", dest],
            None,
        );
        assert!(!o.status.success(), "{dest}: {}", stdout(&o));
        assert!(
            stderr(&o).contains(&format!("refused: it is {kind}")),
            "{dest}: {}",
            stderr(&o)
        );
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "mine");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::symlink_metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device()
    );
    // A FIFO in the workspace: skipped on download, refused as an upload target.
    let o = cli_within(
        &sb,
        &[
            "sandbox",
            "download",
            "ff",
            "/sandbox/fifo",
            local.path().join("x").to_str().unwrap(),
        ],
        None,
    );
    assert!(stderr(&o).contains("not a regular file"), "{}", stderr(&o));
    let o = cli_within(
        &sb,
        &[
            "sandbox",
            "upload",
            "ff",
            victim.to_str().unwrap(),
            "/sandbox/infifo",
        ],
        None,
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not a regular file"), "{}", stderr(&o));
    // And a FIFO as the upload's source.
    let o = cli_within(
        &sb,
        &[
            "sandbox",
            "upload",
            "ff",
            fifo.to_str().unwrap(),
            "/sandbox/z",
        ],
        None,
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("not a file or directory"),
        "{}",
        stderr(&o)
    );
    assert!(sb.cli(&["sandbox", "delete", "ff"]).status.success());
}

fn dash_streams_a_tar_out_and_in() {
    need_sandbox!();
    let sb = Sandbox::new();
    let o = sb.run(
        &["--keep", "--name", "ts", "--network", "none"],
        &["sh", "-c", "mkdir -p /sandbox/d/sub; echo one > /sandbox/d/a; echo two > /sandbox/d/sub/b; ln -s a /sandbox/d/l"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = cli_within(&sb, &["sandbox", "download", "ts", "/sandbox/d", "-"], None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("downloaded 2 files"), "{}", stderr(&o));
    let tarball = o.stdout.clone();
    // A real tar reads it.
    let local = TempDir::new("tarx");
    let mut t = std::process::Command::new("tar")
        .args(["-x", "-C"])
        .arg(local.path())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(t.stdin.as_mut().unwrap(), &tarball).unwrap();
    drop(t.stdin.take());
    assert!(t.wait().unwrap().success());
    assert_eq!(
        std::fs::read_to_string(local.path().join("d/sub/b")).unwrap(),
        "two\n"
    );
    assert_eq!(
        std::fs::read_link(local.path().join("d/l")).unwrap(),
        Path::new("a")
    );
    // Back in from stdin, under another name.
    let o = cli_within(
        &sb,
        &["sandbox", "upload", "ts", "-", "/sandbox/copy"],
        Some(&tarball),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let ws = sb.state.path().join("sandboxes/ts/workspace");
    assert_eq!(
        std::fs::read_to_string(ws.join("copy/d/a")).unwrap(),
        "one\n"
    );
    // A hostile archive: `..` and absolute names are refused, nothing lands outside.
    for bad in ["../escape", "/abs"] {
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        let mut raw = Vec::new();
        {
            let name = h.as_old_mut().name.as_mut();
            name[..bad.len()].copy_from_slice(bad.as_bytes());
        }
        h.set_cksum();
        raw.extend_from_slice(h.as_bytes());
        raw.push(b'x');
        raw.resize(raw.len() + 511, 0);
        raw.resize(raw.len() + 1024, 0);
        let o = cli_within(
            &sb,
            &["sandbox", "upload", "ts", "-", "/sandbox/in"],
            Some(&raw),
        );
        assert!(!o.status.success(), "{bad} accepted");
        assert!(stderr(&o).contains("refused"), "{bad}: {}", stderr(&o));
    }
    assert!(!ws.join("escape").exists() && !ws.parent().unwrap().join("escape").exists());
    assert!(sb.cli(&["sandbox", "delete", "ts"]).status.success());
}

openshell_tests::suite!(
    upload_and_download_round_trip_a_tree,
    planted_symlinks_never_redirect_a_copy,
    holes_stay_holes_both_ways,
    special_files_are_refused_on_both_sides_without_blocking,
    dash_streams_a_tar_out_and_in,
);
