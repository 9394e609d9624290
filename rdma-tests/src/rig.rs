//! What the registration-cache tests share: a queue pair in the cache's protection domain
//! connected to a peer that owns an RDMA WRITE target, and anonymous or heap memory that a test
//! unmaps, zaps, moves and maps again at the same address.

use std::ptr::NonNull;
use std::sync::Arc;

use memmap2::MmapMut;
use verbs::{
    AccessFlags, CompletionQueue, MemoryRegion, Mtu, ProtectionDomain, QpConfig, QueuePair, Sge,
};

use verbs::FIRST_PORT;

use crate::{error_chain, Node, Side, COMPLETION_TIMEOUT};

/// A peer's registered write target, cleared before every write so that bytes found in it
/// were sent by that write.
#[derive(Debug)]
struct Target {
    // Before `map`: deregistered before the memory is unmapped (fields drop in order).
    mr: MemoryRegion,
    map: MmapMut,
}

/// A QP in a given protection domain (the cache's), connected at path MTU 4096 to a QP on a
/// peer device that owns a write target.
#[derive(Debug)]
pub struct WriteRig {
    qp: QueuePair,
    target: Target,
    peer: Side,
}

impl WriteRig {
    /// Creates a QP in `pd` (a protection domain on `from`'s device) and connects it to a new
    /// QP on `to`, which gets a write target of `target_len` bytes.
    ///
    /// # Panics
    ///
    /// When a verbs call fails.
    #[must_use]
    pub fn new(pd: &Arc<ProtectionDomain>, from: Node, to: Node, target_len: usize) -> Self {
        let fail = |what: &str, err: verbs::Error| -> ! { panic!("{what}: {}", error_chain(&err)) };
        let ctx = pd.context();
        let gid = ctx
            .roce_v2_gid(FIRST_PORT, Some(from.addr))
            .unwrap_or_else(|e| fail("GID table", e))
            .unwrap_or_else(|| panic!("{} has no RoCE v2 GID for {}", from.device, from.addr));
        let cq = CompletionQueue::new(ctx, 16).unwrap_or_else(|e| fail("create CQ", e));
        let qp = QueuePair::create_rc(pd, &cq, &cq, QpConfig::new(FIRST_PORT, gid.index))
            .unwrap_or_else(|e| fail("create QP", e));
        let peer = Side::open(to);
        let mut map = MmapMut::map_anon(target_len).expect("anonymous mapping for the target");
        // SAFETY: the mapping is owned by the target and outlives the region (field order).
        // The device writes it only during `WriteRig::write`, which holds `&mut self`; Rust looks at
        // it only through `WriteRig::landed` (`&self`), so never while a write is in flight.
        let mr = unsafe {
            MemoryRegion::register(
                &peer.pd,
                map.as_mut_ptr(),
                target_len,
                AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE,
            )
        }
        .unwrap_or_else(|e| fail("register the target", e));
        qp.connect(&peer.qp.endpoint(), Mtu::Mtu4096)
            .unwrap_or_else(|e| fail("connect the cache's QP", e));
        peer.qp
            .connect(&qp.endpoint(), Mtu::Mtu4096)
            .unwrap_or_else(|e| fail("connect the peer's QP", e));
        Self {
            qp,
            target: Target { mr, map },
            peer,
        }
    }

    /// Clears the first `len` bytes of the target, RDMA WRITEs `len` bytes at `addr` (covered
    /// by the local key `lkey`) into it and waits for the completion.
    ///
    /// # Errors
    ///
    /// The verbs error of the post or the completion (a timeout after [`COMPLETION_TIMEOUT`]).
    ///
    /// # Panics
    ///
    /// When `len` exceeds the target or a work request's 4 GiB limit.
    pub fn write(&mut self, addr: usize, len: usize, lkey: u32) -> verbs::Result<()> {
        self.target.map[..len].fill(0);
        let sge = Sge {
            addr: addr as u64,
            length: u32::try_from(len).expect("a work request carries less than 4 GiB"),
            lkey,
        };
        self.qp
            .post_write(1, &[sge], self.target.mr.addr(), self.target.mr.rkey())?;
        self.qp
            .send_cq()
            .wait_completion(COMPLETION_TIMEOUT)
            .map(drop)
    }

