//! Sideband records: the kernel's own account of which files each process
//! maps, when it runs `exec`, forks and exits, written as it happens, so a
//! process that lives for 4 ms is known as well as one that lives for hours.
//!
//! One `PERF_COUNT_SW_DUMMY` software event per online CPU, opened for every
//! process (`pid = -1`), counts nothing and samples nothing: it only carries
//! the records perf uses for the same purpose (`perf record` opens the same
//! event for its "sideband"):
//!
//! - `mmap2`: PERF_RECORD_MMAP2 for each executable mapping, with the file's
//!   build id (`build_id`, Linux 5.12+; checked per record, since the kernel
//!   falls back to device and inode when it cannot read the note) or its
//!   device, inode and inode generation;
//! - `comm` + `comm_exec`: PERF_RECORD_COMM, marked when an `exec` caused it;
//! - `task`: PERF_RECORD_FORK and PERF_RECORD_EXIT;
//! - `sample_id_all` with `TID | TIME`: every record ends with its time, on
//!   CLOCK_MONOTONIC (`use_clockid`), the clock of `bpf_ktime_get_ns`, so it
//!   compares with the eBPF samples' `time_ns`.
//!
//! Why system-wide even for `--pid`: a per-process event must be opened for
//! every thread that exists when it is opened (threads started meanwhile are
//! missed; `inherit` only covers those created later), and a cgroup filter
//! would need the target moved into a cgroup of ours. A per-CPU event sees
//! every process from the moment it is enabled, costs one descriptor per CPU
//! whatever the targets, and needs no more privilege than the sampler's own
//! per-CPU perf events. Records of other processes are cheap (a few per
//! process start) and are left out by the consumer
//! ([`crate::mappings::MappingHistory`]).
//!
//! Reading: each CPU has its own ring; [`Sideband::drain`] walks all of them
//! without a system call, then hands the records over merged by time, only
//! those older than a watermark (see [`Drained::watermark_ns`]), so that
//! records arrive in time order across CPUs and across drains. Records are
//! parsed by `records.rs` from bytes, the ring is walked by `ring.rs`, both
//! pure and tested on hand-built bytes; this file holds the system calls.
mod records;
mod ring;

pub use records::{
    parse_record, BuildId, ByteStr, CommRecord, FileIdentity, LostRecord, MmapRecord, Parsed,
    SideRecord, TaskRecord, MAX_COMM_LEN, MAX_PATH_LEN,
};

use std::{
    os::fd::{AsFd as _, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{bail, Context as _, Result};
use perf_event_data::{endian::Native, parse::ParseConfig};
use perf_event_open_sys::{
    bindings::{
        perf_event_attr, perf_event_mmap_page, PERF_COUNT_SW_DUMMY, PERF_FLAG_FD_CLOEXEC,
        PERF_SAMPLE_TID, PERF_SAMPLE_TIME, PERF_TYPE_SOFTWARE,
    },
    ioctls, perf_event_open,
};

use ring::RingData;

/// The record builders of the parser's tests, for other modules' tests.
#[cfg(test)]
pub(crate) use records::tests as tests_support;

/// How long a record may be in flight between the kernel taking its time
/// and publishing it in the ring. The kernel does both with preemption off,
/// so this is interrupts at most: microseconds. Records younger than this at
/// the start of a drain wait for the next one, so that a record is never
/// handed over after a newer one.
const IN_FLIGHT_NS: u64 = 1_000_000;

/// What the sideband events are opened with.
#[derive(Clone, Debug)]
pub struct SidebandOptions {
    /// Pages of ring per CPU, a power of two (rounded up). One `exec` of a
    /// small dynamically linked program writes about 10 records of about 100
    /// bytes; 64 pages (256 KiB) hold some 2,000 program starts per CPU
    /// between two drains.
    pub pages_per_cpu: usize,
    /// Ask for build ids in MMAP2 records (Linux 5.12+; older kernels refuse
    /// the bit, and the events are opened again without it).
    pub build_ids: bool,
}

impl Default for SidebandOptions {
    fn default() -> Self {
        SidebandOptions {
            pages_per_cpu: 64,
            build_ids: true,
        }
    }
}

/// Totals since the events were opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SidebandCounters {
    /// Records handed over.
    pub records: u64,
    /// Records the kernel dropped because a ring was full (the sum of the
    /// PERF_RECORD_LOST counts).
    pub lost: u64,
    /// Records that could not be read (see [`Parsed::Malformed`]).
    pub malformed: u64,
    /// Times a ring held something that could not be a record, and the rest
    /// of its batch was skipped.
    pub skipped_batches: u64,
    /// Records that arrived older than an earlier drain's watermark, so were
    /// handed over after newer ones (the in-flight allowance was too short).
    pub late: u64,
}

/// What one [`Sideband::drain`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drained {
    /// Records handed over by this drain.
    pub records: usize,
    /// Every record the kernel timed before this (CLOCK_MONOTONIC ns) has
    /// been handed over, by this drain or an earlier one. A sample whose
    /// `time_ns` is below it can be located now; a younger one waits for the
    /// next drain, which may still hand over the mapping it lies in.
    pub watermark_ns: u64,
}

