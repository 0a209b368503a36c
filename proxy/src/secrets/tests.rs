//! The placeholder swap: every place a credential travels, every place it must not,
//! bindings by host, port, path and program.

use super::*;

fn vault() -> Vec<Credential> {
    vec![
        Credential {
            key: "API_KEY".into(),
            value: "sk-real-123".into(),
            provider: "p".into(),
            bindings: vec![Binding {
                query: vec!["key".into()],
                in_path: true,
                ..Binding::new("api.test.openshell", 443, "/v1/**")
            }],
            binaries: vec![],
        },
        Credential {
            key: "TOKEN".into(),
            value: "tok/../x".into(),
            provider: "q".into(),
            bindings: vec![Binding {
                headers: vec!["x-t".into()],
                in_path: true,
                ..Binding::new("*.test.openshell", 443, "")
            }],
            binaries: vec!["/usr/bin/claude".into()],
        },
    ]
}

fn parts(target: &str, headers: &[(&str, &str)]) -> Parts {
    let mut b = hyper::Request::builder().uri(target);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn run(target: &str, headers: &[(&str, &str)], host: &str, exe: &str) -> Result<Parts, Refusal> {
    let mut p = parts(target, headers);
    let chain = vec![exe.to_string()];
    let dest = Destination {
        host,
        port: 443,
        chain: &chain,
        tls: true,
        inspected: true,
    };
    rewrite(&mut p, &dest, &vault()).map(|_| p)
}

const PH: &str = "openshell:resolve:env:API_KEY";

#[test]
fn header_shapes_are_swapped() {
    let p = run(
        "/v1/messages",
        &[("x-api-key", PH)],
        "api.test.openshell",
        "/usr/bin/curl",
    )
    .unwrap();
    assert_eq!(p.headers["x-api-key"], "sk-real-123");
    let p = run(
        "/v1/x",
        &[("authorization", &format!("Bearer {PH}"))],
        "api.test.openshell",
        "/x",
    )
    .unwrap();
    assert_eq!(p.headers["authorization"], "Bearer sk-real-123");
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("user:{PH}"));
    let p = run(
        "/v1/x",
        &[("authorization", &format!("Basic {basic}"))],
        "api.test.openshell",
        "/x",
    )
    .unwrap();
    let want = base64::engine::general_purpose::STANDARD.encode("user:sk-real-123");
    assert_eq!(p.headers["authorization"], format!("Basic {want}").as_str());
}

#[test]
fn query_and_path_are_swapped() {
    let p = run(
        &format!("/v1/q?key={PH}&a=b"),
        &[],
        "api.test.openshell",
        "/x",
    )
    .unwrap();
    assert_eq!(p.uri.query(), Some("key=sk-real-123&a=b"));
    let p = run(
        &format!("/v1/bot{PH}/send"),
        &[],
        "api.test.openshell",
        "/x",
    )
    .unwrap();
    assert_eq!(p.uri.path(), "/v1/botsk-real-123/send");
    // A value that would change the path's meaning is never put in one.
    let ph = "openshell:resolve:env:TOKEN";
    let e = run(
        &format!("/v1/{ph}"),
        &[],
        "api.test.openshell",
        "/usr/bin/claude",
    )
    .unwrap_err();
    assert_eq!(
        e,
        Refusal::Unavailable {
            key: "TOKEN".into()
        }
    );
}

#[test]
fn bindings_decide() {
    // Another host, another path, another program.
    for (target, host, exe) in [
        ("/v1/m", "other.test.openshell", "/x"),
        ("/v2/m", "api.test.openshell", "/x"),
        ("/headers", "api.test.openshell", "/x"),
    ] {
        let e = run(target, &[("x-api-key", PH)], host, exe).unwrap_err();
        assert!(
            matches!(e, Refusal::Mismatch { .. }),
            "{target} {host}: {e:?}"
        );
    }
    let ph = "openshell:resolve:env:TOKEN";
    let e = run(
        "/any",
        &[("x-t", ph)],
        "files.test.openshell",
        "/usr/bin/curl",
    )
    .unwrap_err();
    assert!(matches!(e, Refusal::Mismatch { .. }));
    let p = run(
        "/any",
        &[("x-t", ph)],
        "files.test.openshell",
        "/usr/bin/claude",
    )
    .unwrap();
    assert_eq!(p.headers["x-t"], "tok/../x");
    let e = run(
        "/v1/m",
        &[("x-api-key", "openshell:resolve:env:NOPE")],
        "api.test.openshell",
        "/x",
    )
    .unwrap_err();
    assert_eq!(e, Refusal::Unavailable { key: "NOPE".into() });
}

#[test]
fn misplaced_placeholders_are_refused() {
    for (k, v) in [
        ("cookie", format!("session={PH}")),
        ("x-api-key", format!("{PH}{PH}")),
        ("x-api-key", format!("prefix {PH} suffix")),
        ("x-api-key", PH.to_uppercase()),
        ("x-api-key", format!("Bearer {}", PH.to_uppercase())),
        (
            "authorization",
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(PH.to_uppercase())
            ),
        ),
    ] {
        let e = run("/v1/m", &[(k, &v)], "api.test.openshell", "/x").unwrap_err();
        assert!(matches!(e, Refusal::Misplaced { .. }), "{k}: {v}: {e:?}");
    }
    let e = run(&format!("/v1/m?{PH}=1"), &[], "api.test.openshell", "/x").unwrap_err();
    assert!(matches!(e, Refusal::Misplaced { .. }));
    // Percent-encoded in the query: decoded before the decision.
    let enc = PH.replace(':', "%3A");
    let p = run(&format!("/v1/m?key={enc}"), &[], "api.test.openshell", "/x").unwrap();
    assert!(p.uri.query().unwrap().contains("sk-real"), "{:?}", p.uri);
}

