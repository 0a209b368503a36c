//! Property tests of what the proxy parses from a sandboxed program: DNS queries, HTTP
//! request heads and host names. Whatever bytes arrive (random, or valid inputs
//! mutated), the parsers end without a panic or a hang; what they accept is
//! well-formed. Two oracles from maintained crates check our output and our reading:
//! every DNS answer we build parses with `simple-dns` and answers the question asked,
//! and every head `parse_head` accepts is read the same way by hyper's server (method,
//! target, headers) — the disagreement request smuggling needs cannot happen.
//!
//! CI runs proptest's default case count; `bench/fuzz.sh` runs these with
//! `PROPTEST_CASES` in the hundreds of thousands (release build).

use std::net::IpAddr;

use openshell_proxy::{dns, http, normalize_name};
use proptest::prelude::*;

fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&1u16.to_be_bytes());
    q
}

/// Byte edits of a seed: set, insert, delete, truncate.
fn mutated(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 0..6).prop_map(move |ed| {
        let mut b = seed.clone();
        for (kind, at, v) in ed {
            let i = at % (b.len() + 1);
            match kind % 4 {
                0 if i < b.len() => b[i] = v,
                1 => b.insert(i, v),
                2 if i < b.len() => {
                    b.remove(i);
                }
                3 => b.truncate(i),
                _ => {}
            }
        }
        b
    })
}

fn dns_input() -> impl Strategy<Value = Vec<u8>> {
    let names = prop::sample::select(vec![
        "api.test.openshell",
        "a.b",
        "x",
        "very-long-label-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example",
        "_srv._tcp.example.org",
    ]);
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..600),
        (
            any::<u16>(),
            names,
            prop::sample::select(vec![1u16, 28, 5, 255, 16])
        )
            .prop_flat_map(|(id, n, t)| mutated(query(id, n, t))),
    ]
}

const HEADS: &[&str] = &[
    "GET http://api.test.openshell/x?y=1 HTTP/1.1\r\nHost: api.test.openshell\r\nUser-Agent: t\r\n\r\n",
    "POST /p HTTP/1.1\r\nHost: a.b:8080\r\nContent-Length: 5\r\n\r\n",
    "POST /p HTTP/1.1\r\nHost: a.b\r\nTransfer-Encoding: chunked\r\n\r\n",
    "CONNECT api.test.openshell:443 HTTP/1.1\r\nHost: api.test.openshell:443\r\n\r\n",
    "GET / HTTP/1.0\r\n\r\n",
    "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: x\r\n\r\n",
];

fn head_input() -> impl Strategy<Value = Vec<u8>> {
    let splice = prop::sample::select(vec![
        "\r\n",
        "\n",
        "\r",
        " ",
        "\t",
        "\0",
        ":",
        "Content-Length: 1\r\n",
        "Transfer-Encoding: chunked\r\n",
        "Transfer-Encoding: gzip, chunked\r\n",
        "Content-Length: +1\r\n",
        " folded\r\n",
        "Host: other\r\n",
        "\u{7f}",
        "\u{e9}",
        "HTTP/2.0",
        "GET / HTTP/1.1\r\n",
    ]);
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        (
            prop::sample::select(HEADS.to_vec()),
            prop::collection::vec((any::<usize>(), splice), 0..4),
        )
            .prop_flat_map(|(h, sp)| {
                let mut b = h.as_bytes().to_vec();
                // Splices land before the final CRLF so the head stays a head.
                for (at, s) in sp {
                    let i = at % (b.len() - 1);
                    b.splice(i..i, s.bytes());
                }
                mutated(b)
            }),
    ]
}

/// Method, target and headers of a request as a parser read them.
type Read = (String, String, Vec<(String, String)>);

/// What hyper's HTTP/1 server reads from `bytes`.
fn hyper_reads(bytes: &[u8]) -> Option<Read> {
    use hyper::server::conn::http1;
    use hyper_util::rt::TokioIo;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let headers = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect::<Vec<_>>();
            let _ = tx.send((req.method().to_string(), req.uri().to_string(), headers));
            async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Empty::<
                    bytes::Bytes,
                >::new()))
            }
        });
        let conn = http1::Builder::new()
            .keep_alive(false)
            .serve_connection(TokioIo::new(server), svc)
            .with_upgrades();
        use tokio::io::AsyncWriteExt;
        client.write_all(bytes).await.ok()?;
        client.shutdown().await.ok()?;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), conn).await;
        rx.try_recv().ok()
    })
}

