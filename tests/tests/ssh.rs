//! SSH into a sandbox with the real OpenSSH client (`ssh -F` the config `sandbox
//! ssh-config` prints): a command with its output, stdin and exit status, an
//! interactive shell on a pty that follows window changes (in tmux), scp and sftp round
//! trips, `ssh -L` to a server inside (and never to the host's or another address), the
//! attack probes run through ssh, `--editor` writing one Include line, and what an
//! editor's remote mode does (its server installed over `bash -s` into the home, left
//! running in the background, reached with `ssh -W` and `ssh -D`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use openshell_tests::tmux::{Tmux, quote};
use openshell_tests::{
    Sandbox, TempDir, eventually, need, need_sandbox, openshell_bin, probe_bin, stderr, stdout,
};

fn have(cmd: &str, arg: &str) -> bool {
    Command::new(cmd)
        .arg(arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn sftp_server() -> bool {
    [
        "/usr/lib/openssh/sftp-server",
        "/usr/libexec/openssh/sftp-server",
    ]
    .iter()
    .any(|p| Path::new(p).exists())
}

fn need_ssh() {
    need(
        "ssh",
        have("ssh", "-V") && have("scp", "-h") && sftp_server(),
        "the OpenSSH client and sftp-server are not installed (apt install openssh-client openssh-sftp-server)",
    );
}

/// A detached sandbox and the ssh config for it.
struct Ssh {
    sb: Sandbox,
    cfg: PathBuf,
    _dir: TempDir,
}

impl Ssh {
    fn new(name: &str, extra: &[&str]) -> Self {
        let sb = Sandbox::new();
        let o = sb
            .cmd()
            .args(["sandbox", "create", "--detach", "--name", name])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(o.status.success(), "create: {}", stderr(&o));
        let dir = TempDir::new("ssh");
        let o = sb.cli(&["sandbox", "ssh-config", name]);
        assert!(o.status.success(), "{}", stderr(&o));
        let cfg = dir.path().join("config");
        std::fs::write(&cfg, &o.stdout).unwrap();
        Self { sb, cfg, _dir: dir }
    }

    fn ssh(&self, args: &[&str], input: &[u8]) -> Output {
        let mut c = Command::new("ssh");
        c.arg("-F").arg(&self.cfg).args(args);
        run_with_input(c, input)
    }
}

fn run_with_input(mut c: Command, input: &[u8]) -> Output {
    use std::io::Write;
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let w = std::thread::spawn(move || {
        let _ = stdin.write_all(&data);
    });
    let o = child.wait_with_output().unwrap();
    let _ = w.join();
    o
}

fn commands_exit_codes_and_the_config() {
    need_sandbox!();
    need_ssh();
    let s = Ssh::new("sh1", &[]);
    let cfg = std::fs::read_to_string(&s.cfg).unwrap();
    let exe = openshell_bin().canonicalize().unwrap();
    assert!(cfg.starts_with("Host openshell-sh1\n"), "{cfg}");
    assert!(
        cfg.contains(&format!("'{}' ssh-proxy sh1\n", exe.display())),
        "the proxy is this binary, by absolute path: {cfg}"
    );
    let o = s.ssh(
        &["openshell-sh1", "echo out; echo err >&2; hostname; exit 7"],
        b"",
    );
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert_eq!(stdout(&o), "out\nsh1\n");
    assert_eq!(stderr(&o), "err\n");
    let o = s.ssh(&["openshell-sh1", "wc -c"], b"four");
    assert_eq!(stdout(&o).trim(), "4", "{}", stderr(&o));
    // Confined exactly like exec: the same identity, no privileges, seccomp on.
    let via_exec = stdout(&s.sb.cli(&["sandbox", "exec", "sh1", "--", "id"]));
    let o = s.ssh(&["openshell-sh1", "id"], b"");
    assert_eq!(stdout(&o), via_exec);
    let st = stdout(&s.ssh(&["openshell-sh1", "cat /proc/self/status"], b""));
    for want in ["NoNewPrivs:\t1", "Seccomp:\t2", "CapEff:\t0000000000000000"] {
        assert!(st.contains(want), "{want}: {st}");
    }
    // The command never shows on an openshell process's command line.
    let child = Command::new("ssh")
        .arg("-F")
        .arg(&s.cfg)
        .args(["openshell-sh1", "sleep 3; echo MARK_$((6*7))_X"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(800));
    let ours = exe.to_string_lossy().into_owned();
    let seen = openshell_tests::processes_with("MARK_");
    assert!(
        !seen.is_empty(),
        "the control: ssh's own command line has it"
    );
    for p in seen {
        let cmdline = p.split_once(": ").map_or("", |(_, c)| c);
        assert!(
            !(cmdline.contains(&ours) || cmdline.contains("sandbox exec")),
            "on an openshell command line: {p}"
        );
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(stdout(&o), "MARK_42_X\n");
    // A sandbox that is not there, or not running: a clear error.
    let o = s.sb.cli(&["ssh-proxy", "nope"]);
    assert!(
        stderr(&o).contains("no sandbox named nope"),
        "{}",
        stderr(&o)
    );
    assert!(s.sb.cli(&["sandbox", "stop", "sh1"]).status.success());
    let o = s.ssh(&["openshell-sh1", "true"], b"");
    assert_eq!(o.status.code(), Some(255));
    let o = s.sb.cli(&["ssh-proxy", "sh1"]);
    assert!(stderr(&o).contains("is not running"), "{}", stderr(&o));
}

fn scp_sftp_and_local_forwarding() {
    need_sandbox!();
    need_ssh();
    let s = Ssh::new("sh2", &[]);
    let dir = TempDir::new("files");
    let src = dir.path().join("in.bin");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    let mut c = Command::new("scp");
    c.arg("-F")
        .arg(&s.cfg)
        .arg(&src)
        .arg("openshell-sh2:/sandbox/in.bin");
    let o = run_with_input(c, b"");
    assert!(o.status.success(), "scp up: {}", stderr(&o));
    let back = dir.path().join("back.bin");
    let mut c = Command::new("scp");
    c.arg("-F")
        .arg(&s.cfg)
        .arg("openshell-sh2:/sandbox/in.bin")
        .arg(&back);
    let o = run_with_input(c, b"");
    assert!(o.status.success(), "scp down: {}", stderr(&o));
    assert_eq!(std::fs::read(&back).unwrap(), data);
    let batch = format!(
        "put {} /tmp/s.bin\nls -l /tmp/s.bin\nrm /sandbox/in.bin\n",
        src.display()
    );
    let mut c2 = Command::new("sftp");
    c2.arg("-F").arg(&s.cfg).args(["-b", "-", "openshell-sh2"]);
    let o = run_with_input(c2, batch.as_bytes());
    assert!(o.status.success(), "sftp: {}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("200000"), "{}", stdout(&o));
    let o = s.ssh(&["openshell-sh2", "ls /sandbox /tmp"], b"");
    assert!(
        !stdout(&o).contains("in.bin") && stdout(&o).contains("s.bin"),
        "{}",
        stdout(&o)
    );
    // sftp writes where exec may, no further: the host's /usr is read-only inside.
    let o = run_with_input(
        {
            let mut c = Command::new("sftp");
            c.arg("-F").arg(&s.cfg).args(["-b", "-", "openshell-sh2"]);
            c
        },
        format!("put {} /usr/openshell-sftp-test\n", src.display()).as_bytes(),
    );
    assert!(!o.status.success(), "sftp wrote into /usr");
    assert!(!Path::new("/usr/openshell-sftp-test").exists());

    // ssh -L reaches a server on the sandbox's loopback...
    let mut server =
        s.sb.cmd()
            .args(["sandbox", "exec", "sh2", "--"])
            .args([
                "python3",
                "-m",
                "http.server",
                "8765",
                "--bind",
                "127.0.0.1",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
    let local = free_port();
    // ...and a host listener on the same loopback port must not be what it reaches.
    let host_side = TcpListener::bind("127.0.0.1:0").unwrap();
    let host_port = host_side.local_addr().unwrap().port();
    let host_fwd = free_port();
    let other_fwd = free_port();
    let mut fwd = Command::new("ssh")
        .arg("-F")
        .arg(&s.cfg)
        .args(["-N", "-o", "ExitOnForwardFailure=yes"])
        .arg("-L")
        .arg(format!("127.0.0.1:{local}:localhost:8765"))
        .arg("-L")
        .arg(format!("127.0.0.1:{host_fwd}:127.0.0.1:{host_port}"))
        .arg("-L")
        .arg(format!("127.0.0.1:{other_fwd}:10.77.0.2:80"))
        .arg("openshell-sh2")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let get = |port: u16| {
        Command::new("curl")
            .args(["-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("http://127.0.0.1:{port}/"))
            .output()
            .map(|o| stdout(&o))
            .unwrap_or_default()
    };
    assert!(
        eventually(20, || get(local) == "200"),
        "ssh -L to the sandbox's server"
    );
    host_side.set_nonblocking(true).unwrap();
    assert_eq!(get(host_fwd), "000", "reached nothing inside");
    assert!(
        host_side.accept().is_err(),
        "ssh -L reached the host's loopback"
    );
    assert_eq!(get(other_fwd), "000", "only loopback targets");
    let _ = fwd.kill();
    let _ = fwd.wait();
    let _ = server.kill();
    let _ = server.wait();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The attack probes, run through ssh (with and without a pty): each stays blocked.
fn attacks_through_ssh_stay_blocked() {
    need_sandbox!();
    need_ssh();
    let mount = format!("{}:/sandbox/.probe:ro", probe_bin().display());
    let s = Ssh::new("sh3", &["--mount", &mount]);
    let host = TcpListener::bind("127.0.0.1:0").unwrap();
    let host_addr = host.local_addr().unwrap().to_string();
    for (tty, attack) in [
        (false, vec!["mount"]),
        (false, vec!["unshare-user"]),
        (false, vec!["keyctl"]),
        (false, vec!["bpf"]),
        (false, vec!["chroot"]),
        (false, vec!["write", "/usr/openshell-ssh-escape"]),
        (false, vec!["tcp-connect", &host_addr]),
        (true, vec!["tiocsti"]),
        (true, vec!["mount"]),
    ] {
        let mut args = vec![];
        if tty {
            args.push("-tt");
        }
        let cmd = format!("/sandbox/.probe attack {}", attack.join(" "));
        args.extend(["openshell-sh3", cmd.as_str()]);
        let o = s.ssh(&args, b"");
        assert!(
            stdout(&o).starts_with("BLOCKED"),
            "{attack:?} (tty {tty}) through ssh: {}{}",
            stdout(&o),
            stderr(&o)
        );
    }
}

/// An interactive login shell on a pty, in tmux: the prompt, and the window size
/// following the terminal's.
fn an_interactive_shell_follows_the_window() {
    need_sandbox!();
    need_ssh();
    need(
        "tmux",
        openshell_tests::tmux::available(),
        "tmux is not installed",
    );
    let s = Ssh::new("sh4", &[]);
    let t = Tmux::start(&format!(
        "ssh -F {} openshell-sh4",
        quote(&s.cfg.to_string_lossy())
    ));
    t.wait_for("sandbox@sh4");
    t.keys(&["echo T=$TERM; stty size", "Enter"]);
    t.wait_for("24 80");
    t.resize(100, 30);
    std::thread::sleep(std::time::Duration::from_millis(500));
    t.keys(&["clear; stty size", "Enter"]);
    t.wait_for("30 100");
    t.keys(&["exit", "Enter"]);
}

/// `connect --editor`: the managed file, one Include line however often, a symlinked
/// ~/.ssh/config kept a symlink, the editor started with the remote, and a clear error
/// when it is not installed.
fn editors_get_one_include_line() {
    need_sandbox!();
    need_ssh();
    let s = Ssh::new("sh5", &[]);
    let home = TempDir::new("home");
    let bin = home.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = home.path().join("code.log");
    let code = bin.join("code");
    std::fs::write(
        &code,
        format!("#!/bin/sh\necho \"$@\" >> '{}'\n", log.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&code, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The user's config is a symlink to a dotfiles checkout, with a host of their own.
    let ssh_dir = home.path().join(".ssh");
    std::fs::create_dir_all(&ssh_dir).unwrap();
    let dotfile = home.path().join("dotfiles-ssh-config");
    std::fs::write(&dotfile, "Host mine\n    User me\n").unwrap();
    std::os::unix::fs::symlink(&dotfile, ssh_dir.join("config")).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let connect = |editor: &str| {
        s.sb.cmd()
            .env("HOME", home.path())
            .env_remove("XDG_CONFIG_HOME")
            .env("PATH", &path)
            .args(["sandbox", "connect", "sh5", "--editor", editor])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    for _ in 0..2 {
        let o = connect("vscode");
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let managed = home.path().join(".config/openshell/ssh_config");
    let text = std::fs::read_to_string(&dotfile).unwrap();
    let include = format!("Include \"{}\"", managed.display());
    assert_eq!(text.matches(&include).count(), 1, "{text}");
    assert!(
        text.starts_with(&include) && text.contains("Host mine"),
        "{text}"
    );
    assert!(
        std::fs::symlink_metadata(ssh_dir.join("config"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&managed).unwrap().mode() & 0o077, 0);
    assert!(eventually(10, || std::fs::read_to_string(&log)
        .is_ok_and(|l| l.lines().count() == 2)));
    let l = std::fs::read_to_string(&log).unwrap();
    assert!(
        l.lines()
            .all(|l| l == "--remote ssh-remote+openshell-sh5 /sandbox"),
        "{l}"
    );
    // What the editor does next: ssh with the user's config reaches the sandbox.
    let mut c = Command::new("ssh");
    c.arg("-F")
        .arg(ssh_dir.join("config"))
        .args(["openshell-sh5", "echo via-include"]);
    let o = run_with_input(c, b"");
    assert_eq!(stdout(&o), "via-include\n", "{}", stderr(&o));
    let o = connect("cursor");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("`cursor` is not installed or not on PATH"),
        "{}",
        stderr(&o)
    );
    // A config that is not the caller's (root with someone else's HOME, or a link to a
    // file of another user's) is left alone, with an error that says why.
    if std::fs::metadata("/proc/self").unwrap().uid() == 0 {
        let before = std::fs::read_to_string(&dotfile).unwrap();
        let other = home.path().join("other-config");
        std::fs::write(&other, "Host theirs\n").unwrap();
        std::os::unix::fs::chown(&other, Some(65534), Some(65534)).unwrap();
        std::fs::remove_file(ssh_dir.join("config")).unwrap();
        std::os::unix::fs::symlink(&other, ssh_dir.join("config")).unwrap();
        let o = connect("vscode");
        assert_eq!(o.status.code(), Some(1));
        assert!(
            stderr(&o).contains("belongs to uid 65534"),
            "{}",
            stderr(&o)
        );
        assert_eq!(std::fs::read_to_string(&other).unwrap(), "Host theirs\n");
        assert_eq!(std::fs::read_to_string(&dotfile).unwrap(), before);
    }
}

/// A command on a terminal that never reads it, under a flood of input, still ends
/// the session with its status (the input waits apart from the session's loop).
fn a_terminal_nobody_reads_does_not_hold_the_session() {
    need_sandbox!();
    need_ssh();
    let s = Ssh::new("sh7", &[]);
    let mut c = Command::new("timeout");
    c.args(["60", "ssh", "-F"]).arg(&s.cfg).args([
        "-tt",
        "openshell-sh7",
        "stty raw -echo; sleep 2; exit 3",
    ]);
    let o = run_with_input(c, &vec![b'z'; 4 << 20]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
}

/// VS Code's and Cursor's remote mode, step by step as they do it (the editors
/// themselves are not installable here): a script over `ssh HOST bash -s` writes the
/// server into `~/.vscode-server/bin/COMMIT`, starts it in the background on a loopback
/// port and prints the port; the ssh session ends and the server stays; the editor then
/// reaches it with a direct-tcpip channel (`ssh -W`, and through `ssh -D` SOCKS as its
/// local-server mode does). A SOCKS request for any other address is refused.
fn an_editor_server_installs_runs_and_is_reached() {
    need_sandbox!();
    need_ssh();
    let s = Ssh::new("sh6", &[]);
    let install = r#"set -e
mkdir -p ~/.vscode-server/bin/c0ffee
cd ~/.vscode-server/bin/c0ffee
cat > server.py <<'PY'
import http.server, socketserver
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"editor-server-alive\n")
    def log_message(self, *a): pass
with socketserver.TCPServer(("127.0.0.1", 0), H) as srv:
    open("port.tmp", "w").write(str(srv.server_address[1]))
    __import__("os").rename("port.tmp", "port")
    srv.serve_forever()
PY
nohup python3 server.py > log 2>&1 < /dev/null &
for i in $(seq 100); do [ -s port ] && break; sleep 0.1; done
[ -s port ] || cat log >&2
echo "listeningOn==$(cat port)=="
"#;
    let o = s.ssh(&["openshell-sh6", "bash -s"], install.as_bytes());
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let port: u16 = out
        .trim()
        .strip_prefix("listeningOn==")
        .and_then(|p| p.strip_suffix("=="))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {out:?}: {}", stderr(&o)));
    // The session ended; the server is still there, reached through the channel.
    let get = b"GET / HTTP/1.0\r\n\r\n";
    let w = format!("127.0.0.1:{port}");
    let o = s.ssh(&["-W", &w, "openshell-sh6"], get);
    assert!(
        stdout(&o).ends_with("editor-server-alive\n"),
        "{} / {}",
        stdout(&o),
        stderr(&o)
    );
    // SOCKS (ssh -D), as the editor's local server uses it.
    let socks = free_port();
    let mut d = Command::new("ssh")
        .arg("-F")
        .arg(&s.cfg)
        .args(["-N", "-D", &format!("127.0.0.1:{socks}"), "openshell-sh6"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let via = |url: &str| {
        Command::new("curl")
            .args(["-s", "-m", "5", "--socks5-hostname"])
            .arg(format!("127.0.0.1:{socks}"))
            .arg(url)
            .output()
            .unwrap()
    };
    let ok = eventually(10, || {
        stdout(&via(&format!("http://localhost:{port}/"))) == "editor-server-alive\n"
    });
    let refused = via("http://10.0.0.1:80/");
    let _ = d.kill();
    let _ = d.wait();
    assert!(ok, "ssh -D to the editor's server");
    assert!(!refused.status.success(), "ssh -D reached another address");
    // It wrote only inside the sandbox: the server's files are in the sandbox's home.
    let o = s.ssh(&["openshell-sh6", "ls ~/.vscode-server/bin/c0ffee"], b"");
    assert_eq!(stdout(&o), "log\nport\nserver.py\n", "{}", stderr(&o));
}

openshell_tests::suite!(
    commands_exit_codes_and_the_config,
    scp_sftp_and_local_forwarding,
    attacks_through_ssh_stay_blocked,
    an_interactive_shell_follows_the_window,
    editors_get_one_include_line,
    an_editor_server_installs_runs_and_is_reached,
    a_terminal_nobody_reads_does_not_hold_the_session,
);
