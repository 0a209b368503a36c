//! `openshell provider create|list|get|update|delete|list-profiles`, and how `run` /
//! `sandbox create` attach providers (`--provider`, `--auto-providers`).
//!
//! Values never reach the screen: `list`/`get` print key names and fingerprints. A
//! value is read from the environment (`--credential KEY`, `--from-existing`); one
//! given inline (`KEY=VALUE`) works but is warned about (it is in `ps` and the shell's
//! history for as long as this command runs).

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use openshell_policy::Policy;
use openshell_providers::profile::{self, Profile};
use openshell_providers::store::{self, Provider};
use openshell_providers::{ProviderError, attach};
use openshell_runtime::api::EXIT_SETUP;

use crate::output::{Format, structured, structured_times, table};

/// `openshell provider ...`
#[derive(Debug, Subcommand)]
pub enum ProviderCommand {
    /// Store a provider: credentials of a type, kept on the host.
    Create(Box<CreateArgs>),
    /// List providers (key names and fingerprints, never values).
    #[command(alias = "ls")]
    List,
    /// Show one provider (key names and fingerprints, never values).
    Get {
        #[arg(add = clap_complete::ArgValueCandidates::new(crate::complete::providers))]
        name: String,
    },
    /// Change a provider's credentials or settings; running sandboxes using it get the
    /// new values at once.
    Update(Box<UpdateArgs>),
    /// Delete providers (sandboxes using one can no longer resolve its placeholders).
    #[command(alias = "rm")]
    Delete {
        #[arg(required = true)]
        #[arg(add = clap_complete::ArgValueCandidates::new(crate::complete::providers))]
        names: Vec<String>,
    },
    /// The provider types: built-in profiles and yours.
    ListProfiles,
}

/// `provider create`
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Provider name.
    #[arg(long)]
    name: String,
    /// Type (claude-code, codex, opencode, copilot, github, gitlab, anthropic, openai,
    /// nvidia, generic, or one of your profiles).
    #[arg(long = "type")]
    kind: String,
    #[command(flatten)]
    values: ValueArgs,
}

/// `provider update`
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Provider name.
    #[arg(add = clap_complete::ArgValueCandidates::new(crate::complete::providers))]
    name: String,
    #[command(flatten)]
    values: ValueArgs,
}

#[derive(Debug, Args)]
struct ValueArgs {
    /// Take every variable the type's profile knows from this environment (and its
    /// base-URL variable as base_url).
    #[arg(long)]
    from_existing: bool,
    /// KEY (value read from this environment) or KEY=VALUE. Repeatable.
    #[arg(long = "credential", value_name = "KEY[=VALUE]")]
    credentials: Vec<String>,
    /// Setting K=V: base_url=URL, allow_uninspected_credentials=true,
    /// bind_binaries=true (only the profile's programs themselves may send them),
    /// inject_headers=a,b (headers a credential may be placed in; default
    /// authorization, x-api-key, api-key), inject_query=p,q (query parameters whose
    /// whole value may be one), inject_path=true (path segments may hold one).
    /// Repeatable.
    #[arg(long = "config", value_name = "K=V")]
    config: Vec<String>,
}

fn fail(e: impl std::fmt::Display) -> i32 {
    eprintln!("openshell: {e}");
    EXIT_SETUP
}

fn profiles() -> Result<BTreeMap<String, Profile>, ProviderError> {
    profile::all()
}

