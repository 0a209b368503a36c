//! Semantic validation of a parsed policy, with source locations.
//!
//! serde catches shape errors (unknown keys, wrong types) with a line and column; this
//! module catches what is well-formed but wrong (a root user, `..` in a path, `/`
//! writable, a bad host pattern) and finds where it is written so the user gets
//! `file:line:col:` too. Pure: works on the source text already read by the caller.

use std::fmt;
use std::net::IpAddr;

use crate::schema::{IdSpec, Policy, Protocol};

/// One problem found in a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Dotted path of the offending field (`filesystem_policy.read_write[1]`).
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
    /// 1-based line and column in the source, when it could be found.
    pub location: Option<(usize, usize)>,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some((l, c)) => write!(f, "{l}:{c}: {}: {}", self.field, self.message),
            None => write!(f, "{}: {}", self.field, self.message),
        }
    }
}

/// Check everything serde cannot. Returns every issue, not just the first.
pub fn validate(policy: &Policy, source: &str) -> Vec<Issue> {
    validate_with(policy, source, false)
}

/// [`validate`], optionally allowing the `_provider_` entries openshell itself adds
/// (a sandbox's stored or active policy).
pub fn validate_with(policy: &Policy, source: &str, provider_entries: bool) -> Vec<Issue> {
    let mut v = Validator {
        source,
        issues: Vec::new(),
    };
    if !provider_entries {
        for key in policy.network_policies.keys() {
            if key.starts_with(crate::PROVIDER_PREFIX) {
                v.push(
                    &["network_policies", key],
                    None,
                    format!("network_policies.{key}"),
                    format!(
                        "the `{}` prefix is reserved for the entries openshell adds for providers (`--provider`); rename this entry",
                        crate::PROVIDER_PREFIX
                    ),
                );
            }
        }
    }
    v.run(policy);
    // Report in file order, so the first line is the first problem in the file.
    v.issues
        .sort_by_key(|i| i.location.unwrap_or((usize::MAX, 0)));
    v.issues
}

struct Validator<'a> {
    source: &'a str,
    issues: Vec<Issue>,
}

impl Validator<'_> {
    fn push(&mut self, keys: &[&str], value: Option<&str>, field: String, message: String) {
        let location = locate(self.source, keys, value);
        self.issues.push(Issue {
            field,
            message,
            location,
        });
    }

    fn run(&mut self, p: &Policy) {
        if p.version != 1 {
            self.push(
                &["version"],
                None,
                "version".into(),
                format!(
                    "unsupported version {}; only `version: 1` exists",
                    p.version
                ),
            );
        }
        if p.network_middlewares.is_some() {
            self.push(
                &["network_middlewares"],
                None,
                "network_middlewares".into(),
                "custom network middlewares are not supported yet; remove this section".into(),
            );
        }
        if let Some(fs) = &p.filesystem_policy {
            for (list, name) in [(&fs.read_only, "read_only"), (&fs.read_write, "read_write")] {
                for (i, path) in list.iter().enumerate() {
                    if let Some(msg) = path_problem(path, name == "read_write") {
                        self.push(
                            &["filesystem_policy", name],
                            Some(path),
                            format!("filesystem_policy.{name}[{i}]"),
                            msg,
                        );
                    }
                }
            }
        }
        if let Some(proc_) = &p.process {
            for (spec, name) in [
                (&proc_.run_as_user, "run_as_user"),
                (&proc_.run_as_group, "run_as_group"),
            ] {
                if let Some(msg) = spec.as_ref().and_then(id_problem) {
                    self.push(&["process", name], None, format!("process.{name}"), msg);
                }
            }
        }
        for (key, np) in &p.network_policies {
            self.network_policy(key, np);
        }
    }

    fn network_policy(&mut self, key: &str, np: &crate::schema::NetworkPolicy) {
        for (i, ep) in np.endpoints.iter().enumerate() {
            let field = format!("network_policies.{key}.endpoints[{i}]");
            let keys = ["network_policies", key, "endpoints"];
            if let Err(msg) = crate::host::HostPattern::parse(&ep.host) {
                self.push(&keys, Some(&ep.host), format!("{field}.host"), msg);
            }
            if ep.port.is_none() && ep.ports.is_empty() {
                self.push(
                    &keys,
                    Some(&ep.host),
                    field.clone(),
                    "no port: add `port: N` or `ports: [..]`".into(),
                );
            }
            if ep.port == Some(0) || ep.ports.contains(&0) {
                self.push(
                    &keys,
                    Some(&ep.host),
                    field.clone(),
                    "port 0 is not a valid port".into(),
                );
            }
            let is_rest = ep.protocol == Some(Protocol::Rest);
            if !is_rest
                && (ep.access.is_some() || !ep.rules.is_empty() || !ep.deny_rules.is_empty())
            {
                self.push(
                    &keys,
                    Some(&ep.host),
                    field.clone(),
                    "`access`, `rules` and `deny_rules` need `protocol: rest`".into(),
                );
            }
            if ep.access.is_some() && !ep.rules.is_empty() {
                self.push(
                    &keys,
                    Some(&ep.host),
                    field.clone(),
                    "use either `access` or `rules`, not both".into(),
                );
            }
            for (j, m) in ep
                .rules
                .iter()
                .map(|r| &r.allow)
                .chain(ep.deny_rules.iter())
                .enumerate()
            {
                if let Some(method) = &m.method
                    && !(method == "*" || method.bytes().all(|b| b.is_ascii_uppercase()))
                {
                    self.push(
                        &keys,
                        Some(method),
                        format!("{field}.rules[{j}].method"),
                        format!("bad method `{method}`: use an upper-case HTTP method or `*`"),
                    );
                }
                if let Some(path) = &m.path
                    && !path.starts_with('/')
                    && path != "*"
                    && path != "**"
                {
                    self.push(
                        &keys,
                        Some(path),
                        format!("{field}.rules[{j}].path"),
                        format!("bad path `{path}`: a path glob starts with `/`"),
                    );
                }
            }
            for cidr in &ep.allowed_ips {
                if let Err(msg) = parse_cidr(cidr) {
                    self.push(&keys, Some(cidr), format!("{field}.allowed_ips"), msg);
                }
            }
        }
        for (i, b) in np.binaries.iter().enumerate() {
            if !b.path.starts_with('/') || b.path.split('/').any(|c| c == "..") {
                self.push(
                    &["network_policies", key, "binaries"],
                    Some(&b.path),
                    format!("network_policies.{key}.binaries[{i}].path"),
                    format!("`{}` must be an absolute path or glob without `..`", b.path),
                );
            }
        }
    }
}

