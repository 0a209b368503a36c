//! `inference.local`, the privacy router: model API calls a sandboxed program sends to
//! `https://inference.local` (CONNECT, TLS with the sandbox CA) or `http://inference.local`
//! are answered here, not by any host the sandbox names. The proxy forwards them to the
//! route the user configured on the host (`openshell inference set`): the client's
//! credentials and unknown headers are dropped, only an allowlist per API passes, the
//! route's credential is injected and the body's `model` becomes the route's. Streams
//! (SSE) are relayed as they arrive.
//!
//! Paths: `POST /v1/messages` (and `/v1/messages/count_tokens`) for Anthropic routes;
//! `POST /v1/chat/completions`, `/v1/completions`, `/v1/responses`, `/v1/embeddings`
//! for OpenAI routes; `GET /v1/models`, `/v1/models/ID` for both. Errors are JSON:
//! unknown path 403, a path of the other API 400, no route 503, backend unreachable
//! 502, backend too slow 504. A route's backend may be on the host's loopback (a local
//! model server): the one way into host loopback, because the user chose it on the host.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::Context;
use crate::l7::{Body, json};

/// The name sandboxed programs use.
pub const HOST: &str = "inference.local";

/// Largest request body read (Claude Code sends ~100 KB; images make more).
const MAX_BODY: usize = 16 << 20;

/// One route: where calls go and as whom. Serialised only to travel over the
/// sandbox's 0600 control socket.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Route {
    /// The provider's name (logs).
    pub provider: String,
    /// `anthropic` or `openai`.
    pub api: String,
    /// Backend base URL (`https://api.anthropic.com`, `http://127.0.0.1:11434/v1`).
    pub base_url: String,
    /// The model every call gets.
    pub model: String,
    /// The credential injected (`x-api-key` or `Authorization: Bearer`).
    #[serde(default)]
    pub key: Option<String>,
    /// Per-call timeout, seconds (until the response head).
    pub timeout_secs: u64,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("provider", &self.provider)
            .field("api", &self.api)
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("key", &self.key.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

type ReqBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;
type Sender = hyper::client::conn::http1::SendRequest<ReqBody>;

/// Most idle backend connections kept.
const POOL: usize = 8;

/// The live route (replaced whole by `inference set/delete`), and idle connections to
/// its backend (kept-alive HTTP/1.1, reused: a call does not pay a TCP and TLS set-up).
#[derive(Default)]
pub struct Router {
    route: std::sync::RwLock<Option<Arc<Route>>>,
    idle: std::sync::Mutex<Vec<(String, Sender)>>,
}

impl Router {
    /// The current route.
    pub fn get(&self) -> Option<Arc<Route>> {
        self.route.read().ok().and_then(|g| g.clone())
    }

    /// Set or clear it (idle connections of the old one are dropped).
    pub fn set(&self, r: Option<Route>) {
        if let Ok(mut g) = self.route.write() {
            *g = r.map(Arc::new);
        }
        if let Ok(mut p) = self.idle.lock() {
            p.clear();
        }
    }

    /// An idle connection to `base` that can take a request now.
    fn take(&self, base: &str) -> Option<Sender> {
        let mut p = self.idle.lock().ok()?;
        p.retain(|(_, s)| !s.is_closed());
        let i = p.iter().position(|(b, s)| b == base && s.is_ready())?;
        Some(p.swap_remove(i).1)
    }

    /// Keep a connection for later calls (it becomes ready once its response ends).
    fn give(&self, base: &str, s: Sender) {
        // A connection of a route replaced meanwhile is not kept.
        if self.get().is_none_or(|r| r.base_url != base) {
            return;
        }
        if let Ok(mut p) = self.idle.lock() {
            p.retain(|(_, s)| !s.is_closed());
            if p.len() < POOL {
                p.push((base.to_string(), s));
            }
        }
    }
}

fn err(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json(
        status,
        serde_json::json!({"error": code, "message": message}),
        None,
    )
}

/// Which API a path belongs to, or None for a path inference.local does not serve.
fn api_of(method: &hyper::Method, path: &str) -> Option<&'static str> {
    use hyper::Method;
    match (method, path) {
        (&Method::POST, "/v1/messages" | "/v1/messages/count_tokens") => Some("anthropic"),
        (
            &Method::POST,
            "/v1/chat/completions" | "/v1/completions" | "/v1/responses" | "/v1/embeddings",
        ) => Some("openai"),
        (&Method::GET, "/v1/models") => Some("any"),
        (&Method::GET, p) if p.strip_prefix("/v1/models/").is_some_and(model_id_ok) => Some("any"),
        _ => None,
    }
}

