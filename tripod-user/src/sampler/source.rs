//! The seam between where samples come from and everything after: the
//! pipeline asks a [`SampleSource`] for samples and records and tells it
//! what it learned, and never knows whether a kernel is behind it.
use std::{os::fd::AsFd as _, time::Duration};

use anyhow::{Context as _, Result};
use aya::{
    maps::{HashMap, MapData},
    programs::Iter,
    Btf,
};
use tripod_common::{names, Counter, PythonProcess};

use super::{
    drain::{Flip, Settled},
    records::{parse_snapshots, Record, Sample},
    sideband::{SideRecord, SidebandCounters},
    Sampler, SamplingEvent, Wakeup,
};
use crate::model::{Counters, TableFile, TableMapping, TableUse};

/// What the pipeline consumes from the sampler, and what it tells it back.
///
/// Implemented by the live [`Sampler`] and by [`super::Replay`]. Object
/// safe (handlers are `&mut dyn FnMut`), so a run picks its source at run
/// time and everything after it runs the same either way.
pub trait SampleSource {
    /// Starts a drain of the samples counted in the kernel (`--unwind fp`):
    /// new samples are counted apart from now on. See [`drain_counted`].
    fn flip(&mut self) -> Result<Flip>;

    /// The samples counted until the [`Flip`] that `settled` waited for,
    /// each with how often it was seen (none when stacks are copied).
    fn read_flipped(&mut self, settled: Settled) -> Result<Vec<Sample<'static>>>;

