//! The runtime's public face: everything the CLI (or any other caller) may use, grouped
//! by what it is for. The layers behind it (`core`, `store`, `supervisor`) are private
//! to the crate, so they can be reshaped without touching callers; an item missing here
//! is not part of the runtime's interface (docs/architecture.md).
//!
//! - running: [`run`] with [`RunOptions`], [`ImageSpec`], [`EXIT_SETUP`];
//! - [`store`], [`record`], [`state`]: the sandboxes on disk (find, list, delete, stop),
//!   their records and phases, the state directory and names;
//! - [`control`]: a running sandbox's control socket;
//! - [`exec`], [`session`]: running more commands in a sandbox, terminals, detaching;
//! - [`forward`]: port forwarding and the connector;
//! - [`transfer`]: copying files into and out of a workspace;
//! - [`limits`]: resource limits as given on the command line and as applied;
//! - [`host`]: what the host can do (`doctor`), id maps, the confinement a sandbox gets.

pub use crate::core::spawn::{EXIT_SETUP, default_sigpipe};
pub use crate::supervisor::image::ImageSpec;
pub use crate::supervisor::run::{RunError, RunOptions, run};

/// The sandboxes on disk.
pub mod store {
    pub use crate::store::sandboxes::{Entry, StoreError, delete, find, list, stop, sweep};
}

/// A sandbox's record (`sandbox.json`), its phase and the files beside it.
pub mod record {
    pub use crate::store::record::{
        NetworkKind, POLICY, Phase, Record, age, now, rfc3339, write_atomic, write_whole,
    };
}

/// The state directory and sandbox names.
pub mod state {
    pub use crate::store::state::{base_dir, check_name, generate_name, parse_upload};
}

/// A running sandbox's control socket (policy, providers, forwards).
pub mod control {
    pub use crate::store::control::{policy_hash, request};
}

/// Commands run in an existing sandbox.
pub mod exec {
    pub use crate::supervisor::exec::{ExecRequest, exec, ppid};
}

/// Terminals and detached supervisors.
pub mod session {
    pub use crate::core::confine::open_pty;
    pub use crate::core::relay::{get_winsize, set_winsize};
    pub use crate::supervisor::detach::{exec_in_child, spawn_supervisor};
}

/// Port forwarding.
pub mod forward {
    pub use crate::supervisor::forward::{Connector, Spec, connector_main};
}

/// Copying files into and out of a sandbox's workspace.
pub mod transfer {
    pub use crate::store::transfer::{
        Report, download, download_tar, upload, upload_tar, workspace_rel,
    };
}

/// Resource limits.
pub mod limits {
    pub use crate::core::limits::{
        Applied, LimitRequest, human, parse_cpus, parse_memory, parse_pids,
    };
}

/// The host: its features (`doctor`), user-namespace id maps, and the confinement a
/// sandbox gets (for `explain`).
pub mod host {
    pub use crate::core::confine::landlock_plan;
    pub use crate::core::idmap::{IdMode, facts, plan, run_mapped};
    pub use crate::core::seccomp::rules as seccomp_rules;
    pub use crate::core::userns::holder_main as userns_holder_main;
    pub use crate::supervisor::features::{Level, probe};
}
