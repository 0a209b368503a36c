//! Property tests of the policy parser and the L7 path rules: whatever bytes arrive
//! (random, or valid policies mutated), parsing ends with a policy or a located error —
//! never a panic or a hang — and what parses is stable (its YAML parses to the same
//! policy) and keeps the guarantees (`/` never writable, ids 1..=65534).
//!
//! CI runs proptest's default case count; `bench/fuzz.sh` runs these with
//! `PROPTEST_CASES` in the hundreds of thousands (release build).

use openshell_policy::Policy;
use openshell_policy::l7::{canonical_path, path_matches};
use proptest::prelude::*;

const SEED: &str = r#"version: 1
filesystem_policy:
  include_workdir: true
  read_only: [/usr, /lib, /etc, /proc, /dev/urandom]
  read_write: [/sandbox, /tmp, /dev/null]
landlock:
  compatibility: best_effort
process:
  run_as_user: sandbox
  run_as_group: sandbox
network_policies:
  github:
    name: github
    endpoints:
      - { host: api.github.com, port: 443, protocol: rest, tls: terminate, access: read-only }
      - host: "*.githubusercontent.com"
        port: 443
        rules:
          - allow: { method: GET, path: "/repos/**" }
    binaries:
      - { path: /usr/bin/git }
      - { path: "/usr/lib/node_modules/**" }
  pypi:
    name: pypi
    endpoints:
      - { host: pypi.org, ports: [80, 443] }
      - { host: 10.0.0.0/8, port: 5432, allowed_ips: ["10.1.0.0/16"] }
    binaries:
      - { path: "/usr/bin/python3*" }
"#;

/// One edit of a text: replace, insert or delete a byte, or splice a piece that
/// matters to YAML or to the schema.
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Insert(usize, &'static str),
    Delete(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let pieces = prop::sample::select(vec![
        ":",
        "- ",
        "\n  ",
        "{",
        "}",
        "[",
        "]",
        "\"",
        "'",
        "&a ",
        "*a",
        "!!binary ",
        "~",
        "..",
        "/",
        "/proc/self/root",
        "0",
        "-1",
        "4294967295",
        "65535",
        "0x10",
        "1e3",
        "read_write: [/]\n",
        "run_as_user: 0\n",
        "\t",
        "\u{0}",
        "\u{feff}",
        "#",
        "? ",
        "<<: *a\n",
        "**",
        "*.",
        "port: 99999\n",
        "host: \"\"\n",
    ]);
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<usize>(), pieces).prop_map(|(i, p)| Edit::Insert(i, p)),
        (any::<usize>(), 0usize..40).prop_map(|(i, n)| Edit::Delete(i, n)),
    ]
}

fn mutate(seed: &str, edits: &[Edit]) -> String {
    let mut b = seed.as_bytes().to_vec();
    for e in edits {
        let len = b.len().max(1);
        match e {
            Edit::Set(i, v) if !b.is_empty() => b[i % len] = *v,
            Edit::Set(..) => {}
            Edit::Insert(i, p) => {
                let at = i % (b.len() + 1);
                b.splice(at..at, p.bytes());
            }
            Edit::Delete(i, n) => {
                let at = i % len.min(b.len().max(1));
                let end = (at + n).min(b.len());
                if at < end {
                    b.drain(at..end);
                }
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// What every accepted policy must keep.
fn check_accepted(p: &Policy, src: &str) {
    let again = Policy::parse(&p.to_yaml())
        .unwrap_or_else(|e| panic!("its own YAML does not parse: {}\n{src}", e.render("p")));
    assert_eq!(p, &again, "round trip changed the policy:\n{src}");
    let (_, rw) = p.fs_paths("/sandbox");
    assert!(!rw.iter().any(|r| r == "/"), "/ writable:\n{src}");
    let (uid, gid) = p.identity();
    assert!(
        (1..=65534).contains(&uid) && (1..=65534).contains(&gid),
        "{uid}:{gid}\n{src}"
    );
}

proptest! {
    #[test]
    fn mutated_policies_parse_or_fail_cleanly(edits in prop::collection::vec(edit(), 1..8)) {
        let src = mutate(SEED, &edits);
        match Policy::parse(&src) {
            Ok(p) => check_accepted(&p, &src),
            Err(e) => {
                let text = e.render("p.yaml");
                prop_assert!(text.starts_with("p.yaml"), "{text}");
            }
        }
    }

    #[test]
    fn random_text_never_panics(src in "(?s).{0,400}") {
        if let Ok(p) = Policy::parse(&src) {
            check_accepted(&p, &src);
        }
    }

    #[test]
    fn canonical_paths_are_stable(raw in "[/a-z%.2fF5cC\\\\?#]{0,60}", slash in any::<bool>()) {
        if let Ok(c) = canonical_path(&raw, slash) {
            prop_assert!(c.starts_with('/'), "{raw:?} -> {c:?}");
            prop_assert!(!c.split('/').any(|s| s == ".." || s == "."), "{raw:?} -> {c:?}");
            let again = canonical_path(&c, slash);
            prop_assert_eq!(again, Ok(c.clone()), "{:?}", raw);
        }
    }

    #[test]
    fn path_globs_end_quickly(glob in "[/a*?{},]{0,40}", path in "[/a]{0,200}") {
        // Many `**` against a long path: a backtracking matcher would not end.
        let _ = path_matches(&glob, &path);
    }
}
