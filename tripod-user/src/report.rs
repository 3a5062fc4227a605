//! What the output formats render: symbolized stacks with counts, for one
//! interval, and the summary of a whole run. Built from the aggregator's
//! counts and the resolver's frames ([`Inputs`]); holds no addresses that
//! still need work.
use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use chrono::{DateTime, Local};
use tripod_common::Counter;

use crate::{
    aggregate::{Aggregator, StackId, ThreadStack},
    annotate::Rules,
    config::Mode,
    model::{Cgroup, Counters, Frame, FrameKind, FrameLocals, EXITED_PID},
    process::ProcessTable,
    resolve::{Frames, StackFrames},
    task::TaskState,
};

/// Samples that were not recorded whole, from the kernel's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Losses {
    /// Samples dropped entirely: the count map was full.
    pub count_map_full: u64,
    /// Samples dropped entirely: the ring buffer of stack copies was full.
    pub ring_buffer_full: u64,
    pub user: StackErrors,
    pub kernel: StackErrors,
    /// Not lost: samples whose stack the stack map had no room for (hash
    /// collision or full), sent whole through the ring buffer instead.
    pub stack_map_sent: u64,
}

/// Mapping records (mmap, exec, fork, exit) the run missed, and samples
/// that could not wait for theirs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MappingRecordLosses {
    /// Records the kernel dropped: a sideband ring was full.
    pub lost: u64,
    /// Records that could not be read.
    pub unreadable: u64,
    /// Samples handed on before the records that locate them could come
    /// (too many were waiting).
    pub samples_not_waited: u64,
}

/// Stacks that `bpf_get_stackid` could not store, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackErrors {
    /// EFAULT: nothing readable (normal for the user stack of kernel threads).
    pub unreadable: u64,
    /// EEXIST: another stack already had the same hash bucket.
    pub collisions: u64,
    /// ENOMEM: the stack map was full.
    pub map_full: u64,
    pub other: u64,
}

impl StackErrors {
    fn add(&mut self, other: &StackErrors) {
        self.unreadable += other.unreadable;
        self.collisions += other.collisions;
        self.map_full += other.map_full;
        self.other += other.other;
    }

    /// Stacks lost for lack of room, which a bigger `--stack-storage-size` fixes.
    pub fn storage(&self) -> u64 {
        self.collisions + self.map_full
    }
}

impl Losses {
    /// Adds another interval's losses to these.
    pub fn add(&mut self, other: &Losses) {
        self.count_map_full += other.count_map_full;
        self.ring_buffer_full += other.ring_buffer_full;
        self.user.add(&other.user);
        self.kernel.add(&other.kernel);
        self.stack_map_sent += other.stack_map_sent;
    }

    /// Samples that did not make it into any stack.
    pub fn dropped(&self) -> u64 {
        self.count_map_full + self.ring_buffer_full
    }

    pub fn from_counters(c: &Counters) -> Losses {
        Losses {
            count_map_full: c.get(Counter::CountMapFull),
            ring_buffer_full: c.get(Counter::RingBufferFull),
            user: StackErrors {
                unreadable: c.get(Counter::UserStackFault),
                collisions: c.get(Counter::UserStackCollision),
                map_full: c.get(Counter::UserStackMapFull),
                other: c.get(Counter::UserStackOther),
            },
            kernel: StackErrors {
                unreadable: c.get(Counter::KernelStackFault),
                collisions: c.get(Counter::KernelStackCollision),
                map_full: c.get(Counter::KernelStackMapFull),
                other: c.get(Counter::KernelStackOther),
            },
            stack_map_sent: c.get(Counter::StackMapSent),
        }
    }
}

/// Facts about the run every report repeats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunInfo {
    /// What was sampled, for people: `pid 4242`, `all processes`, `command ./x`.
    pub target: String,
    /// What the counts measure.
    pub mode: Mode,
    pub frequency: u64,
    /// The perf event: `cpu-clock` or `cycles`.
    pub event: String,
    pub per_thread: bool,
    pub stack_storage_size: u32,
    pub count_map_size: u32,
    /// How user stacks were unwound: `fp`, `dwarf` or `auto`.
    pub unwind: String,
    pub ring_buffer_size: u32,
}

