//! The registered buffers messages are copied through: a connection's send bounce buffers, and
//! its receive bounce buffers, each posted as a compact head and a long tail.

use std::ops::Range;
use std::sync::Arc;

use verbs::{AccessFlags, OwnedMemoryRegion, ProtectionDomain, Sge};

/// Bytes of a receive bounce buffer's head: 32 heads fill one 4 KiB page.
///
/// A SEND fills the head first, so a message of up to this many bytes, header included,
/// touches only the heads' page or two, whichever buffer it lands in. Under emulation a page
/// not touched since the last context switch costs a translation fill, and receives are
/// consumed in turn through all the buffers, so long buffers side by side would give every
/// short message a page of its own (benches/RESULTS.md, "p2p's copied path, stop 19").
pub(crate) const RECV_HEAD_LEN: usize = 128;

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

/// Receive bounce buffers of equal length in one registered region: the heads of all of them
/// side by side at the start ([`RECV_HEAD_LEN`] bytes each, or the whole buffer when it is
/// shorter), then their tails. A receive is posted with two scatter entries, its head and its
/// tail, which the device fills in that order.
#[derive(Debug)]
pub(crate) struct ReceivePool {
    region: OwnedMemoryRegion,
    count: usize,
    head_len: usize,
    tail_len: usize,
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
        let head_len = buffer_len.min(RECV_HEAD_LEN);
        Ok(Self {
            region,
            count,
            head_len,
            tail_len: buffer_len - head_len,
        })
    }

    /// Bytes of each buffer.
    pub(crate) fn buffer_len(&self) -> usize {
        self.head_len + self.tail_len
    }

    /// The scatter list of buffer `index`: its head, then its tail when it has one.
    pub(crate) fn sges(&self, index: u32) -> verbs::Result<([Sge; 2], usize)> {
        let index = index as usize;
        let head = self.region.sge(index * self.head_len, self.head_len)?;
        if self.tail_len == 0 {
            return Ok(([head, head], 1));
        }
        let tail_at = self.count * self.head_len + index * self.tail_len;
        Ok(([head, self.region.sge(tail_at, self.tail_len)?], 2))
    }

    /// Copies the bytes from `from` of the message in buffer `index` into `out`.
    ///
    /// # Errors
    /// [`verbs::Error::RangeOutOfBounds`] when the range is not inside the buffer.
    pub(crate) fn read(&self, index: u32, from: usize, out: &mut [u8]) -> verbs::Result<()> {
        let out_of_bounds = || verbs::Error::RangeOutOfBounds {
            offset: from,
            len: out.len(),
            region_len: self.buffer_len(),
        };
        let index = index as usize;
        if index >= self.count {
            return Err(out_of_bounds());
        }
        let end = from.checked_add(out.len()).ok_or_else(out_of_bounds)?;
        if end > self.buffer_len() {
            return Err(out_of_bounds());
        }
        let (in_head, in_tail) = split(from..end, self.head_len);
        let (head_out, tail_out) = out.split_at_mut(in_head.len());
        self.region
            .read_at(index * self.head_len + in_head.start, head_out)?;
        let tail_at = self.count * self.head_len + index * self.tail_len;
        self.region.read_at(tail_at + in_tail.start, tail_out)
    }
}

/// The parts of `bytes` of a buffer that lie in its head of `head_len` bytes and in its tail,
/// each counted from the start of its piece (an empty range where none does).
fn split(bytes: Range<usize>, head_len: usize) -> (Range<usize>, Range<usize>) {
    let head_end = bytes.end.min(head_len);
    let in_head = bytes.start.min(head_end)..head_end;
    let tail_start = bytes.start.max(head_len) - head_len;
    let in_tail = tail_start..(bytes.end.max(head_len) - head_len).max(tail_start);
    (in_head, in_tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_splits_at_the_end_of_the_head() {
        // Within the head, across its end, within the tail, empty at either side.
        assert_eq!(split(0..40, 128), (0..40, 0..0));
        assert_eq!(split(40..48, 128), (40..48, 0..0));
        assert_eq!(split(40..4136, 128), (40..128, 0..4008));
        assert_eq!(split(0..128, 128), (0..128, 0..0));
        assert_eq!(split(128..200, 128), (128..128, 0..72));
        assert_eq!(split(300..400, 128), (128..128, 172..272));
        assert_eq!(split(128..128, 128), (128..128, 0..0));
        assert_eq!(split(0..0, 128), (0..0, 0..0));
        // Every byte lands once, in order.
        for start in 0..300 {
            for end in start..300 {
                let (head, tail) = split(start..end, 100);
                assert_eq!(head.len() + tail.len(), end - start);
                if !tail.is_empty() {
                    assert_eq!(head.end, 100);
                    assert_eq!(tail.start + 100, start.max(100));
                }
                if !head.is_empty() {
                    assert_eq!(head.start, start);
                }
            }
        }
    }
}
