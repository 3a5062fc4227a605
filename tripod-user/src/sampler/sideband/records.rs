//! The sideband records the kernel writes, parsed: plain bytes in, typed
//! records out, no system calls, so the tests build the bytes by hand.
//!
//! perf-event-data does the reading (bounds checked, the `sample_id`
//! trailer split off, a build id only when the record's misc bit says so);
//! this module picks the five record types tripod-bpf uses and bounds what
//! they carry. Everything here describes a target, which chose its paths
//! and names: they stay bytes, cut at the first NUL, and a record whose path
//! is longer than the kernel can write is skipped, not trusted.
use perf_event_data::{
    endian::Native, parse::ParseConfig, parse::Parser, Comm, Exit, Lost, Mmap2, RecordMetadata,
    Visitor,
};
use perf_event_open_sys::bindings::{PERF_RECORD_MISC_COMM_EXEC, PERF_RECORD_MISC_MMAP_BUILD_ID};

/// `PATH_MAX`: the kernel writes mapped paths with `d_path` into a buffer of
/// this size, so a longer one cannot be the kernel's.
pub const MAX_PATH_LEN: usize = 4096;

/// `TASK_COMM_LEN` less its NUL: a longer name is cut here.
pub const MAX_COMM_LEN: usize = 15;

/// A GNU build id as MMAP2 records carry it: at most 20 bytes (SHA-1).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BuildId {
    len: u8,
    bytes: [u8; 20],
}

impl BuildId {
    /// A build id of at most 20 bytes; `None` for a longer one.
    pub fn new(id: &[u8]) -> Option<BuildId> {
        let mut bytes = [0; 20];
        bytes.get_mut(..id.len())?.copy_from_slice(id);
        Some(BuildId {
            len: id.len() as u8,
            bytes,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl std::fmt::Debug for BuildId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Which file a mapping maps, as the kernel identified it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileIdentity {
    /// The file's build id (Linux 5.12+ with `build_id` set, when the kernel
    /// could read the note at mmap time).
    BuildId(BuildId),
    /// The device and inode, as `stat` and `/proc/PID/maps` give them.
    /// `generation` is the inode generation from an MMAP2 record; `None`
    /// where it is unknown (mappings read from `/proc`).
    Inode {
        major: u32,
        minor: u32,
        inode: u64,
        generation: Option<u64>,
    },
}

/// An executable mapping created by `mmap` or `exec` (PERF_RECORD_MMAP2).
#[derive(Clone, PartialEq, Eq)]
pub struct MmapRecord {
    pub pid: u32,
    pub tid: u32,
    /// CLOCK_MONOTONIC nanoseconds, comparable with the eBPF samples' `time_ns`.
    pub time_ns: u64,
    /// The first address mapped.
    pub start: u64,
    pub len: u64,
    /// The offset in the file of the byte mapped at `start` (in bytes,
    /// despite the kernel's name for it).
    pub pgoff: u64,
    /// `PROT_*` bits (always `PROT_EXEC` without `mmap_data`).
    pub prot: u32,
    /// `MAP_*` bits.
    pub flags: u32,
    pub identity: FileIdentity,
    /// The path the kernel printed (`d_path`), or a name such as `[vdso]`
    /// or `//anon`; at most [`MAX_PATH_LEN`] bytes, no NUL.
    pub path: Box<[u8]>,
}

/// A thread named itself, or a process ran `exec` (PERF_RECORD_COMM).
#[derive(Clone, PartialEq, Eq)]
pub struct CommRecord {
    pub pid: u32,
    pub tid: u32,
    pub time_ns: u64,
    /// Set by an `exec` (the kernel's `PERF_RECORD_MISC_COMM_EXEC`): a new
    /// image starts, whose mappings follow as MMAP2 records.
    pub exec: bool,
    /// At most [`MAX_COMM_LEN`] bytes, no NUL.
    pub comm: Box<[u8]>,
}

/// Bytes a target chose, shown escaped (`\xff`, `\n`) in debug output.
pub struct ByteStr<'a>(pub &'a [u8]);

impl std::fmt::Debug for ByteStr<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{}\"", self.0.escape_ascii())
    }
}

impl std::fmt::Debug for MmapRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmapRecord")
            .field("pid", &self.pid)
            .field("tid", &self.tid)
            .field("time_ns", &self.time_ns)
            .field("start", &format_args!("{:#x}", self.start))
            .field("len", &format_args!("{:#x}", self.len))
            .field("pgoff", &format_args!("{:#x}", self.pgoff))
            .field("prot", &self.prot)
            .field("flags", &self.flags)
            .field("identity", &self.identity)
            .field("path", &ByteStr(&self.path))
            .finish()
    }
}

