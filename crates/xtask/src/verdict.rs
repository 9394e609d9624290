//! What comes out of a guest run, judged on the host: the guest command's
//! status, each test program's result and every line of the kernel log.

use crate::kernel_log;
use crate::virtme::GuestRun;
use std::fmt::Write as _;

/// The host's reading of one guest run.
#[derive(Debug, Default)]
pub struct Verdict {
    pub passed: Vec<String>,
    pub failed: Vec<String>,
    /// Test cases counted from libtest's `test result:` lines.
    pub cases_passed: u64,
    pub cases_failed: u64,
    pub problems: Vec<String>,
    /// Set when the run's failure says nothing about the code under test,
    /// so the caller may boot once more.
    pub boot_again: Option<BootAgain>,
}

/// Why a failed guest run is worth a second boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootAgain {
    /// The guest stopped before its kernel-log dump with no test failed and
    /// no fault on its console: the death's cause is outside what the run
    /// can see (CI has seen it once, locally a helper once, each passing on
    /// the next boot).
    DiedUnexplained,
    /// The kernel faulted while it booted, before the guest script's first
    /// line: nothing of this project had run (the script loads every module
    /// of ours). CI saw 7.3.4 fault in the scheduler 2 s into a boot, at an
    /// address inside a 5-byte NOP: code patched while the emulated CPU ran
    /// it.
    KernelFaultedWhileBooting,
    /// The guest hung or died before the guest script's first line, with no
    /// fault on its console: as with a fault there, nothing of this project
    /// had run. CI failed a harness self-test boot at stop 20 that printed
    /// nothing of its case, where every local boot of the case passed.
    ScriptNeverStarted,
}

impl BootAgain {
    pub fn describe(self) -> &'static str {
        match self {
            BootAgain::DiedUnexplained => {
                "the guest died with nothing failed and no fault on its console"
            }
            BootAgain::KernelFaultedWhileBooting => {
                "the kernel faulted while it booted, before the guest script started"
            }
            BootAgain::ScriptNeverStarted => {
                "the guest stopped before the guest script started, with no fault on its console"
            }
        }
    }
}

/// The guest script's first line (crates/xtask/guest/guest.sh): every
/// console line before it is the kernel's and the init's own.
pub const GUEST_STARTED_MARKER: &str = "regcache-guest: started in ";

impl Verdict {
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && self.problems.is_empty()
    }

    pub fn summary(&self) -> String {
        let mut text = format!(
            "{} test programs passed, {} failed ({} test cases passed, {} failed)",
            self.passed.len(),
            self.failed.len(),
            self.cases_passed,
            self.cases_failed
        );
        for name in &self.failed {
            let _ = write!(text, "\n      failed: {name}");
        }
        for problem in &self.problems {
            let _ = write!(text, "\n      problem: {problem}");
        }
        text
    }
}

