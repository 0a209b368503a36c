//! Helpers shared by the network suites: a sandbox with the test CA mounted, its logs
//! in a known place, and small policy builders.
#![allow(dead_code)]

use std::process::Output;

use openshell_tests::{Sandbox, TempDir, policy_file, up};

/// A sandbox with the test CA mounted at /sandbox/ca.crt and logs in a known place.
pub struct Net {
    /// The sandbox environment.
    pub sb: Sandbox,
    /// Where the sandbox's logs go.
    pub logs: TempDir,
    /// Where policies are written.
    pub dir: TempDir,
}

impl Net {
    /// A sandbox environment with fresh log and policy directories.
    pub fn new() -> Self {
        Self {
            sb: Sandbox::new(),
            logs: TempDir::new("netlogs"),
            dir: TempDir::new("netpol"),
        }
    }

    /// Run `script` under `sh -c` with this policy (none: deny all).
    pub fn run(&self, policy: Option<&str>, script: &str) -> Output {
        self.run_opts(policy, &[], script)
    }

    /// [`Net::run`] with extra `run` arguments.
    pub fn run_opts(&self, policy: Option<&str>, extra: &[&str], script: &str) -> Output {
        self.run_env(&[], policy, extra, script)
    }

    /// [`Net::run_opts`] with extra environment for the CLI (the supervisor).
    pub fn run_env(
        &self,
        env: &[(&str, &str)],
        policy: Option<&str>,
        extra: &[&str],
        script: &str,
    ) -> Output {
        let ca = format!("{}:/sandbox/ca.crt:ro", up("OS_UPSTREAM_CA"));
        let logs = self.logs.path().to_string_lossy().into_owned();
        let mut args: Vec<String> = vec!["--mount".into(), ca, "--log-dir".into(), logs];
        if let Some(p) = policy {
            let f = policy_file(self.dir.path(), "policy.yaml", p);
            args.push("--policy".into());
            args.push(f.to_string_lossy().into_owned());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = self.sb.cmd();
        cmd.envs(env.iter().copied())
            .arg("run")
            .args(&a)
            .args(["--", "sh", "-c", script]);
        cmd.output().unwrap()
    }

    /// The human log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.logs.path().join("openshell.log")).unwrap_or_default()
    }

    /// The OCSF log, one value per line.
    pub fn ocsf(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.logs.path().join("openshell.ocsf.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// curl trusting the test CA.
pub const CURL: &str = "curl -sS -m 10 --cacert /sandbox/ca.crt";

/// A policy with one entry, `upstream`.
pub fn policy(endpoints: &str, binaries: &str) -> String {
    format!(
        "version: 1\nnetwork_policies:\n  upstream:\n    name: upstream\n    endpoints:\n{endpoints}    binaries:\n{binaries}"
    )
}

/// One endpoint line.
pub fn ep(host: &str, port: u16) -> String {
    format!("      - {{ host: \"{host}\", port: {port} }}\n")
}

/// One binary line.
pub fn bin(path: &str) -> String {
    format!("      - {{ path: \"{path}\" }}\n")
}

/// A request to a running sandbox's control socket (`/v1/policy`).
pub fn control(sock: &std::path::Path, method: &str, body: Option<&str>) -> Output {
    let mut c = std::process::Command::new("curl");
    c.args(["-sS", "--unix-socket"])
        .arg(sock)
        .args(["-X", method]);
    if let Some(b) = body {
        c.args(["--data-binary", b]);
    }
    c.arg("http://openshell/v1/policy").output().unwrap()
}
