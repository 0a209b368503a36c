//! Sandbox lifecycle: supervisor, init, confinement of every process, state on disk.
//!
//! Three layers, dependencies pointing down only (docs/architecture.md):
//!
//! - [`core`] — the synchronous sandbox core: init, spawn, seccomp, id maps, the
//!   confinement builder, pty relay, limits. No tokio, no threads; depends on nothing
//!   else of this crate. Every fork/clone of the crate (here and in the supervisor's
//!   `supervise`, `detach`, `exec`, `features`) checks the single-thread rule
//!   (`core::threads`).
//! - [`store`] — what is on disk: the state layout, each sandbox's record and phase,
//!   the sandbox list, scratch files, transfers, the control socket's client.
//! - [`supervisor`] — `run` and what serves a sandbox while it lives: the supervisor,
//!   the network service (proxy host side, identity, trust), detach, exec, images,
//!   host features for `doctor`.
//!
//! The CLI calls in here through [`api`], the crate's only public module, and does no
//! kernel work itself; the layers are private (inside the crate their modules are
//! named from the root: `crate::record`, ...).

mod core {
    //! The synchronous sandbox core (no tokio, no threads; depends on nothing else here).
    pub mod confine;
    pub mod idmap;
    pub mod init;
    pub mod limits;
    pub mod proctitle;
    pub mod relay;
    pub mod seccomp;
    pub mod setup;
    pub mod spawn;
    pub mod threads;
    pub mod trim;
    pub mod userns;
    pub mod vfork;
}

mod store {
    //! What is on disk: state layout, records, the sandbox list, scratch, transfers.
    pub mod control;
    pub mod record;
    pub mod sandboxes;
    pub mod scratch;
    pub mod state;
    pub mod transfer;
}

mod supervisor {
    //! `run`, and what serves a sandbox while it lives.
    pub mod detach;
    pub mod error;
    pub mod exec;
    pub mod features;
    pub mod forward;
    pub mod identity;
    pub mod image;
    pub mod netsvc;
    pub mod platform;
    pub mod run;
    pub mod supervise;
    pub mod trust;
}

pub mod api;

// Inside the crate the modules are named from the root (`crate::record`, ...).
pub(crate) use core::{
    confine, idmap, init, limits, proctitle, relay, seccomp, setup, spawn, threads, trim, userns,
    vfork,
};
pub(crate) use store::{record, scratch, state};
pub(crate) use supervisor::{
    error, exec, forward, identity, image, netsvc, platform, run, supervise, trust,
};
