//! Helpers of the provider and inference suites: a sandbox environment with its own
//! providers and inference routes, none of the caller's model keys, and the testenv
//! model API's fingerprint of a credential.

use std::process::{Command, Output, Stdio};

use sha2::{Digest, Sha256};

use crate::{Sandbox, TempDir, stderr, stdout, up};

/// The model API stand-in's fingerprint of a credential (`key=` in its answers).
pub fn fingerprint(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A state dir, a config dir (XDG_CONFIG_HOME: providers, routes) and a scratch dir.
pub struct ProviderEnv {
    pub sb: Sandbox,
    pub config: TempDir,
    pub dir: TempDir,
}

impl Default for ProviderEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl ProviderEnv {
    /// Fresh directories.
    pub fn new() -> Self {
        Self {
            sb: Sandbox::new(),
            config: TempDir::new("xdg"),
            dir: TempDir::new("cred"),
        }
    }

    /// `openshell` with these directories and without the caller's model keys.
    pub fn cmd(&self) -> Command {
        let mut c = self.sb.cmd();
        c.env("XDG_CONFIG_HOME", self.config.path())
            .env_remove("ANTHROPIC_API_KEY")
            .env_remove("ANTHROPIC_BASE_URL")
            .env_remove("OPENAI_API_KEY")
            .env_remove("OPENAI_BASE_URL")
            .stdin(Stdio::null());
        c
    }

    /// `openshell ARGS`, output captured.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run openshell")
    }

    /// `openshell run OPTS -- ARGV` with the proxy trusting the test hosts' CA.
    pub fn run(&self, opts: &[&str], argv: &[&str]) -> Output {
        let ca = up("OS_UPSTREAM_CA");
        self.cmd()
            .arg("run")
            .args(["--upstream-ca", &ca])
            .args(opts)
            .arg("--")
            .args(argv)
            .output()
            .expect("run openshell")
    }
}

/// stdout of a command that must have succeeded.
pub fn ok(o: &Output) -> String {
    assert!(o.status.success(), "failed: {}{}", stdout(o), stderr(o));
    stdout(o)
}
