//! Network decisions: which policy entry (if any) allows a connection to host:port by
//! a given executable, and whether a resolved address may be dialled (SSRF guard).
//!
//! Pure functions over a validated [`Policy`]; the proxy supplies the host, port, the
//! executable chain (the socket owner's exe, then its ancestors') and the addresses.

use std::net::IpAddr;

use crate::host::HostPattern;
use crate::schema::{Endpoint, Policy, Protocol};
use crate::validate::parse_cidr;

/// An allowed connection: which entry and endpoint allowed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant<'a> {
    /// The entry's key in `network_policies`.
    pub key: &'a str,
    /// The entry's display name (its key when unnamed).
    pub name: &'a str,
    /// The endpoint that matched.
    pub endpoint: &'a Endpoint,
    /// The binary pattern that matched.
    pub binary: &'a str,
}

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No entry lists this host and port.
    NoEndpoint,
    /// Some entry lists host:port, but not for this executable.
    WrongBinary,
}

impl Denial {
    /// The `reason` of deny answers and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Denial::NoEndpoint => "no policy allows this destination",
            Denial::WrongBinary => "destination allowed for other binaries only",
        }
    }
}

/// Does `endpoint` cover `host` and `port`?
pub fn endpoint_matches(ep: &Endpoint, host: &str, port: u16) -> bool {
    let port_ok = ep.port == Some(port) || ep.ports.contains(&port);
    port_ok && HostPattern::parse(&ep.host).is_ok_and(|p| p.matches(host))
}

/// Match an absolute path against a binary glob: `*` is one path component (or part of
/// one), `**` any number of components.
pub fn binary_matches(pattern: &str, path: &str) -> bool {
    let pat: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    fn go(pat: &[&str], parts: &[&str]) -> bool {
        match pat.split_first() {
            None => parts.is_empty(),
            Some((&"**", rest)) => (0..=parts.len()).any(|i| go(rest, &parts[i..])),
            Some((p, rest)) => {
                !parts.is_empty() && segment_matches(p, parts[0]) && go(rest, &parts[1..])
            }
        }
    }
    pattern.starts_with('/') && go(&pat, &parts)
}

/// `*` inside one component matches any run of characters (not `/`).
fn segment_matches(pat: &str, s: &str) -> bool {
    let pieces: Vec<&str> = pat.split('*').collect();
    if pieces.len() == 1 {
        return pat == s;
    }
    let mut rest = s;
    for (i, piece) in pieces.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(piece) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == pieces.len() - 1 {
            return rest.ends_with(piece);
        } else {
            match rest.find(piece) {
                Some(at) => rest = &rest[at + piece.len()..],
                None => return false,
            }
        }
    }
    true
}

/// Find the entry allowing `host:port` for any of `binaries` (the owner's exe first,
/// then its ancestors'). An entry needs both an endpoint and a binary match; an entry
/// without binaries allows nothing. Only endpoints with `protocol` among `protocols`
/// count (the explicit proxy accepts all; the transparent path only `tcp`).
pub fn decide<'a>(
    policy: &'a Policy,
    host: &str,
    port: u16,
    binaries: &[String],
    transparent: bool,
) -> Result<Grant<'a>, Denial> {
    let mut endpoint_seen = false;
    for (key, np) in &policy.network_policies {
        let Some(ep) = np.endpoints.iter().find(|ep| {
            endpoint_matches(ep, host, port) && (!transparent || ep.protocol == Some(Protocol::Tcp))
        }) else {
            continue;
        };
        endpoint_seen = true;
        for b in &np.binaries {
            if binaries.iter().any(|exe| binary_matches(&b.path, exe)) {
                return Ok(Grant {
                    key,
                    name: np.name.as_deref().unwrap_or(key),
                    endpoint: ep,
                    binary: &b.path,
                });
            }
        }
    }
    Err(if endpoint_seen {
        Denial::WrongBinary
    } else {
        Denial::NoEndpoint
    })
}

fn in_cidr(ip: IpAddr, cidr: &str) -> bool {
    let Ok((net, prefix)) = parse_cidr(cidr) else {
        return false;
    };
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix)
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Addresses never dialled, whatever the policy.
pub fn always_blocked(ip: IpAddr) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v) if v.is_loopback() => Some("loopback address"),
        IpAddr::V4(v) if v.is_link_local() => Some("link-local address (cloud metadata)"),
        IpAddr::V4(v) if v.is_unspecified() || v.is_broadcast() || v.is_multicast() => {
            Some("unspecified, broadcast or multicast address")
        }
        IpAddr::V6(v) if v.is_loopback() => Some("loopback address"),
        IpAddr::V6(v) if v.is_unspecified() || v.is_multicast() => {
            Some("unspecified or multicast address")
        }
        IpAddr::V6(v) if (v.segments()[0] & 0xffc0) == 0xfe80 => Some("link-local address"),
        _ => None,
    }
}

