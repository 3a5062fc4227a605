//! Addresses to function, file and line, with blazesym. The only module that
//! touches blazesym.
//!
//! User addresses arrive as (module, file offset) pairs, so one library is
//! symbolized once for every process that maps it, and a process that has
//! exited can still be symbolized from its files. Each address is looked up
//! once per run and cached. An address that cannot be resolved is not an
//! error: it becomes [`Resolved::Unknown`] with the reason, blazesym's
//! `Reason` or ours, as a [`crate::model::Unknown`] (this is where blazesym's
//! reasons become the model's).
//!
//! Target files are hostile (see [`crate::target_file`]). blazesym opens the
//! files a binary links to (`.gnu_debuglink`, `.gnu_debugaltlink`,
//! `.debug_sup`, `.dwp`) by path, so before it may read a module's debug
//! information every file it could open is checked ([`debug_files`]); a
//! module with a refused one is symbolized from its symbol table alone. And
//! blazesym runs on a thread of its own that is given up after
//! [`WORKER_BUDGET`], so that a file swapped for a FIFO after the check, or a
//! file system that never answers, costs one module its names, not the run.
use std::{
    collections::{HashMap, HashSet},
    ffi::OsStr,
    fs::File,
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
    sync::{
        mpsc::{self, Receiver, Sender},
        Arc,
    },
    time::Duration,
};

use blazesym::{
    symbolize::{
        source::{Elf, Kernel, Process, Source},
        Input, Reason, Sym, Symbolized, Symbolizer as Blazesym,
    },
    Pid,
};
use object::{Object as _, ObjectSection as _};

use crate::{
    bounded::{BoundedCache, Names},
    messages,
    model::Unknown,
    process::Module,
    target_file::{self, Refusal, Why},
    text::escape_controls,
};

/// One function at an address; several when calls were inlined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    /// Demangled function name (shared by every frame that shows it).
    pub function: Arc<str>,
    /// Source file, when debug info has it.
    pub file: Option<Arc<str>>,
    pub line: Option<u32>,
    /// True for a function inlined into the one before it.
    pub inlined: bool,
}

/// What an address resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// The functions at the address, outermost (the real frame) first, then
    /// each inlined call in nesting order.
    Symbols(Vec<Symbol>),
    /// No symbol; why (its paths and messages escaped).
    Unknown(Unknown),
}

/// How long one batch of lookups may take before its thread is given up.
/// The first look at a large library's DWARF takes a second or two; a
/// minute means a file that will never answer.
pub const WORKER_BUDGET: Duration = Duration::from_secs(30);

/// How many user addresses (by module and offset) and how many kernel
/// addresses the symbolizer keeps named before it empties that cache (see
/// [`crate::bounded`]): about 20 MiB each when full, with the names shared.
/// A run that goes past it looks names up again from the files, which
/// blazesym keeps parsed.
pub const USER_CACHE_CAPACITY: usize = 65_536;
pub const KERNEL_CACHE_CAPACITY: usize = 32_768;

/// Where blazesym and [`debug_files`] look for separate debug files.
const DEBUG_DIRS: [&str; 2] = ["/usr/lib/debug", "/lib/debug"];

pub struct Symbolizer {
    worker: Worker,
    /// [`WORKER_BUDGET`]; shorter in tests.
    budget: Duration,
    user: BoundedCache<(usize, u64), Arc<Resolved>>,
    kernel: BoundedCache<u64, Arc<Resolved>>,
    /// vDSO addresses by offset in the vDSO (the same image in every process).
    vdso: HashMap<u64, Arc<Resolved>>,
    /// Each module's build id in hex, read once (pprof mappings carry it).
    build_ids: HashMap<usize, Option<Arc<str>>>,
    /// Modules whose lookups ran out of [`WORKER_BUDGET`]: not tried again.
    given_up: HashSet<usize>,
    /// Debug files refused so far, each named once on stderr.
    warned: HashSet<String>,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    pub fn new() -> Self {
        Self::with_budget(WORKER_BUDGET)
    }

    fn with_budget(budget: Duration) -> Self {
        Symbolizer {
            worker: Worker::start(),
            budget,
            user: BoundedCache::new(USER_CACHE_CAPACITY),
            kernel: BoundedCache::new(KERNEL_CACHE_CAPACITY),
            vdso: HashMap::new(),
            build_ids: HashMap::new(),
            given_up: HashSet::new(),
            warned: HashSet::new(),
        }
    }

    /// A symbolizer whose caches of named addresses empty past these
    /// sizes, for tests of what happens then.
    #[cfg(test)]
    pub(crate) fn with_capacities(user: usize, kernel: usize) -> Self {
        Symbolizer {
            user: BoundedCache::new(user),
            kernel: BoundedCache::new(kernel),
            ..Self::new()
        }
    }

