//! The second stage: typed raw frames counted by thread and stack, with
//! their weight (samples, or time waited), for the interval and the whole
//! run. Also what goes with counting: the waits of threads switched out
//! ([`Waits`]), when each process was last counted ([`Retirement`]), which
//! stacks are new (for the resolver to locate), and how much was counted
//! since the last report ([`Tally`]).
//!
//! Knows nothing of unwinding or names: frames in, counts by stack id out.
use std::{collections::HashMap, sync::Arc, time::Instant};

use chrono::{DateTime, Local};

use crate::{
    aggregate::{Aggregator, Origin, StackId, StackTable, ThreadStack},
    model::Counters,
    retire::{Check, Retirement},
    sampler::Wake,
    stack::{Gap, RawFrame, Space},
    task::TaskState,
    wait::{monotonic_ns, Wait, Waits, Weight},
};

/// Counts, waits, and what is new since the last look.
pub struct Counting {
    aggregator: Aggregator,
    /// Threads waiting to run again; none for dumps, which see no switches.
    waits: Option<Waits>,
    retirement: Retirement,
    tally: Tally,
    /// Stacks interned since the last [`Counting::take_new_stacks`].
    new_stacks: Vec<StackId>,
}

/// One thread's sample or wait: who, where, in what state.
pub struct Counted<'a> {
    pub tgid: u32,
    pub tid: u32,
    pub comm: &'a str,
    pub raw: &'a [RawFrame],
    pub state: TaskState,
    /// The image it was sampled in, and when.
    pub origin: Origin,
}

impl Counting {
    /// `weight` says what waits weigh (`None`: there are none to count);
    /// `counters` are the kernel's when counting starts.
    pub fn new(weight: Option<Weight>, counters: Counters) -> Self {
        Counting {
            aggregator: Aggregator::new(),
            waits: weight.map(Waits::new),
            retirement: Retirement::new(Instant::now()),
            tally: Tally::new(Local::now(), counters),
            new_stacks: Vec::new(),
        }
    }

    /// Counts `weight` of `sample`; true when its process was not counted
    /// before (the caller may want to look at it).
    pub fn count(&mut self, sample: Counted<'_>, weight: u64) -> bool {
        let Counted {
            tgid,
            tid,
            comm,
            raw,
            state,
            origin,
        } = sample;
        self.tally.add(weight);
        let (stack, new) = self
            .aggregator
            .add_from(origin, (tgid, tid), comm, raw, state, weight);
        if new {
            self.new_stacks.push(stack);
        }
        self.retirement.seen(tgid)
    }

    /// Thread `tid` was switched out at `since_ns`; true when its process
    /// was not counted before.
    pub fn begin_wait(&mut self, sample: Counted<'_>, since_ns: u64) -> bool {
        let stack = intern(
            &mut self.aggregator.stacks,
            &mut self.new_stacks,
            (sample.tgid, sample.origin),
            sample.raw,
        );
        if let Some(waits) = &mut self.waits {
            let wait = Wait::new(
                sample.tgid,
                sample.comm.to_string(),
                stack,
                sample.state,
                since_ns,
            );
            waits.begin(sample.tid, wait);
        }
        self.retirement.seen(sample.tgid)
    }

    /// A thread runs again: its wait is counted. `comm` names its process
    /// when the wait's beginning was lost.
    pub fn end_wait(&mut self, wake: Wake, comm: impl FnOnce() -> String) {
        let Some(waits) = &mut self.waits else {
            return;
        };
        let wait = match waits.end(wake.tid, wake.start_ns) {
            Some(wait) => wait,
            // Its `Blocked` record was dropped (the ring buffer was full): the
            // time still counts, on a stack that says what is missing.
            None => {
                let raw = [RawFrame::Gap(Space::User, Gap::Dropped)];
                let stack = intern(
                    &mut self.aggregator.stacks,
                    &mut self.new_stacks,
                    (wake.tgid, Origin::default()),
                    &raw,
                );
                Wait::new(wake.tgid, comm(), stack, TaskState::Unknown, wake.start_ns)
            }
        };
        let sink = sink(&mut self.tally, &mut self.retirement, &mut self.aggregator);
        waits.count_ended(wake.tid, wait, wake.end_ns, sink);
    }

    /// Counts the waiting of every thread still switched out, up to now, so
    /// reports include threads that have been waiting all along.
    pub fn count_waits_in_progress(&mut self) {
        let Some(waits) = &mut self.waits else {
            return;
        };
        let sink = sink(&mut self.tally, &mut self.retirement, &mut self.aggregator);
        waits.count_in_progress(monotonic_ns(), sink);
    }

