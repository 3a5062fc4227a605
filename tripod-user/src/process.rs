//! What we know about sampled processes, read from `/proc` while they are alive.
//!
//! The executable mappings of each process are snapshotted when it is first
//! seen (and again when an address falls outside them), and each mapped file
//! is remembered by a path that still opens after the process has exited, so
//! stacks of short-lived processes can be symbolized at the end of an interval.
//! Files are shared between processes by (device, inode): libc is one module.
use std::{
    collections::HashMap,
    fs::{self, File},
    os::unix::fs::MetadataExt,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

mod recorded;
mod shared;

pub use recorded::{FileCheck, RecordedMapping};
pub use shared::SharedFile;

use crate::{
    jit::JitSymbol,
    model::Cgroup,
    target_file::{self, Links, Refusal, Why},
};

/// An executable file mapped by one or more processes.
#[derive(Debug)]
pub struct Module {
    /// Unique for the run; symbol caches are keyed by it.
    pub id: usize,
    /// The path as the process saw it (`/proc/PID/maps`), for display;
    /// shared by every frame in the file.
    pub path: Arc<str>,
    /// A path that opens the mapped file now and later: `/proc/self/fd/N` of
    /// a descriptor we keep. `None` when the file was refused or unreadable.
    pub open_path: Option<PathBuf>,
    /// Why the file is not read (see [`crate::target_file`]): frames in it
    /// stay unknown with this reason.
    pub refused: Option<Refusal>,
    _keep_open: Option<File>,
}

impl Module {
    /// A module read from `open_path` (by path), for tests of its readers.
    #[cfg(test)]
    pub(crate) fn for_test(id: usize, path: &str, open_path: Option<PathBuf>) -> Module {
        Module {
            id,
            path: path.into(),
            open_path,
            refused: None,
            _keep_open: None,
        }
    }

    /// Opens the mapped file again (the descriptor kept, not the path).
    pub fn open(&self) -> Option<File> {
        File::open(self.open_path.as_ref()?).ok()
    }
}

#[derive(Clone, Debug)]
enum MappingKind {
    File(Arc<Module>),
    /// `[vdso]`, `[heap]`, anonymous memory (JIT code) and the like.
    Special(String),
}

#[derive(Clone, Debug)]
struct Mapping {
    start: u64,
    end: u64,
    file_offset: u64,
    kind: MappingKind,
}

/// Where an address of a process lies.
#[derive(Clone, Debug)]
pub enum Location {
    /// Inside a mapped file, at this file offset.
    File {
        module: Arc<Module>,
        file_offset: u64,
    },
    /// In a mapping without a file, such as `[vdso]` or anonymous memory,
    /// `offset` bytes from its start.
    Special { name: String, offset: u64 },
    /// In code a runtime compiled (anonymous memory), named by its perf map.
    Jit(JitSymbol),
    /// Not in any executable mapping we saw.
    Unmapped,
    /// The process was gone before its mappings could be read.
    ProcessExited,
    /// Sampled in a program image the process has replaced (`exec`) and
    /// whose mappings no record told: `/proc` shows a later program.
    ImageReplaced,
}

/// A sampled process.
#[derive(Debug)]
pub struct Process {
    pub pid: u32,
    /// The process name (its main thread's comm).
    pub comm: String,
    /// The executable's path, when readable.
    pub exe: Option<String>,
    /// Kernel threads have no user stack; a failed user stack is expected there.
    pub kernel_thread: bool,
    /// Its pid in its own pid namespace, when that is not ours (a
    /// container's process): the last `NSpid` of `/proc/PID/status`.
    pub ns_pid: Option<u32>,
    /// The cgroup it was last sampled in (see [`ProcessTable::set_cgroup`]).
    pub cgroup: Option<Arc<Cgroup>>,
    /// The kernel's id of that cgroup; 0 before any sample said.
    cgroup_id: u64,
    /// `None` until the mappings were read; stays `None` if the process exited first.
    mappings: Option<Vec<Mapping>>,
    /// Bumped each time a re-read finds mappings that differ from the last ones.
    mappings_generation: u64,
    /// When the mappings were last read.
    mappings_read_at: Instant,
    /// The mappings were given (a core file's), not read from `/proc`:
    /// they are never read again, whatever process has the pid now.
    given: bool,
}

/// One executable mapping of a process, as [`ProcessTable::mappings`] returns it.
#[derive(Clone, Debug)]
pub struct MappingView {
    pub start: u64,
    pub end: u64,
    /// The offset in the file of the byte mapped at `start`.
    pub file_offset: u64,
    /// The mapped file; `None` for `[vdso]`, anonymous memory and the like.
    pub module: Option<Arc<Module>>,
    /// The name of a mapping without a file, such as `[vdso]` or `[anon]`.
    pub special: Option<String>,
}

/// A mapping of a process whose mappings are given rather than read from
/// `/proc` (a core file's, see [`ProcessTable::insert_given`]).
#[derive(Debug)]
pub struct GivenMapping {
    pub start: u64,
    pub end: u64,
    pub file_offset: u64,
    pub what: Given,
}

/// What a [`GivenMapping`] maps.
#[derive(Debug)]
pub enum Given {
    /// A file, shown as `path` (raw, as the process saw it), opened (or
    /// refused) from wherever it was looked up.
    File {
        path: String,
        opened: Result<File, Refusal>,
    },
    /// A mapping without a file, such as `[vdso]`.
    Special(String),
}

/// Every process seen during the run, and the modules they map.
#[derive(Debug, Default)]
pub struct ProcessTable {
    processes: HashMap<u32, Process>,
    /// Files opened, by (device, inode): one module per file, whether
    /// `/proc` or a sideband record named it.
    modules: HashMap<(u64, u64), Arc<Module>>,
    /// The module of each file a sideband record identified, refused ones
    /// included.
    recorded: HashMap<FileCheck, RecordedFile>,
    /// Module ids given out: unique over the run.
    next_module_id: usize,
}

impl ProcessTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// The process `pid`, read from `/proc` the first time it is asked for.
    /// `thread_comm` names it if `/proc` no longer has it.
    pub fn observe(&mut self, pid: u32, thread_comm: &str) -> &Process {
        if !self.processes.contains_key(&pid) {
            let process = self.read_process(pid, thread_comm);
            self.processes.insert(pid, process);
        }
        &self.processes[&pid]
    }

    /// Process `pid` with the name `comm`, the executable `exe` and the
    /// executable `mappings` given: a core file's, not read from `/proc`
    /// and never re-read (the pid may be another process's by now). A file
    /// mapped several times is one module.
    pub fn insert_given(
        &mut self,
        pid: u32,
        comm: String,
        exe: Option<String>,
        given: Vec<GivenMapping>,
    ) {
        let mut by_path: HashMap<String, Arc<Module>> = HashMap::new();
        let mut mappings = Vec::with_capacity(given.len());
        for mapping in given {
            let kind = match mapping.what {
                Given::Special(name) => MappingKind::Special(name),
                Given::File { path, opened } => {
                    let module = match by_path.get(&path) {
                        Some(module) => module.clone(),
                        None => {
                            self.next_module_id += 1;
                            let module = Arc::new(file_module(self.next_module_id, &path, opened));
                            by_path.insert(path, module.clone());
                            module
                        }
                    };
                    MappingKind::File(module)
                }
            };
            mappings.push(Mapping {
                start: mapping.start,
                end: mapping.end,
                file_offset: mapping.file_offset,
                kind,
            });
        }
        mappings.sort_by_key(|m| m.start);
        let process = Process {
            pid,
            comm,
            exe,
            kernel_thread: false,
            // Neither is in a core.
            ns_pid: None,
            cgroup: None,
            cgroup_id: 0,
            mappings: Some(mappings),
            mappings_generation: 0,
            mappings_read_at: Instant::now(),
            given: true,
        };
        self.processes.insert(pid, process);
    }

    /// The modules of every process, each once, in no order.
    pub fn modules(&self) -> Vec<Arc<Module>> {
        let mut seen = std::collections::HashSet::new();
        let mut modules = Vec::new();
        for process in self.processes.values() {
            for mapping in process.mappings.iter().flatten() {
                if let MappingKind::File(module) = &mapping.kind {
                    if seen.insert(module.id) {
                        modules.push(module.clone());
                    }
                }
            }
        }
        modules
    }

    pub fn get(&self, pid: u32) -> Option<&Process> {
        self.processes.get(&pid)
    }

    /// Notes that `pid` was sampled in cgroup `id`. The latest sample wins:
    /// a process moved to another cgroup (`systemd-run --scope`, a runtime
    /// placing its container's first process) is shown where it is now.
    /// `resolve` names the cgroup, and is called only when the id changes;
    /// an id of 0 (unknown) changes nothing, an id `resolve` cannot name
    /// (a cgroup removed already) leaves the process without one.
    pub fn set_cgroup(
        &mut self,
        pid: u32,
        id: u64,
        resolve: impl FnOnce(u64) -> Option<Arc<Cgroup>>,
    ) {
        let Some(process) = self.processes.get_mut(&pid) else {
            return;
        };
        if id == 0 || process.cgroup_id == id {
            return;
        }
        process.cgroup_id = id;
        process.cgroup = resolve(id);
    }

    /// Names the cgroup of `pid` when no sample has (records of the task
    /// iterator carry no cgroup id); `cgroup` is asked only then.
    pub fn default_cgroup(&mut self, pid: u32, cgroup: impl FnOnce() -> Option<Arc<Cgroup>>) {
        if let Some(process) = self.processes.get_mut(&pid) {
            if process.cgroup.is_none() {
                process.cgroup = cgroup();
            }
        }
    }

    /// Processes known.
    pub fn len(&self) -> usize {
        self.processes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.processes.is_empty()
    }

    /// Drops what was read about `pid` (it exited). Modules stay: other
    /// processes map the same files.
    pub fn forget(&mut self, pid: u32) {
        self.processes.remove(&pid);
    }

    /// Where `address` lies in process `pid`, re-reading its mappings once if
    /// the address is outside the snapshot (a library loaded since).
    pub fn locate(&mut self, pid: u32, address: u64) -> Location {
        self.locate_at(pid, address, Instant::now())
    }

    /// [`Self::locate`] at `now`. The mappings are read again at most once
    /// per [`REREAD_MAPPINGS_AFTER`]: frame-pointer walks through code built
    /// without them yield stray addresses, and each used to cost a whole
    /// `/proc/PID/maps` (a compiler's maps, hundreds of times a second).
    fn locate_at(&mut self, pid: u32, address: u64, now: Instant) -> Location {
        let Some(process) = self.processes.get(&pid) else {
            return Location::ProcessExited;
        };
        if let Some(location) = process.mappings.as_ref().and_then(|m| find(m, address)) {
            return location;
        }
        let read_lately = process.given
            || now.saturating_duration_since(process.mappings_read_at) < REREAD_MAPPINGS_AFTER;
        if !read_lately {
            let fresh = read_mappings(pid, &mut self.modules, &mut self.next_module_id);
            let process = self.processes.get_mut(&pid).expect("looked up above");
            process.mappings_read_at = now;
            if let Some(mappings) = fresh {
                if process.set_mappings(mappings) {
                    // New mappings are often a new program (an exec), which
                    // renames the process: read its name and executable again.
                    let (comm, exe) = read_names(pid, &process.comm);
                    process.comm = comm;
                    process.exe = exe;
                }
            }
        }
        match &self.processes[&pid].mappings {
            None => Location::ProcessExited,
            Some(mappings) => find(mappings, address).unwrap_or(Location::Unmapped),
        }
    }

    /// Makes the mappings of `pid` due for a re-read (see [`Self::locate`]),
    /// as if read a period ago: for a caller that knows they changed.
    pub(crate) fn age_mappings(&mut self, pid: u32) {
        if let Some(process) = self.processes.get_mut(&pid) {
            let then = process.mappings_read_at.checked_sub(REREAD_MAPPINGS_AFTER);
            process.mappings_read_at = then.expect("the clock runs longer than a period");
        }
    }

    /// The generation of `pid`'s mapping snapshot: it changes whenever a
    /// re-read (see [`Self::locate`]) finds different mappings, so callers that
    /// derive state from [`Self::mappings`] know when to rebuild it. Reads the
    /// process if it was not seen before; `None` when it is unknown and gone,
    /// or exited before its mappings could be read. No I/O for a known process.
    pub fn mappings_generation(&mut self, pid: u32) -> Option<u64> {
        if !self.processes.contains_key(&pid) {
            // Do not record a process that is already gone under an empty name.
            if fs::metadata(format!("/proc/{pid}")).is_err() {
                return None;
            }
            self.observe(pid, "");
        }
        let process = self.processes.get(&pid)?;
        process.mappings.as_ref()?;
        Some(process.mappings_generation)
    }

    /// The executable mappings of `pid`, sorted by address, with their
    /// generation (see [`Self::mappings_generation`]). Reads the process if it
    /// was not seen before.
    pub fn mappings(&mut self, pid: u32) -> Option<(u64, Vec<MappingView>)> {
        let generation = self.mappings_generation(pid)?;
        let mappings = self.processes.get(&pid)?.mappings.as_ref()?;
        let views = mappings
            .iter()
            .map(|m| MappingView {
                start: m.start,
                end: m.end,
                file_offset: m.file_offset,
                module: match &m.kind {
                    MappingKind::File(module) => Some(module.clone()),
                    MappingKind::Special(_) => None,
                },
                special: match &m.kind {
                    MappingKind::File(_) => None,
                    MappingKind::Special(name) => Some(name.clone()),
                },
            })
            .collect();
        Some((generation, views))
    }

    /// Where `file_offset` of a mapping a sideband record told of lies: in
    /// its file, opened and checked the first time the file is seen (see
    /// [`recorded`]), or in a mapping without a file.
    pub fn locate_recorded(
        &mut self,
        mapping: &RecordedMapping<'_>,
        (address, file_offset): (u64, u64),
    ) -> Location {
        if let Some(name) = mapping.special() {
            let offset = address.saturating_sub(mapping.start);
            return Location::Special { name, offset };
        }
        Location::File {
            module: self.recorded_module(mapping),
            file_offset,
        }
    }

    /// The module of a recorded mapping's file: opened now if it was not
    /// before, and shared with `/proc`'s by (device, inode).
    pub fn recorded_module(&mut self, mapping: &RecordedMapping<'_>) -> Arc<Module> {
        self.recorded_module_at(mapping, Instant::now())
    }

    /// [`Self::recorded_module`] at `now`. A file refused for a reason that
    /// may pass (opened too late, replaced at its path) is tried again for a
    /// later record, at most once per [`RETRY_REFUSED_AFTER`]: another
    /// process mapping it may still live, and its `map_files` opens it.
    fn recorded_module_at(&mut self, mapping: &RecordedMapping<'_>, now: Instant) -> Arc<Module> {
        let identity = mapping.identity.as_ref();
        if let Some(known) = identity.and_then(|i| self.recorded.get_mut(i)) {
            match known.retry_at {
                Some(at) if at <= now => {}
                _ => return known.module.clone(),
            }
        }
        let opened = recorded::open(mapping);
        if let (Err(_), Some(known)) = (&opened, identity.and_then(|i| self.recorded.get_mut(i))) {
            known.retry_at = Some(now + RETRY_REFUSED_AFTER);
            return known.module.clone();
        }
        let module = self.module_of_opened(mapping, opened);
        if let Some(identity) = identity {
            let retry_at = match &module.refused {
                Some(refusal) if may_pass(&refusal.why) => Some(now + RETRY_REFUSED_AFTER),
                _ => None,
            };
            let module = module.clone();
            self.recorded
                .insert(identity.clone(), RecordedFile { module, retry_at });
        }
        module
    }

    /// The module of a recorded mapping's file as [`recorded::open`] gave
    /// it: the one of that (device, inode) if it is open already.
    fn module_of_opened(
        &mut self,
        mapping: &RecordedMapping<'_>,
        opened: Result<File, Refusal>,
    ) -> Arc<Module> {
        let key = opened
            .as_ref()
            .ok()
            .and_then(|file| file.metadata().ok())
            .map(|meta| (device_number(meta.dev()), meta.ino()));
        if let Some(known) = key.and_then(|k| self.modules.get(&k)) {
            return known.clone();
        }
        self.next_module_id += 1;
        let module = Arc::new(recorded_module(self.next_module_id, mapping, opened));
        if let Some(key) = key {
            self.modules.insert(key, module.clone());
        }
        module
    }

    fn read_process(&mut self, pid: u32, thread_comm: &str) -> Process {
        // The idle task (pid 0) has no /proc entry and no user space.
        let kernel_thread =
            pid == 0 || stat_flags(pid).is_some_and(|flags| flags & PF_KTHREAD != 0);
        let mappings = if kernel_thread {
            Some(Vec::new())
        } else {
            read_mappings(pid, &mut self.modules, &mut self.next_module_id)
        };
        // Names after mappings: exec renames the task before it maps the new
        // program, so mappings of the new program never pair with the old name.
        let (comm, exe) = read_names(pid, thread_comm);
        Process {
            pid,
            comm,
            exe,
            kernel_thread,
            ns_pid: if pid == 0 { None } else { ns_pid(pid) },
            cgroup: None,
            cgroup_id: 0,
            mappings,
            mappings_generation: 0,
            mappings_read_at: Instant::now(),
            given: false,
        }
    }
}

