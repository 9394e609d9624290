//! Rank, size and bootstrap address from the environment of common launchers.

use std::time::Duration;

use crate::error::{Error, Result};

/// Variables naming this process's rank, most explicit first: our own, then PMI (MPICH,
/// Hydra), Open MPI, PMIx, Slurm.
const RANK_VARS: [&str; 5] = [
    "P2P_RANK",
    "PMI_RANK",
    "OMPI_COMM_WORLD_RANK",
    "PMIX_RANK",
    "SLURM_PROCID",
];
/// Variables naming the number of ranks, in the same order (PMIx has no size variable).
const SIZE_VARS: [&str; 4] = [
    "P2P_SIZE",
    "PMI_SIZE",
    "OMPI_COMM_WORLD_SIZE",
    "SLURM_NTASKS",
];
const ROOT_VAR: &str = "P2P_ROOT_ADDR";
const DEVICE_VAR: &str = "P2P_DEVICE";
const EAGER_VAR: &str = "P2P_EAGER_THRESHOLD";
const RENDEZVOUS_VAR: &str = "P2P_RENDEZVOUS_THRESHOLD";
const TIMEOUT_VAR: &str = "P2P_TIMEOUT_MS";

/// Default eager threshold: messages shorter than this travel through bounce buffers.
pub const DEFAULT_EAGER_THRESHOLD: usize = 8 * 1024;
/// Default bound on every wait (bootstrap, send, receive).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest eager threshold accepted: bounce buffers are pre-allocated per peer.
const MAX_EAGER_THRESHOLD: usize = 1 << 20;
/// Default rendezvous threshold: messages from the eager threshold up to this length go in one
/// SEND straight from the sender's cached registration. Each receive bounce buffer holds that
/// much, 32 of them per peer (8 MiB per peer by default).
pub const DEFAULT_RENDEZVOUS_THRESHOLD: usize = 256 * 1024;
/// The largest rendezvous threshold accepted (128 MiB of receive buffers per peer).
const MAX_RENDEZVOUS_THRESHOLD: usize = 4 << 20;

/// How this rank joins the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchConfig {
    /// This process's rank, in `0..size`.
    pub rank: usize,
    /// Number of ranks.
    pub size: usize,
    /// `host:port` where rank 0 listens for the bootstrap and the others connect.
    pub root_addr: String,
    /// RDMA device to use; `None`: the first one listed.
    pub device: Option<String>,
    /// Messages shorter than this many bytes are copied through bounce buffers.
    pub eager_threshold: usize,
    /// Messages shorter than this many bytes, and not shorter than the eager threshold, go in
    /// one SEND from the sender's cached registration into a receive bounce buffer (zero-copy
    /// eager); messages of this length and more go by rendezvous. Equal to the eager threshold:
    /// no zero-copy eager.
    pub rendezvous_threshold: usize,
    /// Bound on every wait; an operation that takes longer fails with [`Error::Timeout`].
    pub timeout: Duration,
}

