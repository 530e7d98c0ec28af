//! Fixed-bucket histograms: Prometheus-style cumulative buckets for `/metrics`, and the finer
//! millisecond buckets the time series estimate percentiles from.

use crate::text::{number, sample};

/// Upper bounds (seconds) of the Prometheus duration buckets.
pub const SECONDS_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

/// A cumulative histogram over [`SECONDS_BOUNDS`], fed in milliseconds.
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum_ms: i64,
}

impl Histogram {
    pub fn seconds() -> Histogram {
        Histogram {
            counts: vec![0; SECONDS_BOUNDS.len()],
            count: 0,
            sum_ms: 0,
        }
    }

    pub fn observe_ms(&mut self, ms: i64) {
        let ms = ms.max(0);
        let secs = ms as f64 / 1000.0;
        if let Some(i) = SECONDS_BOUNDS.iter().position(|b| secs <= *b) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum_ms += ms;
    }

    /// `_bucket` (cumulative, with `+Inf`), `_sum` and `_count` lines.
    pub fn render(&self, out: &mut String, name: &str, labels: &[(&str, &str)]) {
        let bucket = format!("{name}_bucket");
        let mut acc = 0;
        for (b, n) in SECONDS_BOUNDS.iter().zip(&self.counts) {
            acc += n;
            let le = number(*b);
            let mut l = labels.to_vec();
            l.push(("le", &le));
            sample(out, &bucket, &l, acc as f64);
        }
        let mut l = labels.to_vec();
        l.push(("le", "+Inf"));
        sample(out, &bucket, &l, self.count as f64);
        sample(
            out,
            &format!("{name}_sum"),
            labels,
            self.sum_ms as f64 / 1000.0,
        );
        sample(out, &format!("{name}_count"), labels, self.count as f64);
    }
}

/// Upper bounds (ms) of the time-series latency buckets (about 1.5× apart).
pub const MS_BOUNDS: &[i64] = &[
    0, 1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 700, 1000, 1500, 2000, 3000,
    5000, 7000, 10000, 15000, 20000, 30000, 60000, 120000, 300000,
];

/// Index of the bucket for a duration (the last one takes everything above).
pub fn ms_bucket(ms: i64) -> usize {
    MS_BOUNDS
        .iter()
        .position(|b| ms <= *b)
        .unwrap_or(MS_BOUNDS.len() - 1)
}

/// The `q` quantile (0..=1) of counts over [`MS_BOUNDS`], interpolated linearly inside the
/// bucket it falls in; `None` when there are no samples.
pub fn quantile(counts: &[u32], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().map(|c| u64::from(*c)).sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0);
    let mut acc = 0.0;
    for (i, c) in counts.iter().enumerate() {
        let c = f64::from(*c);
        if c > 0.0 && acc + c >= rank {
            let hi = MS_BOUNDS[i] as f64;
            // Durations are whole milliseconds, so bucket `i` holds (prev, hi] = [prev + 1, hi].
            let lo = if i == 0 {
                0.0
            } else {
                (MS_BOUNDS[i - 1] + 1) as f64
            };
            return Some(lo + (hi - lo) * ((rank - acc) / c));
        }
        acc += c;
    }
    MS_BOUNDS.last().map(|b| *b as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_fall_in_the_right_bucket() {
        let mut c = vec![0u32; MS_BOUNDS.len()];
        for ms in [1, 1, 1, 1, 1, 1, 1, 1, 1, 400] {
            c[ms_bucket(ms)] += 1;
        }
        assert_eq!(quantile(&c, 0.5), Some(1.0));
        let p99 = quantile(&c, 0.99).unwrap_or(0.0);
        assert!((300.0..=500.0).contains(&p99), "{p99}");
        assert_eq!(quantile(&vec![0; MS_BOUNDS.len()], 0.5), None);
    }
}
