//! Plain-data views of device and port attributes.

use rdma_sys::{
    ibv_device_attr_ex, ibv_mtu, ibv_odp_general_caps, ibv_odp_transport_cap_bits, ibv_port_attr,
    ibv_port_state,
};

use crate::error::{Error, Result};

/// On-demand-paging capabilities (`struct ibv_odp_caps`) as plain booleans.
///
/// All fields are `false` on a device or kernel without ODP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools)] // mirrors a capability bit mask one-to-one
pub struct OdpCaps {
    /// `IBV_ODP_SUPPORT`: the device can register `IBV_ACCESS_ON_DEMAND` regions at all.
    pub general: bool,
    /// `IBV_ODP_SUPPORT_IMPLICIT`: a whole-address-space implicit ODP region is possible.
    pub implicit: bool,
    /// RC SEND may use ODP memory as its source.
    pub rc_send: bool,
    /// RC RECV may land in ODP memory.
    pub rc_recv: bool,
    /// RC RDMA WRITE may target ODP memory.
    pub rc_write: bool,
    /// RC RDMA READ may read from ODP memory.
    pub rc_read: bool,
    /// RC atomics may target ODP memory.
    pub rc_atomic: bool,
    /// Receives through an SRQ may land in ODP memory.
    pub rc_srq_recv: bool,
}

impl OdpCaps {
    fn from_raw(general: u64, rc: u32) -> Self {
        let general_has = |bit: ibv_odp_general_caps| general & u64::from(bit.0) != 0;
        let rc_has = |bit: ibv_odp_transport_cap_bits| rc & bit.0 != 0;
        Self {
            general: general_has(ibv_odp_general_caps::IBV_ODP_SUPPORT),
            implicit: general_has(ibv_odp_general_caps::IBV_ODP_SUPPORT_IMPLICIT),
            rc_send: rc_has(ibv_odp_transport_cap_bits::IBV_ODP_SUPPORT_SEND),
            rc_recv: rc_has(ibv_odp_transport_cap_bits::IBV_ODP_SUPPORT_RECV),
            rc_write: rc_has(ibv_odp_transport_cap_bits::IBV_ODP_SUPPORT_WRITE),
            rc_read: rc_has(ibv_odp_transport_cap_bits::IBV_ODP_SUPPORT_READ),
            rc_atomic: rc_has(ibv_odp_transport_cap_bits::IBV_ODP_SUPPORT_ATOMIC),
            rc_srq_recv: rc_has(ibv_odp_transport_cap_bits::IBV_ODP_SUPPORT_SRQ_RECV),
        }
    }

    /// Whether ODP regions can serve every RC operation the cache relies on:
    /// SEND, RECV, RDMA READ and RDMA WRITE.
    #[must_use]
    pub fn covers_rc_send_recv_read_write(&self) -> bool {
        self.general && self.rc_send && self.rc_recv && self.rc_read && self.rc_write
    }
}

/// Device attributes from `ibv_query_device_ex`, reduced to what users of this crate need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAttrs {
    /// Firmware version string (empty for Soft-RoCE).
    pub fw_ver: String,
    /// Largest registrable region in bytes.
    pub max_mr_size: u64,
    /// Maximum number of memory regions.
    pub max_mr: u32,
    /// Maximum number of queue pairs.
    pub max_qp: u32,
    /// Maximum outstanding work requests per queue.
    pub max_qp_wr: u32,
    /// Maximum scatter/gather elements per work request.
    pub max_sge: u32,
    /// Maximum completion-queue entries.
    pub max_cqe: u32,
    /// Maximum outstanding RDMA READs a QP may have as initiator/responder.
    pub max_qp_rd_atom: u32,
    /// Number of physical ports (numbered from 1).
    pub phys_port_cnt: u8,
    /// On-demand-paging capabilities.
    pub odp: OdpCaps,
}

impl DeviceAttrs {
    pub(crate) fn from_raw(raw: &ibv_device_attr_ex) -> Self {
        let orig = &raw.orig_attr;
        let fw_ver: Vec<u8> = orig
            .fw_ver
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c.to_ne_bytes()[0])
            .collect();
        let nonneg = |v: i32| u32::try_from(v).unwrap_or(0);
        Self {
            fw_ver: String::from_utf8_lossy(&fw_ver).into_owned(),
            max_mr_size: orig.max_mr_size,
            max_mr: nonneg(orig.max_mr),
            max_qp: nonneg(orig.max_qp),
            max_qp_wr: nonneg(orig.max_qp_wr),
            max_sge: nonneg(orig.max_sge),
            max_cqe: nonneg(orig.max_cqe),
            max_qp_rd_atom: nonneg(orig.max_qp_rd_atom),
            phys_port_cnt: orig.phys_port_cnt,
            odp: OdpCaps::from_raw(
                raw.odp_caps.general_caps,
                raw.odp_caps.per_transport_caps.rc_odp_caps,
            ),
        }
    }
}

