//! Policy DNS (10.200.0.1:53): a name some policy endpoint covers is resolved with the
//! host's resolver and answered; any other name gets NXDOMAIN without a single query
//! leaving the sandbox (so query names cannot carry data out). Only A and AAAA are
//! answered; other types of allowed names get an empty answer.

use std::net::IpAddr;
use std::sync::Arc;

use openshell_policy::Policy;
use openshell_policy::host::HostPattern;
use tokio::net::UdpSocket;

use crate::Context;
use crate::log::NetEvent;

/// A parsed single-question query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Transaction id.
    pub id: u16,
    /// Recursion desired and the other flags of the query.
    pub flags: u16,
    /// Lower-case name without the final dot; empty when a label holds a byte no host
    /// name has (a dot, a space, a NUL, non-ASCII), which is answered NXDOMAIN.
    pub name: String,
    /// QTYPE.
    pub qtype: u16,
    /// The question section as sent (copied into the answer).
    pub question: Vec<u8>,
}

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;

/// Parse a query; `None` for anything we do not answer (responses, several questions,
/// compression in the question, non-QUERY opcodes, classes other than IN).
pub fn parse(pkt: &[u8]) -> Option<Query> {
    if pkt.len() < 12 {
        return None;
    }
    let id = u16::from_be_bytes([pkt[0], pkt[1]]);
    let flags = u16::from_be_bytes([pkt[2], pkt[3]]);
    let qd = u16::from_be_bytes([pkt[4], pkt[5]]);
    if flags & 0x8000 != 0 || (flags >> 11) & 0xf != 0 || qd != 1 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    let mut valid = true;
    loop {
        let len = *pkt.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        let label = pkt.get(i..i + len)?;
        valid &= label
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        i += len;
        if i > 12 + 255 {
            return None;
        }
    }
    let qtype = u16::from_be_bytes([*pkt.get(i)?, *pkt.get(i + 1)?]);
    // Class IN (or ANY): a sandbox has no use for CHAOS or Hesiod, and an answer that
    // echoes an unknown class is one resolvers refuse.
    let qclass = u16::from_be_bytes([*pkt.get(i + 2)?, *pkt.get(i + 3)?]);
    if qclass != 1 && qclass != 255 {
        return None;
    }
    let question = pkt.get(12..i + 4)?.to_vec();
    let name = if valid {
        crate::normalize_name(&labels.join(".")).unwrap_or_default()
    } else {
        String::new()
    };
    Some(Query {
        id,
        flags,
        name,
        qtype,
        question,
    })
}

/// Build an answer: `rcode` 0 with `addrs` (those matching the query type), or an
/// error code (3: NXDOMAIN) without records.
pub fn answer(q: &Query, rcode: u8, addrs: &[IpAddr]) -> Vec<u8> {
    // An error answer carries no records, whatever the caller passed.
    let records: Vec<&IpAddr> = addrs
        .iter()
        .filter(|_| rcode == 0)
        .filter(|a| {
            matches!(
                (a, q.qtype),
                (IpAddr::V4(_), TYPE_A) | (IpAddr::V6(_), TYPE_AAAA)
            )
        })
        .collect();
    let flags: u16 = 0x8000 | (q.flags & 0x0100) | 0x0080 | u16::from(rcode);
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&q.id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&q.question);
    for a in records {
        out.extend_from_slice(&[0xc0, 0x0c]);
        out.extend_from_slice(&q.qtype.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&30u32.to_be_bytes());
        match a {
            IpAddr::V4(v) => {
                out.extend_from_slice(&4u16.to_be_bytes());
                out.extend_from_slice(&v.octets());
            }
            IpAddr::V6(v) => {
                out.extend_from_slice(&16u16.to_be_bytes());
                out.extend_from_slice(&v.octets());
            }
        }
    }
    out
}

