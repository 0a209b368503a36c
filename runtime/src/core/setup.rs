//! init's setup failures, typed. init sends one to the supervisor over the sync socket
//! (`msg::ERROR` then this as JSON) instead of a bare string: which step failed, the
//! errno, the path — so the supervisor, the log and the user see the same facts, and
//! the message carries a hint where the user can act (a mount refused in a user
//! namespace, nftables refused, ...). Decoding never fails: an unreadable message
//! (e.g. from an older binary) becomes a `Step::Unknown` error with its text.

use std::fmt;
use std::path::PathBuf;

use nix::errno::Errno;
use openshell_fs::FsError;
use openshell_netns::NetError;
use serde::{Deserialize, Serialize};

/// The step of init's setup that failed, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Dropping the host's supplementary groups.
    Groups,
    /// The router and agent network namespaces (veth, nftables, listeners).
    Network,
    /// The root filesystem (mounts, pivot_root, read-only remounts).
    Filesystem,
    /// The sandbox's hostname.
    Hostname,
    /// The route out (once the rules are in).
    Route,
    /// Handing the listeners to the supervisor.
    Listeners,
    /// The pty in the sandbox's devpts.
    Pty,
    /// Blocking the forwarded signals.
    Signals,
    /// Starting the command.
    Start,
    /// A message that could not be decoded.
    Unknown,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Groups => "supplementary groups",
            Self::Network => "network",
            Self::Filesystem => "root filesystem",
            Self::Hostname => "hostname",
            Self::Route => "route",
            Self::Listeners => "proxy listeners",
            Self::Pty => "pty",
            Self::Signals => "signals",
            Self::Start => "start the command",
            Self::Unknown => "setup",
        })
    }
}

/// One setup failure, as init reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct SetupError {
    /// Which step.
    pub step: Step,
    /// The errno, when a system call failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    /// The path involved, inside or outside the sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// What failed, in words (the underlying error's message).
    pub message: String,
}

impl SetupError {
    /// A failure of `step` described by `message`.
    pub fn new(step: Step, message: impl Into<String>) -> Self {
        Self {
            step,
            errno: None,
            path: None,
            message: message.into(),
        }
    }

    /// `what` failed with `errno` during `step`.
    pub fn sys(step: Step, what: &str, errno: Errno) -> Self {
        Self {
            errno: Some(errno as i32),
            ..Self::new(step, format!("{what}: {errno}"))
        }
    }

    /// The root filesystem failed.
    pub fn fs(e: &FsError) -> Self {
        let (errno, path) = match e {
            FsError::MakeSlave(n) => (Some(*n as i32), None),
            FsError::Create { path, source } => (source.raw_os_error(), Some(path.clone())),
            FsError::Mount { path, source, .. }
            | FsError::ReadOnly { path, source }
            | FsError::PivotRoot { path, source } => (Some(*source as i32), Some(path.clone())),
            FsError::OntoRoot { path } => (None, Some(path.clone())),
        };
        Self {
            errno,
            path,
            ..Self::new(Step::Filesystem, e.to_string())
        }
    }

    /// The network failed.
    pub fn net(e: &NetError) -> Self {
        let errno = match e {
            NetError::Socket(n) => *n as i32,
            NetError::LinkUp { source, .. }
            | NetError::Netlink { source, .. }
            | NetError::Listen { source, .. } => *source as i32,
        };
        Self {
            errno: Some(errno),
            ..Self::new(Step::Network, e.to_string())
        }
    }

    /// The wire form: JSON (the caller puts `msg::ERROR` in front).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| self.message.clone().into_bytes())
    }

    /// Read the wire form back; never fails.
    pub fn decode(bytes: &[u8]) -> Self {
        serde_json::from_slice(bytes)
            .unwrap_or_else(|_| Self::new(Step::Unknown, String::from_utf8_lossy(bytes)))
    }

    /// What the user can do about it, when there is something.
    pub fn hint(&self) -> Option<&'static str> {
        let denied = matches!(
            self.errno.map(Errno::from_raw),
            Some(Errno::EPERM | Errno::EACCES)
        );
        match (self.step, self.errno.map(Errno::from_raw)) {
            (Step::Filesystem, Some(Errno::ENOENT)) => Some(
                "a path the sandbox mounts does not exist: check --mount and the policy's paths",
            ),
            (Step::Filesystem, _) if denied => Some(
                "the kernel refused a mount in the user namespace: run `openshell doctor`; OPENSHELL_NO_OVERLAY=1 avoids overlayfs",
            ),
            (Step::Network, _) if denied => Some(
                "the kernel refused network setup in the user namespace: run `openshell doctor`, or --network none",
            ),
            (Step::Network | Step::Filesystem | Step::Pty, Some(Errno::ENOSPC | Errno::ENOMEM)) => {
                Some(
                    "out of a kernel resource (memory, namespaces, ptys): close sandboxes you no longer need",
                )
            }
            _ => None,
        }
    }
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.step, self.message)?;
        if let Some(h) = self.hint() {
            write!(f, " ({h})")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_hints() {
        let e = SetupError::fs(&FsError::Mount {
            what: "overlay".into(),
            path: "/x".into(),
            source: Errno::EPERM,
        });
        let back = SetupError::decode(&e.encode());
        assert_eq!(back, e);
        assert_eq!(back.errno, Some(libc::EPERM));
        assert_eq!(back.path.as_deref(), Some(std::path::Path::new("/x")));
        let shown = back.to_string();
        assert!(
            shown.starts_with("root filesystem: mount overlay on /x"),
            "{shown}"
        );
        assert!(shown.contains("openshell doctor"), "{shown}");
        let n = SetupError::net(&NetError::Netlink {
            what: "add veth",
            source: Errno::EPERM,
        });
        assert!(n.to_string().contains("--network none"));
        assert_eq!(
            SetupError::sys(Step::Hostname, "sethostname", Errno::EINVAL).hint(),
            None
        );
    }

    #[test]
    fn garbage_decodes_to_its_text() {
        let e = SetupError::decode(b"plain words");
        assert_eq!((e.step, e.message.as_str()), (Step::Unknown, "plain words"));
        assert_eq!(e.to_string(), "setup: plain words");
    }
}
