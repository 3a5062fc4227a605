//! `--unwind tables`: the compiled rows of each file loaded once into the
//! kernel's `UNWIND_ROWS` array, and each process's mappings pointed at
//! them in `UNWIND_PROCESSES`. The array's size is the memory bound
//! (`--unwind-table-size`); a file that does not fit is left out, and its
//! frames are unwound by copying.
use std::{
    collections::HashMap as StdHashMap,
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
};

use anyhow::{Context as _, Result};
use aya::{
    maps::{Array, HashMap, IterableMap as _, MapData},
    Ebpf,
};
use tripod_common::{
    names, UnwindMapping, UnwindProcess, UnwindRow, MAX_UNWIND_MAPPINGS, MAX_UNWIND_PROCESSES,
};

/// Set by tests to a number of processes: `UNWIND_PROCESSES` holds that
/// many instead of [`MAX_UNWIND_PROCESSES`], so that filling it takes a few
/// hundred short processes rather than thousands.
pub const TEST_PROCESS_SLOTS: &str = "TRIPOD_TEST_UNWIND_PROCESS_SLOTS";

/// Set (to anything) by tests: rows are written one update each, as on a
/// kernel that refuses batch updates of arrays (before Linux 5.7).
pub const TEST_NO_BATCH_UPDATE: &str = "TRIPOD_TEST_NO_BATCH_UPDATE";

/// Set (to anything) by tests: rows are written by batch updates, as when
/// the kernel refuses to map `UNWIND_ROWS` into our memory.
pub const TEST_NO_MAPPED_ROWS: &str = "TRIPOD_TEST_NO_MAPPED_ROWS";

/// How many processes `UNWIND_PROCESSES` holds: [`MAX_UNWIND_PROCESSES`],
/// or fewer for a test ([`TEST_PROCESS_SLOTS`]).
pub fn process_slots() -> u32 {
    std::env::var(TEST_PROCESS_SLOTS)
        .ok()
        .and_then(|slots| slots.parse().ok())
        .filter(|&slots| (1..=MAX_UNWIND_PROCESSES).contains(&slots))
        .unwrap_or(MAX_UNWIND_PROCESSES)
}

use crate::model::{TableFile, TableMapping, TableUse};

/// Where each file's rows are in `UNWIND_ROWS`, and how full it is.
#[derive(Debug)]
pub struct TableStore {
    capacity: u32,
    next_row: u32,
    /// By file id: its first row and row count, or `None`: it did not fit.
    files: StdHashMap<usize, Option<(u32, u32)>>,
    usage: TableUse,
    /// The [`UnwindProcess::version`] of the last entry written.
    version: u32,
    /// The kernel refused to map `UNWIND_ROWS` into our memory: rows are
    /// written by system calls from then on.
    mapping_refused: bool,
}

impl TableStore {
    pub fn new(capacity: u32) -> Self {
        TableStore {
            capacity,
            next_row: 0,
            files: StdHashMap::new(),
            usage: TableUse {
                capacity_rows: u64::from(capacity),
                ..TableUse::default()
            },
            version: 0,
            mapping_refused: false,
        }
    }

    /// A version no entry written before has (one counter for every
    /// process: an entry removed and written again gets a new one too).
    fn next_version(&mut self) -> u32 {
        self.version = self.version.wrapping_add(1);
        self.version
    }

    pub fn usage(&self) -> TableUse {
        self.usage
    }

    /// Points process `pid` at the rows of its mappings, loading the rows
    /// of files not loaded yet.
    pub fn set_process(
        &mut self,
        ebpf: &mut Ebpf,
        pid: u32,
        mappings: &[TableMapping],
    ) -> Result<()> {
        let mut process = UnwindProcess {
            len: 0,
            version: self.next_version(),
            mappings: [UnwindMapping {
                start: 0,
                end: 0,
                bias: 0,
                rows_start: 0,
                rows_len: 0,
            }; MAX_UNWIND_MAPPINGS],
        };
        for mapping in mappings {
            let Some((rows_start, rows_len)) = self.load_file(ebpf, mapping.file, &mapping.rows)?
            else {
                continue;
            };
            if process.len as usize == MAX_UNWIND_MAPPINGS {
                self.usage.processes_with_too_many_mappings += 1;
                break;
            }
            process.mappings[process.len as usize] = UnwindMapping {
                start: mapping.start,
                end: mapping.end,
                bias: mapping.bias,
                rows_start,
                rows_len,
            };
            process.len += 1;
        }
        let mut processes: HashMap<&mut MapData, u32, UnwindProcess> =
            HashMap::try_from(map(ebpf, names::UNWIND_PROCESSES)?)?;
        processes
            .insert(pid, process, 0)
            .with_context(|| format!("adding the unwind tables of pid {pid}"))
    }

