//! Raw frames to displayable frames: where each address lies (from the
//! process table) and what it is (from the symbolizer), expanded into one
//! frame per function when calls were inlined.
//!
//! Two steps at two times. Locating needs the process's mappings, so it runs
//! as stacks arrive, while the process is most likely alive; it is a lookup in
//! a sorted table. Symbolizing needs only the file (kept open by the module),
//! so it waits until a report needs names: each unique address is symbolized
//! once, and a run with one report at the end pays nothing for symbols while
//! it samples (the first debug info of a library alone can take 50 ms).
//!
//! The frames of each stack are the resolver's own: a [`StackFrames`] table
//! keyed by stack id, next to the aggregator's addresses, never in them.
//!
//! Names and paths come from the target's files (symbols, debug info, mapped
//! file names), so they are escaped here, once per distinct address.
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use crate::{
    aggregate::{StackEntry, StackId, StackTable},
    bounded::BoundedCache,
    jit::{self, DumpFile, JitMaps},
    mappings::{MappingHistory, NotLocated},
    model::{Frame, Unknown},
    process::{Location, ProcessTable, SharedFile},
    python::Python,
    stack::{Gap, RawFrame, Space},
    symbolize::{Resolved, Symbolizer},
    text::{escape_controls_owned, escape_controls_shared},
};

/// The module of every kernel frame, allocated once.
static KERNEL_MODULE: std::sync::LazyLock<Arc<str>> =
    std::sync::LazyLock::new(|| "[kernel]".into());

/// How many kernel addresses keep their frames between reports before that
/// cache is emptied (see [`crate::bounded`]): kernel addresses belong to no
/// process, so retiring processes never frees them.
pub const KERNEL_FRAMES_CAPACITY: usize = 32_768;

/// Frames, outermost first, symbolized.
pub type Frames = Arc<[Arc<Frame>]>;

/// The frames of each symbolized stack, by stack id, and the merged stacks
/// of exited processes, which have frames but no addresses.
#[derive(Default)]
pub struct StackFrames {
    frames: HashMap<StackId, Frames>,
    /// Merged stacks of exited processes, by (name, frames without addresses).
    exited: HashMap<(Arc<str>, Frames), StackId>,
    /// Every frame of a merged stack, once: merged stacks share them.
    exited_frames: HashSet<Arc<Frame>>,
}

impl StackFrames {
    /// The frames of stack `id`, once symbolized.
    pub fn get(&self, id: StackId) -> Option<&Frames> {
        self.frames.get(&id)
    }

    pub fn insert(&mut self, id: StackId, frames: Frames) {
        self.frames.insert(id, frames);
    }

    /// The merged stack of exited processes named `name` that stack `id`
    /// merges into: the one whose frames show the same, else a new one.
    pub fn merged(&mut self, stacks: &mut StackTable, name: &Arc<str>, id: StackId) -> StackId {
        let frames = without_addresses(self.frames.get(&id), &mut self.exited_frames);
        let key = (name.clone(), frames);
        if let Some(&merged) = self.exited.get(&key) {
            return merged;
        }
        let merged = stacks.add_merged();
        self.frames.insert(merged, key.1.clone());
        self.exited.insert(key, merged);
        merged
    }

    /// Forgets the frames of freed stacks (their ids are reused).
    pub fn forget(&mut self, freed: &[StackId]) {
        for id in freed {
            self.frames.remove(id);
        }
    }
}

/// The frames as every process would show them: addresses differ between
/// runs of the same program (ASLR), file offsets and names do not. A named
/// frame is kept as its function, file and line, without its offset: the
/// instructions of one line would otherwise keep a merged stack each, and
/// under churn their number grows with the run. Each distinct frame is
/// allocated once, in `pool`.
fn without_addresses(frames: Option<&Frames>, pool: &mut HashSet<Arc<Frame>>) -> Frames {
    frames
        .map(|f| &f[..])
        .unwrap_or_default()
        .iter()
        .map(|frame| {
            let named = frame.function.is_some();
            let frame = Frame {
                address: None,
                offset: if named { None } else { frame.offset },
                ..Frame::clone(frame)
            };
            if let Some(shared) = pool.get(&frame) {
                return shared.clone();
            }
            let shared = Arc::new(frame);
            pool.insert(shared.clone());
            shared
        })
        .collect()
}