    /// Resolves the file offsets of `module` not seen before.
    pub fn resolve_user(&mut self, module: &Module, offsets: &[u64]) {
        let new = unseen(offsets, |o| self.user.contains_key(&(module.id, o)));
        if new.is_empty() {
            return;
        }
        let results = match (&module.open_path, &module.refused) {
            (_, Some(refused)) => unknown(not_read(refused), new.len()),
            (None, None) => {
                let path = shown(&module.path);
                unknown(Unknown::CannotOpen { path }, new.len())
            }
            (_, _) if self.given_up.contains(&module.id) => {
                unknown(self.gave_up(&module.path), new.len())
            }
            (Some(path), None) => self.resolve_module(module, path, &new),
        };
        for (offset, resolved) in new.into_iter().zip(results) {
            self.user.insert((module.id, offset), Arc::new(resolved));
        }
    }

    fn resolve_module(&mut self, module: &Module, path: &Path, offsets: &[u64]) -> Vec<Resolved> {
        let job = Job::Module {
            path: path.to_path_buf(),
            offsets: offsets.to_vec(),
            build_id: !self.build_ids.contains_key(&module.id),
        };
        let Some(answer) = self.worker.ask(job, self.budget) else {
            self.given_up.insert(module.id);
            self.worker = Worker::start();
            return unknown(self.gave_up(&module.path), offsets.len());
        };
        if let Some(id) = answer.build_id {
            self.build_ids.insert(module.id, id.map(Arc::from));
        }
        if let Some(refusal) = answer.refused_debug {
            if self.warned.insert(refusal.clone()) {
                // Both paths are the target's to choose: escaped like any name.
                messages::warn(&format!(
                    "warning: debug information of {} not read: {}; its symbol table is used",
                    escape_controls(&module.path),
                    escape_controls(&refusal)
                ));
            }
        }
        answer.results
    }

    /// Has the worker read `module`'s symbols and debug information now,
    /// by looking up `code_offset` in it, without waiting for the answer:
    /// the first lookups in the file are then as cheap as the later ones.
    /// A refused or given-up module is not read.
    pub fn read_early(&mut self, module: &Module, code_offset: u64) {
        let (Some(path), None) = (&module.open_path, &module.refused) else {
            return;
        };
        if !self.given_up.contains(&module.id) {
            // A worker that has gone answers nothing anyway.
            let _ = self.worker.jobs.send(Job::ReadEarly {
                path: path.clone(),
                offset: code_offset,
            });
        }
    }

    /// Parses the kernel's symbols now, once per run, so that the first
    /// report or retired process does not pay for it while sampling
    /// (`/proc/kallsyms` is megabytes). Any kernel address does: the
    /// lookup reads the whole file.
    pub fn load_kernel_symbols(&mut self) {
        self.resolve_kernel(&[KERNEL_TEXT]);
    }

    /// Resolves the kernel addresses not seen before.
    pub fn resolve_kernel(&mut self, addresses: &[u64]) {
        let new = unseen(addresses, |a| self.kernel.contains_key(&a));
        if new.is_empty() {
            return;
        }
        let results = match self.worker.ask(Job::Kernel(new.clone()), self.budget) {
            Some(answer) => answer.results,
            None => {
                self.worker = Worker::start();
                unknown(self.gave_up("/proc/kallsyms"), new.len())
            }
        };
        for (address, resolved) in new.into_iter().zip(results) {
            self.kernel.insert(address, Arc::new(resolved));
        }
    }

    /// Resolves the vDSO offsets not seen before. The vDSO is the kernel's,
    /// the same image in every 64-bit process: it is read from tripod's own
    /// memory, never from the target's.
    pub fn resolve_vdso(&mut self, offsets: &[u64]) {
        let new = unseen(offsets, |o| self.vdso.contains_key(&o));
        if new.is_empty() {
            return;
        }
        let results = match self.worker.ask(Job::Vdso(new.clone()), self.budget) {
            Some(answer) => answer.results,
            None => {
                self.worker = Worker::start();
                unknown(self.gave_up("[vdso]"), new.len())
            }
        };
        for (offset, resolved) in new.into_iter().zip(results) {
            self.vdso.insert(offset, Arc::new(resolved));
        }
    }

    /// A vDSO offset resolved earlier by [`Self::resolve_vdso`].
    pub fn vdso(&self, offset: u64) -> Option<Arc<Resolved>> {
        self.vdso.get(&offset).cloned()
    }

    fn gave_up(&self, path: &str) -> Unknown {
        Unknown::GaveUp {
            path: shown(path),
            after: self.budget,
        }
    }

    /// A user address resolved earlier by [`Self::resolve_user`].
    pub fn user(&self, module: &Module, offset: u64) -> Option<Arc<Resolved>> {
        self.user.get(&(module.id, offset)).cloned()
    }

