//! The measurement loop shared by every variant: a ping-pong series and a streaming series
//! per message size, timed on rank 0, with the received bytes checked after each size.

use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::paired::PairedRatio;
use crate::plan::{median, Figure, Metric, Plan, Variant, WARM_UP, WINDOW};

/// Seed of the bytes every message carries.
pub const PAYLOAD_SEED: u64 = 0x5eed_b0b5;

/// A pair of ranks that can move messages of a given size. Rank 0 times; both ranks run the
/// same calls in the same order.
pub trait Exchange {
    /// This process's rank, 0 or 1.
    fn rank(&self) -> usize;

    /// One ping-pong of `bytes`: rank 0 sends then receives, rank 1 receives then sends.
    ///
    /// # Errors
    /// A failed or timed-out transfer.
    fn ping_pong(&mut self, bytes: usize) -> Result<()>;

    /// One window: rank 0 streams [`WINDOW`] messages of `bytes`, rank 1 receives them all and
    /// answers with a short acknowledgement.
    ///
    /// # Errors
    /// A failed or timed-out transfer.
    fn window(&mut self, bytes: usize) -> Result<()>;

    /// Waits, untimed, for what the last repetition left in flight, so that it does not run
    /// on into the next variant's timed repetition.
    ///
    /// # Errors
    /// A failed or timed-out completion.
    fn settle(&mut self) -> Result<()> {
        Ok(())
    }

    /// Copies of the latest messages of `bytes` bytes this rank received (at least the last
    /// one), for checking after each series; every message carries a prefix of the payload.
    fn received(&self, bytes: usize) -> Vec<Vec<u8>>;
}

/// A variant under measurement, with what it measured so far at the current size.
struct Contender<'a> {
    variant: Variant,
    exchange: &'a mut dyn Exchange,
    samples: Vec<f64>,
}

/// Seed of the rounds' orders.
const ROUND_SEED: u64 = 0x0bde_5eed;

/// The order in which the `count` contenders run in `round`: a shuffle drawn from the round's
/// number, so the same on both ranks (they must run the same variant at the same time). Over
/// the rounds every contender runs first, last and right after every other one equally often
/// in expectation, so what one variant leaves behind (work in the kernel, evicted caches)
/// weighs on no other more than on the rest. A rotation would not do: it keeps each
/// contender's predecessor.
fn round_order(round: usize, count: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..count).collect();
    for last in (1..count).rev() {
        let draw = rdma_tests::splitmix64(ROUND_SEED ^ ((round * count + last) as u64));
        order.swap(last, (draw % (last as u64 + 1)) as usize);
    }
    order
}