/// Private, shared or unique-local ranges.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v) => {
            v.is_private() || in_cidr(ip, "100.64.0.0/10") || in_cidr(ip, "198.18.0.0/15")
        }
        IpAddr::V6(v) => (v.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// May the proxy dial `ip` for this endpoint? `allowed_ips`, when given, is the list of
/// what may be dialled; otherwise public addresses are fine and private ones only for
/// an exactly named host or a literal IP.
pub fn ip_permitted(ep: &Endpoint, ip: IpAddr) -> Result<(), String> {
    if let Some(why) = always_blocked(ip) {
        return Err(format!("{ip} is a {why}: never allowed"));
    }
    if !ep.allowed_ips.is_empty() {
        return if ep.allowed_ips.iter().any(|c| in_cidr(ip, c)) {
            Ok(())
        } else {
            Err(format!("{ip} is not in the endpoint's allowed_ips"))
        };
    }
    let wildcard = ep.host.contains('*');
    if is_private(ip) && wildcard {
        return Err(format!(
            "{ip} is a private address and {} is a wildcard: declare the host exactly or add allowed_ips",
            ep.host
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> Policy {
        Policy::parse(yaml).unwrap()
    }

    const P: &str = "version: 1
network_policies:
  gh:
    name: github
    endpoints:
      - { host: api.github.com, port: 443 }
      - { host: \"*.wild.test\", ports: [443, 8443] }
    binaries:
      - { path: /usr/bin/curl }
  any:
    endpoints:
      - { host: pypi.org, port: 443 }
    binaries:
      - { path: \"/**\" }
  nobody:
    endpoints:
      - { host: empty.test, port: 80 }
";

    #[test]
    fn host_port_and_binary_must_all_match() {
        let p = policy(P);
        let curl = vec!["/usr/bin/curl".to_string()];
        let wget = vec!["/usr/bin/wget".to_string()];
        let g = decide(&p, "api.github.com", 443, &curl, false).unwrap();
        assert_eq!((g.key, g.name), ("gh", "github"));
        assert_eq!(
            decide(&p, "api.github.com", 80, &curl, false),
            Err(Denial::NoEndpoint)
        );
        assert_eq!(
            decide(&p, "api.github.com", 443, &wget, false),
            Err(Denial::WrongBinary)
        );
        assert!(decide(&p, "pypi.org", 443, &wget, false).is_ok());
        // Cross-entry: curl's host with the other entry's port is denied.
        assert_eq!(
            decide(&p, "pypi.org", 80, &curl, false),
            Err(Denial::NoEndpoint)
        );
        assert!(decide(&p, "a.wild.test", 8443, &curl, false).is_ok());
        assert!(decide(&p, "b.c.wild.test", 443, &curl, false).is_err());
        // An ancestor can carry the identity.
        let chain = vec!["/usr/bin/python3".to_string(), "/usr/bin/curl".to_string()];
        assert!(decide(&p, "api.github.com", 443, &chain, false).is_ok());
        // No binaries: nothing allowed.
        assert_eq!(
            decide(&p, "empty.test", 80, &curl, false),
            Err(Denial::WrongBinary)
        );
        // Transparent connections need protocol: tcp.
        assert!(decide(&p, "pypi.org", 443, &wget, true).is_err());
        // No policy at all: everything denied.
        assert!(decide(&policy("version: 1\n"), "x.com", 443, &curl, false).is_err());
    }

    #[test]
    fn binary_globs() {
        assert!(binary_matches("/**", "/usr/bin/curl"));
        assert!(binary_matches("/usr/bin/*", "/usr/bin/curl"));
        assert!(!binary_matches("/usr/bin/*", "/usr/bin/x/curl"));
        assert!(binary_matches("/usr/**/curl", "/usr/local/bin/curl"));
        assert!(binary_matches(
            "/home/*/.local/bin/copilot",
            "/home/u/.local/bin/copilot"
        ));
        assert!(binary_matches(
            "/sandbox/.uv/python/**/python3*",
            "/sandbox/.uv/python/3.12/bin/python3.12"
        ));
        assert!(!binary_matches("/usr/bin/curl", "/usr/bin/curl2"));
        assert!(!binary_matches("usr/bin/curl", "/usr/bin/curl"));
    }

    #[test]
    fn ssrf_guard() {
        let exact = Endpoint {
            host: "db.internal".into(),
            port: Some(5432),
            ..Default::default()
        };
        let wild = Endpoint {
            host: "*.internal.test".into(),
            port: Some(443),
            ..Default::default()
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(ip_permitted(&exact, ip("127.0.0.1")).is_err());
        assert!(ip_permitted(&exact, ip("169.254.169.254")).is_err());
        assert!(ip_permitted(&exact, ip("0.0.0.0")).is_err());
        assert!(ip_permitted(&exact, ip("::ffff:127.0.0.1")).is_err());
        assert!(ip_permitted(&exact, ip("fe80::1")).is_err());
        assert!(ip_permitted(&exact, ip("10.1.2.3")).is_ok());
        assert!(ip_permitted(&wild, ip("10.1.2.3")).is_err());
        assert!(ip_permitted(&wild, ip("93.184.216.34")).is_ok());
        let listed = Endpoint {
            allowed_ips: vec!["10.77.0.0/24".into()],
            ..wild.clone()
        };
        assert!(ip_permitted(&listed, ip("10.77.0.2")).is_ok());
        assert!(ip_permitted(&listed, ip("10.78.0.2")).is_err());
        assert!(ip_permitted(&listed, ip("127.0.0.1")).is_err());
    }
}
