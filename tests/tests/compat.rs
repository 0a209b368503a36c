//! The published OpenShell policies (`../shared/compat/policies` next to the
//! repository, or `$OPENSHELL_COMPAT_POLICIES`) all parse and survive a round trip, or
//! are refused with a located "not supported yet" for what we do not support.
//! Without the directory the test is reported as skipped (CI requires `compat`).

use std::path::PathBuf;

use openshell_policy::Policy;

fn compat_dir() -> PathBuf {
    match std::env::var_os("OPENSHELL_COMPAT_POLICIES") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/compat/policies"),
    }
}

fn every_published_policy_parses_or_is_clearly_unsupported() {
    let dir = compat_dir();
    let entries = std::fs::read_dir(&dir);
    openshell_tests::need(
        "compat",
        entries.is_ok(),
        &format!(
            "no published policies at {} (set OPENSHELL_COMPAT_POLICIES)",
            dir.display()
        ),
    );
    let mut n = 0;
    for e in entries.unwrap() {
        let path = e.unwrap().path();
        let src = std::fs::read_to_string(&path).unwrap();
        n += 1;
        match Policy::parse(&src) {
            Ok(p) => {
                let again = Policy::parse(&p.to_yaml()).expect("round trip parses");
                assert_eq!(p, again, "round trip of {}", path.display());
            }
            Err(e) => {
                let msg = e.render("f");
                assert!(
                    src.contains("network_middlewares") && msg.contains("not supported yet"),
                    "{}: {msg}",
                    path.display()
                );
                assert!(msg.starts_with("f:"), "located: {msg}");
            }
        }
    }
    assert!(n >= 10, "expected the 10 published policies, found {n}");
}

openshell_tests::suite!(every_published_policy_parses_or_is_clearly_unsupported);
