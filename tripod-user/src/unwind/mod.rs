//! User stacks from DWARF call frame information, for code built without
//! frame pointers.
//!
//! For each sample the kernel sends the user registers (ip, sp, bp) and a
//! copy of the top of the user stack (the bytes at sp, sp+1, ...). This
//! module walks that copy with [framehop], using the `.eh_frame` /
//! `.eh_frame_hdr` (or `.debug_frame`) sections of the files the process maps.
//!
//! **Contract.** The unwinder only produces addresses. It does no
//! symbolization: the frames it returns go through the same path as
//! frame-pointer stacks ([`crate::resolve`]). Return addresses are stored raw,
//! as framehop reports them (just past the call); [`RawFrame::lookup_address`]
//! subtracts one at symbolization, so a call that is the last instruction of
//! a function still names that function. Subtracting here as well would make
//! every caller's line off by one instruction.
//!
//! **State.** One framehop unwinder per process (framehop models one address
//! space), rebuilt from [`ProcessTable::mappings`] only when the process's
//! mapping generation changes. Each file's unwind sections are read once per
//! run and shared, by [`Module::id`](crate::process::Module), between all the
//! processes that map it. One framehop rule cache serves every process. An
//! unwind itself does no file I/O and allocates only its output.
//!
//! **Truncation.** A stack that framehop walks to its root (for example
//! `_start` or `clone3`, whose unwind info marks the end) ends with its
//! outermost return address. Otherwise the last frame is
//! [`Gap::Truncated`]: framehop failed (typically a read past the copied
//! bytes), a return address fell outside every executable mapping of the
//! process (it is then dropped: it was read from garbage), or the stack was
//! deeper than [`MAX_UNWIND_DEPTH`].
//!
//! **Code without unwind information** (JIT code in anonymous memory, a
//! file whose unwind sections cannot be parsed) is in no framehop module.
//! The walk steps over such a frame itself ([`bridge`]: the frame pointer,
//! else a short scan above `sp`, each checked by unwinding on from the
//! caller it finds) and resumes with framehop in the caller's module.
//!
//! A library loaded after the snapshot shows up as an address outside every
//! mapping; the mappings are then re-read (at most once per
//! [`REFRESH_INTERVAL`] per process) and the stack unwound again.
pub(crate) mod bridge;
mod compiler;
pub(crate) mod elf;
pub(crate) mod tables;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    ops::Range,
    sync::Arc,
    time::{Duration, Instant},
};

use framehop::{
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
    FrameAddress, Unwinder as _,
};

use crate::{
    mappings::{InForceKey, MappingHistory},
    model::{TableFile, TableMapping},
    process::{MappingView, Module, ProcessTable, SharedFile},
    stack::{Gap, RawFrame, Space},
};
use bridge::{Regs, Stack};
use compiler::TableCompiler;
pub(crate) use elf::{load_bias, LoadSegment};
use elf::{Bytes, UnwindFile};

/// Frames past this depth are cut off and the stack marked truncated.
pub const MAX_UNWIND_DEPTH: usize = 512;

/// How often, at most, an address outside the known mappings makes us
/// re-read a process's mappings.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// User registers at the sample, where unwinding starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserRegs {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

/// Unwinds copied user stacks; holds the caches of one run.
pub struct Unwinder {
    /// Framehop's rule cache, shared by all processes.
    cache: CacheX86_64,
    /// Unwind data by [`Module::id`](crate::process::Module); `None` for files
    /// that could not be read or have no unwind sections.
    files: HashMap<usize, Option<Arc<UnwindFile>>>,
    /// The vDSO's unwind data, read from our own process on first use.
    vdso: Option<Option<Arc<UnwindFile>>>,
    processes: HashMap<u32, ProcessUnwinder>,
    /// `--unwind tables`: each file's rows by module id (the vDSO's under
    /// [`VDSO_ID`]), compiled on a thread of their own.
    compiler: TableCompiler,
}

/// The key of the vDSO's rows among the files' (module ids count up from 0).
const VDSO_ID: usize = usize::MAX;

/// Where the mappings an unwinder was built from came from, and their
/// generation there: it is rebuilt when they change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Built {
    /// [`ProcessTable::mappings_generation`]: `/proc` as read.
    Proc(u64),
    /// [`MappingHistory::complete_in_force_at`]: the sideband's records, the
    /// mappings in force at the sample's time.
    History(InForceKey),
}

