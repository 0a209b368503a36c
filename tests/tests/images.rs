//! Images end to end, against the real registry of `tests/env` (never a mock):
//! pull variants, auth, TLS, platforms, offline sources, `run --from`, store commands.
//! Hostile and broken images are in `images_hostile.rs`.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use openshell_tests::{TempDir, need_sandbox, stderr, stdout};

fn pulls_every_manifest_and_compression_kind() {
    let e = need_registry!();
    let sb = sb();
    let latest = "sha256:64c4028f49e8356b3773aed06f6606bd173b6ab742367ed8b7b9dfe416bfbeeb";
    for (tag, want) in [
        ("latest", latest),
        (
            "docker",
            "sha256:890c6145829d93e1406e5faa8d4d8f5cb6732e2cb5a6dd80986b3714fb207381",
        ),
        (
            "zstd",
            "sha256:816ca4b4ee4ad33795f40a93294ff57ad7ce49447d0b4ef2414f0837e3b8ea68",
        ),
        (
            "uncompressed",
            "sha256:fd338d4e01de90bf655089155fb72350281ea9ba277177f49e2d8ddf82efc110",
        ),
        (
            "mixed",
            "sha256:5bd341a8cd3314d6e831e8b4e21fe2679e3c10fc882cfbc69574c8fb8a8e99c2",
        ),
        // An OCI index: the amd64 entry (listed second) is busybox:latest.
        ("multiarch", latest),
    ] {
        let out = os(
            &sb,
            &["image", "pull", "-q", &format!("{}/busybox:{tag}", e.plain)],
        );
        assert_eq!(ok(&out).trim(), want, "busybox:{tag}");
    }
    // By digest.
    let out = os(
        &sb,
        &[
            "image",
            "pull",
            "-q",
            &format!("{}/busybox@{latest}", e.plain),
        ],
    );
    assert_eq!(ok(&out).trim(), latest);
    // Another platform from an index, Docker manifest list flavour.
    let out = os(
        &sb,
        &[
            "image",
            "pull",
            "--platform",
            "linux/arm64",
            &format!("{}/busybox:multiarch-docker", e.plain),
        ],
    );
    ok(&out);
    let out = os(
        &sb,
        &[
            "image",
            "inspect",
            &format!("{}/busybox:multiarch-docker", e.plain),
        ],
    );
    assert!(
        ok(&out).contains("\"architecture\": \"arm64\""),
        "{}",
        stdout(&out)
    );
    // Every busybox image shares its base layer: one directory in the store.
    let layers = std::fs::read_dir(sb.state.path().join("images/layers"))
        .unwrap()
        .count();
    assert!(layers <= 6, "layers not shared: {layers}");
    let out = os(&sb, &["image", "list", "-o", "json"]);
    assert!(ok(&out).contains("busybox:zstd"));
    // Times in JSON are RFC 3339, not epoch numbers.
    let v: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    let pulled = v[0]["pulled"].as_str().unwrap_or_default();
    assert!(pulled.starts_with("20") && pulled.ends_with('Z'), "{v}");
}

