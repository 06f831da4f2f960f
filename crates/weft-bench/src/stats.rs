//! Order statistics over latency samples. Pure.

use serde::Serialize;
use std::time::Duration;

/// What the report shows of one set of samples, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub n: usize,
    pub median_ms: f64,
    pub p90_ms: f64,
    pub mean_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The median (mean of the two middle values for an even count); None for
/// no samples.
pub fn median(v: &[f64]) -> Option<f64> {
    let mut x = v.to_vec();
    x.sort_by(f64::total_cmp);
    let n = x.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(x[n / 2]),
        _ => Some((x[n / 2 - 1] + x[n / 2]) / 2.0),
    }
}

/// The nearest-rank percentile `q` (0–100): the smallest sample with at
/// least q% of the samples at or below it; None for no samples.
pub fn percentile(v: &[f64], q: f64) -> Option<f64> {
    let mut x = v.to_vec();
    x.sort_by(f64::total_cmp);
    if x.is_empty() {
        return None;
    }
    // q·n/100 in that order: exact for whole q and n (0.9·30 is not).
    let rank = (q * x.len() as f64 / 100.0).ceil().max(1.0) as usize;
    Some(x[rank.min(x.len()) - 1])
}

/// The median (mean of the two middle values for an even count) and the
/// nearest-rank 90th percentile: the smallest sample with at least 90% of
/// the samples at or below it. `None` for no samples.
pub fn summarize(samples: &[Duration]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    let mut v: Vec<f64> = samples.iter().copied().map(ms).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(Summary {
        n,
        median_ms: median(&v)?,
        p90_ms: percentile(&v, 90.0)?,
        mean_ms: v.iter().sum::<f64>() / n as f64,
        min_ms: v[0],
        max_ms: v[n - 1],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms_list(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|m| Duration::from_millis(*m)).collect()
    }

    #[test]
    fn empty_has_no_summary() {
        assert_eq!(summarize(&[]), None);
    }

    #[test]
    fn odd_and_even_medians() {
        assert_eq!(summarize(&ms_list(&[3, 1, 2])).unwrap().median_ms, 2.0);
        assert_eq!(summarize(&ms_list(&[4, 1, 3, 2])).unwrap().median_ms, 2.5);
    }

    #[test]
    fn p90_is_nearest_rank() {
        let ten = ms_list(&[10, 9, 8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(summarize(&ten).unwrap().p90_ms, 9.0);
        let one = ms_list(&[5]);
        let s = summarize(&one).unwrap();
        assert_eq!(
            (s.p90_ms, s.min_ms, s.max_ms, s.mean_ms),
            (5.0, 5.0, 5.0, 5.0)
        );
        let twenty: Vec<u64> = (1..=20).collect();
        assert_eq!(summarize(&ms_list(&twenty)).unwrap().p90_ms, 18.0);
    }
}
