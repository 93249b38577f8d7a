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

/// The element whose `key` is the median of those that have one (the
/// lower middle for an even count).
pub(crate) fn median_by<T>(items: &[T], key: impl Fn(&T) -> Option<f64>) -> Option<&T> {
    let mut keyed: Vec<(f64, &T)> = items.iter().filter_map(|x| key(x).map(|k| (k, x))).collect();
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
    keyed.get(keyed.len().saturating_sub(1) / 2).map(|(_, x)| *x)
}

/// Median, min and max of a set of figures (one per round).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spread {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
}

impl Spread {
    pub(crate) fn of(values: &[f64]) -> Option<Self> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        (n > 0).then(|| Self {
            median: if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 },
            min: v[0],
            max: v[n - 1],
        })
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

    #[test]
    fn spread_and_median_round() {
        let s = Spread::of(&[3.0, 1.0, f64::NAN, 2.0, 10.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
        assert!(Spread::of(&[]).is_none());
        let rounds = [(1, 5.0), (2, 1.0), (3, 3.0)];
        assert_eq!(median_by(&rounds, |r| Some(r.1)).unwrap().0, 3);
    }
}
