//! `openshell sandbox create`: a sandbox that outlives its command.
//!
//! The CLI forks a detached supervisor first (new session, stdin from /dev/null, its
//! output to `<state>/supervisors/<name>.log`), which runs the sandbox with no command
//! of its own (init keeps it up until stopped); then the CLI waits for it to be Ready
//! and runs CMD (default: a login shell) in it exactly like `sandbox exec` — in a
//! forked child, so this process keeps the host's view. When CMD exits the sandbox
//! stays Ready, unless `--no-keep`; `--detach` returns as soon as it is Ready.

use std::time::{Duration, Instant};

use clap::Args;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use openshell_runtime::api::EXIT_SETUP;
use openshell_runtime::api::exec::ExecRequest;
use openshell_runtime::api::record::Phase;
use openshell_runtime::api::{state, store};

use super::run::RunArgs;
use crate::output::Format;

/// Where a created sandbox keeps the options it was created with.
const ARGS_FILE: &str = "create.args";

/// Wait until `name` is Ready under supervisor `sup`, or the supervisor gave up (then
/// print what it logged since `before`).
fn wait_ready(
    base: &std::path::Path,
    name: &str,
    sup: nix::unistd::Pid,
    log: &std::path::Path,
    before: u64,
) -> Result<(), i32> {
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(e) = store::find(base, name)
            && let Ok(r) = &e.record
            && r.supervisor.is_some_and(|s| s.pid == sup.as_raw())
            && e.phase().0 == Phase::Ready
        {
            return Ok(());
        }
        if let Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) =
            waitpid(sup, Some(WaitPidFlag::WNOHANG))
        {
            let why = std::fs::read(log).unwrap_or_default();
            let start = usize::try_from(before).unwrap_or(0).min(why.len());
            eprint!("{}", String::from_utf8_lossy(&why[start..]));
            return Err(EXIT_SETUP);
        }
        if Instant::now() > until {
            return Err(fail(format!(
                "sandbox {name} did not become Ready; see {}",
                log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `openshell sandbox start NAME`: bring a stopped sandbox made by `create` back.
pub fn start(name: &str) -> i32 {
    let base = state::base_dir();
    let e = match store::find(&base, name) {
        Ok(e) => e,
        Err(err) => return fail(err),
    };
    if matches!(e.phase().0, Phase::Ready | Phase::Provisioning) {
        return fail(format!("sandbox {name} is already running"));
    }
    if !e.dir.join(ARGS_FILE).exists() {
        return fail(format!(
            "sandbox {name} was made by `run --keep`, not `sandbox create`: it cannot be started; see its files with `sandbox download`"
        ));
    }
    let mut args = match saved_args(&e.dir) {
        Ok(a) => a,
        Err(err) => return fail(format!("sandbox {name}: {err}")),
    };
    let _ = std::fs::remove_file(e.dir.join(STOPPED_MARK));
    args.run.name = Some(name.to_string());
    args.run.command.clear();
    // The policy it has now (maybe changed live), not the file it was created with.
    args.run.policy = Some(e.dir.join(openshell_runtime::api::record::POLICY));
    args.run.stored_policy = true;
    args.run.upload.clear();
    let mut opts = match super::run::options(args.run) {
        Ok(o) => o,
        Err(err) => return fail(err),
    };
    opts.keep = true;
    opts.keepalive = true;
    opts.reuse = true;
    opts.tty = Some(false);
    let log = base.join("supervisors").join(format!("{name}.log"));
    let _ = std::fs::create_dir_all(base.join("supervisors"));
    let before = std::fs::metadata(&log).map_or(0, |m| m.len());
    let sup = match openshell_runtime::api::session::spawn_supervisor(opts, &log) {
        Ok(p) => p,
        Err(err) => return fail(err),
    };
    match wait_ready(&base, name, sup, &log, before) {
        Ok(()) => {
            println!("started {name}");
            0
        }
        Err(code) => code,
    }
}

/// `openshell sandbox create [OPTIONS] [-- CMD]`
#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Delete the sandbox when CMD exits.
    #[arg(long, conflicts_with = "detach")]
    no_keep: bool,
    /// Return once the sandbox is Ready; run nothing in it.
    #[arg(long, short = 'd')]
    detach: bool,
    /// Let `openshell serve` start it again when its supervisor dies (killed, crashed,
    /// host rebooted): `always` or `on-failure` (the same here: a sandbox only stops
    /// by `sandbox stop`, which is respected). Without serve running, nothing restarts.
    #[arg(long, value_enum, default_value_t = Restart::No, conflicts_with = "no_keep")]
    restart: Restart,
    /// Once Ready, open it in an editor over SSH (as `sandbox connect --editor`); runs
    /// no command.
    #[arg(long, value_enum, conflicts_with = "no_keep")]
    editor: Option<super::ssh_config::Editor>,
}

/// `--restart`: what `openshell serve` does when the sandbox's supervisor dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Restart {
    /// Nothing.
    No,
    /// Start it again.
    Always,
    /// Start it again (a death is always a failure).
    OnFailure,
}

/// The mark `sandbox stop` leaves in a sandbox's directory: it was stopped on
/// purpose, so `serve` does not start it again (`sandbox start` removes it).
const STOPPED_MARK: &str = "stopped-by-user";

/// Whether the user stopped the sandbox in `dir` (see [`STOPPED_MARK`]).
pub fn stopped_by_user(dir: &std::path::Path) -> bool {
    dir.join(STOPPED_MARK).exists()
}

/// Record that the user stopped the sandbox in `dir` (also when it was already down:
/// a dead sandbox the user stops must not be restarted).
pub fn mark_stopped(dir: &std::path::Path) {
    let _ = openshell_runtime::api::record::write_whole(&dir.join(STOPPED_MARK), b"", false);
}

/// The `--restart` a sandbox was created with (`No` when it was not created by
/// `sandbox create`, or its saved options cannot be read).
pub fn restart_policy(dir: &std::path::Path) -> Restart {
    saved_args(dir).map_or(Restart::No, |a| a.restart)
}

/// The options a sandbox was created with, parsed again.
fn saved_args(dir: &std::path::Path) -> Result<CreateArgs, String> {
    #[derive(clap::Parser)]
    struct Saved {
        #[command(flatten)]
        create: CreateArgs,
        /// A global option older versions saved with the rest (`create -o json`):
        /// accepted and ignored.
        #[arg(short = 'o', long)]
        output: Option<String>,
    }
    let text = std::fs::read_to_string(dir.join(ARGS_FILE)).map_err(|e| e.to_string())?;
    let saved: Vec<String> = serde_json::from_str(&text).unwrap_or_default();
    <Saved as clap::Parser>::try_parse_from(std::iter::once("create".to_string()).chain(saved))
        .map(|s| s.create)
        .map_err(|e| format!("its saved options: {e}"))
}

fn fail(e: impl std::fmt::Display) -> i32 {
    eprintln!("openshell: {e}");
    EXIT_SETUP
}

/// The arguments after `create` up to `--`, without the global `-o/--output`.
fn saved_options(args: impl Iterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for a in args.take_while(|a| a != "--") {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        // Global options are not the sandbox's: `start` parses these again.
        let verbose = a == "--verbose"
            || (a.len() > 1 && a.starts_with('-') && a[1..].bytes().all(|b| b == b'v'));
        match a.as_str() {
            // --editor opened an editor once; `start` does not.
            "-o" | "--output" | "--host" | "--editor" => skip_value = true,
            _ if verbose => {}
            _ if a.starts_with("--output=")
                || a.starts_with("--host=")
                || a.starts_with("--editor=")
                || (a.starts_with("-o") && !a.starts_with("--")) => {}
            _ => out.push(a),
        }
    }
    out
}

/// Create the sandbox; returns the exit status.
pub fn run(args: CreateArgs, format: Format) -> i32 {
    create(args, format, None)
}

/// `sandbox recreate NAME...|--all [--force]` (OpenClaw's): delete each sandbox made by
/// `create` and create it again, detached, from the options it was created with —
/// keeping nothing (workspace, image upper directory, live policy changes). A running
/// one needs `--force`.
pub fn recreate(names: Vec<String>, all: bool, force: bool, format: Format) -> i32 {
    let base = state::base_dir();
    let names: Vec<String> = if all {
        store::list(&base)
            .into_iter()
            .filter(|e| e.dir.join(ARGS_FILE).exists())
            .map(|e| e.name)
            .collect()
    } else {
        names
    };
    let mut code = 0;
    for name in names {
        let e = match store::find(&base, &name) {
            Ok(e) => e,
            Err(err) => {
                code = fail(err);
                continue;
            }
        };
        let raw: Vec<String> = match std::fs::read_to_string(e.dir.join(ARGS_FILE)) {
            Ok(t) => serde_json::from_str(&t).unwrap_or_default(),
            Err(_) => {
                code = fail(format!(
                    "sandbox {name} was made by `run --keep`, not `sandbox create`: there are no options to create it from"
                ));
                continue;
            }
        };
        let mut args = match saved_args(&e.dir) {
            Ok(a) => a,
            Err(err) => {
                code = fail(format!("sandbox {name}: {err}"));
                continue;
            }
        };
        if matches!(e.phase().0, Phase::Ready | Phase::Provisioning) && !force {
            code = fail(format!(
                "sandbox {name} is running: `sandbox recreate --force {name}` to recreate it anyway"
            ));
            continue;
        }
        if let Err(err) = store::delete(&base, &name) {
            code = fail(err);
            continue;
        }
        args.run.name = Some(name.clone());
        args.detach = true;
        args.no_keep = false;
        let c = create(args, format, Some(raw));
        if c != 0 {
            code = c;
        }
    }
    code
}

fn create(mut args: CreateArgs, format: Format, saved_raw: Option<Vec<String>>) -> i32 {
    let generated = args.run.name.is_none();
    let name = args.run.name.clone().unwrap_or_else(state::generate_name);
    if let Err(e) = state::check_name(&name) {
        return fail(e);
    }
    args.run.name = Some(name.clone());
    // Bad uploads are named before anything starts.
    for up in &args.run.upload {
        if let Err(e) = state::parse_upload(up) {
            return fail(e);
        }
    }
    let command = std::mem::take(&mut args.run.command);
    let tty_flag = (args.run.tty, args.run.no_tty);
    let editor = args.editor;
    let (detach, no_keep) = (args.detach || editor.is_some(), args.no_keep);
    let explicit = args.run.providers.providers.clone();
    // The agent's provider is chosen by the command, which the supervisor never runs.
    args.run.command = command.clone();
    let mut opts = match super::run::options(args.run) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    opts.command.clear();
    let providers = opts.providers.clone();
    opts.keep = true;
    opts.keepalive = true;
    opts.tty = Some(false);
    let base = state::base_dir();
    let logs = base.join("supervisors");
    if let Err(e) = std::fs::create_dir_all(&logs) {
        return fail(format!(
            "create {}: {e} (set OPENSHELL_STATE_DIR to a directory of yours)",
            logs.display()
        ));
    }
    let log = logs.join(format!("{name}.log"));
    let before = std::fs::metadata(&log).map_or(0, |m| m.len());
    let sup = match openshell_runtime::api::session::spawn_supervisor(opts, &log) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    if let Err(code) = wait_ready(&base, &name, sup, &log, before) {
        // A create that failed leaves nothing behind: its supervisor removed the
        // directory it made (never one that existed: a duplicate name fails before).
        // The log goes too when it held only this attempt and no sandbox has the name.
        if before == 0 && store::find(&base, &name).is_err() {
            let _ = std::fs::remove_file(&log);
        }
        return code;
    }
    // What `sandbox start` needs to bring it back: the options it was created with,
    // without the global ones (`-o json` is how this call prints, not the sandbox).
    let mut saved = saved_raw
        .unwrap_or_else(|| saved_options(std::env::args().skip_while(|a| a != "create").skip(1)));
    // Providers attached by themselves (the agent's) are named, so `start` (which
    // runs no command) attaches the same ones, with their values of that day.
    for p in &providers {
        if !explicit.contains(p) {
            saved.extend(["--provider".to_string(), p.clone()]);
        }
    }
    if !saved.iter().any(|a| a == "--no-auto-providers") {
        saved.push("--no-auto-providers".into());
    }
    if let Ok(e) = store::find(&base, &name) {
        let _ = openshell_runtime::api::record::write_atomic(
            &e.dir.join(ARGS_FILE),
            serde_json::to_string(&saved).unwrap_or_default().as_bytes(),
        );
    }
    super::sandbox::remember(&name);
    if let Some(ed) = editor {
        if generated {
            eprintln!("openshell: created sandbox {name}");
        }
        return super::ssh_config::open(&name, ed);
    }
    if detach && !command.is_empty() {
        // In the background, on a pty one can attach to; its output in the log.
        if let Err(e) = super::session::start(&name, &command, no_keep) {
            return fail(format!(
                "sandbox {name} is Ready, but its command did not start: {e}"
            ));
        }
    }
    if detach {
        match format {
            Format::Json => println!("{}", serde_json::json!({ "name": name })),
            Format::Yaml => println!("name: {name}"),
            Format::Table => println!("{name}"),
        }
        return 0;
    }
    if generated {
        // The name it got, before its command takes the terminal.
        eprintln!("openshell: created sandbox {name}");
    }
    let tty = match tty_flag {
        (true, _) => true,
        (_, true) => false,
        _ => {
            nix::unistd::isatty(std::io::stdin()).unwrap_or(false)
                && nix::unistd::isatty(std::io::stdout()).unwrap_or(false)
        }
    };
    let argv = if command.is_empty() {
        super::sandbox::LOGIN_SHELL
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        command
    };
    if tty {
        // On a terminal: on the session keeper's pty, so that Ctrl-P Ctrl-Q detaches
        // and `sandbox connect` attaches again.
        if let Err(e) = super::session::start(&name, &argv, no_keep) {
            return fail(format!("sandbox {name}: {e}"));
        }
        return match super::attach::attach(&store_dir(&base, &name)) {
            Ok(super::attach::Attached::Exited(code)) => code,
            Ok(super::attach::Attached::Detached) => {
                detached(&name);
                0
            }
            Err(e) => fail(format!("attach to {name}: {e}")),
        };
    }
    let code = run_in(&base, &name, argv, tty);
    if no_keep && let Err(e) = store::delete(&base, &name) {
        eprintln!("openshell: {e}");
    }
    code
}

fn store_dir(base: &std::path::Path, name: &str) -> std::path::PathBuf {
    store::find(base, name).map_or_else(|_| base.join(name), |e| e.dir)
}

/// Said after Ctrl-P Ctrl-Q.
pub fn detached(name: &str) {
    eprintln!(
        "\r\nopenshell: detached from {name}; it keeps running ('openshell sandbox connect {name}' attaches again)"
    );
}

/// Run `argv` in the sandbox (from a child process: this one keeps the host's view).
fn run_in(base: &std::path::Path, name: &str, argv: Vec<String>, tty: bool) -> i32 {
    let entry = match store::find(base, name) {
        Ok(e) => e,
        Err(e) => return fail(e),
    };
    let Ok(rec) = entry.record.clone() else {
        return fail(format!("sandbox {name}: unreadable record"));
    };
    let req = ExecRequest {
        argv,
        tty,
        ..ExecRequest::default()
    };
    openshell_runtime::api::session::exec_in_child(&entry.dir, &rec, &req)
}