/// The process name (`comm`, control characters escaped, else `fallback`)
/// and its executable's path (raw: reports escape it).
fn read_names(pid: u32, fallback: &str) -> (String, Option<String>) {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| crate::text::escape_controls(c.trim_end()).into_owned())
        .unwrap_or_else(|_| fallback.to_string());
    let exe = read_process_file(pid, "exe", |path| fs::read_link(path).ok())
        .map(|p| p.to_string_lossy().into_owned());
    (comm, exe)
}

impl Process {
    /// Replaces the mapping snapshot, bumping its generation if it changed;
    /// returns whether it did.
    fn set_mappings(&mut self, mappings: Vec<Mapping>) -> bool {
        let same = self.mappings.as_ref().is_some_and(|old| {
            old.len() == mappings.len() && old.iter().zip(&mappings).all(|(a, b)| a.same_as(b))
        });
        if !same {
            self.mappings_generation += 1;
        }
        self.mappings = Some(mappings);
        !same
    }
}

impl Mapping {
    fn same_as(&self, other: &Mapping) -> bool {
        let kind = match (&self.kind, &other.kind) {
            (MappingKind::File(a), MappingKind::File(b)) => a.id == b.id,
            (MappingKind::Special(a), MappingKind::Special(b)) => a == b,
            _ => false,
        };
        kind && (self.start, self.end, self.file_offset)
            == (other.start, other.end, other.file_offset)
    }
}

