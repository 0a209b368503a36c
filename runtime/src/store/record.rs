//! The record of a sandbox on disk (`sandboxes/<name>/sandbox.json`) and its phase.
//!
//! The record is written whole to a temporary file and renamed over the old one, so a
//! reader never sees half of it. Whether a sandbox is running is never trusted from the
//! file alone: the supervisor's pid is stored with its start time (field 22 of
//! `/proc/<pid>/stat`), and a record that says running while that process is gone (or
//! the pid was reused) reads as `Error` with the reason.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The file name of the record inside the sandbox directory.
pub const FILE: &str = "sandbox.json";
/// The sandbox's current policy (canonical YAML) beside it.
pub const POLICY: &str = "policy.yaml";

/// Write `path` whole: a temporary file beside it, fsync, rename over it.
pub fn write_atomic(path: &Path, body: &[u8]) -> Result<(), String> {
    write_whole(path, body, true)
}

/// Write `path` whole (temporary file, rename): readers see the old or the new content,
/// never a mix. `durable` adds an fsync before the rename, so that the content also
/// survives a crash of the host: what a sandbox kept across reboots needs; a sandbox
/// that ends with its run is gone after a reboot anyway (and four fsyncs were a fifth
/// of `run -- true`).
pub fn write_whole(path: &Path, body: &[u8], durable: bool) -> Result<(), String> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        // Private (0600): records and saved options may hold what the user passed.
        let mut f = {
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?
        };
        f.write_all(body)?;
        if durable {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("write {}: {e}", path.display())
    })
}

/// A sandbox's network, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkKind {
    /// Every connection through the policy proxy.
    Proxy,
    /// Loopback only.
    None,
}

impl std::fmt::Display for NetworkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Proxy => "proxy",
            Self::None => "none",
        })
    }
}

/// What the supervisor last wrote about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Recorded {
    /// Setting up: namespaces, root filesystem, network.
    Provisioning,
    /// The command runs.
    Running,
    /// The command exited; state kept.
    Stopped,
    /// Setup failed.
    Failed,
}

/// A sandbox's phase as users see it (OpenShell's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Being set up.
    Provisioning,
    /// Running.
    Ready,
    /// Not running; files kept.
    Stopped,
    /// Failed, or its supervisor died; see the reason.
    Error,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Provisioning => "Provisioning",
            Self::Ready => "Ready",
            Self::Stopped => "Stopped",
            Self::Error => "Error",
        })
    }
}

/// The supervisor process of a sandbox, identified beyond its pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Supervisor {
    /// Host pid.
    pub pid: i32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start: u64,
}

impl Supervisor {
    /// This process.
    pub fn current() -> Option<Self> {
        let pid = i32::try_from(std::process::id()).ok()?;
        Some(Self {
            pid,
            start: start_time(pid)?,
        })
    }

    /// Whether this very process still runs (a reused pid or a zombie does not count).
    pub fn alive(&self) -> bool {
        stat(self.pid).is_some_and(|(state, start)| start == self.start && !"ZX".contains(state))
    }
}

/// State letter and start time of a process, from `/proc/<pid>/stat` (after the
/// parenthesised name, which may itself hold spaces and parentheses).
fn stat(pid: i32) -> Option<(char, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    // Fields from 3 (state) on; start time is field 22.
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.nth(18)?.parse().ok()?))
}

fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|(_, start)| start)
}

/// Everything stored about a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Its name.
    pub name: String,
    /// Image name as given, or `host` for the host view.
    pub image: String,
    /// Image manifest digest, when from an image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
    /// Creation time, seconds since the epoch.
    pub created: u64,
    /// Last time a process started or ended in it, seconds since the epoch.
    pub last_active: u64,
    /// User labels (`--label k=v`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Providers attached (names only; their values never reach the sandbox's state).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<String>,
    /// The sandbox user inside.
    pub uid: u32,
    /// Its group.
    pub gid: u32,
    /// Its network.
    pub network: NetworkKind,
    /// What the supervisor last wrote.
    pub recorded: Recorded,
    /// The supervisor while one runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor: Option<Supervisor>,
    /// Exit status of the last command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Where its supervisor writes logs, when not the sandbox's own `logs/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_dir: Option<std::path::PathBuf>,
    /// Host pid of the sandbox's init while it runs (`sandbox exec` joins its
    /// namespaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_pid: Option<i32>,
    /// What this kernel let it enforce, decided at start (for `sandbox explain`).
    #[serde(default)]
    pub enforced: Enforced,
}