    /// The build id of a module passed to [`Self::resolve_user`], in hex.
    pub fn build_id(&self, module: &Module) -> Option<Arc<str>> {
        self.build_ids.get(&module.id).cloned().flatten()
    }

    /// A kernel address resolved earlier by [`Self::resolve_kernel`].
    pub fn kernel(&self, address: u64) -> Option<Arc<Resolved>> {
        self.kernel.get(&address).cloned()
    }

    /// Empties the caches of named addresses that outgrew their capacity.
    /// Between batches only: an address resolved in a batch must stay until
    /// the frames of that batch are built.
    /// Also gives back the pages of the files blazesym read (see
    /// [`release_file_pages`]).
    pub fn trim(&mut self) {
        if self.user.trim() | self.kernel.trim() {
            log::debug!(
                "symbol caches emptied: user {} times, kernel {} times",
                self.user.trims(),
                self.kernel.trims()
            );
        }
        release_file_pages();
    }

    /// The sizes of the caches, for debug logs.
    pub fn sizes(&self) -> String {
        format!(
            "{} user and {} kernel addresses named",
            self.user.len(),
            self.kernel.len()
        )
    }
}

/// The sorted, distinct `values` not in a cache yet.
fn unseen(values: &[u64], cached: impl Fn(u64) -> bool) -> Vec<u64> {
    let mut new: Vec<u64> = values.iter().copied().filter(|&v| !cached(v)).collect();
    new.sort_unstable();
    new.dedup();
    new
}

fn unknown(reason: Unknown, count: usize) -> Vec<Resolved> {
    vec![Resolved::Unknown(reason); count]
}

/// A path or message from the target's files, as reports show it: reasons
/// enter the model here, escaped once like any name (see [`crate::text`]).
fn shown(text: &str) -> String {
    escape_controls(text).into_owned()
}

/// The reason of every frame of a module whose file was refused.
fn not_read(refusal: &Refusal) -> Unknown {
    if refusal.why == Why::NotFound {
        let path = shown(&refusal.path.display().to_string());
        return Unknown::FileNotFound { path };
    }
    let why = match &refusal.why {
        Why::Unreadable(error) => Why::Unreadable(shown(error)),
        why => why.clone(),
    };
    Unknown::NotRead {
        path: shown(&refusal.path.display().to_string()),
        why,
    }
}

/// Where x86-64 kernels put their text without KASLR: an address for
/// [`Symbolizer::load_kernel_symbols`] to look up.
const KERNEL_TEXT: u64 = 0xffff_ffff_8100_0000;

/// Work for the blazesym thread.
enum Job {
    /// Offsets in the module opened at `path` (a `/proc/self/fd/N` path).
    Module {
        path: PathBuf,
        offsets: Vec<u64>,
        /// Also read the module's build id.
        build_id: bool,
    },
    Kernel(Vec<u64>),
    /// Offsets in the vDSO.
    Vdso(Vec<u64>),
    /// A file offset in a module, looked up for its side effect only:
    /// blazesym keeps the file's parsed symbols and debug information.
    /// Not answered.
    ReadEarly {
        path: PathBuf,
        offset: u64,
    },
}

struct Answer {
    /// One per offset or address, in order.
    results: Vec<Resolved>,
    /// The build id in hex, if asked for (`Some(None)`: the file has none).
    build_id: Option<Option<String>>,
    /// Why the module's debug information was not read, if it was not.
    refused_debug: Option<String>,
}

/// The thread that owns blazesym (which is not `Send`): jobs go in, answers
/// come out, and an answer that takes longer than [`WORKER_BUDGET`] is given
/// up with the thread, which stays blocked until the process exits.
struct Worker {
    jobs: Sender<Job>,
    answers: Receiver<Answer>,
}

impl Worker {
    fn start() -> Worker {
        let (jobs, job_queue) = mpsc::channel::<Job>();
        let (answer_queue, answers) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("tripod-symbols".into())
            .spawn(move || {
                let mut state = WorkerState::new();
                for job in job_queue {
                    let answered = !matches!(job, Job::ReadEarly { .. });
                    let answer = state.run(job);
                    if answered && answer_queue.send(answer).is_err() {
                        break;
                    }
                }
            });
        if let Err(error) = spawned {
            // Without the thread every lookup gives up at once, with a reason.
            messages::warn(&format!(
                "warning: cannot start the symbolizer thread: {error}"
            ));
        }
        Worker { jobs, answers }
    }

    fn ask(&self, job: Job, budget: Duration) -> Option<Answer> {
        self.jobs.send(job).ok()?;
        // A time-out, or a thread that died: either way no answer.
        self.answers.recv_timeout(budget).ok()
    }
}