/// Reads `/proc/PID/NAME` as text, at most `limit` bytes: `/proc` files of
/// a target are small, and never block, but some (`status`, `cgroup`) hold
/// names the target chose. `None` once the process is gone.
pub fn read_proc_text(pid: u32, name: &str, limit: u64) -> Option<String> {
    use std::io::Read as _;
    let file = File::open(format!("/proc/{pid}/{name}")).ok()?;
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Most bytes of `/proc/PID/status` read: about 1.5 KiB in practice.
const MAX_STATUS: u64 = 16 * 1024;

/// The pid of `pid` in its own pid namespace, when that namespace is not
/// ours: the last field of the `NSpid` line, if there is more than one.
fn ns_pid(pid: u32) -> Option<u32> {
    let status = read_proc_text(pid, "status", MAX_STATUS)?;
    parse_ns_pid(&status)
}

/// The innermost pid of an `NSpid:` line of `/proc/PID/status`, when it
/// lists more than one (the process lives in a nested pid namespace).
fn parse_ns_pid(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    let pids: Vec<&str> = line.split_whitespace().collect();
    match pids.as_slice() {
        [_, .., last] => last.parse().ok(),
        _ => None,
    }
}

/// `PF_KTHREAD` from include/linux/sched.h.
const PF_KTHREAD: u64 = 0x0020_0000;

/// The `flags` field of `/proc/PID/stat`.
fn stat_flags(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The comm field may contain spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the comm: state, ppid, pgrp, session, tty_nr, tpgid, flags.
    rest.split_whitespace().nth(6)?.parse().ok()
}

/// True while any thread of `pid` lives. A process lives while any of its
/// threads does: a main thread that called `pthread_exit` stays a zombie
/// until the last one exits. Costs one read of `/proc/PID/stat`, and a look
/// at the other threads only when the main thread is a zombie.
pub fn is_alive(pid: u32) -> bool {
    match task_state(&format!("/proc/{pid}")) {
        None => false,
        Some(state) if is_dead(state) => live_thread(pid).is_some(),
        Some(_) => true,
    }
}

/// True while process `pid` exists: alive, or a zombie not yet reaped.
/// One system call and no `/proc` read, for the retirement's check of
/// every quiet process twice a second; a zombie is retired once reaped.
pub fn exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 sends nothing; it only checks that the process exists.
    let found = unsafe { libc::kill(pid, 0) } == 0;
    // EPERM: it exists, and is not ours to signal (without CAP_KILL).
    found || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The state letter in `DIR/stat` (`DIR` a `/proc/PID` or `/proc/PID/task/TID`).
fn task_state(dir: &str) -> Option<char> {
    let stat = fs::read_to_string(format!("{dir}/stat")).ok()?;
    // The comm field may contain anything; the state follows its last ')'.
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// Zombie or dead: the thread's memory (and `/proc` view of it) is gone.
fn is_dead(state: char) -> bool {
    matches!(state, 'Z' | 'X')
}

/// The `/proc/PID/task/TID` directory of a thread of `pid` other than its
/// main thread that has not exited, if any.
fn live_thread(pid: u32) -> Option<String> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|tid| *tid != pid.to_string())
        .map(|tid| format!("/proc/{pid}/task/{tid}"))
        .find(|dir| task_state(dir).is_some_and(|state| !is_dead(state)))
}

