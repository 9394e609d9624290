//! [`Monitor`]: one open `/dev/regwatch`, its status area and its watches.

use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use crate::error::{Error, Result};
use crate::record::{Record, Watch};
use crate::status::StatusArea;
use crate::sys;
use crate::uapi::{
    self, regwatch_api, regwatch_capacity, regwatch_record, regwatch_status, regwatch_unwatch,
    regwatch_watch,
};

/// Records fetched per read() by [`Monitor::drain`] (48 bytes each).
const DRAIN_BATCH: usize = 64;

/// What the module said in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiInfo {
    /// Whether protection-only changes dirty watches on this fd (asked for
    /// with [`Builder::strict`], or forced by the module parameter `strict=1`).
    pub strict: bool,
    /// Largest capacity the module accepts.
    pub max_slots: u64,
    /// Capacity used when [`Builder::capacity`] is not given.
    pub default_slots: u64,
    /// Watches one user may have alive over all its monitors (the module
    /// parameter `max_user_watches`) when the handshake ran.
    pub max_user_watches: u64,
}

/// Watches of the user a monitor counts against (its opener's effective
/// uid), over all that user's monitors in every process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserWatches {
    /// Watches alive now.
    pub alive: u64,
    /// The module's `max_user_watches`: a watch beyond it fails with `ENOSPC`.
    pub limit: u64,
}

/// Running totals of the status area. Each is loaded on its own (acquire),
/// so together they are not a snapshot: compare them only once no other
/// thread and no event can change them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    /// Successful watches.
    pub watched: u64,
    /// Successful unwatches.
    pub unwatched: u64,
    /// Watches that turned dirty.
    pub dirtied: u64,
    /// Records returned by read().
    pub reported: u64,
}

/// Options for opening a [`Monitor`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Builder {
    capacity: Option<u32>,
    strict: bool,
}

impl Builder {
    /// Number of slots, i.e. the most watches alive at once (default: the
    /// module's `default_slots`, see [`ApiInfo`]).
    #[must_use]
    pub fn capacity(mut self, slots: u32) -> Self {
        self.capacity = Some(slots);
        self
    }

    /// Also dirty watches on protection-only changes (mprotect, fork).
    #[must_use]
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// Opens `/dev/regwatch`, performs the API handshake, fixes the capacity
    /// and maps the status area.
    ///
    /// # Errors
    ///
    /// [`Error::NotLoaded`] when `/dev/regwatch` does not exist (`ENOENT`) or
    /// has no driver behind it (`ENXIO`, `ENODEV`); [`Error::Open`] for other
    /// open() errors; [`Error::Handshake`] when the handshake fails or the
    /// module's ABI (version, record size, strict mode) differs from this
    /// crate's; [`Error::SetCapacity`] (`EINVAL` for 0 or above `max_slots`,
    /// `ENOMEM`); [`Error::Map`].
    pub fn open(self) -> Result<Monitor> {
        let fd = sys::open_device().map_err(|source| match source.raw_os_error() {
            Some(libc::ENOENT | libc::ENXIO | libc::ENODEV) => Error::NotLoaded,
            _ => Error::Open(source),
        })?;
        let api = handshake(fd.as_fd(), self.strict).map_err(Error::Handshake)?;
        let slots = match self.capacity {
            Some(slots) => slots,
            None => u32::try_from(api.default_slots)
                .map_err(|_| Error::Handshake(invalid_data("default_slots exceeds u32")))?,
        };
        let mut capacity = regwatch_capacity {
            slots: slots.into(),
            ..Default::default()
        };
        sys::ioctl(fd.as_fd(), &mut capacity).map_err(|source| Error::SetCapacity {
            slots: slots.into(),
            source,
        })?;
        let status =
            StatusArea::map(fd.as_fd(), capacity.status_size, slots).map_err(Error::Map)?;
        Ok(Monitor { fd, status, api })
    }
}

fn handshake(fd: BorrowedFd<'_>, strict: bool) -> io::Result<ApiInfo> {
    let mut api = regwatch_api {
        api: uapi::API,
        features: if strict {
            uapi::REGWATCH_FEATURE_STRICT.into()
        } else {
            0
        },
        ..Default::default()
    };
    sys::ioctl(fd, &mut api)?;
    check_abi(&api)?;
    let strict_on = api.features & u64::from(uapi::REGWATCH_FEATURE_STRICT) != 0;
    if strict && !strict_on {
        return Err(invalid_data("module did not enable strict mode"));
    }
    Ok(ApiInfo {
        strict: strict_on,
        max_slots: api.max_slots,
        default_slots: api.default_slots,
        max_user_watches: api.max_user_watches,
    })
}

