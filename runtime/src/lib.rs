//! Sandbox lifecycle: supervisor, init, confinement of every process, state on disk.
//!
//! `run` is the supervisor of `openshell run`; `init` is PID 1 inside; `spawn` confines
//! and execs each sandboxed process; `idmap` and `seccomp` plan the user namespace and
//! the syscall filter as data; `state` owns the on-disk layout and `record` each sandbox's record and phase; `features` probes what
//! the kernel offers (for `doctor`). The CLI calls in here and does no kernel work itself.

pub mod confine;
pub mod control;
pub mod detach;
pub mod exec;
pub mod features;
pub mod identity;
pub mod idmap;
pub mod image;
pub mod init;
pub mod limits;
pub mod netsvc;
pub mod platform;
pub mod proctitle;
pub mod record;
pub mod relay;
pub mod run;
pub mod scratch;
pub mod seccomp;
pub mod setup;
pub mod spawn;
pub mod state;
pub mod store;
pub mod supervise;
pub mod threads;
pub mod transfer;
pub mod trim;
pub mod trust;

pub use run::{RunError, RunOptions, run};
