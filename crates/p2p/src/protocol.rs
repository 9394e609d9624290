//! How a message travels, chosen by its length from the eager and the rendezvous threshold.

use crate::wire::HEADER_LEN;

/// The ways a message travels, from the shortest messages to the longest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// One SEND, copied: into the work request when it is as short as the queue pair's inline
    /// limit, else into a send bounce buffer; without a header when the tag fits the
    /// immediate data.
    Copied,
    /// One SEND straight from the sender's cached registration into a receive bounce buffer.
    ZeroCopyEager,
    /// A request to send, an RDMA READ by the receiver into its cached registration, a FIN.
    Rendezvous,
}

impl Protocol {
    /// Whether the whole message travels in one SEND into a receive bounce buffer.
    pub(crate) fn is_eager(self) -> bool {
        self != Self::Rendezvous
    }
}

/// The two lengths that choose a [`Protocol`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Thresholds {
    eager: usize,
    rendezvous: usize,
}

impl Thresholds {
    /// Messages shorter than `eager` are copied, ones shorter than `rendezvous` go zero-copy
    /// eager, longer ones by rendezvous. A `rendezvous` below `eager` counts as `eager`: no
    /// message goes zero-copy eager then.
    pub(crate) fn new(eager: usize, rendezvous: usize) -> Self {
        Self {
            eager,
            rendezvous: rendezvous.max(eager),
        }
    }

    pub(crate) fn eager(self) -> usize {
        self.eager
    }

    pub(crate) fn rendezvous(self) -> usize {
        self.rendezvous
    }

    /// How a message of `len` bytes travels.
    pub(crate) fn protocol(self, len: usize) -> Protocol {
        if len < self.eager {
            Protocol::Copied
        } else if len < self.rendezvous {
            Protocol::ZeroCopyEager
        } else {
            Protocol::Rendezvous
        }
    }

    /// Bytes of a receive bounce buffer: a header and the longest eager payload.
    pub(crate) fn recv_bounce_len(self) -> usize {
        HEADER_LEN + self.rendezvous
    }

    /// Bytes of a send bounce buffer: a header and the longest copied payload.
    pub(crate) fn send_bounce_len(self) -> usize {
        HEADER_LEN + self.eager
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thresholds_start_the_next_protocol() {
        let thresholds = Thresholds::new(8, 64);
        assert_eq!(thresholds.protocol(0), Protocol::Copied);
        assert_eq!(thresholds.protocol(7), Protocol::Copied);
        assert_eq!(thresholds.protocol(8), Protocol::ZeroCopyEager);
        assert_eq!(thresholds.protocol(63), Protocol::ZeroCopyEager);
        assert_eq!(thresholds.protocol(64), Protocol::Rendezvous);
        assert!(thresholds.protocol(63).is_eager());
        assert!(!thresholds.protocol(64).is_eager());
        assert_eq!(thresholds.recv_bounce_len(), HEADER_LEN + 64);
        assert_eq!(thresholds.send_bounce_len(), HEADER_LEN + 8);
    }

    #[test]
    fn a_rendezvous_threshold_below_the_eager_one_leaves_no_zero_copy_eager() {
        for rendezvous in [8, 4] {
            let thresholds = Thresholds::new(8, rendezvous);
            assert_eq!(thresholds.rendezvous(), 8);
            assert_eq!(thresholds.protocol(7), Protocol::Copied);
            assert_eq!(thresholds.protocol(8), Protocol::Rendezvous);
        }
    }
}