/// Resolves stacks, each distinct (process, address) once per run.
pub struct Resolver {
    symbolizer: Symbolizer,
    /// Frames for (process, image, raw frame) of user addresses, freed
    /// with their process.
    cache: HashMap<CacheKey, Arc<[Arc<Frame>]>>,
    /// Frames of kernel addresses, the same in every process: bounded.
    kernel: KernelFrames,
    /// Addresses located but not yet symbolized (None: a kernel address or a gap).
    located: HashMap<CacheKey, Option<Location>>,
    /// Stacks whose frames are not assembled yet.
    waiting: Vec<StackId>,
    /// Names of JIT code, from the perf maps of the processes.
    jit: JitMaps,
    /// The frames of the stacks assembled.
    stacks: StackFrames,
}

impl Default for Resolver {
    fn default() -> Self {
        Resolver {
            symbolizer: Symbolizer::default(),
            cache: HashMap::new(),
            kernel: BoundedCache::new(KERNEL_FRAMES_CAPACITY),
            located: HashMap::new(),
            waiting: Vec::new(),
            jit: JitMaps::default(),
            stacks: StackFrames::default(),
        }
    }
}

impl Resolver {
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads symbols before sampling: the kernel's now, if `kernel` (see
    /// [`Symbolizer::load_kernel_symbols`]), and the `shared` files' on the
    /// symbolizer's thread while start-up goes on (see
    /// [`Symbolizer::read_early`]). The first process to retire would
    /// otherwise pay for them while sampling: libc's compressed debug
    /// information alone is some 40 ms.
    pub fn read_symbols_early(&mut self, shared: &[SharedFile], kernel: bool) {
        for file in shared {
            self.symbolizer.read_early(&file.module, file.code_offset);
        }
        if kernel {
            self.symbolizer.load_kernel_symbols();
        }
    }

    /// A resolver whose caches of kernel frames and of named addresses
    /// empty past tiny sizes, for tests of what happens then.
    #[cfg(test)]
    fn with_capacities(kernel_frames: usize, symbols: usize) -> Self {
        Resolver {
            symbolizer: Symbolizer::with_capacities(symbols, symbols),
            kernel: BoundedCache::new(kernel_frames),
            ..Self::default()
        }
    }

    /// Locates every address of the given new stacks in its process's
    /// mappings at the time it was sampled: from the sideband's `history`
    /// when it knows them, else from `/proc`. Call it while the processes
    /// are likely alive, and before the history is released past the stacks.
    pub fn locate(
        &mut self,
        stacks: &StackTable,
        ids: &[StackId],
        processes: &mut ProcessTable,
        history: &MappingHistory,
    ) {
        for &id in ids {
            let entry = stacks.get(id);
            for raw in entry.raw.iter() {
                let key = cache_key(entry, raw);
                if self.cached(&key).is_some() || self.located.contains_key(&key) {
                    continue;
                }
                let location = match (raw.space(), raw.lookup_address()) {
                    (Space::User, Some(address)) => {
                        let location = locate_user(processes, history, entry, address);
                        Some(self.name_jit_code(processes, entry.tgid, address, location))
                    }
                    _ => None,
                };
                self.located.insert(key, location);
            }
        }
        self.waiting.extend_from_slice(ids);
    }

    /// Code without a file named by the process's perf map or jitdump, if
    /// one names it: now, while the process (and its `/tmp`) is most likely
    /// still there.
    fn name_jit_code(
        &mut self,
        processes: &mut ProcessTable,
        pid: u32,
        address: u64,
        location: Location,
    ) -> Location {
        match &location {
            Location::Special { name, .. } if may_hold_jit_code(name) => self
                .jit
                .lookup(pid, address, || jit_dump(processes, pid))
                .map_or(location, Location::Jit),
            _ => location,
        }
    }

    /// The frames of every stack symbolized so far.
    pub fn stack_frames(&self) -> &StackFrames {
        &self.stacks
    }

