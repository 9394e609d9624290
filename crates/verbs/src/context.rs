//! An open device context and its queries.

use std::mem::{size_of, MaybeUninit};
use std::net::Ipv4Addr;
use std::ptr::{self, NonNull};
use std::sync::Arc;

use rdma_sys::{
    _compat_ibv_port_attr, ibv_close_device, ibv_context, ibv_device_attr_ex, ibv_gid,
    ibv_open_device, ibv_port_attr, ibv_query_device, ibv_query_gid, ibv_query_port,
};

use crate::attr::{DeviceAttrs, PortAttr};
use crate::device::{device_name, DeviceList};
use crate::error::{last_os_error, note_drop_result, returned_os_error, Error, Result};
use crate::ext::verbs_op;
use crate::gid::{choose_roce_v2, Gid, GidEntry, GidType};

/// An open RDMA device (`struct ibv_context`), closed when the last `Arc` goes unless it was
/// borrowed from a caller ([`ProtectionDomain::from_borrowed`](crate::ProtectionDomain::from_borrowed)).
#[derive(Debug)]
pub struct Context {
    raw: NonNull<ibv_context>,
    name: String,
    /// Whether `Drop` closes the device: false for a context a C caller opened and closes.
    owned: bool,
}

// SAFETY: libibverbs documents all verbs objects as safe for multi-threaded
// access by default (ibv_alloc_td(3), verbs(7)); the context pointer is only
// used for such calls, and it is closed exactly once, in `Drop`, when no other
// reference exists.
unsafe impl Send for Context {}
// SAFETY: as for `Send`: every `&self` method only issues thread-safe verbs calls.
unsafe impl Sync for Context {}

impl Context {
    /// Opens the device called `name` (as listed by [`crate::devices`]).
    ///
    /// # Errors
    ///
    /// [`Error::ListDevices`] if devices cannot be listed, [`Error::OpenDevice`]
    /// with [`std::io::ErrorKind::NotFound`] if no device has that name, or
    /// with the errno of `ibv_open_device`.
    pub fn open(name: &str) -> Result<Arc<Self>> {
        let list = DeviceList::get()?;
        let dev = list.find(name)?;
        // SAFETY: `dev` belongs to `list`, which is alive for this call; the
        // opened context stays valid after the list is freed (ibv_open_device(3)).
        let raw = unsafe { ibv_open_device(dev) };
        let raw = NonNull::new(raw).ok_or_else(|| Error::OpenDevice {
            name: name.to_owned(),
            source: last_os_error(),
        })?;
        Ok(Arc::new(Self {
            raw,
            name: name.to_owned(),
            owned: true,
        }))
    }

    /// A context opened by someone else, which this crate uses but never closes.
    ///
    /// # Safety
    ///
    /// `raw` must be an open context that stays open until the last `Arc` of the returned value
    /// (and of every object made from it) is gone.
    pub(crate) unsafe fn from_borrowed(raw: NonNull<ibv_context>) -> Arc<Self> {
        // SAFETY: the caller guarantees an open context, whose `device` field libibverbs set
        // when it opened it and which lives as long as the context.
        let device = unsafe { (*raw.as_ptr()).device };
        Arc::new(Self {
            raw,
            name: device_name(device),
            owned: false,
        })
    }

