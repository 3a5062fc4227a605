//! Samples on their way to reports: unwound, aggregated and symbolized as
//! they arrive, whatever the mode. Recording ([`crate::app`]) and thread dumps
//! ([`crate::dump`]) both feed one.
use std::{collections::HashMap, sync::Arc, time::Instant};

use anyhow::{Context as _, Result};
use chrono::{DateTime, Local};
use tripod_common::RecordKind;

use crate::{
    aggregate::{Aggregator, StackId},
    annotate::Rules,
    ingest::{self, Ingest},
    model::{Counters, FrameLocals},
    output::{push::Pusher, Output, Progress},
    process::{self, ProcessTable},
    python::{Python, PythonChange},
    report::{self, Inputs, Losses, RunInfo, ThreadDump},
    resolve::Resolver,
    retire::Retirement,
    sampler::{CopiedSample, Record, Wake},
    stack::{Gap, RawFrame, RawSample, Space},
    task::TaskState,
    wait::{monotonic_ns, Wait, Waits, Weight},
};

pub struct Pipeline {
    /// None for dumps.
    run: Option<RunInfo>,
    rules: Arc<Rules>,
    aggregator: Aggregator,
    processes: ProcessTable,
    resolver: Resolver,
    /// Unwinds and merges Python frames; owns the Python state.
    ingest: Ingest,
    /// New stacks whose addresses are located at the next drain.
    unlocated: Vec<StackId>,
    /// Threads waiting to run again.
    waits: Waits,
    /// Processes to check for Python: new ones, and ones that may have exec'd.
    python_candidates: Vec<u32>,
    /// `dump --locals`: each dumped thread's Python local variables, by tid.
    locals: Option<HashMap<u32, Vec<FrameLocals>>>,
    /// When each process was last sampled, to retire those that exited.
    retirement: Retirement,
    /// What was counted since the run and since the last report.
    tally: Tally,
}

/// What was counted since the run started and since the last report, and
/// the kernel's counters at both times, for the losses of each.
struct Tally {
    run_start: DateTime<Local>,
    run_counters: Counters,
    interval_start: DateTime<Local>,
    interval_counters: Counters,
    /// Counted since the last report.
    unreported: u64,
    /// Everything counted since the run started, for the status line.
    sampled: u64,
}

impl Tally {
    fn add(&mut self, weight: u64) {
        self.unreported += weight;
        self.sampled += weight;
    }
}

/// What a pipeline starts from.
pub struct PipelineOptions {
    pub rules: Arc<Rules>,
    /// Processes known already (named targets, read before sampling starts).
    pub processes: ProcessTable,
    pub python: Python,
    /// Collect user stacks at all (not `--kernel-only`).
    pub collect_user: bool,
    /// The kernel's counters when the pipeline starts: losses are counted
    /// from there.
    pub counters: Counters,
    /// For recordings, which write reports; dumps have none.
    pub recording: Option<Recording>,
}

/// What only a recording's pipeline needs.
pub struct Recording {
    /// What every report says about the run.
    pub run: RunInfo,
    /// `--mode off-cpu`: shorter waits are not counted, in microseconds.
    pub min_block_us: u32,
}

impl Pipeline {
    pub fn new(options: PipelineOptions) -> Self {
        let now = Local::now();
        let weight = match &options.recording {
            Some(r) => Weight::for_mode(r.run.mode, r.run.frequency, r.min_block_us),
            // Dumps see no thread switch out: there are no waits to weigh.
            None => Weight::Ticks { frequency: 0 },
        };
        Pipeline {
            run: options.recording.map(|r| r.run),
            rules: options.rules,
            aggregator: Aggregator::new(),
            processes: options.processes,
            resolver: Resolver::new(),
            ingest: Ingest::new(options.python, options.collect_user),
            unlocated: Vec::new(),
            waits: Waits::new(weight),
            python_candidates: Vec::new(),
            locals: None,
            retirement: Retirement::new(Instant::now()),
            tally: Tally {
                run_start: now,
                run_counters: options.counters,
                interval_start: now,
                interval_counters: options.counters,
                unreported: 0,
                sampled: 0,
            },
        }
    }

