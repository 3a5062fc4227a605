//! Python frames in native stacks.
//!
//! The eBPF program sends, with each sample of a thread of a known Python
//! process, the interpreter's frames for that thread: code object,
//! instruction and frame address, innermost first (see `tripod-ebpf`'s
//! `python.rs`). Here we
//! - find Python processes and tell the sampler about them ([`Python::check`]),
//! - turn frames into names, files and lines, reading each code object of
//!   the target once ([`code`]),
//! - put them in place of the native `_PyEval_EvalFrameDefault` frames that
//!   ran them ([`Python::merge`]),
//! - read the local variables of a dumped thread's frames ([`Python::locals`]).
//!
//! Memory of the target is read with `process_vm_readv` while it runs.
mod code;
mod debug_offsets;
pub(crate) mod detect;
pub mod layout;
mod lines;
mod memory;
mod objects;
mod source;
mod walk;

pub use memory::Memory;
pub use walk::thread_frames;

use std::{
    collections::{HashMap, HashSet},
    ops::Range,
    path::Path,
    sync::Arc,
};

use tripod_common::{PythonFrame, PythonProcess, PythonStatus};

use crate::{
    config::PythonFrames,
    model::{Frame, FrameKind, FrameLocals, Unknown},
    process::{MappingView, ProcessTable},
    stack::{Gap, RawFrame, Space},
};
use code::Code;
use detect::{Binary, Placed};
use layout::{EntryMarker, Layout};
use memory::ProcessMemory;

/// The Python frames of one record, as the kernel sent them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PythonSample {
    pub status: Option<PythonStatus>,
    /// Innermost first.
    pub frames: Vec<PythonFrame>,
}

/// What the sampler must learn about Python processes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PythonChange {
    /// Collect this process's Python frames.
    Found(u32, PythonProcess),
    /// No longer: it exited, or runs something else now.
    Gone(u32),
    /// These threads (of Python processes) exited: the kernel's record of
    /// their thread states can go.
    ThreadsGone(Vec<u32>),
}

/// A Python process being sampled.
struct Interpreter {
    layout: Arc<Layout>,
    /// Where `_PyRuntime` is.
    runtime: u64,
    eval: Range<u64>,
    /// The process's memory: live, or a core's.
    memory: SharedMemory,
    /// The process, whose files source lines are read from while it runs.
    pid: u32,
    /// Whether it runs (source lines are read from its files) or is a core.
    live: bool,
    /// Code objects read so far, by address and identity (see
    /// [`PythonFrame::code_identity`]).
    codes: HashMap<(u64, u64), Arc<Code>>,
    /// Frame table ids by (code object, its identity, instruction).
    frames: HashMap<(u64, u64, u64), u32>,
    /// Threads the kernel looked up a thread state for.
    threads: HashSet<u32>,
}

/// Memory the interpreters are read from.
pub type SharedMemory = Arc<dyn Memory + Send + Sync>;

/// Every Python process of the run, and every distinct Python frame seen.
pub struct Python {
    /// The memory of a core file, which every process is read from; else
    /// each process's own, while it runs.
    core: Option<SharedMemory>,
    /// What to do with Python frames; `Off` checks no process.
    shown: PythonFrames,
    /// Python binaries by module id; `None` for files that are not.
    binaries: HashMap<usize, Option<Arc<Binary>>>,
    interpreters: HashMap<u32, Interpreter>,
    /// The mapping generation each process was last checked at.
    checked: HashMap<u32, u64>,
    /// Changes since the last [`Python::take_changes`].
    changes: Vec<PythonChange>,
    /// Versions found but not supported, said once each.
    unsupported: HashSet<(u8, u8)>,
    /// The interpreter binaries found (libpython or the executable), as
    /// frames name their module: where the call machinery lives.
    interpreter_paths: HashSet<String>,
    /// Every distinct Python frame shown, by id.
    table: FrameTable,
    /// Source lines shown under Python frames.
    sources: source::Sources,
}

impl Python {
    pub fn new(shown: PythonFrames) -> Self {
        Python {
            core: None,
            shown,
            binaries: HashMap::new(),
            interpreters: HashMap::new(),
            checked: HashMap::new(),
            changes: Vec::new(),
            unsupported: HashSet::new(),
            interpreter_paths: HashSet::new(),
            table: FrameTable::default(),
            sources: source::Sources::default(),
        }
    }

