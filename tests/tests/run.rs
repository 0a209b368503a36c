//! `openshell run` as a user drives it: identity, exit codes, signals, environment,
//! mounts, uploads, policies, large streams, and a real pty driven from the test.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::Duration;

use openshell_tests::{
    Sandbox, TempDir, need_sandbox, openpty, policy_file, read_until, stderr, stdout,
};

fn identity_cwd_and_root_view() {
    need_sandbox!();
    let sb = Sandbox::new();
    let out = sb.run(
        &["--name", "idtest"],
        &["sh", "-c", "id; pwd; ls /; hostname"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("uid=1000(sandbox) gid=1000(sandbox) groups=1000(sandbox)")
    );
    assert_eq!(lines.next(), Some("/sandbox"));
    let rest: Vec<&str> = lines.collect();
    assert_eq!(rest.last(), Some(&"idtest"));
    for absent in ["home", "root", "var", "sys", "mnt", "srv", "boot"] {
        assert!(!rest.contains(&absent), "{absent} visible: {rest:?}");
    }
    for present in ["usr", "etc", "proc", "dev", "tmp", "sandbox"] {
        assert!(rest.contains(&present), "{present} missing: {rest:?}");
    }
}

fn exit_codes_and_signals() {
    need_sandbox!();
    let sb = Sandbox::new();
    assert_eq!(sb.run(&[], &["sh", "-c", "exit 7"]).status.code(), Some(7));
    assert_eq!(sb.run(&[], &["true"]).status.code(), Some(0));
    assert_eq!(
        sb.run(&[], &["sh", "-c", "kill -9 $$"]).status.code(),
        Some(137)
    );
    let out = sb.run(&[], &["no-such-cmd"]);
    assert_eq!(out.status.code(), Some(127));
    assert_eq!(stderr(&out), "openshell: no such command: no-such-cmd\n");
    let out = sb.run(&[], &["/etc/passwd"]);
    assert_eq!(out.status.code(), Some(126), "{}", stderr(&out));
}

fn sigterm_to_openshell_reaches_the_command() {
    need_sandbox!();
    let sb = Sandbox::new();
    let mut child = sb
        .cmd()
        .args(["run", "--", "sleep", "30"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    // 143 = 128 + SIGTERM: the signal, not the end of the sleep, ended it.
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143));
}

fn pid1_reaps_orphans() {
    need_sandbox!();
    let sb = Sandbox::new();
    let out = sb.run(
        &[],
        &["sh", "-c", "(sleep 0.1 &); (sleep 0.1 &); sleep 0.6; cat /proc/[0-9]*/stat | grep -c ' Z ' || true"],
    );
    assert_eq!(stdout(&out).trim(), "0", "zombies left: {}", stderr(&out));
}

fn environment_is_clean_and_extendable() {
    need_sandbox!();
    let sb = Sandbox::new();
    let out = sb
        .cmd()
        .env("OPENSHELL_TEST_LEAK", "leaked")
        .env("COPY_ME", "copied")
        .args([
            "run",
            "-e",
            "A=1",
            "-e",
            "COPY_ME",
            "-e",
            "MY_API_KEY=x",
            "--",
            "env",
        ])
        .output()
        .unwrap();
    let env = stdout(&out);
    assert!(!env.contains("leaked"), "{env}");
    for kv in [
        "A=1",
        "COPY_ME=copied",
        "OPENSHELL_SANDBOX=1",
        "HOME=/sandbox",
        "USER=sandbox",
    ] {
        assert!(env.lines().any(|l| l == kv), "{kv} missing in {env}");
    }
    assert!(env.lines().any(|l| l.starts_with("PATH=/usr/local/sbin")));
    assert!(
        stderr(&out).contains("--env MY_API_KEY looks like a secret"),
        "{}",
        stderr(&out)
    );
}

fn workdir_and_hostname_flags() {
    need_sandbox!();
    let sb = Sandbox::new();
    let out = sb.run(
        &["--workdir", "/tmp", "--hostname", "box1"],
        &["sh", "-c", "pwd; hostname"],
    );
    assert_eq!(stdout(&out), "/tmp\nbox1\n");
    let out = sb.run(&["--workdir", "/nope"], &["true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("/nope"), "{}", stderr(&out));
}

fn live_mount_and_upload_with_gitignore() {
    need_sandbox!();
    let sb = Sandbox::new();
    let live = TempDir::new("live");
    // As root the sandbox user is an unprivileged host id (docs/security.md): let it in.
    std::fs::set_permissions(
        live.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let mount = format!("{}:/sandbox/live", live.path().display());
    let out = sb.run(
        &["--mount", &mount],
        &["sh", "-c", "echo hi > /sandbox/live/f"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(live.path().join("f")).unwrap(),
        "hi\n"
    );

    let proj = TempDir::new("up");
    std::fs::write(proj.path().join(".gitignore"), "*.log\nbuild/\n").unwrap();
    std::fs::write(proj.path().join("main.rs"), "fn main(){}").unwrap();
    std::fs::write(proj.path().join("debug.log"), "noise").unwrap();
    std::fs::create_dir(proj.path().join("build")).unwrap();
    std::fs::write(proj.path().join("build/out"), "bin").unwrap();
    let up = proj.path().to_string_lossy().into_owned();
    let up_arg = format!("{up}:/sandbox/code");
    let out = sb.run(
        &["--upload", &up_arg],
        &["sh", "-c", "cd /sandbox/code && ls -A | sort"],
    );
    assert_eq!(stdout(&out), ".gitignore\nmain.rs\n", "{}", stderr(&out));
    let out = sb.run(
        &["--upload", &up_arg, "--no-git-ignore"],
        &["ls", "/sandbox/code"],
    );
    assert_eq!(stdout(&out), "build\ndebug.log\nmain.rs\n");
    let out = sb.run(&["--upload", &format!("{up}:/etc/x")], &["true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("DEST must be under /sandbox"));
}

/// A mount's destination gets the Landlock rights of its mode, wherever it is (the
/// default policy grants neither /data nor /ro); `exec` builds its rules from the same
/// recorded grants.
fn mount_destinations_get_the_rights_of_their_mode() {
    need_sandbox!();
    let sb = Sandbox::new();
    let rw = TempDir::new("mrw");
    let ro = TempDir::new("mro");
    std::fs::write(ro.path().join("f"), "ro-data\n").unwrap();
    // The sandbox user writes into the rw mount: let it (root runs it as another id).
    let _ = std::process::Command::new("chmod")
        .arg("0777")
        .arg(rw.path())
        .status();
    let m1 = format!("{}:/data", rw.path().display());
    let m2 = format!("{}:/ro:ro", ro.path().display());
    let out = sb.run(
        &["--mount", &m1, "--mount", &m2, "--keep", "--name", "mnt"],
        &[
            "sh",
            "-c",
            "echo hi > /data/w && cat /data/w && cat /ro/f; echo x > /ro/g 2>/dev/null || echo ro-refused",
        ],
    );
    assert_eq!(
        stdout(&out),
        "hi\nro-data\nro-refused\n",
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(rw.path().join("w")).unwrap(),
        "hi\n"
    );
    let o = sb.cli(&["sandbox", "explain", "mnt"]);
    assert!(
        stdout(&o).contains("/ro") && stdout(&o).contains("/data"),
        "{}",
        stdout(&o)
    );
    assert!(sb.cli(&["sandbox", "delete", "mnt"]).status.success());
}

fn bad_arguments_fail_clearly() {
    need_sandbox!();
    let sb = Sandbox::new();
    let out = sb.run(&["--mount", "/nonexistent:/x"], &["true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).starts_with("openshell: --mount /nonexistent:/x: host path"),
        "{}",
        stderr(&out)
    );
    let out = sb.run(&["--name", "Bad Name"], &["true"]);
    assert!(
        stderr(&out).contains("invalid sandbox name"),
        "{}",
        stderr(&out)
    );
    let out = sb.cmd().args(["run"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    // A hostname the kernel would refuse is refused before anything starts.
    for bad in ["a".repeat(70), "bad_host".into(), "-x".into()] {
        let out = sb.run(&[&format!("--hostname={bad}")], &["true"]);
        assert_eq!(out.status.code(), Some(125));
        assert!(
            stderr(&out).starts_with(&format!("openshell: --hostname {bad:?}: not a hostname")),
            "{}",
            stderr(&out)
        );
    }
    // A failure inside init's setup names its step and path (a typed message from
    // init, not a bare string).
    let out = sb.run(&["--mount", "/tmp:/etc/hostname/x"], &["true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).starts_with(
            "openshell: sandbox setup failed: root filesystem: create /etc/hostname/x"
        ),
        "{}",
        stderr(&out)
    );
    // A name in use is refused while the first sandbox runs.
    let mut first = sb
        .cmd()
        .args(["run", "--name", "dup", "--", "sleep", "5"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = sb.run(&["--name", "dup"], &["true"]);
    assert!(
        stderr(&out).contains("a sandbox named dup already exists"),
        "{}",
        stderr(&out)
    );
    let _ = first.kill();
    let _ = first.wait();
}

fn bad_policy_stops_before_anything_starts() {
    need_sandbox!();
    let dir = TempDir::new("badpol");
    let sb = Sandbox::new();
    let pol = policy_file(
        dir.path(),
        "p.yaml",
        "version: 1\nprocess:\n  run_as_user: root\n",
    );
    let marker = dir.path().join("ran");
    let script = format!("touch {}", marker.display());
    let out = sb.run(&["--policy", pol.to_str().unwrap()], &["sh", "-c", &script]);
    assert_eq!(out.status.code(), Some(125));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!("openshell: {}:3:", pol.display())),
        "{err}"
    );
    assert!(err.contains("never allowed"), "{err}");
    assert!(!marker.exists());
    let pol = policy_file(
        dir.path(),
        "q.yaml",
        "version: 1\nfilesystem_policy:\n  read_wirte: [/tmp]\n",
    );
    let out = sb.run(&["--policy", pol.to_str().unwrap()], &["true"]);
    assert!(
        stderr(&out).contains("q.yaml:3:3: filesystem_policy: unknown field `read_wirte`"),
        "{}",
        stderr(&out)
    );
}

fn policy_identity_is_honoured() {
    need_sandbox!();
    let dir = TempDir::new("idpol");
    let sb = Sandbox::new();
    let pol = policy_file(
        dir.path(),
        "p.yaml",
        "version: 1\nprocess:\n  run_as_user: 1500\n  run_as_group: 1600\n",
    );
    let out = sb.run(
        &["--policy", pol.to_str().unwrap()],
        &["sh", "-c", "id -u; id -g"],
    );
    assert_eq!(stdout(&out), "1500\n1600\n", "{}", stderr(&out));
}

fn policy_validate_command() {
    let sb = Sandbox::new();
    let compat =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/compat/policies");
    if let Ok(rd) = std::fs::read_dir(&compat) {
        for e in rd.flatten() {
            let out = sb
                .cmd()
                .args(["policy", "validate"])
                .arg(e.path())
                .output()
                .unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.contains("content-guard") {
                assert_eq!(out.status.code(), Some(1));
                assert!(
                    stderr(&out).contains("not supported yet"),
                    "{}",
                    stderr(&out)
                );
            } else {
                assert!(out.status.success(), "{name}: {}", stderr(&out));
                assert!(stdout(&out).contains(": valid ("), "{}", stdout(&out));
            }
        }
    }
    let dir = TempDir::new("val");
    let bad = policy_file(
        dir.path(),
        "bad.yaml",
        "version: 1\nfilesystem_policy:\n  read_write: [/]\n",
    );
    let out = sb
        .cmd()
        .args(["policy", "validate", "-o", "json"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("\"valid\": false"),
        "{}",
        stdout(&out)
    );
}

fn streams_100_mb_both_ways_without_buffering_it_all() {
    need_sandbox!();
    let sb = Sandbox::new();
    let size: usize = 100 * 1024 * 1024;
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let out = sb.run_stdin(&[], &["cat"], &data);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout.len(), size);
    assert!(out.stdout == data, "content differs");
    let out = sb.run(&[], &["head", "-c", "104857600", "/dev/zero"]);
    assert_eq!(out.stdout.len(), size);
}

fn single_id_mapping_still_runs_as_the_sandbox_user() {
    need_sandbox!();
    let sb = Sandbox::new();
    let out = sb
        .cmd()
        .env("OPENSHELL_NO_SUBIDS", "1")
        .args(["run", "--", "sh", "-c", "id -u; wc -l < /proc/self/uid_map"])
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(text.starts_with("1000\n"), "{text} {}", stderr(&out));
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    // Root always maps a range; rootless without subids maps exactly one id.
    assert_eq!(
        text.lines().nth(1),
        Some(if root { "2" } else { "1" }),
        "{text}"
    );
}

fn probe_reports_full_confinement() {
    need_sandbox!();
    let sb = Sandbox::new();
    let out = sb.probe(&[], &["status"]);
    let text = stdout(&out);
    for want in [
        "NoNewPrivs: 1",
        "Seccomp: 2",
        "CapInh: 0000000000000000",
        "CapPrm: 0000000000000000",
        "CapEff: 0000000000000000",
        "CapBnd: 0000000000000000",
        "CapAmb: 0000000000000000",
        "fds: 0 1 2 3",
        "rlimit_core: 0",
    ] {
        assert!(text.lines().any(|l| l == want), "{want} missing: {text}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("Uid: 1000\t1000\t1000\t1000")),
        "{text}"
    );
    assert!(text.lines().any(|l| l.starts_with("uid_map: ")), "{text}");
}

// ---- pty, driven from a pty the test owns ----

fn pty_session_job_control_winsize_and_ctrl_c() {
    need_sandbox!();
    let sb = Sandbox::new();
    let (master, slave) = openpty(40, 100);
    let mut cmd = sb.cmd();
    cmd.args(["run", "--", "sh"]);
    let s = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
    cmd.stdin(s(&slave)).stdout(s(&slave)).stderr(s(&slave));
    // SAFETY: setsid + TIOCSCTTY in the child before exec give it our pty as terminal.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY, 0);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(slave);
    let mut m = std::fs::File::from(master);
    m.write_all(b"tty; stty size; echo sum=$((6*7))\n").unwrap();
    let out = read_until(&mut m, "sum=42", Duration::from_secs(10));
    assert!(out.contains("/dev/pts/0"), "{out}");
    assert!(out.contains("40 100"), "{out}");
    // Window size follows: resize our terminal, signal openshell like a terminal would.
    let ws = libc::winsize {
        ws_row: 30,
        ws_col: 90,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ on our own pty master with a valid winsize.
    unsafe {
        libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ, &ws);
        libc::kill(child.id() as i32, libc::SIGWINCH);
    }
    std::thread::sleep(Duration::from_millis(200));
    m.write_all(b"stty size\n").unwrap();
    let out = read_until(&mut m, "30 90", Duration::from_secs(10));
    assert!(out.contains("30 90"), "{out}");
    // Ctrl-C stops the foreground job inside, not openshell.
    m.write_all(b"sleep 30\n").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    m.write_all(b"\x03").unwrap();
    m.write_all(b"echo back=$((1+1))\n").unwrap();
    let out = read_until(&mut m, "back=2", Duration::from_secs(10));
    // Seen within read_until's 10 s: the 30 s sleep was interrupted.
    assert!(out.contains("back=2"), "{out}");
    assert!(
        child.try_wait().unwrap().is_none(),
        "^C reached openshell itself"
    );
    m.write_all(b"exit 3\n").unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(3));
}

fn version_help_doctor_completions() {
    let sb = Sandbox::new();
    let out = sb.cmd().arg("--version").output().unwrap();
    assert!(stdout(&out).starts_with("openshell "), "{}", stdout(&out));
    let out = sb.cmd().args(["run", "--help"]).output().unwrap();
    assert!(stdout(&out).contains("--mount"));
    for shell in ["bash", "zsh", "fish"] {
        let out = sb.cmd().args(["completions", shell]).output().unwrap();
        assert!(
            out.status.success() && stdout(&out).contains("openshell"),
            "{shell}"
        );
    }
    let out = sb.cmd().args(["doctor", "-o", "json"]).output().unwrap();
    let text = stdout(&out);
    for check in [
        "user namespaces",
        "landlock",
        "seccomp",
        "overlayfs in userns",
        "nftables in userns",
        "id mapping",
    ] {
        assert!(text.contains(check), "{check} missing: {text}");
    }
    let _ = Command::new("true").status();
}

// ---- Landlock compatibility modes, on a kernel capped to an older ABI ----

const NO_ETC: &str = "version: 1\nfilesystem_policy:\n  read_only: [/usr, /lib, /lib64, /bin, /proc]\n  read_write: [/sandbox, /tmp, /dev/null]\nlandlock:\n  compatibility: MODE\n";

fn best_effort_says_what_it_cannot_enforce_and_keeps_the_rest() {
    need_sandbox!();
    let dir = TempDir::new("be");
    let sb = Sandbox::new();
    let pol = policy_file(dir.path(), "p.yaml", &NO_ETC.replace("MODE", "best_effort"));
    let out = sb
        .cmd()
        .env("OPENSHELL_LANDLOCK_MAX_ABI", "5")
        .args([
            "run",
            "--policy",
            pol.to_str().unwrap(),
            "--",
            "cat",
            "/etc/hostname",
        ])
        .output()
        .unwrap();
    let err = stderr(&out);
    assert!(
        err.contains("landlock best_effort on ABI 5: not enforced: abstract unix socket scoping (ABI 6), signal scoping (ABI 6)"),
        "{err}"
    );
    // The file rules of ABI 5 still hold: /etc is not in the policy.
    assert_ne!(
        out.status.code(),
        Some(0),
        "read /etc/hostname: {}",
        stdout(&out)
    );
    assert!(err.contains("Permission denied"), "{err}");
    // Without Landlock at all it still runs, and says loudly that nothing is enforced.
    let out = sb
        .cmd()
        .env("OPENSHELL_LANDLOCK_MAX_ABI", "0")
        .args(["run", "--policy", pol.to_str().unwrap(), "--", "true"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        stderr(&out).contains("not enforced: all filesystem rules (Landlock unavailable)"),
        "{}",
        stderr(&out)
    );
}

fn hard_requirement_refuses_to_start_when_landlock_falls_short() {
    need_sandbox!();
    let dir = TempDir::new("hard");
    let sb = Sandbox::new();
    let pol = policy_file(
        dir.path(),
        "p.yaml",
        &NO_ETC.replace("MODE", "hard_requirement"),
    );
    let marker = dir.path().join("ran");
    let script = format!("touch {}", marker.display());
    let out = sb
        .cmd()
        .env("OPENSHELL_LANDLOCK_MAX_ABI", "5")
        .args([
            "run",
            "--policy",
            pol.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            &script,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("landlock hard_requirement cannot be met on this kernel (ABI 5)"),
        "{}",
        stderr(&out)
    );
    assert!(!marker.exists());
    // On this kernel's own ABI the same policy runs.
    let out = sb.run(&["--policy", pol.to_str().unwrap()], &["true"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn killing_the_supervisor_kills_the_sandbox() {
    need_sandbox!();
    let sb = Sandbox::new();
    let mut child = sb
        .cmd()
        .args(["run", "--", "sh", "-c", "sleep 77.125 & sleep 77.125"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let seen = |want: bool| {
        for _ in 0..50 {
            let out = Command::new("pgrep")
                .args(["-f", "sleep 77.125"])
                .output()
                .unwrap();
            if stdout(&out).trim().is_empty() != want {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    };
    assert!(seen(true), "sandbox never started");
    child.kill().unwrap(); // SIGKILL: no cleanup code of ours runs
    let _ = child.wait();
    assert!(seen(false), "sandbox processes outlived their supervisor");
}

fn pty_ends_with_its_input_or_its_terminal() {
    need_sandbox!();
    let sb = Sandbox::new();
    // -t with piped input: end of input is end of file inside.
    let out = sb.run_stdin(&["-t"], &["sh"], b"echo piped-$((40+2))\n");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("piped-42"), "{}", stdout(&out));
    // Our terminal hangs up: the sandbox's does too, and openshell ends.
    let (master, slave) = openpty(24, 80);
    let mut cmd = sb.cmd();
    cmd.args(["run", "--", "sh"]);
    let s = |fd: &OwnedFd| Stdio::from(fd.try_clone().unwrap());
    cmd.stdin(s(&slave)).stdout(s(&slave)).stderr(s(&slave));
    // SAFETY: setsid + TIOCSCTTY in the child before exec give it our pty as terminal.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY, 0);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(cmd); // it holds copies of the slave
    drop(slave);
    let mut m = std::fs::File::from(master);
    m.write_all(b"echo up\n").unwrap();
    let out = read_until(&mut m, "up", Duration::from_secs(10));
    assert!(out.contains("up"), "{out}");
    drop(m);
    let mut ended = None;
    for _ in 0..100 {
        if let Some(st) = child.try_wait().unwrap() {
            ended = Some(st);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if ended.is_none() {
        let _ = child.kill();
    }
    assert!(
        ended.is_some(),
        "openshell kept running after its terminal hung up"
    );
}

/// The files only init's setup needs go to a scratch directory (on tmpfs where one of
/// ours exists) and nothing of it is left after the run — nor inside the sandbox's own
/// directory of a kept sandbox.
fn setup_scratch_files_do_not_outlive_the_run() {
    need_sandbox!();
    let sb = Sandbox::new();
    let name = format!("scr{}", std::process::id());
    let out = sb.run(&["--keep", "--name", &name], &["cat", "/etc/hostname"]);
    assert_eq!(stdout(&out), format!("{name}\n"), "{}", stderr(&out));
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        .unwrap()
        .to_string();
    let mut roots = vec![
        std::path::PathBuf::from(format!("/dev/shm/openshell-{uid}")),
        std::path::PathBuf::from("/run/openshell"),
    ];
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR") {
        roots.push(std::path::Path::new(&x).join("openshell"));
    }
    for r in roots {
        let left: Vec<String> = std::fs::read_dir(&r)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&format!("{name}-")))
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "left in {}: {left:?}", r.display());
    }
    let o = sb.cli(&["sandbox", "delete", &name]);
    assert!(o.status.success(), "{}", stderr(&o));
}

fn printing_into_a_closed_pipe_ends_quietly() {
    // `openshell completions bash | head -1`, `logs | head`: no panic message.
    for args in [
        vec!["completions", "bash"],
        vec!["completions", "zsh"],
        vec!["doctor"],
    ] {
        let mut child = Sandbox::new()
            .cmd()
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut first = [0u8; 1];
        let _ = std::io::Read::read(&mut out, &mut first);
        drop(out);
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(!err.contains("Broken pipe"), "{args:?}: {err}");
    }
}

openshell_tests::suite!(
    identity_cwd_and_root_view,
    exit_codes_and_signals,
    sigterm_to_openshell_reaches_the_command,
    pid1_reaps_orphans,
    environment_is_clean_and_extendable,
    workdir_and_hostname_flags,
    live_mount_and_upload_with_gitignore,
    mount_destinations_get_the_rights_of_their_mode,
    bad_arguments_fail_clearly,
    bad_policy_stops_before_anything_starts,
    policy_identity_is_honoured,
    policy_validate_command,
    streams_100_mb_both_ways_without_buffering_it_all,
    single_id_mapping_still_runs_as_the_sandbox_user,
    probe_reports_full_confinement,
    pty_session_job_control_winsize_and_ctrl_c,
    version_help_doctor_completions,
    best_effort_says_what_it_cannot_enforce_and_keeps_the_rest,
    hard_requirement_refuses_to_start_when_landlock_falls_short,
    killing_the_supervisor_kills_the_sandbox,
    pty_ends_with_its_input_or_its_terminal,
    setup_scratch_files_do_not_outlive_the_run,
    printing_into_a_closed_pipe_ends_quietly,
);
