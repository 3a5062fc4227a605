//! Names of code a runtime compiled at run time (JIT), from the perf map it
//! writes: `/tmp/perf-PID.map`, one `START SIZE name` line (hex, no `0x`)
//! per function, as Node's `--perf-basic-prof`, CPython's `-X perf` and
//! Java's `jcmd PID Compiler.perfmap` write it (the format of the kernel's
//! `tools/perf/Documentation/jit-interface.txt`, which perf, samply and
//! blazesym read), or from the jitdump it maps ([`dump`]; opened by the
//! process table like every mapped file).
//!
//! The map is the target's file, in a directory every user can write, so it
//! is read as hostile input:
//! - opened inside the process's root (`/proc/PID/root`, its own `/tmp`,
//!   named after the pid the process sees itself as), without following a
//!   link in its last component, without blocking, regular files only
//!   ([`crate::target_file::open_in_root`]);
//! - trusted only if owned by root or by the process's real or effective
//!   user, so another user cannot plant names for it (perf trusts root and
//!   its own user, which for a sampler running as root is root alone);
//! - read at most [`MAX_MAP_BYTES`] bytes and [`MAX_ENTRIES`] functions in
//!   all; a line that does not parse (or is longer than [`MAX_LINE`]) is
//!   skipped and counted, never an error;
//! - read incrementally: runtimes only append, so a re-read (when a sample
//!   falls in anonymous code no entry covers, at most once per
//!   [`REREAD_INTERVAL`]) reads the new lines only; a file that shrank or
//!   was replaced is read again from the start.
//!
//! Later lines win where entries overlap (code freed and its memory reused).
//! Names are escaped ([`crate::text`]) as they enter. The maps of a process
//! are kept until it is forgotten, so its frames are named after it exits.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::File,
    io::{Read as _, Seek as _, SeekFrom},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    target_file::{self, Links, Refusal, Why},
    text::escape_controls,
};

/// The most bytes of one perf map read over a run.
pub const MAX_MAP_BYTES: u64 = 64 << 20;
/// The most functions kept for one process.
pub const MAX_ENTRIES: usize = 1 << 20;
/// Longer lines are skipped (a function name is a few hundred bytes at most).
pub const MAX_LINE: usize = 4096;
/// Bytes at the start of a map compared to tell a rewritten one.
const HEAD: usize = 64;
/// A map is read this many bytes at a time.
const CHUNK: u64 = 1 << 20;
/// How often, at most, an address that no entry covers makes the map be read again.
pub const REREAD_INTERVAL: Duration = Duration::from_millis(100);

/// A function named by a perf map.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct JitSymbol {
    /// The name as the runtime wrote it, escaped.
    pub function: Arc<str>,
    /// The map as the process sees it (`/tmp/perf-42.map`): the frame's module.
    pub map: Arc<str>,
}

/// The functions of one perf map, as read so far.
#[derive(Debug, Default)]
pub struct PerfMap {
    /// Non-overlapping ranges by start: (end, name).
    ranges: BTreeMap<u64, (u64, Arc<str>)>,
    /// Each name once: runtimes write the same name for every recompilation.
    names: HashSet<Arc<str>>,
    /// Bytes of the file parsed (whole lines only).
    consumed: u64,
    /// Inside a line too long to keep: skip up to its end.
    in_long_line: bool,
    /// The first bytes read ([`HEAD`] at most): a file whose first bytes
    /// differ was rewritten, even under the same inode.
    head: Vec<u8>,
    /// Lines that did not parse.
    pub skipped: u64,
    /// [`MAX_MAP_BYTES`] or [`MAX_ENTRIES`] reached: nothing more is read.
    pub capped: bool,
}

impl PerfMap {
    /// The function at `address`, if an entry covers it.
    pub fn lookup(&self, address: u64) -> Option<&Arc<str>> {
        let (_, (end, name)) = self.ranges.range(..=address).next_back()?;
        (address < *end).then_some(name)
    }