/// The unwinding state of one process.
struct ProcessUnwinder {
    /// What this was built from; `None` while the mappings are unknown.
    generation: Option<Built>,
    unwinder: UnwinderX86_64<Bytes>,
    /// Every executable mapping (with or without a file), sorted by address.
    code: Vec<Range<u64>>,
    /// The address ranges of framehop's modules (files with unwind
    /// information, the vDSO), sorted: code outside them is stepped over
    /// by [`bridge::step`].
    unwound: Vec<Range<u64>>,
    /// The first bytes of each file's entry point: a walk that ends there
    /// reached the root of the program's first thread.
    entries: Vec<Range<u64>>,
    /// When an address outside `code` last made us re-read the mappings.
    last_refresh: Option<Instant>,
    /// How many framehop modules `unwinder` has, and how many times this
    /// state was built (for tests).
    modules: usize,
    builds: u32,
}

/// How a walk ended.
enum Walk {
    /// Framehop found the root, or gave up; the frames say which.
    Done,
    /// This address (a lookup address: a return address minus one) is in no
    /// executable mapping we know of.
    Outside(u64),
}

impl Default for Unwinder {
    fn default() -> Self {
        Self::new()
    }
}

impl Unwinder {
    pub fn new() -> Self {
        Unwinder {
            cache: CacheX86_64::new(),
            files: HashMap::new(),
            vdso: None,
            processes: HashMap::new(),
            compiler: TableCompiler::default(),
        }
    }

    /// `--unwind tables`: the executable mappings of `pid` (as `/proc`
    /// shows them now) whose files' rows are compiled, with the rows. A
    /// file not compiled yet is asked for and left out: [`Self::tables_compiled`]
    /// names `pid` once it is done. Each file is compiled once per run.
    /// `None` when the mappings are unknown.
    pub fn tables(&mut self, pid: u32, processes: &mut ProcessTable) -> Option<Vec<TableMapping>> {
        let (_, views) = processes.mappings(pid)?;
        let mut out = Vec::new();
        for view in &views {
            let (id, file) = match (&view.module, view.special.as_deref()) {
                (Some(module), _) => (module.id, self.unwind_file(module)),
                (None, Some("[vdso]")) => (VDSO_ID, self.vdso_file()),
                _ => continue,
            };
            let Some(file) = file else { continue };
            let Some(bias) = file.bias(view.start, view.file_offset) else {
                continue;
            };
            if let Some(Ok(rows)) = self.compiler.rows(id, &file, pid) {
                out.push(TableMapping {
                    start: view.start,
                    end: view.end,
                    bias,
                    file: id,
                    rows: rows.clone(),
                });
            }
        }
        out.sort_by_key(|m| m.start);
        Some(out)
    }

    /// `--unwind tables`, at start-up: the rows of the files most live
    /// processes map (see [`ProcessTable::shared_files`]) and of the vDSO,
    /// which every process maps, compiled now, so that a process started
    /// later only waits for its own program's. Big files go to the
    /// compiling thread and are not returned: their rows are loaded when a
    /// process that maps them is first sent.
    pub fn prepare_tables(&mut self, shared: &[SharedFile]) -> Vec<TableFile> {
        let mut files = vec![(VDSO_ID, self.vdso_file())];
        for file in shared {
            files.push((file.module.id, self.unwind_file(&file.module)));
        }
        files
            .into_iter()
            .filter_map(|(id, file)| match self.compiler.compile(id, &file?)? {
                Ok(rows) => Some(TableFile {
                    file: id,
                    rows: rows.clone(),
                }),
                Err(_) => None,
            })
            .collect()
    }

    /// The unwind data of `module`'s file, read the first time it is asked
    /// for; `None` when it cannot be read or has none.
    fn unwind_file(&mut self, module: &Module) -> Option<Arc<UnwindFile>> {
        self.files
            .entry(module.id)
            .or_insert_with(|| module.open().and_then(UnwindFile::read).map(Arc::new))
            .clone()
    }

    /// The vDSO's unwind data, read from our own process on first use.
    fn vdso_file(&mut self) -> Option<Arc<UnwindFile>> {
        self.vdso
            .get_or_insert_with(|| UnwindFile::vdso().map(Arc::new))
            .clone()
    }

