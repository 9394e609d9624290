//! Memory regions, their access flags and scatter/gather elements.

use std::fmt;
use std::ops::BitOr;
use std::ptr::NonNull;
use std::sync::Arc;

use rdma_sys::{
    ib_uverbs_advise_mr_advice, ibv_access_flags, ibv_dereg_mr, ibv_mr, ibv_reg_mr, ibv_sge,
};

use crate::error::{last_os_error, note_drop_result, returned_os_error, Error, Result};
use crate::ext::verbs_op;
use crate::pd::ProtectionDomain;

/// Access rights of a memory region (a subset of `enum ibv_access_flags`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AccessFlags(u32);

impl AccessFlags {
    /// Local read only: the region can be the source of SENDs and RDMA WRITEs.
    pub const LOCAL_READ: Self = Self(0);
    /// The local HCA may write into the region (RECV and RDMA READ sinks).
    pub const LOCAL_WRITE: Self = Self(ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0);
    /// Remote peers may RDMA WRITE into the region (requires `LOCAL_WRITE`).
    pub const REMOTE_WRITE: Self = Self(ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0);
    /// Remote peers may RDMA READ from the region.
    pub const REMOTE_READ: Self = Self(ibv_access_flags::IBV_ACCESS_REMOTE_READ.0);
    /// On-demand paging: pages are not pinned; the HCA faults them in and
    /// follows changes of the mapping.
    pub const ON_DEMAND: Self = Self(ibv_access_flags::IBV_ACCESS_ON_DEMAND.0);

    /// Every flag other than `LOCAL_READ` (which is no bit), with its name.
    const NAMED: [(Self, &'static str); 4] = [
        (Self::LOCAL_WRITE, "LOCAL_WRITE"),
        (Self::REMOTE_WRITE, "REMOTE_WRITE"),
        (Self::REMOTE_READ, "REMOTE_READ"),
        (Self::ON_DEMAND, "ON_DEMAND"),
    ];

    /// Whether every flag of `other` is set in `self`.
    #[must_use]
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The raw `ibv_access_flags` bits.
    #[must_use]
    pub fn bits(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for AccessFlags {
    type Error = Error;

    /// The flags of raw `ibv_access_flags` bits.
    ///
    /// # Errors
    /// [`Error::UnsupportedAccess`] when `bits` holds a right this type does not offer (remote
    /// atomics, for one).
    fn try_from(bits: u32) -> Result<Self> {
        let known = Self::NAMED
            .iter()
            .fold(Self::LOCAL_READ, |all, &(flag, _)| all | flag);
        if bits & !known.0 == 0 {
            Ok(Self(bits))
        } else {
            Err(Error::UnsupportedAccess { bits })
        }
    }
}

impl BitOr for AccessFlags {
    type Output = Self;

    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl fmt::Debug for AccessFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set: Vec<&str> = Self::NAMED
            .iter()
            .filter(|(flag, _)| self.contains(*flag))
            .map(|&(_, name)| name)
            .collect();
        if set.is_empty() {
            f.write_str("AccessFlags(LOCAL_READ)")
        } else {
            write!(f, "AccessFlags({})", set.join(" | "))
        }
    }
}

/// A scatter/gather element (`struct ibv_sge`): a local byte range and the
/// key of a memory region covering it.
///
/// Constructing one is safe: the HCA checks the range against the region
/// named by `lkey` and completes the work request with an error if it does
/// not fit.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sge {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub length: u32,
    /// Local key of the memory region containing the range.
    pub lkey: u32,
}

// `Sge` slices are handed to libibverbs as `ibv_sge` arrays.
const _: () = {
    assert!(size_of::<Sge>() == size_of::<ibv_sge>());
    assert!(align_of::<Sge>() == align_of::<ibv_sge>());
    assert!(std::mem::offset_of!(Sge, addr) == std::mem::offset_of!(ibv_sge, addr));
    assert!(std::mem::offset_of!(Sge, length) == std::mem::offset_of!(ibv_sge, length));
    assert!(std::mem::offset_of!(Sge, lkey) == std::mem::offset_of!(ibv_sge, lkey));
};

/// What [`MemoryRegion::prefetch`] asks the HCA to do (`ibv_advise_mr` advice).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefetch {
    /// Fault the pages in for reading.
    Read,
    /// Fault the pages in writable.
    Write,
    /// Map only pages that are already present, without faulting.
    NoFault,
}

