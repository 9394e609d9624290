//! Memory reached only by raw copies, and a memory region registered over memory it owns: the
//! safe way to get I/O memory.

use std::ptr::NonNull;
use std::sync::Arc;

use crate::error::{last_os_error, note_drop_result, Error, Result};
use crate::mr::{AccessFlags, MemoryRegion, Sge};
use crate::pd::ProtectionDomain;

/// Where the bytes of an [`IoMemory`] come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backing {
    /// A leaked `Box<[u8]>`.
    Heap,
    /// A private anonymous mapping.
    Anonymous,
}

/// Memory that Rust code reaches only by copying through raw pointers, never through
/// references, so the device may write it without breaking Rust's aliasing rules. Bytes read
/// while a work request or a peer writes them are unspecified (possibly torn); read after the
/// relevant completion.
#[derive(Debug)]
pub struct IoMemory {
    ptr: NonNull<u8>,
    len: usize,
    backing: Backing,
}

// SAFETY: the memory is uniquely owned (a leaked box or a private mapping); nothing ties it to
// the creating thread.
unsafe impl Send for IoMemory {}
// SAFETY: through `&self` the memory is only read (`read_at`, `to_vec`); writes need
// `&mut self`, so Rust code never races with itself on the bytes.
unsafe impl Sync for IoMemory {}

impl IoMemory {
    /// `len` zeroed bytes on the heap.
    #[must_use]
    pub fn zeroed(len: usize) -> Self {
        let boxed: Box<[u8]> = vec![0; len].into_boxed_slice();
        let ptr = NonNull::from(Box::leak(boxed)).cast::<u8>();
        Self {
            ptr,
            len,
            backing: Backing::Heap,
        }
    }

    /// `len` bytes of a fresh private anonymous mapping. Its pages are untouched: they read as
    /// zero and get memory only when first written, by [`IoMemory::write_at`] or the device
    /// (what user memory handed to a registration cache often is).
    ///
    /// # Errors
    ///
    /// [`Error::MapMemory`] with the errno of `mmap` (`EINVAL` for 0 bytes).
    pub fn anonymous(len: usize) -> Result<Self> {
        // SAFETY: a fresh anonymous private mapping at an address the kernel picks: it overlaps
        // nothing Rust owns.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        let map_error = |source| Error::MapMemory { len, source };
        if ptr == libc::MAP_FAILED {
            return Err(map_error(last_os_error()));
        }
        let ptr = NonNull::new(ptr.cast())
            .ok_or_else(|| map_error(std::io::Error::other("mmap returned NULL")))?;
        Ok(Self {
            ptr,
            len,
            backing: Backing::Anonymous,
        })
    }

    /// Copies `data` into the memory at `offset`.
    ///
    /// # Errors
    ///
    /// [`Error::RangeOutOfBounds`] if the range does not fit.
    pub fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<()> {
        self.check_range(offset, data.len())?;
        // SAFETY: the destination range lies inside the live memory (checked); `data` is a
        // distinct Rust allocation, so the ranges do not overlap; `&mut self` excludes
        // concurrent Rust access to the memory.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(offset), data.len());
        }
        Ok(())
    }

    /// Copies the bytes at `offset` into `out`.
    ///
    /// # Errors
    ///
    /// [`Error::RangeOutOfBounds`] if the range does not fit.
    pub fn read_at(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        self.check_range(offset, out.len())?;
        // SAFETY: the source range lies inside the live memory (checked); `out` is a distinct
        // allocation; Rust code only writes the memory through `&mut self`, and every byte
        // pattern is a valid `u8`, so a concurrent device write can at worst make the copied
        // bytes stale or torn.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                out.as_mut_ptr(),
                out.len(),
            );
        }
        Ok(())
    }

    /// A copy of all the bytes.
    #[must_use]
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0; self.len];
        // The whole range always fits.
        let _ = self.read_at(0, &mut out);
        out
    }

    fn check_range(&self, offset: usize, len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Error::RangeOutOfBounds {
                offset,
                len,
                region_len: self.len,
            }),
        }
    }
}

impl Drop for IoMemory {
    fn drop(&mut self) {
        match self.backing {
            Backing::Heap => {
                let slice = std::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), self.len);
                // SAFETY: `ptr`/`len` came from `Box::leak` of a `Box<[u8]>` of this length in
                // `zeroed` and are turned back into that box exactly once.
                drop(unsafe { Box::from_raw(slice) });
            }
            Backing::Anonymous => {
                // SAFETY: unmaps exactly the mapping `anonymous` created, once; a region
                // registered over it was deregistered before (field order of
                // `OwnedMemoryRegion`).
                let ret = unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
                let errno = if ret == 0 {
                    0
                } else {
                    last_os_error().raw_os_error().unwrap_or(libc::EINVAL)
                };
                note_drop_result("anonymous mapping", errno);
            }
        }
    }
}

/// A memory region registered over [`IoMemory`] it owns.
///
/// The bytes are reached only by copying ([`Self::write_at`], [`Self::read_at`]), never
/// through references, so device writes cannot break Rust's aliasing rules.
#[derive(Debug)]
pub struct OwnedMemoryRegion {
    // Declared before `memory` so the region is deregistered before the memory is freed
    // (fields drop in declaration order).
    mr: MemoryRegion,
    memory: IoMemory,
}

