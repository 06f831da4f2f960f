//! The forwarding cache: upstream answers by question, positive and
//! negative, with TTLs capped and the number of entries bounded. Entries
//! age: a hit returns the records with their remaining TTL.

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{RData, Record};
use std::collections::HashMap;
use std::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    name: String,
    qtype: u16,
    qclass: u16,
    /// Answers to DNSSEC-aware clients carry signatures; plain ones may
    /// not, so the two are cached apart (as CoreDNS does).
    dnssec_ok: bool,
}

impl Key {
    pub fn of(q: &Query) -> Key {
        Key {
            name: crate::answer::zone_key(q.name()),
            qtype: u16::from(q.query_type()),
            qclass: u16::from(q.query_class()),
            dnssec_ok: false,
        }
    }

    pub fn dnssec_ok(mut self, on: bool) -> Key {
        self.dnssec_ok = on;
        self
    }
}

/// What a hit gives back: the sections of the stored answer, TTLs aged.
#[derive(Debug, Clone)]
pub struct Cached {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
}

struct Entry {
    value: Cached,
    stored: Instant,
    ttl: u32,
}

/// Lowers every record's TTL to at most `max` (and at least 1).
pub fn cap_ttls(records: &mut [Record], max: u32) {
    for r in records {
        r.ttl = r.ttl.min(max).max(1);
    }
}

pub struct Cache {
    map: HashMap<Key, Entry>,
    capacity: usize,
    max_ttl: u32,
    max_neg_ttl: u32,
    last_sweep: Option<Instant>,
}

impl Cache {
    pub fn new(capacity: usize, max_ttl: u32, max_neg_ttl: u32) -> Cache {
        Cache {
            map: HashMap::new(),
            capacity,
            max_ttl,
            max_neg_ttl,
            last_sweep: None,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&mut self, key: &Key, now: Instant) -> Option<Cached> {
        let e = self.map.get(key)?;
        let age = now.saturating_duration_since(e.stored).as_secs();
        if age >= u64::from(e.ttl) {
            self.map.remove(key);
            return None;
        }
        // Every record says at most what is left of the entry's (capped)
        // lifetime, so a client never keeps it longer than weft would.
        let left = e.ttl - age as u32;
        let mut v = e.value.clone();
        cap_ttls(&mut v.answers, left);
        cap_ttls(&mut v.authorities, left);
        cap_ttls(&mut v.additionals, left);
        Some(v)
    }

    /// How long an upstream response may be kept: the smallest record TTL
    /// capped for answers; the SOA's TTL and minimum for negative ones
    /// (RFC 2308). None for what is never cached: errors other than
    /// NXDOMAIN, truncated replies, negative replies without SOA.
    pub fn ttl_of(&self, m: &Message) -> Option<u32> {
        if m.metadata.truncation {
            return None;
        }
        let negative = match m.metadata.response_code {
            ResponseCode::NXDomain => true,
            ResponseCode::NoError => m.answers.is_empty(),
            _ => return None,
        };
        let ttl = if negative {
            let soa = m.authorities.iter().find_map(|r| match &r.data {
                RData::SOA(s) => Some(r.ttl.min(s.minimum)),
                _ => None,
            })?;
            soa.min(self.max_neg_ttl)
        } else {
            // Every section counts: a short-lived additional record must
            // not outlive its TTL in the cache (as CoreDNS's MinimalTTL).
            let answers = m.answers.iter().map(|r| r.ttl).min()?;
            m.authorities
                .iter()
                .chain(&m.additionals)
                .map(|r| r.ttl)
                .fold(answers, u32::min)
                .min(self.max_ttl)
        };
        (ttl > 0).then_some(ttl)
    }

    pub fn insert(&mut self, key: Key, m: &Message, now: Instant) {
        let Some(ttl) = self.ttl_of(m) else {
            return;
        };
        if self.capacity == 0 {
            return;
        }
        if self.map.len() >= self.capacity && !self.map.contains_key(&key) {
            // Drop expired entries first (a scan, so at most once a
            // second); if none, an arbitrary one (the hash order is
            // random), as CoreDNS's cache evicts.
            if self
                .last_sweep
                .is_none_or(|t| now.saturating_duration_since(t).as_secs() >= 1)
            {
                self.last_sweep = Some(now);
                self.map.retain(|_, e| {
                    now.saturating_duration_since(e.stored).as_secs() < u64::from(e.ttl)
                });
            }
            if self.map.len() >= self.capacity {
                if let Some(k) = self.map.keys().next().cloned() {
                    self.map.remove(&k);
                }
            }
        }
        self.map.insert(
            key,
            Entry {
                value: Cached {
                    rcode: m.metadata.response_code,
                    answers: m.answers.clone(),
                    authorities: m.authorities.clone(),
                    additionals: m.additionals.clone(),
                },
                stored: now,
                ttl,
            },
        );
    }
}
