//! The page map: which span covers each page, so that a hit finds its item in one dependent load
//! per level and never searches.
//!
//! A radix tree over page numbers (an address shifted right by the index's grain), 64 slots per
//! node, like UCX's `ucs_pgtable`: the root covers only the bits in which the mapped pages
//! differ (its `shift` and `base`), so the depth follows the spread of the addresses (3 levels
//! for 100,000 regions spread over 800 MB, at most 9 for pages anywhere in 64 bits). A slot is
//! empty, a child node, or a span that covers every page of the slot: a span spread over whole
//! aligned blocks of pages fills the block's slot high in the tree instead of every page's, as
//! `ucs_pgtable` does, so a large registration costs a few slots per level, not one per page.
//!
//! A slot of a span holds its end (the hit's range check) and a pointer to its item, so a hit
//! reads, after the levels, the item itself and nothing in between. The pointers borrow: the
//! index that owns a page map holds an `Arc` of every item the map points to (checked by the
//! index's invariant test), and hands out only clones of those.
//!
//! Nodes are shared between index versions like the index's chunks: an edit copies the nodes on
//! the paths it changes (`Arc::make_mut`, so each at most once per edit) and shares the rest.

use std::fmt;
use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::Arc;

/// Bits of a page number each level resolves.
const BITS: u32 = 6;
const FANOUT: usize = 1 << BITS;
const MASK: usize = FANOUT - 1;

/// A shared reference to an item that the index owning the map holds an `Arc` of.
pub(crate) struct ItemRef<T>(NonNull<T>);

impl<T> Clone for ItemRef<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for ItemRef<T> {}

impl<T> ItemRef<T> {
    pub(crate) fn new(item: &Arc<T>) -> Self {
        Self(NonNull::from(&**item))
    }

    pub(crate) fn as_ptr(self) -> *const T {
        self.0.as_ptr()
    }
}

// SAFETY: an `ItemRef` stands for a `&T` borrowed from an `Arc<T>` its index holds; sending or
// sharing it lets another thread read the item as sending an `Arc<T>` would, which needs the
// same bounds.
unsafe impl<T: Send + Sync> Send for ItemRef<T> {}
// SAFETY: as for `Send`.
unsafe impl<T: Send + Sync> Sync for ItemRef<T> {}

/// 16 bytes: the span's `end` is never 0, which is where the layout keeps the variant.
enum Slot<T> {
    /// A node covering the slot's pages at the next level, or nothing mapped (`None`).
    Node(Option<Arc<Node<T>>>),
    /// One span covers every page of the slot; it ends (exclusive, an address) at `end`.
    Span { end: NonZeroUsize, item: ItemRef<T> },
}

impl<T> Clone for Slot<T> {
    fn clone(&self) -> Self {
        match self {
            Self::Node(node) => Self::Node(node.clone()),
            Self::Span { end, item } => Self::Span {
                end: *end,
                item: *item,
            },
        }
    }
}

impl<T> Slot<T> {
    const EMPTY: Self = Self::Node(None);

    fn is_empty(&self) -> bool {
        matches!(self, Self::Node(None))
    }
}

/// 16-byte aligned, so that a slot never straddles two cache lines; the padding keeps the
/// `Arc`'s counts (the 16 bytes before the node), which edits change, on a line of their own,
/// apart from the slots that hits read. Not aligned to a line: an allocation aligned beyond 16
/// bytes goes through glibc's `posix_memalign`, which took a miss with eviction more
/// instructions than copying the node (benches/RESULTS.md).
#[repr(C, align(16))]
struct Node<T> {
    counts_line: [u8; COUNTS_LINE_PADDING],
    slots: [Slot<T>; FANOUT],
}

/// A cache line less the `Arc`'s two counts.
const COUNTS_LINE_PADDING: usize = 64 - 2 * size_of::<usize>();

impl<T> Clone for Node<T> {
    fn clone(&self) -> Self {
        Self {
            counts_line: [0; COUNTS_LINE_PADDING],
            slots: self.slots.clone(),
        }
    }
}

impl<T> Node<T> {
    fn filled(slot: &Slot<T>) -> Self {
        Self {
            counts_line: [0; COUNTS_LINE_PADDING],
            slots: std::array::from_fn(|_| slot.clone()),
        }
    }
}

/// Page numbers to the spans covering them.
pub(crate) struct PageMap<T> {
    root: Option<Arc<Node<T>>>,
    /// The root's slot `i` covers the pages whose number has `i` in bits `shift..shift + BITS`
    /// and `base` above them; a multiple of `BITS`.
    shift: u32,
    base: usize,
}

