//! The `cargo xtask` commands, one module per group: the VM harness (`vm`),
//! the checks (`test`, `kmod build`), the benchmarks (`bench`) and the demo.
//! Each command prepares what it needs with [`vm::prepare`], stages its
//! artefacts and boots guests.

pub mod bench;
pub mod check;
pub mod demo;
pub mod docker;
pub mod soak;
pub mod vm;

use std::path::PathBuf;
use std::time::Duration;

use crate::kernels::KernelPins;

/// Per-guest time limit for the test suite and the benchmarks; TCG is slow,
/// a hang is not.
const SUITE_TIMEOUT: Duration = Duration::from_secs(40 * 60);
/// Time limit of `bench p2p`'s guest: its 1,000 interleaved rounds per size took 37 minutes
/// on a host loaded to 7-9 (the sweep alone; 4-5 minutes on an idle one).
const P2P_BENCH_TIMEOUT: Duration = Duration::from_secs(75 * 60);
/// Time limit for one command, a demo or a self-test case.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// What every command is given: the workspace, the cache directory and the
/// kernel pins.
#[derive(Debug)]
pub struct Context {
    pub workspace: PathBuf,
    pub vm_dir: PathBuf,
    pub pins: KernelPins,
}
