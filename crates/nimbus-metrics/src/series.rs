//! Recent time series per function, kept in memory for the console's charts: 10 s buckets over
//! the last hour. Buckets are allocated only when something happens (a sparse ring per
//! function), so idle functions cost nothing.

use crate::Observation;
use crate::hist::{MS_BOUNDS, ms_bucket, quantile};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Width of one bucket.
pub const BUCKET_MS: i64 = 10_000;
/// Buckets kept: one hour.
pub const BUCKETS: usize = 360;

#[derive(Debug, Clone)]
struct Bucket {
    /// Start of the bucket, epoch ms (a multiple of the width).
    t: i64,
    invocations: u32,
    errors: u32,
    cold: u32,
    latency: Vec<u32>,
    /// Most live instances seen in the bucket (sampled), if sampled.
    instances: Option<u32>,
}

impl Bucket {
    fn new(t: i64) -> Bucket {
        Bucket {
            t,
            invocations: 0,
            errors: 0,
            cold: 0,
            latency: vec![0; MS_BOUNDS.len()],
            instances: None,
        }
    }
}

/// The series of one function, dense over the window (one entry per bucket, oldest first).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FunctionSeries {
    pub name: String,
    /// Totals over the window.
    pub invocations: u64,
    pub errors: u64,
    pub cold_starts: u64,
    /// Latency percentiles over the window (ms; null without samples).
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    /// Bucket start times (epoch ms), present when points were asked for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub t: Vec<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub points: Option<Points>,
}

/// Per-bucket values, aligned with [`FunctionSeries::t`].
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Points {
    /// Invocations per second (count / bucket width).
    pub rate: Vec<f64>,
    pub invocations: Vec<u32>,
    pub errors: Vec<u32>,
    pub cold_starts: Vec<u32>,
    pub p50: Vec<Option<f64>>,
    pub p90: Vec<Option<f64>>,
    pub p99: Vec<Option<f64>>,
    pub instances: Vec<Option<u32>>,
}

pub struct Series {
    width: i64,
    len: usize,
    map: Mutex<HashMap<(String, String), VecDeque<Bucket>>>,
}

