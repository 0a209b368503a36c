//! L7 (`protocol: rest`) request decisions: canonical paths, path and query globs,
//! `access` presets, `rules` and `deny_rules` (deny beats allow).
//!
//! Pure. The proxy hands over the method, the raw path and the raw query of each
//! request on an inspected connection; the answer says which rule allowed it or why not.

use std::collections::BTreeMap;

use crate::engine::binary_matches;
use crate::schema::{Access, Endpoint, RequestMatch};

/// Methods each preset allows.
pub fn preset_allows(access: Access, method: &str) -> bool {
    let read = ["GET", "HEAD", "OPTIONS"];
    match access {
        Access::ReadOnly => read.contains(&method),
        Access::ReadWrite => read.contains(&method) || ["POST", "PUT", "PATCH"].contains(&method),
        Access::Full => true,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

/// Canonicalise a request path: percent-decode unreserved characters (others stay
/// encoded, upper-case), refuse an encoded `/` unless allowed, collapse `//`, resolve
/// `.` and `..` (never above the root). The result starts with `/`.
pub fn canonical_path(raw: &str, allow_encoded_slash: bool) -> Result<String, String> {
    if !raw.starts_with('/') {
        return Err(format!("path {raw:?} does not start with /"));
    }
    let b = raw.as_bytes();
    let mut decoded = String::with_capacity(raw.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = raw.get(i + 1..i + 3).ok_or("truncated percent escape")?;
            let v =
                u8::from_str_radix(hex, 16).map_err(|_| format!("bad percent escape %{hex}"))?;
            if v == b'/' && !allow_encoded_slash {
                return Err("encoded '/' (%2F) in the path".into());
            }
            if unreserved(v) {
                decoded.push(v as char);
            } else {
                decoded.push_str(&format!("%{v:02X}"));
            }
            i += 3;
        } else {
            if b[i] < 0x21 || b[i] == 0x7f {
                return Err("control character or space in the path".into());
            }
            decoded.push(b[i] as char);
            i += 1;
        }
    }
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let trailing = decoded.ends_with('/') && !out.is_empty();
    let mut p = format!("/{}", out.join("/"));
    if trailing {
        p.push('/');
    }
    Ok(p)
}

/// Path glob: `*` within one segment, `**` across segments.
pub fn path_matches(glob: &str, path: &str) -> bool {
    if glob == "*" || glob == "**" || glob == "/**" {
        return true;
    }
    binary_matches(glob, path)
}

fn query_pairs(query: &str) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        m.entry(decode_lossy(k)).or_default().push(decode_lossy(v));
    }
    m
}

fn decode_lossy(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            s.get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok()),
        ) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn value_matches(glob: &str, v: &str) -> bool {
    let pieces: Vec<&str> = glob.split('*').collect();
    if pieces.len() == 1 {
        return glob == v;
    }
    let mut rest = v;
    for (i, p) in pieces.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(p) else {
                return false;
            };
            rest = r;
        } else if i == pieces.len() - 1 {
            return rest.ends_with(p);
        } else {
            let Some(at) = rest.find(p) else { return false };
            rest = &rest[at + p.len()..];
        }
    }
    true
}

/// Does one matcher cover the request?
pub fn request_matches(m: &RequestMatch, method: &str, path: &str, query: &str) -> bool {
    let method_ok = m
        .method
        .as_deref()
        .is_none_or(|x| x == "*" || x.eq_ignore_ascii_case(method));
    let path_ok = m.path.as_deref().is_none_or(|g| path_matches(g, path));
    let q = query_pairs(query);
    let query_ok = m.query.iter().all(|(k, glob)| {
        q.get(k)
            .is_some_and(|vs| vs.iter().any(|v| value_matches(glob, v)))
    });
    method_ok && path_ok && query_ok
}

/// The decision for one request on an inspected endpoint: `Ok(rule)` names what allowed
/// it, `Err((rule, reason))` what denied it.
pub fn decide_request(
    ep: &Endpoint,
    method: &str,
    raw_path: &str,
    query: &str,
) -> Result<String, (String, String)> {
    let path =
        canonical_path(raw_path, ep.allow_encoded_slash).map_err(|e| ("path".to_string(), e))?;
    for (i, d) in ep.deny_rules.iter().enumerate() {
        if request_matches(d, method, &path, query) {
            return Err((
                format!("deny_rules[{i}]"),
                "a deny rule matches this request".into(),
            ));
        }
    }
    if let Some(a) = ep.access {
        if preset_allows(a, method) {
            return Ok(format!("access:{}", serde_name(a)));
        }
        return Err((
            format!("access:{}", serde_name(a)),
            format!("{method} is not allowed by access {}", serde_name(a)),
        ));
    }
    for (i, r) in ep.rules.iter().enumerate() {
        if request_matches(&r.allow, method, &path, query) {
            return Ok(format!("rules[{i}]"));
        }
    }
    Err(("rules".into(), "no rule allows this request".into()))
}

