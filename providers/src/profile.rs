//! Provider profiles: what a type of provider needs, as data. A profile names the
//! credential variables it discovers, the endpoints its credentials are bound to
//! (host, port, path globs), the binaries and network rules the agent needs, extra
//! environment, the agent's writable state and, for inference-capable types, the
//! base-URL variable.
//!
//! Built-in profiles (`providers/profiles/*.yaml`) are compiled in; files in
//! `$XDG_CONFIG_HOME/openshell/profiles/` (`~/.config/openshell/profiles/`) add types or
//! override built-ins by `type`. Every file is validated like a policy: unknown keys
//! and bad values are errors naming `file:line:col`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use openshell_policy::host::HostPattern;
use serde::{Deserialize, Serialize};

use crate::ProviderError;

/// One provider type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// The type name (`claude-code`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Other spellings of the type (`claude`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// One line for `provider list-profiles`.
    #[serde(default)]
    pub description: String,
    /// Command names (basenames) that make `run`/`create` attach this type by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
    /// Credential variables, in discovery order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<String>,
    /// The variable that points the agent at another endpoint (`ANTHROPIC_BASE_URL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url_env: Option<String>,
    /// The API an inference route of this type speaks (`anthropic`, `openai`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference: Option<String>,
    /// Where the agent may connect, and where credentials are bound.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<ProfileEndpoint>,
    /// Executables allowed to use the endpoints (globs; `/**` = any program).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub binaries: Vec<String>,
    /// Bind the credentials to `binaries` too (only they may send them).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bind_binaries: bool,
    /// Extra environment for the agent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The agent's writable state (`~` is the sandbox user's home).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub writable: Vec<String>,
}

/// An endpoint of a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileEndpoint {
    /// Host pattern (policy syntax).
    pub host: String,
    /// Port (default 443).
    #[serde(default = "https_port")]
    pub port: u16,
    /// Path globs the credentials are bound to (default: every path).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Which of the profile's credentials are bound here (default: all; `[]`: none —
    /// the endpoint is only allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Vec<String>>,
    /// Where in a request the credentials may be placed (default: the auth headers
    /// `authorization`, `x-api-key`, `api-key`; never the URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inject: Option<Inject>,
}

/// Where a credential may be placed in requests to an endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inject {
    /// Header names (instead of the default auth headers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Vec<String>>,
    /// Query parameters whose whole value may be the credential.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<String>,
    /// Path segments may hold it (`/bot<token>/...`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub path: bool,
}

fn https_port() -> u16 {
    443
}

const BUILTIN: [(&str, &str); 10] = [
    (
        "claude-code.yaml",
        include_str!("../profiles/claude-code.yaml"),
    ),
    ("codex.yaml", include_str!("../profiles/codex.yaml")),
    ("opencode.yaml", include_str!("../profiles/opencode.yaml")),
    ("copilot.yaml", include_str!("../profiles/copilot.yaml")),
    ("github.yaml", include_str!("../profiles/github.yaml")),
    ("gitlab.yaml", include_str!("../profiles/gitlab.yaml")),
    ("anthropic.yaml", include_str!("../profiles/anthropic.yaml")),
    ("openai.yaml", include_str!("../profiles/openai.yaml")),
    ("nvidia.yaml", include_str!("../profiles/nvidia.yaml")),
    ("generic.yaml", include_str!("../profiles/generic.yaml")),
];

/// The `commands` of the built-in profiles, known without parsing them: `run` skips
/// loading profiles (about 0.7 ms) for any other command when the user has none of
/// their own. A unit test keeps this list equal to the profiles' own.
pub const BUILTIN_COMMANDS: [&str; 4] = ["claude", "codex", "opencode", "copilot"];

/// Could `argv0` (a command) be an agent with a profile?
pub fn maybe_agent(argv0: &str) -> bool {
    let base = argv0.rsplit('/').next().unwrap_or(argv0);
    BUILTIN_COMMANDS.contains(&base) || user_dir().is_dir()
}

