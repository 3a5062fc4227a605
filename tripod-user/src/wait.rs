//! Off-CPU and wall-clock accounting (`--mode off-cpu` and `wall`): threads
//! switched out and not yet back, and what their waiting weighs. A thread is
//! counted when it runs again, and reports count the waits still in progress
//! up to their time, so nothing is counted twice however a wait is cut.
//!
//! Knows stacks only by id: the stack of a wait is interned by whoever begins
//! it, and each count goes back to the caller as a [`ThreadStack`] and weight.
use std::collections::HashMap;

use crate::{
    aggregate::{StackId, ThreadStack},
    config::Mode,
    task::TaskState,
};

/// A thread switched out and not yet back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wait {
    pub tgid: u32,
    pub comm: String,
    pub stack: StackId,
    pub state: TaskState,
    /// CLOCK_MONOTONIC nanoseconds when it was switched out.
    pub since_ns: u64,
    /// Up to when its waiting has been counted already (reports count waits
    /// still in progress).
    counted_ns: u64,
}

impl Wait {
    /// A wait that began at `since_ns` and has not been counted yet.
    pub fn new(tgid: u32, comm: String, stack: StackId, state: TaskState, since_ns: u64) -> Wait {
        Wait {
            tgid,
            comm,
            stack,
            state,
            since_ns,
            counted_ns: since_ns,
        }
    }
}

/// What a wait weighs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Weight {
    /// Microseconds off the CPU; shorter waits than `min_block_ns` count nothing.
    OffCpu { min_block_ns: u64 },
    /// The sampling ticks at `frequency` Hz a wait spans (wall-clock mode).
    Ticks { frequency: u64 },
}

impl Weight {
    /// How a run in `mode` weighs waits.
    pub fn for_mode(mode: Mode, frequency: u64, min_block_us: u32) -> Weight {
        match mode {
            Mode::OffCpu => Weight::OffCpu {
                min_block_ns: u64::from(min_block_us) * 1000,
            },
            Mode::Cpu | Mode::Wall => Weight::Ticks { frequency },
        }
    }
}

/// Threads waiting to run again, by tid.
pub struct Waits {
    waits: HashMap<u32, Wait>,
    weight: Weight,
}

impl Waits {
    pub fn new(weight: Weight) -> Self {
        Waits {
            waits: HashMap::new(),
            weight,
        }
    }

    /// Thread `tid` was switched out.
    pub fn begin(&mut self, tid: u32, wait: Wait) {
        self.waits.insert(tid, wait);
    }

    /// Thread `tid`, switched out at `start_ns`, runs again: its wait, unless
    /// the wait that began then is not known (its record was dropped).
    pub fn end(&mut self, tid: u32, start_ns: u64) -> Option<Wait> {
        match self.waits.remove(&tid) {
            Some(wait) if wait.since_ns == start_ns => Some(wait),
            _ => None,
        }
    }

    /// Hands what an ended wait adds up to `end_ns` to `count`.
    pub fn count_ended(
        &self,
        tid: u32,
        mut wait: Wait,
        end_ns: u64,
        count: impl FnMut(ThreadStack, &str, u64),
    ) {
        self.weight.count(tid, &mut wait, end_ns, count);
    }

    /// Counts the waiting of every thread still switched out, up to `now_ns`,
    /// so reports include threads that have been waiting all along.
    pub fn count_in_progress(
        &mut self,
        now_ns: u64,
        mut count: impl FnMut(ThreadStack, &str, u64),
    ) {
        for (&tid, wait) in self.waits.iter_mut() {
            self.weight.count(tid, wait, now_ns, &mut count);
        }
    }

    /// Forgets the waits of processes for which `gone` is true: their threads
    /// will not run again.
    pub fn forget(&mut self, gone: impl Fn(u32) -> bool) {
        self.waits.retain(|_, wait| !gone(wait.tgid));
    }

    pub fn clear(&mut self) {
        self.waits.clear();
    }

    pub fn len(&self) -> usize {
        self.waits.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waits.is_empty()
    }
}

impl Weight {
    /// Hands what `wait` adds up to `until_ns` to `count`, and notes it counted.
    fn count(
        self,
        tid: u32,
        wait: &mut Wait,
        until_ns: u64,
        mut count: impl FnMut(ThreadStack, &str, u64),
    ) {
        if until_ns <= wait.counted_ns {
            return;
        }
        let weight = match self {
            Weight::OffCpu { min_block_ns } => {
                if until_ns - wait.since_ns < min_block_ns {
                    return;
                }
                until_ns / 1000 - wait.counted_ns / 1000
            }
            Weight::Ticks { frequency } => {
                ticks(until_ns, frequency) - ticks(wait.counted_ns, frequency)
            }
        };
        wait.counted_ns = until_ns;
        if weight > 0 {
            let key = ThreadStack {
                tgid: wait.tgid,
                tid,
                stack: wait.stack,
                state: wait.state,
            };
            count(key, &wait.comm, weight);
        }
    }
}

