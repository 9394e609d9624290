//! The cost of one munmap of a registered 1 MiB buffer in each of the cache's modes: under
//! an ODP region (rxe's MMU interval notifier unmaps the pages from the region), under a
//! pinned region watched by regwatch (regwatch's notifier marks the watch dirty; the pinned
//! pages stay until deregistration), and, for reference, under a pinned region alone and
//! under none.
//!
//! Each repetition maps a fresh buffer per holder, registers it, WRITEs it once (so that an
//! ODP region has its pages mapped, as after any use), and times the munmap alone.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use regwatch::Monitor;

use crate::first_touch::{Registration, Rig};
use crate::plan::{median, Figure, Metric, SKIP_PREFIX, WARM_UP};

/// The buffer whose munmap is timed.
pub const BYTES: usize = 1 << 20;
const REPETITIONS: usize = 15;
const SEED: u64 = 0x0dd_f00d;

/// What holds the buffer when it is unmapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// No region: the munmap of plain memory.
    Unregistered,
    /// A pinned region, nothing watching it.
    Pinned,
    /// A pinned region whose range regwatch watches (the cache's pinned mode).
    PinnedWatched,
    /// An ODP region (the cache's ODP mode).
    Odp,
}

impl Holder {
    pub const ALL: [Self; 4] = [
        Self::Unregistered,
        Self::Pinned,
        Self::PinnedWatched,
        Self::Odp,
    ];

    /// The name of its figure lines.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unregistered => "no-mr",
            Self::Pinned => "pinned",
            Self::PinnedWatched => "pinned-regwatch",
            Self::Odp => "odp",
        }
    }

    fn registration(self) -> Option<Registration> {
        match self {
            Self::Unregistered => None,
            Self::Pinned | Self::PinnedWatched => Some(Registration::Pinned),
            Self::Odp => Some(Registration::Odp),
        }
    }
}

/// One munmap of a fresh buffer holding `contents` under `holder`, in µs; `monitor` is
/// regwatch's, present whenever `holder` is [`Holder::PinnedWatched`].
fn munmap_once(
    rig: &mut Rig,
    contents: &[u8],
    holder: Holder,
    monitor: Option<&Monitor>,
) -> Result<f64> {
    let map = Rig::fresh(contents)?;
    let Some(registration) = holder.registration() else {
        let start = Instant::now();
        drop(map);
        return Ok(start.elapsed().as_secs_f64() * 1e6);
    };
    let registered = rig
        .register(map, registration)?
        .context("a registration without prefetch returned none")?;
    rig.write(registered.mr.sge(0, contents.len())?)?;
    let (mr, map) = (registered.mr, registered.map);
    let cookie = mr.addr();
    let watch = match (holder, monitor) {
        (Holder::PinnedWatched, Some(monitor)) => Some((
            monitor,
            monitor.watch(map.as_ptr() as usize, map.len(), cookie)?,
        )),
        (Holder::PinnedWatched, None) => bail!("no regwatch monitor to watch with"),
        _ => None,
    };
    let start = Instant::now();
    drop(map);
    let elapsed = start.elapsed().as_secs_f64() * 1e6;
    if let Some((monitor, watch)) = watch {
        if monitor.is_valid(&watch) {
            bail!("regwatch did not see the munmap of a watched buffer");
        }
        monitor.drain(drop)?;
        monitor.unwatch(watch, cookie)?;
    }
    drop(mr);
    Ok(elapsed)
}

/// Times the munmap under every holder, interleaved repetition by repetition (each round
/// starting one further on); `with_odp` says whether the ODP region is measured (the
/// cache's self-test trusts the device). A holder that cannot run is reported as a skip.
///
/// # Errors
/// When a transfer or a regwatch call fails, or regwatch misses a munmap.
pub fn run(rig: &mut Rig, with_odp: bool) -> Result<()> {
    let monitor = Monitor::open()
        .map_err(|error| {
            println!(
                "{SKIP_PREFIX} munmap-{} /dev/regwatch: {error}",
                Holder::PinnedWatched.name()
            );
        })
        .ok();
    if !with_odp {
        println!(
            "{SKIP_PREFIX} munmap-{} the cache's ODP self-test does not trust this device",
            Holder::Odp.name()
        );
    }
    let holders: Vec<Holder> = Holder::ALL
        .into_iter()
        .filter(|&holder| holder != Holder::PinnedWatched || monitor.is_some())
        .filter(|&holder| holder != Holder::Odp || with_odp)
        .collect();
    println!(
        "munmap: one munmap of a registered {} KiB buffer under {}",
        BYTES >> 10,
        holders
            .iter()
            .map(|h| h.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let contents = rdma_tests::pattern(BYTES, SEED);
    let mut samples = vec![Vec::new(); holders.len()];
    let mut order: Vec<usize> = (0..holders.len()).collect();
    for round in 0..WARM_UP + REPETITIONS {
        order.rotate_left(1);
        for &index in &order {
            let holder = holders[index];
            let micros = munmap_once(rig, &contents, holder, monitor.as_ref())
                .with_context(|| format!("munmap under {}", holder.name()))?;
            if round >= WARM_UP {
                samples[index].push(micros);
            }
        }
    }
    for (holder, series) in holders.into_iter().zip(&mut samples) {
        let figure = Figure {
            what: holder.name(),
            metric: Metric::MunmapMicros,
            bytes: BYTES,
            value: median(series).context("no repetitions")?,
            repetitions: series.len(),
        };
        println!("{figure}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_modes_hold_their_registration() {
        assert_eq!(Holder::Unregistered.registration(), None);
        assert_eq!(
            Holder::PinnedWatched.registration(),
            Some(Registration::Pinned)
        );
        assert_eq!(Holder::Odp.registration(), Some(Registration::Odp));
        let names: Vec<&str> = Holder::ALL.iter().map(|h| h.name()).collect();
        assert_eq!(names, ["no-mr", "pinned", "pinned-regwatch", "odp"]);
    }
}
