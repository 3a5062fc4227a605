//! Samples on their way to reports, one way: the pipeline pulls records from
//! a [`SampleSource`], [`Ingest`] turns each into typed raw frames,
//! [`Counting`] counts them by stack, the [`Resolver`] names the stacks in
//! its own table, and [`crate::report`] builds reports, summaries and dumps
//! from those. What the stages learn on the way (which processes run
//! Python) goes back to the source.
//!
//! Recording ([`crate::app`]) and thread dumps ([`crate::dump`]) each drive one.
use std::{collections::HashMap, sync::Arc, time::Instant};

use anyhow::{Context as _, Result};
use chrono::Local;
use tripod_common::RecordKind;

use crate::{
    aggregate::{located_time, Origin},
    annotate::Rules,
    cgroup::CgroupNames,
    counting::{Counted, Counting},
    held::Held,
    ingest::Ingest,
    mappings::{self, MappingHistory, Scope},
    messages,
    model::{Counters, FrameLocals},
    output::{push::Pusher, Output, Progress},
    process::{self, ProcessTable, RecordedMapping, SharedFile},
    python::{Python, PythonChange},
    report::{self, Inputs, Losses, MappingRecordLosses, RunInfo, ThreadDump},
    resolve::Resolver,
    sampler::{
        drain_counted,
        sideband::{SideRecord, SidebandCounters},
        Record, Sample, SampleSource, UserStack,
    },
    task::TaskState,
    text::escape_controls,
    wait::{monotonic_ns, Weight},
};

pub struct Pipeline {
    /// What reports say about the run: recordings only (dumps have none).
    run: Option<RunInfo>,
    rules: Arc<Rules>,
    /// What is known of each process: its name, its mappings, its cgroup.
    processes: ProcessTable,
    /// The cgroup ids samples carry, named.
    cgroups: CgroupNames,
    /// What each process mapped and when, from the sideband's records.
    history: MappingHistory,
    /// Records younger than the sideband's watermark, until it passes them.
    held: Held,
    /// The sideband watermark of the last pull; `None` without a sideband.
    watermark: Option<u64>,
    /// The sideband's counters at the last pull.
    sideband_seen: Option<SidebandCounters>,
    /// How far the history may be released once this pull's stacks are
    /// located: every sample older than this was taken in.
    release_at: u64,
    ingest: Ingest,
    counting: Counting,
    resolver: Resolver,
    /// `dump --locals`: each dumped thread's Python local variables, by tid.
    locals: Option<HashMap<u32, Vec<FrameLocals>>>,
    /// `--cgroup`: the selected cgroups' paths, see [`Recording::cgroups`].
    selected_cgroups: Vec<String>,
    /// `--unwind tables`: a process got its first rows since
    /// [`Self::take_first_rows_sent`] last said.
    first_rows_sent: bool,
    /// The sideband records of one pull, kept to reuse the allocation.
    side_batch: Vec<SideRecord>,
}

/// What a sample taken in is counted as.
enum Taken {
    /// This many samples (a counted sample's count, else 1).
    Weight(u64),
    /// The start of a wait, at this CLOCK_MONOTONIC time: counted when it ends.
    WaitSince(u64),
}

/// What a pipeline starts from.
pub struct PipelineOptions {
    pub rules: Arc<Rules>,
    /// Processes known already (named targets, read before sampling starts).
    pub processes: ProcessTable,
    /// Whose mappings the sideband's records are kept for.
    pub history: Scope,
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
    /// `--cgroup`: the selected cgroups' paths (empty: no filter). The
    /// kernel filters samples and switches; the snapshot that seeds the
    /// waits in progress is filtered here (see [`Pipeline::seed_waits`]).
    pub cgroups: Vec<String>,
}

