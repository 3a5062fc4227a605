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
use crate::report::{Frame, FrameKind, Losses, Report, StackErrors, Summary};

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
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Document {
    /// Schema version, [`VERSION`].
    pub version: u32,
    /// `tripod-bpf <version>`.
    pub tool: String,
    /// What was sampled: `pid 4242`, `all processes`, `command ./x`.
    pub target: String,
    /// What the counts mean: `cpu` (on-CPU samples).
    pub mode: String,
    /// The perf event: `cpu-clock` or `cycles`.
    pub event: String,
    pub frequency_hz: u64,
    pub per_thread: bool,
    /// RFC 3339 times of the interval.
    pub start: String,
    pub end: String,
    /// Samples recorded, the sum of the stack counts.
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
    pub comm: String,
    pub exe: Option<String>,
    pub samples: u64,
    pub threads: Vec<JsonThread>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JsonThread {
    pub tid: u32,
    pub comm: String,
    pub samples: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JsonFrame {
    /// `code`, or a marker: `truncated` (outer frames cut off), `missing`
    /// (this part of the stack could not be collected).
    pub kind: String,
    /// Hex string: kernel addresses do not fit a JSON number exactly.
    pub address: Option<String>,
    pub kernel: bool,
    pub module: Option<String>,
    /// Hex offset of the address in the module's file.
    pub offset: Option<String>,
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub inlined: bool,
    /// Why there is no function, or what a marker stands for.
    pub unknown: Option<String>,
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
    pub count: u64,
    /// Indices into `frames`, outermost first.
    pub frames: Vec<usize>,
}

impl Document {
    pub fn from_report(report: &Report) -> Document {
        let mut frames = Vec::new();
        let mut index: HashMap<&Frame, usize> = HashMap::new();
        let stacks = report
            .stacks
            .iter()
            .map(|stack| JsonStack {
                pid: stack.pid,
                tid: stack.thread.as_ref().map(|(tid, _)| *tid),
                comm: stack.comm.clone(),
                tids: stack.tids.clone(),
                count: stack.count,
                frames: stack
                    .frames
                    .iter()
                    .map(|frame: &Arc<Frame>| {
                        *index.entry(frame).or_insert_with(|| {
                            frames.push(JsonFrame::from(&**frame));
                            frames.len() - 1
                        })
                    })
                    .collect(),
            })
            .collect();
        Document {
            version: VERSION,
            tool: concat!("tripod-bpf ", env!("CARGO_PKG_VERSION")).to_string(),
            target: report.run.target.clone(),
            mode: "cpu".to_string(),
            event: report.run.event.clone(),
            frequency_hz: report.run.frequency,
            per_thread: report.run.per_thread,
            start: report.start.to_rfc3339(),
            end: report.end.to_rfc3339(),
            samples: report.samples,
            lost: JsonLosses::from(&report.losses),
            processes: report
                .processes
                .iter()
                .map(|p| JsonProcess {
                    pid: p.pid,
                    comm: p.comm.clone(),
                    exe: p.exe.clone(),
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
                })
                .collect(),
            frames,
            stacks,
        }
    }
}

impl From<&Losses> for JsonLosses {
    fn from(losses: &Losses) -> Self {
        let errors = |e: &StackErrors| JsonStackErrors {
            unreadable: e.unreadable,
            collisions: e.collisions,
            map_full: e.map_full,
            other: e.other,
        };
        JsonLosses {
            count_map_full: losses.count_map_full,
            ring_buffer_full: losses.ring_buffer_full,
            user_stacks: errors(&losses.user),
            kernel_stacks: errors(&losses.kernel),
        }
    }
}

impl From<&Frame> for JsonFrame {
    fn from(frame: &Frame) -> Self {
        JsonFrame {
            kind: match frame.kind {
                FrameKind::Code => "code",
                FrameKind::Truncated => "truncated",
                FrameKind::Missing => "missing",
            }
            .to_string(),
            address: frame.address.map(|a| format!("{a:#x}")),
            kernel: frame.kernel,
            module: frame.module.clone(),
            offset: frame.offset.map(|o| format!("{o:#x}")),
            function: frame.function.clone(),
            file: frame.file.clone(),
            line: frame.line,
            inlined: frame.inlined,
            unknown: frame.unknown.clone(),
        }
    }
}
