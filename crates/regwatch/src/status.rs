//! The read-only status area the kernel shares with the process.
//!
//! Only the kernel writes it, each word with one aligned 64-bit store
//! (`WRITE_ONCE`/`smp_store_release` in the module's status.c); this side
//! only loads. A load is a relaxed atomic load followed by an acquire fence:
//! the Rust memory model guarantees that 8-byte relaxed loads work on
//! read-only memory on the targets this crate builds for, but makes no such
//! promise for acquire loads ("Atomic accesses to read-only memory" in
//! `core::sync::atomic`); the fence gives the load acquire semantics.

use std::io;
use std::mem::offset_of;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{fence, AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};

use crate::uapi::{self, regwatch_status, SLOT_WORD_SIZE, STATUS_HEADER_SIZE};
use crate::{fork, sys};

/// A mapping of an fd's status area whose size and header were checked.
#[derive(Debug)]
pub(crate) struct StatusArea {
    /// `PROT_READ`, `MAP_SHARED`, offset 0; unmapped on drop unless this
    /// is a fork child, which does not have the mapping.
    map: ManuallyDrop<MmapRaw>,
    /// Slot words present after the header; checked against `map.len()`.
    nslots: u32,
    /// [`fork::epoch`] before the mapping was made.
    fork_epoch: u64,
}

impl StatusArea {
    /// Maps the status area of `fd`, whose capacity was fixed at `nslots`
    /// slots and whose status area the kernel reported as `len` bytes.
    ///
    /// In a fork child the area reads as all zeros (every watch invalid) and
    /// is not unmapped on drop: the child does not have it (see `fork.rs`).
    ///
    /// # Errors
    ///
    /// mmap() and pthread_atfork() errors; `InvalidData` when `len`, the mapping's
    /// alignment or the header disagree with the ABI this crate was built for.
    pub(crate) fn map(fd: BorrowedFd<'_>, len: u64, nslots: u32) -> io::Result<Self> {
        let fork_epoch = fork::epoch()?;
        let expected = uapi::status_size(nslots.into(), sys::page_size()?);
        if expected != Some(len) {
            return Err(invalid_data(format!(
                "status area of {nslots} slots is {len} bytes, expected {expected:?}"
            )));
        }
        let len = usize::try_from(len).map_err(|_| invalid_data("status area too large"))?;
        let map = MmapOptions::new()
            .len(len)
            .map_raw_read_only(fd.as_raw_fd())?;
        if !map.as_ptr().cast::<AtomicU64>().is_aligned() {
            return Err(invalid_data("status area mapping is not 8-byte aligned"));
        }
        let area = Self {
            map: ManuallyDrop::new(map),
            nslots,
            fork_epoch,
        };
        let header = [
            (
                "abi_version",
                offset_of!(regwatch_status, abi_version),
                uapi::API,
            ),
            (
                "header_size",
                offset_of!(regwatch_status, header_size),
                STATUS_HEADER_SIZE as u64,
            ),
            ("nslots", offset_of!(regwatch_status, nslots), nslots.into()),
        ];
        for (field, offset, expected) in header {
            let found = area.header_word(offset);
            if found != expected {
                return Err(invalid_data(format!(
                    "status header {field} is {found}, expected {expected}"
                )));
            }
        }
        Ok(area)
    }

    /// Number of slot words.
    pub(crate) fn nslots(&self) -> u32 {
        self.nslots
    }

    /// Acquire load of the header word at byte `offset` (an `offset_of!` of
    /// `regwatch_status`); 0 in a fork child.
    #[inline]
    pub(crate) fn header_word(&self, offset: usize) -> u64 {
        assert!(offset % SLOT_WORD_SIZE == 0 && offset < STATUS_HEADER_SIZE);
        if fork::forked_since(self.fork_epoch) {
            return 0;
        }
        // SAFETY: checked just above: the word is aligned and inside the
        // header, which `map()` checked is inside the mapping, and this is
        // not a fork child.
        unsafe { self.load_acquire(offset) }
    }

    /// Acquire load of `slot`'s word; `None` if the area has no such slot
    /// or this is a fork child.
    #[inline]
    pub(crate) fn slot_word(&self, slot: u32) -> Option<u64> {
        if slot >= self.nslots || fork::forked_since(self.fork_epoch) {
            return None;
        }
        let offset = STATUS_HEADER_SIZE + SLOT_WORD_SIZE * slot as usize;
        // SAFETY: not a fork child (checked above); slot < nslots, and
        // `map()` checked that the mapping holds the header and nslots
        // words; STATUS_HEADER_SIZE is a multiple of 8 (uapi tests), so the
        // word is aligned.
        Some(unsafe { self.load_acquire(offset) })
    }

    /// Relaxed load of the word at byte `offset`, then an acquire fence.
    ///
    /// # Safety
    ///
    /// `offset` is a multiple of 8 and `offset + 8 <= self.map.len()`; the
    /// process is not a fork child (`fork::forked_since` is false).
    #[inline]
    unsafe fn load_acquire(&self, offset: usize) -> u64 {
        // SAFETY: by the caller's promise the 8 bytes are inside the mapping,
        // which `self.map` keeps mapped for as long as `&self` (so for the
        // whole life of the reference, which ends in this function) in the
        // process that mapped it, the only one where callers load; `map()`
        // checked the base is 8-byte aligned, so the word is too. The kernel
        // writes each word with single aligned 64-bit stores, never in parts,
        // and nothing in this process writes the read-only mapping, so atomic
        // loads race with nothing they could tear. A relaxed 8-byte load is
        // allowed on read-only memory on every target lib.rs admits.
        let word = unsafe { &*self.map.as_ptr().add(offset).cast::<AtomicU64>() };
        let value = word.load(Ordering::Relaxed);
        // Pairs with the kernel's release stores (smp_store_release of the
        // slot words and the generation): what the kernel wrote before the
        // store we loaded from is visible to what the caller does next.
        fence(Ordering::Acquire);
        value
    }
}

impl Drop for StatusArea {
    fn drop(&mut self) {
        if !fork::forked_since(self.fork_epoch) {
            // SAFETY: `self.map` is not used after this; in a fork child it
            // is left alone, since the child has no such mapping and the
            // address may belong to something else there.
            unsafe { ManuallyDrop::drop(&mut self.map) };
        }
    }
}

fn invalid_data(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}