/// Judges a guest run: its exit status, the per-program results, and every
/// line of the kernel log.
pub fn judge(run: &GuestRun) -> Verdict {
    let mut verdict = Verdict::default();
    let mut in_kernel_log = false;
    let mut saw_kernel_log = false;
    for line in &run.output {
        if line.contains(kernel_log::BEGIN_MARKER) {
            in_kernel_log = true;
            continue;
        }
        if line.contains(kernel_log::END_MARKER) {
            in_kernel_log = false;
            saw_kernel_log = true;
            continue;
        }
        if in_kernel_log {
            if kernel_log::is_failure(line) {
                verdict
                    .problems
                    .push(format!("kernel log: {}", line.trim()));
            }
            continue;
        }
        if let Some(name) = line.strip_prefix("REGCACHE-RESULT pass ") {
            verdict.passed.push(name.to_owned());
        } else if let Some(name) = line.strip_prefix("REGCACHE-RESULT fail ") {
            verdict.failed.push(name.to_owned());
        } else if let Some(counts) = line.strip_prefix("test result: ") {
            verdict.cases_passed += libtest_count(counts, "passed");
            verdict.cases_failed += libtest_count(counts, "failed");
        }
    }
    match run.status {
        None => verdict
            .problems
            .push(format!("boot timed out after {} s", run.elapsed.as_secs())),
        Some(0) => {}
        Some(code) => verdict
            .problems
            .push(format!("guest command exited with status {code}")),
    }
    if !saw_kernel_log {
        let first_fault = run
            .output
            .iter()
            .position(|line| kernel_log::is_failure(line));
        let guest_started = run
            .output
            .iter()
            .position(|line| line.contains(GUEST_STARTED_MARKER));
        verdict.boot_again = match (first_fault, guest_started) {
            (Some(fault), Some(started)) if fault > started => None,
            (Some(_), _) => Some(BootAgain::KernelFaultedWhileBooting),
            (None, None) => Some(BootAgain::ScriptNeverStarted),
            (None, Some(_)) if run.status.is_some() && verdict.failed.is_empty() => {
                Some(BootAgain::DiedUnexplained)
            }
            (None, Some(_)) => None,
        };
        verdict.problems.push(format!(
            "the guest never printed its kernel log (crash or timeout?) after {} s; \
             the last lines of its console, kernel lines included:\n{}",
            run.elapsed.as_secs(),
            console_tail(&run.output)
        ));
    }
    verdict
}

/// How many console lines a run without its kernel log shows: enough for a
/// panic's reason or the init's last words.
const CONSOLE_TAIL_LINES: usize = 40;