    /// Python frames of a core file: its interpreter and frames read from
    /// `memory`, which holds the core's memory and mapped files.
    pub fn for_core(shown: PythonFrames, memory: SharedMemory) -> Self {
        Python {
            core: Some(memory),
            ..Python::new(shown)
        }
    }

    /// The memory of process `pid`: the core's, else its own.
    fn memory_of(&self, pid: u32) -> SharedMemory {
        match &self.core {
            Some(core) => core.clone(),
            None => Arc::new(ProcessMemory { pid }),
        }
    }

    /// Checks whether `pid` runs a supported Python, if its mappings changed
    /// since it was last checked (it may have exec'd), and registers it.
    pub fn check(&mut self, pid: u32, processes: &mut ProcessTable) {
        if self.shown == PythonFrames::Off {
            return;
        }
        // Most checks find nothing changed: asked without copying the mappings.
        let Some(generation) = processes.mappings_generation(pid) else {
            return;
        };
        if self.checked.get(&pid) == Some(&generation) {
            return;
        }
        let Some((generation, mappings)) = processes.mappings(pid) else {
            return;
        };
        let exe = processes.get(pid).and_then(|p| p.exe.clone());
        let found = self.find(pid, &mappings, exe.as_deref());
        match (found, self.interpreters.get(&pid)) {
            // A library loaded, the same interpreter: its caches stay.
            (Some((placed, _)), Some(known))
                if known.runtime == placed.runtime && known.eval == placed.eval => {}
            (Some((placed, layout)), _) => {
                self.forget(pid);
                self.register(pid, placed, layout);
            }
            (None, _) => self.forget(pid),
        }
        self.checked.insert(pid, generation);
    }

    /// The supported Python that `pid`'s mappings hold, if any.
    fn find(
        &mut self,
        pid: u32,
        mappings: &[MappingView],
        exe: Option<&str>,
    ) -> Option<(Placed, Arc<Layout>)> {
        for mapping in mappings {
            let Some(module) = &mapping.module else {
                continue;
            };
            let file_name = module.path.rsplit('/').next().unwrap_or(&module.path);
            if !detect::is_candidate(file_name, exe == Some(&*module.path)) {
                continue;
            }
            let binary = self
                .binaries
                .entry(module.id)
                .or_insert_with(|| Binary::read(module.open()?, file_name).map(Arc::new))
                .clone();
            let Some(placed) = binary.and_then(|b| b.place(mapping)) else {
                continue;
            };
            let Some(layout) = layout_of(pid, &placed, &*self.memory_of(pid)) else {
                if self.unsupported.insert((placed.major, placed.minor)) {
                    crate::messages::warn(&format!(
                        "pid {pid} runs Python {}.{}, whose frames tripod-bpf cannot read (supported: {}); its native stacks are sampled",
                        placed.major,
                        placed.minor,
                        layout::supported_versions()
                    ));
                }
                return None;
            };
            self.interpreter_paths
                .insert(crate::text::escape_controls(&module.path).into_owned());
            log::debug!(
                "pid {pid}: Python {}.{} in {}, _PyRuntime at {:#x}",
                placed.major,
                placed.minor,
                module.path,
                placed.runtime
            );
            return Some((placed, layout));
        }
        None
    }

    fn register(&mut self, pid: u32, placed: Placed, layout: Arc<Layout>) {
        let offsets = layout.kernel();
        self.interpreters.insert(
            pid,
            Interpreter {
                layout,
                runtime: placed.runtime,
                eval: placed.eval,
                memory: self.memory_of(pid),
                pid,
                live: self.core.is_none(),
                codes: HashMap::new(),
                frames: HashMap::new(),
                threads: HashSet::new(),
            },
        );
        let process = PythonProcess {
            runtime: placed.runtime,
            offsets,
        };
        self.changes.push(PythonChange::Found(pid, process));
    }

    /// What the sampler must learn since the last call.
    pub fn take_changes(&mut self) -> Vec<PythonChange> {
        std::mem::take(&mut self.changes)
    }

