//! The soak's buffers and what it does to the address space under them.
//!
//! A [`FixedBuffer`] is a range at a fixed address backed by a private anonymous mapping
//! ([`AnonMap`]), by the top of the brk heap, or by an attached SysV shared-memory segment.
//! Every change keeps the slot's address (or, for brk, says it moved), so the cache sees the
//! same addresses with new pages behind them. The slot keeps a model of its bytes: what the
//! process wrote last, which every transfer is checked against.

pub(crate) use regcache::PAGE;
use std::io;

use crate::rig::AnonMap;

/// What backs a slot.
#[derive(Debug)]
pub(crate) enum Backing {
    /// A private anonymous mapping; `None` only in the middle of a change.
    Anon(Option<AnonMap>),
    /// The top `len` bytes of the brk heap, grown with `sbrk`.
    Brk,
    /// An attached SysV shared-memory segment (already marked for removal).
    Shm,
}

/// A buffer at a fixed address and the bytes it must hold.
#[derive(Debug)]
pub(crate) struct FixedBuffer {
    pub(crate) addr: usize,
    pub(crate) len: usize,
    pub(crate) backing: Backing,
    /// Where `mremap` moves the pages to: a free range of `len` bytes reserved for this slot.
    pub(crate) parking: usize,
    /// What the memory holds, as the process last wrote or read it.
    pub(crate) model: Vec<u8>,
}

fn check(what: &str, ret: libc::c_int) {
    assert_eq!(ret, 0, "{what}: {}", io::Error::last_os_error());
}

impl FixedBuffer {
    /// A private anonymous slot at `addr` (which must be free), zero-filled.
    pub(crate) fn anon(addr: usize, len: usize, parking: usize) -> Self {
        Self {
            addr,
            len,
            backing: Backing::Anon(Some(AnonMap::at(addr, len))),
            parking,
            model: vec![0; len],
        }
    }

    /// A slot of `len` bytes on top of the brk heap.
    pub(crate) fn brk(len: usize) -> Self {
        Self {
            addr: grow_brk(len),
            len,
            backing: Backing::Brk,
            parking: 0,
            model: vec![0; len],
        }
    }

    /// A slot with a new shared-memory segment attached at `addr` (which must be free).
    pub(crate) fn shm(addr: usize, len: usize) -> Self {
        attach_shm(addr, len);
        Self {
            addr,
            len,
            backing: Backing::Shm,
            parking: 0,
            model: vec![0; len],
        }
    }

    /// Pages moved out of a slot (see [`FixedBuffer::move_away`]) and the bytes they hold, as a slot
    /// of their own (without parking) until dropped.
    pub(crate) fn parked(map: AnonMap, model: Vec<u8>) -> Self {
        Self {
            addr: map.addr(),
            len: map.len(),
            backing: Backing::Anon(Some(map)),
            parking: 0,
            model,
        }
    }

    /// Start pointer, for `cached_reg`.
    pub(crate) fn ptr(&self) -> *const u8 {
        self.addr as *const u8
    }

    /// Copies `bytes` into the slot at `offset` and into the model.
    pub(crate) fn write(&mut self, offset: usize, bytes: &[u8]) {
        assert!(offset + bytes.len() <= self.len, "write past the slot");
        // SAFETY: the range lies inside this slot's live, writable mapping, which no Rust
        // reference covers (it is reached through raw pointers only) and no work request is
        // using: the soak writes slots only between transfers.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                (self.addr + offset) as *mut u8,
                bytes.len(),
            );
        }
        self.model[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    /// A copy of `len` bytes of the slot's memory at `offset`.
    pub(crate) fn read(&self, offset: usize, len: usize) -> Vec<u8> {
        assert!(offset + len <= self.len, "read past the slot");
        let mut out = vec![0; len];
        // SAFETY: the range lies inside this slot's live, readable mapping; no work request
        // writes it now (reads happen after the completion), and `out` is a distinct buffer.
        unsafe {
            std::ptr::copy_nonoverlapping((self.addr + offset) as *const u8, out.as_mut_ptr(), len);
        }
        out
    }

    /// Whether the slot can take `madvise(MADV_FREE)` (private anonymous memory only).
    pub(crate) fn is_private(&self) -> bool {
        !matches!(self.backing, Backing::Shm)
    }

    /// munmap, then mmap at the same address; for brk: shrink, then grow again; for shm:
    /// detach, then attach a new segment. Returns whether the slot kept its address (brk
    /// moves to the heap's new top when something else grew the heap above it).
    pub(crate) fn unmap_and_map_again(&mut self) -> bool {
        let kept = match &mut self.backing {
            Backing::Anon(map) => {
                drop(map.take());
                *map = Some(AnonMap::at(self.addr, self.len));
                true
            }
            Backing::Brk => {
                let kept = shrink_and_regrow_brk(self.addr, self.len);
                if !kept {
                    self.addr = grow_brk(self.len);
                }
                kept
            }
            Backing::Shm => {
                // SAFETY: detaches exactly this slot's segment, which only raw pointers reach.
                check("shmdt", unsafe { libc::shmdt(self.ptr().cast()) });
                attach_shm(self.addr, self.len);
                true
            }
        };
        self.model.fill(0);
        kept
    }

    /// `mmap(MAP_FIXED)` of fresh anonymous pages over the slot, with no unmapped window.
    /// Anonymous slots only.
    pub(crate) fn map_fixed_over(&mut self) {
        let Backing::Anon(Some(map)) = &self.backing else {
            panic!("MAP_FIXED over a slot that is not a private mapping");
        };
        map.remap_in_place();
        self.model.fill(0);
    }

    /// Moves the slot's pages to its parking range (`mremap`) and maps fresh pages at the slot's
    /// address; returns the moved pages with the bytes they hold. Anonymous slots only.
    pub(crate) fn move_away(&mut self) -> (AnonMap, Vec<u8>) {
        let Backing::Anon(map) = &mut self.backing else {
            panic!("mremap of a slot that is not a private mapping");
        };
        let pages = map.take().expect("slot mapped");
        let moved = pages.move_onto(AnonMap::at(self.parking, self.len));
        *map = Some(AnonMap::at(self.addr, self.len));
        let bytes = std::mem::replace(&mut self.model, vec![0; self.len]);
        (moved, bytes)
    }

    /// `madvise(advice)` over the whole slot.
    pub(crate) fn advise(&mut self, advice: libc::c_int) {
        // SAFETY: only this slot's pages, which no Rust reference covers, are advised.
        check("madvise", unsafe {
            libc::madvise(self.addr as *mut libc::c_void, self.len, advice)
        });
        let private = self.is_private();
        match advice {
            // Private pages come back as zeros; shared ones keep their contents.
            libc::MADV_DONTNEED if private => self.model.fill(0),
            // The contents are old or zero until written: the caller rewrites every page.
            _ => {}
        }
    }

    /// `mprotect(prot)` over the whole slot.
    pub(crate) fn protect(&self, prot: libc::c_int) {
        // SAFETY: changes the protection of this slot's pages only; the soak touches them
        // (and lets the device touch them) only as that protection allows.
        check("mprotect", unsafe {
            libc::mprotect(self.addr as *mut libc::c_void, self.len, prot)
        });
    }
}