impl<T> Clone for PageMap<T> {
    fn clone(&self) -> Self {
        Self {
            root: self.root.clone(),
            shift: self.shift,
            base: self.base,
        }
    }
}

impl<T> Default for PageMap<T> {
    fn default() -> Self {
        Self {
            root: None,
            shift: 0,
            base: 0,
        }
    }
}

impl<T> fmt::Debug for PageMap<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageMap")
            .field("levels", &self.root.as_ref().map(|_| self.shift / BITS + 1))
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl<T> PageMap<T> {
    /// The bits of `page` above the root's.
    fn above_root(&self, page: usize) -> usize {
        page.checked_shr(self.shift + BITS).unwrap_or(0)
    }

    /// The end and the item of the span covering `page`. Allocates nothing (the hit path).
    #[inline]
    pub(crate) fn find(&self, page: usize) -> Option<(usize, ItemRef<T>)> {
        let mut node = self.root.as_deref()?;
        if self.above_root(page) != self.base {
            return None;
        }
        let mut shift = self.shift;
        loop {
            match &node.slots[(page >> shift) & MASK] {
                Slot::Node(Some(child)) => {
                    node = child;
                    // A node at shift 0 holds no nodes (`assign_in` never makes one there).
                    shift -= BITS;
                }
                Slot::Node(None) => return None,
                Slot::Span { end, item } => return Some((end.get(), *item)),
            }
        }
    }

    /// Maps the pages `first..=last` to `item`, a span that ends at `end`.
    pub(crate) fn set(&mut self, first: usize, last: usize, end: NonZeroUsize, item: ItemRef<T>) {
        self.cover(first, last);
        self.assign(first, last, &Slot::Span { end, item });
    }

    /// Unmaps the pages `first..=last`, dropping nodes left empty.
    pub(crate) fn clear(&mut self, first: usize, last: usize) {
        if self.root.is_none() {
            return;
        }
        let (first, last) = (first.max(self.first_page()), last.min(self.last_page()));
        if first <= last {
            self.assign(first, last, &Slot::EMPTY);
        }
    }

    fn first_page(&self) -> usize {
        self.base.checked_shl(self.shift + BITS).unwrap_or(0)
    }

    fn last_page(&self) -> usize {
        let below = 1usize
            .checked_shl(self.shift + BITS)
            .map_or(usize::MAX, |pages| pages - 1);
        self.first_page() | below
    }

    /// Grows the tree upwards until its root covers `first..=last`.
    fn cover(&mut self, first: usize, last: usize) {
        if self.root.is_none() {
            self.shift = 0;
            self.base = first >> BITS;
            self.root = Some(Arc::new(Node::filled(&Slot::EMPTY)));
        }
        while self.above_root(first) != self.base || self.above_root(last) != self.base {
            let mut root = Node::filled(&Slot::EMPTY);
            root.slots[self.base & MASK] = Slot::Node(self.root.take());
            self.root = Some(Arc::new(root));
            self.shift += BITS;
            self.base = self.base.checked_shr(BITS).unwrap_or(0);
        }
    }

    /// Sets `first..=last`, which the root covers, to `value`.
    fn assign(&mut self, first: usize, last: usize, value: &Slot<T>) {
        let (shift, node_first) = (self.shift, self.first_page());
        if let Some(root) = &mut self.root {
            assign_in(root, shift, node_first, first, last, value);
        }
        if self
            .root
            .as_ref()
            .is_some_and(|root| root.slots.iter().all(Slot::is_empty))
        {
            self.root = None;
        }
    }
}

