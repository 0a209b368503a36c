//! Connections that ignored the proxy, redirected here by the router's nftables rules.
//! The original destination comes from SO_ORIGINAL_DST. A `protocol: tcp` endpoint the
//! policy allows (by the name our DNS answered for that address, or a literal IP) is
//! relayed transparently; anything else is logged as `NET:BYPASS` and reset at once.
//! Where the router queues connection attempts (`refuse.rs`), [`admit`] decides them
//! before the handshake and only admitted ones reach this listener.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use nix::sys::socket::{getsockopt, sockopt};
use openshell_policy::engine::decide;
use tokio::net::TcpStream;

use crate::log::NetEvent;
use crate::{Context, Peer, dial};

fn original_dst(sock: &TcpStream) -> Option<SocketAddr> {
    let sa = getsockopt(sock, sockopt::OriginalDst).ok()?;
    let ip = Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr));
    Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(sa.sin_port)))
}

/// The names a transparent connection to `dst` may be allowed by: the name our DNS
/// answered for the address (if any), then the address itself.
fn candidates(ctx: &Context, dst: SocketAddr) -> (Option<String>, String) {
    let name = ctx
        .dns_names
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&dst.ip())
        .cloned();
    (name, dst.ip().to_string())
}

const NOT_ALLOWED: &str =
    "connection bypassed the proxy (set HTTPS_PROXY) and no `protocol: tcp` endpoint allows it";

/// Log a refused connection attempt (`NET:BYPASS`).
fn log_refusal(ctx: &Context, who: &Peer, host: &str, port: u16, reason: &str) {
    ctx.log_denied("NET:BYPASS", who, host, port, reason);
}

/// Decide a connection attempt before its handshake (the router's packet queue,
/// `refuse.rs`): true when some `protocol: tcp` endpoint allows it, so that it goes on
/// to [`handle`] (which decides again with the policy of that moment and relays);
/// otherwise it is logged here and the kernel refuses it.
pub async fn admit(ctx: &Context, peer: SocketAddr, dst: SocketAddr) -> bool {
    let (who, pinned) = ctx.who(peer, dst).await;
    let (name, ip) = candidates(ctx, dst);
    let reason = match pinned {
        Err(e) => e,
        Ok(()) => {
            let active = ctx.policy.current();
            let chain = ctx.chain_with_links(&active.policy, &who.chain).await;
            let allowed = name
                .iter()
                .chain(std::iter::once(&ip))
                .any(|host| decide(&active.policy, host, dst.port(), &chain, true).is_ok());
            if allowed {
                return true;
            }
            NOT_ALLOWED.to_string()
        }
    };
    log_refusal(
        ctx,
        &who,
        name.as_deref().unwrap_or(&ip),
        dst.port(),
        &reason,
    );
    false
}

/// Serve one redirected connection.
pub async fn handle(ctx: Arc<Context>, sock: TcpStream, peer: SocketAddr) {
    let generation = ctx.policy.watch();
    let Some(dst) = original_dst(&sock) else {
        return;
    };
    let (who, pinned) = ctx.who(peer, dst).await;
    let (name, ip) = candidates(&ctx, dst);
    let active = ctx.policy.current();
    let mut reason = String::from(NOT_ALLOWED);
    if let Err(e) = &pinned {
        reason = e.clone();
    } else {
        let chain = ctx.chain_with_links(&active.policy, &who.chain).await;
        for host in name.iter().chain(std::iter::once(&ip)) {
            let Ok(grant) = decide(&active.policy, host, dst.port(), &chain, true) else {
                continue;
            };
            let upstream = match dial(&ctx, grant.endpoint, &ip, dst.port()).await {
                Ok(s) => s,
                Err(e) => {
                    reason = format!("{e:?}");
                    break;
                }
            };
            ctx.log.net(&NetEvent {
                kind: "NET:OPEN",
                allowed: true,
                binary: &who.exe,
                pid: who.pid,
                host,
                port: dst.port(),
                policy: Some(grant.name),
                reason: None,
            });
            if crate::splice::enabled() {
                crate::splice::relay(&sock, &upstream, generation).await;
            } else {
                let (mut sock, mut upstream) = (sock, upstream);
                crate::relay(&mut sock, &mut upstream, generation, true).await;
            }
            return;
        }
    }
    log_refusal(
        &ctx,
        &who,
        name.as_deref().unwrap_or(&ip),
        dst.port(),
        &reason,
    );
    // Reset, not a graceful close: the client fails at once.
    let _ = nix::sys::socket::setsockopt(
        &sock,
        sockopt::Linger,
        &nix::libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    );
    drop(sock);
}
