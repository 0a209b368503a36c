//! `openshell sandbox upload|download`: copy into and out of a sandbox's workspace,
//! running or stopped (the workspace is a host directory bound at `/sandbox`).

use std::path::{Path, PathBuf};

use openshell_runtime::transfer::{self, Report};
use openshell_runtime::{idmap, state, store};

use crate::output::fail;

fn finish(name: &str, verb: &str, r: &Report) -> i32 {
    for why in &r.refused {
        eprintln!("openshell: {why}");
    }
    println!(
        "{verb} {} files ({} bytes){}",
        r.files,
        r.bytes,
        if name.is_empty() {
            String::new()
        } else {
            format!(" {name}")
        }
    );
    i32::from(!r.refused.is_empty())
}

/// `sandbox upload NAME LOCAL [DEST]` (DEST default: /sandbox/<basename of LOCAL>).
pub fn upload(name: &str, local: &Path, dest: Option<&str>, all: bool) -> i32 {
    let e = match store::find(&state::base_dir(), name) {
        Ok(e) => e,
        Err(err) => return fail(err),
    };
    let base = local
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let rel = match transfer::workspace_rel(dest.unwrap_or(&base)) {
        Ok(r) if !r.as_os_str().is_empty() => r,
        Ok(_) => PathBuf::from(&base),
        Err(err) => return fail(err),
    };
    if rel.as_os_str().is_empty() {
        return fail(format!(
            "{}: name a destination under /sandbox",
            local.display()
        ));
    }
    // Root's sandbox user is an unprivileged host id: it must own what arrives.
    let owner = e.record.as_ref().ok().and_then(|r| {
        nix::unistd::geteuid().is_root().then(|| {
            let plan = idmap::plan(&idmap::facts(), r.uid, r.gid);
            Some((plan.outside_uid(r.uid)?, plan.outside_gid(r.gid)?))
        })?
    });
    match transfer::upload(local, &e.dir.join("workspace"), &rel, all, owner) {
        Ok(r) => finish(&format!("to /sandbox/{}", rel.display()), "uploaded", &r),
        Err(err) => fail(format!("sandbox {name}: {err}")),
    }
}

/// `sandbox download NAME PATH [DEST]` (DEST default: ./<basename of PATH>).
pub fn download(name: &str, path: &str, dest: Option<&Path>) -> i32 {
    let e = match store::find(&state::base_dir(), name) {
        Ok(e) => e,
        Err(err) => return fail(err),
    };
    let rel = match transfer::workspace_rel(path) {
        Ok(r) => r,
        Err(err) => return fail(err),
    };
    let base = rel
        .file_name()
        .map_or_else(|| PathBuf::from("sandbox"), PathBuf::from);
    let dest = match dest {
        Some(d) if d.is_dir() => d.join(&base),
        Some(d) => d.to_path_buf(),
        None => base,
    };
    match transfer::download(&e.dir.join("workspace"), &rel, &dest) {
        Ok(r) => finish(&format!("to {}", dest.display()), "downloaded", &r),
        Err(err) => fail(format!("sandbox {name}: {err}")),
    }
}