impl RunInfo {
    /// A count in this run's unit: `12 samples`, `1500 µs off-CPU`.
    pub fn weight(&self, count: u64) -> String {
        match self.mode {
            Mode::OffCpu => format!("{count} µs off-CPU"),
            Mode::Cpu | Mode::Wall => format!("{count} samples"),
        }
    }
}

/// One distinct stack of a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackReport {
    pub pid: u32,
    /// The process name.
    pub comm: String,
    /// The process's pid in its own pid namespace, when not tripod-bpf's.
    pub ns_pid: Option<u32>,
    /// The process's cgroup and container (none for merged exited processes).
    pub cgroup: Option<Arc<Cgroup>>,
    /// With `--per-thread`: the thread and its name.
    pub thread: Option<(u32, String)>,
    /// Threads whose samples were merged into this stack.
    pub tids: Vec<u32>,
    /// Samples, or microseconds off-CPU (see [`RunInfo::mode`]).
    pub count: u64,
    /// Running for on-CPU samples; the state the threads waited in otherwise.
    pub state: TaskState,
    /// What the first matching annotation rule says the threads were doing.
    pub annotation: Option<String>,
    /// Outermost first; kernel frames last.
    pub frames: Arc<[Arc<Frame>]>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadReport {
    pub tid: u32,
    pub comm: String,
    pub samples: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessReport {
    pub pid: u32,
    /// Its pid in its own pid namespace, when that is not tripod-bpf's.
    pub ns_pid: Option<u32>,
    pub comm: String,
    pub exe: Option<String>,
    /// The cgroup it was last sampled in, and the container that names.
    pub cgroup: Option<Arc<Cgroup>>,
    pub samples: u64,
    pub threads: Vec<ThreadReport>,
}

/// What was sampled in one interval (the whole run when there are no intervals).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub run: RunInfo,
    pub start: DateTime<Local>,
    pub end: DateTime<Local>,
    /// Samples recorded (the sum of the stack counts).
    pub samples: u64,
    pub losses: Losses,
    /// Most frequent first.
    pub stacks: Vec<StackReport>,
    /// Most sampled first.
    pub processes: Vec<ProcessReport>,
}

/// A stack seen in more than one thread or process over the run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Duplicate {
    pub count: u64,
    pub threads: usize,
    pub processes: usize,
    /// Function names, outermost first.
    pub functions: Vec<String>,
}

/// How complete one process's user stacks were.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completeness {
    pub pid: u32,
    pub comm: String,
    /// Samples with user frames.
    pub samples: u64,
    /// Samples whose outermost frame is a thread root (`_start`, `clone`,
    /// `clone3`, `start_thread`): the unwinder reached the bottom.
    pub complete: u64,
    /// Samples whose unwinding stopped early (a `[truncated]` frame).
    pub truncated: u64,
}

impl Completeness {
    pub fn percent_complete(&self) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            self.complete as f64 * 100.0 / self.samples as f64
        }
    }
}

/// True for the functions where a thread's stack begins.
pub fn is_thread_root(function: &str) -> bool {
    let name = function.trim_start_matches("__GI_").trim_start_matches('_');
    matches!(name, "start" | "clone" | "clone3" | "start_thread")
}

/// Most processes listed with their stack completeness.
const MAX_COMPLETENESS: usize = 20;

/// The whole run, written after the last report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub run: RunInfo,
    pub start: DateTime<Local>,
    pub end: DateTime<Local>,
    pub samples: u64,
    pub distinct_stacks: usize,
    pub processes: usize,
    pub threads: usize,
    pub losses: Losses,
    /// What the kernel's mapping records (the sideband) missed; all zero
    /// without a sideband.
    pub mapping_records: MappingRecordLosses,
    /// Most samples first.
    pub duplicates: Vec<Duplicate>,
    /// Per process, most samples first.
    pub completeness: Vec<Completeness>,
}

