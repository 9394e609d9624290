//! regcache's `cached_reg` against UCX's `ucs_rcache_get`/`ucs_rcache_region_put`, same run,
//! same requests; ends with the side-by-side table of medians and the ratio ours/UCX.
//!
//! `cargo bench -p regcache-benches` (defaults: 1 s warm-up, 3 s measurement per benchmark;
//! criterion's command-line options override them). Times are thread CPU time, see
//! `regcache_benches::summary`. Without `--bench` (as `cargo test
//! --all-targets` runs it) each benchmark runs once, over at most 1,000 regions.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use regcache_benches::summary::{Recorder, Side};
use regcache_benches::workload::{HitFixture, MissFixture};

/// Region counts of the hit benchmarks.
const REGION_COUNTS: [usize; 3] = [1, 1_000, 100_000];
/// Region limit of the miss benchmark (its working set is twice as large).
const MISS_CAPACITY: usize = 1_000;
const SAMPLE_SIZE: usize = 100;

fn hit_benchmarks(criterion: &mut Criterion, recorder: &Recorder, region_counts: &[usize]) {
    let mut group = criterion.benchmark_group("hit");
    for &regions in region_counts {
        let fixture = HitFixture::new(regions);
        for (case, random) in [("hit, random region", true), ("hit, same region", false)] {
            for side in Side::BOTH {
                let id = BenchmarkId::new(
                    format!("{}/{}", side.name(), if random { "random" } else { "same" }),
                    regions,
                );
                group.bench_function(id, |bencher| {
                    bencher.iter_custom(|iterations| {
                        recorder.time((case, regions, side), iterations, |iterations| match side {
                            Side::Ours => fixture.ours_hits(iterations, random),
                            Side::Ucx => fixture.ucx_hits(iterations, random),
                        })
                    });
                });
            }
        }
        fixture.assert_only_hits();
    }
    group.finish();
}

fn miss_benchmarks(criterion: &mut Criterion, recorder: &Recorder) {
    let mut group = criterion.benchmark_group("miss");
    let fixture = MissFixture::new(MISS_CAPACITY);
    let mut cursor = 0;
    let mut requests = [0_u64; 2];
    for (side, requests) in Side::BOTH.into_iter().zip(&mut requests) {
        let id = BenchmarkId::new(format!("{}/evicting", side.name()), MISS_CAPACITY);
        group.bench_function(id, |bencher| {
            bencher.iter_custom(|iterations| {
                *requests += iterations;
                recorder.time(
                    ("miss (evicting)", MISS_CAPACITY, side),
                    iterations,
                    |iterations| match side {
                        Side::Ours => fixture.ours_misses(iterations, &mut cursor),
                        Side::Ucx => fixture.ucx_misses(iterations, &mut cursor),
                    },
                )
            });
        });
    }
    group.finish();
    let (ours, ucx) = fixture.misses();
    assert_eq!(
        ours, requests[0],
        "every regcache request of the miss benchmark must miss"
    );
    // UCX 1.13 lets its region count exceed `max_regions` (it evicts lazily), so part of its
    // requests hit: say how many registered, so its time is read for what it is.
    println!(
        "miss (evicting): UCX registered on {ucx} of {} requests ({:.1}%)",
        requests[1],
        100.0 * ucx as f64 / requests[1].max(1) as f64
    );
}

fn main() {
    let benchmarking = std::env::args().any(|arg| arg == "--bench");
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(SAMPLE_SIZE)
        .configure_from_args();
    let recorder = Recorder::default();
    let region_counts: Vec<usize> = REGION_COUNTS
        .into_iter()
        .filter(|&regions| benchmarking || regions <= 1_000)
        .collect();
    hit_benchmarks(&mut criterion, &recorder, &region_counts);
    miss_benchmarks(&mut criterion, &recorder);
    criterion.final_summary();
    if benchmarking {
        println!("\n{}", recorder.table(SAMPLE_SIZE));
    }
}
