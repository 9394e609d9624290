//! A thin safe layer over libibverbs (through `rdma-sys`): the single FFI
//! boundary that the registration cache and the p2p layer build on.
//!
//! Object lifetimes follow `Arc` chains instead of borrows: a
//! [`MemoryRegion`] holds its [`ProtectionDomain`], which holds its
//! [`Context`]; a [`QueuePair`] holds its PD and CQs. Destruction happens in
//! `Drop`, which never panics: failures are logged and counted in
//! [`drop_failures`].
//!
//! ```no_run
//! # fn main() -> verbs::Result<()> {
//! use std::net::Ipv4Addr;
//! let ctx = verbs::Context::open("rxe0")?;
//! let odp = ctx.query_device()?.odp;
//! let gid = ctx.roce_v2_gid(verbs::FIRST_PORT, Some(Ipv4Addr::new(10, 77, 0, 1)))?;
//! println!("ODP for RC: {}, GID: {gid:?}", odp.covers_rc_send_recv_read_write());
//! # Ok(())
//! # }
//! ```

mod attr;
mod context;
mod cq;
mod device;
mod error;
mod ext;
mod gid;
mod mr;
mod owned;
mod pd;
mod qp;

pub use attr::{DeviceAttrs, LinkLayer, Mtu, OdpCaps, PortAttr, PortState};
pub use context::Context;
pub use cq::{Completion, CompletionQueue, Polled, WcOpcode, POLL_BATCH};
pub use device::{devices, DeviceInfo};
pub use error::{drop_failures, error_chain, Error, Result};
pub use gid::{Gid, GidEntry, GidType};
pub use mr::{AccessFlags, MemoryRegion, Prefetch, Sge};
pub use owned::{IoMemory, OwnedMemoryRegion};
pub use pd::ProtectionDomain;
pub use qp::{QpConfig, QpEndpoint, QpState, QueuePair};

/// The port number of single-port devices such as Soft-RoCE's (ports are numbered from 1).
pub const FIRST_PORT: u8 = 1;