/// The end of a guest's console, indented, with the timestamped kernel lines
/// that the live echo leaves out: when the guest dies before the harness's
/// kernel-log dump, these are the only record of why.
fn console_tail(output: &[String]) -> String {
    let start = output.len().saturating_sub(CONSOLE_TAIL_LINES);
    if start == output.len() {
        return "        (the guest printed nothing)".to_owned();
    }
    output[start..]
        .iter()
        .map(|line| format!("        | {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The number libtest prints before `label` in a `test result:` line such as
/// `ok. 3 passed; 0 failed; 0 ignored; ...`.
fn libtest_count(counts: &str, label: &str) -> u64 {
    counts
        .split(';')
        .find_map(|part| {
            let words: Vec<&str> = part.split_whitespace().collect();
            match words.as_slice() {
                [.., number, word] if *word == label => number.parse().ok(),
                _ => None,
            }
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn run(lines: &[&str], status: Option<i32>) -> GuestRun {
        GuestRun {
            output: lines.iter().map(|&line| line.to_owned()).collect(),
            status,
            elapsed: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_clean_run_passes_and_counts_test_cases() {
        let verdict = judge(&run(
            &[
                "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured",
                "REGCACHE-RESULT pass smoke-0123",
                kernel_log::BEGIN_MARKER,
                "[    1.000000] rdma_rxe: loaded",
                kernel_log::END_MARKER,
            ],
            Some(0),
        ));
        assert!(verdict.ok(), "{}", verdict.summary());
        assert_eq!(verdict.passed, ["smoke-0123"]);
        assert_eq!((verdict.cases_passed, verdict.cases_failed), (3, 0));
    }

    #[test]
    fn a_warning_in_the_kernel_log_fails_a_passing_run() {
        let verdict = judge(&run(
            &[
                "REGCACHE-RESULT pass smoke-0123",
                kernel_log::BEGIN_MARKER,
                "[    2.000000] WARNING: CPU: 1 PID: 7 at mm/mmu_notifier.c:1",
                kernel_log::END_MARKER,
            ],
            Some(0),
        ));
        assert!(!verdict.ok());
        assert_eq!(verdict.problems.len(), 1);
        assert!(verdict.problems[0].contains("WARNING: CPU: 1"));
    }

    #[test]
    fn a_run_without_its_kernel_log_or_status_fails() {
        let verdict = judge(&run(&["REGCACHE-RESULT pass smoke-0123"], None));
        assert!(!verdict.ok());
        assert_eq!(verdict.problems.len(), 2, "{}", verdict.summary());
    }

    #[test]
    fn a_run_without_its_kernel_log_shows_the_console_tail() {
        let mut lines = vec!["an early line"; CONSOLE_TAIL_LINES];
        lines.push("[    3.000000] Kernel panic - not syncing: VFS: Unable to mount root fs");
        let verdict = judge(&run(&lines, Some(255)));
        let problem = verdict
            .problems
            .iter()
            .find(|problem| problem.contains("never printed its kernel log"))
            .expect("the missing kernel log is a problem");
        assert!(problem.contains("Unable to mount root fs"), "{problem}");
        assert_eq!(problem.matches("        | ").count(), CONSOLE_TAIL_LINES);
    }

    const STARTED: &str = "regcache-guest: started in test mode on 7.3.4+deb13-amd64";

    #[test]
    fn only_a_death_with_nothing_failed_and_no_fault_is_unexplained() {
        let unexplained = Some(BootAgain::DiedUnexplained);
        let quiet = [STARTED, "REGCACHE-RESULT pass smoke-0123", "a guest line"];
        assert_eq!(judge(&run(&quiet, Some(255))).boot_again, unexplained);
        let panicked = [
            STARTED,
            "REGCACHE-RESULT pass smoke-0123",
            "[ 9.0] Kernel panic - x",
        ];
        assert_eq!(judge(&run(&panicked, Some(255))).boot_again, None);
        let failed = [STARTED, "REGCACHE-RESULT fail smoke-0123 (exit 1)"];
        assert_eq!(judge(&run(&failed, Some(255))).boot_again, None);
        assert_eq!(judge(&run(&quiet, None)).boot_again, None, "a timeout");
        let finished = [
            STARTED,
            "REGCACHE-RESULT pass smoke-0123",
            kernel_log::BEGIN_MARKER,
            kernel_log::END_MARKER,
        ];
        assert_eq!(judge(&run(&finished, Some(1))).boot_again, None);
    }

    #[test]
    fn only_a_fault_before_the_guest_script_started_is_the_kernels_own_boot() {
        let while_booting = Some(BootAgain::KernelFaultedWhileBooting);
        let in_boot = [
            "[    2.166092] Oops: invalid opcode: 0000 [#1] SMP NOPTI",
            "[    2.166092] RIP: 0010:set_next_task_fair+0x609/0x780",
        ];
        assert_eq!(judge(&run(&in_boot, Some(255))).boot_again, while_booting);
        assert_eq!(
            judge(&run(&in_boot, None)).boot_again,
            while_booting,
            "a hang"
        );
        let after_start = [STARTED, in_boot[0], in_boot[1]];
        assert_eq!(judge(&run(&after_start, Some(255))).boot_again, None);
        let before_and_after = [in_boot[0], STARTED, "[   30.0] BUG: unable to handle x"];
        assert_eq!(
            judge(&run(&before_and_after, Some(255))).boot_again,
            while_booting,
            "the first fault decides"
        );
    }

    #[test]
    fn a_guest_that_stops_before_its_script_starts_is_booted_again() {
        let never_started = Some(BootAgain::ScriptNeverStarted);
        let boot_only = ["[    1.0] Run /init as init process", "an init line"];
        assert_eq!(judge(&run(&boot_only, Some(255))).boot_again, never_started);
        assert_eq!(
            judge(&run(&boot_only, None)).boot_again,
            never_started,
            "a hang"
        );
        assert_eq!(judge(&run(&[], Some(0))).boot_again, never_started);
    }

    #[test]
    fn a_failed_program_or_status_fails() {
        let verdict = judge(&run(
            &[
                "REGCACHE-RESULT fail seed-4567 (exit 101)",
                kernel_log::BEGIN_MARKER,
                kernel_log::END_MARKER,
            ],
            Some(1),
        ));
        assert_eq!(verdict.failed, ["seed-4567 (exit 101)"]);
        assert_eq!(verdict.problems.len(), 1, "{}", verdict.summary());
    }
}