impl OwnedMemoryRegion {
    /// Allocates `len` zeroed bytes on the heap and registers them with `access`.
    ///
    /// # Errors
    ///
    /// [`Error::RegisterMr`] as for [`MemoryRegion::register`].
    pub fn new(pd: &Arc<ProtectionDomain>, len: usize, access: AccessFlags) -> Result<Self> {
        Self::over(pd, IoMemory::zeroed(len), access)
    }

    /// Maps `len` bytes of untouched anonymous memory ([`IoMemory::anonymous`]) and registers
    /// them with `access`.
    ///
    /// # Errors
    ///
    /// [`Error::MapMemory`], or [`Error::RegisterMr`] as for [`MemoryRegion::register`].
    pub fn anonymous(pd: &Arc<ProtectionDomain>, len: usize, access: AccessFlags) -> Result<Self> {
        Self::over(pd, IoMemory::anonymous(len)?, access)
    }

    /// Registers `memory` with `access`: for memory filled before it is registered (a pinned
    /// registration of an untouched anonymous page that the device only reads may pin the
    /// shared zero page, which a later write no longer changes).
    ///
    /// # Errors
    ///
    /// [`Error::RegisterMr`] as for [`MemoryRegion::register`].
    pub fn over(pd: &Arc<ProtectionDomain>, memory: IoMemory, access: AccessFlags) -> Result<Self> {
        let len = memory.len;
        Self::over_range(pd, memory, 0, len, access)
    }

    /// Registers only `len` bytes at `offset` of `memory` with `access`: the bytes around the
    /// region stay owned memory the device has no right to reach (guards of a test). The
    /// offsets of [`Self::sge`] count from the region's start, those of [`Self::write_at`],
    /// [`Self::read_at`] and [`Self::to_vec`] from the memory's.
    ///
    /// # Errors
    ///
    /// [`Error::RangeOutOfBounds`] if the range does not lie inside `memory`, or
    /// [`Error::RegisterMr`] as for [`MemoryRegion::register`].
    pub fn over_range(
        pd: &Arc<ProtectionDomain>,
        memory: IoMemory,
        offset: usize,
        len: usize,
        access: AccessFlags,
    ) -> Result<Self> {
        if offset.checked_add(len).is_none_or(|end| end > memory.len) {
            return Err(Error::RangeOutOfBounds {
                offset,
                len,
                region_len: memory.len,
            });
        }
        // SAFETY: the range lies inside the memory (checked above), which is owned by the
        // returned value, stays allocated (and mapped) until after the region is deregistered
        // (field order), and is only accessed through raw-pointer copies, so device writes
        // never alias a Rust reference.
        let start = unsafe { memory.ptr.as_ptr().add(offset) };
        // SAFETY: as above.
        let mr = unsafe { MemoryRegion::register(pd, start, len, access) }?;
        Ok(Self { mr, memory })
    }

    /// The registration (keys, address, length).
    #[must_use]
    pub fn mr(&self) -> &MemoryRegion {
        &self.mr
    }

    /// Start of the owned memory (the region's address unless registered with
    /// [`Self::over_range`]), for comparisons and work requests;
    /// never dereference it while the device may write the memory.
    #[must_use]
    pub fn as_ptr(&self) -> *const u8 {
        self.memory.ptr.as_ptr()
    }

    /// Scatter/gather element for `len` bytes at `offset`.
    ///
    /// # Errors
    ///
    /// [`Error::RangeOutOfBounds`] as for [`MemoryRegion::sge`].
    pub fn sge(&self, offset: usize, len: usize) -> Result<Sge> {
        self.mr.sge(offset, len)
    }

    /// Copies `data` into the memory at `offset` ([`IoMemory::write_at`]).
    ///
    /// # Errors
    ///
    /// [`Error::RangeOutOfBounds`] if the range does not fit.
    pub fn write_at(&mut self, offset: usize, data: &[u8]) -> Result<()> {
        self.memory.write_at(offset, data)
    }

    /// Copies the bytes at `offset` into `out` ([`IoMemory::read_at`]).
    ///
    /// # Errors
    ///
    /// [`Error::RangeOutOfBounds`] if the range does not fit.
    pub fn read_at(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        self.memory.read_at(offset, out)
    }

    /// A copy of the whole memory.
    #[must_use]
    pub fn to_vec(&self) -> Vec<u8> {
        self.memory.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_backings_start_zeroed_and_copy_both_ways() {
        for mut memory in [IoMemory::zeroed(8192), IoMemory::anonymous(8192).unwrap()] {
            assert_eq!(memory.to_vec(), vec![0; 8192]);
            memory.write_at(4090, b"across").unwrap();
            let mut out = [0; 6];
            memory.read_at(4090, &mut out).unwrap();
            assert_eq!(&out, b"across");
            assert!(matches!(
                memory.write_at(8190, b"xyz"),
                Err(Error::RangeOutOfBounds { offset: 8190, .. })
            ));
        }
        assert!(matches!(
            IoMemory::anonymous(0),
            Err(Error::MapMemory { len: 0, .. })
        ));
    }
}
