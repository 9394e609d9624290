//! Turns the figure lines of `p2p-bench` (benches/vm) into markdown tables with ratios to raw
//! verbs, and a log-log plot with gnuplot.

use crate::sh::{self, cmd};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

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
/// Columns, in order: name as printed by p2p-bench, heading.
const COLUMNS: [(&str, &str); 7] = [
    (RAW, "raw verbs SEND, registered once"),
    (RAW_READ, "raw verbs READ rendezvous, registered once"),
    (CACHED, "p2p + cache (pinned)"),
    ("p2p-cache-odp", "p2p + cache (ODP)"),
    (ALWAYS_REGISTER, "p2p, always-register"),
    ("ib_write_lat", "perftest ib_write_lat"),
    ("ib_read_lat", "perftest ib_read_lat (a READ round trip)"),
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
}

impl Figures {
    /// Collects the figure and skip lines anywhere in `lines` (they may carry a label).
    pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<Self> {
        let mut figures = Self::default();
        for line in lines {
            if let Some(at) = line.find(SKIP_PREFIX) {
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

    /// The whole report in markdown: both tables, the bound, and the variants that were skipped.
    pub fn markdown(&self, title: &str) -> String {
        let mut out = format!("# {title}\n\n");
        out.push_str("One-way latency (half a ping-pong; median), ratio to raw verbs:\n\n");
        out.push_str(&self.table(LATENCY, "µs"));
        out.push_str(
            "\nStreaming bandwidth (windows of 8 messages; median), ratio to raw verbs:\n\n",
        );
        out.push_str(&self.table(BANDWIDTH, "MB/s"));
        let _ = write!(out, "\n{}", self.verdict());
        for (what, why) in &self.skipped {
            let _ = writeln!(out, "\nnot measured: {what}: {why}");
        }
        out
    }

    /// Log-log plots of latency and bandwidth against size, drawn by gnuplot into
    /// `<stem>-latency.png` and `<stem>-bandwidth.png`; returns their paths.
    pub fn plot(&self, dir: &Path, stem: &str, title: &str) -> Result<Vec<PathBuf>> {
        let mut pngs = Vec::new();
        for (metric, label, file) in [
            (LATENCY, "one-way latency (µs)", "latency"),
            (BANDWIDTH, "bandwidth (MB/s)", "bandwidth"),
        ] {
            let mut plots = Vec::new();
            for (what, heading) in COLUMNS {
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
                 set title '{title}'\nset logscale xy\nset grid\nset xrange [4:32e6]\n\
                 set xlabel 'message size (bytes)'\nset ylabel '{label}'\n\
                 set key left top\nplot {}\n",
                png.display(),
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

    #[test]
    fn a_run_without_figures_is_an_error() {
        assert!(Figures::parse(["boot", "done"]).is_err());
        assert!(Figures::parse(["REGCACHE-BENCH raw-verbs latency_us x 1 1"]).is_err());
    }
}
