//! The stdio protocol between `openshell --host unix://SOCKET ...` and `openshell
//! serve` (docs/api.md): the client POSTs the command line as JSON with `Upgrade:
//! openshell-stdio`; after `101 Switching Protocols` it sends its stdin as raw bytes
//! (a write shutdown is EOF), and the server answers with frames `[kind u8][len u32
//! big-endian][payload]` — kind 1 stdout, 2 stderr, 3 the exit status (payload: i32
//! big-endian), after which the server closes; kind 0 (empty) is a heartbeat sent every
//! 2 s while the command runs, so a client that went away is noticed (a write fails)
//! and its command killed even when it prints nothing. The server runs the command as
//! a child of its own binary, so a remote command behaves exactly as a local one,
//! without a terminal. The client checks that the socket's peer runs as this user
//! (SO_PEERCRED) before sending anything.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Stdio;

use http_body_util::BodyExt;
use hyper::StatusCode;
use hyper::body::{Bytes, Frame};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::serve_api::{Answer, Body, error};

/// The `Upgrade` token of the protocol.
pub const PROTOCOL: &str = "openshell-stdio";
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const EXIT: u8 = 3;
const HEARTBEAT: u8 = 0;
/// Largest frame payload (the server sends at most this much per read).
const MAX_FRAME: usize = 64 << 10;
/// How often the server says it is still there while a command is silent.
const HEARTBEAT_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Server side: answer 101 and run `args` with its stdio on the upgraded connection.
pub fn serve_upgraded(upgrade: hyper::upgrade::OnUpgrade, args: Vec<String>) -> Answer {
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let io = TokioIo::new(upgraded);
        let (mut rx, mut tx) = tokio::io::split(io);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let spawned = super::serve::command(&refs)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let msg = format!("openshell: serve: run the command: {e}\n");
                let _ = tx.write_all(&frame(STDERR, msg.as_bytes())).await;
                let _ = tx.write_all(&frame(EXIT, &125i32.to_be_bytes())).await;
                return;
            }
        };
        let (Some(mut stdin), Some(mut out), Some(mut err)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return;
        };
        // stdin: copied until the client's write shutdown, then closed for the child.
        let input = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut rx, &mut stdin).await;
        });
        let (mut obuf, mut ebuf) = (vec![0u8; MAX_FRAME], vec![0u8; MAX_FRAME]);
        let (mut out_open, mut err_open) = (true, true);
        let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
        beat.tick().await;
        while out_open || err_open {
            let (kind, n) = tokio::select! {
                r = out.read(&mut obuf), if out_open => (STDOUT, r.unwrap_or(0)),
                r = err.read(&mut ebuf), if err_open => (STDERR, r.unwrap_or(0)),
                _ = beat.tick() => (HEARTBEAT, 0),
            };
            if kind == HEARTBEAT {
                if tx.write_all(&frame(HEARTBEAT, &[])).await.is_err() {
                    input.abort();
                    return; // the client is gone: so is its command (kill_on_drop)
                }
                continue;
            }
            if n == 0 {
                if kind == STDOUT {
                    out_open = false;
                } else {
                    err_open = false;
                }
                continue;
            }
            let data = if kind == STDOUT {
                &obuf[..n]
            } else {
                &ebuf[..n]
            };
            if tx.write_all(&frame(kind, data)).await.is_err() {
                // The client is gone: so is its command (kill_on_drop).
                input.abort();
                return;
            }
        }
        let code = match child.wait().await {
            Ok(s) => s.code().unwrap_or_else(|| {
                128 + std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(0)
            }),
            Err(_) => 125,
        };
        input.abort();
        let _ = tx.write_all(&frame(EXIT, &code.to_be_bytes())).await;
        let _ = tx.shutdown().await;
    });
    let mut r = hyper::Response::new(empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    r.headers_mut()
        .insert("connection", "upgrade".parse().expect("static"));
    r.headers_mut()
        .insert("upgrade", PROTOCOL.parse().expect("static"));
    r
}

fn empty() -> Body {
    http_body_util::Full::new(Bytes::new())
        .map_err(|n| match n {})
        .boxed()
}

fn frame(kind: u8, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + data.len());
    v.push(kind);
    v.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// `logs -f` over HTTP: the child's stdout as a chunked body, for as long as it runs
/// and the client reads.
pub async fn stream_follow(args: Vec<String>) -> Answer {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let spawned = super::serve::command(&refs)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let Some(mut out) = child.stdout.take() else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "no output");
    };
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, std::io::Error>::new(8);
    // hyper drops the body when the client goes (it closes on EOF): that fires `gone`,
    // even while the log is silent.
    let (guard, mut gone) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut buf = vec![0u8; MAX_FRAME];
        loop {
            let n = tokio::select! {
                r = out.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                },
                _ = &mut gone => break,
            };
            if tx
                .send(Frame::data(Bytes::copy_from_slice(&buf[..n])))
                .await
                .is_err()
            {
                break;
            }
        }
        // The client went away or the log ended: end the follower too.
        let _ = child.kill().await;
    });
    let mut r = hyper::Response::new(
        Watched {
            inner: body,
            _guard: guard,
        }
        .boxed(),
    );
    r.headers_mut().insert(
        "content-type",
        "application/x-ndjson".parse().expect("static"),
    );
    r
}

/// A streamed body that tells, by dropping `_guard`, when hyper let go of it.
struct Watched<B> {
    inner: B,
    _guard: tokio::sync::oneshot::Sender<()>,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Watched<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }
}