/// What the blazesym thread keeps between jobs.
struct WorkerState {
    blazesym: Blazesym,
    /// Per module path: why its debug files may not be read, if so.
    debug_refusals: HashMap<PathBuf, Option<String>>,
    /// The kernel's symbols as they were at the first kernel lookup (see
    /// [`KernelSymbols`]); `None` before it.
    kernel: Option<KernelSymbols>,
    /// Function and file names, one copy each however many addresses name them.
    names: Names,
}

/// A copy of `/proc/kallsyms` made once per run. blazesym keeps the symbols
/// it parsed from a file until the file's metadata changes, and procfs
/// files get a new modification time whenever their inode is evicted and
/// made again: under process churn it could parse the 5 MB file again while
/// sampling. Our copy never changes, so it is parsed once. It is an unnamed
/// file (`O_TMPFILE`), reached through our own descriptor, so nothing is
/// left behind however the run ends.
struct KernelSymbols {
    /// `None`: the copy could not be made; blazesym reads `/proc/kallsyms`.
    copy: Option<File>,
}

impl KernelSymbols {
    fn copy() -> KernelSymbols {
        let copy = (|| {
            let mut copy = tempfile::tempfile()?;
            std::io::copy(&mut File::open("/proc/kallsyms")?, &mut copy)?;
            Ok::<_, std::io::Error>(copy)
        })();
        if let Err(error) = &copy {
            log::debug!("copying /proc/kallsyms: {error}; blazesym reads it each time");
        }
        KernelSymbols { copy: copy.ok() }
    }

    fn source(&self) -> Kernel {
        let mut kernel = Kernel::default();
        if let Some(copy) = &self.copy {
            let path = format!("/proc/self/fd/{}", copy.as_raw_fd());
            kernel.kallsyms = PathBuf::from(path).into();
        }
        kernel
    }
}

impl WorkerState {
    fn new() -> Self {
        // Inlined functions and source lines cost DWARF parsing once per module,
        // which is what makes the tracebacks readable.
        let blazesym = Blazesym::builder()
            .enable_inlined_fns(true)
            .enable_code_info(true)
            .set_debug_dirs(Some(&DEBUG_DIRS))
            .build();
        WorkerState {
            blazesym,
            debug_refusals: HashMap::new(),
            kernel: None,
            names: Names::default(),
        }
    }

    fn run(&mut self, job: Job) -> Answer {
        match job {
            Job::Kernel(addresses) => {
                let kernel = self.kernel.get_or_insert_with(KernelSymbols::copy).source();
                Answer {
                    results: self.lookup(
                        &Source::Kernel(kernel),
                        Input::AbsAddr(&addresses),
                        Path::new("/proc/kallsyms"),
                    ),
                    build_id: None,
                    refused_debug: None,
                }
            }
            Job::Vdso(offsets) => Answer {
                results: self.run_vdso(&offsets),
                build_id: None,
                refused_debug: None,
            },
            Job::Module {
                path,
                offsets,
                build_id,
            } => self.run_module(&path, &offsets, build_id),
            Job::ReadEarly { path, offset } => self.run_module(&path, &[offset], false),
        }
    }

    /// Offsets in the vDSO, looked up in our own: blazesym reads it from
    /// this process's memory, and nothing else (no files, no perf map).
    fn run_vdso(&mut self, offsets: &[u64]) -> Vec<Resolved> {
        let Some(vdso) = own_vdso() else {
            return unknown(Unknown::Unmapped, offsets.len());
        };
        let addresses: Vec<u64> = offsets
            .iter()
            .map(|&offset| {
                let address = vdso.start.saturating_add(offset);
                // An offset past our vDSO asks blazesym about nothing.
                if address < vdso.end {
                    address
                } else {
                    0
                }
            })
            .collect();
        let mut own = Process::new(Pid::Slf);
        own.debug_syms = false;
        own.perf_map = false;
        own.map_files = false;
        own.vdso = true;
        let what = Path::new("[vdso]");
        self.lookup(&Source::Process(own), Input::AbsAddr(&addresses), what)
    }

    fn run_module(&mut self, path: &Path, offsets: &[u64], build_id: bool) -> Answer {
        let build_id = build_id.then(|| {
            // A file without the note, or one that cannot be read, simply has none.
            match blazesym::helper::read_elf_build_id(path) {
                Ok(Some(id)) => Some(id.iter().map(|b| format!("{b:02x}")).collect()),
                _ => None,
            }
        });
        let refused_debug = self
            .debug_refusals
            .entry(path.to_path_buf())
            .or_insert_with(|| debug_files(path).err().map(|r| r.to_string()))
            .clone();
        let mut elf = Elf::new(path);
        elf.debug_syms = refused_debug.is_none();
        let input = Input::FileOffset(offsets);
        let mut results = self.lookup(&Source::Elf(elf.clone()), input, path);
        if elf.debug_syms && results.iter().all(|r| matches!(r, Resolved::Unknown(_))) {
            // Corrupt debug information fails the whole file: the symbol
            // table may still name every function.
            elf.debug_syms = false;
            let fallback = self.lookup(&Source::Elf(elf), input, path);
            if fallback.iter().any(|r| matches!(r, Resolved::Symbols(_))) {
                results = fallback;
            }
        }
        Answer {
            results,
            build_id,
            refused_debug,
        }
    }

