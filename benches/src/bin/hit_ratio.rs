//! Random hits of regcache against UCX's, interleaved: on a machine whose load changes from
//! second to second (other engineers' VM guests), criterion's ratio compares two benchmarks
//! measured seconds apart and moved between 0.55 and 1.92 in four runs of the same code. Here
//! each round times one pass of regcache over the whole random request stream and then one of
//! UCX (thread CPU time), so both sides of a round see the same load, and the median of the
//! per-round ratios is printed with its spread.
//!
//! `cargo run --release -p regcache-benches --bin hit_ratio -- [REGIONS [ROUNDS]]` (defaults
//! 100,000 regions, 41 rounds). Decides designs; the criterion benchmark stays the reference.

use std::process::ExitCode;

use regcache_benches::summary::thread_cpu_time;
use regcache_benches::workload::{HitFixture, STREAM};

fn main() -> ExitCode {
    let parsed: Result<Vec<usize>, _> = std::env::args().skip(1).map(|arg| arg.parse()).collect();
    let (regions, rounds) = match parsed.as_deref() {
        Ok([]) => (100_000, 41),
        Ok([regions]) => (*regions, 41),
        Ok([regions, rounds]) if *rounds > 0 => (*regions, *rounds),
        _ => {
            eprintln!("usage: hit_ratio [REGIONS [ROUNDS]] (ROUNDS > 0)");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("hit_ratio: registering {regions} regions in both caches");
    let fixture = HitFixture::new(regions);
    let lookups = STREAM as u64;
    let per_hit = |run: &dyn Fn()| {
        let started = thread_cpu_time();
        run();
        (thread_cpu_time() - started).as_nanos() as f64 / lookups as f64
    };
    // One uncounted pass each, so both start with what a long run keeps in the caches.
    fixture.ours_hits(lookups, true);
    fixture.ucx_hits(lookups, true);
    let mut samples: Vec<(f64, f64)> = (0..rounds)
        .map(|round| {
            let ours = per_hit(&|| fixture.ours_hits(lookups, true));
            let ucx = per_hit(&|| fixture.ucx_hits(lookups, true));
            if round % 10 == 9 {
                eprintln!("hit_ratio: {} of {rounds} rounds", round + 1);
            }
            (ours, ucx)
        })
        .collect();
    fixture.assert_only_hits();
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let mut ratios: Vec<f64> = samples.iter().map(|(ours, ucx)| ours / ucx).collect();
    let (mut ours, mut ucx): (Vec<f64>, Vec<f64>) = samples.drain(..).unzip();
    let ratio = median(&mut ratios);
    println!(
        "random hit over {regions} regions, {rounds} interleaved rounds of {lookups} lookups: \
         regcache {:.1} ns, UCX {:.1} ns (medians), ours/UCX {ratio:.2} (median of the rounds; \
         quartiles {:.2}-{:.2})",
        median(&mut ours),
        median(&mut ucx),
        ratios[ratios.len() / 4],
        ratios[ratios.len() * 3 / 4],
    );
    ExitCode::SUCCESS
}
