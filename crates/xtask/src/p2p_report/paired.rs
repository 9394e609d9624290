//! The paired ratios `p2p-bench` prints (`REGCACHE-BENCH-RATIO` lines): per variant and size,
//! the median of its per-round ratios to raw verbs SEND with the 95% confidence interval of
//! that median; their tables, and the bound on the copied path judged from them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{bail, Context, Result};

use super::{human_bytes, Column, Figures, ALWAYS_REGISTER, CACHED, COLUMNS, LATENCY, RAW};

pub(super) const RATIO_PREFIX: &str = "REGCACHE-BENCH-RATIO ";
/// Up to this size p2p copies messages (below the eager threshold of 8 KiB), and there p2p
/// + cache must be within [`COPIED_BOUND`] of raw verbs SEND.
const COPIED_UP_TO_BYTES: usize = 4 << 10;
const COPIED_BOUND: f64 = 1.05;
/// The series of [`CACHED`] over raw verbs SEND copied out: over the floor of any eager
/// protocol, whose receive must copy each message out of the buffer it landed in.
const CACHED_OVER_COPIED_OUT: &str = "p2p-cache-pinned/raw-verbs-copied-out";

/// One variant's median ratio to raw verbs at one size, and its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct PairedRatio {
    pub(super) median: f64,
    pub(super) low: f64,
    pub(super) high: f64,
    pub(super) rounds: usize,
}

/// metric → what → bytes → ratio.
pub(super) type PairedRatios = BTreeMap<String, BTreeMap<String, BTreeMap<usize, PairedRatio>>>;

/// Adds the ratio of `fields` (a ratio line after its prefix) to `ratios`.
pub(super) fn parse_line(ratios: &mut PairedRatios, fields: &str) -> Result<()> {
    let fields: Vec<&str> = fields.split_whitespace().collect();
    let [what, metric, bytes, median, low, high, rounds] = fields.as_slice() else {
        bail!("malformed ratio line: {}", fields.join(" "));
    };
    let number = |field: &str| -> Result<f64> {
        field
            .parse()
            .with_context(|| format!("{field} in a ratio line of {what}"))
    };
    let ratio = PairedRatio {
        median: number(median)?,
        low: number(low)?,
        high: number(high)?,
        rounds: rounds.parse().context("rounds in a ratio line")?,
    };
    ratios
        .entry((*metric).to_owned())
        .or_default()
        .entry((*what).to_owned())
        .or_default()
        .insert(bytes.parse().context("size in a ratio line")?, ratio);
    Ok(())
}

impl Figures {
    fn paired(&self, metric: &str, what: &str, bytes: usize) -> Option<PairedRatio> {
        self.ratios.get(metric)?.get(what)?.get(&bytes).copied()
    }

    /// The paired ratios of `metric` as a markdown table: a row per size, a column per variant
    /// other than raw verbs SEND. Empty without ratio lines.
    pub(super) fn paired_table(&self, metric: &str) -> String {
        let Some(by_what) = self.ratios.get(metric) else {
            return String::new();
        };
        let columns: Vec<Column> = COLUMNS
            .into_iter()
            .filter(|(what, _)| *what != RAW && by_what.contains_key(*what))
            .collect();
        let sizes: std::collections::BTreeSet<usize> = by_what
            .values()
            .flat_map(|series| series.keys().copied())
            .collect();
        let mut out = String::from("| size | rounds |");
        for (_, heading) in &columns {
            let _ = write!(out, " {heading} |");
        }
        out.push_str("\n| ---: | ---: |");
        out.push_str(&" ---: |".repeat(columns.len()));
        out.push('\n');
        for bytes in sizes {
            let rounds = columns
                .iter()
                .find_map(|(what, _)| self.paired(metric, what, bytes))
                .map_or(0, |ratio| ratio.rounds);
            let _ = write!(out, "| {} | {rounds} |", human_bytes(bytes));
            for (what, _) in &columns {
                let cell = self.paired(metric, what, bytes).map_or_else(
                    || "-".to_owned(),
                    |r| format!("{:.3}x [{:.3}, {:.3}]", r.median, r.low, r.high),
                );
                let _ = write!(out, " {cell} |");
            }
            out.push('\n');
        }
        out
    }