impl std::fmt::Debug for CommRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommRecord")
            .field("pid", &self.pid)
            .field("tid", &self.tid)
            .field("time_ns", &self.time_ns)
            .field("exec", &self.exec)
            .field("comm", &ByteStr(&self.comm))
            .finish()
    }
}

/// A task was created or exited (PERF_RECORD_FORK, PERF_RECORD_EXIT). A
/// new thread has `pid == ppid`; a new process has its own `pid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskRecord {
    pub pid: u32,
    pub ppid: u32,
    pub tid: u32,
    pub ptid: u32,
    pub time_ns: u64,
}

/// The kernel found one CPU's ring full and dropped records (PERF_RECORD_LOST).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LostRecord {
    /// Records dropped.
    pub count: u64,
    /// The CPU whose ring was full (set by the drain, which knows the ring).
    pub cpu: u32,
    /// The time of the last record read from that ring before the loss (set
    /// by the drain): the records lost lie between it and `time_ns`.
    pub since_ns: u64,
    /// When the kernel wrote this record, once room was free again.
    pub time_ns: u64,
}

/// One sideband record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SideRecord {
    Mmap(MmapRecord),
    Comm(CommRecord),
    Fork(TaskRecord),
    Exit(TaskRecord),
    Lost(LostRecord),
}

impl SideRecord {
    /// When the kernel wrote it (CLOCK_MONOTONIC nanoseconds).
    pub fn time_ns(&self) -> u64 {
        match self {
            SideRecord::Mmap(r) => r.time_ns,
            SideRecord::Comm(r) => r.time_ns,
            SideRecord::Fork(r) | SideRecord::Exit(r) => r.time_ns,
            SideRecord::Lost(r) => r.time_ns,
        }
    }

    /// The process it is about; `None` for a loss.
    pub fn pid(&self) -> Option<u32> {
        match self {
            SideRecord::Mmap(r) => Some(r.pid),
            SideRecord::Comm(r) => Some(r.pid),
            SideRecord::Fork(r) | SideRecord::Exit(r) => Some(r.pid),
            SideRecord::Lost(_) => None,
        }
    }
}

/// What one record's bytes turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Record(SideRecord),
    /// A record of a type tripod-bpf does not use (throttling notices and
    /// the like).
    Other,
    /// Cut short, a size or length that cannot be right, or no time.
    Malformed,
}

/// Reads one record (header included) written under `config`, which is the
/// `perf_event_attr` the event was opened with.
pub fn parse_record(bytes: &[u8], config: &ParseConfig<Native>) -> Parsed {
    let mut parser = Parser::new(bytes, config.clone());
    match parser.parse_record(Pick) {
        Ok(parsed) => parsed,
        Err(_) => Parsed::Malformed,
    }
}

/// Picks the record types the sideband uses out of perf-event-data's parse.
struct Pick;

impl<'a> Visitor<'a> for Pick {
    type Output = Parsed;

    fn visit_unimplemented(self, _: RecordMetadata) -> Parsed {
        Parsed::Other
    }

    fn visit_unknown(self, _: std::borrow::Cow<'a, [u8]>, _: RecordMetadata) -> Parsed {
        Parsed::Other
    }

    fn visit_mmap2(self, record: Mmap2<'a>, metadata: RecordMetadata) -> Parsed {
        mmap(&record, &metadata).map_or(Parsed::Malformed, |r| Parsed::Record(SideRecord::Mmap(r)))
    }

    fn visit_comm(self, record: Comm<'a>, metadata: RecordMetadata) -> Parsed {
        let Some(time_ns) = metadata.sample_id().time() else {
            return Parsed::Malformed;
        };
        let comm = c_string(&record.comm);
        Parsed::Record(SideRecord::Comm(CommRecord {
            pid: record.pid,
            tid: record.tid,
            time_ns,
            exec: u32::from(metadata.misc()) & PERF_RECORD_MISC_COMM_EXEC != 0,
            comm: comm[..comm.len().min(MAX_COMM_LEN)].into(),
        }))
    }

    fn visit_fork(self, record: Exit, metadata: RecordMetadata) -> Parsed {
        task(&record, &metadata).map_or(Parsed::Malformed, |r| Parsed::Record(SideRecord::Fork(r)))
    }

