//! Credentials that never enter the sandbox: the agent holds placeholders
//! (`openshell:resolve:env:KEY`), and the proxy swaps in the real value — only in a
//! request to an endpoint the credential is bound to (host, port, path glob; optionally
//! only for some binaries), and only in the places a credential travels:
//!
//! - a header value that is the placeholder, `<scheme> <placeholder>` (`Bearer ...`), or
//!   `Basic <base64>` whose decoded `user:password` holds placeholders (decoded,
//!   swapped, re-encoded);
//! - query parameter values (percent-decoded, swapped, re-encoded);
//! - path segments (percent-decoded; the value must not contain `/ \ .. ? #`).
//!
//! A placeholder anywhere else in the head (a cookie, a header name, a query key, inside
//! a longer header value) is refused, as is one bound elsewhere (403
//! `credential_endpoint_mismatch`) or unknown (500 `credential_unavailable`): nothing
//! is sent upstream then. Values never reach a log: `Credential`'s `Debug` redacts
//! them, and the denial names the key only. Response headers carrying a swapped value
//! back are redacted to the placeholder. docs/credentials.md has the whole model.

use std::sync::Arc;

use base64::Engine;
use hyper::header::HeaderValue;
use hyper::http::request::Parts;
use openshell_policy::engine::binary_matches;
use openshell_policy::host::HostPattern;
use openshell_policy::l7::path_matches;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

/// What a placeholder starts with; the key follows (`[A-Za-z0-9_]+`).
pub const PREFIX: &str = "openshell:resolve:env:";

/// The placeholder the agent gets for `key`.
pub fn placeholder(key: &str) -> String {
    format!("{PREFIX}{key}")
}

/// Where a credential may be sent, and where in a request it may be placed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Binding {
    /// Host pattern (the policy's syntax: `api.example.com`, `*.example.com`).
    pub host: String,
    /// Exact port.
    pub port: u16,
    /// Path glob (`/v1/**`; empty or `/**`: every path), matched against the
    /// canonical path (dot segments resolved, escapes decoded).
    pub path: String,
    /// `https` (the default: the request must be an inspected TLS one) or `http`.
    #[serde(default = "https")]
    pub scheme: String,
    /// Header names (lower case) the credential may be placed in.
    #[serde(default = "default_headers")]
    pub headers: Vec<String>,
    /// Query parameters whose whole value may be the credential (none by default).
    #[serde(default)]
    pub query: Vec<String>,
    /// Whether path segments may hold it (`/bot<token>/send`; off by default).
    #[serde(default)]
    pub in_path: bool,
}

fn https() -> String {
    "https".into()
}

/// Where credentials go unless a profile says otherwise: the auth headers, never a
/// header an API echoes back in an error (`anthropic-beta`), never the URL.
pub fn default_headers() -> Vec<String> {
    ["authorization", "x-api-key", "api-key"]
        .map(String::from)
        .to_vec()
}

impl Binding {
    /// A binding with the default placement (auth headers only, https).
    pub fn new(host: &str, port: u16, path: &str) -> Self {
        Self {
            host: host.into(),
            port,
            path: path.into(),
            scheme: https(),
            headers: default_headers(),
            query: vec![],
            in_path: false,
        }
    }
}

/// Where in a request a placeholder was found.
#[derive(Debug, Clone, Copy)]
enum Place<'a> {
    Header(&'a str),
    Query(&'a str),
    Path,
}

/// One secret of a provider, as the proxy holds it (serialised only to travel over
/// the sandbox's 0600 control socket, never to a file).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Credential {
    /// The environment key (`ANTHROPIC_API_KEY`).
    pub key: String,
    /// The real value: only ever in the proxy's memory.
    pub value: String,
    /// The provider it belongs to (for logs and errors).
    pub provider: String,
    /// Endpoints it may go to.
    pub bindings: Vec<Binding>,
    /// When not empty: only requests of these executables (or their descendants) may
    /// carry it.
    pub binaries: Vec<String>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("key", &self.key)
            .field("value", &"[REDACTED]")
            .field("provider", &self.provider)
            .field("bindings", &self.bindings)
            .field("binaries", &self.binaries)
            .finish()
    }
}

/// Why a request carrying placeholders was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The credential is not bound to this host, port, path or program.
    Mismatch { key: String, provider: String },
    /// No credential of that key (or its value cannot go where it was asked to).
    Unavailable { key: String },
    /// A placeholder where no credential travels (a cookie, a header name, inside a
    /// longer value, a query key).
    Misplaced { place: String },
}