    /// The bound on the copied path: p2p + cache (pinned) within [`COPIED_BOUND`] of raw
    /// verbs SEND's latency at every size up to [`COPIED_UP_TO_BYTES`], judged on the
    /// median of the paired ratios; says whether the interval resolves the verdict.
    pub(super) fn copied_verdict(&self) -> String {
        let worst = self
            .ratios
            .get(LATENCY)
            .and_then(|by_what| by_what.get(CACHED))
            .into_iter()
            .flat_map(|series| series.range(..=COPIED_UP_TO_BYTES))
            .max_by(|a, b| a.1.median.total_cmp(&b.1.median));
        let Some((&bytes, ratio)) = worst else {
            return "- copied path (8 B to 4 KiB): no paired ratios, bound not checked\n"
                .to_owned();
        };
        let state = if ratio.median <= COPIED_BOUND {
            "met"
        } else {
            "NOT met"
        };
        let resolved = if ratio.high <= COPIED_BOUND || ratio.low > COPIED_BOUND {
            "the interval is on one side of the bound"
        } else {
            "the interval straddles the bound: not resolved"
        };
        format!(
            "- latency 8 B to 4 KiB, p2p + cache (pinned) / raw verbs SEND, median of paired \
             ratios: worst {:.3}x [{:.3}, {:.3}] at {} (bound {COPIED_BOUND:.2}x: {state}; \
             {resolved})\n",
            ratio.median,
            ratio.low,
            ratio.high,
            human_bytes(bytes)
        )
    }

    /// The copied path over its floor: p2p + cache (pinned) over raw verbs SEND copied out, at
    /// every size up to [`COPIED_UP_TO_BYTES`], beside the bound's line; for reading the bound
    /// against what any eager receive costs, not a bound itself. Empty without those ratios.
    pub(super) fn copied_floor_line(&self) -> String {
        let Some(series) = self
            .ratios
            .get(LATENCY)
            .and_then(|by_what| by_what.get(CACHED_OVER_COPIED_OUT))
        else {
            return String::new();
        };
        let sizes: Vec<String> = series
            .range(..=COPIED_UP_TO_BYTES)
            .map(|(&bytes, r)| {
                format!(
                    "{} {:.3}x [{:.3}, {:.3}]",
                    human_bytes(bytes),
                    r.median,
                    r.low,
                    r.high
                )
            })
            .collect();
        format!(
            "- latency 8 B to 4 KiB, p2p + cache (pinned) / raw verbs SEND copied out (inline up \
             to 512 B, the receiver copying each message out of its slot: the least an eager \
             receive does), median of paired ratios: {}\n",
            sizes.join("; ")
        )
    }

