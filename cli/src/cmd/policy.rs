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
    /// Show a sandbox's policy: a header (version, hash, status); with --full or --base
    /// also when it became active and the YAML after `---` (running: the active one or
    /// revision --rev N; stopped: the stored one).
    Get {
        /// The sandbox.
        #[arg(add = clap_complete::ArgValueCandidates::new(crate::complete::sandboxes))]
        name: Option<String>,
        /// A revision of a running sandbox (see `policy list`) instead of the active one.
        #[arg(long, value_name = "N")]
        rev: Option<u64>,
        /// The effective policy, with the `_provider_*` entries providers added.
        #[arg(long, conflicts_with = "base")]
        full: bool,
        /// The policy without the `_provider_*` entries: what `policy set` takes back.
        #[arg(long)]
        base: bool,
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
    /// Edit a running sandbox's network policy: add or remove endpoints, network
    /// policies and L7 rules in one step (exit 0: loaded; 1: refused — the old one stays
    /// active).
    Update {
        /// The sandbox.
        #[arg(add = clap_complete::ArgValueCandidates::new(crate::complete::sandboxes))]
        name: Option<String>,
        /// host:port[:access[:protocol[:enforcement[:options]]]]; options are
        /// comma-separated (`allowed-ip=CIDR`). Repeatable.
        #[arg(long, value_name = "SPEC")]
        add_endpoint: Vec<String>,
        /// host:port to remove from every network policy. Repeatable.
        #[arg(long, value_name = "HOST:PORT")]
        remove_endpoint: Vec<String>,
        /// host:port:METHOD:PATH_GLOB — allow these requests on an inspected (`rest`)
        /// endpoint already in the policy. Repeatable.
        #[arg(long, value_name = "SPEC")]
        add_allow: Vec<String>,
        /// host:port:METHOD:PATH_GLOB — deny these requests, whatever the allow rules
        /// say. Repeatable.
        #[arg(long, value_name = "SPEC")]
        add_deny: Vec<String>,
        /// Remove the network policy with this name (key). Repeatable.
        #[arg(long, value_name = "NAME")]
        remove_rule: Vec<String>,
        /// A program allowed to use the added endpoints. Repeatable; without it the
        /// endpoint joins the network policy --rule-name names, with its programs.
        #[arg(long, value_name = "PATH")]
        binary: Vec<String>,
        /// The network policy the (one) --add-endpoint goes into; made if missing.
        #[arg(long, value_name = "NAME")]
        rule_name: Option<String>,
        /// Print the resulting policy; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Return once the proxy enforces it (always so: the swap is synchronous).
        #[arg(long)]
        wait: bool,
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
            rev,
            full,
            base,
            timeout,
        } => {
            let shown = match (full, base) {
                (true, _) => super::live_policy::Show::Full,
                (_, true) => super::live_policy::Show::Base,
                _ => super::live_policy::Show::Header,
            };
            super::live_policy::get(&named!(name), format, secs(timeout), rev, shown)
        }
        PolicyCommand::Set {
            name,
            policy,
            wait: _,
            timeout,
        } => super::live_policy::set(&named!(name), &policy, secs(timeout)),
        PolicyCommand::Update {
            name,
            add_endpoint,
            remove_endpoint,
            add_allow,
            add_deny,
            remove_rule,
            binary,
            rule_name,
            dry_run,
            wait: _,
            timeout,
        } => super::live_policy::update(
            &named!(name),
            super::policy_edit::Update {
                add: add_endpoint,
                remove: remove_endpoint,
                allow: add_allow,
                deny: add_deny,
                remove_rules: remove_rule,
                binaries: binary,
                rule_name,
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
