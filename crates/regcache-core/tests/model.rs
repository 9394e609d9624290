//! Random register/release/unmap/remap/evict sequences checked against a small reference model.
//!
//! The model knows which pages are mapped and which handles the test holds; from that it
//! predicts whether each request succeeds and checks, after every step:
//! - a returned registration covers the request with the requested rights and pins the pages
//!   mapped there now (never stale);
//! - every held handle's region is still registered, and nothing is deregistered twice;
//! - the stats agree with the registrar (regions, bytes, regions in use, hits + misses);
//! - after a request that registered, the limits hold unless every live region is held;
//! - dropping everything leaves no region and no watch behind.

use std::collections::BTreeSet;

use proptest::prelude::*;
use regcache_core::testing::{FakeMemory, PAGE};
use regcache_core::{Access, Limits, Policy};

const BASE: usize = 0x40_0000;
const PAGES: usize = 16;

#[derive(Debug, Clone)]
enum Op {
    Register {
        page: usize,
        offset: usize,
        len: usize,
        access: Access,
    },
    Release(usize),
    Map(usize, usize),
    Unmap(usize, usize),
    EvictIdle,
    Flush,
}

fn access() -> impl Strategy<Value = Access> {
    prop_oneof![
        Just(Access::LOCAL_READ_ONLY),
        Just(Access::LOCAL_WRITE),
        Just(Access::REMOTE_READ),
        Just(Access::LOCAL_WRITE | Access::REMOTE_WRITE),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..PAGES, 0..PAGE, 1..3 * PAGE, access())
            .prop_map(|(page, offset, len, access)| Op::Register { page, offset, len, access }),
        4 => any::<usize>().prop_map(Op::Release),
        2 => (0..PAGES, 1..4usize).prop_map(|(page, n)| Op::Map(page, n)),
        1 => (0..PAGES, 1..3usize).prop_map(|(page, n)| Op::Unmap(page, n)),
        1 => Just(Op::EvictIdle),
        1 => Just(Op::Flush),
    ]
}

fn limits() -> impl Strategy<Value = Limits> {
    (1..8usize, 1..16usize, 1..8usize).prop_map(|(regions, pages, merge)| Limits {
        max_regions: regions,
        max_bytes: pages * PAGE,
        max_merge_bytes: merge * PAGE,
    })
}

fn page_addr(page: usize) -> usize {
    BASE + page * PAGE
}

fn run(policy: Policy, limits: Limits, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let memory = FakeMemory::new(256);
    memory.map(BASE, PAGES * PAGE);
    let mut mapped: BTreeSet<usize> = (0..PAGES).collect();
    let cache = memory.cache(policy, limits);
    let mut held = Vec::new();
    let mut requests = 0u64;

    for op in ops {
        let registrations_before = memory.registrations();
        match op.clone() {
            Op::Register {
                page,
                offset,
                len,
                access,
            } => {
                let addr = page_addr(page) + offset;
                let first = page;
                let last = (addr + len - 1 - BASE) / PAGE;
                let expect_ok = (first..=last).all(|p| mapped.contains(&p));
                requests += 1;
                let result = cache.cached_reg(std::ptr::without_provenance(addr), len, access);
                match result {
                    Ok(registration) => {
                        prop_assert!(expect_ok, "registered unmapped pages");
                        prop_assert!(registration.addr() <= addr);
                        prop_assert!(registration.addr() + registration.length() >= addr + len);
                        prop_assert!(registration.access().contains(access));
                        prop_assert!(
                            memory.is_current(registration.lkey(), addr, len),
                            "stale registration {registration:?} for {addr:#x}+{len}"
                        );
                        held.push(registration);
                    }
                    Err(err) => prop_assert!(!expect_ok, "unexpected {err:?}"),
                }
            }
            Op::Release(i) if !held.is_empty() => {
                let i = i % held.len();
                held.swap_remove(i);
            }
            Op::Release(_) => {}
            Op::Map(page, n) => {
                let n = n.min(PAGES - page);
                memory.map(page_addr(page), n * PAGE);
                mapped.extend(page..page + n);
            }
            Op::Unmap(page, n) => {
                let n = n.min(PAGES - page);
                memory.unmap(page_addr(page), n * PAGE);
                (page..page + n).for_each(|p| {
                    mapped.remove(&p);
                });
            }
            Op::EvictIdle => {
                cache.evict_idle();
            }
            Op::Flush => cache.flush_invalidations().unwrap(),
        }

        let held_lkeys: BTreeSet<u32> = held.iter().map(|r| r.lkey()).collect();
        for lkey in &held_lkeys {
            prop_assert!(
                memory.is_live(*lkey),
                "region {lkey} released under a handle"
            );
        }
        prop_assert_eq!(memory.double_deregistrations(), 0);
        let (regions, bytes) = memory.live();
        let stats = cache.stats();
        prop_assert_eq!(stats.regions, regions as u64);
        prop_assert_eq!(stats.bytes_registered, bytes as u64);
        prop_assert_eq!(stats.regions_in_use, held_lkeys.len() as u64);
        prop_assert_eq!(stats.hits + stats.misses, requests);
        let idle = regions - held_lkeys.len();
        if matches!(op, Op::EvictIdle) {
            prop_assert_eq!(idle, 0, "evict_idle left idle regions");
        }
        if memory.registrations() > registrations_before {
            prop_assert!(
                idle == 0 || (regions <= limits.max_regions && bytes <= limits.max_bytes),
                "{idle} idle regions while over the limits: {regions} regions, {bytes} bytes"
            );
        }
    }

    drop(held);
    drop(cache);
    prop_assert_eq!(memory.live(), (0, 0));
    prop_assert_eq!(memory.active_watches(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn pinned_cache_matches_the_model(
        limits in limits(),
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        run(Policy::Pinned, limits, ops)?;
    }
}

/// The model's stale check must be able to fail: the trust negative control fails it.
#[test]
fn the_model_catches_the_trust_negative_control() {
    let ops = vec![
        Op::Register {
            page: 0,
            offset: 0,
            len: PAGE,
            access: Access::LOCAL_WRITE,
        },
        Op::Release(0),
        Op::Map(0, 1),
        Op::Register {
            page: 0,
            offset: 0,
            len: PAGE,
            access: Access::LOCAL_WRITE,
        },
    ];
    let result = run(Policy::TrustWithoutInvalidation, Limits::default(), ops);
    let message = format!("{:?}", result.expect_err("trust mode must be caught"));
    assert!(message.contains("stale registration"), "{message}");
}
