//! A core file as the pipeline's [`SampleSource`]: its threads are one
//! dump's snapshot, each with its registers and the stack bytes from its
//! stack pointer up, unwound and symbolized as a live thread's copied stack.
//! The process's mappings come from `NT_FILE`, given to the
//! [`ProcessTable`] in place of `/proc`'s, their files opened through
//! [`crate::target_file`] (from `--exe` for the executable, under
//! `--sysroot` for every other file, else where the core says).
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{bail, Result};
use tripod_common::{PythonProcess, RecordKind, PYTHON_THREAD_MATCH_PTHREAD};

use super::{memory::CoreMemory, Core, MAX_STACK_BYTES};
use crate::{
    model::Counters,
    process::{Given, GivenMapping, ProcessTable},
    python::PythonSample,
    sampler::{
        sideband::{SideRecord, SidebandCounters},
        Flip, Record, Sample, SampleSource, SamplingEvent, Settled, UserStack,
    },
    stack::StackRead,
    target_file::{self, Links, Refusal, Why},
    text::escape_controls_owned,
};

/// `TASK_INTERRUPTIBLE`: what a thread in a system call is shown as.
const SLEEPING: u32 = 1;

/// Where the files a core names are looked up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lookup {
    /// The executable (`--exe`), in place of the path in the core.
    pub exe: Option<PathBuf>,
    /// A directory the core's paths are resolved in (`--sysroot`), as if it
    /// were `/`: a link in it cannot lead out.
    pub sysroot: Option<PathBuf>,
}

/// The threads of a core, for one dump.
pub struct CoreSource {
    core: Arc<Core>,
    /// Its memory with its files', for Python frames ([`Self::python_memory`]).
    memory: Option<Arc<CoreMemory>>,
    /// Where its interpreter is, when it ran a Python the pipeline found.
    python: Option<PythonProcess>,
    /// The process name, escaped.
    comm: String,
    dumped: bool,
}

impl CoreSource {
    pub fn new(core: Core) -> Self {
        let name = core.name.as_deref().unwrap_or(b"core");
        let comm = escape_controls_owned(String::from_utf8_lossy(name).into_owned());
        CoreSource {
            core: Arc::new(core),
            memory: None,
            python: None,
            comm,
            dumped: false,
        }
    }

    pub fn core(&self) -> &Core {
        &self.core
    }

    /// The core's memory, its file mappings read from the files `lookup`
    /// finds: what Python frames are read from (see [`crate::python`]).
    pub fn python_memory(&mut self, lookup: &Lookup) -> Arc<CoreMemory> {
        let exe = self.core.executable_path().map(<[u8]>::to_vec);
        let memory = Arc::new(CoreMemory::new(self.core.clone(), |path| {
            let shown = lossy(path);
            let shown = shown.strip_suffix(" (deleted)").unwrap_or(&shown);
            let is_exe = exe.as_deref() == Some(path);
            open_mapped(shown, is_exe, lookup)
                .ok()
                .map(|(file, _)| file)
        }));
        self.memory = Some(memory.clone());
        memory
    }

    /// The Python frames of `thread`, read from the core, when its process
    /// ran a Python the pipeline found.
    fn python_frames(&self, thread: &super::CoreThread) -> PythonSample {
        let (Some(process), Some(memory)) = (&self.python, &self.memory) else {
            return PythonSample::default();
        };
        let key = if process.offsets.thread_match == PYTHON_THREAD_MATCH_PTHREAD {
            thread.fs_base
        } else {
            u64::from(thread.tid)
        };
        crate::python::thread_frames(&**memory, process, key)
    }

    /// Tells `processes` the core's process: its name and its executable
    /// mappings, each file opened as `lookup` says and checked against the
    /// start of it the core holds ([`super::same_head`]). Returns the paths
    /// of the files that were not found, and of those found changed, each once.
    pub fn give_process(&self, processes: &mut ProcessTable, lookup: &Lookup) -> MissingFiles {
        let core = &self.core;
        let exe = core.executable_path().map(lossy);
        let mut missing = MissingFiles::default();
        let mut given = Vec::new();
        for file in core.files.iter().filter(|f| f.executable) {
            let path = lossy(&file.path);
            let path = path.strip_suffix(" (deleted)").unwrap_or(&path).to_string();
            let is_exe = core.executable_path() == Some(file.path.as_slice());
            let head = core.file_head(&file.path);
            let opened = open_mapped(&path, is_exe, lookup).and_then(|(opened, looked_at)| {
                if head.is_empty() || super::same_head(&opened, &head) {
                    return Ok(opened);
                }
                Err(Refusal {
                    path: looked_at,
                    why: Why::Replaced,
                })
            });
            let list = match &opened {
                Err(Refusal {
                    why: Why::NotFound, ..
                }) => Some(&mut missing.not_found),
                Err(Refusal {
                    why: Why::Replaced, ..
                }) => Some(&mut missing.changed),
                _ => None,
            };
            if let (Some(list), Err(refusal)) = (list, &opened) {
                let path = refusal.path.display().to_string();
                if !list.contains(&path) {
                    list.push(path);
                }
            }
            given.push(GivenMapping {
                start: file.start,
                end: file.end,
                file_offset: file.file_offset,
                what: Given::File { path, opened },
            });
        }
        if let Some((start, end)) = core.vdso {
            given.push(GivenMapping {
                start,
                end,
                file_offset: 0,
                what: Given::Special("[vdso]".into()),
            });
        }
        processes.insert_given(core.pid, self.comm.clone(), exe, given);
        missing
    }
}