fn check_abi(api: &regwatch_api) -> io::Result<()> {
    if api.api != uapi::API || api.record_size != size_of::<regwatch_record>() as u64 {
        return Err(invalid_data(format!(
            "module speaks API {} with {}-byte records, this crate API {} with {}-byte records",
            api.api,
            api.record_size,
            uapi::API,
            size_of::<regwatch_record>()
        )));
    }
    Ok(())
}

fn watch_arg(start: usize, len: usize, cookie: u64) -> regwatch_watch {
    regwatch_watch {
        // Lossless: lib.rs admits 64-bit targets only.
        start: start as u64,
        length: len as u64,
        cookie,
        ..Default::default()
    }
}

fn invalid_data(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// An open `/dev/regwatch`: watches ranges of this process's address space
/// and tells, without a system call, whether the pages behind them changed.
///
/// # Reading the status area
///
/// [`Monitor::is_valid`], [`Monitor::generation`], [`Monitor::dirty_unread`]
/// and [`Monitor::totals`] read words the kernel keeps changing. Each is one
/// atomic load with acquire ordering (a relaxed load plus an acquire fence,
/// which is what the Rust memory model allows on read-only memory). A value
/// may be stale the moment it is returned; a change is never missed: the
/// kernel marks a watch dirty (and bumps the generation, with release
/// ordering, after that) from the MMU-notifier callback that runs *before*
/// the pages change, so once a change has happened every later load sees
/// it, and nothing the caller does after a load (e.g. using a registration
/// it found valid) is reordered before it.
///
/// # Threads
///
/// `Monitor` is `Send` and `Sync`: the module serialises every ioctl and
/// read() of one fd on its own locks (and takes no user pointer but the
/// argument struct), the status area is only loaded from, and nothing on the
/// Rust side is mutable. Any thread may watch, unwatch, drain and check
/// validity concurrently. One consequence of concurrency: a [`Monitor::drain`]
/// may report a watch that another thread unwatched while the read was in
/// flight (the kernel had handed the record out first); compare
/// [`Record::watch`] with the watches you still hold.
///
/// # Fork
///
/// The fd is bound to the address space that opened it. In a fork child
/// (and in any other process holding the fd) every call that reaches the
/// kernel — [`Monitor::watch`], [`Monitor::watch_instead_of`],
/// [`Monitor::unwatch`], [`Monitor::drain`] — fails with `EIO` (see
/// [`Error::raw_os_error`]) and changes nothing. The
/// module does not map the status area into a child, so there the
/// status-area readers answer without loading: [`Monitor::is_valid`] is
/// false for every watch, [`Monitor::generation`], [`Monitor::dirty_unread`]
/// and [`Monitor::totals`] are 0. (The child is detected by a
/// `pthread_atfork()` handler; a child made by a raw `clone()` system call
/// without `CLONE_VM` is not, and must not use the monitor at all.) Dropping
/// the child's copy closes its fd only; the parent's watches stay.
#[derive(Debug)]
pub struct Monitor {
    fd: OwnedFd,
    status: StatusArea,
    api: ApiInfo,
}

// The documented claim, checked at compile time.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Monitor>();
};

impl Monitor {
    /// Options to open a monitor with.
    #[must_use]
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Opens a monitor with the module's default capacity.
    ///
    /// # Errors
    ///
    /// As [`Builder::open`]; [`Error::NotLoaded`] without the module.
    pub fn open() -> Result<Self> {
        Builder::default().open()
    }

    /// Opens a monitor with room for `slots` watches at once.
    ///
    /// # Errors
    ///
    /// As [`Builder::open`].
    pub fn with_capacity(slots: u32) -> Result<Self> {
        Builder::default().capacity(slots).open()
    }

    /// What the module said in the handshake.
    #[must_use]
    pub fn api_info(&self) -> ApiInfo {
        self.api
    }

    /// Number of slots: the most watches alive at once.
    #[must_use]
    pub fn capacity(&self) -> u32 {
        self.status.nslots()
    }