    /// Whether `pid` was found to run Python.
    pub fn is_python(&self, pid: u32) -> bool {
        self.interpreters.contains_key(&pid)
    }

    /// Drops what is kept for a process that exited (or no longer runs Python).
    pub fn forget(&mut self, pid: u32) {
        if let Some(interpreter) = self.interpreters.remove(&pid) {
            self.changes.push(PythonChange::Gone(pid));
            self.changes.push(PythonChange::ThreadsGone(
                interpreter.threads.into_iter().collect(),
            ));
        }
        self.checked.remove(&pid);
    }

    /// Finds the sampled threads of Python processes that have exited since
    /// the last call, so the kernel forgets where their thread states were.
    pub fn forget_exited_threads(&mut self) {
        let mut gone = Vec::new();
        for (pid, interpreter) in &mut self.interpreters {
            interpreter.threads.retain(|tid| {
                let alive = Path::new(&format!("/proc/{pid}/task/{tid}")).exists();
                if !alive {
                    gone.push(*tid);
                }
                alive
            });
        }
        if !gone.is_empty() {
            self.changes.push(PythonChange::ThreadsGone(gone));
        }
    }

    /// A frame of [`RawFrame::Python`].
    pub fn frame(&self, id: u32) -> Arc<Frame> {
        self.table.frames[id as usize].clone()
    }

    /// The native stack of a thread of process `tgid` (innermost first) with
    /// each `_PyEval_EvalFrameDefault` frame replaced by the Python frames it
    /// was running; with `--python-only`, Python frames alone, if there are any.
    pub fn merge(
        &mut self,
        tgid: u32,
        tid: u32,
        native: Vec<RawFrame>,
        python: &PythonSample,
    ) -> Vec<RawFrame> {
        let Some(interpreter) = self.interpreters.get_mut(&tgid) else {
            return native;
        };
        if python.status.is_some() {
            interpreter.threads.insert(tid);
        }
        // A chain that loops runs the eBPF walk into its frame limit, so
        // only a truncated one can loop: the others skip the check and its
        // allocation, on the per-sample path.
        let (frames, looped) = match python.status {
            Some(PythonStatus::Truncated) => until_loop(&python.frames),
            _ => (&python.frames[..], false),
        };
        let unreadable = looped || python.status == Some(PythonStatus::Unreadable);
        if frames.is_empty() && !unreadable {
            return native;
        }
        let mut groups = self.groups(tgid, frames);
        // Outer Python frames are missing: say so where they would be.
        let marker = match python.status {
            _ if looped => Some(Gap::PythonLoop),
            Some(PythonStatus::Unreadable) => Some(Gap::PythonUnreadable),
            // The chain was deeper than the eBPF program walks.
            Some(PythonStatus::Truncated) => Some(Gap::Truncated),
            _ => None,
        };
        if let Some(gap) = marker {
            match groups.last_mut() {
                Some(outermost) => outermost.push(RawFrame::Gap(Space::User, gap)),
                None => groups.push(vec![RawFrame::Gap(Space::User, gap)]),
            }
        }
        if self.shown == PythonFrames::Only {
            return groups.into_iter().flatten().collect();
        }
        let eval = &self.interpreters[&tgid].eval;
        place(native, groups, |address| eval.contains(&address))
    }

    /// The frames as [`RawFrame::Python`], innermost first, in groups: one
    /// per `_PyEval_EvalFrameDefault` call, innermost call first.
    fn groups(&mut self, tgid: u32, frames: &[PythonFrame]) -> Vec<Vec<RawFrame>> {
        let Some(interpreter) = self.interpreters.get_mut(&tgid) else {
            return Vec::new();
        };
        let entry = interpreter.layout.entry;
        split_by_entry(frames, entry)
            .into_iter()
            .map(|group| {
                group
                    .iter()
                    .map(|frame| {
                        let id = frame_id(interpreter, &mut self.table, &mut self.sources, frame);
                        RawFrame::Python(id)
                    })
                    .collect()
            })
            .collect()
    }

    /// The local variables of each frame, outermost first, read now.
    pub fn locals(&mut self, tgid: u32, frames: &[PythonFrame]) -> Vec<FrameLocals> {
        let Some(interpreter) = self.interpreters.get_mut(&tgid) else {
            return Vec::new();
        };
        let (frames, _) = until_loop(frames);
        let entry = interpreter.layout.entry;
        frames
            .iter()
            .rev()
            .filter(|f| !matches!(entry, EntryMarker::ShimOwner(o) if o == f.owner))
            .map(|frame| frame_locals(interpreter, frame))
            .collect()
    }
}

