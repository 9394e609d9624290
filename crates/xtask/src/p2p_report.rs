//! Turns the figure lines of `p2p-bench` (benches/vm) into markdown tables with ratios to raw
//! verbs, the first-touch and munmap tables with ratios to pinned, and log-log plots with
//! gnuplot.

use crate::sh::{self, cmd};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

mod paired;

use paired::{PairedRatios, RATIO_PREFIX};

const FIGURE_PREFIX: &str = "REGCACHE-BENCH ";
const SKIP_PREFIX: &str = "REGCACHE-BENCH-SKIP ";
const LATENCY: &str = "latency_us";
const BANDWIDTH: &str = "bandwidth_MBps";
/// The baseline every ratio in the tables is taken against: one SEND per message.
const RAW: &str = "raw-verbs";
/// The second baseline of the bound: p2p's rendezvous done by hand with raw verbs.
const RAW_READ: &str = "raw-verbs-read";
/// The cache variant the bound applies to.
const CACHED: &str = "p2p-cache-pinned";
const ALWAYS_REGISTER: &str = "p2p-always-register";
/// A series of a table or plot: its name as printed by p2p-bench, its heading.
type Column = (&'static str, &'static str);
/// Columns, in order.
const COLUMNS: [Column; 9] = [
    (RAW, "raw verbs SEND, registered once"),
    (
        "raw-verbs-inline",
        "raw verbs SEND, inline up to 512 B, registered once",
    ),
    (
        "raw-verbs-copied-out",
        "raw verbs SEND, inline up to 512 B, copied out of the receive slot",
    ),
    (RAW_READ, "raw verbs READ rendezvous, registered once"),
    (CACHED, "p2p + cache (pinned)"),
    (CACHED_ODP, "p2p + cache (ODP)"),
    (ALWAYS_REGISTER, "p2p, always-register"),
    ("ib_write_lat", "perftest ib_write_lat"),
    ("ib_read_lat", "perftest ib_read_lat (a READ round trip)"),
];
/// The ODP variant, which must run on a device the cache trusts with ODP.
const CACHED_ODP: &str = "p2p-cache-odp";
/// First-touch metrics: registration + first transfer, registration alone (with the
/// prefetch), a second transfer of the registered buffer.
const FIRST_TRANSFER: &str = "first_transfer_us";
const REGISTER: &str = "register_us";
const REGISTERED_TRANSFER: &str = "registered_transfer_us";
/// First-touch registrations, in order: name as printed, heading. The first is the baseline.
const REGISTRATIONS: [Column; 3] = [
    ("pinned", "pinned: ibv_reg_mr + WRITE"),
    ("odp", "ODP: ibv_reg_mr + WRITE"),
    ("odp-prefetch", "ODP: ibv_reg_mr + ibv_advise_mr + WRITE"),
];
const MUNMAP: &str = "munmap_us";
/// What held the unmapped buffer, in order: name as printed, heading. The first is the
/// baseline.
const HOLDERS: [Column; 4] = [
    ("no-mr", "no memory region"),
    ("pinned", "pinned region, not watched"),
    (
        "pinned-regwatch",
        "pinned region watched by regwatch (cache: pinned)",
    ),
    ("odp", "ODP region (cache: ODP)"),
];
/// From this size up, p2p with the cache must be within [`BOUND`] of raw verbs.
const BOUND_FROM_BYTES: usize = 64 << 10;
const BOUND: f64 = 1.10;

/// The figures of one run: metric → what → bytes → value.
#[derive(Debug, Default)]
pub struct Figures {
    values: BTreeMap<String, BTreeMap<String, BTreeMap<usize, f64>>>,
    /// Variants that could not run, with the reason.
    skipped: Vec<(String, String)>,
    /// Medians of per-round ratios to raw verbs, with their intervals.
    ratios: PairedRatios,
}