    /// How far apart the same code lands in one run, beside the bound's line. Below the eager
    /// threshold p2p copies every message and registers nothing, so p2p + cache (pinned) and
    /// p2p always-registering run the same code there, each in its own communicator with
    /// buffers of its own. The largest gap between their medians, up to
    /// [`COPIED_UP_TO_BYTES`], is what memory layout alone moved a ratio in this boot: the
    /// run's resolution for the bound. Empty without both series.
    pub(super) fn same_code_line(&self) -> String {
        let Some(by_what) = self.ratios.get(LATENCY) else {
            return String::new();
        };
        let (Some(cached), Some(always)) = (by_what.get(CACHED), by_what.get(ALWAYS_REGISTER))
        else {
            return String::new();
        };
        let widest = cached
            .range(..=COPIED_UP_TO_BYTES)
            .filter_map(|(bytes, c)| {
                always
                    .get(bytes)
                    .map(|a| (*bytes, (c.median - a.median).abs()))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let Some((bytes, gap)) = widest else {
            return String::new();
        };
        format!(
            "- latency 8 B to 4 KiB, the same code in two slots (p2p + cache (pinned) and p2p \
             always-register: below the eager threshold neither registers): their medians of \
             paired ratios lie up to {gap:.3} apart (at {}), what memory layout alone moves a \
             ratio in this boot\n",
            human_bytes(bytes)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::Figures;

    const RUN: &str = "\
[rank 0] REGCACHE-BENCH raw-verbs latency_us 8 10.000 1000
[rank 0] REGCACHE-BENCH p2p-cache-pinned latency_us 8 10.400 1000
[rank 0] REGCACHE-BENCH-RATIO p2p-cache-pinned latency_us 8 1.0400 1.0100 1.0700 1000
[rank 0] REGCACHE-BENCH-RATIO p2p-cache-pinned latency_us 4096 1.0200 1.0000 1.0300 1000
[rank 0] REGCACHE-BENCH-RATIO p2p-cache-pinned latency_us 65536 1.2000 1.1000 1.3000 1000
[rank 0] REGCACHE-BENCH-RATIO p2p-always-register latency_us 8 1.0300 1.0000 1.0600 1000
[rank 0] REGCACHE-BENCH-RATIO p2p-always-register latency_us 4096 1.0700 1.0500 1.0900 1000
[rank 0] REGCACHE-BENCH-RATIO p2p-always-register latency_us 65536 1.6000 1.5000 1.7000 1000
[rank 0] REGCACHE-BENCH-RATIO raw-verbs-read latency_us 8 3.0000 2.9000 3.1000 1000
[rank 0] REGCACHE-BENCH-RATIO p2p-cache-pinned/raw-verbs-copied-out latency_us 8 1.0100 1.0000 1.0300 1000
[rank 0] REGCACHE-BENCH-RATIO p2p-cache-pinned/raw-verbs-copied-out latency_us 65536 1.5000 1.4000 1.6000 1000
";

    #[test]
    fn ratio_lines_make_a_table_with_intervals() {
        let figures = Figures::parse(RUN.lines()).unwrap();
        let table = figures.paired_table("latency_us");
        assert!(
            table.contains("| 8 B | 1000 | 3.000x [2.900, 3.100] | 1.040x [1.010, 1.070] |"),
            "{table}"
        );
        assert!(
            table.contains("| 4 KiB | 1000 | - | 1.020x [1.000, 1.030] |"),
            "{table}"
        );
        assert!(figures.paired_table("bandwidth_MBps").is_empty());
    }

    #[test]
    fn the_copied_bound_takes_the_worst_size_up_to_4_kib_and_says_if_it_is_resolved() {
        let verdict = Figures::parse(RUN.lines()).unwrap().copied_verdict();
        assert!(
            verdict.contains(
                "worst 1.040x [1.010, 1.070] at 8 B (bound 1.05x: met; the interval straddles"
            ),
            "{verdict}"
        );
        let slow = RUN.replace("8 1.0400 1.0100 1.0700", "8 1.0800 1.0600 1.1000");
        let verdict = Figures::parse(slow.lines()).unwrap().copied_verdict();
        assert!(
            verdict.contains(
                "1.080x [1.060, 1.100] at 8 B (bound 1.05x: NOT met; the interval is on one side"
            ),
            "{verdict}"
        );
        assert!(Figures::parse(RUN.lines().take(2))
            .unwrap()
            .copied_verdict()
            .contains("not checked"));
    }

    #[test]
    fn the_floor_line_gives_every_copied_size_over_raw_copied_out() {
        let figures = Figures::parse(RUN.lines()).unwrap();
        let line = figures.copied_floor_line();
        assert!(
            line.ends_with("ratios: 8 B 1.010x [1.000, 1.030]\n"),
            "{line}"
        );
        assert!(figures
            .paired_table("latency_us")
            .contains("| 8 B | 1000 | 3.000x"));
        assert!(Figures::parse(RUN.lines().take(2))
            .unwrap()
            .copied_floor_line()
            .is_empty());
    }

    #[test]
    fn the_same_code_line_takes_the_widest_gap_up_to_4_kib() {
        let line = Figures::parse(RUN.lines()).unwrap().same_code_line();
        assert!(
            line.contains("lie up to 0.050 apart (at 4 KiB)"),
            "not 0.010 at 8 B, nor 0.400 at 64 KiB: {line}"
        );
        assert!(Figures::parse(RUN.lines().take(3))
            .unwrap()
            .same_code_line()
            .is_empty());
    }

    #[test]
    fn a_malformed_ratio_line_is_an_error() {
        let bad =
            "REGCACHE-BENCH raw-verbs latency_us 8 10.0 1\nREGCACHE-BENCH-RATIO x latency_us 8 1.0";
        assert!(Figures::parse(bad.lines()).is_err());
    }
}