    fn lookup(&mut self, source: &Source<'_>, input: Input<&[u64]>, what: &Path) -> Vec<Resolved> {
        let count = match input {
            Input::AbsAddr(a) | Input::VirtOffset(a) | Input::FileOffset(a) => a.len(),
        };
        match self.blazesym.symbolize(source, input) {
            Ok(symbolized) => symbolized
                .into_iter()
                .map(|s| convert(s, &mut self.names))
                .collect(),
            Err(error) => {
                // The whole source failed (unreadable file): every address says so.
                let reason = Unknown::CannotRead {
                    path: shown(&what.display().to_string()),
                    error: shown(&error.to_string()),
                };
                unknown(reason, count)
            }
        }
    }
}

/// Gives back the pages of the files blazesym keeps mapped to read them.
///
/// blazesym maps each binary, library and debug file it reads, and keeps
/// the mapping for the run; every page a lookup touched (symbol tables,
/// debug sections) stays in our resident memory. On a machine that builds
/// software those are the target's largest files (`librustc_driver`,
/// `libLLVM`: tens of MiB touched each), and they were a third of the
/// resident memory of an `--all` run. The mappings are read-only and never
/// written (blazesym maps files shared), so `MADV_DONTNEED` only drops them
/// from our page tables: the next lookup that needs a page faults it in
/// again from the page cache, with the same contents. The files we run code from (this
/// binary, libc: any file with an executable mapping) are left alone,
/// since their read-only segments hold relocated data.
fn release_file_pages() {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    let mut loaded = HashSet::new();
    let mut read_only = Vec::new();
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [range, perms, _, device, inode, path, ..] = fields[..] else {
            continue;
        };
        if inode == "0" || !path.starts_with('/') {
            continue;
        }
        if perms.contains('x') {
            loaded.insert((device, inode));
        } else if perms == "r--s" || perms == "r--p" {
            read_only.push((range, (device, inode)));
        }
    }
    for (range, file) in read_only {
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        if loaded.contains(&file) || end <= start {
            continue;
        }
        // SAFETY: a read-only file mapping of a file we do not run
        // code from (blazesym's, see above): dropping its pages changes no
        // byte anyone reads, they are read again from the file.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    }
}

/// The address range of this process's vDSO, from `/proc/self/maps`.
fn own_vdso() -> Option<std::ops::Range<u64>> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let line = maps.lines().find(|l| l.ends_with(" [vdso]"))?;
    let (start, end) = line.split_whitespace().next()?.split_once('-')?;
    let hex = |s| u64::from_str_radix(s, 16).ok();
    Some(hex(start)?..hex(end)?)
}

/// Checks every file blazesym could open to read the debug information of
/// the module at `path` (a descriptor path): the module under its own name,
/// and each place its `.gnu_debuglink`, `.gnu_debugaltlink` or `.debug_sup`
/// could be found, searched as blazesym searches them. The first refusal.
fn debug_files(path: &Path) -> Result<(), Refusal> {
    let file = File::open(path).map_err(|e| Refusal {
        path: path.to_path_buf(),
        why: Why::Unreadable(e.to_string()),
    })?;
    let identity = file.metadata().map(|m| (m.dev(), m.ino())).ok();
    let links = DebugLinks::read(file);
    if links.is_empty() {
        return Ok(());
    }
    // blazesym names the candidates after the module's real path, which it
    // also opens by name: that must still be the module.
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if let Some(meta) = target_file::check(&canonical)? {
        if Some((meta.dev(), meta.ino())) != identity {
            return Err(Refusal {
                path: canonical,
                why: Why::Replaced,
            });
        }
    }
    for candidate in links.candidates(&canonical) {
        target_file::check(&candidate)?;
    }
    Ok(())
}

/// The links to other files in a module's sections.
#[derive(Default)]
struct DebugLinks {
    build_id: Vec<u8>,
    /// `.gnu_debuglink`'s file name.
    debuglink: Option<PathBuf>,
    /// `.gnu_debugaltlink`'s path and the build id it names.
    altlink: Option<(PathBuf, Vec<u8>)>,
    /// `.debug_sup`'s path.
    sup: Option<PathBuf>,
}