/// Is `key` a usable environment key (and not one of upstream's reserved shapes,
/// `v<digits>_X` and `s<64 hex>_X`)?
pub fn key_ok(key: &str) -> bool {
    let shape = !key.is_empty()
        && key.len() <= 128
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !key.as_bytes()[0].is_ascii_digit();
    let reserved = |p: char, body: &dyn Fn(&str) -> bool| {
        key.strip_prefix(p)
            .and_then(|r| r.split_once('_'))
            .is_some_and(|(b, rest)| body(b) && !rest.is_empty())
    };
    shape
        && !reserved('v', &|b| {
            !b.is_empty() && b.bytes().all(|c| c.is_ascii_digit())
        })
        && !reserved('s', &|b| {
            b.len() == 64 && b.bytes().all(|c| c.is_ascii_hexdigit())
        })
}

/// Parse and validate one profile file.
pub fn parse(file: &str, source: &str) -> Result<Profile, ProviderError> {
    let p: Profile = serde_yaml_ng::from_str(source).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!("{}:{}:", l.line(), l.column()))
            .unwrap_or_default();
        let full = e.to_string();
        let msg = full
            .rfind(" at line ")
            .map_or(full.as_str(), |i| &full[..i]);
        ProviderError::Profile(format!("{file}:{at} {msg}"))
    })?;
    let bad = |field: &str, msg: String| ProviderError::Profile(format!("{file}: {field}: {msg}"));
    if !type_ok(&p.kind) {
        return Err(bad("type", format!("{:?}: use a-z, 0-9 and -", p.kind)));
    }
    for a in &p.aliases {
        if !type_ok(a) && !a.contains('_') {
            return Err(bad("aliases", format!("{a:?}: use a-z, 0-9, - and _")));
        }
    }
    for k in p
        .credentials
        .iter()
        .chain(p.base_url_env.iter())
        .chain(p.env.keys())
    {
        if !key_ok(k) {
            return Err(bad("credentials", format!("{k:?} is not a variable name")));
        }
    }
    if let Some(i) = &p.inference
        && !matches!(i.as_str(), "anthropic" | "openai")
    {
        return Err(bad("inference", format!("{i:?}: anthropic or openai")));
    }
    for (n, ep) in p.endpoints.iter().enumerate() {
        let field = format!("endpoints[{n}]");
        HostPattern::parse(&ep.host)
            .map_err(|e| bad(&field, format!("host {:?}: {e}", ep.host)))?;
        if ep.port == 0 {
            return Err(bad(&field, "port 0".into()));
        }
        for path in &ep.paths {
            if !path.starts_with('/') || path.contains("..") {
                return Err(bad(
                    &field,
                    format!("path {path:?}: an absolute glob like /v1/**"),
                ));
            }
        }
        if let Some(i) = &ep.inject {
            for h in i.headers.iter().flatten().chain(i.query.iter()) {
                if h.is_empty()
                    || !h
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(bad(
                        &field,
                        format!("inject: {h:?} is not a header or parameter name"),
                    ));
                }
            }
        }
        for k in ep.credentials.iter().flatten() {
            if !p.credentials.contains(k) {
                return Err(bad(
                    &field,
                    format!("credential {k} is not one of the profile's credentials"),
                ));
            }
        }
    }
    for b in &p.binaries {
        if !b.starts_with('/') || b.split('/').any(|c| c == "..") {
            return Err(bad("binaries", format!("{b:?}: an absolute path or glob")));
        }
    }
    for w in &p.writable {
        if !(w.starts_with("~/") || w.starts_with('/')) || w.split('/').any(|c| c == "..") {
            return Err(bad("writable", format!("{w:?}: ~/PATH or /PATH")));
        }
    }
    Ok(p)
}

