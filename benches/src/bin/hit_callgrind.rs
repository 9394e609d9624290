//! The hit loops of the criterion benchmark, for instruction counts and simulated cache misses
//! under callgrind, which are deterministic where wall-clock time on a loaded machine is not:
//!
//! ```text
//! valgrind --tool=callgrind --cache-sim=yes --instr-atstart=no --collect-atstart=no \
//!     --toggle-collect='hit_callgrind::regcache_*' --toggle-collect='hit_callgrind::ucx_*' \
//!     target/release/hit_callgrind 100000 100000
//! callgrind_annotate --inclusive=yes callgrind.out.<pid> | grep hit_callgrind::
//! ```
//!
//! Arguments: region count and lookups per case (default 100,000 each). The inclusive cost of
//! each of the four measured functions below divided by the lookups is instructions (or
//! simulated misses) per hit. Callgrind instruments only the lookups (`callgrind_shim.c`):
//! building the fixture is not measured and would take most of the run. Each measured loop
//! follows an uncollected one over the same requests, so the simulated caches hold
//! what a long run of such hits keeps in them, as in the criterion benchmark.

use std::process::ExitCode;

use regcache_benches::workload::HitFixture;

extern "C" {
    /// `callgrind_shim.c`: starts (non-zero) or stops callgrind's instrumentation.
    fn shim_callgrind_instrument(on: std::ffi::c_int);
}

fn instrument(on: bool) {
    // SAFETY: the shim takes a plain integer and issues a client request, a no-op outside
    // valgrind.
    unsafe { shim_callgrind_instrument(on.into()) }
}

#[inline(never)]
fn regcache_random(fixture: &HitFixture, lookups: u64) {
    fixture.ours_hits(lookups, true);
}

#[inline(never)]
fn regcache_same(fixture: &HitFixture, lookups: u64) {
    fixture.ours_hits(lookups, false);
}

#[inline(never)]
fn ucx_random(fixture: &HitFixture, lookups: u64) {
    fixture.ucx_hits(lookups, true);
}

#[inline(never)]
fn ucx_same(fixture: &HitFixture, lookups: u64) {
    fixture.ucx_hits(lookups, false);
}

fn main() -> ExitCode {
    let parsed: Result<Vec<u64>, _> = std::env::args().skip(1).map(|arg| arg.parse()).collect();
    let (regions, lookups) = match parsed.as_deref() {
        Ok([]) => (100_000, 100_000),
        Ok([regions]) => (*regions, 100_000),
        Ok([regions, lookups]) => (*regions, *lookups),
        _ => {
            eprintln!("usage: hit_callgrind [REGIONS [LOOKUPS]]");
            return ExitCode::FAILURE;
        }
    };
    let fixture = HitFixture::new(regions as usize);
    // Each measured function, and the same loop called outside it (not collected).
    type Loop = fn(&HitFixture, u64);
    let cases: [(Loop, Loop); 4] = [
        (regcache_random, |fixture, lookups| {
            fixture.ours_hits(lookups, true)
        }),
        (regcache_same, |fixture, lookups| {
            fixture.ours_hits(lookups, false)
        }),
        (ucx_random, |fixture, lookups| {
            fixture.ucx_hits(lookups, true)
        }),
        (ucx_same, |fixture, lookups| {
            fixture.ucx_hits(lookups, false)
        }),
    ];
    for (measured, warm_up) in cases {
        instrument(true);
        warm_up(&fixture, lookups);
        measured(&fixture, lookups);
        instrument(false);
    }
    fixture.assert_only_hits();
    println!("{regions} regions: {lookups} hits per case and cache");
    ExitCode::SUCCESS
}
