//! JSON: one document per report, on one line (so `-i` output is JSON Lines).
//! The schema is [`Document`]; README.md describes it. Frames are listed once
//! in `frames` and stacks refer to them by index, outermost first.
use std::{
    collections::HashMap,
    io::{self, Write},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use super::Render;
use crate::{
    config::Mode,
    error::UsageError,
    model::{Cgroup, Container, Frame, FrameKind, FrameLocals, Unknown},
    report::{
        DumpedThread, Losses, ProcessReport, Report, RunInfo, StackErrors, StackReport, Summary,
        ThreadDump, ThreadGroup, ThreadReport,
    },
    task::TaskState,
    text::escape_controls,
};

/// Bumped on any incompatible change to [`Document`].
pub const VERSION: u32 = 1;

pub struct Json;

impl Render for Json {
    fn report(&mut self, report: &Report, out: &mut dyn Write) -> io::Result<()> {
        serde_json::to_writer(&mut *out, &Document::from_report(report))?;
        writeln!(out)
    }

    fn summary(&mut self, _summary: &Summary, _out: &mut dyn Write) -> io::Result<()> {
        // Each document is complete on its own; the run summary goes to stderr.
        Ok(())
    }

    fn dump(&mut self, dump: &ThreadDump, out: &mut dyn Write) -> io::Result<()> {
        serde_json::to_writer(&mut *out, &DumpDocument::from_dump(dump))?;
        writeln!(out)
    }
}

fn tool() -> String {
    concat!("tripod-bpf ", env!("CARGO_PKG_VERSION")).to_string()
}

fn recording() -> String {
    "recording".into()
}

/// Frames listed once, referred to by index.
#[derive(Default)]
struct FrameTable<'a> {
    frames: Vec<JsonFrame>,
    index: HashMap<&'a Frame, usize>,
}