    /// The device name this context was opened with.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn as_ptr(&self) -> *mut ibv_context {
        self.raw.as_ptr()
    }

    /// Device attributes, including the extended on-demand-paging capabilities.
    ///
    /// # Errors
    ///
    /// [`Error::QueryDevice`] with the errno of `ibv_query_device_ex`.
    pub fn query_device(&self) -> Result<DeviceAttrs> {
        // Zeroed because the legacy query, taken when the provider lacks the
        // extended one, leaves the extended fields (ODP caps among them) untouched.
        let mut attr = MaybeUninit::<ibv_device_attr_ex>::zeroed();
        let extended = verbs_op!(self, query_device_ex).map(|query| {
            // SAFETY: the context is open; a NULL input is allowed; `attr` is a
            // writable `ibv_device_attr_ex` of the size passed.
            unsafe {
                query(
                    self.as_ptr(),
                    ptr::null(),
                    attr.as_mut_ptr(),
                    size_of::<ibv_device_attr_ex>(),
                )
            }
        });
        let ret = match extended {
            Some(ret) if ret != libc::EOPNOTSUPP && ret != libc::ENOSYS => ret,
            _ => {
                // Like the C inline: forget whatever a refusing extended query wrote.
                attr = MaybeUninit::zeroed();
                // SAFETY: the context is open; `orig_attr` is a writable `ibv_device_attr`.
                unsafe { ibv_query_device(self.as_ptr(), &raw mut (*attr.as_mut_ptr()).orig_attr) }
            }
        };
        if ret != 0 {
            return Err(Error::QueryDevice {
                device: self.name.clone(),
                source: returned_os_error(ret),
            });
        }
        // SAFETY: the struct consists of integers and arrays of them, for which
        // all-zero is valid; the query filled in what it knows on top.
        let attr = unsafe { attr.assume_init() };
        Ok(DeviceAttrs::from_raw(&attr))
    }

    /// Attributes of port `port` (ports are numbered from 1).
    ///
    /// # Errors
    ///
    /// [`Error::QueryPort`] with the errno of `ibv_query_port`.
    pub fn query_port(&self, port: u8) -> Result<PortAttr> {
        let mut attr = MaybeUninit::<ibv_port_attr>::zeroed();
        let ret = match verbs_op!(self, query_port) {
            // SAFETY: the context is open; `attr` is a writable `ibv_port_attr` of the size passed.
            Some(query) => unsafe {
                query(
                    self.as_ptr(),
                    port,
                    attr.as_mut_ptr(),
                    size_of::<ibv_port_attr>(),
                )
            },
            // SAFETY: the exported legacy symbol fills the leading, compatible
            // part of `ibv_port_attr` (what the C `ibv_query_port` macro does too).
            None => unsafe {
                ibv_query_port(
                    self.as_ptr(),
                    port,
                    attr.as_mut_ptr().cast::<_compat_ibv_port_attr>(),
                )
            },
        };
        if ret != 0 {
            return Err(Error::QueryPort {
                device: self.name.clone(),
                port,
                source: returned_os_error(ret),
            });
        }
        // SAFETY: plain integers, zero-initialised and then filled by the query.
        let attr = unsafe { attr.assume_init() };
        Ok(PortAttr::from_raw(&attr))
    }

    /// The GID at `index` of port `port`'s table (all zero for an unused entry).
    ///
    /// # Errors
    ///
    /// [`Error::QueryGid`] with the errno of `ibv_query_gid`.
    pub fn query_gid(&self, port: u8, index: u8) -> Result<Gid> {
        let mut gid = ibv_gid { raw: [0; 16] };
        // SAFETY: the context is open and `gid` is a writable `union ibv_gid`.
        let ret = unsafe { ibv_query_gid(self.as_ptr(), port, i32::from(index), &raw mut gid) };
        if ret != 0 {
            return Err(self.gid_error(port, index, last_os_error()));
        }
        // SAFETY: every bit pattern of the union is a valid `[u8; 16]`.
        Ok(Gid(unsafe { gid.raw }))
    }

    /// The protocol of GID entry `index`, from
    /// `/sys/class/infiniband/<dev>/ports/<port>/gid_attrs/types/<index>`.
    ///
    /// Returns `None` for a type this crate does not know.
    ///
    /// # Errors
    ///
    /// [`Error::QueryGid`] when the sysfs file cannot be read (for example
    /// `EINVAL` for an unused entry).
    pub fn gid_type(&self, port: u8, index: u8) -> Result<Option<GidType>> {
        let path = format!(
            "/sys/class/infiniband/{}/ports/{port}/gid_attrs/types/{index}",
            self.name
        );
        let text =
            std::fs::read_to_string(path).map_err(|source| self.gid_error(port, index, source))?;
        Ok(GidType::from_sysfs(&text))
    }

    /// All populated entries of port `port`'s GID table that a QP can address
    /// (indices below 256, since `sgid_index` is 8 bits wide).
    ///
    /// # Errors
    ///
    /// [`Error::QueryPort`] or [`Error::QueryGid`] when a query fails.
    pub fn gid_table(&self, port: u8) -> Result<Vec<GidEntry>> {
        let len = self.query_port(port)?.gid_tbl_len;
        let addressable = u8::try_from(len).map_or(u8::MAX, |n| n.saturating_sub(1));
        let mut entries = Vec::new();
        if len == 0 {
            return Ok(entries);
        }
        for index in 0..=addressable {
            let gid = self.query_gid(port, index)?;
            if gid.is_zero() {
                continue;
            }
            let gid_type = self.gid_type(port, index)?;
            entries.push(GidEntry {
                index,
                gid,
                gid_type,
            });
        }
        Ok(entries)
    }

    /// The GID entry of port `port` that a queue pair sends from (its `sgid_index`):
    ///
    /// - for `Some(addr)`, the RoCE v2 entry carrying IPv4 address `addr` (`::ffff:a.b.c.d`),
    ///   i.e. traffic from that address, or `None`;
    /// - for `None` (any address will do, e.g. a queue pair connected to itself), a RoCE v2
    ///   entry over IPv4 where there is one (what Soft-RoCE set-ups use), else any RoCE v2
    ///   entry, else the first entry (InfiniBand); `None` only for an empty table.
    ///
    /// # Errors
    ///
    /// As for [`Context::gid_table`].
    pub fn roce_v2_gid(&self, port: u8, addr: Option<Ipv4Addr>) -> Result<Option<GidEntry>> {
        Ok(choose_roce_v2(&self.gid_table(port)?, addr).copied())
    }

    fn gid_error(&self, port: u8, index: u8, source: std::io::Error) -> Error {
        Error::QueryGid {
            device: self.name.clone(),
            port,
            index: u32::from(index),
            source,
        }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        // SAFETY: the context was opened by `Context::open` and is closed exactly
        // once; every PD/CQ holds an `Arc<Context>`, so none outlives it.
        let ret = unsafe { ibv_close_device(self.as_ptr()) };
        note_drop_result("ibv_context", ret);
    }
}
