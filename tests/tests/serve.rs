//! `openshell serve`: the API on a unix socket, used by `curl --unix-socket` and by the
//! CLI's `--host`; only its owner may connect; a second server refuses; sandboxes
//! created with `--restart always` come back when their supervisor is killed, stopped
//! ones stay stopped; a bad config.toml is refused with its path. Also: shell
//! completion offers sandbox names (real bash calling the real binary).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use openshell_tests::{
    Sandbox, eventually, need_sandbox, openshell_bin, processes_with, stderr, stdout,
};

/// A server with its own state, runtime and config directories.
struct Server {
    sb: Sandbox,
    child: Option<Child>,
}

impl Server {
    fn new() -> Self {
        let sb = Sandbox::new();
        for d in ["run", "config"] {
            std::fs::create_dir_all(sb.state.path().join(d)).unwrap();
        }
        Self { sb, child: None }
    }

    fn env(&self, c: &mut Command) {
        let p = self.sb.state.path();
        c.env("OPENSHELL_STATE_DIR", p)
            .env("XDG_RUNTIME_DIR", p.join("run"))
            .env("XDG_CONFIG_HOME", p.join("config"))
            .env_remove("OPENSHELL_HOST");
    }

    fn socket(&self) -> PathBuf {
        self.sb.state.path().join("run/openshell/api.sock")
    }

    fn serve(&self) -> Command {
        let mut c = Command::new(openshell_bin());
        self.env(&mut c);
        c.arg("serve");
        c
    }

    /// Start it and wait (up to 10 s) for the socket.
    fn start(&mut self) {
        let child = self
            .serve()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn serve");
        self.child = Some(child);
        let until = Instant::now() + Duration::from_secs(10);
        while !self.socket().exists() {
            assert!(Instant::now() < until, "serve never listened");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The CLI, local.
    fn cli(&self, args: &[&str]) -> Output {
        let mut c = Command::new(openshell_bin());
        self.env(&mut c);
        c.args(args).stdin(Stdio::null()).output().unwrap()
    }

    /// The CLI through the server (`--host`), with `input` on stdin.
    fn remote(&self, args: &[&str], input: &[u8]) -> Output {
        let mut c = Command::new(openshell_bin());
        // The client's own state is elsewhere: what it sees must come from the server.
        c.env("OPENSHELL_STATE_DIR", self.sb.state.path().join("client"))
            .env(
                "OPENSHELL_HOST",
                format!("unix://{}", self.socket().display()),
            )
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), input).unwrap();
        child.wait_with_output().unwrap()
    }

    /// `curl --unix-socket` with `args`; prints the status code last.
    fn curl(&self, args: &[&str]) -> String {
        let sock = self.socket().display().to_string();
        let o = Command::new("curl")
            .args(["-sS", "--unix-socket", &sock, "-w", "\n%{http_code}"])
            .args(args)
            .output()
            .expect("curl (apt install curl)");
        stdout(&o)
    }

    fn supervisor_pid(&self, name: &str) -> i32 {
        self.try_supervisor_pid(name).expect("a supervisor")
    }

