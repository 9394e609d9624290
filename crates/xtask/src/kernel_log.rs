//! Judging the guest's kernel log: which lines fail a run, and which are
//! routine enough not to echo as progress.

/// The guest script prints its kernel log between these markers.
pub const BEGIN_MARKER: &str = "===REGCACHE-DMESG-BEGIN===";
pub const END_MARKER: &str = "===REGCACHE-DMESG-END===";

/// Kernel-log lines that fail a run whatever the tests said.
const FAILURE_PATTERNS: &[&str] = &[
    "WARNING:",
    "BUG:",
    "Oops",
    "general protection",
    "list_del corruption",
    "refcount_t:",
    "UBSAN",
    "KASAN",
    "Kernel panic",
];

/// Whether a kernel-log line fails the run.
pub fn is_failure(line: &str) -> bool {
    FAILURE_PATTERNS
        .iter()
        .any(|pattern| line.contains(pattern))
}

/// A timestamped kernel-log line that is no failure: captured and judged,
/// but not echoed, so the progress shows the guest's own output.
pub fn is_routine(line: &str) -> bool {
    let timestamped = line.trim_start().starts_with('[')
        && line.split_once(']').is_some_and(|(stamp, _)| {
            stamp
                .trim_start_matches([' ', '['])
                .chars()
                .all(|c| c.is_ascii_digit() || c == '.')
        });
    timestamped && !is_failure(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warning_fails_and_is_echoed() {
        let line = "[   12.345678] WARNING: CPU: 0 PID: 1 at mm/foo.c:1";
        assert!(is_failure(line));
        assert!(!is_routine(line));
    }

    #[test]
    fn a_timestamped_line_is_routine() {
        let line = "[    0.000000] Linux version 7.3.4+deb13-amd64";
        assert!(!is_failure(line));
        assert!(is_routine(line));
    }

    #[test]
    fn the_guests_own_output_is_echoed() {
        assert!(!is_routine("regcache-guest: running smoke"));
        assert!(!is_routine("[smoke] not a timestamp"));
    }
}