impl Summary {
    /// What to change when something was lost, one sentence each.
    pub fn hints(&self) -> Vec<String> {
        let mut hints = Vec::new();
        let losses = &self.losses;
        if losses.count_map_full > 0 {
            hints.push(format!(
                "{} samples were lost because the count map was full; consider --count-map-size {}",
                losses.count_map_full,
                self.run.count_map_size.saturating_mul(2)
            ));
        }
        if losses.ring_buffer_full > 0 {
            hints.push(format!(
                "{} samples were dropped because the stack-copy ring buffer was full; \
                 consider --ring-buffer-size {}",
                losses.ring_buffer_full,
                self.run.ring_buffer_size.saturating_mul(2)
            ));
        }
        let storage = losses.user.storage() + losses.kernel.storage();
        if storage > 0 {
            hints.push(format!(
                "{storage} stack traces could not be stored (hash collision or full stack map); \
                 consider --stack-storage-size {}",
                self.run.stack_storage_size.saturating_mul(2)
            ));
        }
        if losses.stack_map_sent > 0 {
            hints.push(format!(
                "{} stacks found no room in the stack map (hash collision or full) and were \
                 sent whole through the ring buffer instead; --stack-storage-size {} keeps \
                 more of them in the kernel",
                losses.stack_map_sent,
                self.run.stack_storage_size.saturating_mul(2)
            ));
        }
        let records = &self.mapping_records;
        if records.lost + records.unreadable > 0 {
            hints.push(format!(
                "{} mapping records were lost (processes started or mapped files faster than \
                 they could be read); samples of those processes were located from /proc \
                 while they ran, else marked unknown",
                records.lost + records.unreadable
            ));
        }
        if records.samples_not_waited > 0 {
            hints.push(format!(
                "{} samples could not wait for their mapping records (too many waiting) and \
                 may show unknown frames; the machine was too busy to drain in time",
                records.samples_not_waited
            ));
        }
        hints
    }
}

/// Most duplicates listed in a summary.
const MAX_DUPLICATES: usize = 20;

/// What reports are built from: the counts' stacks and thread names, the
/// frames of those stacks, and what is known of their processes.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    pub aggregator: &'a Aggregator,
    pub frames: &'a StackFrames,
    pub processes: &'a ProcessTable,
}

impl Inputs<'_> {
    /// The frames of a stack; none when it was never symbolized.
    fn frames(&self, stack: StackId) -> Frames {
        self.frames
            .get(stack)
            .cloned()
            .unwrap_or_else(|| Arc::from(Vec::new()))
    }

    /// The process name; for [`EXITED_PID`], that of a merged stack.
    fn process_name(&self, pid: u32, stack: Option<StackId>) -> String {
        if pid == EXITED_PID {
            let name = stack.and_then(|s| self.aggregator.exited_name(s));
            return name.unwrap_or("exited processes").to_string();
        }
        if let Some(name) = stack.and_then(|s| self.aggregator.image_name(s)) {
            return name.to_string();
        }
        self.processes
            .get(pid)
            .map(|p| p.comm.clone())
            .unwrap_or_else(|| format!("pid {pid}"))
    }

    /// The cgroup of a process still in the table.
    fn cgroup(&self, pid: u32) -> Option<Arc<Cgroup>> {
        self.processes.get(pid).and_then(|p| p.cgroup.clone())
    }

    fn thread_name(&self, tid: u32) -> String {
        self.aggregator.thread_name(tid).unwrap_or("?").to_string()
    }
}

/// Counts merged by (pid, tid or 0, stack, state), with the threads merged.
type Merged = HashMap<(u32, u32, StackId, TaskState), (u64, BTreeSet<u32>)>;

/// Builds the report of one interval from its counts.
pub fn build_report(
    run: &RunInfo,
    rules: &Rules,
    inputs: Inputs<'_>,
    counts: &HashMap<ThreadStack, u64>,
    (start, end): (DateTime<Local>, DateTime<Local>),
    losses: Losses,
) -> Report {
    // Merge threads unless asked to keep them apart.
    let mut merged: Merged = HashMap::new();
    let mut by_process: HashMap<u32, HashMap<u32, u64>> = HashMap::new();
    for (key, &count) in counts {
        let tid_key = if run.per_thread { key.tid } else { 0 };
        let slot = merged
            .entry((key.tgid, tid_key, key.stack, key.state))
            .or_default();
        slot.0 += count;
        if key.tgid != EXITED_PID {
            slot.1.insert(key.tid);
        }
        *by_process
            .entry(key.tgid)
            .or_default()
            .entry(key.tid)
            .or_default() += count;
    }
    Report {
        run: run.clone(),
        start,
        end,
        samples: counts.values().sum(),
        losses,
        stacks: stack_reports(run.per_thread, rules, inputs, merged),
        processes: process_reports(inputs, by_process),
    }
}

