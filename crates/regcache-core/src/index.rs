//! An immutable, sorted index of disjoint address ranges, each aligned to the index's grain.
//!
//! Two structures over the same spans, both shared between versions:
//! - the spans themselves, in chunks of about [`CHUNK`] behind `Arc`s, for the locked path (the
//!   spans touching a range, the span at a start, every span): a binary search over the chunks'
//!   first starts, then a search of one chunk that reads dense start keys rather than whole
//!   spans;
//! - the page map (`page_map.rs`), a radix tree from each grain-sized page to the span covering
//!   it, for hits: one dependent load per level, then the item.
//!
//! An edit builds a new index that shares every chunk it does not touch with the old one, so it
//! costs O(n / CHUNK + CHUNK) pointer copies instead of O(n), and copies the page map's nodes on
//! the paths of the spans it removes and inserts.

use std::num::NonZeroUsize;
use std::sync::Arc;

use crate::page_map::{ItemRef, PageMap};

const CHUNK: usize = 64;
const MAX_CHUNK: usize = 2 * CHUNK;
const MIN_CHUNK: usize = CHUNK / 4;
/// Starts per group: one 64-byte cache line of keys.
const GROUP: usize = 8;
const GROUPS: usize = MAX_CHUNK / GROUP;

/// One range `[start, end)` and what it maps to.
#[derive(Debug)]
pub(crate) struct Span<T> {
    pub(crate) start: usize,
    pub(crate) end: usize,
    /// Shared, so that the page map can point at the item itself.
    pub(crate) item: Arc<T>,
}

impl<T> Clone for Span<T> {
    fn clone(&self) -> Self {
        Self {
            start: self.start,
            end: self.end,
            item: Arc::clone(&self.item),
        }
    }
}

/// Up to [`MAX_CHUNK`] spans sorted by start, with their starts copied into two dense levels so
/// that a search reads the group pivots (two cache lines), one group of starts (one line) and
/// then the span it found: a binary search over the 24-byte spans reads about six lines, each
/// depending on the one before, which is what a hit over many regions waits for.
///
/// Aligned to a cache line so that each level fills whole lines; in an `Arc` this also keeps
/// the reference counts, which edits change, off the lines that searches read.
#[derive(Debug)]
#[repr(align(64))]
struct Chunk<T> {
    /// The first start of each group of `starts`; `usize::MAX` for groups past the last span.
    pivots: [usize; GROUPS],
    /// `starts[g][i]` is the start of `spans[g * GROUP + i]`; `usize::MAX` past the last span.
    starts: [[usize; GROUP]; GROUPS],
    /// Never empty.
    spans: Box<[Span<T>]>,
}

impl<T> Chunk<T> {
    fn new(spans: Vec<Span<T>>) -> Self {
        debug_assert!(!spans.is_empty() && spans.len() <= MAX_CHUNK);
        let mut starts = [[usize::MAX; GROUP]; GROUPS];
        for (key, span) in starts.as_flattened_mut().iter_mut().zip(&spans) {
            *key = span.start;
        }
        Self {
            pivots: starts.map(|group| group[0]),
            starts,
            spans: spans.into_boxed_slice(),
        }
    }

    /// How many spans start at or before `addr`.
    fn count_starting_by(&self, addr: usize) -> usize {
        let Some(group) = self
            .pivots
            .partition_point(|&pivot| pivot <= addr)
            .checked_sub(1)
        else {
            return 0;
        };
        let in_group = self.starts[group].partition_point(|&start| start <= addr);
        // The padding compares `<=` only `usize::MAX`, which no span can cover (it would be
        // empty) but a cookie from the invalidation source might name.
        (group * GROUP + in_group).min(self.spans.len())
    }
}

