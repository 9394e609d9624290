//! perftest's latency tools between the same two devices, as the reference a user would run.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use verbs::{Context, FIRST_PORT};

use crate::driver::{finish, Place};
use crate::plan::{Figure, Metric, Plan};

/// The tools run, in order. `ib_write_lat` reports half a ping-pong of RDMA WRITEs;
/// `ib_read_lat` the round trip of one RDMA READ.
pub const TOOLS: [&str; 2] = ["ib_write_lat", "ib_read_lat"];
/// First TCP port perftest's server listens on; every run takes the next one.
const FIRST_TCP_PORT: u16 = 18_700;
/// Attempts of a client whose server may not be listening yet.
const CONNECT_ATTEMPTS: u32 = 10;
const CONNECT_PAUSE: Duration = Duration::from_millis(500);
/// The largest message perftest's latency tools accept (`-s`), 8 MiB.
const PERFTEST_MAX_BYTES: usize = 1 << 23;
/// perftest refuses fewer iterations than this.
const PERFTEST_MIN_ITERATIONS: usize = 5;
/// perftest runs after the interleaved variants, as a reference, and needs no more than the
/// median of this many (the variants' 1,000 rounds are for their paired ratios).
const PERFTEST_MAX_ITERATIONS: usize = 100;
/// perftest's `t_typical` column: the median.
const MEDIAN_COLUMN: usize = 4;

fn gid_index(place: &Place) -> Result<u8> {
    let node = place.node;
    let ctx = Context::open(node.device)?;
    let entry = ctx
        .roce_v2_gid(FIRST_PORT, Some(node.addr))?
        .with_context(|| format!("{} has no RoCE v2 GID for {}", node.device, node.addr))?;
    Ok(entry.index)
}

/// `t_typical` of the result row for `bytes` in a client's output.
fn parse_median(output: &str, bytes: usize) -> Option<f64> {
    output.lines().find_map(|line| {
        let columns: Vec<&str> = line.split_whitespace().collect();
        let row_bytes: usize = columns.first()?.parse().ok()?;
        columns.get(1)?.parse::<usize>().ok()?;
        if row_bytes != bytes {
            return None;
        }
        columns
            .get(MEDIAN_COLUMN)?
            .parse()
            .ok()
            .filter(|median: &f64| median.is_finite())
    })
}

/// One size: the server on the second place, the client on the first, each sending from its
/// GID in `gids`; the client's median, or `None` when it printed none that is finite.
fn measure(
    tool: &str,
    bytes: usize,
    iterations: usize,
    port: u16,
    places: &[Place; 2],
    gids: [u8; 2],
) -> Result<Option<f64>> {
    let [client_place, server_place] = places;
    let common = |place: &Place, gid: u8| -> Vec<String> {
        vec![
            "-d".into(),
            place.node.device.into(),
            "-i".into(),
            FIRST_PORT.to_string(),
            "-x".into(),
            gid.to_string(),
            "-s".into(),
            bytes.to_string(),
            "-n".into(),
            iterations.to_string(),
            "-F".into(),
            "-p".into(),
            port.to_string(),
        ]
    };
    let label = format!("{tool} server {bytes} B");
    // The server's report repeats the client's; its errors still show on stderr.
    let server = server_place
        .command(Path::new(tool), &common(server_place, gids[1]))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {label}"))?;
    let mut client_args = common(client_place, gids[0]);
    client_args.push(server_place.node.addr.to_string());
    let mut last_output = String::new();
    for _ in 0..CONNECT_ATTEMPTS {
        std::thread::sleep(CONNECT_PAUSE);
        let output = client_place
            .command(Path::new(tool), &client_args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {tool}"))?;
        last_output = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if output.status.success() {
            finish(server, Vec::new(), &label)?;
            let median = parse_median(&last_output, bytes);
            if median.is_none() {
                println!(
                    "p2p-bench: {tool}: no finite median for {bytes} bytes in:\n{last_output}"
                );
            }
            return Ok(median);
        }
    }
    let _ = Command::new("kill").arg(server.id().to_string()).status();
    let _ = finish(server, Vec::new(), &label);
    bail!("{tool} client never succeeded; last output:\n{last_output}")
}

/// Every size of `plan` that perftest accepts, printed as figures named after the tool; a
/// size without a finite result is reported and left out.
///
/// # Errors
/// When a run fails.
pub fn run(tool: &str, plan: Plan, places: &[Place; 2]) -> Result<()> {
    let gids = [gid_index(&places[0])?, gid_index(&places[1])?];
    for (port, &bytes) in (FIRST_TCP_PORT..).zip(plan.sizes()) {
        if bytes > PERFTEST_MAX_BYTES {
            println!("p2p-bench: {tool} takes at most {PERFTEST_MAX_BYTES} bytes; {bytes} skipped");
            continue;
        }
        let iterations = plan
            .round_trips(bytes)
            .clamp(PERFTEST_MIN_ITERATIONS, PERFTEST_MAX_ITERATIONS);
        let Some(median) = measure(tool, bytes, iterations, port, places, gids)? else {
            continue;
        };
        let figure = Figure {
            what: tool,
            metric: Metric::LatencyMicros,
            bytes,
            value: median,
            repetitions: iterations,
        };
        println!("{figure}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT_OUTPUT: &str = "\
---------------------------------------------------------------------------------------
 #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]    t_stdev[usec]   99% percentile[usec]   99.9% percentile[usec] 
 65536   100          210.35         1200.11      250.50             260.00         30.1           900.00                  1200.11   
---------------------------------------------------------------------------------------
";

    #[test]
    fn the_median_is_the_t_typical_column_of_the_matching_row() {
        assert_eq!(parse_median(CLIENT_OUTPUT, 65536), Some(250.5));
        assert_eq!(parse_median(CLIENT_OUTPUT, 8), None);
        let broken = CLIENT_OUTPUT.replace("250.50", "inf");
        assert_eq!(
            parse_median(&broken, 65536),
            None,
            "perftest sometimes prints inf"
        );
    }
}