    /// `--unwind tables`: the processes whose files were compiled since the
    /// last call, for [`Self::tables`] again.
    pub fn tables_compiled(&mut self) -> Vec<u32> {
        self.compiler.finished()
    }

    /// [`Self::tables_compiled`], once every file asked for is compiled or
    /// at `deadline` (for tests).
    #[cfg(test)]
    pub fn wait_for_tables(&mut self, deadline: Instant) -> Vec<u32> {
        self.compiler.wait(deadline)
    }

    /// Files whose call frame information could not be compiled, by reason.
    pub fn uncompilable(&self) -> (usize, usize) {
        (
            self.compiler.failed(tables::Uncompilable::Malformed),
            self.compiler.failed(tables::Uncompilable::TooManyRows),
        )
    }

    /// Unwinds one copied stack of process `pid`. `stack` holds the bytes at
    /// `regs.sp`, `regs.sp + 1`, ... Returns frames innermost first: the
    /// instruction pointer, then one return address per caller, then
    /// [`Gap::Truncated`] if the walk stopped before the root of the stack.
    /// Never fails: garbage in gives a short, truncated stack. For tests,
    /// with `/proc`'s mappings only: the pipeline uses [`Self::unwind_at`].
    #[cfg(test)]
    pub fn unwind(
        &mut self,
        pid: u32,
        regs: UserRegs,
        stack: &[u8],
        processes: &mut ProcessTable,
    ) -> Vec<RawFrame> {
        let none = MappingHistory::new(crate::mappings::Scope::Pids(Default::default()));
        self.unwind_at((pid, 0), regs, stack, processes, &none)
    }

    /// [`Self::unwind`] of a stack sampled at `time_ns`: with the mappings
    /// `history` says were in force then when it knows them all (a process
    /// started in the run, perhaps gone already), else with `/proc`'s.
    pub fn unwind_at(
        &mut self,
        (pid, time_ns): (u32, u64),
        regs: UserRegs,
        stack: &[u8],
        processes: &mut ProcessTable,
        history: &MappingHistory,
    ) -> Vec<RawFrame> {
        // Room for most stacks without growing.
        let mut frames = Vec::with_capacity(32);
        if stack.is_empty() {
            // Nothing to walk: even the first return address is missing.
            frames.push(RawFrame::InstructionPointer(Space::User, regs.ip));
            frames.push(RawFrame::Gap(Space::User, Gap::Truncated));
            return frames;
        }
        if self.sync_history(pid, time_ns, processes, history) {
            let state = &self.processes[&pid];
            // Every mapping is known: an address outside them is garbage.
            walk(state, &mut self.cache, regs, stack, &mut frames);
            return frames;
        }
        self.sync(pid, processes);
        let state = &self.processes[&pid];
        let Walk::Outside(address) = walk(state, &mut self.cache, regs, stack, &mut frames) else {
            return frames;
        };
        // Perhaps a library loaded after the snapshot: re-read and try again.
        let state = self.processes.get_mut(&pid).expect("synced above");
        let now = Instant::now();
        if state
            .last_refresh
            .is_some_and(|last| now.duration_since(last) < REFRESH_INTERVAL)
        {
            return frames;
        }
        state.last_refresh = Some(now);
        let before = state.generation;
        processes.locate(pid, address);
        self.sync(pid, processes);
        let state = &self.processes[&pid];
        if state.generation != before {
            frames.clear();
            walk(state, &mut self.cache, regs, stack, &mut frames);
        }
        frames
    }

    /// How much is kept, for a debug log.
    pub fn sizes(&self) -> String {
        let unwind_bytes: usize = self.files.values().flatten().map(|f| f.size()).sum();
        format!(
            "{} processes, {} files ({} KiB of unwind tables)",
            self.processes.len(),
            self.files.len(),
            unwind_bytes / 1024
        )
    }

    /// Drops per-process state (the process exited); the per-file data stays
    /// cached. State of processes never forgotten lives until the unwinder is dropped.
    pub fn forget(&mut self, pid: u32) {
        self.processes.remove(&pid);
    }