impl Drop for FixedBuffer {
    fn drop(&mut self) {
        match self.backing {
            Backing::Anon(_) => {}
            Backing::Brk => {
                // Leaves the heap as it was when nothing grew above the slot; otherwise the
                // bytes stay allocated (a brk range can only be returned from the top).
                shrink_brk_at_top(self.addr, self.len);
            }
            Backing::Shm => {
                // SAFETY: detaches exactly this slot's segment; nothing refers to it any more.
                if unsafe { libc::shmdt(self.ptr().cast()) } != 0 {
                    eprintln!("soak: shmdt: {}", io::Error::last_os_error());
                }
            }
        }
    }
}

fn current_brk() -> usize {
    // SAFETY: sbrk(0) only reports the break.
    unsafe { libc::sbrk(0) as usize }
}

/// Grows the heap by `len` bytes (page-aligned first) and returns the new range's start.
fn grow_brk(len: usize) -> usize {
    let misalign = current_brk() % PAGE;
    if misalign != 0 {
        sbrk((PAGE - misalign) as isize);
    }
    sbrk(len as isize)
}

fn sbrk(increment: isize) -> usize {
    // SAFETY: moves the break; callers only shrink ranges they grew themselves and that lie
    // at the top of the heap (checked), so malloc's memory is never given back under it.
    let old = unsafe { libc::sbrk(increment) };
    assert_ne!(
        old as isize,
        -1,
        "sbrk({increment}): {}",
        io::Error::last_os_error()
    );
    old as usize
}

/// Returns `[addr, addr + len)` to the kernel when it is the top of the heap.
fn shrink_brk_at_top(addr: usize, len: usize) -> bool {
    if current_brk() != addr + len {
        return false;
    }
    sbrk(-(len as isize));
    true
}

/// Shrinks the heap below `addr` and grows it back (fresh zero pages at the same addresses)
/// when the range is the top of the heap; `false` when something grew the heap above it.
fn shrink_and_regrow_brk(addr: usize, len: usize) -> bool {
    if !shrink_brk_at_top(addr, len) {
        return false;
    }
    let again = sbrk(len as isize);
    assert_eq!(
        again, addr,
        "the heap did not grow back at the same address"
    );
    true
}

/// Creates a private SysV segment of `len` bytes, attaches it at `addr` and marks it for
/// removal (it goes away with its last detach).
fn attach_shm(addr: usize, len: usize) {
    // SAFETY: shmget creates a new private segment; no memory is touched.
    let id = unsafe { libc::shmget(libc::IPC_PRIVATE, len, libc::IPC_CREAT | 0o600) };
    assert!(
        id >= 0,
        "shmget of {len} bytes: {}",
        io::Error::last_os_error()
    );
    // SAFETY: attaches at `addr`, which the caller keeps free (shmat without SHM_REMAP fails
    // rather than replace a mapping there).
    let at = unsafe { libc::shmat(id, addr as *const libc::c_void, 0) };
    // SAFETY: IPC_RMID only marks the segment; it stays while attached.
    let removed = unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
    assert_eq!(
        at as usize,
        addr,
        "shmat at {addr:#x}: {}",
        io::Error::last_os_error()
    );
    check("shmctl(IPC_RMID)", removed);
}
