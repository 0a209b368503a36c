//! Idle upstream connections of the explicit proxy's `http://` requests, kept for the
//! next request to the same place (docs/network.md, "Upstream connections").
//!
//! A forwarded request used to dial the upstream, send, and close: every request cost
//! two TCP connections (the client's and the proxy's). Like squid (and unlike
//! tinyproxy) the proxy now keeps the upstream side open when the upstream allows it
//! and hands it to the next request for the same host and port **from the same
//! executable, allowed by the same endpoint of the same policy entry of the same policy
//! version** — the key names everything the dial depended on (the endpoint's address
//! rules among it), so a reused connection is one the current request could have
//! dialled itself, and no program's exchange can leave anything for another's. A policy change makes every idle
//! connection unusable at once (their version no longer matches) and they are dropped
//! at the next put or take.
//!
//! Bounds: [`IDLE`] per connection, [`PER_KEY`] idle connections per key,
//! [`TOTAL`] in all. Only requests without a body, `Expect`, upgrade or credential
//! placeholder are sent on kept connections or put back (`l7::reusable`); hyper itself
//! refuses to reuse a connection whose response was not cleanly delimited or not read
//! to its end, or that received bytes while idle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;

/// How long an idle connection is kept: shorter than the common server-side keep-alive
/// timeouts (node's 5 s being the shortest usual one is why a reused connection is
/// still checked, and a request the upstream never saw is retried on a new one).
pub const IDLE: Duration = Duration::from_secs(4);
/// Idle connections kept per key (a client's usual parallelism).
pub const PER_KEY: usize = 16;
/// Idle connections kept in all.
pub const TOTAL: usize = 128;

/// Everything a dial depended on, and who it was for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// Normalised host name (or address) of the request.
    pub host: String,
    /// Port.
    pub port: u16,
    /// The key in `network_policies` of the entry that allowed it (unique; display
    /// names need not be).
    pub entry: String,
    /// The endpoint of that entry that matched, by its address in the policy of
    /// `version` (immutable while that version lives: two endpoints of one entry
    /// may differ in their address rules).
    pub endpoint: usize,
    /// The executable that sent it: programs of the sandbox share no connection.
    pub binary: String,
    /// The policy version that allowed it.
    pub version: u64,
}

type Idle = HashMap<Key, Vec<(SendRequest<Incoming>, Instant)>>;

/// The idle connections.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<Idle>,
    /// Whether a task drops expired connections (one at most, while any is kept).
    sweeping: AtomicBool,
}

impl Pool {
    /// An idle, still open connection for `key`, if one is kept. Connections of other
    /// policy versions than `current` and expired ones are dropped on the way.
    pub fn take(&self, key: &Key, current: u64) -> Option<SendRequest<Incoming>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if key.version != current {
            return None;
        }
        let list = idle.get_mut(key)?;
        let mut found = None;
        // The most recently used first: the likeliest to be still open upstream.
        while let Some((s, at)) = list.pop() {
            if at.elapsed() < IDLE && s.is_ready() && !s.is_closed() {
                found = Some(s);
                break;
            }
        }
        if list.is_empty() {
            idle.remove(key);
        }
        found
    }

    /// Keep `sender` (ready for a next request) for `key`, unless the bounds are
    /// reached or the policy moved on. Needs a tokio runtime (the sweeper).
    pub fn put(self: &Arc<Self>, key: Key, sender: SendRequest<Incoming>, current: u64) {
        if key.version != current || !sender.is_ready() {
            return;
        }
        {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let total: usize = idle.values().map(Vec::len).sum();
            if total >= TOTAL {
                prune(&mut idle, Some(current));
                if idle.values().map(Vec::len).sum::<usize>() >= TOTAL {
                    return;
                }
            }
            let list = idle.entry(key).or_default();
            if list.len() >= PER_KEY {
                // The oldest goes: it is the first to time out upstream.
                list.remove(0);
            }
            list.push((sender, Instant::now()));
        }
        if !self.sweeping.swap(true, Ordering::AcqRel) {
            let pool = Arc::clone(self);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(IDLE).await;
                    let mut idle = pool.idle.lock().unwrap_or_else(|p| p.into_inner());
                    prune(&mut idle, None);
                    if idle.is_empty() {
                        // Cleared under the lock: a put after this starts a new sweeper.
                        pool.sweeping.store(false, Ordering::Release);
                        return;
                    }
                }
            });
        }
    }

    /// Idle connections kept now (tests, `explain`).
    pub fn len(&self) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.values().map(Vec::len).sum()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Drop what is expired or closed, and what is of another policy version than