/// The stacks of a report, most frequent first.
fn stack_reports(
    per_thread: bool,
    rules: &Rules,
    inputs: Inputs<'_>,
    merged: Merged,
) -> Vec<StackReport> {
    let mut keys: Vec<_> = merged.into_iter().collect();
    keys.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(&b.0)));
    keys.into_iter()
        .map(|((pid, tid, stack, state), (count, tids))| {
            let frames = inputs.frames(stack);
            StackReport {
                pid,
                comm: inputs.process_name(pid, Some(stack)),
                ns_pid: inputs.processes.get(pid).and_then(|p| p.ns_pid),
                cgroup: inputs.cgroup(pid),
                thread: per_thread.then(|| (tid, inputs.thread_name(tid))),
                tids: tids.into_iter().collect(),
                count,
                state,
                annotation: rules.annotate(&frames, state).map(str::to_string),
                frames,
            }
        })
        .collect()
}

/// The processes of a report with their threads, most sampled first.
fn process_reports(
    inputs: Inputs<'_>,
    by_process: HashMap<u32, HashMap<u32, u64>>,
) -> Vec<ProcessReport> {
    let mut reports: Vec<ProcessReport> = by_process
        .into_iter()
        .map(|(pid, threads)| {
            let mut threads: Vec<ThreadReport> = threads
                .into_iter()
                .map(|(tid, samples)| ThreadReport {
                    tid,
                    comm: inputs.thread_name(tid),
                    samples,
                })
                .collect();
            threads.sort_by(|a, b| b.samples.cmp(&a.samples).then(a.tid.cmp(&b.tid)));
            let process = inputs.processes.get(pid);
            ProcessReport {
                pid,
                ns_pid: process.and_then(|p| p.ns_pid),
                comm: inputs.process_name(pid, None),
                exe: process.and_then(|p| shown_exe(p.exe.as_deref())),
                cgroup: inputs.cgroup(pid),
                samples: threads.iter().map(|t| t.samples).sum(),
                threads,
            }
        })
        .collect();
    reports.sort_by(|a, b| b.samples.cmp(&a.samples).then(a.pid.cmp(&b.pid)));
    reports
}

/// The executable's path as reports show it. The process table keeps it raw,
/// to compare with mapped paths; the file name is the target's choice.
fn shown_exe(exe: Option<&str>) -> Option<String> {
    exe.map(|path| crate::text::escape_controls(path).into_owned())
}

/// One thread of a dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpedThread {
    pub tid: u32,
    pub name: String,
    pub state: TaskState,
    /// The system call it is in (`futex`, `read`), when it is in one.
    pub syscall: Option<String>,
    /// With `dump --locals`: the local variables of its Python frames,
    /// outermost first (empty for threads running no Python).
    pub locals: Option<Vec<FrameLocals>>,
}

/// What a dump knows about its threads besides their stacks, by tid.
#[derive(Debug, Default)]
pub struct ThreadDetails {
    /// The system call each thread is in, if any.
    pub syscalls: HashMap<u32, i32>,
    /// With `dump --locals`: each thread's Python frames with their local variables.
    pub locals: Option<HashMap<u32, Vec<FrameLocals>>>,
}

/// Threads of a dump with the same stack in the same state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadGroup {
    /// Ascending.
    pub tids: Vec<u32>,
    pub state: TaskState,
    /// What the first matching annotation rule says these threads are doing.
    pub annotation: Option<String>,
    /// Outermost first; kernel frames last.
    pub frames: Arc<[Arc<Frame>]>,
}

impl ThreadGroup {
    /// The threads `tids` in `state` at `frames`, annotated by `rules`.
    pub fn new(
        rules: &Rules,
        mut tids: Vec<u32>,
        state: TaskState,
        frames: Arc<[Arc<Frame>]>,
    ) -> ThreadGroup {
        tids.sort_unstable();
        ThreadGroup {
            annotation: rules.annotate(&frames, state).map(str::to_string),
            tids,
            state,
            frames,
        }
    }

    /// Orders a dump's groups as every dump shows them: the largest first,
    /// then by their first thread.
    pub fn largest_first(groups: &mut [ThreadGroup]) {
        groups.sort_by(|a, b| b.tids.len().cmp(&a.tids.len()).then(a.tids.cmp(&b.tids)));
    }
}

