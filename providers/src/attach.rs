//! What a sandbox gets from its providers: placeholders (never values) and the
//! profile's extra variables in its environment, the credentials for its proxy (each
//! bound to endpoints: host, port, path globs; optionally to the profile's binaries),
//! and a `_provider_<name>` network policy entry per provider allowing the profile's
//! endpoints for its binaries — credential-bound ones inspected (`protocol: rest`), so
//! the proxy sees the placeholders it must swap.
//!
//! A provider whose `base_url` is set (`--config base_url=URL`, or the profile's
//! base-URL variable found by `--from-existing`) has its credentials bound to that
//! URL's host, port and path only — not to the profile's default endpoints, where the
//! agent is no longer meant to send them — and the agent gets the variable.

use std::collections::BTreeMap;

use openshell_policy::engine::endpoint_matches;
use openshell_policy::schema::{Access, Binary, Endpoint, NetworkPolicy, Protocol, TlsMode};
use openshell_policy::{PROVIDER_PREFIX, Policy};
use openshell_proxy::secrets::{Binding, Credential, placeholder};

use crate::ProviderError;
use crate::profile::Profile;
use crate::store::Provider;

/// Everything a sandbox gets from its providers.
#[derive(Debug, Default)]
pub struct Attached {
    /// Environment: `KEY=openshell:resolve:env:KEY`, base URLs, profile variables.
    pub env: Vec<(String, String)>,
    /// For the proxy.
    pub credentials: Vec<Credential>,
    /// `_provider_<name>` → entry.
    pub entries: BTreeMap<String, NetworkPolicy>,
    /// What the user should know (credentials withheld, ...).
    pub notes: Vec<String>,
}

