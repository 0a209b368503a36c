//! Helpers for the end-to-end tests: find the real `openshell` binary and the probe,
//! give each test its own state directory, run sandboxes, and skip (with a printed
//! reason) or fail when the kernel lacks a feature, per `OPENSHELL_TEST_REQUIRE`.

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

/// Can sandboxes start here? Checked once. `None` means yes; `Some(reason)` means the
/// test should skip (it panics instead when `userns` is required).
pub fn unavailable() -> Option<String> {
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
        if required("userns") {
            panic!("sandboxes are required (OPENSHELL_TEST_REQUIRE) but unavailable: {reason}");
        }
        eprintln!("skipped: {reason}");
    }
    why.clone()
}

/// Skip the current test (return early) when sandboxes cannot start.
#[macro_export]
macro_rules! need_sandbox {
    () => {
        if $crate::unavailable().is_some() {
            return;
        }
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

impl Sandbox {
    /// A fresh state directory.
    pub fn new() -> Self {
        Self {
            state: TempDir::new("state"),
        }
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