impl Figures {
    /// Collects the figure and skip lines anywhere in `lines` (they may carry a label).
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<Self> {
        let mut figures = Self::default();
        for line in lines {
            if let Some(at) = line.find(RATIO_PREFIX) {
                paired::parse_line(&mut figures.ratios, &line[at + RATIO_PREFIX.len()..])?;
            } else if let Some(at) = line.find(SKIP_PREFIX) {
                let rest = &line[at + SKIP_PREFIX.len()..];
                let (what, why) = rest.split_once(' ').unwrap_or((rest, ""));
                let skip = (what.to_owned(), why.to_owned());
                // Both ranks report a skip.
                if !figures.skipped.contains(&skip) {
                    figures.skipped.push(skip);
                }
            } else if let Some(at) = line.find(FIGURE_PREFIX) {
                let fields: Vec<&str> = line[at + FIGURE_PREFIX.len()..]
                    .split_whitespace()
                    .collect();
                let [what, metric, bytes, value, _repetitions] = fields.as_slice() else {
                    bail!("malformed figure line: {line}");
                };
                let bytes: usize = bytes.parse().with_context(|| format!("size in {line}"))?;
                let value: f64 = value.parse().with_context(|| format!("value in {line}"))?;
                figures
                    .values
                    .entry((*metric).to_owned())
                    .or_default()
                    .entry((*what).to_owned())
                    .or_default()
                    .insert(bytes, value);
            }
        }
        if figures.values.is_empty() {
            bail!("the run printed no figure");
        }
        Ok(figures)
    }

    fn series(&self, metric: &str, what: &str) -> Option<&BTreeMap<usize, f64>> {
        self.values.get(metric)?.get(what)
    }

    fn sizes(&self, metric: &str) -> BTreeSet<usize> {
        self.values
            .get(metric)
            .into_iter()
            .flat_map(|by_what| by_what.values().flat_map(|series| series.keys().copied()))
            .collect()
    }

    /// `what`'s value at `bytes` over `baseline`'s, for `metric` (latency: higher is worse).
    fn ratio(&self, metric: &str, what: &str, baseline: &str, bytes: usize) -> Option<f64> {
        let value = self.series(metric, what)?.get(&bytes)?;
        let base = self.series(metric, baseline)?.get(&bytes)?;
        (*base > 0.0).then(|| value / base)
    }

    /// One markdown table of `metric`: a row per size, a column per variant that has figures,
    /// with its ratio to raw verbs.
    fn table(&self, metric: &str, unit: &str) -> String {
        let columns: Vec<(&str, &str)> = COLUMNS
            .into_iter()
            .filter(|(what, _)| self.series(metric, what).is_some())
            .collect();
        let mut out = String::from("| size |");
        for (_, heading) in &columns {
            let _ = write!(out, " {heading} ({unit}) |");
        }
        out.push_str("\n| ---: |");
        out.push_str(&" ---: |".repeat(columns.len()));
        out.push('\n');
        for bytes in self.sizes(metric) {
            let _ = write!(out, "| {} |", human_bytes(bytes));
            for (what, _) in &columns {
                let cell = match self.series(metric, what).and_then(|s| s.get(&bytes)) {
                    None => "-".to_owned(),
                    Some(value) => match self.ratio(metric, what, RAW, bytes) {
                        Some(ratio) if *what != RAW && !what.starts_with("ib_") => {
                            format!("{} ({ratio:.2}x)", significant(*value))
                        }
                        _ => significant(*value),
                    },
                };
                let _ = write!(out, " {cell} |");
            }
            out.push('\n');
        }
        out
    }

