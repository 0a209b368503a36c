//! `openshell policy get|set|update|list NAME`: a sandbox's policy, changed while it runs.
//!
//! A running sandbox is asked over its control socket (the proxy holds the active
//! policy and its revisions); a stopped one answers from its stored `policy.yaml`.
//! `set` validates the file here first (errors with file:line:col), then the
//! supervisor validates it again and swaps it in atomically or rejects it; a rejected
//! policy never replaces the active one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use openshell_policy::Policy;
use openshell_runtime::api::record::{self, Phase};
use openshell_runtime::api::store::{self, Entry};
use openshell_runtime::api::{control, state};
use serde::Serialize;

use crate::output::{self, Format, fail};

/// The control socket of a running sandbox, or why there is none.
fn socket(e: &Entry) -> Result<PathBuf, String> {
    let phase = e.phase().0;
    if phase != Phase::Ready {
        return Err(format!(
            "sandbox {} is not running ({phase}); its policy can only change while it runs",
            e.name
        ));
    }
    let sock = e.dir.join("control.sock");
    if !sock.exists() {
        return Err(format!(
            "sandbox {} runs without the network proxy (--network none): it has no policy to change live",
            e.name
        ));
    }
    Ok(sock)
}

/// What `policy get` prints.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Show {
    /// The header only (version, hash, status), as upstream without --full.
    Header,
    /// Header, when it became active, and the effective YAML (`--full`).
    Full,
    /// Header and the YAML without `_provider_*` entries (`--base`).
    Base,
    /// The effective YAML alone (`sandbox get --policy-only`).
    YamlOnly,
}

#[derive(Serialize)]
struct Shown {
    sandbox: String,
    version: Option<u64>,
    sha256: String,
    status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    active: Option<bool>,
    /// RFC 3339, when this revision was loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<String>,
}

/// The YAML of `policy` without the entries providers manage.
fn base_of(yaml: &str) -> Result<String, String> {
    let mut p = Policy::parse_stored(yaml).map_err(|e| e.render("policy"))?;
    p.network_policies
        .retain(|k, _| !k.starts_with(openshell_policy::PROVIDER_PREFIX));
    Ok(p.to_yaml())
}

/// `policy get NAME [--rev N] [--full|--base]`.
pub fn get(name: &str, format: Format, timeout: Duration, rev: Option<u64>, show: Show) -> i32 {
    let e = match store::find(&state::base_dir(), name) {
        Ok(e) => e,
        Err(err) => return fail(err),
    };
    let mut shown = match socket(&e) {
        Ok(sock) => {
            let path = rev.map_or("/v1/policy".to_string(), |n| format!("/v1/policy?rev={n}"));
            match control::request(&sock, "GET", &path, None, timeout) {
                Ok((200, v)) => Shown {
                    sandbox: e.name.clone(),
                    version: v["version"].as_u64(),
                    sha256: v["sha256"].as_str().unwrap_or_default().into(),
                    status: v["status"].as_str().unwrap_or("loaded").into(),
                    active: v["active"].as_bool(),
                    created: v["time"].as_u64().map(record::rfc3339),
                    policy: Some(v["policy"].as_str().unwrap_or_default().into()),
                },
                Ok((404, v)) => {
                    return fail(format!(
                        "sandbox {name}: {}",
                        v["detail"].as_str().unwrap_or("no such revision")
                    ));
                }
                Ok((code, v)) => {
                    return fail(format!("sandbox {name}: supervisor answered {code}: {v}"));
                }
                Err(err) => return fail(format!("sandbox {name}: {err}")),
            }
        }
        Err(why) if rev.is_some() => {
            return fail(format!(
                "{why}; revisions are kept by the running supervisor (the stored policy: 'openshell policy get {name} --full')"
            ));
        }
        Err(_) => match stored(&e.dir) {
            Ok((p, text)) => Shown {
                sandbox: e.name.clone(),
                version: None,
                sha256: control::policy_hash(&p),
                status: "stored (not running)".into(),
                active: None,
                created: None,
                policy: Some(text),
            },
            Err(err) => return fail(format!("sandbox {name}: {err}")),
        },
    };
    match show {
        Show::YamlOnly => {
            print!("{}", shown.policy.unwrap_or_default());
            return 0;
        }
        Show::Header => {
            shown.policy = None;
            shown.active = None;
            shown.created = None;
        }
        Show::Base => match base_of(shown.policy.as_deref().unwrap_or_default()) {
            Ok(y) => shown.policy = Some(y),
            Err(err) => return fail(format!("sandbox {name}: {err}")),
        },
        Show::Full => {}
    }
    if !output::structured(format, &shown) {
        println!("Sandbox: {}", shown.sandbox);
        if let Some(v) = shown.version {
            println!("Version: {v}");
        }
        println!("Hash:    {}", shown.sha256);
        println!("Status:  {}", shown.status);
        if let Some(a) = shown.active {
            println!("Active:  {}", if a { "yes" } else { "no" });
        }
        if let Some(c) = &shown.created {
            println!("Created: {c}");
        }
        if let Some(p) = &shown.policy {
            println!("---");
            print!("{p}");
        }
    }
    0
}

fn stored(dir: &Path) -> Result<(Policy, String), String> {
    let path = dir.join(record::POLICY);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let p = Policy::parse_stored(&text).map_err(|e| e.render(&path.display().to_string()))?;
    Ok((p, text))
}

