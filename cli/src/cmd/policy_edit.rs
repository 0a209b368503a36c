//! `policy update`'s edits on a policy, as pure functions: add an endpoint (to the
//! network policy of the same binaries, or the one `--rule-name` names), remove an
//! endpoint or a whole network policy, add L7 allow and deny rules. Specs are parsed
//! completely (every error names the flag and the spec) before the policy is touched;
//! the result is validated by the caller in full (`Policy::parse` of its YAML) before
//! it goes anywhere. The operations run in upstream's order: add endpoints, remove
//! endpoints, remove rules, add allow rules, add deny rules.

use openshell_policy::{Binary, Endpoint, NetworkPolicy, Policy, RequestMatch, Rule};

/// What `policy update` should change, as given on the command line.
pub struct Update {
    /// `host:port[:access[:protocol[:enforcement[:options]]]]` to add.
    pub add: Vec<String>,
    /// `host:port` to remove.
    pub remove: Vec<String>,
    /// `host:port:METHOD:glob` allow rules.
    pub allow: Vec<String>,
    /// `host:port:METHOD:glob` deny rules.
    pub deny: Vec<String>,
    /// Network policies (keys) to remove.
    pub remove_rules: Vec<String>,
    /// Programs for the added endpoints.
    pub binaries: Vec<String>,
    /// The network policy the added endpoint goes into.
    pub rule_name: Option<String>,
    /// Print the result only.
    pub dry_run: bool,
}

/// A parsed `policy update`: every spec checked.
pub struct Plan {
    adds: Vec<Endpoint>,
    binaries: Vec<String>,
    rule_name: Option<String>,
    removes: Vec<(String, u16)>,
    remove_rules: Vec<String>,
    allows: Vec<(String, u16, RequestMatch)>,
    denies: Vec<(String, u16, RequestMatch)>,
}

impl Update {
    /// Parse every spec; refuse flag combinations that mean nothing.
    pub fn plan(&self) -> Result<Plan, String> {
        if self.add.is_empty()
            && self.remove.is_empty()
            && self.allow.is_empty()
            && self.deny.is_empty()
            && self.remove_rules.is_empty()
        {
            return Err(
                "give --add-endpoint, --remove-endpoint, --add-allow, --add-deny or --remove-rule"
                    .into(),
            );
        }
        if self.binaries.iter().any(|b| b.trim().is_empty()) {
            return Err("--binary values must not be empty".into());
        }
        if !self.binaries.is_empty() && self.add.is_empty() {
            return Err("--binary only goes with --add-endpoint".into());
        }
        let rule_name = self.rule_name.as_deref().map(str::trim);
        match rule_name {
            Some("") => return Err("--rule-name must not be empty".into()),
            Some(_) if self.add.len() != 1 => {
                return Err("--rule-name goes with exactly one --add-endpoint".into());
            }
            Some(k) if k.starts_with(openshell_policy::PROVIDER_PREFIX) => {
                return Err(format!(
                    "--rule-name {k}: names starting with {} belong to providers",
                    openshell_policy::PROVIDER_PREFIX
                ));
            }
            _ => {}
        }
        if self.add.iter().any(|_| self.binaries.is_empty()) && rule_name.is_none() {
            return Err("--add-endpoint needs --binary PATH (which programs may use it), or --rule-name NAME of a network policy whose programs it joins".into());
        }
        let mut binaries: Vec<String> = self.binaries.iter().map(|b| b.trim().into()).collect();
        binaries.sort_unstable();
        binaries.dedup();
        let l7 = |flag: &str, v: &[String]| -> Result<Vec<_>, String> {
            v.iter().map(|s| parse_l7_rule(flag, s)).collect()
        };
        Ok(Plan {
            adds: self
                .add
                .iter()
                .map(|a| parse_endpoint(a))
                .collect::<Result<_, _>>()?,
            binaries,
            rule_name: rule_name.map(str::to_string),
            removes: self
                .remove
                .iter()
                .map(|r| parse_host_port(r))
                .collect::<Result<_, _>>()?,
            remove_rules: self
                .remove_rules
                .iter()
                .map(|r| {
                    let r = r.trim();
                    if r.is_empty() {
                        Err("--remove-rule values must not be empty".to_string())
                    } else {
                        Ok(r.to_string())
                    }
                })
                .collect::<Result<_, _>>()?,
            allows: l7("--add-allow", &self.allow)?,
            denies: l7("--add-deny", &self.deny)?,
        })
    }
}