impl Python {
    /// Leaves out, from a symbolized stack (outermost first), the native
    /// frames between two Python frames that are the interpreter's own call
    /// machinery, as py-spy's `--native` does: they only say how CPython
    /// got from one Python function to the next. C functions called from
    /// Python (`time_sleep`, `builtin_sorted`, an extension's) stay, and so
    /// does everything with `--all-native-frames`. The trampolines of
    /// `-X perf` (3.12 and later) go wherever they are: each only repeats
    /// the Python frame it starts.
    pub fn leave_out_call_machinery(&self, frames: &mut Vec<Arc<Frame>>) {
        if self.shown != PythonFrames::Merged {
            return;
        }
        let is_python = |f: &Arc<Frame>| f.kind == FrameKind::Python;
        let (Some(first), Some(last)) = (
            frames.iter().position(is_python),
            frames.iter().rposition(is_python),
        ) else {
            return;
        };
        frames.retain(|frame| !is_perf_trampoline(frame));
        let (first, last) = (
            frames.iter().position(is_python).unwrap_or(first),
            frames.iter().rposition(is_python).unwrap_or(last),
        );
        let mut index = 0;
        frames.retain(|frame| {
            let between = index > first && index < last;
            index += 1;
            !(between && self.is_call_machinery(frame))
        });
    }

    /// A native frame of an interpreter binary that is a call path between
    /// Python functions. A frame without a name (a stripped interpreter's
    /// internal function) is kept: it may be a C function called from Python.
    fn is_call_machinery(&self, frame: &Frame) -> bool {
        let in_interpreter = frame
            .module
            .as_ref()
            .is_some_and(|module| self.interpreter_paths.contains(&**module));
        if frame.kernel || frame.kind != FrameKind::Code || !in_interpreter {
            return false;
        }
        frame
            .function
            .as_ref()
            .is_some_and(|name| CALL_MACHINERY.iter().any(|prefix| name.starts_with(prefix)))
    }
}

/// A trampoline CPython 3.12 and later run each Python function through
/// with `-X perf`: code without a file that its perf map names
/// `py::FUNCTION:FILE`.
fn is_perf_trampoline(frame: &Frame) -> bool {
    frame.kind == FrameKind::Code
        && !frame.kernel
        && frame.offset.is_none()
        && frame
            .function
            .as_deref()
            .is_some_and(|name| name.starts_with("py::"))
}

/// Name prefixes of the functions CPython 3.6 to 3.13 go through to call a
/// Python function, a bound method or a C function from Python code, and
/// to resume a generator.
const CALL_MACHINERY: &[&str] = &[
    "_PyEval_",
    "PyEval_",
    "_PyFunction_",
    "PyObject_Call",
    "_PyObject_Call",
    "PyObject_Vectorcall",
    "_PyObject_Vectorcall",
    "_PyObject_FastCall",
    "_PyObject_MakeTpCall",
    "PyVectorcall_",
    "_PyVectorcall_",
    "_PyCFunction_FastCall",
    "_PyMethodDef_RawFastCall",
    "_PyMethodDescr_FastCall",
    "method_vectorcall",
    "cfunction_call",
    "cfunction_vectorcall",
    "vectorcall_",
    "slot_tp_call",
    "function_code_fastcall",
    "fast_function",
    "call_function",
    "do_call_core",
    "gen_send_ex",
    "gen_iternext",
    "_PyGen_Send",
    "type_call",
    "slot_tp_init",
    // 3.12 and later with `-X perf`: calls each Python function through a trampoline.
    "py_trampoline_evaluator",
];

