//! Paired ratios: each variant's time over raw verbs' time in the same round, so that the
//! drift of an emulated machine's speed (other guests, other builds on the host) cancels, and
//! the median of those ratios with a distribution-free 95% confidence interval, so a reader
//! sees whether a 5% difference is resolved or lost in the noise.

use std::fmt;

use crate::plan::{median, Metric, Variant};

/// Prefix of a paired-ratio line:
/// `REGCACHE-BENCH-RATIO <series> <metric> <bytes> <median> <low> <high> <rounds>`, where the
/// series is the variant's name over raw verbs SEND, `<variant>/<baseline>` over another.
pub const RATIO_PREFIX: &str = "REGCACHE-BENCH-RATIO";

/// The median of per-round ratios of one variant to raw verbs at one size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairedRatio {
    pub variant: Variant,
    /// What the ratio is over: raw verbs SEND, or another baseline.
    pub baseline: Variant,
    pub metric: Metric,
    pub bytes: usize,
    pub median: f64,
    /// Bounds of the 95% confidence interval of the median.
    pub low: f64,
    pub high: f64,
    pub rounds: usize,
}

impl PairedRatio {
    /// The ratio of `variant`'s figure to `baseline`'s from `times` and `baseline_times`, the
    /// two variants' times (µs) in the same rounds: latency over the baseline's latency (above
    /// 1: slower), bandwidth over its bandwidth (below 1: slower). `None` without rounds.
    pub fn new(
        (variant, baseline): (Variant, Variant),
        metric: Metric,
        bytes: usize,
        times: &[f64],
        baseline_times: &[f64],
    ) -> Option<Self> {
        let mut ratios: Vec<f64> = times
            .iter()
            .zip(baseline_times)
            .map(|(&time, &base)| match metric {
                Metric::BandwidthMegabytes => base / time,
                _ => time / base,
            })
            .filter(|ratio| ratio.is_finite())
            .collect();
        let rounds = ratios.len();
        let median = median(&mut ratios)?;
        let (low, high) = median_interval(&ratios);
        Some(Self {
            variant,
            baseline,
            metric,
            bytes,
            median,
            low,
            high,
            rounds,
        })
    }
}

/// The 95% confidence interval of the median of `sorted` (ascending, not empty): the order
/// statistics `n/2 ∓ 1.96·√n/2` (the binomial's normal approximation), which assume nothing
/// about the distribution but that the rounds are independent.
fn median_interval(sorted: &[f64]) -> (f64, f64) {
    let n = sorted.len() as f64;
    let half_width = 1.96 * n.sqrt() / 2.0;
    let last = sorted.len() - 1;
    // 1-based ranks, floored and ceiled, then 0-based indices within the samples.
    let low = ((n / 2.0 - half_width).floor().max(1.0) as usize - 1).min(last);
    let high = ((n / 2.0 + half_width).ceil() as usize).clamp(1, sorted.len()) - 1;
    (sorted[low], sorted[high])
}

impl fmt::Display for PairedRatio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{RATIO_PREFIX} {}", self.variant)?;
        if self.baseline != Variant::RawVerbs {
            write!(f, "/{}", self.baseline)?;
        }
        write!(
            f,
            " {} {} {:.4} {:.4} {:.4} {}",
            self.metric, self.bytes, self.median, self.low, self.high, self.rounds
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_ratios_pair_rounds_and_bandwidth_ratios_invert() {
        let raw = [100.0, 200.0, 400.0];
        let p2p = [110.0, 220.0, 440.0];
        let over_raw = (Variant::CachePinned, Variant::RawVerbs);
        let latency = PairedRatio::new(over_raw, Metric::LatencyMicros, 8, &p2p, &raw).unwrap();
        assert!((latency.median - 1.1).abs() < 1e-9, "{latency:?}");
        assert_eq!(latency.rounds, 3);
        let bandwidth =
            PairedRatio::new(over_raw, Metric::BandwidthMegabytes, 8, &p2p, &raw).unwrap();
        assert!((bandwidth.median - 1.0 / 1.1).abs() < 1e-9, "{bandwidth:?}");
        assert!(PairedRatio::new(over_raw, Metric::LatencyMicros, 8, &[], &[]).is_none());
        let over_floor = (Variant::CachePinned, Variant::RawVerbsCopiedOut);
        let floor = PairedRatio::new(over_floor, Metric::LatencyMicros, 8, &p2p, &raw).unwrap();
        assert!(latency
            .to_string()
            .contains(" p2p-cache-pinned latency_us "));
        assert!(floor
            .to_string()
            .contains(" p2p-cache-pinned/raw-verbs-copied-out latency_us "));
    }

    #[test]
    fn the_interval_narrows_with_rounds_and_holds_the_median() {
        let spread = |n: usize| {
            let sorted: Vec<f64> = (0..n).map(|i| i as f64 / n as f64).collect();
            let (low, high) = median_interval(&sorted);
            assert!(
                low <= sorted[n / 2] && sorted[n / 2] <= high,
                "{n}: {low} {high}"
            );
            high - low
        };
        assert!(spread(1000) < spread(100) / 2.0);
        assert!(spread(100) < 0.25);
        assert_eq!(median_interval(&[5.0]), (5.0, 5.0));
        assert_eq!(median_interval(&[1.0, 2.0]), (1.0, 2.0));
    }

    #[test]
    fn a_ratio_prints_as_one_parsable_line() {
        let ratio = PairedRatio {
            variant: Variant::CachePinned,
            baseline: Variant::RawVerbs,
            metric: Metric::LatencyMicros,
            bytes: 8,
            median: 1.04,
            low: 1.01,
            high: 1.07,
            rounds: 1000,
        };
        assert_eq!(
            ratio.to_string(),
            "REGCACHE-BENCH-RATIO p2p-cache-pinned latency_us 8 1.0400 1.0100 1.0700 1000"
        );
    }
}
