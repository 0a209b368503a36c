//! `openshell forward start|stop|list`: host ports relayed to a running sandbox's
//! loopback (docs/network.md, "Port forwarding"). The supervisor owns the listeners
//! (`runtime::forward`), so a forward lives as long as the sandbox; without `-d` this
//! command stays in the foreground and removes the forward when interrupted.

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use openshell_runtime::api::control;
use openshell_runtime::api::forward::Spec;
use openshell_runtime::api::record::Phase;
use openshell_runtime::api::store::Entry;
use openshell_runtime::api::{state, store};
use serde::Serialize;

use crate::output::{self, Format, fail};

/// `openshell forward ...`
#[derive(Debug, Subcommand)]
pub enum ForwardCommand {
    /// Forward [ADDR:]PORT on this host (default 127.0.0.1) to PORT on the sandbox's
    /// loopback; -d returns at once (the forward stays until `forward stop` or the
    /// sandbox stops), else Ctrl-C ends it.
    Start {
        /// [ADDR:]PORT.
        spec: String,
        /// The sandbox.
        #[arg(add = clap_complete::ArgValueCandidates::new(crate::complete::sandboxes))]
        name: String,
        /// Leave it running and return.
        #[arg(short, long)]
        detach: bool,
    },
    /// Stop forwarding PORT to the sandbox.
    Stop {
        /// The port.
        port: u16,
        /// The sandbox.
        #[arg(add = clap_complete::ArgValueCandidates::new(crate::complete::sandboxes))]
        name: String,
    },
    /// Every forward of every running sandbox: SANDBOX BIND PORT PID STATUS.
    #[command(alias = "ls")]
    List,
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// The control socket of a running sandbox with a network.
fn socket(e: &Entry) -> Result<PathBuf, String> {
    let phase = e.phase().0;
    if phase != Phase::Ready {
        return Err(format!(
            "sandbox {} is not running ({phase}): only a running sandbox can be forwarded to",
            e.name
        ));
    }
    let sock = e.dir.join("control.sock");
    if !sock.exists() {
        return Err(format!(
            "sandbox {} runs with --network none: forwarding needs its network (--network proxy)",
            e.name
        ));
    }
    Ok(sock)
}

fn reply_error(v: &serde_json::Value) -> String {
    v["detail"]
        .as_str()
        .or_else(|| v["error"].as_str())
        .unwrap_or("refused")
        .to_string()
}

#[derive(Serialize)]
struct Row {
    sandbox: String,
    bind: String,
    port: u16,
    pid: i32,
    status: &'static str,
}

/// Run a `forward` subcommand; returns the exit status.
pub fn run(cmd: ForwardCommand, format: Format) -> i32 {
    let base = state::base_dir();
    match cmd {
        ForwardCommand::Start { spec, name, detach } => {
            let spec = match Spec::parse(&spec) {
                Ok(s) => s,
                Err(e) => return fail(e.trim_start_matches("--forward ")),
            };
            let sock = match store::find(&base, &name)
                .map_err(|e| e.to_string())
                .and_then(|e| socket(&e))
            {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            let body = serde_json::to_string(&spec).unwrap_or_default();
            match control::request(&sock, "PUT", "/v1/forwards", Some(&body), TIMEOUT) {
                Ok((200, _)) => {}
                Ok((_, v)) => {
                    return fail(format!(
                        "forward {}:{}: {}",
                        spec.bind,
                        spec.port,
                        reply_error(&v)
                    ));
                }
                Err(e) => return fail(e),
            }
            println!(
                "forwarding {}:{} -> {name}:{}",
                spec.bind, spec.port, spec.port
            );
            if detach {
                return 0;
            }
            wait_then_stop(&sock, &name, spec.port)
        }
        ForwardCommand::Stop { port, name } => {
            let sock = match store::find(&base, &name)
                .map_err(|e| e.to_string())
                .and_then(|e| socket(&e))
            {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            match control::request(
                &sock,
                "DELETE",
                &format!("/v1/forwards/{port}"),
                None,
                TIMEOUT,
            ) {
                Ok((200, _)) => {
                    println!("stopped forwarding {port} to {name}");
                    0
                }
                Ok((404, _)) => fail(format!("port {port} is not forwarded to {name}")),
                Ok((_, v)) => fail(reply_error(&v)),
                Err(e) => fail(e),
            }
        }
        ForwardCommand::List => {
            let mut rows = Vec::new();
            for e in store::list(&base) {
                let Ok(sock) = socket(&e) else { continue };
                let pid = e
                    .record
                    .as_ref()
                    .ok()
                    .and_then(|r| r.supervisor)
                    .map_or(0, |s| s.pid);
                let Ok((200, v)) = control::request(&sock, "GET", "/v1/forwards", None, TIMEOUT)
                else {
                    continue;
                };
                let specs: Vec<Spec> = serde_json::from_value(v).unwrap_or_default();
                for s in specs {
                    rows.push(Row {
                        sandbox: e.name.clone(),
                        bind: s.bind.to_string(),
                        port: s.port,
                        pid,
                        status: "running",
                    });
                }
            }
            if !output::structured(format, &rows) {
                let cells: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        vec![
                            r.sandbox.clone(),
                            r.bind.clone(),
                            r.port.to_string(),
                            r.pid.to_string(),
                            r.status.to_string(),
                        ]
                    })
                    .collect();
                output::table(&["SANDBOX", "BIND", "PORT", "PID", "STATUS"], &cells);
            }
            0
        }
    }
}

/// In the foreground: until SIGINT/SIGTERM/SIGHUP (then remove the forward) or the
/// sandbox stops (then it is gone already).
fn wait_then_stop(sock: &std::path::Path, name: &str, port: u16) -> i32 {
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    let fd = match set
        .thread_block()
        .and_then(|()| SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC))
    {
        Ok(fd) => fd,
        Err(e) => return fail(format!("cannot wait for signals: {e}")),
    };
    loop {
        let mut fds = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(&fd),
            nix::poll::PollFlags::POLLIN,
        )];
        // Once a second: a signal ends the wait; so does the sandbox's end.
        if let Ok(n) = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(1000u16))
            && n > 0
        {
            let _ = control::request(
                sock,
                "DELETE",
                &format!("/v1/forwards/{port}"),
                None,
                TIMEOUT,
            );
            println!("stopped forwarding {port} to {name}");
            return 0;
        }
        if !sock.exists() {
            println!("sandbox {name} stopped: the forward ended with it");
            return 0;
        }
    }
}
