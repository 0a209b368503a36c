//! Helpers for the end-to-end tests: find the real `openshell` binary and the probe,
//! give each test its own state directory, run sandboxes, and skip (with a printed
//! reason) or fail when the kernel lacks a feature, per `OPENSHELL_TEST_REQUIRE`.

pub mod agents;
pub mod archive;
pub mod harness;
pub mod tmux;

pub use harness::{need, skip};

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// Path of the `openshell` binary: `$OPENSHELL_BIN`, else next to the test binary.
pub fn openshell_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("OPENSHELL_BIN") {
        return PathBuf::from(p);
    }
    target_dir().join("openshell")
}

/// Path of the probe: `$OPENSHELL_PROBE`, else next to the test binary.
pub fn probe_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("OPENSHELL_PROBE") {
        return PathBuf::from(p);
    }
    target_dir().join("openshell-probe")
}

fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/test-hash → target/debug
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// Is `feature` listed in `OPENSHELL_TEST_REQUIRE` (comma-separated)?
pub fn required(feature: &str) -> bool {
    std::env::var("OPENSHELL_TEST_REQUIRE")
        .map(|v| {
            v.split(',')
                .any(|f| f.trim() == feature || f.trim() == "all")
        })
        .unwrap_or(false)
}

/// A private temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TempDir {
    /// Create a fresh directory under the system temp dir.
    pub fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p =
            std::env::temp_dir().join(format!("openshell-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Can sandboxes start here? Checked once. When they cannot, the calling test is
/// skipped with the reason (it fails instead when `userns` is required).
pub fn require_sandboxes() {
    static WHY: OnceLock<Option<String>> = OnceLock::new();
    let why = WHY.get_or_init(|| {
        let state = TempDir::new("probe");
        let out = Command::new(openshell_bin())
            .args(["run", "--", "true"])
            .env("OPENSHELL_STATE_DIR", state.path())
            .output();
        match out {
            Ok(o) if o.status.success() => None,
            Ok(o) => Some(format!(
                "openshell run -- true failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => Some(format!(
                "cannot run {}: {e} (build it first: cargo build --workspace)",
                openshell_bin().display()
            )),
        }
    });
    if let Some(reason) = why {
        need(
            "userns",
            false,
            &format!("sandboxes cannot start here: {reason}"),
        );
    }
}

/// Skip the current test (reported as ignored, with the reason) when sandboxes cannot start.
#[macro_export]
macro_rules! need_sandbox {
    () => {
        $crate::require_sandboxes()
    };
}

/// A value of the upstream test hosts' environment (`upstream.sh env`).
pub fn up(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("{k} unset (eval \"$(tests/env/env.sh)\")"))
}

/// Skip the calling test without the upstream test hosts (fail when they are required).
pub fn require_upstream() {
    need(
        "upstream",
        std::env::var("OS_UPSTREAM_IP").is_ok(),
        "no upstream test hosts (sudo tests/env/up.sh; eval \"$(tests/env/env.sh)\")",
    );
}

/// Skip the current test (reported as ignored) without sandboxes or upstream test hosts.
#[macro_export]
macro_rules! need_upstream {
    () => {
        $crate::need_sandbox!();
        $crate::require_upstream();
    };
}

/// One sandbox invocation's environment: a private state dir.
pub struct Sandbox {
    /// The state directory (`OPENSHELL_STATE_DIR`).
    pub state: TempDir,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

/// A test's sandboxes go with it, failed or not: no supervisor outlives its state dir.
impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self
            .cmd()
            .args(["sandbox", "delete", "--all"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Sandbox {
    /// A fresh state directory.
    pub fn new() -> Self {
        Self {
            state: TempDir::new("state"),
        }
    }

    /// What is in `sandboxes/` besides the lock directory (sandboxes, half-made or
    /// being deleted).
    pub fn leftovers(&self) -> Vec<std::ffi::OsString> {
        std::fs::read_dir(self.state.path().join("sandboxes"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name())
                    .filter(|n| n != ".locks")
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `openshell ARGS` with this state dir.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(openshell_bin());
        c.env("OPENSHELL_STATE_DIR", self.state.path());
        c.env_remove("OPENSHELL_NO_SUBIDS");
        c
    }

    /// `openshell run [opts] -- argv`, stdin empty, output captured.
    pub fn run(&self, opts: &[&str], argv: &[&str]) -> Output {
        self.run_stdin(opts, argv, b"")
    }

    /// Same with bytes on stdin.
    pub fn run_stdin(&self, opts: &[&str], argv: &[&str], input: &[u8]) -> Output {
        let mut c = self.cmd();
        c.arg("run").args(opts).arg("--").args(argv);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("spawn openshell");
        let mut stdin = child.stdin.take().expect("stdin");
        let data = input.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&data);
        });
        let out = child.wait_with_output().expect("wait openshell");
        let _ = writer.join();
        out
    }

    /// `openshell ARGS` with this state dir, stdin empty, output captured.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cmd()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run openshell")
    }

    /// Start `openshell run OPTS -- ARGV` in the background, stdio closed.
    pub fn spawn_run(&self, opts: &[&str], argv: &[&str]) -> std::process::Child {
        self.cmd()
            .arg("run")
            .args(opts)
            .arg("--")
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn openshell")
    }

    /// `run --keep --name NAME -- sh -c SCRIPT` in the background, returned once Ready.
    pub fn start_kept(&self, name: &str, script: &str) -> std::process::Child {
        let child = self.spawn_run(&["--keep", "--name", name], &["sh", "-c", script]);
        self.wait_phase(name, "Ready");
        child
    }

    /// Wait (up to 20 s) until `sandbox get NAME -o json` says `phase`; return that JSON.
    pub fn wait_phase(&self, name: &str, phase: &str) -> String {
        let want = format!("\"phase\": \"{phase}\"");
        let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let o = self.cli(&["sandbox", "get", name, "-o", "json"]);
            let text = stdout(&o);
            if o.status.success() && text.contains(&want) {
                return text;
            }
            assert!(
                std::time::Instant::now() < until,
                "{name} never became {phase}: {text}{}",
                stderr(&o)
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Run the probe inside a sandbox: `openshell run [opts] --mount PROBE -- probe ARGS`.
    pub fn probe(&self, opts: &[&str], args: &[&str]) -> Output {
        let mount = format!("{}:/sandbox/.probe:ro", probe_bin().display());
        let mut all: Vec<&str> = vec!["--mount", &mount];
        all.extend_from_slice(opts);
        let mut argv = vec!["/sandbox/.probe"];
        argv.extend_from_slice(args);
        self.run(&all, &argv)
    }
}

/// stdout as a String.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// stderr as a String.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Write a policy file into `dir` and return its path.
pub fn policy_file(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, yaml).expect("write policy");
    p
}

/// A pty pair of the given size, the master close-on-exec (closing ours hangs up).
pub fn openpty(rows: u16, cols: u16) -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let (mut m, mut s) = (0, 0);
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two fds into m and s; name and termios are NULL.
    let rc = unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &ws) };
    assert_eq!(rc, 0);
    // SAFETY: fcntl on a fresh fd of ours.
    unsafe { libc::fcntl(m, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: fresh fds owned by us.
    unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(m),
            std::os::fd::OwnedFd::from_raw_fd(s),
        )
    }
}

/// Read from a pty master until `want` appears or `timeout` passes; all that was read.
pub fn read_until(master: &mut std::fs::File, want: &str, timeout: std::time::Duration) -> String {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let start = std::time::Instant::now();
    let mut acc = String::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < timeout && !acc.contains(want) {
        let mut p = libc::pollfd {
            fd: master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polling one valid fd.
        if unsafe { libc::poll(&mut p, 1, 100) } > 0 {
            match master.read(&mut buf) {
                Ok(n) if n > 0 => acc.push_str(&String::from_utf8_lossy(&buf[..n])),
                _ => break,
            }
        }
    }
    acc
}

/// Wait (up to `secs`) until `f` holds, looking every 100 ms; false when it never did.
pub fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < until {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

/// Processes whose command line contains `marker`, as `PID: command line`.
pub fn processes_with(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(marker) {
                found.push(format!("{}: {c}", e.file_name().to_string_lossy()));
            }
        }
    }
    found
}