/// `/proc/PID/NAME`, or the same file of a live thread when the main thread
/// has exited (its `maps` is then empty and its `exe` unreadable).
fn read_process_file<T>(pid: u32, name: &str, read: impl Fn(&str) -> Option<T>) -> Option<T> {
    let leader = format!("/proc/{pid}");
    match read(&format!("{leader}/{name}")) {
        Some(found) => Some(found),
        None if task_state(&leader).is_some_and(is_dead) => {
            read(&format!("{}/{name}", live_thread(pid)?))
        }
        None => None,
    }
}

/// The raw command line of `pid`; `None` once it is gone.
pub fn cmdline(pid: u32) -> Option<Vec<u8>> {
    fs::read(format!("/proc/{pid}/cmdline")).ok()
}

fn find(mappings: &[Mapping], address: u64) -> Option<Location> {
    let index = mappings.partition_point(|m| m.end <= address);
    let mapping = mappings.get(index).filter(|m| m.start <= address)?;
    Some(match &mapping.kind {
        MappingKind::File(module) => Location::File {
            module: module.clone(),
            file_offset: address - mapping.start + mapping.file_offset,
        },
        MappingKind::Special(name) => Location::Special {
            name: name.clone(),
            offset: address - mapping.start,
        },
    })
}

/// The executable mappings of `pid`, sorted by address; `None` if it is gone.
fn read_mappings(
    pid: u32,
    modules: &mut HashMap<(u64, u64), Arc<Module>>,
    next_id: &mut usize,
) -> Option<Vec<Mapping>> {
    let maps = read_process_file(pid, "maps", |path| {
        fs::read_to_string(path)
            .ok()
            .filter(|maps| !maps.is_empty())
    })
    // A process whose every thread has exited has empty mappings.
    .or_else(|| fs::read_to_string(format!("/proc/{pid}/maps")).ok())?;
    let mut mappings = Vec::new();
    for line in maps.lines() {
        let Some(entry) = MapsLine::parse(line) else {
            continue;
        };
        if !entry.executable {
            continue;
        }
        let kind = match entry.path {
            Some(path) if entry.inode != 0 => {
                let key = (entry.device, entry.inode);
                let module = match modules.get(&key) {
                    Some(module) => module.clone(),
                    None => {
                        *next_id += 1;
                        let module = Arc::new(open_module(*next_id, pid, &entry, path));
                        modules.insert(key, module.clone());
                        module
                    }
                };
                MappingKind::File(module)
            }
            Some(name) => MappingKind::Special(name.to_string()),
            None => MappingKind::Special("[anon]".to_string()),
        };
        mappings.push(Mapping {
            start: entry.start,
            end: entry.end,
            file_offset: entry.offset,
            kind,
        });
    }
    mappings.sort_by_key(|m| m.start);
    Some(mappings)
}

