//! What is measured: the variants, the message sizes, how many repetitions each gets, and
//! the line every figure is printed as (the host's `cargo xtask bench p2p` parses it).

use std::fmt;

/// Prefix of a figure line: `REGCACHE-BENCH <variant> <metric> <bytes> <value> <repetitions>`.
pub const FIGURE_PREFIX: &str = "REGCACHE-BENCH";
/// Prefix of a line saying a variant could not run: `REGCACHE-BENCH-SKIP <variant> <why>`.
pub const SKIP_PREFIX: &str = "REGCACHE-BENCH-SKIP";

/// A way of moving a message from one rank to the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// p2p with the registration cache in pinned + regwatch mode.
    CachePinned,
    /// p2p with the registration cache in on-demand-paging mode.
    CacheOdp,
    /// p2p with the cache off: every zero-copy eager send and every rendezvous registers and
    /// deregisters (always-register).
    AlwaysRegister,
    /// SEND/RECV on buffers registered once up front, no p2p in the loop.
    RawVerbs,
    /// As [`Variant::RawVerbs`], but a message as short as the queue pair's inline limit goes
    /// inline (copied into the work request), as p2p's copied ones do.
    RawVerbsInline,
    /// As [`Variant::RawVerbsInline`], and the receiver copies each message out of its receive
    /// slot: the floor of any eager protocol, p2p's copied path included.
    RawVerbsCopiedOut,
    /// p2p's rendezvous (announce, RDMA READ, notice) by hand on buffers registered once up
    /// front: the same trips on the wire as p2p's, without p2p and without registration.
    RawVerbsRead,
}

impl Variant {
    /// Every variant, in the order of the report's columns.
    pub const ALL: [Self; 7] = [
        Self::RawVerbs,
        Self::RawVerbsInline,
        Self::RawVerbsCopiedOut,
        Self::RawVerbsRead,
        Self::CachePinned,
        Self::CacheOdp,
        Self::AlwaysRegister,
    ];

    /// `REGCACHE_MODE` of the variant's communicator: raw verbs uses one only to exchange
    /// queue-pair endpoints, so it needs no cache.
    pub fn cache_mode(self) -> &'static str {
        match self {
            Self::CachePinned => "pinned",
            Self::CacheOdp => "odp",
            Self::AlwaysRegister
            | Self::RawVerbs
            | Self::RawVerbsInline
            | Self::RawVerbsCopiedOut
            | Self::RawVerbsRead => "off",
        }
    }

    /// Whether the variant goes through p2p.
    pub fn is_p2p(self) -> bool {
        matches!(
            self,
            Self::CachePinned | Self::CacheOdp | Self::AlwaysRegister
        )
    }

    fn name(self) -> &'static str {
        match self {
            Self::CachePinned => "p2p-cache-pinned",
            Self::CacheOdp => "p2p-cache-odp",
            Self::AlwaysRegister => "p2p-always-register",
            Self::RawVerbs => "raw-verbs",
            Self::RawVerbsInline => "raw-verbs-inline",
            Self::RawVerbsCopiedOut => "raw-verbs-copied-out",
            Self::RawVerbsRead => "raw-verbs-read",
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a figure measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Median one-way latency in microseconds (half a ping-pong round trip; perftest's
    /// `ib_read_lat` reports a READ, itself a round trip).
    LatencyMicros,
    /// Median streaming bandwidth in MB/s (10^6 bytes per second).
    BandwidthMegabytes,
    /// First-touch: median time in µs from registering a fresh buffer to the completion of
    /// its first transfer (see `first_touch`).
    FirstTransferMicros,
    /// First-touch: median time in µs of the registration alone (with the prefetch, if any).
    RegisterMicros,
    /// First-touch: median time in µs of a second transfer of the same, registered buffer.
    RegisteredTransferMicros,
    /// Median time in µs of one munmap of a registered buffer (see `munmap_cost`).
    MunmapMicros,
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::LatencyMicros => "latency_us",
            Self::BandwidthMegabytes => "bandwidth_MBps",
            Self::FirstTransferMicros => "first_transfer_us",
            Self::RegisterMicros => "register_us",
            Self::RegisteredTransferMicros => "registered_transfer_us",
            Self::MunmapMicros => "munmap_us",
        })
    }
}

/// One measured figure, printed as a [`FIGURE_PREFIX`] line.
#[derive(Debug, Clone, Copy)]
pub struct Figure<'a> {
    /// Variant or reference tool that was measured (e.g. `raw-verbs`, `ib_read_lat`).
    pub what: &'a str,
    pub metric: Metric,
    pub bytes: usize,
    pub value: f64,
    /// Timed repetitions behind the median.
    pub repetitions: usize,
}

impl fmt::Display for Figure<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{FIGURE_PREFIX} {} {} {} {:.3} {}",
            self.what, self.metric, self.bytes, self.value, self.repetitions
        )
    }
}

/// Messages in flight per window of the bandwidth test.
pub const WINDOW: usize = 8;
/// Untimed repetitions before each timed series (first-touch, cache misses, connection).
pub const WARM_UP: usize = 2;

/// The sizes and the repetitions of one benchmark run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    quick: bool,
    /// The largest size measured, when the run is capped ([`Plan::up_to`]).
    cap: Option<usize>,
}

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
const FULL_SIZES: [usize; 14] = [
    8,
    32,
    128,
    512,
    2 * KIB,
    4 * KIB,
    8 * KIB,
    32 * KIB,
    64 * KIB,
    128 * KIB,
    512 * KIB,
    2 * MIB,
    8 * MIB,
    16 * MIB,
];
const QUICK_SIZES: [usize; 4] = [8, 4 * KIB, 64 * KIB, MIB];

