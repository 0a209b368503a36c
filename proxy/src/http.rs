//! Just enough HTTP/1.x for a proxy: read a request head with a size limit, parse the
//! request line and headers, and write the proxy's own answers (403 with the policy
//! JSON, 400, 431, 502). Bodies are never parsed here.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Method (`CONNECT`, `GET`, ...).
    pub method: String,
    /// Request target as sent.
    pub target: String,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    /// Headers in order.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// First header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a head could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// The client closed before sending a full head.
    Closed,
    /// The head is larger than allowed.
    TooLarge,
    /// Not HTTP.
    Malformed(String),
}

/// Read bytes until the end of the head (`\r\n\r\n`); returns the head bytes and any
/// bytes read past it.
pub async fn read_head<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
) -> Result<(Vec<u8>, Vec<u8>), HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = r.read(&mut chunk).await.map_err(|_| HeadError::Closed)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        let start = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf[start..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = start + pos + 4;
            if end > limit {
                return Err(HeadError::TooLarge);
            }
            let rest = buf.split_off(end);
            return Ok((buf, rest));
        }
        if buf.len() > limit {
            return Err(HeadError::TooLarge);
        }
    }
}

/// Parse a request head.
pub fn parse_head(bytes: &[u8]) -> Result<Head, HeadError> {
    let text =
        std::str::from_utf8(bytes).map_err(|_| HeadError::Malformed("head is not UTF-8".into()))?;
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or("");
    let mut parts = line.split(' ');
    let (method, target, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(t), Some(v), None) if !m.is_empty() && !t.is_empty() => (m, t, v),
        _ => return Err(HeadError::Malformed(format!("bad request line {line:?}"))),
    };
    if !method.bytes().all(|b| b.is_ascii_uppercase() || b == b'-') {
        return Err(HeadError::Malformed(format!("bad method {method:?}")));
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(HeadError::Malformed(format!(
            "unsupported version {version:?}"
        )));
    }
    let mut headers = Vec::new();
    for l in lines {
        if l.is_empty() {
            continue;
        }
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| HeadError::Malformed(format!("bad header line {l:?}")))?;
        if k.is_empty()
            || k.bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(HeadError::Malformed(format!("bad header name {k:?}")));
        }
        headers.push((k.to_string(), v.trim().to_string()));
    }
    Ok(Head {
        method: method.into(),
        target: target.into(),
        version: version.into(),
        headers,
    })
}

/// Split `host:port` (with `[v6]:port`), defaulting the port.
pub fn split_host_port(s: &str, default: Option<u16>) -> Option<(String, u16)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default?,
        };
        return Some((h.to_string(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h.to_string(), p.parse().ok()?)),
        _ => Some((s.to_string(), default?)),
    }
    .filter(|(h, _)| !h.is_empty())
}

/// Write a complete response with a JSON (or text) body and close semantics.
pub async fn respond<W: AsyncWrite + Unpin>(
    w: &mut W,
    status: u16,
    reason: &str,
    extra_headers: &[(&str, String)],
    body: &str,
) -> std::io::Result<()> {
    let mut s = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in extra_headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    s.push_str(body);
    w.write_all(s.as_bytes()).await?;
    w.flush().await
}

/// The JSON body of a policy denial.
pub fn deny_body(detail: &str, reason: &str) -> String {
    serde_json::json!({"error": "policy_denied", "detail": detail, "reason": reason}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads() {
        let h =
            parse_head(b"CONNECT api.x.com:443 HTTP/1.1\r\nHost: api.x.com:443\r\n\r\n").unwrap();
        assert_eq!(
            (h.method.as_str(), h.target.as_str()),
            ("CONNECT", "api.x.com:443")
        );
        assert_eq!(h.header("host"), Some("api.x.com:443"));
        assert!(parse_head(b"GET / HTTP/2\r\n\r\n").is_err());
        assert!(parse_head(b"get / HTTP/1.1\r\n\r\n").is_err());
        assert!(parse_head(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n").is_err());
        assert!(parse_head(b"GET  HTTP/1.1\r\n\r\n").is_err());
    }

    #[test]
    fn host_ports() {
        assert_eq!(
            split_host_port("a.com:443", None),
            Some(("a.com".into(), 443))
        );
        assert_eq!(
            split_host_port("a.com", Some(80)),
            Some(("a.com".into(), 80))
        );
        assert_eq!(
            split_host_port("[::1]:8080", None),
            Some(("::1".into(), 8080))
        );
        assert_eq!(split_host_port("a.com", None), None);
        assert_eq!(split_host_port(":80", None), None);
        assert_eq!(split_host_port("a.com:99999", None), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn head_limits() {
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 10_000));
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            read_head(&mut &big[..], 8192).await.unwrap_err(),
            HeadError::TooLarge
        );
        let (h, rest) = read_head(&mut &b"GET / HTTP/1.1\r\n\r\nBODY"[..], 8192)
            .await
            .unwrap();
        assert_eq!((h.len(), rest.as_slice()), (18, &b"BODY"[..]));
        assert_eq!(
            read_head(&mut &b"GET /"[..], 8192).await.unwrap_err(),
            HeadError::Closed
        );
    }
}
