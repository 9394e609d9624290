//! Completion queues and work completions.

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdma_sys::{
    ibv_cq, ibv_create_cq, ibv_destroy_cq, ibv_poll_cq, ibv_wc, ibv_wc_flags, ibv_wc_opcode,
    ibv_wc_status, ibv_wc_status_str,
};

use crate::context::Context;
use crate::error::{last_os_error, note_drop_result, returned_os_error, Error, Result};

/// What a work completion reports as its operation (`enum ibv_wc_opcode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WcOpcode {
    /// A SEND completed on the sender.
    Send,
    /// An RDMA WRITE completed on the initiator.
    RdmaWrite,
    /// An RDMA READ completed on the initiator.
    RdmaRead,
    /// A SEND arrived in a posted receive.
    Recv,
    /// An RDMA WRITE with immediate arrived.
    RecvRdmaWithImm,
    /// Any other opcode (atomics, memory windows, ...), raw value.
    Other(u32),
}

impl WcOpcode {
    fn from_raw(raw: ibv_wc_opcode::Type) -> Self {
        match raw {
            ibv_wc_opcode::IBV_WC_SEND => Self::Send,
            ibv_wc_opcode::IBV_WC_RDMA_WRITE => Self::RdmaWrite,
            ibv_wc_opcode::IBV_WC_RDMA_READ => Self::RdmaRead,
            ibv_wc_opcode::IBV_WC_RECV => Self::Recv,
            ibv_wc_opcode::IBV_WC_RECV_RDMA_WITH_IMM => Self::RecvRdmaWithImm,
            other => Self::Other(other),
        }
    }
}

/// A successful work completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The id the work request was posted with.
    pub wr_id: u64,
    /// The operation that completed.
    pub opcode: WcOpcode,
    /// Bytes received (receives) or transferred (RDMA READ).
    pub byte_len: u32,
    /// Number of the local queue pair the request belonged to.
    pub qp_num: u32,
    /// The immediate data of a SEND (or RDMA WRITE) with immediate, in host byte order.
    pub imm_data: Option<u32>,
}

impl Completion {
    /// Converts a polled `ibv_wc`, turning a non-success status into
    /// [`Error::WorkCompletion`] that names the status.
    fn from_wc(wc: &ibv_wc) -> Result<Self> {
        let opcode = WcOpcode::from_raw(wc.opcode);
        if wc.status != ibv_wc_status::IBV_WC_SUCCESS {
            return Err(Error::WorkCompletion {
                wr_id: wc.wr_id,
                status: status_str(wc.status),
                status_code: wc.status,
                vendor_err: wc.vendor_err,
                opcode,
            });
        }
        let imm_data = (wc.wc_flags & ibv_wc_flags::IBV_WC_WITH_IMM.0 != 0).then(|| {
            // SAFETY: both members of the union are `u32`s, so either reading is a valid
            // value; with IBV_WC_WITH_IMM set the provider stored the immediate data there.
            u32::from_be(unsafe { wc.imm_data_invalidated_rkey_union.imm_data })
        });
        Ok(Self {
            wr_id: wc.wr_id,
            opcode,
            byte_len: wc.byte_len,
            qp_num: wc.qp_num,
            imm_data,
        })
    }
}

/// Completions [`CompletionQueue::poll_batch`] takes at most in one call.
pub const POLL_BATCH: usize = 8;

/// The completions of one [`CompletionQueue::poll_batch`], in the order the queue held them.
#[derive(Debug)]
pub struct Polled {
    wcs: [MaybeUninit<ibv_wc>; POLL_BATCH],
    /// Entries the provider filled: the first `len`.
    len: usize,
    next: usize,
}

impl Polled {
    /// Whether the batch was full, so more completions may be waiting.
    #[must_use]
    pub fn was_full(&self) -> bool {
        self.len == POLL_BATCH
    }
}

impl Iterator for Polled {
    type Item = Result<Completion>;

    fn next(&mut self) -> Option<Self::Item> {
        let wc = self.wcs[..self.len].get(self.next)?;
        self.next += 1;
        // SAFETY: the provider filled the first `len` entries (`ibv_poll_cq`'s return value).
        Some(Completion::from_wc(unsafe { wc.assume_init_ref() }))
    }
}

/// `ibv_wc_status_str` of a status, e.g. `"remote access error"`.
fn status_str(status: ibv_wc_status::Type) -> String {
    // SAFETY: `ibv_wc_status_str` accepts any value and returns a pointer to a
    // static NUL-terminated string ("unknown" for values it does not know).
    let text = unsafe { ibv_wc_status_str(status) };
    if text.is_null() {
        return format!("status {status}");
    }
    // SAFETY: non-NULL, static and NUL-terminated per the above.
    unsafe { CStr::from_ptr(text) }
        .to_string_lossy()
        .into_owned()
}

/// A completion queue (`struct ibv_cq`) without a completion channel: it is
/// polled, never waited on via events.
#[derive(Debug)]
pub struct CompletionQueue {
    raw: NonNull<ibv_cq>,
    context: Arc<Context>,
}

