//! Helpers shared by the image suites: the testenv registry variables and a sandbox
//! environment with an image store of its own.
#![allow(dead_code)]

use std::process::{Output, Stdio};

use openshell_tests::{Sandbox, stderr, stdout};

/// The test registry variables (the test is skipped without them, or fails when
/// `registry` is required).
pub fn registry() -> Env {
    let plain = std::env::var("OS_TEST_REGISTRY");
    openshell_tests::need(
        "registry",
        plain.is_ok(),
        "no test registry (sudo tests/env/up.sh; eval \"$(tests/env/env.sh)\")",
    );
    Env {
        plain: plain.unwrap_or_default(),
    }
}

pub struct Env {
    pub plain: String,
}

pub fn var(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("{k} unset (eval \"$(tests/env/env.sh)\")"))
}

/// A sandbox environment with its own image store.
pub fn sb() -> Sandbox {
    Sandbox::new()
}

pub fn os(sb: &Sandbox, args: &[&str]) -> Output {
    sb.cmd()
        .env("OPENSHELL_IMAGE_DIR", sb.state.path().join("images"))
        .env_remove("REGISTRY_AUTH_FILE")
        .env("XDG_RUNTIME_DIR", sb.state.path().join("run"))
        .env("HOME", sb.state.path())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run openshell")
}

pub fn ok(o: &Output) -> String {
    assert!(o.status.success(), "failed: {}{}", stdout(o), stderr(o));
    stdout(o)
}

pub fn base64(s: &str) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[macro_export]
macro_rules! need_registry {
    () => {
        registry()
    };
}