impl LaunchConfig {
    /// The configuration from the process environment: rank from `P2P_RANK`, `PMI_RANK`,
    /// `OMPI_COMM_WORLD_RANK`, `PMIX_RANK` or `SLURM_PROCID` (first set wins); size from
    /// `P2P_SIZE`, `PMI_SIZE`, `OMPI_COMM_WORLD_SIZE` or `SLURM_NTASKS`; root address from
    /// `P2P_ROOT_ADDR` (`host:port`, required when size > 1); device from `P2P_DEVICE`;
    /// `P2P_EAGER_THRESHOLD` (bytes, default 8192), `P2P_RENDEZVOUS_THRESHOLD` (bytes, default
    /// 262144 or the eager threshold if that is larger; at least the eager threshold, at most
    /// 4 MiB) and `P2P_TIMEOUT_MS` (default 60000).
    ///
    /// # Errors
    /// [`Error::Config`] naming the first missing or malformed variable.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|var| std::env::var(var).ok())
    }

    /// [`LaunchConfig::from_env`] reading variables through `lookup`.
    ///
    /// # Errors
    /// As [`LaunchConfig::from_env`].
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let first_set = |vars: &[&'static str]| {
            vars.iter()
                .find_map(|&var| lookup(var).map(|value| (var, value)))
        };
        let (rank_var, rank_text) = first_set(&RANK_VARS).ok_or(Error::Config {
            var: "P2P_RANK|PMI_RANK|OMPI_COMM_WORLD_RANK|PMIX_RANK|SLURM_PROCID",
            value: String::new(),
            reason: "no launcher variable names this process's rank",
        })?;
        let rank = parse_number(rank_var, &rank_text)?;
        let (size_var, size_text) = first_set(&SIZE_VARS).ok_or(Error::Config {
            var: "P2P_SIZE|PMI_SIZE|OMPI_COMM_WORLD_SIZE|SLURM_NTASKS",
            value: String::new(),
            reason: "no launcher variable names the number of ranks",
        })?;
        let size = parse_number(size_var, &size_text)?;
        if size == 0 || rank >= size {
            return Err(Error::Config {
                var: rank_var,
                value: rank_text,
                reason: "the rank must lie below the number of ranks",
            });
        }
        let root_addr = match lookup(ROOT_VAR) {
            Some(addr)
                if addr.rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty() && port.parse::<u16>().is_ok()
                }) =>
            {
                addr
            }
            Some(addr) => {
                return Err(Error::Config {
                    var: ROOT_VAR,
                    value: addr,
                    reason: "expected host:port",
                })
            }
            None if size == 1 => String::new(),
            None => {
                return Err(Error::Config {
                    var: ROOT_VAR,
                    value: String::new(),
                    reason: "required with more than one rank: where rank 0 listens",
                })
            }
        };
        let eager_threshold = match lookup(EAGER_VAR) {
            Some(text) => match parse_number(EAGER_VAR, &text)? {
                threshold @ 1..=MAX_EAGER_THRESHOLD => threshold,
                _ => {
                    return Err(Error::Config {
                        var: EAGER_VAR,
                        value: text,
                        reason: "expected 1 to 1048576 bytes",
                    })
                }
            },
            None => DEFAULT_EAGER_THRESHOLD,
        };
        let rendezvous_threshold = match lookup(RENDEZVOUS_VAR) {
            Some(text) => match parse_number(RENDEZVOUS_VAR, &text)? {
                threshold if (eager_threshold..=MAX_RENDEZVOUS_THRESHOLD).contains(&threshold) => {
                    threshold
                }
                _ => {
                    return Err(Error::Config {
                        var: RENDEZVOUS_VAR,
                        value: text,
                        reason: "expected the eager threshold to 4194304 bytes",
                    })
                }
            },
            None => DEFAULT_RENDEZVOUS_THRESHOLD.max(eager_threshold),
        };
        let timeout = match lookup(TIMEOUT_VAR) {
            Some(text) => Duration::from_millis(parse_number(TIMEOUT_VAR, &text)? as u64),
            None => DEFAULT_TIMEOUT,
        };
        Ok(Self {
            rank,
            size,
            root_addr,
            device: lookup(DEVICE_VAR).filter(|name| !name.is_empty()),
            eager_threshold,
            rendezvous_threshold,
            timeout,
        })
    }
}

