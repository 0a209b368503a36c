//! The per-user user-namespace holder (rootless with subordinate ids,
//! docs/security.md "Id maps"): sandboxes are made inside it with exactly the host ids
//! they get without it; one holder serves run after run; what answers at its socket is
//! checked (a planted impostor is replaced, never used; a killed holder is replaced);
//! nothing inside a sandbox reaches it; SIGTERM ends it; `OPENSHELL_USERNS_HOLDER=0`
//! starts none; another user (root included) gets nothing from it.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use openshell_tests::{Sandbox, eventually, need_sandbox, openshell_bin, stderr, stdout};

/// A private directory on tmpfs used as `XDG_RUNTIME_DIR`: the holder these tests start
/// is theirs alone (its socket goes in `<dir>/openshell/`).
struct RuntimeDir(PathBuf);

impl RuntimeDir {
    fn new(tag: &str, mode: u32) -> Self {
        let p = PathBuf::from(format!(
            "/dev/shm/openshell-test-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        Self(p)
    }

    /// The holder's socket (the only `userns.*.sock` there), if any.
    fn socket(&self) -> Option<PathBuf> {
        std::fs::read_dir(self.0.join("openshell"))
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.extension().is_some_and(|x| x == "sock")
                    && p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("userns."))
            })
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        // The holder we started (if one answers) goes with the test.
        if let Some(pid) = self.socket().and_then(|s| holder_pid(&s)) {
            let _ = nix_kill(pid, libc::SIGKILL);
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn nix_kill(pid: i32, sig: i32) -> i32 {
    // SAFETY: kill(2) with a pid we found behind our own holder socket.
    unsafe { libc::kill(pid, sig) }
}

/// The pid of whoever listens at `sock` (SO_PEERCRED), if anyone does.
fn holder_pid(sock: &Path) -> Option<i32> {
    let s = UnixStream::connect(sock).ok()?;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt into a correctly sized ucred.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0 && cred.pid > 0).then_some(cred.pid)
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Squeeze a map file's columns: "1000 1001 1;0 100000 1000;...".
fn squeeze(text: &str) -> String {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(";")
}

/// (inside view, host view) of a sandbox's uid and gid maps: the inside view is relative
/// to the namespace it was made in; the host view (read from here) is in host ids.
/// The run is started with SIGTERM, SIGINT and SIGHUP ignored (as some service managers
/// and CI runners leave them): a holder it starts must still end on SIGTERM.
fn maps(sb: &Sandbox, rt: &RuntimeDir, holder: bool, marker: &str) -> (String, String) {
    let inner = sb.cmd();
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("trap '' TERM INT HUP; exec \"$0\" \"$@\"")
        .arg(inner.get_program());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.env("XDG_RUNTIME_DIR", &rt.0)
        .env("OPENSHELL_USERNS_HOLDER", if holder { "1" } else { "0" })
        .args(["run", "--network", "none", "--", "sh", "-c"])
        .arg(format!(
            "cat /proc/self/uid_map; echo /; cat /proc/self/gid_map; exec sleep {marker}"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut sleeper = None;
    assert!(
        eventually(20, || {
            sleeper = openshell_tests::processes_with(&format!("sleep {marker}"))
                .iter()
                .filter_map(|l| l.split(':').next()?.parse::<i32>().ok())
                .find(|p| comm(*p) == "sleep");
            sleeper.is_some()
        }),
        "the sandbox never started"
    );
    let pid = sleeper.unwrap();
    let host = format!(
        "{}/{}",
        squeeze(&std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap()),
        squeeze(&std::fs::read_to_string(format!("/proc/{pid}/gid_map")).unwrap())
    );
    child.kill().unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let _ = child.wait();
    let (u, g) = out.split_once("/\n").unwrap_or((&out, ""));
    (format!("{}/{}", squeeze(u), squeeze(g)), host)
}

fn run_true(sb: &Sandbox, rt: &RuntimeDir, extra: &[(&str, &str)]) {
    let mut c = sb.cmd();
    c.env("XDG_RUNTIME_DIR", &rt.0);
    for (k, v) in extra {
        c.env(k, v);
    }
    let o = c
        .args(["run", "--network", "none", "--", "id", "-u"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "1000\n");
}

fn runs_nest_in_one_checked_holder_with_the_same_host_ids() {
    need_sandbox!();
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        openshell_tests::skip(
            "root writes its sandboxes' maps itself: the holder is for rootless users with subordinate ids (the rootless run of this suite covers it)",
        );
    }
    let sb = Sandbox::new();
    let rt = RuntimeDir::new("userns", 0o700);
    let (inside_off, host_off) = maps(&sb, &rt, false, "31.101");
    if host_off.split('/').next().unwrap().split(';').count() < 2 {
        openshell_tests::skip("no subordinate ids for this user (/etc/subuid, newuidmap)");
    }
    assert!(
        rt.socket().is_none(),
        "OPENSHELL_USERNS_HOLDER=0 started a holder"
    );
    // Without a holder the sandbox's namespace is the host's child: both views agree.
    assert_eq!(inside_off, host_off);

    // With it: the sandbox's namespace is one level down (its own map says 1000 → the
    // holder's 0), and the host ids are exactly the same.
    let (inside_on, host_on) = maps(&sb, &rt, true, "31.102");
    assert_eq!(host_on, host_off, "a nested sandbox got other host ids");
    assert!(inside_on.starts_with("1000 0 1;"), "{inside_on}");
    let sock = rt.socket().expect("no holder socket");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "holder socket mode");
    let first = holder_pid(&sock).expect("no holder answering");
    assert_eq!(comm(first), "openshell: user");
    // Nobody's child (double-forked): never a zombie of a long-lived supervisor.
    let status = std::fs::read_to_string(format!("/proc/{first}/status")).unwrap();
    let ppid: i32 = status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        !comm(ppid).starts_with("openshell"),
        "its parent is {}",
        comm(ppid)
    );

    // One holder serves the next runs.
    for _ in 0..3 {
        run_true(&sb, &rt, &[]);
    }
    assert_eq!(holder_pid(&sock), Some(first), "a holder per run");

    // Nothing inside a sandbox reaches it (its directory is not in the sandbox's view).
    let o = sb
        .cmd()
        .env("XDG_RUNTIME_DIR", &rt.0)
        .args(["run", "--network", "none", "--", "python3", "-c"])
        .arg(format!(
            "import socket\ns=socket.socket(socket.AF_UNIX)\ntry:\n s.connect({:?}); print('connected')\nexcept OSError as e: print('refused', e.errno)",
            sock.display().to_string()
        ))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        stdout(&o).starts_with("refused"),
        "{} {}",
        stdout(&o),
        stderr(&o)
    );

    // Killed: the next run starts another and works.
    assert_eq!(nix_kill(first, libc::SIGKILL), 0);
    assert!(eventually(5, || comm(first).is_empty()
        || comm(first) != "openshell: user"));
    run_true(&sb, &rt, &[]);
    let second = holder_pid(&sock).expect("no holder after the kill");
    assert_ne!(second, first);

    // An impostor at the socket (a process of ours handing out its own namespace, the
    // host's) is not used: the run's maps are still the holder's, and a real holder
    // takes the socket over.
    assert_eq!(nix_kill(second, libc::SIGKILL), 0);
    assert!(eventually(5, || comm(second) != "openshell: user"));
    let _ = std::fs::remove_file(&sock);
    let mut impostor = Command::new("python3")
        .arg("-c")
        .arg(
            "import socket,os,sys\nl=socket.socket(socket.AF_UNIX)\nl.bind(sys.argv[1]); l.listen(8)\nns=os.open('/proc/self/ns/user',os.O_RDONLY)\nwhile True:\n c,_=l.accept()\n c.sendmsg([b'n'],[(socket.SOL_SOCKET,socket.SCM_RIGHTS,ns.to_bytes(4,'little'))]); c.close()",
        )
        .arg(&sock)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(eventually(5, || holder_pid(&sock) == Some(impostor.id() as i32)));
    let (inside, host) = maps(&sb, &rt, true, "31.103");
    assert_eq!(host, host_off);
    assert!(
        inside.starts_with("1000 0 1;"),
        "the impostor's namespace was used: {inside}"
    );
    let third = holder_pid(&sock).expect("no holder after the impostor");
    assert_ne!(third, impostor.id() as i32);
    assert_eq!(comm(third), "openshell: user");
    let _ = impostor.kill();
    let _ = impostor.wait();

    // SIGTERM ends it; with OPENSHELL_USERNS_HOLDER=0 no new one starts.
    assert_eq!(nix_kill(third, libc::SIGTERM), 0);
    assert!(
        eventually(5, || comm(third) != "openshell: user"),
        "SIGTERM did not end it"
    );
    run_true(&sb, &rt, &[("OPENSHELL_USERNS_HOLDER", "0")]);
    assert_eq!(
        holder_pid(&sock),
        None,
        "a holder started though switched off"
    );
}

/// Root plays another user: it starts a holder as a user with subordinate ids, then
/// asks it for its namespace (root passes the directory's permissions; the holder
/// must still refuse), and `nobody` cannot even connect.
fn another_user_gets_nothing_from_a_holder() {
    need_sandbox!();
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        openshell_tests::skip("needs root to act as another user (setpriv)");
    }
    let subuid = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
    let Some((uid, gid)) = subuid.lines().find_map(|l| {
        let name = l.split(':').next()?;
        let o = Command::new("id").args(["-u", name]).output().ok()?;
        let g = Command::new("id").args(["-g", name]).output().ok()?;
        let uid: u32 = stdout(&o).trim().parse().ok()?;
        let gid: u32 = stdout(&g).trim().parse().ok()?;
        (uid != 0).then_some((uid, gid))
    }) else {
        openshell_tests::skip(
            "no user with subordinate ids in /etc/subuid to play the holder's owner",
        );
    };
    // Removed when dropped (the holder it starts is killed with `rtd` below).
    let workdir = RuntimeDir::new("other", 0o755);
    let work = workdir.0.clone();
    let bin = work.join("openshell");
    std::fs::copy(openshell_bin(), &bin).unwrap();
    let rt = work.join("rt");
    let state = work.join("state");
    for d in [&rt, &state] {
        std::fs::create_dir(d).unwrap();
        std::os::unix::fs::chown(d, Some(uid), Some(gid)).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let o = Command::new("setpriv")
        .args([
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            "--clear-groups".into(),
            "--".into(),
        ])
        .arg(&bin)
        .args(["run", "--network", "none", "--", "true"])
        .env("XDG_RUNTIME_DIR", &rt)
        .env("OPENSHELL_STATE_DIR", &state)
        .env("HOME", &state)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let rtd = RuntimeDir(rt.clone());
    let Some(sock) = rtd.socket() else {
        openshell_tests::skip(
            "that user's run started no holder (no newuidmap, or its subordinate ids are unusable)",
        );
    };
    // Root: connected (permissions do not stop it), but no fd comes back.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 8];
    let n = s.read(&mut b).unwrap_or(0);
    assert_eq!(n, 0, "root got an answer from another user's holder");
    // nobody: not even a connection.
    let o = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c"])
        .arg("import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n s.connect(sys.argv[1]); print('connected')\nexcept OSError as e: print('refused', e.errno)")
        .arg(&sock)
        .output()
        .unwrap();
    assert!(
        stdout(&o).starts_with("refused"),
        "{} {}",
        stdout(&o),
        stderr(&o)
    );
    drop(rtd);
}

openshell_tests::suite!(
    runs_nest_in_one_checked_holder_with_the_same_host_ids,
    another_user_gets_nothing_from_a_holder,
);
