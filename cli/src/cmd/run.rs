//! `openshell run`: parse flags into [`RunOptions`] and hand over to the runtime.

use std::path::PathBuf;

use clap::Args;
use openshell_policy::Policy;
use openshell_runtime::spawn::EXIT_SETUP;
use openshell_runtime::{RunOptions, run as run_sandbox};

/// `openshell run [OPTIONS] -- CMD [ARGS]...`
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Policy file (OpenShell YAML). Default: read-only system, writable /sandbox and
    /// /tmp, no network.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Sandbox name (default: generated, e.g. sbx-3f9a1c).
    #[arg(long)]
    pub name: Option<String>,
    /// Hostname inside the sandbox (default: the name).
    #[arg(long)]
    pub hostname: Option<String>,
    /// Working directory inside the sandbox.
    #[arg(long, short = 'w', value_name = "DIR", default_value = "/sandbox")]
    pub workdir: String,
    /// Set an environment variable (K=V, or K to copy it from here). Repeatable.
    #[arg(long, short = 'e', value_name = "K=V")]
    pub env: Vec<String>,
    /// Bind a host path into the sandbox, live (HOST:DEST[:ro]). Repeatable.
    #[arg(long, value_name = "HOST:DEST[:ro]")]
    pub mount: Vec<String>,
    /// Copy a local file or directory into the workspace before starting
    /// (LOCAL[:DEST], DEST under /sandbox; .gitignore'd files are skipped). Repeatable.
    #[arg(long, value_name = "LOCAL[:DEST]")]
    pub upload: Vec<String>,
    /// Upload files that .gitignore excludes too.
    #[arg(long)]
    pub no_git_ignore: bool,
    /// Keep the sandbox's state directory (workspace) after the command exits.
    #[arg(long)]
    pub keep: bool,
    /// Allocate a pty even when not on a terminal (-t) ...
    #[arg(long, short = 't', conflicts_with = "no_tty")]
    pub tty: bool,
    /// ... or never allocate one.
    #[arg(long, short = 'T')]
    pub no_tty: bool,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, value_name = "CMD")]
    pub command: Vec<String>,
}

fn parse_env(items: &[String]) -> Result<Vec<(String, String)>, String> {
    items
        .iter()
        .map(|item| {
            let (k, v) = match item.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => {
                    let v = std::env::var(item).map_err(|_| {
                        format!("--env {item}: not set here; use --env {item}=VALUE")
                    })?;
                    (item.clone(), v)
                }
            };
            if k.is_empty() || k.contains('\0') {
                return Err(format!("--env {item}: expected K=V"));
            }
            Ok((k, v))
        })
        .collect()
}

/// Load and validate a policy file, rendering errors as `file:line:col: ...`.
pub fn load_policy(path: &PathBuf) -> Result<Policy, String> {
    let src =
        std::fs::read_to_string(path).map_err(|e| format!("policy {}: {e}", path.display()))?;
    Policy::parse(&src).map_err(|e| e.render(&path.display().to_string()))
}

fn options(args: RunArgs) -> Result<RunOptions, String> {
    let policy = args.policy.as_ref().map(load_policy).transpose()?;
    let mounts = args
        .mount
        .iter()
        .map(|m| openshell_fs::plan::parse_user_mount(m))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RunOptions {
        command: args.command,
        policy,
        name: args.name,
        hostname: args.hostname,
        workdir: Some(args.workdir),
        env: parse_env(&args.env)?,
        mounts,
        uploads: args.upload,
        no_git_ignore: args.no_git_ignore,
        keep: args.keep,
        tty: if args.tty {
            Some(true)
        } else if args.no_tty {
            Some(false)
        } else {
            None
        },
    })
}

/// Run and return the exit status (125 when openshell itself failed).
pub fn run(args: RunArgs) -> i32 {
    let opts = match options(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("openshell: {e}");
            return EXIT_SETUP;
        }
    };
    match run_sandbox(opts) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("openshell: {e}");
            EXIT_SETUP
        }
    }
}
