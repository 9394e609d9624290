//! Operations: what a send or a receive holds while it is in progress, and their table by id.

use crate::error::{Error, Result};
use crate::matching::Status;
use crate::registrations::UserRegistration;

/// A nonblocking operation started by [`Communicator::isend`] or [`Communicator::irecv`].
///
/// Complete it with [`Communicator::wait`]; a request that is dropped instead keeps its buffer
/// until the communicator is dropped.
///
/// [`Communicator::isend`]: crate::Communicator::isend
/// [`Communicator::irecv`]: crate::Communicator::irecv
/// [`Communicator::wait`]: crate::Communicator::wait
#[derive(Debug, PartialEq, Eq, Hash)]
#[must_use = "a request holds its buffer until it is waited for"]
pub struct Request {
    pub(crate) id: u64,
}

/// The user's memory an operation sends from or receives into.
#[derive(Debug)]
pub(crate) enum UserBuffer {
    /// Owned by the operation (nonblocking calls).
    Owned(Vec<u8>),
    /// Borrowed by a blocking call, which does not return while the device or the
    /// communicator may still touch it (see `Communicator::finish_borrowed`).
    Borrowed { ptr: *mut u8, len: usize },
}

impl UserBuffer {
    pub(crate) fn ptr(&mut self) -> *mut u8 {
        match self {
            Self::Owned(vec) => vec.as_mut_ptr(),
            Self::Borrowed { ptr, .. } => *ptr,
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Owned(vec) => vec.len(),
            Self::Borrowed { len, .. } => *len,
        }
    }
}

/// Where an operation is in its protocol.
#[derive(Debug)]
pub(crate) enum State {
    /// A receive waiting in the matcher.
    Unmatched,
    /// An eager send waiting for the completion of its SEND. A zero-copy one holds the
    /// registration its SEND reads the buffer through; a copied one has none.
    Sending {
        registration: Option<UserRegistration>,
    },
    /// A rendezvous send waiting for the receiver's FIN; the registration keeps the buffer
    /// registered for the receiver's READ.
    AwaitingFin {
        _registration: UserRegistration,
    },
    /// A rendezvous receive reading (or about to read) the sender's buffer.
    Reading {
        status: Status,
        registration: UserRegistration,
        remote_addr: u64,
        rkey: u32,
        cookie: u64,
    },
    Done(Result<Status>),
}

/// A send or a receive.
#[derive(Debug)]
pub(crate) struct Operation {
    /// The peer the operation is bound to: the destination of a send, the source of a matched
    /// receive.
    pub(crate) peer: Option<usize>,
    pub(crate) tag: u32,
    pub(crate) buffer: UserBuffer,
    pub(crate) state: State,
}

impl Operation {
    /// Completes this receive with eager message `status`: `fill` writes its `status.len`
    /// bytes into the buffer, or, when they do not fit, the receive fails as truncated. If
    /// `fill` fails, the receive stays as it was and the error is returned.
    pub(crate) fn complete_eager<E>(
        &mut self,
        status: Status,
        fill: impl FnOnce(&mut [u8]) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        self.peer = Some(status.source);
        let capacity = self.buffer.len();
        let result = if status.len > capacity {
            Err(truncation(status, capacity))
        } else {
            // SAFETY: the buffer of a receive holds `capacity >= status.len` writable bytes (a
            // borrowed `&mut [u8]` whose call is waiting, or an owned vector) that nothing else
            // accesses while the operation is in progress.
            fill(unsafe { std::slice::from_raw_parts_mut(self.buffer.ptr(), status.len) })?;
            Ok(status)
        };
        self.state = State::Done(result);
        Ok(())
    }

    /// Completes this send of rank `me`: the receiver has the message or is done reading it.
    pub(crate) fn complete_send(&mut self, me: usize) {
        self.state = State::Done(Ok(Status {
            source: me,
            tag: self.tag,
            len: self.buffer.len(),
        }));
    }

    pub(crate) fn is_done(&self) -> bool {
        matches!(self.state, State::Done(_))
    }
}

/// Where operation `id` is, as [`Operations::take_if_done`] found it.
#[derive(Debug)]
pub(crate) enum Progress {
    /// No operation has that id (never handed out, or removed).
    Unknown,
    Pending,
    /// Finished, and now removed from the table.
    Done(Operation),
}

/// The error of a receive whose message of `status` is longer than its `capacity`.
pub(crate) fn truncation(status: Status, capacity: usize) -> Error {
    Error::Truncated {
        source_rank: status.source,
        tag: status.tag,
        len: status.len,
        capacity,
    }
}