/// A snapshot of every thread of one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadDump {
    pub pid: u32,
    /// Its pid in its own pid namespace, when that is not tripod-bpf's.
    pub ns_pid: Option<u32>,
    pub comm: String,
    pub exe: Option<String>,
    /// Its cgroup and container, from `/proc/PID/cgroup`.
    pub cgroup: Option<Arc<Cgroup>>,
    pub time: DateTime<Local>,
    /// By tid.
    pub threads: Vec<DumpedThread>,
    /// Largest group first.
    pub groups: Vec<ThreadGroup>,
}

/// Groups the threads of one dump (`counts` holds each thread once) by stack.
pub fn build_dump(
    pid: u32,
    rules: &Rules,
    inputs: Inputs<'_>,
    counts: &HashMap<ThreadStack, u64>,
    mut details: ThreadDetails,
    time: DateTime<Local>,
) -> ThreadDump {
    let mut by_stack: HashMap<(StackId, TaskState), Vec<u32>> = HashMap::new();
    let mut threads = Vec::new();
    for key in counts.keys() {
        by_stack
            .entry((key.stack, key.state))
            .or_default()
            .push(key.tid);
        threads.push(DumpedThread {
            tid: key.tid,
            name: inputs.thread_name(key.tid),
            state: key.state,
            syscall: details
                .syscalls
                .get(&key.tid)
                .map(|&number| syscall_name(number)),
            locals: details
                .locals
                .as_mut()
                .map(|locals| locals.remove(&key.tid).unwrap_or_default()),
        });
    }
    threads.sort_by_key(|t| t.tid);
    let mut groups: Vec<ThreadGroup> = by_stack
        .into_iter()
        .map(|((stack, state), tids)| ThreadGroup::new(rules, tids, state, inputs.frames(stack)))
        .collect();
    ThreadGroup::largest_first(&mut groups);
    let process = inputs.processes.get(pid);
    ThreadDump {
        pid,
        ns_pid: process.and_then(|p| p.ns_pid),
        comm: process.map(|p| p.comm.clone()).unwrap_or_default(),
        exe: process.and_then(|p| shown_exe(p.exe.as_deref())),
        cgroup: process.and_then(|p| p.cgroup.clone()),
        time,
        threads,
        groups,
    }
}

/// `read`, `futex`: the name of an x86_64 system call number.
pub fn syscall_name(number: i32) -> String {
    usize::try_from(number)
        .ok()
        .and_then(syscalls::Sysno::new)
        .map(|sysno| sysno.name().to_string())
        .unwrap_or_else(|| format!("syscall {number}"))
}

/// Builds the summary of the whole run.
pub fn build_summary(
    run: &RunInfo,
    inputs: Inputs<'_>,
    (start, end): (DateTime<Local>, DateTime<Local>),
    (losses, mapping_records): (Losses, MappingRecordLosses),
) -> Summary {
    let aggregator = inputs.aggregator;
    let counts = aggregator.run();
    Summary {
        run: run.clone(),
        start,
        end,
        samples: counts.values().sum(),
        distinct_stacks: aggregator.stacks.len(),
        processes: counts
            .keys()
            .map(|k| k.tgid)
            .filter(|&pid| pid != EXITED_PID)
            .collect::<BTreeSet<_>>()
            .len()
            + aggregator.exited_processes(),
        threads: counts
            .keys()
            .map(|k| (k.tgid, k.tid))
            .collect::<BTreeSet<_>>()
            .len(),
        losses,
        mapping_records,
        duplicates: duplicates(inputs.frames, counts),
        completeness: completeness(inputs, counts),
    }
}

