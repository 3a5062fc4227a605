//! The sideband probe (see `tripod_common::probe`): eBPF programs on the
//! tracepoints of the mmap system call and of exec, fork and exit, loaded only by `--sideband-source ebpf`
//! so `cargo xtask bench --only sideband` can measure them against the perf
//! sideband. Their records are read, checked and counted, never used to
//! locate samples: the perf sideband is the production path (README, "Long
//! runs and short-lived processes", says why).
//!
//! Both sources are measured alike ([`SidebandTally`]): records by kind,
//! what a mapping record identifies its file by, records lost, the delay
//! from a record's kernel time to its hand-over, and the reader's own CPU
//! time (`CLOCK_THREAD_CPUTIME_ID`, read only while measuring).
use std::mem::size_of;

use anyhow::{Context as _, Result};
use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, TracePoint},
    Btf, Ebpf, EbpfLoader,
};
use tripod_common::probe::{names, FileOffsets, ProbeKind, ProbeRecord};

use super::{
    btf,
    sideband::{FileIdentity, SideRecord},
};

/// Bytes of the probe's ring per CPU: the perf sideband's 64 pages, so the
/// two can lose records alike.
const RING_BYTES_PER_CPU: u32 = 64 * 4096;

/// What a run's sideband delivered, and what reading it cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SidebandTally {
    pub mmaps: u64,
    pub execs: u64,
    pub forks: u64,
    pub exits: u64,
    /// Mapping records that name the file by its whole path.
    pub with_path: u64,
    /// Mapping records that carry the file's build id.
    pub with_build_id: u64,
    /// Mapping records that carry the file's device and inode.
    pub with_inode: u64,
    /// Records the kernel dropped (ring full).
    pub lost: u64,
    /// From a record's kernel time to its hand-over: sum and largest.
    pub delay_sum_ns: u64,
    pub delay_max_ns: u64,
    /// CPU time of the reader (parsing and ordering, not what the pipeline
    /// does with the records).
    pub read_cpu_ns: u64,
}

impl SidebandTally {
    fn records(&self) -> u64 {
        self.mmaps + self.execs + self.forks + self.exits
    }

    /// Notes one record handed over at `now_ns` (CLOCK_MONOTONIC).
    pub fn note_perf(&mut self, record: &SideRecord, now_ns: u64) {
        match record {
            SideRecord::Mmap(m) => {
                self.mmaps += 1;
                self.with_path += u64::from(m.path.first() == Some(&b'/'));
                match m.identity {
                    FileIdentity::BuildId(_) => self.with_build_id += 1,
                    FileIdentity::Inode { .. } => self.with_inode += 1,
                }
            }
            // PERF_RECORD_COMM also tells of threads renaming themselves.
            SideRecord::Comm(_) => self.execs += 1,
            SideRecord::Fork(_) => self.forks += 1,
            SideRecord::Exit(_) => self.exits += 1,
            SideRecord::Lost(l) => self.lost += l.count,
        }
        self.note_delay(record.time_ns(), now_ns);
    }

    fn note_delay(&mut self, time_ns: u64, now_ns: u64) {
        let delay = now_ns.saturating_sub(time_ns);
        self.delay_sum_ns = self.delay_sum_ns.saturating_add(delay);
        self.delay_max_ns = self.delay_max_ns.max(delay);
    }

    /// One line for the run's end, which `cargo xtask bench` reads.
    pub fn describe(&self, source: &str) -> String {
        let records = self.records();
        format!(
            "sideband {source}: {records} records (mmap {}, exec/comm {}, fork {}, exit {}), \
             {} lost; mappings with path {}, build id {}, inode {}; delay mean {} us, \
             max {} us; read CPU {} ms",
            self.mmaps,
            self.execs,
            self.forks,
            self.exits,
            self.lost,
            self.with_path,
            self.with_build_id,
            self.with_inode,
            self.delay_sum_ns / records.max(1) / 1000,
            self.delay_max_ns / 1000,
            self.read_cpu_ns / 1_000_000,
        )
    }
}

/// Where the fields the probe reads are in the running kernel.
pub fn file_offsets() -> Result<FileOffsets> {
    btf::file_offsets()
}

