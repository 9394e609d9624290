//! Access to the extended ops of `struct verbs_context`, as the C header's
//! `verbs_get_ctx_op` does it.
//!
//! rdma-sys 0.3 re-implements that macro for its inline wrappers
//! (`ibv_query_device_ex`, `ibv_advise_mr`, `___ibv_query_port`) but compares
//! `abi_compat` with `u32::MAX` where libibverbs stores `UINTPTR_MAX`, so on
//! 64-bit it never finds the extended context and silently takes the legacy
//! path: no ODP capabilities, and advice always "unsupported". This crate
//! therefore calls those ops itself through [`verbs_op!`].

use std::mem::{offset_of, size_of};

use rdma_sys::verbs_context;

use crate::context::Context;

/// The op `$field` of the `verbs_context` around `$ctx`, if the loaded
/// libibverbs has that op and the provider implements it.
macro_rules! verbs_op {
    ($ctx:expr, $field:ident) => {
        // SAFETY: the offset and the type witness name the same field.
        unsafe {
            $crate::ext::read_verbs_op(
                $ctx,
                ::std::mem::offset_of!(::rdma_sys::verbs_context, $field),
                |vctx: &::rdma_sys::verbs_context| &vctx.$field,
            )
        }
    };
}
pub(crate) use verbs_op;

/// `__VERBS_ABI_IS_EXTENDED`: the `abi_compat` value of a context embedded in
/// a `struct verbs_context`.
const VERBS_ABI_IS_EXTENDED: usize = usize::MAX;

/// Reads the op at `field_offset` of the `verbs_context` that encloses `ctx`.
///
/// `verbs_context` grows at its front: a libibverbs older than the headers
/// rdma-sys was built against allocates fewer leading ops, and records its
/// own size in `sz` (immediately before the embedded `ibv_context`). An op
/// exists when `sz >= size_of::<verbs_context>() - field_offset`.
///
/// # Safety
///
/// `field_offset` must be the offset of the field that `_field` returns, so
/// that `T` is the type stored there. Use [`verbs_op!`], which guarantees it.
pub(crate) unsafe fn read_verbs_op<T: Copy>(
    ctx: &Context,
    field_offset: usize,
    _field: fn(&verbs_context) -> &Option<T>,
) -> Option<T> {
    let raw = ctx.as_ptr();
    // SAFETY: `ctx` keeps the context open; `abi_compat` is a plain pointer field.
    let abi_compat = unsafe { (*raw).abi_compat };
    if abi_compat as usize != VERBS_ABI_IS_EXTENDED {
        return None;
    }
    let context_offset = offset_of!(verbs_context, context);
    let base = raw.cast::<u8>().cast_const();
    // SAFETY: an extended context is the last member of a `verbs_context`
    // allocated by libibverbs, and every version has `sz` right before it, so
    // this address lies in that allocation and holds an aligned `usize`.
    let library_size = unsafe {
        base.sub(context_offset - offset_of!(verbs_context, sz))
            .cast::<usize>()
            .read()
    };
    if library_size < size_of::<verbs_context>() - field_offset {
        return None;
    }
    // SAFETY: `library_size` shows the library's struct reaches back to the
    // field, so the address is inside the allocation; the caller guarantees
    // the field has type `Option<T>` (a nullable function pointer).
    unsafe {
        base.sub(context_offset - field_offset)
            .cast::<Option<T>>()
            .read()
    }
}