/// A model id of `/v1/models/ID`: letters, digits and `._:-`, never a dot segment (a
/// backend that decodes or normalises would otherwise get the key on another path).
fn model_id_ok(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 256
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Calls holding a body at once (each at most [`MAX_BODY`], until the backend
/// answers): the proxy runs
/// outside the sandbox's memory limit, so what a sandbox can make it hold is bounded.
static BUFFERING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(8);

/// Body fields that make the provider fetch or call something itself (server-side
/// tools, MCP servers): through them a sandbox whose policy allows no host could
/// reach any — refused.
fn provider_side_fetch(body: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
    for k in ["mcp_servers", "container", "web_search_options"] {
        if body.contains_key(k) {
            return Some(format!("`{k}`"));
        }
    }
    if let Some(tools) = body.get("tools").and_then(|t| t.as_array()) {
        for t in tools {
            let kind = t.get("type").and_then(|v| v.as_str()).unwrap_or("custom");
            // Client tools: Anthropic's have no type (or `custom`), OpenAI's are
            // `function`. Everything else runs at the provider.
            if !matches!(kind, "custom" | "function") {
                return Some(format!("a `{kind}` tool"));
            }
        }
    }
    None
}

/// Headers a call keeps (everything else, credentials first, is dropped).
fn passes(api: &str, name: &str) -> bool {
    matches!(name, "content-type" | "accept" | "user-agent")
        || (api == "anthropic" && matches!(name, "anthropic-version" | "anthropic-beta"))
        || (api == "openai"
            && matches!(
                name,
                "openai-organization" | "openai-project" | "openai-beta"
            ))
}

/// Answer one call made to inference.local by `who`; one `API:INFERENCE` log line per
/// call, refused ones included.
pub async fn handle(
    ctx: Arc<Context>,
    req: Request<Incoming>,
    who: &crate::Peer,
) -> Response<Body> {
    let started = Instant::now();
    let call = format!("{} {}", req.method(), req.uri().path());
    let route = ctx.inference.get();
    let resp = answer(&ctx, req).await;
    let (provider, model) = route
        .as_ref()
        .map_or(("-", "-"), |r| (r.provider.as_str(), r.model.as_str()));
    let tokens = resp.extensions().get::<Usage>().map(|u| (u.0, u.1));
    ctx.log.inference(
        provider,
        model,
        &call,
        (
            resp.status().as_u16(),
            started.elapsed().as_millis(),
            tokens,
        ),
        who,
    );
    resp
}

async fn answer(ctx: &Arc<Context>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    // The body is read first, whatever the answer: a refusal sent while the client is
    // still sending would end in a reset, and the client would never see it.
    let (parts, body) = req.into_parts();
    let Ok(_permit) = BUFFERING.acquire().await else {
        return err(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "inference.local is shutting down",
        );
    };
    let read = tokio::time::timeout(
        Duration::from_secs(60),
        Limited::new(body, MAX_BODY).collect(),
    );
    let body = match read.await {
        Ok(Ok(b)) => b.to_bytes(),
        _ => {
            return err(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "request body over 16 MiB, unreadable, or not sent within 60 s",
            );
        }
    };
    let Some(kind) = api_of(&method, &path) else {
        return err(
            StatusCode::FORBIDDEN,
            "unsupported_inference_path",
            &format!("{method} {path} is not an inference API call inference.local serves"),
        );
    };
    let Some(route) = ctx.inference.get() else {
        return err(
            StatusCode::SERVICE_UNAVAILABLE,
            "inference_not_configured",
            "no inference route is configured: openshell inference set --provider P --model M",
        );
    };
    if kind != "any" && kind != route.api {
        return err(
            StatusCode::BAD_REQUEST,
            "no_compatible_route",
            &format!(
                "{path} is an {kind} call; the route ({}) speaks {}",
                route.provider, route.api
            ),
        );
    }
    // `model` is replaced without building the whole document in memory: the top
    // level is kept as raw JSON; only the fields that could make the provider fetch
    // something are read.
    let body = if method == hyper::Method::POST {
        let raw: std::collections::BTreeMap<String, Box<serde_json::value::RawValue>> =
            match serde_json::from_slice(&body) {
                Ok(m) => m,
                Err(_) => {
                    return err(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "the body must be a JSON object",
                    );
                }
            };
        let mut small = serde_json::Map::new();
        for k in ["tools", "mcp_servers", "container", "web_search_options"] {
            if let Some(v) = raw.get(k) {
                small.insert(k.into(), serde_json::from_str(v.get()).unwrap_or_default());
            }
        }
        if let Some(what) = provider_side_fetch(&small) {
            return err(
                StatusCode::FORBIDDEN,
                "provider_side_fetch_refused",
                &format!(
                    "{what} would make the provider reach hosts the sandbox's policy does not allow"
                ),
            );
        }
        let mut out = raw;
        match serde_json::value::to_raw_value(&route.model) {
            Ok(m) => {
                out.insert("model".into(), m);
            }
            Err(_) => return err(StatusCode::BAD_REQUEST, "bad_request", "bad model name"),
        }
        Bytes::from(serde_json::to_vec(&out).unwrap_or_default())
    } else {
        Bytes::new()
    };
    match forward(ctx, &route, &method, &path, &parts.headers, body).await {
        Ok(mut resp) => {
            // A backend echoing the key (some local servers do in errors) does not
            // hand it to the sandbox: headers always, small JSON bodies in with_usage.
            let key = route.key.clone().filter(|k| !k.is_empty());
            if let Some(k) = &key {
                let hidden: Vec<_> = resp
                    .headers()
                    .iter()
                    .filter(|(_, v)| String::from_utf8_lossy(v.as_bytes()).contains(k.as_str()))
                    .map(|(n, _)| n.clone())
                    .collect();
                for n in hidden {
                    resp.headers_mut().remove(n);
                }
            }
            with_usage(resp, key.as_deref()).await
        }
        Err((status, code, message)) => err(status, code, &message),
    }
}

/// Token counts a response reported (`usage`), for the log.
#[derive(Clone, Copy)]
struct Usage(u64, u64);

/// A small JSON answer is read whole to find its `usage` (Anthropic `input_tokens` /
/// `output_tokens`, OpenAI `prompt_tokens` / `completion_tokens`); streams and large
/// answers pass through untouched, as they arrive.
async fn with_usage(resp: Response<Incoming>, key: Option<&str>) -> Response<Body> {
    let small_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"))
        && resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .is_some_and(|n| n <= 1 << 20);
    if !small_json {
        return resp.map(|b| b.boxed());
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = match Limited::new(body, 1 << 20).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return err(
                StatusCode::BAD_GATEWAY,
                "inference_backend_error",
                "the backend's answer could not be read",
            );
        }
    };
    let bytes = match key {
        Some(k) if bytes.windows(k.len()).any(|w| w == k.as_bytes()) => {
            let text = String::from_utf8_lossy(&bytes).replace(k, "[REDACTED]");
            parts.headers.remove(header::CONTENT_LENGTH);
            Bytes::from(text)
        }
        _ => bytes,
    };
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) {
        let u = &v["usage"];
        let n = |a: &str, b: &str| u[a].as_u64().or_else(|| u[b].as_u64());
        if let (Some(i), Some(o)) = (
            n("input_tokens", "prompt_tokens"),
            n("output_tokens", "completion_tokens"),
        ) {
            parts.extensions.insert(Usage(i, o));
        }
    }
    Response::from_parts(
        parts,
        Full::new(bytes).map_err(|never| match never {}).boxed(),
    )
}