fn find_profile<'a>(
    all: &'a BTreeMap<String, Profile>,
    kind: &str,
) -> Result<&'a Profile, ProviderError> {
    profile::find(all, kind).ok_or_else(|| {
        ProviderError::Invalid(format!(
            "unknown provider type {kind:?}; known: {} (see 'openshell provider list-profiles')",
            all.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })
}

const CONFIG_KEYS: [&str; 6] = [
    "base_url",
    "allow_uninspected_credentials",
    "bind_binaries",
    "inject_headers",
    "inject_query",
    "inject_path",
];

/// Fold `values` into `p`.
fn apply(p: &mut Provider, prof: &Profile, v: &ValueArgs) -> Result<(), ProviderError> {
    let env = |k: &str| std::env::var(k).ok();
    if v.from_existing {
        let (creds, config) = store::discover(prof, &env);
        if creds.is_empty() && config.is_empty() {
            return Err(ProviderError::Invalid(format!(
                "--from-existing: none of {} is set in this environment",
                prof.credentials
                    .iter()
                    .chain(prof.base_url_env.iter())
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        p.credentials.extend(creds);
        p.config.extend(config);
    }
    for c in &v.credentials {
        let (k, val) = match c.split_once('=') {
            Some((k, val)) => {
                eprintln!(
                    "openshell: warning: --credential {k}=...: a value on the command line is visible to other local users while this runs; prefer --credential {k} with {k} in the environment"
                );
                (k.to_string(), val.to_string())
            }
            None => (
                c.clone(),
                env(c).ok_or_else(|| {
                    ProviderError::Invalid(format!(
                        "--credential {c}: {c} is not set in this environment (or give {c}=VALUE)"
                    ))
                })?,
            ),
        };
        if !profile::key_ok(&k) {
            return Err(ProviderError::Invalid(format!(
                "--credential {k}: not a variable name (letters, digits, _)"
            )));
        }
        if val.is_empty() || val.contains(['\r', '\n', '\0']) {
            return Err(ProviderError::Invalid(format!(
                "--credential {k}: the value is empty or holds a line break or NUL"
            )));
        }
        p.credentials.insert(k, val);
    }
    for c in &v.config {
        let Some((k, val)) = c.split_once('=') else {
            return Err(ProviderError::Invalid(format!(
                "--config {c}: expected K=V"
            )));
        };
        if !CONFIG_KEYS.contains(&k) {
            return Err(ProviderError::Invalid(format!(
                "--config {k}: unknown setting; known: {}",
                CONFIG_KEYS.join(", ")
            )));
        }
        if k == "base_url" {
            attach::parse_base_url(val)?;
        } else if k == "inject_headers" || k == "inject_query" {
            let ok = val.split(',').all(|n| {
                let n = n.trim();
                !n.is_empty()
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
            if !ok {
                return Err(ProviderError::Invalid(format!(
                    "--config {k}: comma-separated header or parameter names"
                )));
            }
        } else if !matches!(val, "true" | "false") {
            return Err(ProviderError::Invalid(format!(
                "--config {k}: true or false"
            )));
        }
        p.config.insert(k.into(), val.into());
    }
    if let Some(u) = p.config.get("base_url") {
        attach::parse_base_url(u)?;
    }
    Ok(())
}

fn print_view(p: &Provider, format: Format) {
    let v = p.view();
    if structured_times(format, &v, &["created", "updated"]) {
        return;
    }
    println!("Name:        {}", v.name);
    println!("Type:        {}", v.kind);
    for (k, fp) in &v.credentials {
        println!("Credential:  {k} ({fp})");
    }
    for (k, val) in &v.config {
        println!("Config:      {k}={val}");
    }
    let users = users_of(&p.name);
    if !users.is_empty() {
        println!("Sandboxes:   {}", users.join(", "));
    }
}

/// Running sandboxes whose record lists `provider`.
fn users_of(provider: &str) -> Vec<String> {
    let base = openshell_runtime::api::state::base_dir();
    openshell_runtime::api::store::list(&base)
        .into_iter()
        .filter(|e| {
            e.record
                .as_ref()
                .is_ok_and(|r| r.providers.iter().any(|p| p == provider))
        })
        .map(|e| e.name)
        .collect()
}

/// Hand running sandboxes that use `p` its current credentials (an empty set when it
/// was deleted): placeholders resolve to the new values from the next request on.
fn push(name: &str, creds: &[openshell_proxy::secrets::Credential]) {
    let base = openshell_runtime::api::state::base_dir();
    for e in openshell_runtime::api::store::list(&base) {
        let uses = e
            .record
            .as_ref()
            .is_ok_and(|r| r.providers.iter().any(|p| p == name));
        let sock = e.dir.join("control.sock");
        if !uses || !sock.exists() {
            continue;
        }
        let body = serde_json::json!({"provider": name, "credentials": creds}).to_string();
        match openshell_runtime::api::control::request(
            &sock,
            "PUT",
            "/v1/credentials",
            Some(&body),
            std::time::Duration::from_secs(5),
        ) {
            Ok((200, _)) => eprintln!(
                "openshell: sandbox {}: credentials of {name} updated",
                e.name
            ),
            Ok((code, v)) => eprintln!(
                "openshell: sandbox {}: supervisor answered {code}: {v}",
                e.name
            ),
            Err(err) => eprintln!("openshell: sandbox {}: {err}", e.name),
        }
    }
}

/// The credentials a provider gives (for pushing to running sandboxes).
fn credentials_of(p: &Provider, prof: &Profile) -> Vec<openshell_proxy::secrets::Credential> {
    attach::attach(&[(p.clone(), prof.clone())], &Policy::restrictive_default())
        .map(|a| a.credentials)
        .unwrap_or_default()
}

/// Run a `provider` command.
pub fn run(cmd: ProviderCommand, format: Format) -> i32 {
    match go(cmd, format) {
        Ok(code) => code,
        Err(e) => fail(e),
    }
}

fn go(cmd: ProviderCommand, format: Format) -> Result<i32, ProviderError> {
    let dir = store::dir();
    match cmd {
        ProviderCommand::Create(a) => {
            let all = profiles()?;
            let prof = find_profile(&all, &a.kind)?;
            if !store::name_ok(&a.name) {
                return Err(ProviderError::Invalid(format!(
                    "invalid provider name {:?}: use 1-63 of a-z, 0-9, - and _",
                    a.name
                )));
            }
            let now = store::now();
            let mut p = Provider {
                name: a.name.clone(),
                kind: prof.kind.clone(),
                credentials: BTreeMap::new(),
                config: BTreeMap::new(),
                created: now,
                updated: now,
            };
            apply(&mut p, prof, &a.values)?;
            store::save(&dir, &p, true)?;
            let keys: Vec<&str> = p.credentials.keys().map(String::as_str).collect();
            eprintln!(
                "openshell: created provider {} ({}) with {}",
                p.name,
                p.kind,
                if keys.is_empty() {
                    "no credentials".to_string()
                } else {
                    keys.join(", ")
                }
            );
            print_view(&p, format);
            Ok(0)
        }
        ProviderCommand::List => {
            let all = store::list(&dir)?;
            let views: Vec<_> = all.iter().map(Provider::view).collect();
            if !structured_times(format, &views, &["created", "updated"]) {
                let rows: Vec<Vec<String>> = views
                    .iter()
                    .map(|v| {
                        vec![
                            v.name.clone(),
                            v.kind.clone(),
                            v.credentials
                                .iter()
                                .map(|(k, f)| format!("{k} ({f})"))
                                .collect::<Vec<_>>()
                                .join(", "),
                            v.config.get("base_url").cloned().unwrap_or_default(),
                        ]
                    })
                    .collect();
                table(&["NAME", "TYPE", "CREDENTIALS", "BASE URL"], &rows);
            }
            Ok(0)
        }
        ProviderCommand::Get { name } => {
            print_view(&store::get(&dir, &name)?, format);
            Ok(0)
        }
        ProviderCommand::Update(a) => {
            let mut p = store::get(&dir, &a.name)?;
            let all = profiles()?;
            let prof = find_profile(&all, &p.kind)?.clone();
            apply(&mut p, &prof, &a.values)?;
            p.updated = store::now();
            store::save(&dir, &p, false)?;
            eprintln!("openshell: updated provider {}", p.name);
            push(&p.name, &credentials_of(&p, &prof));
            print_view(&p, format);
            Ok(0)
        }
        ProviderCommand::Delete { names } => {
            let mut code = 0;
            for n in names {
                match store::delete(&dir, &n) {
                    Ok(()) => {
                        println!("deleted provider {n}");
                        push(&n, &[]);
                    }
                    Err(e) => code = fail(e),
                }
            }
            Ok(code)
        }
        ProviderCommand::ListProfiles => {
            let all = profiles()?;
            let list: Vec<&Profile> = all.values().collect();
            if !structured(format, &list) {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|p| {
                        vec![
                            p.kind.clone(),
                            p.credentials.join(", "),
                            p.endpoints
                                .iter()
                                .map(|e| format!("{}:{}", e.host, e.port))
                                .collect::<Vec<_>>()
                                .join(", "),
                            p.description.clone(),
                        ]
                    })
                    .collect();
                table(&["TYPE", "CREDENTIALS", "ENDPOINTS", "DESCRIPTION"], &rows);
            }
            Ok(0)
        }
    }
}

/// `run`/`create` flags for providers.
#[derive(Debug, Args, Clone, Default)]
pub struct ProviderArgs {
    /// Attach a provider (its credentials as placeholders, its network rules).
    /// Repeatable.
    #[arg(add = clap_complete::ArgValueCandidates::new(crate::complete::providers))]
    #[arg(long = "provider", value_name = "NAME")]
    pub providers: Vec<String>,
    /// Attach the provider of a known agent command (claude, codex, opencode,
    /// copilot), creating it from this environment the first time (the default for
    /// those commands).
    #[arg(long, conflicts_with = "no_auto_providers")]
    pub auto_providers: bool,
    /// Attach no provider by itself.
    #[arg(long)]
    pub no_auto_providers: bool,
}

/// What `run` gets from its providers.
pub struct Attachment {
    pub names: Vec<String>,
    pub env: Vec<(String, String)>,
    pub credentials: Vec<openshell_proxy::secrets::Credential>,
    pub policy: Option<Policy>,
}

/// Resolve `--provider`s and the auto-provider of `command`, and merge their entries
/// into `base` (the policy the sandbox would have without them).
pub fn resolve(
    args: &ProviderArgs,
    command: &[String],
    base: Policy,
) -> Result<Attachment, String> {
    let none = || Attachment {
        names: vec![],
        env: vec![],
        credentials: vec![],
        policy: None,
    };
    // Most runs attach nothing: no profile is even read then.
    let agent_like =
        !args.no_auto_providers && command.first().is_some_and(|c| profile::maybe_agent(c));
    if args.providers.is_empty() && !agent_like {
        return Ok(none());
    }
    let dir = store::dir();
    let all = profiles().map_err(|e| e.to_string())?;
    let mut chosen: Vec<(Provider, Profile)> = Vec::new();
    for n in &args.providers {
        let p = store::get(&dir, n).map_err(|e| e.to_string())?;
        let prof = find_profile(&all, &p.kind)
            .map_err(|e| e.to_string())?
            .clone();
        chosen.push((p, prof));
    }
    let agent = command.first().and_then(|c| profile::for_command(&all, c));
    if let Some(prof) = agent
        && !args.no_auto_providers
        && !chosen.iter().any(|(p, _)| p.kind == prof.kind)
    {
        let existing = store::list(&dir)
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|p| p.kind == prof.kind);
        match existing {
            Some(p) => chosen.push((p, prof.clone())),
            None => {
                let env = |k: &str| std::env::var(k).ok();
                let (creds, config) = store::discover(prof, &env);
                if let Some(u) = config.get("base_url") {
                    attach::parse_base_url(u).map_err(|e| format!("{e} (from the environment)"))?;
                }
                if creds.is_empty() {
                    eprintln!(
                        "openshell: note: no {} credentials in this environment ({}): {} runs without them",
                        prof.kind,
                        prof.credentials.join(", "),
                        command[0]
                    );
                } else {
                    let now = store::now();
                    let name = (0..5)
                        .map(|i| {
                            if i == 0 {
                                prof.kind.clone()
                            } else {
                                format!("{}-{i}", prof.kind)
                            }
                        })
                        .find(|n| store::get(&dir, n).is_err())
                        .ok_or("no free provider name")?;
                    let p = Provider {
                        name,
                        kind: prof.kind.clone(),
                        credentials: creds,
                        config,
                        created: now,
                        updated: now,
                    };
                    store::save(&dir, &p, true).map_err(|e| e.to_string())?;
                    eprintln!(
                        "openshell: created provider {} from {} (see 'openshell provider get {}')",
                        p.name,
                        p.credentials.keys().cloned().collect::<Vec<_>>().join(", "),
                        p.name
                    );
                    chosen.push((p, prof.clone()));
                }
            }
        }
    }
    if chosen.is_empty() {
        return Ok(none());
    }
    let a = attach::attach(&chosen, &base).map_err(|e| e.to_string())?;
    for n in &a.notes {
        eprintln!("openshell: note: {n}");
    }
    let mut policy = base;
    attach::merge(&mut policy, &a);
    Ok(Attachment {
        names: chosen.iter().map(|(p, _)| p.name.clone()).collect(),
        env: a.env,
        credentials: a.credentials,
        policy: Some(policy),
    })
}