    /// Stops walking the stacks of process `pid` in the kernel: it exited
    /// (its entry would hold one of the [`MAX_UNWIND_PROCESSES`] slots for
    /// good), or exec'd (its entry describes mappings that are gone). Its
    /// files' rows stay, shared with other processes.
    pub fn forget_process(&mut self, ebpf: &mut Ebpf, pid: u32) -> Result<()> {
        let mut processes: HashMap<&mut MapData, u32, UnwindProcess> =
            HashMap::try_from(map(ebpf, names::UNWIND_PROCESSES)?)?;
        match processes.remove(&pid) {
            Ok(()) => Ok(()),
            // Never added (it did not fit, or had no rows): nothing to do.
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(())
            }
            Err(e) => Err(e).with_context(|| format!("removing the unwind tables of pid {pid}")),
        }
    }

    /// Loads the rows of files no process has been pointed at yet (those
    /// most processes map, at start-up).
    pub fn load_files(&mut self, ebpf: &mut Ebpf, files: &[TableFile]) -> Result<()> {
        for file in files {
            self.load_file(ebpf, file.file, &file.rows)?;
        }
        Ok(())
    }

    /// The rows of file `id` in `UNWIND_ROWS`, loaded now if they were
    /// not; `None` when they do not fit.
    fn load_file(
        &mut self,
        ebpf: &mut Ebpf,
        id: usize,
        rows: &[UnwindRow],
    ) -> Result<Option<(u32, u32)>> {
        if let Some(&loaded) = self.files.get(&id) {
            return Ok(loaded);
        }
        let len = rows.len() as u64;
        if u64::from(self.next_row) + len > u64::from(self.capacity) {
            self.usage.files_over_bound += 1;
            self.files.insert(id, None);
            return Ok(None);
        }
        let start = self.next_row;
        let map = map(ebpf, names::UNWIND_ROWS)?;
        write_rows(map, &mut self.mapping_refused, start, rows)?;
        self.next_row += len as u32;
        self.usage.files += 1;
        self.usage.rows += len;
        let loaded = Some((start, len as u32));
        self.files.insert(id, loaded);
        Ok(loaded)
    }
}

/// Writes `rows` into `UNWIND_ROWS` from index `start`: copied into a
/// mapping of the pages they go to (see [`write_mapped`]); else in batches;
/// else one update each on a kernel that refuses batch updates of arrays
/// (a large file's rows then take a second or so).
fn write_rows(
    map: &mut aya::maps::Map,
    mapping_refused: &mut bool,
    start: u32,
    rows: &[UnwindRow],
) -> Result<()> {
    let started = std::time::Instant::now();
    let fd = rows_fd(map)?;
    // Tests pretend the kernel refuses, to keep the fallbacks honest.
    let mut copied = || {
        if *mapping_refused || std::env::var_os(TEST_NO_MAPPED_ROWS).is_some() {
            return false;
        }
        match write_mapped(fd, start, rows) {
            Ok(()) => true,
            Err(error) => {
                log::debug!("mapping the unwind rows: {error}; written by batch updates");
                *mapping_refused = true;
                false
            }
        }
    };
    let batch = match std::env::var_os(TEST_NO_BATCH_UPDATE) {
        Some(_) => Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
        None if copied() => Ok("copied into the mapped array"),
        None => super::batch::update_array(fd, start, rows).map(|()| "in batches"),
    };
    let how = match batch {
        Ok(how) => how,
        Err(error) => {
            log::debug!("batch update of unwind rows refused ({error}); one by one");
            let mut array: Array<&mut MapData, UnwindRow> = Array::try_from(map)?;
            for (i, row) in rows.iter().enumerate() {
                array
                    .set(start + i as u32, row, 0)
                    .context("writing unwind rows")?;
            }
            "one by one"
        }
    };
    log::debug!(
        "wrote {} unwind rows {how} in {:?}",
        rows.len(),
        started.elapsed()
    );
    Ok(())
}

/// The file descriptor of `UNWIND_ROWS`.
fn rows_fd(map: &aya::maps::Map) -> Result<RawFd> {
    let rows: Array<&MapData, UnwindRow> = Array::try_from(map)?;
    Ok(rows.map().fd().as_fd().as_raw_fd())
}

/// Copies `rows` into `UNWIND_ROWS` (created `BPF_F_MMAPABLE`) from index
/// `start`, through a mapping of just the pages they go to, unmapped
/// after: one copy, where batch updates cost 120 ns a row in the kernel
/// (libpython's 63,583 rows: 7.5 ms, as much again as compiling them),
/// paid again for every new file a run meets. Mapping the whole array once
/// would count all of it (32 MiB by default) in tripod-bpf's resident
/// memory for good: the kernel maps every page of it at once. Rows are
/// only ever appended, each file's before any process entry points at
/// them, so the eBPF program never reads a row being written. The
/// kernel's error when it refuses (before Linux 5.5).
fn write_mapped(fd: RawFd, start: u32, rows: &[UnwindRow]) -> std::io::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let first_byte = start as usize * std::mem::size_of::<UnwindRow>();
    let len = std::mem::size_of_val(rows);
    let page = page_size();
    let offset = first_byte - first_byte % page;
    let bytes = (first_byte + len - offset).next_multiple_of(page);
    // SAFETY: a new shared mapping of the map's fd; the kernel checks the
    // range against the array's.
    let address = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            offset as libc::off_t,
        )
    };
    if address == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the rows' bytes lie inside the `bytes` just mapped, from
    // `first_byte - offset` on; `rows` is our memory, not the mapping.
    unsafe {
        let destination = address.cast::<u8>().add(first_byte - offset);
        std::ptr::copy_nonoverlapping(rows.as_ptr().cast::<u8>(), destination, len);
        libc::munmap(address, bytes);
    }
    Ok(())
}

// The kernel stores array values 8-byte aligned: the array is a plain
// `[UnwindRow]` only if no padding follows each row.
const _: () = assert!(std::mem::size_of::<UnwindRow>().is_multiple_of(8));

fn page_size() -> usize {
    // SAFETY: no preconditions.
    match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        size if size > 0 => size as usize,
        _ => 4096,
    }
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .with_context(|| format!("the eBPF object has no map {name}"))
}
