//! Bulk data through every relay of the proxy arrives intact, both ways: the 200 MiB
//! file of the upstream test host downloaded through a CONNECT tunnel (buffered copy,
//! and the opt-in splice relay) and through an inspected endpoint (TLS re-encrypted,
//! hyper in between), and a 24 MiB upload whose SHA-256 the upstream reports back.

use std::process::Output;

use openshell_tests::{Sandbox, TempDir, need_upstream, policy_file, stderr, stdout, up};

const POLICY: &str = "version: 1
network_policies:
  bulk:
    name: bulk
    endpoints:
      - { host: files.test.openshell, port: 443 }
      - { host: files.test.openshell, port: 8443, protocol: rest, access: full }
    binaries:
      - { path: /usr/bin/curl }
";

/// Inside: download, upload, and print the SHA-256s (ours of what came down; the
/// upstream's of what went up, next to ours of what was sent).
const SCRIPT: &str = "set -e
curl -sS -m 120 --cacert /sandbox/ca.crt https://files.test.openshell/big | sha256sum | cut -d' ' -f1
head -c 25165824 /dev/urandom > /tmp/up
sha256sum /tmp/up | cut -d' ' -f1
curl -sS -m 120 --cacert /sandbox/ca.crt --data-binary @/tmp/up https://files.test.openshell/anything/up \
  | python3 -c 'import json,sys; b=json.load(sys.stdin)[\"body\"]; print(b[\"sha256\"]); print(b[\"length\"])'
curl -sS -m 120 https://files.test.openshell:8443/big | sha256sum | cut -d' ' -f1
curl -sS -m 120 --data-binary @/tmp/up https://files.test.openshell:8443/anything/up \
  | python3 -c 'import json,sys; b=json.load(sys.stdin)[\"body\"]; print(b[\"sha256\"]); print(b[\"length\"])'
";

fn run(splice: bool) -> Output {
    let sb = Sandbox::new();
    let dir = TempDir::new("bulk");
    let p = policy_file(dir.path(), "p.yaml", POLICY);
    let ca = up("OS_UPSTREAM_CA");
    let mut cmd = sb.cmd();
    if splice {
        cmd.env("OPENSHELL_SPLICE", "1");
    }
    cmd.args(["run", "--policy"])
        .arg(&p)
        .args(["--upstream-ca", &ca, "--mount"])
        .arg(format!("{ca}:/sandbox/ca.crt:ro"))
        .args(["--", "sh", "-c", SCRIPT])
        .output()
        .unwrap()
}

fn check(out: &Output) {
    let lines: Vec<String> = stdout(out).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 7, "{lines:?} {}", stderr(out));
    let big = up("OS_UPSTREAM_BIG_SHA256");
    assert_eq!(lines[0], big, "the tunnelled download differs");
    assert_eq!(lines[2], lines[1], "the tunnelled upload differs");
    assert_eq!(lines[3], "25165824");
    assert_eq!(lines[4], big, "the inspected download differs");
    assert_eq!(lines[5], lines[1], "the inspected upload differs");
    assert_eq!(lines[6], "25165824");
}

fn bulk_data_is_intact_through_tunnels_and_inspection() {
    need_upstream!();
    check(&run(false));
}

fn bulk_data_is_intact_through_the_splice_relay() {
    need_upstream!();
    check(&run(true));
}

openshell_tests::suite!(
    bulk_data_is_intact_through_tunnels_and_inspection,
    bulk_data_is_intact_through_the_splice_relay,
);