    fn visit_exit(self, record: Exit, metadata: RecordMetadata) -> Parsed {
        task(&record, &metadata).map_or(Parsed::Malformed, |r| Parsed::Record(SideRecord::Exit(r)))
    }

    fn visit_lost(self, record: Lost, metadata: RecordMetadata) -> Parsed {
        let Some(time_ns) = metadata.sample_id().time() else {
            return Parsed::Malformed;
        };
        Parsed::Record(SideRecord::Lost(LostRecord {
            count: record.lost,
            cpu: 0,
            since_ns: 0,
            time_ns,
        }))
    }
}

fn mmap(record: &Mmap2<'_>, metadata: &RecordMetadata) -> Option<MmapRecord> {
    let time_ns = metadata.sample_id().time()?;
    let path = c_string(&record.filename);
    if path.len() > MAX_PATH_LEN {
        return None;
    }
    // perf-event-data reads the build id only under the misc bit, so the
    // two agree; checking the bit again keeps this true whatever it does.
    let identity = if u32::from(metadata.misc()) & PERF_RECORD_MISC_MMAP_BUILD_ID != 0 {
        FileIdentity::BuildId(BuildId::new(record.build_id()?)?)
    } else {
        FileIdentity::Inode {
            major: record.maj()?,
            minor: record.min()?,
            inode: record.ino()?,
            generation: record.ino_generation(),
        }
    };
    Some(MmapRecord {
        pid: record.pid,
        tid: record.tid,
        time_ns,
        start: record.addr,
        len: record.len,
        pgoff: record.pgoff,
        prot: record.prot,
        flags: record.flags,
        identity,
        path: path.into(),
    })
}

fn task(record: &Exit, metadata: &RecordMetadata) -> Option<TaskRecord> {
    Some(TaskRecord {
        pid: record.pid,
        ppid: record.ppid,
        tid: record.tid,
        ptid: record.ptid,
        // The trailer's time, as for every other record (the body's `time`
        // is the same clock, but the trailer is what the others carry).
        time_ns: metadata.sample_id().time()?,
    })
}