impl Plan {
    /// Apply the plan to `p`; returns a line per change. Fails (and `p` must then be
    /// thrown away) when a removal or a rule finds nothing to act on.
    pub fn apply(self, p: &mut Policy) -> Result<Vec<String>, String> {
        let mut done = Vec::new();
        for ep in self.adds {
            let what = format!("{}:{}", ep.host, ep.port.unwrap_or_default());
            let key = match &self.rule_name {
                Some(k) => add_to_named(p, ep, k, &self.binaries),
                None => add_endpoint(p, ep, &self.binaries),
            };
            done.push(format!("+ {what} in network policy {key}"));
        }
        for (host, port) in self.removes {
            if remove_endpoint(p, &host, port) == 0 {
                return Err(format!("no endpoint {host}:{port} in its policy"));
            }
            done.push(format!("- {host}:{port}"));
        }
        for key in self.remove_rules {
            if key.starts_with(openshell_policy::PROVIDER_PREFIX) {
                return Err(format!(
                    "network policy {key} belongs to a provider; detach the provider instead"
                ));
            }
            if p.network_policies.remove(&key).is_none() {
                return Err(format!("no network policy named {key}"));
            }
            done.push(format!("- network policy {key}"));
        }
        for (host, port, m) in self.allows {
            let what = format!("allow {} on {}", show(&m), host);
            for_endpoints(p, &host, port, "--add-allow", |e| {
                let r = Rule { allow: m.clone() };
                if !e.rules.contains(&r) {
                    e.rules.push(r);
                }
            })?;
            done.push(format!("+ {what}:{port}"));
        }
        for (host, port, m) in self.denies {
            let what = format!("deny {} on {}", show(&m), host);
            for_endpoints(p, &host, port, "--add-deny", |e| {
                if !e.deny_rules.contains(&m) {
                    e.deny_rules.push(m.clone());
                }
            })?;
            done.push(format!("+ {what}:{port}"));
        }
        Ok(done)
    }
}

fn show(m: &RequestMatch) -> String {
    format!(
        "{} {}",
        m.method.as_deref().unwrap_or("*"),
        m.path.as_deref().unwrap_or("**")
    )
}

/// Run `f` on every endpoint for `host:port` (in user network policies).
fn for_endpoints(
    p: &mut Policy,
    host: &str,
    port: u16,
    flag: &str,
    mut f: impl FnMut(&mut Endpoint),
) -> Result<(), String> {
    let mut n = 0;
    for (key, np) in &mut p.network_policies {
        if key.starts_with(openshell_policy::PROVIDER_PREFIX) {
            continue;
        }
        for e in np
            .endpoints
            .iter_mut()
            .filter(|e| e.host.eq_ignore_ascii_case(host))
            .filter(|e| e.port == Some(port) || e.ports.contains(&port))
        {
            f(e);
            n += 1;
        }
    }
    if n == 0 {
        return Err(format!(
            "{flag}: no endpoint {host}:{port} in its policy (add it first: --add-endpoint {host}:{port}::rest)"
        ));
    }
    Ok(())
}

fn field_error(flag: &str, spec: &str, why: &str, form: &str) -> String {
    format!("{flag} {spec:?}: {why} (expected {form})")
}

/// Parse a `host` segment: no spaces, no slash.
fn host_of(flag: &str, spec: &str, h: &str, form: &str) -> Result<String, String> {
    let h = h.trim();
    if h.is_empty() {
        return Err(field_error(flag, spec, "no host", form));
    }
    if h.contains(char::is_whitespace) || h.contains('/') {
        return Err(field_error(flag, spec, "the host has a space or '/'", form));
    }
    Ok(h.to_string())
}

/// Parse a `port` segment: 1..=65535, base 10.
fn port_of(flag: &str, spec: &str, p: Option<&str>, form: &str) -> Result<u16, String> {
    p.map(str::trim)
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| field_error(flag, spec, "no valid port (1-65535)", form))
}