    /// The merged stack of exited processes named `name` that stack `id`
    /// merges into (see [`StackFrames::merged`]).
    pub fn merged(&mut self, stacks: &mut StackTable, name: &Arc<str>, id: StackId) -> StackId {
        self.stacks.merged(stacks, name, id)
    }

    /// The frames cached for an address.
    fn cached(&self, key: &CacheKey) -> Option<&Arc<[Arc<Frame>]>> {
        match key.2.space() {
            Space::Kernel => self.kernel.get(&key.2),
            Space::User => self.cache.get(key),
        }
    }

    /// Drops the cached frames of processes for which `gone` is true, and
    /// the frames of the stacks `freed`.
    pub fn forget(&mut self, gone: impl Fn(u32) -> bool, freed: &[StackId]) {
        self.stacks.forget(freed);
        self.cache.retain(|(pid, _, _), _| !gone(*pid));
        // Kernel addresses are located under pid 0, which never exits.
        self.located
            .retain(|(pid, _, _), _| *pid == 0 || !gone(*pid));
        self.jit.retain(|pid| !gone(pid));
    }

    /// The sizes of the caches, for debug logs.
    pub fn sizes(&self) -> String {
        format!(
            "{} cached user and {} kernel addresses, {}, {} located, {} stacks waiting, {}",
            self.cache.len(),
            self.kernel.len(),
            self.symbolizer.sizes(),
            self.located.len(),
            self.waiting.len(),
            self.jit.sizes()
        )
    }