    /// Makes the state of `pid` match the process table's mappings,
    /// rebuilding it when they changed.
    fn sync(&mut self, pid: u32, processes: &mut ProcessTable) {
        let generation = processes.mappings_generation(pid).map(Built::Proc);
        let state = self.state(pid);
        if generation.is_none() || generation == state.generation {
            // Unknown mappings keep whatever we had (nothing, or the last snapshot).
            return;
        }
        let Some((generation, views)) = processes.mappings(pid) else {
            return;
        };
        self.rebuild(pid, Built::Proc(generation), &views);
    }

    /// Makes the state of `pid` match the mappings `history` says were in
    /// force at `time_ns`, if it knows them all; returns whether it does.
    fn sync_history(
        &mut self,
        pid: u32,
        time_ns: u64,
        processes: &mut ProcessTable,
        history: &MappingHistory,
    ) -> bool {
        let in_force = match history.complete_in_force_at(pid, time_ns) {
            Ok(found) => found,
            Err(why) => {
                log::trace!("pid {pid} at {time_ns}: no complete mappings ({why:?})");
                return false;
            }
        };
        let generation = in_force.key;
        if self.state(pid).generation == Some(Built::History(generation)) {
            return true;
        }
        let views: Vec<MappingView> = in_force
            .mappings()
            .iter()
            .map(|m| {
                let recorded = m.recorded(pid);
                let special = recorded.special();
                MappingView {
                    start: m.start,
                    end: m.end,
                    file_offset: m.pgoff,
                    module: special
                        .is_none()
                        .then(|| processes.recorded_module(&recorded)),
                    special,
                }
            })
            .collect();
        self.rebuild(pid, Built::History(generation), &views);
        true
    }

    /// The state of `pid`, empty if it had none.
    fn state(&mut self, pid: u32) -> &mut ProcessUnwinder {
        self.processes
            .entry(pid)
            .or_insert_with(|| ProcessUnwinder {
                generation: None,
                unwinder: UnwinderX86_64::new(),
                code: Vec::new(),
                unwound: Vec::new(),
                entries: Vec::new(),
                last_refresh: None,
                modules: 0,
                builds: 0,
            })
    }

    /// Builds the state of `pid` from `views`, the mappings of `generation`.
    fn rebuild(&mut self, pid: u32, generation: Built, views: &[MappingView]) {
        let vdso = self.vdso_file();
        let built = build(&mut self.files, vdso.as_ref(), views);
        let state = self.state(pid);
        state.generation = Some(generation);
        state.unwinder = built.unwinder;
        state.modules = built.modules;
        state.code = built.code;
        state.unwound = built.unwound;
        state.entries = built.entries;
        state.builds += 1;
    }
}

/// What [`build`] makes of one process's mappings.
struct BuiltState {
    unwinder: UnwinderX86_64<Bytes>,
    /// How many framehop modules `unwinder` has.
    modules: usize,
    /// The executable ranges, sorted.
    code: Vec<Range<u64>>,
    /// See [`ProcessUnwinder::unwound`].
    unwound: Vec<Range<u64>>,
    /// See [`ProcessUnwinder::entries`].
    entries: Vec<Range<u64>>,
}

/// How far past an entry point a walk may end and still have reached the
/// root: `_start` calls on within its first few instructions (the dynamic
/// loader's at +8, glibc's program entry at about +0x25).
const ENTRY_SPAN: u64 = 64;

/// How far into an entry point a sampled ip is still in its own code, at
/// the root: the dynamic loader's `_start` is `mov %rsp,%rdi; call
/// _dl_start` (its first call returns to +8, into `_dl_start_user`), and
/// glibc's and musl's program entries are longer.
const ENTRY_BEFORE_CALL: u64 = 8;

