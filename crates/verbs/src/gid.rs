//! GIDs and their RoCE types.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// A 128-bit global identifier, stored in network byte order as on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Gid(pub [u8; 16]);

impl Gid {
    /// The GID a RoCE device derives from an IPv4 address (`::ffff:a.b.c.d`).
    #[must_use]
    pub fn from_ipv4(addr: Ipv4Addr) -> Self {
        Self(addr.to_ipv6_mapped().octets())
    }

    /// The IPv4 address inside an IPv4-mapped GID.
    #[must_use]
    pub fn to_ipv4_mapped(&self) -> Option<Ipv4Addr> {
        Ipv6Addr::from(self.0).to_ipv4_mapped()
    }

    /// Whether this is the all-zero GID that marks an unused table entry.
    #[must_use]
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Ipv6Addr::from(self.0).fmt(f)
    }
}

impl fmt::Debug for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gid({self})")
    }
}

/// The protocol a GID table entry is used with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GidType {
    /// InfiniBand, or RoCE v1 (sysfs reports both as `IB/RoCE v1`).
    IbOrRoceV1,
    /// RoCE v2 (routable, over UDP/IP).
    RoceV2,
}

impl GidType {
    /// Parses the content of `/sys/class/infiniband/<dev>/ports/<port>/gid_attrs/types/<index>`.
    pub(crate) fn from_sysfs(text: &str) -> Option<Self> {
        match text.trim() {
            "RoCE v2" => Some(Self::RoceV2),
            "IB/RoCE v1" => Some(Self::IbOrRoceV1),
            _ => None,
        }
    }
}

/// One populated entry of a port's GID table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GidEntry {
    /// Index into the table; what a QP uses as `sgid_index`.
    pub index: u8,
    /// The GID.
    pub gid: Gid,
    /// Protocol of the entry, if the kernel reports one.
    pub gid_type: Option<GidType>,
}

/// The entry [`Context::roce_v2_gid`](crate::Context::roce_v2_gid) chooses from `table`.
pub(crate) fn choose_roce_v2(table: &[GidEntry], addr: Option<Ipv4Addr>) -> Option<&GidEntry> {
    let roce_v2 = |entry: &&GidEntry| entry.gid_type == Some(GidType::RoceV2);
    let Some(addr) = addr else {
        return table
            .iter()
            .filter(roce_v2)
            .find(|entry| entry.gid.to_ipv4_mapped().is_some())
            .or_else(|| table.iter().find(roce_v2))
            .or_else(|| table.first());
    };
    table
        .iter()
        .filter(roce_v2)
        .find(|entry| entry.gid.to_ipv4_mapped() == Some(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roce_v2_over_ipv4_is_preferred_then_any_roce_v2_then_the_first() {
        let entry = |index, gid, gid_type| GidEntry {
            index,
            gid,
            gid_type,
        };
        let link_local = Gid([0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        let addr = Ipv4Addr::new(10, 77, 0, 1);
        let ipv4 = Gid::from_ipv4(addr);
        let table = [
            entry(0, link_local, Some(GidType::IbOrRoceV1)),
            entry(1, link_local, Some(GidType::RoceV2)),
            entry(2, ipv4, Some(GidType::IbOrRoceV1)),
            entry(3, ipv4, Some(GidType::RoceV2)),
        ];
        let index = |table, addr| choose_roce_v2(table, addr).map(|entry| entry.index);
        assert_eq!(index(&table, None), Some(3));
        assert_eq!(index(&table[..3], None), Some(1));
        assert_eq!(index(&table[..1], None), Some(0));
        assert_eq!(index(&[], None), None);
        assert_eq!(index(&table, Some(addr)), Some(3));
        assert_eq!(
            index(&table[..3], Some(addr)),
            None,
            "only RoCE v2 carries traffic"
        );
        assert_eq!(index(&table, Some(Ipv4Addr::new(10, 77, 0, 2))), None);
    }

    #[test]
    fn ipv4_mapped_gid_round_trips() {
        let addr = Ipv4Addr::new(10, 77, 0, 2);
        let gid = Gid::from_ipv4(addr);
        assert_eq!(gid.to_ipv4_mapped(), Some(addr));
        assert_eq!(gid.to_string(), "::ffff:10.77.0.2");
        assert!(!gid.is_zero());
    }

    #[test]
    fn link_local_gid_is_not_ipv4_mapped() {
        let mut raw = [0u8; 16];
        raw[0] = 0xfe;
        raw[1] = 0x80;
        raw[15] = 1;
        assert_eq!(Gid(raw).to_ipv4_mapped(), None);
    }

    #[test]
    fn sysfs_gid_types_parse() {
        assert_eq!(GidType::from_sysfs("RoCE v2\n"), Some(GidType::RoceV2));
        assert_eq!(
            GidType::from_sysfs("IB/RoCE v1\n"),
            Some(GidType::IbOrRoceV1)
        );
        assert_eq!(GidType::from_sysfs("bogus"), None);
    }
}