impl DebugLinks {
    fn read(file: File) -> DebugLinks {
        let cache = object::ReadCache::new(file);
        let Ok(elf) = object::File::parse(&cache) else {
            return DebugLinks::default();
        };
        let section = |name| {
            elf.section_by_name(name)
                .and_then(|s| s.data().ok().map(<[u8]>::to_vec))
        };
        let build_id = elf.build_id().ok().flatten().unwrap_or_default().to_vec();
        let debuglink = section(".gnu_debuglink").map(|data| path_of(cstr(&data)));
        let altlink = section(".gnu_debugaltlink").map(|data| {
            let name = cstr(&data);
            let id = data.get(name.len() + 1..).unwrap_or_default().to_vec();
            (path_of(name), id)
        });
        // version (2 bytes), is_supplementary (1), then the file name.
        let sup =
            section(".debug_sup").map(|data| path_of(cstr(data.get(3..).unwrap_or_default())));
        DebugLinks {
            build_id,
            debuglink,
            altlink,
            sup,
        }
    }

    fn is_empty(&self) -> bool {
        self.debuglink.is_none() && self.altlink.is_none() && self.sup.is_none()
    }

    /// Every path blazesym's search could try for these links (a superset:
    /// checking one too many costs a `stat`).
    fn candidates(&self, canonical: &Path) -> Vec<PathBuf> {
        let mut paths = vec![dwp_path(canonical)];
        if let Some(name) = &self.debuglink {
            paths.extend(search_paths(name, canonical, &self.build_id));
        }
        if let Some((name, id)) = &self.altlink {
            paths.extend(search_paths(name, canonical, id));
        }
        if let Some(name) = &self.sup {
            paths.extend(search_paths(name, canonical, &[]));
        }
        paths
    }
}

/// `name` looked for as blazesym does: by build id in each debug directory,
/// in each debug directory, next to the module, and under each debug
/// directory at the module's directory and each of its parents.
fn search_paths(name: &Path, canonical: &Path, build_id: &[u8]) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    if let [first, rest @ ..] = build_id {
        if build_id.len() >= 8 {
            let rest: String = rest.iter().map(|b| format!("{b:02x}")).collect();
            for dir in DEBUG_DIRS {
                paths.push(Path::new(dir).join(format!(".build-id/{first:02x}/{rest}.debug")));
            }
        }
    }
    paths.extend(DEBUG_DIRS.iter().map(|dir| Path::new(dir).join(name)));
    paths.push(canonical.with_file_name(name));
    let relative = canonical
        .parent()
        .and_then(|dir| dir.strip_prefix("/").ok())
        .unwrap_or(Path::new(""));
    for ancestor in relative.ancestors().filter(|a| !a.as_os_str().is_empty()) {
        for dir in DEBUG_DIRS {
            paths.push(Path::new(dir).join(ancestor).join(name));
        }
    }
    paths
}

/// blazesym looks for a DWARF package next to the module.
fn dwp_path(module: &Path) -> PathBuf {
    let mut name = module.as_os_str().to_os_string();
    name.push(".dwp");
    PathBuf::from(name)
}

/// The bytes before the first NUL.
fn cstr(data: &[u8]) -> &[u8] {
    data.split(|&b| b == 0).next().unwrap_or_default()
}

fn path_of(bytes: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt as _;
    PathBuf::from(OsStr::from_bytes(bytes))
}

fn convert(symbolized: Symbolized<'_>, names: &mut Names) -> Resolved {
    match symbolized {
        Symbolized::Sym(sym) => Resolved::Symbols(symbols(sym, names)),
        Symbolized::Unknown(reason) => Resolved::Unknown(unknown_because(reason)),
    }
}

/// The function at an address and the calls inlined into it, their names
/// shared through `names`.
fn symbols(sym: Sym<'_>, names: &mut Names) -> Vec<Symbol> {
    let outer = (&*sym.name, sym.code_info.as_deref(), false);
    let inlined = sym
        .inlined
        .iter()
        .map(|i| (&*i.name, i.code_info.as_ref(), true));
    std::iter::once(outer)
        .chain(inlined)
        .map(|(function, info, inlined)| Symbol {
            function: names.intern(function),
            file: info.map(|i| names.intern(&i.to_path().to_string_lossy())),
            line: info.and_then(|i| i.line),
            inlined,
        })
        .collect()
}

