//! MPI matching: posted receives against arrived messages, both kept in order.
//!
//! Pure bookkeeping, independent of the transport: the communicator feeds it messages in the
//! order they arrive from each peer (RC delivers in order per queue pair) and receives in the
//! order they are posted. A message goes to the oldest matching posted receive; a receive takes
//! the oldest matching unexpected message. Together this is MPI's no-overtaking rule.

use std::collections::VecDeque;

/// Which sender a receive accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// Any rank (`MPI_ANY_SOURCE`).
    Any,
    /// Only this rank.
    Rank(usize),
}

/// Which tags a receive accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TagMatch {
    /// Any tag (`MPI_ANY_TAG`).
    Any,
    /// Only this tag.
    Tag(u32),
}

/// Receive from any rank.
pub const ANY_SOURCE: Source = Source::Any;
/// Receive with any tag.
pub const ANY_TAG: TagMatch = TagMatch::Any;

impl From<usize> for Source {
    fn from(rank: usize) -> Self {
        Self::Rank(rank)
    }
}

impl From<u32> for TagMatch {
    fn from(tag: u32) -> Self {
        Self::Tag(tag)
    }
}

/// What a completed receive got: who sent it, with which tag, and how many bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// Rank of the sender.
    pub source: usize,
    /// Tag the message was sent with.
    pub tag: u32,
    /// Length of the message in bytes.
    pub len: usize,
}

impl Status {
    pub(crate) fn matches(&self, source: Source, tag: TagMatch) -> bool {
        let source_ok = match source {
            Source::Any => true,
            Source::Rank(rank) => rank == self.source,
        };
        let tag_ok = match tag {
            TagMatch::Any => true,
            TagMatch::Tag(wanted) => wanted == self.tag,
        };
        source_ok && tag_ok
    }
}

#[derive(Debug)]
struct PostedReceive<K> {
    key: K,
    source: Source,
    tag: TagMatch,
}

/// The posted-receive queue and the unexpected-message queue of one rank.
///
/// `K` identifies a posted receive, `M` is what the transport keeps of an arrived message
/// (its payload or where to fetch it).
#[derive(Debug)]
pub(crate) struct Matcher<K, M> {
    posted: VecDeque<PostedReceive<K>>,
    unexpected: VecDeque<(Status, M)>,
}

impl<K: PartialEq, M> Default for Matcher<K, M> {
    fn default() -> Self {
        Self {
            posted: VecDeque::new(),
            unexpected: VecDeque::new(),
        }
    }
}

impl<K: PartialEq, M> Matcher<K, M> {
    /// Posts receive `key`: returns the oldest unexpected message it matches (removed from the
    /// queue), or queues the receive behind the ones posted before it.
    pub(crate) fn post(&mut self, key: K, source: Source, tag: TagMatch) -> Option<(Status, M)> {
        let found = self
            .unexpected
            .iter()
            .position(|(status, _)| status.matches(source, tag));
        if let Some(index) = found {
            return self.unexpected.remove(index);
        }
        self.posted.push_back(PostedReceive { key, source, tag });
        None
    }

    /// Whether a receive for `source` and `tag` posted now would wait alone: no receive is
    /// posted before it (so every message that arrives while it waits and matches it is
    /// its own, in arrival order) and no unexpected message matches it (it would take that
    /// one at once). Such a receive may be kept out of the matcher by a caller that then
    /// sees every arriving message first ([`Matcher::arrive`] would hand it the first one
    /// that matches).
    pub(crate) fn would_wait_alone(&self, source: Source, tag: TagMatch) -> bool {
        self.posted.is_empty()
            && !self
                .unexpected
                .iter()
                .any(|(status, _)| status.matches(source, tag))
    }