impl Series {
    pub fn new(width_ms: i64, len: usize) -> Series {
        Series {
            width: width_ms.max(1),
            len: len.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    pub fn bucket_ms(&self) -> i64 {
        self.width
    }

    fn floor(&self, t: i64) -> i64 {
        t - t.rem_euclid(self.width)
    }

    /// Runs `f` on the bucket of `t` for this function (created if needed), dropping buckets
    /// that left the window.
    fn with_bucket(&self, ns: &str, func: &str, t: i64, f: impl FnOnce(&mut Bucket)) {
        let t = self.floor(t);
        let oldest = t - self.width * (self.len as i64 - 1);
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ring = map.entry((ns.to_string(), func.to_string())).or_default();
        while ring.front().is_some_and(|b| b.t < oldest) {
            ring.pop_front();
        }
        // Records arrive roughly in order; a late one lands in its own (older) bucket.
        let pos = ring.iter().rposition(|b| b.t <= t);
        match pos {
            Some(i) if ring[i].t == t => f(&mut ring[i]),
            Some(i) => {
                let mut b = Bucket::new(t);
                f(&mut b);
                ring.insert(i + 1, b);
            }
            None => {
                if t < oldest {
                    return;
                }
                let mut b = Bucket::new(t);
                f(&mut b);
                ring.push_front(b);
            }
        }
    }

    pub fn record(&self, o: &Observation<'_>) {
        self.with_bucket(o.namespace, o.function, o.start_ms, |b| {
            b.invocations += 1;
            if o.status != "success" {
                b.errors += 1;
            }
            if o.cold {
                b.cold += 1;
            }
            b.latency[ms_bucket(o.duration_ms)] += 1;
        });
    }

    /// Records a sample of the live instances of a function at `t`.
    pub fn sample_instances(&self, ns: &str, func: &str, t: i64, n: u32) {
        self.with_bucket(ns, func, t, |b| {
            b.instances = Some(b.instances.map_or(n, |m| m.max(n)));
        });
    }

    /// The functions of a namespace seen in the window (all, or the one named), with their
    /// totals; with `points`, also the dense per-bucket values ending at `now`.
    pub fn query(
        &self,
        ns: &str,
        name: Option<&str>,
        now: i64,
        points: bool,
    ) -> Vec<FunctionSeries> {
        let end = self.floor(now);
        let oldest = end - self.width * (self.len as i64 - 1);
        let map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out: Vec<FunctionSeries> = map
            .iter()
            .filter(|((n, f), _)| n == ns && name.is_none_or(|want| want == f))
            .map(|((_, f), ring)| {
                let live: Vec<&Bucket> = ring
                    .iter()
                    .filter(|b| b.t >= oldest && b.t <= end)
                    .collect();
                let mut lat = vec![0u32; MS_BOUNDS.len()];
                let (mut inv, mut err, mut cold) = (0u64, 0u64, 0u64);
                for b in &live {
                    inv += u64::from(b.invocations);
                    err += u64::from(b.errors);
                    cold += u64::from(b.cold);
                    for (a, c) in lat.iter_mut().zip(&b.latency) {
                        *a += c;
                    }
                }
                let (t, pts) = if points {
                    self.dense(&live, oldest)
                } else {
                    (Vec::new(), None)
                };
                FunctionSeries {
                    name: f.clone(),
                    invocations: inv,
                    errors: err,
                    cold_starts: cold,
                    p50: quantile(&lat, 0.5),
                    p99: quantile(&lat, 0.99),
                    t,
                    points: pts,
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn dense(&self, live: &[&Bucket], oldest: i64) -> (Vec<i64>, Option<Points>) {
        let n = self.len;
        let t: Vec<i64> = (0..n).map(|i| oldest + self.width * i as i64).collect();
        let mut p = Points {
            rate: vec![0.0; n],
            invocations: vec![0; n],
            errors: vec![0; n],
            cold_starts: vec![0; n],
            p50: vec![None; n],
            p90: vec![None; n],
            p99: vec![None; n],
            instances: vec![None; n],
        };
        let secs = self.width as f64 / 1000.0;
        for b in live {
            let Ok(i) = usize::try_from((b.t - oldest) / self.width) else {
                continue;
            };
            if i >= n {
                continue;
            }
            p.rate[i] = f64::from(b.invocations) / secs;
            p.invocations[i] = b.invocations;
            p.errors[i] = b.errors;
            p.cold_starts[i] = b.cold;
            p.p50[i] = quantile(&b.latency, 0.5);
            p.p90[i] = quantile(&b.latency, 0.9);
            p.p99[i] = quantile(&b.latency, 0.99);
            p.instances[i] = b.instances;
        }
        (t, Some(p))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn obs(t: i64, status: &str, d: i64) -> Observation<'_> {
        Observation {
            namespace: "ns",
            function: "f",
            status,
            start_ms: t,
            duration_ms: d,
            init_ms: None,
            cold: false,
        }
    }

    #[test]
    fn buckets_roll_and_old_ones_fall_out() {
        let s = Series::new(1000, 5);
        s.record(&obs(10_500, "success", 2));
        s.record(&obs(10_900, "application_error", 4));
        s.record(&obs(12_100, "success", 8));
        s.sample_instances("ns", "f", 12_200, 3);
        let q = s.query("ns", Some("f"), 12_300, true);
        assert_eq!(q.len(), 1);
        let f = &q[0];
        assert_eq!((f.invocations, f.errors), (3, 1));
        let p = f.points.as_ref().unwrap();
        assert_eq!(f.t, vec![8000, 9000, 10_000, 11_000, 12_000]);
        assert_eq!(p.invocations, vec![0, 0, 2, 0, 1]);
        assert_eq!(p.instances[4], Some(3));
        assert!((p.rate[2] - 2.0).abs() < 1e-9);
        // Five seconds later the first bucket is out of the window.
        let q = s.query("ns", Some("f"), 15_000, false);
        assert_eq!(q[0].invocations, 1);
        assert!(s.query("other", None, 15_000, false).is_empty());
    }
}