/// Does any endpoint of any entry cover `name`?
pub fn name_allowed(policy: &Policy, name: &str) -> bool {
    policy
        .network_policies
        .values()
        .flat_map(|np| &np.endpoints)
        .any(|ep| HostPattern::parse(&ep.host).is_ok_and(|p| p.matches(name)))
}

/// Answer queries until the socket fails.
pub async fn serve(ctx: Arc<Context>, sock: UdpSocket) {
    let sock = Arc::new(sock);
    let mut buf = [0u8; 1500];
    while let Ok((n, from)) = sock.recv_from(&mut buf).await {
        let Some(q) = parse(&buf[..n]) else { continue };
        let (ctx, sock) = (ctx.clone(), sock.clone());
        tokio::spawn(async move {
            let allowed = !q.name.is_empty() && name_allowed(&ctx.policy.current().policy, &q.name);
            let reply = if !allowed || q.name.parse::<IpAddr>().is_ok() {
                ctx.log.net(&NetEvent {
                    kind: "NET:DNS",
                    allowed: false,
                    binary: "?",
                    pid: 0,
                    host: if q.name.is_empty() {
                        "(not a host name)"
                    } else {
                        &q.name
                    },
                    port: 53,
                    policy: None,
                    reason: Some(if q.name.is_empty() {
                        "the query's name holds bytes no host name has"
                    } else {
                        "no policy allows this name"
                    }),
                });
                answer(&q, 3, &[])
            } else {
                match crate::resolve(&ctx, &q.name).await {
                    Ok(addrs) => {
                        let mut names = ctx.dns_names.lock().unwrap_or_else(|p| p.into_inner());
                        for a in &addrs {
                            names.insert(*a, q.name.clone());
                        }
                        drop(names);
                        answer(&q, 0, &addrs)
                    }
                    Err(_) => answer(&q, 3, &[]),
                }
            };
            let _ = sock.send_to(&reply, from).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut p = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in name.split('.') {
            p.push(l.len() as u8);
            p.extend_from_slice(l.as_bytes());
        }
        p.push(0);
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&1u16.to_be_bytes());
        p
    }

    #[test]
    fn parse_and_answer() {
        let q = parse(&query("API.Test.OpenShell", TYPE_A)).unwrap();
        assert_eq!(
            (q.id, q.name.as_str(), q.qtype),
            (0x1234, "api.test.openshell", TYPE_A)
        );
        let a = answer(
            &q,
            0,
            &["10.77.0.2".parse().unwrap(), "fd77::2".parse().unwrap()],
        );
        assert_eq!(&a[..2], &[0x12, 0x34]);
        assert_eq!(u16::from_be_bytes([a[6], a[7]]), 1, "one A record");
        assert_eq!(&a[a.len() - 4..], &[10, 77, 0, 2]);
        let nx = answer(&q, 3, &[]);
        assert_eq!(nx[3] & 0x0f, 3);
        assert!(parse(&[0u8; 5]).is_none());
        // Bytes no host name has: NXDOMAIN, never resolved.
        let mut dotted = query("api.test.openshell", TYPE_A);
        dotted[14] = b'.';
        assert_eq!(parse(&dotted).unwrap().name, "");
        let mut nul = query("api.test.openshell", TYPE_A);
        nul[13] = 0xc3;
        assert_eq!(parse(&nul).unwrap().name, "");
        let mut resp = query("x.com", 1);
        resp[2] |= 0x80;
        assert!(parse(&resp).is_none());
    }

    #[test]
    fn names_by_policy() {
        let p = Policy::parse("version: 1\nnetwork_policies:\n  a:\n    endpoints: [{host: \"*.test.openshell\", port: 443}]\n    binaries: [{path: /usr/bin/curl}]\n").unwrap();
        assert!(name_allowed(&p, "api.test.openshell"));
        assert!(!name_allowed(&p, "secret-data.evil.com"));
        assert!(!name_allowed(&p, "test.openshell"));
    }
}