/// Where `--host` points: `unix:///PATH` or a plain path.
fn socket_path(host: &str) -> Result<PathBuf, String> {
    if let Some(p) = host.strip_prefix("unix://") {
        return Ok(PathBuf::from(p));
    }
    if host.starts_with('/') {
        return Ok(PathBuf::from(host));
    }
    Err(format!(
        "--host {host}: not a unix socket (use unix:///path/to/api.sock; TCP is not served)"
    ))
}

/// Client side: run `args` (this command line without `--host`) on the server at
/// `host`; relay stdio and return its exit status.
pub fn forward(host: &str, args: Vec<String>) -> i32 {
    match forward_inner(host, args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("openshell: {e}");
            125
        }
    }
}

fn forward_inner(host: &str, args: Vec<String>) -> Result<i32, String> {
    let path = socket_path(host)?;
    let mut s = UnixStream::connect(&path).map_err(|e| {
        format!(
            "connect to {}: {e} (is `openshell serve` running? systemctl --user start openshell)",
            path.display()
        )
    })?;
    // Only a server running as this user gets the command line (it may carry
    // secrets): a socket planted by someone else is refused before anything is sent.
    let peer = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| format!("{}: peer credentials: {e}", path.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    if peer.uid() != me {
        return Err(format!(
            "{}: the server runs as uid {}, not as you (uid {me}): refusing to talk to it",
            path.display(),
            peer.uid()
        ));
    }
    let body = serde_json::json!({ "args": args }).to_string();
    let head = format!(
        "POST /v1/cli HTTP/1.1\r\nHost: openshell\r\nConnection: Upgrade\r\nUpgrade: {PROTOCOL}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let err = |e: std::io::Error| format!("{}: {e}", path.display());
    s.write_all(head.as_bytes()).map_err(err)?;
    s.write_all(body.as_bytes()).map_err(err)?;
    // The response head, byte by byte up to its end (the frames follow directly).
    let mut headbuf = Vec::new();
    let mut byte = [0u8; 1];
    while !headbuf.ends_with(b"\r\n\r\n") {
        if headbuf.len() > 64 << 10 {
            return Err(format!("{}: response head too large", path.display()));
        }
        match s.read(&mut byte).map_err(err)? {
            0 => {
                return Err(format!(
                    "{}: the server closed the connection",
                    path.display()
                ));
            }
            _ => headbuf.push(byte[0]),
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(&headbuf)
        .map_err(|e| format!("{}: bad response: {e}", path.display()))?;
    if resp.code != Some(101) {
        let mut rest = String::new();
        let _ = s.take(1 << 20).read_to_string(&mut rest);
        return Err(format!(
            "{}: the server refused: {} {}",
            path.display(),
            resp.code.unwrap_or(0),
            rest.trim()
        ));
    }
    let mut writer = s.try_clone().map_err(err)?;
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut writer);
        let _ = writer.shutdown(std::net::Shutdown::Write);
    });
    let mut hdr = [0u8; 5];
    loop {
        s.read_exact(&mut hdr)
            .map_err(|e| format!("{}: connection lost: {e}", path.display()))?;
        let len = u32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]) as usize;
        if len > MAX_FRAME {
            return Err(format!("{}: frame too large ({len})", path.display()));
        }
        let mut data = vec![0u8; len];
        s.read_exact(&mut data).map_err(err)?;
        match hdr[0] {
            HEARTBEAT => {}
            STDOUT => {
                let mut o = std::io::stdout().lock();
                let _ = o.write_all(&data).and_then(|()| o.flush());
            }
            STDERR => {
                let _ = std::io::stderr().write_all(&data);
            }
            EXIT if len == 4 => {
                return Ok(i32::from_be_bytes([data[0], data[1], data[2], data[3]]));
            }
            k => return Err(format!("{}: unknown frame kind {k}", path.display())),
        }
    }
}

/// This process's arguments without the global `--host` option (before `--` only:
/// after it, arguments belong to the sandboxed command). Arguments travel as JSON
/// strings: one that is not UTF-8 is refused with its position.
pub fn args_without_host() -> Result<Vec<String>, String> {
    let mut all = Vec::new();
    for (i, a) in std::env::args_os().skip(1).enumerate() {
        match a.into_string() {
            Ok(s) => all.push(s),
            Err(raw) => {
                return Err(format!(
                    "argument {} ({}) is not UTF-8: it cannot be sent with --host",
                    i + 1,
                    raw.to_string_lossy()
                ));
            }
        }
    }
    let mut out = Vec::new();
    let mut it = all.into_iter();
    while let Some(a) = it.next() {
        if a == "--" {
            out.push(a);
            out.extend(it.by_ref());
            break;
        }
        if a == "--host" {
            it.next();
            continue;
        }
        if a.starts_with("--host=") {
            continue;
        }
        out.push(a);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_carry_kind_and_length() {
        assert_eq!(frame(STDOUT, b"hi"), vec![1, 0, 0, 0, 2, b'h', b'i']);
        assert_eq!(
            frame(EXIT, &3i32.to_be_bytes()),
            vec![3, 0, 0, 0, 4, 0, 0, 0, 3]
        );
    }

    #[test]
    fn hosts_are_unix_sockets_only() {
        assert_eq!(
            socket_path("unix:///run/a.sock").unwrap(),
            PathBuf::from("/run/a.sock")
        );
        assert_eq!(
            socket_path("/run/a.sock").unwrap(),
            PathBuf::from("/run/a.sock")
        );
        assert!(
            socket_path("tcp://1.2.3.4:1")
                .unwrap_err()
                .contains("not a unix socket")
        );
    }
}