/// Parse `host:port[:access[:protocol[:enforcement[:options]]]]` into an endpoint.
pub fn parse_endpoint(spec: &str) -> Result<Endpoint, String> {
    const FORM: &str = "host:port[:access[:protocol[:enforcement[:options]]]]";
    let flag = "--add-endpoint";
    let bad = |why: &str| field_error(flag, spec, why, FORM);
    let parts: Vec<&str> = spec.split(':').collect();
    if parts.len() > 6 {
        return Err(bad("too many fields"));
    }
    let host = host_of(flag, spec, parts[0], FORM)?;
    let port = port_of(flag, spec, parts.get(1).copied(), FORM)?;
    let field = |i: usize| parts.get(i).map_or("", |s| s.trim());
    let (access, protocol, enforcement, options) = (field(2), field(3), field(4), field(5));
    if parts.len() == 3 && access.is_empty() {
        return Err(bad("empty access field (leave it out if not needed)"));
    }
    if parts.len() == 6 && options.is_empty() {
        return Err(bad("empty options field (leave it out if not needed)"));
    }
    if !enforcement.is_empty() && protocol.is_empty() {
        return Err(bad("enforcement needs a protocol"));
    }
    match protocol {
        "" | "rest" | "tcp" => {}
        "websocket" => {
            return Err(bad(
                "protocol websocket is not a protocol of its own here: use rest (WebSocket upgrades of allowed GET requests are inspected under rest)",
            ));
        }
        "sql" => return Err(bad("protocol sql is not supported; use tcp for a database")),
        other => {
            return Err(bad(&format!(
                "unknown protocol {other:?}: rest or tcp (none = an uninspected tunnel)"
            )));
        }
    }
    let mut v = serde_json::json!({ "host": host, "port": port });
    for (key, val) in [
        ("access", access),
        ("protocol", protocol),
        ("enforcement", enforcement),
    ] {
        if !val.is_empty() {
            v[key] = val.into();
        }
    }
    let mut ep: Endpoint = serde_json::from_value(v).map_err(|e| bad(&e.to_string()))?;
    for opt in options.split(',').filter(|_| !options.is_empty()) {
        match opt.trim().split_once('=') {
            Some(("allowed-ip", cidr)) if !cidr.trim().is_empty() => {
                ep.allowed_ips.push(cidr.trim().to_string());
            }
            _ if opt.trim().is_empty() => return Err(bad("empty option")),
            _ => {
                let o = opt.trim();
                let why = match o {
                    "websocket-credential-rewrite"
                    | "request-body-credential-rewrite"
                    | "allow-uninspected-credentials" => format!(
                        "option {o} is not supported: credentials are placed in request headers only"
                    ),
                    _ => format!("unknown option {o:?}"),
                };
                return Err(bad(&format!("{why}; the options are: allowed-ip=CIDR")));
            }
        }
    }
    Ok(ep)
}

/// Parse `host:port:METHOD:path_glob` for --add-allow / --add-deny.
fn parse_l7_rule(flag: &str, spec: &str) -> Result<(String, u16, RequestMatch), String> {
    const FORM: &str = "host:port:METHOD:PATH_GLOB";
    let parts: Vec<&str> = spec.split(':').collect();
    if parts.len() != 4 {
        return Err(field_error(flag, spec, "not four fields", FORM));
    }
    let host = host_of(flag, spec, parts[0], FORM)?;
    let port = port_of(flag, spec, Some(parts[1]), FORM)?;
    let method = parts[2].trim();
    if method.is_empty() || !(method == "*" || method.chars().all(|c| c.is_ascii_alphabetic())) {
        return Err(field_error(
            flag,
            spec,
            "METHOD must be an HTTP method (GET, POST, ...) or *",
            FORM,
        ));
    }
    let path = parts[3].trim();
    if !(path.starts_with('/') || path == "**" || path.starts_with("**/")) {
        return Err(field_error(
            flag,
            spec,
            "the path glob must start with '/' or be '**'",
            FORM,
        ));
    }
    Ok((
        host,
        port,
        RequestMatch {
            method: Some(method.to_ascii_uppercase()),
            path: Some(path.to_string()),
            ..Default::default()
        },
    ))
}

/// Parse `host:port` for --remove-endpoint.
pub fn parse_host_port(spec: &str) -> Result<(String, u16), String> {
    const FORM: &str = "host:port";
    let flag = "--remove-endpoint";
    let parts: Vec<&str> = spec.split(':').collect();
    if parts.len() != 2 {
        return Err(field_error(flag, spec, "not two fields", FORM));
    }
    Ok((
        host_of(flag, spec, parts[0], FORM)?,
        port_of(flag, spec, Some(parts[1]), FORM)?,
    ))
}