#[test]
fn heads_without_placeholders_are_untouched_and_values_redacted() {
    let p = run("/v1/m?a=b%20c", &[("x-a", "b")], "elsewhere", "/x").unwrap();
    assert_eq!(p.uri.to_string(), "/v1/m?a=b%20c");
    let c = vault();
    assert!(!format!("{:?}", c).contains("sk-real"));
    let mut h = hyper::HeaderMap::new();
    h.insert("x-echo", HeaderValue::from_static("got sk-real-123"));
    redact_response(&mut h, &["sk-real-123".into()], &c);
    assert_eq!(h["x-echo"], "got openshell:resolve:env:API_KEY");
}

#[test]
fn placement_scheme_inspection_and_canonical_paths_decide() {
    // A header the binding does not name (an API could echo it in an error).
    let e = run(
        "/v1/m",
        &[("anthropic-beta", PH)],
        "api.test.openshell",
        "/x",
    )
    .unwrap_err();
    assert!(matches!(e, Refusal::Mismatch { .. }), "{e:?}");
    // A query parameter the binding does not name, and one inside a longer value.
    let e = run(
        &format!("/v1/q?other={PH}"),
        &[],
        "api.test.openshell",
        "/x",
    )
    .unwrap_err();
    assert!(matches!(e, Refusal::Mismatch { .. }), "{e:?}");
    let e = run(&format!("/v1/q?key=x{PH}"), &[], "api.test.openshell", "/x").unwrap_err();
    assert!(matches!(e, Refusal::Misplaced { .. }), "{e:?}");
    // Dot segments cannot leave the bound path.
    for p in ["/v1/../api/x", "/v1/%2e%2e/api/x", "/v1/./../headers"] {
        let e = run(p, &[("x-api-key", PH)], "api.test.openshell", "/x").unwrap_err();
        assert!(
            matches!(e, Refusal::Mismatch { .. } | Refusal::Misplaced { .. }),
            "{p}: {e:?}"
        );
    }
    // Plain http (a forwarded request) never gets an https binding's credential, and
    // an uninspected endpoint never gets one at all.
    let chain = vec!["/x".to_string()];
    for (tls, inspected) in [(false, true), (true, false), (false, false)] {
        let mut p = parts("/v1/m", &[("x-api-key", PH)]);
        let d = Destination {
            host: "api.test.openshell",
            port: 443,
            chain: &chain,
            tls,
            inspected,
        };
        assert!(
            rewrite(&mut p, &d, &vault()).is_err(),
            "tls {tls} inspected {inspected}"
        );
    }
    // Binaries: the sending program itself, not an ancestor.
    let mut p = parts("/any", &[("x-t", "openshell:resolve:env:TOKEN")]);
    let chain = vec!["/usr/bin/curl".to_string(), "/usr/bin/claude".to_string()];
    let d = Destination {
        host: "files.test.openshell",
        port: 443,
        chain: &chain,
        tls: true,
        inspected: true,
    };
    assert!(matches!(
        rewrite(&mut p, &d, &vault()),
        Err(Refusal::Mismatch { .. })
    ));
    // Echoed values are redacted in their encoded form too, or the header goes.
    let mut h = hyper::HeaderMap::new();
    h.insert(
        "location",
        HeaderValue::from_static("/v1/q?key=sk%2Dreal%2D123"),
    );
    h.insert("x-plain", HeaderValue::from_static("sk-real-123"));
    let c = vec![
        Credential {
            value: "sk real/123".into(),
            ..vault()[0].clone()
        },
        vault()[0].clone(),
    ];
    redact_response(&mut h, &["sk-real-123".into()], &c);
    assert!(!format!("{h:?}").contains("sk-real"), "{h:?}");
}

#[test]
fn paths_not_in_canonical_form_and_partial_basic_parts_are_refused() {
    for p in [
        "/v1/..;/api/x",
        "/v1/a\\..\\..\\api",
        "/v1/a%5c..%5capi",
        "/v1//m",
        "/v1/%252e%252e/api",
        "/v1/m%00",
    ] {
        let e = run(p, &[("x-api-key", PH)], "api.test.openshell", "/x");
        assert!(e.is_err(), "{p}: {e:?}");
    }
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    for bad in [
        format!("x{PH}:p"),
        format!("u:{PH}-x"),
        format!("u:{PH}x"),
        format!("{PH}{PH}:p"),
        format!("{PH}-u:p"),
    ] {
        let v = format!("Basic {}", b64(&bad));
        let e = run(
            "/v1/m",
            &[("authorization", &v)],
            "api.test.openshell",
            "/x",
        );
        assert!(e.is_err(), "{bad}: {e:?}");
    }
    let v = format!("Basic {}", b64(&format!("{PH}:x")));
    let p = run(
        "/v1/m",
        &[("authorization", &v)],
        "api.test.openshell",
        "/x",
    )
    .unwrap();
    assert_eq!(
        p.headers["authorization"],
        format!("Basic {}", b64("sk-real-123:x")).as_str()
    );
}
