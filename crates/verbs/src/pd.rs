//! Protection domains.

use std::ptr::NonNull;
use std::sync::Arc;

use rdma_sys::{ibv_alloc_pd, ibv_dealloc_pd, ibv_pd};

use crate::context::Context;
use crate::error::{last_os_error, note_drop_result, Error, Result};

/// A protection domain (`struct ibv_pd`); memory regions and queue pairs hold
/// an `Arc` to it, so it is deallocated only after all of them (unless it was
/// borrowed: [`ProtectionDomain::from_borrowed`]).
#[derive(Debug)]
pub struct ProtectionDomain {
    raw: NonNull<ibv_pd>,
    context: Arc<Context>,
    /// Whether `Drop` deallocates the PD: false for a PD a C caller allocated and deallocates.
    owned: bool,
}

// SAFETY: verbs objects are safe for multi-threaded access by default
// (ibv_alloc_td(3)); the PD is only passed to such calls and deallocated once, in `Drop`.
unsafe impl Send for ProtectionDomain {}
// SAFETY: as for `Send`; `&self` methods only hand the pointer to thread-safe verbs.
unsafe impl Sync for ProtectionDomain {}

impl ProtectionDomain {
    /// Allocates a protection domain on `context`.
    ///
    /// # Errors
    ///
    /// [`Error::AllocPd`] with the errno of `ibv_alloc_pd`.
    pub fn new(context: &Arc<Context>) -> Result<Arc<Self>> {
        // SAFETY: the context is open for as long as the `Arc` we keep.
        let raw = unsafe { ibv_alloc_pd(context.as_ptr()) };
        let raw = NonNull::new(raw).ok_or_else(|| Error::AllocPd {
            device: context.name().to_owned(),
            source: last_os_error(),
        })?;
        Ok(Arc::new(Self {
            raw,
            context: Arc::clone(context),
            owned: true,
        }))
    }

    /// A protection domain allocated by someone else (a C program handing its `struct ibv_pd *`
    /// to a library built on this crate), used here but never deallocated, and its device
    /// context likewise never closed. `None` when `raw->context` is NULL, which no allocated PD
    /// has.
    ///
    /// # Safety
    ///
    /// `raw` must be a PD allocated with `ibv_alloc_pd` that stays allocated, with its context
    /// open, until the last `Arc` of the returned value is gone (memory regions and queue pairs
    /// made from it hold one).
    #[must_use]
    pub unsafe fn from_borrowed(raw: NonNull<ibv_pd>) -> Option<Arc<Self>> {
        // SAFETY: an allocated PD's `context` is the open context it was allocated on
        // (libibverbs sets it in `ibv_alloc_pd`), which the caller keeps open.
        let context = unsafe { NonNull::new((*raw.as_ptr()).context) }?;
        Some(Arc::new(Self {
            raw,
            // SAFETY: the caller keeps the context open for as long as this PD is used.
            context: unsafe { Context::from_borrowed(context) },
            owned: false,
        }))
    }

    /// The device context this domain belongs to.
    #[must_use]
    pub fn context(&self) -> &Arc<Context> {
        &self.context
    }

    pub(crate) fn as_ptr(&self) -> *mut ibv_pd {
        self.raw.as_ptr()
    }
}

impl Drop for ProtectionDomain {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        // SAFETY: allocated in `new` and deallocated exactly once; MRs and QPs
        // hold an `Arc<ProtectionDomain>`, so none of them is still alive.
        let ret = unsafe { ibv_dealloc_pd(self.as_ptr()) };
        note_drop_result("ibv_pd", ret);
    }
}