impl Pipeline {
    pub fn new(options: PipelineOptions) -> Self {
        // Dumps see no thread switching out: there are no waits to weigh.
        let weight = options
            .recording
            .as_ref()
            .map(|r| Weight::for_mode(r.run.mode, r.run.frequency, r.min_block_us));
        let selected_cgroups = options
            .recording
            .as_ref()
            .map(|r| r.cgroups.clone())
            .unwrap_or_default();
        Pipeline {
            selected_cgroups,
            run: options.recording.map(|r| r.run),
            rules: options.rules,
            processes: options.processes,
            cgroups: CgroupNames::new(),
            history: MappingHistory::new(options.history),
            held: Held::default(),
            watermark: None,
            sideband_seen: None,
            release_at: 0,
            ingest: Ingest::new(options.python, options.collect_user),
            counting: Counting::new(weight, options.counters),
            resolver: Resolver::new(),
            locals: None,
            first_rows_sent: false,
            side_batch: Vec::new(),
        }
    }

    /// What the run samples, described again once a command's pid is known.
    pub fn set_run(&mut self, run: RunInfo) {
        self.run = Some(run);
    }

    /// `--unwind tables`: whether a process got its first rows since the
    /// last call. They were built from its mappings as `/proc` showed them
    /// at its first copied stack, often just after its exec, before its
    /// libraries were mapped; its next copies, read soon, say so (see
    /// [`crate::cadence::Cadence::pull_soon`]).
    pub fn take_first_rows_sent(&mut self) -> bool {
        std::mem::take(&mut self.first_rows_sent)
    }

    /// Takes every record waiting in `source` (samples with their stacks,
    /// threads switching out and back in), then tells it about the Python
    /// processes found or gone.
    ///
    /// With a sideband, its records come first (a sample is located in the
    /// mappings they tell), and records younger than its watermark wait for
    /// a later pull: the records that locate them may not be handed over yet.
    ///
    /// Returns how many records the ring buffer handed over (sideband
    /// records are not counted: they say nothing was sampled).
    pub fn pull(&mut self, source: &mut dyn SampleSource) -> usize {
        let mut read = 0;
        match self.apply_sideband(source) {
            None => source.drain_copies(&mut |record| {
                read += 1;
                self.take_record(record)
            }),
            Some(watermark) => {
                let mut held = std::mem::take(&mut self.held);
                held.release(watermark, &mut |record| self.take_record(record));
                source.drain_copies(&mut |record| {
                    read += 1;
                    // Its process's rows are asked for now, even if the
                    // record waits for the sideband.
                    if let Record::Stack(Sample {
                        tgid,
                        time_ns,
                        user: UserStack::Copy { .. },
                        ..
                    }) = &record
                    {
                        self.ingest
                            .copied_stack_arrived(*tgid, *time_ns, &mut self.processes);
                    }
                    held.take(record, watermark, &mut |r| self.take_record(r))
                });
                self.held = held;
                let oldest = self.held.oldest_ns().unwrap_or(u64::MAX);
                self.release_at = self.release_at.min(oldest);
            }
        }
        // Now, while the history still holds what locates them.
        self.locate_new_stacks();
        self.tell_python(source);
        read
    }

    /// [`Self::pull`], and the records still waiting taken as they are: the
    /// run ends, no record that would locate them can come any more.
    pub fn pull_last(&mut self, source: &mut dyn SampleSource) {
        self.pull(source);
        let mut held = std::mem::take(&mut self.held);
        held.flush(&mut |record| self.take_record(record));
        self.held = held;
        self.locate_new_stacks();
        if self.held_stats().0 > 0 {
            log::debug!(
                "{} samples waited for sideband records, {} did not (too many waiting)",
                self.held.waited,
                self.held.overflowed
            );
        }
    }

    /// Records that waited for a later pull, and that were taken early
    /// because too many waited.
    pub fn held_stats(&self) -> (u64, u64) {
        (self.held.waited, self.held.overflowed)
    }

    /// Applies the sideband's new records to the history; returns its
    /// watermark, `None` without a sideband.
    fn apply_sideband(&mut self, source: &mut dyn SampleSource) -> Option<u64> {
        let mut batch = std::mem::take(&mut self.side_batch);
        let watermark = source.drain_sideband(&mut |record| batch.push(record))?;
        self.seed_forking_parents(&batch);
        for record in batch.drain(..) {
            self.apply_side_record(record);
        }
        self.side_batch = batch;
        self.sideband_seen = source.sideband_counters();
        // Samples older than the last pull's watermark were all taken by
        // now, but for the ones still held (see `pull`).
        self.release_at = self.watermark.replace(watermark).unwrap_or(0);
        Some(watermark)
    }

