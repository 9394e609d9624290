//! What the cache does on each request (its [`Policy`], and the `Plan` a policy makes for
//! one request) and the bounds on what it keeps ([`Limits`]). How a production cache picks its
//! policy is the RDMA back end's business (`regcache::Mode`).

use crate::access::Access;

/// What the cache does on each request: the only thing the cache logic needs to know of the mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Pinned registrations, each watched before it is registered; a hit needs a valid watch.
    Pinned,
    /// ODP registrations, cached without watches: the device follows the page tables.
    Odp,
    /// ODP for registrations the device only reads, [`Policy::Pinned`] for the rest.
    OdpForDeviceReads,
    /// Register on every call, deregister when the handle drops.
    Off,
    /// Pinned registrations cached WITHOUT invalidation: hands out stale registrations after
    /// munmap. Exists only as the negative control that proves the stale-buffer tests can fail.
    TrustWithoutInvalidation,
}

/// How a policy registers one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The access passed to the registrar.
    pub(crate) access: Access,
    /// Whether the range is watched.
    pub(crate) watched: bool,
}

impl Policy {
    /// Whether registrations are kept after their handles drop.
    pub(crate) fn caches(self) -> bool {
        self != Self::Off
    }

    /// Whether any registration can carry a watch: only then does the cache need an
    /// invalidation source that can watch.
    #[must_use]
    pub fn watches(self) -> bool {
        matches!(self, Self::Pinned | Self::OdpForDeviceReads)
    }

    pub(crate) fn plan(self, access: Access) -> Plan {
        let access = access.without(Access::ON_DEMAND);
        let on_demand = Plan {
            access: access | Access::ON_DEMAND,
            watched: false,
        };
        let pinned = |watched| Plan { access, watched };
        match self {
            Self::Pinned => pinned(true),
            Self::Odp => on_demand,
            Self::OdpForDeviceReads if access.device_writes() => pinned(true),
            Self::OdpForDeviceReads => on_demand,
            Self::Off | Self::TrustWithoutInvalidation => pinned(false),
        }
    }
}

/// Bounds on what the cache keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Live registrations above which idle ones are evicted.
    pub max_regions: usize,
    /// Registered bytes above which idle registrations are evicted.
    pub max_bytes: usize,
    /// Largest registration a merge of neighbouring requests may produce; a request that is larger on its own is still registered.
    pub max_merge_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_regions: 16 * 1024,
            max_bytes: 1 << 30,
            max_merge_bytes: 64 << 20,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_follow_the_policy() {
        let write = Access::LOCAL_WRITE;
        let read = Access::REMOTE_READ | Access::ON_DEMAND;
        let plan = |policy: Policy, access| policy.plan(access);
        assert_eq!(
            plan(Policy::Pinned, read),
            Plan {
                access: Access::REMOTE_READ,
                watched: true
            }
        );
        assert_eq!(plan(Policy::Odp, write).access, write | Access::ON_DEMAND);
        assert!(plan(Policy::OdpForDeviceReads, write).watched);
        assert!(!plan(Policy::OdpForDeviceReads, read).watched);
        assert!(!plan(Policy::TrustWithoutInvalidation, write).watched);
    }
}