    /// The watches of this monitor's user and their limit, asked of the
    /// kernel now (one `REGWATCH_IOC_API` call): tells which limit an
    /// `ENOSPC` from [`Monitor::watch`] met. Other monitors and processes of
    /// the user may change the count at any time.
    ///
    /// # Errors
    ///
    /// [`Error::Handshake`]: `EIO` in a fork child.
    pub fn user_watches(&self) -> Result<UserWatches> {
        let mut api = regwatch_api {
            api: uapi::API,
            ..Default::default()
        };
        sys::ioctl(self.fd.as_fd(), &mut api)
            .and_then(|()| check_abi(&api))
            .map_err(Error::Handshake)?;
        Ok(UserWatches {
            alive: api.user_watches,
            limit: api.max_user_watches,
        })
    }

    /// Starts watching the pages behind `[start, start + len)` (rounded out
    /// to whole pages). [`Monitor::drain`] will report `cookie` once the
    /// first time they change; unwatching needs it too.
    ///
    /// The range need not be mapped; only this process's address space is
    /// ever watched. When this returns, every change that completes
    /// afterwards is seen, and so is one that was in progress.
    ///
    /// # Errors
    ///
    /// [`Error::Watch`] with `EINVAL` for a zero `len`, a range that
    /// overflows or ends beyond the user address space; `ENOSPC` when every
    /// slot is in use or the user has `max_user_watches` watches alive over
    /// all its monitors (see [`Monitor::user_watches`]); `ENOMEM` when the
    /// kernel memory for more slots cannot be charged to the caller's memory
    /// cgroup; `EIO` in a fork child. Nothing changed then.
    pub fn watch(&self, start: usize, len: usize, cookie: u64) -> Result<Watch> {
        let arg = watch_arg(start, len, cookie);
        self.watch_ioctl(arg)
            .map_err(|source| Error::Watch { start, len, source })
    }

    /// Unwatches `victim` and watches `[start, start + len)` with `cookie`
    /// in one system call (`REGWATCH_WATCH_UNWATCH`): a cache's eviction.
    /// On success it is exactly [`Monitor::unwatch`] of `victim` followed
    /// by [`Monitor::watch`] of the range, counted in both
    /// [`Totals`]; the new watch takes the victim's slot, with a new seq,
    /// and its place under `max_user_watches`, so it works on a full
    /// monitor and at the user's limit. A victim of the same page-rounded
    /// range is the cheapest case: its kernel notifier is handed over.
    ///
    /// # Errors
    ///
    /// [`Error::WatchInsteadOf`] with `EINVAL` when `victim` is not a live
    /// watch with `victim_cookie` (already unwatched, e.g. by another
    /// thread, wrong cookie) or the range is bad (as for [`Monitor::watch`]); `EIO` in a
    /// fork child. Nothing changed then: the victim is still watched.
    pub fn watch_instead_of(
        &self,
        victim: Watch,
        victim_cookie: u64,
        start: usize,
        len: usize,
        cookie: u64,
    ) -> Result<Watch> {
        let arg = regwatch_watch {
            flags: uapi::REGWATCH_WATCH_UNWATCH.into(),
            slot: victim.slot.into(),
            unwatch_cookie: victim_cookie,
            ..watch_arg(start, len, cookie)
        };
        self.watch_ioctl(arg)
            .map_err(|source| Error::WatchInsteadOf {
                victim: victim.slot,
                start,
                len,
                source,
            })
    }

    fn watch_ioctl(&self, mut arg: regwatch_watch) -> io::Result<Watch> {
        sys::ioctl(self.fd.as_fd(), &mut arg)?;
        // The kernel's slots are below nslots, itself a u32.
        let slot = u32::try_from(arg.slot)
            .map_err(|_| invalid_data(format!("kernel returned slot {}", arg.slot)))?;
        Ok(Watch { slot, seq: arg.seq })
    }

    /// Stops watching: once this returns no [`Monitor::drain`] reports the
    /// watch (unless one already in flight in another thread took it, see
    /// [Threads](Monitor#threads)), its slot word is 0 and the slot may be
    /// reused, with a new seq.
    ///
    /// # Errors
    ///
    /// [`Error::Unwatch`] with `EINVAL` when the slot holds no live watch
    /// with `cookie` (already unwatched, wrong cookie, another monitor's
    /// watch); `EIO` in a fork child.
    pub fn unwatch(&self, watch: Watch, cookie: u64) -> Result<()> {
        let mut arg = regwatch_unwatch {
            slot: watch.slot.into(),
            cookie,
            ..Default::default()
        };
        sys::ioctl(self.fd.as_fd(), &mut arg).map_err(|source| Error::Unwatch {
            slot: watch.slot,
            source,
        })
    }

