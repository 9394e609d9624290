//! A memory region over a heap buffer it owns: the safe way to get I/O memory.

use std::ptr::NonNull;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::mr::{AccessFlags, MemoryRegion, Sge};
use crate::pd::ProtectionDomain;

/// A zero-initialised heap buffer that is only ever accessed through raw
/// pointers, so the HCA may write into it without invalidating any reference.
#[derive(Debug)]
struct IoBuffer {
    ptr: NonNull<u8>,
    len: usize,
}

impl IoBuffer {
    fn zeroed(len: usize) -> Self {
        let boxed: Box<[u8]> = vec![0; len].into_boxed_slice();
        let ptr = NonNull::from(Box::leak(boxed)).cast::<u8>();
        Self { ptr, len }
    }
}

impl Drop for IoBuffer {
    fn drop(&mut self) {
        let slice = std::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), self.len);
        // SAFETY: `ptr`/`len` came from `Box::leak` of a `Box<[u8]>` of this
        // length in `zeroed` and are turned back into that box exactly once.
        drop(unsafe { Box::from_raw(slice) });
    }
}

/// A memory region registered over a buffer it allocated and owns.
///
/// The bytes are reached only by copying ([`Self::write_at`], [`Self::read_at`]),
/// never through references, so HCA writes cannot break Rust's aliasing rules.
/// Bytes read while a work request or a remote peer is writing them are
/// unspecified (possibly torn); read after the relevant completion.
#[derive(Debug)]
pub struct OwnedMemoryRegion {
    // Declared before `buffer` so the region is deregistered before the
    // memory is freed (fields drop in declaration order).
    mr: MemoryRegion,
    buffer: IoBuffer,
}

// SAFETY: the buffer is uniquely owned heap memory and `MemoryRegion` is
// `Send`; nothing is tied to the creating thread.
unsafe impl Send for OwnedMemoryRegion {}
// SAFETY: through `&self` the buffer is only read (`read_at`); writes need
// `&mut self`, so Rust code never races with itself on the bytes.
unsafe impl Sync for OwnedMemoryRegion {}

impl OwnedMemoryRegion {
    /// Allocates `len` zeroed bytes and registers them with `access`.
    ///
    /// # Errors
    ///
    /// [`Error::RegisterMr`] as for [`MemoryRegion::register`].
    pub fn new(pd: &Arc<ProtectionDomain>, len: usize, access: AccessFlags) -> Result<Self> {
        let buffer = IoBuffer::zeroed(len);
        // SAFETY: the buffer is owned by the returned value, stays allocated
        // (and mapped) until after the region is deregistered (field order),
        // and is only accessed through raw-pointer copies, so HCA writes never
        // alias a Rust reference.
        let mr = unsafe { MemoryRegion::register(pd, buffer.ptr.as_ptr(), len, access) }?;
        Ok(Self { mr, buffer })
    }

    /// The registration (keys, address, length).
    #[must_use]
    pub fn mr(&self) -> &MemoryRegion {
        &self.mr
    }

    /// Scatter/gather element for `len` bytes at `offset`.
    ///
    /// # Errors
    ///
    /// [`Error::RangeOutOfBounds`] as for [`MemoryRegion::sge`].
    pub fn sge(&self, offset: usize, len: usize) -> Result<Sge> {
        self.mr.sge(offset, len)
    }

    /// Copies `data` into the buffer at `offset`.
    ///
    /// # Errors
    ///
    /// [`Error::RangeOutOfBounds`] if the range does not fit.
    pub fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<()> {
        self.check_range(offset, data.len())?;
        // SAFETY: the destination range lies inside the live buffer (checked);
        // `data` is a distinct Rust allocation, so the ranges do not overlap;
        // `&mut self` excludes concurrent Rust access to the buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.buffer.ptr.as_ptr().add(offset),
                data.len(),
            );
        }
        Ok(())
    }

    /// Copies bytes at `offset` of the buffer into `out`.
    ///
    /// # Errors
    ///
    /// [`Error::RangeOutOfBounds`] if the range does not fit.
    pub fn read_at(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        self.check_range(offset, out.len())?;
        self.copy_out(offset, out);
        Ok(())
    }

    /// A copy of the whole buffer.
    #[must_use]
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0; self.buffer.len];
        self.copy_out(0, &mut out);
        out
    }

    /// Copies `out.len()` bytes at `offset`; the caller has checked the range.
    fn copy_out(&self, offset: usize, out: &mut [u8]) {
        debug_assert!(self.check_range(offset, out.len()).is_ok());
        // SAFETY: the source range lies inside the live buffer (checked by
        // every caller); `out`
        // is a distinct allocation; Rust code only writes the buffer through
        // `&mut self`, and every byte pattern is a valid `u8`, so a concurrent
        // HCA write can at worst make the copied bytes stale or torn.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.buffer.ptr.as_ptr().add(offset),
                out.as_mut_ptr(),
                out.len(),
            );
        }
    }

    fn check_range(&self, offset: usize, len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.buffer.len => Ok(()),
            _ => Err(Error::RangeOutOfBounds {
                offset,
                len,
                region_len: self.buffer.len,
            }),
        }
    }
}
