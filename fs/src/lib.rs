//! Sandbox root filesystems: plans (pure data), their executor, and Landlock.
//!
//! `plan` decides what the root looks like; `apply` performs it inside init's mount
//! namespace; `landlock` turns the policy's paths into a ruleset. This crate knows
//! nothing of processes, namespaces other than mount, or the network.

pub mod apply;
pub mod flatten;
pub mod home;
pub mod inroot;
pub mod landlock;
pub mod plan;

pub use apply::{Applied, FsError, apply, apply_with};
pub use plan::{HostFacts, ImageLayers, MountOp, MountPlan, RootSpec, UserMount};

/// Read what the host-view plan needs to know about the host.
pub fn host_facts() -> HostFacts {
    let mut facts = HostFacts::default();
    for name in plan::SYSTEM_DIRS {
        let path = std::path::Path::new("/").join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(&path) {
                    facts.system.push(((*name).to_string(), Some(target)));
                }
            }
            Ok(m) if m.is_dir() => facts.system.push(((*name).to_string(), None)),
            _ => {}
        }
    }
    for secret in plan::ETC_SECRETS {
        if std::path::Path::new("/etc").join(secret).exists() {
            facts.etc_secrets.push((*secret).to_string());
        }
    }
    facts
}