/// Bits of an operation id that name its slot in [`Operations`]; the bits above (up to the
/// 56 a work-request id leaves, see `wire::WorkRequest`) count the slot's reuses.
const SLOT_BITS: u32 = 24;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
/// Reuses a slot's count wraps after: 32 bits, so an id comes back only after its slot was
/// reused 2^32 times.
const GENERATION_MASK: u64 = u32::MAX as u64;

#[derive(Debug, Default)]
struct Slot {
    /// Times the slot was freed; part of the id of the operation it holds.
    generation: u64,
    operation: Option<Operation>,
}

/// The operations of a communicator, by id: a slab of slots, so that adding, finding and
/// removing an operation is indexing a vector (every message adds and removes one, and a
/// blocking call looks its operation up on every poll; a B-tree cost hundreds of
/// instructions per insert and per remove under callgrind). An id names a slot and its
/// generation, so the id of a removed operation finds nothing, even once the slot holds
/// another one.
#[derive(Debug, Default)]
pub(crate) struct Operations {
    slots: Vec<Slot>,
    /// Slots without an operation, reused last-freed first (its memory is likely cached).
    free: Vec<usize>,
}

impl Operations {
    /// Adds `operation`; returns its id.
    ///
    /// # Panics
    /// With 2^24 operations in progress at once.
    pub(crate) fn insert(&mut self, operation: Operation) -> u64 {
        let index = self.free.pop().unwrap_or_else(|| {
            self.slots.push(Slot::default());
            self.slots.len() - 1
        });
        assert!(
            (index as u64) <= SLOT_MASK,
            "more than 2^{SLOT_BITS} operations in progress"
        );
        let slot = &mut self.slots[index];
        slot.operation = Some(operation);
        slot.generation << SLOT_BITS | index as u64
    }

    /// The slot of operation `id`, if it is still there.
    fn slot(&self, id: u64) -> Option<&Slot> {
        let slot = self.slots.get((id & SLOT_MASK) as usize)?;
        (slot.generation == id >> SLOT_BITS).then_some(slot)
    }

    pub(crate) fn get(&self, id: u64) -> Option<&Operation> {
        self.slot(id)?.operation.as_ref()
    }

    /// The slot of operation `id` and its index, if the operation is still there.
    fn slot_mut(&mut self, id: u64) -> Option<(usize, &mut Slot)> {
        let index = (id & SLOT_MASK) as usize;
        let slot = self.slots.get_mut(index)?;
        (slot.generation == id >> SLOT_BITS).then_some((index, slot))
    }

    pub(crate) fn get_mut(&mut self, id: u64) -> Option<&mut Operation> {
        self.slot_mut(id)?.1.operation.as_mut()
    }

    pub(crate) fn remove(&mut self, id: u64) -> Option<Operation> {
        let (index, _) = self.slot_mut(id)?;
        self.vacate(index)
    }

    /// Takes the operation out of slot `index` and frees the slot under its next generation.
    fn vacate(&mut self, index: usize) -> Option<Operation> {
        let slot = &mut self.slots[index];
        let operation = slot.operation.take()?;
        slot.generation = (slot.generation + 1) & GENERATION_MASK;
        self.free.push(index);
        Some(operation)
    }

    /// Removes operation `id` if it is finished: a wait asks this after every poll, and the
    /// poll that finds the operation done also takes it out (one lookup, where a lookup to
    /// test and another to remove cost two on every blocking call).
    pub(crate) fn take_if_done(&mut self, id: u64) -> Progress {
        let Some((index, slot)) = self.slot_mut(id) else {
            return Progress::Unknown;
        };
        match &slot.operation {
            None => Progress::Unknown,
            Some(op) if !op.is_done() => Progress::Pending,
            Some(_) => self.vacate(index).map_or(Progress::Unknown, Progress::Done),
        }
    }

    /// Ends operation `id` with `result`.
    pub(crate) fn complete(&mut self, id: u64, result: Result<Status>) {
        if let Some(operation) = self.get_mut(id) {
            operation.state = State::Done(result);
        }
    }