/// Why a Landlock path is unacceptable, if it is.
pub(crate) fn path_problem(path: &str, writable: bool) -> Option<String> {
    if !path.starts_with('/') {
        return Some(format!(
            "`{path}` is not absolute: write it starting with `/`"
        ));
    }
    if path.split('/').any(|c| c == ".." || c == ".") {
        return Some(format!(
            "`{path}` contains `.` or `..`: write the plain path"
        ));
    }
    if path.contains('\0') {
        return Some("path contains a NUL byte".into());
    }
    // /proc/<pid|self|thread-self>/{root,cwd,exe,fd,map_files,...}: magic links that
    // lead anywhere (`/proc/self/root` is `/`); a rule must name the real path.
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    if comps.first() == Some(&"proc")
        && comps.iter().skip(2).any(|c| {
            matches!(
                *c,
                "root" | "cwd" | "exe" | "fd" | "map_files" | "task" | "ns"
            )
        })
    {
        return Some(format!(
            "`{path}` goes through a /proc magic link: name the real path instead"
        ));
    }
    if writable && path.trim_end_matches('/').is_empty() {
        return Some("`/` can never be read_write: list the directories that need writing".into());
    }
    None
}

/// Why a user/group spec is unacceptable, if it is.
fn id_problem(spec: &IdSpec) -> Option<String> {
    match spec {
        IdSpec::Id(0) => Some("id 0 (root) is never allowed: use `sandbox` or an id > 0".into()),
        IdSpec::Id(n) if *n < 0 || *n > i64::from(crate::MAX_ID) => Some(format!(
            "id {n} is out of range: ids inside a sandbox are 1..={} (larger ids are unmapped, and -1 means \"unchanged\" to the kernel)",
            crate::MAX_ID
        )),
        IdSpec::Id(_) => None,
        IdSpec::Name(n) if n == "sandbox" => None,
        IdSpec::Name(n) if n == "root" => {
            Some("`root` is never allowed: use `sandbox` or an id > 0".into())
        }
        IdSpec::Name(n) => Some(format!("unknown name `{n}`: use `sandbox` or a numeric id")),
    }
}

/// Parse `addr/prefix` (a bare address means a single host).
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("`{s}` is not a CIDR (expected e.g. 10.0.0.0/8)"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("`{s}`: prefix must be 0..={max}"))?,
        None => max,
    };
    Ok((ip, prefix))
}

/// Find where `keys` (nested mapping keys, in order) and then `value` are written.
/// A text search, good enough to point a human at the right line.
pub fn locate(source: &str, keys: &[&str], value: Option<&str>) -> Option<(usize, usize)> {
    let mut pos = 0;
    let mut found = None;
    for key in keys {
        let at = find_key(&source[pos..], key)? + pos;
        found = Some(at);
        pos = at + key.len();
    }
    if let Some(v) = value
        && let Some(at) = source[pos..].find(v)
    {
        found = Some(at + pos);
    }
    found.map(|idx| line_col(source, idx))
}

fn find_key(hay: &str, key: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = hay[from..].find(key) {
        let at = from + i;
        let rest = hay[at + key.len()..].trim_start_matches(['"', '\'']);
        let before_ok = at == 0 || !hay.as_bytes()[at - 1].is_ascii_alphanumeric();
        if before_ok && rest.trim_start_matches(' ').starts_with(':') {
            return Some(at);
        }
        from = at + key.len();
    }
    None
}

/// 1-based line and column of a byte index.
pub fn line_col(source: &str, idx: usize) -> (usize, usize) {
    let before = &source[..idx];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(idx, |nl| idx - nl - 1) + 1;
    (line, col)
}
