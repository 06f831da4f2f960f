//! Response-rate limiting (RRL), the defence BIND (`rate-limit`) and Knot
//! (`mod-rrl`) have against reflection: a pod that spoofs its source
//! address can aim answers at another pod, and a headless Service's answer
//! is many times the size of the query that asks for it.
//!
//! Each client prefix (/24 and /56 by default, as BIND aggregates, so that
//! spraying the addresses of one network does not multiply the budget) has
//! a token bucket of `rate` responses a second, holding at most `burst`.
//! A response that finds the bucket empty is *limited*: every `slip`-th
//! limited response is sent truncated (TC set, no records; about the size of
//! the query, so worthless to reflect), telling a real client to retry over
//! TCP, which proves its address; the others are dropped.
//!
//! Only UDP is limited, and by default only *amplifying* responses, those at
//! least `factor` times the size of their query. Ordinary cluster answers
//! (an A record, NXDOMAIN with the SOA, a PTR, an SRV with its address) are
//! 1.25–2.75 times their query (`tests/answer.rs` measures them), so with
//! the default factor of 4 they are never counted; a headless Service starts
//! to count at about a dozen endpoints, and 150 endpoints are 57 times.
//!
//! Memory is bounded: a fixed table of slots, the prefix hashed (with a key
//! random per process, so collisions cannot be aimed) to one slot. A slot
//! belongs to one prefix; another prefix hashing there takes it over only
//! when its bucket is full again (its owner has been quiet long enough that
//! a bucket of its own would be full too), and otherwise shares it. Sharing
//! can limit an innocent client early, never a flooding one late, so a
//! spoofer spraying random sources can neither grow the table nor reset the
//! bucket of the address it is aiming at.
//!
//! Pure: the clock is passed in (microseconds from any fixed origin), so the
//! tests need no sleeping. Each UDP worker thread owns its own `Limiter`
//! (no lock on the hot path); `SO_REUSEPORT` spreads a client over the
//! workers by source port, so a client varying its port can get up to
//! `threads × rate`.

use crate::DnsError;
use ipnet::IpNet;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::IpAddr;

/// Responses a second per client prefix (BIND's `responses-per-second`):
/// far above what a pod's resolver asks for one large name, far below what
/// makes a useful flood.
pub const DEFAULT_RATE: u32 = 20;
/// Every second limited response is sent truncated (BIND's and NSD's
/// default `slip 2`): half of a flood's answers are dropped outright, and a
/// real client still gets a TC within two tries.
pub const DEFAULT_SLIP: u32 = 2;
/// See the module doc: above every ordinary answer, below a large one.
pub const DEFAULT_FACTOR: f64 = 4.0;
pub const DEFAULT_PREFIX_V4: u8 = 24;
pub const DEFAULT_PREFIX_V6: u8 = 56;
/// Slots per worker thread: 32 bytes each, 128 KiB a thread.
pub const DEFAULT_SLOTS: usize = 4096;

/// Loopback is exempt by default: the kernel drops packets from the network
/// that claim a loopback source (martians), so such a source is never
/// spoofed from a pod, and local tools (benchmarks, probes) are not slowed.
pub fn default_exempt() -> Vec<IpNet> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .map(|s| s.parse().expect("constant"))
        .collect()
}

#[derive(Debug, Clone, PartialEq)]
pub struct RrlConfig {
    /// Responses a second per prefix.
    pub rate: u32,
    /// Responses a prefix may get at once after being quiet.
    pub burst: u32,
    /// Every `slip`-th limited response is sent truncated; 0 drops all.
    pub slip: u32,
    /// Only responses at least this many times their query count.
    pub factor: f64,
    /// Count every UDP response, whatever its size.
    pub all: bool,
    pub prefix_v4: u8,
    pub prefix_v6: u8,
    /// Clients never limited.
    pub exempt: Vec<IpNet>,
    /// Table size per limiter.
    pub slots: usize,
}