    /// Hands every record waiting in the ring buffer to `handle`, oldest
    /// first: samples with their stack copies, threads switching out
    /// ([`tripod_common::RecordKind::Blocked`]) and back in ([`Record::Woke`]).
    fn drain_copies(&mut self, handle: &mut dyn FnMut(Record<'_>));

    /// Something to await that returns when the ring buffer or a sideband
    /// ring has news (see [`Wakeup`]); `None`: the source has no rings, and
    /// is read on a timer. Called inside the async runtime.
    fn wakeup(&self) -> Result<Option<Wakeup>>;

    /// How often the counts kept in the kernel must be drained so that its
    /// maps never fill; `None` when nothing is counted there.
    fn count_drain_period(&self) -> Option<Duration>;

    /// Hands `handle` the sideband records (mappings, execs, forks, exits)
    /// not handed over yet that are older than the returned watermark, in
    /// time order; younger ones wait for the next call. Every record timed
    /// before the watermark (CLOCK_MONOTONIC ns) has been handed over, by
    /// this call or an earlier one. `None`: there is no sideband, and
    /// processes are located from `/proc` only.
    fn drain_sideband(&mut self, handle: &mut dyn FnMut(SideRecord)) -> Option<u64>;

    /// The sideband's totals (records lost when a ring was full among them);
    /// `None` without a sideband.
    fn sideband_counters(&self) -> Option<SidebandCounters>;

    /// Every thread of the targets as it is now, one
    /// [`tripod_common::RecordKind::Snapshot`] record each: a dump.
    fn snapshot(&mut self, handle: &mut dyn FnMut(Sample<'_>)) -> Result<()>;

    /// The kernel side's counters (samples, failures by kind) since the start.
    fn counters(&self) -> Result<Counters>;

    /// The perf event that drives sampling.
    fn event(&self) -> SamplingEvent;

    /// Why hardware cycles are not used, when they were not available.
    fn fallback_reason(&self) -> Option<&str>;

    /// Samples one more process from now on (a command we launched).
    fn add_target(&mut self, pid: u32) -> Result<()>;

    /// Collects the Python frames of process `pid` from now on, or (`None`)
    /// no longer: it exited, and its pid may be reused.
    fn set_python_process(&mut self, pid: u32, process: Option<&PythonProcess>) -> Result<()>;

    /// Forgets the Python thread states of these exited threads.
    fn forget_python_threads(&mut self, tids: &[u32]) -> Result<()>;

    /// Reports thread `tid`, switched out since `since_ns`, when it runs
    /// again (threads already waiting when tracking started).
    fn mark_blocked(&mut self, tid: u32, since_ns: u64) -> Result<()>;

    /// Whether the pipeline reads the rings on a timer of its own now
    /// (records keep coming): the kernel then wakes it only when a ring
    /// fills. Sources that wake no one ignore it.
    fn set_reader_ticking(&mut self, _ticking: bool) -> Result<()> {
        Ok(())
    }

    /// `--unwind tables`: walks the stacks of process `pid` in the kernel
    /// with these mappings' rows from now on. Sources that unwind no
    /// stacks themselves ignore it.
    fn set_unwind_tables(&mut self, _pid: u32, _mappings: &[TableMapping]) -> Result<()> {
        Ok(())
    }

    /// `--unwind tables`: loads these files' rows before any process that
    /// maps them is seen; sources without tables ignore it.
    fn load_unwind_files(&mut self, _files: &[TableFile]) -> Result<()> {
        Ok(())
    }

    /// `--unwind tables`: no longer walks the stacks of process `pid` in
    /// the kernel (it exited or exec'd); sources without tables ignore it.
    fn forget_unwind_tables(&mut self, _pid: u32) -> Result<()> {
        Ok(())
    }

    /// `--unwind tables`: how much of the row memory is used; `None` in other modes.
    fn unwind_table_use(&self) -> Option<TableUse> {
        None
    }
}

/// A drain of the perf sideband that only tallies what it hands over, and
/// the reader's CPU time (`--sideband-source perf`).
fn measured_drain(
    sideband: &mut super::sideband::Sideband,
    tally: &mut super::probe::SidebandTally,
) {
    use super::probe::{monotonic_ns, thread_cpu_ns};
    let started = thread_cpu_ns();
    let now = monotonic_ns();
    sideband.drain(&mut |record| tally.note_perf(&record, now));
    tally.read_cpu_ns += thread_cpu_ns().saturating_sub(started);
}

/// Everything counted in the kernel since the last call: flip, wait until
/// nothing writes the old generation (off the runtime's thread), read it.
pub async fn drain_counted(source: &mut dyn SampleSource) -> Result<Vec<Sample<'static>>> {
    let flip = source.flip()?;
    let settled = flip.settled().await;
    source.read_flipped(settled)
}

/// The live sampler: the eBPF program's maps, ring buffer and task iterator.
impl SampleSource for Sampler {
    fn flip(&mut self) -> Result<Flip> {
        self.flip_generation()
    }

    fn read_flipped(&mut self, settled: Settled) -> Result<Vec<Sample<'static>>> {
        self.read_generation(settled)
    }

    fn drain_copies(&mut self, handle: &mut dyn FnMut(Record<'_>)) {
        self.drain_ring(handle)
    }

    fn wakeup(&self) -> Result<Option<Wakeup>> {
        let mut rings = vec![self.copies.as_fd()];
        if let Some(sideband) = &self.sideband {
            rings.extend(sideband.fds());
        }
        Wakeup::watch(&rings).map(Some)
    }

    fn count_drain_period(&self) -> Option<Duration> {
        self.count_drain
    }

    fn set_reader_ticking(&mut self, ticking: bool) -> Result<()> {
        Sampler::set_reader_ticking(self, ticking)
    }

    fn drain_sideband(&mut self, handle: &mut dyn FnMut(SideRecord)) -> Option<u64> {
        let Some(measured) = self.measured.as_mut() else {
            let sideband = self.sideband.as_mut()?;
            return Some(sideband.drain(handle).watermark_ns);
        };
        // Measured: records are read and counted, never used, whatever the
        // source, so the runs differ only in how records reach us.
        if let Some(probe) = measured.probe.as_mut() {
            probe.drain();
        }
        if let Some(sideband) = self.sideband.as_mut() {
            measured_drain(sideband, &mut measured.perf);
        }
        None
    }

    fn sideband_counters(&self) -> Option<SidebandCounters> {
        self.sideband.as_ref().map(|s| s.counters())
    }

    fn event(&self) -> SamplingEvent {
        self.event
    }

    fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    fn set_unwind_tables(&mut self, pid: u32, mappings: &[TableMapping]) -> Result<()> {
        match self.tables.as_mut() {
            Some(tables) => tables.set_process(&mut self.ebpf, pid, mappings),
            None => Ok(()),
        }
    }

    fn load_unwind_files(&mut self, files: &[TableFile]) -> Result<()> {
        match self.tables.as_mut() {
            Some(tables) => tables.load_files(&mut self.ebpf, files),
            None => Ok(()),
        }
    }

    fn forget_unwind_tables(&mut self, pid: u32) -> Result<()> {
        match self.tables.as_mut() {
            Some(tables) => tables.forget_process(&mut self.ebpf, pid),
            None => Ok(()),
        }
    }

    fn unwind_table_use(&self) -> Option<TableUse> {
        self.tables.as_ref().map(|t| t.usage())
    }

    fn add_target(&mut self, pid: u32) -> Result<()> {
        self.targets
            .insert(pid, 1, 0)
            .with_context(|| format!("adding pid {pid} to the targets"))
    }

    /// Every thread of the target processes as it is now, running or
    /// blocked, without stopping them: a task iterator reads each thread's
    /// stacks. Handed to `handle` one at a time.
    fn snapshot(&mut self, handle: &mut dyn FnMut(Sample<'_>)) -> Result<()> {
        use std::io::Read as _;
        if self.btf.is_none() {
            self.btf = Some(Btf::from_sys_fs().context("reading the kernel's BTF")?);
        }
        let program: &mut Iter = self
            .ebpf
            .program_mut(names::DUMP_PROGRAM)
            .context("the eBPF object has no task iterator")?
            .try_into()?;
        if program.fd().is_err() {
            let btf = self.btf.as_ref().expect("loaded above");
            program
                .load("task", btf)
                .context("loading the task iterator (the verifier refused it)")?;
        }
        let link = program.attach().context("attaching the task iterator")?;
        let mut file = program
            .take_link(link)?
            .into_file()
            .context("starting the task iterator")?;
        let mut records = Vec::new();
        file.read_to_end(&mut records)
            .context("reading the task iterator")?;
        parse_snapshots(&records, handle);
        Ok(())
    }

    fn set_python_process(&mut self, pid: u32, process: Option<&PythonProcess>) -> Result<()> {
        let mut processes: HashMap<&mut MapData, u32, PythonProcess> = HashMap::try_from(
            self.ebpf
                .map_mut(names::PYTHON_PROCESSES)
                .context("the eBPF object has no map PYTHON_PROCESSES")?,
        )?;
        match process {
            Some(process) => processes
                .insert(pid, process, 0)
                .with_context(|| format!("adding Python process {pid}")),
            // Already gone is fine.
            None => {
                let _ = processes.remove(&pid);
                Ok(())
            }
        }
    }

    /// Forgets where these exited threads' Python thread states were, so the
    /// map does not fill with the dead and their tids, reused, start afresh.
    fn forget_python_threads(&mut self, tids: &[u32]) -> Result<()> {
        let mut threads: HashMap<&mut MapData, u32, tripod_common::PythonThread> =
            HashMap::try_from(
                self.ebpf
                    .map_mut(names::PYTHON_THREADS)
                    .context("the eBPF object has no map PYTHON_THREADS")?,
            )?;
        for tid in tids {
            // Never looked up by the kernel, or already gone: fine.
            let _ = threads.remove(tid);
        }
        Ok(())
    }

    /// Marks a thread as switched out since `since_ns` (CLOCK_MONOTONIC), so
    /// that it is reported when it runs again: for threads that were already
    /// waiting when tracking started. A newer mark made by the kernel is kept.
    fn mark_blocked(&mut self, tid: u32, since_ns: u64) -> Result<()> {
        let mut blocked: HashMap<&mut MapData, u32, u64> = HashMap::try_from(
            self.ebpf
                .map_mut(names::BLOCKED_SINCE)
                .context("the eBPF object has no map BLOCKED_SINCE")?,
        )?;
        match blocked.insert(tid, since_ns, BPF_NOEXIST) {
            Ok(()) => Ok(()),
            // Already marked by the kernel: that mark is newer.
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(tripod_common::errno::EEXIST) =>
            {
                Ok(())
            }
            Err(e) => Err(e).context("marking a blocked thread"),
        }
    }

    fn counters(&self) -> Result<Counters> {
        let mut totals = Counters::default();
        for counter in Counter::ALL {
            let per_cpu = self
                .counters
                .get(&(counter as u32), 0)
                .context("reading counters")?;
            totals.0[counter as usize] = per_cpu.iter().sum();
        }
        Ok(totals)
    }
}

/// `BPF_NOEXIST` from the kernel's uapi: insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;