/// Disjoint ranges sorted by start (so also by end); adjacent ranges are allowed.
#[derive(Debug)]
pub(crate) struct Index<T> {
    /// `firsts[i]` is the start of `chunks[i]`'s first span.
    firsts: Vec<usize>,
    chunks: Vec<Arc<Chunk<T>>>,
    len: usize,
    /// Maps every page of every span in `chunks`, and nothing else, to it; points only at items
    /// that `chunks` holds.
    pages: PageMap<T>,
    /// log2 of the grain: every span starts and ends at a multiple of it.
    grain_shift: u32,
}

impl<T> Index<T> {
    /// An empty index of spans aligned to `grain`, a power of two.
    pub(crate) fn new(grain: usize) -> Self {
        assert!(grain.is_power_of_two(), "grain {grain}");
        Self {
            firsts: Vec::new(),
            chunks: Vec::new(),
            len: 0,
            pages: PageMap::default(),
            grain_shift: grain.trailing_zeros(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Position of the last span starting at or before `addr`.
    fn locate(&self, addr: usize) -> Option<(usize, usize)> {
        let chunk = self
            .firsts
            .partition_point(|&first| first <= addr)
            .checked_sub(1)?;
        // The chunk's first span starts at `firsts[chunk] <= addr`, so the count is at least 1.
        let span = self.chunks[chunk].count_starting_by(addr) - 1;
        Some((chunk, span))
    }

    /// The item whose range covers `[start, end)`. Allocates nothing (the cache's hit path):
    /// the page map's levels, then the item's reference count.
    pub(crate) fn covering(&self, start: usize, end: usize) -> Option<Arc<T>> {
        // The span covering the page of `start` starts at or before the page, as every span is
        // aligned to the grain.
        let (span_end, item) = self.pages.find(start >> self.grain_shift)?;
        if span_end < end {
            return None;
        }
        let item = item.as_ptr();
        prefetch(item);
        // SAFETY: the page map points only at items of `self.chunks`' spans, each held there
        // by an `Arc` (the invariant of `pages`), which `&self` keeps alive for this call; so
        // `item` is the pointer of a live `Arc<T>`, whose count this adds one to and hands out.
        unsafe {
            Arc::increment_strong_count(item);
            Some(Arc::from_raw(item))
        }
    }

    /// The item whose range starts exactly at `start`.
    pub(crate) fn get(&self, start: usize) -> Option<&Arc<T>> {
        let (chunk, span) = self.locate(start)?;
        let span = &self.chunks[chunk].spans[span];
        (span.start == start).then_some(&span.item)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Span<T>> {
        self.chunks.iter().flat_map(|chunk| chunk.spans.iter())
    }

    /// The spans overlapping or adjacent to `[start, end)`, in order.
    pub(crate) fn touching(&self, start: usize, end: usize) -> impl Iterator<Item = &Span<T>> {
        // A span starting before `start` may end exactly at it (adjacent), so begin at the last
        // span starting strictly before `start`.
        let (first_chunk, first_span) = self.locate(start.saturating_sub(1)).unwrap_or((0, 0));
        self.chunks[first_chunk..]
            .iter()
            .enumerate()
            .flat_map(move |(i, chunk)| chunk.spans[if i == 0 { first_span } else { 0 }..].iter())
            .skip_while(move |span| span.end < start)
            .take_while(move |span| span.start <= end)
    }
}

/// Starts loading the lines of `item`'s `Arc` allocation (its counts, which `std` places just
/// before the value, and the value's first and last byte), so that they arrive together: the
/// atomic increment of the count that follows waits for its own line, and no later load may
/// pass it, so without this the item's other line would be asked for only after the first one
/// came in, two memory latencies in a row on a hit over many regions.
#[inline(always)]
fn prefetch<T>(item: *const T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let bytes = item.cast::<i8>();
        for line in [
            bytes.wrapping_sub(2 * size_of::<usize>()),
            bytes,
            bytes.wrapping_add(size_of::<T>().saturating_sub(1)),
        ] {
            // SAFETY: a prefetch is a hint: it reads nothing and faults on no address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line) };
        }
    }
}

impl<T> Index<T> {
    /// A new index without the spans starting at `remove` (each must exist) and with `insert`
    /// (which must not overlap what remains).
    ///
    /// # Panics
    /// When `insert` is not aligned to the grain.
    pub(crate) fn edit(&self, remove: &[usize], insert: Option<Span<T>>) -> Self {
        let mut remove = remove.to_vec();
        remove.sort_unstable();
        remove.dedup();
        let mut touched = vec![false; self.chunks.len()];
        for &start in &remove {
            debug_assert!(self.get(start).is_some(), "removing a missing span");
            if let Some((chunk, _)) = self.locate(start) {
                touched[chunk] = true;
            }
        }
        let mut insert = insert;
        if let Some(span) = &insert {
            let grain_mask = (1 << self.grain_shift) - 1;
            assert!(
                span.start & grain_mask == 0 && span.end & grain_mask == 0 && span.start < span.end,
                "span {:#x}..{:#x} is not aligned to the grain or empty",
                span.start,
                span.end
            );
        }
        let inserted = insert.clone();
        let insert_chunk = insert
            .as_ref()
            .map(|span| self.locate(span.start).map_or(0, |(chunk, _)| chunk));
        if let Some(chunk) = insert_chunk.filter(|&chunk| chunk < touched.len()) {
            touched[chunk] = true;
        }

        let mut pages = self.pages.clone();
        let mut pieces: Vec<Piece<T>> = Vec::with_capacity(self.chunks.len() + 2);
        for (i, chunk) in self.chunks.iter().enumerate() {
            if !touched[i] {
                pieces.push(Piece::shared(chunk));
                continue;
            }
            // Room for the insert too; removed spans are only unmapped, never cloned.
            let mut spans = Vec::with_capacity(chunk.spans.len() + 1);
            for span in chunk.spans.iter() {
                if remove.binary_search(&span.start).is_ok() {
                    let (first, last) = self.pages_of(span);
                    pages.clear(first, last);
                } else {
                    spans.push(span.clone());
                }
            }
            if insert_chunk == Some(i) {
                if let Some(span) = insert.take() {
                    let at = spans.partition_point(|other| other.start < span.start);
                    spans.insert(at, span);
                }
            }
            Piece::push_fresh(&mut pieces, spans);
        }
        if let Some(span) = insert {
            Piece::push_fresh(&mut pieces, vec![span]);
        }

        if let Some(span) = inserted {
            let (first, last) = self.pages_of(&span);
            // `span.end > span.start`, asserted above.
            let end = NonZeroUsize::new(span.end).expect("a span ends after its start");
            pages.set(first, last, end, ItemRef::new(&span.item));
        }

        let chunks = Piece::coalesce(pieces);
        Self {
            firsts: chunks.iter().map(|chunk| chunk.spans[0].start).collect(),
            len: chunks.iter().map(|chunk| chunk.spans.len()).sum(),
            chunks,
            pages,
            grain_shift: self.grain_shift,
        }
    }

    /// The first and last page of `span`.
    fn pages_of(&self, span: &Span<T>) -> (usize, usize) {
        (
            span.start >> self.grain_shift,
            (span.end >> self.grain_shift) - 1,
        )
    }
}

/// A chunk of the index being built; `fresh` ones were rebuilt by this edit.
struct Piece<T> {
    chunk: Arc<Chunk<T>>,
    fresh: bool,
}

impl<T> Piece<T> {
    fn shared(chunk: &Arc<Chunk<T>>) -> Self {
        Self {
            chunk: Arc::clone(chunk),
            fresh: false,
        }
    }

    fn push_fresh(pieces: &mut Vec<Self>, mut spans: Vec<Span<T>>) {
        if spans.len() > MAX_CHUNK {
            let upper = spans.split_off(spans.len() / 2);
            pieces.push(Self::fresh(spans));
            pieces.push(Self::fresh(upper));
        } else if !spans.is_empty() {
            pieces.push(Self::fresh(spans));
        }
    }

    fn fresh(spans: Vec<Span<T>>) -> Self {
        Self {
            chunk: Arc::new(Chunk::new(spans)),
            fresh: true,
        }
    }

    fn is_small_fresh(&self) -> bool {
        self.fresh && self.chunk.spans.len() < MIN_CHUNK
    }

    /// Merges each small rebuilt chunk into a neighbour where the result stays within bounds, so
    /// removals cannot leave behind ever more tiny chunks; untouched chunks are kept shared.
    fn coalesce(pieces: Vec<Self>) -> Vec<Arc<Chunk<T>>> {
        let mut out: Vec<Self> = Vec::with_capacity(pieces.len());
        for piece in pieces {
            if let Some(last) = out.last_mut() {
                let small = last.is_small_fresh() || piece.is_small_fresh();
                let (last_spans, spans) = (&last.chunk.spans, &piece.chunk.spans);
                if small && last_spans.len() + spans.len() <= MAX_CHUNK {
                    let mut merged = Vec::with_capacity(last_spans.len() + spans.len());
                    merged.extend(last_spans.iter().cloned());
                    merged.extend(spans.iter().cloned());
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
                assert!(!chunk.spans.is_empty() && chunk.spans.len() <= MAX_CHUNK);
                assert_eq!(*first, chunk.spans[0].start);
                let keys = chunk.spans.iter().map(|span| span.start);
                let padding = std::iter::repeat(usize::MAX);
                let expected: Vec<usize> = keys.chain(padding).take(MAX_CHUNK).collect();
                assert_eq!(chunk.starts.as_flattened(), expected);
                let pivots: Vec<usize> = expected.iter().step_by(GROUP).copied().collect();
                assert_eq!(chunk.pivots.as_slice(), pivots);
            }
            let spans: Vec<_> = self.iter().collect();
            assert_eq!(spans.len(), self.len);
            for pair in spans.windows(2) {
                assert!(pair[0].start < pair[0].end && pair[0].end <= pair[1].start);
            }
            // The page map covers exactly the spans' pages, each slot with its span's end and
            // item (so only items the chunks hold).
            let mut mapped_pages = 0;
            self.pages
                .for_each_slot(&mut |first, last, end, item: *const T| {
                    let at = spans.partition_point(|span| span.start >> self.grain_shift <= first);
                    let span = spans[at.checked_sub(1).expect("a slot before every span")];
                    let (span_first, span_last) = self.pages_of(span);
                    assert!(
                        span_first <= first && last <= span_last,
                        "slot {first}..={last}"
                    );
                    assert_eq!((end, item), (span.end, Arc::as_ptr(&span.item)));
                    mapped_pages += last - first + 1;
                });
            let span_pages: usize = spans
                .iter()
                .map(|span| (span.end - span.start) >> self.grain_shift)
                .sum();
            assert_eq!(mapped_pages, span_pages);
            assert_eq!(self.pages.is_empty(), spans.is_empty());
        }
    }

    fn span(start: usize, end: usize) -> Span<usize> {
        Span {
            start,
            end,
            item: Arc::new(start),
        }
    }

    #[test]
    fn lookups_on_a_small_index() {
        let index = Index::new(1)
            .edit(&[], Some(span(10, 20)))
            .edit(&[], Some(span(20, 30)))
            .edit(&[], Some(span(40, 50)));
        assert_eq!(index.covering(12, 20).as_deref(), Some(&10));
        assert_eq!(index.covering(12, 21), None);
        assert_eq!(index.covering(30, 31), None);
        assert_eq!(index.covering(5, 6), None);
        assert_eq!(index.get(20).map(|item| **item), Some(20));
        assert!(index.get(21).is_none());
        let touching: Vec<_> = index.touching(30, 40).map(|s| s.start).collect();
        assert_eq!(touching, [20, 40]);
        let touching: Vec<_> = index.touching(31, 39).map(|s| s.start).collect();
        assert!(touching.is_empty());
        let index = index.edit(&[20], None);
        assert_eq!(index.len(), 2);
        index.check_invariants();
        let index = index.edit(&[10, 40], None);
        index.check_invariants();
        assert!(index.pages.is_empty(), "{:?}", index.pages);
    }

    #[test]
    fn a_page_grained_index_finds_any_range_inside_a_span() {
        const GRAIN: usize = 4096;
        let index = Index::new(GRAIN)
            .edit(&[], Some(span(GRAIN, 3 * GRAIN)))
            .edit(&[], Some(span(3 * GRAIN, 4 * GRAIN)));
        index.check_invariants();
        assert_eq!(index.covering(GRAIN, 3 * GRAIN).as_deref(), Some(&GRAIN));
        assert_eq!(
            index.covering(3 * GRAIN - 1, 3 * GRAIN).as_deref(),
            Some(&GRAIN)
        );
        assert_eq!(index.covering(3 * GRAIN - 1, 3 * GRAIN + 1), None);
        assert_eq!(
            index.covering(4 * GRAIN - 1, 4 * GRAIN).as_deref(),
            Some(&(3 * GRAIN))
        );
        assert_eq!(index.covering(GRAIN - 1, GRAIN + 1), None);
        assert_eq!(index.covering(4 * GRAIN, 4 * GRAIN + 1), None);
    }

    #[test]
    #[should_panic(expected = "not aligned")]
    fn a_span_off_the_grain_is_refused() {
        let _ = Index::new(4096).edit(&[], Some(span(4096, 4097)));
    }

    #[test]
    fn a_chunk_search_counts_the_starts_at_or_before_any_address() {
        for len in 1..=MAX_CHUNK {
            // Starts 10 apart, so each address is either a start or strictly between two.
            let chunk = Chunk::new((0..len).map(|i| span(10 + 10 * i, 15 + 10 * i)).collect());
            for addr in (0..20 + 10 * len).chain([usize::MAX - 1, usize::MAX]) {
                let expected = chunk.spans.iter().filter(|span| span.start <= addr).count();
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
        let mut index = Index::new(1);
        for &(start, end) in regions
            .iter()
            .step_by(2)
            .chain(regions.iter().skip(1).step_by(2))
        {
            index = index.edit(&[], Some(span(start, end)));
        }
        index.check_invariants();
        assert!(index.chunks.len() > 10, "{} chunks", index.chunks.len());
        let covering = |start: usize, end: usize| {
            let found = regions.iter().find(|&&(s, e)| s <= start && end <= e);
            found.map(|&(s, _)| s)
        };
        for start in 0..addr + 2 {
            for end in start + 1..start + 4 {
                assert_eq!(
                    index.covering(start, end).map(|item| *item),
                    covering(start, end)
                );
            }
            let starting_here = regions.iter().any(|&(s, _)| s == start);
            assert_eq!(index.get(start).is_some(), starting_here, "get({start})");
        }
        assert_eq!(index.covering(usize::MAX - 1, usize::MAX), None);
    }

    #[test]
    fn an_edit_shares_untouched_chunks() {
        let mut index = Index::new(1);
        for i in 0..10 * CHUNK {
            index = index.edit(&[], Some(span(i * 10, i * 10 + 5)));
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
            let mut index = Index::new(1);
            let mut model: BTreeMap<usize, usize> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(start, end) => {
                        let overlapping: Vec<usize> = model.iter()
                            .filter(|(&s, &e)| s < end && e > start).map(|(&s, _)| s).collect();
                        for s in &overlapping { model.remove(s); }
                        model.insert(start, end);
                        index = index.edit(&overlapping, Some(span(start, end)));
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
                prop_assert_eq!(index.covering(start, end).map(|item| *item), expected);
            }
        }
    }
}
