//! tripod-bpf's own log (`-f log`, written by `crate::output::log`) read
//! back, so that a log copied from another machine can be grouped again and
//! rendered in any format.
//!
//! The log is text meant for people, so reading it keeps what it shows and
//! nothing more: functions, files, lines, modules, the addresses of frames
//! that have no name, counts, threads and their states, annotations, Python
//! frames (a frame with a source line under it, or in a `.py` file) and the
//! local variables of dumps. What it does not show is left unknown (an
//! address beside a named frame, the run's frequency and event, the tids of
//! a stack the log counts as `N threads`, how lost samples were lost: the
//! header's total is kept as lost to a full count map).
//!
//! Streamed: each recording interval or dump is handed on when the next
//! header (or the end) comes, so memory follows the largest document.
//! Lines that do not parse are counted ([`Skipped`]); the summary and
//! Python-traceback sections of a log are not profiles and are passed over.
use std::{collections::BTreeMap, io::BufRead, sync::Arc};

use chrono::{DateTime, Local, NaiveDateTime, TimeZone as _};

use super::{
    lines::{Skipped, TextLines},
    threads::{parse_address, shown},
    Saved,
};
use crate::{
    config::Mode,
    error::UsageError,
    model::{Cgroup, Container, Frame, FrameKind, FrameLocals, Unknown},
    report::{
        DumpedThread, Losses, ProcessReport, Report, RunInfo, StackReport, ThreadDump, ThreadGroup,
        ThreadReport,
    },
    task::TaskState,
};

/// The documents of a log, in order, each with the line its header is on.
pub struct LogDocuments<R> {
    lines: TextLines<R>,
    current: Section,
    skipped: Skipped,
    /// Documents handed on so far.
    read: usize,
    done: bool,
}

/// What the lines being read belong to.
enum Section {
    /// Before the first header.
    None,
    /// A section that is not a profile (a summary, Python tracebacks).
    PassedOver,
    Recording(Box<RecordingLines>),
    Dump(Box<DumpLines>),
}

impl<R: BufRead> LogDocuments<R> {
    pub fn new(reader: R) -> Self {
        LogDocuments {
            lines: TextLines::new(reader),
            current: Section::None,
            skipped: Skipped::default(),
            read: 0,
            done: false,
        }
    }

    /// Lines not understood so far.
    pub fn skipped(&self) -> Skipped {
        self.skipped
    }

    /// Recordings and dumps read so far.
    pub fn read(&self) -> usize {
        self.read
    }

    /// The section read so far as a document, if it is one; a new section
    /// starts with `next`.
    fn finish(&mut self, next: Section) -> Option<(usize, Saved)> {
        let document = match std::mem::replace(&mut self.current, next) {
            Section::Recording(recording) => (recording.line, recording.finish()),
            Section::Dump(dump) => (dump.line, dump.finish()),
            Section::None | Section::PassedOver => return None,
        };
        self.read += 1;
        Some(document)
    }

    /// One line: a header ends the section before it.
    fn take(&mut self, number: usize, text: &str) -> Option<(usize, Saved)> {
        if text.starts_with("[tripod] =====") {
            let next = header(number, text).unwrap_or_else(|| {
                self.skipped.add(number);
                Section::PassedOver
            });
            return self.finish(next);
        }
        let understood = match &mut self.current {
            _ if text.trim().is_empty() => true,
            Section::None => false,
            Section::PassedOver => true,
            Section::Recording(recording) => recording.take(text),
            Section::Dump(dump) => dump.take(text),
        };
        if !understood {
            self.skipped.add(number);
        }
        None
    }
}

impl<R: BufRead> Iterator for LogDocuments<R> {
    type Item = Result<(usize, Saved), UsageError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let line = match self.lines.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => {
                    self.done = true;
                    return self.finish(Section::None).map(Ok);
                }
                Err(error) => {
                    self.done = true;
                    return Some(Err(error));
                }
            };
            if line.cut {
                self.skipped.add(line.number);
                continue;
            }
            if let Some(document) = self.take(line.number, &line.text) {
                return Some(Ok(document));
            }
        }
        None
    }
}