    /// Ends tracking switches: waits still in progress are counted up to
    /// now, and no further.
    pub fn stop_tracking(&mut self) {
        self.count_waits_in_progress();
        if let Some(waits) = &mut self.waits {
            waits.clear();
        }
    }

    /// Whether anything was counted, or is being waited, since the last
    /// interval was taken.
    pub fn has_unreported(&self) -> bool {
        self.tally.unreported > 0 || self.waits.as_ref().is_some_and(|w| !w.is_empty())
    }

    /// The stacks interned since the last call: for the resolver to locate.
    pub fn take_new_stacks(&mut self) -> Vec<StackId> {
        std::mem::take(&mut self.new_stacks)
    }

    /// The counts since the last call, and the interval they cover, ending
    /// `now`; the kernel's counters over it are `counters` minus the last
    /// call's.
    pub fn take_interval(&mut self, now: DateTime<Local>, counters: &Counters) -> Interval {
        let (span, counters_over) = self.tally.end_interval(now, counters);
        Interval {
            counts: self.aggregator.take_interval(),
            span,
            counters: counters_over,
        }
    }

    /// The aggregator, to name the images of its stacks.
    pub fn aggregator_mut(&mut self) -> &mut Aggregator {
        &mut self.aggregator
    }

    pub fn aggregator(&self) -> &Aggregator {
        &self.aggregator
    }

    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// At most every [`crate::retire::FORGET_AFTER`]: the processes counted
    /// lately, and those gone quiet that `alive` says have exited.
    pub fn check_exited(&mut self, alive: impl Fn(u32) -> bool) -> Option<Check> {
        self.retirement.check(Instant::now(), alive)
    }

    /// Merges the counts of exited processes (pid -> name) by name and frees
    /// their stacks (see [`Aggregator::retire`]) and waits; returns the ids
    /// freed.
    pub fn retire(
        &mut self,
        exited: &HashMap<u32, String>,
        merged: impl FnMut(&mut StackTable, &Arc<str>, StackId) -> StackId,
    ) -> Vec<StackId> {
        // Their threads will not run again; their stacks are about to go.
        if let Some(waits) = &mut self.waits {
            waits.forget(|tgid| exited.contains_key(&tgid));
        }
        self.aggregator.retire(exited, merged)
    }

    /// The sizes of what is kept, for debug logs.
    pub fn sizes(&self) -> String {
        format!(
            "{} stacks, {} counts, {} waiting threads",
            self.aggregator.stacks.len(),
            self.aggregator.run().len(),
            self.waits.as_ref().map_or(0, Waits::len),
        )
    }
}

/// Interns a stack; a new one is noted in `new_stacks`.
fn intern(
    stacks: &mut StackTable,
    new_stacks: &mut Vec<StackId>,
    (tgid, origin): (u32, Origin),
    raw: &[RawFrame],
) -> StackId {
    let (stack, new) = stacks.intern_from(tgid, origin, raw);
    if new {
        new_stacks.push(stack);
    }
    stack
}

/// Where the weight of a wait goes: the aggregator, the tally, and the
/// process's last-seen mark.
fn sink<'a>(
    tally: &'a mut Tally,
    retirement: &'a mut Retirement,
    aggregator: &'a mut Aggregator,
) -> impl FnMut(ThreadStack, &str, u64) + 'a {
    move |key, comm, weight| {
        tally.add(weight);
        retirement.seen(key.tgid);
        aggregator.count(key, comm, weight);
    }
}

/// The counts of one interval, what it spans, and the kernel's counters
/// over it (for its losses).
pub struct Interval {
    pub counts: HashMap<ThreadStack, u64>,
    pub span: (DateTime<Local>, DateTime<Local>),
    pub counters: Counters,
}

/// What was counted since the run started and since the last interval, and
/// the kernel's counters at both times, for the losses of each.
#[derive(Debug)]
pub struct Tally {
    run_start: DateTime<Local>,
    run_counters: Counters,
    interval_start: DateTime<Local>,
    interval_counters: Counters,
    /// Counted since the last interval was taken.
    unreported: u64,
    /// Everything counted since the run started, for the status line.
    sampled: u64,
}

impl Tally {
    /// Starts the run and its first interval at `now`, with the kernel's
    /// `counters` then.
    pub fn new(now: DateTime<Local>, counters: Counters) -> Tally {
        Tally {
            run_start: now,
            run_counters: counters,
            interval_start: now,
            interval_counters: counters,
            unreported: 0,
            sampled: 0,
        }
    }

