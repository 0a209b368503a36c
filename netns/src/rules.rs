//! The router namespace's nftables rules as nft text, loaded with the host's `nft`
//! binary — the fallback for when programming them over netlink (`nft.rs`) fails.
//!
//! Everything the agent sends arrives at `vr`: TCP to the proxy port is accepted, any
//! other TCP is redirected to the bypass listener (which logs it and refuses it, or
//! relays it for a `protocol: tcp` endpoint; without `nft.rs`'s packet queue the refusal
//! is a reset after the handshake), DNS to any server goes to our DNS
//! listener, everything else is rejected at once. The rules are text (the nft language),
//! built by a pure function and loaded by a child that keeps CAP_NET_ADMIN across exec
//! (ambient capability), in parallel with the rest of init's setup.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::{BYPASS_PORT, DNS_PORT, PROXY_PORT, ROUTER_IF, ROUTER_IP};

/// The ruleset for the router namespace.
pub fn ruleset() -> String {
    format!(
        "table ip openshell {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname \"{ROUTER_IF}\" ip daddr {ROUTER_IP} tcp dport {PROXY_PORT} accept
    iifname \"{ROUTER_IF}\" udp dport 53 redirect to :{DNS_PORT}
    iifname \"{ROUTER_IF}\" meta l4proto tcp redirect to :{BYPASS_PORT}
  }}
  chain input {{
    type filter hook input priority filter; policy drop;
    iifname \"lo\" accept
    ct state established,related accept
    iifname \"{ROUTER_IF}\" tcp dport {{ {PROXY_PORT}, {BYPASS_PORT} }} accept
    iifname \"{ROUTER_IF}\" udp dport {DNS_PORT} accept
    reject with icmp type admin-prohibited
  }}
  chain forward {{
    type filter hook forward priority filter; policy drop;
    reject with icmp type admin-prohibited
  }}
}}
"
    )
}

/// Start `nft -f -` with the ruleset; the child keeps CAP_NET_ADMIN across exec.
pub fn load(nft: &Path) -> std::io::Result<Child> {
    let mut cmd = Command::new(nft);
    cmd.args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // A non-root uid loses every capability at exec unless it is ambient: raise
    // CAP_NET_ADMIN as ambient around the spawn (no pre_exec hook, so the spawn can use
    // posix_spawn, a vfork, instead of copying init's memory), then drop it again.
    use caps::{CapSet, Capability};
    let _ = caps::raise(None, CapSet::Inheritable, Capability::CAP_NET_ADMIN);
    let _ = caps::raise(None, CapSet::Ambient, Capability::CAP_NET_ADMIN);
    let spawned = cmd.spawn();
    let _ = caps::clear(None, CapSet::Ambient);
    let _ = caps::drop(None, CapSet::Inheritable, Capability::CAP_NET_ADMIN);
    let mut child = spawned?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(ruleset().as_bytes())?;
    }
    Ok(child)
}

/// Wait for the loader; true when the rules are in place.
pub fn wait(mut child: Child) -> bool {
    child.wait().is_ok_and(|s| s.success())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ruleset_redirects_and_rejects() {
        let r = super::ruleset();
        assert!(r.contains("ip daddr 10.200.0.1 tcp dport 3128 accept"));
        assert!(r.contains("meta l4proto tcp redirect to :15001"));
        assert!(r.contains("udp dport 53 redirect to :53"));
        assert!(r.contains("chain forward"));
    }
}
