//! Inspected (`protocol: rest`) tunnels: terminate the client's TLS with a leaf of the
//! sandbox CA, check every request on the connection (keep-alive included) against the
//! endpoint's rules, and forward allowed ones over the proxy's own TLS connection to the
//! real upstream (verified against the host's trust store). The SNI and the Host header
//! must name the CONNECT host (no domain fronting).

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use openshell_policy::l7::decide_request;
use openshell_policy::{Endpoint, Enforcement};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, watch};

use crate::Context;
use crate::Peer;

type Body = BoxBody<Bytes, hyper::Error>;

/// An inspected tunnel: where it goes, what allowed it, who opened it.
pub struct Grant {
    /// Policy entry name.
    pub name: String,
    /// The endpoint (rules).
    pub endpoint: Endpoint,
    /// The CONNECT host.
    pub host: String,
    /// The CONNECT port.
    pub port: u16,
    /// The process that opened it.
    pub who: Peer,
}

fn json(status: StatusCode, v: serde_json::Value, policy: Option<&str>) -> Response<Body> {
    let mut r = Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .header("Connection", "close");
    if let Some(p) = policy {
        r = r.header("X-OpenShell-Policy", p);
    }
    r.body(
        Full::new(Bytes::from(v.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    )
    .unwrap_or_else(|_| {
        Response::new(
            Full::new(Bytes::new())
                .map_err(|never| match never {})
                .boxed(),
        )
    })
}

/// Serve an inspected tunnel whose 200 has been sent; `upstream` is the dialled TCP
/// connection to the real host.
pub async fn inspect(
    ctx: Arc<Context>,
    client: TcpStream,
    upstream: TcpStream,
    grant: Grant,
    mut generation: watch::Receiver<u64>,
) {
    let (host, port) = (grant.host.clone(), grant.port);
    let Some(ca) = ctx.ca.as_ref() else { return };
    let Ok(cfg) = ca.server_config(&host) else {
        return;
    };
    let Ok(tls) = tokio_rustls::TlsAcceptor::from(cfg).accept(client).await else {
        return;
    };
    let sni = tls.get_ref().1.server_name().map(str::to_ascii_lowercase);
    if sni.as_deref().is_some_and(|s| s != host) {
        ctx.log.http(
            "CONNECT",
            &format!("https://{host}:{port}"),
            "DENIED",
            &grant.who,
            None,
            Some("TLS SNI does not name the CONNECT host (domain fronting)"),
        );
        return;
    }
    let server_name = match rustls::pki_types::ServerName::try_from(host.clone()) {
        Ok(n) => n,
        Err(_) => return,
    };
    // A failure here is answered per request (502) rather than by a silent close.
    let upstream = match ctx.upstream_tls() {
        Ok(cfg) => tokio_rustls::TlsConnector::from(cfg)
            .connect(server_name, upstream)
            .await
            .map_err(|e| format!("TLS to {host}: {e}")),
        Err(e) => Err(e),
    };
    let sender = match upstream {
        Ok(s) => match hyper::client::conn::http1::handshake(TokioIo::new(s)).await {
            Ok((sender, conn)) => {
                tokio::spawn(conn);
                Ok(Arc::new(Mutex::new(sender)))
            }
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(e),
    };
    let who = Arc::new(grant.who.clone());
    let grant = Arc::new(grant);
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (ctx, grant, who, host, sender) = (
            ctx.clone(),
            grant.clone(),
            who.clone(),
            host.clone(),
            sender.clone(),
        );
        async move { Ok::<_, hyper::Error>(handle(ctx, grant, who, host, port, sender, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .max_buf_size(16 * 1024)
        .serve_connection(TokioIo::new(tls), svc);
    generation.mark_unchanged();
    tokio::select! {
        _ = conn => {}
        _ = generation.changed() => {}
    }
}

type Sender = Result<Arc<Mutex<hyper::client::conn::http1::SendRequest<Incoming>>>, String>;

async fn handle(
    ctx: Arc<Context>,
    grant: Arc<Grant>,
    who: Arc<Peer>,
    host: String,
    port: u16,
    sender: Sender,
    req: Request<Incoming>,
) -> Response<Body> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let url = format!("https://{host}{path}");
    let host_header = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(|h| {
            h.rsplit_once(':')
                .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
                .map_or(h, |(n, _)| n)
                .to_ascii_lowercase()
        });
    // A request with both Content-Length and Transfer-Encoding is framed by chunked
    // (hyper drops the length) and its connection is closed after the response, so no
    // tail can be smuggled to the upstream as a request the rules never saw.
    let verdict = if host_header.as_deref().is_some_and(|h| h != host) {
        Err((
            "host".to_string(),
            "the Host header does not name the CONNECT host (domain fronting)".to_string(),
        ))
    } else {
        decide_request(&grant.endpoint, &method, &path, &query)
    };
    let audit = grant.endpoint.enforcement == Some(Enforcement::Audit);
    match &verdict {
        Ok(_) => ctx
            .log
            .http(&method, &url, "ALLOWED", &who, Some(&grant.name), None),
        Err((_, reason)) if audit => ctx.log.http(
            &method,
            &url,
            "AUDIT",
            &who,
            Some(&grant.name),
            Some(reason),
        ),
        Err((_, reason)) => ctx.log.http(
            &method,
            &url,
            "DENIED",
            &who,
            Some(&grant.name),
            Some(reason),
        ),
    }
    if let Err((rule, reason)) = verdict
        && !audit
    {
        let v = serde_json::json!({
            "error": "policy_denied",
            "detail": format!("{method} {path} not permitted by policy"),
            "reason": reason,
            "policy": grant.name,
            "rule": rule,
            "method": method,
            "path": path,
            "host": host,
            "port": port,
            "binary": who.exe,
        });
        return json(StatusCode::FORBIDDEN, v, Some(&grant.name));
    }
    let sender = match sender {
        Ok(s) => s,
        Err(e) => {
            return json(
                StatusCode::BAD_GATEWAY,
                serde_json::json!({"error": "upstream_unreachable", "detail": e}),
                None,
            );
        }
    };
    let mut s = sender.lock().await;
    match s.send_request(req).await {
        Ok(resp) => resp.map(|b| b.boxed()),
        Err(e) => json(
            StatusCode::BAD_GATEWAY,
            serde_json::json!({"error": "upstream_unreachable", "detail": e.to_string()}),
            None,
        ),
    }
}
