//! The registered buffers messages are copied through: a connection's send bounce buffers, and
//! its receive bounce buffers.

use std::sync::Arc;

use verbs::{AccessFlags, OwnedMemoryRegion, ProtectionDomain, Sge};

/// Bounce buffers of equal length in one registered region, by index: a connection's send
/// bounce buffers, and its receive bounce buffers, each posted with one scatter entry. Every
/// access is checked against its own buffer, not only against the region.
///
/// Receive buffers were posted as a 128-byte head (all heads side by side in one page) and a
/// tail at stop 19, so that a short message touched the same page whichever buffer it landed
/// in: under emulation a page not touched since the last switch between processes costs a
/// translation fill. The benchmark's ranks share no CPU since stop 22, so no such switch comes
/// between messages, and the second scatter entry and the copy in two pieces cost more than
/// they saved: 0.03 of raw SEND's latency from 512 B to 4 KiB (benches/RESULTS.md, "Ranks
/// bound to CPUs, stop 22").
///
/// Buffers start an odd number of pages apart. Receives are consumed in turn through all the
/// buffers, and with a stride of a power of two pages (the default 256 KiB and a header) the
/// buffers' first pages would all fall into a few sets of a translation cache indexed by page
/// number, and their first lines into a few sets of a cache: each short message would evict
/// the last one's entry. An odd stride is coprime with every power of two, so the buffers'
/// first pages fall into as many sets as there are buffers.
#[derive(Debug)]
pub(crate) struct BouncePool {
    region: OwnedMemoryRegion,
    count: usize,
    buffer_len: usize,
    stride: usize,
}

impl BouncePool {
    /// `count` buffers of `buffer_len` bytes, registered with `access`.
    pub(crate) fn new(
        pd: &Arc<ProtectionDomain>,
        count: u32,
        buffer_len: usize,
        access: AccessFlags,
    ) -> verbs::Result<Self> {
        let count = count as usize;
        let stride = odd_pages(buffer_len);
        let region = OwnedMemoryRegion::new(pd, count * stride, access)?;
        Ok(Self {
            region,
            count,
            buffer_len,
            stride,
        })
    }

    /// Bytes of each buffer.
    pub(crate) fn buffer_len(&self) -> usize {
        self.buffer_len
    }

    /// The scatter entry of the first `len` bytes of buffer `index`.
    ///
    /// # Errors
    /// [`verbs::Error::RangeOutOfBounds`] when they are not inside the buffer.
    pub(crate) fn sge(&self, index: u32, len: usize) -> verbs::Result<Sge> {
        let at = self.offset(index, 0, len)?;
        self.region.sge(at, len)
    }

    /// Copies the bytes from `from` of buffer `index` into `out`.
    ///
    /// # Errors
    /// [`verbs::Error::RangeOutOfBounds`] when the range is not inside the buffer.
    pub(crate) fn read(&self, index: u32, from: usize, out: &mut [u8]) -> verbs::Result<()> {
        let at = self.offset(index, from, out.len())?;
        self.region.read_at(at, out)
    }

    /// Copies `bytes` into buffer `index` from its byte `from` on.
    ///
    /// # Errors
    /// [`verbs::Error::RangeOutOfBounds`] when the range is not inside the buffer.
    pub(crate) fn write(&mut self, index: u32, from: usize, bytes: &[u8]) -> verbs::Result<()> {
        let at = self.offset(index, from, bytes.len())?;
        self.region.write_at(at, bytes)
    }

    /// Where in the region the `len` bytes from `from` of buffer `index` start.
    fn offset(&self, index: u32, from: usize, len: usize) -> verbs::Result<usize> {
        let index = index as usize;
        offset_inside(self.count, self.buffer_len, self.stride, index, from, len).ok_or(
            verbs::Error::RangeOutOfBounds {
                offset: from,
                len,
                region_len: self.buffer_len,
            },
        )
    }
}

/// Bytes of a page, the unit of [`odd_pages`].
const PAGE: usize = 4096;

/// The least odd number of pages that holds `len` bytes, in bytes.
fn odd_pages(len: usize) -> usize {
    (len.div_ceil(PAGE).max(1) | 1) * PAGE
}

/// Where the `len` bytes from `from` of buffer `index` start among `count` buffers of
/// `buffer_len` bytes, `stride` bytes apart, or `None` when they do not lie inside that buffer.
fn offset_inside(
    count: usize,
    buffer_len: usize,
    stride: usize,
    index: usize,
    from: usize,
    len: usize,
) -> Option<usize> {
    let end = from.checked_add(len)?;
    (index < count && end <= buffer_len).then(|| index * stride + from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_stays_inside_its_buffer() {
        assert_eq!(offset_inside(2, 100, 128, 1, 0, 100), Some(128));
        assert_eq!(offset_inside(2, 100, 128, 1, 60, 40), Some(188));
        assert_eq!(
            offset_inside(2, 100, 128, 0, 100, 0),
            Some(100),
            "empty, at the end"
        );
        assert_eq!(
            offset_inside(2, 100, 128, 1, 60, 41),
            None,
            "past the buffer's end"
        );
        assert_eq!(
            offset_inside(2, 100, 128, 2, 0, 1),
            None,
            "past the last buffer"
        );
        assert_eq!(
            offset_inside(2, 100, 128, 0, usize::MAX, 2),
            None,
            "an end that overflows"
        );
    }

    #[test]
    fn buffers_start_an_odd_number_of_pages_apart() {
        assert_eq!(odd_pages(0), PAGE);
        assert_eq!(odd_pages(1), PAGE);
        assert_eq!(odd_pages(PAGE), PAGE);
        assert_eq!(odd_pages(PAGE + 1), 3 * PAGE);
        assert_eq!(odd_pages(256 * 1024 + 40), 65 * PAGE);
        // The default pool's 32 first pages fall into 32 sets of a 256-entry cache.
        let sets: std::collections::BTreeSet<usize> = (0..32)
            .map(|i| i * odd_pages(256 * 1024 + 40) / PAGE % 256)
            .collect();
        assert_eq!(sets.len(), 32);
    }
}
