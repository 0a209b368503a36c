//! Processes `sandbox create` starts: a detached supervisor, and `exec` from a child.
//!
//! A detached supervisor is forked while the CLI is still single-threaded, leaves the
//! CLI's session and terminal (new session, stdin from /dev/null, output to a log file)
//! and runs the sandbox like `openshell run` does. `exec` joins the sandbox's
//! namespaces in the calling process, so `sandbox create` runs it in a child to keep
//! the host's view for what comes after (waiting, `--no-keep`'s delete).

use std::path::Path;

use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

use crate::exec::{ExecRequest, exec};
use crate::record::Record;
use crate::run::{RunOptions, run};
use crate::spawn::EXIT_SETUP;

/// Fork a supervisor running `opts` in a session of its own, its output in `log`.
/// Returns its pid.
pub fn spawn_supervisor(opts: RunOptions, log: &Path) -> Result<Pid, String> {
    // Appended to, never truncated: a create refused as a duplicate must not wipe the
    // log of the sandbox already running under that name.
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("open {}: {e}", log.display()))?;
    let null = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
    crate::threads::check("sandbox create: fork of the supervisor")?;
    // SAFETY: the caller is single-threaded (no thread has been started; image pulls
    // run in child processes; checked above), so the child gets a consistent copy of
    // memory.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            let _ = nix::unistd::setsid();
            let _ = nix::unistd::dup2_stdin(&null);
            let _ = nix::unistd::dup2_stdout(&out);
            let _ = nix::unistd::dup2_stderr(&out);
            drop((out, null));
            // The CLI's argv (maybe `-e SECRET=...`) must not stay visible in `ps`.
            crate::proctitle::set(&format!(
                "openshell: supervisor {}",
                opts.name.as_deref().unwrap_or("")
            ));
            let code = match run(opts) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("openshell: {e}");
                    EXIT_SETUP
                }
            };
            std::process::exit(code);
        }
        ForkResult::Parent { child } => Ok(child),
    }
}

/// `exec` from a child process; returns its exit status.
pub fn exec_in_child(dir: &Path, rec: &Record, req: &ExecRequest) -> i32 {
    if let Err(e) = crate::threads::check("sandbox create: fork for exec") {
        eprintln!("openshell: {e}");
        return EXIT_SETUP;
    }
    // SAFETY: the caller is single-threaded, as above (checked).
    match unsafe { fork() } {
        Err(e) => {
            eprintln!("openshell: fork: {e}");
            EXIT_SETUP
        }
        Ok(ForkResult::Child) => {
            let code = match exec(dir, rec, req) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("openshell: {e}");
                    EXIT_SETUP
                }
            };
            std::process::exit(code);
        }
        Ok(ForkResult::Parent { child }) => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, c)) => break c,
                Ok(WaitStatus::Signaled(_, s, _)) => break 128 + s as i32,
                Err(nix::errno::Errno::EINTR) | Ok(_) => {}
                Err(_) => break EXIT_SETUP,
            }
        },
    }
}
