//! The miss path: plan under the lock, register without it, admit under it again.

use std::sync::atomic::Ordering::Acquire;
use std::sync::Arc;

use super::{Cache, Snapshot, State, PAGE, REGISTER_ATTEMPTS};
use crate::access::Access;
use crate::entry::{Entry, Registration};
use crate::error::{Error, Result};
use crate::stats::Counters;
use crate::traits::{InvalidationSource, Registrar};

/// What a miss finds around the requested range.
struct Survey {
    /// Starts of neighbours whose pages changed: they leave the index.
    stale: Vec<usize>,
    /// Valid neighbours (overlapping or adjacent).
    neighbours: usize,
    /// The request widened to its valid neighbours, with all their rights.
    union: (usize, usize, Access),
}

impl Survey {
    fn of<R: Registrar, I: InvalidationSource>(
        index: &Snapshot<R, I>,
        start: usize,
        end: usize,
        access: Access,
    ) -> Self {
        let mut survey = Self {
            stale: Vec::new(),
            neighbours: 0,
            union: (start, end, access),
        };
        for span in index.touching(start, end) {
            if span.item.is_valid() {
                survey.neighbours += 1;
                survey.union.0 = survey.union.0.min(span.start);
                survey.union.1 = survey.union.1.max(span.end);
                survey.union.2 = survey.union.2 | span.item.access.without(Access::ON_DEMAND);
            } else {
                survey.stale.push(span.start);
            }
        }
        survey
    }
}

impl<R: Registrar, I: InvalidationSource> Cache<R, I> {
    /// Registers `[start, end)` (widened to pages, maybe merged with its neighbours) and
    /// publishes it, unless a registration made meanwhile already serves it.
    ///
    /// # The registration is made outside the lock
    ///
    /// A miss takes the state lock twice, as libfabric's MR cache does (`ofi_mr_cache_search`):
    /// 1. under the lock it drains the invalidations, looks the request up again (another miss
    ///    may have registered it) and plans the registration: the request widened to pages and
    ///    merged with its valid neighbours (`Survey`); the neighbours found stale leave the
    ///    index now;
    /// 2. without the lock it watches and registers the plan (`register`: hundreds of
    ///    microseconds of `ibv_reg_mr` on a real device), so concurrent misses overlap and
    ///    hits go on;
    /// 3. under the lock again (`admit`) it drains the invalidations, then throws the
    ///    registration away and starts over if its watch turned invalid (a change since the
    ///    watch, reported or not: see below), or uses the entry another thread published
    ///    meanwhile if one serves the request (deregistering its own), or else inserts its own,
    ///    replacing whatever it overlaps so the index stays disjoint.
    ///
    /// Why a registration made outside the lock is never handed out or indexed stale: its
    /// watch was created before `ibv_reg_mr` started, so any change of its pages since then
    /// turns the watch invalid for good (the source's contract). Step 3 checks it after its own
    /// drain, under the lock. A change reported by then made the watch invalid before it was
    /// reported, and was drained before this check (by this thread, or by another under the
    /// lock this thread took after it), so the check sees it and discards the entry; that the
    /// report itself removed nothing (it names a start, and this entry was not indexed) loses
    /// nothing. A change not reported by then is reported to a later drain, which runs under
    /// the lock after the entry was inserted, so it finds the entry and removes it. Hits check
    /// the watch in any case. Nothing the registrar or the source waits for needs this lock
    /// (regwatch's kernel side only writes a status page this path reads), so holding it for
    /// steps 1 and 3 cannot deadlock with them.
    pub(super) fn register_missing(
        &self,
        start: usize,
        end: usize,
        access: Access,
    ) -> Result<Registration<R, I>> {
        if !self.policy.caches() {
            return Ok(Registration::new(Arc::new(
                self.register(start, end, access)?,
            )));
        }
        let aligned_start = start - start % PAGE;
        let aligned_end = end
            .checked_next_multiple_of(PAGE)
            .ok_or(Error::InvalidRange {
                addr: start,
                len: end - start,
            })?;
        for _ in 0..REGISTER_ATTEMPTS {
            let survey = {
                let mut state = self.lock();
                self.process_invalidations(&mut state)?;
                if let Some(hit) = self.find(&state, start, end, access) {
                    return Ok(hit);
                }
                let survey = Survey::of(&state.current, aligned_start, aligned_end, access);
                Counters::add(
                    &self.backend.counters.invalidated,
                    survey.stale.len() as u64,
                );
                self.remove(&mut state, &survey.stale);
                survey
            };
            let entry = match self.register_merged(&survey) {
                Some(entry) => entry,
                None => self.register(aligned_start, aligned_end, access)?,
            };
            let entry = Arc::new(entry);
            let admitted = self.admit(&mut self.lock(), &entry, start, end, access);
            // After the lock: the last reference to an entry not indexed deregisters it.
            drop(entry);
            if let Some(registration) = admitted? {
                return Ok(registration);
            }
            Counters::add(&self.backend.counters.registration_retries, 1);
            tracing::debug!(
                addr = start,
                "regcache: pages changed before the registration was indexed, retrying"
            );
        }
        Err(Error::Unstable {
            addr: aligned_start,
            len: aligned_end - aligned_start,
            attempts: REGISTER_ATTEMPTS,
        })
    }

    /// Step 3 of `register_missing`, under the lock: a registration serving `[start, end)`
    /// with `access`, `entry` (registered without the lock) once indexed or another thread's,
    /// or `None` when `entry`'s pages changed after its watch was created.
    ///
    /// # Errors
    /// [`Error::Drain`], from draining the invalidations.
    fn admit(
        &self,
        state: &mut State<R, I>,
        entry: &Arc<Entry<R, I>>,
        start: usize,
        end: usize,
        access: Access,
    ) -> Result<Option<Registration<R, I>>> {
        self.process_invalidations(state)?;
        if !entry.is_valid() {
            return Ok(None);
        }
        if let Some(hit) = self.find(state, start, end, access) {
            Counters::add(&self.backend.counters.duplicate_registrations, 1);
            return Ok(Some(hit));
        }
        let current = Arc::clone(&state.current);
        let stale = Survey::of(&current, entry.start, entry.end(), access).stale;
        Counters::add(&self.backend.counters.invalidated, stale.len() as u64);
        self.insert(state, current, stale, entry);
        self.evict_over_limits(state);
        Ok(Some(Registration::new(Arc::clone(entry))))
    }

    /// The indexed entry serving `[start, end)` with `access`, as a hit, looked up under the
    /// lock.
    fn find(
        &self,
        state: &State<R, I>,
        start: usize,
        end: usize,
        access: Access,
    ) -> Option<Registration<R, I>> {
        let version = self.version.load(Acquire);
        let found = self.lookup(&state.current, version, start, end);
        found.and_then(|entry| self.usable(entry, access))
    }

    /// Registers the union of the request and its valid neighbours when there are any and the
    /// union stays within the merge limit; `None` when not, or when that registration fails
    /// (the request alone may still succeed, e.g. with rights a neighbour's pages refuse).
    fn register_merged(&self, survey: &Survey) -> Option<Entry<R, I>> {
        let (start, end, access) = survey.union;
        if survey.neighbours == 0 || end - start > self.limits.max_merge_bytes {
            return None;
        }
        match self.register(start, end, access) {
            Ok(entry) => {
                Counters::add(&self.backend.counters.merges, 1);
                Some(entry)
            }
            Err(err) => {
                tracing::debug!(%err, "regcache: merge failed, registering the request alone");
                None
            }
        }
    }
}