    /// The supervisor in the record, if there is one now (a record being rewritten,
    /// or a stopped sandbox, has none).
    fn try_supervisor_pid(&self, name: &str) -> Option<i32> {
        let rec = std::fs::read_to_string(
            self.sb
                .state
                .path()
                .join(format!("sandboxes/{name}/sandbox.json")),
        )
        .ok()?;
        let v: serde_json::Value = serde_json::from_str(&rec).ok()?;
        v["supervisor"]["pid"].as_i64().map(|p| p as i32)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.cli(&["sandbox", "delete", "--all"]);
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) of our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn the_api_serves_curl_and_the_cli_and_only_its_owner() {
    need_sandbox!();
    let mut s = Server::new();
    s.start();
    assert_eq!(mode(&s.socket()), 0o600, "socket mode");
    assert_eq!(mode(s.socket().parent().unwrap()), 0o700, "socket dir mode");

    // A second server for the same socket refuses and leaves the first one alone.
    let second = s.serve().stdin(Stdio::null()).output().unwrap();
    assert!(!second.status.success());
    assert!(
        stderr(&second).contains("already listens"),
        "{}",
        stderr(&second)
    );
    assert!(s.socket().exists());
    assert!(stdout(&s.cli(&["status"])).contains("Serve:     running"));

    assert_eq!(s.curl(&["http://x/v1/sandboxes"]), "[]\n\n200");
    let made = s.curl(&[
        "-X",
        "POST",
        "-d",
        r#"{"name":"api-one","labels":{"team":"a"}}"#,
        "http://x/v1/sandboxes",
    ]);
    assert_eq!(made, "{\"name\":\"api-one\"}\n201");
    let list = s.curl(&["http://x/v1/sandboxes"]);
    assert!(
        list.contains("\"api-one\"") && list.contains("\"Ready\""),
        "{list}"
    );

    // The CLI through the socket: what it lists is the server's, not its own state.
    let o = s.remote(&["sandbox", "list", "--names"], b"");
    assert_eq!(stdout(&o), "api-one\n", "{}", stderr(&o));
    let o = s.remote(
        &[
            "sandbox",
            "exec",
            "api-one",
            "--",
            "sh",
            "-c",
            "cat; echo to-err >&2; exit 7",
        ],
        b"through the socket\n",
    );
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert_eq!(stdout(&o), "through the socket\n");
    assert!(stderr(&o).contains("to-err"));
    // Exec as an endpoint (upgraded stdio) works for a client of our own too: the CLI
    // speaks the same protocol; a bad body is a 400 naming the problem.
    let bad = s.curl(&[
        "-H",
        "Connection: Upgrade",
        "-H",
        "Upgrade: openshell-stdio",
        "-X",
        "POST",
        "-d",
        "{\"argv\":[]}",
        "http://x/v1/sandboxes/api-one/exec",
    ]);
    assert!(
        bad.ends_with("400") && bad.contains("unknown field"),
        "{bad}"
    );

    // Errors are JSON with a status that fits.
    let missing = s.curl(&["http://x/v1/sandboxes/nope"]);
    assert!(
        missing.ends_with("404") && missing.contains("no sandbox named nope"),
        "{missing}"
    );
    assert!(s.curl(&["http://x/v1/nothing"]).ends_with("404"));
    let big = s.sb.state.path().join("big.json");
    std::fs::write(&big, "x".repeat(2 << 20)).unwrap();
    let big = format!("@{}", big.display());
    let too_big = s.curl(&["-X", "POST", "--data-binary", &big, "http://x/v1/sandboxes"]);
    assert!(
        too_big.ends_with("413"),
        "{}",
        &too_big[too_big.len().saturating_sub(100)..]
    );
    let recursive = s.curl(&[
        "-H",
        "Connection: Upgrade",
        "-H",
        "Upgrade: openshell-stdio",
        "-X",
        "POST",
        "-d",
        r#"{"args":["serve"]}"#,
        "http://x/v1/cli",
    ]);
    assert!(recursive.ends_with("400"), "{recursive}");
    let cmd_in_create = s.curl(&[
        "-X",
        "POST",
        "-d",
        r#"{"args":["--","sh"]}"#,
        "http://x/v1/sandboxes",
    ]);
    assert!(cmd_in_create.ends_with("400"), "{cmd_in_create}");

    // Logs and policy over HTTP.
    let logs = s.curl(&["http://x/v1/sandboxes/api-one/logs?n=5"]);
    assert!(
        logs.contains("CONFIG:LOADED") && logs.ends_with("200"),
        "{logs}"
    );
    let policy = s.curl(&["http://x/v1/sandboxes/api-one/policy"]);
    assert!(
        policy.contains("version: 1") && policy.ends_with("200"),
        "{policy}"
    );

    // Another local user cannot connect (root can try as nobody).
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let sock = s.socket().display().to_string();
        let o = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "curl",
                "-sS",
            ])
            .args(["--unix-socket", &sock, "http://x/v1/sandboxes"])
            .output()
            .unwrap();
        assert!(
            !o.status.success(),
            "nobody reached the API: {}",
            stdout(&o)
        );
        assert!(!stdout(&o).contains("api-one"));
    }

    // Names from the path are names, never options: `--all` deletes nothing.
    for (method, path) in [
        ("DELETE", "/v1/sandboxes/--all"),
        ("GET", "/v1/sandboxes/--help"),
        ("POST", "/v1/sandboxes/-h/stop"),
        ("GET", "/v1/sandboxes/--help/logs"),
        ("GET", "/v1/providers/--help"),
    ] {
        let o = s.curl(&["-X", method, &format!("http://x{path}")]);
        assert!(o.ends_with("404"), "{method} {path}: {o}");
    }
    for bad in [
        r#"{"args":["--help"]}"#,
        r#"{"args":["-V"]}"#,
        r#"{"args":["--host=unix:///x"]}"#,
    ] {
        let o = s.curl(&["-X", "POST", "-d", bad, "http://x/v1/sandboxes"]);
        assert!(o.ends_with("400"), "{bad}: {o}");
    }
    assert!(s.curl(&["http://x/v1/sandboxes"]).contains("\"api-one\""));
    // The stdio endpoints want the upgrade they speak.
    let o = s.curl(&[
        "-X",
        "POST",
        "-d",
        r#"{"args":["true"]}"#,
        "http://x/v1/sandboxes/api-one/exec",
    ]);
    assert!(o.ends_with("426"), "{o}");
    // A client that goes away takes its command with it, even a silent one.
    let exe = openshell_bin().display().to_string();
    let mut gone = Command::new("timeout")
        .args([
            "2", &exe, "sandbox", "exec", "api-one", "--", "sleep", "3141",
        ])
        .env("OPENSHELL_HOST", format!("unix://{}", s.socket().display()))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let _ = gone.wait();
    assert!(
        eventually(20, || processes_with("sleep 3141").is_empty()),
        "the command outlived its client: {:?}",
        processes_with("sleep 3141")
    );
    let sock = s.socket().display().to_string();
    let _ = Command::new("curl")
        .args(["-sS", "--max-time", "1", "--unix-socket", &sock])
        .arg("http://x/v1/sandboxes/api-one/logs?follow=1")
        .output();
    assert!(
        eventually(20, || processes_with("logs api-one -o json -f").is_empty()),
        "a follower outlived its client"
    );
    let missing = s.curl(&["http://x/v1/sandboxes/nope/logs?follow=1"]);
    assert!(missing.ends_with("404"), "{missing}");

    assert_eq!(
        s.curl(&["-X", "DELETE", "http://x/v1/sandboxes/api-one"]),
        "deleted api-one\n\n200"
    );
    assert_eq!(s.curl(&["http://x/v1/sandboxes"]), "[]\n\n200");

    // Stopping the server removes its socket.
    let mut child = s.child.take().unwrap();
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    assert!(!s.socket().exists());
    assert!(stdout(&s.cli(&["status"])).contains("Serve:     not running"));
}