/// `current` when it is given.
fn prune(idle: &mut Idle, current: Option<u64>) {
    idle.retain(|k, list| {
        if current.is_some_and(|c| k.version != c) {
            return false;
        }
        list.retain(|(s, at)| at.elapsed() < IDLE && !s.is_closed());
        !list.is_empty()
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real connection to an upstream on loopback that closes it after `close`
    /// (an idle keep-alive timeout upstream) or keeps it.
    async fn connection(close: Option<Duration>) -> SendRequest<Incoming> {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            tokio::time::sleep(close.unwrap_or(Duration::from_secs(30))).await;
            drop(s);
        });
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut s, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        s.ready().await.unwrap();
        s
    }

    fn key(version: u64) -> Key {
        Key {
            host: "h".into(),
            port: 80,
            entry: "e".into(),
            endpoint: 1,
            binary: "/usr/bin/curl".into(),
            version,
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn kept_only_for_the_same_key_and_version() {
        let pool = Arc::new(Pool::default());
        pool.put(key(1), connection(None).await, 1);
        assert_eq!(pool.len(), 1);
        assert!(pool.take(&key(1), 2).is_none(), "a newer policy");
        let mut other = key(1);
        other.entry = "f".into();
        assert!(pool.take(&other, 1).is_none(), "another entry");
        other = key(1);
        other.port = 81;
        assert!(pool.take(&other, 1).is_none(), "another port");
        other = key(1);
        other.endpoint = 2;
        assert!(pool.take(&other, 1).is_none(), "another endpoint");
        other = key(1);
        other.binary = "/usr/bin/python3".into();
        assert!(pool.take(&other, 1).is_none(), "another program");
        assert!(pool.take(&key(1), 1).is_some());
        assert!(pool.take(&key(1), 1).is_none(), "taken once");
        // Not kept for a policy that is no longer the active one.
        pool.put(key(1), connection(None).await, 2);
        assert!(pool.is_empty());
    }

    #[test]
    fn only_bodiless_plain_requests_share_connections() {
        let req = |headers: &[(&str, &str)], uri: &str| {
            let mut b = hyper::Request::builder().uri(uri);
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(()).unwrap()
        };
        let reusable = |h: &[(&str, &str)], uri: &str| crate::l7::reusable(&req(h, uri));
        assert!(reusable(&[], "http://h/a"));
        assert!(reusable(&[("content-length", "0")], "http://h/a"));
        for h in [
            ("content-length", "3"),
            ("transfer-encoding", "chunked"),
            ("expect", "100-continue"),
            ("upgrade", "websocket"),
            ("connection", "keep-alive, Upgrade"),
            ("authorization", "Bearer openshell:resolve:env:TOKEN"),
            ("x-key", "OPENSHELL:RESOLVE:ENV:KEY"),
            ("content_length", "5"),
            ("transfer_encoding", "chunked"),
        ] {
            assert!(!reusable(&[h], "http://h/a"), "{h:?}");
        }
        assert!(!reusable(&[], "http://h/a?k=openshell:resolve:env:KEY"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bounded_per_key() {
        let pool = Arc::new(Pool::default());
        for _ in 0..PER_KEY + 3 {
            pool.put(key(1), connection(None).await, 1);
        }
        assert_eq!(pool.len(), PER_KEY);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_the_upstream_closed_is_not_handed_out() {
        let pool = Arc::new(Pool::default());
        pool.put(key(1), connection(Some(Duration::from_millis(50))).await, 1);
        assert_eq!(pool.len(), 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(pool.take(&key(1), 1).is_none());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn expired_connections_are_swept() {
        let pool = Arc::new(Pool::default());
        pool.put(key(1), connection(None).await, 1);
        tokio::time::sleep(IDLE * 2 + Duration::from_millis(500)).await;
        assert!(pool.is_empty(), "the sweeper dropped it");
    }
}
