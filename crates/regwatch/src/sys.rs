//! The system calls on `/dev/regwatch`, each wrapped so that its memory
//! safety is argued once.

use std::fs::{File, OpenOptions};
use std::io;
use std::mem::{size_of, size_of_val};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::ptr;

use crate::uapi::{regwatch_record, IoctlArg};

/// The device node the module registers.
pub(crate) const DEVICE: &str = "/dev/regwatch";

/// Opens the device read-write, close-on-exec (std's default) and
/// non-blocking, so that read() answers `EAGAIN` instead of waiting.
pub(crate) fn open_device() -> io::Result<OwnedFd> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(DEVICE)
        .map(File::into)
}

/// `ioctl(fd, T::REQUEST, arg)`.
pub(crate) fn ioctl<T: IoctlArg>(fd: BorrowedFd<'_>, arg: &mut T) -> io::Result<()> {
    let request = T::REQUEST as libc::Ioctl;
    // SAFETY: `arg` is an exclusive reference to a whole `T`, and by
    // `IoctlArg`'s contract the kernel accesses exactly `size_of::<T>()`
    // bytes through it and may leave any bit pattern there.
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), request, ptr::from_mut(arg)) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One read() of whole records into `records`; returns how many arrived.
///
/// # Errors
///
/// The read() error (`EAGAIN` when nothing is pending, `EIO` from another
/// address space, `EINTR`, ...); `InvalidData` for a partial record.
pub(crate) fn read_records(
    fd: BorrowedFd<'_>,
    records: &mut [regwatch_record],
) -> io::Result<usize> {
    let bytes = size_of_val(records);
    // SAFETY: `records` is valid for writes of `bytes` bytes and exclusively
    // borrowed; `regwatch_record` is plain integers, valid for any bytes.
    let ret = unsafe { libc::read(fd.as_raw_fd(), records.as_mut_ptr().cast(), bytes) };
    let Ok(got) = usize::try_from(ret) else {
        return Err(io::Error::last_os_error());
    };
    let record_size = size_of::<regwatch_record>();
    if got % record_size != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("read() returned {got} bytes, not a multiple of the {record_size}-byte record"),
        ));
    }
    Ok(got / record_size)
}

/// The system page size, which the status area's length is rounded to.
pub(crate) fn page_size() -> io::Result<u64> {
    // SAFETY: sysconf() only reads its integer argument.
    let ret = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(ret).map_err(|_| io::Error::last_os_error())
}
