//! The explicit proxy (10.200.0.1:3128): `CONNECT host:port` tunnels and absolute-form
//! `http://` requests, each decided by the policy before anything reaches upstream.
//! `https://` absolute URIs get 400 (use CONNECT); oversized heads 431; garbage 400.

use std::net::SocketAddr;
use std::sync::Arc;

use openshell_policy::engine::decide;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::http::{self, HeadError, deny_body, respond};
use crate::log::NetEvent;
use crate::{Context, DialError, dial, relay};

/// Largest CONNECT / forward request head.
pub const HEAD_LIMIT: usize = 8 * 1024;

async fn bad(sock: &mut TcpStream, status: u16, reason: &str, detail: &str) {
    let body = serde_json::json!({"error": reason.to_ascii_lowercase().replace(' ', "_"), "detail": detail}).to_string();
    let _ = respond(sock, status, reason, &[], &body).await;
}

/// Serve one client connection.
pub async fn handle(ctx: Arc<Context>, mut sock: TcpStream, peer: SocketAddr) {
    let generation = ctx.policy.watch();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        http::read_head(&mut sock, HEAD_LIMIT),
    )
    .await;
    let (head_bytes, rest) = match read {
        Ok(Ok(h)) => h,
        Ok(Err(HeadError::TooLarge)) => {
            return bad(
                &mut sock,
                431,
                "Request Header Fields Too Large",
                "request head over 8 KiB",
            )
            .await;
        }
        Ok(Err(HeadError::Malformed(m))) => return bad(&mut sock, 400, "Bad Request", &m).await,
        Ok(Err(HeadError::Closed)) => return,
        Err(_) => {
            return bad(
                &mut sock,
                408,
                "Request Timeout",
                "no complete request head within 30 s",
            )
            .await;
        }
    };
    let head = match http::parse_head(&head_bytes) {
        Ok(h) => h,
        Err(HeadError::Malformed(m)) => return bad(&mut sock, 400, "Bad Request", &m).await,
        Err(_) => return bad(&mut sock, 400, "Bad Request", "unreadable request head").await,
    };
    let (host, port, forward_path) = if head.method == "CONNECT" {
        match http::split_host_port(&head.target, None) {
            Some((h, p)) => (h, p, None),
            None => return bad(&mut sock, 400, "Bad Request", "CONNECT needs host:port").await,
        }
    } else if let Some(rest_url) = head.target.strip_prefix("http://") {
        let (authority, path) = match rest_url.find('/') {
            Some(i) => (&rest_url[..i], &rest_url[i..]),
            None => (rest_url, "/"),
        };
        match http::split_host_port(authority, Some(80)) {
            Some((h, p)) if !authority.contains('@') => (h, p, Some(path.to_string())),
            _ => return bad(&mut sock, 400, "Bad Request", "bad absolute URI").await,
        }
    } else if head.target.starts_with("https://") {
        return bad(
            &mut sock,
            400,
            "Bad Request",
            "use CONNECT for https:// URLs",
        )
        .await;
    } else {
        return bad(
            &mut sock,
            400,
            "Bad Request",
            "this is a proxy: send CONNECT or an absolute http:// URI",
        )
        .await;
    };
    let host = host.to_ascii_lowercase();
    let local = sock.local_addr().unwrap_or(peer);
    let (who, pinned) = ctx.who(peer, local);
    let active = ctx.policy.current();
    let what = if forward_path.is_some() {
        format!("{} http://{host}:{port}", head.method)
    } else {
        format!("CONNECT {host}:{port}")
    };
    let decision = match &pinned {
        Err(e) => Err(e.clone()),
        Ok(()) => decide(&active.policy, &host, port, &who.chain, false)
            .map_err(|d| d.reason().to_string()),
    };
    let grant = match decision {
        Ok(g) => g,
        Err(reason) => {
            deny(&ctx, &who, &host, port, &reason);
            let body = deny_body(&format!("{what} not permitted by policy"), &reason);
            let _ = respond(&mut sock, 403, "Forbidden", &[], &body).await;
            return;
        }
    };
    let mut upstream = match dial(&ctx, grant.endpoint, &host, port).await {
        Ok(s) => s,
        Err(DialError::Refused(reason)) => {
            deny(&ctx, &who, &host, port, &reason);
            let body = deny_body(&format!("{what} not permitted by policy"), &reason);
            let _ = respond(&mut sock, 403, "Forbidden", &[], &body).await;
            return;
        }
        Err(DialError::Unreachable(detail)) => {
            let body =
                serde_json::json!({"error": "upstream_unreachable", "detail": detail}).to_string();
            let _ = respond(&mut sock, 502, "Bad Gateway", &[], &body).await;
            return;
        }
    };
    ctx.log.net(&NetEvent {
        kind: "NET:OPEN",
        allowed: true,
        binary: &who.exe,
        pid: who.pid,
        host: &host,
        port,
        policy: Some(grant.name),
        reason: None,
    });
    let inspected = grant.endpoint.protocol == Some(openshell_policy::Protocol::Rest)
        && grant.endpoint.tls != Some(openshell_policy::TlsMode::Skip);
    match forward_path {
        None if inspected => {
            if sock
                .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
            let g = crate::l7::Grant {
                name: grant.name.to_string(),
                endpoint: grant.endpoint.clone(),
                host,
                port,
                who,
            };
            crate::l7::inspect(ctx.clone(), sock, upstream, g, generation).await;
            return;
        }
        None => {
            if sock
                .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
            if !rest.is_empty() && upstream.write_all(&rest).await.is_err() {
                return;
            }
        }
        Some(path) => {
            if inspected {
                let (p, q) = path.split_once('?').unwrap_or((&path, ""));
                let url = format!("http://{host}{p}");
                let audit =
                    grant.endpoint.enforcement == Some(openshell_policy::Enforcement::Audit);
                match openshell_policy::l7::decide_request(grant.endpoint, &head.method, p, q) {
                    Ok(_) => {
                        ctx.log
                            .http(&head.method, &url, "ALLOWED", &who, Some(grant.name), None)
                    }
                    Err((_, reason)) if audit => ctx.log.http(
                        &head.method,
                        &url,
                        "AUDIT",
                        &who,
                        Some(grant.name),
                        Some(&reason),
                    ),
                    Err((rule, reason)) => {
                        ctx.log.http(
                            &head.method,
                            &url,
                            "DENIED",
                            &who,
                            Some(grant.name),
                            Some(&reason),
                        );
                        let body = serde_json::json!({
                            "error": "policy_denied",
                            "detail": format!("{} {p} not permitted by policy", head.method),
                            "reason": reason, "policy": grant.name, "rule": rule,
                            "method": head.method, "path": p, "host": host, "port": port, "binary": who.exe,
                        })
                        .to_string();
                        let _ = respond(
                            &mut sock,
                            403,
                            "Forbidden",
                            &[("X-OpenShell-Policy", grant.name.to_string())],
                            &body,
                        )
                        .await;
                        return;
                    }
                }
            }
            // Origin-form upstream, one request per upstream connection (so every
            // request is decided), proxy headers never forwarded.
            let mut out = format!("{} {path} {}\r\n", head.method, head.version);
            let mut has_host = false;
            for (k, v) in &head.headers {
                let lk = k.to_ascii_lowercase();
                if matches!(
                    lk.as_str(),
                    "proxy-connection" | "proxy-authorization" | "connection" | "keep-alive"
                ) {
                    continue;
                }
                has_host |= lk == "host";
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            if !has_host {
                out.push_str(&format!("Host: {host}\r\n"));
            }
            out.push_str("Connection: close\r\n\r\n");
            if upstream.write_all(out.as_bytes()).await.is_err()
                || upstream.write_all(&rest).await.is_err()
            {
                return;
            }
        }
    }
    if head.method == "CONNECT" && crate::splice::enabled() {
        crate::splice::relay(&sock, &upstream, generation).await;
    } else {
        relay(
            &mut sock,
            &mut upstream,
            generation,
            head.method == "CONNECT",
        )
        .await;
    }
}

fn deny(ctx: &Context, who: &crate::Peer, host: &str, port: u16, reason: &str) {
    ctx.log.net(&NetEvent {
        kind: "NET:OPEN",
        allowed: false,
        binary: &who.exe,
        pid: who.pid,
        host,
        port,
        policy: None,
        reason: Some(reason),
    });
}