    /// The bound: p2p with the cache within 1.10x of raw verbs' latency from 64 KiB up,
    /// against each raw baseline, with always-register's worst ratio beside it.
    pub fn verdict(&self) -> String {
        let worst = |what: &str, baseline: &str| {
            self.sizes(LATENCY)
                .into_iter()
                .filter(|&bytes| bytes >= BOUND_FROM_BYTES)
                .filter_map(|bytes| Some((self.ratio(LATENCY, what, baseline, bytes)?, bytes)))
                .max_by(|a, b| a.0.total_cmp(&b.0))
        };
        let mut out = String::new();
        for (baseline, name) in [
            (RAW, "raw verbs SEND"),
            (RAW_READ, "raw verbs READ rendezvous"),
        ] {
            let Some((cached, at)) = worst(CACHED, baseline) else {
                let _ = writeln!(
                    out,
                    "- vs {name}: no figures from 64 KiB up, bound not checked"
                );
                continue;
            };
            let state = if cached <= BOUND { "met" } else { "NOT met" };
            let _ = write!(
                out,
                "- latency from 64 KiB up, p2p + cache (pinned) / {name}: worst {cached:.3}x at \
                 {} (bound {BOUND:.2}x: {state})",
                human_bytes(at)
            );
            if let Some((always, at)) = worst(ALWAYS_REGISTER, baseline) {
                let _ = write!(
                    out,
                    "; always-register: worst {always:.3}x at {}",
                    human_bytes(at)
                );
            }
            out.push('\n');
        }
        out
    }

    /// Why `what` (a p2p variant, or `first-touch-<registration>`) was not measured, if it
    /// was not: its skip line, or the absence of its figures.
    pub fn not_measured(&self, what: &str) -> Option<String> {
        if let Some((_, why)) = self.skipped.iter().find(|(skipped, _)| skipped == what) {
            return Some(why.clone());
        }
        let (metric, series) = match what.strip_prefix("first-touch-") {
            Some(registration) => (FIRST_TRANSFER, registration),
            None => (LATENCY, what),
        };
        self.series(metric, series)
            .is_none()
            .then(|| format!("no {what} figure"))
    }

    /// The first-touch table: per size, each registration's time to the first transfer's
    /// completion with its registration time and its ratio to pinned, then the second
    /// transfers. Empty without first-touch figures.
    fn first_touch_table(&self) -> String {
        let registrations: Vec<(&str, &str)> = REGISTRATIONS
            .into_iter()
            .filter(|(what, _)| self.series(FIRST_TRANSFER, what).is_some())
            .collect();
        if registrations.is_empty() {
            return String::new();
        }
        let (baseline, _) = REGISTRATIONS[0];
        let mut out = String::from(
            "First transfer of a fresh buffer (µs, median; in parentheses the registration's \
             share and the ratio to pinned), then a second transfer of the registered buffer:\n\n| size |",
        );
        for (_, heading) in &registrations {
            let _ = write!(out, " {heading} (µs) |");
        }
        for (what, _) in &registrations {
            let _ = write!(out, " {what}: second WRITE (µs) |");
        }
        out.push_str("\n| ---: |");
        out.push_str(&" ---: |".repeat(2 * registrations.len()));
        out.push('\n');
        for bytes in self.sizes(FIRST_TRANSFER) {
            let _ = write!(out, "| {} |", human_bytes(bytes));
            for (what, _) in &registrations {
                let value = |metric: &str| self.series(metric, what)?.get(&bytes).copied();
                let cell = match (value(FIRST_TRANSFER), value(REGISTER)) {
                    (Some(first), Some(register)) => {
                        let mut cell =
                            format!("{} (reg {}", significant(first), significant(register));
                        if let Some(ratio) = self.ratio(FIRST_TRANSFER, what, baseline, bytes) {
                            if *what != baseline {
                                let _ = write!(cell, "; {ratio:.2}x");
                            }
                        }
                        cell + ")"
                    }
                    _ => "-".to_owned(),
                };
                let _ = write!(out, " {cell} |");
            }
            for (what, _) in &registrations {
                let cell = self
                    .series(REGISTERED_TRANSFER, what)
                    .and_then(|series| series.get(&bytes))
                    .map_or_else(|| "-".to_owned(), |value| significant(*value));
                let _ = write!(out, " {cell} |");
            }
            out.push('\n');
        }
        out
    }