type Failure = (StatusCode, &'static str, String);

/// Send the call to the route's backend; the response (its body streamed) or why not.
async fn forward(
    ctx: &Context,
    route: &Route,
    method: &hyper::Method,
    path: &str,
    headers: &hyper::HeaderMap,
    body: Bytes,
) -> Result<Response<Incoming>, Failure> {
    let bad_route = |m: String| (StatusCode::BAD_GATEWAY, "inference_backend_unreachable", m);
    let url = url_parts(&route.base_url).map_err(bad_route)?;
    let (tls, host, port, prefix) = url;
    // The base URL may already end with /v1: the call's /v1 is not doubled.
    let rest = if prefix.ends_with("/v1") {
        path.strip_prefix("/v1").unwrap_or(path)
    } else {
        path
    };
    let target = format!("{prefix}{rest}");
    let mut b = Request::builder().method(method.clone()).uri(&target);
    for (k, v) in headers {
        if passes(&route.api, k.as_str()) {
            b = b.header(k, v);
        }
    }
    let shown = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let authority = if (tls && port == 443) || (!tls && port == 80) {
        shown
    } else {
        format!("{shown}:{port}")
    };
    b = b.header(header::HOST, authority.as_str());
    if let Some(k) = &route.key {
        if route.api == "anthropic" {
            b = b.header("x-api-key", k.as_str());
            if !headers.contains_key("anthropic-version") {
                b = b.header("anthropic-version", "2023-06-01");
            }
        } else {
            b = b.header(header::AUTHORIZATION, format!("Bearer {k}"));
        }
    }
    if !body.is_empty() {
        b = b.header(header::CONTENT_TYPE, "application/json");
    }
    let req = b
        .body(Full::new(body).map_err(|never| match never {}).boxed())
        .map_err(|e| bad_route(e.to_string()))?;
    let timeout = Duration::from_secs(route.timeout_secs.clamp(1, 3600));
    let call = async {
        if let Some(mut s) = ctx.inference.take(&route.base_url) {
            let fail = |e: hyper::Error| {
                (
                    StatusCode::BAD_GATEWAY,
                    "inference_backend_error",
                    e.to_string(),
                )
            };
            let resp = s.send_request(req).await.map_err(fail)?;
            ctx.inference.give(&route.base_url, s);
            return Ok(resp);
        }
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| bad_route(format!("{host}:{port}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        if tls {
            let cfg = ctx.upstream_tls().map_err(bad_route)?;
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| bad_route(e.to_string()))?;
            let stream = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .map_err(|e| bad_route(format!("TLS to {host}: {e}")))?;
            send(ctx, &route.base_url, TokioIo::new(stream), req).await
        } else {
            send(ctx, &route.base_url, TokioIo::new(tcp), req).await
        }
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(r) => r,
        Err(_) => Err((
            StatusCode::GATEWAY_TIMEOUT,
            "inference_backend_timeout",
            format!(
                "no answer from {} within {} s",
                route.base_url,
                timeout.as_secs()
            ),
        )),
    }
}

/// A new connection's first call; the connection is kept for later ones.
async fn send<T>(
    ctx: &Context,
    base: &str,
    io: TokioIo<T>,
    req: Request<ReqBody>,
) -> Result<Response<Incoming>, Failure>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let fail = |e: hyper::Error| {
        (
            StatusCode::BAD_GATEWAY,
            "inference_backend_error",
            e.to_string(),
        )
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(fail)?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(fail)?;
    ctx.inference.give(base, sender);
    Ok(resp)
}

/// (TLS, host, port, path prefix without a trailing `/`) of a base URL.
pub fn url_parts(base: &str) -> Result<(bool, String, u16, String), String> {
    let uri: hyper::Uri = base.parse().map_err(|e| format!("base URL {base}: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("base URL {base}: http or https")),
    };
    let host = uri
        .host()
        .ok_or_else(|| format!("base URL {base}: no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let prefix = uri.path().trim_end_matches('/').to_string();
    Ok((tls, host, port, prefix))
}

/// Serve an established `CONNECT inference.local:443` tunnel: TLS with a leaf of the
/// sandbox CA, then every call on the connection (HTTP/1.1 or HTTP/2).
pub async fn serve_tls<S>(ctx: Arc<Context>, client: S, who: crate::Peer)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Some(ca) = ctx.ca.as_ref() else { return };
    let Ok(cfg) = ca.server_config(HOST) else {
        return;
    };
    let Ok(tls) = tokio_rustls::TlsAcceptor::from(cfg).accept(client).await else {
        return;
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
    let who = Arc::new(who);
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (ctx, who) = (ctx.clone(), who.clone());
        async move { Ok::<_, hyper::Error>(handle(ctx, req, &who).await) }
    });
    let io = TokioIo::new(tls);
    if h2 {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc)
            .await;
    } else {
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_headers() {
        use hyper::Method;
        assert_eq!(api_of(&Method::POST, "/v1/messages"), Some("anthropic"));
        assert_eq!(api_of(&Method::POST, "/v1/responses"), Some("openai"));
        assert_eq!(api_of(&Method::GET, "/v1/models/x"), Some("any"));
        assert_eq!(api_of(&Method::GET, "/v1/models/x/y"), None);
        for bad in ["..", ".", "..%2F..%2Fx", "%2e%2e", "a;b", "a\\b", ""] {
            assert_eq!(
                api_of(&Method::GET, &format!("/v1/models/{bad}")),
                None,
                "{bad}"
            );
        }
        let fetches = |v: serde_json::Value| provider_side_fetch(v.as_object().unwrap());
        assert!(fetches(serde_json::json!({"mcp_servers": []})).is_some());
        assert!(
            fetches(
                serde_json::json!({"tools": [{"type": "web_fetch_20250910", "name": "web_fetch"}]})
            )
            .is_some()
        );
        assert!(
            fetches(serde_json::json!({"tools": [{"type": "mcp", "server_url": "https://x"}]}))
                .is_some()
        );
        assert!(fetches(serde_json::json!({"tools": [{"name": "Write", "input_schema": {}}, {"type": "function"}]})).is_none());
        assert_eq!(api_of(&Method::POST, "/v1/files"), None);
        assert_eq!(api_of(&Method::GET, "/v1/messages"), None);
        assert!(passes("anthropic", "anthropic-beta") && !passes("openai", "anthropic-beta"));
        assert!(!passes("anthropic", "authorization") && !passes("openai", "x-api-key"));
        assert!(!passes("openai", "cookie"));
        assert_eq!(
            url_parts("http://127.0.0.1:11434/v1/").unwrap(),
            (false, "127.0.0.1".into(), 11434, "/v1".into())
        );
        assert!(url_parts("ftp://x").is_err());
        let r = Route {
            provider: "p".into(),
            api: "openai".into(),
            base_url: "x".into(),
            model: "m".into(),
            key: Some("sk-secret".into()),
            timeout_secs: 60,
        };
        assert!(!format!("{r:?}").contains("sk-secret"));
    }
}
