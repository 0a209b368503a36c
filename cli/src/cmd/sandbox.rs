//! `openshell sandbox list|get|delete|prune|explain`: the sandboxes on disk and their
//! phases (explain lives in `explain`).

use std::collections::BTreeMap;

use clap::Subcommand;
use openshell_runtime::api::record::{self, Phase};
use openshell_runtime::api::state;
use openshell_runtime::api::store::{self, Entry};
use serde::Serialize;

use crate::output::{self, Format, fail};

/// `openshell sandbox ...`
#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    /// Create a sandbox that stays after its command: runs CMD (default: a login
    /// shell) in it; --detach returns once it is Ready; --no-keep deletes it after.
    Create(Box<super::create::CreateArgs>),
    /// List sandboxes: NAME, PHASE, IMAGE, CREATED, AGE, IDLE.
    #[command(alias = "ls")]
    List {
        /// Only sandboxes with these labels (k=v, or k=v,k2=v2). Repeatable; all must
        /// match.
        #[arg(long, short = 'l', value_name = "K=V[,K=V]")]
        selector: Vec<String>,
        /// Only sandboxes in this phase (Ready, Stopped, Error, Provisioning).
        #[arg(long, value_name = "PHASE")]
        status: Option<String>,
        /// Print names only (`--names`, `--ids`: OpenShell's spellings; a sandbox's
        /// name is its id).
        #[arg(long, short, visible_alias = "names", alias = "ids")]
        quiet: bool,
        /// At most this many (after --offset).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Skip this many first.
        #[arg(long, value_name = "N", default_value_t = 0)]
        offset: usize,
    },
    /// Show one sandbox.
    Get {
        /// Its name.
        #[arg(add = clap_complete::ArgValueCandidates::new(crate::complete::sandboxes))]
        name: Option<String>,
        /// Print only its policy (YAML): the active one while it runs, else the stored.
        #[arg(long)]
        policy_only: bool,
    },
    /// Stop and remove sandboxes: processes, files, state.
    #[command(alias = "rm")]
    Delete {
        /// Names.
        #[arg(required_unless_present = "all")]
        #[arg(add = clap_complete::ArgValueCandidates::new(crate::complete::sandboxes))]
        names: Vec<String>,
        /// Every sandbox.
        #[arg(long, conflicts_with = "names")]
        all: bool,
        /// Accepted for CreateOS's `rm --force`: delete never asks.
        #[arg(long, short)]
        force: bool,
    },
    /// Copy a local file or tree into the sandbox's workspace (.gitignore honoured).
    Upload {
        /// The sandbox.
        #[arg(add = clap_complete::ArgValueCandidates::new(crate::complete::sandboxes))]
        name: String,
        /// Local file or directory.
        local: std::path::PathBuf,
        /// Destination under /sandbox (default: /sandbox/<basename>).
        dest: Option<String>,
        /// Upload files that .gitignore excludes too.
        #[arg(long)]
        no_git_ignore: bool,
    },
    /// Copy a file or tree out of the sandbox's workspace.
    Download {
        /// The sandbox.
        #[arg(add = clap_complete::ArgValueCandidates::new(crate::complete::sandboxes))]
        name: String,
        /// Path under /sandbox.
        path: String,
        /// Local destination (default: ./<basename>; into it when a directory).
        dest: Option<std::path::PathBuf>,
    },
    /// Run a command in a running sandbox, confined like its first one; stdin, stdout
    /// and stderr are this terminal's pipes; the exit status is the command's.
    Exec {
        /// The sandbox.
        #[arg(add = clap_complete::ArgValueCandidates::new(crate::complete::sandboxes))]
        #[arg(conflicts_with = "name_flag")]
        name: Option<String>,
        /// The sandbox (OpenShell's spelling: `exec -n NAME -- CMD`).
        #[arg(short = 'n', long = "name", value_name = "NAME")]
        name_flag: Option<String>,
        /// Working directory inside (default: the sandbox's).
        #[arg(long, short = 'w', value_name = "DIR")]
        workdir: Option<String>,
        /// Set an environment variable (K=V). Repeatable.
        #[arg(long, short = 'e', value_name = "K=V")]
        env: Vec<String>,
        /// Kill the command after this many seconds (exit 124; 0 = no timeout).
        #[arg(long, value_name = "S", conflicts_with = "tty")]
        timeout: Option<u64>,
        /// Give the command a terminal (a pty of the sandbox, relayed to this one).
        #[arg(long, short = 't')]
        tty: bool,
        /// No terminal (the default; OpenShell's `--no-tty`).
        #[arg(long, conflicts_with = "tty")]
        no_tty: bool,
        /// Internal (`ssh-proxy`): the command and extra K=V come as JSON arrays in
        /// $OPENSHELL_EXEC_ARGV and $OPENSHELL_EXEC_ENV, off the command line (which
        /// other users can read).
        #[arg(long, hide = true, conflicts_with = "command")]
        argv_from_env: bool,
        /// Command and arguments.
        #[arg(last = true, required_unless_present = "argv_from_env")]
        command: Vec<String>,
    },
    /// Open an interactive login shell in a running sandbox (exec with a pty).
    Connect {
        /// The sandbox.
        #[arg(add = clap_complete::ArgValueCandidates::new(crate::complete::sandboxes))]
        name: Option<String>,
        /// Open it in an editor over SSH instead (writes openshell's ssh_config and one
        /// Include line in ~/.ssh/config).
        #[arg(long, value_enum, conflicts_with = "shell")]
        editor: Option<super::ssh_config::Editor>,
        /// A new shell, even when the sandbox's first command runs (without it,
        /// connect attaches to that command; Ctrl-P Ctrl-Q detaches).
        #[arg(long)]
        shell: bool,
    },
    /// Print an OpenSSH `Host openshell-NAME` block for `~/.ssh/config` (ssh, scp,
    /// sftp, `ssh -L` then work without a port or an sshd).
    SshConfig {
        /// The sandbox.
        #[arg(add = clap_complete::ArgValueCandidates::new(crate::complete::sandboxes))]
        name: Option<String>,
    },
    /// Delete sandboxes made by `create` and create them again from the options they
    /// were created with, keeping nothing (OpenClaw's recreate); running ones need
    /// --force.
    Recreate {
        /// Names.
        #[arg(required_unless_present = "all")]
        #[arg(add = clap_complete::ArgValueCandidates::new(crate::complete::sandboxes))]
        names: Vec<String>,
        /// Every sandbox made by `create`.
        #[arg(long, conflicts_with = "names")]
        all: bool,
        /// Recreate running ones too.
        #[arg(long, short)]
        force: bool,
    },
    /// Bring a stopped sandbox made by `create` back (same files, current policy).
    Start {
        /// Its name.
        #[arg(add = clap_complete::ArgValueCandidates::new(crate::complete::sandboxes))]
        name: Option<String>,
    },
    /// Stop a running sandbox's processes (SIGTERM, SIGKILL after 5 s); a kept
    /// sandbox's files and policy stay.
    Stop {
        /// Names (default: the last sandbox used).
        #[arg(add = clap_complete::ArgValueCandidates::new(crate::complete::sandboxes))]
        names: Vec<String>,
    },
    /// The effective policy and what this kernel enforces of it.
    Explain {
        /// Its name.
        #[arg(add = clap_complete::ArgValueCandidates::new(crate::complete::sandboxes))]
        name: String,
    },
    /// Delete sandboxes that are not running and idle or old (default: idle 24h).
    Prune {
        /// Idle at least this long (30s, 5m, 24h, 7d).
        #[arg(long, value_name = "DURATION")]
        idle: Option<String>,
        /// Created at least this long ago.
        #[arg(long, value_name = "DURATION")]
        max_age: Option<String>,
        /// Only print what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
}

