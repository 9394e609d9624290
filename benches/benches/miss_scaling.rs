//! Misses from 1, 2, 4 and 8 threads at once, and hits while another thread misses, over a
//! fake registrar that sleeps 100 µs per registration; prints the figures and the targets of
//! issue 10 with PASS or FAIL.
//!
//! `cargo bench -p regcache-benches --bench miss_scaling` (about 20 s). Hit times are thread
//! CPU time (see `regcache_benches::summary`); miss throughput is wall-clock time, since the
//! point is how much registration time overlaps. Without `--bench` (as `cargo test
//! --all-targets` runs it) every figure is taken over a few milliseconds and no verdict is
//! printed.

use std::time::Duration;

use regcache_benches::concurrency::{
    hits_beside_misses, miss_throughput, HitPattern, REGISTRATION_TIME,
};

const THREADS: [usize; 4] = [1, 2, 4, 8];
/// Throughput with 8 threads over 1 thread, at least.
const SCALING_TARGET: f64 = 5.0;
/// Hit latency beside misses over idle, at most (median and p99 each).
const HIT_TARGET: f64 = 1.2;

fn verdict(pass: bool) -> &'static str {
    if pass {
        "PASS"
    } else {
        "FAIL"
    }
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let (miss_time, hit_rounds, hit_time) = if full {
        (Duration::from_secs(2), 3, Duration::from_millis(700))
    } else {
        (Duration::from_millis(20), 1, Duration::from_millis(5))
    };
    println!(
        "miss scaling: disjoint one-page buffers, every request a miss, registration sleeps {} µs, {} ms per point",
        REGISTRATION_TIME.as_micros(),
        miss_time.as_millis()
    );
    println!("{:>8} {:>12} {:>12}", "threads", "misses/s", "x 1 thread");
    let mut single = None;
    let mut ratio = 0.0;
    for threads in THREADS {
        let throughput = miss_throughput(threads, miss_time);
        let base = *single.get_or_insert(throughput);
        ratio = throughput / base;
        println!("{threads:>8} {throughput:>12.0} {ratio:>12.2}");
    }
    println!(
        "\nhit latency, ns per hit (CPU time, samples of 1,000 hits), idle and while another thread misses; {hit_rounds} x {} ms each, alternating",
        hit_time.as_millis()
    );
    println!(
        "{:<22} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "case", "samples", "idle p50", "idle p99", "miss p50", "miss p99", "x p50", "x p99"
    );
    let mut worst = 0.0_f64;
    for (name, pattern) in [
        ("same region", HitPattern::Same),
        ("random of 1,000", HitPattern::Random),
    ] {
        let (idle, beside) = hits_beside_misses(pattern, hit_rounds, hit_time);
        let (idle50, idle99) = (idle.quantile(0.5), idle.quantile(0.99));
        let (miss50, miss99) = (beside.quantile(0.5), beside.quantile(0.99));
        let (x50, x99) = (miss50 / idle50, miss99 / idle99);
        worst = worst.max(x50).max(x99);
        println!(
            "{name:<22} {:>8} {idle50:>8.1} {idle99:>8.1} {miss50:>8.1} {miss99:>8.1} {x50:>8.2} {x99:>8.2}",
            idle.len().min(beside.len())
        );
    }
    if full {
        println!("\ntargets (issue 10):");
        println!(
            "    {} misses with 8 threads >= {SCALING_TARGET:.1}x 1 thread: {ratio:.2}x",
            verdict(ratio >= SCALING_TARGET)
        );
        println!(
            "    {} hits beside misses <= {HIT_TARGET:.1}x idle (median and p99, worst case): {worst:.2}x",
            verdict(worst <= HIT_TARGET)
        );
    }
}