/// The sideband events of every online CPU, and their rings.
pub struct Sideband {
    rings: Vec<CpuRing>,
    /// How to read the records: the attributes the events were opened with.
    config: ParseConfig<Native>,
    build_ids: bool,
    /// Records read from the rings but younger than the watermark, in the
    /// order read; sorted by time when handed over.
    pending: Vec<SideRecord>,
    /// The watermark of the last drain: records older than it are late.
    last_watermark_ns: u64,
    /// A record wrapped across the end of a ring is copied here whole.
    scratch: Vec<u8>,
    counters: SidebandCounters,
}

impl Sideband {
    /// Opens and maps one event per online CPU, then enables them all.
    pub fn open(options: &SidebandOptions) -> Result<Sideband> {
        let cpus = aya::util::online_cpus()
            .map_err(|(path, error)| anyhow::anyhow!("reading {path}: {error}"))?;
        let pages = options.pages_per_cpu.max(1).next_power_of_two();
        let mut build_ids = options.build_ids;
        let mut fds = Vec::with_capacity(cpus.len());
        for &cpu in &cpus {
            let fd = match open_event(&attr(options, build_ids), cpu) {
                // Before 5.12 the bit is unknown: the whole attr is refused.
                Err(e) if build_ids && fds.is_empty() && e.raw_os_error() == Some(libc::EINVAL) => {
                    build_ids = false;
                    open_event(&attr(options, false), cpu)
                }
                other => other,
            }
            .with_context(|| format!("opening the sideband perf event on CPU {cpu}"))?;
            fds.push((cpu, fd));
        }
        let mut rings = Vec::with_capacity(fds.len());
        for (cpu, fd) in fds {
            rings.push(
                CpuRing::map(cpu, fd, pages)
                    .with_context(|| format!("mapping the sideband ring of CPU {cpu}"))?,
            );
        }
        // Enabled only once every ring is mapped: a record written to an
        // event without a ring is dropped without a trace.
        // A loss before the first record read from a ring began no earlier
        // than this.
        let enabled_ns = monotonic_ns();
        for ring in &mut rings {
            ring.last_time_ns = enabled_ns;
            // SAFETY: an ioctl on a perf event descriptor we own.
            if unsafe { ioctls::ENABLE(ring.fd.as_raw_fd(), 0) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("enabling the sideband event of CPU {}", ring.cpu));
            }
        }
        Ok(Sideband {
            rings,
            config: ParseConfig::from(attr(options, build_ids)),
            build_ids,
            pending: Vec::new(),
            last_watermark_ns: 0,
            scratch: Vec::new(),
            counters: SidebandCounters::default(),
        })
    }

    /// Whether the kernel accepted the `build_id` bit. Each MMAP2 record
    /// still says for itself whether it carries one.
    pub fn build_ids(&self) -> bool {
        self.build_ids
    }

    /// The events' descriptors, readable once a ring is half full (their
    /// `wakeup_watermark`): for [`super::Wakeup`].
    pub fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.rings.iter().map(|ring| ring.fd.as_fd())
    }

    /// Totals since the events were opened.
    pub fn counters(&self) -> SidebandCounters {
        self.counters
    }

    /// Reads every ring without blocking and without a system call, and
    /// hands `handle` every record older than the watermark, oldest first
    /// across all CPUs. Younger records are kept for the next drain.
    pub fn drain(&mut self, handle: impl FnMut(SideRecord)) -> Drained {
        let watermark_ns = monotonic_ns().saturating_sub(IN_FLIGHT_NS);
        for ring in &mut self.rings {
            ring.read(
                &self.config,
                &mut self.scratch,
                &mut self.counters,
                &mut self.pending,
            );
        }
        let late = self
            .pending
            .iter()
            .filter(|r| r.time_ns() < self.last_watermark_ns)
            .count();
        self.counters.late += late as u64;
        let records = hand_over(&mut self.pending, watermark_ns, handle);
        self.counters.records += records as u64;
        self.last_watermark_ns = self.last_watermark_ns.max(watermark_ns);
        Drained {
            records,
            watermark_ns: self.last_watermark_ns,
        }
    }
}