    /// Whether stacks are waiting for [`Resolver::symbolize`].
    pub fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Symbolizes every located address in one batch per module (and one for
    /// the kernel), then assembles the frames of every waiting stack.
    pub fn symbolize(&mut self, stacks: &StackTable, python: &Python) {
        let pending = std::mem::take(&mut self.located);
        // 2. Symbolize in batches: one per module, one for the kernel.
        let mut by_module: HashMap<usize, (Arc<crate::process::Module>, Vec<u64>)> = HashMap::new();
        let mut kernel = Vec::new();
        let mut vdso = Vec::new();
        for ((_, _, raw), location) in &pending {
            match location {
                Some(Location::File {
                    module,
                    file_offset,
                }) => {
                    by_module
                        .entry(module.id)
                        .or_insert_with(|| (module.clone(), Vec::new()))
                        .1
                        .push(*file_offset);
                }
                Some(Location::Special { name, offset }) if name == VDSO => vdso.push(*offset),
                None if raw.space() == Space::Kernel => kernel.extend(raw.lookup_address()),
                _ => {}
            }
        }
        self.symbolizer.resolve_vdso(&vdso);
        for (module, offsets) in by_module.values() {
            self.symbolizer.resolve_user(module, offsets);
        }
        self.symbolizer.resolve_kernel(&kernel);

        // 3. Build and cache the frames of each address.
        for (key, location) in pending {
            let frames = match key.2 {
                RawFrame::Python(id) => Arc::from(vec![python.frame(id)]),
                raw => self.frames(&raw, location),
            };
            match key.2.space() {
                Space::Kernel => self.kernel.insert(key.2, frames),
                Space::User => _ = self.cache.insert(key, frames),
            }
        }

        // 4. Assemble each stack, outermost first: user frames, then kernel frames.
        for id in std::mem::take(&mut self.waiting) {
            let entry = stacks.get(id);
            let mut frames = Vec::new();
            for space in [Space::User, Space::Kernel] {
                for raw in entry.raw.iter().rev().filter(|r| r.space() == space) {
                    let cached = self.cached(&cache_key(entry, raw));
                    frames.extend(cached.expect("located or cached").iter().cloned());
                }
            }
            // Stacks taken in a tracepoint end in the machinery that ran tripod's
            // own program: not what the thread was doing.
            while frames.last().is_some_and(|f| is_tracing_frame(f)) {
                frames.pop();
            }
            python.leave_out_call_machinery(&mut frames);
            self.stacks.insert(id, frames.into());
        }
        // No stack waits now: the caches may be emptied (the frames built
        // keep their own references).
        self.kernel.trim();
        self.symbolizer.trim();
    }

    fn frames(&self, raw: &RawFrame, location: Option<Location>) -> Arc<[Arc<Frame>]> {
        let kernel = raw.space() == Space::Kernel;
        let frame = match *raw {
            RawFrame::Gap(_, gap) => return one(gap_frame(kernel, gap)),
            // Named by the caller, from the Python frame table.
            RawFrame::Python(_) => return one(Frame::python()),
            RawFrame::InstructionPointer(_, address) | RawFrame::ReturnAddress(_, address) => {
                Frame::code(kernel, Some(address))
            }
        };
        match location {
            Some(location) => self.user_frames(frame, location),
            None => {
                let lookup = raw.lookup_address().unwrap_or_default();
                let frame = Frame {
                    module: kernel.then(|| KERNEL_MODULE.clone()),
                    ..frame
                };
                expand(frame, self.symbolizer.kernel(lookup))
            }
        }
    }

    /// The frames of a user address, from where it lies.
    fn user_frames(&self, frame: Frame, location: Location) -> Arc<[Arc<Frame>]> {
        let unknown = |why| {
            one(Frame {
                unknown: Some(why),
                ..frame.clone()
            })
        };
        match location {
            Location::File {
                module,
                file_offset,
            } => {
                let frame = Frame {
                    module: Some(escape_controls_shared(&module.path)),
                    offset: Some(file_offset),
                    build_id: self.symbolizer.build_id(&module),
                    ..frame
                };
                expand(frame, self.symbolizer.user(&module, file_offset))
            }
            Location::Special { name, offset } if name == VDSO => {
                let frame = Frame {
                    module: Some(VDSO.into()),
                    offset: Some(offset),
                    ..frame
                };
                expand(frame, self.symbolizer.vdso(offset))
            }
            Location::Special { name, .. } => one(Frame {
                // `[anon:NAME]`: the target names its own mappings.
                module: Some(escape_controls_owned(name).into()),
                unknown: Some(Unknown::NoFile),
                ..frame
            }),
            // Escaped by the perf map's reader.
            Location::Jit(symbol) => one(Frame {
                module: Some(symbol.map),
                function: Some(symbol.function),
                ..frame
            }),
            Location::Unmapped => unknown(Unknown::NotExecutable),
            Location::ProcessExited => unknown(Unknown::ProcessExited),
            Location::ImageReplaced => unknown(Unknown::ImageReplaced),
        }
    }
}

/// The frames of kernel addresses, by raw frame.
type KernelFrames = BoundedCache<RawFrame, Arc<[Arc<Frame>]>>;

/// (process, image, frame): user addresses mean something in one image of
/// one process only.
type CacheKey = (u32, u64, RawFrame);

/// Kernel addresses mean the same in every process.
fn cache_key(entry: &StackEntry, raw: &RawFrame) -> CacheKey {
    match raw.space() {
        Space::Kernel => (0, 0, *raw),
        Space::User => (entry.tgid, entry.origin.image, *raw),
    }
}

/// Where a user address of `entry` lay when it was sampled. The history
/// answers when its records tell; `/proc` when the history says it may
/// (a process from before the run, records lost, no sideband); never for
/// an image an `exec` replaced since, which `/proc` no longer shows.
fn locate_user(
    processes: &mut ProcessTable,
    history: &MappingHistory,
    entry: &StackEntry,
    address: u64,
) -> Location {
    match history.locate(entry.tgid, address, entry.origin.located_at()) {
        Ok(found) => {
            let mapping = found.mapping.recorded(entry.tgid);
            processes.locate_recorded(&mapping, (address, found.file_offset))
        }
        Err(why) if why.may_read_proc() => processes.locate(entry.tgid, address),
        Err(NotLocated::Unmapped) => Location::Unmapped,
        Err(_) => Location::ImageReplaced,
    }
}

/// The jitdump process `pid` maps, if any: a file it maps executable, opened
/// like every mapped file (see [`crate::process`]).
fn jit_dump(processes: &mut ProcessTable, pid: u32) -> Option<DumpFile> {
    let (_, views) = processes.mappings(pid)?;
    let module = views
        .iter()
        .filter_map(|view| view.module.as_ref())
        .find(|module| jit::is_jitdump(&module.path))?;
    Some(DumpFile {
        file: module.open()?,
        shown: escape_controls_shared(&module.path),
    })
}

/// The name of the vDSO's mapping.
const VDSO: &str = "[vdso]";

/// Whether code in a mapping without a file may be a runtime's JIT code:
/// anonymous memory, not the kernel's own pages.
fn may_hold_jit_code(name: &str) -> bool {
    !matches!(name, VDSO | "[vsyscall]" | "[uprobes]")
}

fn one(frame: Frame) -> Arc<[Arc<Frame>]> {
    Arc::from(vec![Arc::new(frame)])
}

/// The marker frame of a part of the stack that was not collected.
fn gap_frame(kernel: bool, gap: Gap) -> Frame {
    let why = match gap {
        Gap::Truncated => return Frame::truncated(kernel),
        Gap::Failed(errno) => Unknown::StackNotCollected(errno),
        Gap::Vanished => Unknown::StackEvicted,
        Gap::Dropped => Unknown::StackDropped,
        Gap::PythonUnreadable => Unknown::PythonUnreadable,
        Gap::PythonLoop => Unknown::PythonLoop,
    };
    Frame::missing(kernel, why)
}

/// One frame per function at the address: the real one, then inlined calls.
fn expand(base: Frame, resolved: Option<Arc<Resolved>>) -> Arc<[Arc<Frame>]> {
    match resolved.as_deref() {
        Some(Resolved::Symbols(symbols)) => symbols
            .iter()
            .map(|s| {
                Arc::new(Frame {
                    function: Some(escape_controls_shared(&s.function)),
                    file: s.file.as_ref().map(escape_controls_shared),
                    line: s.line,
                    inlined: s.inlined,
                    ..base.clone()
                })
            })
            .collect(),
        // Escaped by the symbolizer, which made the reason from the target's files.
        Some(Resolved::Unknown(reason)) => one(Frame {
            unknown: Some(reason.clone()),
            ..base
        }),
        None => one(Frame {
            unknown: Some(Unknown::NotSymbolized),
            ..base
        }),
    }
}

/// Kernel frames of the BPF tracing path itself (`bpf_prog_<tag>_track_switch`,
/// `bpf_trace_run4`, `__traceiter_sched_switch`, ...).
fn is_tracing_frame(frame: &Frame) -> bool {
    frame.kernel
        && frame.function.as_deref().is_some_and(|name| {
            ["bpf_prog_", "bpf_trace_run", "__bpf_trace_", "__traceiter_"]
                .iter()
                .any(|prefix| name.starts_with(prefix))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        aggregate::Aggregator, config::PythonFrames, stack::RawFrame, symbolize::Symbol,
        task::TaskState,
    };

    #[inline(never)]
    #[no_mangle]
    extern "C" fn tripod_resolve_test_marker() -> u64 {
        std::hint::black_box(7)
    }

    #[test]
    fn stacks_of_our_own_binary_are_symbolized_into_the_resolvers_table() {
        let pid = std::process::id();
        let mut processes = ProcessTable::new();
        processes.observe(pid, "test");
        let address = tripod_resolve_test_marker as extern "C" fn() -> u64 as usize as u64;
        let raw = [
            RawFrame::InstructionPointer(Space::User, address),
            RawFrame::Gap(Space::User, Gap::Truncated),
        ];
        let mut aggregator = Aggregator::new();
        let (id, new) = aggregator.add(pid, pid, "test", &raw, TaskState::Running, 1);
        assert!(new);
        let mut resolver = Resolver::new();
        let history = MappingHistory::new(crate::mappings::Scope::All);
        resolver.locate(&aggregator.stacks, &[id], &mut processes, &history);
        assert!(resolver.has_waiting());
        assert!(resolver.stack_frames().get(id).is_none());
        let python = Python::new(PythonFrames::Off);
        resolver.symbolize(&aggregator.stacks, &python);
        assert!(!resolver.has_waiting());

        // Outermost first: the truncation marker, then our function.
        let frames = resolver.stack_frames().get(id).expect("symbolized").clone();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].kind, crate::model::FrameKind::Truncated);
        let frame = &frames[1];
        assert_eq!(
            frame.function.as_deref(),
            Some("tripod_resolve_test_marker")
        );
        assert_eq!(frame.address, Some(address));
        let exe = std::env::current_exe().unwrap();
        let name = exe.file_name().unwrap().to_str().unwrap();
        assert_eq!(frame.module_name(), Some(name));

        // Retiring the process frees its stack: its frames go with it.
        resolver.forget(|gone| gone == pid, &[id]);
        assert!(resolver.stack_frames().get(id).is_none());
    }

