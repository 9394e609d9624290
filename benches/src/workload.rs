//! The regions and request streams both caches are measured on.

use std::hint::black_box;
use std::io;
use std::ptr::NonNull;

use regcache_core::testing::{FakeInvalidation, FakeMemory, FakeRegistrar, XorShift};
use regcache_core::{Access, Cache, Limits, Policy};

use crate::ucx::UcxCache;

/// Page size: both caches align registrations to it.
pub use regcache_core::PAGE;
/// Distance between region starts: one page of region, one page of gap, so that neither cache
/// merges neighbours.
pub const STRIDE: usize = 2 * PAGE;
/// Offset of each request inside its region's page.
pub const REQUEST_OFFSET: usize = 256;
/// Bytes of each request.
pub const REQUEST_LEN: usize = 1024;
/// Length of the random request stream (a power of two), walked cyclically.
pub const STREAM: usize = 1 << 16;
/// Rights of every request.
const ACCESS: Access = Access::LOCAL_WRITE;

/// regcache as production runs it (pinned registrations, each watched), over the fakes.
pub type OurCache = Cache<FakeRegistrar, FakeInvalidation>;

/// A reserved, never touched, anonymous mapping that the regions' addresses come from, so UCX
/// is handed addresses of real mapped memory.
#[derive(Debug)]
struct Arena {
    base: NonNull<libc::c_void>,
    len: usize,
}

impl Arena {
    fn new(regions: usize) -> io::Result<Self> {
        let len = regions * STRIDE;
        // SAFETY: a fresh private anonymous mapping at an address the kernel chooses; it aliases
        // nothing. MAP_NORESERVE: its pages are never touched, so they need no backing.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(base).ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        Ok(Self { base, len })
    }

