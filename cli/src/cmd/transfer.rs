//! `openshell sandbox upload|download`: copy into and out of a sandbox's workspace,
//! running or stopped (the workspace is a host directory bound at `/sandbox`).

use std::path::{Path, PathBuf};

use openshell_runtime::api::transfer::{self, Report};
use openshell_runtime::api::{host as idmap, state, store};

use crate::output::fail;

fn finish(name: &str, verb: &str, r: &Report) -> i32 {
    report(name, verb, r, false)
}

/// The summary goes to stderr when stdout carries a tar stream.
fn report(name: &str, verb: &str, r: &Report, to_stderr: bool) -> i32 {
    for why in &r.refused {
        eprintln!("openshell: {why}");
    }
    let line = format!(
        "{verb} {} files ({} bytes){}",
        r.files,
        r.bytes,
        if name.is_empty() {
            String::new()
        } else {
            format!(" {name}")
        }
    );
    if to_stderr {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
    i32::from(!r.refused.is_empty())
}

/// `sandbox upload NAME LOCAL [DEST]` (DEST default: /sandbox/<basename of LOCAL>);
/// LOCAL `-`: a tar stream on stdin, unpacked into DEST (default /sandbox).
pub fn upload(name: &str, local: &Path, dest: Option<&str>, all: bool) -> i32 {
    let e = match store::find(&state::base_dir(), name) {
        Ok(e) => e,
        Err(err) => return fail(err),
    };
    if local == Path::new("-") {
        let rel = match transfer::workspace_rel(dest.unwrap_or("/sandbox")) {
            Ok(r) => r,
            Err(err) => return fail(err),
        };
        let owner = owner_of(&e);
        return match transfer::upload_tar(
            std::io::stdin().lock(),
            &e.dir.join("workspace"),
            &rel,
            owner,
        ) {
            Ok(r) => finish(&format!("to /sandbox/{}", rel.display()), "uploaded", &r),
            Err(err) => fail(format!("sandbox {name}: {err}")),
        };
    }
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
    let owner = owner_of(&e);
    match transfer::upload(local, &e.dir.join("workspace"), &rel, all, owner) {
        Ok(r) => finish(&format!("to /sandbox/{}", rel.display()), "uploaded", &r),
        Err(err) => fail(format!("sandbox {name}: {err}")),
    }
}

/// Root's sandbox user is an unprivileged host id: it must own what arrives.
fn owner_of(e: &store::Entry) -> Option<(u32, u32)> {
    e.record.as_ref().ok().and_then(|r| {
        nix::unistd::geteuid().is_root().then(|| {
            let plan = idmap::plan(&idmap::facts(), r.uid, r.gid);
            Some((plan.outside_uid(r.uid)?, plan.outside_gid(r.gid)?))
        })?
    })
}

/// `sandbox download NAME PATH [DEST]` (DEST default: ./<basename of PATH>; `-`: a tar
/// stream on stdout).
pub fn download(name: &str, path: &str, dest: Option<&Path>) -> i32 {
    let e = match store::find(&state::base_dir(), name) {
        Ok(e) => e,
        Err(err) => return fail(err),
    };
    let rel = match transfer::workspace_rel(path) {
        Ok(r) => r,
        Err(err) => return fail(err),
    };
    if dest == Some(Path::new("-")) {
        let out = std::io::stdout().lock();
        return match transfer::download_tar(&e.dir.join("workspace"), &rel, out) {
            Ok(r) => report("to stdout", "downloaded", &r, true),
            Err(err) => fail(format!("sandbox {name}: {err}")),
        };
    }
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