impl Default for RrlConfig {
    fn default() -> RrlConfig {
        RrlConfig {
            rate: DEFAULT_RATE,
            burst: DEFAULT_RATE,
            slip: DEFAULT_SLIP,
            factor: DEFAULT_FACTOR,
            all: false,
            prefix_v4: DEFAULT_PREFIX_V4,
            prefix_v6: DEFAULT_PREFIX_V6,
            exempt: default_exempt(),
            slots: DEFAULT_SLOTS,
        }
    }
}

impl RrlConfig {
    pub fn validate(&self) -> Result<(), DnsError> {
        let err = |m: &str| Err(DnsError::Config(m.into()));
        if !(1..=1_000_000).contains(&self.rate) {
            return err("--rrl-rate must be between 1 and 1000000");
        }
        if !(1..=1_000_000).contains(&self.burst) {
            return err("--rrl-burst must be between 1 and 1000000");
        }
        if self.slip > 10 {
            return err("--rrl-slip must be between 0 (drop all) and 10");
        }
        if !(self.factor.is_finite() && self.factor >= 1.0) {
            return err("--rrl-factor must be at least 1 (--rrl-all limits every response)");
        }
        if self.prefix_v4 > 32 {
            return err("--rrl-prefix-v4 must be between 0 and 32");
        }
        if self.prefix_v6 > 128 {
            return err("--rrl-prefix-v6 must be between 0 and 128");
        }
        if !(1..=1 << 24).contains(&self.slots) {
            return err("RRL table size must be between 1 and 16777216");
        }
        Ok(())
    }
}

/// What to do with one UDP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Send,
    /// Send it truncated instead (`truncate`).
    Slip,
    Drop,
}

/// Tokens are counted in millionths, so that a refill of `rate` a second
/// is `rate` per microsecond, in integers.
const UNIT: u64 = 1_000_000;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// Hash of the owning prefix; 0 for a free slot.
    key: u64,
    tokens: u64,
    last_us: u64,
    /// Limited responses so far, for the slip cadence.
    limited: u32,
}

pub struct Limiter {
    cfg: RrlConfig,
    slots: Box<[Slot]>,
    hasher: RandomState,
}

impl Limiter {
    pub fn new(cfg: RrlConfig) -> Limiter {
        let slots = vec![Slot::default(); cfg.slots.max(1)].into_boxed_slice();
        Limiter {
            cfg,
            slots,
            hasher: RandomState::new(),
        }
    }

    /// The table's size, fixed at creation.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Whether a response of `reply_len` to a query of `query_len` counts.
    pub fn counts(&self, query_len: usize, reply_len: usize) -> bool {
        self.cfg.all || reply_len as f64 >= self.cfg.factor * query_len.max(1) as f64
    }