fn type_ok(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 63
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Where user profiles live.
pub fn user_dir() -> PathBuf {
    crate::config_dir().join("profiles")
}

/// Every profile: built-ins, then the user's files (which add or override by type).
pub fn all() -> Result<BTreeMap<String, Profile>, ProviderError> {
    all_from(&user_dir())
}

/// [`all`] with the user's profiles read from `dir`.
pub fn all_from(dir: &Path) -> Result<BTreeMap<String, Profile>, ProviderError> {
    let mut out = BTreeMap::new();
    for (file, src) in BUILTIN {
        let p = parse(&format!("(built-in) {file}"), src)?;
        out.insert(p.kind.clone(), p);
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    let mut files: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    for f in files {
        let meta = std::fs::metadata(&f)
            .map_err(|e| ProviderError::Profile(format!("{}: {e}", f.display())))?;
        if !meta.is_file() || meta.len() > 1 << 20 {
            return Err(ProviderError::Profile(format!(
                "{}: not a regular file of at most 1 MiB",
                f.display()
            )));
        }
        let src = std::fs::read_to_string(&f)
            .map_err(|e| ProviderError::Profile(format!("{}: {e}", f.display())))?;
        let p = parse(&f.display().to_string(), &src)?;
        out.insert(p.kind.clone(), p);
    }
    Ok(out)
}

/// The profile for a type name or alias (any case).
pub fn find<'a>(profiles: &'a BTreeMap<String, Profile>, name: &str) -> Option<&'a Profile> {
    let n = name.to_ascii_lowercase();
    profiles
        .get(&n)
        .or_else(|| profiles.values().find(|p| p.aliases.contains(&n)))
}

/// The profile whose `commands` name this command (its basename).
pub fn for_command<'a>(
    profiles: &'a BTreeMap<String, Profile>,
    argv0: &str,
) -> Option<&'a Profile> {
    let base = argv0.rsplit('/').next().unwrap_or(argv0);
    profiles
        .values()
        .find(|p| p.commands.iter().any(|c| c == base))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse_and_user_files_override_or_fail_located() {
        let dir = std::env::temp_dir().join(format!("os-prof-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let all = all_from(&dir).unwrap();
        assert_eq!(all.len(), 10);
        let mut cmds: Vec<&str> = all
            .values()
            .flat_map(|p| p.commands.iter().map(String::as_str))
            .collect();
        cmds.sort();
        let mut known = BUILTIN_COMMANDS.to_vec();
        known.sort();
        assert_eq!(
            cmds, known,
            "BUILTIN_COMMANDS must list the built-in profiles' commands"
        );
        assert_eq!(find(&all, "Claude").unwrap().kind, "claude-code");
        assert_eq!(for_command(&all, "/usr/bin/codex").unwrap().kind, "codex");
        std::fs::write(
            dir.join("mine.yaml"),
            "type: myagent\ncommands: [myagent]\ncredentials: [MY_KEY]\nendpoints:\n  - host: api.example.com\n",
        )
        .unwrap();
        let all = all_from(&dir).unwrap();
        assert_eq!(all["myagent"].endpoints[0].port, 443);
        std::fs::write(dir.join("bad.yaml"), "type: x\ncredentails: [A]\n").unwrap();
        let e = all_from(&dir).unwrap_err().to_string();
        assert!(
            e.contains("bad.yaml:2:1:") && e.contains("credentails"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_values_are_named() {
        for (src, want) in [
            ("type: X\n", "type"),
            ("type: x\ncredentials: [\"a-b\"]\n", "not a variable"),
            ("type: x\ncredentials: [v1_KEY]\n", "not a variable"),
            ("type: x\nendpoints: [{host: \"a b\"}]\n", "host"),
            (
                "type: x\nendpoints: [{host: a.com, paths: [v1]}]\n",
                "absolute glob",
            ),
            ("type: x\nbinaries: [claude]\n", "absolute"),
            (
                "type: x\nendpoints: [{host: a.com, credentials: [K]}]\n",
                "not one of",
            ),
        ] {
            let e = parse("f.yaml", src).unwrap_err().to_string();
            assert!(e.contains(want), "{src}: {e}");
        }
    }
}
