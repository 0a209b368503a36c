//! Inspected (`protocol: rest`) tunnels: terminate the client's TLS with a leaf of the
//! sandbox CA, check every request on the connection (keep-alive and every HTTP/2
//! stream included) against the endpoint's rules, and forward allowed ones over the
//! proxy's own TLS connection to the real upstream (verified against the host's trust
//! store). The SNI, the Host header and the HTTP/2 authority must name the CONNECT host
//! (no domain fronting).
//!
//! The client may speak HTTP/1.1 or HTTP/2 (ALPN); towards the upstream HTTP/2 is
//! offered only when the client chose it (so an HTTP/1.1 client's WebSocket upgrade
//! stays possible end to end). A WebSocket upgrade is a request like any other (its
//! method and path decide); once both sides switched protocols the frames are relayed
//! as they are, until either side closes or the policy changes. No other upgrade is
//! let through (an `h2c` upgrade would carry requests the rules never see).
//!
//! The explicit proxy's absolute-form `http://` requests come through [`forward`]: the
//! same request path, without TLS, and with the rules applied only when the endpoint
//! is `protocol: rest`.
//!
//! Every request checks that the policy which allowed the connection is still the
//! active one; the connection is also closed the moment the policy changes.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, Version, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use openshell_policy::l7::decide_request;
use openshell_policy::{Endpoint, Enforcement};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, watch};

use crate::Context;
use crate::Peer;
use crate::normalize_name;
use crate::pool;
use hyper::client::conn::http1::SendRequest;

/// A response body: the upstream's, or the proxy's own JSON.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// The proxy's connection to the real upstream.
enum Upstream {
    /// One request at a time.
    H1(Mutex<SendRequest<Incoming>>),
    /// Multiplexed.
    H2(hyper::client::conn::http2::SendRequest<Incoming>),
}

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
    /// The policy version that allowed it.
    pub version: u64,
}

/// A JSON answer of the proxy's own.
pub fn json(status: StatusCode, v: serde_json::Value, policy: Option<&str>) -> Response<Body> {
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
/// `generation` was taken when the client connected: a policy change since then (during
/// the dial or the TLS handshake included) ends the tunnel.
pub async fn inspect<S>(
    ctx: Arc<Context>,
    client: S,
    upstream: TcpStream,
    grant: Grant,
    mut generation: watch::Receiver<u64>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (host, port) = (grant.host.clone(), grant.port);
    let Some(ca) = ctx.ca.as_ref() else { return };
    let Ok(cfg) = ca.server_config(&host) else {
        return;
    };
    let accept = tokio_rustls::TlsAcceptor::from(cfg).accept(client);
    let tls = tokio::select! {
        r = accept => match r {
            Ok(t) => t,
            Err(_) => return,
        },
        _ = generation.changed() => return,
    };
    let sni = tls.get_ref().1.server_name().map(normalize_name);
    if sni
        .as_ref()
        .is_some_and(|s| s.as_deref() != Some(host.as_str()))
    {
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
    let client_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
    // A failure here is answered per request (502) rather than by a silent close.
    let sender: Sender = connect_upstream(&ctx, &host, upstream, client_h2)
        .await
        .map(Arc::new);
    let who = Arc::new(grant.who.clone());
    let grant = Arc::new(grant);
    let relays = generation.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (ctx, grant, who, host, sender, relays) = (
            ctx.clone(),
            grant.clone(),
            who.clone(),
            host.clone(),
            sender.clone(),
            relays.clone(),
        );
        async move {
            let t = Target {
                host,
                port,
                client_h2,
                tls: true,
                rules: true,
                reused: false,
            };
            Ok::<_, hyper::Error>(handle(ctx, grant, who, t, sender, relays, req).await)
        }
    });
    let io = TokioIo::new(tls);
    if client_h2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .max_header_list_size(16 * 1024)
            .serve_connection(io, svc);
        tokio::select! {
            _ = conn => {}
            _ = generation.changed() => {}
        }
    } else {
        let conn = hyper::server::conn::http1::Builder::new()
            .max_buf_size(16 * 1024)
            .serve_connection(io, svc)
            .with_upgrades();
        tokio::select! {
            _ = conn => {}
            _ = generation.changed() => {}
        }
    }
}

/// TLS to the upstream (verified), then HTTP/2 when both the client and the upstream
/// chose it, HTTP/1.1 otherwise.
async fn connect_upstream(
    ctx: &Context,
    host: &str,
    tcp: TcpStream,
    offer_h2: bool,
) -> Result<Upstream, String> {
    let server_name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host}: {e}"))?;
    let cfg = if offer_h2 {
        ctx.upstream_tls_h2()?
    } else {
        ctx.upstream_tls()?
    };
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(server_name, tcp)
        .await
        .map_err(|e| format!("TLS to {host}: {e}"))?;
    if tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice()) {
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(|e| format!("HTTP/2 to {host}: {e}"))?;
        tokio::spawn(conn);
        Ok(Upstream::H2(sender))
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP/1.1 to {host}: {e}"))?;
        tokio::spawn(conn.with_upgrades());
        Ok(Upstream::H1(Mutex::new(sender)))
    }
}