fn exec(
    base: &std::path::Path,
    name: &str,
    workdir: Option<String>,
    env: &[String],
    timeout: Option<u64>,
    tty: bool,
    command: Vec<String>,
) -> i32 {
    use openshell_runtime::api::exec::{ExecRequest, exec as exec_in};
    let setup = openshell_runtime::api::EXIT_SETUP;
    let env = match env
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(format!("--env {kv}: expected K=V")),
        })
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(e) => e,
        Err(e) => {
            eprintln!("openshell: {e}");
            return setup;
        }
    };
    let entry = match store::find(base, name) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("openshell: {e}");
            return setup;
        }
    };
    let Ok(rec) = &entry.record else {
        eprintln!(
            "openshell: sandbox {name}: {}",
            entry.phase().1.unwrap_or_default()
        );
        return setup;
    };
    let req = ExecRequest {
        argv: command,
        env,
        workdir,
        // 0 means no timeout, as upstream's `exec --timeout 0`.
        timeout: timeout
            .filter(|t| *t > 0)
            .map(std::time::Duration::from_secs),
        tty,
    };
    match exec_in(&entry.dir, rec, &req) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("openshell: {e}");
            setup
        }
    }
}

/// `30s`, `5m`, `24h`, `7d` (or plain seconds) in seconds.
pub fn duration(flag: &str, s: &str) -> Result<u64, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{flag} {s:?}: expected a duration like 30s, 5m, 24h or 7d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => {
            return Err(format!(
                "{flag} {s:?}: unknown unit {unit:?}; use s, m, h or d"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{flag} {s:?}: too large"))
}

fn prune(idle: Option<String>, max_age: Option<String>, dry_run: bool) -> i32 {
    let idle = match idle.as_deref().map(|s| duration("--idle", s)).transpose() {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let max_age = match max_age
        .as_deref()
        .map(|s| duration("--max-age", s))
        .transpose()
    {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let idle = if idle.is_none() && max_age.is_none() {
        Some(86400)
    } else {
        idle
    };
    let base = state::base_dir();
    let now = record::now();
    let mut code = 0;
    for e in store::list(&base) {
        // A sandbox whose record cannot be read is left for an explicit delete.
        let Ok(r) = &e.record else { continue };
        if matches!(r.phase().0, Phase::Ready | Phase::Provisioning) {
            continue;
        }
        // A sandbox that asked to be kept running is never pruned: delete it by name.
        if super::create::restart_policy(&e.dir) != super::create::Restart::No {
            continue;
        }
        let too_idle = idle.is_some_and(|i| now.saturating_sub(r.last_active) >= i);
        let too_old = max_age.is_some_and(|a| now.saturating_sub(r.created) >= a);
        if !(too_idle || too_old) {
            continue;
        }
        if dry_run {
            println!("would delete {}", e.name);
            continue;
        }
        match store::delete(&base, &e.name) {
            Ok(()) => println!("deleted {}", e.name),
            Err(err) => code = fail(err),
        }
    }
    code
}

/// The interactive shell of `connect` (and of an SSH session): bash if the sandbox
/// has it, else sh; a login shell either way.
pub const LOGIN_SHELL: [&str; 3] = [
    "/bin/sh",
    "-c",
    "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi",
];

/// What `list -o json` and `get` print about a sandbox.
#[derive(Debug, Serialize)]
struct View {
    name: String,
    phase: Phase,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    image_digest: Option<String>,
    created: String,
    age: String,
    idle: String,
    labels: BTreeMap<String, String>,
    network: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    supervisor_pid: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    path: String,
}

fn view(e: &Entry) -> View {
    let now = record::now();
    match &e.record {
        Ok(r) => {
            let (phase, reason) = r.phase();
            View {
                name: e.name.clone(),
                phase,
                reason,
                image: r.image.clone(),
                image_digest: r.image_digest.clone(),
                created: record::rfc3339(r.created),
                age: record::age(now.saturating_sub(r.created)),
                idle: record::age(now.saturating_sub(r.last_active)),
                labels: r.labels.clone(),
                network: r.network.to_string(),
                supervisor_pid: r.supervisor.filter(|s| s.alive()).map(|s| s.pid),
                exit_code: r.exit_code,
                path: e.dir.display().to_string(),
            }
        }
        Err(_) => View {
            name: e.name.clone(),
            phase: e.phase().0,
            reason: e.phase().1,
            image: "-".into(),
            image_digest: None,
            created: "-".into(),
            age: "-".into(),
            idle: "-".into(),
            labels: BTreeMap::new(),
            network: "-".into(),
            supervisor_pid: None,
            exit_code: None,
            path: e.dir.display().to_string(),
        },
    }
}

/// Where the name of the last sandbox used (created, started, connected to, exec'd
/// in) is kept, for commands given no NAME (as OpenShell does).
const LAST: &str = "last-sandbox";

/// Remember `name` as the last sandbox used.
pub fn remember(name: &str) {
    let base = state::base_dir();
    let _ = openshell_runtime::api::record::write_whole(&base.join(LAST), name.as_bytes(), false);
}

/// `name`, or the last sandbox used when none was given (said on stderr), or an error
/// naming what to give.
pub fn resolve(name: Option<String>) -> Result<String, String> {
    if let Some(n) = name {
        return Ok(n);
    }
    let base = state::base_dir();
    let last = std::fs::read_to_string(base.join(LAST)).unwrap_or_default();
    let last = last.trim();
    if !last.is_empty() && state::check_name(last).is_ok() && store::find(&base, last).is_ok() {
        eprintln!("openshell: sandbox {last} (the last one used)");
        return Ok(last.to_string());
    }
    Err("which sandbox? give its NAME (no sandbox was used recently)".into())
}

/// Parse `k=v` selectors (each argument may hold several, comma-separated).
fn selectors(args: &[String]) -> Result<Vec<(String, String)>, String> {
    args.iter()
        .flat_map(|a| a.split(','))
        .map(|s| match s.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(format!("--selector {s:?}: expected KEY=VALUE")),
        })
        .collect()
}

/// Run a `sandbox` subcommand; returns the exit status.
pub fn run(cmd: SandboxCommand, format: Format) -> i32 {
    let base = state::base_dir();
    // NAME may be left out (the last sandbox used), as in OpenShell.
    macro_rules! named {
        ($n:expr) => {
            match resolve($n) {
                Ok(n) => n,
                Err(e) => return fail(e),
            }
        };
    }
    match cmd {
        SandboxCommand::List {
            selector,
            status,
            quiet,
            limit,
            offset,
        } => {
            let want = match selectors(&selector) {
                Ok(w) => w,
                Err(e) => return fail(e),
            };
            const PHASES: [&str; 4] = ["Provisioning", "Ready", "Stopped", "Error"];
            let status = match status {
                None => None,
                Some(s) => match PHASES.iter().find(|p| p.eq_ignore_ascii_case(&s)) {
                    Some(p) => Some(*p),
                    None => {
                        return fail(format!("--status {s:?}: one of {}", PHASES.join(", ")));
                    }
                },
            };
            let views: Vec<View> = store::list(&base)
                .iter()
                .map(view)
                .filter(|v| want.iter().all(|(k, val)| v.labels.get(k) == Some(val)))
                .filter(|v| status.is_none_or(|p| v.phase.to_string() == p))
                .skip(offset)
                .take(limit.unwrap_or(usize::MAX))
                .collect();
            if quiet {
                for v in &views {
                    println!("{}", v.name);
                }
            } else if !output::structured(format, &views) {
                let rows: Vec<Vec<String>> = views
                    .iter()
                    .map(|v| {
                        vec![
                            v.name.clone(),
                            v.phase.to_string(),
                            v.image.clone(),
                            v.created.clone(),
                            v.age.clone(),
                            v.idle.clone(),
                        ]
                    })
                    .collect();
                output::table(&["NAME", "PHASE", "IMAGE", "CREATED", "AGE", "IDLE"], &rows);
            }
            0
        }
        SandboxCommand::Get {
            name,
            policy_only: true,
        } => super::live_policy::get(
            &named!(name),
            format,
            std::time::Duration::from_secs(10),
            None,
            super::live_policy::Show::YamlOnly,
        ),
        SandboxCommand::Get { name, .. } => match store::find(&base, &named!(name)) {
            Err(e) => fail(e),
            Ok(e) => {
                let v = view(&e);
                if !output::structured(format, &v) {
                    print_view(&v);
                }
                0
            }
        },
        SandboxCommand::Delete { names, all, .. } => {
            let names: Vec<String> = if all {
                store::list(&base).into_iter().map(|e| e.name).collect()
            } else {
                names
            };
            let mut code = 0;
            for n in &names {
                match store::delete(&base, n) {
                    Ok(()) => println!("deleted {n}"),
                    Err(e) => code = fail(e),
                }
            }
            store::sweep(&base);
            code
        }
        SandboxCommand::Explain { name } => super::explain::run(&name, format),
        SandboxCommand::Create(args) => super::create::run(*args, format),
        SandboxCommand::Start { name } => {
            let name = named!(name);
            let code = super::create::start(&name);
            if code == 0 {
                remember(&name);
            }
            code
        }
        SandboxCommand::Recreate { names, all, force } => {
            super::create::recreate(names, all, force, format)
        }
        SandboxCommand::Exec {
            name,
            name_flag,
            workdir,
            env,
            timeout,
            tty,
            argv_from_env,
            command,
            ..
        } => {
            let name = named!(name.or(name_flag));
            let (env, command) = if argv_from_env {
                let json = |k: &str| -> Result<Vec<String>, String> {
                    let v = std::env::var(k).map_err(|_| format!("--argv-from-env: no ${k}"))?;
                    serde_json::from_str(&v).map_err(|e| format!("${k}: {e}"))
                };
                match (json("OPENSHELL_EXEC_ENV"), json("OPENSHELL_EXEC_ARGV")) {
                    (Ok(mut e), Ok(argv)) if !argv.is_empty() => {
                        e.splice(0..0, env);
                        (e, argv)
                    }
                    (Err(err), _) | (_, Err(err)) => return fail(err),
                    _ => return fail("--argv-from-env: $OPENSHELL_EXEC_ARGV is empty"),
                }
            } else {
                (env, command)
            };
            remember(&name);
            exec(&base, &name, workdir, &env, timeout, tty, command)
        }
        SandboxCommand::SshConfig { name } => super::ssh_config::print(&named!(name)),
        SandboxCommand::Connect {
            name,
            editor: Some(editor),
            ..
        } => {
            let name = named!(name);
            remember(&name);
            super::ssh_config::open(&name, editor)
        }
        SandboxCommand::Connect {
            name,
            editor: None,
            shell,
        } => {
            let name = named!(name);
            remember(&name);
            if !shell
                && let Ok(e) = store::find(&base, &name)
                && super::attach::available(&e.dir)
            {
                eprintln!(
                    "openshell: attached to {name}'s first command (Ctrl-P Ctrl-Q detaches; --shell opens a new shell)"
                );
                return match super::attach::attach(&e.dir) {
                    Ok(super::attach::Attached::Exited(code)) => code,
                    Ok(super::attach::Attached::Detached) => {
                        super::create::detached(&name);
                        0
                    }
                    Err(err) => fail(format!("attach to {name}: {err}")),
                };
            }
            let argv = LOGIN_SHELL.iter().map(|s| s.to_string()).collect();
            exec(&base, &name, None, &[], None, true, argv)
        }
        SandboxCommand::Stop { names } => {
            let names = if names.is_empty() {
                vec![named!(None)]
            } else {
                names
            };
            let mut code = 0;
            for n in &names {
                let stopped = store::find(&base, n).and_then(|e| {
                    super::create::mark_stopped(&e.dir);
                    store::stop(&e)
                });
                match stopped {
                    Ok(true) => println!("stopped {n}"),
                    Ok(false) => println!("{n} was not running"),
                    Err(e) => code = fail(e),
                }
            }
            code
        }
        SandboxCommand::Upload {
            name,
            local,
            dest,
            no_git_ignore,
        } => super::transfer::upload(&name, &local, dest.as_deref(), no_git_ignore),
        SandboxCommand::Download { name, path, dest } => {
            super::transfer::download(&name, &path, dest.as_deref())
        }
        SandboxCommand::Prune {
            idle,
            max_age,
            dry_run,
        } => prune(idle, max_age, dry_run),
    }
}

fn print_view(v: &View) {
    let labels: Vec<String> = v.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut lines = vec![("Name", v.name.clone()), ("Phase", v.phase.to_string())];
    if let Some(r) = &v.reason {
        lines.push(("Reason", r.clone()));
    }
    lines.push(("Image", v.image.clone()));
    if let Some(d) = &v.image_digest {
        lines.push(("Digest", d.clone()));
    }
    lines.extend([
        ("Created", format!("{} ({} ago)", v.created, v.age)),
        ("Idle", v.idle.clone()),
        ("Labels", labels.join(",")),
        ("Network", v.network.clone()),
    ]);
    if let Some(p) = v.supervisor_pid {
        lines.push(("Supervisor", format!("pid {p}")));
    }
    if let Some(c) = v.exit_code {
        lines.push(("Last exit", c.to_string()));
    }
    lines.push(("Path", v.path.clone()));
    for (k, val) in lines {
        println!("{:<11} {val}", format!("{k}:"));
    }
}