impl Plan {
    /// The full sweep (8 B to 16 MiB), or with `quick` four sizes up to 1 MiB and fewer
    /// repetitions (the demo's table).
    pub fn new(quick: bool) -> Self {
        Self { quick, cap: None }
    }

    /// This plan without its sizes above `cap` bytes: a run of minutes that answers a question
    /// about small messages (the repetitions per size stay those of the whole plan).
    ///
    /// # Errors
    /// When no size of the plan is that small.
    pub fn up_to(self, cap: usize) -> anyhow::Result<Self> {
        let capped = Self {
            cap: Some(cap),
            ..self
        };
        if capped.sizes().is_empty() {
            anyhow::bail!(
                "no message size of the plan is at most {cap} bytes (the smallest is {})",
                self.sizes().first().copied().unwrap_or(0)
            );
        }
        Ok(capped)
    }

    /// The cap of [`Plan::up_to`], if any.
    pub fn cap(self) -> Option<usize> {
        self.cap
    }

    /// Whether this is the demo's short plan.
    pub fn is_quick(self) -> bool {
        self.quick
    }

    /// Message sizes in bytes, ascending.
    pub fn sizes(self) -> &'static [usize] {
        let sizes: &'static [usize] = if self.quick {
            &QUICK_SIZES
        } else {
            &FULL_SIZES
        };
        let cap = self.cap.unwrap_or(usize::MAX);
        &sizes[..sizes.partition_point(|&bytes| bytes <= cap)]
    }

    /// The largest message.
    pub fn max_size(self) -> usize {
        self.sizes().iter().copied().max().unwrap_or(0)
    }

    /// Timed ping-pongs for `bytes`: about the same volume per size, within bounds that keep
    /// small sizes statistically useful and large ones affordable under an emulated CPU. One
    /// ping-pong under TCG varies by tens of percent, so the median of per-round ratios needs
    /// about 1,000 rounds for its 95% interval to be a few percent wide (see `paired`); a
    /// round of the small sizes takes milliseconds.
    pub fn round_trips(self, bytes: usize) -> usize {
        let (volume, min, max) = if self.quick {
            // The suite's and the demo's short run: bytes checked, no precision sought.
            (8 * MIB, 3, 20)
        } else {
            // At least 15: the transfers of megabytes vary most from one to the next. 1,000
            // rounds up to 64 KiB, fewer above, so that a loaded host stays within the bench's
            // time limit.
            (64 * MIB, 15, 1000)
        };
        (volume / bytes.max(1)).clamp(min, max)
    }

    /// Timed windows of [`WINDOW`] messages for `bytes`.
    pub fn windows(self, bytes: usize) -> usize {
        let (volume, min, max) = if self.quick {
            (16 * MIB, 2, 5)
        } else {
            (64 * MIB, 3, 300)
        };
        (volume / (WINDOW * bytes.max(1))).clamp(min, max)
    }
}

/// The median of `samples` (sorted in place); `None` for no samples.
pub fn median(samples: &mut [f64]) -> Option<f64> {
    samples.sort_by(f64::total_cmp);
    let mid = samples.len() / 2;
    match samples.len() {
        0 => None,
        n if n % 2 == 1 => Some(samples[mid]),
        _ => Some((samples[mid - 1] + samples[mid]) / 2.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_full_plan_spans_8_bytes_to_16_mib_with_4_and_64_kib() {
        let plan = Plan::new(false);
        assert_eq!(plan.sizes().first(), Some(&8));
        assert!(
            plan.sizes().contains(&(4 * KIB)),
            "the last size copied eagerly"
        );
        assert_eq!(plan.max_size(), 16 * MIB);
        assert!(plan.sizes().contains(&(64 * KIB)));
        assert!(plan.sizes().windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn a_capped_plan_keeps_the_sizes_up_to_its_cap() {
        let capped = Plan::new(false).up_to(4 * KIB).expect("sizes from 8 B");
        assert_eq!(capped.sizes(), [8, 32, 128, 512, 2 * KIB, 4 * KIB]);
        assert_eq!(capped.max_size(), 4 * KIB);
        assert_eq!(capped.round_trips(8), Plan::new(false).round_trips(8));
        assert_eq!(
            Plan::new(false).up_to(5000).map(Plan::max_size).ok(),
            Some(4 * KIB)
        );
        assert!(Plan::new(false).up_to(7).is_err(), "no size left");
    }

    #[test]
    fn repetitions_stay_within_bounds() {
        let plan = Plan::new(false);
        assert_eq!(plan.round_trips(8), 1000);
        assert_eq!(plan.round_trips(16 * MIB), 15);
        assert_eq!(plan.round_trips(64 * KIB), 1000);
        assert_eq!(plan.round_trips(2 * MIB), 32);
        assert_eq!(plan.windows(8), 300);
        assert_eq!(plan.windows(16 * MIB), 3);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn a_figure_prints_as_one_parsable_line() {
        let figure = Figure {
            what: "raw-verbs",
            metric: Metric::LatencyMicros,
            bytes: 65536,
            value: 12.5,
            repetitions: 40,
        };
        assert_eq!(
            figure.to_string(),
            "REGCACHE-BENCH raw-verbs latency_us 65536 12.500 40"
        );
    }
}
