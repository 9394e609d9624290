//! Enumerating RDMA devices.

use std::ffi::CStr;
use std::io;
use std::ptr::NonNull;

use rdma_sys::{ibv_device, ibv_free_device_list, ibv_get_device_guid, ibv_get_device_list};

use crate::error::{last_os_error, Error, Result};

/// What `ibv_get_device_list` tells about one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Kernel name of the device, e.g. `rxe0` or `mlx5_0`.
    pub name: String,
    /// Node GUID in host byte order.
    pub guid: u64,
}

/// The NULL-terminated array returned by `ibv_get_device_list`, freed on drop.
pub(crate) struct DeviceList {
    list: NonNull<*mut ibv_device>,
    len: usize,
}

impl DeviceList {
    pub(crate) fn get() -> Result<Self> {
        let mut len = 0;
        // SAFETY: `len` is a valid out-pointer for the duration of the call.
        let list = unsafe { ibv_get_device_list(&raw mut len) };
        let list = NonNull::new(list).ok_or_else(|| Error::ListDevices {
            source: last_os_error(),
        })?;
        Ok(Self {
            list,
            len: usize::try_from(len).unwrap_or(0),
        })
    }

    /// The device handles; they stay valid while `self` lives.
    pub(crate) fn devices(&self) -> &[*mut ibv_device] {
        // SAFETY: libibverbs returned an array of `len` device pointers (plus a
        // terminating NULL) that stays allocated until `ibv_free_device_list`,
        // which only runs when `self` is dropped; the borrow ties the slice to `self`.
        unsafe { std::slice::from_raw_parts(self.list.as_ptr(), self.len) }
    }

    /// The device called `name`, or a `NotFound` [`Error::OpenDevice`].
    pub(crate) fn find(&self, name: &str) -> Result<*mut ibv_device> {
        self.devices()
            .iter()
            .copied()
            .find(|&dev| device_name(dev) == name)
            .ok_or_else(|| Error::OpenDevice {
                name: name.to_owned(),
                source: io::Error::new(io::ErrorKind::NotFound, "no RDMA device of that name"),
            })
    }
}

impl Drop for DeviceList {
    fn drop(&mut self) {
        // SAFETY: `list` came from `ibv_get_device_list` and is freed exactly once,
        // here. Contexts opened from its devices stay valid after the free
        // (ibv_get_device_list(3)).
        unsafe { ibv_free_device_list(self.list.as_ptr()) };
    }
}

/// Name of a device from a live device list.
pub(crate) fn device_name(dev: *mut ibv_device) -> String {
    // SAFETY: `dev` is an element of a live device list (or the device of an
    // open context); `ibv_get_device_name` returns a pointer to its
    // NUL-terminated name stored inside the device, valid as long as `dev`.
    let name = unsafe { rdma_sys::ibv_get_device_name(dev) };
    if name.is_null() {
        return String::new();
    }
    // SAFETY: non-NULL and NUL-terminated per the above; copied out before `dev` can go away.
    unsafe { CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned()
}

/// Lists the RDMA devices visible to this process.
///
/// An empty list is not an error: it is what a machine without RDMA hardware
/// or Soft-RoCE links reports.
///
/// # Errors
///
/// [`Error::ListDevices`] when libibverbs cannot enumerate devices at all
/// (for example `ENOSYS` on a kernel without RDMA support).
pub fn devices() -> Result<Vec<DeviceInfo>> {
    let list = DeviceList::get()?;
    Ok(list
        .devices()
        .iter()
        .map(|&dev| DeviceInfo {
            name: device_name(dev),
            // SAFETY: `dev` is an element of the live list; the call only reads it.
            guid: u64::from_be(unsafe { ibv_get_device_guid(dev) }),
        })
        .collect())
}
