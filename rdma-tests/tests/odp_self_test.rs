//! The ODP self-test on rxe, and how `auto` and `odp` resolve with its outcome.
//!
//! Issue 4: on 7.x rxe, ODP WRITE targets and READ sinks lose data silently at path MTU 1024
//! and page-aligned transfers are correct at 4096. The self-test also found that transfers
//! starting inside a page lose data at 4096, whichever side is ODP. These tests pin all three
//! down, so we notice when a kernel fixes them (an assertion then fails and names the case).
//! On 6.12 rxe has no ODP caps and the test must not even run.

use std::sync::Arc;

use rdma_tests::{error_chain, expect_odp, require_devices, RXE0};
use regcache::{
    odp_self_test, Config, Mode, OdpCheck, OdpSelfTest, OdpSupport, Policy, RdmaCache, SetupError,
};
use verbs::{Context, Mtu, ProtectionDomain};

fn rxe0_pd() -> Arc<ProtectionDomain> {
    let ctx = Context::open(RXE0.device).unwrap_or_else(|e| panic!("{}", error_chain(&e)));
    ProtectionDomain::new(&ctx).unwrap_or_else(|e| panic!("{}", error_chain(&e)))
}

#[test]
fn self_test_catches_the_losses_of_rxe_odp() {
    if require_devices().is_none() {
        return;
    }
    let pd = rxe0_pd();
    let small = odp_self_test(&pd, Mtu::Mtu1024);
    let large = odp_self_test(&pd, Mtu::Mtu4096);
    println!("ODP self-test at 1024: {small}");
    println!("ODP self-test at 4096: {large}");
    if !expect_odp() {
        for result in [&small, &large] {
            assert_eq!(result.support, OdpSupport::None, "{result}");
            assert_eq!(
                result.path_mtu, None,
                "without ODP caps nothing may run: {result}"
            );
            assert!(result.checks.is_empty(), "{result}");
        }
        return;
    }
    assert_eq!(small.path_mtu, Some(Mtu::Mtu1024), "{small}");
    assert_eq!(large.path_mtu, Some(Mtu::Mtu4096), "{large}");
    let aligned = |test: &OdpSelfTest| -> Vec<OdpCheck> {
        test.checks
            .iter()
            .filter(|c| c.skew == 0)
            .cloned()
            .collect()
    };
    let unaligned = |test: &OdpSelfTest| -> Vec<OdpCheck> {
        test.checks
            .iter()
            .filter(|c| c.skew != 0)
            .cloned()
            .collect()
    };
    assert!(
        aligned(&small)
            .iter()
            .any(|c| c.device_writes && c.problem.is_some()),
        "page-aligned ODP writes at path MTU 1024 no longer lose data (fixed kernel?): {small}"
    );
    assert!(
        aligned(&large).iter().all(|c| c.problem.is_none()),
        "page-aligned ODP transfers at path MTU 4096 lose data: {large}"
    );
    // Found by this self-test on 7.3.4: a transfer that starts inside a page (a malloc'ed
    // buffer) loses data at 4096 too, whether the device reads or writes the ODP memory.
    assert!(
        unaligned(&large).iter().any(|c| c.problem.is_some()),
        "unaligned ODP transfers at path MTU 4096 no longer lose data (fixed kernel?): {large}"
    );
    assert_ne!(small.support, OdpSupport::Full, "{small}");
    assert_ne!(large.support, OdpSupport::Full, "{large}");
    assert_eq!(
        verbs::drop_failures(),
        0,
        "a verbs object failed to be destroyed"
    );
}

/// A cache in mode `auto` whose ODP self-test runs at `path_mtu`, the path MTU of its user's
/// queue pairs (the default of `Config::odp_probe_mtu`).
fn auto(pd: &Arc<ProtectionDomain>, path_mtu: Mtu) -> RdmaCache {
    let config = Config {
        mode: Mode::Auto,
        ..Config::default()
    };
    RdmaCache::new(Arc::clone(pd), config, path_mtu)
        .unwrap_or_else(|e| panic!("{}", error_chain(&e)))
}

#[test]
fn auto_mode_follows_the_self_test() {
    if require_devices().is_none() {
        return;
    }
    let pd = rxe0_pd();
    for mtu in [Mtu::Mtu1024, Mtu::Mtu4096] {
        let cache = auto(&pd, mtu);
        let stats = cache.stats();
        println!("auto at {}: {:?}, {stats:?}", mtu.bytes(), cache.policy());
        let test = cache.odp_self_test().expect("auto runs the self-test");
        assert_eq!(test.path_mtu.is_some(), expect_odp(), "{test}");
        if expect_odp() {
            assert_eq!(test.path_mtu, Some(mtu), "the caller's path MTU: {test}");
        }
        // regwatch is loaded in the VM, so whatever ODP cannot do is pinned and watched.
        let expected = match test.support {
            OdpSupport::Full => Policy::Odp,
            OdpSupport::DeviceReadsOnly => Policy::OdpForDeviceReads,
            OdpSupport::None => Policy::Pinned,
        };
        assert_eq!(cache.policy(), expected, "{test}");
    }
}

#[test]
fn explicit_odp_is_refused_where_the_self_test_fails() {
    if require_devices().is_none() {
        return;
    }
    let pd = rxe0_pd();
    let config = Config {
        mode: Mode::Odp,
        odp_probe_mtu: Some(Mtu::Mtu1024),
        ..Config::default()
    };
    let test = odp_self_test(&pd, Mtu::Mtu1024);
    // The configured MTU wins over the caller's path MTU.
    match (RdmaCache::new(pd, config, Mtu::Mtu4096), test.support) {
        (
            Err(SetupError::ModeUnavailable {
                mode: Mode::Odp, ..
            }),
            OdpSupport::None,
        ) => {}
        (Ok(cache), OdpSupport::Full) => assert_eq!(cache.policy(), Policy::Odp),
        (Ok(cache), OdpSupport::DeviceReadsOnly) => {
            assert_eq!(cache.policy(), Policy::OdpForDeviceReads);
        }
        (other, _) => panic!("self-test {test}, got {other:?}"),
    }
}