impl<'a> FrameTable<'a> {
    fn indices(&mut self, frames: &'a [Arc<Frame>]) -> Vec<usize> {
        frames
            .iter()
            .map(|frame| {
                *self.index.entry(frame).or_insert_with(|| {
                    self.frames.push(JsonFrame::from(&**frame));
                    self.frames.len() - 1
                })
            })
            .collect()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Document {
    /// Schema version, [`VERSION`].
    pub version: u32,
    /// `recording` (this document) or `dump` ([`DumpDocument`]).
    #[serde(default = "recording")]
    pub kind: String,
    /// `tripod-bpf <version>`.
    pub tool: String,
    /// What was sampled: `pid 4242`, `all processes`, `command ./x`.
    pub target: String,
    /// What the counts measure: `cpu` (on-CPU samples), `off-cpu`
    /// (microseconds switched out) or `wall` (samples, running or waiting).
    pub mode: String,
    /// The unit of every count: `samples` or `microseconds`.
    pub unit: String,
    /// The perf event: `cpu-clock` or `cycles`.
    pub event: String,
    /// How user stacks were unwound: `fp`, `dwarf` or `auto` (absent before 0.1 files had it).
    #[serde(default)]
    pub unwind: Option<String>,
    pub frequency_hz: u64,
    pub per_thread: bool,
    /// RFC 3339 times of the interval.
    pub start: String,
    pub end: String,
    /// The sum of the stack counts, in `unit`.
    pub samples: u64,
    pub lost: JsonLosses,
    pub processes: Vec<JsonProcess>,
    pub frames: Vec<JsonFrame>,
    /// Most frequent first.
    pub stacks: Vec<JsonStack>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JsonLosses {
    /// Samples dropped because the count map was full.
    pub count_map_full: u64,
    /// Samples dropped because the ring buffer of stack copies was full.
    pub ring_buffer_full: u64,
    pub user_stacks: JsonStackErrors,
    pub kernel_stacks: JsonStackErrors,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JsonStackErrors {
    pub unreadable: u64,
    pub collisions: u64,
    pub map_full: u64,
    pub other: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JsonProcess {
    pub pid: u32,
    /// Its pid in its own pid namespace, when that is not tripod-bpf's
    /// (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ns_pid: Option<u32>,
    pub comm: String,
    pub exe: Option<String>,
    /// The cgroup v2 path it was last sampled in, below the cgroup2 mount
    /// (absent when unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// The container that cgroup names (absent when none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<JsonContainer>,
    pub samples: u64,
    pub threads: Vec<JsonThread>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JsonContainer {
    /// `docker`, `podman`, `containerd`, `cri-o`, `kubernetes`, `oci`, `lxc`, `nspawn`.
    pub runtime: String,
    /// The full container id (or name, for `lxc` and `nspawn`).
    pub id: String,
    /// The Kubernetes pod UID (absent outside pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// A cgroup as its two JSON fields.
fn json_cgroup(cgroup: Option<&Arc<Cgroup>>) -> (Option<String>, Option<JsonContainer>) {
    let Some(cgroup) = cgroup else {
        return (None, None);
    };
    let container = cgroup.container.as_ref().map(|c| JsonContainer {
        runtime: c.runtime.clone(),
        id: c.id.clone(),
        pod: c.pod.clone(),
    });
    (Some(cgroup.path.clone()), container)
}

/// Where each process of a document is: its namespace pid and its cgroup,
/// by pid (its stacks get them back).
type Places = HashMap<u32, (Option<u32>, Option<Arc<Cgroup>>)>;

fn process_places(processes: &[JsonProcess]) -> Places {
    processes
        .iter()
        .map(|p| (p.pid, (p.ns_pid, read_cgroup(&p.cgroup, &p.container))))
        .collect()
}

/// The two JSON fields read back as a cgroup, escaped.
fn read_cgroup(path: &Option<String>, container: &Option<JsonContainer>) -> Option<Arc<Cgroup>> {
    let path = shown_opt(path)?;
    Some(Arc::new(Cgroup {
        path,
        container: container.as_ref().map(|c| Container {
            runtime: shown(&c.runtime),
            id: shown(&c.id),
            pod: shown_opt(&c.pod),
        }),
    }))
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JsonThread {
    pub tid: u32,
    pub comm: String,
    pub samples: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JsonFrame {
    /// `code`, `python` (a Python function: `function`, `file` and `line`
    /// come from the interpreter), or a marker: `truncated` (outer frames cut
    /// off), `missing` (this part of the stack could not be collected).
    pub kind: String,
    /// Hex string: kernel addresses do not fit a JSON number exactly.
    pub address: Option<String>,
    pub kernel: bool,
    pub module: Option<String>,
    /// Hex offset of the address in the module's file.
    pub offset: Option<String>,
    /// The module's GNU build id, in hex (absent when it has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub inlined: bool,
    /// Why there is no function, or what a marker stands for.
    pub unknown: Option<String>,
    /// Python frames: the source line at `line`, stripped (absent when the
    /// file could not be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JsonStack {
    pub pid: u32,
    /// Set with `--per-thread`.
    pub tid: Option<u32>,
    /// The process name.
    pub comm: String,
    /// The threads whose samples are merged here.
    pub tids: Vec<u32>,
    /// In the document's `unit`.
    pub count: u64,
    /// `running` for on-CPU samples, else the task state the threads waited
    /// in: `runnable` (preempted), `sleeping`, `uninterruptible`, `idle`, ...
    pub state: String,
    /// What the first matching annotation rule says, if one matched.
    pub annotation: Option<String>,
    /// Indices into `frames`, outermost first.
    pub frames: Vec<usize>,
}

impl Document {
    pub fn from_report(report: &Report) -> Document {
        let mut table = FrameTable::default();
        let stacks = report
            .stacks
            .iter()
            .map(|stack| JsonStack {
                pid: stack.pid,
                tid: stack.thread.as_ref().map(|(tid, _)| *tid),
                comm: stack.comm.clone(),
                tids: stack.tids.clone(),
                count: stack.count,
                state: stack.state.name().to_string(),
                annotation: stack.annotation.clone(),
                frames: table.indices(&stack.frames),
            })
            .collect();
        Document {
            version: VERSION,
            kind: recording(),
            tool: tool(),
            target: report.run.target.clone(),
            mode: report.run.mode.name().to_string(),
            unit: report.run.mode.unit().to_string(),
            event: report.run.event.clone(),
            unwind: Some(report.run.unwind.clone()),
            frequency_hz: report.run.frequency,
            per_thread: report.run.per_thread,
            start: report.start.to_rfc3339(),
            end: report.end.to_rfc3339(),
            samples: report.samples,
            lost: JsonLosses::from(&report.losses),
            processes: report
                .processes
                .iter()
                .map(|p| {
                    let (cgroup, container) = json_cgroup(p.cgroup.as_ref());
                    JsonProcess {
                        pid: p.pid,
                        ns_pid: p.ns_pid,
                        comm: p.comm.clone(),
                        exe: p.exe.clone(),
                        cgroup,
                        container,
                        samples: p.samples,
                        threads: p
                            .threads
                            .iter()
                            .map(|t| JsonThread {
                                tid: t.tid,
                                comm: t.comm.clone(),
                                samples: t.samples,
                            })
                            .collect(),
                    }
                })
                .collect(),
            frames: table.frames,
            stacks,
        }
    }
}

/// `tripod-bpf dump --json`: one document per dump, on one line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DumpDocument {
    /// Schema version, [`VERSION`].
    pub version: u32,
    /// `dump`.
    pub kind: String,
    pub tool: String,
    pub pid: u32,
    /// Its pid in its own pid namespace, when that is not tripod-bpf's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ns_pid: Option<u32>,
    pub comm: String,
    pub exe: Option<String>,
    /// Its cgroup v2 path, below the cgroup2 mount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    /// The container that cgroup names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<JsonContainer>,
    /// RFC 3339 time of the snapshot.
    pub time: String,
    /// Every thread, by tid.
    pub threads: Vec<JsonDumpedThread>,
    /// Threads with the same stack in the same state; largest group first.
    pub groups: Vec<JsonThreadGroup>,
    pub frames: Vec<JsonFrame>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JsonDumpedThread {
    pub tid: u32,
    pub comm: String,
    /// `running`, `sleeping`, `uninterruptible`, `idle`, `stopped`, ...
    pub state: String,
    /// The system call it is in, when it is in one: `futex`, `read`, ...
    pub syscall: Option<String>,
    /// Index into `groups`.
    pub group: usize,
    /// With `--locals`: the thread's Python frames, outermost first, with
    /// their local variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locals: Option<Vec<JsonFrameLocals>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JsonFrameLocals {
    pub function: String,
    pub file: String,
    pub line: Option<u32>,
    /// In the code object's order; unbound variables are left out.
    pub variables: Vec<JsonVariable>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JsonVariable {
    pub name: String,
    /// A short repr: the value of None, bools, ints, floats, str and bytes;
    /// `<list of 3 items>` for containers; `<Type object at 0x...>` otherwise.
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JsonThreadGroup {
    /// Ascending.
    pub tids: Vec<u32>,
    pub state: String,
    pub annotation: Option<String>,
    /// Indices into `frames`, outermost first.
    pub frames: Vec<usize>,
}

impl DumpDocument {
    pub fn from_dump(dump: &ThreadDump) -> DumpDocument {
        let mut table = FrameTable::default();
        let groups: Vec<JsonThreadGroup> = dump
            .groups
            .iter()
            .map(|group| JsonThreadGroup {
                tids: group.tids.clone(),
                state: group.state.name().to_string(),
                annotation: group.annotation.clone(),
                frames: table.indices(&group.frames),
            })
            .collect();
        let threads = dump
            .threads
            .iter()
            .map(|thread| JsonDumpedThread {
                tid: thread.tid,
                comm: thread.name.clone(),
                state: thread.state.name().to_string(),
                syscall: thread.syscall.clone(),
                group: groups
                    .iter()
                    .position(|g| g.tids.contains(&thread.tid))
                    .unwrap_or(0),
                locals: thread.locals.as_ref().map(|frames| {
                    frames
                        .iter()
                        .map(|frame| JsonFrameLocals {
                            function: frame.function.clone(),
                            file: frame.file.clone(),
                            line: frame.line,
                            variables: frame
                                .variables
                                .iter()
                                .map(|(name, value)| JsonVariable {
                                    name: name.clone(),
                                    value: value.clone(),
                                })
                                .collect(),
                        })
                        .collect()
                }),
            })
            .collect();
        let (cgroup, container) = json_cgroup(dump.cgroup.as_ref());
        DumpDocument {
            version: VERSION,
            kind: "dump".into(),
            tool: tool(),
            pid: dump.pid,
            ns_pid: dump.ns_pid,
            comm: dump.comm.clone(),
            exe: dump.exe.clone(),
            cgroup,
            container,
            time: dump.time.to_rfc3339(),
            threads,
            groups,
            frames: table.frames,
        }
    }
}

impl From<&Losses> for JsonLosses {
    fn from(losses: &Losses) -> Self {
        JsonLosses {
            count_map_full: losses.count_map_full,
            ring_buffer_full: losses.ring_buffer_full,
            user_stacks: JsonStackErrors::from(&losses.user),
            kernel_stacks: JsonStackErrors::from(&losses.kernel),
        }
    }
}

/// The same four numbers both ways: written out and read back.
macro_rules! stack_errors_from {
    ($from:ty => $to:ident) => {
        impl From<&$from> for $to {
            fn from(e: &$from) -> Self {
                $to {
                    unreadable: e.unreadable,
                    collisions: e.collisions,
                    map_full: e.map_full,
                    other: e.other,
                }
            }
        }
    };
}
stack_errors_from!(StackErrors => JsonStackErrors);
stack_errors_from!(JsonStackErrors => StackErrors);

impl From<&Frame> for JsonFrame {
    fn from(frame: &Frame) -> Self {
        JsonFrame {
            kind: match frame.kind {
                FrameKind::Code => "code",
                FrameKind::Truncated => "truncated",
                FrameKind::Missing => "missing",
                FrameKind::Python => "python",
            }
            .to_string(),
            address: frame.address.map(|a| format!("{a:#x}")),
            kernel: frame.kernel,
            module: frame.module.as_deref().map(str::to_owned),
            offset: frame.offset.map(|o| format!("{o:#x}")),
            build_id: frame.build_id.as_deref().map(str::to_owned),
            function: frame.function.as_deref().map(str::to_owned),
            file: frame.file.as_deref().map(str::to_owned),
            line: frame.line,
            inlined: frame.inlined,
            unknown: frame.unknown.as_ref().map(ToString::to_string),
            source: frame.source.clone(),
        }
    }
}

/// Text read back from a file, which anyone could have written: escaped as
/// names are where they are first read (see [`crate::text`]), so that
/// `tripod-bpf report` shows a crafted file as safely as a live target.
fn shown(text: &str) -> String {
    escape_controls(text).into_owned()
}

fn shown_opt(text: &Option<String>) -> Option<String> {
    text.as_deref().map(shown)
}

/// Reading documents back (`tripod-bpf report`): a document that does not
/// make sense is a [`UsageError`] naming the field, not a panic. Every string is
/// escaped (see [`shown`]).
impl Document {
    pub fn into_report(self) -> Result<Report, UsageError> {
        let frames = frames_of(&self.frames)?;
        let thread_names: std::collections::HashMap<u32, &str> = self
            .processes
            .iter()
            .flat_map(|p| p.threads.iter().map(|t| (t.tid, t.comm.as_str())))
            .collect();
        let processes = process_places(&self.processes);
        let stacks = self
            .stacks
            .iter()
            .map(|stack| {
                let (ns_pid, cgroup) = processes.get(&stack.pid).cloned().unwrap_or_default();
                Ok(StackReport {
                    pid: stack.pid,
                    comm: shown(&stack.comm),
                    ns_pid,
                    cgroup,
                    thread: stack.tid.map(|tid| {
                        let name = thread_names.get(&tid).copied().unwrap_or("?");
                        (tid, shown(name))
                    }),
                    tids: stack.tids.clone(),
                    count: stack.count,
                    state: state(&stack.state)?,
                    annotation: shown_opt(&stack.annotation),
                    frames: pick(&frames, &stack.frames)?,
                })
            })
            .collect::<Result<_, UsageError>>()?;
        let lost = &self.lost;
        Ok(Report {
            run: RunInfo {
                target: shown(&self.target),
                mode: Mode::from_name(&self.mode)
                    .ok_or_else(|| UsageError(format!("unknown mode {:?}", self.mode)))?,
                frequency: self.frequency_hz,
                event: shown(&self.event),
                per_thread: self.per_thread,
                stack_storage_size: 0,
                count_map_size: 0,
                unwind: shown_opt(&self.unwind).unwrap_or_else(|| "unknown".into()),
                ring_buffer_size: 0,
            },
            start: time(&self.start)?,
            end: time(&self.end)?,
            samples: self.samples,
            losses: Losses {
                count_map_full: lost.count_map_full,
                ring_buffer_full: lost.ring_buffer_full,
                user: StackErrors::from(&lost.user_stacks),
                kernel: StackErrors::from(&lost.kernel_stacks),
                // Not in JSON: those samples were recorded whole.
                stack_map_sent: 0,
            },
            stacks,
            processes: self
                .processes
                .into_iter()
                .map(|p| ProcessReport {
                    pid: p.pid,
                    ns_pid: p.ns_pid,
                    comm: shown(&p.comm),
                    exe: shown_opt(&p.exe),
                    cgroup: read_cgroup(&p.cgroup, &p.container),
                    samples: p.samples,
                    threads: p
                        .threads
                        .into_iter()
                        .map(|t| ThreadReport {
                            tid: t.tid,
                            comm: shown(&t.comm),
                            samples: t.samples,
                        })
                        .collect(),
                })
                .collect(),
        })
    }
}

impl DumpDocument {
    pub fn into_dump(self) -> Result<ThreadDump, UsageError> {
        let frames = frames_of(&self.frames)?;
        let groups = self
            .groups
            .iter()
            .map(|group| {
                Ok(ThreadGroup {
                    tids: group.tids.clone(),
                    state: state(&group.state)?,
                    annotation: shown_opt(&group.annotation),
                    frames: pick(&frames, &group.frames)?,
                })
            })
            .collect::<Result<_, UsageError>>()?;
        let threads = self
            .threads
            .into_iter()
            .map(|thread| {
                Ok(DumpedThread {
                    tid: thread.tid,
                    name: shown(&thread.comm),
                    state: state(&thread.state)?,
                    syscall: shown_opt(&thread.syscall),
                    locals: thread.locals.map(|frames| {
                        frames
                            .into_iter()
                            .map(|frame| FrameLocals {
                                function: shown(&frame.function),
                                file: shown(&frame.file),
                                line: frame.line,
                                variables: frame
                                    .variables
                                    .into_iter()
                                    .map(|v| (shown(&v.name), shown(&v.value)))
                                    .collect(),
                            })
                            .collect()
                    }),
                })
            })
            .collect::<Result<_, UsageError>>()?;
        Ok(ThreadDump {
            pid: self.pid,
            ns_pid: self.ns_pid,
            comm: shown(&self.comm),
            exe: shown_opt(&self.exe),
            cgroup: read_cgroup(&self.cgroup, &self.container),
            time: time(&self.time)?,
            threads,
            groups,
        })
    }
}

fn frames_of(frames: &[JsonFrame]) -> Result<Vec<Arc<Frame>>, UsageError> {
    frames
        .iter()
        .map(|f| Frame::try_from(f).map(Arc::new))
        .collect()
}

fn pick(frames: &[Arc<Frame>], indices: &[usize]) -> Result<Arc<[Arc<Frame>]>, UsageError> {
    indices
        .iter()
        .map(|&i| {
            frames.get(i).cloned().ok_or_else(|| {
                UsageError(format!(
                    "frame index {i} is past the {} frames listed",
                    frames.len()
                ))
            })
        })
        .collect()
}

fn state(name: &str) -> Result<TaskState, UsageError> {
    TaskState::from_name(name).ok_or_else(|| UsageError(format!("unknown thread state {name:?}")))
}

fn time(text: &str) -> Result<chrono::DateTime<chrono::Local>, UsageError> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Local))
        .map_err(|e| UsageError(format!("time {text:?} is not RFC 3339: {e}")))
}

fn hex(text: &Option<String>, what: &str) -> Result<Option<u64>, UsageError> {
    text.as_deref()
        .map(|t| {
            u64::from_str_radix(t.trim_start_matches("0x"), 16)
                .map_err(|_| UsageError(format!("{what} {t:?} is not a hex number")))
        })
        .transpose()
}

impl TryFrom<&JsonFrame> for Frame {
    type Error = UsageError;

    fn try_from(frame: &JsonFrame) -> Result<Self, Self::Error> {
        Ok(Frame {
            kind: match frame.kind.as_str() {
                "code" => FrameKind::Code,
                "truncated" => FrameKind::Truncated,
                "missing" => FrameKind::Missing,
                "python" => FrameKind::Python,
                other => return Err(UsageError(format!("unknown frame kind {other:?}"))),
            },
            address: hex(&frame.address, "address")?,
            kernel: frame.kernel,
            module: shown_opt(&frame.module).map(Into::into),
            offset: hex(&frame.offset, "offset")?,
            build_id: shown_opt(&frame.build_id).map(Into::into),
            function: shown_opt(&frame.function).map(Into::into),
            file: shown_opt(&frame.file).map(Into::into),
            line: frame.line,
            inlined: frame.inlined,
            // Only the text is known: it may come from any version, or from a hand.
            unknown: shown_opt(&frame.unknown).map(Unknown::Text),
            source: shown_opt(&frame.source),
        })
    }
}
