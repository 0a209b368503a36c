//! Image references: `python:3.12`, `ghcr.io/o/i:tag`, `reg:5000/x@sha256:...`.
//!
//! Parsing follows the distribution reference grammar closely enough for real use:
//! a first component with a `.` or `:` (or `localhost`) is a registry; Docker Hub
//! short names get `docker.io` and `library/`. Pure: no I/O.

use std::fmt;

/// Docker Hub's registry name in references.
pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's API actually lives.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A parsed, normalised reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host[:port], e.g. `docker.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/python`.
    pub repository: String,
    /// Tag (defaults to `latest` when no digest is given).
    pub tag: Option<String>,
    /// Pinned manifest digest (`sha256:...`).
    pub digest: Option<String>,
}

impl Reference {
    /// Parse a reference as users write it.
    pub fn parse(input: &str) -> Result<Self, String> {
        let s = input.trim();
        if s.is_empty() {
            return Err("empty image reference".into());
        }
        if s.chars().any(char::is_whitespace) {
            return Err(format!(
                "invalid image reference {input:?}: contains whitespace"
            ));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (
                r,
                Some(parse_digest(d).map_err(|e| format!("{input}: {e}"))?),
            ),
            None => (s, None),
        };
        // A tag is after the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].to_string()),
            ),
            None => (rest, None),
        };
        if let Some(t) = &tag
            && (t.is_empty()
                || t.len() > 128
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)))
        {
            return Err(format!("invalid tag {t:?} in {input:?}"));
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = if registry == "index.docker.io" || registry == DOCKER_HUB_API {
            DOCKER_HUB.to_string()
        } else {
            registry
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.is_empty()
            || repository.split('/').any(|c| {
                c.is_empty()
                    || !c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            })
        {
            return Err(format!(
                "invalid repository {repository:?} in {input:?}: use lower-case letters, digits, '.', '_', '-'"
            ));
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some("latest".to_string()),
            _ => tag,
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host to talk HTTP to.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What to ask the manifest endpoint for: the digest if pinned, else the tag.
    pub fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// Plain http is allowed only for loopback registries (or when the user says so).
    pub fn is_loopback(&self) -> bool {
        let host = self
            .registry
            .rsplit_once(':')
            .map_or(self.registry.as_str(), |(h, p)| {
                if p.bytes().all(|b| b.is_ascii_digit()) {
                    h
                } else {
                    self.registry.as_str()
                }
            });
        matches!(host, "localhost" | "127.0.0.1" | "[::1]" | "::1")
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Check a `sha256:<64 hex>` digest; return it lower-cased.
pub fn parse_digest(d: &str) -> Result<String, String> {
    let hex = d
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("unsupported digest {d:?}: only sha256 is supported"))?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "malformed digest {d:?}: expected sha256:<64 hex digits>"
        ));
    }
    Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn docker_hub_short_names() {
        let x = r("python:3.12");
        assert_eq!(
            (x.registry.as_str(), x.repository.as_str()),
            ("docker.io", "library/python")
        );
        assert_eq!(x.tag.as_deref(), Some("3.12"));
        assert_eq!(x.to_string(), "docker.io/library/python:3.12");
        assert_eq!(x.api_host(), "registry-1.docker.io");
        assert_eq!(r("busybox").tag.as_deref(), Some("latest"));
        assert_eq!(r("user/app").repository, "user/app");
    }

    #[test]
    fn registries_ports_and_digests() {
        let x = r("127.0.0.1:5000/busybox:multilayer");
        assert_eq!(
            (x.registry.as_str(), x.repository.as_str()),
            ("127.0.0.1:5000", "busybox")
        );
        assert!(x.is_loopback());
        let d = format!("sha256:{}", "a".repeat(64));
        let x = r(&format!("ghcr.io/o/i@{d}"));
        assert_eq!(x.tag, None);
        assert_eq!(x.digest.as_deref(), Some(d.as_str()));
        assert_eq!(x.manifest_ref(), d);
        assert!(!x.is_loopback());
        let x = r(&format!("localhost:5000/x:t@{d}"));
        assert_eq!(x.tag.as_deref(), Some("t"));
        assert!(r("localhost/x").is_loopback());
    }

    #[test]
    fn bad_references() {
        for bad in [
            "",
            "UPPER",
            "a b",
            "x:",
            "x@sha256:abc",
            "x@md5:00",
            "reg:5000/",
            "a//b",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
