//! The HTTP side of `openshell serve` (docs/api.md): routing, hostile-input checks and
//! how a finished command becomes an answer. Every endpoint maps to one CLI command
//! line built here from checked parts: names from the path must be valid sandbox or
//! provider names (so `/v1/sandboxes/--all` is a 404, never `sandbox delete --all`),
//! create options may not ask for help or a command, and the bodies are bounded in
//! size and time.
//!
//! Handlers return `Result<_, Answer>`: the error *is* the HTTP answer (built once per
//! request, moved out once), so its size does not matter.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use openshell_runtime::api::state;
use serde::Deserialize;

use super::serve::{Finished, MAX_OUTPUT, cli};

/// Largest request body accepted (a policy, create options).
const MAX_BODY: usize = 1 << 20;
/// How long a client may take to send its body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// A response body: whole, or streamed (`logs` following).
pub type Body = BoxBody<Bytes, std::io::Error>;
/// A response.
pub type Answer = Response<Body>;

fn json(status: StatusCode, body: impl Into<Bytes>) -> Answer {
    let mut r = Response::new(Full::new(body.into()).map_err(|n| match n {}).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("static"));
    r
}

/// A JSON error answer: `{"error": MSG, "status": N}`.
pub fn error(status: StatusCode, msg: &str) -> Answer {
    let body = serde_json::json!({ "error": msg, "status": status.as_u16() });
    json(status, body.to_string())
}

const JSON: &str = "application/json";

/// The answer for a finished command: its stdout on success, else its message with a
/// status that says whose fault it was (a command killed by a signal or failing
/// inside is the server's: 500).
fn answer(out: std::io::Result<Finished>, content_type: &str) -> Answer {
    let out = match out {
        Ok(o) => o,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    if out.stdout.len() > MAX_OUTPUT {
        return error(
            StatusCode::INSUFFICIENT_STORAGE,
            "output too large for one answer (limit 64 MiB)",
        );
    }
    if out.success {
        let mut r = json(StatusCode::OK, out.stdout);
        r.headers_mut()
            .insert("content-type", content_type.parse().expect("static"));
        return r;
    }
    let msg = out.stderr.trim().trim_start_matches("openshell: ");
    let status = if out.code.is_none() || msg.contains("internal error") {
        StatusCode::INTERNAL_SERVER_ERROR
    } else if msg.contains("no sandbox named") || msg.contains("not found") {
        StatusCode::NOT_FOUND
    } else if msg.contains("already") {
        StatusCode::CONFLICT
    } else {
        StatusCode::BAD_REQUEST
    };
    error(status, msg)
}

/// A sandbox name from the path, or the 404 to answer.
fn sandbox_name(name: &str) -> Result<&str, Answer> {
    match state::check_name(name) {
        Ok(()) => Ok(name),
        Err(_) => Err(error(
            StatusCode::NOT_FOUND,
            &format!("no sandbox named {name:?} (names are [a-z0-9-], not starting with '-')"),
        )),
    }
}

/// A provider name from the path, or the 404 to answer.
fn provider_name(name: &str) -> Result<&str, Answer> {
    if openshell_providers::store::name_ok(name) {
        Ok(name)
    } else {
        Err(error(
            StatusCode::NOT_FOUND,
            &format!("no provider named {name:?}"),
        ))
    }
}

/// The sandbox exists (its state directory), or the 404 to answer.
fn exists(name: &str) -> Result<(), Answer> {
    match openshell_runtime::api::store::find(&state::base_dir(), name) {
        Ok(_) => Ok(()),
        Err(e) => Err(error(StatusCode::NOT_FOUND, &e.to_string())),
    }
}

/// `POST /v1/sandboxes`: what `sandbox create` takes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: Option<String>,
    from: Option<String>,
    /// Path of a policy file on this host.
    policy: Option<String>,
    restart: Option<String>,
    #[serde(default)]
    providers: Vec<String>,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    /// Further `sandbox create` options, as on the command line.
    #[serde(default)]
    args: Vec<String>,
}

/// `POST /v1/sandboxes/NAME/exec` and `/v1/cli`: a command line to run, with stdio
/// over the upgraded connection.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CliBody {
    args: Vec<String>,
}