/// Opens the mapped file under the target-file policy (see
/// [`crate::target_file`]) and keeps the descriptor, so that it still opens
/// after `pid` has exited and is never another file than the one mapped.
///
/// The path in the maps is tried first, then the mapping itself
/// (`/proc/PID/map_files/...`: deleted binaries, other mount namespaces) and
/// the path under the process's root. Each must be the mapped (device, inode).
fn open_module(id: usize, pid: u32, entry: &MapsLine<'_>, path: &str) -> Module {
    let display = path.strip_suffix(" (deleted)").unwrap_or(path).to_string();
    let candidates = [
        PathBuf::from(path),
        PathBuf::from(format!(
            "/proc/{pid}/map_files/{:x}-{:x}",
            entry.start, entry.end
        )),
        PathBuf::from(format!("/proc/{pid}/root{display}")),
    ];
    let mut refusal = None;
    for candidate in &candidates {
        match open_mapped(candidate, entry) {
            Ok(file) => {
                return Module {
                    id,
                    path: display.into(),
                    open_path: Some(target_file::fd_path(&file)),
                    refused: None,
                    _keep_open: Some(file),
                }
            }
            // A file too large or not regular is that for every path to it.
            Err(r) if matches!(r.why, Why::TooLarge { .. } | Why::NotRegular(_)) => {
                refusal = Some(r);
                break;
            }
            Err(r) => refusal = refusal.or(Some(r)),
        }
    }
    Module {
        id,
        path: display.into(),
        open_path: None,
        refused: refusal,
        _keep_open: None,
    }
}