/// Hands `handle` the records of `pending` timed before `watermark_ns`,
/// oldest first (records of the same time in the order read), and keeps
/// the rest. Returns how many were handed over.
fn hand_over(
    pending: &mut Vec<SideRecord>,
    watermark_ns: u64,
    mut handle: impl FnMut(SideRecord),
) -> usize {
    // Each ring is nearly in time order already: the stable sort is cheap.
    pending.sort_by_key(SideRecord::time_ns);
    let ready = pending.partition_point(|r| r.time_ns() < watermark_ns);
    for record in pending.drain(..ready) {
        handle(record);
    }
    ready
}

/// The attributes of the sideband event (pure: the parser's configuration
/// is built from the same value).
pub(crate) fn attr(options: &SidebandOptions, build_id: bool) -> perf_event_attr {
    let mut attr = perf_event_attr::default();
    attr.type_ = PERF_TYPE_SOFTWARE;
    // The size we were built with; a kernel that knows a shorter struct
    // accepts it as long as the fields it does not know are zero.
    attr.size = std::mem::size_of::<perf_event_attr>() as u32;
    attr.config = PERF_COUNT_SW_DUMMY as u64;
    attr.sample_type = (PERF_SAMPLE_TID | PERF_SAMPLE_TIME) as u64;
    attr.clockid = libc::CLOCK_MONOTONIC;
    // Enabled once the ring is mapped (see Sideband::open).
    attr.set_disabled(1);
    // `mmap2` changes the format of the records `mmap` asks for.
    attr.set_mmap(1);
    attr.set_mmap2(1);
    attr.set_comm(1);
    attr.set_comm_exec(1);
    attr.set_task(1);
    attr.set_sample_id_all(1);
    attr.set_use_clockid(1);
    attr.set_build_id(u64::from(build_id));
    // The reader sleeps on these descriptors (`Wakeup`): woken at half a
    // ring, it reads the rest before they fill. Records wait there until
    // then or until the ring buffer of samples wakes it, whichever is first.
    attr.set_watermark(1);
    let ring_bytes = options.pages_per_cpu.max(1).next_power_of_two() * page_size();
    attr.wakeup_watermark = (ring_bytes / 2).min(u32::MAX as usize) as u32;
    attr
}