/// `policy set NAME --policy FILE`.
pub fn set(name: &str, file: &Path, timeout: Duration) -> i32 {
    let e = match store::find(&state::base_dir(), name) {
        Ok(e) => e,
        Err(err) => return fail(err),
    };
    let policy = match super::run::load_policy(&file.to_path_buf()) {
        Ok(p) => p,
        Err(err) => {
            eprintln!("{err}");
            return fail(format!(
                "policy not set; sandbox {name} keeps its active policy"
            ));
        }
    };
    let sock = match socket(&e) {
        Ok(s) => s,
        Err(err) => return fail(err),
    };
    apply(&e, &sock, &policy, timeout)
}

/// PUT `policy` to the sandbox; store it when loaded.
fn apply(e: &Entry, sock: &Path, policy: &Policy, timeout: Duration) -> i32 {
    let name = &e.name;
    let yaml = policy.to_yaml();
    match control::request(sock, "PUT", "/v1/policy", Some(&yaml), timeout) {
        Ok((200, v)) => {
            let version = v["version"].as_u64().unwrap_or_default();
            let sha = v["sha256"].as_str().unwrap_or_default();
            if v["changed"].as_bool() == Some(true) {
                println!("sandbox {name}: policy v{version} loaded ({sha})");
            } else {
                println!("sandbox {name}: policy unchanged (v{version}, {sha})");
            }
            if let Err(err) = record::write_atomic(&e.dir.join(record::POLICY), yaml.as_bytes()) {
                eprintln!("openshell: warning: loaded, but not stored for later: {err}");
            }
            0
        }
        Ok((_, v)) => {
            for l in v["detail"].as_str().unwrap_or_default().lines() {
                eprintln!("{l}");
            }
            fail(format!(
                "sandbox {name} rejected the policy; v{} stays active",
                v["active_version"].as_u64().unwrap_or_default()
            ))
        }
        Err(err) => fail(format!("sandbox {name}: {err}")),
    }
}

/// `policy update NAME`: edit the active policy of a running sandbox.
pub fn update(name: &str, u: super::policy_edit::Update, timeout: Duration) -> i32 {
    let plan = match u.plan() {
        Ok(p) => p,
        Err(err) => return fail(format!("policy update: {err}")),
    };
    let e = match store::find(&state::base_dir(), name) {
        Ok(e) => e,
        Err(err) => return fail(err),
    };
    let sock = match socket(&e) {
        Ok(s) => s,
        Err(err) => return fail(err),
    };
    let mut policy = match control::request(&sock, "GET", "/v1/policy", None, timeout) {
        Ok((200, v)) => match Policy::parse_stored(v["policy"].as_str().unwrap_or_default()) {
            Ok(p) => p,
            Err(err) => {
                return fail(format!(
                    "sandbox {name}: active policy: {}",
                    err.render("policy")
                ));
            }
        },
        Ok((code, v)) => return fail(format!("sandbox {name}: supervisor answered {code}: {v}")),
        Err(err) => return fail(format!("sandbox {name}: {err}")),
    };
    match plan.apply(&mut policy) {
        Ok(done) => {
            for d in done {
                eprintln!("openshell: {d}");
            }
        }
        Err(err) => {
            return fail(format!(
                "sandbox {name}: {err}; see 'openshell policy get {name} --full'"
            ));
        }
    }
    // The edited policy must stand on its own, exactly as a file would.
    let policy = match Policy::parse_stored(&policy.to_yaml()) {
        Ok(p) => p,
        Err(err) => {
            return fail(format!(
                "the edited policy is invalid: {}",
                err.render("policy")
            ));
        }
    };
    if u.dry_run {
        print!("{}", policy.to_yaml());
        eprintln!("openshell: dry run: sandbox {name} keeps its active policy");
        return 0;
    }
    apply(&e, &sock, &policy, timeout)
}

/// `policy list NAME`: the revisions of a running sandbox's policy.
pub fn list(name: &str, format: Format, timeout: Duration) -> i32 {
    let e = match store::find(&state::base_dir(), name) {
        Ok(e) => e,
        Err(err) => return fail(err),
    };
    let sock = match socket(&e) {
        Ok(s) => s,
        Err(err) => return fail(err),
    };
    let mut revs = match control::request(&sock, "GET", "/v1/policy/history", None, timeout) {
        Ok((200, v)) => v,
        Ok((code, v)) => return fail(format!("sandbox {name}: supervisor answered {code}: {v}")),
        Err(err) => return fail(format!("sandbox {name}: {err}")),
    };
    // Times in JSON are RFC 3339, as everywhere in the CLI's output.
    for r in revs.as_array_mut().into_iter().flatten() {
        if let Some(t) = r["time"].as_u64() {
            r["time"] = record::rfc3339(t).into();
        }
    }
    if !output::structured(format, &revs) {
        let rows: Vec<Vec<String>> = revs
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|r| {
                vec![
                    r["version"].to_string(),
                    r["status"].as_str().unwrap_or_default().into(),
                    r["time"].as_str().unwrap_or_default().into(),
                    r["sha256"]
                        .as_str()
                        .unwrap_or_default()
                        .chars()
                        .take(19)
                        .collect(),
                    r["error"]
                        .as_str()
                        .and_then(|e| e.lines().next())
                        .unwrap_or_default()
                        .into(),
                ]
            })
            .collect();
        output::table(&["VERSION", "STATUS", "TIME", "HASH", "ERROR"], &rows);
    }
    0
}
