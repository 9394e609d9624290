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
    /// Returns the time it read before waiting, for the caller's own timeout: one clock read
    /// per idle poll serves both (a clock read is a system call on a guest whose clock source
    /// the vDSO cannot read).
    pub fn idle(&mut self) -> Instant {
        let now = Instant::now();
        let since = *self.idle_since.get_or_insert(now);
        if now.saturating_duration_since(since) < Self::SPIN {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Self::SLEEP);
        }
        now
    }
}

/// The timeout of one wait, read off the clock as rarely as the wait allows: on polls that
/// find nothing to do, from the time [`IdleWait::idle`] read anyway, and on every
/// [`WaitTimer::BUSY_POLLS_PER_CLOCK_READ`]th poll in a row that finds work, so that a stream of
/// completions cannot hold the timeout off. A wait whose completion is there at its first poll
/// reads the clock not at all. The time counts from the first poll that finds nothing to do
/// (or the first clock read).
#[derive(Debug)]
pub(crate) struct WaitTimer {
    timeout: Duration,
    since: Option<Instant>,
    busy_polls: u32,
}

impl WaitTimer {
    /// Polls in a row that find work between two clock reads.
    pub(crate) const BUSY_POLLS_PER_CLOCK_READ: u32 = 64;

    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            since: None,
            busy_polls: 0,
        }
    }

    /// A poll found work; returns how long the wait has lasted once that is past the timeout.
    pub(crate) fn busy(&mut self) -> Option<Duration> {
        self.busy_polls += 1;
        if self.busy_polls % Self::BUSY_POLLS_PER_CLOCK_READ != 0 {
            return None;
        }
        self.idle(Instant::now())
    }

    /// A poll found nothing at `now` ([`IdleWait::idle`]'s time); returns how long the wait
    /// has lasted once that is past the timeout.
    pub(crate) fn idle(&mut self, now: Instant) -> Option<Duration> {
        let waited = now.saturating_duration_since(*self.since.get_or_insert(now));
        (waited >= self.timeout).then_some(waited)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_waiter_spins_then_sleeps_and_progress_restarts_the_spin() {
        let mut wait = IdleWait::default();
        let before = Instant::now();
        let first = wait.idle();
        assert!(first >= before, "the time read before waiting");
        let since = wait.idle_since.expect("idle from the first empty poll");
        assert_eq!(since, first);
        let second = wait.idle();
        assert!(second >= first);
        assert_eq!(wait.idle_since, Some(since), "still the same idle period");
        // Idle for the whole spin: every poll sleeps now.
        wait.idle_since = Instant::now().checked_sub(IdleWait::SPIN);
        let sleeping = Instant::now();
        wait.idle();
        assert!(sleeping.elapsed() >= IdleWait::SLEEP);
        wait.progressed();
        assert_eq!(wait.idle_since, None, "progress ends the idle period");
    }

    #[test]
    fn a_wait_times_out_on_an_idle_poll_or_after_a_run_of_busy_ones() {
        let mut expired = WaitTimer::new(Duration::ZERO);
        for _ in 1..WaitTimer::BUSY_POLLS_PER_CLOCK_READ {
            assert_eq!(expired.busy(), None, "no clock read between the reads");
        }
        assert!(
            expired.busy().is_some(),
            "a stream of completions still times out"
        );
        assert!(WaitTimer::new(Duration::ZERO)
            .idle(Instant::now())
            .is_some());

        let mut timer = WaitTimer::new(Duration::from_secs(60));
        let start = Instant::now();
        assert_eq!(timer.idle(start), None);
        for _ in 0..2 * WaitTimer::BUSY_POLLS_PER_CLOCK_READ {
            assert_eq!(timer.busy(), None);
        }
        assert_eq!(timer.idle(start + Duration::from_secs(59)), None);
        assert_eq!(
            timer.idle(start + Duration::from_secs(61)),
            Some(Duration::from_secs(61)),
            "counted from the first idle poll"
        );
    }
}