/// A framehop unwinder for one process's mappings.
fn build(
    files: &mut HashMap<usize, Option<Arc<UnwindFile>>>,
    vdso: Option<&Arc<UnwindFile>>,
    views: &[MappingView],
) -> BuiltState {
    // One framehop module per file and load bias, spanning all its executable mappings.
    struct Placed<'a> {
        name: &'a str,
        /// The file's [`Module::id`](crate::process::Module); `None` for the vDSO.
        id: Option<usize>,
        bias: u64,
        avma: Range<u64>,
        file: Arc<UnwindFile>,
    }
    let mut placed: Vec<Placed<'_>> = Vec::new();
    let mut code = Vec::with_capacity(views.len());
    for view in views {
        code.push(view.start..view.end);
        let (name, id, file) = match (&view.module, view.special.as_deref()) {
            (Some(module), _) => {
                let file = files.entry(module.id).or_insert_with(|| {
                    let file = module.open().and_then(UnwindFile::read);
                    if file.is_none() {
                        log::debug!(
                            "no unwind data in {}: frame pointers only",
                            crate::text::escape_controls(&module.path)
                        );
                    }
                    file.map(Arc::new)
                });
                (&*module.path, Some(module.id), file.as_ref())
            }
            (None, Some(name @ "[vdso]")) => (name, None, vdso),
            (None, _) => continue,
        };
        let Some(file) = file else {
            continue;
        };
        let Some(bias) = file.bias(view.start, view.file_offset) else {
            continue;
        };
        match placed.iter_mut().find(|p| p.id == id && p.bias == bias) {
            Some(p) => p.avma = p.avma.start.min(view.start)..p.avma.end.max(view.end),
            None => placed.push(Placed {
                name,
                id,
                bias,
                avma: view.start..view.end,
                file: file.clone(),
            }),
        }
    }
    let mut unwinder = UnwinderX86_64::new();
    let modules = placed.len();
    let mut entries = Vec::new();
    let mut unwound = Vec::with_capacity(placed.len());
    for p in placed {
        unwound.push(p.avma.clone());
        if let Some(entry) = p.file.entry_svma {
            let entry = p.bias.wrapping_add(entry);
            entries.push(entry..entry.saturating_add(ENTRY_SPAN));
        }
        let base_avma = p.bias.wrapping_add(p.file.base_svma);
        unwinder.add_module(framehop::Module::new(
            p.name.to_string(),
            p.avma,
            base_avma,
            p.file.section_info(),
        ));
    }
    code.sort_by_key(|r| r.start);
    unwound.sort_by_key(|r| r.start);
    BuiltState {
        unwinder,
        modules,
        code,
        unwound,
        entries,
    }
}

/// Walks `stack` from `regs`, appending frames innermost first: with
/// framehop where a module has unwind information, with [`bridge::step`]
/// over code that has none (JIT code), then framehop again in its caller.
fn walk(
    state: &ProcessUnwinder,
    cache: &mut CacheX86_64,
    regs: UserRegs,
    stack: &[u8],
    frames: &mut Vec<RawFrame>,
) -> Walk {
    let copy = Stack {
        sp: regs.sp,
        bytes: stack,
    };
    let mut current = UnwindRegsX86_64::new(regs.ip, regs.sp, regs.bp);
    let mut address = FrameAddress::InstructionPointer(regs.ip);
    let truncated = RawFrame::Gap(Space::User, Gap::Truncated);
    if let Some(end) = state.push(RawFrame::InstructionPointer(Space::User, regs.ip), frames) {
        return end;
    }
    loop {
        let next = state.step(cache, copy, address, &mut current);
        if frames.len() == MAX_UNWIND_DEPTH {
            // Complete only if the root is right there.
            if !matches!(next, Ok(None)) {
                frames.push(truncated);
            }
            return Walk::Done;
        }
        let return_address = match next {
            Ok(Some(ra)) => ra,
            Ok(None) => return Walk::Done,
            Err(()) => {
                if !state.ends_at_entry(frames) {
                    frames.push(truncated);
                }
                return Walk::Done;
            }
        };
        address = return_address;
        let frame = RawFrame::ReturnAddress(Space::User, return_address.address());
        if let Some(end) = state.push(frame, frames) {
            return end;
        }
    }
}

/// How many frames past a candidate caller [`ProcessUnwinder::plausible`]
/// unwinds before it believes it.
const PLAUSIBLE_STEPS: usize = 2;

impl ProcessUnwinder {
    /// Appends `frame`, unless its address is in no executable mapping:
    /// then how the walk ends (a sampled ip is kept whatever it is; a
    /// return address outside every mapping is garbage read from the
    /// stack, and is dropped).
    fn push(&self, frame: RawFrame, frames: &mut Vec<RawFrame>) -> Option<Walk> {
        // The call instruction, not the one after it, must be in a mapping.
        let address = frame.lookup_address().unwrap_or_default();
        if self.generation.is_none() || self.covers(address) {
            frames.push(frame);
            return None;
        }
        if frames.is_empty() {
            frames.push(frame);
        }
        if self.ends_at_entry(frames) {
            return Some(Walk::Done);
        }
        frames.push(RawFrame::Gap(Space::User, Gap::Truncated));
        Some(Walk::Outside(address))
    }