/// Sets the pages `first..=last` of `node` (whose slots cover `1 << shift` pages each, from
/// `node_first` on) to `value`: whole slots directly, partly covered ones in their children.
fn assign_in<T>(
    node: &mut Arc<Node<T>>,
    shift: u32,
    node_first: usize,
    first: usize,
    last: usize,
    value: &Slot<T>,
) {
    let node = Arc::make_mut(node);
    let slot_pages = 1usize << shift;
    let (low, high) = ((first - node_first) >> shift, (last - node_first) >> shift);
    for (i, slot) in node.slots.iter_mut().enumerate().take(high + 1).skip(low) {
        let slot_first = node_first + (i << shift);
        let slot_last = slot_first + (slot_pages - 1);
        if first <= slot_first && slot_last <= last {
            *slot = value.clone();
            continue;
        }
        // Partly covered, so `shift > 0`: go one level down, splitting a span's slot into a
        // node whose slots all hold the span.
        let mut child = match std::mem::replace(slot, Slot::EMPTY) {
            Slot::Node(Some(child)) => child,
            Slot::Node(None) if value.is_empty() => continue,
            other => Arc::new(Node::filled(&other)),
        };
        assign_in(
            &mut child,
            shift - BITS,
            slot_first,
            first.max(slot_first),
            last.min(slot_last),
            value,
        );
        if !child.slots.iter().all(Slot::is_empty) {
            *slot = Slot::Node(Some(child));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    impl<T> PageMap<T> {
        /// Calls `visit(first, last, end, item)` for every span slot, in page order.
        pub(crate) fn for_each_slot(&self, visit: &mut impl FnMut(usize, usize, usize, *const T)) {
            fn walk<T>(
                node: &Node<T>,
                shift: u32,
                node_first: usize,
                visit: &mut impl FnMut(usize, usize, usize, *const T),
            ) {
                for (i, slot) in node.slots.iter().enumerate() {
                    let slot_first = node_first + (i << shift);
                    match slot {
                        Slot::Node(None) => {}
                        Slot::Node(Some(child)) => {
                            assert!(shift > 0, "a node below the leaves");
                            assert!(
                                !child.slots.iter().all(Slot::is_empty),
                                "an empty node is kept"
                            );
                            walk(child, shift - BITS, slot_first, visit);
                        }
                        Slot::Span { end, item } => visit(
                            slot_first,
                            slot_first + ((1usize << shift) - 1),
                            end.get(),
                            item.as_ptr(),
                        ),
                    }
                }
            }
            if let Some(root) = &self.root {
                assert_eq!(self.shift % BITS, 0);
                walk(root, self.shift, self.first_page(), visit);
            }
        }

        pub(crate) fn is_empty(&self) -> bool {
            self.root.is_none()
        }
    }

    #[test]
    fn a_slot_is_two_words_and_the_counts_have_a_line_of_their_own() {
        assert_eq!(size_of::<Slot<u64>>(), 16);
        assert_eq!(size_of::<Node<u64>>(), 64 - 16 + 16 * FANOUT);
        // The slots start a line after the `Arc`'s counts, so never on their line.
        let node = Arc::new(Node::<u64>::filled(&Slot::EMPTY));
        let counts = Arc::as_ptr(&node).addr() - 2 * size_of::<usize>();
        let slots = std::ptr::from_ref(&node.slots).addr();
        assert_eq!(slots - counts, 64);
        assert_eq!(slots % 16, 0);
    }

    #[test]
    fn large_spans_take_block_slots_and_split_when_cleared_in_part() {
        let item = Arc::new(7_u64);
        let end = NonZeroUsize::new(1).unwrap();
        let mut map = PageMap::default();
        // 64 * 64 * 3 pages from a block boundary, plus a few on either side.
        let (first, last) = (64 * 64 - 5, 4 * 64 * 64 + 4);
        map.set(first, last, end, ItemRef::new(&item));
        let mut slots = 0;
        map.for_each_slot(&mut |_, _, _, _| slots += 1);
        assert!(slots < 30, "{slots} slots for {} pages", last - first + 1);
        map.clear(2 * 64 * 64 + 10, 2 * 64 * 64 + 10);
        for page in [first - 1, last + 1, 2 * 64 * 64 + 10] {
            assert!(map.find(page).is_none(), "page {page}");
        }
        for page in [first, last, 2 * 64 * 64 + 9, 2 * 64 * 64 + 11, 3 * 64 * 64] {
            assert_eq!(
                map.find(page).map(|(_, item)| item.as_ptr()),
                Some(&*item as *const u64)
            );
        }
        map.clear(0, usize::MAX);
        assert!(map.is_empty());
    }

    #[test]
    fn pages_at_both_ends_of_the_address_space() {
        let item = Arc::new(1_u64);
        let end = NonZeroUsize::new(1).unwrap();
        let mut map = PageMap::default();
        map.set(usize::MAX - 2, usize::MAX, end, ItemRef::new(&item));
        map.set(0, 1, end, ItemRef::new(&item));
        for page in [0, 1, usize::MAX - 2, usize::MAX] {
            assert!(map.find(page).is_some(), "page {page}");
        }
        for page in [2, usize::MAX - 3, 1 << 40] {
            assert!(map.find(page).is_none(), "page {page}");
        }
        map.clear(usize::MAX - 2, usize::MAX);
        map.clear(0, 1);
        assert!(map.is_empty());
    }
}