/// The layout of the Python `placed` runs in process `pid`: from 3.13 on
/// the offsets the interpreter publishes at the start of `_PyRuntime` (so
/// a later version whose structures only moved needs no new table), over
/// the table of that version or the newest one; before 3.13 the table.
fn layout_of(pid: u32, placed: &Placed, memory: &dyn Memory) -> Option<Arc<Layout>> {
    let table = layout::for_version(placed.major, placed.minor);
    if (placed.major, placed.minor) < (3, 13) {
        return table.map(|t| Arc::new(*t));
    }
    let published = memory
        .read_vec(placed.runtime, debug_offsets::READ_SIZE)
        .map_err(|e| format!("cannot read _PyRuntime: {e}"))
        .and_then(|bytes| debug_offsets::parse(&bytes).map_err(|why| format!("{why:?}")));
    match published {
        Ok(offsets) => {
            let base = table.or_else(|| layout::LAYOUTS.last())?;
            Layout::with_debug_offsets(base, &offsets).map(Arc::new)
        }
        Err(why) => {
            log::debug!("pid {pid}: no usable _Py_DebugOffsets ({why})");
            table.map(|t| Arc::new(*t))
        }
    }
}

/// The frames up to the first that was already seen in the chain: a
/// corrupted (or racing) `f_back` can point back into it, and the frames
/// after that would repeat until the walk's limit. True if it looped.
fn until_loop(frames: &[PythonFrame]) -> (&[PythonFrame], bool) {
    let mut seen = HashSet::with_capacity(frames.len());
    match frames.iter().position(|f| !seen.insert(f.frame)) {
        Some(at) => (&frames[..at], true),
        None => (frames, false),
    }
}

/// Splits a thread's frames (innermost first) into the groups each
/// `_PyEval_EvalFrameDefault` call runs, innermost call first.
fn split_by_entry(frames: &[PythonFrame], entry: EntryMarker) -> Vec<Vec<PythonFrame>> {
    let mut groups = vec![Vec::new()];
    for frame in frames {
        match entry {
            EntryMarker::EveryFrame => groups.push(vec![*frame]),
            // A shim starts the call whose frames came just before it.
            EntryMarker::ShimOwner(owner) if frame.owner == owner => groups.push(Vec::new()),
            _ => {
                groups.last_mut().expect("never empty").push(*frame);
                if entry == EntryMarker::IsEntry && frame.is_entry != 0 {
                    groups.push(Vec::new());
                }
            }
        }
    }
    groups.retain(|g| !g.is_empty());
    groups
}

/// The native stack (innermost first) with each user frame for which
/// `is_eval` holds replaced by the next group of Python frames. Groups left
/// over (the native stack was cut short) go outermost, where they belong.
fn place(
    native: Vec<RawFrame>,
    groups: Vec<Vec<RawFrame>>,
    is_eval: impl Fn(u64) -> bool,
) -> Vec<RawFrame> {
    let mut groups = groups.into_iter().peekable();
    let mut merged = Vec::with_capacity(native.len() + 16);
    for frame in native {
        let in_eval = frame.space() == Space::User && frame.lookup_address().is_some_and(&is_eval);
        match groups.next_if(|_| in_eval) {
            Some(group) => merged.extend(group),
            None => merged.push(frame),
        }
    }
    merged.extend(groups.flatten());
    merged
}

/// The code object of `frame`, read once; one that could not be read is
/// tried again next time (the read may have raced with the process).
fn code_of(interpreter: &mut Interpreter, address: u64, identity: u64) -> Option<Arc<Code>> {
    if let Some(code) = interpreter.codes.get(&(address, identity)) {
        return Some(code.clone());
    }
    let code = Arc::new(Code::read(
        &*interpreter.memory,
        &interpreter.layout,
        address,
    )?);
    interpreter.codes.insert((address, identity), code.clone());
    Some(code)
}

/// A Python frame as shown: function, file and line.
fn describe(interpreter: &mut Interpreter, frame: &PythonFrame) -> Frame {
    let layout = interpreter.layout.clone();
    match code_of(interpreter, frame.code, frame.code_identity) {
        Some(code) => Frame {
            function: Some(code.name.clone()),
            file: Some(code.file.clone()),
            line: code.line(&layout, frame.instruction),
            ..Frame::python()
        },
        None => Frame {
            unknown: Some(Unknown::PythonCodeUnreadable(frame.code)),
            ..Frame::python()
        },
    }
}

/// Python frames as shown, each stored once and named by its index.
#[derive(Default)]
struct FrameTable {
    frames: Vec<Arc<Frame>>,
    ids: HashMap<Arc<Frame>, u32>,
}

