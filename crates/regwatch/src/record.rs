//! What a watch is and what the module reports of one that turned dirty: [`Watch`], [`Reason`]
//! and [`Record`], decoded from the uapi structs.

use crate::uapi::{
    regwatch_reason_REGWATCH_REASON_CLEAR, regwatch_reason_REGWATCH_REASON_EXCLUSIVE,
    regwatch_reason_REGWATCH_REASON_MIGRATE, regwatch_reason_REGWATCH_REASON_OTHER,
    regwatch_reason_REGWATCH_REASON_PROTECTION, regwatch_reason_REGWATCH_REASON_RELEASE,
    regwatch_reason_REGWATCH_REASON_UNMAP, regwatch_record,
};

/// A watched range, as returned by [`Monitor::watch`](crate::Monitor::watch): its slot in the
/// status area and the sequence number that slot holds while the watch is
/// valid. Sequence numbers are never reused on one [`Monitor`](crate::Monitor), so a `Watch`
/// whose slot was unwatched and reused never looks valid again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Watch {
    pub(crate) slot: u32,
    pub(crate) seq: u64,
}

impl Watch {
    /// Index of the watch's word in the status area.
    #[must_use]
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// The value of the slot word while the watch is valid: even, never 0.
    #[must_use]
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// Why a watch turned dirty: the first event that hit its range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// munmap, mremap, `MAP_FIXED` over the range, brk shrink, shmdt.
    Unmap,
    /// Pages zapped or replaced in place: madvise(DONTNEED/FREE/REMOVE), a
    /// copy-on-write break, reclaim, migration.
    Clear,
    /// A protection-only change (mprotect, fork's write-protect pass);
    /// reported only in strict mode ([`Builder::strict`](crate::Builder::strict)).
    Protection,
    /// The address space is exiting.
    Release,
    /// Device migration (`migrate_vma`).
    Migrate,
    /// Device-exclusive access.
    Exclusive,
    /// An event the module does not name.
    Other,
    /// A value this crate does not know, from a newer module.
    Unknown(u32),
}

impl Reason {
    pub(crate) fn from_raw(raw: u32) -> Self {
        #[allow(non_upper_case_globals)]
        match raw {
            regwatch_reason_REGWATCH_REASON_UNMAP => Self::Unmap,
            regwatch_reason_REGWATCH_REASON_CLEAR => Self::Clear,
            regwatch_reason_REGWATCH_REASON_PROTECTION => Self::Protection,
            regwatch_reason_REGWATCH_REASON_RELEASE => Self::Release,
            regwatch_reason_REGWATCH_REASON_MIGRATE => Self::Migrate,
            regwatch_reason_REGWATCH_REASON_EXCLUSIVE => Self::Exclusive,
            regwatch_reason_REGWATCH_REASON_OTHER => Self::Other,
            other => Self::Unknown(other),
        }
    }
}

/// One dirty watch, as [`Monitor::drain`](crate::Monitor::drain) reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Record {
    /// The cookie given to [`Monitor::watch`](crate::Monitor::watch).
    pub cookie: u64,
    /// The watch (slot and seq) that turned dirty.
    pub watch: Watch,
    /// Page-rounded start of the watched range.
    pub start: usize,
    /// Page-rounded end of the watched range (exclusive).
    pub end: usize,
    /// The first event that dirtied it.
    pub reason: Reason,
}

impl Record {
    pub(crate) fn from_raw(raw: &regwatch_record) -> Self {
        Self {
            cookie: raw.cookie,
            watch: Watch {
                slot: raw.slot,
                seq: raw.seq,
            },
            // Lossless: lib.rs admits 64-bit targets only.
            start: raw.start as usize,
            end: raw.end as usize,
            reason: Reason::from_raw(raw.reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_decode_from_the_header_values() {
        let decoded: Vec<Reason> = (0..=8).map(Reason::from_raw).collect();
        assert_eq!(
            decoded,
            [
                Reason::Unknown(0),
                Reason::Unmap,
                Reason::Clear,
                Reason::Protection,
                Reason::Release,
                Reason::Migrate,
                Reason::Exclusive,
                Reason::Other,
                Reason::Unknown(8),
            ]
        );
    }

    #[test]
    fn records_decode_every_field() {
        let raw = regwatch_record {
            cookie: 0xc0ff_ee00,
            seq: 42,
            start: 0x7000_0000,
            end: 0x7000_2000,
            slot: 7,
            reason: regwatch_reason_REGWATCH_REASON_UNMAP,
            reserved: 0,
        };
        assert_eq!(
            Record::from_raw(&raw),
            Record {
                cookie: 0xc0ff_ee00,
                watch: Watch { slot: 7, seq: 42 },
                start: 0x7000_0000,
                end: 0x7000_2000,
                reason: Reason::Unmap,
            }
        );
    }
}