async fn body(req: Request<Incoming>) -> Result<Bytes, Answer> {
    let collect = Limited::new(req.into_body(), MAX_BODY).collect();
    match tokio::time::timeout(BODY_TIMEOUT, collect).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(_)) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large (limit 1 MiB)",
        )),
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "request body not received within 30 s",
        )),
    }
}

/// Whether the client asked for the stdio protocol (`Upgrade: openshell-stdio`).
fn wants_upgrade(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(super::remote::PROTOCOL))
}

/// Route one request.
pub async fn handle(req: Request<Incoming>) -> Result<Answer, Infallible> {
    Ok(route(req).await.unwrap_or_else(|a| a))
}

async fn route(mut req: Request<Incoming>) -> Result<Answer, Answer> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    Ok(match (method, parts.as_slice()) {
        (Method::GET, ["v1", "version"]) => answer(cli(&["--version"]).await, "text/plain"),
        (Method::GET, ["v1", "status"]) => answer(cli(&["status", "-o", "json"]).await, JSON),
        (Method::GET, ["v1", "sandboxes"]) => {
            answer(cli(&["sandbox", "list", "-o", "json"]).await, JSON)
        }
        (Method::POST, ["v1", "sandboxes"]) => create(&body(req).await?).await,
        (Method::GET, ["v1", "sandboxes", name]) => {
            let name = sandbox_name(name)?;
            answer(cli(&["sandbox", "get", name, "-o", "json"]).await, JSON)
        }
        (Method::DELETE, ["v1", "sandboxes", name]) => {
            let name = sandbox_name(name)?;
            answer(cli(&["sandbox", "delete", name]).await, "text/plain")
        }
        (Method::POST, ["v1", "sandboxes", name, verb @ ("start" | "stop")]) => {
            let name = sandbox_name(name)?;
            answer(cli(&["sandbox", verb, name]).await, "text/plain")
        }
        (Method::GET, ["v1", "sandboxes", name, "policy"]) => {
            let name = sandbox_name(name)?;
            answer(
                cli(&["policy", "get", name, "--full"]).await,
                "application/yaml",
            )
        }
        (Method::PUT, ["v1", "sandboxes", name, "policy"]) => {
            let name = sandbox_name(name)?.to_string();
            set_policy(&name, &body(req).await?).await
        }
        (Method::GET, ["v1", "sandboxes", name, "logs"]) => {
            let name = sandbox_name(name)?;
            exists(name)?;
            logs(name, &query).await?
        }
        (Method::GET, ["v1", "providers"]) => {
            answer(cli(&["provider", "list", "-o", "json"]).await, JSON)
        }
        (Method::GET, ["v1", "providers", name]) => {
            let name = provider_name(name)?;
            answer(cli(&["provider", "get", name, "-o", "json"]).await, JSON)
        }
        (Method::POST, ["v1", "sandboxes", name, "exec"]) => {
            let name = sandbox_name(name)?.to_string();
            if !wants_upgrade(&req) {
                return Err(upgrade_required());
            }
            let upgrade = hyper::upgrade::on(&mut req);
            let c: CliBody = parse(&body(req).await?)?;
            let mut args = vec!["sandbox".into(), "exec".into(), name, "--".into()];
            args.extend(c.args);
            super::remote::serve_upgraded(upgrade, args)
        }
        (Method::POST, ["v1", "cli"]) => {
            if !wants_upgrade(&req) {
                return Err(upgrade_required());
            }
            let upgrade = hyper::upgrade::on(&mut req);
            let c: CliBody = parse(&body(req).await?)?;
            if c.args
                .iter()
                .take_while(|a| *a != "--")
                .any(|a| a == "serve")
            {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    "`serve` cannot be run through the API",
                ));
            }
            super::remote::serve_upgraded(upgrade, c.args)
        }
        (_, ["v1", ..]) => error(
            StatusCode::NOT_FOUND,
            &format!(
                "no such endpoint: {} {path} (see docs/api.md)",
                req.method()
            ),
        ),
        _ => error(StatusCode::NOT_FOUND, "the API lives under /v1/"),
    })
}

