//! Shell completion: clap_complete's dynamic engine (`COMPLETE=bash openshell`), so
//! that sandbox, image and provider names complete as well as commands and options.
//! The shell scripts `openshell completions SHELL` prints (and the packages install)
//! call back into the binary for each completion; these functions give the names.
//! They read local state only, never fail (no names rather than an error), and never
//! create a directory.

use clap_complete::engine::CompletionCandidate;

/// This user's sandboxes.
pub fn sandboxes() -> Vec<CompletionCandidate> {
    let base = openshell_runtime::state::base_dir();
    openshell_runtime::store::list(&base)
        .into_iter()
        .map(|e| CompletionCandidate::new(e.name))
        .collect()
}

/// Names of the images in the store.
pub fn images() -> Vec<CompletionCandidate> {
    let root = openshell_images::store::Store::default_root();
    if !root.is_dir() {
        return Vec::new();
    }
    let Ok(list) = openshell_images::store::Store::open(&root).and_then(|s| s.list()) else {
        return Vec::new();
    };
    list.into_iter()
        .flat_map(|r| r.names)
        .map(CompletionCandidate::new)
        .collect()
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
