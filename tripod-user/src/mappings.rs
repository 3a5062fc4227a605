//! What each process had mapped, and when: the history the kernel's
//! sideband records tell ([`crate::sampler::sideband`]), so that an address
//! sampled at `time_ns` is located in the mapping in force at that time,
//! even after the process has exec'd, unmapped the file, or exited.
//!
//! A process's history is a list of images in time order. An image starts
//! with a fork (a copy of the parent's mappings at that time), an `exec` (a
//! COMM record marked exec: nothing mapped yet, the new program's MMAP2
//! records follow), or, for a process that existed before the run, with
//! what `/proc/PID/maps` shows ([`MappingHistory::seed`]). Within an image,
//! an MMAP2 record maps a range from its time on and retires whatever it
//! covers, which is kept for samples taken before it.
//!
//! Nothing is freed while a sample may still ask for it: the consumer says
//! how far its samples are drained ([`MappingHistory::release_up_to`]), and
//! only then do exited processes, images replaced by an `exec` and retired
//! mappings go. What a history cannot answer for sure, it says so
//! ([`NotLocated`]), with whether `/proc` may answer instead: a name is
//! never guessed.
//!
//! Memory is bounded: see [`Limits`]. Pure data: no system calls except in
//! [`seeds_from_views`], the adapter from the `/proc` reader in
//! [`crate::process`].
use std::{
    collections::{hash_map::Entry, BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use crate::sampler::sideband::{
    ByteStr, CommRecord, FileIdentity, MmapRecord, SideRecord, TaskRecord,
};

/// A mapped file as the records named it, shared by every mapping of it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MappedFile {
    /// The path the kernel printed, or a name such as `[vdso]` or `//anon`:
    /// bytes chosen by the target, never trusted as text.
    pub path: Box<[u8]>,
    /// `None` where nothing identifies the file (a `/proc` mapping whose
    /// file could not be opened).
    pub identity: Option<FileIdentity>,
}

impl std::fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedFile")
            .field("path", &ByteStr(&self.path))
            .field("identity", &self.identity)
            .finish()
    }
}

/// An executable mapping and when it was in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    /// One past the last byte mapped.
    pub end: u64,
    /// The file offset of the byte mapped at `start`.
    pub pgoff: u64,
    /// `PROT_*` and `MAP_*` bits from the record (0 for `/proc` seeds).
    pub prot: u32,
    pub flags: u32,
    /// From when (CLOCK_MONOTONIC ns) the mapping was in force.
    pub since_ns: u64,
    /// Until when: `u64::MAX` while it still is.
    pub until_ns: u64,
    pub file: Arc<MappedFile>,
}

impl Mapping {
    fn covers(&self, address: u64, time_ns: u64) -> bool {
        (self.start..self.end).contains(&address)
            && (self.since_ns..self.until_ns).contains(&time_ns)
    }
}

/// Names the set of mappings of one process in force at some time (see
/// [`MappingHistory::in_force_at`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InForceKey {
    /// The image's generation: it changes with every record about it.
    generation: u64,
    /// The last time at or before the asked one at which a mapping of the
    /// image began or ended: between two such times the set is the same.
    changed_ns: u64,
}

/// The mappings of one image in force at one time (see
/// [`MappingHistory::in_force_at`]).
pub struct InForce<'a> {
    /// Names the set: equal keys, equal mappings. An unwinder built from
    /// them can be kept while the key stays the same.
    pub key: InForceKey,
    image: &'a Image,
    time_ns: u64,
}

impl<'a> InForce<'a> {
    fn new(image: &'a Image, time_ns: u64) -> Self {
        // The set changes only at a mapping's start or end: the last change
        // at or before `time_ns` tells two times of one image apart.
        let mut changed_ns = image.since_ns;
        for m in image.live.values().chain(&image.retired) {
            if m.since_ns <= time_ns {
                changed_ns = changed_ns.max(m.since_ns);
            }
            if m.until_ns <= time_ns {
                changed_ns = changed_ns.max(m.until_ns);
            }
        }
        let key = InForceKey {
            generation: image.generation,
            changed_ns,
        };
        InForce {
            key,
            image,
            time_ns,
        }
    }

    /// Every mapping in force, by address.
    pub fn mappings(&self) -> Vec<&'a Mapping> {
        let image = self.image;
        let mut in_force: Vec<&Mapping> = image
            .live
            .values()
            .chain(&image.retired)
            .filter(|m| (m.since_ns..m.until_ns).contains(&self.time_ns))
            .collect();
        in_force.sort_by_key(|m| m.start);
        in_force
    }
}

/// Where an address lay at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Located<'a> {
    pub mapping: &'a Mapping,
    /// `address - start + pgoff`.
    pub file_offset: u64,
}

/// One image of one process: what a sample's stack must be keyed by, next
/// to its addresses, so that stacks of two programs that ran under the same
/// pid are never merged (the same address means different code in each).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageId {
    pub pid: u32,
    /// When the image began: its fork or exec; 0 for one from before the run.
    pub since_ns: u64,
}

/// Why an address was not located.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotLocated {
    /// No record about this process (never seen, out of scope, or released).
    UnknownProcess,
    /// The process existed before the run and its mappings were not all
    /// recorded; `/proc/PID/maps` shows this very image (no `exec` since):
    /// [`MappingHistory::seed`] it, then ask again.
    NotSeeded,
    /// Sideband records were lost while this image was in force; it is still
    /// the process's current one, so `/proc/PID/maps` describes it.
    RecordsLost,
    /// Not all of this image's mappings are known (it predates the run, or
    /// records were lost) and the process has exec'd since: `/proc` shows a
    /// later program. The address cannot be named.
    ImageReplaced,
    /// The time is before the process was forked: the sample belongs to an
    /// earlier process with the same pid, of which nothing is left.
    BeforeFirstRecord,
    /// Every mapping of the image is known, and none held the address then.
    Unmapped,
}

impl NotLocated {
    /// Whether `/proc/PID/maps` read now may answer in place of the history.
    pub fn may_read_proc(self) -> bool {
        matches!(
            self,
            NotLocated::UnknownProcess | NotLocated::NotSeeded | NotLocated::RecordsLost
        )
    }
}

/// Which processes get a history.
#[derive(Clone, Debug)]
pub enum Scope {
    /// Every process (`--all`).
    All,
    /// These pids only (`--pid`, a launched command); see [`MappingHistory::track`].
    Pids(HashSet<u32>),
}