fn parse_number(var: &'static str, text: &str) -> Result<usize> {
    text.trim().parse().map_err(|_| Error::Config {
        var,
        value: text.to_owned(),
        reason: "expected a non-negative decimal number",
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<LaunchConfig> {
        let env: HashMap<String, String> = vars
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        LaunchConfig::from_lookup(|var| env.get(var).cloned())
    }

    fn refused_var(vars: &[(&str, &str)]) -> &'static str {
        match parse(vars) {
            Err(Error::Config { var, .. }) => var,
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }

    #[test]
    fn explicit_variables_give_the_whole_configuration() {
        let config = parse(&[
            ("P2P_RANK", "2"),
            ("P2P_SIZE", "4"),
            ("P2P_ROOT_ADDR", "10.77.0.1:4711"),
            ("P2P_DEVICE", "rxe1"),
            ("P2P_EAGER_THRESHOLD", "4096"),
            ("P2P_RENDEZVOUS_THRESHOLD", "65536"),
            ("P2P_TIMEOUT_MS", "1500"),
        ])
        .unwrap();
        assert_eq!(
            config,
            LaunchConfig {
                rank: 2,
                size: 4,
                root_addr: "10.77.0.1:4711".into(),
                device: Some("rxe1".into()),
                eager_threshold: 4096,
                rendezvous_threshold: 65536,
                timeout: Duration::from_millis(1500),
            }
        );
    }

    #[test]
    fn each_launcher_is_recognised_with_defaults_for_the_rest() {
        let launchers = [
            [("PMI_RANK", "1"), ("PMI_SIZE", "3")],
            [("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "3")],
            [("PMIX_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "3")],
            [("SLURM_PROCID", "1"), ("SLURM_NTASKS", "3")],
        ];
        for [rank, size] in launchers {
            let config = parse(&[rank, size, ("P2P_ROOT_ADDR", "node0:5000")]).unwrap();
            assert_eq!((config.rank, config.size), (1, 3), "{rank:?} {size:?}");
            assert_eq!(config.device, None);
            assert_eq!(config.eager_threshold, DEFAULT_EAGER_THRESHOLD);
            assert_eq!(config.rendezvous_threshold, DEFAULT_RENDEZVOUS_THRESHOLD);
            assert_eq!(config.timeout, DEFAULT_TIMEOUT);
        }
    }

    #[test]
    fn the_default_rendezvous_threshold_follows_a_larger_eager_threshold() {
        let config = parse(&[
            ("P2P_RANK", "0"),
            ("P2P_SIZE", "1"),
            ("P2P_EAGER_THRESHOLD", "1048576"),
        ])
        .unwrap();
        assert_eq!(config.rendezvous_threshold, 1 << 20);
    }

    #[test]
    fn explicit_rank_wins_over_the_launchers() {
        let config = parse(&[
            ("SLURM_PROCID", "3"),
            ("P2P_RANK", "0"),
            ("SLURM_NTASKS", "4"),
            ("P2P_ROOT_ADDR", "h:1"),
        ])
        .unwrap();
        assert_eq!(config.rank, 0);
    }

    #[test]
    fn a_single_rank_needs_no_root_address() {
        let config = parse(&[("P2P_RANK", "0"), ("P2P_SIZE", "1")]).unwrap();
        assert_eq!(config.root_addr, "");
    }

    #[test]
    fn bad_values_name_their_variable() {
        assert!(refused_var(&[("P2P_SIZE", "2")]).contains("P2P_RANK"));
        assert!(refused_var(&[("P2P_RANK", "0")]).contains("P2P_SIZE"));
        assert_eq!(
            refused_var(&[("PMI_RANK", "x"), ("PMI_SIZE", "2")]),
            "PMI_RANK"
        );
        assert_eq!(
            refused_var(&[
                ("PMI_RANK", "2"),
                ("PMI_SIZE", "2"),
                ("P2P_ROOT_ADDR", "h:1")
            ]),
            "PMI_RANK"
        );
        assert_eq!(
            refused_var(&[("PMI_RANK", "0"), ("PMI_SIZE", "2")]),
            "P2P_ROOT_ADDR"
        );
        let base = [("PMI_RANK", "0"), ("PMI_SIZE", "2")];
        for bad_root in ["nohost", ":80", "h:99999"] {
            let vars = [base[0], base[1], ("P2P_ROOT_ADDR", bad_root)];
            assert_eq!(refused_var(&vars), "P2P_ROOT_ADDR", "{bad_root}");
        }
        let vars = [
            base[0],
            base[1],
            ("P2P_ROOT_ADDR", "h:1"),
            ("P2P_EAGER_THRESHOLD", "0"),
        ];
        assert_eq!(refused_var(&vars), "P2P_EAGER_THRESHOLD");
        for bad_rendezvous in ["4095", "4194305"] {
            let vars = [
                base[0],
                base[1],
                ("P2P_ROOT_ADDR", "h:1"),
                ("P2P_EAGER_THRESHOLD", "4096"),
                ("P2P_RENDEZVOUS_THRESHOLD", bad_rendezvous),
            ];
            assert_eq!(refused_var(&vars), "P2P_RENDEZVOUS_THRESHOLD");
        }
        let vars = [
            base[0],
            base[1],
            ("P2P_ROOT_ADDR", "h:1"),
            ("P2P_TIMEOUT_MS", "-1"),
        ];
        assert_eq!(refused_var(&vars), "P2P_TIMEOUT_MS");
    }
}
