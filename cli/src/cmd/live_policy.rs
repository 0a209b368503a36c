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
use openshell_runtime::record::{self, Phase};
use openshell_runtime::store::{self, Entry};
use openshell_runtime::{control, state};
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

#[derive(Serialize)]
struct Shown {
    sandbox: String,
    version: Option<u64>,
    sha256: String,
    status: String,
    policy: String,
}

/// `policy get NAME` (`policy_only`: `sandbox get NAME --policy-only`, the YAML alone).
pub fn get(name: &str, format: Format, timeout: Duration, policy_only: bool) -> i32 {
    let e = match store::find(&state::base_dir(), name) {
        Ok(e) => e,
        Err(err) => return fail(err),
    };
    let shown = match socket(&e) {
        Ok(sock) => match control::request(&sock, "GET", "/v1/policy", None, timeout) {
            Ok((200, v)) => Shown {
                sandbox: e.name.clone(),
                version: v["version"].as_u64(),
                sha256: v["sha256"].as_str().unwrap_or_default().into(),
                status: "loaded".into(),
                policy: v["policy"].as_str().unwrap_or_default().into(),
            },
            Ok((code, v)) => {
                return fail(format!("sandbox {name}: supervisor answered {code}: {v}"));
            }
            Err(err) => return fail(format!("sandbox {name}: {err}")),
        },
        Err(_) => match stored(&e.dir) {
            Ok((p, text)) => Shown {
                sandbox: e.name.clone(),
                version: None,
                sha256: control::policy_hash(&p),
                status: "stored (not running)".into(),
                policy: text,
            },
            Err(err) => return fail(format!("sandbox {name}: {err}")),
        },
    };
    if policy_only {
        print!("{}", shown.policy);
        return 0;
    }
    if !output::structured(format, &shown) {
        println!("Sandbox: {}", shown.sandbox);
        if let Some(v) = shown.version {
            println!("Version: {v}");
        }
        println!("Hash:    {}", shown.sha256);
        println!("Status:  {}", shown.status);
        println!("---");
        print!("{}", shown.policy);
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

/// What `policy update` should change.
pub struct Update {
    /// `host:port[:access[:protocol[:enforcement]]]` to add.
    pub add: Vec<String>,
    /// For these binaries.
    pub binaries: Vec<String>,
    /// `host:port` to remove.
    pub remove: Vec<String>,
    /// Print the result only.
    pub dry_run: bool,
}

/// `policy update NAME`: edit the active policy of a running sandbox.
pub fn update(name: &str, u: Update, timeout: Duration) -> i32 {
    use super::policy_edit::{add_endpoint, parse_endpoint, parse_host_port, remove_endpoint};
    if u.add.is_empty() && u.remove.is_empty() {
        return fail("policy update: give --add-endpoint or --remove-endpoint");
    }
    if !u.add.is_empty() && u.binaries.is_empty() {
        return fail(
            "policy update: --add-endpoint needs --binary PATH (which programs may use it)",
        );
    }
    let adds = match u
        .add
        .iter()
        .map(|a| parse_endpoint(a))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(a) => a,
        Err(err) => return fail(err),
    };
    let removes = match u
        .remove
        .iter()
        .map(|r| parse_host_port(r))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(r) => r,
        Err(err) => return fail(err),
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
    for ep in adds {
        let what = format!("{}:{}", ep.host, ep.port.unwrap_or_default());
        let key = add_endpoint(&mut policy, ep, &u.binaries);
        eprintln!("openshell: + {what} in network policy {key}");
    }
    for (host, port) in removes {
        if remove_endpoint(&mut policy, &host, port) == 0 {
            return fail(format!(
                "sandbox {name}: no endpoint {host}:{port} in its policy; see 'openshell policy get {name}'"
            ));
        }
        eprintln!("openshell: - {host}:{port}");
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
    let revs = match control::request(&sock, "GET", "/v1/policy/history", None, timeout) {
        Ok((200, v)) => v,
        Ok((code, v)) => return fail(format!("sandbox {name}: supervisor answered {code}: {v}")),
        Err(err) => return fail(format!("sandbox {name}: {err}")),
    };
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
                    record::rfc3339(r["time"].as_u64().unwrap_or_default()),
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
