//! pprof: a gzipped `profile.proto`, read by `go tool pprof`, Pyroscope,
//! Parca and most profiling backends. One profile per run or dump.
//!
//! The profile holds each distinct function, location and mapping once.
//! A location is one physical frame: its address, its mapping (with the
//! file's build id), and one line per function at that address, the inlined
//! ones first as pprof orders them. Python frames are locations without an
//! address. Sample values follow the mode: samples and CPU (or wall)
//! nanoseconds, nanoseconds off-CPU, or threads in a dump. Each sample is
//! labelled with its process, thread (when known) and the state it was in,
//! and with its cgroup and container when known ([`cgroup_labels`]).
use std::{
    collections::HashMap,
    io::{self, Write},
    sync::Arc,
};

use flate2::{write::GzEncoder, Compression};
use prost::Message as _;

use super::Render;
use crate::{
    config::Mode,
    model::{Cgroup, Frame, FrameKind},
    report::{Report, StackReport, Summary, ThreadDump},
};

pub struct Pprof;

impl Render for Pprof {
    fn report(&mut self, report: &Report, out: &mut dyn Write) -> io::Result<()> {
        out.write_all(&gzipped(&report_profile(report))?)
    }

    fn summary(&mut self, _summary: &Summary, _out: &mut dyn Write) -> io::Result<()> {
        Ok(())
    }

    fn dump(&mut self, dump: &ThreadDump, out: &mut dyn Write) -> io::Result<()> {
        out.write_all(&gzipped(&dump_profile(dump))?)
    }
}

/// The report as a gzipped pprof file (`--push` sends these).
pub fn report_bytes(report: &Report) -> io::Result<Vec<u8>> {
    gzipped(&report_profile(report))
}

fn gzipped(profile: &proto::Profile) -> io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(&profile.encode_to_vec())?;
    encoder.finish()
}

/// The labels that place a process: `cgroup` (its path), and when the
/// path names a container `container_id`, `container_runtime` and
/// `pod_uid` (Kubernetes), the names Parca and the OpenTelemetry profiler use.
pub(super) fn cgroup_labels(cgroup: &Cgroup) -> Vec<(&'static str, String)> {
    let mut labels = vec![("cgroup", cgroup.path.clone())];
    if let Some(container) = &cgroup.container {
        labels.push(("container_id", container.id.clone()));
        labels.push(("container_runtime", container.runtime.clone()));
        if let Some(pod) = &container.pod {
            labels.push(("pod_uid", pod.clone()));
        }
    }
    labels
}

/// The sample types of a recording in this mode, with how to turn a count into each value.
fn sample_types(mode: Mode, frequency: u64) -> (Vec<(&'static str, &'static str, i64)>, i64) {
    let period = 1_000_000_000 / frequency.max(1) as i64;
    match mode {
        Mode::Cpu => (
            vec![("samples", "count", 1), ("cpu", "nanoseconds", period)],
            period,
        ),
        Mode::Wall => (
            vec![("samples", "count", 1), ("wall", "nanoseconds", period)],
            period,
        ),
        // Counts are microseconds, and every wait is counted (no period).
        Mode::OffCpu => (vec![("off_cpu", "nanoseconds", 1000)], 0),
    }
}