    fn apply_side_record(&mut self, record: SideRecord) {
        // Rows the kernel walks with describe the image before an exec, or a
        // process gone (its leader's exit): dropped at once. New code makes
        // them due for a rebuild.
        match &record {
            SideRecord::Comm(c) if c.exec => self.ingest.tables_exec(c.pid, c.time_ns),
            SideRecord::Exit(t) if t.pid == t.tid => self.ingest.tables_exited(t.pid, t.time_ns),
            SideRecord::Mmap(m) => self.ingest.tables_mapped(m.pid),
            _ => {}
        }
        // Opened now, while the process may still live and the file is most
        // likely the one mapped.
        if let SideRecord::Mmap(m) = &record {
            if self.history.tracked(m.pid) {
                self.processes.recorded_module(&RecordedMapping {
                    pid: m.pid,
                    start: m.start,
                    end: m.start.saturating_add(m.len),
                    path: &m.path,
                    identity: Some(mappings::file_check(&m.identity)),
                });
            }
        }
        self.history.apply(record);
    }

    /// Reads from `/proc`, before their forks are applied, the parents in
    /// `batch` whose mappings the history does not all know (they ran before
    /// the run): a child's copy is then complete, and its samples before its
    /// own exec (the parent's code: `fork`, `posix_spawn`, the `execve` call
    /// itself, whose user stack is its entry's) are located and named after
    /// the parent, not lost once the exec replaced them. Once per parent
    /// image; never for a parent that execs in this batch, whose `/proc` may
    /// show its next program already.
    fn seed_forking_parents(&mut self, batch: &[SideRecord]) {
        for record in batch {
            let SideRecord::Fork(task) = record else {
                continue;
            };
            let parent = task.ppid;
            let new_process = task.pid != parent;
            if !new_process || !self.history.tracked(task.pid) || !self.history.wants_seed(parent) {
                continue;
            }
            let execs =
                |r: &SideRecord| matches!(r, SideRecord::Comm(c) if c.exec && c.pid == parent);
            if batch.iter().any(execs) {
                continue;
            }
            let Some((_, views)) = self.processes.mappings(parent) else {
                continue;
            };
            self.history
                .seed(parent, mappings::seeds_from_views(&views));
            if let Some(process) = self.processes.get(parent) {
                self.history
                    .name_if_unnamed(parent, process.comm.as_bytes());
            }
        }
    }

    /// Takes what the kernel counted since the last call (`--unwind fp`),
    /// then locates the addresses of every stack not seen before, now, while
    /// their processes are most likely still alive, and retires the
    /// processes that exited. Symbols wait for the next report. Returns how
    /// many of the counted samples (distinct counts, not their weight) were
    /// the first of their process: more may follow soon, whose stacks are
    /// best located while it lives (a short-lived process's), where the
    /// samples of processes known already can wait for the next drain.
    pub async fn pull_counted(&mut self, source: &mut dyn SampleSource) -> Result<usize> {
        let started = Instant::now();
        let samples = drain_counted(source).await?;
        let drained = started.elapsed();
        let count = samples.len();
        let mut first_of_process = 0;
        for sample in samples {
            let weight = sample.count;
            first_of_process +=
                usize::from(self.take(sample, TaskState::Running, Taken::Weight(weight)));
        }
        let taken = started.elapsed();
        self.locate_new_stacks();
        // Every stack taken so far is located: what only older samples
        // could ask about goes.
        self.history.release_up_to(self.release_at);
        self.forget_exited();
        log::debug!(
            "pulled {count} counted samples ({first_of_process} of new processes): drained \
             in {drained:?}, taken by {taken:?}, located by {:?}",
            started.elapsed()
        );
        Ok(first_of_process)
    }

