//! `--unwind tables`: files' rows compiled on a thread of their own.
//!
//! A big file takes seconds to compile (a compiler's shared library has
//! millions of rows). Compiled on the thread that reads the rings, it held
//! up their reading for that long under `--all` on a build machine, and the
//! rings overflowed: the copies the kernel makes meanwhile were dropped.
//! Here the reading goes on, those stacks are copied and unwound as in
//! `--unwind dwarf` until the rows arrive, and the processes that waited for
//! a file are named when it is done, so that their rows are sent again.
//! Small files (a program, libc) are compiled at once, in a millisecond or
//! so: their rows are in the kernel before the next stack needs them.
use std::{
    collections::HashMap,
    sync::{
        mpsc::{self, Receiver, Sender},
        Arc,
    },
    thread,
};

#[cfg(test)]
use std::time::Instant;

use tripod_common::UnwindRow;

use super::{
    elf::UnwindFile,
    tables::{self, Uncompilable},
};

/// Call frame information up to this size is compiled at once, on the
/// caller's thread; libc's `.eh_frame` is 150 KiB, a compiler's 6 MiB.
const COMPILE_AT_ONCE_BYTES: usize = 1 << 20;

/// A file's rows, or why it has none.
pub type Compiled = Result<Arc<[UnwindRow]>, Uncompilable>;

/// Where a file's compilation is.
enum State {
    /// Asked for; these processes map the file and wait for its rows.
    Pending(Vec<u32>),
    Done(Compiled),
}

/// The compiling thread, and what it was asked and has answered, by file id.
pub struct TableCompiler {
    /// Files with less call frame information than this are compiled at once.
    at_once_bytes: usize,
    /// Started on the first request.
    worker: Option<Worker>,
    files: HashMap<usize, State>,
}

impl Default for TableCompiler {
    fn default() -> Self {
        TableCompiler {
            at_once_bytes: COMPILE_AT_ONCE_BYTES,
            worker: None,
            files: HashMap::new(),
        }
    }
}

struct Worker {
    requests: Sender<(usize, Arc<UnwindFile>)>,
    results: Receiver<(usize, Compiled)>,
}

impl TableCompiler {
    /// File `id`'s rows if they are compiled; otherwise asks for them (once)
    /// and notes that `pid` waits for them. `file` is only read then.
    pub fn rows(&mut self, id: usize, file: &Arc<UnwindFile>, pid: u32) -> Option<&Compiled> {
        if let Some(State::Pending(waiting)) = self.files.get_mut(&id) {
            if !waiting.contains(&pid) {
                waiting.push(pid);
            }
            return None;
        }
        self.compile(id, file);
        match self.files.get_mut(&id)? {
            State::Done(compiled) => Some(compiled),
            State::Pending(waiting) => {
                waiting.push(pid);
                None
            }
        }
    }

    /// File `id`'s rows if they are compiled, or compiled now because the
    /// file is small; otherwise asks for them (once) with no process
    /// waiting (files compiled ahead, at start-up).
    pub fn compile(&mut self, id: usize, file: &Arc<UnwindFile>) -> Option<&Compiled> {
        if !self.files.contains_key(&id) {
            self.request(id, file.clone());
        }
        match self.files.get(&id)? {
            State::Done(compiled) => Some(compiled),
            State::Pending(_) => None,
        }
    }

    fn request(&mut self, id: usize, file: Arc<UnwindFile>) {
        if cfi_bytes(&file) <= self.at_once_bytes {
            let compiled = compile_timed(&file);
            self.files.insert(id, State::Done(compiled));
            return;
        }
        let worker = self.worker.get_or_insert_with(Worker::start);
        let state = match worker.requests.send((id, file.clone())) {
            Ok(()) => State::Pending(Vec::new()),
            // The thread is gone (it cannot panic short of a bug, and
            // could not be started): compile here rather than never.
            Err(_) => State::Done(compile_timed(&file)),
        };
        self.files.insert(id, state);
    }

    /// Takes the files compiled since the last call, without waiting, and
    /// returns the processes that waited for them.
    pub fn finished(&mut self) -> Vec<u32> {
        let Some(worker) = &self.worker else {
            return Vec::new();
        };
        let done: Vec<(usize, Compiled)> = worker.results.try_iter().collect();
        self.settle(done)
    }

    /// [`Self::finished`], waiting until nothing is pending or `deadline`
    /// has passed (for tests).
    #[cfg(test)]
    pub fn wait(&mut self, deadline: Instant) -> Vec<u32> {
        let mut waiting = Vec::new();
        while let (Some(worker), true) = (&self.worker, self.pending()) {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(done) = worker.results.recv_timeout(left) else {
                break;
            };
            waiting.extend(self.settle(vec![done]));
        }
        waiting
    }