    /// Functions known.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Parses the whole lines of `bytes`, the file's contents from
    /// `self.consumed` on; a last line without its newline waits for the
    /// next read, unless `at_cap` says no more will come.
    pub fn feed(&mut self, bytes: &[u8], at_cap: bool) {
        let mut rest = bytes;
        while !self.capped {
            let Some(newline) = rest.iter().position(|&b| b == b'\n') else {
                break;
            };
            let (line, after) = (&rest[..newline], &rest[newline + 1..]);
            self.consumed += newline as u64 + 1;
            rest = after;
            if std::mem::take(&mut self.in_long_line) {
                continue;
            }
            self.line(line);
        }
        if rest.len() > MAX_LINE && !self.in_long_line {
            // A line that cannot be kept whole: skipped, up to its newline.
            self.consumed += rest.len() as u64;
            self.in_long_line = true;
            self.skipped += 1;
        } else if self.in_long_line {
            self.consumed += rest.len() as u64;
        }
        if at_cap {
            self.capped = true;
        }
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        match parse_line(line) {
            Some((start, size, name)) => self.add(start, size, name),
            None => self.skipped += 1,
        }
    }

    /// Adds the function `name` at `start..start + size`.
    fn add(&mut self, start: u64, size: u64, name: &str) {
        let Some(end) = start.checked_add(size).filter(|_| size > 0) else {
            // Empty or wrapping: covers no address a sample can have.
            self.skipped += 1;
            return;
        };
        let name = self.intern(name);
        self.insert(start, end, name);
        if self.ranges.len() >= MAX_ENTRIES {
            self.capped = true;
        }
    }

    fn intern(&mut self, name: &str) -> Arc<str> {
        let escaped = escape_controls(name);
        if let Some(known) = self.names.get(&*escaped) {
            return known.clone();
        }
        let name: Arc<str> = Arc::from(&*escaped);
        self.names.insert(name.clone());
        name
    }

    /// Adds `start..end`, cutting what older entries it overlaps.
    fn insert(&mut self, start: u64, end: u64, name: Arc<str>) {
        let overlapping: Vec<(u64, u64, Arc<str>)> = self
            .ranges
            .range(..end)
            .rev()
            .take_while(|(_, (e, _))| *e > start)
            .map(|(&s, (e, n))| (s, *e, n.clone()))
            .collect();
        for (s, e, n) in overlapping {
            self.ranges.remove(&s);
            if s < start {
                self.ranges.insert(s, (start, n.clone()));
            }
            if e > end {
                self.ranges.insert(end, (e, n));
            }
        }
        self.ranges.insert(start, (end, name));
    }
}

/// `START SIZE name`: two hex numbers (an optional `0x` accepted), then the
/// rest of the line, spaces included. `None` if it is not that.
pub fn parse_line(line: &[u8]) -> Option<(u64, u64, &str)> {
    let line = std::str::from_utf8(line).ok()?;
    let (start, rest) = line
        .trim_start()
        .split_once(|c: char| c.is_ascii_whitespace())?;
    let (size, name) = rest
        .trim_start()
        .split_once(|c: char| c.is_ascii_whitespace())?;
    let hex = |s: &str| u64::from_str_radix(s.strip_prefix("0x").unwrap_or(s), 16).ok();
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    Some((hex(start)?, hex(size)?, name))
}

/// Whether a mapped file is a jitdump: named `jit-PID.dump`, in any directory.
pub fn is_jitdump(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.strip_prefix("jit-")
        .and_then(|rest| rest.strip_suffix(".dump"))
        .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// Who the process is, from `/proc/PID/status`: the pid it sees itself as
/// (the last of `NStgid`) and its real and effective uids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub ns_pid: u32,
    pub uids: [u32; 2],
}

impl Identity {
    pub fn parse(pid: u32, status: &str) -> Option<Identity> {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_ascii_whitespace().collect::<Vec<_>>())
        };
        let ns_pid = match field("NStgid:") {
            Some(pids) => pids.last()?.parse().ok()?,
            // A kernel without pid namespaces.
            None => pid,
        };
        let uids = field("Uid:")?;
        Some(Identity {
            ns_pid,
            uids: [uids.first()?.parse().ok()?, uids.get(1)?.parse().ok()?],
        })
    }

    /// Whether a map owned by `uid` is trusted: root's, or the process's user's.
    pub fn trusts_owner(&self, uid: u32) -> bool {
        uid == 0 || self.uids.contains(&uid)
    }
}

/// Why a process's perf map is not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotRead {
    /// No map (the runtime writes none), or the policy refused it.
    Refused(Refusal),
    /// Owned by another user than the process's and root.
    Untrusted { owner: u32 },
}

