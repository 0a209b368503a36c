//! OpenShell sandbox policy: parse, validate, default, and derive the effective settings.
//!
//! Pure: no I/O, no tokio, no kernel. Callers read the file and hand over its text; every
//! error carries a line and column where one can be found. Other crates of ours depend
//! on this one, never the reverse.
#![forbid(unsafe_code)]

pub mod engine;
pub mod host;
pub mod l7;
pub mod schema;
pub mod validate;

/// Network policy entries openshell adds for a sandbox's providers are named
/// `_provider_<provider name>`; user policies may not use the prefix.
pub const PROVIDER_PREFIX: &str = "_provider_";

use std::fmt;

pub use schema::*;
pub use validate::Issue;

/// The uid/gid the `sandbox` user has inside every sandbox.
pub const SANDBOX_ID: u32 = 1000;
/// The largest id a sandboxed process may run as: every sandbox maps 0..=65535, and
/// 65535 (`(uid_t)-1` truncated to 16 bits) is the kernel's "no id" on old interfaces.
/// Anything above is unmapped, and `u32::MAX` means "leave unchanged" to setresuid(2).
pub const MAX_ID: u32 = 65534;

/// Why a policy was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Not YAML of the expected shape (unknown key, wrong type, bad syntax).
    #[error("{}", render_parse(message, *location))]
    Parse {
        /// serde's message without its trailing location.
        message: String,
        /// 1-based line and column.
        location: Option<(usize, usize)>,
    },
    /// Well-formed but semantically wrong; every issue is listed.
    #[error("{}", issues.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// What is wrong, where.
        issues: Vec<Issue>,
    },
}

fn render_parse(message: &str, location: Option<(usize, usize)>) -> String {
    match location {
        Some((l, c)) => format!("{l}:{c}: {message}"),
        None => message.to_string(),
    }
}

impl PolicyError {
    /// Render with the file name in front of each location: `file:line:col: message`.
    pub fn render(&self, file: &str) -> String {
        self.to_string()
            .lines()
            .map(|l| format!("{file}:{l}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Policy {
    /// Parse and fully validate a policy document a user wrote (no `_provider_`
    /// entries).
    pub fn parse(source: &str) -> Result<Self, PolicyError> {
        Self::parse_with(source, false)
    }

    /// Parse a sandbox's own policy, which may hold the `_provider_` entries openshell
    /// added for its providers.
    pub fn parse_stored(source: &str) -> Result<Self, PolicyError> {
        Self::parse_with(source, true)
    }

    fn parse_with(source: &str, provider_entries: bool) -> Result<Self, PolicyError> {
        let policy: Policy = serde_yaml_ng::from_str(source).map_err(|e| {
            let location = e.location().map(|l| (l.line(), l.column()));
            let full = e.to_string();
            let message = match full.rfind(" at line ") {
                Some(i) => full[..i].to_string(),
                None => full,
            };
            PolicyError::Parse { message, location }
        })?;
        let issues = validate::validate_with(&policy, source, provider_entries);
        if issues.is_empty() {
            Ok(policy)
        } else {
            Err(PolicyError::Invalid { issues })
        }
    }

    /// Serialize back to YAML (round-trips through [`Policy::parse`]).
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).unwrap_or_default()
    }

    /// The policy used when none is given: a read-only system, a writable workspace and
    /// /tmp, no network.
    pub fn restrictive_default() -> Self {
        let s = |v: &[&str]| v.iter().map(|p| (*p).to_string()).collect::<Vec<_>>();
        Policy {
            version: 1,
            filesystem_policy: Some(FilesystemPolicy {
                include_workdir: true,
                read_only: s(&[
                    "/usr",
                    "/lib",
                    "/lib64",
                    "/bin",
                    "/sbin",
                    "/etc",
                    "/opt",
                    "/proc",
                    "/dev/urandom",
                    "/dev/random",
                    "/dev/zero",
                    "/dev/full",
                ]),
                read_write: s(&[
                    "/sandbox",
                    "/tmp",
                    "/dev/null",
                    "/dev/tty",
                    "/dev/pts",
                    "/dev/shm",
                ]),
            }),
            landlock: Some(LandlockPolicy {
                compatibility: Compatibility::BestEffort,
            }),
            process: Some(ProcessPolicy {
                run_as_user: Some(IdSpec::Name("sandbox".into())),
                run_as_group: Some(IdSpec::Name("sandbox".into())),
            }),
            network_policies: Default::default(),
            network_middlewares: None,
        }
    }

    /// The default for an image root: as [`Policy::restrictive_default`], but the whole
    /// image is readable (it holds nothing of the host; images put programs and data in
    /// many places: /app, /opt, /home/node, ...). Writes stay limited to the same paths.
    pub fn image_default() -> Self {
        let mut p = Self::restrictive_default();
        if let Some(fs) = p.filesystem_policy.as_mut() {
            fs.read_only.insert(0, "/".into());
        }
        p
    }

    /// The uid and gid sandboxed processes run as.
    pub fn identity(&self) -> (u32, u32) {
        let id = |s: &Option<IdSpec>| match s {
            // Validation admits only 1..=MAX_ID; anything else never reaches a process.
            Some(IdSpec::Id(n)) => u32::try_from(*n)
                .ok()
                .filter(|n| (1..=MAX_ID).contains(n))
                .unwrap_or(SANDBOX_ID),
            _ => SANDBOX_ID,
        };
        match &self.process {
            Some(p) => (id(&p.run_as_user), id(&p.run_as_group)),
            None => (SANDBOX_ID, SANDBOX_ID),
        }
    }

    /// Landlock compatibility mode (default best_effort).
    pub fn compatibility(&self) -> Compatibility {
        self.landlock
            .as_ref()
            .map(|l| l.compatibility)
            .unwrap_or_default()
    }

    /// Read-only and read-write path lists, with the workdir added when asked for.
    /// A policy without `filesystem_policy` gets the default lists.
    pub fn fs_paths(&self, workdir: &str) -> (Vec<String>, Vec<String>) {
        let default = Self::restrictive_default();
        let fs = self
            .filesystem_policy
            .as_ref()
            .or(default.filesystem_policy.as_ref())
            .cloned()
            .unwrap_or_default();
        let mut rw = fs.read_write.clone();
        // Never `/` (in any spelling: `/.`, `//`, `/./`), nothing with `..` and no /proc
        // magic link: an image's WorkingDir must not make everything writable.
        let wd = normalize(workdir);
        let acceptable = wd
            .as_deref()
            .is_some_and(|w| w != "/" && crate::validate::path_problem(w, true).is_none());
        if fs.include_workdir
            && acceptable
            && let Some(w) = wd
            && !rw.contains(&w)
        {
            rw.push(w);
        }
        (fs.read_only, rw)
    }
}

/// `/a/./b//c/` → `/a/b/c`; `None` for a relative path or one with `..`.
pub fn normalize(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    let mut out = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => out.push(c),
        }
    }
    Some(format!("/{}", out.join("/")))
}

impl fmt::Display for Compatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compatibility::BestEffort => "best_effort",
            Compatibility::HardRequirement => "hard_requirement",
        })
    }
}

#[cfg(test)]
mod tests;