    #[cfg(test)]
    fn pending(&self) -> bool {
        self.files.values().any(|s| matches!(s, State::Pending(_)))
    }

    fn settle(&mut self, done: Vec<(usize, Compiled)>) -> Vec<u32> {
        let mut waiting = Vec::new();
        for (id, compiled) in done {
            if let Some(State::Pending(pids)) = self.files.insert(id, State::Done(compiled)) {
                waiting.extend(pids);
            }
        }
        waiting.sort_unstable();
        waiting.dedup();
        waiting
    }

    /// Files that could not be compiled, for `why`.
    pub fn failed(&self, why: Uncompilable) -> usize {
        self.files
            .values()
            .filter(|s| matches!(s, State::Done(Err(e)) if *e == why))
            .count()
    }
}

/// [`tables::compile`], its time logged: what a new file costs the run.
fn compile_timed(file: &UnwindFile) -> Compiled {
    let started = std::time::Instant::now();
    let compiled = tables::compile(file).map(Arc::from);
    log::debug!(
        "compiled {} unwind rows from {} bytes of call frame information in {:?}",
        compiled
            .as_ref()
            .map_or(0, |rows: &Arc<[UnwindRow]>| rows.len()),
        cfi_bytes(file),
        started.elapsed()
    );
    compiled
}

/// The size of the call frame information `tables::compile` reads.
fn cfi_bytes(file: &UnwindFile) -> usize {
    match (&file.eh_frame, &file.debug_frame) {
        (Some(eh_frame), _) => eh_frame.data.len(),
        (None, Some(debug_frame)) => debug_frame.len(),
        (None, None) => 0,
    }
}

impl Worker {
    fn start() -> Worker {
        let (requests, inbox) = mpsc::channel::<(usize, Arc<UnwindFile>)>();
        let (outbox, results) = mpsc::channel();
        let spawned = thread::Builder::new()
            .name("tripod-tables".into())
            .spawn(move || {
                for (id, file) in inbox {
                    let compiled = compile_timed(&file);
                    if outbox.send((id, compiled)).is_err() {
                        break;
                    }
                }
            });
        // Without the thread, sends fail and `request` compiles in place.
        if let Err(error) = spawned {
            log::debug!("no thread to compile unwind rows on: {error}");
        }
        Worker { requests, results }
    }
}

#[cfg(test)]
mod tests {
    use std::{fs::File, time::Duration};

    use super::*;

    fn own_executable() -> Arc<UnwindFile> {
        let exe = std::env::current_exe().unwrap();
        Arc::new(UnwindFile::read(File::open(exe).unwrap()).expect("our binary has .eh_frame"))
    }

    /// A compiler that sends every file to its thread.
    fn threaded() -> TableCompiler {
        TableCompiler {
            at_once_bytes: 0,
            ..TableCompiler::default()
        }
    }

    #[test]
    fn rows_arrive_later_and_name_every_process_that_waited() {
        let file = own_executable();
        let mut compiler = threaded();
        // Asked for, not there yet: each process that maps the file waits.
        assert!(compiler.rows(7, &file, 100).is_none());
        assert!(compiler.rows(7, &file, 200).is_none());
        assert!(compiler.rows(7, &file, 100).is_none());

        let waited = compiler.wait(Instant::now() + Duration::from_secs(60));
        assert_eq!(waited, [100, 200]);
        let rows = compiler.rows(7, &file, 300).expect("compiled").as_ref();
        assert_eq!(rows.unwrap().len(), tables::compile(&file).unwrap().len());
        // Nothing more to report, and nobody waits on a compiled file.
        assert!(compiler.finished().is_empty());
    }

    #[test]
    fn each_file_is_compiled_once() {
        let file = own_executable();
        let mut compiler = threaded();
        compiler.rows(1, &file, 10);
        compiler.wait(Instant::now() + Duration::from_secs(60));
        let first = compiler.rows(1, &file, 10).unwrap().clone().unwrap();
        let again = compiler.rows(1, &file, 11).unwrap().clone().unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(compiler.failed(Uncompilable::Malformed), 0);
    }

    #[test]
    fn a_small_file_is_compiled_at_once() {
        let file = own_executable();
        let mut compiler = TableCompiler {
            at_once_bytes: cfi_bytes(&file),
            ..TableCompiler::default()
        };
        assert!(matches!(compiler.rows(3, &file, 30), Some(Ok(rows)) if !rows.is_empty()));
        assert!(compiler.worker.is_none(), "no thread for a small file");
    }
}