/// The perf map of one process and where it is.
struct ProcessMap {
    root: PathBuf,
    /// `/tmp/perf-NSPID.map`, inside `root`.
    path: PathBuf,
    shown: Arc<str>,
    identity: Option<Identity>,
    /// The (device, inode) read; another file starts over.
    file: Option<(u64, u64)>,
    map: PerfMap,
    last_read: Option<Instant>,
    /// Why the last read failed, if it did.
    failed: Option<NotRead>,
    /// The jitdump the process maps, if it maps one.
    dump: Option<DumpState>,
}

/// A jitdump file as the process maps it: opened (under the policy, by
/// the process table, as every mapped file), and its path for display.
pub struct DumpFile {
    pub file: File,
    pub shown: Arc<str>,
}

/// A jitdump, as read so far.
struct DumpState {
    shown: Arc<str>,
    /// The (device, inode) read; another file starts over.
    file: (u64, u64),
    reader: dump::DumpReader,
    map: PerfMap,
}

/// The perf maps of every process, read as their samples need them.
#[derive(Default)]
pub struct JitMaps {
    processes: HashMap<u32, ProcessMap>,
}

impl JitMaps {
    pub fn new() -> Self {
        Self::default()
    }

    /// The function of process `pid` at `address` (in code without a file),
    /// reading the process's perf map, and the jitdump `dump` opens if it
    /// maps one, when neither covers the address.
    pub fn lookup(
        &mut self,
        pid: u32,
        address: u64,
        dump: impl FnOnce() -> Option<DumpFile>,
    ) -> Option<JitSymbol> {
        let process = self
            .processes
            .entry(pid)
            .or_insert_with(|| ProcessMap::of(pid));
        if process.lookup(address).is_none() {
            process.refresh(Instant::now(), dump);
        }
        process.lookup(address)
    }

    /// Drops what was read for `pid` (it exited and was reported).
    pub fn forget(&mut self, pid: u32) {
        self.processes.remove(&pid);
    }

    /// Keeps the maps of the processes for which `keep` is true only.
    pub fn retain(&mut self, keep: impl Fn(u32) -> bool) {
        self.processes.retain(|&pid, _| keep(pid));
    }

    /// Lines skipped, and maps capped, over all processes (for debug logs).
    pub fn sizes(&self) -> String {
        let maps = || {
            self.processes
                .values()
                .flat_map(|p| [Some(&p.map), p.dump.as_ref().map(|d| &d.map)])
                .flatten()
        };
        let functions: usize = maps().map(PerfMap::len).sum();
        let skipped: u64 = maps().map(|m| m.skipped).sum();
        format!(
            "{} processes' perf maps and jitdumps, {functions} functions, {skipped} lines or records skipped",
            self.processes.len()
        )
    }
}

impl ProcessMap {
    fn of(pid: u32) -> ProcessMap {
        let identity = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|status| Identity::parse(pid, &status));
        let ns_pid = identity.map_or(pid, |i| i.ns_pid);
        let path = PathBuf::from(format!("/tmp/perf-{ns_pid}.map"));
        ProcessMap {
            root: PathBuf::from(format!("/proc/{pid}/root")),
            shown: escape_controls(&path.to_string_lossy()).into(),
            path,
            identity,
            file: None,
            map: PerfMap::default(),
            last_read: None,
            failed: None,
            dump: None,
        }
    }

    /// The function at `address`, from the perf map or the jitdump.
    fn lookup(&self, address: u64) -> Option<JitSymbol> {
        let from_dump = || {
            let dump = self.dump.as_ref()?;
            Some((dump.map.lookup(address)?, &dump.shown))
        };
        let (function, map) = match self.map.lookup(address) {
            Some(function) => (function, &self.shown),
            None => from_dump()?,
        };
        Some(JitSymbol {
            function: function.clone(),
            map: map.clone(),
        })
    }

    /// Reads what was appended since the last read, unless that was less
    /// than [`REREAD_INTERVAL`] ago.
    fn refresh(&mut self, now: Instant, dump: impl FnOnce() -> Option<DumpFile>) {
        if self
            .last_read
            .is_some_and(|last| now.duration_since(last) < REREAD_INTERVAL)
        {
            return;
        }
        self.last_read = Some(now);
        if let Some(found) = dump() {
            read_dump(found, &mut self.dump);
        }
        let Some(identity) = self.identity else {
            return;
        };
        match read_more(
            &self.root,
            &self.path,
            identity,
            &mut self.file,
            &mut self.map,
        ) {
            Ok(()) => self.failed = None,
            Err(why) => {
                if self.failed.as_ref() != Some(&why) {
                    log::debug!("perf map {} not read: {why:?}", self.shown);
                }
                self.failed = Some(why);
            }
        }
    }
}

