//! The explicit proxy (10.200.0.1:3128): `CONNECT host:port` tunnels and absolute-form
//! `http://` requests, each decided by the policy before anything reaches upstream.
//!
//! A request head is read first (8 KiB at most, 30 s) and refused when two HTTP parsers
//! could read it differently ([`crate::http::parse_head`]); hyper then parses and serves
//! the same bytes (one request per client connection), so what the policy decides is
//! exactly what travels: a forwarded request is re-serialised by hyper's client, never
//! relayed as raw bytes. `https://` absolute URIs get 400 (use CONNECT), origin-form
//! requests 400, a Host header naming another host than the URI 403 (fronting).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use openshell_policy::engine::decide;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::http::{self, HeadError, deny_body, respond};
use crate::l7::{Body, Grant, Via};
use crate::log::NetEvent;
use crate::prefixed::Prefixed;
use crate::{Context, DialError, dial, normalize_name, relay};

/// Largest CONNECT / forward request head.
pub const HEAD_LIMIT: usize = 8 * 1024;

async fn bad(sock: &mut TcpStream, status: u16, reason: &str, detail: &str) {
    let _ = respond(sock, status, reason, &[], &error_body(reason, detail)).await;
}

fn error_body(reason: &str, detail: &str) -> String {
    serde_json::json!({"error": reason.to_ascii_lowercase().replace(' ', "_"), "detail": detail})
        .to_string()
}

fn answer(status: StatusCode, body: String, policy: Option<&str>) -> Response<Body> {
    let mut r = Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .header("Connection", "close");
    if let Some(p) = policy {
        r = r.header("X-OpenShell-Policy", p);
    }
    let body = Full::new(Bytes::from(body))
        .map_err(|never| match never {})
        .boxed();
    r.body(body).unwrap_or_else(|e| {
        Response::new(
            Full::new(Bytes::from(e.to_string()))
                .map_err(|never| match never {})
                .boxed(),
        )
    })
}

fn bad_request(detail: &str) -> Response<Body> {
    answer(
        StatusCode::BAD_REQUEST,
        error_body("Bad Request", detail),
        None,
    )
}