    /// What reports say about the run: recordings only.
    fn run(&self) -> &RunInfo {
        self.run
            .as_ref()
            .expect("reports are written by the pipelines of recordings")
    }

    /// Counts the samples the kernel counted, then locates the addresses of
    /// every stack not seen before, now, while their processes are most likely
    /// still alive. Symbols wait for the next report.
    pub fn ingest(&mut self, samples: Vec<RawSample>) {
        for sample in samples {
            let raw = ingest::combine(
                &mut self.processes,
                sample.tgid,
                &sample.comm,
                sample.kernel,
                sample.user,
            );
            self.count(
                sample.tgid,
                sample.tid,
                &sample.comm,
                &raw,
                TaskState::Running,
                sample.count,
            );
        }
        self.locate_new_stacks();
        self.forget_exited();
    }

    /// Takes one record of the ring buffer: a sample on a CPU, a thread
    /// switching out, or one switching back in.
    pub fn ingest_record(&mut self, record: Record<'_>) {
        match record {
            Record::Stack(sample) => match sample.kind {
                RecordKind::Blocked => self.begin_wait(sample),
                _ => {
                    let (tgid, tid) = (sample.tgid, sample.tid);
                    let (raw, comm) = self.unwind(sample);
                    self.count(tgid, tid, &comm, &raw, TaskState::Running, 1);
                }
            },
            Record::Woke(wake) => self.end_wait(wake),
        }
    }

    /// Takes one thread of a dump: counted once, in the state it is in.
    pub fn ingest_snapshot(&mut self, sample: CopiedSample<'_>) {
        let (tgid, tid) = (sample.tgid, sample.tid);
        if let Some(locals) = &mut self.locals {
            locals.insert(
                tid,
                self.ingest.python_mut().locals(tgid, &sample.python.frames),
            );
        }
        let state = TaskState::from_kernel(sample.state);
        let (raw, comm) = self.unwind(sample);
        self.count(tgid, tid, &comm, &raw, state, 1);
    }

    /// Takes one thread of the snapshot made when tracking switches starts:
    /// a thread already waiting is counted from now, as if it had just been
    /// switched out. Returns whether it was waiting.
    pub fn seed_wait(&mut self, sample: CopiedSample<'_>) -> bool {
        if !TaskState::from_kernel(sample.state).is_waiting() {
            return false;
        }
        self.begin_wait(sample);
        true
    }

    fn begin_wait(&mut self, sample: CopiedSample<'_>) {
        let (tgid, tid, since_ns) = (sample.tgid, sample.tid, sample.time_ns);
        // Switched out while runnable: preempted, waiting for a CPU.
        let state = match TaskState::from_kernel(sample.state) {
            TaskState::Running => TaskState::Runnable,
            state => state,
        };
        let (raw, comm) = self.unwind(sample);
        let (stack, new) = self.aggregator.stacks.intern(tgid, &raw);
        if new {
            self.unlocated.push(stack);
        }
        self.seen(tgid);
        self.waits
            .begin(tid, Wait::new(tgid, comm, stack, state, since_ns));
    }

    fn end_wait(&mut self, wake: Wake) {
        let wait = match self.waits.end(wake.tid, wake.start_ns) {
            Some(wait) => wait,
            // Its `Blocked` record was dropped (the ring buffer was full): the
            // time still counts, on a stack that says what is missing.
            None => {
                let comm = self.processes.observe(wake.tgid, "").comm.clone();
                let raw = [RawFrame::Gap(Space::User, Gap::Dropped)];
                let (stack, new) = self.aggregator.stacks.intern(wake.tgid, &raw);
                if new {
                    self.unlocated.push(stack);
                }
                Wait::new(wake.tgid, comm, stack, TaskState::Unknown, wake.start_ns)
            }
        };
        self.waits
            .count_ended(wake.tid, wait, wake.end_ns, |key, comm, weight| {
                self.tally.add(weight);
                self.retirement.seen(key.tgid);
                self.aggregator.count(key, comm, weight);
            });
    }