fn report_profile(report: &Report) -> proto::Profile {
    let run = &report.run;
    let (types, period) = sample_types(run.mode, run.frequency);
    let mut builder = Builder::default();
    let sample_type = types
        .iter()
        .map(|(kind, unit, _)| builder.value_type(kind, unit))
        .collect();
    let samples = report
        .stacks
        .iter()
        .map(|stack| {
            let labels = stack_labels(&mut builder, run.mode, stack);
            proto::Sample {
                location_id: builder.locations(&stack.frames),
                value: types
                    .iter()
                    .map(|(.., per_count)| (stack.count as i64).saturating_mul(*per_count))
                    .collect(),
                label: labels,
            }
        })
        .collect();
    let (kind, unit, _) = types[types.len() - 1];
    let comments = [
        concat!("tripod-bpf ", env!("CARGO_PKG_VERSION")).to_string(),
        format!("target: {}", run.target),
        format!(
            "mode: {}, {} Hz, {} event, {} unwinding",
            run.mode.name(),
            run.frequency,
            run.event,
            run.unwind
        ),
    ];
    let comment = comments.iter().map(|c| builder.string(c)).collect();
    let period_type = Some(builder.value_type(kind, unit));
    let default_sample_type = builder.string(kind);
    let main = report.processes.first().and_then(|p| p.exe.as_deref());
    builder.finish(
        main,
        proto::Profile {
            sample_type,
            sample: samples,
            time_nanos: report.start.timestamp_nanos_opt().unwrap_or(0),
            duration_nanos: (report.end - report.start).num_nanoseconds().unwrap_or(0),
            period_type,
            period,
            comment,
            default_sample_type,
            ..Default::default()
        },
    )
}

/// The labels of one stack's sample: its process (and cgroup), its thread
/// when known, the state outside `cpu` mode, and its annotation.
fn stack_labels(builder: &mut Builder<'_>, mode: Mode, stack: &StackReport) -> Vec<proto::Label> {
    let mut labels = vec![
        builder.label("pid", &stack.pid.to_string()),
        builder.label("process", &stack.comm),
    ];
    for (key, value) in stack
        .cgroup
        .as_deref()
        .map(cgroup_labels)
        .unwrap_or_default()
    {
        labels.push(builder.label(key, &value));
    }
    let thread = match (&stack.thread, stack.tids.as_slice()) {
        (Some((tid, name)), _) => Some((*tid, Some(name.as_str()))),
        (None, [tid]) => Some((*tid, None)),
        _ => None,
    };
    if let Some((tid, name)) = thread {
        labels.push(builder.label("tid", &tid.to_string()));
        if let Some(name) = name {
            labels.push(builder.label("thread", name));
        }
    }
    if mode != Mode::Cpu {
        labels.push(builder.label("state", stack.state.name()));
    }
    if let Some(annotation) = &stack.annotation {
        labels.push(builder.label("annotation", annotation));
    }
    labels
}

/// A dump as a profile of threads, like Go's goroutine profile: each group
/// of threads with one stack is a sample whose value is how many there are.
fn dump_profile(dump: &ThreadDump) -> proto::Profile {
    let mut builder = Builder::default();
    let threads = builder.value_type("threads", "count");
    let samples = dump
        .groups
        .iter()
        .map(|group| {
            let tids: Vec<String> = group.tids.iter().map(u32::to_string).collect();
            let mut labels = vec![
                builder.label("pid", &dump.pid.to_string()),
                builder.label("process", &dump.comm),
                builder.label("state", group.state.name()),
                builder.label("tids", &tids.join(",")),
            ];
            for (key, value) in dump
                .cgroup
                .as_deref()
                .map(cgroup_labels)
                .unwrap_or_default()
            {
                labels.push(builder.label(key, &value));
            }
            if let Some(annotation) = &group.annotation {
                labels.push(builder.label("annotation", annotation));
            }
            proto::Sample {
                location_id: builder.locations(&group.frames),
                value: vec![group.tids.len() as i64],
                label: labels,
            }
        })
        .collect();
    let comment = vec![builder.string(&format!(
        "tripod-bpf {} dump of pid {} ({})",
        env!("CARGO_PKG_VERSION"),
        dump.pid,
        dump.comm
    ))];
    builder.finish(
        dump.exe.as_deref(),
        proto::Profile {
            sample_type: vec![threads],
            sample: samples,
            time_nanos: dump.time.timestamp_nanos_opt().unwrap_or(0),
            period_type: Some(threads),
            period: 1,
            comment,
            ..Default::default()
        },
    )
}

/// What makes two frames' code one mapping: the file, its build id, and
/// where it was loaded (address minus file offset).
#[derive(Clone, PartialEq, Eq, Hash)]
struct MappingKey {
    name: String,
    build_id: Option<String>,
    /// None for the kernel and mappings without a file.
    base: Option<u64>,
}