/// An IB path MTU (`enum ibv_mtu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mtu {
    /// 256 bytes.
    Mtu256,
    /// 512 bytes.
    Mtu512,
    /// 1024 bytes. ODP WRITE targets on Soft-RoCE lose data at this MTU.
    Mtu1024,
    /// 2048 bytes.
    Mtu2048,
    /// 4096 bytes; what the project uses on Soft-RoCE.
    Mtu4096,
}

impl Mtu {
    /// The MTU in bytes.
    #[must_use]
    pub fn bytes(self) -> u32 {
        match self {
            Self::Mtu256 => 256,
            Self::Mtu512 => 512,
            Self::Mtu1024 => 1024,
            Self::Mtu2048 => 2048,
            Self::Mtu4096 => 4096,
        }
    }

    pub(crate) fn to_raw(self) -> ibv_mtu::Type {
        match self {
            Self::Mtu256 => ibv_mtu::IBV_MTU_256,
            Self::Mtu512 => ibv_mtu::IBV_MTU_512,
            Self::Mtu1024 => ibv_mtu::IBV_MTU_1024,
            Self::Mtu2048 => ibv_mtu::IBV_MTU_2048,
            Self::Mtu4096 => ibv_mtu::IBV_MTU_4096,
        }
    }

    const ALL: [Self; 5] = [
        Self::Mtu256,
        Self::Mtu512,
        Self::Mtu1024,
        Self::Mtu2048,
        Self::Mtu4096,
    ];

    fn from_raw(raw: ibv_mtu::Type) -> Option<Self> {
        Self::ALL.into_iter().find(|mtu| mtu.to_raw() == raw)
    }
}

impl TryFrom<u32> for Mtu {
    type Error = Error;

    /// The path MTU of `bytes` bytes.
    ///
    /// # Errors
    /// [`Error::NotAPathMtu`] unless `bytes` is 256, 512, 1024, 2048 or 4096.
    fn try_from(bytes: u32) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|mtu| mtu.bytes() == bytes)
            .ok_or(Error::NotAPathMtu { bytes })
    }
}

/// Logical port state (`enum ibv_port_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortState {
    /// Link down.
    Down,
    /// Link up, not yet configured.
    Init,
    /// Configured, not yet active.
    Armed,
    /// Ready for traffic.
    Active,
    /// Any other value (`NOP`, `ACTIVE_DEFER`, or a future one).
    Other(u32),
}

impl PortState {
    fn from_raw(raw: ibv_port_state::Type) -> Self {
        match raw {
            ibv_port_state::IBV_PORT_DOWN => Self::Down,
            ibv_port_state::IBV_PORT_INIT => Self::Init,
            ibv_port_state::IBV_PORT_ARMED => Self::Armed,
            ibv_port_state::IBV_PORT_ACTIVE => Self::Active,
            other => Self::Other(other),
        }
    }
}

/// Link layer of a port (`IBV_LINK_LAYER_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkLayer {
    /// InfiniBand (LID routed).
    InfiniBand,
    /// Ethernet (RoCE; GID routed, needs a GRH).
    Ethernet,
    /// Unspecified or unknown.
    Other(u8),
}

/// Port attributes from `ibv_query_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortAttr {
    /// Logical state.
    pub state: PortState,
    /// Largest MTU the port supports.
    pub max_mtu: Option<Mtu>,
    /// MTU currently active on the port (for RoCE: derived from the netdev MTU).
    pub active_mtu: Option<Mtu>,
    /// Number of entries in the GID table.
    pub gid_tbl_len: u32,
    /// Local identifier (0 on RoCE).
    pub lid: u16,
    /// InfiniBand or Ethernet.
    pub link_layer: LinkLayer,
}

impl PortAttr {
    pub(crate) fn from_raw(raw: &ibv_port_attr) -> Self {
        // Values of the anonymous IBV_LINK_LAYER_* enum in <infiniband/verbs.h>,
        // which rdma-sys does not bind.
        const LINK_LAYER_INFINIBAND: u8 = 1;
        const LINK_LAYER_ETHERNET: u8 = 2;
        Self {
            state: PortState::from_raw(raw.state),
            max_mtu: Mtu::from_raw(raw.max_mtu),
            active_mtu: Mtu::from_raw(raw.active_mtu),
            gid_tbl_len: u32::try_from(raw.gid_tbl_len).unwrap_or(0),
            lid: raw.lid,
            link_layer: match raw.link_layer {
                LINK_LAYER_INFINIBAND => LinkLayer::InfiniBand,
                LINK_LAYER_ETHERNET => LinkLayer::Ethernet,
                other => LinkLayer::Other(other),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_path_mtus_convert_from_bytes() {
        for mtu in Mtu::ALL {
            assert_eq!(Mtu::try_from(mtu.bytes()).unwrap(), mtu);
        }
        assert!(matches!(
            Mtu::try_from(1500),
            Err(Error::NotAPathMtu { bytes: 1500 })
        ));
    }
}
