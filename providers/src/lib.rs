//! Providers: named sets of credentials of a type (`claude-code`, `github`, ...), kept on
//! the host, never in a sandbox. A sandbox that uses a provider gets placeholders in its
//! environment and the profile's network rules in its policy; the proxy swaps the real
//! values in, only towards the endpoints they are bound to (docs/credentials.md).
//!
//! - [`profile`]: the types, as data (built-in YAML plus the user's own files);
//! - [`store`]: provider records under `$XDG_CONFIG_HOME/openshell/providers/` (0700
//!   directory, 0600 files), discovery from the environment, fingerprints;
//! - [`attach`]: what a sandbox gets from its providers.

pub mod attach;
pub mod profile;
pub mod routes;
pub mod store;

use std::path::PathBuf;

/// Errors of provider and profile handling; each names what to do.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// A profile file is invalid.
    #[error("profile {0}")]
    Profile(String),
    /// No such provider.
    #[error("no provider named {0}; see 'openshell provider list'")]
    NotFound(String),
    /// A provider of that name exists.
    #[error(
        "a provider named {0} already exists; use 'openshell provider update {0}' or pick another --name"
    )]
    Exists(String),
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `$XDG_CONFIG_HOME/openshell`, else `~/.config/openshell`.
pub fn config_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("openshell");
    }
    std::env::var_os("HOME")
        .map_or_else(|| PathBuf::from("/nonexistent"), PathBuf::from)
        .join(".config/openshell")
}