/// Sizes the probe's ring and gives it the kernel's field offsets; before
/// the object is loaded.
pub fn configure<'a>(loader: &mut EbpfLoader<'a>, offsets: &'a FileOffsets, cpus: u32) {
    loader.override_global(names::OFFSETS, offsets, true);
    // For a ring buffer, max_entries is its size in bytes (a power of two).
    let bytes = (RING_BYTES_PER_CPU * cpus.max(1)).next_power_of_two();
    loader.map_max_entries(names::RECORDS, bytes);
}

/// The attached probe and what it has delivered so far.
pub struct Probe {
    records: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
    tally: SidebandTally,
}

impl Probe {
    /// Loads and attaches the five programs.
    pub fn attach(ebpf: &mut Ebpf, btf: &Btf) -> Result<Probe> {
        super::mount_tracefs_if_missing();
        for (program, tracepoint) in [
            (names::MMAP_ENTER_PROGRAM, "sys_enter_mmap"),
            (names::MMAP_PROGRAM, "sys_exit_mmap"),
        ] {
            let program: &mut TracePoint = ebpf
                .program_mut(program)
                .with_context(|| format!("the eBPF object has no {program} program"))?
                .try_into()?;
            program
                .load()
                .with_context(|| format!("loading the {tracepoint} probe"))?;
            program
                .attach("syscalls", tracepoint)
                .with_context(|| format!("attaching to {tracepoint}"))?;
        }
        for (program, tracepoint) in [
            (names::EXEC_PROGRAM, "sched_process_exec"),
            (names::FORK_PROGRAM, "sched_process_fork"),
            (names::EXIT_PROGRAM, "sched_process_exit"),
        ] {
            let program: &mut BtfTracePoint = ebpf
                .program_mut(program)
                .with_context(|| format!("the eBPF object has no {program} program"))?
                .try_into()?;
            program
                .load(tracepoint, btf)
                .with_context(|| format!("loading the {tracepoint} probe"))?;
            program
                .attach()
                .with_context(|| format!("attaching to {tracepoint}"))?;
        }
        Ok(Probe {
            records: super::take_map(ebpf, names::RECORDS)?,
            lost: super::take_map(ebpf, names::LOST)?,
            tally: SidebandTally::default(),
        })
    }

    /// Reads every record waiting, counting them.
    pub fn drain(&mut self) {
        let cpu_before = thread_cpu_ns();
        let now = monotonic_ns();
        while let Some(item) = self.records.next() {
            if item.len() < size_of::<ProbeRecord>() {
                continue;
            }
            // SAFETY: the ring holds `ProbeRecord`s (plain data, any bit
            // pattern valid), and the length was checked.
            let record: ProbeRecord = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            note(&mut self.tally, &record, now);
        }
        self.tally.read_cpu_ns += thread_cpu_ns().saturating_sub(cpu_before);
    }

    /// Everything so far, with the kernel's count of records lost.
    pub fn tally(&self) -> SidebandTally {
        let lost = self
            .lost
            .get(&0, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0);
        SidebandTally { lost, ..self.tally }
    }
}

/// Counts one record of the probe read at `now_ns`.
fn note(tally: &mut SidebandTally, record: &ProbeRecord, now_ns: u64) {
    match ProbeKind::from_u32(record.kind) {
        Some(ProbeKind::Mmap) => {
            tally.mmaps += 1;
            // The dentry's own name only: a whole path needs a walk up
            // the dentries and mounts that the probe does not make.
            tally.with_inode += u64::from(record.ino != 0);
        }
        // The program's file; its interpreter's mappings are not seen.
        Some(ProbeKind::Exec) => tally.execs += 1,
        Some(ProbeKind::Fork) => tally.forks += 1,
        Some(ProbeKind::Exit) => tally.exits += 1,
        None => return,
    }
    tally.note_delay(record.time_ns, now_ns);
}

/// CLOCK_MONOTONIC, the clock of the records' times.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// The CPU time of the calling thread.
pub fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a local.
    unsafe { libc::clock_gettime(clock, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tally_line_divides_by_records_and_survives_none() {
        let empty = SidebandTally::default();
        assert!(empty.describe("ebpf").contains("0 records"));
        let tally = SidebandTally {
            mmaps: 3,
            execs: 1,
            delay_sum_ns: 8_000,
            delay_max_ns: 5_000,
            ..SidebandTally::default()
        };
        let line = tally.describe("perf");
        assert!(line.starts_with("sideband perf: 4 records (mmap 3, exec/comm 1,"));
        assert!(line.contains("delay mean 2 us, max 5 us"), "{line}");
    }
}