/// A base URL split for binding: (scheme, host, port, path prefix).
pub fn parse_base_url(url: &str) -> Result<(String, String, u16, String), ProviderError> {
    let bad = |why: &str| {
        ProviderError::Invalid(format!(
            "base_url {url:?}: {why} (give http(s)://HOST[:PORT][/PATH])"
        ))
    };
    let u = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if !u.username().is_empty() || u.password().is_some() || u.query().is_some() {
        return Err(bad("no user, password or query"));
    }
    let host = u
        .host_str()
        .ok_or_else(|| bad("no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = u.port_or_known_default().ok_or_else(|| bad("no port"))?;
    let path = u.path().trim_end_matches('/').to_string();
    Ok((u.scheme().to_string(), host, port, path))
}

/// One place of a provider: where it may connect and which of its keys go there.
struct Place {
    host: String,
    port: u16,
    paths: Vec<String>,
    /// `None`: every key of the provider; `Some(list)`: only those (empty: none).
    keys: Option<Vec<String>>,
    inject: crate::profile::Inject,
    scheme: String,
}

impl Place {
    /// Does `key` go here? An explicit list is honoured for every key, the profile's
    /// or one added with --credential.
    fn binds(&self, key: &str) -> bool {
        self.keys
            .as_ref()
            .is_none_or(|k| k.iter().any(|x| x == key))
    }
}

fn inspected(ep: &Endpoint) -> bool {
    ep.protocol == Some(Protocol::Rest) && ep.tls != Some(TlsMode::Skip)
}

/// The sandbox's share of `providers` (each with its profile), checked against the
/// user's policy: an endpoint there that would carry a bound credential uninspected
/// is refused, unless the provider says `allow_uninspected_credentials=true`.
pub fn attach(providers: &[(Provider, Profile)], user: &Policy) -> Result<Attached, ProviderError> {
    let mut out = Attached::default();
    for (p, prof) in providers {
        let base = p
            .config
            .get("base_url")
            .map(|u| parse_base_url(u))
            .transpose()?;
        let bind_binaries =
            prof.bind_binaries || p.config.get("bind_binaries").is_some_and(|v| v == "true");
        let uninspected_ok = p
            .config
            .get("allow_uninspected_credentials")
            .is_some_and(|v| v == "true");
        // (host, port, path globs, keys bound there, placement, scheme)
        let mut places: Vec<Place> = Vec::new();
        let default_inject = crate::profile::Inject::default();
        match &base {
            Some((scheme, host, port, path)) => {
                let glob = if path.is_empty() {
                    String::new()
                } else {
                    format!("{path}/**")
                };
                // The base URL replaces the profile's first API endpoint: the keys
                // bound there (and keys the profile does not know, added for it) go to
                // the base URL; the profile's other endpoints keep their own keys.
                let first = prof
                    .endpoints
                    .iter()
                    .position(|e| !e.credentials.as_ref().is_some_and(|c| c.is_empty()));
                let keys = first
                    .and_then(|i| prof.endpoints[i].credentials.clone())
                    .map(|mut k| {
                        k.extend(
                            p.credentials
                                .keys()
                                .filter(|x| !prof.credentials.contains(x))
                                .cloned(),
                        );
                        k
                    });
                places.push(Place {
                    host: host.clone(),
                    port: *port,
                    paths: vec![glob],
                    keys,
                    inject: first
                        .and_then(|i| prof.endpoints[i].inject.clone())
                        .unwrap_or_default(),
                    scheme: scheme.clone(),
                });
                for (i, ep) in prof.endpoints.iter().enumerate() {
                    if Some(i) == first {
                        continue;
                    }
                    places.push(Place {
                        host: ep.host.clone(),
                        port: ep.port,
                        paths: ep.paths.clone(),
                        keys: Some(ep.credentials.clone().unwrap_or_default()),
                        inject: ep.inject.clone().unwrap_or_default(),
                        scheme: "https".into(),
                    });
                }
            }
            None => {
                for ep in &prof.endpoints {
                    places.push(Place {
                        host: ep.host.clone(),
                        port: ep.port,
                        paths: ep.paths.clone(),
                        keys: ep.credentials.clone(),
                        inject: ep.inject.clone().unwrap_or_else(|| default_inject.clone()),
                        scheme: "https".into(),
                    });
                }
            }
        }
        // The provider's own placement settings apply to all its bindings.
        let split = |v: &String| {
            v.split(',')
                .map(|x| x.trim().to_ascii_lowercase())
                .filter(|x| !x.is_empty())
                .collect::<Vec<_>>()
        };
        for pl in &mut places {
            if let Some(h) = p.config.get("inject_headers") {
                pl.inject.headers = Some(split(h));
            }
            if let Some(q) = p.config.get("inject_query") {
                pl.inject.query = split(q);
            }
            if p.config.get("inject_path").is_some_and(|v| v == "true") {
                pl.inject.path = true;
            }
        }
        for (key, value) in &p.credentials {
            let bindings: Vec<Binding> = places
                .iter()
                .filter(|pl| pl.binds(key))
                .flat_map(|pl| {
                    let paths = if pl.paths.is_empty() {
                        vec![String::new()]
                    } else {
                        pl.paths.clone()
                    };
                    paths.into_iter().map(|path| Binding {
                        scheme: pl.scheme.clone(),
                        headers: pl
                            .inject
                            .headers
                            .clone()
                            .unwrap_or_else(openshell_proxy::secrets::default_headers),
                        query: pl.inject.query.clone(),
                        in_path: pl.inject.path,
                        ..Binding::new(&pl.host, pl.port, &path)
                    })
                })
                .collect();
            if bindings.is_empty() {
                out.notes.push(format!(
                    "provider {}: {key} is bound to no endpoint (give the provider --config base_url=URL): the sandbox does not get it",
                    p.name
                ));
                continue;
            }
            out.env.push((key.clone(), placeholder(key)));
            out.credentials.push(Credential {
                key: key.clone(),
                value: value.clone(),
                provider: p.name.clone(),
                bindings,
                binaries: if bind_binaries {
                    prof.binaries.clone()
                } else {
                    vec![]
                },
            });
        }
        if let (Some(var), Some(url)) = (&prof.base_url_env, p.config.get("base_url")) {
            out.env.push((var.clone(), url.clone()));
        }
        for (k, v) in &prof.env {
            out.env.push((k.clone(), v.clone()));
        }
        // The entry: every place, credential-bound ones inspected.
        let given: Vec<&String> = p.credentials.keys().collect();
        let mut endpoints = Vec::new();
        for pl in &places {
            let bound = given.iter().any(|k| pl.binds(k));
            let ep = Endpoint {
                host: pl.host.clone(),
                port: Some(pl.port),
                protocol: bound.then_some(Protocol::Rest),
                access: bound.then_some(Access::Full),
                ..Endpoint::default()
            };
            if bound && !uninspected_ok {
                check_inspected(user, &p.name, &pl.host, pl.port)?;
            }
            if !endpoints.contains(&ep) {
                endpoints.push(ep);
            }
        }
        out.entries.insert(
            format!("{PROVIDER_PREFIX}{}", p.name),
            NetworkPolicy {
                name: Some(format!("{PROVIDER_PREFIX}{}", p.name)),
                endpoints,
                binaries: prof
                    .binaries
                    .iter()
                    .map(|b| Binary { path: b.clone() })
                    .collect(),
            },
        );
    }
    Ok(out)
}

/// No endpoint of the user's policy may carry a credential bound to `host:port`
/// without inspection: the proxy could not swap it, and the placeholder would fail.
fn check_inspected(
    user: &Policy,
    provider: &str,
    host: &str,
    port: u16,
) -> Result<(), ProviderError> {
    if host.contains('*') {
        return Ok(());
    }
    for (key, np) in &user.network_policies {
        for ep in &np.endpoints {
            if endpoint_matches(ep, host, port) && !inspected(ep) {
                return Err(ProviderError::Invalid(format!(
                    "policy entry {key} allows {host}:{port} without inspection, but provider {provider} has a credential bound there that the proxy could not swap: make that endpoint `protocol: rest`, or set --config allow_uninspected_credentials=true on the provider"
                )));
            }
        }
    }
    Ok(())
}

/// Add the providers' entries to `policy`.
pub fn merge(policy: &mut Policy, attached: &Attached) {
    for (k, v) in &attached.entries {
        policy.network_policies.insert(k.clone(), v.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(kind: &str, creds: &[(&str, &str)], config: &[(&str, &str)]) -> Provider {
        Provider {
            name: kind.into(),
            kind: kind.into(),
            credentials: creds
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            created: 0,
            updated: 0,
        }
    }

    #[test]
    fn placeholders_bindings_and_entries() {
        let all = crate::profile::all_from(std::path::Path::new("/nonexistent")).unwrap();
        let claude = all["claude-code"].clone();
        let p = provider("claude-code", &[("ANTHROPIC_API_KEY", "sk-1")], &[]);
        let a = attach(&[(p, claude.clone())], &Policy::restrictive_default()).unwrap();
        assert!(a.env.contains(&(
            "ANTHROPIC_API_KEY".into(),
            "openshell:resolve:env:ANTHROPIC_API_KEY".into()
        )));
        assert!(!format!("{:?}", a.env).contains("sk-1"));
        assert_eq!(a.credentials[0].bindings[0].host, "api.anthropic.com");
        assert_eq!(a.credentials[0].bindings[0].path, "/v1/**");
        let e = &a.entries["_provider_claude-code"];
        assert_eq!(e.endpoints[0].protocol, Some(Protocol::Rest));
        // A base URL moves the binding there, and the agent is told.
        let p = provider(
            "claude-code",
            &[("ANTHROPIC_API_KEY", "sk-1")],
            &[("base_url", "https://api.test.openshell:8443/proxy")],
        );
        let a = attach(&[(p, claude.clone())], &Policy::restrictive_default()).unwrap();
        let b = &a.credentials[0].bindings;
        assert_eq!(
            (b[0].host.as_str(), b[0].port, b[0].path.as_str()),
            ("api.test.openshell", 8443, "/proxy/**")
        );
        assert_eq!(b.len(), 1);
        assert!(a.env.contains(&(
            "ANTHROPIC_BASE_URL".into(),
            "https://api.test.openshell:8443/proxy".into()
        )));
        // An uninspected user endpoint for the bound host is refused.
        let user = Policy::parse("version: 1\nnetwork_policies:\n  a:\n    endpoints: [{host: api.anthropic.com, port: 443}]\n    binaries: [{path: /usr/bin/curl}]\n").unwrap();
        let p = provider("claude-code", &[("ANTHROPIC_API_KEY", "sk-1")], &[]);
        let e = attach(&[(p.clone(), claude.clone())], &user)
            .unwrap_err()
            .to_string();
        assert!(e.contains("without inspection"), "{e}");
        let mut ok = p;
        ok.config
            .insert("allow_uninspected_credentials".into(), "true".into());
        assert!(attach(&[(ok, claude)], &user).is_ok());
        // generic without a base URL: withheld, said.
        let g = provider("generic", &[("TOKEN", "t")], &[]);
        let a = attach(
            &[(g, all["generic"].clone())],
            &Policy::restrictive_default(),
        )
        .unwrap();
        assert!(a.credentials.is_empty() && a.env.is_empty());
        assert!(a.notes[0].contains("bound to no endpoint"));
        for bad in ["ftp://x", "https://u:p@x", "notaurl", "https://x/?q=1"] {
            assert!(parse_base_url(bad).is_err(), "{bad}");
        }
    }
}