/// Files a core names that are not the ones it mapped, by path as looked up.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MissingFiles {
    /// Nothing at the path.
    pub not_found: Vec<String>,
    /// Another file at the path than the one mapped (rebuilt, replaced).
    pub changed: Vec<String>,
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Opens the file a core maps at `path` as `lookup` says, with where it was
/// looked up; a path where nothing is is [`Why::NotFound`], named so.
fn open_mapped(
    path: &str,
    is_exe: bool,
    lookup: &Lookup,
) -> Result<(std::fs::File, PathBuf), Refusal> {
    let max = target_file::max_file_size();
    let (looked_at, opened) = match (&lookup.exe, &lookup.sysroot) {
        (Some(exe), _) if is_exe => (exe.clone(), target_file::open(exe, Links::Follow)),
        (_, Some(root)) => {
            let inside = Path::new(path).strip_prefix("/").unwrap_or(Path::new(path));
            // Libraries are often links (libfoo.so.1 -> libfoo.so.1.2): resolved
            // inside the sysroot, never out of it.
            let opened = target_file::open_in_root(root, Path::new(path), Links::Follow, max);
            (root.join(inside), opened)
        }
        _ => (
            PathBuf::from(path),
            target_file::open(Path::new(path), Links::Follow),
        ),
    };
    let shown = looked_at.clone();
    opened.map(|file| (file, shown)).map_err(|refusal| {
        // open_in_root does not say why in a way we can match on: look.
        let gone = matches!(refusal.why, Why::Unreadable(_))
            && std::fs::symlink_metadata(&looked_at)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound);
        if gone {
            Refusal {
                path: looked_at,
                why: Why::NotFound,
            }
        } else {
            refusal
        }
    })
}

/// A core has no kernel, no ring buffer and nothing to count: only the
/// snapshot is real. What the pipeline tells it is of no use to it.
impl SampleSource for CoreSource {
    fn wakeup(&self) -> Result<Option<crate::sampler::Wakeup>> {
        Ok(None)
    }

    fn count_drain_period(&self) -> Option<std::time::Duration> {
        None
    }

    fn flip(&mut self) -> Result<Flip> {
        Ok(Flip::without_kernel())
    }

    fn read_flipped(&mut self, _: Settled) -> Result<Vec<Sample<'static>>> {
        Ok(Vec::new())
    }

    fn drain_copies(&mut self, _: &mut dyn FnMut(Record<'_>)) {}

    fn drain_sideband(&mut self, _: &mut dyn FnMut(SideRecord)) -> Option<u64> {
        None
    }

    fn sideband_counters(&self) -> Option<SidebandCounters> {
        None
    }

    /// Every thread of the core, once: the core does not change.
    fn snapshot(&mut self, handle: &mut dyn FnMut(Sample<'_>)) -> Result<()> {
        if std::mem::replace(&mut self.dumped, true) {
            return Ok(());
        }
        for thread in &self.core.threads {
            let stack = self.core.read_memory(thread.sp, MAX_STACK_BYTES);
            handle(Sample {
                kind: RecordKind::Snapshot,
                count: 1,
                tgid: self.core.pid,
                tid: thread.tid,
                comm: self.comm.clone(),
                // A thread stopped in a system call was waiting in it; one
                // stopped in its own code was running. The core says no more.
                state: if thread.syscall.is_some() {
                    SLEEPING
                } else {
                    0
                },
                syscall: thread.syscall,
                time_ns: 0,
                // A core says nothing of cgroups.
                cgroup_id: 0,
                user: UserStack::Copy {
                    regs: (thread.ip, thread.sp, thread.bp),
                    stack: &stack,
                },
                kernel: StackRead::NotCollected,
                python: self.python_frames(thread),
            });
        }
        Ok(())
    }

    fn counters(&self) -> Result<Counters> {
        Ok(Counters::default())
    }

    fn event(&self) -> SamplingEvent {
        SamplingEvent::CpuClock
    }

    fn fallback_reason(&self) -> Option<&str> {
        None
    }

    fn add_target(&mut self, pid: u32) -> Result<()> {
        bail!("a core file has no process {pid} to add")
    }

    /// The pipeline found the core's Python: its threads' frames are read
    /// in [`Self::snapshot`].
    fn set_python_process(&mut self, _: u32, process: Option<&PythonProcess>) -> Result<()> {
        self.python = process.copied();
        Ok(())
    }

    fn forget_python_threads(&mut self, _: &[u32]) -> Result<()> {
        Ok(())
    }

    fn mark_blocked(&mut self, _: u32, _: u64) -> Result<()> {
        Ok(())
    }
}