/// Add `ep` to the network policy `key` (made if missing, with `binaries`; an existing
/// one keeps its programs and gains `binaries`). Returns `key`.
fn add_to_named(p: &mut Policy, ep: Endpoint, key: &str, binaries: &[String]) -> String {
    let np = p
        .network_policies
        .entry(key.to_string())
        .or_insert_with(|| NetworkPolicy {
            name: Some(key.to_string()),
            ..Default::default()
        });
    if !np.endpoints.contains(&ep) {
        np.endpoints.push(ep);
    }
    for b in binaries {
        if !np.binaries.iter().any(|x| &x.path == b) {
            np.binaries.push(Binary { path: b.clone() });
        }
    }
    key.to_string()
}

/// Add `ep` for exactly `binaries`: to the network policy with that binary set, or to a
/// new one named after the endpoint. Returns the policy's key.
pub fn add_endpoint(p: &mut Policy, ep: Endpoint, binaries: &[String]) -> String {
    let mut want: Vec<&str> = binaries.iter().map(String::as_str).collect();
    want.sort_unstable();
    want.dedup();
    let existing = p.network_policies.iter_mut().find(|(_, np)| {
        let mut have: Vec<&str> = np.binaries.iter().map(|b| b.path.as_str()).collect();
        have.sort_unstable();
        have.dedup();
        have == want
    });
    if let Some((key, np)) = existing {
        if !np.endpoints.contains(&ep) {
            np.endpoints.push(ep);
        }
        return key.clone();
    }
    let base: String = format!("cli_{}_{}", ep.host, ep.port.unwrap_or_default())
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let mut key = base.clone();
    let mut n = 2;
    while p.network_policies.contains_key(&key) {
        key = format!("{base}_{n}");
        n += 1;
    }
    p.network_policies.insert(
        key.clone(),
        NetworkPolicy {
            name: Some(key.clone()),
            endpoints: vec![ep],
            binaries: want
                .iter()
                .map(|b| Binary {
                    path: (*b).to_string(),
                })
                .collect(),
        },
    );
    key
}

