//! An immutable, sorted index of disjoint address ranges.
//!
//! The slots live in chunks of about [`CHUNK`] behind `Arc`s. An edit builds a new index that
//! shares every chunk it does not touch with the old one, so it costs O(n / CHUNK + CHUNK)
//! pointer copies instead of O(n). A lookup is a binary search over the chunks' first starts,
//! then a search of one chunk that reads dense start keys rather than whole slots.

use std::sync::Arc;

const CHUNK: usize = 64;
const MAX_CHUNK: usize = 2 * CHUNK;
const MIN_CHUNK: usize = CHUNK / 4;
/// Starts per group: one 64-byte cache line of keys.
const GROUP: usize = 8;
const GROUPS: usize = MAX_CHUNK / GROUP;

/// One range `[start, end)` and what it maps to.
#[derive(Clone, Debug)]
pub(crate) struct Slot<T> {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) item: T,
}

/// Up to [`MAX_CHUNK`] slots sorted by start, with their starts copied into two dense levels so
/// that a search reads the group pivots (two cache lines), one group of starts (one line) and
/// then the slot it found: a binary search over the 24-byte slots reads about six lines, each
/// depending on the one before, which is what a hit over many regions waits for.
///
/// Aligned to a cache line so that each level fills whole lines; in an `Arc` this also keeps
/// the reference counts, which edits change, off the lines that searches read.
#[derive(Debug)]
#[repr(align(64))]
struct Chunk<T> {
    /// The first start of each group of `starts`; `usize::MAX` for groups past the last slot.
    pivots: [usize; GROUPS],
    /// `starts[g][i]` is the start of `slots[g * GROUP + i]`; `usize::MAX` past the last slot.
    starts: [[usize; GROUP]; GROUPS],
    /// Never empty.
    slots: Box<[Slot<T>]>,
}

impl<T> Chunk<T> {
    fn new(slots: Vec<Slot<T>>) -> Self {
        debug_assert!(!slots.is_empty() && slots.len() <= MAX_CHUNK);
        let mut starts = [[usize::MAX; GROUP]; GROUPS];
        for (key, slot) in starts.as_flattened_mut().iter_mut().zip(&slots) {
            *key = slot.start;
        }
        Self {
            pivots: starts.map(|group| group[0]),
            starts,
            slots: slots.into_boxed_slice(),
        }
    }

    /// How many slots start at or before `addr`.
    fn count_starting_by(&self, addr: usize) -> usize {
        let Some(group) = self
            .pivots
            .partition_point(|&pivot| pivot <= addr)
            .checked_sub(1)
        else {
            return 0;
        };
        let in_group = self.starts[group].partition_point(|&start| start <= addr);
        // The padding compares `<=` only `usize::MAX`, which no slot can cover (it would be
        // empty) but a cookie from the invalidation source might name.
        (group * GROUP + in_group).min(self.slots.len())
    }
}

/// Disjoint ranges sorted by start (so also by end); adjacent ranges are allowed.
#[derive(Debug)]
pub(crate) struct Index<T> {
    /// `firsts[i]` is the start of `chunks[i]`'s first slot.
    firsts: Vec<usize>,
    chunks: Vec<Arc<Chunk<T>>>,
    len: usize,
}

