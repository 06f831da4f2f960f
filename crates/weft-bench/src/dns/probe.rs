//! A minimal DNS client for the answer check: one A query over UDP, and the
//! rcode and A records of the reply (hickory-proto's wire format).

use anyhow::{bail, Context, Result};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

/// What a server said to one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub rcode: u8,
    /// Whether the AA bit was set.
    pub authoritative: bool,
    /// The A records of the answer section, sorted.
    pub a: Vec<Ipv4Addr>,
    pub ttls: Vec<u32>,
}

impl Reply {
    pub fn rcode_name(&self) -> String {
        rcode_name(self.rcode)
    }
}

pub fn rcode_name(rcode: u8) -> String {
    match rcode {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        n => format!("RCODE{n}"),
    }
}

/// A standard query for `name` type A, class IN, RD set, no EDNS.
pub fn query(id: u16, name: &str) -> Result<Vec<u8>> {
    let name = Name::from_ascii(name).with_context(|| format!("bad name {name:?}"))?;
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.queries.push(Query::query(name, RecordType::A));
    Ok(m.to_vec()?)
}

/// Reads a reply to the query with `id`.
pub fn parse(b: &[u8], id: u16) -> Result<Reply> {
    let m = Message::from_vec(b).context("reply does not parse")?;
    if m.metadata.id != id {
        bail!("reply id does not match the query");
    }
    if m.metadata.message_type != MessageType::Response {
        bail!("not a reply");
    }
    let mut a = Vec::new();
    let mut ttls = Vec::new();
    for r in &m.answers {
        if let RData::A(x) = &r.data {
            a.push(x.0);
            ttls.push(r.ttl);
        }
    }
    a.sort();
    Ok(Reply {
        rcode: m.metadata.response_code.low(),
        authoritative: m.metadata.authoritative,
        a,
        ttls,
    })
}

/// Asks `server` for `name`'s A records (a few tries, 1 s each). Call it
/// from inside the namespace the server listens in.
pub fn ask(server: SocketAddr, name: &str) -> Result<Reply> {
    let sock = UdpSocket::bind("127.0.0.1:0").context("bind the probe socket")?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    sock.connect(server)?;
    let mut buf = [0u8; 4096];
    let mut last = None;
    for attempt in 0..3u16 {
        let id = 0x5eed ^ attempt ^ ((name.len() as u16) << 8);
        sock.send(&query(id, name)?)?;
        loop {
            match sock.recv(&mut buf) {
                Ok(n) => match parse(&buf[..n], id) {
                    // A late reply to an earlier try: keep waiting.
                    Err(e) if e.to_string().contains("id does not match") => continue,
                    r => return r.with_context(|| format!("{name} from {server}")),
                },
                Err(e) => {
                    last = Some(e);
                    break;
                }
            }
        }
    }
    Err(last
        .map(anyhow::Error::from)
        .unwrap_or_else(|| anyhow::anyhow!("no reply")))
    .with_context(|| format!("{name} from {server}: no reply"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::Record;

    #[test]
    fn queries_and_replies_round_trip() {
        let q = query(7, "s.ns.svc.cluster.local.").unwrap();
        let mut m = Message::from_vec(&q).unwrap();
        assert_eq!(m.metadata.id, 7);
        m.metadata.message_type = MessageType::Response;
        m.metadata.authoritative = true;
        let owner = m.queries[0].name().clone();
        for last in [9u8, 8] {
            m.answers.push(Record::from_rdata(
                owner.clone(),
                5,
                RData::A(A(Ipv4Addr::new(10, 96, 0, last))),
            ));
        }
        let r = m.to_vec().unwrap();
        let p = parse(&r, 7).unwrap();
        assert_eq!(p.rcode_name(), "NOERROR");
        assert!(p.authoritative);
        assert_eq!(
            p.a,
            vec![Ipv4Addr::new(10, 96, 0, 8), Ipv4Addr::new(10, 96, 0, 9)]
        );
        assert_eq!(p.ttls, vec![5, 5]);
        assert!(parse(&r, 8).is_err());
        assert!(parse(&q, 7).is_err(), "a query is not a reply");
        assert!(query(1, "a..b").is_err());
    }
}