/// Bounds on memory. A mapping costs about 80 bytes (its entry in a map or
/// list; the file and its path are shared).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Mappings (in force and retired, all images) kept per process. Past
    /// it, new mappings are not kept and the image says it is incomplete.
    pub mappings_per_process: usize,
    /// Images kept per process between two releases; past it, the oldest
    /// goes (its samples then get [`NotLocated::BeforeFirstRecord`]).
    pub images_per_process: usize,
    /// Mappings kept over all processes (counted per image, so mappings a
    /// fork shares are counted twice: an upper bound).
    pub mappings: usize,
    /// Bytes of distinct paths kept.
    pub path_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // Far above what programs map executable (a browser: ~1,000).
            mappings_per_process: 16_384,
            images_per_process: 256,
            // About 20 MiB of mappings, 16 MiB of paths.
            mappings: 262_144,
            path_bytes: 16 << 20,
        }
    }
}

/// Totals, for the summary and for tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HistoryStats {
    pub processes: usize,
    pub images: usize,
    /// Mappings kept, counted per image.
    pub mappings: usize,
    pub files: usize,
    pub path_bytes: usize,
    /// Mappings not kept because a [`Limits`] bound was reached.
    pub dropped: u64,
    /// Records that could not describe a mapping (empty, or past the end of
    /// the address space).
    pub rejected: u64,
}

/// One mapping of a `/proc/PID/maps` listing, to seed a history with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedMapping {
    pub start: u64,
    pub end: u64,
    pub pgoff: u64,
    pub path: Box<[u8]>,
    pub identity: Option<FileIdentity>,
}

/// One program image of a process: from a fork, an exec, or before the run.
#[derive(Clone, Debug)]
struct Image {
    since_ns: u64,
    /// Every mapping in force since `since_ns` is known.
    complete: bool,
    /// `/proc` was read into it once already ([`MappingHistory::seed`]).
    seeded: bool,
    /// Records were lost from this time on: nothing found after it is trusted.
    tainted_since: Option<u64>,
    /// The process name (the main thread's comm) in this image.
    comm: Option<Box<[u8]>>,
    /// Mappings by start address, none overlapping. Shared with forked
    /// children until one of them changes it.
    live: Arc<BTreeMap<u64, Mapping>>,
    /// Mappings replaced, each cut to the part that was replaced.
    retired: Vec<Mapping>,
    /// Unique over the run; changes with every change of the mappings.
    generation: u64,
}

impl Image {
    fn new(since_ns: u64, complete: bool, generation: u64) -> Image {
        Image {
            since_ns,
            complete,
            seeded: false,
            tainted_since: None,
            comm: None,
            live: Arc::default(),
            retired: Vec::new(),
            generation,
        }
    }

    fn len(&self) -> usize {
        self.live.len() + self.retired.len()
    }

    fn find(&self, address: u64, time_ns: u64) -> Option<&Mapping> {
        let live = self.live.range(..=address).next_back().map(|(_, m)| m);
        if let Some(m) = live.filter(|m| m.covers(address, time_ns)) {
            return Some(m);
        }
        self.retired
            .iter()
            .rev()
            .find(|m| m.covers(address, time_ns))
    }

    /// Maps `new`, retiring the parts of the mappings it covers.
    fn map(&mut self, new: Mapping) {
        let live = Arc::make_mut(&mut self.live);
        // Mappings never overlap: scanning down from the last one starting
        // before `new.end`, the first that ends before `new.start` ends it.
        let covered: Vec<u64> = live
            .range(..new.end)
            .rev()
            .take_while(|(_, m)| m.end > new.start)
            .map(|(&start, _)| start)
            .collect();
        for start in covered {
            let Some(old) = live.remove(&start) else {
                continue;
            };
            if old.start < new.start {
                live.insert(
                    old.start,
                    Mapping {
                        end: new.start,
                        ..old.clone()
                    },
                );
            }
            if old.end > new.end {
                let pgoff = old.pgoff.wrapping_add(new.end - old.start);
                live.insert(
                    new.end,
                    Mapping {
                        start: new.end,
                        pgoff,
                        ..old.clone()
                    },
                );
            }
            if old.since_ns < new.since_ns {
                let (start, end) = (old.start.max(new.start), old.end.min(new.end));
                let pgoff = old.pgoff.wrapping_add(start - old.start);
                let until_ns = new.since_ns;
                self.retired.push(Mapping {
                    start,
                    end,
                    pgoff,
                    until_ns,
                    ..old
                });
            }
        }
        live.insert(new.start, new);
    }

    /// Drops retired mappings no sample at or after `time_ns` can fall in.
    fn prune(&mut self, time_ns: u64) {
        self.retired.retain(|m| m.until_ns > time_ns);
    }
}

/// A process's images in time order; the last is the current one.
#[derive(Clone, Debug)]
struct Process {
    images: Vec<Image>,
    /// When its main thread exited, if it has.
    ended_ns: Option<u64>,
}

impl Process {
    fn len(&self) -> usize {
        self.images.iter().map(Image::len).sum()
    }

    fn current(&mut self) -> &mut Image {
        self.images.last_mut().expect("a process has an image")
    }

    /// The image in force at `time_ns`, and whether it is the current one.
    fn image_at(&self, time_ns: u64) -> Option<(&Image, bool)> {
        let index = self.images.partition_point(|i| i.since_ns <= time_ns);
        let image = self.images.get(index.checked_sub(1)?)?;
        Some((image, index == self.images.len()))
    }
}

/// Every process's mapping history (see the module docs).
#[derive(Debug)]
pub struct MappingHistory {
    scope: Scope,
    limits: Limits,
    processes: HashMap<u32, Process>,
    /// Exits waiting for their samples to be drained: (time, pid).
    exits: BTreeSet<(u64, u32)>,
    /// Processes with more than one image or with retired mappings.
    prunable: HashSet<u32>,
    /// Every file named, shared by its mappings.
    files: HashSet<Arc<MappedFile>>,
    mappings: usize,
    path_bytes: usize,
    generations: u64,
    dropped: u64,
    rejected: u64,
}

impl MappingHistory {
    pub fn new(scope: Scope) -> MappingHistory {
        MappingHistory::with_limits(scope, Limits::default())
    }

    pub fn with_limits(scope: Scope, limits: Limits) -> MappingHistory {
        MappingHistory {
            scope,
            limits,
            processes: HashMap::new(),
            exits: BTreeSet::new(),
            prunable: HashSet::new(),
            files: HashSet::new(),
            mappings: 0,
            path_bytes: 0,
            generations: 0,
            dropped: 0,
            rejected: 0,
        }
    }

    /// Keeps the history of `pid` from now on (a target added during the run).
    pub fn track(&mut self, pid: u32) {
        if let Scope::Pids(pids) = &mut self.scope {
            pids.insert(pid);
        }
    }

    /// Whether the records of `pid` are kept (see [`Scope`]).
    pub fn tracked(&self, pid: u32) -> bool {
        match &self.scope {
            Scope::All => true,
            Scope::Pids(pids) => pids.contains(&pid),
        }
    }

    fn next_generation(&mut self) -> u64 {
        self.generations += 1;
        self.generations
    }