proptest! {
    #[test]
    fn dns_queries_parse_or_are_refused_and_answers_are_well_formed(pkt in dns_input()) {
        let Some(q) = dns::parse(&pkt) else { return Ok(()) };
        prop_assert!(q.name.len() <= 253, "{:?}", q.name);
        let addrs: [IpAddr; 2] = ["10.77.0.2".parse().unwrap(), "fd77::2".parse().unwrap()];
        for rcode in [0u8, 3] {
            let out = dns::answer(&q, rcode, &addrs);
            prop_assert_eq!(&out[..2], &q.id.to_be_bytes()[..]);
            prop_assert_eq!(&out[12..12 + q.question.len()], &q.question[..]);
            // The oracle knows the common types only (it refuses to read others).
            if ![1u16, 2, 5, 6, 12, 15, 16, 28, 33, 65, 255].contains(&q.qtype) {
                continue;
            }
            let p = simple_dns::Packet::parse(&out)
                .map_err(|e| TestCaseError::fail(format!("our answer does not parse: {e}")))?;
            prop_assert_eq!(p.id(), q.id);
            prop_assert_eq!(p.questions.len(), 1);
            if rcode == 0 && !q.name.is_empty() && matches!(q.qtype, 1 | 28) {
                prop_assert_eq!(p.answers.len(), 1);
                let asked = p.questions[0].qname.to_string().trim_end_matches('.').to_ascii_lowercase();
                prop_assert_eq!(asked, q.name.clone());
            } else if rcode == 3 {
                prop_assert!(p.answers.is_empty());
            }
        }
    }

    #[test]
    fn request_heads_are_refused_or_read_as_hyper_reads_them(head in head_input()) {
        let Ok(h) = http::parse_head(&head) else { return Ok(()) };
        for (k, v) in &h.headers {
            prop_assert!(!v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0), "{k}: {v:?}");
        }
        prop_assert!(!h.target.bytes().any(|b| b.is_ascii_control()), "{:?}", h.target);
        if h.method == "CONNECT" {
            return Ok(()); // hyper's server does not read CONNECT targets the same way
        }
        // hyper refusing what we accepted is safe (the connection ends there); both
        // accepting and reading differently is not.
        let Some((method, _target, headers)) = hyper_reads(&head) else {
            return Ok(());
        };
        prop_assert_eq!(&method, &h.method);
        prop_assert_eq!(headers.len(), h.headers.len(), "{:?}", String::from_utf8_lossy(&head));
        // hyper groups headers by name: compare as sorted lists.
        let mut theirs: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut ours: Vec<(String, String)> = h
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        theirs.sort();
        ours.sort();
        prop_assert_eq!(theirs, ours);
        prop_assert!(h.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case("host")).count() <= 1);
    }

    #[test]
    fn host_names_normalise_once(raw in "[A-Za-z0-9._%\\[\\]:\\- *]{0,80}") {
        if let Some(n) = normalize_name(&raw) {
            prop_assert_eq!(normalize_name(&n), Some(n.clone()));
            prop_assert!(!n.ends_with('.'));
            prop_assert_eq!(n.to_ascii_lowercase(), n.clone());
        }
    }
}

mod credential_placement {
    //! Whatever head a sandboxed program builds around placeholders, a swapped value
    //! only ever lands in a place its binding allows (here: the `x-api-key` and
    //! `authorization` headers), never in another header, the path or the query.
    use openshell_proxy::secrets::{Binding, Credential, Destination, rewrite};
    use proptest::prelude::*;

    const VALUE: &str = "sk-VALUE-7d1f";

    fn vault() -> Vec<Credential> {
        vec![Credential {
            key: "K".into(),
            value: VALUE.into(),
            provider: "p".into(),
            bindings: vec![Binding {
                headers: vec!["x-api-key".into(), "authorization".into()],
                ..Binding::new("api.test.openshell", 443, "/v1/**")
            }],
            binaries: vec![],
        }]
    }

    fn piece() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            "openshell:resolve:env:K",
            "openshell:resolve:env:",
            "OPENSHELL:RESOLVE:ENV:K",
            "Bearer ",
            "Basic ",
            "b3BlbnNoZWxsOnJlc29sdmU6ZW52Oks=",
            "dTpvcGVuc2hlbGw6cmVzb2x2ZTplbnY6Sw==",
            "%3A",
            "%6F",
            " ",
            ":",
            "x",
            "K",
            "=",
            "&",
            "..",
            "/",
            ";",
        ])
        .prop_map(String::from)
    }

    fn text() -> impl Strategy<Value = String> {
        prop::collection::vec(piece(), 0..5).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn a_value_lands_only_where_allowed(
            headers in prop::collection::vec((prop::sample::select(vec!["x-api-key", "authorization", "anthropic-beta", "cookie", "x-other"]), text()), 0..4),
            path in text(),
            query in text(),
            tls in any::<bool>(),
        ) {
            let target = format!("/v1/{}?q={}", path.replace(['?', '#', ' '], ""), query.replace(['#', ' '], ""));
            let Ok(uri) = target.parse::<hyper::Uri>() else { return Ok(()) };
            let mut b = hyper::Request::builder().uri(uri);
            for (k, v) in &headers {
                b = b.header(*k, v.as_str());
            }
            let Ok(req) = b.body(()) else { return Ok(()) };
            let (mut parts, ()) = req.into_parts();
            let chain = vec!["/usr/bin/x".to_string()];
            let dest = Destination { host: "api.test.openshell", port: 443, chain: &chain, tls, inspected: true };
            if rewrite(&mut parts, &dest, &vault()).is_err() {
                return Ok(());
            }
            prop_assert!(!parts.uri.to_string().contains(VALUE), "{}", parts.uri);
            for (k, v) in parts.headers.iter() {
                let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
                let decoded = v
                    .split_whitespace()
                    .nth(1)
                    .and_then(base64_decode)
                    .unwrap_or_default();
                if v.contains(VALUE) || decoded.contains(VALUE) {
                    prop_assert!(tls && (k == "x-api-key" || k == "authorization"), "{k}: {v}");
                }
            }
        }
    }

    fn base64_decode(s: &str) -> Option<String> {
        const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut bits = 0u32;
        let mut n = 0;
        let mut out = Vec::new();
        for c in s.bytes().filter(|c| *c != b'=') {
            let v = T.iter().position(|t| *t == c)? as u32;
            bits = (bits << 6) | v;
            n += 6;
            if n >= 8 {
                n -= 8;
                out.push((bits >> n) as u8);
            }
        }
        String::from_utf8(out).ok()
    }
}
