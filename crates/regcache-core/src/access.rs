//! Access rights of a registration.

use std::fmt;
use std::ops::BitOr;

/// Access rights requested for a registration.
///
/// The bit values are libibverbs' `IBV_ACCESS_*` values, so a verbs registrar passes
/// [`Access::bits`] straight to `ibv_reg_mr`. [`Access::ON_DEMAND`] is chosen by the cache
/// (from its [`Policy`](crate::Policy)); a caller's `ON_DEMAND` bit is ignored.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Access(u32);

const NAMES: [(Access, &str); 5] = [
    (Access::LOCAL_WRITE, "LOCAL_WRITE"),
    (Access::REMOTE_WRITE, "REMOTE_WRITE"),
    (Access::REMOTE_READ, "REMOTE_READ"),
    (Access::REMOTE_ATOMIC, "REMOTE_ATOMIC"),
    (Access::ON_DEMAND, "ON_DEMAND"),
];

impl Access {
    /// The device only reads the memory locally (a send source).
    pub const LOCAL_READ_ONLY: Self = Self(0);
    /// `IBV_ACCESS_LOCAL_WRITE`: the device writes the memory (receive buffers, READ sinks).
    pub const LOCAL_WRITE: Self = Self(1);
    /// `IBV_ACCESS_REMOTE_WRITE`: peers RDMA WRITE into the memory.
    pub const REMOTE_WRITE: Self = Self(1 << 1);
    /// `IBV_ACCESS_REMOTE_READ`: peers RDMA READ from the memory.
    pub const REMOTE_READ: Self = Self(1 << 2);
    /// `IBV_ACCESS_REMOTE_ATOMIC`: peers run atomics on the memory.
    pub const REMOTE_ATOMIC: Self = Self(1 << 3);
    /// `IBV_ACCESS_ON_DEMAND`: an ODP registration (set by the cache, never by callers).
    pub const ON_DEMAND: Self = Self(1 << 6);

    const KNOWN: u32 = 0b100_1111;

    /// The `IBV_ACCESS_*` bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// The rights named by `bits`, or `None` when `bits` holds a bit this type does not know.
    pub const fn from_bits(bits: u32) -> Option<Self> {
        if bits & !Self::KNOWN == 0 {
            Some(Self(bits))
        } else {
            None
        }
    }

    /// Whether every right of `other` is in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// `self` without the rights of `other`.
    pub const fn without(self, other: Self) -> Self {
        Self(self.0 & !other.0)
    }

    /// Whether the device may write the memory: only such registrations lose data under a
    /// faulty ODP implementation (see issue 4), so only they need pinning when ODP is trusted
    /// for reads alone.
    pub const fn device_writes(self) -> bool {
        self.0 & (Self::LOCAL_WRITE.0 | Self::REMOTE_WRITE.0 | Self::REMOTE_ATOMIC.0) != 0
    }
}

impl BitOr for Access {
    type Output = Self;

    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names = NAMES
            .iter()
            .filter(|(flag, _)| self.contains(*flag))
            .map(|(_, name)| *name)
            .peekable();
        if names.peek().is_none() {
            return f.write_str("LOCAL_READ_ONLY");
        }
        for (i, name) in names.enumerate() {
            if i > 0 {
                f.write_str("|")?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_libibverbs_values() {
        assert_eq!(Access::LOCAL_WRITE.bits(), 1);
        assert_eq!(Access::REMOTE_WRITE.bits(), 2);
        assert_eq!(Access::REMOTE_READ.bits(), 4);
        assert_eq!(Access::REMOTE_ATOMIC.bits(), 8);
        assert_eq!(Access::ON_DEMAND.bits(), 64);
    }

    #[test]
    fn unknown_bits_are_refused() {
        assert_eq!(Access::from_bits(16), None);
        assert_eq!(
            Access::from_bits(5),
            Some(Access::LOCAL_WRITE | Access::REMOTE_READ)
        );
    }

    #[test]
    fn only_write_rights_count_as_device_writes() {
        assert!(!Access::REMOTE_READ.device_writes());
        assert!(!(Access::REMOTE_READ | Access::ON_DEMAND).device_writes());
        assert!(Access::LOCAL_WRITE.device_writes());
        assert!(Access::REMOTE_ATOMIC.device_writes());
    }

    #[test]
    fn debug_lists_flags() {
        let access = Access::LOCAL_WRITE | Access::REMOTE_READ;
        assert_eq!(format!("{access:?}"), "LOCAL_WRITE|REMOTE_READ");
        assert_eq!(format!("{:?}", Access::LOCAL_READ_ONLY), "LOCAL_READ_ONLY");
    }
}
