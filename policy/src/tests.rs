//! Parsing and validation tests: must-reject cases and their messages (the published
//! OpenShell policies are parsed by the `compat` end-to-end suite).

use super::*;

fn err(src: &str) -> String {
    Policy::parse(src).unwrap_err().render("p.yaml")
}

#[test]
fn unknown_key_is_located() {
    let e = err("version: 1\nfilesystem_policy:\n  read_only: [/usr]\n  raed_write: [/tmp]\n");
    assert!(e.starts_with("p.yaml:4:3: "), "{e}");
    assert!(e.contains("raed_write"), "{e}");
}

#[test]
fn root_user_rejected() {
    for src in [
        "version: 1\nprocess:\n  run_as_user: root\n",
        "version: 1\nprocess:\n  run_as_user: 0\n",
        "version: 1\nprocess:\n  run_as_group: 0\n",
    ] {
        let e = err(src);
        assert!(e.contains("never allowed"), "{e}");
        assert!(e.starts_with("p.yaml:3:"), "{e}");
    }
}

#[test]
fn special_and_unmapped_ids_rejected_in_every_yaml_form() {
    // -1 is "unchanged" to setresuid(2): a process would keep init's uid 0.
    for v in [
        "4294967295",
        "-1",
        "65535",
        "65536",
        "0x0",
        "0o0",
        "0xFFFFFFFF",
        "4294967296",
        "-4294967296",
        "\"0\"",
        "'4294967295'",
        "1e3",
        "0.0",
        "[1]",
    ] {
        for key in ["run_as_user", "run_as_group"] {
            let src = format!("version: 1\nprocess:\n  {key}: {v}\n");
            match Policy::parse(&src) {
                Ok(p) => panic!("{key}: {v} accepted: {:?}", p.process),
                Err(e) => {
                    let e = e.render("p.yaml");
                    assert!(e.starts_with("p.yaml:3:"), "{v}: {e}");
                }
            }
        }
    }
    let e = err("version: 1\nprocess:\n  run_as_user: 65536\n");
    assert!(e.contains("out of range") && e.contains("1..=65534"), "{e}");
    for ok in ["1", "65534", "1000"] {
        let p = Policy::parse(&format!("version: 1\nprocess:\n  run_as_user: {ok}\n")).unwrap();
        assert_eq!(p.identity().0, ok.parse::<u32>().unwrap());
    }
}

#[test]
fn dotdot_and_relative_paths_rejected() {
    let e = err("version: 1\nfilesystem_policy:\n  read_only:\n    - /usr\n    - /usr/../etc\n");
    assert!(
        e.starts_with("p.yaml:5:7: filesystem_policy.read_only[1]"),
        "{e}"
    );
    let e = err("version: 1\nfilesystem_policy:\n  read_write: [tmp]\n");
    assert!(e.contains("not absolute"), "{e}");
}

#[test]
fn root_never_read_write() {
    let e = err("version: 1\nfilesystem_policy:\n  read_write: [/sandbox, /]\n");
    assert!(e.contains("`/` can never be read_write"), "{e}");
    assert!(e.starts_with("p.yaml:3:"), "{e}");
    // Read-only `/` is fine.
    Policy::parse("version: 1\nfilesystem_policy:\n  read_only: [/]\n").unwrap();
}

#[test]
fn bad_version_and_types() {
    assert!(err("version: 2\n").contains("unsupported version 2"));
    let e = err("version: 1\nlandlock:\n  compatibility: strict\n");
    assert!(e.starts_with("p.yaml:3:"), "{e}");
    assert!(err("").contains("missing field `version`"));
}

#[test]
fn network_entries_validated() {
    let e = err(
        "version: 1\nnetwork_policies:\n  a:\n    endpoints:\n      - host: \"*.com\"\n        port: 443\n",
    );
    assert!(e.contains("too broad"), "{e}");
    assert!(e.starts_with("p.yaml:5:"), "{e}");
    let e = err("version: 1\nnetwork_policies:\n  a:\n    endpoints:\n      - host: x.com\n");
    assert!(e.contains("no port"), "{e}");
    let e = err(
        "version: 1\nnetwork_policies:\n  a:\n    endpoints:\n      - {host: x.com, port: 1, access: full}\n",
    );
    assert!(e.contains("need `protocol: rest`"), "{e}");
    let e = err(
        "version: 1\nnetwork_policies:\n  a:\n    endpoints:\n      - {host: x.com, port: 1, allowed_ips: [10.0.0.0/33]}\n",
    );
    assert!(e.contains("prefix"), "{e}");
}

#[test]
fn all_issues_reported_at_once() {
    let e = err(
        "version: 1\nfilesystem_policy:\n  read_write: [/, rel]\nprocess:\n  run_as_user: root\n",
    );
    assert_eq!(e.lines().count(), 3, "{e}");
}

#[test]
fn default_policy_and_identity() {
    let p = Policy::restrictive_default();
    assert_eq!(Policy::parse(&p.to_yaml()).unwrap(), p);
    assert_eq!(p.identity(), (SANDBOX_ID, SANDBOX_ID));
    let (ro, rw) = p.fs_paths("/work");
    assert!(ro.contains(&"/usr".to_string()));
    assert!(rw.contains(&"/work".to_string()) && rw.contains(&"/sandbox".to_string()));
    let p = Policy::parse("version: 1\nprocess: {run_as_user: 1234, run_as_group: 99}\n").unwrap();
    assert_eq!(p.identity(), (1234, 99));
}

#[test]
fn root_is_never_writable_in_any_spelling() {
    for path in [
        "/proc/self/root",
        "/proc/1/root",
        "/proc/thread-self/root/etc",
        "/proc/self/cwd",
        "/proc/self/fd/3",
        "/proc/1/task/1/root",
    ] {
        for list in ["read_write", "read_only"] {
            let e = err(&format!(
                "version: 1\nfilesystem_policy:\n  {list}: [{path}]\n"
            ));
            assert!(e.contains("magic link"), "{list} {path}: {e}");
        }
    }
    let p = Policy::parse(
        "version: 1\nfilesystem_policy:\n  include_workdir: true\n  read_write: [/tmp]\n",
    )
    .unwrap();
    for wd in [
        "/",
        "/.",
        "//",
        "/./",
        "/./.",
        "/proc/self/root",
        "/a/../",
        "rel",
    ] {
        let (_, rw) = p.fs_paths(wd);
        assert_eq!(rw, vec!["/tmp".to_string()], "workdir {wd:?}");
    }
    let (_, rw) = p.fs_paths("/app/./x/");
    assert_eq!(rw, vec!["/tmp".to_string(), "/app/x".to_string()]);
}