    fn add(&mut self, weight: u64) {
        self.unreported += weight;
        self.sampled += weight;
    }

    /// Ends the interval at `now`: its span, and what the kernel's counters
    /// grew by over it. The next interval starts there.
    fn end_interval(
        &mut self,
        now: DateTime<Local>,
        counters: &Counters,
    ) -> ((DateTime<Local>, DateTime<Local>), Counters) {
        let span = (self.interval_start, now);
        let grown = counters.since(&self.interval_counters);
        self.interval_start = now;
        self.interval_counters = *counters;
        self.unreported = 0;
        (span, grown)
    }

    /// The run up to `now`, and what the kernel's counters grew by over it.
    pub fn run(
        &self,
        now: DateTime<Local>,
        counters: &Counters,
    ) -> ((DateTime<Local>, DateTime<Local>), Counters) {
        ((self.run_start, now), counters.since(&self.run_counters))
    }

    /// Everything counted since the run started.
    pub fn sampled(&self) -> u64 {
        self.sampled
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use tripod_common::Counter;

    use super::*;

    fn counters(samples: u64) -> Counters {
        let mut counters = Counters::default();
        counters.0[Counter::Samples as usize] = samples;
        counters
    }

    #[test]
    fn a_tally_counts_the_interval_and_the_run_apart() {
        let start = Local::now();
        let mut tally = Tally::new(start, counters(10));
        tally.add(3);
        tally.add(4);
        let first_end = start + Duration::seconds(1);
        let (span, grown) = tally.end_interval(first_end, &counters(25));
        assert_eq!(span, (start, first_end));
        assert_eq!(grown.get(Counter::Samples), 15);
        assert_eq!(tally.unreported, 0);

        tally.add(2);
        let second_end = first_end + Duration::seconds(1);
        let (span, grown) = tally.end_interval(second_end, &counters(30));
        assert_eq!(
            span,
            (first_end, second_end),
            "the next interval starts where one ended"
        );
        assert_eq!(grown.get(Counter::Samples), 5);

        let (run, grown) = tally.run(second_end, &counters(30));
        assert_eq!(run, (start, second_end));
        assert_eq!(grown.get(Counter::Samples), 20);
        assert_eq!(tally.sampled(), 9);
    }

    fn on_cpu<'a>(tid: u32, raw: &'a [RawFrame]) -> Counted<'a> {
        Counted {
            tgid: 7,
            tid,
            comm: "t",
            raw,
            state: TaskState::Running,
            origin: Origin::default(),
        }
    }

    #[test]
    fn new_stacks_and_new_processes_are_told_once() {
        let mut counting = Counting::new(None, Counters::default());
        let raw = [RawFrame::InstructionPointer(Space::User, 0x10)];
        assert!(counting.count(on_cpu(1, &raw), 2), "process 7 is new");
        assert!(!counting.count(on_cpu(2, &raw), 1));
        assert_eq!(counting.take_new_stacks().len(), 1);
        assert!(counting.take_new_stacks().is_empty());
        assert!(counting.has_unreported());
        let interval = counting.take_interval(Local::now(), &Counters::default());
        assert_eq!(interval.counts.values().sum::<u64>(), 3);
        assert!(!counting.has_unreported());
    }

    #[test]
    fn a_wait_is_counted_when_it_ends_and_one_whose_start_was_lost_too() {
        let weight = Weight::OffCpu { min_block_ns: 0 };
        let mut counting = Counting::new(Some(weight), Counters::default());
        let raw = [RawFrame::InstructionPointer(Space::Kernel, 0xffff_0010)];
        counting.begin_wait(on_cpu(1, &raw), 1_000_000);
        assert!(
            counting.has_unreported(),
            "a wait in progress is unreported"
        );
        let wake = |tid, start_ns| Wake {
            tid,
            tgid: 7,
            start_ns,
            end_ns: 3_000_000,
        };
        counting.end_wait(wake(1, 1_000_000), || unreachable!("its start is known"));
        counting.end_wait(wake(2, 2_000_000), || "lost".into());
        let interval = counting.take_interval(Local::now(), &Counters::default());
        let mut weights: Vec<_> = interval.counts.values().copied().collect();
        weights.sort();
        assert_eq!(weights, [1000, 2000], "microseconds waited by each");
        assert_eq!(counting.aggregator().thread_name(2), Some("lost"));
    }
}