/// The section a `[tripod] =====` header starts; `None` if it does not parse.
fn header(number: usize, text: &str) -> Option<Section> {
    let inner = text
        .strip_prefix("[tripod] ===== ")?
        .strip_suffix(" =====")?;
    if inner.starts_with("summary ") || inner.contains(" Python traceback") {
        return Some(Section::PassedOver);
    }
    if let Some(dump) = inner.strip_prefix("thread dump ") {
        return DumpLines::from_header(number, dump).map(|d| Section::Dump(Box::new(d)));
    }
    RecordingLines::from_header(number, inner).map(|r| Section::Recording(Box::new(r)))
}

/// An interval of a recording being read.
struct RecordingLines {
    line: usize,
    report: Report,
    /// The stack being read, its frames outermost first.
    stack: Option<(StackReport, Vec<Frame>)>,
}

impl RecordingLines {
    /// `2026-12-05 05:00:00..05:00:02  pid 42  [MODE: ]12 samples, 0 lost
    /// samples, 3 distinct stacks`.
    fn from_header(line: usize, inner: &str) -> Option<RecordingLines> {
        let (range, rest) = inner.split_once("  ")?;
        let (start, end) = time_range(range)?;
        let (target, tail) = rest.rsplit_once("  ")?;
        let (mode, frequency, tail) = if let Some(tail) = tail.strip_prefix("off-CPU time: ") {
            (Mode::OffCpu, 0, tail)
        } else if let Some(tail) = tail.strip_prefix("wall-clock samples at ") {
            let (hz, tail) = tail.split_once(" Hz: ")?;
            (Mode::Wall, hz.parse().ok()?, tail)
        } else {
            (Mode::Cpu, 0, tail)
        };
        let (count, tail) = count_of(tail)?;
        let lost: u64 = tail
            .strip_prefix(", ")?
            .split_once(" lost samples, ")?
            .0
            .parse()
            .ok()?;
        let unknown = || "unknown".to_string();
        let run = RunInfo {
            target: shown(target).to_string(),
            mode,
            frequency,
            event: unknown(),
            per_thread: false,
            stack_storage_size: 0,
            count_map_size: 0,
            unwind: unknown(),
            ring_buffer_size: 0,
        };
        let report = Report {
            run,
            start,
            end,
            samples: count,
            losses: Losses {
                count_map_full: lost,
                ..Losses::default()
            },
            stacks: Vec::new(),
            processes: Vec::new(),
        };
        Some(RecordingLines {
            line,
            report,
            stack: None,
        })
    }

    fn take(&mut self, text: &str) -> bool {
        if text.starts_with("[tripod] ") {
            self.end_stack();
            self.stack = stack_line(text).map(|stack| (stack, Vec::new()));
            return self.stack.is_some();
        }
        match &mut self.stack {
            Some((_, frames)) => take_frame_line(frames, text),
            None => false,
        }
    }

    fn end_stack(&mut self) {
        if let Some((mut stack, frames)) = self.stack.take() {
            stack.frames = frames.into_iter().map(Arc::new).collect();
            self.report.run.per_thread |= stack.thread.is_some();
            self.report.stacks.push(stack);
        }
    }

    fn finish(mut self) -> Saved {
        self.end_stack();
        self.report.processes = processes_of(&self.report.stacks);
        Saved::Recording(self.report)
    }
}

/// The processes and threads the stacks name, most sampled first.
fn processes_of(stacks: &[StackReport]) -> Vec<ProcessReport> {
    let mut by_pid: BTreeMap<u32, (ProcessReport, BTreeMap<u32, ThreadReport>)> = BTreeMap::new();
    for stack in stacks {
        let (process, threads) = by_pid.entry(stack.pid).or_insert_with(|| {
            let process = ProcessReport {
                pid: stack.pid,
                ns_pid: stack.ns_pid,
                comm: stack.comm.clone(),
                exe: None,
                cgroup: stack.cgroup.clone(),
                samples: 0,
                threads: Vec::new(),
            };
            (process, BTreeMap::new())
        });
        process.samples += stack.count;
        if let Some((tid, name)) = &stack.thread {
            let thread = threads.entry(*tid).or_insert_with(|| ThreadReport {
                tid: *tid,
                comm: name.clone(),
                samples: 0,
            });
            thread.samples += stack.count;
        }
    }
    let mut processes: Vec<ProcessReport> = by_pid
        .into_values()
        .map(|(mut process, threads)| {
            process.threads = threads.into_values().collect();
            process
                .threads
                .sort_by_key(|t| std::cmp::Reverse(t.samples));
            process
        })
        .collect();
    processes.sort_by_key(|p| std::cmp::Reverse(p.samples));
    processes
}