/// Serve one client connection.
pub async fn handle(ctx: Arc<Context>, mut sock: TcpStream, peer: SocketAddr) {
    // Taken now: a policy change from here on (during identification, the dial or a
    // TLS handshake) closes the connection.
    let mut generation = ctx.policy.watch();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        http::read_head(&mut sock, HEAD_LIMIT),
    )
    .await;
    let (mut head, rest) = match read {
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
        Ok(Err(_)) => return,
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
    match http::parse_head(&head) {
        Ok(_) => {}
        Err(HeadError::TooManyHeaders) => {
            let detail = format!("more than {} headers", http::MAX_HEADERS);
            return bad(&mut sock, 431, "Request Header Fields Too Large", &detail).await;
        }
        Err(HeadError::Malformed(m)) => return bad(&mut sock, 400, "Bad Request", &m).await,
        Err(_) => return bad(&mut sock, 400, "Bad Request", "unreadable request head").await,
    }
    let local = sock.local_addr().unwrap_or(peer);
    head.extend_from_slice(&rest);
    let io = TokioIo::new(Prefixed::new(head, sock));
    let relays = generation.clone();
    let svc = hyper::service::service_fn(move |req| {
        let (ctx, relays) = (ctx.clone(), relays.clone());
        async move { Ok::<_, Infallible>(serve(ctx, peer, local, relays, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .max_buf_size(16 * 1024)
        .serve_connection(io, svc)
        .with_upgrades();
    tokio::select! {
        _ = conn => {}
        _ = generation.changed() => {}
    }
}

/// Where a request goes: host (normalised), port, and whether it is a tunnel.
fn target(req: &Request<Incoming>) -> Result<(String, u16), String> {
    let uri = req.uri();
    let connect = req.method() == Method::CONNECT;
    if !connect && uri.scheme_str() == Some("https") {
        return Err("use CONNECT for https:// URLs".into());
    }
    if !connect && uri.scheme_str() != Some("http") {
        return Err("this is a proxy: send CONNECT or an absolute http:// URI".into());
    }
    let Some(a) = uri.authority() else {
        return Err("CONNECT needs host:port".into());
    };
    if a.as_str().contains('@') {
        return Err("user information in the URI is not accepted".into());
    }
    let port = match (a.port_u16(), connect) {
        (Some(p), _) => p,
        (None, true) => return Err("CONNECT needs host:port".into()),
        (None, false) => 80,
    };
    let host = normalize_name(a.host())
        .ok_or_else(|| format!("{:?} is not a valid host name", a.host()))?;
    // The Host header must name the same host (an upstream routing by it would serve
    // another host than the policy allowed). CONNECT clients may leave out the port.
    for v in req.headers().get_all(hyper::header::HOST) {
        let named = v
            .to_str()
            .ok()
            .and_then(|v| v.parse::<hyper::http::uri::Authority>().ok())
            .filter(|h| {
                normalize_name(h.host()).as_deref() == Some(host.as_str())
                    && h.port_u16().map_or(connect || port == 80, |p| p == port)
            });
        if named.is_none() {
            return Err(
                "the Host header does not name the host of the request (domain fronting)".into(),
            );
        }
    }
    Ok((host, port))
}

async fn serve(
    ctx: Arc<Context>,
    peer: SocketAddr,
    local: SocketAddr,
    relays: watch::Receiver<u64>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let connect = req.method() == Method::CONNECT;
    let (host, port) = match target(&req) {
        Ok(t) => t,
        Err(e) if e.contains("fronting") => {
            return answer(StatusCode::FORBIDDEN, deny_body(&e, &e), None);
        }
        Err(e) => return bad_request(&e),
    };
    let (who, pinned) = ctx.who(peer, local).await;
    // The privacy router answers inference.local itself: no policy entry, no dial.
    if host == crate::inference::HOST {
        if !connect {
            return crate::inference::handle(ctx, req, &who).await;
        }
        if port != 443 {
            return bad_request("inference.local listens on 443 (https) and 80 (http)");
        }
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(up) = upgrade.await else { return };
            crate::inference::serve_tls(ctx, TokioIo::new(up), who).await;
        });
        return established();
    }
    let active = ctx.policy.current();
    let what = if connect {
        format!("CONNECT {host}:{port}")
    } else {
        format!("{} http://{host}:{port}", req.method())
    };
    let decision = match &pinned {
        Err(e) => Err(e.clone()),
        Ok(()) => {
            let chain = ctx.chain_with_links(&active.policy, &who.chain).await;
            decide(&active.policy, &host, port, &chain, false).map_err(|d| d.reason().to_string())
        }
    };
    let refused = |reason: &str| {
        deny(&ctx, &who, &host, port, reason);
        let body = deny_body(&format!("{what} not permitted by policy"), reason);
        answer(StatusCode::FORBIDDEN, body, None)
    };
    let grant = match decision {
        Ok(g) => g,
        Err(reason) => return refused(&reason),
    };
    // A plain `http://` request may reuse an upstream connection that an earlier
    // request of the same program, allowed by the same endpoint of the same entry of
    // the same policy, left open (`pool`).
    let key = (!connect && crate::l7::reusable(&req)).then(|| crate::pool::Key {
        host: host.clone(),
        port,
        entry: grant.key.to_string(),
        endpoint: std::ptr::from_ref(grant.endpoint) as usize,
        binary: who.exe.clone(),
        version: active.version,
    });
    let kept = key
        .as_ref()
        .and_then(|k| ctx.pool.take(k, ctx.policy.current().version));
    let upstream = match kept {
        Some(s) => Via::Kept(s),
        None => match dial(&ctx, grant.endpoint, &host, port).await {
            Ok(s) => Via::Dialled(s),
            Err(DialError::Refused(reason)) => return refused(&reason),
            Err(DialError::Unreachable(detail)) => {
                let body = serde_json::json!({"error": "upstream_unreachable", "detail": detail})
                    .to_string();
                return answer(StatusCode::BAD_GATEWAY, body, None);
            }
        },
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
    let g = Grant {
        name: grant.name.to_string(),
        endpoint: grant.endpoint.clone(),
        host,
        port,
        who,
        version: active.version,
    };
    let upstream = match upstream {
        Via::Dialled(s) if connect => s,
        via => return crate::l7::forward(ctx, g, req, via, relays, inspected, key).await,
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(up) = upgrade.await else { return };
        tunnel(ctx, up, upstream, g, inspected, relays).await;
    });
    established()
}

/// The 200 answer to a CONNECT whose tunnel is served once hyper hands it over.
fn established() -> Response<Body> {
    let mut ok = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed(),
    );
    ok.extensions_mut()
        .insert(hyper::ext::ReasonPhrase::from_static(
            b"Connection Established",
        ));
    ok
}

/// The bytes of an established CONNECT tunnel: through the L7 inspector, or relayed.
async fn tunnel(
    ctx: Arc<Context>,
    up: hyper::upgrade::Upgraded,
    mut upstream: TcpStream,
    g: Grant,
    inspected: bool,
    relays: watch::Receiver<u64>,
) {
    // Back to the socket itself (and what the client sent early, which hyper or the
    // head reader already read), so a plain tunnel can splice.
    let (early, sock) = match up.downcast::<TokioIo<Prefixed<TcpStream>>>() {
        Ok(parts) => {
            let (rest, sock) = parts.io.into_inner().into_parts();
            let mut early = parts.read_buf.to_vec();
            early.extend_from_slice(&rest);
            (early, sock)
        }
        Err(up) => {
            // Not reached with the stream built in `handle`; served generically anyway.
            let client = TokioIo::new(up);
            if inspected {
                crate::l7::inspect(ctx, client, upstream, g, relays).await;
            } else {
                let mut client = client;
                relay(&mut client, &mut upstream, relays, true).await;
            }
            return;
        }
    };
    if inspected {
        crate::l7::inspect(ctx, Prefixed::new(early, sock), upstream, g, relays).await;
        return;
    }
    if !early.is_empty() && upstream.write_all(&early).await.is_err() {
        return;
    }
    if crate::splice::enabled() {
        crate::splice::relay(&sock, &upstream, relays).await;
    } else {
        let mut sock = sock;
        relay(&mut sock, &mut upstream, relays, true).await;
    }
}

fn deny(ctx: &Context, who: &crate::Peer, host: &str, port: u16, reason: &str) {
    ctx.log_denied("NET:OPEN", who, host, port, reason);
}