    /// Applies one record. Records must come in time order, as
    /// [`crate::sampler::sideband::Sideband::drain`] hands them over.
    pub fn apply(&mut self, record: SideRecord) {
        match record {
            SideRecord::Mmap(m) => self.mmap(m),
            SideRecord::Comm(c) => self.comm_record(c),
            SideRecord::Fork(t) => self.fork(t),
            SideRecord::Exit(t) => self.exit(t),
            SideRecord::Lost(l) => self.lost(l.since_ns),
        }
    }

    /// The process `pid`, created with an image from before the run (whose
    /// mappings are unknown) if it was not known.
    fn process(&mut self, pid: u32) -> &mut Process {
        if !self.processes.contains_key(&pid) {
            let image = Image::new(0, false, self.next_generation());
            let process = Process {
                images: vec![image],
                ended_ns: None,
            };
            self.processes.insert(pid, process);
        }
        self.processes.get_mut(&pid).expect("inserted above")
    }

    fn mmap(&mut self, record: MmapRecord) {
        if !self.tracked(record.pid) {
            return;
        }
        let Some(end) = record
            .start
            .checked_add(record.len)
            .filter(|_| record.len > 0)
        else {
            self.rejected += 1;
            return;
        };
        let file = MappedFile {
            path: record.path,
            identity: Some(record.identity),
        };
        let mapping = |file| Mapping {
            start: record.start,
            end,
            pgoff: record.pgoff,
            prot: record.prot,
            flags: record.flags,
            since_ns: record.time_ns,
            until_ns: u64::MAX,
            file,
        };
        self.insert(record.pid, file, mapping);
    }

    /// Adds the mapping `make` builds around `file` to the current image of
    /// `pid`, unless a limit is reached: then the image is incomplete.
    fn insert(
        &mut self,
        pid: u32,
        file: MappedFile,
        make: impl FnOnce(Arc<MappedFile>) -> Mapping,
    ) {
        let generation = self.next_generation();
        let limits = self.limits;
        let before = self.process(pid).len();
        // One mapping adds at most three entries: itself and the two ends
        // of the mappings it cuts into (what it covers moves to `retired`).
        let full = before + 3 > limits.mappings_per_process || self.mappings + 3 > limits.mappings;
        let file = if full { None } else { self.intern(file) };
        let process = self.processes.get_mut(&pid).expect("created by process()");
        let image = process.current();
        image.generation = generation;
        let Some(file) = file else {
            image.complete = false;
            self.dropped += 1;
            return;
        };
        image.map(make(file));
        let after = process.len();
        // `self.mappings` counts `before` among others: no underflow.
        self.mappings = (self.mappings + after).saturating_sub(before);
        if !process.current().retired.is_empty() {
            self.prunable.insert(pid);
        }
    }

    /// The shared copy of `file`; `None` if a new path would pass the limit.
    fn intern(&mut self, file: MappedFile) -> Option<Arc<MappedFile>> {
        if let Some(known) = self.files.get(&file) {
            return Some(known.clone());
        }
        if self.path_bytes + file.path.len() > self.limits.path_bytes {
            return None;
        }
        self.path_bytes += file.path.len();
        let file = Arc::new(file);
        self.files.insert(file.clone());
        Some(file)
    }

    fn comm_record(&mut self, record: CommRecord) {
        if !self.tracked(record.pid) {
            return;
        }
        if record.exec {
            // The old image stays for the samples taken before this time.
            let generation = self.next_generation();
            let mut image = Image::new(record.time_ns, true, generation);
            image.comm = Some(record.comm);
            self.begin(record.pid, image);
        } else if record.pid == record.tid {
            // Only the main thread's name names the process.
            self.process(record.pid).current().comm = Some(record.comm);
        }
    }

    /// Starts `image` as the current one of `pid` (an exec, or a fork that
    /// reuses a pid whose history is still kept).
    fn begin(&mut self, pid: u32, image: Image) {
        let limit = self.limits.images_per_process.max(1);
        let process = self.process(pid);
        // An exec by a thread other than the main one ends the main thread
        // first: the process goes on.
        process.ended_ns = None;
        process.images.push(image);
        let excess = process.images.len().saturating_sub(limit);
        let removed: usize = process.images.drain(..excess).map(|i| i.len()).sum();
        let many = process.images.len() > 1;
        self.mappings = self.mappings.saturating_sub(removed);
        self.dropped += removed as u64;
        if many {
            self.prunable.insert(pid);
        }
    }

    fn fork(&mut self, record: TaskRecord) {
        // A new thread shares its process's mappings: nothing to do.
        if record.pid == record.ppid || !self.tracked(record.pid) {
            return;
        }
        let (pid, since_ns) = (record.pid, record.time_ns);
        let generation = self.next_generation();
        let image = match self.processes.get(&record.ppid) {
            // The parent's mappings as they are now, shared until one
            // side changes them, and whatever made them doubtful.
            Some(parent) => {
                let from = parent.images.last().expect("a process has an image");
                Image {
                    since_ns,
                    complete: from.complete,
                    seeded: false,
                    tainted_since: from.tainted_since.map(|_| since_ns),
                    comm: from.comm.clone(),
                    live: from.live.clone(),
                    retired: Vec::new(),
                    generation,
                }
            }
            None => Image::new(since_ns, false, generation),
        };
        self.mappings += image.live.len();
        match self.processes.entry(pid) {
            // First seen at its birth: no image from before the run.
            Entry::Vacant(entry) => {
                entry.insert(Process {
                    images: vec![image],
                    ended_ns: None,
                });
            }
            // A pid reused while the history of its last holder is kept.
            Entry::Occupied(_) => self.begin(pid, image),
        }
    }

    fn exit(&mut self, record: TaskRecord) {
        // Threads other than the main one exit without ending the process.
        if record.pid != record.tid {
            return;
        }
        if let Some(process) = self.processes.get_mut(&record.pid) {
            process.ended_ns = Some(record.time_ns);
            self.exits.insert((record.time_ns, record.pid));
        }
    }

    /// Records were lost from `since_ns` on, on some CPU: any process alive
    /// then may have mapped or exec'd unseen.
    fn lost(&mut self, since_ns: u64) {
        for process in self.processes.values_mut() {
            if process.ended_ns.is_some_and(|end| end < since_ns) {
                continue;
            }
            let count = process.images.len();
            for index in (0..count).rev() {
                let image = &mut process.images[index];
                let taint = image.since_ns.max(since_ns);
                image.tainted_since = Some(image.tainted_since.map_or(taint, |t| t.min(taint)));
                if image.since_ns <= since_ns {
                    break;
                }
            }
        }
    }

