//! Endpoint host patterns: exact names, IP literals and label wildcards.
//!
//! `*` matches exactly one DNS label, `**` one or more labels; neither matches the apex.
//! Patterns too broad to be meaningful (`*`, `**`, `*.com`) are rejected at load time.
//! Pure matching logic, no resolution.

/// A validated host pattern, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    labels: Vec<String>,
}

impl HostPattern {
    /// Parse and validate a pattern as written in a policy.
    pub fn parse(s: &str) -> Result<Self, String> {
        let lower = s.trim_end_matches('.').to_ascii_lowercase();
        if lower.is_empty() {
            return Err("empty host".into());
        }
        if lower.parse::<std::net::IpAddr>().is_ok() {
            return Ok(Self {
                labels: vec![lower],
            });
        }
        let labels: Vec<String> = lower.split('.').map(str::to_owned).collect();
        let mut literal = 0;
        for (i, l) in labels.iter().enumerate() {
            match l.as_str() {
                "*" | "**" if i == 0 => {}
                "*" | "**" => {
                    return Err(format!(
                        "`{s}`: a wildcard may only be the first label (`*.example.com`)"
                    ));
                }
                _ if l.contains('*') => {
                    return Err(format!("`{s}`: `*` must be a whole label"));
                }
                _ if l.is_empty()
                    || l.len() > 63
                    || !l
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
                {
                    return Err(format!("`{s}` is not a valid host name"));
                }
                _ => literal += 1,
            }
        }
        if labels[0].starts_with('*') && literal < 2 {
            return Err(format!(
                "`{s}` is too broad: a wildcard needs at least two fixed labels (`*.example.com`)"
            ));
        }
        Ok(Self { labels })
    }

    /// Whether the pattern contains a wildcard.
    pub fn is_wildcard(&self) -> bool {
        self.labels[0].starts_with('*')
    }

    /// Does `host` (a name as the client asked for it) match?
    pub fn matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let got: Vec<&str> = host.split('.').collect();
        let fixed = &self.labels[usize::from(self.is_wildcard())..];
        match self.labels[0].as_str() {
            "*" => got.len() == fixed.len() + 1 && got[1..] == fixed[..],
            "**" => got.len() > fixed.len() && got[got.len() - fixed.len()..] == fixed[..],
            _ => self.labels.join(".") == host,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::HostPattern;

    #[test]
    fn single_star_is_one_label() {
        let p = HostPattern::parse("*.x.com").unwrap();
        assert!(p.matches("a.x.com"));
        assert!(p.matches("A.X.COM."));
        assert!(!p.matches("x.com"));
        assert!(!p.matches("a.b.x.com"));
        assert!(!p.matches("ax.com"));
    }

    #[test]
    fn double_star_is_deep_but_not_apex() {
        let p = HostPattern::parse("**.x.com").unwrap();
        assert!(p.matches("a.x.com"));
        assert!(p.matches("a.b.x.com"));
        assert!(!p.matches("x.com"));
        assert!(!p.matches("evilx.com"));
    }

    #[test]
    fn exact_and_ip() {
        assert!(
            HostPattern::parse("api.github.com")
                .unwrap()
                .matches("api.github.com")
        );
        assert!(
            !HostPattern::parse("api.github.com")
                .unwrap()
                .matches("github.com")
        );
        assert!(HostPattern::parse("10.0.0.1").unwrap().matches("10.0.0.1"));
    }

    #[test]
    fn too_broad_or_malformed_rejected() {
        for bad in [
            "*", "**", "*.com", "**.com", "a.*.com", "a*.x.com", "", "a..b", "x y.com",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
