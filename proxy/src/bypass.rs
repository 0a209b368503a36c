//! Connections that ignored the proxy, redirected here by the router's nftables rules.
//! The original destination comes from SO_ORIGINAL_DST. A `protocol: tcp` endpoint the
//! policy allows (by the name our DNS answered for that address, or a literal IP) is
//! relayed transparently; anything else is logged as `NET:BYPASS` and reset at once.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use nix::sys::socket::{getsockopt, sockopt};
use openshell_policy::engine::decide;
use tokio::net::TcpStream;

use crate::log::NetEvent;
use crate::{Context, dial};

fn original_dst(sock: &TcpStream) -> Option<SocketAddr> {
    let sa = getsockopt(sock, sockopt::OriginalDst).ok()?;
    let ip = Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr));
    Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be(sa.sin_port)))
}

/// Serve one redirected connection.
pub async fn handle(ctx: Arc<Context>, sock: TcpStream, peer: SocketAddr) {
    let generation = ctx.policy.watch();
    let Some(dst) = original_dst(&sock) else {
        return;
    };
    let (who, pinned) = ctx.who(peer, dst).await;
    let ip = dst.ip().to_string();
    let name = ctx
        .dns_names
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&dst.ip())
        .cloned();
    let active = ctx.policy.current();
    let mut reason = String::from(
        "connection bypassed the proxy (set HTTPS_PROXY) and no `protocol: tcp` endpoint allows it",
    );
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
    ctx.log.net(&NetEvent {
        kind: "NET:BYPASS",
        allowed: false,
        binary: &who.exe,
        pid: who.pid,
        host: name.as_deref().unwrap_or(&ip),
        port: dst.port(),
        policy: None,
        reason: Some(&reason),
    });
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