/// Stacks seen in more than one thread, by what their frames show; most
/// samples first.
fn duplicates(frames: &StackFrames, counts: &HashMap<ThreadStack, u64>) -> Vec<Duplicate> {
    // Function names -> (samples, the (pid, tid) pairs that had them).
    type Seen = (u64, BTreeSet<(u32, u32)>);
    let mut by_functions: HashMap<Vec<String>, Seen> = HashMap::new();
    for (key, &count) in counts {
        let Some(frames) = frames.get(key.stack) else {
            continue;
        };
        let functions = frames.iter().map(|f| f.short_name()).collect();
        let slot = by_functions.entry(functions).or_default();
        slot.0 += count;
        slot.1.insert((key.tgid, key.tid));
    }
    let mut duplicates: Vec<Duplicate> = by_functions
        .into_iter()
        .filter(|(_, (_, threads))| threads.len() > 1)
        .map(|(functions, (count, threads))| Duplicate {
            count,
            threads: threads.len(),
            processes: threads
                .iter()
                .map(|(pid, _)| pid)
                .collect::<BTreeSet<_>>()
                .len(),
            functions,
        })
        .collect();
    duplicates.sort_by(|a, b| b.count.cmp(&a.count).then(a.functions.cmp(&b.functions)));
    duplicates.truncate(MAX_DUPLICATES);
    duplicates
}