    /// One record: a sample on a CPU, a thread switching out, or one
    /// switching back in.
    fn take_record(&mut self, record: Record<'_>) {
        match record {
            Record::Stack(sample) if sample.kind == RecordKind::Blocked => self.begin_wait(sample),
            Record::Stack(sample) => {
                self.take(sample, TaskState::Running, Taken::Weight(1));
            }
            Record::Woke(wake) => {
                let processes = &mut self.processes;
                let comm = || processes.observe(wake.tgid, "").comm.clone();
                self.counting.end_wait(wake, comm);
            }
        }
    }

    /// Unwinds one sample and counts it in `state`, as `what` says; true
    /// when it is the first of its process.
    fn take(&mut self, sample: Sample<'_>, state: TaskState, what: Taken) -> bool {
        let (tgid, tid, cgroup_id) = (sample.tgid, sample.tid, sample.cgroup_id);
        let origin = self.origin(tgid, sample.time_ns);
        self.name_image(tgid, origin);
        let (raw, comm) = self
            .ingest
            .unwind(sample, &mut self.processes, &self.history);
        // The unwinding noted the process; its cgroup is the latest sample's.
        // Records of the task iterator (dumps, and waits already in progress
        // when tracking starts) carry no cgroup id: /proc says, once.
        let cgroups = &mut self.cgroups;
        match cgroup_id {
            0 => self
                .processes
                .default_cgroup(tgid, || crate::cgroup::of_process(tgid)),
            id => self
                .processes
                .set_cgroup(tgid, id, |id| cgroups.resolve(id)),
        }
        let counted = Counted {
            tgid,
            tid,
            comm: &comm,
            raw: &raw,
            state,
            origin,
        };
        let new_process = match what {
            Taken::Weight(weight) => self.counting.count(counted, weight),
            Taken::WaitSince(since_ns) => self.counting.begin_wait(counted, since_ns),
        };
        if new_process {
            self.ingest.check_python_later(tgid);
        }
        new_process
    }

    /// Names the image `origin` of `tgid` from the history, the first time
    /// one of its samples comes, if it began during the run (after an exec,
    /// the process has another name than the one `/proc` showed first).
    fn name_image(&mut self, tgid: u32, origin: Origin) {
        let aggregator = self.counting.aggregator_mut();
        if origin.image == 0 || aggregator.has_image_name(tgid, origin.image) {
            return;
        }
        let at = located_time(origin.time_ns);
        if let Some(comm) = self.history.comm(tgid, at) {
            let comm = String::from_utf8_lossy(comm);
            aggregator.name_image(tgid, origin.image, &escape_controls(comm.trim_end()));
        }
    }

    /// The image of `tgid` a sample taken at `time_ns` (0: a count, which
    /// keeps no time: the latest) belongs to; all one image without a sideband.
    fn origin(&self, tgid: u32, time_ns: u64) -> Origin {
        if self.watermark.is_none() {
            return Origin::default();
        }
        let at = located_time(time_ns);
        let image = self.history.image_id(tgid, at).map_or(0, |i| i.since_ns);
        Origin { image, time_ns }
    }

    fn begin_wait(&mut self, sample: Sample<'_>) {
        // Switched out while runnable: preempted, waiting for a CPU.
        let state = match TaskState::from_kernel(sample.state) {
            TaskState::Running => TaskState::Runnable,
            state => state,
        };
        let since_ns = sample.time_ns;
        self.take(sample, state, Taken::WaitSince(since_ns));
    }

    /// Threads that were already waiting when tracking switches started are
    /// never seen switching out: they are taken from a snapshot, counted
    /// from now as if they had just switched out, and the kernel is asked
    /// to report when they run again.
    ///
    /// The task iterator does not run as the threads it reads, so the kernel
    /// cannot check their cgroups: with `--cgroup`, threads of processes
    /// outside the selected cgroups (by `/proc/PID/cgroup`) are left out here.
    pub fn seed_waits(&mut self, source: &mut dyn SampleSource) -> Result<()> {
        let mut waiting = Vec::new();
        let mut selected: HashMap<u32, bool> = HashMap::new();
        let wanted = std::mem::take(&mut self.selected_cgroups);
        source.snapshot(&mut |thread| {
            let inside = *selected
                .entry(thread.tgid)
                .or_insert_with(|| in_cgroups(&wanted, thread.tgid));
            if inside && TaskState::from_kernel(thread.state).is_waiting() {
                waiting.push((thread.tid, thread.time_ns));
                self.begin_wait(thread);
            }
        })?;
        self.selected_cgroups = wanted;
        for (tid, since) in waiting {
            source.mark_blocked(tid, since)?;
        }
        self.locate_new_stacks();
        Ok(())
    }

