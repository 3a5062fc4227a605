//! The files most live processes map: the C library, the dynamic loader.
//!
//! `--unwind tables` compiles their rows at start-up (see
//! [`crate::unwind::Unwinder::prepare_tables`]), so that a process started
//! during the run finds them in the kernel already, and only its own
//! program is compiled when its first stack is copied. Without this, the
//! first new process of a run paid for libc's 28,000 rows, compiled and
//! written while the machine was busy.
use std::{
    collections::{HashMap, HashSet},
    fs,
    sync::Arc,
};

use super::{open_module, read_process_file, MapsLine, Module, ProcessTable};

/// At most this many processes' mappings are read: on a machine with more,
/// the first ones read stand for the rest.
const MAX_PROCESSES_READ: usize = 4096;

/// A file is shared when at least this fraction of the processes read map
/// it executable (and at least [`MIN_SHARERS`] do).
const SHARED_FRACTION: usize = 4;
const MIN_SHARERS: usize = 2;

/// One file's tally: how many processes map it, and one of them (its pid
/// and maps line) to open it through.
struct Tally {
    processes: usize,
    pid: u32,
    line: String,
}

/// A file most processes map.
#[derive(Clone, Debug)]
pub struct SharedFile {
    pub module: Arc<Module>,
    /// A file offset in its code: halfway through the executable mapping
    /// it was found by. Looked up once at start-up, it makes the symbolizer
    /// read the file's symbols and debug information before sampling.
    pub code_offset: u64,
}

impl ProcessTable {
    /// The files mapped executable by at least a quarter of the live user
    /// processes (and by two or more), opened as a sampled process's files
    /// are and shared with them by (device, inode), the most shared first.
    /// Kernel threads map nothing and do not count.
    pub fn shared_files(&mut self) -> Vec<SharedFile> {
        let (tallies, processes) = tally_files(live_pids().take(MAX_PROCESSES_READ));
        let least = (processes / SHARED_FRACTION).max(MIN_SHARERS);
        let mut shared: Vec<((u64, u64), Tally)> = tallies
            .into_iter()
            .filter(|(_, tally)| tally.processes >= least)
            .collect();
        // The most shared first: they matter most if the row bound is hit.
        shared.sort_by_key(|(_, tally)| std::cmp::Reverse(tally.processes));
        shared
            .into_iter()
            .filter_map(|(key, tally)| self.shared_file(key, &tally))
            .collect()
    }

    /// The file seen in `tally`'s maps line, its module opened through that
    /// process unless it is open already.
    fn shared_file(&mut self, key: (u64, u64), tally: &Tally) -> Option<SharedFile> {
        let entry = MapsLine::parse(&tally.line)?;
        let code_offset = entry.offset + entry.end.saturating_sub(entry.start) / 2;
        if let Some(known) = self.modules.get(&key) {
            return Some(SharedFile {
                module: known.clone(),
                code_offset,
            });
        }
        let path = entry.path?;
        self.next_module_id += 1;
        let module = Arc::new(open_module(self.next_module_id, tally.pid, &entry, path));
        self.modules.insert(key, module.clone());
        Some(SharedFile {
            module,
            code_offset,
        })
    }
}

/// The pids in `/proc`, in its order.
fn live_pids() -> impl Iterator<Item = u32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
}

/// How many of `pids` map each file executable, by (device, inode), and
/// how many processes mapped any file.
fn tally_files(pids: impl Iterator<Item = u32>) -> (HashMap<(u64, u64), Tally>, usize) {
    let mut tallies: HashMap<(u64, u64), Tally> = HashMap::new();
    let mut processes = 0;
    for pid in pids {
        let Some(maps) = read_process_file(pid, "maps", |path| fs::read_to_string(path).ok())
        else {
            continue;
        };
        let mut seen = HashSet::new();
        for line in maps.lines() {
            let Some(entry) = MapsLine::parse(line) else {
                continue;
            };
            let key = (entry.device, entry.inode);
            if !entry.executable || entry.inode == 0 || entry.path.is_none() || !seen.insert(key) {
                continue;
            }
            let tally = tallies.entry(key).or_insert_with(|| Tally {
                processes: 0,
                pid,
                line: line.to_string(),
            });
            tally.processes += 1;
        }
        processes += usize::from(!seen.is_empty());
    }
    (tallies, processes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Our own process and a `sleep` we start map the same libc: with only
    /// those two read, it is mapped by both, and found through us.
    #[test]
    fn a_file_two_processes_map_is_counted_once_for_each() {
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .expect("starting sleep");
        let exe = format!("/proc/{}/exe", child.id());
        let exec_done = (0..500).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(2));
            fs::read_link(&exe).is_ok_and(|path| path.ends_with("sleep"))
        });
        let (tallies, processes) = tally_files([std::process::id(), child.id()].into_iter());
        let _ = child.kill();
        let _ = child.wait();
        assert!(exec_done, "sleep did not start");
        assert_eq!(processes, 2);
        let libc = tallies
            .values()
            .find(|t| t.line.contains("/libc.so") || t.line.contains("/libc-"))
            .expect("libc is mapped executable");
        assert_eq!((libc.processes, libc.pid), (2, std::process::id()));
        let sleep = tallies.values().find(|t| t.line.ends_with("sleep"));
        assert_eq!(sleep.map(|t| t.processes), Some(1));
    }

    #[test]
    fn a_shared_module_is_the_one_a_sampled_process_gets() {
        let mut table = ProcessTable::new();
        let (_, views) = table
            .mappings(std::process::id())
            .expect("our own mappings");
        let ours: HashSet<usize> = views
            .iter()
            .filter_map(|v| Some(v.module.as_ref()?.id))
            .collect();
        let (tallies, _) = tally_files([std::process::id()].into_iter());
        for (key, tally) in &tallies {
            let file = table
                .shared_file(*key, tally)
                .expect("a maps line with a path");
            assert!(
                ours.contains(&file.module.id),
                "{} opened twice",
                file.module.path
            );
            // Halfway through the executable mapping the line describes.
            let entry = MapsLine::parse(&tally.line).expect("a maps line");
            let code = entry.offset..entry.offset + entry.end - entry.start;
            assert!(code.contains(&file.code_offset));
        }
    }
}
