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
pub(crate) mod detect;
pub mod layout;
mod memory;
mod objects;

use std::{
    collections::{HashMap, HashSet},
    ops::Range,
    path::Path,
    sync::Arc,
};

use tripod_common::{PythonFrame, PythonProcess, PythonStatus};

use crate::{
    config::PythonFrames,
    process::{MappingView, ProcessTable},
    report::Frame,
    stack::{Gap, RawFrame, Space},
};
use code::Code;
use detect::{Binary, Placed};
use layout::{EntryMarker, Layout};
use memory::{Memory as _, ProcessMemory};

/// The Python frames of one record, as the kernel sent them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PythonSample {
    pub status: Option<PythonStatus>,
    /// Innermost first.
    pub frames: Vec<PythonFrame>,
}

/// The local variables of one Python frame of a dumped thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameLocals {
    pub function: String,
    pub file: String,
    pub line: Option<u32>,
    /// Name and repr, in the code object's order; unbound ones are left out.
    pub variables: Vec<(String, String)>,
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
    layout: &'static Layout,
    /// Where `_PyRuntime` is.
    runtime: u64,
    eval: Range<u64>,
    memory: ProcessMemory,
    /// Code objects read so far.
    codes: HashMap<u64, Arc<Code>>,
    /// Frame table ids by (code object, instruction).
    frames: HashMap<(u64, u64), u32>,
    /// Threads the kernel looked up a thread state for.
    threads: HashSet<u32>,
}

/// Every Python process of the run, and every distinct Python frame seen.
pub struct Python {
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
    frames: Vec<Arc<Frame>>,
    frame_ids: HashMap<Arc<Frame>, u32>,
}

impl Python {
    pub fn new(shown: PythonFrames) -> Self {
        Python {
            shown,
            binaries: HashMap::new(),
            interpreters: HashMap::new(),
            checked: HashMap::new(),
            changes: Vec::new(),
            unsupported: HashSet::new(),
            frames: Vec::new(),
            frame_ids: HashMap::new(),
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
    ) -> Option<(Placed, &'static Layout)> {
        for mapping in mappings {
            let Some(module) = &mapping.module else {
                continue;
            };
            let file_name = module.path.rsplit('/').next().unwrap_or(&module.path);
            if !detect::is_candidate(file_name, exe == Some(module.path.as_str())) {
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
            let Some(layout) = layout::for_version(placed.major, placed.minor) else {
                if self.unsupported.insert((placed.major, placed.minor)) {
                    eprintln!(
                        "[tripod] pid {pid} runs Python {}.{}, whose frames tripod-bpf cannot read (supported: {}); its native stacks are sampled",
                        placed.major,
                        placed.minor,
                        layout::supported_versions()
                    );
                }
                return None;
            };
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

    fn register(&mut self, pid: u32, placed: Placed, layout: &'static Layout) {
        self.interpreters.insert(
            pid,
            Interpreter {
                layout,
                runtime: placed.runtime,
                eval: placed.eval,
                memory: ProcessMemory { pid },
                codes: HashMap::new(),
                frames: HashMap::new(),
                threads: HashSet::new(),
            },
        );
        let process = PythonProcess {
            runtime: placed.runtime,
            offsets: layout.kernel,
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
        self.frames[id as usize].clone()
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
        if python.frames.is_empty() {
            return native;
        }
        let mut groups = self.groups(tgid, &python.frames);
        // Outer Python frames were cut (the chain was deeper than the eBPF
        // program walks): say so where they would be.
        if python.status == Some(PythonStatus::Truncated) {
            if let Some(outermost) = groups.last_mut() {
                outermost.push(RawFrame::Gap(Space::User, Gap::Truncated));
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
        split_by_entry(frames, interpreter.layout.entry)
            .into_iter()
            .map(|group| {
                group
                    .iter()
                    .map(|frame| {
                        let key = (frame.code, frame.instruction);
                        let id = match interpreter.frames.get(&key) {
                            Some(&id) => id,
                            None => {
                                let shown = describe(interpreter, frame);
                                let id = intern(&mut self.frames, &mut self.frame_ids, shown);
                                interpreter.frames.insert(key, id);
                                id
                            }
                        };
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
        frames
            .iter()
            .rev()
            .filter(
                |f| !matches!(interpreter.layout.entry, EntryMarker::ShimOwner(o) if o == f.owner),
            )
            .map(|frame| frame_locals(interpreter, frame))
            .collect()
    }
}

/// Splits a thread's frames (innermost first) into the groups each
/// `_PyEval_EvalFrameDefault` call runs, innermost call first.
fn split_by_entry(frames: &[PythonFrame], entry: EntryMarker) -> Vec<Vec<PythonFrame>> {
    let mut groups = vec![Vec::new()];
    for frame in frames {
        match entry {
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
fn code_of(interpreter: &mut Interpreter, address: u64) -> Option<Arc<Code>> {
    if let Some(code) = interpreter.codes.get(&address) {
        return Some(code.clone());
    }
    let code = Arc::new(Code::read(
        &interpreter.memory,
        interpreter.layout,
        address,
    )?);
    interpreter.codes.insert(address, code.clone());
    Some(code)
}

/// A Python frame as shown: function, file and line.
fn describe(interpreter: &mut Interpreter, frame: &PythonFrame) -> Frame {
    let layout = interpreter.layout;
    match code_of(interpreter, frame.code) {
        Some(code) => Frame {
            function: Some(code.name.to_string()),
            file: Some(code.file.to_string()),
            line: code.line(layout, frame.instruction),
            ..Frame::python()
        },
        None => Frame {
            unknown: Some(format!("code object at {:#x} unreadable", frame.code)),
            ..Frame::python()
        },
    }
}

fn intern(frames: &mut Vec<Arc<Frame>>, ids: &mut HashMap<Arc<Frame>, u32>, frame: Frame) -> u32 {
    if let Some(&id) = ids.get(&frame) {
        return id;
    }
    let frame = Arc::new(frame);
    let id = frames.len() as u32;
    frames.push(frame.clone());
    ids.insert(frame, id);
    id
}

fn frame_locals(interpreter: &mut Interpreter, frame: &PythonFrame) -> FrameLocals {
    let layout = interpreter.layout;
    let shown = describe(interpreter, frame);
    let mut variables = Vec::new();
    if let Some(code) = code_of(interpreter, frame.code) {
        let memory = &interpreter.memory;
        let names = code::local_names(memory, layout, code.address).unwrap_or_default();
        let slots = frame.frame + layout.frame_localsplus as u64;
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
        function: shown.function.unwrap_or_else(|| "[unknown]".into()),
        file: shown.file.unwrap_or_default(),
        line: shown.line,
        variables,
    }
}

/// The file name as flame graphs show it: the standard library and
/// site-packages relative to `lib/python3.X/`, other paths as they are.
pub fn short_file(file: &str) -> &str {
    if let Some(at) = file.find("/lib/python3.") {
        let rest = &file[at + "/lib/python3.".len()..];
        if let Some(slash) = rest.find('/') {
            return &rest[slash + 1..];
        }
    }
    file
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(code: u64, is_entry: bool) -> PythonFrame {
        PythonFrame {
            code,
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
    fn file_names_are_shortened_below_the_standard_library() {
        assert_eq!(
            short_file("/usr/lib/python3.11/json/decoder.py"),
            "json/decoder.py"
        );
        assert_eq!(
            short_file("/venv/lib/python3.11/site-packages/x/y.py"),
            "site-packages/x/y.py"
        );
        assert_eq!(short_file("/srv/app.py"), "/srv/app.py");
    }
}
