//! `openshell policy ...`: validate a policy file, print the default; the verbs on a
//! sandbox's live policy (`get`, `set`, `list`) are in `live_policy`.

use std::path::PathBuf;

use clap::Subcommand;

use crate::output::{Format, fail, structured};

/// Policy commands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check a policy file; print the verdict the sandbox would give (exit 1 if invalid).
    Validate {
        /// The policy file.
        file: PathBuf,
    },
    /// Print the built-in default policy (used when `run` gets no --policy).
    Default,
    /// Show a sandbox's policy: a header (version, hash, status), then the YAML after
    /// `---` (running: the active one; stopped: the stored one).
    Get {
        /// The sandbox.
        #[arg(add = clap_complete::ArgValueCandidates::new(crate::complete::sandboxes))]
        name: Option<String>,
        /// Accepted for OpenShell compatibility: the whole policy is always printed
        /// (static sections included), so the output can be fed back to `policy set`.
        #[arg(long)]
        full: bool,
        /// Seconds to wait for the sandbox's supervisor.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Replace a running sandbox's policy (exit 0: loaded; 1: invalid — the old one
    /// stays active). Static sections (filesystem, landlock, process) cannot change.
    Set {
        /// The sandbox.
        #[arg(add = clap_complete::ArgValueCandidates::new(crate::complete::sandboxes))]
        name: Option<String>,
        /// The new policy file.
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        /// Return once the proxy enforces it (always so: the swap is synchronous).
        #[arg(long)]
        wait: bool,
        /// Seconds to wait for the sandbox's supervisor.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Edit a running sandbox's network policy: add an endpoint for some binaries, or
    /// remove one (exit 0: loaded; 1: refused — the old one stays active).
    Update {
        /// The sandbox.
        #[arg(add = clap_complete::ArgValueCandidates::new(crate::complete::sandboxes))]
        name: Option<String>,
        /// host:port[:access[:protocol[:enforcement]]]. Repeatable.
        #[arg(long, value_name = "SPEC")]
        add_endpoint: Vec<String>,
        /// A program allowed to use the added endpoints. Repeatable.
        #[arg(long, value_name = "PATH")]
        binary: Vec<String>,
        /// host:port to remove from every network policy. Repeatable.
        #[arg(long, value_name = "HOST:PORT")]
        remove_endpoint: Vec<String>,
        /// Print the resulting policy; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Seconds to wait for the sandbox's supervisor.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// List a running sandbox's policy revisions (loaded, superseded, rejected).
    List {
        /// The sandbox.
        #[arg(add = clap_complete::ArgValueCandidates::new(crate::complete::sandboxes))]
        name: Option<String>,
        /// Seconds to wait for the sandbox's supervisor.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
}

#[derive(serde::Serialize)]
struct Verdict {
    file: String,
    valid: bool,
    errors: Vec<String>,
    network_policies: usize,
}

/// Run a policy command.
pub fn run(cmd: PolicyCommand, format: Format) -> i32 {
    // NAME may be left out (the last sandbox used), as in OpenShell.
    macro_rules! named {
        ($n:expr) => {
            match super::sandbox::resolve($n) {
                Ok(n) => n,
                Err(e) => return fail(e),
            }
        };
    }
    let secs = |t: u64| std::time::Duration::from_secs(t.max(1));
    match cmd {
        PolicyCommand::Get {
            name,
            full: _,
            timeout,
        } => super::live_policy::get(&named!(name), format, secs(timeout), false),
        PolicyCommand::Set {
            name,
            policy,
            wait: _,
            timeout,
        } => super::live_policy::set(&named!(name), &policy, secs(timeout)),
        PolicyCommand::Update {
            name,
            add_endpoint,
            binary,
            remove_endpoint,
            dry_run,
            timeout,
        } => super::live_policy::update(
            &named!(name),
            super::live_policy::Update {
                add: add_endpoint,
                binaries: binary,
                remove: remove_endpoint,
                dry_run,
            },
            secs(timeout),
        ),
        PolicyCommand::List { name, timeout } => {
            super::live_policy::list(&named!(name), format, secs(timeout))
        }
        PolicyCommand::Default => {
            // `network_policies:` last and empty, so that appending a policy block
            // (as OpenShell's quick start does) gives valid YAML.
            let yaml = openshell_policy::Policy::restrictive_default().to_yaml();
            print!(
                "{}",
                yaml.replace("network_policies: {}\n", "network_policies:\n")
            );
            0
        }
        PolicyCommand::Validate { file } => {
            let name = file.display().to_string();
            let verdict = match super::run::load_policy(&file) {
                Ok(p) => Verdict {
                    file: name,
                    valid: true,
                    errors: vec![],
                    network_policies: p.network_policies.len(),
                },
                Err(e) => Verdict {
                    file: name,
                    valid: false,
                    errors: e.lines().map(str::to_string).collect(),
                    network_policies: 0,
                },
            };
            if !structured(format, &verdict) {
                if verdict.valid {
                    println!(
                        "{}: valid ({} network policies)",
                        verdict.file, verdict.network_policies
                    );
                } else {
                    for e in &verdict.errors {
                        eprintln!("{e}");
                    }
                }
            }
            i32::from(!verdict.valid)
        }
    }
}