/// Opens the map at `path` in `root` and feeds `map` the bytes appended
/// since it was last read (all of them if the file is new or shrank).
pub fn read_more(
    root: &Path,
    path: &Path,
    identity: Identity,
    file_id: &mut Option<(u64, u64)>,
    map: &mut PerfMap,
) -> Result<(), NotRead> {
    let mut file = open_map(root, path, identity)?;
    let meta = file.metadata().map_err(|e| unreadable(path, e))?;
    let id = (meta.dev(), meta.ino());
    if *file_id != Some(id) || meta.size() < map.consumed || !same_head(&mut file, &map.head) {
        // Another file, or rewritten from the start.
        *map = PerfMap::default();
        *file_id = Some(id);
    }
    // What fstat said, no more: a file that grows while it is read gives
    // its new lines to the next read.
    let end = meta.size().min(MAX_MAP_BYTES);
    let mut chunk = Vec::new();
    while !map.capped && map.consumed < end {
        let from = map.consumed;
        file.seek(SeekFrom::Start(from))
            .map_err(|e| unreadable(path, e))?;
        chunk.clear();
        (&mut file)
            .take(CHUNK.min(end - from))
            .read_to_end(&mut chunk)
            .map_err(|e| unreadable(path, e))?;
        if chunk.is_empty() {
            // Shorter than it said: truncated while read.
            break;
        }
        if from == 0 {
            map.head = chunk[..chunk.len().min(HEAD)].to_vec();
        }
        map.feed(&chunk, from + chunk.len() as u64 >= MAX_MAP_BYTES);
        if map.consumed == from {
            // A line still being written.
            break;
        }
    }
    Ok(())
}

/// Reads what was appended to the jitdump `found` since `state` was read.
fn read_dump(found: DumpFile, state: &mut Option<DumpState>) {
    let DumpFile { mut file, shown } = found;
    let Ok(meta) = file.metadata() else {
        return;
    };
    let id = (meta.dev(), meta.ino());
    let state = match state {
        Some(known) if known.file == id => known,
        _ => state.insert(DumpState {
            shown,
            file: id,
            reader: dump::DumpReader::default(),
            map: PerfMap::default(),
        }),
    };
    let end = meta.size().min(MAX_MAP_BYTES);
    let mut chunk = Vec::new();
    while !state.reader.broken && !state.map.capped && state.reader.consumed < end {
        let from = state.reader.consumed;
        chunk.clear();
        let read = file.seek(SeekFrom::Start(from)).and_then(|_| {
            (&mut file)
                .take(CHUNK.min(end - from))
                .read_to_end(&mut chunk)
        });
        if read.is_err() || chunk.is_empty() {
            break;
        }
        state.reader.feed(&chunk, &mut state.map);
        if state.reader.consumed == from {
            // A record still being written.
            break;
        }
    }
    if state.reader.consumed >= MAX_MAP_BYTES {
        state.map.capped = true;
    }
}

/// Whether `file` still starts with `head`.
fn same_head(file: &mut File, head: &[u8]) -> bool {
    let mut now = Vec::with_capacity(head.len());
    let read = file
        .seek(SeekFrom::Start(0))
        .and_then(|_| std::io::Read::take(&mut *file, head.len() as u64).read_to_end(&mut now));
    read.is_ok() && now == head
}

/// Opens a perf map under the policy, and checks its owner.
fn open_map(root: &Path, path: &Path, identity: Identity) -> Result<File, NotRead> {
    let file =
        target_file::open_in_root(root, path, Links::Refuse, u64::MAX).map_err(NotRead::Refused)?;
    let owner = file.metadata().map_err(|e| unreadable(path, e))?.uid();
    if !identity.trusts_owner(owner) {
        return Err(NotRead::Untrusted { owner });
    }
    Ok(file)
}

fn unreadable(path: &Path, error: std::io::Error) -> NotRead {
    NotRead::Refused(Refusal {
        path: path.to_path_buf(),
        why: Why::Unreadable(error.to_string()),
    })
}

mod dump;
#[cfg(test)]
mod tests;