    /// The request into region `index`.
    fn request(&self, index: usize) -> *const u8 {
        self.base
            .as_ptr()
            .cast::<u8>()
            .wrapping_add(index * STRIDE + REQUEST_OFFSET)
            .cast_const()
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` is the mapping `new` made, unmapped once here; nothing reads
        // through it (the caches only keep its addresses as numbers).
        if unsafe { libc::munmap(self.base.as_ptr(), self.len) } != 0 {
            eprintln!("munmap failed: {}", io::Error::last_os_error());
        }
    }
}

/// Both caches, each holding `regions` idle registrations, and a random request stream over
/// them.
#[derive(Debug)]
pub struct HitFixture {
    // Field order is drop order: the caches before the memory their addresses point into.
    ours: OurCache,
    ucx: UcxCache,
    regions: usize,
    /// Requests into uniformly random regions.
    random: Vec<*const u8>,
    /// The request every same-region lookup makes: the middle region.
    same: *const u8,
    /// Keeps the requested addresses mapped while the caches hold them.
    _arena: Arena,
}

impl HitFixture {
    /// Registers `regions` separate regions in both caches.
    ///
    /// # Panics
    /// When the mapping, UCX or a registration fails, or when a cache did not keep `regions`
    /// separate registrations.
    pub fn new(regions: usize) -> Self {
        let arena = Arena::new(regions).expect("mmap of the benchmark arena");
        let memory = FakeMemory::new(regions);
        memory.map(arena.base.as_ptr().addr(), arena.len);
        let limits = Limits {
            max_regions: regions,
            max_bytes: usize::MAX,
            ..Limits::default()
        };
        let ours = memory.cache(Policy::Pinned, limits);
        let ucx = UcxCache::new(regions).expect("ucs_rcache_create");
        for index in 0..regions {
            let request = arena.request(index);
            drop(
                ours.cached_reg(request, REQUEST_LEN, ACCESS)
                    .expect("register"),
            );
            drop(ucx.get(request, REQUEST_LEN).expect("ucs_rcache_get"));
        }
        let stats = ours.stats();
        assert_eq!(
            (stats.regions, stats.merges, stats.evictions),
            (regions as u64, 0, 0),
            "regcache must hold every region separately"
        );
        assert_eq!(ucx.registrations(), regions as u64, "UCX registrations");
        let mut rng = XorShift::new(0x9e37_79b9_7f4a_7c15);
        let random = (0..STREAM)
            .map(|_| arena.request(rng.below(regions)))
            .collect();
        let same = arena.request(regions / 2);
        Self {
            ours,
            ucx,
            regions,
            random,
            same,
            _arena: arena,
        }
    }

    /// `iterations` regcache lookups, each into a random region (`random`) or into the same
    /// region (`!random`); each handle is dropped at once, as UCX's `put` releases its region.
    #[inline(never)]
    pub fn ours_hits(&self, iterations: u64, random: bool) {
        self.run(iterations, random, |request| {
            let registration = self
                .ours
                .cached_reg(request, REQUEST_LEN, ACCESS)
                .expect("cached_reg");
            black_box(registration.lkey());
        });
    }

    /// As [`HitFixture::ours_hits`], through `ucs_rcache_get` and `ucs_rcache_region_put`.
    #[inline(never)]
    pub fn ucx_hits(&self, iterations: u64, random: bool) {
        self.run(iterations, random, |request| {
            let region = self.ucx.get(request, REQUEST_LEN).expect("ucs_rcache_get");
            black_box(&region);
        });
    }

    #[inline(always)]
    fn run(&self, iterations: u64, random: bool, mut lookup: impl FnMut(*const u8)) {
        for iteration in 0..iterations {
            let request = if random {
                self.random[iteration as usize % STREAM]
            } else {
                self.same
            };
            lookup(black_box(request));
        }
    }

    /// Checks that every lookup so far was a hit in both caches.
    ///
    /// # Panics
    /// When one of them missed.
    pub fn assert_only_hits(&self) {
        let regions = self.regions as u64;
        assert_eq!(
            self.ours.stats().misses,
            regions,
            "regcache missed on the hit path"
        );
        assert_eq!(
            self.ucx.registrations(),
            regions,
            "UCX registered on the hit path"
        );
    }
}

/// Both caches limited to `capacity` regions, requested cyclically over twice as many: with
/// least-recently-used eviction every request misses, registers (for free) and, in batches,
/// evicts. This is the miss path's bookkeeping without a device's registration cost.
///
/// UCX 1.13 does not evict down to `max_regions` here (it keeps all the working set and hits),
/// which [`MissFixture::misses`] shows; the benchmark reports it beside UCX's time.
#[derive(Debug)]
pub struct MissFixture {
    ours: OurCache,
    ucx: UcxCache,
    working_set: usize,
    arena: Arena,
}

impl MissFixture {
    /// Caches of `capacity` regions over a working set of `2 * capacity`.
    ///
    /// # Panics
    /// When the mapping or UCX fails.
    pub fn new(capacity: usize) -> Self {
        let working_set = 2 * capacity;
        let arena = Arena::new(working_set).expect("mmap of the benchmark arena");
        // Eviction lets the cache overshoot its limit by one region before it trims.
        let memory = FakeMemory::new(capacity + 1);
        memory.map(arena.base.as_ptr().addr(), arena.len);
        let limits = Limits {
            max_regions: capacity,
            max_bytes: usize::MAX,
            ..Limits::default()
        };
        Self {
            ours: memory.cache(Policy::Pinned, limits),
            ucx: UcxCache::new(capacity).expect("ucs_rcache_create"),
            working_set,
            arena,
        }
    }

    /// `iterations` regcache requests continuing the cyclic walk from `*cursor`.
    #[inline(never)]
    pub fn ours_misses(&self, iterations: u64, cursor: &mut usize) {
        self.run(iterations, cursor, |request| {
            let registration = self
                .ours
                .cached_reg(request, REQUEST_LEN, ACCESS)
                .expect("cached_reg");
            black_box(registration.lkey());
        });
    }

    /// As [`MissFixture::ours_misses`], through UCX.
    #[inline(never)]
    pub fn ucx_misses(&self, iterations: u64, cursor: &mut usize) {
        self.run(iterations, cursor, |request| {
            let region = self.ucx.get(request, REQUEST_LEN).expect("ucs_rcache_get");
            black_box(&region);
        });
    }

    #[inline(always)]
    fn run(&self, iterations: u64, cursor: &mut usize, mut request: impl FnMut(*const u8)) {
        for _ in 0..iterations {
            request(black_box(self.arena.request(*cursor)));
            *cursor = (*cursor + 1) % self.working_set;
        }
    }

    /// regcache's misses and UCX's registrations so far, by [`MissFixture::ours_misses`] and
    /// [`MissFixture::ucx_misses`].
    pub fn misses(&self) -> (u64, u64) {
        (self.ours.stats().misses, self.ucx.registrations())
    }
}
