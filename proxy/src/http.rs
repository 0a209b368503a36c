//! Request heads, strictly: read one with a size limit, refuse any byte sequence two
//! HTTP parsers could read differently (bare CR or LF, obs-fold, control bytes, both
//! Content-Length and Transfer-Encoding, several lengths), and parse it with `httparse`
//! (hyper's parser). The explicit proxy checks a head with [`check_head`] before hyper
//! serves it; the control API parses its requests with [`parse_head`]. Also the proxy's
//! own answers (403 with the policy JSON, 400, 431, 502).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Most headers a request may carry.
pub const MAX_HEADERS: usize = 128;

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Method (`CONNECT`, `GET`, ...).
    pub method: String,
    /// Request target as sent.
    pub target: String,
    /// Headers in order (values that are not UTF-8 are refused).
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
    /// More than [`MAX_HEADERS`] headers.
    TooManyHeaders,
    /// Not HTTP.
    Malformed(String),
}

/// Read bytes until the end of the head (an empty line, `\r\n\r\n`, or `\n\n` which
/// [`check_head`] then refuses); returns the head bytes and any bytes read past it.
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
        let start = buf.len().saturating_sub(2);
        buf.extend_from_slice(&chunk[..n]);
        let end = buf[start..]
            .windows(3)
            .enumerate()
            .find_map(|(i, w)| match w {
                [b'\n', b'\r', b'\n'] => Some(start + i + 3),
                [b'\n', b'\n', _] => Some(start + i + 2),
                _ => None,
            });
        let end = end.or_else(|| buf.ends_with(b"\n\n").then_some(buf.len()));
        if let Some(end) = end {
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

/// Refuse a head two parsers could disagree on, then parse it. The bytes must be
/// CRLF-terminated lines without obs-fold or control bytes (HTAB in values aside); the
/// version 1.0 or 1.1; at most [`MAX_HEADERS`] headers; one Content-Length at most,
/// never with Transfer-Encoding, which may only be `chunked`.
pub fn parse_head(bytes: &[u8]) -> Result<Head, HeadError> {
    let bad = |m: &str| Err(HeadError::Malformed(m.to_string()));
    for (i, &b) in bytes.iter().enumerate() {
        let prev = i.checked_sub(1).map(|j| bytes[j]);
        let next = bytes.get(i + 1).copied();
        match b {
            b'\r' if next != Some(b'\n') => return bad("bare CR in the request head"),
            b'\n' if prev != Some(b'\r') => {
                return bad("bare LF in the request head (lines end with CRLF)");
            }
            b' ' | b'\t' if prev == Some(b'\n') => {
                return bad("obsolete line folding in the request head");
            }
            b'\t' | b'\r' | b'\n' => {}
            0..=0x1f | 0x7f => return bad("control byte in the request head"),
            _ => {}
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(n)) if n == bytes.len() => {}
        Ok(_) => return bad("incomplete request head"),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(e) => {
            return Err(HeadError::Malformed(format!(
                "unreadable request head: {e}"
            )));
        }
    }
    if req.version != Some(1) && req.version != Some(0) {
        return bad("unsupported HTTP version");
    }
    let mut out = Head {
        method: req.method.unwrap_or_default().to_string(),
        target: req.path.unwrap_or_default().to_string(),
        headers: Vec::with_capacity(req.headers.len()),
    };
    for h in req.headers.iter() {
        let Ok(v) = std::str::from_utf8(h.value) else {
            return bad("a header value is not UTF-8");
        };
        out.headers.push((h.name.to_string(), v.trim().to_string()));
    }
    let count = |n: &str| {
        out.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(n))
            .count()
    };
    let (lengths, encodings) = (count("content-length"), count("transfer-encoding"));
    if lengths > 0 && encodings > 0 {
        return bad("both Content-Length and Transfer-Encoding");
    }
    if lengths > 1 {
        return bad("several Content-Length headers");
    }
    // Upstreams disagree on which of several Host headers counts (RFC 9112 says 400).
    if count("host") > 1 {
        return bad("several Host headers");
    }
    if lengths == 1
        && !out
            .header("content-length")
            .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
    {
        return bad("Content-Length is not a number");
    }
    if encodings > 1
        || out
            .header("transfer-encoding")
            .is_some_and(|v| !v.eq_ignore_ascii_case("chunked"))
    {
        return bad("Transfer-Encoding other than one `chunked`");
    }
    Ok(out)
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
        assert!(parse_head(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n").is_err());
        assert!(parse_head(b"GET  HTTP/1.1\r\n\r\n").is_err());
    }

    #[test]
    fn ambiguous_heads_refused() {
        let refused: [&[u8]; 13] = [
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nhOST: a\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\tfolded\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        ];
        for h in refused {
            assert!(
                matches!(parse_head(h), Err(HeadError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(h)
            );
        }
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse_head(&many).unwrap_err(), HeadError::TooManyHeaders);
        assert!(
            parse_head(b"POST / HTTP/1.1\r\nHost: a\r\nX: a\tb\r\nContent-Length: 3\r\n\r\n")
                .is_ok()
        );
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
        // A head ended by bare LFs is read (and then refused by parse_head), not
        // waited on until the timeout.
        let (h, rest) = read_head(&mut &b"GET / HTTP/1.1\n\nX"[..], 8192)
            .await
            .unwrap();
        assert_eq!((h.len(), rest.as_slice()), (16, &b"X"[..]));
        let (h, _) = read_head(&mut &b"GET / HTTP/1.1\r\nA: b\n\r\n"[..], 8192)
            .await
            .unwrap();
        assert_eq!(h.len(), 23);
    }
}