fn serde_name(a: Access) -> &'static str {
    match a {
        Access::ReadOnly => "read-only",
        Access::ReadWrite => "read-write",
        Access::Full => "full",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Rule;

    #[test]
    fn canonical_paths() {
        assert_eq!(canonical_path("/a//b/./c/../d", false).unwrap(), "/a/b/d");
        assert_eq!(canonical_path("/%61pi/v1", false).unwrap(), "/api/v1");
        assert_eq!(canonical_path("/../../etc", false).unwrap(), "/etc");
        assert_eq!(canonical_path("/a%20b", false).unwrap(), "/a%20b");
        assert_eq!(canonical_path("/x/", false).unwrap(), "/x/");
        assert!(canonical_path("/a%2Fb", false).is_err());
        assert_eq!(canonical_path("/a%2fb", true).unwrap(), "/a%2Fb");
        assert!(canonical_path("/a%zz", false).is_err());
        assert!(canonical_path("relative", false).is_err());
        // Encoded dots are dots: no traversal through %2e%2e.
        assert_eq!(canonical_path("/a/%2e%2e/b", false).unwrap(), "/b");
    }

    fn ep(yaml_rules: Vec<Rule>, deny: Vec<RequestMatch>, access: Option<Access>) -> Endpoint {
        Endpoint {
            host: "api.x.com".into(),
            port: Some(443),
            rules: yaml_rules,
            deny_rules: deny,
            access,
            ..Default::default()
        }
    }

    fn m(method: &str, path: &str) -> RequestMatch {
        RequestMatch {
            method: Some(method.into()),
            path: Some(path.into()),
            query: BTreeMap::new(),
        }
    }

    #[test]
    fn presets() {
        let e = ep(vec![], vec![], Some(Access::ReadOnly));
        assert!(decide_request(&e, "GET", "/x", "").is_ok());
        assert!(decide_request(&e, "POST", "/x", "").is_err());
        let e = ep(vec![], vec![], Some(Access::ReadWrite));
        assert!(decide_request(&e, "PATCH", "/x", "").is_ok());
        assert!(decide_request(&e, "DELETE", "/x", "").is_err());
        assert!(
            decide_request(&ep(vec![], vec![], Some(Access::Full)), "DELETE", "/x", "").is_ok()
        );
    }

    #[test]
    fn rules_paths_queries_and_deny_precedence() {
        let rules = vec![
            Rule {
                allow: m("GET", "/**/info/refs*"),
            },
            Rule {
                allow: m("POST", "/**/git-upload-pack"),
            },
            Rule {
                allow: RequestMatch {
                    method: Some("GET".into()),
                    path: Some("/search".into()),
                    query: [("q".to_string(), "rust*".to_string())].into(),
                },
            },
            Rule {
                allow: m("*", "/public/*"),
            },
        ];
        let e = ep(rules, vec![m("*", "/public/secret")], None);
        assert_eq!(
            decide_request(&e, "GET", "/o/r.git/info/refs", "service=x").unwrap(),
            "rules[0]"
        );
        assert!(decide_request(&e, "POST", "/o/r.git/git-upload-pack", "").is_ok());
        assert!(decide_request(&e, "POST", "/o/r.git/git-receive-pack", "").is_err());
        assert!(decide_request(&e, "GET", "/search", "q=rustls&x=1").is_ok());
        assert!(decide_request(&e, "GET", "/search", "q=go").is_err());
        assert!(decide_request(&e, "GET", "/search", "").is_err());
        assert!(decide_request(&e, "DELETE", "/public/a", "").is_ok());
        // `*` stays in one segment.
        assert!(decide_request(&e, "GET", "/public/a/b", "").is_err());
        // Deny beats allow, also when reached through dot segments or encoding.
        assert_eq!(
            decide_request(&e, "GET", "/public/secret", "")
                .unwrap_err()
                .0,
            "deny_rules[0]"
        );
        assert!(decide_request(&e, "GET", "/public/x/../secret", "").is_err());
        assert!(decide_request(&e, "GET", "/public/%73ecret", "").is_err());
        // No access and no rules: nothing.
        assert!(decide_request(&ep(vec![], vec![], None), "GET", "/", "").is_err());
    }
}