    /// The first `len` bytes of the target: what the last write delivered.
    #[must_use]
    pub fn landed(&self, len: usize) -> &[u8] {
        &self.target.map[..len]
    }

    /// The peer's device.
    #[must_use]
    pub fn peer_device(&self) -> &str {
        self.peer.ctx.name()
    }
}

/// How many bytes of a delivery were the expected byte, the stale byte, or something else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Bytes equal to the expected (new) value.
    pub expected: usize,
    /// Bytes equal to the stale (old) value.
    pub stale: usize,
    /// Any other byte (e.g. 0: nothing arrived).
    pub other: usize,
}

impl Tally {
    /// Counts `bytes` against `expected` and `stale`.
    #[must_use]
    pub fn of(bytes: &[u8], expected: u8, stale: u8) -> Self {
        let mut tally = Self {
            expected: 0,
            stale: 0,
            other: 0,
        };
        for &byte in bytes {
            match byte {
                b if b == expected => tally.expected += 1,
                b if b == stale => tally.stale += 1,
                _ => tally.other += 1,
            }
        }
        tally
    }

    /// Whether every byte is the expected one.
    #[must_use]
    pub fn all_expected(&self) -> bool {
        self.stale == 0 && self.other == 0
    }
}

/// A private anonymous mapping reached only through raw pointers (so the device may read it
/// without conflicting with a Rust reference), unmapped on drop.
#[derive(Debug)]
pub struct AnonMap {
    addr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned memory reached only through raw pointers by whoever owns the
// value; nothing ties it to the thread that created it.
unsafe impl Send for AnonMap {}

impl AnonMap {
    /// Maps `len` bytes where the kernel chooses.
    ///
    /// # Panics
    ///
    /// When mmap fails.
    #[must_use]
    pub fn new(len: usize) -> Self {
        Self::map(None, len)
    }

    /// Maps `len` bytes exactly at `addr` (`MAP_FIXED_NOREPLACE`: never over another mapping).
    ///
    /// # Panics
    ///
    /// When that range is not free (something else was mapped there since) or mmap fails.
    #[must_use]
    pub fn at(addr: usize, len: usize) -> Self {
        let map = Self::map(Some(addr), len);
        assert_eq!(map.addr(), addr, "MAP_FIXED_NOREPLACE ignored its address");
        map
    }

    /// [`AnonMap::at`], or `None` when the range is not free.
    #[must_use]
    pub fn try_at(addr: usize, len: usize) -> Option<Self> {
        Self::try_map(Some(addr), len)
            .ok()
            .filter(|map| map.addr() == addr)
    }

    fn map(at: Option<usize>, len: usize) -> Self {
        Self::try_map(at, len).unwrap_or_else(|err| panic!("mmap of {len} bytes at {at:x?}: {err}"))
    }

    fn try_map(at: Option<usize>, len: usize) -> std::io::Result<Self> {
        let (hint, fixed) = match at {
            Some(addr) => (addr as *mut libc::c_void, libc::MAP_FIXED_NOREPLACE),
            None => (std::ptr::null_mut(), 0),
        };
        // SAFETY: an anonymous private mapping; without MAP_FIXED the kernel never replaces an
        // existing mapping (MAP_FIXED_NOREPLACE fails with EEXIST instead), so nothing Rust
        // owns is affected.
        let ptr = unsafe {
            libc::mmap(
                hint,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | fixed,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            addr: NonNull::new(ptr.cast()).expect("mmap returned NULL"),
            len,
        })
    }

    /// Start address.
    #[must_use]
    pub fn addr(&self) -> usize {
        self.addr.as_ptr() as usize
    }

    /// Start pointer, for `cached_reg`.
    #[must_use]
    pub fn ptr(&self) -> *const u8 {
        self.addr.as_ptr()
    }

    /// Length in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: mmap refuses 0 bytes).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets every byte to `byte`.
    pub fn fill(&self, byte: u8) {
        self.fill_range(0, self.len, byte);
    }