impl FrameTable {
    fn intern(&mut self, frame: Frame) -> u32 {
        if let Some(&id) = self.ids.get(&frame) {
            return id;
        }
        let frame = Arc::new(frame);
        let id = self.frames.len() as u32;
        self.frames.push(frame.clone());
        self.ids.insert(frame, id);
        id
    }
}

/// The table id of `frame` as shown (function, file, line and source
/// line), described the first time its code object and instruction are
/// seen in this process.
fn frame_id(
    interpreter: &mut Interpreter,
    table: &mut FrameTable,
    sources: &mut source::Sources,
    frame: &PythonFrame,
) -> u32 {
    let key = (frame.code, frame.code_identity, frame.instruction);
    if let Some(&id) = interpreter.frames.get(&key) {
        return id;
    }
    let mut shown = describe(interpreter, frame);
    // A core's files are not where its process saw them.
    if let (Some(file), Some(line), true) = (&shown.file, shown.line, interpreter.live) {
        shown.source = sources.line(interpreter.pid, file, line);
    }
    let id = table.intern(shown);
    interpreter.frames.insert(key, id);
    id
}

fn frame_locals(interpreter: &mut Interpreter, frame: &PythonFrame) -> FrameLocals {
    let layout = interpreter.layout.clone();
    let shown = describe(interpreter, frame);
    let mut variables = Vec::new();
    if let Some(code) = code_of(interpreter, frame.code, frame.code_identity) {
        let memory = &*interpreter.memory;
        let names = code::local_names(memory, &layout, code.address).unwrap_or_default();
        let slots = frame.frame + layout.frame.localsplus as u64;
        let values = memory.read_vec(slots, 8 * names.len()).unwrap_or_default();
        for (name, value) in names.into_iter().zip(values.chunks_exact(8)) {
            let address = u64::from_le_bytes(value.try_into().expect("8 bytes"));
            // Not bound yet (or deleted).
            if address == 0 {
                continue;
            }
            variables.push((name, objects::repr(memory, &layout.object, address)));
        }
    }
    FrameLocals {
        function: shown.function.as_deref().unwrap_or("[unknown]").to_owned(),
        file: shown.file.as_deref().unwrap_or_default().to_owned(),
        line: shown.line,
        variables,
    }
}

