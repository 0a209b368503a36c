//! `openshell sandbox exec` as a user drives it: the new process is in the running
//! sandbox (its files, pid namespace, hostname) and confined exactly like the first
//! (uid, no capabilities, no_new_privs, seccomp, Landlock, read-only system), with
//! stdin piped and the exit status preserved; timeouts; clear errors when it cannot run.

use std::io::Write;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use openshell_tests::{Sandbox, need_sandbox, openpty, read_until, stderr, stdout};

fn exec(sb: &Sandbox, name: &str, opts: &[&str], argv: &[&str]) -> Output {
    let mut a = vec!["sandbox", "exec", name];
    a.extend_from_slice(opts);
    a.push("--");
    a.extend_from_slice(argv);
    sb.cli(&a)
}

fn exec_joins_the_sandbox_with_the_same_confinement() {
    need_sandbox!();
    let sb = Sandbox::new();
    let mut child = sb.start_kept("ex", "echo from-main > /sandbox/f; sleep 30");
    let probe = "id; pwd; hostname; cat /sandbox/f; grep -E '^(NoNewPrivs|Seccomp|CapEff|CapBnd|CapPrm):' /proc/self/status";
    let main_view = sb.run(&["--name", "ref"], &["sh", "-c", probe]);
    let o = exec(&sb, "ex", &[], &["sh", "-c", probe]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some("uid=1000(sandbox) gid=1000(sandbox) groups=1000(sandbox)")
    );
    assert_eq!(lines.next(), Some("/sandbox"));
    assert_eq!(lines.next(), Some("ex"), "the sandbox's hostname");
    assert_eq!(lines.next(), Some("from-main"), "the sandbox's files");
    // The status lines are those of a sandbox's own first process.
    let status = |t: &str| {
        t.lines()
            .filter(|l| {
                l.starts_with("Cap") || l.starts_with("NoNewPrivs") || l.starts_with("Seccomp")
            })
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        status(&text),
        status(&stdout(&main_view)),
        "confinement differs"
    );
    assert!(
        text.contains("NoNewPrivs:\t1") && text.contains("Seccomp:\t2"),
        "{text}"
    );

    // Its pid namespace: the sandbox's init is 1 and the main command is there.
    let o = exec(
        &sb,
        "ex",
        &[],
        &["sh", "-c", "cat /proc/1/comm; ls /proc | grep -c '^[0-9]'"],
    );
    let t = stdout(&o);
    assert!(t.starts_with("openshell: init\n"), "{t}");
    let procs: u32 = t.lines().nth(1).unwrap().parse().unwrap();
    assert!(procs >= 4, "init, sh, sleep, this sh, ...: {t}");

    // What the sandbox forbids, exec forbids too.
    for (what, cmd) in [
        ("write /usr", "touch /usr/bin/x"),
        ("write /etc", "echo x > /etc/passwd"),
        ("new user namespace", "unshare -U true"),
        ("mount", "mount -t tmpfs none /tmp"),
        ("read /etc/shadow", "test -s /etc/shadow && cat /etc/shadow"),
    ] {
        let o = exec(&sb, "ex", &[], &["sh", "-c", cmd]);
        assert!(!o.status.success(), "{what} worked in exec: {}", stdout(&o));
    }
    assert!(
        exec(
            &sb,
            "ex",
            &[],
            &["sh", "-c", "echo ok > /sandbox/w && echo ok > /tmp/w"]
        )
        .status
        .success()
    );

    // Exit status, stdin, --workdir, --env, --timeout.
    assert_eq!(
        exec(&sb, "ex", &[], &["sh", "-c", "exit 7"]).status.code(),
        Some(7)
    );
    assert_eq!(
        exec(&sb, "ex", &[], &["sh", "-c", "kill -9 $$"])
            .status
            .code(),
        Some(137)
    );
    let mut c = sb
        .cmd()
        .args(["sandbox", "exec", "ex", "--", "sh", "-c", "tr a-z A-Z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(b"piped\n").unwrap();
    assert_eq!(stdout(&c.wait_with_output().unwrap()), "PIPED\n");
    let o = exec(
        &sb,
        "ex",
        &["-w", "/tmp", "-e", "GREETING=hi"],
        &["sh", "-c", "pwd; echo $GREETING; echo $HTTPS_PROXY"],
    );
    assert_eq!(
        stdout(&o),
        "/tmp\nhi\nhttp://10.200.0.1:3128\n",
        "{}",
        stderr(&o)
    );
    let t0 = Instant::now();
    let o = exec(&sb, "ex", &["--timeout", "1"], &["sleep", "20"]);
    assert_eq!(o.status.code(), Some(124));
    assert!(t0.elapsed() < Duration::from_secs(15));
    assert!(stderr(&o).contains("--timeout (1 s)"), "{}", stderr(&o));
    // 0 is no timeout (upstream's meaning), not "kill at once".
    let o = exec(
        &sb,
        "ex",
        &["--timeout", "0"],
        &["sh", "-c", "sleep 1; echo done"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stdout(&o), "done\n");
    assert_eq!(
        exec(&sb, "ex", &[], &["no-such-cmd"]).status.code(),
        Some(127)
    );

    // A long exec dies with the sandbox.
    let mut long = sb
        .cmd()
        .args(["sandbox", "exec", "ex", "--", "sleep", "25"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(sb.cli(&["sandbox", "delete", "ex"]).status.success());
    let until = Instant::now() + Duration::from_secs(10);
    while long.try_wait().unwrap().is_none() {
        assert!(Instant::now() < until, "exec outlived its sandbox");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait().unwrap();
}

fn exec_says_why_it_cannot_run() {
    need_sandbox!();
    let sb = Sandbox::new();
    sb.run(&["--keep", "--name", "done"], &["true"]);
    let o = exec(&sb, "done", &[], &["true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("sandbox done is not running (Stopped)"),
        "{}",
        stderr(&o)
    );
    let o = exec(&sb, "nope", &[], &["true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("no sandbox named nope"),
        "{}",
        stderr(&o)
    );
    let o = sb.cli(&["sandbox", "exec", "done"]);
    assert_eq!(o.status.code(), Some(2), "no command: usage error");
}

fn connect_gives_a_terminal_in_the_sandbox() {
    need_sandbox!();
    let sb = Sandbox::new();
    let mut main = sb.start_kept("term", "sleep 30");
    let (master, slave) = openpty(40, 100);
    let mut cmd = sb.cmd();
    cmd.args(["sandbox", "connect", "term"]);
    let s = |fd: &std::os::fd::OwnedFd| Stdio::from(fd.try_clone().unwrap());
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
    m.write_all(b"tty; stty size; id -u; hostname; echo sum=$((6*7))\n")
        .unwrap();
    let out = read_until(&mut m, "sum=42", Duration::from_secs(10));
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(out.contains("40 100"), "window size follows: {out}");
    assert!(out.contains("1000") && out.contains("term"), "{out}");
    m.write_all(b"exit 3\n").unwrap();
    let until = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < until, "connect did not end with its shell");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(3));
    assert!(sb.cli(&["sandbox", "delete", "term"]).status.success());
    main.wait().unwrap();
}

openshell_tests::suite!(
    exec_joins_the_sandbox_with_the_same_confinement,
    exec_says_why_it_cannot_run,
    connect_gives_a_terminal_in_the_sandbox,
);
