//! The registered buffers messages are copied through: a connection's send bounce buffers, and
//! its receive bounce buffers.

use std::sync::Arc;

use verbs::{AccessFlags, OwnedMemoryRegion, ProtectionDomain, Sge};

/// Bounce buffers of equal length in one registered region, by index.
#[derive(Debug)]
pub(crate) struct BouncePool {
    pub(crate) region: OwnedMemoryRegion,
    buffer_len: usize,
}

impl BouncePool {
    /// `count` buffers of `buffer_len` bytes.
    pub(crate) fn new(
        pd: &Arc<ProtectionDomain>,
        count: u32,
        buffer_len: usize,
        access: AccessFlags,
    ) -> verbs::Result<Self> {
        let region = OwnedMemoryRegion::new(pd, count as usize * buffer_len, access)?;
        Ok(Self { region, buffer_len })
    }

    pub(crate) fn offset(&self, index: u32) -> usize {
        index as usize * self.buffer_len
    }
}

/// Receive bounce buffers of equal length in one registered region, by index, each posted
/// with one scatter entry.
///
/// Stop 19 posted each as a 128-byte head (all heads side by side in one page) and a tail, so
/// that a short message touched the same page whichever buffer it landed in: under emulation
/// a page not touched since the last switch between processes costs a translation fill. The
/// benchmark's ranks share no CPU since stop 22, so no such switch comes between messages, and
/// the second scatter entry and the copy in two pieces cost more than they saved: 0.03 of raw
/// SEND's latency from 512 B to 4 KiB (benches/RESULTS.md, "Ranks bound to CPUs, stop 22").
#[derive(Debug)]
pub(crate) struct ReceivePool {
    region: OwnedMemoryRegion,
    count: usize,
    buffer_len: usize,
}

impl ReceivePool {
    /// `count` buffers of `buffer_len` bytes, written by the device.
    pub(crate) fn new(
        pd: &Arc<ProtectionDomain>,
        count: u32,
        buffer_len: usize,
    ) -> verbs::Result<Self> {
        let count = count as usize;
        let region = OwnedMemoryRegion::new(pd, count * buffer_len, AccessFlags::LOCAL_WRITE)?;
        Ok(Self {
            region,
            count,
            buffer_len,
        })
    }

    /// Bytes of each buffer.
    pub(crate) fn buffer_len(&self) -> usize {
        self.buffer_len
    }

    /// The scatter entry of buffer `index`.
    pub(crate) fn sge(&self, index: u32) -> verbs::Result<Sge> {
        let at = self.offset(index as usize, 0, self.buffer_len)?;
        self.region.sge(at, self.buffer_len)
    }

    /// Copies the bytes from `from` of the message in buffer `index` into `out`.
    ///
    /// # Errors
    /// [`verbs::Error::RangeOutOfBounds`] when the range is not inside the buffer.
    pub(crate) fn read(&self, index: u32, from: usize, out: &mut [u8]) -> verbs::Result<()> {
        let at = self.offset(index as usize, from, out.len())?;
        self.region.read_at(at, out)
    }

    /// Where in the region the `len` bytes from `from` of buffer `index` start.
    fn offset(&self, index: usize, from: usize, len: usize) -> verbs::Result<usize> {
        offset_inside(self.count, self.buffer_len, index, from, len).ok_or(
            verbs::Error::RangeOutOfBounds {
                offset: from,
                len,
                region_len: self.buffer_len,
            },
        )
    }
}

/// Where the `len` bytes from `from` of buffer `index` start among `count` buffers of
/// `buffer_len` bytes side by side, or `None` when they do not lie inside that buffer.
fn offset_inside(
    count: usize,
    buffer_len: usize,
    index: usize,
    from: usize,
    len: usize,
) -> Option<usize> {
    let end = from.checked_add(len)?;
    (index < count && end <= buffer_len).then(|| index * buffer_len + from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_stays_inside_its_buffer() {
        assert_eq!(offset_inside(2, 100, 1, 0, 100), Some(100));
        assert_eq!(offset_inside(2, 100, 1, 60, 40), Some(160));
        assert_eq!(
            offset_inside(2, 100, 0, 100, 0),
            Some(100),
            "empty, at the end"
        );
        assert_eq!(
            offset_inside(2, 100, 1, 60, 41),
            None,
            "past the buffer's end"
        );
        assert_eq!(offset_inside(2, 100, 2, 0, 1), None, "past the last buffer");
        assert_eq!(
            offset_inside(2, 100, 0, usize::MAX, 2),
            None,
            "an end that overflows"
        );
    }
}