fn restart_always_brings_a_killed_sandbox_back_and_stop_is_respected() {
    need_sandbox!();
    let mut s = Server::new();
    let o = s.cli(&[
        "sandbox",
        "create",
        "--detach",
        "--name",
        "keeper",
        "--restart",
        "always",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.cli(&["sandbox", "create", "--detach", "--name", "plain"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Both die while no server runs (as at a reboot): the server brings back only the
    // one that asked for it, when it starts.
    let (k, p) = (s.supervisor_pid("keeper"), s.supervisor_pid("plain"));
    for pid in [k, p] {
        // SAFETY: plain kill(2) of a supervisor this test created.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    s.sb.wait_phase("keeper", "Error");
    s.sb.wait_phase("plain", "Error");
    s.start();
    s.sb.wait_phase("keeper", "Ready");
    let first = s.supervisor_pid("keeper");
    assert_ne!(first, k);
    // And again while it runs.
    // SAFETY: as above.
    unsafe { libc::kill(first, libc::SIGKILL) };
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let back = s.cli(&["sandbox", "get", "keeper", "-o", "json"]);
        if stdout(&back).contains("\"Ready\"")
            && s.try_supervisor_pid("keeper").is_some_and(|p| p != first)
        {
            break;
        }
        assert!(
            Instant::now() < until,
            "keeper never came back: {}",
            stdout(&back)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = s.cli(&["sandbox", "exec", "keeper", "--", "echo", "back"]);
    assert_eq!(stdout(&o), "back\n", "{}", stderr(&o));
    // Ended by SIGTERM (as at a shutdown), not by the user: it comes back too.
    let before = s.supervisor_pid("keeper");
    // SAFETY: as above.
    unsafe { libc::kill(before, libc::SIGTERM) };
    assert!(
        eventually(20, || {
            stdout(&s.cli(&["sandbox", "get", "keeper", "-o", "json"])).contains("\"Ready\"")
                && s.try_supervisor_pid("keeper").is_some_and(|p| p != before)
        }),
        "keeper did not come back after SIGTERM"
    );
    // `plain` stays down; a stopped `keeper` stays stopped (observed for 3 s: the server
    // looks twice a second).
    let o = s.cli(&["sandbox", "stop", "keeper"]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::thread::sleep(Duration::from_secs(3));
    s.sb.wait_phase("keeper", "Stopped");
    s.sb.wait_phase("plain", "Error");
    // A dead one the user stops stays stopped too, when the server starts later.
    let o = s.cli(&["sandbox", "start", "keeper"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let pid = s.supervisor_pid("keeper");
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let o = s.cli(&["sandbox", "stop", "keeper"]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::thread::sleep(Duration::from_secs(3));
    s.sb.wait_phase("keeper", "Error");
}

fn the_prune_spares_restart_sandboxes_and_global_flags_are_not_saved() {
    need_sandbox!();
    let mut s = Server::new();
    let cfg = s.sb.state.path().join("config/openshell");
    std::fs::create_dir_all(&cfg).unwrap();
    std::fs::write(
        cfg.join("config.toml"),
        "[prune]\nidle = \"9999d\"\nmax_age = \"1s\"\nevery = \"1s\"\n",
    )
    .unwrap();
    // A global -v on create is not one of the sandbox's options: start still works.
    let o = s.cli(&[
        "-v",
        "sandbox",
        "create",
        "--detach",
        "--name",
        "kept",
        "--restart",
        "always",
        "-v",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = s.cli(&["sandbox", "create", "--detach", "--name", "gone"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for n in ["kept", "gone"] {
        let o = s.cli(&["sandbox", "stop", n]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let o = s.cli(&["sandbox", "start", "kept"]);
    assert!(
        o.status.success(),
        "start after a create with -v: {}",
        stderr(&o)
    );
    let o = s.cli(&["sandbox", "stop", "kept"]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::thread::sleep(Duration::from_millis(1100));
    s.start();
    assert!(
        eventually(20, || !stdout(&s.cli(&["sandbox", "list", "--names"]))
            .contains("gone")),
        "the plain stopped sandbox was not pruned"
    );
    assert!(stdout(&s.cli(&["sandbox", "list", "--names"])).contains("kept"));
}

/// Another local user can neither use the socket nor hold the lock, and a socket
/// directory or socket that is not ours is refused (root plays the other user).
fn other_users_cannot_reach_hold_or_plant() {
    need_sandbox!();
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        openshell_tests::skip("needs root to act as another user (setpriv)");
    }
    let mut s = Server::new();
    s.start();
    let lock = s.socket().with_file_name("api.sock.lock");
    assert_eq!(mode(&lock), 0o600, "lock mode");
    let o = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "flock",
            "-n",
            "-s",
        ])
        .arg(&lock)
        .arg("true")
        .output()
        .unwrap();
    assert!(!o.status.success(), "nobody took the lock");
    // A directory another user owns is refused.
    let other = s.sb.state.path().join("other");
    std::fs::create_dir_all(other.join("openshell")).unwrap();
    for d in [other.as_path(), &other.join("openshell")] {
        std::os::unix::fs::chown(d, Some(65534), Some(65534)).unwrap();
    }
    let o = Command::new(openshell_bin())
        .arg("serve")
        .env("XDG_RUNTIME_DIR", &other)
        .env("OPENSHELL_STATE_DIR", s.sb.state.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("must be a directory of yours"),
        "{}",
        stderr(&o)
    );
    // A server of another uid gets no command line from the CLI.
    let planted = s.sb.state.path().join("planted");
    std::fs::create_dir_all(&planted).unwrap();
    std::fs::set_permissions(
        &planted,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let sock = planted.join("api.sock");
    let script = format!(
        "import socket,os\ns=socket.socket(socket.AF_UNIX)\ns.bind({sock:?})\nos.chmod({sock:?},0o666)\ns.listen(1)\nc,_=s.accept()\nprint(len(c.recv(65536)))",
        sock = sock.display().to_string()
    );
    let listener = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            &script,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        eventually(10, || sock.exists()),
        "planted listener did not start"
    );
    let o = Command::new(openshell_bin())
        .args([
            "--host",
            &format!("unix://{}", sock.display()),
            "provider",
            "list",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not as you"), "{}", stderr(&o));
    let got = listener.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        "0",
        "bytes sent to a stranger"
    );
}

/// A server whose own environment names it as OPENSHELL_HOST does not start copies
/// of itself (its children never forward).
fn a_server_pointing_at_itself_does_not_multiply() {
    need_sandbox!();
    let mut s = Server::new();
    let host = format!("unix://{}", s.socket().display());
    let mut c = s.serve();
    c.env("OPENSHELL_HOST", &host)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    s.child = Some(c.spawn().unwrap());
    assert!(eventually(10, || s.socket().exists()));
    assert_eq!(s.curl(&["http://x/v1/sandboxes"]), "[]\n\n200");
    std::thread::sleep(Duration::from_secs(2));
    let serve_pid = s.child.as_ref().unwrap().id() as i32;
    let n = descendants(serve_pid);
    assert!(n < 5, "{n} processes under the server");
}

/// How many processes descend from `pid` (from /proc/*/stat).
fn descendants(pid: i32) -> usize {
    let mut parent_of = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(me) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(stat) = std::fs::read_to_string(e.path().join("stat"))
            && let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..])
            && let Some(pp) = rest
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<i32>().ok())
        {
            parent_of.push((me, pp));
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found.len() - 1
}

fn a_bad_config_is_refused_with_its_path() {
    need_sandbox!();
    let s = Server::new();
    let cfg = s.sb.state.path().join("config/openshell");
    std::fs::create_dir_all(&cfg).unwrap();
    for (text, want) in [
        ("[prune]\nidel = \"2h\"\n", "idel"),
        ("[prune]\nidle = \"2x\"\n", "unit"),
        ("[prune]\nevery = \"0s\"\n", "more than 0"),
        ("[prune\n", "config.toml"),
    ] {
        std::fs::write(cfg.join("config.toml"), text).unwrap();
        let o = s.serve().stdin(Stdio::null()).output().unwrap();
        assert!(!o.status.success(), "{text}");
        let e = stderr(&o);
        assert!(e.contains("config.toml") && e.contains(want), "{text}: {e}");
        assert!(!s.socket().exists());
    }
}

fn completion_offers_sandbox_names() {
    need_sandbox!();
    let s = Server::new();
    for n in ["comp-alpha", "comp-beta"] {
        let o = s.cli(&["sandbox", "create", "--detach", "--name", n]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let bin_dir = openshell_bin().parent().unwrap().to_path_buf();
    let script = "source <(openshell completions bash) && \
        COMP_WORDS=(openshell sandbox get comp-) && COMP_CWORD=3 && COMP_TYPE=9 && \
        _clap_complete_openshell openshell comp- sandbox && printf '%s\\n' \"${COMPREPLY[@]}\"";
    let mut c = Command::new("bash");
    s.env(&mut c);
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = c.args(["-c", script]).env("PATH", path).output().unwrap();
    assert_eq!(stdout(&o), "comp-alpha\ncomp-beta\n", "{}", stderr(&o));
}

openshell_tests::suite!(
    the_api_serves_curl_and_the_cli_and_only_its_owner,
    restart_always_brings_a_killed_sandbox_back_and_stop_is_respected,
    the_prune_spares_restart_sandboxes_and_global_flags_are_not_saved,
    other_users_cannot_reach_hold_or_plant,
    a_server_pointing_at_itself_does_not_multiply,
    a_bad_config_is_refused_with_its_path,
    completion_offers_sandbox_names,
);