    /// Fills in the current image of `pid` from a `/proc/PID/maps` listing,
    /// for a process that existed before the run (or a fork of one that has
    /// not exec'd): mappings already recorded stay, the others count from the
    /// image's start. Returns whether anything was done (not for a process
    /// out of scope, nor for an image whose mappings are all known already
    /// or that was seeded before: see [`Self::wants_seed`]).
    pub fn seed(&mut self, pid: u32, mappings: impl IntoIterator<Item = SeedMapping>) -> bool {
        if !self.wants_seed(pid) {
            return false;
        }
        self.process(pid).current().seeded = true;
        let since_ns = self.process(pid).current().since_ns;
        let dropped = self.dropped;
        for seed in mappings {
            // Live mappings never overlap each other, so the last one that
            // starts before the seed's end is the only one to check.
            let recorded = self
                .process(pid)
                .current()
                .live
                .range(..seed.end)
                .next_back();
            if recorded.is_some_and(|(_, m)| m.end > seed.start) || seed.end <= seed.start {
                continue;
            }
            let file = MappedFile {
                path: seed.path,
                identity: seed.identity,
            };
            self.insert(pid, file, |file| Mapping {
                start: seed.start,
                end: seed.end,
                pgoff: seed.pgoff,
                prot: 0,
                flags: 0,
                since_ns,
                until_ns: u64::MAX,
                file,
            });
        }
        // Complete unless a limit kept a mapping out just now.
        self.process(pid).current().complete = self.dropped == dropped;
        true
    }

    /// Whether [`Self::seed`] would fill in anything: `pid` is in scope and
    /// its current image is neither complete nor seeded once already.
    pub fn wants_seed(&self, pid: u32) -> bool {
        self.tracked(pid)
            && self
                .processes
                .get(&pid)
                .is_none_or(|p| p.images.last().is_some_and(|i| !i.complete && !i.seeded))
    }

    /// Names the current image of `pid` as `/proc` does, unless a record
    /// named it: its forks are named after it until they exec.
    pub fn name_if_unnamed(&mut self, pid: u32, comm: &[u8]) {
        if self.tracked(pid) {
            self.process(pid)
                .current()
                .comm
                .get_or_insert_with(|| comm.into());
        }
    }

    /// The mapping that held `address` in process `pid` at `time_ns`.
    pub fn locate(&self, pid: u32, address: u64, time_ns: u64) -> Result<Located<'_>, NotLocated> {
        let (image, current) = self.image_at(pid, time_ns)?;
        if image.tainted_since.is_some_and(|t| time_ns >= t) {
            return Err(if current {
                NotLocated::RecordsLost
            } else {
                NotLocated::ImageReplaced
            });
        }
        if let Some(mapping) = image.find(address, time_ns) {
            let file_offset = address - mapping.start + mapping.pgoff;
            return Ok(Located {
                mapping,
                file_offset,
            });
        }
        Err(match (image.complete, current) {
            (true, _) => NotLocated::Unmapped,
            (false, true) => NotLocated::NotSeeded,
            (false, false) => NotLocated::ImageReplaced,
        })
    }

    /// The image of `pid` in force at `time_ns`, and whether it is the
    /// current one.
    fn image_at(&self, pid: u32, time_ns: u64) -> Result<(&Image, bool), NotLocated> {
        let process = self.processes.get(&pid).ok_or(NotLocated::UnknownProcess)?;
        process
            .image_at(time_ns)
            .ok_or(NotLocated::BeforeFirstRecord)
    }

    /// The mappings of `pid` in force at `time_ns`: their key at once (one
    /// pass, no allocation), the mappings themselves only when asked.
    pub fn in_force_at(&self, pid: u32, time_ns: u64) -> Result<InForce<'_>, NotLocated> {
        let (image, _) = self.image_at(pid, time_ns)?;
        Ok(InForce::new(image, time_ns))
    }

    /// [`Self::in_force_at`], only when they are all known: the image began
    /// in the run (a fork of a known image, or an `exec`) and no record of
    /// it was lost by `time_ns`. Else why not, as [`Self::locate`] says it.
    pub fn complete_in_force_at(&self, pid: u32, time_ns: u64) -> Result<InForce<'_>, NotLocated> {
        let (image, current) = self.image_at(pid, time_ns)?;
        let tainted = image.tainted_since.is_some_and(|t| time_ns >= t);
        match (image.complete && !tainted, current) {
            (true, _) => Ok(InForce::new(image, time_ns)),
            (false, true) if tainted => Err(NotLocated::RecordsLost),
            (false, true) => Err(NotLocated::NotSeeded),
            (false, false) => Err(NotLocated::ImageReplaced),
        }
    }

    /// The image of `pid` in force at `time_ns`.
    pub fn image_id(&self, pid: u32, time_ns: u64) -> Result<ImageId, NotLocated> {
        let (image, _) = self.image_at(pid, time_ns)?;
        Ok(ImageId {
            pid,
            since_ns: image.since_ns,
        })
    }

    /// The process name (main thread's comm) in force at `time_ns`.
    pub fn comm(&self, pid: u32, time_ns: u64) -> Option<&[u8]> {
        let (image, _) = self.processes.get(&pid)?.image_at(time_ns)?;
        image.comm.as_deref()
    }

    /// The consumer has located every sample timed before `time_ns`, and
    /// will ask only about later ones: processes that exited before it,
    /// images an exec replaced before it and mappings retired before it go.
    pub fn release_up_to(&mut self, time_ns: u64) {
        while let Some(&(end, pid)) = self.exits.first() {
            if end > time_ns {
                break;
            }
            self.exits.pop_first();
            // Unless the pid started again since (an exec, or reused by a fork).
            if self
                .processes
                .get(&pid)
                .is_some_and(|p| p.ended_ns == Some(end))
            {
                let process = self.processes.remove(&pid).expect("checked");
                self.mappings = self.mappings.saturating_sub(process.len());
                self.prunable.remove(&pid);
            }
        }
        let mut removed = 0;
        self.prunable.retain(|pid| {
            let Some(process) = self.processes.get_mut(pid) else {
                return false;
            };
            let before = process.len();
            let keep_from = process
                .images
                .partition_point(|i| i.since_ns <= time_ns)
                .saturating_sub(1);
            process.images.drain(..keep_from);
            for image in &mut process.images {
                image.prune(time_ns);
            }
            removed += before - process.len();
            process.images.len() > 1 || process.images.iter().any(|i| !i.retired.is_empty())
        });
        self.mappings = self.mappings.saturating_sub(removed);
        self.forget_unused_files();
    }

    /// Drops files no mapping names any more.
    fn forget_unused_files(&mut self) {
        let mut freed = 0;
        self.files.retain(|file| {
            let used = Arc::strong_count(file) > 1;
            if !used {
                freed += file.path.len();
            }
            used
        });
        self.path_bytes = self.path_bytes.saturating_sub(freed);
    }

    pub fn stats(&self) -> HistoryStats {
        HistoryStats {
            processes: self.processes.len(),
            images: self.processes.values().map(|p| p.images.len()).sum(),
            mappings: self.mappings,
            files: self.files.len(),
            path_bytes: self.path_bytes,
            dropped: self.dropped,
            rejected: self.rejected,
        }
    }
}