    /// Sets the `len` bytes at `offset` to `byte`.
    ///
    /// # Panics
    ///
    /// When the range does not lie inside the mapping.
    pub fn fill_range(&self, offset: usize, len: usize, byte: u8) {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len),
            "{len} bytes at {offset} do not fit a mapping of {} bytes",
            self.len
        );
        // SAFETY: the range lies inside this live, writable mapping (asserted), reached by no
        // Rust reference; the device only reads it, and the tests fill it only while no work
        // request is in flight.
        unsafe { std::ptr::write_bytes(self.addr.as_ptr().add(offset), byte, len) };
    }

    /// Maps fresh zero pages over this range in one step (`MAP_FIXED`): an unmap and a map at
    /// the same address with no window in which another thread could take the range.
    ///
    /// # Panics
    ///
    /// When mmap fails.
    pub fn remap_in_place(&self) {
        // SAFETY: MAP_FIXED replaces exactly this owned mapping (reached by no Rust
        // reference) with a new anonymous one of the same size and protection.
        let ptr = unsafe {
            libc::mmap(
                self.addr.as_ptr().cast(),
                self.len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        assert_eq!(
            ptr,
            self.addr.as_ptr().cast(),
            "mmap(MAP_FIXED): {}",
            std::io::Error::last_os_error()
        );
    }

    /// `madvise(MADV_DONTNEED)`: the pages are dropped and the next touch maps fresh zero
    /// pages at the same addresses.
    ///
    /// # Panics
    ///
    /// When madvise fails.
    pub fn discard_pages(&self) {
        // SAFETY: only this mapping's pages, which no Rust reference covers, are discarded.
        let ret =
            unsafe { libc::madvise(self.addr.as_ptr().cast(), self.len, libc::MADV_DONTNEED) };
        assert_eq!(ret, 0, "madvise: {}", std::io::Error::last_os_error());
    }

    /// Moves this mapping's pages onto `destination`'s range (`mremap` with `MREMAP_FIXED`,
    /// which unmaps what was there), leaving this range unmapped; returns the moved mapping.
    ///
    /// # Panics
    ///
    /// When the lengths differ or mremap fails.
    #[must_use]
    pub fn move_onto(self, destination: Self) -> Self {
        assert_eq!(
            self.len, destination.len,
            "mremap onto a range of another length"
        );
        let (from, to, len) = (self.addr, destination.addr, self.len);
        // Both ranges change hands: neither value may unmap on drop any more.
        std::mem::forget(destination);
        std::mem::forget(self);
        // SAFETY: moves one owned mapping onto the other owned one (both forgotten above, so
        // neither is unmapped twice); no Rust reference covers either.
        let ptr = unsafe {
            libc::mremap(
                from.as_ptr().cast(),
                len,
                len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                to.as_ptr().cast::<libc::c_void>(),
            )
        };
        assert_eq!(
            ptr,
            to.as_ptr().cast(),
            "mremap: {}",
            std::io::Error::last_os_error()
        );
        Self { addr: to, len }
    }
}

impl Drop for AnonMap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly this owned mapping, once.
        let ret = unsafe { libc::munmap(self.addr.as_ptr().cast(), self.len) };
        if ret != 0 {
            eprintln!("munmap: {}", std::io::Error::last_os_error());
        }
    }
}

/// A block from the C heap (`malloc`), freed on drop: what MPI applications hand to their
/// RDMA layer. Small blocks come from the brk heap, large ones from their own mmap.
#[derive(Debug)]
pub struct HeapBlock {
    ptr: NonNull<u8>,
    len: usize,
}

impl HeapBlock {
    /// `malloc(len)`.
    ///
    /// # Panics
    ///
    /// When malloc fails.
    #[must_use]
    pub fn new(len: usize) -> Self {
        // SAFETY: plain malloc; the block is owned by the returned value.
        let ptr = unsafe { libc::malloc(len) };
        Self {
            ptr: NonNull::new(ptr.cast()).expect("malloc failed"),
            len,
        }
    }