/// The bytes before the first NUL: the kernel pads strings to 8 bytes with NULs.
fn c_string(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::sampler::sideband::{attr, SidebandOptions};
    use perf_event_open_sys::bindings::{
        PERF_RECORD_COMM, PERF_RECORD_EXIT, PERF_RECORD_FORK, PERF_RECORD_LOST, PERF_RECORD_MMAP2,
        PERF_RECORD_THROTTLE,
    };

    pub(crate) fn config() -> ParseConfig<Native> {
        ParseConfig::from(attr(&SidebandOptions::default(), true))
    }

    /// A record as the kernel writes it under [`config`]: header, `body`
    /// padded to 8 bytes, then the trailer (pid, tid, time).
    pub(crate) fn bytes(ty: u32, misc: u16, body: &[u8], pid: u32, time_ns: u64) -> Vec<u8> {
        let mut body = body.to_vec();
        body.resize(body.len().div_ceil(8) * 8, 0);
        let mut out = ty.to_ne_bytes().to_vec();
        out.extend_from_slice(&misc.to_ne_bytes());
        out.extend_from_slice(&((8 + body.len() + 16) as u16).to_ne_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(&pid.to_ne_bytes());
        out.extend_from_slice(&pid.to_ne_bytes());
        out.extend_from_slice(&time_ns.to_ne_bytes());
        out
    }

    /// The body of an MMAP2 record: with a build id when `build_id` is set,
    /// else device 8:1, inode 1234, generation 5.
    pub(crate) fn mmap2_body(
        pid: u32,
        start: u64,
        len: u64,
        pgoff: u64,
        build_id: Option<&[u8]>,
        path: &[u8],
    ) -> Vec<u8> {
        let mut b = Vec::new();
        for v in [pid, pid] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        for v in [start, len, pgoff] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        match build_id {
            Some(id) => {
                b.push(id.len() as u8);
                b.extend_from_slice(&[0; 3]);
                let mut padded = id.to_vec();
                padded.resize(20, 0);
                b.extend_from_slice(&padded);
            }
            None => {
                b.extend_from_slice(&8u32.to_ne_bytes());
                b.extend_from_slice(&1u32.to_ne_bytes());
                b.extend_from_slice(&1234u64.to_ne_bytes());
                b.extend_from_slice(&5u64.to_ne_bytes());
            }
        }
        b.extend_from_slice(&5u32.to_ne_bytes()); // PROT_READ | PROT_EXEC
        b.extend_from_slice(&2u32.to_ne_bytes()); // MAP_PRIVATE
        b.extend_from_slice(path);
        b.push(0);
        b
    }

    pub(crate) fn mmap2(
        pid: u32,
        time_ns: u64,
        start: u64,
        len: u64,
        build_id: Option<&[u8]>,
        path: &[u8],
    ) -> Vec<u8> {
        let misc = if build_id.is_some() {
            PERF_RECORD_MISC_MMAP_BUILD_ID as u16
        } else {
            0
        };
        bytes(
            PERF_RECORD_MMAP2,
            misc,
            &mmap2_body(pid, start, len, 0x1000, build_id, path),
            pid,
            time_ns,
        )
    }

    pub(crate) fn comm(pid: u32, time_ns: u64, exec: bool, name: &[u8]) -> Vec<u8> {
        let mut body = pid.to_ne_bytes().to_vec();
        body.extend_from_slice(&pid.to_ne_bytes());
        body.extend_from_slice(name);
        body.push(0);
        let misc = if exec {
            PERF_RECORD_MISC_COMM_EXEC as u16
        } else {
            0
        };
        bytes(PERF_RECORD_COMM, misc, &body, pid, time_ns)
    }

    pub(crate) fn task(ty: u32, pid: u32, ppid: u32, time_ns: u64) -> Vec<u8> {
        let mut body = Vec::new();
        for v in [pid, ppid, pid, ppid] {
            body.extend_from_slice(&v.to_ne_bytes());
        }
        body.extend_from_slice(&time_ns.to_ne_bytes());
        bytes(ty, 0, &body, pid, time_ns)
    }

    #[test]
    fn mmap2_with_a_build_id() {
        let id = [0xab; 20];
        let record = mmap2(42, 1_000, 0x5000, 0x2000, Some(&id), b"/usr/bin/true");
        let Parsed::Record(SideRecord::Mmap(m)) = parse_record(&record, &config()) else {
            panic!("not an mmap: {:?}", parse_record(&record, &config()));
        };
        assert_eq!((m.pid, m.tid, m.time_ns), (42, 42, 1_000));
        assert_eq!(
            (m.start, m.len, m.pgoff, m.prot, m.flags),
            (0x5000, 0x2000, 0x1000, 5, 2)
        );
        assert_eq!(
            m.identity,
            FileIdentity::BuildId(BuildId::new(&id).unwrap())
        );
        assert_eq!(&*m.path, b"/usr/bin/true");
    }

    #[test]
    fn mmap2_with_device_and_inode() {
        let record = mmap2(
            7,
            5,
            0x1000,
            0x1000,
            None,
            b"/lib/x86_64-linux-gnu/libc.so.6",
        );
        let Parsed::Record(SideRecord::Mmap(m)) = parse_record(&record, &config()) else {
            panic!("not an mmap");
        };
        let inode = FileIdentity::Inode {
            major: 8,
            minor: 1,
            inode: 1234,
            generation: Some(5),
        };
        assert_eq!(m.identity, inode);
        assert_eq!(&*m.path, b"/lib/x86_64-linux-gnu/libc.so.6");
    }

    #[test]
    fn a_build_id_longer_than_twenty_bytes_is_malformed() {
        let mut record = mmap2(7, 5, 0x1000, 0x1000, Some(&[1; 20]), b"/x");
        // The length byte follows the header and pid, tid, addr, len, pgoff.
        record[8 + 32] = 21;
        assert_eq!(parse_record(&record, &config()), Parsed::Malformed);
    }

    #[test]
    fn paths_and_names_are_bytes_cut_at_the_first_nul() {
        let record = mmap2(7, 5, 0x1000, 0x1000, None, b"/tmp/\xff\x01odd\0hidden");
        let Parsed::Record(SideRecord::Mmap(m)) = parse_record(&record, &config()) else {
            panic!("not an mmap");
        };
        assert_eq!(&*m.path, b"/tmp/\xff\x01odd");

        let record = comm(9, 6, false, b"a-name-far-longer-than-sixteen");
        let Parsed::Record(SideRecord::Comm(c)) = parse_record(&record, &config()) else {
            panic!("not a comm");
        };
        assert_eq!(&*c.comm, b"a-name-far-long");
        assert!(!c.exec);
    }

    #[test]
    fn a_path_longer_than_path_max_is_not_trusted() {
        let long = vec![b'a'; MAX_PATH_LEN + 1];
        let record = mmap2(7, 5, 0x1000, 0x1000, None, &long);
        assert_eq!(parse_record(&record, &config()), Parsed::Malformed);
        let fits = vec![b'a'; MAX_PATH_LEN];
        let record = mmap2(7, 5, 0x1000, 0x1000, None, &fits);
        assert!(matches!(
            parse_record(&record, &config()),
            Parsed::Record(_)
        ));
    }

    #[test]
    fn comm_exec_fork_exit_and_lost() {
        let c = parse_record(&comm(10, 100, true, b"true"), &config());
        let expected = CommRecord {
            pid: 10,
            tid: 10,
            time_ns: 100,
            exec: true,
            comm: (*b"true").into(),
        };
        assert_eq!(c, Parsed::Record(SideRecord::Comm(expected)));

        let f = parse_record(&task(PERF_RECORD_FORK, 11, 10, 200), &config());
        let t = TaskRecord {
            pid: 11,
            ppid: 10,
            tid: 11,
            ptid: 10,
            time_ns: 200,
        };
        assert_eq!(f, Parsed::Record(SideRecord::Fork(t)));
        let e = parse_record(&task(PERF_RECORD_EXIT, 11, 10, 300), &config());
        assert_eq!(
            e,
            Parsed::Record(SideRecord::Exit(TaskRecord { time_ns: 300, ..t }))
        );

        let mut body = 0u64.to_ne_bytes().to_vec();
        body.extend_from_slice(&17u64.to_ne_bytes());
        let lost = parse_record(&bytes(PERF_RECORD_LOST, 0, &body, 0, 400), &config());
        let expected = LostRecord {
            count: 17,
            cpu: 0,
            since_ns: 0,
            time_ns: 400,
        };
        assert_eq!(lost, Parsed::Record(SideRecord::Lost(expected)));
    }

    #[test]
    fn other_record_types_are_other() {
        let mut body = 0u64.to_ne_bytes().to_vec();
        body.extend_from_slice(&[0; 16]);
        let throttle = bytes(PERF_RECORD_THROTTLE, 0, &body, 0, 1);
        assert_eq!(parse_record(&throttle, &config()), Parsed::Other);
        assert_eq!(
            parse_record(&bytes(999, 0, &[0; 8], 0, 1), &config()),
            Parsed::Other
        );
    }

    #[test]
    fn truncated_records_are_malformed() {
        let whole = mmap2(7, 5, 0x1000, 0x1000, Some(&[3; 20]), b"/usr/lib/libc.so.6");
        for cut in 0..whole.len() {
            let mut short = whole[..cut].to_vec();
            // The header's size too, so that only the body is short.
            if cut >= 8 {
                short[6..8].copy_from_slice(&(cut as u16).to_ne_bytes());
            }
            let parsed = parse_record(&short, &config());
            // Cut inside the path, the trailer still reads as the last 16
            // bytes: a shorter path, a wrong time. What must never happen
            // is a panic; anything shorter than the fixed fields is malformed.
            if cut < 8 + 32 + 24 + 8 + 16 {
                assert_eq!(parsed, Parsed::Malformed, "cut at {cut}");
            }
        }
    }

    #[test]
    fn a_header_size_smaller_than_the_header_is_malformed() {
        let mut record = comm(1, 1, false, b"x");
        record[6..8].copy_from_slice(&4u16.to_ne_bytes());
        assert_eq!(parse_record(&record, &config()), Parsed::Malformed);
        record[6..8].copy_from_slice(&u16::MAX.to_ne_bytes());
        assert_eq!(parse_record(&record, &config()), Parsed::Malformed);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small xorshift: the same bytes on every run.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let kinds = [
            PERF_RECORD_MMAP2,
            PERF_RECORD_COMM,
            PERF_RECORD_FORK,
            PERF_RECORD_EXIT,
            PERF_RECORD_LOST,
        ];
        for round in 0..20_000 {
            let len = (next() % 160) as usize;
            let mut record: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if len >= 8 {
                let ty = kinds[round % kinds.len()];
                record[..4].copy_from_slice(&ty.to_ne_bytes());
                if round % 2 == 0 {
                    record[6..8].copy_from_slice(&(len as u16).to_ne_bytes());
                }
            }
            let _ = parse_record(&record, &config());
        }
    }
}