/// `[tripod] RANGE  PROCESS  THREAD  12 samples (40.0%)[, STATE][: ANNOTATION]`.
fn stack_line(text: &str) -> Option<StackReport> {
    let rest = text.strip_prefix("[tripod] ")?;
    let (range, rest) = rest.split_once("  ")?;
    time_range(range)?;
    // The count is the first field that reads as one: names come before it.
    let (at, count, tail) = rest
        .match_indices("  ")
        .find_map(|(at, _)| weight(&rest[at + 2..]).map(|(count, tail)| (at, count, tail)))?;
    let (process, thread) = rest[..at].rsplit_once("  ")?;
    let (pid, comm, ns_pid, cgroup) = process_header(process)?;
    let (thread, tids) = thread_field(thread)?;
    let (state, tail) = match tail.strip_prefix(", ") {
        Some(state) => {
            let (name, tail) = state.split_at(state.find(':').unwrap_or(state.len()));
            (TaskState::from_name(name)?, tail)
        }
        None => (TaskState::Running, tail),
    };
    let annotation = match tail {
        "" => None,
        tail => Some(shown(tail.strip_prefix(": ")?).to_string()),
    };
    Some(StackReport {
        pid,
        comm,
        ns_pid,
        cgroup,
        thread,
        tids,
        count,
        state,
        annotation,
        frames: Arc::new([]),
    })
}

/// `12 samples (40.0%)` or `1500 µs off-CPU (3.2%)`, and what follows.
fn weight(text: &str) -> Option<(u64, &str)> {
    let (count, rest) = count_of(text)?;
    let rest = rest.strip_prefix(" (")?;
    let (share, rest) = rest.split_once("%)")?;
    share.parse::<f64>().ok()?;
    Some((count, rest))
}

/// `12 samples` or `1500 µs off-CPU`, and what follows.
fn count_of(text: &str) -> Option<(u64, &str)> {
    let (count, rest) = text.split_once(' ')?;
    let rest = rest
        .strip_prefix("samples")
        .or_else(|| rest.strip_prefix("µs off-CPU"))?;
    Some((count.parse().ok()?, rest))
}

/// `tid 5 (name)`, `tid 5`, `-` or `3 threads` (whose tids the log does not give).
type ThreadField = (Option<(u32, String)>, Vec<u32>);

fn thread_field(text: &str) -> Option<ThreadField> {
    if text == "-" || text.ends_with(" threads") {
        return Some((None, Vec::new()));
    }
    let rest = text.strip_prefix("tid ")?;
    match rest.split_once(" (") {
        Some((tid, name)) => {
            let name = shown(name.strip_suffix(')')?).to_string();
            Some((Some((tid.parse().ok()?, name)), Vec::new()))
        }
        None => Some((None, vec![rest.parse().ok()?])),
    }
}

type ProcessHeader = (u32, String, Option<u32>, Option<Arc<Cgroup>>);

/// `pid 42 (name)`, `pid 42 (name; ns pid 1) in docker:0123456789ab`, or
/// `exited processes (name)`.
fn process_header(text: &str) -> Option<ProcessHeader> {
    let (pid, rest) = match text.strip_prefix("exited processes (") {
        Some(rest) => (crate::model::EXITED_PID, rest),
        None => {
            let (pid, rest) = text.strip_prefix("pid ")?.split_once(" (")?;
            (pid.parse().ok()?, rest)
        }
    };
    let (inner, label) = match rest.strip_suffix(')') {
        Some(inner) => (inner, None),
        None => {
            let (inner, label) = rest.rsplit_once(") in ")?;
            (inner, Some(label))
        }
    };
    let (comm, ns_pid) = match inner.rsplit_once("; ns pid ") {
        Some((comm, ns_pid)) => (comm, Some(ns_pid.parse().ok()?)),
        None => (inner, None),
    };
    Some((pid, shown(comm).to_string(), ns_pid, label.map(cgroup)))
}