/// How often at most a process's mappings are read again for an address
/// outside them. With the sideband, what a process maps during the run is
/// in the mapping history: this only serves runs without it, or that lost
/// its records.
const REREAD_MAPPINGS_AFTER: Duration = Duration::from_millis(250);

/// How long a refused recorded file stays refused before a later record of
/// it is opened again.
const RETRY_REFUSED_AFTER: Duration = Duration::from_secs(1);

/// A file a sideband record identified: its module, and while it is
/// refused for a reason that may pass, when it may be opened again.
#[derive(Debug)]
struct RecordedFile {
    module: Arc<Module>,
    retry_at: Option<Instant>,
}

/// Whether a refusal may not hold for a later record of the same file: a
/// file too large or not regular is that by any path.
fn may_pass(why: &Why) -> bool {
    !matches!(why, Why::TooLarge { .. } | Why::NotRegular(_))
}

/// The module of a recorded mapping, from the file [`recorded::open`] gave.
fn recorded_module(
    id: usize,
    mapping: &RecordedMapping<'_>,
    opened: Result<File, Refusal>,
) -> Module {
    file_module(id, &mapping.display_path(), opened)
}

/// The module of a file shown as `path`, opened (or refused) already.
fn file_module(id: usize, path: &str, opened: Result<File, Refusal>) -> Module {
    match opened {
        Ok(file) => Module {
            id,
            path: path.into(),
            open_path: Some(target_file::fd_path(&file)),
            refused: None,
            _keep_open: Some(file),
        },
        Err(refusal) => Module {
            id,
            path: path.into(),
            open_path: None,
            refused: Some(refusal),
            _keep_open: None,
        },
    }
}

