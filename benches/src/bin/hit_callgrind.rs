//! The hit loops of the criterion benchmark, for instruction counts under callgrind, which are
//! deterministic where wall-clock time on a loaded machine is not:
//!
//! ```text
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='hit_callgrind::*' \
//!     target/release/hit_callgrind 100000 100000
//! callgrind_annotate --inclusive=yes callgrind.out.<pid> | grep hit_callgrind::
//! ```
//!
//! Arguments: region count and lookups per case (default 100,000 each). The inclusive cost of
//! each of the four functions below divided by the lookups is instructions per hit.

use std::process::ExitCode;

use regcache_benches::workload::HitFixture;

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
    regcache_random(&fixture, lookups);
    regcache_same(&fixture, lookups);
    ucx_random(&fixture, lookups);
    ucx_same(&fixture, lookups);
    fixture.assert_only_hits();
    println!("{regions} regions: {lookups} hits per case and cache");
    ExitCode::SUCCESS
}