impl Refusal {
    /// HTTP status, error code and message of the answer.
    pub fn answer(&self) -> (u16, &'static str, String) {
        match self {
            Refusal::Mismatch { key, provider } => (
                403,
                "credential_endpoint_mismatch",
                format!(
                    "credential {key} of provider {provider} is not authorized for this request endpoint"
                ),
            ),
            Refusal::Unavailable { key } => (
                500,
                "credential_unavailable",
                format!("credential placeholder for {key} could not be resolved"),
            ),
            Refusal::Misplaced { place } => (
                403,
                "credential_endpoint_mismatch",
                format!("a credential placeholder in {place}, where no credential is sent"),
            ),
        }
    }
}

/// Where a request goes and who sends it: what a binding is checked against.
pub struct Destination<'a> {
    /// Normalised host name.
    pub host: &'a str,
    /// Port.
    pub port: u16,
    /// The sender's executable, then its ancestors'.
    pub chain: &'a [String],
    /// The request came through TLS the proxy terminated (`https`), else plain `http`.
    pub tls: bool,
    /// The proxy inspects this endpoint (`protocol: rest`); a forwarded request of an
    /// L4 endpoint never gets a credential.
    pub inspected: bool,
}

/// Path characters left as they are when a segment is re-encoded (RFC 3986 pchar minus
/// sub-delims that could change the meaning).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Does `text` hold a placeholder (any case: a server may not care about case)?
fn mentions(text: &str) -> bool {
    text.to_ascii_lowercase().contains(PREFIX)
}

/// Swap every placeholder of `text` (exact case); `check` vets each value for the
/// place it goes. A placeholder spelled in another case is refused, not passed on.
fn swap_all(
    text: &str,
    (dest, path, place): (&Destination<'_>, &str, Place<'_>),
    vault: &[Credential],
    used: &mut Vec<String>,
    check: &dyn Fn(&str) -> bool,
) -> Result<String, Refusal> {
    let misplaced = || Refusal::Misplaced {
        place: String::new(),
    };
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(PREFIX) {
        if mentions(&rest[..at]) {
            return Err(misplaced());
        }
        out.push_str(&rest[..at]);
        let after = &rest[at + PREFIX.len()..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        let key = &after[..end];
        if key.is_empty() {
            return Err(misplaced());
        }
        let value = resolve(key, dest, path, place, vault)?;
        if value.is_empty() || !check(&value) {
            return Err(Refusal::Unavailable { key: key.into() });
        }
        out.push_str(&value);
        used.push(value);
        rest = &after[end..];
    }
    if mentions(rest) {
        return Err(misplaced());
    }
    out.push_str(rest);
    Ok(out)
}

/// The value of `key`, if it may go to `dest` at `path`.
fn resolve(
    key: &str,
    dest: &Destination<'_>,
    path: &str,
    place: Place<'_>,
    vault: &[Credential],
) -> Result<String, Refusal> {
    let Some(c) = vault.iter().find(|c| c.key == key) else {
        return Err(Refusal::Unavailable { key: key.into() });
    };
    let bound = c.bindings.iter().any(|b| {
        b.port == dest.port
            && (b.scheme == "https") == dest.tls
            && HostPattern::parse(&b.host).is_ok_and(|p| p.matches(dest.host))
            && (b.path.is_empty()
                || b.path == "/**"
                || b.path == "**"
                || path_matches(&b.path, path))
            && match place {
                Place::Header(h) => b.headers.iter().any(|x| x.eq_ignore_ascii_case(h)),
                Place::Query(q) => b.query.iter().any(|x| x == q),
                Place::Path => b.in_path,
            }
    });
    // The program sending it, not an ancestor: a tool an agent runs (its shell) is a
    // descendant of the agent.
    let program = c.binaries.is_empty()
        || c.binaries.iter().any(|pat| {
            dest.chain
                .first()
                .is_some_and(|exe| binary_matches(pat, exe))
        });
    if !(bound && program) {
        return Err(Refusal::Mismatch {
            key: key.into(),
            provider: c.provider.clone(),
        });
    }
    Ok(c.value.clone())
}

/// No byte a header value, a query or a path may not carry.
fn header_safe(v: &str) -> bool {
    !v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0)
}

fn segment_safe(v: &str) -> bool {
    header_safe(v) && !v.contains(['/', '\\', '?', '#']) && !v.contains("..")
}

