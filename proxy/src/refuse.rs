//! The kernel refuses connections that ignore the proxy (docs/network.md). The router's
//! rules queue every connection attempt that is not for the proxy (a TCP SYN); this
//! task reads the queue, decides each attempt with [`bypass::admit`] (who made it, what
//! the policy says) and answers: accept (the attempt goes on to the bypass listener,
//! which relays a `protocol: tcp` endpoint) or refuse (the router answers it with a TCP
//! reset: the program gets "connection refused" at once, no handshake ever completes,
//! and the attempt is logged as `NET:BYPASS` with its binary — the socket is still
//! there to be identified while its first packet waits).
//!
//! At most [`IN_FLIGHT`] attempts are decided at once and [`BACKLOG`] wait for a
//! decider. An attempt goes on to the bypass listener, which decides it again and
//! refuses it after the handshake (the behaviour without a queue), when the backlog is
//! full, when its decision takes over [`DECIDE_WITHIN`] or fails, and — in the kernel
//! — when the kernel's queue (1 024) or our socket's receive buffer (capped by
//! `net.core.rmem_max`, a few hundred messages) is full. Nothing gets out either way.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use nix::sys::socket::{MsgFlags, recv, send};
use openshell_netns::queue::{Message, Verdict, parse, tcp_tuple, verdict_msg};
use tokio::io::unix::AsyncFd;

use crate::Context;
use crate::bypass::admit;

/// Connection attempts decided at the same time.
pub const IN_FLIGHT: usize = 16;
/// Connection attempts waiting for a decider.
pub const BACKLOG: usize = 1024;
/// How long one decision may take before the attempt goes on to the listener.
pub const DECIDE_WITHIN: std::time::Duration = std::time::Duration::from_secs(3);

/// Serve the router's packet queue (bound by init) until the task is aborted. A read
/// that fails is logged (`NET:QUEUE`) and the queue is left to the bypass listener.
pub async fn serve(ctx: Arc<Context>, fd: OwnedFd) {
    if let Err(e) = run(&ctx, fd).await {
        ctx.log.note(
            "NET:QUEUE",
            &format!(
                "the router's packet queue failed ({e}): connections that ignore the proxy are now reset after the handshake instead of refused"
            ),
        );
    }
}

/// Refuse unless [`admit`] says otherwise within [`DECIDE_WITHIN`]; a decision that
/// takes longer or fails (a panic) lets the attempt go on to the listener, which
/// decides it again.
async fn decide(
    ctx: &Arc<Context>,
    src: std::net::SocketAddr,
    dst: std::net::SocketAddr,
) -> Verdict {
    let c = ctx.clone();
    let decision = tokio::spawn(async move { admit(&c, src, dst).await });
    match tokio::time::timeout(DECIDE_WITHIN, decision).await {
        Ok(Ok(false)) => Verdict::Refuse,
        _ => Verdict::Accept,
    }
}

async fn send_msg(fd: &AsyncFd<OwnedFd>, msg: &[u8]) -> std::io::Result<()> {
    loop {
        let mut guard = fd.writable().await?;
        match guard.try_io(|f| {
            send(f.get_ref().as_raw_fd(), msg, MsgFlags::MSG_DONTWAIT).map_err(std::io::Error::from)
        }) {
            Ok(r) => return r.map(|_| ()),
            Err(_would_block) => continue,
        }
    }
}

async fn recv_msg(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|f| {
            recv(f.get_ref().as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT).map_err(std::io::Error::from)
        }) {
            // The receive buffer overflowed: packets were lost (the kernel lets them
            // through after its queue fills); keep reading.
            Ok(Err(e)) if e.raw_os_error() == Some(nix::errno::Errno::ENOBUFS as i32) => continue,
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

async fn run(ctx: &Arc<Context>, fd: OwnedFd) -> std::io::Result<()> {
    let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(flags))?;
    // `AsyncFd::new` is deprecated because a type that only borrows its fd could close
    // it while registered; an OwnedFd is the AsyncFd's alone until it is dropped with
    // it, which is the sound use (`register` would need `unsafe` in this crate).
    #[allow(deprecated)]
    let fd = Arc::new(AsyncFd::new(fd)?);
    let mut buf = vec![0u8; 64 * 1024];
    // The reader never waits for a decision: a full socket buffer would make the
    // kernel let packets through (fail-open). Attempts wait in a channel for one of
    // IN_FLIGHT deciders; when it is full they go on to the listener at once.
    let (tx, rx) = tokio::sync::mpsc::channel::<(u32, Vec<u8>)>(BACKLOG);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut deciders = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let (ctx, fd, rx) = (ctx.clone(), fd.clone(), rx.clone());
        deciders.spawn(async move {
            loop {
                let Some((id, payload)) = rx.lock().await.recv().await else {
                    return;
                };
                // Anything but an IPv4 TCP packet goes on to the listener, which
                // decides it as before.
                let verdict = match tcp_tuple(&payload) {
                    Some((src, dst)) => decide(&ctx, src.into(), dst.into()).await,
                    None => Verdict::Accept,
                };
                // A verdict that cannot be sent leaves the packet queued until the
                // socket closes (the client retries its SYN meanwhile).
                let _ = send_msg(&fd, &verdict_msg(id, verdict)).await;
            }
        });
    }
    loop {
        let n = recv_msg(&fd, &mut buf).await?;
        for m in parse(&buf[..n]) {
            let Message::Packet { id, payload } = m else {
                continue;
            };
            if tx.try_send((id, payload)).is_err() {
                let _ = send_msg(&fd, &verdict_msg(id, Verdict::Accept)).await;
            }
        }
    }
}
