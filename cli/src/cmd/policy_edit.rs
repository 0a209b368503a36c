//! `policy update`'s edits on a policy, as pure functions: add an endpoint for a set
//! of binaries, remove an endpoint. The result is validated by the caller in full
//! (`Policy::parse` of its YAML) before it goes anywhere.

use openshell_policy::{Binary, Endpoint, NetworkPolicy, Policy};

/// Parse `host:port[:access[:protocol[:enforcement]]]` into an endpoint.
pub fn parse_endpoint(spec: &str) -> Result<Endpoint, String> {
    let bad = |why: String| {
        format!(
            "--add-endpoint {spec:?}: {why} (expected host:port[:access[:protocol[:enforcement]]])"
        )
    };
    let mut parts = spec.split(':');
    let host = parts
        .next()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("no host".into()))?;
    let port: u16 = parts
        .next()
        .and_then(|p| p.parse().ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| bad("no valid port".into()))?;
    let mut v = serde_json::json!({ "host": host, "port": port });
    for key in ["access", "protocol", "enforcement"] {
        match parts.next() {
            Some("") | None => {}
            Some(val) => v[key] = val.into(),
        }
    }
    if parts.next().is_some() {
        return Err(bad("too many fields".into()));
    }
    serde_json::from_value(v).map_err(|e| bad(e.to_string()))
}

/// Parse `host:port` for --remove-endpoint.
pub fn parse_host_port(spec: &str) -> Result<(String, u16), String> {
    match spec.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() => p
            .parse()
            .map(|p| (h.to_string(), p))
            .map_err(|_| format!("--remove-endpoint {spec:?}: bad port; expected host:port")),
        _ => Err(format!("--remove-endpoint {spec:?}: expected host:port")),
    }
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
            parse_endpoint("x:80:full:rest:enforce:extra")
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