    /// Tells `source` which processes run Python, found or gone since the
    /// last call: new processes seen since are checked first. A full map
    /// only costs those processes their Python frames.
    pub fn tell_python(&mut self, source: &mut dyn SampleSource) {
        self.tell_tables(source);
        for change in self.ingest.python_changes(&mut self.processes) {
            let applied = match change {
                PythonChange::Found(pid, process) => source.set_python_process(pid, Some(&process)),
                PythonChange::Gone(pid) => source.set_python_process(pid, None),
                PythonChange::ThreadsGone(tids) => source.forget_python_threads(&tids),
            };
            if let Err(error) = applied {
                messages::warn(&format!("warning: {error:#}"));
            }
        }
    }

    /// The files most live processes map (see [`ProcessTable::shared_files`]).
    pub fn shared_files(&mut self) -> Vec<SharedFile> {
        self.processes.shared_files()
    }

    /// Symbols read before sampling, not in the middle of it at the first
    /// retired process or report: the kernel's now if `kernel`, and those of
    /// the `shared` files on the symbolizer's thread meanwhile (see
    /// [`crate::resolve::Resolver::read_symbols_early`]).
    pub fn read_symbols_early(&mut self, shared: &[SharedFile], kernel: bool) {
        self.resolver.read_symbols_early(shared, kernel);
    }

    /// `--unwind tables`: loads the rows of the `shared` files now, then
    /// compiles the rows of processes as they are seen, starting with
    /// `pids` (the named targets), and hands them to the source at each
    /// [`Self::tell_python`].
    pub fn unwind_in_kernel(
        &mut self,
        pids: &[u32],
        shared: &[SharedFile],
        source: &mut dyn SampleSource,
    ) {
        let started = std::time::Instant::now();
        let files = self.ingest.prepare_tables(shared);
        if let Err(error) = source.load_unwind_files(&files) {
            messages::warn(&format!(
                "warning: {error:#}; their stacks are copied instead"
            ));
        }
        log::debug!(
            "rows of {} shared files loaded in {:?}",
            files.len(),
            started.elapsed()
        );
        for &pid in pids {
            self.ingest.queue_tables(pid);
        }
    }

    fn tell_tables(&mut self, source: &mut dyn SampleSource) {
        for pid in self.ingest.tables_gone() {
            if let Err(error) = source.forget_unwind_tables(pid) {
                messages::warn(&format!("warning: {error:#}"));
            }
        }
        let changes = self.ingest.table_changes(&mut self.processes);
        self.first_rows_sent |= changes.iter().any(|(pid, _)| !self.ingest.rows_sent(*pid));
        for (pid, mappings) in &changes {
            log::debug!("rows of pid {pid} sent: {} mappings", mappings.len());
            if let Err(error) = source.set_unwind_tables(*pid, mappings) {
                messages::warn(&format!(
                    "warning: {error:#}; its stacks are copied instead"
                ));
            }
        }
        let loaded_ns = monotonic_ns();
        self.ingest
            .tables_handed(changes.into_iter().map(|(pid, _)| pid), loaded_ns);
    }

    /// `--unwind tables`: one line on how stacks were unwound and what
    /// the row memory held; `None` in other modes.
    pub fn tables_summary(&self, source: &dyn SampleSource, counters: &Counters) -> Option<String> {
        use tripod_common::Counter;
        let usage = source.unwind_table_use()?;
        let (malformed, too_many) = self.ingest.uncompilable_tables();
        Some(messages::unwind_tables_summary(
            [
                counters.get(Counter::TableUnwound),
                counters.get(Counter::TableCounted),
                counters.get(Counter::TableNotCovered),
                counters.get(Counter::TableWalkFailed),
            ],
            [
                counters.get(Counter::TableMemoHit),
                counters.get(Counter::TableMemoMiss),
            ],
            &usage,
            (malformed, too_many),
        ))
    }

