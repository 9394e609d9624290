//! Helpers shared by the integration tests of the `regwatch` client
//! (`regwatch_client.rs`, `regwatch_watch_instead.rs`).

use std::ptr;

use rdma_tests::{error_chain, in_vm};
use regwatch::{Builder, Error, Monitor, Record, Watch};

/// Opens a monitor, or returns `None` after printing why on a host without
/// the module.
///
/// # Panics
///
/// On any other error, and on [`Error::NotLoaded`] inside the VM.
pub fn open(builder: Builder) -> Option<Monitor> {
    match builder.open() {
        Ok(monitor) => Some(monitor),
        Err(Error::NotLoaded) if !in_vm() => {
            println!("regwatch module not loaded: skipping");
            None
        }
        Err(err) => panic!("opening /dev/regwatch: {}", error_chain(&err)),
    }
}

pub fn page() -> usize {
    // SAFETY: sysconf() only reads its integer argument.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).expect("page size")
}

/// Maps `count` private anonymous pages and writes them, so that pages
/// really back the range. Returns the address; the test unmaps it.
pub fn map_pages(count: usize) -> usize {
    let len = count * page();
    // SAFETY: a new anonymous mapping at an address the kernel picks; no
    // existing memory is affected.
    let addr = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(addr, libc::MAP_FAILED, "mmap of {count} pages");
    // SAFETY: the mapping was just created readable and writable for `len`
    // bytes and nothing else refers to it.
    unsafe { addr.cast::<u8>().write_bytes(0xa5, len) };
    addr as usize
}

/// munmap() of a range the test mapped with [`map_pages`] and never touches again.
pub fn unmap(addr: usize, len: usize) {
    // SAFETY: only ranges from `map_pages` that no reference points into.
    let ret = unsafe { libc::munmap(addr as *mut libc::c_void, len) };
    assert_eq!(ret, 0, "munmap({addr:#x}, {len})");
}

/// Every record pending now.
pub fn drain(monitor: &Monitor) -> Vec<Record> {
    let mut records = Vec::new();
    let count = monitor
        .drain(|record| records.push(record))
        .unwrap_or_else(|e| panic!("drain: {}", error_chain(&e)));
    assert_eq!(count, records.len(), "drain's count");
    records
}

pub fn watch(monitor: &Monitor, addr: usize, len: usize, cookie: u64) -> Watch {
    monitor
        .watch(addr, len, cookie)
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)))
}

pub fn unwatch(monitor: &Monitor, watch: Watch, cookie: u64) {
    monitor
        .unwatch(watch, cookie)
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)));
}

/// Asserts `result` failed with `errno` in the variant `variant` names.
pub fn assert_errno<T: std::fmt::Debug>(
    result: Result<T, Error>,
    variant: fn(&Error) -> bool,
    errno: i32,
    what: &str,
) {
    let err = result.expect_err(what);
    assert!(variant(&err), "{what}: wrong variant {err:?}");
    assert_eq!(err.raw_os_error(), Some(errno), "{what}: {err:?}");
}