/// Opens `path` if it is the file of the mapping `entry`.
fn open_mapped(path: &std::path::Path, entry: &MapsLine<'_>) -> Result<File, Refusal> {
    // The maps path is canonical: a link in its last component is a swap.
    let file = target_file::open(path, Links::Refuse).or_else(|r| match r.why {
        // map_files entries and /proc/PID/root are links by design.
        Why::Symlink if path.starts_with("/proc") => target_file::open(path, Links::Follow),
        _ => Err(r),
    })?;
    let same = file
        .metadata()
        .is_ok_and(|meta| meta.ino() == entry.inode && device_number(meta.dev()) == entry.device);
    if same {
        Ok(file)
    } else {
        Err(Refusal {
            path: path.to_path_buf(),
            why: Why::Replaced,
        })
    }
}

/// `st_dev` in the `major:minor` packing `/proc/PID/maps` prints, as one number.
fn device_number(dev: u64) -> u64 {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    (u64::from(major) << 32) | u64::from(minor)
}

/// One line of `/proc/PID/maps`:
/// `start-end perms offset major:minor inode [path]`.
#[derive(Debug, PartialEq, Eq)]
struct MapsLine<'a> {
    start: u64,
    end: u64,
    executable: bool,
    offset: u64,
    /// `major << 32 | minor`, comparable with [`device_number`].
    device: u64,
    inode: u64,
    path: Option<&'a str>,
}