    /// Keeps the mapping history of `pid` from now on (a command started
    /// after the pipeline was set up).
    pub fn track(&mut self, pid: u32) {
        self.history.track(pid);
    }

    /// Checks `pid` for Python now (a target named on the command line);
    /// [`Self::tell_python`] tells the source.
    pub fn check_python(&mut self, pid: u32) {
        self.ingest.python_mut().check(pid, &mut self.processes);
        self.ingest.queue_tables(pid);
    }

    /// Whether `pid` was found to run a Python whose frames can be read.
    pub fn is_python(&self, pid: u32) -> bool {
        self.ingest.python().is_python(pid)
    }

    /// Reads the local variables of each dumped thread's Python frames
    /// (`dump --locals`), as threads are ingested.
    pub fn collect_locals(&mut self) {
        self.locals = Some(HashMap::new());
    }

    /// Retires processes that went quiet and have exited: their stacks are
    /// symbolized and merged by name, and everything kept per process is freed,
    /// so memory does not grow with the number of processes a run has seen.
    fn forget_exited(&mut self) {
        let Some(check) = self.counting.check_exited(process::exists) else {
            return;
        };
        self.ingest.python_mut().forget_exited_threads();
        // Processes sampled lately may have exec'd: checked again for Python
        // (cheap when their mappings did not change).
        for pid in check.recent {
            self.ingest.check_python_later(pid);
        }
        if check.exited.is_empty() {
            return;
        }
        // Names need the addresses, which retiring drops.
        self.symbolize();
        let mut exited = HashMap::new();
        for pid in check.exited {
            let name = self.processes.get(pid).map(|p| p.comm.clone());
            exited.insert(pid, name.unwrap_or_default());
            self.ingest.forget(pid);
            self.processes.forget(pid);
        }
        let resolver = &mut self.resolver;
        let freed = self.counting.retire(&exited, |stacks, name, stack| {
            resolver.merged(stacks, name, stack)
        });
        self.resolver
            .forget(|pid| exited.contains_key(&pid), &freed);
        release_freed_memory();
        log::debug!(
            "retired {} exited processes; {}, {} processes, {}, history {:?}, {} held, unwinder {}",
            exited.len(),
            self.counting.sizes(),
            self.processes.len(),
            self.resolver.sizes(),
            self.history.stats(),
            self.held.len(),
            self.ingest.sizes(),
        );
    }

    /// Locates the addresses of the stacks counted since the last call.
    fn locate_new_stacks(&mut self) {
        let new = self.counting.take_new_stacks();
        if !new.is_empty() {
            let stacks = &self.counting.aggregator().stacks;
            let history = &self.history;
            self.resolver
                .locate(stacks, &new, &mut self.processes, history);
        }
    }

    /// Names every frame a report may show.
    fn symbolize(&mut self) {
        self.locate_new_stacks();
        if !self.resolver.has_waiting() {
            return;
        }
        let started = Instant::now();
        let stacks = &self.counting.aggregator().stacks;
        self.resolver.symbolize(stacks, self.ingest.python());
        log::debug!("symbolized new stacks in {:?}", started.elapsed());
    }