/// Tables with each string, function, location and mapping once; ids start at 1.
#[derive(Default)]
struct Builder<'a> {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions: Vec<proto::Function>,
    function_ids: HashMap<(i64, i64), u64>,
    locations: Vec<proto::Location>,
    location_ids: HashMap<&'a [Arc<Frame>], u64>,
    mappings: Vec<proto::Mapping>,
    mapping_ids: HashMap<MappingKey, u64>,
}

impl<'a> Builder<'a> {
    fn string(&mut self, text: &str) -> i64 {
        if self.strings.is_empty() {
            // pprof requires string 0 to be "".
            self.strings.push(String::new());
            self.string_ids.insert(String::new(), 0);
        }
        if let Some(&id) = self.string_ids.get(text) {
            return id;
        }
        self.strings.push(text.to_string());
        let id = self.strings.len() as i64 - 1;
        self.string_ids.insert(text.to_string(), id);
        id
    }

    fn value_type(&mut self, kind: &str, unit: &str) -> proto::ValueType {
        proto::ValueType {
            r#type: self.string(kind),
            unit: self.string(unit),
        }
    }

    fn label(&mut self, key: &str, value: &str) -> proto::Label {
        proto::Label {
            key: self.string(key),
            str: self.string(value),
            ..Default::default()
        }
    }

    /// The location ids of a stack (outermost first), leaf first as pprof wants.
    fn locations(&mut self, frames: &'a [Arc<Frame>]) -> Vec<u64> {
        // One physical frame: a frame and the calls inlined into it after it.
        let mut starts: Vec<usize> = (0..frames.len())
            .filter(|&i| i == 0 || !frames[i].inlined)
            .collect();
        starts.push(frames.len());
        starts
            .windows(2)
            .rev()
            .map(|w| self.location(&frames[w[0]..w[1]]))
            .collect()
    }

    fn location(&mut self, group: &'a [Arc<Frame>]) -> u64 {
        if let Some(&id) = self.location_ids.get(group) {
            return id;
        }
        let frame = &group[0];
        let mapping_id = frame
            .address
            .map(|address| self.mapping(frame, address))
            .unwrap_or(0);
        // Innermost inlined call first, the frame's own function last.
        let line = group
            .iter()
            .rev()
            .map(|f| proto::Line {
                function_id: self.function(f),
                line: f.line.map(i64::from).unwrap_or(0),
                column: 0,
            })
            .collect();
        let id = self.locations.len() as u64 + 1;
        self.locations.push(proto::Location {
            id,
            mapping_id,
            address: frame.address.unwrap_or(0),
            line,
            is_folded: false,
        });
        self.location_ids.insert(group, id);
        id
    }

    fn mapping(&mut self, frame: &Frame, address: u64) -> u64 {
        let name = match (&frame.module, frame.kernel) {
            (_, true) => "[kernel.kallsyms]".to_string(),
            (Some(module), false) => module.to_string(),
            (None, false) => "[unknown]".to_string(),
        };
        let base = frame.offset.map(|offset| address.wrapping_sub(offset));
        let key = MappingKey {
            name,
            build_id: frame.build_id.as_deref().map(str::to_owned),
            base,
        };
        if let Some(&id) = self.mapping_ids.get(&key) {
            let mapping = &mut self.mappings[id as usize - 1];
            mapping.memory_start = mapping.memory_start.min(address);
            mapping.memory_limit = mapping.memory_limit.max(address + 1);
            if let Some(base) = base {
                mapping.file_offset = mapping.memory_start.wrapping_sub(base);
            }
            return id;
        }
        let id = self.mappings.len() as u64 + 1;
        let filename = self.string(&key.name);
        let build_id = key.build_id.as_deref().map(|b| self.string(b)).unwrap_or(0);
        self.mappings.push(proto::Mapping {
            id,
            memory_start: address,
            memory_limit: address + 1,
            file_offset: base.map_or(0, |base| address.wrapping_sub(base)),
            filename,
            build_id,
            has_functions: true,
            has_filenames: true,
            has_line_numbers: true,
            has_inline_frames: true,
        });
        self.mapping_ids.insert(key, id);
        id
    }