/// Times `once` on every contender, in a new order each round ([`round_order`]),
/// `repetitions` rounds after [`WARM_UP`] untimed ones: interleaving puts every variant under
/// the same drift of an emulated machine's speed. Leaves each contender's samples in µs, in
/// round order.
fn interleaved(
    contenders: &mut [Contender<'_>],
    repetitions: usize,
    once: impl Fn(&mut dyn Exchange) -> Result<()>,
) -> Result<()> {
    for contender in contenders.iter_mut() {
        contender.samples.clear();
    }
    for round in 0..WARM_UP + repetitions {
        for index in round_order(round, contenders.len()) {
            let contender = &mut contenders[index];
            let start = Instant::now();
            let variant = contender.variant;
            once(&mut *contender.exchange).with_context(|| format!("{variant}"))?;
            let elapsed = start.elapsed();
            contender
                .exchange
                .settle()
                .with_context(|| format!("{variant}: settling"))?;
            if round >= WARM_UP {
                contender.samples.push(elapsed.as_secs_f64() * 1e6);
            }
        }
    }
    Ok(())
}

/// Every contender's ratio to raw verbs in the rounds just measured (samples in round order),
/// and every p2p variant's ratio to raw verbs copied out, the floor of its copied path.
fn paired_ratios(contenders: &[Contender<'_>], metric: Metric, bytes: usize) -> Vec<PairedRatio> {
    let samples_of = |variant| {
        contenders
            .iter()
            .find(|c| c.variant == variant)
            .map(|c| &c.samples[..])
    };
    let over = |baseline, variants: &dyn Fn(Variant) -> bool| -> Vec<PairedRatio> {
        let Some(baseline_samples) = samples_of(baseline) else {
            return Vec::new();
        };
        contenders
            .iter()
            .filter(|c| c.variant != baseline && variants(c.variant))
            .filter_map(|c| {
                let pair = (c.variant, baseline);
                PairedRatio::new(pair, metric, bytes, &c.samples, baseline_samples)
            })
            .collect()
    };
    let mut ratios = over(Variant::RawVerbs, &|_| true);
    ratios.extend(over(Variant::RawVerbsCopiedOut, &Variant::is_p2p));
    ratios
}

/// Fails unless every received buffer holds the payload.
fn check_received(contender: &Contender<'_>, bytes: usize, payload: &[u8]) -> Result<()> {
    let exchange = &*contender.exchange;
    for (index, received) in exchange.received(bytes).iter().enumerate() {
        if let Some(offset) = received.iter().zip(payload).position(|(r, p)| r != p) {
            bail!(
                "{}, rank {}: buffer {index} of a {bytes}-byte message differs from what was \
                 sent at offset {offset:#x}",
                contender.variant,
                exchange.rank()
            );
        }
    }
    Ok(())
}

/// Every size of `plan` through every exchange, interleaved; rank 0 prints a latency and a
/// bandwidth figure per variant and size, and every variant's paired ratio to raw verbs SEND
/// (the median of its per-round ratios, with that median's 95% interval), and every p2p
/// variant's to raw verbs copied out.
///
/// # Errors
/// A failed transfer, or received bytes that differ from the payload.
pub fn sweep(exchanges: Vec<(Variant, &mut dyn Exchange)>, rank: usize, plan: Plan) -> Result<()> {
    let payload = rdma_tests::pattern(plan.max_size(), PAYLOAD_SEED);
    let mut contenders: Vec<Contender<'_>> = exchanges
        .into_iter()
        .map(|(variant, exchange)| Contender {
            variant,
            exchange,
            samples: Vec::new(),
        })
        .collect();
    for &bytes in plan.sizes() {
        // Ping-pongs give the latency, windows the bandwidth.
        let series = [
            (Metric::LatencyMicros, plan.round_trips(bytes), true),
            (Metric::BandwidthMegabytes, plan.windows(bytes), false),
        ];
        for (metric, repetitions, ping_pong) in series {
            interleaved(&mut contenders, repetitions, |exchange| {
                if ping_pong {
                    exchange.ping_pong(bytes)
                } else {
                    exchange.window(bytes)
                }
            })
            .with_context(|| format!("{metric} of {bytes}-byte messages"))?;
            for contender in &contenders {
                check_received(contender, bytes, &payload[..bytes])?;
            }
            // Before the medians sort each contender's samples out of round order.
            let ratios = paired_ratios(&contenders, metric, bytes);
            for contender in &mut contenders {
                let median = median(&mut contender.samples).context("no repetitions")?;
                let value = if ping_pong {
                    median / 2.0
                } else {
                    // bytes per µs are MB/s.
                    (WINDOW * bytes) as f64 / median
                };
                let what = contender.variant.to_string();
                if rank == 0 {
                    let figure = Figure {
                        what: &what,
                        metric,
                        bytes,
                        value,
                        repetitions,
                    };
                    println!("{figure}");
                }
            }
            if rank == 0 {
                for ratio in ratios {
                    println!("{ratio}");
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contender_follows_every_other_about_equally_often() {
        let (count, rounds) = (5, 20_000);
        let mut follows = vec![vec![0usize; count]; count];
        for round in 0..rounds {
            let order = round_order(round, count);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..count).collect::<Vec<_>>(), "a permutation");
            assert_eq!(order, round_order(round, count), "the same on both ranks");
            for pair in order.windows(2) {
                follows[pair[1]][pair[0]] += 1;
            }
        }
        // Each of the count·(count−1) ordered pairs is adjacent in (count−1)/(count·(count−1))
        // of the rounds' count−1 adjacencies.
        let expected = rounds as f64 / count as f64;
        for (after, by) in follows.iter().enumerate() {
            for (before, &n) in by.iter().enumerate() {
                if after != before {
                    let share = n as f64 / expected;
                    assert!(
                        (0.9..1.1).contains(&share),
                        "{after} after {before}: {share}"
                    );
                }
            }
        }
    }
}