/// Sampling ticks at `frequency` Hz from the clock's origin to `ns`.
fn ticks(ns: u64, frequency: u64) -> u64 {
    (u128::from(ns) * u128::from(frequency) / 1_000_000_000) as u64
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime with a valid pointer to a local.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// Every count handed out, in order.
    fn counted(
        counts: &mut Vec<(ThreadStack, String, u64)>,
    ) -> impl FnMut(ThreadStack, &str, u64) + '_ {
        |key, comm, weight| counts.push((key, comm.to_string(), weight))
    }

    fn wait(since_ns: u64) -> Wait {
        Wait::new(10, "worker".into(), 7, TaskState::Sleeping, since_ns)
    }

    #[test]
    fn ticks_are_counted_once_across_split_intervals() {
        // 99 Hz: a wait from 0.5 s to 2.5 s spans 198 ticks however it is cut.
        let (start, middle, end) = (500_000_000, 1_234_567_890, 2_500_000_000);
        let whole = ticks(end, 99) - ticks(start, 99);
        let split = (ticks(middle, 99) - ticks(start, 99)) + (ticks(end, 99) - ticks(middle, 99));
        assert_eq!(whole, 198);
        assert_eq!(split, whole);
    }

    #[test]
    fn off_cpu_waits_count_microseconds_once_across_reports() {
        let mut waits = Waits::new(Weight::for_mode(Mode::OffCpu, 99, 0));
        let mut counts = Vec::new();
        waits.begin(11, wait(1000 * MS));
        // A report at 1.5 s counts the first half; the wake the rest.
        waits.count_in_progress(1500 * MS, counted(&mut counts));
        let ended = waits.end(11, 1000 * MS).unwrap();
        waits.count_ended(11, ended, 2000 * MS, counted(&mut counts));
        let key = ThreadStack {
            tgid: 10,
            tid: 11,
            stack: 7,
            state: TaskState::Sleeping,
        };
        assert_eq!(
            counts,
            [
                (key, "worker".to_string(), 500_000),
                (key, "worker".to_string(), 500_000)
            ]
        );
        assert!(waits.is_empty());
    }

    #[test]
    fn short_off_cpu_waits_are_not_counted() {
        // --min-block-us 1000: a 0.5 ms wait counts nothing, a 2 ms one 2000 µs.
        let mut waits = Waits::new(Weight::for_mode(Mode::OffCpu, 99, 1000));
        let mut counts = Vec::new();
        waits.begin(11, wait(MS));
        waits.count_in_progress(MS + MS / 2, counted(&mut counts));
        assert!(counts.is_empty());
        let ended = waits.end(11, MS).unwrap();
        waits.count_ended(11, ended, 3 * MS, counted(&mut counts));
        assert_eq!(counts.len(), 1);
        assert_eq!(counts[0].2, 2000);
    }

    #[test]
    fn wall_clock_waits_count_the_ticks_they_span() {
        let mut waits = Waits::new(Weight::for_mode(Mode::Wall, 100, 0));
        let mut counts = Vec::new();
        waits.begin(11, wait(5 * MS));
        waits.count_in_progress(95 * MS, counted(&mut counts));
        // Counted up to 95 ms already: nothing more at the same time.
        waits.count_in_progress(95 * MS, counted(&mut counts));
        let ended = waits.end(11, 5 * MS).unwrap();
        waits.count_ended(11, ended, 305 * MS, counted(&mut counts));
        let weights: Vec<u64> = counts.iter().map(|c| c.2).collect();
        assert_eq!(weights, [9, 21]);
    }

    #[test]
    fn a_wake_that_does_not_match_its_wait_ends_none() {
        let mut waits = Waits::new(Weight::for_mode(Mode::OffCpu, 99, 0));
        // Known thread, but another wait (the record of this one was lost).
        waits.begin(11, wait(MS));
        assert_eq!(waits.end(11, 2 * MS), None);
        assert!(waits.is_empty());
        assert_eq!(waits.end(12, 2 * MS), None);
    }

    #[test]
    fn waits_of_exited_processes_are_forgotten() {
        let mut waits = Waits::new(Weight::for_mode(Mode::Wall, 99, 0));
        waits.begin(11, wait(MS));
        waits.begin(
            21,
            Wait::new(20, "other".into(), 9, TaskState::Sleeping, MS),
        );
        waits.forget(|tgid| tgid == 10);
        assert_eq!(waits.len(), 1);
        let mut counts = Vec::new();
        waits.count_in_progress(2_000 * MS, counted(&mut counts));
        assert_eq!(counts[0].0.tgid, 20);
        waits.clear();
        assert!(waits.is_empty());
    }
}
