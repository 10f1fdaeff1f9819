//! Hold-time histograms of the locks a LUN's sessions share (`lunlock serve --lock-stats FILE`), written as JSON
//! at shutdown for `scripts/bench`.
//!
//! Recording must not become a shared lock itself: each lock has 64 atomic buckets, one per power of two of
//! nanoseconds, plus a count and a maximum. A percentile is reported as the upper bound of the bucket it falls in,
//! so the numbers are never smaller than the truth.

use lunlock_scsi::hold_time::{self, HoldRecorder, SharedLock};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

const BUCKETS: usize = 64;

struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    count: AtomicU64,
    max_ns: AtomicU64,
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
        }
    }

    fn record(&self, ns: u64) {
        let bucket = (u64::BITS - ns.leading_zeros()) as usize;
        self.buckets[bucket.min(BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// The upper bound (ns) of the bucket holding the `quantile` of the recorded values.
    fn quantile_ns(&self, quantile: f64) -> u64 {
        let count = self.count.load(Ordering::Relaxed);
        if count == 0 {
            return 0;
        }
        let rank = ((count as f64) * quantile).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bucket, value) in self.buckets.iter().enumerate() {
            seen += value.load(Ordering::Relaxed);
            if seen >= rank {
                let upper = if bucket == 0 { 0 } else { (1u64 << bucket) - 1 };
                return upper.min(self.max_ns.load(Ordering::Relaxed));
            }
        }
        self.max_ns.load(Ordering::Relaxed)
    }
}

struct Recorder {
    epoch: Instant,
    histograms: Vec<(SharedLock, Histogram)>,
}

impl HoldRecorder for Recorder {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn record(&self, lock: SharedLock, held_ns: u64) {
        if let Some((_, histogram)) = self.histograms.iter().find(|(l, _)| *l == lock) {
            histogram.record(held_ns);
        }
    }
}

static RECORDER: OnceLock<Recorder> = OnceLock::new();

/// Starts recording hold times (for the whole process).
pub fn enable() {
    let recorder = RECORDER.get_or_init(|| Recorder {
        epoch: Instant::now(),
        histograms: SharedLock::ALL
            .iter()
            .map(|&lock| (lock, Histogram::new()))
            .collect(),
    });
    hold_time::install(recorder);
}

/// The statistics as JSON: `{"locks":[{"name","acquisitions","hold_ns":{"p50","p99","p999","max"}}]}`.
pub fn to_json() -> String {
    let Some(recorder) = RECORDER.get() else {
        return r#"{"locks":[]}"#.to_string();
    };
    let locks: Vec<serde_json::Value> = recorder
        .histograms
        .iter()
        .map(|(lock, histogram)| {
            serde_json::json!({
                "name": lock.name(),
                "acquisitions": histogram.count.load(Ordering::Relaxed),
                "hold_ns": {
                    "p50": histogram.quantile_ns(0.5),
                    "p99": histogram.quantile_ns(0.99),
                    "p999": histogram.quantile_ns(0.999),
                    "max": histogram.max_ns.load(Ordering::Relaxed),
                },
            })
        })
        .collect();
    serde_json::json!({ "locks": locks }).to_string()
}

/// Writes the statistics to `path`.
pub fn write(path: &Path) -> std::io::Result<()> {
    std::fs::write(path, to_json() + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_bucket_upper_bounds_capped_by_the_maximum() {
        let histogram = Histogram::new();
        for ns in [100, 120, 130, 5000] {
            histogram.record(ns);
        }
        assert_eq!(histogram.quantile_ns(0.5), 127, "120 falls in [64, 128)");
        assert_eq!(histogram.quantile_ns(1.0), 5000, "capped by the maximum");
        assert_eq!(Histogram::new().quantile_ns(0.99), 0);
    }
}
