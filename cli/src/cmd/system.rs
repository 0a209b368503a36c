//! `openshell system df|reset`: what openshell's files use on this host, and removing
//! all of them.
//!
//! Rootless with subordinate ids, layers and sandbox upper dirs hold files owned by
//! those ids, which the user cannot read or remove directly: both commands do their
//! file work inside a user namespace mapped like the sandboxes' (`in_store_userns`).
//! `reset` only removes what openshell made (the store's and the state dir's known
//! entries), then the directories if they are left empty: an `OPENSHELL_IMAGE_DIR`
//! pointing at a directory with other files in it keeps those files.

use std::collections::HashSet;
use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use clap::Subcommand;
use openshell_images::store::{Store, force_remove};
use openshell_runtime::api::record::Phase;
use openshell_runtime::api::{state, store};
use serde::Serialize;

use super::image::{human, in_store_userns};
use crate::output::{Format, structured, table};

/// `openshell system ...`
#[derive(Debug, Subcommand)]
pub enum SystemCommand {
    /// Show the space images and sandboxes use.
    Df,
    /// Remove every sandbox (running ones are stopped), every image and all state of
    /// this user. Registry logins and files under ~/.config/openshell stay.
    Reset {
        /// Do not ask.
        #[arg(short, long)]
        force: bool,
    },
}

/// One line of `system df`.
#[derive(Debug, Serialize)]
struct Usage {
    kind: &'static str,
    total: usize,
    active: usize,
    bytes: u64,
    path: String,
}

/// Bytes on disk under `p` (allocated blocks; a hard-linked file once), not following
/// symlinks. Unreadable parts count as nothing.
fn disk_usage(p: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
    let Ok(m) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if !seen.insert((m.dev(), m.ino())) {
        return 0;
    }
    let mut n = m.blocks() * 512;
    if m.is_dir()
        && let Ok(rd) = std::fs::read_dir(p)
    {
        for e in rd.flatten() {
            n += disk_usage(&e.path(), seen);
        }
    }
    n
}

fn fail(e: impl std::fmt::Display) -> i32 {
    eprintln!("openshell: {e}");
    openshell_runtime::api::EXIT_SETUP
}

/// What images and sandboxes there are, and the space they use.
fn usage() -> Vec<Usage> {
    let base = state::base_dir();
    let entries = store::list(&base);
    let running = entries
        .iter()
        .filter(|e| matches!(e.phase().0, Phase::Ready | Phase::Provisioning))
        .count();
    let image_dir = Store::default_root();
    let (images, used) = if image_dir.is_dir() {
        let list = Store::open(&image_dir)
            .and_then(|s| s.list())
            .unwrap_or_default();
        let digests: HashSet<String> = entries
            .iter()
            .filter_map(|e| e.record.as_ref().ok()?.image_digest.clone())
            .collect();
        let used = list.iter().filter(|r| digests.contains(&r.digest)).count();
        (list.len(), used)
    } else {
        (0, 0)
    };
    let mut seen = HashSet::new();
    vec![
        Usage {
            kind: "images",
            total: images,
            active: used,
            bytes: disk_usage(&image_dir, &mut seen),
            path: image_dir.display().to_string(),
        },
        Usage {
            kind: "sandboxes",
            total: entries.len(),
            active: running,
            bytes: disk_usage(&base, &mut seen),
            path: base.display().to_string(),
        },
    ]
}

/// `system df`.
fn df(format: Format) -> i32 {
    let rows = usage();
    if !structured(format, &rows) {
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|u| {
                vec![
                    u.kind.to_string(),
                    u.total.to_string(),
                    u.active.to_string(),
                    human(u.bytes),
                    u.path.clone(),
                ]
            })
            .collect();
        table(&["TYPE", "TOTAL", "ACTIVE", "SIZE", "PATH"], &cells);
    }
    0
}

/// Ask on the terminal; false unless the answer is `yes`.
fn confirm(what: &str) -> bool {
    if !std::io::stdin().is_terminal() {
        eprintln!(
            "openshell: system reset would remove {what}; stdin is not a terminal: pass --force"
        );
        return false;
    }
    eprint!("This removes {what}.\nType 'yes' to go on: ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    line.trim() == "yes"
}

/// Remove the entries openshell made in `dir`, then `dir` if it is empty.
fn remove_known(dir: &Path, known: &[&str]) -> Result<(), String> {
    for k in known {
        let p = dir.join(k);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => force_remove(&p).map_err(|e| e.to_string())?,
            Ok(_) => {
                std::fs::remove_file(&p).map_err(|e| format!("remove {}: {e}", p.display()))?
            }
            Err(_) => {}
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
            eprintln!(
                "openshell: kept {}: it holds files openshell did not make",
                dir.display()
            );
            Ok(())
        }
        Err(e) => Err(format!("remove {}: {e}", dir.display())),
    }
}

/// `system reset`.
fn reset(force: bool) -> i32 {
    let rows = usage();
    let what = format!(
        "{} sandboxes ({} running) and {} images, {} in {} and {}",
        rows[1].total,
        rows[1].active,
        rows[0].total,
        human(rows[0].bytes + rows[1].bytes),
        rows[1].path,
        rows[0].path,
    );
    // Never a directory that holds the user's home (OPENSHELL_IMAGE_DIR=$HOME): only
    // what openshell made is removed, but names like `tmp` are too common there.
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    for d in [state::base_dir(), Store::default_root()] {
        if d == Path::new("/") || home.as_deref().is_some_and(|h| h.starts_with(&d)) {
            return fail(format!(
                "system reset: {} holds your home directory; point OPENSHELL_STATE_DIR / OPENSHELL_IMAGE_DIR at openshell's own directories",
                d.display()
            ));
        }
    }
    if !force && !confirm(&what) {
        return fail("system reset: nothing removed");
    }
    let base = state::base_dir();
    let mut code = 0;
    for e in store::list(&base) {
        match store::delete(&base, &e.name) {
            Ok(()) => println!("deleted sandbox {}", e.name),
            Err(err) => code = fail(err),
        }
    }
    if code != 0 {
        return fail("system reset: some sandboxes could not be deleted; nothing else removed");
    }
    let image_dir = Store::default_root();
    let code = in_store_userns(|_| {
        let mut code = 0;
        let store_entries = ["blobs", "layers", "records", "locks", "tmp", "refs.json"];
        if let Err(e) = remove_known(&image_dir, &store_entries) {
            code = fail(e);
        }
        let state_entries = ["sandboxes", "supervisors", "last-sandbox", "serve", "tmp"];
        if let Err(e) = remove_known(&base, &state_entries) {
            code = fail(e);
        }
        code
    });
    if code == 0 {
        println!(
            "removed all images and state ({})",
            human(rows[0].bytes + rows[1].bytes)
        );
    }
    code
}

/// Run a `system` command.
pub fn run(cmd: SystemCommand, format: Format) -> i32 {
    match cmd {
        SystemCommand::Df => in_store_userns(|_| df(format)),
        SystemCommand::Reset { force } => reset(force),
    }
}