    /// Counts the waiting of every thread still switched out, up to now, so
    /// reports include threads that have been waiting all along.
    fn count_waits_in_progress(&mut self) {
        self.waits
            .count_in_progress(monotonic_ns(), |key, comm, weight| {
                self.tally.add(weight);
                self.retirement.seen(key.tgid);
                self.aggregator.count(key, comm, weight);
            });
    }

    /// Reads the local variables of each dumped thread's Python frames
    /// (`dump --locals`), as threads are ingested.
    pub fn collect_locals(&mut self) {
        self.locals = Some(HashMap::new());
    }

    /// Whether `pid` was found to run a Python whose frames can be read.
    pub fn is_python(&self, pid: u32) -> bool {
        self.ingest.python().is_python(pid)
    }

    /// Checks `pid` for Python now (a target named on the command line).
    pub fn check_python(&mut self, pid: u32) {
        self.ingest.python_mut().check(pid, &mut self.processes);
    }

    /// Python processes found (with what the sampler needs to read their
    /// frames) and gone, since the last call: new processes seen since are
    /// checked first.
    pub fn python_changes(&mut self) -> Vec<PythonChange> {
        for pid in std::mem::take(&mut self.python_candidates) {
            self.check_python(pid);
        }
        self.ingest.python_mut().take_changes()
    }

    /// Notes that process `tgid` was sampled; a process not seen before is
    /// checked for Python at the next [`Self::python_changes`].
    fn seen(&mut self, tgid: u32) {
        if self.retirement.seen(tgid) {
            self.python_candidates.push(tgid);
        }
    }

    /// A copied stack as typed frames, innermost first, and the thread's name.
    fn unwind(&mut self, sample: CopiedSample<'_>) -> (Vec<RawFrame>, String) {
        self.ingest.unwind(sample, &mut self.processes)
    }

    fn count(
        &mut self,
        tgid: u32,
        tid: u32,
        comm: &str,
        raw: &[RawFrame],
        state: TaskState,
        weight: u64,
    ) {
        self.tally.add(weight);
        self.seen(tgid);
        let (stack, new) = self.aggregator.add(tgid, tid, comm, raw, state, weight);
        if new {
            self.unlocated.push(stack);
        }
    }

    /// Retires processes that went quiet and have exited: their stacks are
    /// symbolized and merged by name, and everything kept per process is freed,
    /// so memory does not grow with the number of processes a run has seen.
    fn forget_exited(&mut self) {
        let Some(check) = self.retirement.check(Instant::now(), process::is_alive) else {
            return;
        };
        self.ingest.python_mut().forget_exited_threads();
        // Processes sampled lately may have exec'd: checked again for Python
        // (cheap when their mappings did not change).
        self.python_candidates.extend(check.recent);
        let mut exited: HashMap<u32, String> = check
            .exited
            .into_iter()
            .map(|pid| (pid, String::new()))
            .collect();
        if exited.is_empty() {
            return;
        }
        // Names need the addresses, which retiring drops.
        self.symbolize();
        for (pid, name) in exited.iter_mut() {
            if let Some(process) = self.processes.get(*pid) {
                name.clone_from(&process.comm);
            }
            self.ingest.forget(*pid);
            self.processes.forget(*pid);
        }
        // Their threads will not run again; their stacks are about to go.
        self.waits.forget(|tgid| exited.contains_key(&tgid));
        let freed = self.aggregator.retire(&exited, |stacks, name, stack| {
            self.resolver.merged(stacks, name, stack)
        });
        self.resolver
            .forget(|pid| exited.contains_key(&pid), &freed);
        log::debug!(
            "retired {} exited processes; {}",
            exited.len(),
            self.sizes()
        );
    }

