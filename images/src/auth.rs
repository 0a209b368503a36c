//! Registry credentials: where they are stored, how they are looked up, and the
//! `WWW-Authenticate` challenge grammar. File reading is here; HTTP is in `registry`.
//!
//! Read from (first match wins): `$REGISTRY_AUTH_FILE`,
//! `$XDG_RUNTIME_DIR/containers/auth.json`, `~/.config/containers/auth.json`,
//! `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`. `image login` writes the
//! containers file (mode 0600); `logout` removes the entry.

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::error::{ImageError, Result};

/// A user name and password (or token).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub user: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.user)
    }
}

impl Credentials {
    /// `Basic ...` header value.
    pub fn basic_header(&self) -> String {
        format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", self.user, self.password))
        )
    }
}

/// Auth files in lookup order.
pub fn auth_files() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(f) = std::env::var_os("REGISTRY_AUTH_FILE") {
        v.push(PathBuf::from(f));
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        v.push(PathBuf::from(d).join("containers/auth.json"));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    if let Some(h) = &home {
        v.push(h.join(".config/containers/auth.json"));
    }
    match std::env::var_os("DOCKER_CONFIG") {
        Some(d) => v.push(PathBuf::from(d).join("config.json")),
        None => {
            if let Some(h) = &home {
                v.push(h.join(".docker/config.json"));
            }
        }
    }
    v
}

/// The file `image login` writes.
pub fn login_file() -> PathBuf {
    if let Some(f) = std::env::var_os("REGISTRY_AUTH_FILE") {
        return PathBuf::from(f);
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("containers/auth.json"),
        None => std::env::var_os("HOME")
            .map_or_else(|| PathBuf::from("/tmp"), PathBuf::from)
            .join(".config/containers/auth.json"),
    }
}

/// Keys an auth file may use for `registry`.
fn keys_for(registry: &str) -> Vec<String> {
    let mut k = vec![
        registry.to_string(),
        format!("https://{registry}"),
        format!("http://{registry}"),
    ];
    if registry == crate::reference::DOCKER_HUB {
        k.push("https://index.docker.io/v1/".into());
        k.push("index.docker.io".into());
        k.push("registry-1.docker.io".into());
    }
    k
}

/// Decode one `auths` entry.
fn decode(entry: &serde_json::Value) -> Option<Credentials> {
    if let Some(auth) = entry
        .get("auth")
        .and_then(|a| a.as_str())
        .filter(|a| !a.is_empty())
    {
        let raw = STANDARD.decode(auth.trim()).ok()?;
        let s = String::from_utf8(raw).ok()?;
        let (user, password) = s.split_once(':')?;
        return Some(Credentials {
            user: user.into(),
            password: password.into(),
        });
    }
    let user = entry.get("username")?.as_str()?;
    let password = entry.get("password")?.as_str()?;
    Some(Credentials {
        user: user.into(),
        password: password.into(),
    })
}

/// Look `registry` (and `registry/repository`) up in the auth files.
pub fn lookup(registry: &str, repository: &str) -> Option<Credentials> {
    let mut keys = vec![format!("{registry}/{repository}")];
    keys.extend(keys_for(registry));
    for file in auth_files() {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                eprintln!(
                    "openshell: warning: cannot read credentials from {}: {e}",
                    file.display()
                );
                continue;
            }
        };
        let Ok(doc) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let Some(auths) = doc.get("auths").and_then(|a| a.as_object()) else {
            continue;
        };
        for k in &keys {
            if let Some(c) = auths.get(k).and_then(decode) {
                tracing::info!("credentials for {k} from {}", file.display());
                return Some(c);
            }
        }
    }
    None
}

/// Store credentials for `registry` in the login file (0600), replacing any entry.
pub fn store(registry: &str, creds: &Credentials) -> Result<PathBuf> {
    let file = login_file();
    let mut doc = read_doc(&file)?;
    doc.insert(
        registry.to_string(),
        serde_json::json!({"auth": STANDARD.encode(format!("{}:{}", creds.user, creds.password))}),
    );
    write_doc(&file, doc)?;
    Ok(file)
}

/// Remove `registry` from the login file; false when it was not there.
pub fn remove(registry: &str) -> Result<bool> {
    let file = login_file();
    let mut doc = read_doc(&file)?;
    let had = keys_for(registry).iter().any(|k| doc.remove(k).is_some());
    if had {
        write_doc(&file, doc)?;
    }
    Ok(had)
}

fn read_doc(file: &PathBuf) -> Result<BTreeMap<String, serde_json::Value>> {
    match std::fs::read_to_string(file) {
        Ok(t) => {
            let v: serde_json::Value = serde_json::from_str(&t).map_err(|e| {
                ImageError::Invalid(format!(
                    "{}: not valid JSON ({e}); fix or remove it",
                    file.display()
                ))
            })?;
            Ok(v.get("auths")
                .and_then(|a| a.as_object())
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(ImageError::io("read", file)(e)),
    }
}

fn write_doc(file: &PathBuf, auths: BTreeMap<String, serde_json::Value>) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(ImageError::io("create", dir))?;
    }
    let tmp = file.with_extension("json.tmp");
    let body = serde_json::to_vec_pretty(&serde_json::json!({ "auths": auths }))
        .map_err(|e| ImageError::Invalid(e.to_string()))?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(ImageError::io("write", &tmp))?;
    f.write_all(&body).map_err(ImageError::io("write", &tmp))?;
    f.sync_all().map_err(ImageError::io("sync", &tmp))?;
    std::fs::rename(&tmp, file).map_err(ImageError::io("rename", file))
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm=...`.
    Basic,
    /// `Bearer realm=...,service=...,scope=...`.
    Bearer {
        /// Token endpoint.
        realm: String,
        /// `service` parameter.
        service: Option<String>,
        /// `scope` parameter.
        scope: Option<String>,
    },
}

/// Parse a `WWW-Authenticate` header value.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    let mut params = BTreeMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (k, after) = s.split_once('=')?;
        let after = after.trim_start();
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.insert(k.trim().to_ascii_lowercase(), v.to_string());
        s = next.trim_start_matches([',', ' ']);
    }
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: params.remove("realm")?,
            service: params.remove("service"),
            scope: params.remove("scope"),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="http://127.0.0.1:5005/token",service="svc",scope="repository:busybox:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:5005/token".into(),
                service: Some("svc".into()),
                scope: Some("repository:busybox:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge("Basic realm=\"Registry\""),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn decode_entries() {
        let e = serde_json::json!({"auth": STANDARD.encode("u:p:x")});
        assert_eq!(
            decode(&e),
            Some(Credentials {
                user: "u".into(),
                password: "p:x".into()
            })
        );
        assert_eq!(decode(&serde_json::json!({"auth": "!!"})), None);
        let e = serde_json::json!({"username": "a", "password": "b"});
        assert_eq!(decode(&e).unwrap().user, "a");
        assert!(!format!("{:?}", decode(&e).unwrap()).contains('b'));
    }
}
