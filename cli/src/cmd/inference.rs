//! `openshell inference set|get|delete`: the route `inference.local` forwards to, for
//! every sandbox (default) or one (`--sandbox NAME`). Running sandboxes get a change at
//! once over their control socket; new ones when they start.

use std::time::Duration;

use clap::Subcommand;
use openshell_providers::routes::{self, RouteConfig};
use openshell_runtime::api::EXIT_SETUP;

use crate::output::{Format, structured};

/// `openshell inference ...`
#[derive(Debug, Subcommand)]
pub enum InferenceCommand {
    /// Route inference.local to a provider's backend and model.
    Set {
        /// The provider (anthropic, openai, nvidia, claude-code or codex type).
        #[arg(long)]
        provider: String,
        /// The model every call gets.
        #[arg(long)]
        model: String,
        /// Only for this sandbox (default: every sandbox without a route of its own).
        #[arg(long)]
        sandbox: Option<String>,
        /// Seconds a call may wait for the backend's answer (default 60).
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// Do not check that the backend answers.
        #[arg(long)]
        no_verify: bool,
    },
    /// Show the routes.
    Get {
        #[arg(long)]
        sandbox: Option<String>,
    },
    /// Remove a route (the default, or a sandbox's).
    #[command(alias = "rm")]
    Delete {
        #[arg(long)]
        sandbox: Option<String>,
    },
}

fn fail(e: impl std::fmt::Display) -> i32 {
    eprintln!("openshell: {e}");
    EXIT_SETUP
}

/// Check the backend accepts connections (a TCP connect within 5 s).
fn verify(base: &str) -> Result<(), String> {
    use std::net::ToSocketAddrs;
    let (_, host, port, _) = openshell_proxy::inference::url_parts(base)?;
    let addrs: Vec<_> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("{host}: {e}"))?
        .collect();
    for a in &addrs {
        if std::net::TcpStream::connect_timeout(a, Duration::from_secs(5)).is_ok() {
            return Ok(());
        }
    }
    Err(format!(
        "the backend {base} does not answer on {host}:{port}; start it, or pass --no-verify"
    ))
}

/// Push the route each affected running sandbox should now have.
fn push(only: Option<&str>) {
    let r = match routes::load() {
        Ok(r) => r,
        Err(e) => return eprintln!("openshell: {e}"),
    };
    let base = openshell_runtime::api::state::base_dir();
    for e in openshell_runtime::api::store::list(&base) {
        if only.is_some_and(|n| n != e.name)
            || (only.is_none() && r.sandboxes.contains_key(&e.name))
        {
            continue;
        }
        let sock = e.dir.join("control.sock");
        if !sock.exists() {
            continue;
        }
        let route = match r
            .sandboxes
            .get(&e.name)
            .or(r.default.as_ref())
            .map(routes::resolve)
        {
            Some(Ok(route)) => Some(route),
            Some(Err(err)) => {
                eprintln!("openshell: sandbox {}: {err}", e.name);
                continue;
            }
            None => None,
        };
        let body = serde_json::json!({ "route": route }).to_string();
        match openshell_runtime::api::control::request(
            &sock,
            "PUT",
            "/v1/inference",
            Some(&body),
            Duration::from_secs(5),
        ) {
            Ok((200, _)) => eprintln!("openshell: sandbox {}: inference route updated", e.name),
            Ok((code, v)) => eprintln!(
                "openshell: sandbox {}: supervisor answered {code}: {v}",
                e.name
            ),
            Err(err) => eprintln!("openshell: sandbox {}: {err}", e.name),
        }
    }
}

/// Run an `inference` command.
pub fn run(cmd: InferenceCommand, format: Format) -> i32 {
    match cmd {
        InferenceCommand::Set {
            provider,
            model,
            sandbox,
            timeout,
            no_verify,
        } => {
            if model.trim().is_empty() || model.contains(['\n', '\r', '\0']) {
                return fail("--model: give a model name");
            }
            if !(1..=3600).contains(&timeout) {
                return fail("--timeout: seconds, 1 to 3600");
            }
            let cfg = RouteConfig {
                provider,
                model,
                timeout_secs: timeout,
            };
            let route = match routes::resolve(&cfg) {
                Ok(r) => r,
                Err(e) => return fail(e),
            };
            if !no_verify && let Err(e) = verify(&route.base_url) {
                return fail(e);
            }
            let mut all = match routes::load() {
                Ok(r) => r,
                Err(e) => return fail(e),
            };
            match &sandbox {
                Some(n) => {
                    all.sandboxes.insert(n.clone(), cfg);
                }
                None => all.default = Some(cfg),
            }
            if let Err(e) = routes::save(&all) {
                return fail(e);
            }
            println!(
                "inference.local -> {} ({}, {}) model {}{}",
                route.provider,
                route.api,
                route.base_url,
                route.model,
                sandbox
                    .as_ref()
                    .map_or(String::new(), |n| format!(" for sandbox {n}"))
            );
            push(sandbox.as_deref());
            0
        }
        InferenceCommand::Get { sandbox } => {
            let all = match routes::load() {
                Ok(r) => r,
                Err(e) => return fail(e),
            };
            let shown = match &sandbox {
                Some(n) => {
                    serde_json::json!({ "sandbox": n, "route": all.sandboxes.get(n).or(all.default.as_ref()) })
                }
                None => serde_json::to_value(&all).unwrap_or_default(),
            };
            if !structured(format, &shown) {
                let line = |who: &str, c: &RouteConfig| {
                    println!(
                        "{who}: provider {} model {} timeout {} s",
                        c.provider, c.model, c.timeout_secs
                    );
                };
                match &sandbox {
                    Some(n) => match all.sandboxes.get(n).or(all.default.as_ref()) {
                        Some(c) => line(n, c),
                        None => println!("{n}: no route (inference.local answers 503)"),
                    },
                    None => {
                        match &all.default {
                            Some(c) => line("default", c),
                            None => println!("default: no route"),
                        }
                        for (n, c) in &all.sandboxes {
                            line(n, c);
                        }
                    }
                }
            }
            0
        }
        InferenceCommand::Delete { sandbox } => {
            let mut all = match routes::load() {
                Ok(r) => r,
                Err(e) => return fail(e),
            };
            let had = match &sandbox {
                Some(n) => all.sandboxes.remove(n).is_some(),
                None => all.default.take().is_some(),
            };
            if !had {
                return fail("no such route; see 'openshell inference get'");
            }
            if let Err(e) = routes::save(&all) {
                return fail(e);
            }
            println!(
                "removed the route{}",
                sandbox
                    .as_ref()
                    .map_or(String::new(), |n| format!(" of sandbox {n}"))
            );
            push(sandbox.as_deref());
            0
        }
    }
}