/// blazesym's reason as the model's: one variant each, kept as data.
fn unknown_because(reason: Reason) -> Unknown {
    match reason {
        Reason::Unmapped => Unknown::Unmapped,
        Reason::InvalidFileOffset => Unknown::InvalidFileOffset,
        Reason::MissingComponent => Unknown::MissingComponent,
        Reason::MissingSyms => Unknown::MissingSyms,
        Reason::Unsupported => Unknown::Unsupported,
        Reason::UnknownAddr => Unknown::UnknownAddr,
        Reason::IgnoredError => Unknown::IgnoredError,
        // `Reason` is non-exhaustive: a newer blazesym may add reasons.
        _ => Unknown::OtherSymbolizerReason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::{Location, ProcessTable};

    /// Resident KiB of our mapping that starts at `start`, from smaps.
    fn resident_kib(start: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let header = format!("{start:x}-");
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&header));
        lines
            .find_map(|l| l.strip_prefix("Rss:"))
            .and_then(|kib| kib.trim().trim_end_matches(" kB").parse().ok())
            .expect("the mapping is in smaps")
    }

    #[test]
    fn pages_of_files_read_are_given_back_and_read_again_unchanged() {
        use std::io::Write as _;
        let bytes: Vec<u8> = (0..64 * 4096).map(|i| (i % 251) as u8).collect();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&bytes).unwrap();
        // SAFETY: a new read-only shared mapping of a file we own, unmapped below.
        let start = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes.len(),
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(start, libc::MAP_FAILED);
        // SAFETY: the mapping is bytes.len() long and stays mapped while used.
        let mapped = unsafe { std::slice::from_raw_parts(start as *const u8, bytes.len()) };
        assert!(mapped == &bytes[..]);
        assert!(resident_kib(start as usize) >= 256, "read, so resident");
        release_file_pages();
        assert_eq!(resident_kib(start as usize), 0, "given back");
        assert!(mapped == &bytes[..], "read again, unchanged");
        // SAFETY: our own mapping, no longer used.
        unsafe { libc::munmap(start, bytes.len()) };
    }

    #[inline(never)]
    #[no_mangle]
    extern "C" fn tripod_symbolize_test_marker() -> u64 {
        std::hint::black_box(42)
    }

    #[inline(never)]
    #[no_mangle]
    extern "C" fn tripod_symbolize_other_marker() -> u64 {
        std::hint::black_box(43)
    }

    #[test]
    fn resolves_a_function_of_our_own_binary() {
        let mut table = ProcessTable::new();
        let pid = std::process::id();
        table.observe(pid, "test");
        let address = tripod_symbolize_test_marker as extern "C" fn() -> u64 as usize as u64;
        let Location::File {
            module,
            file_offset,
        } = table.locate(pid, address)
        else {
            panic!("our own code is not in a file mapping");
        };
        let mut symbolizer = Symbolizer::new();
        // Read early, as the files most processes map are at start-up, at
        // another function: that job is not answered, so the lookup below
        // gets its own answer, not this one.
        let elsewhere = tripod_symbolize_other_marker as extern "C" fn() -> u64 as usize as u64;
        let Location::File {
            file_offset: other_offset,
            ..
        } = table.locate(pid, elsewhere)
        else {
            panic!("our own code is not in a file mapping");
        };
        symbolizer.read_early(&module, other_offset);
        symbolizer.resolve_user(&module, &[file_offset, file_offset]);
        match &*symbolizer.user(&module, file_offset).unwrap() {
            Resolved::Symbols(symbols) => {
                assert_eq!(&*symbols[0].function, "tripod_symbolize_test_marker");
                // Test binaries carry line info only in debug builds.
                if let Some(file) = &symbols[0].file {
                    assert!(file.ends_with("symbolize.rs"), "{file}");
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// A module whose file never answers (here a FIFO without a writer, as a
    /// file swapped after every check would be) costs its own names only.
    #[test]
    fn a_file_that_never_answers_is_given_up() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let stuck = Module::for_test(7, "/hostile/prog", Some(fifo));
        let mut symbolizer = Symbolizer::with_budget(Duration::from_millis(300));
        let started = std::time::Instant::now();
        symbolizer.resolve_user(&stuck, &[0x1000]);
        match &*symbolizer.user(&stuck, 0x1000).unwrap() {
            Resolved::Unknown(why) => {
                assert!(
                    matches!(why, Unknown::GaveUp { path, .. } if path == "/hostile/prog"),
                    "{why:?}"
                );
                assert_eq!(
                    why.to_string(),
                    "gave up on /hostile/prog after 0 s (a file it needs did not answer)"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
        // Not tried again, and the next module gets a fresh thread.
        symbolizer.resolve_user(&stuck, &[0x2000]);
        assert!(started.elapsed() < Duration::from_secs(5));
        symbolizer.resolve_kernel(&[1]);
        assert!(symbolizer.kernel(1).is_some());
    }

    /// The vDSO is named from tripod's own: an offset of a function in it
    /// gives that function, one past it nothing.
    #[test]
    fn vdso_offsets_are_named_from_our_own_vdso() {
        use object::{ObjectSegment as _, ObjectSymbol as _};
        let range = own_vdso().expect("a vDSO");
        let length = usize::try_from(range.end - range.start).unwrap();
        // SAFETY: the vDSO is mapped readable for the life of the process.
        let image = unsafe { std::slice::from_raw_parts(range.start as *const u8, length) };
        let elf = object::File::parse(image).unwrap();
        let base = elf.segments().map(|s| s.address()).min().unwrap();
        let symbol = elf
            .dynamic_symbols()
            .find(|s| s.name() == Ok("__vdso_clock_gettime"))
            .expect("clock_gettime in the vDSO");
        let offset = symbol.address() - base + 1;
        let mut symbolizer = Symbolizer::new();
        symbolizer.resolve_vdso(&[offset, 1 << 40]);
        match &*symbolizer.vdso(offset).unwrap() {
            Resolved::Symbols(symbols) => {
                assert!(symbols[0].function.contains("clock_gettime"), "{symbols:?}")
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            &*symbolizer.vdso(1 << 40).unwrap(),
            Resolved::Unknown(_)
        ));
    }

    #[test]
    fn debug_link_candidates_follow_blazesyms_search() {
        let paths = search_paths(
            Path::new("prog.debug"),
            Path::new("/opt/app/bin/prog"),
            &[0xab, 1, 2, 3, 4, 5, 6, 7],
        );
        for expected in [
            "/usr/lib/debug/.build-id/ab/01020304050607.debug",
            "/usr/lib/debug/prog.debug",
            "/opt/app/bin/prog.debug",
            "/usr/lib/debug/opt/app/bin/prog.debug",
            "/lib/debug/opt/prog.debug",
        ] {
            assert!(
                paths.contains(&PathBuf::from(expected)),
                "{expected} in {paths:?}"
            );
        }
        // An absolute link target is itself a candidate.
        let absolute = search_paths(Path::new("/dev/tty"), Path::new("/opt/prog"), &[]);
        assert!(absolute.contains(&PathBuf::from("/dev/tty")));
    }

    #[test]
    fn unknown_addresses_are_data_not_errors() {
        let mut symbolizer = Symbolizer::new();
        symbolizer.resolve_kernel(&[1]);
        assert!(matches!(
            &*symbolizer.kernel(1).unwrap(),
            Resolved::Unknown(_)
        ));
    }

    #[test]
    fn blazesyms_reasons_become_the_models_with_their_texts() {
        for (reason, model, text) in [
            (Reason::Unmapped, Unknown::Unmapped, "not mapped"),
            (
                Reason::InvalidFileOffset,
                Unknown::InvalidFileOffset,
                "offset not in any code section",
            ),
            (
                Reason::MissingComponent,
                Unknown::MissingComponent,
                "no file behind the mapping",
            ),
            (
                Reason::MissingSyms,
                Unknown::MissingSyms,
                "no symbols (stripped)",
            ),
            (
                Reason::Unsupported,
                Unknown::Unsupported,
                "unsupported module type",
            ),
            (
                Reason::UnknownAddr,
                Unknown::UnknownAddr,
                "no symbol covers the address",
            ),
            (
                Reason::IgnoredError,
                Unknown::IgnoredError,
                "symbolization failed",
            ),
        ] {
            assert_eq!(unknown_because(reason), model);
            assert_eq!(model.to_string(), text);
        }
    }

    /// Paths and messages in reasons are the target's to choose: escaped as
    /// they enter the model, in the same text as before they were typed.
    #[test]
    fn reasons_from_target_files_are_escaped() {
        let refusal = Refusal {
            path: PathBuf::from("/tmp/a\nb"),
            why: Why::Unreadable("gone\x1b[2J".into()),
        };
        let reason = not_read(&refusal);
        assert_eq!(reason.to_string(), "not read: /tmp/a\\x0ab: gone\\x1b[2J");
        let refusal = Refusal {
            path: PathBuf::from("/big\r"),
            why: Why::TooLarge {
                size: 3 << 30,
                max: 1 << 30,
            },
        };
        assert_eq!(
            not_read(&refusal),
            Unknown::NotRead {
                path: "/big\\x0d".into(),
                why: Why::TooLarge {
                    size: 3 << 30,
                    max: 1 << 30
                }
            }
        );

        let unopened = Module::for_test(9, "/lib/x\x07.so", None);
        let mut symbolizer = Symbolizer::with_budget(Duration::from_secs(5));
        symbolizer.resolve_user(&unopened, &[0x10]);
        match &*symbolizer.user(&unopened, 0x10).unwrap() {
            Resolved::Unknown(why) => assert_eq!(why.to_string(), "cannot open /lib/x\\x07.so"),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// A file blazesym cannot read at all fails every address of its batch,
    /// with the path and blazesym's error.
    #[test]
    fn an_unreadable_file_is_a_reason_for_each_address() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let mut state = WorkerState::new();
        let results = state.lookup(
            &Source::Elf(Elf::new(&gone)),
            Input::FileOffset(&[0x10, 0x20]),
            &gone,
        );
        assert_eq!(results.len(), 2);
        for result in results {
            match result {
                Resolved::Unknown(Unknown::CannotRead { path, error }) => {
                    assert_eq!(path, gone.display().to_string());
                    assert!(!error.is_empty());
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}