/// Where an inspected tunnel goes, and how the client speaks.
struct Target {
    host: String,
    port: u16,
    client_h2: bool,
    /// `https` (an inspected tunnel) or `http` (a forwarded request).
    tls: bool,
    /// Apply the endpoint's rules (and log each request).
    rules: bool,
    /// The upstream connection was kept from an earlier request (`pool`).
    reused: bool,
}

impl Target {
    fn default_port(&self) -> u16 {
        if self.tls { 443 } else { 80 }
    }

    fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    /// Does `authority` (a Host header or a URI's) name this target's host and port?
    fn names(&self, authority: &str) -> bool {
        authority
            .parse::<hyper::http::uri::Authority>()
            .ok()
            .filter(|a| !a.as_str().contains('@'))
            .is_some_and(|a| {
                normalize_name(a.host()).as_deref() == Some(self.host.as_str())
                    && a.port_u16().unwrap_or(self.default_port()) == self.port
            })
    }

    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == self.default_port() {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// Headers that belong to one HTTP/1.1 hop and have no place in HTTP/2.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// The request as the upstream connection needs it: origin-form with a Host header
/// for HTTP/1.1, an absolute URI without hop-by-hop headers for HTTP/2.
fn for_upstream(mut req: Request<Incoming>, h2: bool, t: &Target) -> Request<Incoming> {
    let pq = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
    let authority = t.authority();
    if h2 {
        if let Ok(u) = format!("https://{authority}{pq}").parse() {
            *req.uri_mut() = u;
        }
        *req.version_mut() = Version::HTTP_2;
        let h = req.headers_mut();
        for k in HOP_BY_HOP {
            h.remove(k);
        }
        if h.get(header::TE).is_some_and(|v| v != "trailers") {
            h.remove(header::TE);
        }
    } else {
        if let Ok(u) = pq.parse() {
            *req.uri_mut() = u;
        }
        *req.version_mut() = Version::HTTP_11;
        // The proxy's own headers never travel on.
        for k in ["proxy-connection", "proxy-authorization", "keep-alive"] {
            req.headers_mut().remove(k);
        }
        if !req.headers().contains_key(header::HOST)
            && let Ok(v) = header::HeaderValue::from_str(&authority)
        {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    req
}

/// The response as the client's connection needs it.
fn for_client(mut resp: Response<Incoming>, client_h2: bool) -> Response<Body> {
    if client_h2 {
        *resp.version_mut() = Version::HTTP_2;
        for k in HOP_BY_HOP {
            resp.headers_mut().remove(k);
        }
    } else {
        *resp.version_mut() = Version::HTTP_11;
    }
    resp.map(|b| b.boxed())
}

type Sender = Result<Arc<Upstream>, String>;

async fn handle(
    ctx: Arc<Context>,
    grant: Arc<Grant>,
    who: Arc<Peer>,
    t: Target,
    sender: Sender,
    relays: watch::Receiver<u64>,
    req: Request<Incoming>,
) -> Response<Body> {
    let (host, port) = (t.host.as_str(), t.port);
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let url = format!("{}://{}{path}", t.scheme(), t.authority());
    let host_header = req
        .headers()
        .get_all(header::HOST)
        .iter()
        .map(|v| v.to_str().unwrap_or("\u{0}").to_string())
        .collect::<Vec<_>>();
    // HTTP/2's :authority (and an absolute-form HTTP/1.1 target) name a host too.
    let authority = req.uri().authority().map(|a| a.as_str().to_string());
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .map(|v| v.to_str().unwrap_or("").to_string());
    // A request with both Content-Length and Transfer-Encoding is framed by chunked
    // (hyper drops the length) and its connection is closed after the response, so no
    // tail can be smuggled to the upstream as a request the rules never saw.
    let verdict = if ctx.policy.current().version != grant.version {
        Err((
            "policy".to_string(),
            "the policy changed since this connection was allowed; reconnect".to_string(),
        ))
    } else if host_header.len() > 1 || host_header.iter().any(|h| !t.names(h)) {
        Err((
            "host".to_string(),
            "the Host header does not name the CONNECT host (domain fronting)".to_string(),
        ))
    } else if authority.as_deref().is_some_and(|a| !t.names(a)) {
        Err((
            "host".to_string(),
            "the request's authority does not name the CONNECT host (domain fronting)".to_string(),
        ))
    } else if !t.rules {
        Ok(())
    } else if upgrade
        .as_deref()
        .is_some_and(|u| !u.eq_ignore_ascii_case("websocket"))
    {
        Err((
            "upgrade".to_string(),
            format!(
                "only WebSocket upgrades are relayed (Upgrade: {}); other protocols would carry requests the rules never see",
                upgrade.as_deref().unwrap_or_default()
            ),
        ))
    } else {
        decide_request(&grant.endpoint, &method, &path, &query).map(|_| ())
    };
    // Audit mode logs what the rules would deny and lets it through; a stale policy or
    // a request naming another host is refused in every mode.
    let audit = t.rules
        && grant.endpoint.enforcement == Some(Enforcement::Audit)
        && !matches!(&verdict, Err((rule, _)) if rule == "policy" || rule == "host");
    match &verdict {
        Ok(_) if !t.rules => {}
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
        drain(req.into_body()).await;
        return json(StatusCode::FORBIDDEN, v, Some(&grant.name));
    }
    // Placeholders become credentials here, after the policy allowed the request,
    // and only where the credential is bound (docs/credentials.md).
    let vault = ctx.credentials.get();
    let (mut parts, body) = req.into_parts();
    let dest = crate::secrets::Destination {
        host,
        port,
        chain: &who.chain,
        tls: t.tls,
        inspected: t.rules,
    };
    let used = match crate::secrets::rewrite(&mut parts, &dest, &vault) {
        Ok(u) => u,
        Err(refusal) => {
            let (status, code, message) = refusal.answer();
            ctx.log.http(
                &method,
                &url,
                "DENIED",
                &who,
                Some(&grant.name),
                Some(&format!("{code}: {message}")),
            );
            drain(body).await;
            let v = serde_json::json!({"error": code, "message": message});
            return json(
                StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN),
                v,
                None,
            );
        }
    };
    // A forwarded `http://` request that got a secret swapped in (placeholders may
    // come percent-encoded or inside Basic credentials, which `reusable` does not
    // decode) ends its upstream connection: it is never kept for a later request.
    if !used.is_empty() && !t.tls {
        parts.headers.insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    let mut req = Request::from_parts(parts, body);
    let unreachable = |detail: String| {
        json(
            StatusCode::BAD_GATEWAY,
            serde_json::json!({"error": "upstream_unreachable", "detail": detail}),
            None,
        )
    };
    let upstream = match sender {
        Ok(s) => s,
        Err(e) => return unreachable(e),
    };
    match upstream.as_ref() {
        Upstream::H2(s) => {
            let req = for_upstream(req, true, &t);
            match s.clone().send_request(req).await {
                Ok(mut resp) => {
                    crate::secrets::redact_response(resp.headers_mut(), &used, &vault);
                    for_client(resp, t.client_h2)
                }
                Err(e) => unreachable(e.to_string()),
            }
        }
        Upstream::H1(s) => {
            // An HTTP/1.1 client asking to switch protocols (WebSocket): both sides'
            // upgraded connections are joined once the upstream agrees (101).
            let upgrade = (!t.client_h2 && req.headers().contains_key(header::UPGRADE))
                .then(|| hyper::upgrade::on(&mut req));
            let req = for_upstream(req, false, &t);
            let mut s = s.lock().await;
            let mut resp = match s.try_send_request(req).await {
                Ok(r) => r,
                // A kept connection the upstream closed before the request went out:
                // the request goes on a new one (it was never sent, so no retry of
                // something the upstream saw).
                Err(mut e) if t.reused && e.message().is_some() => {
                    let Some(req) = e.take_message() else {
                        return unreachable(e.error().to_string());
                    };
                    match redial(&ctx, &grant, &t).await {
                        Ok(fresh) => *s = fresh,
                        Err(detail) => return unreachable(detail),
                    }
                    match s.send_request(req).await {
                        Ok(r) => r,
                        Err(e) => return unreachable(e.to_string()),
                    }
                }
                Err(e) => return unreachable(e.into_error().to_string()),
            };
            drop(s);
            crate::secrets::redact_response(resp.headers_mut(), &used, &vault);
            if let Some(client) = upgrade
                && resp.status() == StatusCode::SWITCHING_PROTOCOLS
            {
                let upstream = hyper::upgrade::on(&mut resp);
                tokio::spawn(async move {
                    if let (Ok(c), Ok(u)) = tokio::join!(client, upstream) {
                        let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                        crate::relay(&mut c, &mut u, relays, false).await;
                    }
                });
            }
            for_client(resp, t.client_h2)
        }
    }
}

/// Read what is left of a refused request's body (1 MiB, 2 s at most) before the
/// answer: closing a connection with unread data resets it, and the client would lose
/// the answer.
async fn drain(mut body: Incoming) {
    let read = async {
        let mut left: usize = 1 << 20;
        while left > 0 {
            match body.frame().await {
                // Read and dropped: nothing of it is kept.
                Some(Ok(f)) => left = left.saturating_sub(f.data_ref().map_or(0, |d| d.len())),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), read).await;
}

/// How a forwarded request reaches its upstream.
pub enum Via {
    /// A connection dialled for it.
    Dialled(TcpStream),
    /// A connection kept from an earlier request with the same [`pool::Key`].
    Kept(SendRequest<Incoming>),
}

/// Whether the upstream connection may serve another request after `req`: a request
/// without a body (nothing a server could read differently from hyper and leave behind
/// as the start of another request), without `Expect`, with no protocol switch taking
/// the connection over, and naming no credential placeholder (a request that gets a
/// secret swapped in always has a connection of its own).
pub fn reusable<B>(req: &Request<B>) -> bool {
    let h = req.headers();
    // Also no header a lenient server might take for framing (`Content_Length`).
    let framing = h.keys().any(|k| {
        let n = k.as_str();
        n.contains('_')
            && matches!(
                n.replace('_', "-").as_str(),
                "content-length" | "transfer-encoding"
            )
    });
    let no_body = !framing
        && !h.contains_key(header::TRANSFER_ENCODING)
        && h.get_all(header::CONTENT_LENGTH)
            .iter()
            .all(|v| v.as_bytes() == b"0");
    let placeholder = |b: &[u8]| {
        b.windows(crate::secrets::PREFIX.len())
            .any(|w| w.eq_ignore_ascii_case(crate::secrets::PREFIX.as_bytes()))
    };
    no_body
        && !h.contains_key(header::EXPECT)
        && !h.contains_key(header::UPGRADE)
        && !h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .map_or(true, |v| v.to_ascii_lowercase().contains("upgrade"))
        })
        && !placeholder(req.uri().to_string().as_bytes())
        && !h.values().any(|v| placeholder(v.as_bytes()))
}

/// A new HTTP/1.1 connection to the grant's upstream (a kept one was closed).
async fn redial(ctx: &Context, grant: &Grant, t: &Target) -> Result<SendRequest<Incoming>, String> {
    let tcp = match crate::dial(ctx, &grant.endpoint, &t.host, t.port).await {
        Ok(s) => s,
        Err(crate::DialError::Refused(r) | crate::DialError::Unreachable(r)) => return Err(r),
    };
    let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("HTTP/1.1 to {}: {e}", t.host))?;
    tokio::spawn(conn.with_upgrades());
    Ok(s)
}

/// Forward one absolute-form `http://` request of the explicit proxy (already
/// allowed) over `via`: the same request path as an inspected tunnel's, without TLS;
/// `rules` applies the endpoint's rules (a `protocol: rest` endpoint). When `key` is
/// given (a [`reusable`] request) the upstream connection is kept for the next request
/// once this one's response has been read to its end.
pub async fn forward(
    ctx: Arc<Context>,
    grant: Grant,
    req: Request<Incoming>,
    via: Via,
    relays: watch::Receiver<u64>,
    rules: bool,
    key: Option<pool::Key>,
) -> Response<Body> {
    let t = Target {
        host: grant.host.clone(),
        port: grant.port,
        client_h2: false,
        tls: false,
        rules,
        reused: matches!(via, Via::Kept(_)),
    };
    let sender = match via {
        Via::Kept(s) => Ok(s),
        Via::Dialled(tcp) => match hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await {
            Ok((s, conn)) => {
                tokio::spawn(conn.with_upgrades());
                Ok(s)
            }
            Err(e) => Err(format!("HTTP/1.1 to {}: {e}", t.host)),
        },
    };
    let sender: Sender = sender.map(|s| Arc::new(Upstream::H1(Mutex::new(s))));
    let kept = sender.as_ref().ok().cloned();
    let who = Arc::new(grant.who.clone());
    let resp = handle(ctx.clone(), Arc::new(grant), who, t, sender, relays, req).await;
    // `handle` is done with its copy: the connection waits (in the background) for
    // the response to be read to its end, then goes back to the pool.
    if let (Some(key), Some(up)) = (key, kept)
        && let Ok(up) = Arc::try_unwrap(up)
        && let Upstream::H1(s) = up
    {
        let mut s = s.into_inner();
        tokio::spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(KEEP_WAIT, s.ready()).await {
                let current = ctx.policy.current().version;
                ctx.pool.put(key, s, current);
            }
        });
    }
    resp
}

/// How long a response may take to be read before its connection is no longer kept.
const KEEP_WAIT: std::time::Duration = std::time::Duration::from_secs(60);
