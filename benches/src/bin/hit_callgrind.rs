//! The hit loops of the criterion benchmark, for instruction counts under callgrind:
//!
//! ```text
//! valgrind --tool=callgrind --collect-atstart=no \
//!     --toggle-collect='*HitFixture*ours_hits*' --toggle-collect='*HitFixture*ucx_hits*' \
//!     target/release/hit_callgrind 100000 100000
//! callgrind_annotate --inclusive=yes callgrind.out.<pid> | grep _hits
//! ```
//!
//! Arguments: region count, lookups per case (default 100,000 and 100,000). Each case runs
//! random-region then same-region lookups, so the inclusive cost of `ours_hits` and `ucx_hits`
//! divided by twice the lookups is instructions per hit (averaged over both cases).

use std::process::ExitCode;

use regcache_benches::workload::HitFixture;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).map(|arg| arg.parse::<u64>());
    let (Some(Ok(regions)), Some(Ok(lookups))) = (
        args.next().or(Some(Ok(100_000))),
        args.next().or(Some(Ok(100_000))),
    ) else {
        eprintln!("usage: hit_callgrind [REGIONS] [LOOKUPS]");
        return ExitCode::FAILURE;
    };
    let fixture = HitFixture::new(regions as usize);
    for random in [true, false] {
        fixture.ours_hits(lookups, random);
        fixture.ucx_hits(lookups, random);
    }
    fixture.assert_only_hits();
    println!("{regions} regions: {lookups} random and {lookups} same-region hits per cache");
    ExitCode::SUCCESS
}