    /// The operations bound to `peer` that are still in progress.
    pub(crate) fn in_progress_with(&self, peer: usize) -> impl Iterator<Item = u64> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(move |(index, slot)| {
                let op = slot.operation.as_ref()?;
                (op.peer == Some(peer) && !op.is_done())
                    .then_some(slot.generation << SLOT_BITS | index as u64)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receive(capacity: usize) -> Operation {
        Operation {
            peer: None,
            tag: 0,
            buffer: UserBuffer::Owned(vec![0; capacity]),
            state: State::Unmatched,
        }
    }

    #[test]
    fn an_eager_message_fills_a_receive_or_truncates_it() {
        let status = Status {
            source: 1,
            tag: 5,
            len: 3,
        };
        let mut fits = receive(4);
        let filled = fits.complete_eager(status, |out| {
            out.copy_from_slice(b"abc");
            Ok::<_, ()>(())
        });
        assert_eq!(filled, Ok(()));
        assert_eq!(fits.peer, Some(1));
        assert!(matches!(fits.state, State::Done(Ok(done)) if done == status));
        assert!(matches!(&fits.buffer, UserBuffer::Owned(vec) if vec == b"abc\0"));

        let mut short = receive(2);
        let untouched = short.complete_eager(status, |_| Err(()));
        assert_eq!(untouched, Ok(()), "a truncated receive does not fill");
        assert!(matches!(
            short.state,
            State::Done(Err(Error::Truncated { capacity: 2, .. }))
        ));

        let mut failing = receive(4);
        assert_eq!(failing.complete_eager(status, |_| Err("copy")), Err("copy"));
        assert!(matches!(failing.state, State::Unmatched));
    }

    #[test]
    fn a_removed_operation_is_gone_even_once_its_slot_is_reused() {
        let mut operations = Operations::default();
        let first = operations.insert(receive(1));
        let second = operations.insert(receive(2));
        assert_ne!(first, second);
        assert!(operations.remove(first).is_some());
        assert!(operations.remove(first).is_none(), "removed once");
        let reusing = operations.insert(receive(3));
        assert_ne!(reusing, first, "the slot is reused under a new id");
        assert!(operations.get(first).is_none());
        assert!(operations.get_mut(first).is_none());
        operations.complete(first, Err(Error::UnknownRequest { id: first }));
        assert!(matches!(
            operations.get(reusing).map(|op| &op.state),
            Some(State::Unmatched)
        ));
        assert_eq!(operations.get(second).map(|op| op.buffer.len()), Some(2));
        assert_eq!(operations.get(reusing).map(|op| op.buffer.len()), Some(3));
        // Ids nobody handed out find nothing either.
        assert!(operations.get(u64::MAX).is_none());
        assert!(operations.get(reusing + 1).is_none());
    }

    #[test]
    fn only_a_finished_operation_is_taken_out_and_its_id_then_finds_nothing() {
        let mut operations = Operations::default();
        let id = operations.insert(receive(4));
        assert!(matches!(operations.take_if_done(id), Progress::Pending));
        assert!(
            operations.get(id).is_some(),
            "left in place while in progress"
        );
        let status = Status {
            source: 1,
            tag: 9,
            len: 2,
        };
        operations.complete(id, Ok(status));
        match operations.take_if_done(id) {
            Progress::Done(op) => {
                assert!(matches!(op.state, State::Done(Ok(done)) if done == status));
                assert_eq!(op.buffer.len(), 4);
            }
            other => panic!("expected the finished operation, got {other:?}"),
        }
        assert!(operations.get(id).is_none(), "taken out");
        assert!(matches!(operations.take_if_done(id), Progress::Unknown));
        let reusing = operations.insert(receive(1));
        assert_ne!(reusing, id, "the slot is reused under a new id");
        assert!(matches!(operations.take_if_done(id), Progress::Unknown));
        assert!(matches!(
            operations.take_if_done(reusing),
            Progress::Pending
        ));
    }

    #[test]
    fn every_id_fits_the_work_request_id_of_a_read() {
        let mut operations = Operations::default();
        let id = operations.insert(receive(1));
        // Wraps the slot's generation: the largest id there is.
        operations.slots[0].generation = GENERATION_MASK;
        let last = operations.slots[0].generation << SLOT_BITS;
        assert!(operations.get(last).is_some());
        assert!(
            last < 1 << 56,
            "READ work-request ids carry 56 bits of the id"
        );
        assert!(operations.remove(last).is_some());
        assert_eq!(operations.slots[0].generation, 0, "wrapped");
        assert!(operations.get(id).is_none());
    }

    #[test]
    fn only_unfinished_operations_of_the_peer_are_in_progress_with_it() {
        let mut operations = Operations::default();
        let mut bound = |peer, done| {
            let mut op = receive(1);
            op.peer = Some(peer);
            if done {
                op.complete_send(0);
            }
            operations.insert(op)
        };
        let (open, _, _) = (bound(1, false), bound(1, true), bound(2, false));
        assert_eq!(operations.in_progress_with(1).collect::<Vec<_>>(), [open]);
        let status = Status {
            source: 1,
            tag: 0,
            len: 1,
        };
        operations.complete(open, Ok(status));
        assert_eq!(operations.in_progress_with(1).count(), 0);
        assert!(operations.remove(open).is_some());
        assert!(operations.get(open).is_none());
    }
}
