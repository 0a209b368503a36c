//! Shell completion: clap_complete's dynamic engine (`COMPLETE=bash openshell`), so
//! that sandbox, image and provider names complete as well as commands and options.
//! The shell scripts `openshell completions SHELL` prints (and the packages install)
//! call back into the binary for each completion; these functions give the names.
//! They read local state only, never fail (no names rather than an error), never
//! create a directory and never follow a symlink to read.

use clap_complete::engine::CompletionCandidate;

/// This user's sandboxes.
pub fn sandboxes() -> Vec<CompletionCandidate> {
    let base = openshell_runtime::api::state::base_dir();
    openshell_runtime::api::store::list(&base)
        .into_iter()
        .map(|e| CompletionCandidate::new(e.name))
        .collect()
}

/// Names of the images in the store: read from `records/` only (never `Store::open`,
/// which would create the store), through no symlink, from regular files of this user
/// of bounded size.
pub fn images() -> Vec<CompletionCandidate> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let dir = openshell_images::store::Store::default_root().join("records");
    let me = nix::unistd::geteuid().as_raw();
    let ours = |m: &std::fs::Metadata| m.uid() == me;
    match std::fs::symlink_metadata(&dir) {
        Ok(m) if m.is_dir() && ours(&m) => {}
        _ => return Vec::new(),
    }
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten().take(10_000) {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let Ok(f) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&p)
        else {
            continue;
        };
        match f.metadata() {
            Ok(m) if m.is_file() && ours(&m) => {}
            _ => continue,
        }
        let mut text = Vec::new();
        if f.take(1 << 20).read_to_end(&mut text).is_err() {
            continue;
        }
        if let Ok(r) = serde_json::from_slice::<openshell_images::store::ImageRecord>(&text) {
            out.extend(r.names.into_iter().map(CompletionCandidate::new));
        }
    }
    out
}

/// This user's providers.
pub fn providers() -> Vec<CompletionCandidate> {
    let dir = openshell_providers::store::dir();
    if !dir.is_dir() {
        return Vec::new();
    }
    openshell_providers::store::list(&dir)
        .unwrap_or_default()
        .into_iter()
        .map(|p| CompletionCandidate::new(p.name))
        .collect()
}