    /// The client prefix an address is counted under, hashed (never 0).
    fn key(&self, ip: IpAddr) -> u64 {
        let (family, bits) = match ip.to_canonical() {
            IpAddr::V4(a) => {
                let p = u32::from(self.cfg.prefix_v4.min(32));
                let mask = u32::MAX.checked_shl(32 - p).unwrap_or(0);
                (4u8, u128::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let p = u32::from(self.cfg.prefix_v6.min(128));
                let mask = u128::MAX.checked_shl(128 - p).unwrap_or(0);
                (6u8, u128::from(a) & mask)
            }
        };
        self.hasher.hash_one((family, bits)).max(1)
    }

    /// Decides one UDP response to `ip` at `now_us` (microseconds from any
    /// fixed origin, never going back).
    pub fn check(
        &mut self,
        ip: IpAddr,
        query_len: usize,
        reply_len: usize,
        now_us: u64,
    ) -> Verdict {
        if !self.counts(query_len, reply_len) {
            return Verdict::Send;
        }
        let ip = ip.to_canonical();
        if self.cfg.exempt.iter().any(|n| n.contains(&ip)) {
            return Verdict::Send;
        }
        let key = self.key(ip);
        let cap = u64::from(self.cfg.burst) * UNIT;
        let rate = u64::from(self.cfg.rate);
        let i = (key % self.slots.len() as u64) as usize;
        let slot = &mut self.slots[i];
        let tokens = if slot.key == 0 {
            cap
        } else {
            let elapsed = now_us.saturating_sub(slot.last_us);
            slot.tokens
                .saturating_add(elapsed.saturating_mul(rate))
                .min(cap)
        };
        if slot.key != key && (slot.key == 0 || tokens == cap) {
            // Free, or its owner quiet long enough: a fresh bucket is what
            // either prefix would have now.
            slot.key = key;
            slot.limited = 0;
        }
        slot.last_us = now_us.max(slot.last_us);
        slot.tokens = tokens;
        if slot.tokens >= UNIT {
            slot.tokens -= UNIT;
            return Verdict::Send;
        }
        slot.limited = slot.limited.wrapping_add(1);
        if self.cfg.slip > 0 && slot.limited.is_multiple_of(self.cfg.slip) {
            Verdict::Slip
        } else {
            Verdict::Drop
        }
    }
}

/// Turns an encoded response into its slip form, in place: the header (TC
/// set, no records counted) and the question, nothing else. No allocation:
/// the hot path calls this. False if the message is not one question long.
pub fn truncate(reply: &mut Vec<u8>) -> bool {
    if reply.len() < 12 || reply[4..6] != [0, 1] {
        return false;
    }
    // The question's name is the first in the message, so it is never a
    // compression pointer; walk its labels to where type and class start.
    let mut i = 12;
    loop {
        let Some(&len) = reply.get(i) else {
            return false;
        };
        if len == 0 {
            i += 1;
            break;
        }
        if len & 0xC0 != 0 {
            return false;
        }
        i += 1 + len as usize;
    }
    let end = i + 4;
    if reply.len() < end {
        return false;
    }
    reply.truncate(end);
    reply[2] |= 0x02; // TC
    reply[6..12].fill(0); // ANCOUNT, NSCOUNT, ARCOUNT
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const Q: usize = 60;
    const BIG: usize = 60 * 40;
    const SEC: u64 = 1_000_000;

    fn cfg() -> RrlConfig {
        RrlConfig {
            rate: 10,
            burst: 10,
            slip: 2,
            ..RrlConfig::default()
        }
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    /// A limiter that puts each prefix of `ips` in a slot of its own: the
    /// hash key is random, and a test counting per prefix must not let two
    /// of them share by chance.
    fn apart(cfg: RrlConfig, ips: &[IpAddr]) -> Limiter {
        loop {
            let l = Limiter::new(cfg.clone());
            let mut keys: Vec<u64> = ips.iter().map(|ip| l.key(*ip)).collect();
            keys.sort_unstable();
            keys.dedup();
            let mut slots: Vec<u64> = keys.iter().map(|k| k % l.slots() as u64).collect();
            slots.sort_unstable();
            slots.dedup();
            if slots.len() == keys.len() {
                return l;
            }
        }
    }

    /// Verdicts for `n` large responses to `ip`, all at `now`.
    fn burst(l: &mut Limiter, ip: IpAddr, n: usize, now: u64) -> (usize, usize, usize) {
        let (mut sent, mut slipped, mut dropped) = (0, 0, 0);
        for _ in 0..n {
            match l.check(ip, Q, BIG, now) {
                Verdict::Send => sent += 1,
                Verdict::Slip => slipped += 1,
                Verdict::Drop => dropped += 1,
            }
        }
        (sent, slipped, dropped)
    }

    #[test]
    fn a_flood_gets_the_burst_then_the_rate() {
        let mut l = Limiter::new(cfg());
        let c = v4(10, 244, 1, 5);
        assert_eq!(burst(&mut l, c, 100, 0), (10, 45, 45));
        // Half a second later, half a second of tokens.
        assert_eq!(burst(&mut l, c, 100, SEC / 2).0, 5);
        // A long silence refills the bucket to the burst, no more.
        assert_eq!(burst(&mut l, c, 100, 100 * SEC).0, 10);
        // Steady at the rate: every response goes.
        let mut l = Limiter::new(cfg());
        for i in 0..1000 {
            assert_eq!(l.check(c, Q, BIG, i * SEC / 10), Verdict::Send, "{i}");
        }
    }

    #[test]
    fn every_nth_limited_response_slips() {
        for (slip, want) in [(0u32, 0usize), (1, 90), (2, 45), (3, 30), (10, 9)] {
            let mut l = Limiter::new(RrlConfig { slip, ..cfg() });
            let (sent, slipped, dropped) = burst(&mut l, v4(10, 0, 0, 1), 100, 0);
            assert_eq!(
                (sent, slipped, dropped),
                (10, want, 90 - want),
                "slip {slip}"
            );
        }
        // The cadence: limited responses 1, 2, 3, 4 → drop, slip, drop, slip.
        let mut l = Limiter::new(cfg());
        burst(&mut l, v4(10, 0, 0, 1), 10, 0);
        let got: Vec<Verdict> = (0..4)
            .map(|_| l.check(v4(10, 0, 0, 1), Q, BIG, 0))
            .collect();
        use Verdict::*;
        assert_eq!(got, [Drop, Slip, Drop, Slip]);
    }

    #[test]
    fn a_prefix_shares_one_bucket() {
        let a: IpAddr = "fd00:0:0:1::1".parse().unwrap();
        let b: IpAddr = "fd00:0:0:1:ffff::9".parse().unwrap();
        let c: IpAddr = "fd00:0:0:100::1".parse().unwrap();
        let mut l = apart(cfg(), &[v4(10, 244, 1, 1), v4(10, 244, 2, 1), a, c]);
        // Ten addresses of one /24: one budget between them.
        let sent: usize = (1..=10)
            .map(|d| burst(&mut l, v4(10, 244, 1, d), 5, 0).0)
            .sum();
        assert_eq!(sent, 10);
        // The next /24 has its own.
        assert_eq!(burst(&mut l, v4(10, 244, 2, 1), 20, 0).0, 10);
        // IPv6: a /56 together, the next /56 apart.
        assert_eq!(burst(&mut l, a, 6, 0).0 + burst(&mut l, b, 6, 0).0, 10);
        assert_eq!(burst(&mut l, c, 20, 0).0, 10);
        // An IPv4-mapped address is its IPv4 address.
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 244, 2, 7).to_ipv6_mapped());
        assert_eq!(burst(&mut l, mapped, 5, 0).0, 0);
        // /32: every address apart.
        let mut l = apart(
            RrlConfig {
                prefix_v4: 32,
                ..cfg()
            },
            &[v4(10, 244, 1, 1), v4(10, 244, 1, 2)],
        );
        assert_eq!(burst(&mut l, v4(10, 244, 1, 1), 20, 0).0, 10);
        assert_eq!(burst(&mut l, v4(10, 244, 1, 2), 20, 0).0, 10);
    }