    /// A message arrived: returns the oldest posted receive it matches (removed from the queue)
    /// together with the message, or keeps the message as unexpected.
    pub(crate) fn arrive(&mut self, status: Status, message: M) -> Option<(K, Status, M)> {
        if let Some(key) = self.claim(&status) {
            return Some((key, status, message));
        }
        self.unexpected.push_back((status, message));
        None
    }

    /// A message arrived that the caller delivers itself if a receive takes it: removes and
    /// returns the oldest posted receive it matches. With `None` the caller must hand the
    /// message to [`Matcher::arrive`] before any other message from the same source.
    pub(crate) fn claim(&mut self, status: &Status) -> Option<K> {
        let found = self
            .posted
            .iter()
            .position(|posted| status.matches(posted.source, posted.tag))?;
        self.posted.remove(found).map(|receive| receive.key)
    }

    /// Withdraws posted receive `key`; returns whether it was still waiting for a message.
    pub(crate) fn cancel(&mut self, key: &K) -> bool {
        let before = self.posted.len();
        self.posted.retain(|posted| posted.key != *key);
        self.posted.len() != before
    }

    /// Withdraws every posted receive that only `rank` could satisfy; returns their keys.
    pub(crate) fn cancel_from(&mut self, rank: usize) -> Vec<K> {
        let (lost, kept) = std::mem::take(&mut self.posted)
            .into_iter()
            .partition(|posted| posted.source == Source::Rank(rank));
        self.posted = kept;
        lost.into_iter()
            .map(|posted: PostedReceive<K>| posted.key)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(source: usize, tag: u32) -> Status {
        Status {
            source,
            tag,
            len: 0,
        }
    }

    #[test]
    fn a_receive_takes_the_oldest_matching_unexpected_message() {
        let mut matcher: Matcher<u32, &str> = Matcher::default();
        assert!(matcher.arrive(status(1, 5), "first").is_none());
        assert!(matcher.arrive(status(1, 6), "other tag").is_none());
        assert!(matcher.arrive(status(1, 5), "second").is_none());
        assert_eq!(
            matcher
                .post(0, Source::Rank(1), TagMatch::Tag(5))
                .unwrap()
                .1,
            "first"
        );
        assert_eq!(
            matcher
                .post(1, Source::Rank(1), TagMatch::Tag(5))
                .unwrap()
                .1,
            "second"
        );
        assert_eq!(matcher.post(2, ANY_SOURCE, ANY_TAG).unwrap().1, "other tag");
    }

    #[test]
    fn a_message_goes_to_the_oldest_matching_posted_receive() {
        let mut matcher: Matcher<u32, ()> = Matcher::default();
        assert!(matcher
            .post(10, Source::Rank(2), TagMatch::Tag(1))
            .is_none());
        assert!(matcher.post(11, ANY_SOURCE, ANY_TAG).is_none());
        assert!(matcher.post(12, Source::Rank(2), ANY_TAG).is_none());
        // Tag 9 from rank 2 skips receive 10 (wrong tag) and lands in 11, the older wildcard.
        assert_eq!(matcher.arrive(status(2, 9), ()).unwrap().0, 11);
        assert_eq!(matcher.arrive(status(2, 9), ()).unwrap().0, 12);
        assert_eq!(matcher.arrive(status(2, 1), ()).unwrap().0, 10);
        assert!(matcher.arrive(status(2, 1), ()).is_none());
    }

    #[test]
    fn a_claim_takes_the_posted_receive_and_queues_nothing() {
        let mut matcher: Matcher<u32, &str> = Matcher::default();
        assert!(matcher
            .post(10, Source::Rank(2), TagMatch::Tag(1))
            .is_none());
        assert!(matcher.post(11, ANY_SOURCE, ANY_TAG).is_none());
        assert_eq!(matcher.claim(&status(2, 9)), Some(11));
        assert_eq!(matcher.claim(&status(2, 9)), None);
        assert!(
            matcher.post(12, ANY_SOURCE, ANY_TAG).is_none(),
            "a failed claim keeps no message"
        );
        assert_eq!(matcher.claim(&status(2, 1)), Some(10));
    }

    #[test]
    fn wildcards_match_per_field() {
        let mut matcher: Matcher<u32, ()> = Matcher::default();
        assert!(matcher.post(0, ANY_SOURCE, TagMatch::Tag(3)).is_none());
        assert!(matcher.post(1, Source::Rank(4), ANY_TAG).is_none());
        assert!(
            matcher.arrive(status(7, 4), ()).is_none(),
            "neither source nor tag match"
        );
        assert_eq!(matcher.arrive(status(4, 3), ()).unwrap().0, 0);
        assert_eq!(matcher.arrive(status(4, 8), ()).unwrap().0, 1);
        assert_eq!(
            matcher.post(2, ANY_SOURCE, ANY_TAG).unwrap().0,
            status(7, 4)
        );
    }

    #[test]
    fn no_overtaking_between_a_pair_even_with_other_senders_interleaved() {
        let mut matcher: Matcher<u32, u32> = Matcher::default();
        for seq in 0..4 {
            assert!(matcher.arrive(status(1, 0), seq).is_none());
            assert!(matcher.arrive(status(2, 0), 100 + seq).is_none());
        }
        let from_one: Vec<u32> = (0..4)
            .map(|key| matcher.post(key, Source::Rank(1), ANY_TAG).unwrap().1)
            .collect();
        assert_eq!(from_one, [0, 1, 2, 3]);
        let rest: Vec<u32> = (0..4)
            .map(|key| matcher.post(key, ANY_SOURCE, TagMatch::Tag(0)).unwrap().1)
            .collect();
        assert_eq!(rest, [100, 101, 102, 103]);
    }

    #[test]
    fn a_receive_waits_alone_only_behind_no_posted_receive_and_no_matching_message() {
        let mut matcher: Matcher<u32, ()> = Matcher::default();
        assert!(matcher.would_wait_alone(ANY_SOURCE, ANY_TAG));
        assert!(matcher.arrive(status(1, 5), ()).is_none());
        assert!(
            matcher.would_wait_alone(Source::Rank(1), TagMatch::Tag(6)),
            "an unexpected message of another tag is not taken"
        );
        assert!(matcher.would_wait_alone(Source::Rank(2), TagMatch::Tag(5)));
        for (source, tag) in [
            (Source::Rank(1), TagMatch::Tag(5)),
            (ANY_SOURCE, TagMatch::Tag(5)),
            (Source::Rank(1), ANY_TAG),
        ] {
            assert!(
                !matcher.would_wait_alone(source, tag),
                "{source:?} {tag:?} takes the unexpected message"
            );
        }
        assert!(matcher.post(0, Source::Rank(1), TagMatch::Tag(5)).is_some());
        assert!(matcher.post(1, Source::Rank(3), TagMatch::Tag(7)).is_none());
        assert!(
            !matcher.would_wait_alone(Source::Rank(2), TagMatch::Tag(8)),
            "behind a posted receive, even one that accepts other messages"
        );
        assert!(matcher.cancel(&1));
        assert!(matcher.would_wait_alone(Source::Rank(1), TagMatch::Tag(5)));
    }

    #[test]
    fn cancelled_receives_no_longer_match() {
        let mut matcher: Matcher<u32, ()> = Matcher::default();
        assert!(matcher.post(0, Source::Rank(1), ANY_TAG).is_none());
        assert!(matcher.post(1, Source::Rank(2), ANY_TAG).is_none());
        assert!(matcher.post(2, ANY_SOURCE, ANY_TAG).is_none());
        assert!(matcher.cancel(&0));
        assert!(!matcher.cancel(&0));
        assert_eq!(matcher.cancel_from(2), [1]);
        assert_eq!(matcher.arrive(status(1, 0), ()).unwrap().0, 2);
        assert!(matcher.arrive(status(2, 0), ()).is_none());
    }
}