    /// The munmap table: one munmap of a registered buffer under each holder, with its ratio
    /// to plain memory. Empty without munmap figures.
    fn munmap_table(&self) -> String {
        let Some(&bytes) = self.sizes(MUNMAP).iter().next() else {
            return String::new();
        };
        let (baseline, _) = HOLDERS[0];
        let mut out = format!(
            "One munmap of a registered {} buffer (µs, median), ratio to no region:\n\n\
             | held by | munmap (µs) |\n| --- | ---: |\n",
            human_bytes(bytes)
        );
        for (what, heading) in HOLDERS {
            let Some(value) = self.series(MUNMAP, what).and_then(|s| s.get(&bytes)) else {
                continue;
            };
            let cell = match self.ratio(MUNMAP, what, baseline, bytes) {
                Some(ratio) if what != baseline => format!("{} ({ratio:.2}x)", significant(*value)),
                _ => significant(*value),
            };
            let _ = writeln!(out, "| {heading} | {cell} |");
        }
        out
    }

    /// The whole report in markdown: both tables, the bound, the first-touch and munmap
    /// tables, and the variants that were skipped.
    pub fn markdown(&self, title: &str) -> String {
        let mut out = format!("# {title}\n\n");
        // `bench first-touch` runs no p2p sweep.
        if self.values.contains_key(LATENCY) {
            out.push_str("One-way latency (half a ping-pong; median), ratio to raw verbs:\n\n");
            out.push_str(&self.table(LATENCY, "µs"));
            out.push_str(
                "\nStreaming bandwidth (windows of 8 messages; median), ratio to raw verbs:\n\n",
            );
            out.push_str(&self.table(BANDWIDTH, "MB/s"));
            for (metric, what) in [
                (LATENCY, "latency over raw verbs SEND's: above 1 is slower"),
                (
                    BANDWIDTH,
                    "bandwidth over raw verbs SEND's: below 1 is slower",
                ),
            ] {
                let table = self.paired_table(metric);
                if !table.is_empty() {
                    let _ = write!(
                        out,
                        "\nPaired ratios ({what}): the median of the ratios of the same \
                         round, [the 95% confidence interval of that median]:\n\n{table}"
                    );
                }
            }
            let _ = write!(
                out,
                "\n{}{}{}{}",
                self.verdict(),
                self.copied_verdict(),
                self.copied_floor_line(),
                self.same_code_line()
            );
        }
        for table in [self.first_touch_table(), self.munmap_table()] {
            if !table.is_empty() {
                let _ = write!(out, "\n{table}");
            }
        }
        for (what, why) in &self.skipped {
            let _ = writeln!(out, "\nnot measured: {what}: {why}");
        }
        out
    }

    /// Log-log plots of latency and bandwidth against size, drawn by gnuplot into
    /// `<stem>-latency.png` and `<stem>-bandwidth.png`; returns their paths.
    pub fn plot(&self, dir: &Path, stem: &str, title: &str) -> Result<Vec<PathBuf>> {
        let mut pngs = Vec::new();
        let plotted: [(&str, &str, &str, &[Column]); 3] = [
            (LATENCY, "one-way latency (µs)", "latency", &COLUMNS),
            (BANDWIDTH, "bandwidth (MB/s)", "bandwidth", &COLUMNS),
            (
                FIRST_TRANSFER,
                "registration + first WRITE of a fresh buffer (µs)",
                "first-touch",
                &REGISTRATIONS,
            ),
        ];
        for (metric, label, file, columns) in plotted {
            let mut plots = Vec::new();
            for &(what, heading) in columns {
                let Some(series) = self.series(metric, what) else {
                    continue;
                };
                let data = dir.join(format!("{stem}-{file}-{what}.dat"));
                let rows: String = series.iter().map(|(b, v)| format!("{b} {v}\n")).collect();
                std::fs::write(&data, rows)?;
                plots.push(format!(
                    "'{}' using 1:2 with linespoints title '{heading}'",
                    data.display()
                ));
            }
            if plots.is_empty() {
                continue;
            }
            let png = dir.join(format!("{stem}-{file}.png"));
            let script = format!(
                "set terminal pngcairo noenhanced size 1100,700\nset output '{}'\n\
                 set title {}\nset logscale xy\nset grid\nset xrange [4:32e6]\n\
                 set xlabel 'message size (bytes)'\nset ylabel '{label}'\n\
                 set key left top\nplot {}\n",
                png.display(),
                gnuplot_string(title),
                plots.join(", \\\n  ")
            );
            let script_path = dir.join(format!("{stem}-{file}.gp"));
            std::fs::write(&script_path, script)?;
            sh::run(&mut cmd("gnuplot", [&script_path]))
                .context("drawing the plot with gnuplot")?;
            pngs.push(png);
        }
        Ok(pngs)
    }
}

