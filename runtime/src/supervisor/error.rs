//! `RunError`: why `run` (and the supervisor it becomes) failed before the command
//! could start. Its own module so that the supervisor's parts (`run`, `supervise`)
//! depend on it rather than on each other.

use crate::{idmap, state::StateError};

/// `run` failed before the command could start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// State directory trouble.
    #[error(transparent)]
    State(#[from] StateError),
    /// Landlock cannot be enforced and the policy requires it.
    #[error(
        "landlock hard_requirement cannot be met on this kernel (ABI {abi}): missing {missing}; use best_effort or a newer kernel"
    )]
    LandlockRequired { abi: i32, missing: String },
    /// A syscall of the supervisor failed.
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        #[source]
        source: nix::errno::Errno,
    },
    /// Writing the id maps failed.
    #[error("user namespace id map: {0}")]
    IdMap(#[from] idmap::IdMapError),
    /// init reported a setup failure: which step, errno, path (a hint in its message).
    #[error("sandbox setup failed: {0}")]
    Init(#[from] crate::setup::SetupError),
    /// The supervisor's side of setup failed (init gone, proxy not started, ...).
    #[error("sandbox setup failed: {0}")]
    Setup(String),
    /// Bad argument.
    #[error("{0}")]
    Invalid(String),
    /// A fork was about to happen in a multi-threaded process (a bug: see threads.rs).
    #[error("{0}")]
    Threads(String),
}

pub(crate) fn sys(what: &'static str) -> impl FnOnce(nix::errno::Errno) -> RunError {
    move |source| RunError::Sys { what, source }
}