impl<'a> MapsLine<'a> {
    fn parse(line: &'a str) -> Option<Self> {
        let mut fields = line.splitn(6, ' ');
        let (start, end) = fields.next()?.split_once('-')?;
        let perms = fields.next()?;
        let offset = fields.next()?;
        let (major, minor) = fields.next()?.split_once(':')?;
        let inode = fields.next()?;
        let path = fields.next().map(str::trim_start).filter(|p| !p.is_empty());
        let hex = |s: &str| u64::from_str_radix(s, 16).ok();
        Some(MapsLine {
            start: hex(start)?,
            end: hex(end)?,
            executable: perms.as_bytes().get(2) == Some(&b'x'),
            offset: hex(offset)?,
            device: (hex(major)? << 32) | hex(minor)?,
            inode: inode.parse().ok()?,
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maps_lines() {
        let line = "7f1c2a428000-7f1c2a5a5000 r-xp 00028000 fd:01 1836 /usr/lib/x86_64-linux-gnu/libc.so.6";
        let entry = MapsLine::parse(line).unwrap();
        assert_eq!(entry.start, 0x7f1c2a428000);
        assert_eq!(entry.end, 0x7f1c2a5a5000);
        assert!(entry.executable);
        assert_eq!(entry.offset, 0x28000);
        assert_eq!(entry.device, (0xfd << 32) | 1);
        assert_eq!(entry.inode, 1836);
        assert_eq!(entry.path, Some("/usr/lib/x86_64-linux-gnu/libc.so.6"));

        let vdso = MapsLine::parse(
            "7ffd1b3e4000-7ffd1b3e6000 r-xp 00000000 00:00 0                          [vdso]",
        )
        .unwrap();
        assert_eq!(vdso.path, Some("[vdso]"));
        let anon = MapsLine::parse("7ffd1b3e4000-7ffd1b3e6000 rw-p 00000000 00:00 0 ").unwrap();
        assert!(!anon.executable);
        assert_eq!(anon.path, None);
    }

    #[test]
    fn a_recorded_file_refused_once_is_opened_again_for_a_later_record() {
        use std::os::unix::ffi::OsStrExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (right, wrong) = (dir.path().join("right"), dir.path().join("wrong"));
        fs::write(&right, b"the mapped file").unwrap();
        fs::write(&wrong, b"another file").unwrap();
        let meta = fs::metadata(&right).unwrap();
        let identity = FileCheck::Inode {
            major: libc::major(meta.dev()),
            minor: libc::minor(meta.dev()),
            inode: meta.ino(),
        };
        fn record<'a>(path: &'a std::path::Path, identity: &FileCheck) -> RecordedMapping<'a> {
            RecordedMapping {
                // Not a live pid: only the path in our root can open it.
                pid: u32::MAX,
                start: 0x1000,
                end: 0x2000,
                path: path.as_os_str().as_bytes(),
                identity: Some(identity.clone()),
            }
        }
        let mut table = ProcessTable::new();
        let now = Instant::now();
        // The first record's path holds another file by then: refused.
        let first = table.recorded_module_at(&record(&wrong, &identity), now);
        assert_eq!(first.refused.as_ref().map(|r| &r.why), Some(&Why::Replaced));
        // Within the retry period the refusal stands, nothing is opened.
        let soon =
            table.recorded_module_at(&record(&right, &identity), now + Duration::from_millis(10));
        assert!(Arc::ptr_eq(&first, &soon));
        // After it, a record that opens the mapped file is accepted, and kept.
        let later = table.recorded_module_at(&record(&right, &identity), now + RETRY_REFUSED_AFTER);
        assert!(later.refused.is_none() && later.open_path.is_some());
        let again =
            table.recorded_module_at(&record(&wrong, &identity), now + 10 * RETRY_REFUSED_AFTER);
        assert!(Arc::ptr_eq(&later, &again));
    }

    #[test]
    fn mappings_are_read_again_for_an_address_outside_them_at_most_once_a_period() {
        let mut table = ProcessTable::new();
        let pid = std::process::id();
        table.observe(pid, "x");
        let now = Instant::now();
        // SAFETY: a fresh anonymous mapping, unmapped below; nothing else uses it.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(page, libc::MAP_FAILED);
        let address = page as u64;
        // Mapped after the snapshot: not read again so soon after it.
        assert!(matches!(
            table.locate_at(pid, address, now),
            Location::Unmapped
        ));
        // Once the period is over, it is.
        let later = now + REREAD_MAPPINGS_AFTER;
        let found = table.locate_at(pid, address, later);
        // SAFETY: the mapping made above.
        unsafe { libc::munmap(page, 4096) };
        assert!(matches!(found, Location::Special { .. }), "{found:?}");
    }

    #[test]
    fn locates_addresses_in_our_own_process() {
        let mut table = ProcessTable::new();
        let pid = std::process::id();
        let process = table.observe(pid, "x");
        assert!(!process.kernel_thread);
        let here = locates_addresses_in_our_own_process as fn() as usize as u64;
        match table.locate(pid, here) {
            Location::File {
                module,
                file_offset,
            } => {
                assert!(file_offset > 0);
                let exe = std::env::current_exe().unwrap();
                assert_eq!(
                    module.open().unwrap().metadata().unwrap().ino(),
                    fs::metadata(exe).unwrap().ino()
                );
            }
            other => panic!("expected our executable, got {other:?}"),
        }
        assert!(matches!(table.locate(pid, 8), Location::Unmapped));
        assert!(is_alive(pid));
    }

    #[test]
    fn a_process_exists_until_it_is_reaped() {
        assert!(exists(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Exited but not reaped: a zombie, still there (and not alive).
        while is_alive(pid) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(exists(pid));
        child.wait().unwrap();
        assert!(!exists(pid));
        assert!(!exists(u32::MAX));
    }

    #[test]
    fn namespace_pids_are_the_innermost_of_several() {
        let status = "Name:\tsh\nTgid:\t4242\nNSpid:\t4242\t17\t1\nNSpgid:\t4242\n";
        assert_eq!(parse_ns_pid(status), Some(1));
        assert_eq!(parse_ns_pid("NSpid:\t4242\n"), None);
        assert_eq!(parse_ns_pid("Name:\tx\n"), None);
        assert_eq!(parse_ns_pid("NSpid:\t4242\tjunk\n"), None);
        // Our own process shares our namespace.
        assert_eq!(ns_pid(std::process::id()), None);
        let status = read_proc_text(std::process::id(), "status", 64).unwrap();
        assert_eq!(status.len(), 64);
    }

    #[test]
    fn a_process_is_in_the_cgroup_of_its_latest_sample() {
        let mut table = ProcessTable::new();
        let pid = std::process::id();
        table.observe(pid, "x");
        let named = |path: &str| {
            Some(Arc::new(Cgroup {
                path: path.into(),
                container: None,
            }))
        };
        let path = |table: &ProcessTable| {
            table
                .get(pid)
                .unwrap()
                .cgroup
                .clone()
                .map(|c| c.path.clone())
        };
        table.set_cgroup(pid, 5, |_| named("/a"));
        assert_eq!(path(&table).as_deref(), Some("/a"));
        // The same id is not named again; 0 says nothing.
        table.set_cgroup(pid, 5, |_| panic!("resolved twice"));
        table.set_cgroup(pid, 0, |_| panic!("0 is unknown"));
        table.set_cgroup(pid, 6, |_| named("/b"));
        assert_eq!(path(&table).as_deref(), Some("/b"));
        table.set_cgroup(pid, 7, |_| None);
        assert_eq!(path(&table), None);
        // A dump's default does not override what samples said.
        table.set_cgroup(pid, 8, |_| named("/c"));
        table.default_cgroup(pid, || named("/d"));
        assert_eq!(path(&table).as_deref(), Some("/c"));
    }

    #[test]
    fn kernel_threads_are_recognised() {
        // kthreadd is pid 2 on every Linux system.
        if fs::metadata("/proc/2").is_ok() {
            assert!(ProcessTable::new().observe(2, "kthreadd").kernel_thread);
        }
    }
}