fn bearer_basic_and_credentials() {
    let _e = need_registry!();
    let sb = sb();
    let bearer = var("OS_TEST_REGISTRY_BEARER");
    // Anonymous bearer token flow.
    ok(&os(
        &sb,
        &["image", "pull", "-q", &format!("{bearer}/busybox:latest")],
    ));
    // A private repository needs credentials: a clear one-line error without them.
    let out = os(
        &sb,
        &["image", "pull", &format!("{bearer}/private/busybox:latest")],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!(
            "openshell: registry {bearer} refused access to {bearer}/private/busybox:latest"
        )),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // Credentials from ~/.docker/config.json (Docker's format: base64 user:password).
    let docker_dir = sb.state.path().join(".docker");
    std::fs::create_dir_all(&docker_dir).unwrap();
    let auth = base64(&format!(
        "{}:{}",
        var("OS_TEST_REGISTRY_USER"),
        var("OS_TEST_REGISTRY_PASSWORD")
    ));
    std::fs::write(
        docker_dir.join("config.json"),
        format!(r#"{{"auths":{{"{bearer}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    ok(&os(
        &sb,
        &[
            "image",
            "pull",
            "-q",
            &format!("{bearer}/private/busybox:latest"),
        ],
    ));
    std::fs::remove_file(docker_dir.join("config.json")).unwrap();
    // login / logout against the basic-auth registry.
    let basic = var("OS_TEST_REGISTRY_BASIC");
    let out = os(&sb, &["image", "pull", &format!("{basic}/busybox:latest")]);
    assert!(stderr(&out).contains("refused access"), "{}", stderr(&out));
    let login = |pw: &str| {
        let mut c = sb.cmd();
        c.env("XDG_RUNTIME_DIR", sb.state.path().join("run"))
            .env("HOME", sb.state.path())
            .args([
                "image",
                "login",
                &basic,
                "-u",
                &var("OS_TEST_REGISTRY_USER"),
                "--password-stdin",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(pw.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = login("wrong-password");
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("refused"), "{}", stderr(&out));
    ok(&login(&var("OS_TEST_REGISTRY_PASSWORD")));
    let file = sb.state.path().join("run/containers/auth.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    ok(&os(
        &sb,
        &["image", "pull", "-q", &format!("{basic}/busybox:latest")],
    ));
    ok(&os(&sb, &["image", "logout", &basic]));
    let out = os(&sb, &["image", "pull", &format!("{basic}/busybox:docker")]);
    assert!(stderr(&out).contains("refused access"), "{}", stderr(&out));
}

fn tls_needs_a_trusted_ca() {
    let _e = need_registry!();
    let sb = sb();
    let tls = var("OS_TEST_REGISTRY_TLS");
    let out = os(&sb, &["image", "pull", &format!("{tls}/busybox:latest")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("certificate"), "{}", stderr(&out));
    let ca = var("OS_TEST_REGISTRY_CA");
    ok(&os(
        &sb,
        &[
            "image",
            "pull",
            "--registry-ca",
            &ca,
            &format!("{tls}/busybox:latest"),
        ],
    ));
    // TLS + bearer tokens from an https token server.
    let secure = var("OS_TEST_REGISTRY_SECURE");
    ok(&os(
        &sb,
        &[
            "image",
            "pull",
            "--registry-ca",
            &ca,
            &format!("{secure}/busybox:latest"),
        ],
    ));
}

fn missing_things_fail_with_one_clear_line() {
    let e = need_registry!();
    let sb = sb();
    for (reference, want) in [
        (
            format!("{}/busybox:no-such-tag", e.plain),
            "not found in registry",
        ),
        (
            format!("{}/no/such/repo:latest", e.plain),
            "not found in registry",
        ),
        (
            "127.0.0.1:1/busybox:latest".to_string(),
            "registry 127.0.0.1:1 unreachable",
        ),
        ("Bad Ref".to_string(), "whitespace"),
    ] {
        let out = os(&sb, &["image", "pull", &reference]);
        assert_eq!(out.status.code(), Some(1), "{reference}");
        let err = stderr(&out);
        assert!(
            err.contains(want) && err.lines().count() == 1,
            "{reference}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

fn run_from_image_honours_the_config() {
    let e = need_registry!();
    need_sandbox!();
    let sb = sb();
    // Entrypoint + Cmd when no command is given; pulled on first use.
    let out = os(
        &sb,
        &["run", "--from", &format!("{}/busybox:latest", e.plain)],
    );
    assert_eq!(ok(&out), "hello from busybox\n");
    let ml = format!("{}/busybox:multilayer", e.plain);
    assert_eq!(
        ok(&os(&sb, &["run", "--from", &ml])),
        "busybox:multilayer\n"
    );
    // User "sandbox" via the image's /etc/passwd, WorkingDir, Env.
    let out = os(
        &sb,
        &[
            "run",
            "--from",
            &ml,
            "--",
            "sh",
            "-c",
            "id -u; pwd; echo $TESTENV_IMAGE; cat /data/modified.txt",
        ],
    );
    assert_eq!(
        ok(&out),
        "1000\n/sandbox\nbusybox:multilayer\nversion 2 (layer 3)\n"
    );
    // Whiteouts and opaque dirs as the OCI spec says.
    let out = os(
        &sb,
        &[
            "run",
            "--from",
            &ml,
            "--",
            "sh",
            "-c",
            "ls /data/opaque; ls /data/opaque-empty | wc -l; test -e /data/delete-me.txt || echo gone; test -e /usr/bin/wget || echo nowget",
        ],
    );
    assert_eq!(ok(&out), "new.txt\n0\ngone\nnowget\n");
    // --pull never with a missing image is an error before anything starts.
    let out = os(
        &sb,
        &[
            "run",
            "--pull",
            "never",
            "--from",
            &format!("{}/busybox:zstd", e.plain),
            "--",
            "true",
        ],
    );
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains("--pull never"), "{}", stderr(&out));
}

fn sandboxes_of_one_image_share_layers_but_not_changes() {
    let e = need_registry!();
    need_sandbox!();
    let sb = sb();
    let img = format!("{}/busybox:latest", e.plain);
    ok(&os(&sb, &["image", "pull", &img]));
    let a = sb
        .cmd()
        .env("OPENSHELL_IMAGE_DIR", sb.state.path().join("images"))
        .args([
            "run",
            "--from",
            &img,
            "--",
            "sh",
            "-c",
            "echo a > /tmp/mine; echo a > /sandbox/mine; sleep 2; cat /sandbox/mine",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let out = os(
        &sb,
        &[
            "run",
            "--from",
            &img,
            "--",
            "sh",
            "-c",
            "cat /sandbox/mine /tmp/mine 2>&1 | wc -l; ls /sandbox | wc -l",
        ],
    );
    assert_eq!(
        ok(&out),
        "2\n0\n",
        "the second sandbox saw the first one's files"
    );
    let out = a.wait_with_output().unwrap();
    assert_eq!(stdout(&out), "a\n");
    assert_eq!(
        std::fs::read_dir(sb.state.path().join("images/layers"))
            .unwrap()
            .count(),
        1
    );
}

fn private_copy_when_overlay_is_unavailable() {
    let e = need_registry!();
    need_sandbox!();
    let sb = sb();
    let out = sb
        .cmd()
        .env("OPENSHELL_IMAGE_DIR", sb.state.path().join("images"))
        .env("OPENSHELL_NO_OVERLAY", "1")
        .args([
            "-v",
            "run",
            "--from",
            &format!("{}/busybox:multilayer", e.plain),
            "--",
            "sh",
            "-c",
            "cat /data/modified.txt; ls /data/opaque; test -e /usr/bin/wget || echo nowget",
        ])
        .output()
        .unwrap();
    assert_eq!(ok(&out), "version 2 (layer 3)\nnew.txt\nnowget\n");
    // The fallback is said with -v, not silent.
    assert!(
        stderr(&out).contains("overlayfs: the image root is a private copy"),
        "{}",
        stderr(&out)
    );
}

fn offline_sources() {
    let _e = need_registry!();
    need_sandbox!();
    let sb = sb();
    let dir = var("OS_TEST_IMAGES_DIR");
    for src in [
        format!("oci:{dir}/oci/busybox_multilayer:multilayer"),
        format!("oci-archive:{dir}/archives/busybox_multilayer.tar"),
        format!("docker-archive:{dir}/docker-archives/busybox_multilayer.tar"),
    ] {
        let out = os(&sb, &["run", "--from", &src]);
        assert_eq!(ok(&out), "busybox:multilayer\n", "{src}");
    }
    // A directory holding a rootfs (busybox-static comes with tests/env).
    let root = TempDir::new("rootfs");
    std::fs::create_dir_all(root.path().join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.path().join("bin/busybox"))
        .expect("busybox-static installed");
    let r = root.path().to_string_lossy().into_owned();
    let out = os(
        &sb,
        &[
            "run",
            "--from",
            &r,
            "--",
            "/bin/busybox",
            "echo",
            "from a dir",
        ],
    );
    assert_eq!(ok(&out), "from a dir\n");
}

fn store_commands_and_in_use_protection() {
    let e = need_registry!();
    need_sandbox!();
    let sb = sb();
    let img = format!("{}/busybox:latest", e.plain);
    ok(&os(&sb, &["image", "pull", &img]));
    let out = os(&sb, &["image", "list"]);
    assert!(ok(&out).starts_with("NAME"), "{}", stdout(&out));
    assert!(stdout(&out).contains(&img));
    let mut user = sb
        .cmd()
        .env("OPENSHELL_IMAGE_DIR", sb.state.path().join("images"))
        .args(["run", "--from", &img, "--", "sleep", "3"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let out = os(&sb, &["image", "rm", &img]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("is used by sandbox"),
        "{}",
        stderr(&out)
    );
    // --force on an image in use: the names go, the layers stay while it runs.
    assert!(ok(&os(&sb, &["image", "rm", "--force", &img])).contains("untagged"));
    assert!(ok(&os(&sb, &["image", "list"])).contains("<none>"));
    assert_eq!(
        std::fs::read_dir(sb.state.path().join("images/layers"))
            .unwrap()
            .count(),
        1
    );
    let _ = user.wait();
    let out = os(&sb, &["image", "prune"]);
    assert!(ok(&out).starts_with("removed 1 layers"), "{}", stdout(&out));
    assert_eq!(ok(&os(&sb, &["image", "list", "-q"])), "");
    assert_eq!(
        std::fs::read_dir(sb.state.path().join("images/layers"))
            .unwrap()
            .count(),
        0
    );
}

openshell_tests::suite!(
    pulls_every_manifest_and_compression_kind,
    bearer_basic_and_credentials,
    tls_needs_a_trusted_ca,
    missing_things_fail_with_one_clear_line,
    run_from_image_honours_the_config,
    sandboxes_of_one_image_share_layers_but_not_changes,
    private_copy_when_overlay_is_unavailable,
    offline_sources,
    store_commands_and_in_use_protection,
);