    /// Start address.
    #[must_use]
    pub fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// Start pointer, for `cached_reg`.
    #[must_use]
    pub fn ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Sets every byte to `byte`.
    pub fn fill(&self, byte: u8) {
        // SAFETY: the block is live and owned, reached by no Rust reference; the device only
        // reads it, and the tests fill it only while no work request is in flight.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr(), byte, self.len) };
    }

    /// Fixes glibc's mmap threshold at `bytes`, so that blocks of at least that size are
    /// always mmapped and unmapped by `free` (by default glibc raises the threshold to the
    /// size of the last freed mmapped block, which would move the next one to the brk heap).
    ///
    /// # Panics
    ///
    /// When mallopt refuses the value.
    pub fn fix_mmap_threshold(bytes: i32) {
        // SAFETY: mallopt only changes malloc's tuning; it is thread-safe.
        let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, bytes) };
        assert_eq!(ok, 1, "mallopt(M_MMAP_THRESHOLD, {bytes}) refused");
    }
}

impl Drop for HeapBlock {
    fn drop(&mut self) {
        // SAFETY: the block came from malloc and is freed exactly once.
        unsafe { libc::free(self.ptr.as_ptr().cast()) };
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Mutex, MutexGuard, PoisonError};

    use super::*;

    /// Held by every test here that maps: they run in parallel threads of one process, and a
    /// range one of them frees would otherwise be taken by another's next mapping before it
    /// maps that range again.
    fn mapping_alone() -> MutexGuard<'static, ()> {
        static MAPPING: Mutex<()> = Mutex::new(());
        MAPPING.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps the page below `addr` mapped, so that a range freed just above it stays a hole
    /// between two mappings, too small for a mapping no test here makes (a thread's stack,
    /// 2 MiB, which the kernel puts in the highest gap that fits). `None` when something is
    /// mapped there already, which fences as well.
    fn fence_below(addr: usize) -> Option<AnonMap> {
        let page = 4096;
        AnonMap::try_at(addr - page, page)
    }

    #[test]
    fn a_mapping_comes_back_at_its_address_after_munmap() {
        let _alone = mapping_alone();
        // Below malloc's mmap threshold: no other thread's allocation lands in the hole.
        let first = AnonMap::new(64 << 10);
        first.fill(b'A');
        let addr = first.addr();
        let _fence = fence_below(addr);
        drop(first);
        let second = AnonMap::at(addr, 64 << 10);
        second.fill(b'B');
        assert_eq!(second.addr(), addr);
    }

    #[test]
    fn moved_pages_keep_their_bytes_and_the_old_range_is_free() {
        let _alone = mapping_alone();
        let source = AnonMap::new(8192);
        source.fill(b'A');
        let old = source.addr();
        let _fence = fence_below(old);
        let moved = source.move_onto(AnonMap::new(8192));
        assert_ne!(moved.addr(), old);
        // SAFETY: reads the live moved mapping through a raw pointer; nothing else touches it.
        assert_eq!(unsafe { *moved.ptr() }, b'A');
        let again = AnonMap::at(old, 8192);
        // SAFETY: as above, for the new mapping: fresh anonymous pages read as zero.
        assert_eq!(unsafe { *again.ptr() }, 0);
    }

    #[test]
    fn remapped_pages_read_as_zero() {
        let _alone = mapping_alone();
        let map = AnonMap::new(8192);
        map.fill(b'A');
        map.remap_in_place();
        // SAFETY: reads the live mapping through a raw pointer; nothing else touches it.
        assert_eq!(unsafe { *map.ptr().add(4096) }, 0);
    }

    #[test]
    fn discarded_pages_read_as_zero() {
        let _alone = mapping_alone();
        let map = AnonMap::new(4096);
        map.fill(b'A');
        map.discard_pages();
        // SAFETY: reads the live mapping through a raw pointer; nothing else touches it.
        assert_eq!(unsafe { *map.ptr() }, 0);
    }

    #[test]
    fn tally_counts_each_kind() {
        let tally = Tally::of(b"BBAx", b'B', b'A');
        assert_eq!(
            tally,
            Tally {
                expected: 2,
                stale: 1,
                other: 1
            }
        );
        assert!(!tally.all_expected());
        assert!(Tally::of(b"BB", b'B', b'A').all_expected());
    }
}