/// What the `/proc` reader checks an opened file against, from a record's
/// identity of it.
pub fn file_check(identity: &FileIdentity) -> crate::process::FileCheck {
    use crate::process::FileCheck;
    match *identity {
        FileIdentity::BuildId(id) => FileCheck::BuildId(id.as_bytes().into()),
        FileIdentity::Inode {
            major,
            minor,
            inode,
            ..
        } => FileCheck::Inode {
            major,
            minor,
            inode,
        },
    }
}

impl Mapping {
    /// This mapping of process `pid`, as the `/proc` reader opens its file.
    pub fn recorded(&self, pid: u32) -> crate::process::RecordedMapping<'_> {
        crate::process::RecordedMapping {
            pid,
            start: self.start,
            end: self.end,
            path: &self.file.path,
            identity: self.file.identity.as_ref().map(file_check),
        }
    }
}

/// Seeds from the executable mappings the `/proc` reader found
/// ([`crate::process::ProcessTable::mappings`]), with each file's device
/// and inode read from the descriptor it keeps (one `stat` per file).
pub fn seeds_from_views(views: &[crate::process::MappingView]) -> Vec<SeedMapping> {
    use std::os::unix::fs::MetadataExt as _;
    let mut identities: HashMap<usize, Option<FileIdentity>> = HashMap::new();
    views
        .iter()
        .map(|view| {
            let (path, identity) = match (&view.module, &view.special) {
                (Some(module), _) => {
                    let identity = *identities.entry(module.id).or_insert_with(|| {
                        let meta = std::fs::metadata(module.open_path.as_ref()?).ok()?;
                        Some(FileIdentity::Inode {
                            major: libc::major(meta.dev()),
                            minor: libc::minor(meta.dev()),
                            inode: meta.ino(),
                            generation: None,
                        })
                    });
                    (module.path.as_bytes(), identity)
                }
                (None, Some(name)) => (name.as_bytes(), None),
                (None, None) => (&b"[anon]"[..], None),
            };
            SeedMapping {
                start: view.start,
                end: view.end,
                pgoff: view.file_offset,
                path: path.into(),
                identity,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::sideband::{BuildId, LostRecord};

    fn mmap(pid: u32, time_ns: u64, start: u64, len: u64, pgoff: u64, path: &str) -> SideRecord {
        SideRecord::Mmap(MmapRecord {
            pid,
            tid: pid,
            time_ns,
            start,
            len,
            pgoff,
            prot: 5,
            flags: 2,
            identity: FileIdentity::BuildId(
                BuildId::new(path.as_bytes().get(..4).unwrap_or(b"id")).unwrap(),
            ),
            path: path.as_bytes().into(),
        })
    }

    fn comm(pid: u32, tid: u32, time_ns: u64, exec: bool, name: &str) -> SideRecord {
        SideRecord::Comm(CommRecord {
            pid,
            tid,
            time_ns,
            exec,
            comm: name.as_bytes().into(),
        })
    }

    fn task(pid: u32, ppid: u32, tid: u32, time_ns: u64) -> TaskRecord {
        TaskRecord {
            pid,
            ppid,
            tid,
            ptid: ppid,
            time_ns,
        }
    }

    fn fork(pid: u32, ppid: u32, time_ns: u64) -> SideRecord {
        SideRecord::Fork(task(pid, ppid, pid, time_ns))
    }

    fn exit(pid: u32, time_ns: u64) -> SideRecord {
        SideRecord::Exit(task(pid, 1, pid, time_ns))
    }

    fn lost(since_ns: u64, time_ns: u64) -> SideRecord {
        SideRecord::Lost(LostRecord {
            count: 3,
            cpu: 0,
            since_ns,
            time_ns,
        })
    }

    fn history(records: impl IntoIterator<Item = SideRecord>) -> MappingHistory {
        let mut history = MappingHistory::new(Scope::All);
        for record in records {
            history.apply(record);
        }
        history
    }

    /// The path of the file `address` lay in at `time_ns`.
    fn path(
        h: &MappingHistory,
        pid: u32,
        address: u64,
        time_ns: u64,
    ) -> Result<String, NotLocated> {
        h.locate(pid, address, time_ns)
            .map(|l| String::from_utf8_lossy(&l.mapping.file.path).into_owned())
    }

    /// The sum the history keeps, counted again from scratch.
    fn counted(h: &MappingHistory) -> usize {
        h.processes.values().map(Process::len).sum()
    }

    /// A shell (pid 10, forked during the run) that forks pid 11, which
    /// execs /usr/bin/true.
    fn shell_runs_true() -> Vec<SideRecord> {
        vec![
            fork(10, 1, 100),
            comm(10, 10, 110, true, "sh"),
            mmap(10, 120, 0x1000, 0x1000, 0x1000, "/usr/bin/sh"),
            mmap(10, 130, 0x7000, 0x4000, 0x2000, "/usr/lib/libc.so.6"),
            fork(11, 10, 200),
            comm(11, 11, 300, true, "true"),
            mmap(11, 310, 0x1000, 0x2000, 0x0, "/usr/bin/true"),
            mmap(11, 320, 0x7000, 0x4000, 0x2000, "/usr/lib/libc.so.6"),
        ]
    }

    #[test]
    fn exec_between_two_samples_at_the_same_address_locates_in_two_images() {
        let h = history(shell_runs_true());
        // Pid 11 before its exec is a copy of the shell; after it, true.
        assert_eq!(path(&h, 11, 0x1800, 250).unwrap(), "/usr/bin/sh");
        assert_eq!(path(&h, 11, 0x1800, 400).unwrap(), "/usr/bin/true");
        let located = h.locate(11, 0x1800, 400).unwrap();
        assert_eq!(located.file_offset, 0x800);
        let before = h.locate(11, 0x1800, 250).unwrap();
        assert_eq!(before.file_offset, 0x1800);
        // Between the exec and the program's mmap, nothing was mapped there.
        assert_eq!(h.locate(11, 0x1800, 305), Err(NotLocated::Unmapped));
        assert_eq!(
            h.image_id(11, 250),
            Ok(ImageId {
                pid: 11,
                since_ns: 200
            })
        );
        assert_eq!(
            h.image_id(11, 400),
            Ok(ImageId {
                pid: 11,
                since_ns: 300
            })
        );
        assert_eq!(h.comm(11, 250), Some(&b"sh"[..]));
        assert_eq!(h.comm(11, 400), Some(&b"true"[..]));
        // Before its fork the pid was someone else's.
        assert_eq!(
            h.locate(11, 0x1800, 150),
            Err(NotLocated::BeforeFirstRecord)
        );
    }

    #[test]
    fn a_fork_inherits_the_parents_mappings_and_changes_only_its_own() {
        let mut h = history(shell_runs_true());
        h.apply(fork(12, 10, 400));
        assert_eq!(path(&h, 12, 0x7100, 410).unwrap(), "/usr/lib/libc.so.6");
        assert_eq!(h.locate(12, 0x7100, 410).unwrap().file_offset, 0x2100);
        // The child maps something over the shared copy: the parent keeps its own.
        h.apply(mmap(12, 420, 0x1000, 0x1000, 0, "/opt/plugin.so"));
        assert_eq!(path(&h, 12, 0x1100, 430).unwrap(), "/opt/plugin.so");
        assert_eq!(path(&h, 10, 0x1100, 430).unwrap(), "/usr/bin/sh");
        assert_eq!(h.comm(12, 410), Some(&b"sh"[..]));
        assert_eq!(h.stats().mappings, counted(&h));
    }

    #[test]
    fn a_new_thread_is_no_new_process() {
        let mut h = history(shell_runs_true());
        h.apply(SideRecord::Fork(task(10, 10, 15, 500)));
        assert_eq!(h.processes.len(), 2);
        assert!(!h.processes.contains_key(&15));
    }

    #[test]
    fn an_exit_frees_the_process_once_its_samples_are_drained() {
        let mut h = history(shell_runs_true());
        h.apply(exit(11, 500));
        // Samples still in flight locate as before.
        assert_eq!(path(&h, 11, 0x1800, 450).unwrap(), "/usr/bin/true");
        h.release_up_to(499);
        assert!(h.locate(11, 0x1800, 499).is_ok());
        h.release_up_to(500);
        assert_eq!(h.locate(11, 0x1800, 501), Err(NotLocated::UnknownProcess));
        assert_eq!(path(&h, 10, 0x1800, 501).unwrap(), "/usr/bin/sh");
        h.apply(exit(10, 600));
        h.release_up_to(700);
        assert_eq!(h.stats(), HistoryStats::default());
    }

    #[test]
    fn a_thread_exit_does_not_end_the_process() {
        let mut h = history(shell_runs_true());
        h.apply(SideRecord::Exit(task(10, 10, 16, 500)));
        h.release_up_to(1000);
        assert!(h.locate(10, 0x1100, 1000).is_ok());
    }

    #[test]
    fn an_exec_after_the_main_thread_exited_keeps_the_process() {
        // A non-main thread execs: the kernel ends the main thread first.
        let mut h = history(shell_runs_true());
        h.apply(exit(10, 500));
        h.apply(comm(10, 10, 510, true, "python3"));
        h.apply(mmap(10, 520, 0x1000, 0x1000, 0, "/usr/bin/python3"));
        h.release_up_to(600);
        assert_eq!(path(&h, 10, 0x1100, 600).unwrap(), "/usr/bin/python3");
    }

    #[test]
    fn a_pid_reused_before_release_keeps_both_lives_apart() {
        let mut h = history(shell_runs_true());
        h.apply(exit(11, 500));
        h.apply(fork(11, 10, 600));
        h.apply(comm(11, 11, 610, true, "ls"));
        h.apply(mmap(11, 620, 0x1000, 0x3000, 0, "/usr/bin/ls"));
        assert_eq!(path(&h, 11, 0x1800, 450).unwrap(), "/usr/bin/true");
        assert_eq!(path(&h, 11, 0x1800, 700).unwrap(), "/usr/bin/ls");
        // Releasing past the first life's exit keeps the second.
        h.release_up_to(650);
        assert_eq!(path(&h, 11, 0x1800, 700).unwrap(), "/usr/bin/ls");
        assert_eq!(h.stats().mappings, counted(&h));
    }

    #[test]
    fn an_mmap_over_a_mapping_retires_what_it_covers() {
        let mut h = history(shell_runs_true());
        // dlclose + dlopen of another library into the middle of libc's range.
        h.apply(mmap(10, 500, 0x8000, 0x1000, 0, "/opt/other.so"));
        assert_eq!(path(&h, 10, 0x8100, 499).unwrap(), "/usr/lib/libc.so.6");
        assert_eq!(h.locate(10, 0x8100, 499).unwrap().file_offset, 0x3100);
        assert_eq!(path(&h, 10, 0x8100, 500).unwrap(), "/opt/other.so");
        // The two ends of libc's range stay, with their own offsets.
        assert_eq!(h.locate(10, 0x7100, 600).unwrap().file_offset, 0x2100);
        assert_eq!(h.locate(10, 0x9100, 600).unwrap().file_offset, 0x4100);
        assert_eq!(path(&h, 10, 0x9100, 600).unwrap(), "/usr/lib/libc.so.6");
        // Once samples before the replacement are drained, the retired part goes.
        assert_eq!(h.processes[&10].images[1].retired.len(), 1);
        h.release_up_to(500);
        assert!(h.processes[&10].images.iter().all(|i| i.retired.is_empty()));
        assert_eq!(path(&h, 10, 0x8100, 500).unwrap(), "/opt/other.so");
        assert_eq!(h.stats().mappings, counted(&h));
    }

    #[test]
    fn mappings_in_force_and_their_generation() {
        let mut h = history(shell_runs_true());
        let early = h.in_force_at(10, 140).unwrap();
        let (generation, at_140) = (early.key, early.mappings());
        assert_eq!(
            at_140.iter().map(|m| m.start).collect::<Vec<_>>(),
            [0x1000, 0x7000]
        );
        h.apply(mmap(10, 500, 0x8000, 0x1000, 0, "/opt/other.so"));
        let late = h.in_force_at(10, 600).unwrap();
        let (later, at_600) = (late.key, late.mappings());
        assert_ne!(generation, later);
        assert_eq!(
            at_600.iter().map(|m| m.start).collect::<Vec<_>>(),
            [0x1000, 0x7000, 0x8000, 0x9000]
        );
        // Nothing began or ended between 140 and 150: the same set.
        assert_eq!(
            h.in_force_at(10, 150).unwrap().key,
            h.in_force_at(10, 140).unwrap().key
        );
        // Between 140 and 600 /opt/other.so began: two sets of one image,
        // though no record came between the two questions.
        assert_ne!(
            h.in_force_at(10, 140).unwrap().key,
            h.in_force_at(10, 600).unwrap().key
        );
        // At 140 the replaced part of libc is the retired one.
        let again = h.in_force_at(10, 140).unwrap().mappings();
        let starts: Vec<_> = again.iter().map(|m| (m.start, m.end)).collect();
        assert_eq!(
            starts,
            [
                (0x1000, 0x2000),
                (0x7000, 0x8000),
                (0x8000, 0x9000),
                (0x9000, 0xb000)
            ]
        );
    }

    fn seeds() -> Vec<SeedMapping> {
        let seed = |start, end, path: &str| SeedMapping {
            start,
            end,
            pgoff: 0,
            path: path.as_bytes().into(),
            identity: None,
        };
        vec![
            seed(0x1000, 0x2000, "/usr/bin/daemon"),
            seed(0x7000, 0x9000, "/usr/lib/libc.so.6"),
        ]
    }

    #[test]
    fn a_process_from_before_the_run_is_seeded_from_proc() {
        // Pid 20 existed before the run: only a later dlopen was recorded.
        let mut h = history([mmap(20, 100, 0x5000, 0x1000, 0, "/opt/late.so")]);
        assert_eq!(path(&h, 20, 0x5100, 150).unwrap(), "/opt/late.so");
        assert_eq!(h.locate(20, 0x1100, 150), Err(NotLocated::NotSeeded));
        assert!(NotLocated::NotSeeded.may_read_proc());
        // /proc shows the dlopened library too: the record's version stays.
        let mut listing = seeds();
        listing.push(SeedMapping {
            start: 0x5000,
            end: 0x6000,
            pgoff: 0,
            path: (*b"/opt/late.so").into(),
            identity: None,
        });
        assert!(h.seed(20, listing));
        assert_eq!(path(&h, 20, 0x1100, 150).unwrap(), "/usr/bin/daemon");
        // Seeded mappings count from the image's start: before the run.
        assert_eq!(path(&h, 20, 0x7100, 0).unwrap(), "/usr/lib/libc.so.6");
        assert_eq!(h.locate(20, 0x5100, 50), Err(NotLocated::Unmapped));
        assert_eq!(h.locate(20, 0x3000, 150), Err(NotLocated::Unmapped));
        // Seeding again does nothing: the image is complete.
        assert!(!h.seed(20, seeds()));
    }

    #[test]
    fn a_fork_of_a_seeded_parent_is_named_and_located_after_its_exec() {
        // Pid 20 existed before the run; read from /proc as it forks 21.
        let mut h = history([]);
        assert!(h.wants_seed(20));
        assert!(h.seed(20, seeds()));
        h.name_if_unnamed(20, b"daemon");
        // Once per image: seeded, even if a limit left it incomplete.
        assert!(!h.wants_seed(20));
        assert!(!h.seed(20, seeds()));
        h.apply(fork(21, 20, 100));
        h.apply(comm(21, 21, 200, true, "true"));
        h.apply(mmap(21, 210, 0x1000, 0x1000, 0, "/usr/bin/true"));
        // The child's copy is complete: its code before the exec is the parent's.
        assert_eq!(path(&h, 21, 0x7100, 150).unwrap(), "/usr/lib/libc.so.6");
        assert_eq!(h.comm(21, 150), Some(&b"daemon"[..]));
        assert_eq!(path(&h, 21, 0x1100, 250).unwrap(), "/usr/bin/true");
        assert_eq!(h.comm(21, 250), Some(&b"true"[..]));
        // A name a record gave stays.
        h.name_if_unnamed(21, b"other");
        assert_eq!(h.comm(21, 250), Some(&b"true"[..]));
        // A child that has exec'd is complete: nothing to seed.
        assert!(!h.wants_seed(21));
    }

    #[test]
    fn an_unseeded_image_replaced_by_an_exec_cannot_be_named_from_proc() {
        let mut h = history([
            comm(20, 20, 100, true, "new"),
            mmap(20, 110, 0x1000, 0x1000, 0, "/usr/bin/new"),
        ]);
        assert_eq!(h.locate(20, 0x1100, 50), Err(NotLocated::ImageReplaced));
        assert!(!NotLocated::ImageReplaced.may_read_proc());
        // /proc now shows the new program: seeding fills nothing in the old one.
        assert!(!h.seed(20, seeds()));
        assert_eq!(h.locate(20, 0x1100, 50), Err(NotLocated::ImageReplaced));
        assert_eq!(path(&h, 20, 0x1100, 200).unwrap(), "/usr/bin/new");
    }

    #[test]
    fn lost_records_make_the_processes_alive_then_doubtful() {
        let mut h = history(shell_runs_true());
        h.apply(lost(400, 450));
        // Before the loss: as recorded. After: /proc, which shows this image.
        assert!(h.locate(10, 0x1100, 399).is_ok());
        assert_eq!(h.locate(10, 0x1100, 400), Err(NotLocated::RecordsLost));
        // A fork of a doubtful parent is doubtful; an exec starts afresh.
        h.apply(fork(13, 10, 500));
        assert_eq!(h.locate(13, 0x1100, 510), Err(NotLocated::RecordsLost));
        h.apply(comm(13, 13, 520, true, "true"));
        h.apply(mmap(13, 530, 0x1000, 0x2000, 0, "/usr/bin/true"));
        assert_eq!(path(&h, 13, 0x1100, 540).unwrap(), "/usr/bin/true");
        // A process born after the loss knows its parent's mappings only
        // as doubtfully; one from an unknown parent is merely unseeded.
        h.apply(fork(14, 99, 600));
        assert_eq!(h.locate(14, 0x1100, 610), Err(NotLocated::NotSeeded));
        // The old image of 13 after the loss: doubtful, and /proc shows a later one.
        assert_eq!(h.locate(13, 0x1100, 515), Err(NotLocated::ImageReplaced));
    }

    #[test]
    fn a_loss_reaches_back_to_images_begun_inside_its_window() {
        let mut h = history(shell_runs_true());
        // Pid 11 exec'd at 300, inside a loss window that began at 250.
        h.apply(lost(250, 350));
        assert_eq!(h.locate(11, 0x1800, 260), Err(NotLocated::ImageReplaced));
        assert_eq!(h.locate(11, 0x1800, 400), Err(NotLocated::RecordsLost));
        assert!(h.locate(11, 0x1800, 240).is_ok());
    }

    #[test]
    fn only_tracked_pids_get_a_history() {
        let mut h = MappingHistory::new(Scope::Pids([10].into()));
        for record in shell_runs_true() {
            h.apply(record);
        }
        assert!(h.locate(10, 0x1100, 400).is_ok());
        assert_eq!(h.locate(11, 0x1100, 400), Err(NotLocated::UnknownProcess));
        h.track(11);
        h.apply(mmap(11, 500, 0x1000, 0x1000, 0, "/usr/bin/true"));
        assert_eq!(path(&h, 11, 0x1100, 600).unwrap(), "/usr/bin/true");
    }

    #[test]
    fn a_process_past_its_limit_keeps_what_it_had_and_says_it_is_incomplete() {
        let limits = Limits {
            mappings_per_process: 8,
            ..Limits::default()
        };
        let mut h = MappingHistory::with_limits(Scope::All, limits);
        h.apply(fork(30, 1, 10));
        h.apply(comm(30, 30, 20, true, "jit"));
        for i in 0..20u64 {
            h.apply(mmap(30, 30 + i, 0x10_000 * (i + 1), 0x1000, 0, "//anon"));
        }
        let stats = h.stats();
        assert!(stats.mappings <= 8, "{stats:?}");
        assert_eq!(stats.dropped, 20 - stats.mappings as u64);
        assert!(h.locate(30, 0x10_100, 100).is_ok());
        // Not kept: the image says so, and /proc may answer.
        assert_eq!(h.locate(30, 0x14_0100, 100), Err(NotLocated::NotSeeded));
        assert_eq!(stats.mappings, counted(&h));
    }

    #[test]
    fn paths_past_the_byte_limit_are_not_kept() {
        let limits = Limits {
            path_bytes: 32,
            ..Limits::default()
        };
        let mut h = MappingHistory::with_limits(Scope::All, limits);
        h.apply(fork(30, 1, 10));
        h.apply(mmap(30, 20, 0x1000, 0x1000, 0, "/a/path/of/twenty/four/b"));
        h.apply(mmap(30, 30, 0x3000, 0x1000, 0, "/another/twenty-four/byt"));
        // The same path again costs nothing.
        h.apply(mmap(30, 40, 0x5000, 0x1000, 0, "/a/path/of/twenty/four/b"));
        assert_eq!(h.stats().path_bytes, 24);
        assert_eq!(h.stats().files, 1);
        assert_eq!(h.stats().dropped, 1);
        assert_eq!(h.locate(30, 0x3100, 50), Err(NotLocated::NotSeeded));
    }

    #[test]
    fn empty_and_wrapping_mappings_are_rejected() {
        let mut h = history([
            mmap(40, 10, 0x1000, 0, 0, "/x"),
            mmap(40, 20, u64::MAX - 10, 0x1000, 0, "/y"),
        ]);
        assert_eq!(h.stats().rejected, 2);
        h.apply(exit(40, 30));
        h.release_up_to(30);
        assert_eq!(
            h.stats(),
            HistoryStats {
                rejected: 2,
                ..HistoryStats::default()
            }
        );
    }

    #[test]
    fn too_many_execs_drop_the_oldest_images() {
        let limits = Limits {
            images_per_process: 3,
            ..Limits::default()
        };
        let mut h = MappingHistory::with_limits(Scope::All, limits);
        h.apply(fork(50, 1, 10));
        for i in 0..5u64 {
            h.apply(comm(50, 50, 100 * (i + 1), true, "loop"));
            h.apply(mmap(
                50,
                100 * (i + 1) + 1,
                0x1000,
                0x1000,
                0,
                "/usr/bin/loop",
            ));
        }
        assert_eq!(h.stats().images, 3);
        assert_eq!(
            h.locate(50, 0x1100, 150),
            Err(NotLocated::BeforeFirstRecord)
        );
        assert!(h.locate(50, 0x1100, 350).is_ok());
        assert_eq!(h.stats().mappings, counted(&h));
    }

    #[test]
    fn release_drops_images_replaced_before_it() {
        let mut h = history(shell_runs_true());
        // Each process: the image from its fork, and the one from its exec.
        assert_eq!(h.stats().images, 4);
        h.release_up_to(299);
        assert_eq!(h.stats().images, 3);
        h.release_up_to(300);
        // Pid 11's image from its fork ended with its exec at 300.
        assert_eq!(h.stats().images, 2);
        assert_eq!(path(&h, 11, 0x1800, 400).unwrap(), "/usr/bin/true");
        assert_eq!(h.stats().mappings, counted(&h));
    }

    /// Many records in a random order of kinds: the count kept matches the
    /// count recomputed, and everything goes once all have exited.
    #[test]
    fn the_books_balance_under_churn() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        let mut h = MappingHistory::with_limits(
            Scope::All,
            Limits {
                mappings_per_process: 64,
                mappings: 2_000,
                ..Limits::default()
            },
        );
        let paths = [
            "/usr/bin/a",
            "/usr/lib/b.so",
            "/usr/lib/c.so",
            "//anon",
            "[vdso]",
        ];
        for t in 1..20_000u64 {
            let pid = 100 + next(40) as u32;
            let record = match next(10) {
                0 => fork(pid, 100 + next(40) as u32, t),
                1 => comm(pid, pid, t, true, "x"),
                2 => exit(pid, t),
                3 if next(50) == 0 => lost(t.saturating_sub(5), t),
                _ => mmap(
                    pid,
                    t,
                    0x1000 * (1 + next(64)),
                    0x1000 * (1 + next(4)),
                    0,
                    paths[next(5) as usize],
                ),
            };
            h.apply(record);
            if t % 500 == 0 {
                h.release_up_to(t - 100);
                assert_eq!(h.stats().mappings, counted(&h), "at {t}");
            }
        }
        assert!(h.stats().mappings <= 2_000 + 3);
        for pid in 100..140 {
            h.apply(exit(pid, 30_000));
        }
        h.release_up_to(30_000);
        let left = h.stats();
        assert_eq!(
            (
                left.processes,
                left.images,
                left.mappings,
                left.files,
                left.path_bytes
            ),
            (0, 0, 0, 0, 0)
        );
    }

    /// Records that come from bytes, as the drain hands them over.
    #[test]
    fn records_parsed_from_bytes_build_the_same_history() {
        use crate::sampler::sideband::tests_support::{comm as comm_bytes, config, mmap2};
        use crate::sampler::sideband::{parse_record, Parsed};
        let mut h = MappingHistory::new(Scope::All);
        for bytes in [
            comm_bytes(60, 100, true, b"true"),
            mmap2(60, 110, 0x1000, 0x2000, Some(&[9; 20]), b"/usr/bin/true"),
        ] {
            let Parsed::Record(record) = parse_record(&bytes, &config()) else {
                panic!("unparsed")
            };
            h.apply(record);
        }
        let located = h.locate(60, 0x1100, 200).unwrap();
        assert_eq!(&*located.mapping.file.path, b"/usr/bin/true");
        assert_eq!(located.file_offset, 0x1100);
        assert!(matches!(
            located.mapping.file.identity,
            Some(FileIdentity::BuildId(_))
        ));
    }

    /// The adapter from the `/proc` reader, on our own process.
    #[test]
    fn seeds_from_our_own_maps_locate_our_own_code() {
        let pid = std::process::id();
        let mut table = crate::process::ProcessTable::new();
        let (_, views) = table.mappings(pid).expect("our own maps");
        let seeds = seeds_from_views(&views);
        let mut h = MappingHistory::new(Scope::All);
        assert!(h.seed(pid, seeds));
        let here = seeds_from_our_own_maps_locate_our_own_code as fn() as usize as u64;
        let located = h.locate(pid, here, 1).unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert_eq!(
            &*located.mapping.file.path,
            exe.as_os_str().as_encoded_bytes()
        );
        let meta = std::fs::metadata(&exe).unwrap();
        use std::os::unix::fs::MetadataExt as _;
        assert!(matches!(
            located.mapping.file.identity,
            Some(FileIdentity::Inode { inode, .. }) if inode == meta.ino()
        ));
    }
}