    /// Whether nothing changed behind `watch` since [`Monitor::watch`]
    /// returned it: one atomic acquire load of its slot word (after a bounds
    /// check and a relaxed load of the process's fork counter, which only
    /// changes in a fork child), no system call.
    ///
    /// The answer may be stale the moment it is returned; a change is never
    /// missed (see [Reading the status area](Monitor#reading-the-status-area)):
    /// once the pages changed this returns false, and stays false, also
    /// after the watch is read by [`Monitor::drain`], unwatched, or its slot
    /// reused. A `Watch` from another monitor gives a meaningless answer.
    #[inline]
    #[must_use]
    pub fn is_valid(&self, watch: &Watch) -> bool {
        self.status.slot_word(watch.slot) == Some(watch.seq)
    }

    /// The generation counter: one atomic acquire load, no system call.
    ///
    /// It moves (by one per watch) after any watch turns dirty. Two equal
    /// values mean no watch turned dirty between the two loads, so a cache
    /// that saw the same value before its last [`Monitor::drain`] has
    /// nothing to drain. The value may be stale the moment it is returned;
    /// a change is never missed: the load pairs with the kernel's release
    /// store, so after seeing a new value every watch it counts is seen
    /// dirty by [`Monitor::is_valid`] and reported by [`Monitor::drain`]
    /// (64 bits: it does not wrap in practice).
    #[inline]
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.status
            .header_word(offset_of!(regwatch_status, generation))
    }

    /// Dirty watches not yet returned by read(): one atomic acquire load,
    /// possibly stale the moment it is returned.
    #[must_use]
    pub fn dirty_unread(&self) -> u64 {
        self.status
            .header_word(offset_of!(regwatch_status, dirty_unread))
    }

    /// The running totals of this fd, each one atomic acquire load (see
    /// [`Totals`]: not a snapshot), possibly stale the moment they are
    /// returned.
    #[must_use]
    pub fn totals(&self) -> Totals {
        let load = |offset| self.status.header_word(offset);
        Totals {
            watched: load(offset_of!(regwatch_status, total_watched)),
            unwatched: load(offset_of!(regwatch_status, total_unwatched)),
            dirtied: load(offset_of!(regwatch_status, total_dirtied)),
            reported: load(offset_of!(regwatch_status, total_reported)),
        }
    }

    /// Calls `on_record` for every dirty watch not yet reported, oldest
    /// first, reading records in batches until the kernel has none left
    /// (`EAGAIN`); never blocks. Returns how many records were reported.
    /// Each dirty watch is reported once over the life of the monitor.
    ///
    /// To wait for records instead, poll or epoll [`Monitor::as_fd`] for
    /// readability.
    ///
    /// # Errors
    ///
    /// [`Error::Read`]: `EIO` in a fork child, `EFAULT`, or `InvalidData`
    /// for a partial record. Records delivered before the error stay
    /// delivered. If `on_record` panics, the records of the batch after the
    /// panicking one are lost.
    pub fn drain(&self, mut on_record: impl FnMut(Record)) -> Result<usize> {
        let mut batch = [regwatch_record::default(); DRAIN_BATCH];
        let mut reported = 0;
        loop {
            match sys::read_records(self.fd.as_fd(), &mut batch) {
                Ok(0) => return Ok(reported),
                Ok(count) => {
                    batch[..count]
                        .iter()
                        .for_each(|raw| on_record(Record::from_raw(raw)));
                    reported += count;
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(reported),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(Error::Read(err)),
            }
        }
    }
}

impl AsFd for Monitor {
    /// The non-blocking fd, for poll/epoll (readable while a record is
    /// pending; `EPOLLERR` in a fork child).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Monitor {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The host has no module: opening must say so with the typed error.
    /// (In the VM, rdma-tests' regwatch_client checks the opposite.)
    #[test]
    fn open_without_the_module_is_not_loaded() {
        if Path::new(sys::DEVICE).exists() {
            println!(
                "{} exists: the module is loaded, nothing to check here",
                sys::DEVICE
            );
            return;
        }
        assert!(matches!(Monitor::open(), Err(Error::NotLoaded)));
        assert!(matches!(Monitor::with_capacity(16), Err(Error::NotLoaded)));
        assert!(matches!(
            Monitor::builder().strict(true).open(),
            Err(Error::NotLoaded)
        ));
    }

    #[test]
    fn errors_expose_their_errno() {
        let err = Error::Watch {
            start: 0,
            len: 0,
            source: io::Error::from_raw_os_error(libc::EINVAL),
        };
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
        assert_eq!(err.to_string(), "cannot watch 0 bytes at 0x0");
        assert_eq!(Error::NotLoaded.raw_os_error(), None);
    }
}