impl<T> Default for Index<T> {
    fn default() -> Self {
        Self {
            firsts: Vec::new(),
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Index<T> {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Position of the last slot starting at or before `addr`.
    fn locate(&self, addr: usize) -> Option<(usize, usize)> {
        let chunk = self
            .firsts
            .partition_point(|&first| first <= addr)
            .checked_sub(1)?;
        // The chunk's first slot starts at `firsts[chunk] <= addr`, so the count is at least 1.
        let slot = self.chunks[chunk].count_starting_by(addr) - 1;
        Some((chunk, slot))
    }

    /// The item whose range covers `[start, end)`. Allocates nothing (the cache's hit path).
    pub(crate) fn covering(&self, start: usize, end: usize) -> Option<&T> {
        let (chunk, slot) = self.locate(start)?;
        let slot = &self.chunks[chunk].slots[slot];
        (slot.end >= end).then_some(&slot.item)
    }

    /// The item whose range starts exactly at `start`.
    pub(crate) fn get(&self, start: usize) -> Option<&T> {
        let (chunk, slot) = self.locate(start)?;
        let slot = &self.chunks[chunk].slots[slot];
        (slot.start == start).then_some(&slot.item)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Slot<T>> {
        self.chunks.iter().flat_map(|chunk| chunk.slots.iter())
    }

    /// The slots overlapping or adjacent to `[start, end)`, in order.
    pub(crate) fn touching(&self, start: usize, end: usize) -> impl Iterator<Item = &Slot<T>> {
        // A slot starting before `start` may end exactly at it (adjacent), so begin at the last
        // slot starting strictly before `start`.
        let (first_chunk, first_slot) = self.locate(start.saturating_sub(1)).unwrap_or((0, 0));
        self.chunks[first_chunk..]
            .iter()
            .enumerate()
            .flat_map(move |(i, chunk)| chunk.slots[if i == 0 { first_slot } else { 0 }..].iter())
            .skip_while(move |slot| slot.end < start)
            .take_while(move |slot| slot.start <= end)
    }
}

impl<T: Clone> Index<T> {
    /// A new index without the slots starting at `remove` (each must exist) and with `insert`
    /// (which must not overlap what remains).
    pub(crate) fn edit(&self, remove: &[usize], insert: Option<Slot<T>>) -> Self {
        let mut remove = remove.to_vec();
        remove.sort_unstable();
        remove.dedup();
        let mut touched = vec![false; self.chunks.len()];
        for &start in &remove {
            debug_assert!(self.get(start).is_some(), "removing a missing slot");
            if let Some((chunk, _)) = self.locate(start) {
                touched[chunk] = true;
            }
        }
        let mut insert = insert;
        let insert_chunk = insert
            .as_ref()
            .map(|slot| self.locate(slot.start).map_or(0, |(chunk, _)| chunk));
        if let Some(chunk) = insert_chunk.filter(|&chunk| chunk < touched.len()) {
            touched[chunk] = true;
        }

        let mut pieces: Vec<Piece<T>> = Vec::with_capacity(self.chunks.len() + 2);
        for (i, chunk) in self.chunks.iter().enumerate() {
            if !touched[i] {
                pieces.push(Piece::shared(chunk));
                continue;
            }
            let mut slots: Vec<Slot<T>> = chunk
                .slots
                .iter()
                .filter(|slot| remove.binary_search(&slot.start).is_err())
                .cloned()
                .collect();
            if insert_chunk == Some(i) {
                if let Some(slot) = insert.take() {
                    let at = slots.partition_point(|other| other.start < slot.start);
                    slots.insert(at, slot);
                }
            }
            Piece::push_fresh(&mut pieces, slots);
        }
        if let Some(slot) = insert {
            Piece::push_fresh(&mut pieces, vec![slot]);
        }

        let chunks = Piece::coalesce(pieces);
        Self {
            firsts: chunks.iter().map(|chunk| chunk.slots[0].start).collect(),
            len: chunks.iter().map(|chunk| chunk.slots.len()).sum(),
            chunks,
        }
    }
}

/// A chunk of the index being built; `fresh` ones were rebuilt by this edit.
struct Piece<T> {
    chunk: Arc<Chunk<T>>,
    fresh: bool,
}

impl<T: Clone> Piece<T> {
    fn shared(chunk: &Arc<Chunk<T>>) -> Self {
        Self {
            chunk: Arc::clone(chunk),
            fresh: false,
        }
    }

    fn push_fresh(pieces: &mut Vec<Self>, mut slots: Vec<Slot<T>>) {
        if slots.len() > MAX_CHUNK {
            let upper = slots.split_off(slots.len() / 2);
            pieces.push(Self::fresh(slots));
            pieces.push(Self::fresh(upper));
        } else if !slots.is_empty() {
            pieces.push(Self::fresh(slots));
        }
    }

    fn fresh(slots: Vec<Slot<T>>) -> Self {
        Self {
            chunk: Arc::new(Chunk::new(slots)),
            fresh: true,
        }
    }

    fn is_small_fresh(&self) -> bool {
        self.fresh && self.chunk.slots.len() < MIN_CHUNK
    }

    /// Merges each small rebuilt chunk into a neighbour where the result stays within bounds, so
    /// removals cannot leave behind ever more tiny chunks; untouched chunks are kept shared.
    fn coalesce(pieces: Vec<Self>) -> Vec<Arc<Chunk<T>>> {
        let mut out: Vec<Self> = Vec::with_capacity(pieces.len());
        for piece in pieces {
            if let Some(last) = out.last_mut() {
                let small = last.is_small_fresh() || piece.is_small_fresh();
                let (last_slots, slots) = (&last.chunk.slots, &piece.chunk.slots);
                if small && last_slots.len() + slots.len() <= MAX_CHUNK {
                    let mut merged = Vec::with_capacity(last_slots.len() + slots.len());
                    merged.extend(last_slots.iter().cloned());
                    merged.extend(slots.iter().cloned());
                    *last = Self::fresh(merged);
                    continue;
                }
            }
            out.push(piece);
        }
        out.into_iter().map(|piece| piece.chunk).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    impl<T> Index<T> {
        fn check_invariants(&self) {
            assert_eq!(self.firsts.len(), self.chunks.len());
            for (first, chunk) in self.firsts.iter().zip(&self.chunks) {
                assert!(!chunk.slots.is_empty() && chunk.slots.len() <= MAX_CHUNK);
                assert_eq!(*first, chunk.slots[0].start);
                let keys = chunk.slots.iter().map(|slot| slot.start);
                let padding = std::iter::repeat(usize::MAX);
                let expected: Vec<usize> = keys.chain(padding).take(MAX_CHUNK).collect();
                assert_eq!(chunk.starts.as_flattened(), expected);
                let pivots: Vec<usize> = expected.iter().step_by(GROUP).copied().collect();
                assert_eq!(chunk.pivots.as_slice(), pivots);
            }
            let slots: Vec<_> = self.iter().collect();
            assert_eq!(slots.len(), self.len);
            for pair in slots.windows(2) {
                assert!(pair[0].start < pair[0].end && pair[0].end <= pair[1].start);
            }
        }
    }

    fn slot(start: usize, end: usize) -> Slot<usize> {
        Slot {
            start,
            end,
            item: start,
        }
    }

    #[test]
    fn lookups_on_a_small_index() {
        let index = Index::default()
            .edit(&[], Some(slot(10, 20)))
            .edit(&[], Some(slot(20, 30)))
            .edit(&[], Some(slot(40, 50)));
        assert_eq!(index.covering(12, 20), Some(&10));
        assert_eq!(index.covering(12, 21), None);
        assert_eq!(index.covering(30, 31), None);
        assert_eq!(index.covering(5, 6), None);
        assert_eq!(index.get(20), Some(&20));
        assert_eq!(index.get(21), None);
        let touching: Vec<_> = index.touching(30, 40).map(|s| s.start).collect();
        assert_eq!(touching, [20, 40]);
        let touching: Vec<_> = index.touching(31, 39).map(|s| s.start).collect();
        assert!(touching.is_empty());
        let index = index.edit(&[20], None);
        assert_eq!(index.len(), 2);
        index.check_invariants();
    }

    #[test]
    fn a_chunk_search_counts_the_starts_at_or_before_any_address() {
        for len in 1..=MAX_CHUNK {
            // Starts 10 apart, so each address is either a start or strictly between two.
            let chunk = Chunk::new((0..len).map(|i| slot(10 + 10 * i, 15 + 10 * i)).collect());
            for addr in (0..20 + 10 * len).chain([usize::MAX - 1, usize::MAX]) {
                let expected = chunk.slots.iter().filter(|slot| slot.start <= addr).count();
                assert_eq!(
                    chunk.count_starting_by(addr),
                    expected,
                    "len {len} addr {addr}"
                );
            }
        }
    }

    #[test]
    fn lookups_across_many_chunks_match_a_scan() {
        // Runs of adjacent regions of varying lengths separated by gaps, inserted in an order
        // that splits chunks in the middle as well as at the end.
        let mut regions = Vec::new();
        let mut addr = 1;
        for i in 0..20 * CHUNK {
            let len = 1 + i % 7;
            regions.push((addr, addr + len));
            addr += len + usize::from(i % 3 == 0) * (i % 5);
        }
        let mut index = Index::default();
        for &(start, end) in regions
            .iter()
            .step_by(2)
            .chain(regions.iter().skip(1).step_by(2))
        {
            index = index.edit(&[], Some(slot(start, end)));
        }
        index.check_invariants();
        assert!(index.chunks.len() > 10, "{} chunks", index.chunks.len());
        let covering = |start: usize, end: usize| {
            let found = regions.iter().find(|&&(s, e)| s <= start && end <= e);
            found.map(|&(s, _)| s)
        };
        for start in 0..addr + 2 {
            for end in start + 1..start + 4 {
                assert_eq!(index.covering(start, end).copied(), covering(start, end));
            }
            let starting_here = regions.iter().any(|&(s, _)| s == start);
            assert_eq!(index.get(start).is_some(), starting_here, "get({start})");
        }
        assert_eq!(index.covering(usize::MAX - 1, usize::MAX), None);
    }

    #[test]
    fn an_edit_shares_untouched_chunks() {
        let mut index = Index::default();
        for i in 0..10 * CHUNK {
            index = index.edit(&[], Some(slot(i * 10, i * 10 + 5)));
        }
        index.check_invariants();
        let edited = index.edit(&[0], None);
        let shared = edited
            .chunks
            .iter()
            .filter(|chunk| index.chunks.iter().any(|old| Arc::ptr_eq(old, chunk)))
            .count();
        assert!(
            shared + 2 >= edited.chunks.len(),
            "{shared} of {}",
            edited.chunks.len()
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(usize, usize),
        RemoveNth(usize),
        RemoveTouching(usize, usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..4000usize, 1..20usize).prop_map(|(s, l)| Op::Insert(s, s + l)),
            1 => any::<usize>().prop_map(Op::RemoveNth),
            1 => (0..4000usize, 0..200usize).prop_map(|(s, l)| Op::RemoveTouching(s, s + l)),
        ]
    }

    proptest! {
        #[test]
        fn matches_a_btreemap(
            ops in proptest::collection::vec(op(), 1..400),
            probes in proptest::collection::vec((0..4100usize, 1..30usize), 50),
        ) {
            let mut index = Index::default();
            let mut model: BTreeMap<usize, usize> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(start, end) => {
                        let overlapping: Vec<usize> = model.iter()
                            .filter(|(&s, &e)| s < end && e > start).map(|(&s, _)| s).collect();
                        for s in &overlapping { model.remove(s); }
                        model.insert(start, end);
                        index = index.edit(&overlapping, Some(slot(start, end)));
                    }
                    Op::RemoveNth(n) if !model.is_empty() => {
                        let start = *model.keys().nth(n % model.len()).unwrap();
                        model.remove(&start);
                        index = index.edit(&[start], None);
                    }
                    Op::RemoveNth(_) => {}
                    Op::RemoveTouching(start, end) => {
                        let touching: Vec<usize> =
                            index.touching(start, end).map(|s| s.start).collect();
                        let expected: Vec<usize> = model.iter()
                            .filter(|(&s, &e)| s <= end && e >= start).map(|(&s, _)| s).collect();
                        prop_assert_eq!(&touching, &expected);
                        for s in &touching { model.remove(s); }
                        index = index.edit(&touching, None);
                    }
                }
                index.check_invariants();
                prop_assert_eq!(index.len(), model.len());
            }
            for (start, len) in probes {
                let end = start + len;
                let expected = model.range(..=start).next_back()
                    .filter(|(_, &e)| e >= end).map(|(&s, _)| s);
                prop_assert_eq!(index.covering(start, end).copied(), expected);
            }
        }
    }
}