// SAFETY: verbs objects are safe for multi-threaded access by default
// (ibv_alloc_td(3)); providers lock the CQ internally, so concurrent polls each
// get distinct completions. The CQ is destroyed once, in `Drop`.
unsafe impl Send for CompletionQueue {}
// SAFETY: as for `Send`: `&self` methods only poll, which is thread-safe.
unsafe impl Sync for CompletionQueue {}

/// Polling backs off from spinning to sleeping up to this long, so a waiter
/// does not starve the (software) provider of CPU.
const MAX_POLL_SLEEP: Duration = Duration::from_millis(1);

impl CompletionQueue {
    /// Creates a completion queue with room for at least `entries` completions.
    ///
    /// # Errors
    ///
    /// [`Error::CreateCq`] with the errno of `ibv_create_cq` (e.g. `EINVAL`
    /// above the device's `max_cqe`).
    pub fn new(context: &Arc<Context>, entries: u32) -> Result<Arc<Self>> {
        let create_error = |source| Error::CreateCq { entries, source };
        let cqe = i32::try_from(entries)
            .map_err(|_| create_error(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
        // SAFETY: the context is open (we keep an `Arc`); no CQ context pointer
        // and no completion channel are used.
        let raw =
            unsafe { ibv_create_cq(context.as_ptr(), cqe, ptr::null_mut(), ptr::null_mut(), 0) };
        let raw = NonNull::new(raw).ok_or_else(|| create_error(last_os_error()))?;
        Ok(Arc::new(Self {
            raw,
            context: Arc::clone(context),
        }))
    }

    /// The device context the queue belongs to.
    #[must_use]
    pub fn context(&self) -> &Arc<Context> {
        &self.context
    }

    pub(crate) fn as_ptr(&self) -> *mut ibv_cq {
        self.raw.as_ptr()
    }

    /// Takes at most one completion off the queue without waiting.
    ///
    /// # Errors
    ///
    /// [`Error::PollCq`] if polling fails, or [`Error::WorkCompletion`] if the
    /// completion taken reports a failure (it is consumed either way).
    pub fn poll(&self) -> Result<Option<Completion>> {
        let mut wc = MaybeUninit::<ibv_wc>::uninit();
        // SAFETY: the CQ is alive; `wc` has room for the one entry requested.
        let polled = unsafe { ibv_poll_cq(self.as_ptr(), 1, wc.as_mut_ptr()) };
        match polled {
            0 => Ok(None),
            1 => {
                // SAFETY: the provider filled the one entry it reported.
                let wc = unsafe { wc.assume_init() };
                Completion::from_wc(&wc).map(Some)
            }
            err => Err(Error::PollCq {
                source: returned_os_error(err),
            }),
        }
    }

    /// Takes up to [`POLL_BATCH`] completions off the queue in one call, without waiting:
    /// a loop that handles whatever is there polls once per batch, where polling one at a time
    /// costs a call per completion and one more to find the queue empty.
    ///
    /// # Errors
    ///
    /// [`Error::PollCq`] if polling fails. A completion that reports a failure is one
    /// [`Error::WorkCompletion`] item of the batch (consumed like the others).
    pub fn poll_batch(&self) -> Result<Polled> {
        let mut wcs = [const { MaybeUninit::<ibv_wc>::uninit() }; POLL_BATCH];
        // SAFETY: the CQ is alive; `wcs` has room for the `POLL_BATCH` entries requested
        // (`ibv_wc` and `MaybeUninit<ibv_wc>` have the same layout).
        let polled = unsafe {
            ibv_poll_cq(
                self.as_ptr(),
                POLL_BATCH as i32,
                wcs.as_mut_ptr().cast::<ibv_wc>(),
            )
        };
        let len = usize::try_from(polled).map_err(|_| Error::PollCq {
            source: returned_os_error(polled),
        })?;
        Ok(Polled {
            wcs,
            len: len.min(POLL_BATCH),
            next: 0,
        })
    }

    /// Waits up to `timeout` for the next completion.
    ///
    /// # Errors
    ///
    /// [`Error::CompletionTimeout`] if none arrives in time,
    /// [`Error::WorkCompletion`] if it reports a failure, [`Error::PollCq`] if
    /// polling fails.
    pub fn wait_completion(&self, timeout: Duration) -> Result<Completion> {
        let start = Instant::now();
        let mut sleep = Duration::from_micros(1);
        loop {
            if let Some(completion) = self.poll()? {
                return Ok(completion);
            }
            let waited = start.elapsed();
            if waited >= timeout {
                return Err(Error::CompletionTimeout { after: waited });
            }
            std::thread::sleep(sleep.min(timeout.saturating_sub(waited)));
            sleep = (sleep * 2).min(MAX_POLL_SLEEP);
        }
    }
}

impl Drop for CompletionQueue {
    fn drop(&mut self) {
        // SAFETY: created in `new` and destroyed exactly once; QPs using the CQ
        // hold an `Arc<CompletionQueue>`, so none is alive any more.
        let ret = unsafe { ibv_destroy_cq(self.as_ptr()) };
        note_drop_result("ibv_cq", ret);
    }
}