    /// What reports are built from, once [`Self::symbolize`]d.
    fn inputs(&self) -> Inputs<'_> {
        Inputs {
            aggregator: self.counting.aggregator(),
            frames: self.resolver.stack_frames(),
            processes: &self.processes,
        }
    }

    /// What reports say about the run: recordings only.
    fn run(&self) -> &RunInfo {
        self.run
            .as_ref()
            .expect("reports are written by the pipelines of recordings")
    }

    /// Whether records wait for the sideband to locate them: the rings
    /// are then read again soon even if nothing wakes them.
    pub fn holds_records(&self) -> bool {
        !self.held.is_empty()
    }

    pub fn has_unreported_samples(&self) -> bool {
        self.counting.has_unreported()
    }

    /// Writes the report of the interval that ends now, and queues it for
    /// `--push` when there is a pusher.
    pub fn write_report(
        &mut self,
        output: &mut Output,
        pusher: Option<&Pusher>,
        counters: &Counters,
    ) -> Result<()> {
        let report = self.take_report(counters);
        output.report(&report).context("writing the report")?;
        if let Some(pusher) = pusher {
            pusher.send(&report);
        }
        Ok(())
    }

    /// The report of the interval that ends now, named, for a caller that
    /// shows it itself (`top`); the next interval starts empty.
    pub fn take_report(&mut self, counters: &Counters) -> report::Report {
        self.counting.count_waits_in_progress();
        self.symbolize();
        let interval = self.counting.take_interval(Local::now(), counters);
        report::build_report(
            self.run(),
            &self.rules,
            self.inputs(),
            &interval.counts,
            interval.span,
            Losses::from_counters(&interval.counters),
        )
    }

    /// Ends tracking switches: waits still in progress are counted up to
    /// now, when recording stopped, and no further.
    pub fn stop_tracking(&mut self) {
        self.counting.stop_tracking();
    }

    /// The run so far, for the status line.
    pub fn progress(&self, counters: &Counters) -> Progress {
        let tally = self.counting.tally();
        let (_, grown) = tally.run(Local::now(), counters);
        Progress {
            sampled: self.run().weight(tally.sampled()),
            lost: Losses::from_counters(&grown).dropped(),
            processes: self.processes.len(),
        }
    }

    pub fn summary(&mut self, counters: &Counters) -> report::Summary {
        self.symbolize();
        let (span, grown) = self.counting.tally().run(Local::now(), counters);
        let mapping_records = MappingRecordLosses {
            lost: self.sideband_seen.map_or(0, |c| c.lost),
            unreadable: self.sideband_seen.map_or(0, |c| c.malformed),
            samples_not_waited: self.held.overflowed,
        };
        report::build_summary(
            self.run(),
            self.inputs(),
            span,
            (Losses::from_counters(&grown), mapping_records),
        )
    }

    /// Every thread of process `pid` as it is now, from `source`, grouped by
    /// stack; `None` when the source showed no thread of it.
    pub fn dump(&mut self, source: &mut dyn SampleSource, pid: u32) -> Result<Option<ThreadDump>> {
        self.tell_python(source);
        let mut syscalls = HashMap::new();
        let mut threads = 0;
        source.snapshot(&mut |thread| {
            threads += 1;
            if let Some(number) = thread.syscall {
                syscalls.insert(thread.tid, number);
            }
            self.take_snapshot(thread);
        })?;
        if threads == 0 {
            return Ok(None);
        }
        self.symbolize();
        let interval = self
            .counting
            .take_interval(Local::now(), &Counters::default());
        let locals = self.locals.as_mut().map(std::mem::take);
        Ok(Some(report::build_dump(
            pid,
            &self.rules,
            self.inputs(),
            &interval.counts,
            report::ThreadDetails { syscalls, locals },
            interval.span.1,
        )))
    }

    /// One thread of a dump: counted once, in the state it is in.
    fn take_snapshot(&mut self, sample: Sample<'_>) {
        if let Some(locals) = &mut self.locals {
            let frames = &sample.python.frames;
            let found = self.ingest.python_mut().locals(sample.tgid, frames);
            locals.insert(sample.tid, found);
        }
        let state = TaskState::from_kernel(sample.state);
        self.take(sample, state, Taken::Weight(1));
    }
}

/// Whether process `pid` is in one of the cgroups `paths` or below one;
/// always with no paths (no `--cgroup`).
fn in_cgroups(paths: &[String], pid: u32) -> bool {
    if paths.is_empty() {
        return true;
    }
    let Some(cgroup) = crate::cgroup::of_process(pid) else {
        return false;
    };
    paths
        .iter()
        .any(|path| crate::cgroup::is_within(&cgroup.path, path))
}

/// Gives the pages of memory freed by retiring back to the system. glibc's
/// allocator returns only the top of its heap by itself; what retiring
/// frees lies between the stacks that stay, and under churn the holes
/// would grow the resident size by a third.
fn release_freed_memory() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