    fn function(&mut self, frame: &Frame) -> u64 {
        let name = match (frame.kind, &frame.function) {
            // pprof drops `<...>` from names as C++ template arguments, which
            // would leave `<module>` and `<lambda>` empty.
            (FrameKind::Python, Some(function)) => function
                .strip_prefix('<')
                .and_then(|f| f.strip_suffix('>'))
                .unwrap_or(function)
                .to_string(),
            (FrameKind::Code, Some(function)) => function.to_string(),
            (FrameKind::Missing, _) => {
                let why = frame.unknown.as_ref().map(ToString::to_string);
                format!("[missing: {}]", why.as_deref().unwrap_or("?"))
            }
            _ => frame.short_name(),
        };
        let name = self.string(&name);
        let system_name = match &frame.function {
            Some(function) => self.string(function),
            None => name,
        };
        let filename = self.string(frame.file.as_deref().unwrap_or(""));
        if let Some(&id) = self.function_ids.get(&(system_name, filename)) {
            return id;
        }
        let id = self.functions.len() as u64 + 1;
        self.functions.push(proto::Function {
            id,
            name,
            system_name,
            filename,
            start_line: 0,
        });
        self.function_ids.insert((system_name, filename), id);
        id
    }

    /// The profile with the tables; `main`'s mapping first, since pprof
    /// takes the first mapping for the profiled program.
    fn finish(mut self, main: Option<&str>, profile: proto::Profile) -> proto::Profile {
        self.string("");
        let is_main = |m: &proto::Mapping| Some(self.strings[m.filename as usize].as_str()) == main;
        if let Some(index) = self.mappings.iter().position(is_main) {
            // Ids are positions + 1: swapping two mappings swaps their ids.
            let (first, main) = (1, index as u64 + 1);
            let swap = |id: u64| match id {
                id if id == first => main,
                id if id == main => first,
                id => id,
            };
            self.mappings.swap(0, index);
            self.mappings.iter_mut().for_each(|m| m.id = swap(m.id));
            self.locations
                .iter_mut()
                .for_each(|l| l.mapping_id = swap(l.mapping_id));
        }
        proto::Profile {
            mapping: self.mappings,
            location: self.locations,
            function: self.functions,
            string_table: self.strings,
            ..profile
        }
    }
}

/// The messages of pprof's `profile.proto`
/// (github.com/google/pprof/blob/main/proto/profile.proto), with its field numbers.
pub(crate) mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "7")]
        pub drop_frames: i64,
        #[prost(int64, tag = "8")]
        pub keep_frames: i64,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
        #[prost(int64, repeated, tag = "13")]
        pub comment: Vec<i64>,
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
    }

    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        /// Leaf first.
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
        #[prost(int64, tag = "3")]
        pub num: i64,
        #[prost(int64, tag = "4")]
        pub num_unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Mapping {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub memory_start: u64,
        #[prost(uint64, tag = "3")]
        pub memory_limit: u64,
        #[prost(uint64, tag = "4")]
        pub file_offset: u64,
        #[prost(int64, tag = "5")]
        pub filename: i64,
        #[prost(int64, tag = "6")]
        pub build_id: i64,
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
        #[prost(bool, tag = "8")]
        pub has_filenames: bool,
        #[prost(bool, tag = "9")]
        pub has_line_numbers: bool,
        #[prost(bool, tag = "10")]
        pub has_inline_frames: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        #[prost(uint64, tag = "3")]
        pub address: u64,
        /// Innermost inlined function first.
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
        #[prost(bool, tag = "5")]
        pub is_folded: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
        #[prost(int64, tag = "3")]
        pub column: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
        #[prost(int64, tag = "5")]
        pub start_line: i64,
    }
}