fn open_event(attr: &perf_event_attr, cpu: u32) -> std::io::Result<OwnedFd> {
    let mut attr = *attr;
    // SAFETY: `attr` is a whole, initialised perf_event_attr the kernel may
    // write its expected size into; it asks for records, not for anything
    // that changes the system.
    let fd = unsafe {
        perf_event_open(
            &mut attr,
            -1,
            cpu as libc::c_int,
            -1,
            PERF_FLAG_FD_CLOEXEC as libc::c_ulong,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor; no one else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock the records are timed on.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a local; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// One CPU's event and its mapped ring: a control page, then the data area.
struct CpuRing {
    cpu: u32,
    fd: OwnedFd,
    /// The start of the mapping (the control page).
    base: *mut u8,
    map_len: usize,
    data_offset: usize,
    data_size: usize,
    /// The time of the last record read from this ring: where a loss begins.
    last_time_ns: u64,
}

// SAFETY: the mapping belongs to this value alone and has no tie to the
// thread that made it; the kernel is the only other party.
unsafe impl Send for CpuRing {}

impl CpuRing {
    fn map(cpu: u32, fd: OwnedFd, pages: usize) -> Result<CpuRing> {
        let page = page_size();
        let map_len = (1 + pages) * page;
        // SAFETY: a fresh shared mapping of the event's ring; writable, so
        // that the tail we publish tells the kernel what it may overwrite.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error().into());
        }
        let mut ring = CpuRing {
            cpu,
            fd,
            base: base.cast(),
            map_len,
            data_offset: page,
            data_size: pages * page,
            last_time_ns: 0,
        };
        // Linux 4.1+ says where the data area is; older kernels leave these
        // zero and use the layout assumed above.
        let page_struct = ring.page();
        // SAFETY: the control page is mapped and these fields are set by the
        // kernel before the mapping is returned and never change.
        let (offset, size) = unsafe { ((*page_struct).data_offset, (*page_struct).data_size) };
        if size != 0 {
            if offset.saturating_add(size) > map_len as u64 || !size.is_power_of_two() {
                bail!("the kernel describes a data area of {size} bytes at {offset} in a {map_len}-byte mapping");
            }
            (ring.data_offset, ring.data_size) = (offset as usize, size as usize);
        }
        Ok(ring)
    }

    fn page(&self) -> *mut perf_event_mmap_page {
        self.base.cast()
    }

    /// The kernel's and our position counters in the control page.
    fn positions(&self) -> (&AtomicU64, &AtomicU64) {
        let page = self.page();
        // SAFETY: both fields are 8-aligned u64s in the control page, which
        // stays mapped while `self` lives; the kernel accesses them
        // atomically too (smp_store_release / READ_ONCE).
        unsafe {
            (
                AtomicU64::from_ptr(std::ptr::addr_of_mut!((*page).data_head)),
                AtomicU64::from_ptr(std::ptr::addr_of_mut!((*page).data_tail)),
            )
        }
    }

    /// Parses every record between our tail and the kernel's head into
    /// `out`, then gives the space back to the kernel.
    fn read(
        &mut self,
        config: &ParseConfig<Native>,
        scratch: &mut Vec<u8>,
        counters: &mut SidebandCounters,
        out: &mut Vec<SideRecord>,
    ) {
        let (head, tail) = self.positions();
        // Acquire: the records the kernel wrote before moving the head are
        // visible from here on (it publishes the head with a release store).
        let head = head.load(Ordering::Acquire);
        // Only we write the tail.
        let tail_now = tail.load(Ordering::Relaxed);
        let data = MappedData {
            // SAFETY: data_offset + data_size lies inside the mapping (checked in `map`).
            start: unsafe { self.base.add(self.data_offset) },
            len: self.data_size,
        };
        let (cpu, mut last_time_ns) = (self.cpu, self.last_time_ns);
        let end = ring::walk(&data, tail_now, head, scratch, |bytes| {
            match parse_record(bytes, config) {
                Parsed::Record(SideRecord::Lost(mut lost)) => {
                    (lost.cpu, lost.since_ns) = (cpu, last_time_ns);
                    counters.lost += lost.count;
                    last_time_ns = last_time_ns.max(lost.time_ns);
                    out.push(SideRecord::Lost(lost));
                }
                Parsed::Record(record) => {
                    last_time_ns = last_time_ns.max(record.time_ns());
                    out.push(record);
                }
                Parsed::Other => {}
                Parsed::Malformed => counters.malformed += 1,
            }
        });
        counters.skipped_batches += u64::from(end.skipped);
        // Release: our reads of the records happen before the kernel may
        // overwrite them (it reads the tail with a full barrier). Every
        // record was copied out, so all of it goes back at once.
        tail.store(end.tail, Ordering::Release);
        self.last_time_ns = last_time_ns;
    }
}

impl Drop for CpuRing {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once; the descriptor
        // closes after this (OwnedFd), which disables the event.
        unsafe { libc::munmap(self.base.cast(), self.map_len) };
    }
}

/// The data area of a mapped ring, read by copying: the kernel writes the
/// parts outside [tail, head) while we read, so no reference to them is
/// ever made.
struct MappedData {
    start: *const u8,
    len: usize,
}

impl RingData for MappedData {
    fn len(&self) -> usize {
        self.len
    }

    fn read(&self, offset: usize, out: &mut [u8]) {
        if offset
            .checked_add(out.len())
            .is_none_or(|end| end > self.len)
        {
            // The walk never asks for this; refuse rather than read outside.
            out.fill(0);
            return;
        }
        // SAFETY: the range lies inside the data area (checked above), and
        // lies between tail and head, which the kernel does not write.
        unsafe {
            std::ptr::copy_nonoverlapping(self.start.add(offset), out.as_mut_ptr(), out.len())
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(pid: u32, time_ns: u64) -> SideRecord {
        SideRecord::Exit(TaskRecord {
            pid,
            ppid: 1,
            tid: pid,
            ptid: 1,
            time_ns,
        })
    }

    #[test]
    fn records_are_handed_over_by_time_and_young_ones_wait() {
        // Two CPUs' batches, each in its own order, appended as read.
        let mut pending = vec![
            exit(1, 10),
            exit(2, 30),
            exit(3, 50),
            exit(4, 20),
            exit(5, 40),
        ];
        let mut seen = Vec::new();
        let n = hand_over(&mut pending, 45, |r| seen.push(r.pid().unwrap()));
        assert_eq!(n, 4);
        assert_eq!(seen, [1, 4, 2, 5]);
        assert_eq!(pending, vec![exit(3, 50)]);
        // Next drain: the one that waited comes out before a newer one.
        pending.push(exit(6, 60));
        seen.clear();
        hand_over(&mut pending, 100, |r| seen.push(r.pid().unwrap()));
        assert_eq!(seen, [3, 6]);
        assert!(pending.is_empty());
    }

    #[test]
    fn equal_times_keep_the_order_they_were_read_in() {
        // An exec's COMM and its first MMAP2 may share a timestamp.
        let mut pending = vec![exit(1, 10), exit(2, 10), exit(3, 10)];
        let mut seen = Vec::new();
        hand_over(&mut pending, 11, |r| seen.push(r.pid().unwrap()));
        assert_eq!(seen, [1, 2, 3]);
    }

    #[test]
    fn the_attributes_ask_for_what_the_parser_reads() {
        let attr = attr(&SidebandOptions::default(), true);
        assert_eq!(attr.type_, PERF_TYPE_SOFTWARE);
        assert_eq!(attr.config, PERF_COUNT_SW_DUMMY as u64);
        assert_eq!(attr.mmap2(), 1);
        assert_eq!(attr.comm_exec(), 1);
        assert_eq!(attr.task(), 1);
        assert_eq!(attr.sample_id_all(), 1);
        assert_eq!(attr.use_clockid(), 1);
        assert_eq!(attr.clockid, libc::CLOCK_MONOTONIC);
        assert_eq!(attr.build_id(), 1);
        assert_eq!(attr.disabled(), 1);
        assert_eq!(self::attr(&SidebandOptions::default(), false).build_id(), 0);
    }

    /// The walk and the parser together, as a drain runs them: a ring whose
    /// records wrap across its end, one of them malformed.
    #[test]
    fn a_wrapped_ring_of_records_parses_in_order() {
        use records::tests::{comm, config, mmap2};
        let mut bad = mmap2(10, 102, 0x3000, 0x1000, Some(&[8; 20]), b"/bad");
        bad[8 + 32] = 200; // a build id of 200 bytes
        let records = [
            comm(10, 100, true, b"true"),
            mmap2(10, 101, 0x1000, 0x1000, Some(&[7; 20]), b"/usr/bin/true"),
            bad,
            mmap2(
                10,
                103,
                0x7000,
                0x2000,
                None,
                b"/usr/lib/x86_64-linux-gnu/libc.so.6",
            ),
        ];
        let total: usize = records.iter().map(Vec::len).sum();
        let size = 512usize;
        assert!(total < size);
        let mut area = vec![0u8; size];
        // Start so that the second record straddles the end.
        let start = (size - records[0].len() - 16) as u64 + 3 * size as u64;
        let mut position = start;
        for r in &records {
            for (i, b) in r.iter().enumerate() {
                area[((position + i as u64) % size as u64) as usize] = *b;
            }
            position += r.len() as u64;
        }
        let mut parsed = Vec::new();
        let end = ring::walk(&area[..], start, position, &mut Vec::new(), |bytes| {
            parsed.push(parse_record(bytes, &config()));
        });
        assert_eq!(end.tail, position);
        assert_eq!(parsed.len(), 4);
        assert!(matches!(&parsed[0], Parsed::Record(SideRecord::Comm(c)) if c.exec));
        // The malformed one is skipped alone: its size was right.
        assert_eq!(parsed[2], Parsed::Malformed);
        let Parsed::Record(SideRecord::Mmap(m)) = &parsed[1] else {
            panic!("the wrapped record: {:?}", parsed[1]);
        };
        assert_eq!(&*m.path, b"/usr/bin/true");
        assert!(matches!(m.identity, FileIdentity::BuildId(_)));
        assert!(matches!(&parsed[3], Parsed::Record(SideRecord::Mmap(m)) if m.start == 0x7000));
    }
}