    /// The sizes of what the pipeline keeps, for debug logs.
    fn sizes(&self) -> String {
        format!(
            "{} stacks, {} counts, {} processes, {} waiting threads, {}",
            self.aggregator.stacks.len(),
            self.aggregator.run().len(),
            self.processes.len(),
            self.waits.len(),
            self.resolver.sizes()
        )
    }

    pub fn locate_new_stacks(&mut self) {
        if self.unlocated.is_empty() {
            return;
        }
        self.resolver.locate(
            &self.aggregator.stacks,
            &self.unlocated,
            &mut self.processes,
        );
        self.unlocated.clear();
    }

    /// Names every frame a report may show.
    fn symbolize(&mut self) {
        self.locate_new_stacks();
        if !self.resolver.has_waiting() {
            return;
        }
        let started = Instant::now();
        self.resolver
            .symbolize(&self.aggregator.stacks, self.ingest.python());
        log::debug!("symbolized new stacks in {:?}", started.elapsed());
    }

    /// What reports are built from, once [`Self::symbolize`]d.
    fn inputs(&self) -> Inputs<'_> {
        Inputs {
            aggregator: &self.aggregator,
            frames: self.resolver.stack_frames(),
            processes: &self.processes,
        }
    }

    pub fn has_unreported_samples(&self) -> bool {
        self.tally.unreported > 0 || !self.waits.is_empty()
    }

    /// Writes the report of the interval that ends now, and queues it for
    /// `--push` when there is a pusher.
    pub fn write_report(
        &mut self,
        output: &mut Output,
        pusher: Option<&Pusher>,
        counters: &Counters,
    ) -> Result<()> {
        self.count_waits_in_progress();
        self.symbolize();
        let now = Local::now();
        let counts = self.aggregator.take_interval();
        let losses = Losses::from_counters(&counters.since(&self.tally.interval_counters));
        let report = report::build_report(
            self.run(),
            &self.rules,
            self.inputs(),
            &counts,
            (self.tally.interval_start, now),
            losses,
        );
        output.report(&report).context("writing the report")?;
        if let Some(pusher) = pusher {
            pusher.send(&report);
        }
        self.tally.interval_start = now;
        self.tally.interval_counters = *counters;
        self.tally.unreported = 0;
        Ok(())
    }

    /// Ends tracking switches: waits still in progress are counted up to
    /// now, when recording stopped, and no further.
    pub fn stop_tracking(&mut self) {
        self.count_waits_in_progress();
        self.waits.clear();
    }

    /// The run so far, for the status line.
    pub fn progress(&self, counters: &Counters) -> Progress {
        Progress {
            sampled: self.run().weight(self.tally.sampled),
            lost: Losses::from_counters(&counters.since(&self.tally.run_counters)).dropped(),
            processes: self.processes.len(),
        }
    }

    pub fn summary(&mut self, counters: &Counters) -> report::Summary {
        self.symbolize();
        let losses = Losses::from_counters(&counters.since(&self.tally.run_counters));
        report::build_summary(
            self.run(),
            self.inputs(),
            (self.tally.run_start, Local::now()),
            losses,
        )
    }

    /// The threads ingested since the last dump, grouped by stack.
    /// `syscalls` holds the system call each thread is in, if any.
    pub fn take_dump(&mut self, pid: u32, syscalls: HashMap<u32, i32>) -> ThreadDump {
        self.symbolize();
        let counts = self.aggregator.take_interval();
        self.tally.unreported = 0;
        let locals = self.locals.as_mut().map(std::mem::take);
        report::build_dump(
            pid,
            &self.rules,
            self.inputs(),
            &counts,
            report::ThreadDetails { syscalls, locals },
            Local::now(),
        )
    }
}