/// How complete each process's user stacks were; most samples first.
fn completeness(inputs: Inputs<'_>, counts: &HashMap<ThreadStack, u64>) -> Vec<Completeness> {
    let mut by_process: HashMap<u32, Completeness> = HashMap::new();
    for (key, &count) in counts {
        let Some(frames) = inputs.frames.get(key.stack) else {
            continue;
        };
        let mut user = frames.iter().filter(|f| !f.kernel).peekable();
        let Some(outermost) = user.peek().cloned() else {
            continue;
        };
        // `--python-only` dropped the native frames: there is no thread root to reach.
        if outermost.kind == FrameKind::Python
            && !frames.iter().any(|f| f.kind == FrameKind::Truncated)
        {
            continue;
        }
        let entry = by_process.entry(key.tgid).or_insert_with(|| Completeness {
            pid: key.tgid,
            comm: if key.tgid == EXITED_PID {
                "all of them".into()
            } else {
                inputs
                    .processes
                    .get(key.tgid)
                    .map(|p| p.comm.clone())
                    .unwrap_or_default()
            },
            samples: 0,
            complete: 0,
            truncated: 0,
        });
        entry.samples += count;
        if user.any(|f| f.kind == FrameKind::Truncated) {
            entry.truncated += count;
        } else if outermost.function.as_deref().is_some_and(is_thread_root) {
            entry.complete += count;
        }
    }
    let mut completeness: Vec<Completeness> = by_process.into_values().collect();
    completeness.sort_by(|a, b| b.samples.cmp(&a.samples).then(a.pid.cmp(&b.pid)));
    completeness.truncate(MAX_COMPLETENESS);
    completeness
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::{RawFrame, Space};

    const RUNNING: TaskState = TaskState::Running;

    fn function(name: &str) -> Arc<Frame> {
        Arc::new(Frame {
            function: Some(name.into()),
            ..Frame::code(false, Some(0x1000))
        })
    }

    /// Counts and frames built by hand, as the aggregator and resolver would.
    struct Fixture {
        aggregator: Aggregator,
        frames: StackFrames,
        processes: ProcessTable,
    }

    impl Fixture {
        fn new() -> Self {
            Fixture {
                aggregator: Aggregator::new(),
                frames: StackFrames::default(),
                processes: ProcessTable::new(),
            }
        }

        /// Counts `count` of a stack showing `functions` (outermost first).
        fn add(&mut self, (tgid, tid): (u32, u32), functions: &[&str], count: u64) -> StackId {
            let raw: Vec<RawFrame> = functions
                .iter()
                .map(|f| {
                    f.bytes()
                        .fold(1, |h: u64, b| h.wrapping_mul(31) ^ u64::from(b))
                })
                .map(|address| RawFrame::ReturnAddress(Space::User, address))
                .collect();
            let (id, _) = self
                .aggregator
                .add(tgid, tid, &format!("t{tid}"), &raw, RUNNING, count);
            let frames = functions.iter().map(|f| function(f)).collect();
            self.frames.insert(id, frames);
            id
        }

        fn inputs(&self) -> Inputs<'_> {
            Inputs {
                aggregator: &self.aggregator,
                frames: &self.frames,
                processes: &self.processes,
            }
        }
    }

    fn run(per_thread: bool) -> RunInfo {
        RunInfo {
            target: "pid 10".into(),
            mode: Mode::Cpu,
            frequency: 99,
            event: "cpu-clock".into(),
            per_thread,
            stack_storage_size: 1,
            count_map_size: 1,
            unwind: "dwarf".into(),
            ring_buffer_size: 1,
        }
    }

    fn report(fixture: &mut Fixture, per_thread: bool) -> Report {
        let counts = fixture.aggregator.take_interval();
        let now = Local::now();
        build_report(
            &run(per_thread),
            &Rules::builtin(),
            fixture.inputs(),
            &counts,
            (now, now),
            Losses::default(),
        )
    }

    #[test]
    fn threads_merge_unless_per_thread() {
        let mut fixture = Fixture::new();
        fixture.add((10, 11), &["main", "work"], 5);
        fixture.add((10, 12), &["main", "work"], 2);
        fixture.add((10, 12), &["main", "idle"], 3);
        let merged = report(&mut fixture, false);
        assert_eq!(merged.samples, 10);
        let stacks: Vec<_> = merged
            .stacks
            .iter()
            .map(|s| (s.count, s.tids.clone(), s.thread.clone(), s.comm.clone()))
            .collect();
        assert_eq!(
            stacks,
            [
                (7, vec![11, 12], None, "pid 10".to_string()),
                (3, vec![12], None, "pid 10".to_string())
            ]
        );
        assert_eq!(merged.stacks[0].frames[1].function.as_deref(), Some("work"));
        assert_eq!(merged.processes.len(), 1);
        let threads: Vec<_> = merged.processes[0]
            .threads
            .iter()
            .map(|t| (t.tid, t.comm.as_str(), t.samples))
            .collect();
        assert_eq!(threads, [(11, "t11", 5), (12, "t12", 5)]);
    }

    #[test]
    fn per_thread_stacks_name_their_thread() {
        let mut fixture = Fixture::new();
        fixture.add((10, 11), &["main", "work"], 5);
        fixture.add((10, 12), &["main", "work"], 2);
        let report = report(&mut fixture, true);
        let stacks: Vec<_> = report
            .stacks
            .iter()
            .map(|s| (s.count, s.thread.clone()))
            .collect();
        assert_eq!(
            stacks,
            [(5, Some((11, "t11".into()))), (2, Some((12, "t12".into())))]
        );
    }

    #[test]
    fn merged_stacks_of_exited_processes_are_named_after_them() {
        let mut fixture = Fixture::new();
        fixture.add((20, 20), &["main", "job"], 4);
        fixture.add((30, 30), &["main", "job"], 3);
        let exited = HashMap::from([(20, "job".to_string()), (30, "job".to_string())]);
        let frames = &mut fixture.frames;
        let freed = fixture
            .aggregator
            .retire(&exited, |stacks, name, id| frames.merged(stacks, name, id));
        fixture.frames.forget(&freed);
        let report = report(&mut fixture, false);
        assert_eq!(report.stacks.len(), 1);
        let stack = &report.stacks[0];
        assert_eq!(
            (stack.pid, stack.comm.as_str(), stack.count),
            (EXITED_PID, "job", 7)
        );
        assert!(stack.tids.is_empty());
        assert_eq!(stack.frames[1].function.as_deref(), Some("job"));
        assert_eq!(stack.frames[1].address, None);
        assert_eq!(report.processes[0].comm, "exited processes");
    }

    #[test]
    fn the_summary_counts_duplicates_and_completeness() {
        let mut fixture = Fixture::new();
        fixture.add((10, 11), &["_start", "main", "work"], 5);
        fixture.add((10, 12), &["_start", "main", "work"], 2);
        fixture.add((20, 20), &["clone3", "start_thread", "work"], 1);
        fixture.add((20, 20), &["lost"], 2);
        let now = Local::now();
        let summary = build_summary(
            &run(false),
            fixture.inputs(),
            (now, now),
            Default::default(),
        );
        assert_eq!(summary.samples, 10);
        assert_eq!((summary.processes, summary.threads), (2, 3));
        assert_eq!(summary.distinct_stacks, 3);
        assert_eq!(
            summary.duplicates,
            [Duplicate {
                count: 7,
                threads: 2,
                processes: 1,
                functions: vec!["_start".into(), "main".into(), "work".into()],
            }]
        );
        let completeness: Vec<_> = summary
            .completeness
            .iter()
            .map(|c| (c.pid, c.samples, c.complete, c.truncated))
            .collect();
        assert_eq!(completeness, [(10, 7, 7, 0), (20, 3, 1, 0)]);
    }
}