fn upgrade_required() -> Answer {
    let mut r = error(
        StatusCode::UPGRADE_REQUIRED,
        "this endpoint speaks the stdio protocol: send Connection: Upgrade, Upgrade: openshell-stdio (docs/api.md)",
    );
    r.headers_mut().insert(
        hyper::header::UPGRADE,
        super::remote::PROTOCOL.parse().expect("static"),
    );
    r
}

fn parse<'a, T: Deserialize<'a>>(b: &'a [u8]) -> Result<T, Answer> {
    serde_json::from_slice(b).map_err(|e| error(StatusCode::BAD_REQUEST, &format!("body: {e}")))
}

async fn create(b: &[u8]) -> Answer {
    let c: CreateBody = if b.is_empty() {
        CreateBody::default()
    } else {
        match parse(b) {
            Ok(c) => c,
            Err(a) => return a,
        }
    };
    let name = c.name.unwrap_or_else(state::generate_name);
    if let Err(e) = state::check_name(&name) {
        return error(StatusCode::BAD_REQUEST, &e.to_string());
    }
    let mut args: Vec<String> = vec![
        "sandbox".into(),
        "create".into(),
        "--detach".into(),
        "--name".into(),
        name.clone(),
    ];
    for (flag, v) in [
        ("--from", c.from),
        ("--policy", c.policy),
        ("--restart", c.restart),
    ] {
        if let Some(v) = v {
            args.extend([flag.to_string(), v]);
        }
    }
    for p in c.providers {
        args.extend(["--provider".to_string(), p]);
    }
    for (k, v) in c.labels {
        args.extend(["--label".to_string(), format!("{k}={v}")]);
    }
    for a in &c.args {
        let refused = match a.as_str() {
            "--" => Some("no command here (`--`); run one with POST /v1/sandboxes/NAME/exec"),
            "-h" | "--help" | "-V" | "--version" => {
                Some("help and version are not options of a sandbox")
            }
            "--host" => Some("--host cannot be used through the API"),
            s if s.starts_with("--host=") => Some("--host cannot be used through the API"),
            _ => None,
        };
        if let Some(why) = refused {
            return error(StatusCode::BAD_REQUEST, &format!("args: {why}"));
        }
    }
    args.extend(c.args);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    match cli(&refs).await {
        Ok(o) if o.success => {
            // What the command did is checked, not assumed.
            if exists(&name).is_err() {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("sandbox create reported success but {name} does not exist"),
                );
            }
            json(
                StatusCode::CREATED,
                serde_json::json!({ "name": name }).to_string(),
            )
        }
        other => answer(other, JSON),
    }
}

async fn set_policy(name: &str, b: &[u8]) -> Answer {
    // A private file of this request alone for the CLI to read (the policy may name
    // internal hosts; two requests at once must not read each other's).
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = state::base_dir().join("tmp");
    if let Err(e) = openshell_providers::store::private_dir(&dir) {
        return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
    }
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let file = dir.join(format!("policy-{}-{n}-{name}.yaml", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&file)
        .and_then(|mut f| f.write_all(b));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&file);
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("{}: {e}", file.display()),
        );
    }
    let f = file.to_string_lossy().into_owned();
    let out = cli(&["policy", "set", name, "--policy", &f]).await;
    let _ = std::fs::remove_file(&file);
    answer(out, "text/plain")
}

/// `GET /v1/sandboxes/NAME/logs[?follow=1][&n=N]`: JSON lines, streamed while
/// following (chunked, until the client goes or the sandbox is deleted).
async fn logs(name: &str, query: &str) -> Result<Answer, Answer> {
    let mut args: Vec<String> = vec!["logs".into(), name.into(), "-o".into(), "json".into()];
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        match kv.split_once('=').unwrap_or((kv, "")) {
            ("follow", "1" | "true" | "") => args.push("-f".into()),
            ("n", v) if v.parse::<u32>().is_ok() => args.extend(["-n".into(), v.into()]),
            (k, _) => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    &format!("unknown parameter {k} (follow, n)"),
                ));
            }
        }
    }
    if !args.iter().any(|a| a == "-f") {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        return Ok(answer(cli(&refs).await, "application/x-ndjson"));
    }
    Ok(super::remote::stream_follow(args).await)
}