    /// The address of a kernel function, from `/proc/kallsyms` (as root).
    fn kernel_function_address(name: &str) -> u64 {
        let kallsyms = std::fs::read_to_string("/proc/kallsyms").expect("/proc/kallsyms");
        let address = kallsyms.lines().find_map(|line| {
            let mut fields = line.split_whitespace();
            let address = u64::from_str_radix(fields.next()?, 16).ok()?;
            let kind = fields.next()?;
            (kind.eq_ignore_ascii_case("t") && fields.next()? == name).then_some(address)
        });
        match address {
            Some(address) if address != 0 => address,
            _ => panic!("{name} has no address in /proc/kallsyms: run the unit tests as root"),
        }
    }

    #[test]
    fn kernel_frames_are_named_again_once_their_caches_are_emptied() {
        let pid = std::process::id();
        let address = kernel_function_address("schedule");
        let kernel = |more: &[RawFrame]| {
            let mut raw = vec![RawFrame::InstructionPointer(Space::Kernel, address)];
            raw.extend_from_slice(more);
            raw
        };
        let mut processes = ProcessTable::new();
        let history = MappingHistory::new(crate::mappings::Scope::All);
        let python = Python::new(PythonFrames::Off);
        let mut aggregator = Aggregator::new();
        // Every cache emptied after each batch.
        let mut resolver = Resolver::with_capacities(0, 0);
        let mut named = |aggregator: &mut Aggregator, resolver: &mut Resolver, raw: &[RawFrame]| {
            let (id, new) = aggregator.add(pid, pid, "test", raw, TaskState::Running, 1);
            assert!(new);
            resolver.locate(&aggregator.stacks, &[id], &mut processes, &history);
            resolver.symbolize(&aggregator.stacks, &python);
            let frames = resolver.stack_frames().get(id).expect("symbolized").clone();
            (id, frames)
        };
        let (first, frames) = named(&mut aggregator, &mut resolver, &kernel(&[]));
        assert_eq!(frames[0].function.as_deref(), Some("schedule"));
        assert_eq!(frames[0].address, Some(address));
        assert_eq!(resolver.kernel.len(), 0, "emptied past its capacity");
        // The same address in a new stack: looked up again, named the same.
        let truncated = RawFrame::Gap(Space::Kernel, Gap::Truncated);
        let (_, frames) = named(&mut aggregator, &mut resolver, &kernel(&[truncated]));
        assert_eq!(frames[1].function.as_deref(), Some("schedule"));
        assert_eq!(frames[1].unknown, None);
        // The first stack keeps its frames.
        let kept = resolver.stack_frames().get(first).expect("kept");
        assert_eq!(kept[0].function.as_deref(), Some("schedule"));
        assert_eq!(
            resolver.symbolizer.sizes(),
            "0 user and 0 kernel addresses named"
        );
    }

