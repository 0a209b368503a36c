//! `openshell policy ...`: validate a policy file (more verbs arrive with live sandboxes).

use std::path::PathBuf;

use clap::Subcommand;

use crate::output::{Format, structured};

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
    match cmd {
        PolicyCommand::Default => {
            print!(
                "{}",
                openshell_policy::Policy::restrictive_default().to_yaml()
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