    #[test]
    fn small_answers_are_not_limited_by_default() {
        let mut l = Limiter::new(cfg());
        let c = v4(10, 244, 1, 5);
        // Under four times the query: never counted.
        for size in [Q, 2 * Q, 4 * Q - 1] {
            for _ in 0..1000 {
                assert_eq!(l.check(c, Q, size, 0), Verdict::Send, "{size}");
            }
        }
        // Exactly the factor counts.
        assert_eq!(
            (0..100)
                .filter(|_| l.check(c, Q, 4 * Q, 0) == Verdict::Send)
                .count(),
            10
        );
        // --rrl-all counts everything.
        let mut l = Limiter::new(RrlConfig { all: true, ..cfg() });
        assert_eq!(
            (0..100)
                .filter(|_| l.check(c, Q, Q, 0) == Verdict::Send)
                .count(),
            10
        );
        // Loopback is exempt, even for large answers.
        let mut l = Limiter::new(cfg());
        assert_eq!(burst(&mut l, v4(127, 0, 0, 1), 1000, 0).0, 1000);
        assert_eq!(
            burst(&mut l, IpAddr::V6(Ipv6Addr::LOCALHOST), 1000, 0).0,
            1000
        );
    }

    #[test]
    fn a_spray_of_sources_neither_grows_the_table_nor_frees_its_target() {
        let mut l = Limiter::new(RrlConfig {
            slots: 256,
            ..cfg()
        });
        let victim = v4(10, 244, 7, 9);
        assert_eq!(burst(&mut l, victim, 100, 0).0, 10);
        // A spoofer sprays 200k random sources (xorshift, fixed seed), all
        // within the same microsecond so that no bucket refills.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ip = if x & 1 == 0 {
                IpAddr::V4(Ipv4Addr::from((x >> 32) as u32))
            } else {
                IpAddr::V6(Ipv6Addr::from(u128::from(x) << 64 | u128::from(x >> 3)))
            };
            l.check(ip, Q, BIG, 1);
        }
        assert_eq!(l.slots(), 256, "the table never grows");
        // The target's bucket was not reset by the spray.
        assert_eq!(burst(&mut l, victim, 100, 1).0, 0);
        // And it refills as before once the flood stops.
        assert_eq!(burst(&mut l, victim, 100, 1 + 100 * SEC).0, 10);
    }

    #[test]
    fn a_quiet_slot_is_taken_over_with_a_fresh_bucket() {
        // One slot: every prefix collides.
        let mut l = Limiter::new(RrlConfig { slots: 1, ..cfg() });
        let (a, b) = (v4(10, 0, 1, 1), v4(10, 0, 2, 1));
        assert_eq!(burst(&mut l, a, 4, 0).0, 4);
        // While a's bucket is not full, b shares it.
        assert_eq!(burst(&mut l, b, 20, 0).0, 6);
        // After a second of quiet it is full: b owns it now.
        assert_eq!(burst(&mut l, b, 20, 2 * SEC).0, 10);
        assert_eq!(burst(&mut l, a, 20, 2 * SEC).0, 0);
    }

    #[test]
    fn the_slip_form_is_the_header_and_question() {
        use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
        use hickory_proto::rr::rdata::A;
        use hickory_proto::rr::{Name, RData, Record, RecordType};
        let name = Name::from_ascii("big.default.svc.cluster.local.").unwrap();
        let mut m = Message::new(77, MessageType::Response, OpCode::Query);
        m.metadata.authoritative = true;
        m.queries.push(Query::query(name.clone(), RecordType::A));
        for i in 0..50 {
            m.answers.push(Record::from_rdata(
                name.clone(),
                5,
                RData::A(A(Ipv4Addr::new(10, 0, 0, i))),
            ));
        }
        m.edns = Some(Edns::new());
        let mut b = m.to_vec().unwrap();
        assert!(truncate(&mut b));
        let t = Message::from_vec(&b).unwrap();
        assert!(t.metadata.truncation);
        assert_eq!(t.metadata.id, 77);
        assert!(t.answers.is_empty() && t.additionals.is_empty() && t.edns.is_none());
        assert_eq!(t.queries, m.queries);
        // The name on the wire: its text, a length for the first label,
        // and the root's zero.
        assert_eq!(b.len(), 12 + "big.default.svc.cluster.local".len() + 2 + 4);
        // Not a one-question message: refused, left as is.
        for bad in [&[0u8; 5][..], &[0, 1, 0x81, 0, 0, 2, 0, 0, 0, 0, 0, 0][..]] {
            let mut v = bad.to_vec();
            assert!(!truncate(&mut v));
            assert_eq!(v, bad);
        }
        let mut cut = m.to_vec().unwrap();
        cut.truncate(20);
        assert!(!truncate(&mut cut));
    }
}