/// A container or cgroup as the log labels it: `docker:0123456789ab` (the
/// id as shortened there) or a cgroup path.
fn cgroup(label: &str) -> Arc<Cgroup> {
    let label = shown(label).to_string();
    let container = match label.split_once(':') {
        Some((runtime, id)) if !label.starts_with('/') => Some(Container {
            runtime: runtime.to_string(),
            id: id.to_string(),
            pod: None,
        }),
        _ => None,
    };
    let path = if container.is_some() {
        String::new()
    } else {
        label
    };
    Arc::new(Cgroup { path, container })
}

/// `2026-12-05 05:00:00..05:00:02` (the end with its date when it differs).
fn time_range(text: &str) -> Option<(DateTime<Local>, DateTime<Local>)> {
    let (start, end) = text.split_once("..")?;
    let start = local_time(start, "%Y-%m-%d %H:%M:%S")?;
    let end = match local_time(end, "%Y-%m-%d %H:%M:%S") {
        Some(end) => end,
        None => {
            let day = start.format("%Y-%m-%d").to_string();
            local_time(&format!("{day} {end}"), "%Y-%m-%d %H:%M:%S")?
        }
    };
    Some((start, end))
}

fn local_time(text: &str, format: &str) -> Option<DateTime<Local>> {
    let naive = NaiveDateTime::parse_from_str(text, format).ok()?;
    Local.from_local_datetime(&naive).earliest()
}

/// A line of a traceback: `Traceback (...)`, a frame (two spaces in) or the
/// source line under a Python frame (four); false if it is none of them.
fn take_frame_line(frames: &mut Vec<Frame>, text: &str) -> bool {
    if text == "Traceback (most recent call last):" {
        return true;
    }
    if let Some(source) = text.strip_prefix("    ") {
        let Some(last) = frames.last_mut() else {
            return false;
        };
        // Only Python frames have their source shown.
        last.kind = FrameKind::Python;
        last.module = None;
        last.source = Some(shown(source.trim()).to_string());
        return true;
    }
    match text.strip_prefix("  ").and_then(frame) {
        Some(frame) => {
            frames.push(frame);
            true
        }
        None => false,
    }
}

