//! A blocking client for a running sandbox's control socket (`<sandbox>/control.sock`,
//! HTTP/1.1 + JSON, served by the supervisor's proxy thread; see `netsvc`).
//!
//! One request per connection (`Connection: close`), bounded by a timeout, and the
//! reply's size is capped, so a wedged or hostile supervisor cannot hang or bloat the
//! CLI.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// The hash the proxy reports for a policy (`sha256:` of its canonical YAML).
pub fn policy_hash(p: &openshell_policy::Policy) -> String {
    openshell_proxy::state::hash(p)
}

/// Largest reply read (a policy with its history fits many times over).
const MAX_REPLY: u64 = 8 << 20;

/// Send `method path` with an optional body; return the status and the JSON reply.
pub fn request(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<(u16, serde_json::Value), String> {
    let fail = |what: &str, e: std::io::Error| format!("{what} {}: {e}", sock.display());
    let mut s = UnixStream::connect(sock).map_err(|e| fail("connect to", e))?;
    s.set_read_timeout(Some(timeout))
        .and_then(|()| s.set_write_timeout(Some(timeout)))
        .map_err(|e| fail("set a timeout on", e))?;
    let body = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: openshell\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())
        .and_then(|()| s.write_all(body.as_bytes()))
        .map_err(|e| fail("write to", e))?;
    let mut reply = Vec::new();
    s.take(MAX_REPLY)
        .read_to_end(&mut reply)
        .map_err(|e| fail("read from", e))?;
    parse(&reply)
}

/// Split an HTTP/1.1 reply into its status and JSON body.
fn parse(reply: &[u8]) -> Result<(u16, serde_json::Value), String> {
    let text = String::from_utf8_lossy(reply);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("the supervisor closed the connection without a reply")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad reply from the supervisor: {head:?}"))?;
    let value = serde_json::from_str(body).map_err(|e| format!("bad reply body: {e}"))?;
    Ok((status, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies() {
        let (s, v) = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{\"a\": 1}").unwrap();
        assert_eq!((s, v["a"].as_i64()), (200, Some(1)));
        assert!(parse(b"").unwrap_err().contains("without a reply"));
        assert!(
            parse(b"garbage\r\n\r\n{}")
                .unwrap_err()
                .contains("bad reply")
        );
        assert!(parse(b"HTTP/1.1 200 OK\r\n\r\nnot json").is_err());
    }
}
