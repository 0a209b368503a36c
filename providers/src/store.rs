//! Provider records: `<config>/providers/<name>.json`, the directory 0700 and each file
//! 0600 (written to a temporary file of that mode, then renamed), so no other local
//! user reads a secret. `list`/`get` views carry key names and fingerprints only.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ProviderError;

/// One provider, as stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    /// Its name.
    pub name: String,
    /// Its type (a profile's `type`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Credential key → value.
    #[serde(default)]
    pub credentials: BTreeMap<String, String>,
    /// Settings (`base_url`, `allow_uninspected_credentials`, `bind_binaries`).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Seconds since the epoch.
    pub created: u64,
    /// Seconds since the epoch.
    pub updated: u64,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("name", &self.name)
            .field("type", &self.kind)
            .field("credentials", &self.view().credentials)
            .field("config", &self.config)
            .finish()
    }
}

/// What `provider get`/`list` show: never a value.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// Key → `sha256:` + 12 hex digits of the value.
    pub credentials: BTreeMap<String, String>,
    pub config: BTreeMap<String, String>,
    pub created: u64,
    pub updated: u64,
}

/// A short fingerprint of a secret: tells two values apart, reveals nothing usable.
pub fn fingerprint(value: &str) -> String {
    let d = Sha256::digest(value.as_bytes());
    let hex: String = d.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

impl Provider {
    /// Its view without values.
    pub fn view(&self) -> View {
        View {
            name: self.name.clone(),
            kind: self.kind.clone(),
            credentials: self
                .credentials
                .iter()
                .map(|(k, v)| (k.clone(), fingerprint(v)))
                .collect(),
            config: self.config.clone(),
            created: self.created,
            updated: self.updated,
        }
    }
}

/// Is `name` a usable provider name?
pub fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// The providers directory.
pub fn dir() -> PathBuf {
    crate::config_dir().join("providers")
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ProviderError + 'a {
    move |source| ProviderError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn path_of(dir: &Path, name: &str) -> Result<PathBuf, ProviderError> {
    if !name_ok(name) {
        return Err(ProviderError::Invalid(format!(
            "invalid provider name {name:?}: use 1-63 of a-z, 0-9, - and _, starting with a letter or digit"
        )));
    }
    Ok(dir.join(format!("{name}.json")))
}

/// Read one provider.
pub fn get(dir: &Path, name: &str) -> Result<Provider, ProviderError> {
    let p = path_of(dir, name)?;
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ProviderError::NotFound(name.into()));
        }
        Err(e) => return Err(io("read", &p)(e)),
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| ProviderError::Invalid(format!("{}: {e}", p.display())))
}

/// Every provider, by name.
pub fn list(dir: &Path) -> Result<Vec<Provider>, ProviderError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(io("read", dir)(e)),
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if let Some(name) = n.strip_suffix(".json")
            && name_ok(name)
        {
            out.push(get(dir, name)?);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Make `dir` (0700) if needed and check it is a real directory of ours: never a link
/// (whose target the chmod would change) nor one another user made.
pub fn private_dir(dir: &Path) -> Result<(), ProviderError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io("create", dir))?;
    let m = std::fs::symlink_metadata(dir).map_err(io("stat", dir))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !m.is_dir() || std::os::unix::fs::MetadataExt::uid(&m) != me {
        return Err(ProviderError::Invalid(format!(
            "{} must be a directory of yours (not a symlink, not another user's): move it away",
            dir.display()
        )));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io("chmod 0700", dir))
}

/// Write `bytes` to `path` in the private directory `dir`: a 0600 temporary file,
/// synced, then renamed over `path` — or, with `exclusive`, linked to it only if it
/// does not exist yet (`Exists` names `what` then).
pub fn write_private(
    dir: &Path,
    path: &Path,
    bytes: &[u8],
    exclusive: Option<&str>,
) -> Result<(), ProviderError> {
    private_dir(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        f.write_all(bytes)
            .and_then(|()| f.sync_all())
            .map_err(io("write", &tmp))?;
    }
    match exclusive {
        Some(what) => {
            let linked = std::fs::hard_link(&tmp, path);
            let _ = std::fs::remove_file(&tmp);
            linked.map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    ProviderError::Exists(what.to_string())
                } else {
                    io("create", path)(e)
                }
            })
        }
        None => std::fs::rename(&tmp, path).map_err(io("replace", path)),
    }
}

/// Write a provider (0600, atomically); `create` refuses an existing name.
pub fn save(dir: &Path, p: &Provider, create: bool) -> Result<(), ProviderError> {
    let path = path_of(dir, &p.name)?;
    let bytes = serde_json::to_vec_pretty(p).map_err(|e| ProviderError::Invalid(e.to_string()))?;
    write_private(dir, &path, &bytes, create.then_some(p.name.as_str()))
}

/// Delete a provider.
pub fn delete(dir: &Path, name: &str) -> Result<(), ProviderError> {
    let p = path_of(dir, name)?;
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(ProviderError::NotFound(name.into()))
        }
        Err(e) => Err(io("remove", &p)(e)),
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The profile's credential variables found (non-blank) in `env`.
pub fn discover(
    profile: &crate::profile::Profile,
    env: &dyn Fn(&str) -> Option<String>,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let creds = profile
        .credentials
        .iter()
        .filter_map(|k| {
            env(k)
                .filter(|v| !v.trim().is_empty() && !v.contains(['\r', '\n', '\0']))
                .map(|v| (k.clone(), v))
        })
        .collect();
    let config = profile
        .base_url_env
        .iter()
        .filter_map(|k| env(k).filter(|v| !v.trim().is_empty()))
        .map(|v| ("base_url".to_string(), v))
        .collect();
    (creds, config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn stored_private_listed_without_values() {
        let dir = std::env::temp_dir().join(format!("os-prov-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let p = Provider {
            name: "work".into(),
            kind: "github".into(),
            credentials: [("GITHUB_TOKEN".to_string(), "ghp_secret".to_string())].into(),
            config: BTreeMap::new(),
            created: 1,
            updated: 1,
        };
        save(&dir, &p, true).unwrap();
        assert!(matches!(
            save(&dir, &p, true),
            Err(ProviderError::Exists(_))
        ));
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let f = dir.join("work.json");
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
        assert_eq!(get(&dir, "work").unwrap(), p);
        let shown = format!("{:?} {}", p, serde_json::to_string(&p.view()).unwrap());
        assert!(!shown.contains("ghp_secret"), "{shown}");
        assert!(shown.contains(&fingerprint("ghp_secret")));
        assert!(matches!(get(&dir, "../x"), Err(ProviderError::Invalid(_))));
        delete(&dir, "work").unwrap();
        assert!(matches!(get(&dir, "work"), Err(ProviderError::NotFound(_))));
        // A providers directory that is a symlink is refused, its target untouched.
        let target = dir.join("elsewhere");
        std::fs::create_dir(&target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755)).unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = save(&link, &p, true).unwrap_err().to_string();
        assert!(e.contains("must be a directory of yours"), "{e}");
        assert_eq!(std::fs::metadata(&target).unwrap().mode() & 0o777, 0o755);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
