//! Counters and a latency histogram, rendered in the Prometheus text
//! format. Plain atomics: the UDP workers update them on every query.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Histogram bucket bounds, seconds: cluster answers take microseconds,
/// forwarded ones milliseconds.
const BUCKETS: [f64; 15] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5,
];

/// The rcodes named in the metrics; any other counts as "other".
const RCODES: [&str; 11] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET",
    "NXRRSET", "NOTAUTH", "NOTZONE",
];

#[derive(Default)]
pub struct Metrics {
    /// TCP queries read and not yet answered: a stopping server waits for
    /// them (not exported).
    pub tcp_in_flight: AtomicU64,
    pub requests_udp: AtomicU64,
    pub requests_tcp: AtomicU64,
    responses: [AtomicU64; 13],
    buckets: [AtomicU64; 15],
    latency_count: AtomicU64,
    latency_sum_ns: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub forwarded: AtomicU64,
    pub forward_failures: AtomicU64,
    pub refused_concurrency: AtomicU64,
    pub upstreams_healthy: AtomicU64,
    pub zone_names: AtomicU64,
    pub zone_syncs: AtomicU64,
    pub last_sync_micros: AtomicU64,
    pub ready: AtomicU64,
    /// Queries from sources outside `--allow-clients`, dropped (UDP) or
    /// whose connection was closed (TCP).
    pub refused_clients_udp: AtomicU64,
    pub refused_clients_tcp: AtomicU64,
    /// UDP responses the rate limiter dropped, or sent truncated instead.
    pub rrl_dropped: AtomicU64,
    pub rrl_slipped: AtomicU64,
}

impl Metrics {
    /// One answered request: its rcode (low 4 bits plus EDNS high bits)
    /// and how long it took.
    pub fn response(&self, rcode: u16, took: Duration) {
        let i = match rcode {
            0..=10 => rcode as usize,
            16 => 11, // BADVERS
            _ => 12,
        };
        self.responses[i].fetch_add(1, Relaxed);
        let s = took.as_secs_f64();
        if let Some(b) = BUCKETS.iter().position(|b| s <= *b) {
            self.buckets[b].fetch_add(1, Relaxed);
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_ns
            .fetch_add(took.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let counter = |s: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let gauge = |s: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let _ = writeln!(
            s,
            "# HELP weft_dns_requests_total Requests received, by transport.\n# TYPE weft_dns_requests_total counter"
        );
        let _ = writeln!(
            s,
            "weft_dns_requests_total{{proto=\"udp\"}} {}\nweft_dns_requests_total{{proto=\"tcp\"}} {}",
            self.requests_udp.load(Relaxed),
            self.requests_tcp.load(Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP weft_dns_responses_total Responses sent, by rcode.\n# TYPE weft_dns_responses_total counter"
        );
        for (i, c) in self.responses.iter().enumerate() {
            let name = match i {
                0..=10 => RCODES[i],
                11 => "BADVERS",
                _ => "other",
            };
            let _ = writeln!(
                s,
                "weft_dns_responses_total{{rcode=\"{name}\"}} {}",
                c.load(Relaxed)
            );
        }
        let _ = writeln!(
            s,
            "# HELP weft_dns_request_duration_seconds Time from request to response.\n# TYPE weft_dns_request_duration_seconds histogram"
        );
        let mut cum = 0;
        for (b, c) in BUCKETS.iter().zip(&self.buckets) {
            cum += c.load(Relaxed);
            let _ = writeln!(
                s,
                "weft_dns_request_duration_seconds_bucket{{le=\"{b}\"}} {cum}"
            );
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(
            s,
            "weft_dns_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}\nweft_dns_request_duration_seconds_sum {}\nweft_dns_request_duration_seconds_count {count}",
            self.latency_sum_ns.load(Relaxed) as f64 / 1e9
        );
        counter(
            &mut s,
            "weft_dns_cache_hits_total",
            "Forwarded names answered from the cache.",
            self.cache_hits.load(Relaxed),
        );
        counter(
            &mut s,
            "weft_dns_cache_misses_total",
            "Forwarded names not in the cache.",
            self.cache_misses.load(Relaxed),
        );
        counter(
            &mut s,
            "weft_dns_forward_requests_total",
            "Queries sent upstream.",
            self.forwarded.load(Relaxed),
        );
        counter(
            &mut s,
            "weft_dns_forward_failures_total",
            "Upstream queries that timed out or failed.",
            self.forward_failures.load(Relaxed),
        );
        counter(
            &mut s,
            "weft_dns_forward_refused_total",
            "Forwards refused at the concurrency limit.",
            self.refused_concurrency.load(Relaxed),
        );
        gauge(
            &mut s,
            "weft_dns_upstreams_healthy",
            "Upstreams currently healthy.",
            self.upstreams_healthy.load(Relaxed),
        );
        gauge(
            &mut s,
            "weft_dns_zone_names",
            "Names in the compiled cluster zone.",
            self.zone_names.load(Relaxed),
        );
        counter(
            &mut s,
            "weft_dns_zone_syncs_total",
            "Zone compilations.",
            self.zone_syncs.load(Relaxed),
        );
        gauge(
            &mut s,
            "weft_dns_zone_sync_micros",
            "Duration of the last zone compilation.",
            self.last_sync_micros.load(Relaxed),
        );
        let _ = writeln!(
            s,
            "# HELP weft_dns_refused_clients_total Queries from sources outside --allow-clients, not answered.\n# TYPE weft_dns_refused_clients_total counter\nweft_dns_refused_clients_total{{proto=\"udp\"}} {}\nweft_dns_refused_clients_total{{proto=\"tcp\"}} {}",
            self.refused_clients_udp.load(Relaxed),
            self.refused_clients_tcp.load(Relaxed)
        );
        let _ = writeln!(
            s,
            "# HELP weft_dns_rrl_limited_total UDP responses over the rate limit: dropped, or sent truncated (slipped).\n# TYPE weft_dns_rrl_limited_total counter\nweft_dns_rrl_limited_total{{action=\"dropped\"}} {}\nweft_dns_rrl_limited_total{{action=\"slipped\"}} {}",
            self.rrl_dropped.load(Relaxed),
            self.rrl_slipped.load(Relaxed)
        );
        gauge(
            &mut s,
            "weft_dns_ready",
            "1 once the first full sync is served.",
            self.ready.load(Relaxed),
        );
        s
    }
}
