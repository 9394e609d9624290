//! How a blocking call waits for the device when a poll finds nothing to do.

use std::time::{Duration, Instant};

/// The waiting policy of every blocking call: poll back to back while polls find work; once
/// they find none, yield the CPU between polls for [`IdleWait::SPIN`], then sleep
/// [`IdleWait::SLEEP`] between polls.
///
/// The spin is timed, not counted: the cost of a yield varies tenfold between a native and
/// an emulated machine, and a count tuned for one makes the other sleep while a reply is
/// about to arrive, which adds a sleep and the timer's slack (tens of microseconds) to the
/// latency, or not, at random. Public so that benchmarks of raw verbs can wait the same way.
#[derive(Debug, Default)]
pub struct IdleWait {
    idle_since: Option<Instant>,
}

impl IdleWait {
    /// How long an idle waiter yields between polls before it sleeps.
    pub const SPIN: Duration = Duration::from_millis(2);
    /// Sleep between polls of a waiter idle for longer: short, but leaves the CPU to the
    /// peers and to a software provider.
    pub const SLEEP: Duration = Duration::from_micros(50);

    /// A poll found work: the next idle poll starts a new spin.
    pub fn progressed(&mut self) {
        self.idle_since = None;
    }

    /// A poll found nothing: yields the CPU, or sleeps once idle for [`IdleWait::SPIN`].
    pub fn idle(&mut self) {
        let since = *self.idle_since.get_or_insert_with(Instant::now);
        if since.elapsed() < Self::SPIN {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Self::SLEEP);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_waiter_spins_then_sleeps_and_progress_restarts_the_spin() {
        let mut wait = IdleWait::default();
        wait.idle();
        let since = wait.idle_since.expect("idle from the first empty poll");
        wait.idle();
        assert_eq!(wait.idle_since, Some(since), "still the same idle period");
        // Idle for the whole spin: every poll sleeps now.
        wait.idle_since = Instant::now().checked_sub(IdleWait::SPIN);
        let sleeping = Instant::now();
        wait.idle();
        assert!(sleeping.elapsed() >= IdleWait::SLEEP);
        wait.progressed();
        assert_eq!(wait.idle_since, None, "progress ends the idle period");
    }
}