    /// One frame up from `address`: the caller's return address, `None` at
    /// the root, `Err` where the walk cannot go on.
    fn step(
        &self,
        cache: &mut CacheX86_64,
        stack: Stack<'_>,
        address: FrameAddress,
        regs: &mut UnwindRegsX86_64,
    ) -> Result<Option<FrameAddress>, ()> {
        let lookup = address.address_for_lookup();
        if self.generation.is_none() || self.has_unwind_info(lookup) {
            let mut read = |a| stack.read(a).ok_or(());
            let next = self.unwinder.unwind_frame(address, regs, cache, &mut read);
            return match next.map_err(drop)? {
                Some(ra) => FrameAddress::from_return_address(ra).ok_or(()).map(Some),
                None => Ok(None),
            };
        }
        let from = Regs {
            ip: address.address(),
            sp: regs.sp(),
            bp: regs.bp(),
        };
        let caller = bridge::step(from, stack, |c| self.plausible(cache, stack, c)).ok_or(())?;
        *regs = UnwindRegsX86_64::new(caller.ip, caller.sp, caller.bp);
        FrameAddress::from_return_address(caller.ip)
            .ok_or(())
            .map(Some)
    }

    /// Whether `caller` can be where a frame without unwind information
    /// returns to: its return address is in code, and the walk goes on
    /// from there, [`PLAUSIBLE_STEPS`] frames by framehop (or up to the
    /// root), or by a frame pointer that leads up the stack when it is
    /// more code without unwind information.
    fn plausible(&self, cache: &mut CacheX86_64, stack: Stack<'_>, caller: Regs) -> bool {
        let mut regs = UnwindRegsX86_64::new(caller.ip, caller.sp, caller.bp);
        let mut read = |a| stack.read(a).ok_or(());
        let mut address = caller.ip;
        for _ in 0..PLAUSIBLE_STEPS {
            let lookup = address.wrapping_sub(1);
            if address == 0 || !self.covers(lookup) {
                return false;
            }
            if !self.has_unwind_info(lookup) {
                return stack.holds_frame(regs.bp(), regs.sp());
            }
            let Some(frame) = FrameAddress::from_return_address(address) else {
                return false;
            };
            let sp = regs.sp();
            match self
                .unwinder
                .unwind_frame(frame, &mut regs, cache, &mut read)
            {
                Ok(None) => return true,
                Ok(Some(ra)) if regs.sp() > sp => address = ra,
                _ => return false,
            }
        }
        address != 0 && self.covers(address.wrapping_sub(1))
    }

    /// True if `address` is in a module framehop has unwind information for.
    fn has_unwind_info(&self, address: u64) -> bool {
        let index = self.unwound.partition_point(|r| r.end <= address);
        self.unwound.get(index).is_some_and(|r| r.start <= address)
    }

    /// True if the last frame of `frames` is a call made by an entry point:
    /// the walk ended at the root even though nothing marked it as such
    /// (the dynamic loader's `_start` has no unwind info saying so).
    /// So is a sampled ip in the first [`ENTRY_BEFORE_CALL`] bytes of an
    /// entry point: a thread that has not yet left `_start` (a new
    /// program's first page fault, or `execve` returning into it).
    fn ends_at_entry(&self, frames: &[RawFrame]) -> bool {
        match frames {
            [.., RawFrame::ReturnAddress(_, ra)] => {
                let lookup = ra.saturating_sub(1);
                self.entries.iter().any(|entry| entry.contains(&lookup))
            }
            [RawFrame::InstructionPointer(_, ip)] => self
                .entries
                .iter()
                .any(|entry| (entry.start..entry.start + ENTRY_BEFORE_CALL).contains(ip)),
            _ => false,
        }
    }

    /// True if `address` is in an executable mapping of the snapshot.
    fn covers(&self, address: u64) -> bool {
        let index = self.code.partition_point(|r| r.end <= address);
        self.code.get(index).is_some_and(|r| r.start <= address)
    }
}
