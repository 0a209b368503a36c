//! Many CLIs on one state directory at once: parallel creates, lists and deletes keep
//! it whole, concurrent deletes of the same sandboxes never trip over each other, and
//! a name's lock file goes with its sandbox while runs, creates and deletes of that one
//! name race.

use std::process::{Child, Command, Output, Stdio};

use openshell_tests::{Sandbox, need_sandbox, stderr, stdout};

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "failed: {}{}", stdout(o), stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(o)))
}

fn concurrent_deletes_never_trip_over_each_other() {
    need_sandbox!();
    let sb = Sandbox::new();
    for i in 0..8 {
        let o = sb.run(&["--keep", "--name", &format!("c{i}")], &["true"]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let bin = openshell_tests::openshell_bin();
    let kids: Vec<Child> = (0..4)
        .map(|_| {
            Command::new(&bin)
                .env("OPENSHELL_STATE_DIR", sb.state.path())
                .args(["sandbox", "delete", "--all"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut deleted = Vec::new();
    for k in kids {
        let o = k.wait_with_output().unwrap();
        for l in stdout(&o).lines() {
            deleted.push(l.to_string());
        }
        for l in stderr(&o).lines() {
            assert!(l.contains("no sandbox named"), "unexpected: {l}");
        }
    }
    deleted.sort();
    let want: Vec<String> = (0..8).map(|i| format!("deleted c{i}")).collect();
    assert_eq!(deleted, want, "each deleted exactly once");
    let left = sb.leftovers();
    assert!(left.is_empty(), "left: {left:?}");
    assert_eq!(lock_files(&sb), Vec::<String>::new());
}

fn lock_files(sb: &Sandbox) -> Vec<String> {
    std::fs::read_dir(sb.state.path().join("sandboxes/.locks"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A name's lock file goes when the name is free again (it used to stay, one file per
/// `run` for ever), also while runs, creates and deletes of one name race; a kept
/// sandbox keeps its lock file.
fn lock_files_go_with_their_sandboxes() {
    need_sandbox!();
    let sb = Sandbox::new();
    for _ in 0..3 {
        assert!(sb.run(&[], &["true"]).status.success());
    }
    assert!(
        sb.run(&["--keep", "--name", "kept"], &["true"])
            .status
            .success()
    );
    assert_eq!(lock_files(&sb), vec!["kept".to_string()]);
    assert!(sb.cli(&["sandbox", "delete", "kept"]).status.success());
    assert_eq!(lock_files(&sb), Vec::<String>::new());
    // Four racers on one name: runs, kept runs and deletes.
    let bin = openshell_tests::openshell_bin();
    let racers: Vec<_> = (0..4)
        .map(|i| {
            let (bin, state) = (bin.clone(), sb.state.path().to_path_buf());
            std::thread::spawn(move || {
                for j in 0..6 {
                    let args: Vec<&str> = match (i + j) % 3 {
                        0 => vec!["run", "--name", "same", "--", "true"],
                        1 => vec!["run", "--keep", "--name", "same", "--", "true"],
                        _ => vec!["sandbox", "delete", "same"],
                    };
                    let o = Command::new(&bin)
                        .env("OPENSHELL_STATE_DIR", &state)
                        .args(&args)
                        .stdin(Stdio::null())
                        .output()
                        .unwrap();
                    let e = stderr(&o);
                    assert!(
                        o.status.success()
                            // A run whose sandbox a racing delete took, stopped by it.
                            || matches!(o.status.code(), None | Some(143))
                            || e.contains("already exists")
                            || e.contains("no sandbox named")
                            || e.contains("was deleted while it was being set up"),
                        "{args:?}: {:?} {e}",
                        o.status
                    );
                }
            })
        })
        .collect();
    for r in racers {
        r.join().unwrap();
    }
    let _ = sb.cli(&["sandbox", "delete", "same"]);
    assert_eq!(sb.leftovers(), Vec::<std::ffi::OsString>::new());
    assert_eq!(lock_files(&sb), Vec::<String>::new());
}

fn twenty_parallel_creates_lists_and_deletes_keep_state_whole() {
    need_sandbox!();
    let sb = Sandbox::new();
    let bin = openshell_tests::openshell_bin();
    let state = sb.state.path().to_path_buf();
    // 20 creators (two of them racing for each of 10 names), listers and deleters at once.
    let mut threads = Vec::new();
    for i in 0..20 {
        let (bin, state) = (bin.clone(), state.clone());
        threads.push(std::thread::spawn(move || {
            let name = format!("p{}", i % 10);
            let create = Command::new(&bin)
                .env("OPENSHELL_STATE_DIR", &state)
                .args(["run", "--keep", "--name", &name, "--", "true"])
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let list = Command::new(&bin)
                .env("OPENSHELL_STATE_DIR", &state)
                .args(["sandbox", "list", "-o", "json"])
                .output()
                .unwrap();
            let del = (i >= 10).then(|| {
                Command::new(&bin)
                    .env("OPENSHELL_STATE_DIR", &state)
                    .args(["sandbox", "delete", &name])
                    .output()
                    .unwrap()
            });
            (name, create, list, del)
        }));
    }
    let mut created = std::collections::BTreeMap::<String, usize>::new();
    for t in threads {
        let (name, create, list, _del) = t.join().unwrap();
        if create.status.success() {
            *created.entry(name.clone()).or_default() += 1;
        } else {
            // Refused as a duplicate, or deleted by a racing delete while being set up
            // (the delete may also stop it with SIGTERM: 143 or killed by it, nothing to say).
            let err = stderr(&create);
            assert!(
                (create.status.code() == Some(143)
                    || std::os::unix::process::ExitStatusExt::signal(&create.status) == Some(15))
                    || err.contains(&format!("a sandbox named {name} already exists"))
                    || err.contains(&format!(
                        "sandbox {name} was deleted while it was being set up"
                    )),
                "unexpected create failure: {}",
                stderr(&create)
            );
        }
        // Every listing is whole JSON with whole records, whatever else is going on.
        let v: serde_json::Value = serde_json::from_slice(&list.stdout)
            .unwrap_or_else(|e| panic!("list output not JSON ({e}): {}", stdout(&list)));
        for s in v.as_array().unwrap() {
            assert!(
                s["reason"]
                    .as_str()
                    .is_none_or(|r| !r.contains("unreadable")),
                "torn record: {s}"
            );
        }
    }
    // Each name was created by at most one of its two racers at a time.
    assert!(created.values().all(|n| *n <= 2), "{created:?}");
    // Whatever survived is a whole, Stopped sandbox; delete --all leaves nothing.
    let v = json(&sb.cli(&["sandbox", "list", "-o", "json"]));
    for s in v.as_array().unwrap() {
        assert_eq!(s["phase"], "Stopped", "{s}");
    }
    assert!(sb.cli(&["sandbox", "delete", "--all"]).status.success());
    let left = sb.leftovers();
    assert!(left.is_empty(), "left: {left:?}");
}

openshell_tests::suite!(
    concurrent_deletes_never_trip_over_each_other,
    lock_files_go_with_their_sandboxes,
    twenty_parallel_creates_lists_and_deletes_keep_state_whole,
);