/// Swap the placeholders of a request head in place. Returns the values swapped in
/// (to redact them from the response), or why the request must be refused. A head
/// without placeholders is left untouched.
pub fn rewrite(
    parts: &mut Parts,
    dest: &Destination<'_>,
    vault: &[Credential],
) -> Result<Vec<String>, Refusal> {
    let mut used = Vec::new();
    let raw_path = parts.uri.path().to_string();
    let raw_query = parts.uri.query().map(str::to_string);
    let decoded_path = percent_decode_str(&raw_path)
        .decode_utf8_lossy()
        .into_owned();
    let carries = mentions(&decoded_path)
        || raw_query
            .as_deref()
            .is_some_and(|q| mentions(&percent_decode_str(q).decode_utf8_lossy()))
        || parts.headers.iter().any(|(k, v)| {
            let t = String::from_utf8_lossy(v.as_bytes());
            mentions(k.as_str()) || mentions(&t) || basic(&t).is_some_and(|d| mentions(&d))
        });
    if !carries {
        return Ok(used);
    }
    if !dest.inspected {
        return Err(Refusal::Misplaced {
            place: "a request to an endpoint the proxy does not inspect (protocol: rest)".into(),
        });
    }
    // Bindings are matched against the canonical path (`/v1/../api` is `/api`), with
    // placeholders still in it: the glob is about the endpoint, not the secret.
    let Ok(canonical) = openshell_policy::l7::canonical_path(&raw_path, false) else {
        return Err(Refusal::Misplaced {
            place: "a path that is not canonical".into(),
        });
    };
    // And the path sent must be that canonical one: servers that read `..;`, `\` or
    // `%5C` as separators, or resolve dot segments, would otherwise serve another
    // path than the one the binding allowed.
    let plain = percent_decode_str(&raw_path)
        .decode_utf8_lossy()
        .into_owned();
    if plain != canonical
        || raw_path.contains([';', '\\'])
        || ["%5c", "%25", "%00", "%2f"]
            .iter()
            .any(|e| raw_path.to_ascii_lowercase().contains(e))
    {
        return Err(Refusal::Misplaced {
            place:
                "a path that is not in canonical form (dot segments, `;`, `\\`, escaped separators)"
                    .into(),
        });
    }
    let decoded_path = canonical;
    let mut new_path = None;
    if mentions(&decoded_path) {
        let mut segs = Vec::new();
        for seg in raw_path.split('/') {
            let d = percent_decode_str(seg).decode_utf8_lossy();
            if d.contains(PREFIX) {
                let s = swap_all(
                    &d,
                    (dest, &decoded_path, Place::Path),
                    vault,
                    &mut used,
                    &segment_safe,
                )?;
                segs.push(utf8_percent_encode(&s, SEGMENT).to_string());
            } else if mentions(&d) {
                return Err(Refusal::Misplaced {
                    place: "the path".into(),
                });
            } else {
                segs.push(seg.to_string());
            }
        }
        new_path = Some(segs.join("/"));
    }
    let mut new_query = None;
    if let Some(q) = &raw_query
        && mentions(&percent_decode_str(q).decode_utf8_lossy())
    {
        let mut pairs = Vec::new();
        for pair in q.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if mentions(&percent_decode_str(k).decode_utf8_lossy()) {
                return Err(Refusal::Misplaced {
                    place: "a query parameter name".into(),
                });
            }
            let dv = percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned();
            // Only a whole value, never inside a longer one an API could echo.
            if dv.starts_with(PREFIX)
                && dv[PREFIX.len()..]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                let name = percent_decode_str(k).decode_utf8_lossy().into_owned();
                let s = swap_all(
                    &dv,
                    (dest, &decoded_path, Place::Query(&name)),
                    vault,
                    &mut used,
                    &header_safe,
                )?;
                pairs.push(format!("{k}={}", utf8_percent_encode(&s, SEGMENT)));
            } else if mentions(&dv) {
                return Err(Refusal::Misplaced {
                    place: "a query parameter".into(),
                });
            } else {
                pairs.push(pair.to_string());
            }
        }
        new_query = Some(pairs.join("&"));
    }
    for (name, value) in parts.headers.iter_mut() {
        if mentions(name.as_str()) {
            return Err(Refusal::Misplaced {
                place: "a header name".into(),
            });
        }
        let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
        if !mentions(&text) && !basic(&text).is_some_and(|d| mentions(&d)) {
            continue;
        }
        let swapped = header_value(
            &text,
            (dest, &decoded_path, Place::Header(name.as_str())),
            vault,
            &mut used,
        )
        .map_err(|e| match e {
            Refusal::Misplaced { .. } => Refusal::Misplaced {
                place: format!("header {name}"),
            },
            other => other,
        })?;
        *value = HeaderValue::from_str(&swapped).map_err(|_| Refusal::Misplaced {
            place: format!("header {name}"),
        })?;
        value.set_sensitive(true);
    }
    if new_path.is_some() || new_query.is_some() {
        let path = new_path.unwrap_or(raw_path);
        let pq = match new_query.or(raw_query) {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let mut up = parts.uri.clone().into_parts();
        up.path_and_query = Some(pq.parse().map_err(|_| Refusal::Misplaced {
            place: "the request target".into(),
        })?);
        parts.uri = hyper::Uri::from_parts(up).map_err(|_| Refusal::Misplaced {
            place: "the request target".into(),
        })?;
    }
    Ok(used)
}