/// pyenv's root, where the unit tests find every interpreter: `$PYENV_ROOT`,
/// else `~/.pyenv`. `None` (with a note) when there is none outside CI; in CI
/// a missing pyenv fails the test that asked.
#[cfg(test)]
pub(crate) fn pyenv_root_for_tests() -> Option<std::path::PathBuf> {
    let root = std::env::var_os("PYENV_ROOT")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pyenv")))
        .filter(|root| root.join("versions").is_dir());
    if root.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "no pyenv versions directory ($PYENV_ROOT or ~/.pyenv); CI must test every CPython"
        );
        eprintln!("skipped: no pyenv versions directory");
    }
    root
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(code: u64, is_entry: bool) -> PythonFrame {
        PythonFrame {
            code,
            code_identity: 0,
            instruction: 0,
            frame: 0,
            is_entry: is_entry.into(),
            owner: 0,
        }
    }

    fn codes(groups: &[Vec<PythonFrame>]) -> Vec<Vec<u64>> {
        groups
            .iter()
            .map(|g| g.iter().map(|f| f.code).collect())
            .collect()
    }

    #[test]
    fn frames_split_at_each_entry_frame() {
        // Innermost first: 1 and 2 run in one call, entered at 2; 3 alone; 4 entered at 4.
        let frames = [
            frame(1, false),
            frame(2, true),
            frame(3, true),
            frame(4, true),
        ];
        let groups = split_by_entry(&frames, EntryMarker::IsEntry);
        assert_eq!(codes(&groups), vec![vec![1, 2], vec![3], vec![4]]);
    }

    #[test]
    fn shim_frames_split_and_are_dropped() {
        let shim = PythonFrame {
            owner: 3,
            ..frame(99, false)
        };
        let frames = [
            frame(1, false),
            frame(2, false),
            shim,
            frame(3, false),
            shim,
        ];
        let groups = split_by_entry(&frames, EntryMarker::ShimOwner(3));
        assert_eq!(codes(&groups), vec![vec![1, 2], vec![3]]);
    }

    #[test]
    fn each_eval_frame_is_replaced_by_its_group_innermost_first() {
        let user = |a| RawFrame::ReturnAddress(Space::User, a);
        let native = vec![
            RawFrame::InstructionPointer(Space::Kernel, 0xffff_0000),
            RawFrame::InstructionPointer(Space::User, 0x10), // a C function
            user(0x101),                                     // eval: the inner call
            user(0x20),                                      // a C function calling back in
            user(0x102),                                     // eval: the outer call
            user(0x30),                                      // main
        ];
        let groups = vec![
            vec![RawFrame::Python(1), RawFrame::Python(2)],
            vec![RawFrame::Python(3)],
        ];
        let merged = place(native, groups, |a| (0x100..0x200).contains(&a));
        assert_eq!(
            merged,
            vec![
                RawFrame::InstructionPointer(Space::Kernel, 0xffff_0000),
                RawFrame::InstructionPointer(Space::User, 0x10),
                RawFrame::Python(1),
                RawFrame::Python(2),
                user(0x20),
                RawFrame::Python(3),
                user(0x30),
            ]
        );
    }

    #[test]
    fn groups_without_native_frames_go_outermost() {
        let native = vec![
            RawFrame::InstructionPointer(Space::User, 0x101),
            RawFrame::Gap(Space::User, Gap::Truncated),
        ];
        let groups = vec![vec![RawFrame::Python(1)], vec![RawFrame::Python(2)]];
        let merged = place(native, groups, |a| (0x100..0x200).contains(&a));
        assert_eq!(
            merged,
            vec![
                RawFrame::Python(1),
                RawFrame::Gap(Space::User, Gap::Truncated),
                RawFrame::Python(2),
            ]
        );
    }

    #[test]
    fn before_3_11_every_frame_is_a_call_of_its_own() {
        let frames = [frame(1, false), frame(2, false), frame(3, false)];
        let groups = split_by_entry(&frames, EntryMarker::EveryFrame);
        assert_eq!(codes(&groups), vec![vec![1], vec![2], vec![3]]);
    }

    #[test]
    fn a_chain_that_loops_is_cut_at_the_first_repeat() {
        let at = |code, address| PythonFrame {
            frame: address,
            ..frame(code, false)
        };
        let chain = [at(1, 0x100), at(2, 0x200), at(1, 0x100), at(2, 0x200)];
        let (kept, looped) = until_loop(&chain);
        assert!(looped);
        assert_eq!(kept.iter().map(|f| f.code).collect::<Vec<_>>(), [1, 2]);
        let (kept, looped) = until_loop(&chain[..2]);
        assert!(!looped);
        assert_eq!(kept.len(), 2);
    }

    /// A Python with one interpreter registered for pid 7, whose binary is `/lib/libpython.so`.
    fn python_with_interpreter(shown: PythonFrames) -> Python {
        let mut python = Python::new(shown);
        python.interpreter_paths.insert("/lib/libpython.so".into());
        python.interpreters.insert(
            7,
            Interpreter {
                layout: Arc::new(*layout::for_version(3, 10).unwrap()),
                runtime: 0,
                eval: 0x100..0x200,
                memory: Arc::new(ProcessMemory { pid: u32::MAX }),
                pid: u32::MAX,
                live: true,
                codes: HashMap::new(),
                frames: HashMap::new(),
                threads: HashSet::new(),
            },
        );
        python
    }

    #[test]
    fn unreadable_and_looping_chains_end_in_a_marker() {
        let mut python = python_with_interpreter(PythonFrames::Merged);
        let native = vec![RawFrame::ReturnAddress(Space::User, 0x150)];
        // Nothing read: the marker takes the eval frame's place.
        let unreadable = PythonSample {
            status: Some(PythonStatus::Unreadable),
            frames: Vec::new(),
        };
        let merged = python.merge(7, 8, native.clone(), &unreadable);
        assert_eq!(merged, [RawFrame::Gap(Space::User, Gap::PythonUnreadable)]);
        // A loop: the frames up to the repeat (named "unreadable": the memory
        // behind them is not a process here), then the marker.
        let at = |address| PythonFrame {
            frame: address,
            ..frame(0x1000, false)
        };
        let looped = PythonSample {
            status: Some(PythonStatus::Truncated),
            frames: vec![at(0x10), at(0x10), at(0x10)],
        };
        let merged = python.merge(7, 8, native, &looped);
        assert_eq!(merged.len(), 2, "{merged:?}");
        assert!(matches!(merged[0], RawFrame::Python(_)));
        assert_eq!(merged[1], RawFrame::Gap(Space::User, Gap::PythonLoop));
        let shown = python.frame(match merged[0] {
            RawFrame::Python(id) => id,
            _ => unreachable!(),
        });
        assert_eq!(shown.unknown, Some(Unknown::PythonCodeUnreadable(0x1000)));
        assert_eq!(
            shown.unknown.as_ref().map(ToString::to_string).as_deref(),
            Some("code object at 0x1000 unreadable")
        );
    }

    fn native(function: Option<&str>, module: &str) -> Arc<Frame> {
        Arc::new(Frame {
            function: function.map(Into::into),
            module: Some(module.into()),
            ..Frame::code(false, Some(0x10))
        })
    }

    fn python_frame(function: &str) -> Arc<Frame> {
        Arc::new(Frame {
            function: Some(function.into()),
            ..Frame::python()
        })
    }

    #[test]
    fn call_machinery_between_python_frames_is_left_out() {
        let lib = "/lib/libpython.so";
        let stack = vec![
            native(Some("_PyEval_EvalCode"), lib), // outside the Python frames: kept
            python_frame("run"),
            native(Some("cfunction_vectorcall_FASTCALL_KEYWORDS"), lib),
            native(Some("builtin_sorted"), lib), // a C function called from Python: kept
            native(None, lib),                   // no name in a stripped build: kept
            native(Some("method_vectorcall"), lib),
            native(Some("_PyFunction_Vectorcall"), "/usr/lib/other.so"), // not the interpreter
            native(Some("_PyEval_Vector"), lib),
            python_frame("key"),
            native(Some("PyObject_Call"), lib), // inside the innermost Python frame: kept
        ];
        let names = |frames: &[Arc<Frame>]| -> Vec<String> {
            frames
                .iter()
                .map(|f| f.function.as_deref().unwrap_or("?").to_owned())
                .collect()
        };
        let mut frames = stack.clone();
        python_with_interpreter(PythonFrames::Merged).leave_out_call_machinery(&mut frames);
        assert_eq!(
            names(&frames),
            [
                "_PyEval_EvalCode",
                "run",
                "builtin_sorted",
                "?",
                "_PyFunction_Vectorcall",
                "key",
                "PyObject_Call"
            ]
        );
        let mut frames = stack.clone();
        python_with_interpreter(PythonFrames::MergedAll).leave_out_call_machinery(&mut frames);
        assert_eq!(frames, stack);
    }

    /// `-X perf`'s trampolines, named by the perf map, are left out
    /// wherever they are; with `--all-native-frames` they stay.
    #[test]
    fn perf_trampolines_are_left_out() {
        let lib = "/lib/libpython.so";
        let trampoline = |name: &str| {
            Arc::new(Frame {
                function: Some(name.into()),
                module: Some("/tmp/perf-7.map".into()),
                ..Frame::code(false, Some(0x7f00))
            })
        };
        let stack = vec![
            native(Some("_PyEval_EvalCode"), lib),
            trampoline("py::<module>:/srv/app.py"),
            python_frame("main"),
            trampoline("py::main:/srv/app.py"),
            native(Some("_PyEval_EvalFrameDefault"), lib),
            trampoline("py::work:/srv/app.py"),
            python_frame("work"),
        ];
        let mut frames = stack.clone();
        python_with_interpreter(PythonFrames::Merged).leave_out_call_machinery(&mut frames);
        let names: Vec<&str> = frames
            .iter()
            .map(|f| f.function.as_deref().unwrap_or("?"))
            .collect();
        assert_eq!(names, ["_PyEval_EvalCode", "main", "work"]);
        let mut frames = stack.clone();
        python_with_interpreter(PythonFrames::MergedAll).leave_out_call_machinery(&mut frames);
        assert_eq!(frames, stack);
    }
}