/// One frame as `crate::output::log::frame_line` writes it.
fn frame(text: &str) -> Option<Frame> {
    if text == "[truncated]" {
        return Some(Frame::truncated(false));
    }
    let (kernel, text) = match text.strip_prefix("[kernel] ") {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    if let Some(why) = unknown(text) {
        return Some(Frame::missing(kernel, why));
    }
    if let Some(rest) = text.strip_prefix("File \"") {
        return file_frame(rest);
    }
    if kernel && !text.starts_with("0x") {
        return Some(Frame {
            function: Some(shown(text)),
            ..Frame::code(true, None)
        });
    }
    // `ADDRESS in FUNCTION`, the address empty when unknown.
    let (address, function) = text.split_once(" in ")?;
    let address = match address.trim() {
        "" => None,
        address => Some(parse_address(address)?),
    };
    let mut frame = Frame::code(kernel, address);
    name(&mut frame, function);
    Some(frame)
}

/// `[unknown: WHY]` as its reason; `no symbol` is what a missing reason shows.
fn unknown(text: &str) -> Option<Unknown> {
    let why = text.strip_prefix("[unknown: ")?.strip_suffix(']')?;
    Some(Unknown::Text(shown(why).to_string()))
}

/// Sets the frame's function (or why it has none) from `FUNCTION[ [inlined]]`.
fn name(frame: &mut Frame, function: &str) {
    if let Some(why) = unknown(function).filter(|_| function.starts_with("[unknown: ")) {
        frame.unknown = (why.to_string() != "no symbol").then_some(why);
        return;
    }
    let (function, inlined) = match function.strip_suffix(" [inlined]") {
        Some(function) => (function, true),
        None => (function, false),
    };
    frame.function = Some(shown(function));
    frame.inlined = inlined;
}

/// What follows `File "`: `PATH", line N, in F`, `PATH", in F`,
/// `MODULE", offset 0x10, in [unknown: ...]` or `MODULE", at 0x10, in [unknown: ...]`.
fn file_frame(text: &str) -> Option<Frame> {
    let (location, rest) = text.split_once("\", ")?;
    let location = shown(location);
    let mut frame = Frame::code(false, None);
    if let Some(rest) = rest.strip_prefix("line ") {
        let (line, function) = rest.split_once(", in ")?;
        frame.file = Some(location.clone());
        frame.line = Some(line.parse().ok()?);
        name(&mut frame, function);
    } else if let Some(rest) = rest.strip_prefix("offset ") {
        let (offset, function) = rest.split_once(", in ")?;
        frame.module = Some(location.clone());
        frame.offset = Some(parse_address(offset)?);
        name(&mut frame, function);
    } else if let Some(rest) = rest.strip_prefix("at ") {
        let (address, function) = rest.split_once(", in ")?;
        frame.module = Some(location.clone());
        frame.address = parse_address(address);
        name(&mut frame, function);
    } else {
        // A named frame without a line: the log shows its module (or its
        // file when it has one, which only Python's are).
        name(&mut frame, rest.strip_prefix("in ")?);
        frame.module = Some(location.clone());
    }
    if is_python_file(&location) {
        frame.kind = FrameKind::Python;
        frame.file = Some(location);
        frame.module = None;
    }
    Some(frame)
}

/// `app.py`, `<frozen runpy>`, `<string>`: files only Python frames run.
fn is_python_file(file: &str) -> bool {
    file.ends_with(".py")
        || file.ends_with(".pyw")
        || (file.starts_with('<') && file.ends_with('>'))
}

/// A dump being read.
struct DumpLines {
    line: usize,
    dump: ThreadDump,
    /// Threads by tid, named by the group they are in.
    threads: BTreeMap<u32, DumpedThread>,
    /// The group being read, its frames outermost first.
    group: Option<(ThreadGroup, Vec<Frame>)>,
    /// The thread whose local variables are being read.
    locals: Option<u32>,
}

impl DumpLines {
    /// `2026-12-05 05:00:00.123  pid 42 (x)  /usr/bin/x  3 threads, 2 distinct stacks`.
    fn from_header(line: usize, inner: &str) -> Option<DumpLines> {
        let (time, rest) = inner.split_once("  ")?;
        let time = local_time(time, "%Y-%m-%d %H:%M:%S%.3f")?;
        let (rest, counts) = rest.rsplit_once("  ")?;
        counts.split_once(" distinct stacks")?;
        let (process, exe) = rest.rsplit_once("  ")?;
        let (pid, comm, ns_pid, cgroup) = process_header(process)?;
        let dump = ThreadDump {
            pid,
            ns_pid,
            comm,
            exe: (exe != "?").then(|| shown(exe).to_string()),
            cgroup,
            time,
            threads: Vec::new(),
            groups: Vec::new(),
        };
        Some(DumpLines {
            line,
            dump,
            threads: BTreeMap::new(),
            group: None,
            locals: None,
        })
    }

    fn take(&mut self, text: &str) -> bool {
        if let Some(group) = group_line(text) {
            self.end_group();
            self.locals = None;
            self.group = Some((group, Vec::new()));
            return true;
        }
        if let Some(tid) = locals_header(text) {
            // Only a thread of the group read (its tids name them all).
            self.locals = self.threads.contains_key(&tid).then_some(tid);
            return self.locals.is_some();
        }
        if let Some(tid) = self.locals {
            let thread = self.threads.get_mut(&tid).expect("checked at its header");
            return take_locals_line(thread.locals.get_or_insert_with(Vec::new), text);
        }
        let Some((_, frames)) = &mut self.group else {
            return false;
        };
        if frames.is_empty() && text.starts_with("  ") && text.contains("; named ") {
            return self.name_threads(text);
        }
        take_frame_line(frames, text)
    }

    /// `  sleeping (S) in futex; named worker, main`: the group's state, and
    /// its threads' system call and names (one each when the log gives one
    /// for all, or one per thread; else the list as the log gives it).
    fn name_threads(&mut self, text: &str) -> bool {
        let Some((group, _)) = &mut self.group else {
            return false;
        };
        let Some((what, names)) = text.trim_start().split_once("; named ") else {
            return false;
        };
        let Some((state, rest)) = what.split_once(" (") else {
            return false;
        };
        let Some(state) = TaskState::from_name(state) else {
            return false;
        };
        group.state = state;
        let syscalls = rest.split_once(") in ").map(|(_, s)| s);
        let pick = |list: &str, at: usize, count: usize| {
            let items: Vec<&str> = list.split(", ").collect();
            let item = match items.len() {
                1 => list,
                n if n == count => items[at],
                _ => list,
            };
            shown(item).to_string()
        };
        let count = group.tids.len();
        for (at, &tid) in group.tids.iter().enumerate() {
            self.threads.insert(
                tid,
                DumpedThread {
                    tid,
                    name: pick(names, at, count),
                    state,
                    syscall: syscalls.map(|s| pick(s, at, count)),
                    locals: None,
                },
            );
        }
        true
    }

    fn end_group(&mut self) {
        if let Some((mut group, frames)) = self.group.take() {
            group.frames = frames.into_iter().map(Arc::new).collect();
            for tid in &group.tids {
                self.threads.entry(*tid).or_insert_with(|| DumpedThread {
                    tid: *tid,
                    name: "?".into(),
                    state: group.state,
                    syscall: None,
                    locals: None,
                });
            }
            self.dump.groups.push(group);
        }
    }

    fn finish(mut self) -> Saved {
        self.end_group();
        self.dump.threads = self.threads.into_values().collect();
        Saved::Dump(self.dump)
    }
}

/// `4 * [11, 12, 13, 14] waiting on a condition variable`.
fn group_line(text: &str) -> Option<ThreadGroup> {
    let (count, rest) = text.split_once(" * [")?;
    let count: usize = count.parse().ok()?;
    let (tids, annotation) = rest.split_once("] ")?;
    let tids: Vec<u32> = tids
        .split(", ")
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    if tids.len() != count {
        return None;
    }
    Some(ThreadGroup {
        tids,
        state: TaskState::Unknown,
        annotation: (annotation != "(no rule matched)").then(|| shown(annotation).to_string()),
        frames: Arc::new([]),
    })
}

/// `Local variables of tid 12 (worker), most recent call last:`.
fn locals_header(text: &str) -> Option<u32> {
    let rest = text.strip_prefix("Local variables of tid ")?;
    rest.strip_suffix("), most recent call last:")?;
    rest.split_once(" (")?.0.parse().ok()
}

/// A line of a thread's local variables: its frame (`  File "f", line 3,
/// in g`), `    Local variables: none`, `    Local variables:`, or one
/// variable, `    {'name': value,` to `     'name': value}`.
fn take_locals_line(frames: &mut Vec<FrameLocals>, text: &str) -> bool {
    if let Some(rest) = text.strip_prefix("  File \"") {
        let Some((file, rest)) = rest.split_once("\", ") else {
            return false;
        };
        let (line, function) = match rest.strip_prefix("line ") {
            Some(rest) => match rest.split_once(", in ") {
                Some((line, function)) => (line.parse().ok(), function),
                None => return false,
            },
            None => (None, rest.strip_prefix("in ").unwrap_or(rest)),
        };
        frames.push(FrameLocals {
            function: shown(function).to_string(),
            file: shown(file).to_string(),
            line,
            variables: Vec::new(),
        });
        return true;
    }
    let Some(frame) = frames.last_mut() else {
        return false;
    };
    if text == "    Local variables: none" || text == "    Local variables:" {
        return true;
    }
    let Some(rest) = text
        .strip_prefix("    {'")
        .or_else(|| text.strip_prefix("     '"))
    else {
        return false;
    };
    let Some(rest) = rest.strip_suffix(',').or_else(|| rest.strip_suffix('}')) else {
        return false;
    };
    let Some((name, value)) = rest.split_once("': ") else {
        return false;
    };
    frame
        .variables
        .push((shown(name).to_string(), shown(value).to_string()));
    true
}

#[cfg(test)]
mod tests;