/// `text` as a gnuplot single-quoted string (a quote inside is doubled), such as the title
/// of a stock module's run, "Debian's rdma_rxe".
fn gnuplot_string(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// At least three significant digits, and no more decimals than one above 100.
fn significant(value: f64) -> String {
    match value.abs() {
        v if v >= 100.0 => format!("{value:.1}"),
        v if v >= 1.0 => format!("{value:.2}"),
        _ => format!("{value:.4}"),
    }
}

fn human_bytes(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = "\
[raw-verbs rank 0] REGCACHE-BENCH raw-verbs latency_us 8 10.000 100
[raw-verbs rank 0] REGCACHE-BENCH raw-verbs latency_us 65536 100.000 100
[raw-verbs rank 0] REGCACHE-BENCH raw-verbs bandwidth_MBps 65536 50.000 30
[rank 0] REGCACHE-BENCH raw-verbs-read latency_us 65536 104.000 100
[p2p-cache-pinned rank 0] REGCACHE-BENCH p2p-cache-pinned latency_us 8 12.000 100
[p2p-cache-pinned rank 0] REGCACHE-BENCH p2p-cache-pinned latency_us 65536 105.000 100
[p2p-always-register rank 0] REGCACHE-BENCH p2p-always-register latency_us 65536 300.000 100
[p2p-cache-odp rank 1] REGCACHE-BENCH-SKIP p2p-cache-odp the ODP self-test failed
[p2p-cache-odp rank 0] REGCACHE-BENCH-SKIP p2p-cache-odp the ODP self-test failed
REGCACHE-BENCH ib_read_lat latency_us 65536 90.000 100
";

    #[test]
    fn a_quote_in_a_gnuplot_string_is_doubled() {
        assert_eq!(gnuplot_string("Debian's rxe"), "'Debian''s rxe'");
    }

    #[test]
    fn ratios_are_taken_against_raw_verbs() {
        let figures = Figures::parse(RUN.lines()).unwrap();
        let ratio = figures.ratio(LATENCY, CACHED, RAW, 65536).unwrap();
        assert!((ratio - 1.05).abs() < 1e-9);
        let table = figures.table(LATENCY, "µs");
        assert!(
            table.contains(
                "| 64 KiB | 100.0 | 104.0 (1.04x) | 105.0 (1.05x) | 300.0 (3.00x) | 90.00 |"
            ),
            "{table}"
        );
        assert!(!table.contains("ODP"), "a skipped variant has no column");
    }

    #[test]
    fn the_bound_is_judged_from_64_kib_up_only() {
        let verdict = Figures::parse(RUN.lines()).unwrap().verdict();
        for expected in [
            "/ raw verbs SEND: worst 1.050x at 64 KiB (bound 1.10x: met); \
             always-register: worst 3.000x at 64 KiB",
            "/ raw verbs READ rendezvous: worst 1.010x at 64 KiB (bound 1.10x: met)",
        ] {
            assert!(verdict.contains(expected), "{verdict}");
        }
        let slow = RUN.replace("65536 105.000", "65536 120.000");
        let verdict = Figures::parse(slow.lines()).unwrap().verdict();
        assert!(
            verdict.contains("worst 1.200x at 64 KiB (bound 1.10x: NOT met)"),
            "{verdict}"
        );
    }

    #[test]
    fn skipped_variants_are_reported() {
        let markdown = Figures::parse(RUN.lines()).unwrap().markdown("t");
        assert_eq!(
            markdown
                .matches("not measured: p2p-cache-odp: the ODP self-test failed")
                .count(),
            1
        );
    }

    const FIRST_TOUCH: &str = "\
REGCACHE-BENCH pinned register_us 4096 20.000 15
REGCACHE-BENCH pinned first_transfer_us 4096 100.000 15
REGCACHE-BENCH pinned registered_transfer_us 4096 50.000 15
REGCACHE-BENCH odp register_us 4096 10.000 15
REGCACHE-BENCH odp first_transfer_us 4096 150.000 15
REGCACHE-BENCH odp registered_transfer_us 4096 55.000 15
REGCACHE-BENCH no-mr munmap_us 1048576 40.000 15
REGCACHE-BENCH pinned-regwatch munmap_us 1048576 60.000 15
REGCACHE-BENCH odp munmap_us 1048576 100.000 15
REGCACHE-BENCH-SKIP first-touch-odp-prefetch ibv_advise_mr answered EOPNOTSUPP
";

    #[test]
    fn first_touch_and_munmap_are_compared_with_pinned_and_plain_memory() {
        let figures = Figures::parse(RUN.lines().chain(FIRST_TOUCH.lines())).unwrap();
        let markdown = figures.markdown("t");
        for expected in [
            "| 4 KiB | 100.0 (reg 20.00) | 150.0 (reg 10.00; 1.50x) | 50.00 | 55.00 |",
            "| pinned region watched by regwatch (cache: pinned) | 60.00 (1.50x) |",
            "| ODP region (cache: ODP) | 100.0 (2.50x) |",
            "not measured: first-touch-odp-prefetch: ibv_advise_mr answered EOPNOTSUPP",
        ] {
            assert!(markdown.contains(expected), "{expected}\n{markdown}");
        }
        assert!(!markdown.contains("advise_mr + WRITE"), "{markdown}");
        assert!(!markdown.contains("not watched"), "{markdown}");
    }

    #[test]
    fn a_first_touch_run_has_no_p2p_tables() {
        let markdown = Figures::parse(FIRST_TOUCH.lines()).unwrap().markdown("t");
        assert!(markdown.contains("fresh buffer"), "{markdown}");
        assert!(!markdown.contains("latency"), "{markdown}");
        assert!(!markdown.contains("bound"), "{markdown}");
    }

    #[test]
    fn a_run_without_first_touch_figures_has_no_such_tables() {
        let markdown = Figures::parse(RUN.lines()).unwrap().markdown("t");
        assert!(!markdown.contains("fresh buffer"), "{markdown}");
        assert!(!markdown.contains("munmap"), "{markdown}");
    }

    #[test]
    fn odp_counts_as_measured_only_with_its_figures() {
        let skipped = Figures::parse(RUN.lines()).unwrap();
        assert_eq!(
            skipped.not_measured(CACHED_ODP).as_deref(),
            Some("the ODP self-test failed")
        );
        let measured = RUN.replace(
            "[p2p-cache-odp rank 1] REGCACHE-BENCH-SKIP p2p-cache-odp the ODP self-test failed\n\
             [p2p-cache-odp rank 0] REGCACHE-BENCH-SKIP p2p-cache-odp the ODP self-test failed",
            "REGCACHE-BENCH p2p-cache-odp latency_us 65536 106.000 100",
        );
        assert_ne!(measured, RUN, "the test's replacement found nothing");
        let figures = Figures::parse(measured.lines()).unwrap();
        assert_eq!(figures.not_measured(CACHED_ODP), None);
        let silent = RUN.replace("REGCACHE-BENCH-SKIP p2p-cache-odp", "unrelated");
        let figures = Figures::parse(silent.lines()).unwrap();
        assert_eq!(
            figures.not_measured(CACHED_ODP).as_deref(),
            Some("no p2p-cache-odp figure")
        );
        let first_touch = Figures::parse(FIRST_TOUCH.lines()).unwrap();
        assert_eq!(first_touch.not_measured("first-touch-odp"), None);
        assert_eq!(
            first_touch
                .not_measured("first-touch-odp-prefetch")
                .as_deref(),
            Some("ibv_advise_mr answered EOPNOTSUPP")
        );
    }

    #[test]
    fn a_run_without_figures_is_an_error() {
        assert!(Figures::parse(["boot", "done"]).is_err());
        assert!(Figures::parse(["REGCACHE-BENCH raw-verbs latency_us x 1 1"]).is_err());
    }
}