/// One header value: the placeholder itself, `<scheme> <placeholder>`, or Basic.
fn header_value(
    text: &str,
    at: (&Destination<'_>, &str, Place<'_>),
    vault: &[Credential],
    used: &mut Vec<String>,
) -> Result<String, Refusal> {
    let t = text.trim();
    let whole = |s: &str| {
        s.starts_with(PREFIX)
            && s[PREFIX.len()..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    if whole(t) {
        return swap_all(t, at, vault, used, &header_safe);
    }
    if let Some((scheme, rest)) = t.split_once(' ') {
        let rest = rest.trim();
        if let Some(decoded) = basic(t) {
            // The whole user or the whole password is a placeholder, nothing else.
            // (A user id has no `:`; a placeholder does: one as the user is read whole.)
            let (user, pass) = match decoded.strip_prefix(PREFIX) {
                Some(rest) => {
                    let end = PREFIX.len()
                        + rest
                            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                            .unwrap_or(rest.len());
                    let after = &decoded[end..];
                    match after.strip_prefix(':') {
                        Some(p) => (&decoded[..end], p),
                        None if after.is_empty() => (&decoded[..end], ""),
                        None => (decoded.as_str(), "x"),
                    }
                }
                None => decoded.split_once(':').unwrap_or((decoded.as_str(), "")),
            };
            let fits = |part: &str| !mentions(part) || whole(part);
            let straddles = decoded.matches(PREFIX).count()
                != user.matches(PREFIX).count() + pass.matches(PREFIX).count();
            if !decoded.contains(PREFIX) || straddles || !fits(user) || !fits(pass) {
                return Err(Refusal::Misplaced {
                    place: String::new(),
                });
            }
            let s = swap_all(&decoded, at, vault, used, &header_safe)?;
            return Ok(format!(
                "{scheme} {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            ));
        }
        if whole(rest) && !mentions(scheme) {
            let s = swap_all(rest, at, vault, used, &header_safe)?;
            return Ok(format!("{scheme} {s}"));
        }
    }
    Err(Refusal::Misplaced {
        place: String::new(),
    })
}

/// The decoded `user:password` of a `Basic` value.
fn basic(value: &str) -> Option<String> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
}

/// Response headers that carry a swapped value back (an echoing upstream) get the
/// placeholder instead: the sandbox never reads the secret.
pub fn redact_response(headers: &mut hyper::HeaderMap, used: &[String], vault: &[Credential]) {
    if used.is_empty() {
        return;
    }
    // Each value as it was sent: as is, and percent-encoded (query, path).
    let forms: Vec<(String, String)> = vault
        .iter()
        .filter(|c| used.contains(&c.value) && !c.value.is_empty())
        .flat_map(|c| {
            let ph = placeholder(&c.key);
            let enc = utf8_percent_encode(&c.value, SEGMENT).to_string();
            [(c.value.clone(), ph.clone()), (enc, ph)]
        })
        .collect();
    let mut doomed = Vec::new();
    for (name, v) in headers.iter_mut() {
        let text = String::from_utf8_lossy(v.as_bytes()).into_owned();
        let mut out = text.clone();
        for (value, ph) in &forms {
            out = out.replace(value.as_str(), ph);
        }
        if out != text {
            match HeaderValue::from_str(&out) {
                Ok(nv) => *v = nv,
                Err(_) => doomed.push(name.clone()),
            }
        }
    }
    // A header that cannot be rebuilt without the value goes (fail closed).
    for name in doomed {
        headers.remove(name);
    }
}

/// The proxy's live set of credentials (replaced whole on rotation).
#[derive(Default)]
pub struct Vault(std::sync::RwLock<Arc<Vec<Credential>>>);

impl Vault {
    /// The current credentials.
    pub fn get(&self) -> Arc<Vec<Credential>> {
        self.0.read().map(|g| g.clone()).unwrap_or_default()
    }

    /// Replace them (rotation, a provider removed).
    pub fn set(&self, creds: Vec<Credential>) {
        if let Ok(mut g) = self.0.write() {
            *g = Arc::new(creds);
        }
    }

    /// Replace one provider's credentials, leaving the others.
    pub fn set_provider(&self, provider: &str, creds: Vec<Credential>) {
        if let Ok(mut g) = self.0.write() {
            let mut all: Vec<Credential> = g
                .iter()
                .filter(|c| c.provider != provider)
                .cloned()
                .collect();
            all.extend(creds.into_iter().filter(|c| c.provider == provider));
            *g = Arc::new(all);
        }
    }
}

#[cfg(test)]
mod tests;
