//! Inference routes (`openshell inference set|get|delete`): which provider and model
//! `inference.local` forwards to — a default for every sandbox and one per sandbox
//! (upstream has one per gateway). Stored in `<config>/inference.json` (0600): provider
//! names and models only; the credential is read from the provider when a sandbox
//! starts or the route is pushed to a running one.

use std::collections::BTreeMap;
use std::path::PathBuf;

use openshell_proxy::inference::Route;
use serde::{Deserialize, Serialize};

use crate::ProviderError;
use crate::profile;
use crate::store;

/// A route as the user set it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub provider: String,
    pub model: String,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

fn default_timeout() -> u64 {
    60
}

/// Every route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<RouteConfig>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sandboxes: BTreeMap<String, RouteConfig>,
}

fn path() -> PathBuf {
    crate::config_dir().join("inference.json")
}

/// Read the routes (none yet: empty).
pub fn load() -> Result<Routes, ProviderError> {
    let p = path();
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| ProviderError::Invalid(format!("{}: {e}", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Routes::default()),
        Err(source) => Err(ProviderError::Io {
            what: "read",
            path: p,
            source,
        }),
    }
}

/// Write the routes (0600, atomically).
pub fn save(r: &Routes) -> Result<(), ProviderError> {
    let bytes = serde_json::to_vec_pretty(r).map_err(|e| ProviderError::Invalid(e.to_string()))?;
    store::write_private(&crate::config_dir(), &path(), &bytes, None)
}

/// The API a provider type serves (`anthropic`, `openai`), if any.
pub fn api_of(p: &profile::Profile) -> Option<String> {
    p.inference.clone()
}

/// Default backend of an API.
fn default_base(api: &str) -> &'static str {
    if api == "anthropic" {
        "https://api.anthropic.com"
    } else {
        "https://api.openai.com/v1"
    }
}

/// The route for the proxy: provider, API, base URL, model and credential.
pub fn resolve(cfg: &RouteConfig) -> Result<Route, ProviderError> {
    let p = store::get(&store::dir(), &cfg.provider)?;
    let all = profile::all()?;
    let prof = profile::find(&all, &p.kind).ok_or_else(|| {
        ProviderError::Invalid(format!("provider {}: unknown type {}", p.name, p.kind))
    })?;
    let api = api_of(prof).ok_or_else(|| {
        ProviderError::Invalid(format!(
            "provider {} is of type {}, which cannot serve inference (anthropic, openai, nvidia, claude-code, codex can)",
            p.name, p.kind
        ))
    })?;
    let base_url = p
        .config
        .get("base_url")
        .cloned()
        .unwrap_or_else(|| default_base(&api).to_string());
    let key = prof
        .credentials
        .iter()
        .find_map(|k| p.credentials.get(k))
        .or_else(|| p.credentials.values().next())
        .cloned();
    Ok(Route {
        provider: p.name,
        api,
        base_url,
        model: cfg.model.clone(),
        key,
        timeout_secs: cfg.timeout_secs,
    })
}

/// The route a sandbox named `name` gets: its own, else the default.
pub fn for_sandbox(name: Option<&str>) -> Result<Option<Route>, ProviderError> {
    let r = load()?;
    let cfg = name.and_then(|n| r.sandboxes.get(n)).or(r.default.as_ref());
    cfg.map(resolve).transpose()
}