    #[test]
    fn exited_stacks_merge_by_name_and_frames_without_addresses() {
        // Two instructions of one line of `work`, at their own offsets.
        let frame = |address: u64, function: &str| {
            Arc::new(Frame {
                function: Some(function.into()),
                offset: Some(address + 4),
                ..Frame::code(false, Some(address))
            })
        };
        let mut stacks = StackTable::default();
        let ids: Vec<StackId> = [(10, 0x1000), (20, 0x2000), (30, 0x3000)]
            .iter()
            .map(|&(tgid, a)| {
                stacks
                    .intern(tgid, &[RawFrame::ReturnAddress(Space::User, a)])
                    .0
            })
            .collect();
        let mut table = StackFrames::default();
        table.insert(ids[0], Arc::from(vec![frame(0x1000, "work")]));
        table.insert(ids[1], Arc::from(vec![frame(0x2000, "work")]));
        table.insert(ids[2], Arc::from(vec![frame(0x3000, "other")]));
        let job: Arc<str> = "job".into();
        let a = table.merged(&mut stacks, &job, ids[0]);
        let b = table.merged(&mut stacks, &job, ids[1]);
        let c = table.merged(&mut stacks, &job, ids[2]);
        let d = table.merged(&mut stacks, &"server".into(), ids[0]);
        assert_eq!(a, b);
        assert!(c != a && d != a && d != c);
        let merged = table.get(a).unwrap();
        assert_eq!((merged[0].address, merged[0].offset), (None, None));
        assert_eq!(merged[0].function.as_deref(), Some("work"));
        // Merged stacks share their frames.
        assert!(Arc::ptr_eq(&merged[0], &table.get(d).unwrap()[0]));
        // An unnamed frame has only its offset to tell it apart: kept.
        let mut unnamed = |tgid: u32, offset| {
            let (id, _) = stacks.intern(tgid, &[RawFrame::ReturnAddress(Space::User, 0x9000)]);
            let frame = Frame {
                offset: Some(offset),
                ..Frame::code(false, Some(0x9000))
            };
            (id, frame)
        };
        let (e, frame_e) = unnamed(40, 0x10);
        let (f, frame_f) = unnamed(50, 0x20);
        table.insert(e, Arc::from(vec![Arc::new(frame_e)]));
        table.insert(f, Arc::from(vec![Arc::new(frame_f)]));
        let (e, f) = (
            table.merged(&mut stacks, &job, e),
            table.merged(&mut stacks, &job, f),
        );
        assert_ne!(e, f);
        assert_eq!(table.get(e).unwrap()[0].offset, Some(0x10));
    }

