//! Which processes to retire: those not sampled since the previous check and
//! no longer alive. Once retired, a process's stacks are merged by name and
//! everything kept for it is freed, so memory does not grow with the number
//! of processes a run has seen (see [`crate::aggregate::Aggregator::retire`]).
//!
//! The per-sample path only notes the process with a counter; the clock is
//! read and `/proc` looked at once per check.
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// How often processes not sampled since the previous check are checked, and
/// retired if they have exited. Each check follows a drain, and every sample
/// is drained by the first drain after it was taken, so a process quiet for
/// a whole period has no samples on their way. Short, because on a machine
/// that starts thousands of processes a second, memory grows with this
/// window: one drain period (500 ms).
pub const FORGET_AFTER: Duration = Duration::from_millis(500);

/// The processes sampled so far, and when each was last sampled.
pub struct Retirement {
    /// The check after which each process was last sampled: a counter, so
    /// the per-sample path reads no clock.
    last_seen: HashMap<u32, u64>,
    checks: u64,
    last_check: Instant,
}

/// What one check found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Check {
    /// Processes sampled since the previous check (they may have exec'd).
    pub recent: Vec<u32>,
    /// Processes to retire: quiet since before the previous check, and gone.
    pub exited: Vec<u32>,
}

impl Retirement {
    /// Starts counting from `now`: the first check is due [`FORGET_AFTER`] later.
    pub fn new(now: Instant) -> Self {
        Retirement {
            last_seen: HashMap::new(),
            checks: 0,
            last_check: now,
        }
    }

    /// Notes that process `tgid` was sampled; true the first time (and the
    /// first time again after it was retired).
    pub fn seen(&mut self, tgid: u32) -> bool {
        self.last_seen.insert(tgid, self.checks).is_none()
    }

    /// At most once every [`FORGET_AFTER`]: the processes sampled since the
    /// previous check, and those that went quiet and for which `alive` is
    /// false; these are forgotten. None when no check is due.
    pub fn check(&mut self, now: Instant, alive: impl Fn(u32) -> bool) -> Option<Check> {
        if now.saturating_duration_since(self.last_check) < FORGET_AFTER {
            return None;
        }
        self.last_check = now;
        // Sampled since the previous check: kept without looking at /proc.
        let recent = self.checks;
        self.checks += 1;
        let mut check = Check::default();
        check.recent.extend(
            self.last_seen
                .iter()
                .filter(|&(_, &seen)| seen == recent)
                .map(|(&pid, _)| pid),
        );
        self.last_seen.retain(|&pid, seen| {
            let keep = *seen == recent || alive(pid);
            if !keep {
                check.exited.push(pid);
            }
            keep
        });
        Some(check)
    }

    /// Processes known.
    pub fn len(&self) -> usize {
        self.last_seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last_seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(mut pids: Vec<u32>) -> Vec<u32> {
        pids.sort_unstable();
        pids
    }

    #[test]
    fn a_process_is_new_once_until_it_is_retired() {
        let start = Instant::now();
        let mut retirement = Retirement::new(start);
        assert!(retirement.seen(10));
        assert!(!retirement.seen(10));
        retirement.check(start + FORGET_AFTER, |_| false).unwrap();
        let check = retirement
            .check(start + 2 * FORGET_AFTER, |_| false)
            .unwrap();
        assert_eq!(check.exited, [10]);
        assert!(retirement.seen(10), "a reused pid is a new process");
    }

    #[test]
    fn checks_come_at_most_once_per_period() {
        let start = Instant::now();
        let mut retirement = Retirement::new(start);
        retirement.seen(10);
        assert_eq!(retirement.check(start + FORGET_AFTER / 2, |_| false), None);
        assert!(retirement.check(start + FORGET_AFTER, |_| false).is_some());
        let soon = start + FORGET_AFTER + FORGET_AFTER / 2;
        assert_eq!(retirement.check(soon, |_| false), None);
    }

    #[test]
    fn only_processes_quiet_since_the_previous_check_and_gone_are_retired() {
        let start = Instant::now();
        let mut retirement = Retirement::new(start);
        for pid in [10, 20, 30] {
            retirement.seen(pid);
        }
        // Sampled since the previous check: kept, even if gone (samples of
        // them may still be on their way).
        let first = retirement.check(start + FORGET_AFTER, |_| false).unwrap();
        assert_eq!(sorted(first.recent), [10, 20, 30]);
        assert!(first.exited.is_empty());

        // 10 sampled again; 20 quiet but alive; 30 quiet and gone.
        retirement.seen(10);
        let second = retirement
            .check(start + 2 * FORGET_AFTER, |pid| pid == 20)
            .unwrap();
        assert_eq!(second.recent, [10]);
        assert_eq!(second.exited, [30]);
        assert_eq!(retirement.len(), 2);
    }
}