/// Remove `host:port` from every network policy (a policy left without endpoints goes
/// too). Returns how many endpoints were changed.
pub fn remove_endpoint(p: &mut Policy, host: &str, port: u16) -> usize {
    let mut changed = 0;
    for np in p.network_policies.values_mut() {
        np.endpoints.retain_mut(|e| {
            if !e.host.eq_ignore_ascii_case(host) {
                return true;
            }
            if e.port == Some(port) {
                changed += 1;
                if e.ports.is_empty() {
                    return false;
                }
                e.port = None;
            }
            if let Some(i) = e.ports.iter().position(|x| *x == port) {
                changed += 1;
                e.ports.remove(i);
                return e.port.is_some() || !e.ports.is_empty();
            }
            true
        });
    }
    p.network_policies.retain(|_, np| !np.endpoints.is_empty());
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::parse(
            "version: 1\nnetwork_policies:\n  gh:\n    name: gh\n    endpoints:\n      - { host: api.github.com, port: 443 }\n      - { host: both.example, ports: [80, 443] }\n    binaries:\n      - { path: /usr/bin/git }\n",
        )
        .unwrap()
    }

    #[test]
    fn endpoints_parse_with_clear_errors() {
        let e = parse_endpoint("api.example:443:read-only:rest:audit").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("api.example", Some(443)));
        assert!(e.access.is_some() && e.protocol.is_some() && e.enforcement.is_some());
        assert!(parse_endpoint("x:0").unwrap_err().contains("no valid port"));
        assert!(parse_endpoint(":80").unwrap_err().contains("no host"));
        assert!(
            parse_endpoint("x:80:sometimes")
                .unwrap_err()
                .contains("unknown variant")
        );
        assert!(
            parse_endpoint("x:80:full:rest:enforce:allowed-ip=1.2.3.4/32:extra")
                .unwrap_err()
                .contains("too many")
        );
    }

    #[test]
    fn add_joins_the_policy_of_the_same_binaries_or_makes_one() {
        let mut p = policy();
        let k = add_endpoint(
            &mut p,
            parse_endpoint("github.com:443").unwrap(),
            &["/usr/bin/git".into()],
        );
        assert_eq!(k, "gh");
        assert_eq!(p.network_policies["gh"].endpoints.len(), 3);
        let k = add_endpoint(
            &mut p,
            parse_endpoint("pypi.org:443").unwrap(),
            &["/usr/bin/pip".into()],
        );
        assert_eq!(k, "cli_pypi_org_443");
        Policy::parse(&p.to_yaml()).expect("still valid");
    }

    fn update(add: &[&str], allow: &[&str], bins: &[&str], rule: Option<&str>) -> Update {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Update {
            add: v(add),
            remove: vec![],
            allow: v(allow),
            deny: vec![],
            remove_rules: vec![],
            binaries: v(bins),
            rule_name: rule.map(str::to_string),
            dry_run: false,
        }
    }

    #[test]
    fn plans_refuse_meaningless_combinations() {
        let err = |u: Update| u.plan().err().unwrap_or_default();
        assert!(err(update(&[], &[], &[], None)).contains("give --add-endpoint"));
        assert!(err(update(&["a:1"], &[], &[], None)).contains("needs --binary"));
        assert!(err(update(&["a:1", "b:2"], &[], &["/b"], Some("r"))).contains("exactly one"));
        assert!(err(update(&["a:1"], &[], &[" "], None)).contains("must not be empty"));
        assert!(err(update(&[], &["a:1:GET:/"], &["/b"], None)).contains("only goes with"));
        assert!(err(update(&["a:1"], &[], &[], Some("_provider_x"))).contains("providers"));
        for bad in ["a:1:GET", "a:0:GET:/", "a:1:G T:/", "a:1:GET:x", ":1:GET:/"] {
            assert!(
                err(update(&[], &[bad], &[], None)).contains("--add-allow"),
                "{bad}"
            );
        }
        for bad in [
            "a:1::websocket",
            "a:1::sql",
            "a:1:",
            "a:1:full:::",
            "a:1:full:rest:enforce:x=y",
            "a:1:::enforce",
            "a/b:1",
            "a:99999",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
        let e = parse_endpoint("a:1:::: allowed-ip=10.0.0.0/8,allowed-ip=10.1.0.0/16").unwrap();
        assert_eq!(e.allowed_ips, ["10.0.0.0/8", "10.1.0.0/16"]);
    }

    #[test]
    fn named_rules_and_l7_rules_apply_in_order() {
        let mut p = policy();
        // Without --binary, the endpoint joins the named policy with its programs.
        let done = update(
            &["api.github.com:8443::rest"],
            &["api.github.com:8443:post:/repos/**"],
            &[],
            Some("gh"),
        )
        .plan()
        .unwrap()
        .apply(&mut p)
        .unwrap();
        assert_eq!(done.len(), 2, "{done:?}");
        let gh = &p.network_policies["gh"];
        assert_eq!(gh.binaries.len(), 1);
        let ep = gh.endpoints.iter().find(|e| e.port == Some(8443)).unwrap();
        assert_eq!(ep.rules[0].allow.method.as_deref(), Some("POST"));
        Policy::parse(&p.to_yaml()).expect("still valid");
        // A rule for an endpoint that is not there changes nothing it reports.
        let mut u = update(&[], &["nowhere:1:GET:/"], &[], None);
        assert!(
            u.plan()
                .unwrap()
                .apply(&mut p)
                .unwrap_err()
                .contains("no endpoint nowhere:1")
        );
        u.allow.clear();
        u.remove_rules = vec!["gh".into()];
        u.plan().unwrap().apply(&mut p).unwrap();
        assert!(p.network_policies.is_empty());
    }

    #[test]
    fn remove_takes_ports_out_and_empty_policies_away() {
        let mut p = policy();
        assert_eq!(remove_endpoint(&mut p, "both.example", 80), 1);
        assert_eq!(p.network_policies["gh"].endpoints[1].ports, vec![443]);
        assert_eq!(remove_endpoint(&mut p, "nowhere", 1), 0);
        assert_eq!(remove_endpoint(&mut p, "both.example", 443), 1);
        assert_eq!(remove_endpoint(&mut p, "API.github.com", 443), 1);
        assert!(p.network_policies.is_empty());
    }
}