/// `IBV_ADVISE_MR_FLAG_FLUSH` (`enum ibv_advise_mr_flags`, not bound by rdma-sys):
/// complete the prefetch before returning.
const ADVISE_MR_FLAG_FLUSH: u32 = 1;

/// A registered memory region (`struct ibv_mr`), deregistered on drop.
pub struct MemoryRegion {
    raw: NonNull<ibv_mr>,
    pd: Arc<ProtectionDomain>,
    addr: u64,
    len: usize,
    lkey: u32,
    rkey: u32,
    access: AccessFlags,
}

// SAFETY: verbs objects are safe for multi-threaded access by default
// (ibv_alloc_td(3)); the MR pointer is only used for `ibv_advise_mr` and the
// single `ibv_dereg_mr` in `Drop`; the cached fields are immutable.
unsafe impl Send for MemoryRegion {}
// SAFETY: as for `Send`: `&self` methods read immutable copies or call thread-safe verbs.
unsafe impl Sync for MemoryRegion {}

impl MemoryRegion {
    /// Registers `[addr, addr + len)` with `pd`.
    ///
    /// Without [`AccessFlags::ON_DEMAND`] the kernel pins the pages that back the
    /// range now; the HCA keeps using those physical pages until the region is
    /// dropped, even if the range is later unmapped or remapped. With
    /// `ON_DEMAND` the HCA follows the process's current mapping.
    ///
    /// # Safety
    ///
    /// While the region exists, the HCA writes into the range whenever a local
    /// work request (with [`AccessFlags::LOCAL_WRITE`]) or a remote peer (with
    /// [`AccessFlags::REMOTE_WRITE`]) targets it, and reads it for remote
    /// READs, all outside Rust's knowledge. The caller must therefore
    /// guarantee that no Rust reference that assumes the bytes are unchanged
    /// (`&[u8]`, `&T`) or exclusively owned (`&mut`) covers a part of the range
    /// that such a write can reach while it can happen, i.e. the range is
    /// memory the caller set aside for I/O (for example an anonymous mapping it
    /// only accesses through raw pointers or after completions).
    ///
    /// The caller must also either keep the range mapped for the lifetime of a
    /// pinned region, or accept that the HCA then sees the previously pinned
    /// pages (stale data, never other processes' memory).
    ///
    /// # Errors
    ///
    /// [`Error::RegisterMr`] with the errno of `ibv_reg_mr`, e.g. `EFAULT` for an
    /// unmapped range, `ENOMEM`/`EPERM` over the locked-memory limit, or
    /// `EOPNOTSUPP` for `ON_DEMAND` on a device without ODP.
    pub unsafe fn register(
        pd: &Arc<ProtectionDomain>,
        addr: *mut u8,
        len: usize,
        access: AccessFlags,
    ) -> Result<Self> {
        let register_error = |source| Error::RegisterMr { len, source };
        let flags = i32::try_from(access.bits())
            .map_err(|_| register_error(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
        // SAFETY: the PD is alive (we hold an `Arc`); the kernel validates that
        // the range is mapped; the aliasing consequences of letting the HCA
        // access the range are the caller's obligation (see `# Safety`).
        let raw = unsafe { ibv_reg_mr(pd.as_ptr(), addr.cast(), len, flags) };
        let raw = NonNull::new(raw).ok_or_else(|| register_error(last_os_error()))?;
        // SAFETY: a successfully registered `ibv_mr` is initialised by
        // libibverbs and its public fields are never changed afterwards.
        let mr = unsafe { raw.as_ref() };
        Ok(Self {
            raw,
            pd: Arc::clone(pd),
            addr: mr.addr as u64,
            len: mr.length,
            lkey: mr.lkey,
            rkey: mr.rkey,
            access,
        })
    }

    /// Local key, for scatter/gather elements of local work requests.
    #[must_use]
    pub fn lkey(&self) -> u32 {
        self.lkey
    }

    /// Remote key, handed to peers that RDMA READ/WRITE this region.
    #[must_use]
    pub fn rkey(&self) -> u32 {
        self.rkey
    }

    /// Start address of the registered range.
    #[must_use]
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Length of the registered range in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the registered range is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Access flags the region was registered with.
    #[must_use]
    pub fn access(&self) -> AccessFlags {
        self.access
    }

    /// The protection domain the region belongs to.
    #[must_use]
    pub fn pd(&self) -> &Arc<ProtectionDomain> {
        &self.pd
    }

    /// Scatter/gather element for `len` bytes at `offset` into the region.
    ///
    /// # Errors
    ///
    /// [`Error::RangeOutOfBounds`] if the range does not lie inside the region or
    /// is longer than a work request can carry (4 GiB - 1).
    pub fn sge(&self, offset: usize, len: usize) -> Result<Sge> {
        let out_of_bounds = || Error::RangeOutOfBounds {
            offset,
            len,
            region_len: self.len,
        };
        let end = offset.checked_add(len).ok_or_else(out_of_bounds)?;
        if end > self.len {
            return Err(out_of_bounds());
        }
        Ok(Sge {
            addr: self.addr + offset as u64,
            length: u32::try_from(len).map_err(|_| out_of_bounds())?,
            lkey: self.lkey,
        })
    }

    /// Asks the HCA to map `len` bytes at `offset` of an on-demand region now
    /// (`ibv_advise_mr`), synchronously when `flush` is set.
    ///
    /// Returns `Ok(false)` when the device or provider does not implement
    /// advice (`EOPNOTSUPP`): the pages are then faulted in on first access.
    ///
    /// # Errors
    ///
    /// [`Error::RangeOutOfBounds`] for a range outside the region, or
    /// [`Error::AdviseMr`] with any other errno of `ibv_advise_mr` (e.g.
    /// `EINVAL` for a region registered without `ON_DEMAND`, `EFAULT` for an
    /// unmapped range with `flush`).
    pub fn prefetch(
        &self,
        offset: usize,
        len: usize,
        advice: Prefetch,
        flush: bool,
    ) -> Result<bool> {
        let mut sge = self.sge(offset, len)?;
        let advice = match advice {
            Prefetch::Read => ib_uverbs_advise_mr_advice::IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH,
            Prefetch::Write => {
                ib_uverbs_advise_mr_advice::IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_WRITE
            }
            Prefetch::NoFault => {
                ib_uverbs_advise_mr_advice::IB_UVERBS_ADVISE_MR_ADVICE_PREFETCH_NO_FAULT
            }
        };
        let flags = if flush { ADVISE_MR_FLAG_FLUSH } else { 0 };
        let Some(advise) = verbs_op!(self.pd.context(), advise_mr) else {
            return Ok(false);
        };
        // SAFETY: the PD and MR are alive; `sge` is a valid one-element
        // `ibv_sge` array (layout asserted above) that the call only reads;
        // prefetching maps pages but never changes their contents.
        let ret = unsafe {
            advise(
                self.pd.as_ptr(),
                advice,
                flags,
                std::ptr::from_mut(&mut sge).cast::<ibv_sge>(),
                1,
            )
        };
        match ret {
            0 => Ok(true),
            _ if ret.abs() == libc::EOPNOTSUPP => Ok(false),
            _ => Err(Error::AdviseMr {
                len,
                source: returned_os_error(ret),
            }),
        }
    }
}

impl fmt::Debug for MemoryRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryRegion")
            .field("addr", &format_args!("{:#x}", self.addr))
            .field("len", &self.len)
            .field("lkey", &format_args!("{:#x}", self.lkey))
            .field("rkey", &format_args!("{:#x}", self.rkey))
            .field("access", &self.access)
            .finish_non_exhaustive()
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // SAFETY: registered in `register` and deregistered exactly once; the
        // PD outlives this call because we hold an `Arc` to it.
        let ret = unsafe { ibv_dereg_mr(self.raw.as_ptr()) };
        note_drop_result("ibv_mr", ret);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_bits_convert_when_known() {
        let all = AccessFlags::LOCAL_WRITE
            | AccessFlags::REMOTE_WRITE
            | AccessFlags::REMOTE_READ
            | AccessFlags::ON_DEMAND;
        assert_eq!(AccessFlags::try_from(all.bits()).unwrap(), all);
        assert_eq!(AccessFlags::try_from(0).unwrap(), AccessFlags::LOCAL_READ);
        // IBV_ACCESS_REMOTE_ATOMIC
        assert!(matches!(
            AccessFlags::try_from(8 | 1),
            Err(Error::UnsupportedAccess { bits: 9 })
        ));
    }
}
