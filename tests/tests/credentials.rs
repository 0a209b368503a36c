//! Providers end to end (docs/credentials.md): the sandbox holds placeholders only, the
//! proxy swaps the real value in where the credential is bound and refuses it
//! elsewhere; real agents (Claude Code, Codex) work on placeholders against the
//! testenv model API stand-in, whose answers carry the fingerprint of the key that
//! arrived. As root and (in CI) as an unprivileged user.

mod common;

use std::process::Command;

use openshell_tests::agents::{ProviderEnv, fingerprint as fp, ok};
use openshell_tests::{need_upstream, policy_file, stderr, stdout, up};

const KEY: &str = "sk-ant-test-123";
const OPENAI_KEY: &str = "sk-openai-test-456";

type Env = ProviderEnv;

/// The upstream's access log lines holding `marker`.
fn upstream_saw(marker: &str) -> Vec<String> {
    std::fs::read_to_string(up("OS_UPSTREAM_ACCESS_LOG"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(marker))
        .map(String::from)
        .collect()
}

fn placeholders_are_swapped_only_where_bound() {
    need_upstream!();
    let e = Env::new();
    let host = up("OS_UPSTREAM_HOST");
    let other = up("OS_UPSTREAM_OTHER_HOST");
    ok(&e.cli(&[
        "provider",
        "create",
        "--name",
        "ant",
        "--type",
        "anthropic",
        "--credential",
        &format!("ANTHROPIC_API_KEY={KEY}"),
        "--config",
        &format!("base_url=https://{host}/v1"),
        "--config",
        "inject_query=key",
        "--config",
        "inject_path=true",
    ]));
    // The listing never shows the value.
    let list = ok(&e.cli(&["provider", "list", "-o", "json"]));
    assert!(
        !list.contains(KEY) && list.contains(&fp(KEY)[..12]),
        "{list}"
    );
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert!(v[0]["created"].as_str().unwrap().ends_with('Z'), "{list}");
    // The user's policy allows another host (inspected) where the key is not bound.
    let pol = policy_file(
        e.dir.path(),
        "p.yaml",
        &format!(
            "version: 1\nnetwork_policies:\n  other:\n    endpoints:\n      - {{ host: {other}, port: 443, protocol: rest, access: full }}\n    binaries:\n      - {{ path: /usr/bin/curl }}\n"
        ),
    );
    let m = format!("m{}", std::process::id());
    let ph = "openshell:resolve:env:ANTHROPIC_API_KEY";
    let basic = "$(printf 'user:%s' \"$ANTHROPIC_API_KEY\" | base64 -w0)";
    let script = format!(
        r#"echo "env=$ANTHROPIC_API_KEY base=$ANTHROPIC_BASE_URL"
cat /proc/*/environ 2>/dev/null | tr '\0' '\n' | grep -c '{KEY}'
H='-H anthropic-version:2023-06-01 -H content-type:application/json'
B='{{"model":"m","max_tokens":5,"messages":[{{"role":"user","content":"hi {m}"}}]}}'
echo "header: $(curl -sS $H -H "x-api-key: $ANTHROPIC_API_KEY" -d "$B" $ANTHROPIC_BASE_URL/messages | grep -o 'key=[0-9a-f]*')"
echo "bearer: $(curl -sS $H -H "Authorization: Bearer $ANTHROPIC_API_KEY" -d "$B" $ANTHROPIC_BASE_URL/messages | grep -o 'key=[0-9a-f]*')"
echo "query: $(curl -sS -o /dev/null -w '%{{http_code}}' "$ANTHROPIC_BASE_URL/models?m={m}q&key=$ANTHROPIC_API_KEY")"
echo "path: $(curl -sS -o /dev/null -w '%{{http_code}}' "$ANTHROPIC_BASE_URL/models/{m}p-$ANTHROPIC_API_KEY")"
echo "basic: $(curl -sS -o /dev/null -w '%{{http_code}}' -H "Authorization: Basic {basic}" "$ANTHROPIC_BASE_URL/models?m={m}b")"
echo "unbound-path: $(curl -sS -H "x-api-key: $ANTHROPIC_API_KEY" "https://{host}/headers?m={m}u")"
echo "unbound-host: $(curl -sS -H "x-api-key: $ANTHROPIC_API_KEY" "https://{other}/v1/models?m={m}o")"
echo "cookie: $(curl -sS -H "Cookie: k=$ANTHROPIC_API_KEY" "$ANTHROPIC_BASE_URL/models?m={m}c")"
echo "inside: $(curl -sS -H "x-api-key: pre-$ANTHROPIC_API_KEY" "$ANTHROPIC_BASE_URL/models?m={m}i")"
echo "unknown: $(curl -sS -H "x-api-key: openshell:resolve:env:NOPE" "$ANTHROPIC_BASE_URL/models?m={m}n")"
echo "echoed-header: $(curl -sS -H "anthropic-beta: $ANTHROPIC_API_KEY" "$ANTHROPIC_BASE_URL/models?m={m}e")"
echo "other-param: $(curl -sS "$ANTHROPIC_BASE_URL/models?m={m}r&q=$ANTHROPIC_API_KEY")"
echo "inside-param: $(curl -sS "$ANTHROPIC_BASE_URL/models?m={m}s&key=x$ANTHROPIC_API_KEY")"
echo "dot-dot: $(curl -sS --path-as-is -H "x-api-key: $ANTHROPIC_API_KEY" "https://{host}/v1/../headers?m={m}d")"
echo "cleartext: $(curl -sS -H "x-api-key: $ANTHROPIC_API_KEY" "http://{host}:443/v1/models?m={m}t")"
"#
    );
    let out = e.run(
        &["--policy", pol.to_str().unwrap(), "--provider", "ant"],
        &["sh", "-c", &script],
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    assert!(
        text.contains(&format!("env={ph} base=https://{host}/v1")),
        "{text}"
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[1], "0",
        "the real key is in some process's environment: {text}"
    );
    let want = format!("key={}", fp(KEY));
    assert!(text.contains(&format!("header: {want}")), "{text}");
    assert!(text.contains(&format!("bearer: {want}")), "{text}");
    // Query and path forms arrived with the value (the upstream's log shows it).
    assert!(text.contains("query: 200"), "{text}");
    assert!(
        upstream_saw(&format!("{m}q"))
            .iter()
            .any(|l| l.contains(&format!("key={KEY}")))
    );
    assert!(upstream_saw(&format!("{m}p-{KEY}")).len() == 1, "{text}");
    // Basic: decoded, swapped, re-encoded (the stand-in records its fingerprint).
    assert!(text.contains("basic: 200"), "{text}");
    let last = Command::new("curl")
        .args(["-sS", "--cacert", &up("OS_UPSTREAM_CA")])
        .arg(format!("https://{host}/v1/_testenv/last?kind=models"))
        .output()
        .unwrap();
    let basic_value = format!("Basic {}", common::base64(&format!("user:{KEY}")));
    assert!(
        stdout(&last).contains(&format!("sha256:{}", fp(&basic_value))),
        "{}",
        stdout(&last)
    );
    // Everywhere else: refused by the proxy, nothing sent.
    for (label, marker) in [
        ("unbound-path", "u"),
        ("unbound-host", "o"),
        ("cookie", "c"),
        ("inside", "i"),
        ("echoed-header", "e"),
        ("other-param", "r"),
        ("inside-param", "s"),
        ("dot-dot", "d"),
        ("cleartext", "t"),
    ] {
        let line = lines.iter().find(|l| l.starts_with(label)).unwrap();
        assert!(
            line.contains("credential_endpoint_mismatch"),
            "{label}: {text}"
        );
        assert!(
            upstream_saw(&format!("{m}{marker}")).is_empty(),
            "{label} reached the upstream"
        );
    }
    let line = lines.iter().find(|l| l.starts_with("unknown")).unwrap();
    assert!(line.contains("credential_unavailable"), "{text}");
    assert!(!text.contains(KEY) && !stderr(&out).contains(KEY), "{text}");
}

/// `provider update` reaches a running sandbox at once; `provider delete` makes its
/// placeholders fail closed; the sandbox's state never holds the value.
fn rotation_and_deletion_reach_running_sandboxes() {
    need_upstream!();
    let e = Env::new();
    let host = up("OS_UPSTREAM_HOST");
    ok(&e.cli(&[
        "provider",
        "create",
        "--name",
        "ant",
        "--type",
        "anthropic",
        "--credential",
        &format!("ANTHROPIC_API_KEY={KEY}"),
        "--config",
        &format!("base_url=https://{host}"),
    ]));
    let ca = up("OS_UPSTREAM_CA");
    let name = format!("rot{}", std::process::id());
    ok(&e.cli(&[
        "sandbox",
        "create",
        "--detach",
        "--name",
        &name,
        "--provider",
        "ant",
        "--upstream-ca",
        &ca,
    ]));
    let ask = || {
        let script = r#"curl -sS -H "x-api-key: $ANTHROPIC_API_KEY" -H content-type:application/json -d '{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"x"}]}' $ANTHROPIC_BASE_URL/v1/messages"#;
        stdout(&e.cli(&["sandbox", "exec", &name, "--", "sh", "-c", script]))
    };
    assert!(ask().contains(&format!("key={}", fp(KEY))));
    let new = "sk-ant-rotated-789";
    let o = e
        .cmd()
        .args([
            "provider",
            "update",
            "ant",
            "--credential",
            "ANTHROPIC_API_KEY",
        ])
        .env("ANTHROPIC_API_KEY", new)
        .output()
        .unwrap();
    assert!(
        stderr(&o).contains("credentials of ant updated"),
        "{}",
        stderr(&o)
    );
    assert!(ask().contains(&format!("key={}", fp(new))));
    // Nothing of the sandbox's state holds a value.
    let grep = Command::new("grep")
        .args(["-r", "-l", "-e", KEY, "-e", new])
        .arg(e.sb.state.path())
        .output()
        .unwrap();
    assert!(stdout(&grep).is_empty(), "{}", stdout(&grep));
    ok(&e.cli(&["provider", "delete", "ant"]));
    assert!(ask().contains("credential_unavailable"));
    ok(&e.cli(&["sandbox", "delete", &name]));
}

/// Bad input is refused with what to do.
fn bad_provider_input_is_refused_clearly() {
    need_upstream!();
    let e = Env::new();
    for (args, want) in [
        (
            vec!["provider", "create", "--name", "x", "--type", "nope"],
            "unknown provider type",
        ),
        (
            vec![
                "provider",
                "create",
                "--name",
                "x",
                "--type",
                "claude-code",
                "--from-existing",
            ],
            "none of ANTHROPIC_API_KEY",
        ),
        (
            vec![
                "provider",
                "create",
                "--name",
                "x",
                "--type",
                "generic",
                "--credential",
                "UNSET_VAR_X",
            ],
            "not set in this environment",
        ),
        (
            vec![
                "provider",
                "create",
                "--name",
                "x",
                "--type",
                "generic",
                "--config",
                "base_url=ftp://a",
            ],
            "http or https",
        ),
        (
            vec![
                "provider",
                "create",
                "--name",
                "x",
                "--type",
                "generic",
                "--config",
                "color=red",
            ],
            "unknown setting",
        ),
        (
            vec!["provider", "create", "--name", "../x", "--type", "generic"],
            "invalid provider name",
        ),
        (
            vec!["provider", "get", "missing"],
            "no provider named missing",
        ),
    ] {
        let o = e.cli(&args);
        assert!(!o.status.success(), "{args:?}");
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
    }
    // A profile file with an unknown key: file:line:col.
    let dir = e.config.path().join("openshell/profiles");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("mine.yaml"), "type: mine\ncredentails: [A]\n").unwrap();
    let o = e.cli(&["provider", "list-profiles"]);
    assert!(
        stderr(&o).contains("mine.yaml:2:1:") && stderr(&o).contains("credentails"),
        "{}",
        stderr(&o)
    );
    std::fs::remove_file(dir.join("mine.yaml")).unwrap();
    // A user policy may not use the reserved prefix.
    let pol = policy_file(
        e.dir.path(),
        "p.yaml",
        "version: 1\nnetwork_policies:\n  _provider_x:\n    endpoints: [{host: a.b, port: 443}]\n    binaries: [{path: /usr/bin/curl}]\n",
    );
    let o = e.run(&["--policy", pol.to_str().unwrap()], &["true"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("p.yaml:3:") && stderr(&o).contains("reserved"),
        "{}",
        stderr(&o)
    );
    // Providers need the proxy; an unknown --provider is named.
    ok(&e.cli(&[
        "provider",
        "create",
        "--name",
        "g",
        "--type",
        "github",
        "--credential",
        "GITHUB_TOKEN=ghp_x",
    ]));
    let o = e.run(&["--provider", "g", "--network", "none"], &["true"]);
    assert!(stderr(&o).contains("need the proxy"), "{}", stderr(&o));
    let o = e.run(&["--provider", "nope"], &["true"]);
    assert!(
        stderr(&o).contains("no provider named nope"),
        "{}",
        stderr(&o)
    );
    // An L4 endpoint that would carry a bound credential uninspected.
    let l4 = policy_file(
        e.dir.path(),
        "l4.yaml",
        "version: 1\nnetwork_policies:\n  gh:\n    endpoints: [{host: api.github.com, port: 443}]\n    binaries: [{path: /usr/bin/curl}]\n",
    );
    let o = e.run(
        &["--provider", "g", "--policy", l4.to_str().unwrap()],
        &["true"],
    );
    assert!(stderr(&o).contains("without inspection"), "{}", stderr(&o));
}

fn need_bin(bin: &str, feature: &str) {
    openshell_tests::need(
        feature,
        std::path::Path::new(bin).exists(),
        &format!("no {bin} (npm install -g @anthropic-ai/claude-code @openai/codex)"),
    );
}

/// `openshell run -- claude` with the key only in the user's environment: the
/// provider is created by itself, Claude Code answers with the real key's fingerprint,
/// and no process inside holds the key. Then the walkthrough's task in a created
/// sandbox, with a policy naming the symlink `/usr/bin/claude`.
fn claude_code_works_on_placeholders() {
    need_upstream!();
    need_bin("/usr/bin/claude", "agents");
    let e = Env::new();
    let host = up("OS_UPSTREAM_HOST");
    let base = format!("https://{host}");
    let o = e
        .cmd()
        .args([
            "run",
            "--upstream-ca",
            &up("OS_UPSTREAM_CA"),
            "-e",
            "CLAUDE_CODE_MAX_RETRIES=0",
            "--",
            "claude",
            "-p",
            "hi",
        ])
        .env("ANTHROPIC_API_KEY", KEY)
        .env("ANTHROPIC_BASE_URL", &base)
        .output()
        .unwrap();
    assert!(
        stdout(&o).contains(&format!("key={}", fp(KEY))),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("created provider claude-code"),
        "{}",
        stderr(&o)
    );
    // The same provider again, now through a created sandbox: the walkthrough's task.
    let name = format!("cc{}", std::process::id());
    let ca = up("OS_UPSTREAM_CA");
    let o = e.cli(&[
        "sandbox",
        "create",
        "--name",
        &name,
        "--upstream-ca",
        &ca,
        "-e",
        "CLAUDE_CODE_MAX_RETRIES=0",
        "--",
        "claude",
        "-p",
        "Please create hello_world.py",
        "--allowedTools",
        "Write",
    ]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let o = e.cli(&["sandbox", "exec", &name, "--", "sh", "-c", "cat /sandbox/hello_world.py; cat /proc/*/environ | tr '\\0' '\\n' | grep ANTHROPIC_API_KEY | sort -u"]);
    let text = stdout(&o);
    assert!(
        text.contains("print(\"Hello, World!\")"),
        "{text}{}",
        stderr(&o)
    );
    assert!(
        text.contains("ANTHROPIC_API_KEY=openshell:resolve:env:ANTHROPIC_API_KEY"),
        "{text}"
    );
    assert!(!text.contains(KEY), "{text}");
    let o = e.cli(&["policy", "get", &name, "--full"]);
    assert!(
        stdout(&o).contains("_provider_claude-code"),
        "{}",
        stdout(&o)
    );
    // --base leaves the provider's entry out: what `policy set` takes back.
    let o = e.cli(&["policy", "get", &name, "--base"]);
    assert!(
        o.status.success() && !stdout(&o).contains("_provider_") && stdout(&o).contains("---\n"),
        "{}",
        stdout(&o)
    );
    ok(&e.cli(&["sandbox", "delete", &name]));
}

/// Codex with a provider (its config.toml naming the test endpoint), and a user policy
/// naming only the launcher script `/usr/bin/codex` (the connecting program is the
/// vendored binary it starts: the ancestor rule covers it).
fn codex_works_on_placeholders_and_its_launcher_names_it() {
    need_upstream!();
    need_bin("/usr/bin/codex", "agents");
    let e = Env::new();
    let host = up("OS_UPSTREAM_HOST");
    let home = e.dir.path().join(".codex");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(
        home.join("config.toml"),
        format!("model = \"gpt-5-codex\"\nmodel_provider = \"testenv\"\n[analytics]\nenabled = false\n[features]\nplugins = false\n[model_providers.testenv]\nname = \"testenv\"\nbase_url = \"https://{host}/v1\"\nenv_key = \"OPENAI_API_KEY\"\nwire_api = \"responses\"\n"),
    )
    .unwrap();
    ok(&e.cli(&[
        "provider",
        "create",
        "--name",
        "cx",
        "--type",
        "codex",
        "--credential",
        &format!("OPENAI_API_KEY={OPENAI_KEY}"),
        "--config",
        &format!("base_url=https://{host}/v1"),
    ]));
    let upload = format!("{}:/sandbox/.codex", home.display());
    let common = [
        "--upload",
        upload.as_str(),
        "-e",
        "CODEX_HOME=/sandbox/.codex",
    ];
    let argv = [
        "timeout",
        "90",
        "codex",
        "exec",
        "--skip-git-repo-check",
        "say hi",
    ];
    let mut opts = vec!["--provider", "cx"];
    opts.extend(common);
    let o = e.run(&opts, &argv);
    assert!(
        stdout(&o).contains(&format!("key={} chat: say hi", fp(OPENAI_KEY))),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
    // No provider: a policy naming the launcher and the key given by -e (the user's
    // choice; the key is then inside).
    let pol = policy_file(
        e.dir.path(),
        "p.yaml",
        &format!(
            "version: 1\nnetwork_policies:\n  codex:\n    endpoints:\n      - {{ host: {host}, port: 443, protocol: rest, access: full }}\n    binaries:\n      - {{ path: /usr/bin/codex }}\n"
        ),
    );
    let key_env = format!("OPENAI_API_KEY={OPENAI_KEY}");
    let mut opts = vec![
        "--no-auto-providers",
        "--policy",
        pol.to_str().unwrap(),
        "-e",
        key_env.as_str(),
    ];
    opts.extend(common);
    let o = e.run(&opts, &argv);
    assert!(
        stdout(&o).contains(&format!("key={}", fp(OPENAI_KEY))),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );
}

openshell_tests::suite!(
    placeholders_are_swapped_only_where_bound,
    rotation_and_deletion_reach_running_sandboxes,
    bad_provider_input_is_refused_clearly,
    claude_code_works_on_placeholders,
    codex_works_on_placeholders_and_its_launcher_names_it,
);