    #[test]
    fn symbols_from_target_files_are_escaped() {
        let base = Frame::code(false, Some(0x1000));
        let symbols = Resolved::Symbols(vec![Symbol {
            function: "evil\x1b]0;pwned\x07\r\nFAKE".into(),
            file: Some("/src/x\x1b[2J.c".into()),
            line: Some(3),
            inlined: false,
        }]);
        let frames = expand(base.clone(), Some(Arc::new(symbols)));
        assert_eq!(
            frames[0].function.as_deref(),
            Some("evil\\x1b]0;pwned\\x07\\x0d\\x0aFAKE")
        );
        assert_eq!(frames[0].file.as_deref(), Some("/src/x\\x1b[2J.c"));
        // Reasons are escaped where the symbolizer makes them (see its tests).
        let unknown = Resolved::Unknown(Unknown::MissingSyms);
        let frames = expand(base.clone(), Some(Arc::new(unknown)));
        assert_eq!(frames[0].unknown, Some(Unknown::MissingSyms));
        let frames = expand(base, None);
        assert_eq!(frames[0].unknown, Some(Unknown::NotSymbolized));
    }

    /// Parts of stacks that were not collected become marker frames whose
    /// reasons read as they did when they were strings.
    #[test]
    fn gaps_become_markers_with_their_reasons() {
        use tripod_common::errno::{EEXIST, EFAULT, ENOMEM};
        assert_eq!(gap_frame(true, Gap::Truncated), Frame::truncated(true));
        for (gap, text) in [
            (Gap::Failed(EFAULT), "stack not readable (EFAULT)"),
            (
                Gap::Failed(EEXIST),
                "stack not stored: hash collision (EEXIST)",
            ),
            (
                Gap::Failed(ENOMEM),
                "stack not stored: stack map full (ENOMEM)",
            ),
            (Gap::Failed(22), "stack not collected: errno 22"),
            (Gap::Vanished, "stack evicted before it was read"),
            (Gap::Dropped, "stack dropped: ring buffer full"),
            (Gap::PythonUnreadable, "Python frames unreadable"),
            (
                Gap::PythonLoop,
                "Python frames unreadable: the frame chain loops",
            ),
        ] {
            let frame = gap_frame(false, gap);
            assert_eq!(frame.kind, crate::model::FrameKind::Missing);
            assert_eq!(frame.unknown.map(|u| u.to_string()).as_deref(), Some(text));
        }
    }
}