/// What a sandbox's confinement came to on this kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enforced {
    /// The Landlock ABI the rules were built for (0: none).
    pub landlock_abi: i32,
    /// What `best_effort` left out at that ABI.
    pub landlock_dropped: Vec<String>,
    /// Id mapping layout.
    #[serde(default)]
    pub id_mode: crate::idmap::IdMode,
    /// Working directory inside.
    pub workdir: String,
    /// Resource limits and how they were applied.
    #[serde(default)]
    pub limits: crate::limits::Applied,
    /// `--mount` destinations (Landlock grants them; `exec` too).
    #[serde(default)]
    pub mounts: Vec<MountGrant>,
    /// Fallbacks setup took (overlayfs refused, nftables by the host's binary, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

pub use crate::confine::MountGrant;

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Record {
    /// The phase, checking the supervisor is really there.
    pub fn phase(&self) -> (Phase, Option<String>) {
        let alive = self.supervisor.is_some_and(|s| s.alive());
        match self.recorded {
            Recorded::Stopped => (Phase::Stopped, None),
            Recorded::Failed => (Phase::Error, self.reason.clone()),
            Recorded::Provisioning | Recorded::Running if alive => (
                if self.recorded == Recorded::Running {
                    Phase::Ready
                } else {
                    Phase::Provisioning
                },
                None,
            ),
            _ => (
                Phase::Error,
                Some(match self.supervisor {
                    Some(s) => format!("its supervisor (pid {}) is gone", s.pid),
                    None => "its supervisor is gone".into(),
                }),
            ),
        }
    }

    /// Read a sandbox directory's record.
    pub fn load(dir: &Path) -> Result<Self, String> {
        let path = dir.join(FILE);
        let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Write it atomically (temporary file, fsync, rename).
    pub fn save(&self, dir: &Path) -> Result<(), String> {
        self.save_as(dir, true)
    }

    /// Write it atomically; `durable`: see [`write_whole`].
    pub fn save_as(&self, dir: &Path, durable: bool) -> Result<(), String> {
        let body = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        write_whole(&dir.join(FILE), &body, durable)
    }
}

/// `5s`, `3m`, `2h`, `4d`: how kubectl and OpenShell print ages.
pub fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// `2026-11-23T15:04:05Z` for seconds since the epoch.
pub fn rfc3339(secs: u64) -> String {
    let days = i64::try_from(secs / 86400).unwrap_or(0);
    let rem = secs % 86400;
    // Days to civil date (proleptic Gregorian), era-based.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_446_245), "2026-11-23T15:04:05Z");
    }

    #[test]
    fn ages() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(600), "10m");
        assert_eq!(age(3 * 3600), "3h");
        assert_eq!(age(9 * 86400), "9d");
    }

    fn record(recorded: Recorded, supervisor: Option<Supervisor>) -> Record {
        Record {
            name: "a".into(),
            image: "host".into(),
            image_digest: None,
            created: 0,
            last_active: 0,
            labels: BTreeMap::new(),
            providers: vec![],
            uid: 1000,
            gid: 1000,
            network: NetworkKind::Proxy,
            recorded,
            supervisor,
            exit_code: None,
            reason: None,
            log_dir: None,
            init_pid: None,
            enforced: Enforced::default(),
        }
    }

    #[test]
    fn phase_checks_the_supervisor() {
        let me = Supervisor::current().unwrap();
        assert_eq!(record(Recorded::Running, Some(me)).phase().0, Phase::Ready);
        let reused = Supervisor {
            pid: me.pid,
            start: me.start + 1,
        };
        let (phase, why) = record(Recorded::Running, Some(reused)).phase();
        assert_eq!(phase, Phase::Error);
        assert!(why.unwrap().contains("is gone"));
        assert_eq!(record(Recorded::Stopped, None).phase().0, Phase::Stopped);
    }

    #[test]
    fn save_load_round_trip() {
        let dir = std::env::temp_dir().join(format!("openshell-record-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let r = record(Recorded::Stopped, None);
        r.save(&dir).unwrap();
        assert_eq!(Record::load(&dir).unwrap(), r);
        fs::remove_dir_all(&dir).unwrap();
    }
}
