//! Latency samples and their summary.

use serde::Serialize;
use std::time::Duration;

/// Summary of a set of latencies, in microseconds.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Summary {
    pub(crate) n: usize,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) mean_us: f64,
}

impl Summary {
    pub(crate) fn of(samples: &[Duration]) -> Self {
        assert!(!samples.is_empty(), "no samples");
        let mut us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        us.sort_by(f64::total_cmp);
        let pick = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize];
        Self { n: us.len(), p50_us: pick(0.5), p99_us: pick(0.99), mean_us: us.iter().sum::<f64>() / us.len() as f64 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_set() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        let x = Summary::of(&s);
        assert_eq!((x.n, x.p50_us.round(), x.p99_us.round(), x.mean_us), (100, 51.0, 99.0, 50.5));
    }
}
