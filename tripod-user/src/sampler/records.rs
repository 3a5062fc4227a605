//! The records the kernel side writes, parsed: what the ring buffer carries
//! (samples on a CPU, threads switching out and back in) and what a task
//! iterator writes (one record per thread of a dump). Plain bytes in, typed
//! records out: no aya here, so the replay source and the tests use the
//! same parser as the live sampler, on bytes they build themselves.
//!
//! A record that is cut short or does not hold what its header says is
//! skipped, never trusted and never a panic.
use tripod_common::{
    PythonFrame, PythonStatus, RecordKind, StackCopy, StackCopyHeader, WakeRecord,
    MAX_PYTHON_FRAMES, MAX_STACK_DEPTH, RECORD_PACKED,
};

use crate::{
    python::PythonSample,
    stack::{Gap, StackRead},
};

/// A thread's stacks as the kernel sent them: borrowed from the ring buffer
/// or from a task iterator's output, or read from the count maps (`--unwind
/// fp`), which count identical samples in the kernel.
#[derive(Debug, PartialEq, Eq)]
pub struct Sample<'a> {
    /// Why it was taken: on a CPU, switched out, or in a dump.
    pub kind: RecordKind,
    /// How many times the kernel saw it: 1 for records, the map's count
    /// for counted samples.
    pub count: u64,
    pub tgid: u32,
    pub tid: u32,
    /// The thread's name when the record was taken.
    pub comm: String,
    /// The thread's cgroup v2 id when the record was taken; 0 when unknown
    /// (dumps: the task iterator does not run as the thread).
    pub cgroup_id: u64,
    /// The raw `task_struct.__state` (0 for samples taken on a CPU, and for
    /// threads preempted while runnable).
    pub state: u32,
    /// The system call a dumped thread is in, if any.
    pub syscall: Option<i32>,
    /// CLOCK_MONOTONIC nanoseconds when it was taken (0 for counted
    /// samples: the maps keep no time).
    pub time_ns: u64,
    pub user: UserStack<'a>,
    pub kernel: StackRead,
    /// The interpreter's frames, for threads of Python processes.
    pub python: PythonSample,
}

impl Sample<'_> {
    /// A sample of thread `tid` on a CPU, seen once, with no stacks yet:
    /// fill in what a test or a counted sample has.
    pub fn on_cpu(tgid: u32, tid: u32, comm: &str) -> Sample<'static> {
        Sample {
            kind: RecordKind::Sample,
            count: 1,
            tgid,
            tid,
            comm: comm.to_string(),
            cgroup_id: 0,
            state: 0,
            syscall: None,
            time_ns: 0,
            user: UserStack::Absent,
            kernel: StackRead::NotCollected,
            python: PythonSample::default(),
        }
    }
}

/// The user half of a [`Sample`].
#[derive(Debug, PartialEq, Eq)]
pub enum UserStack<'a> {
    /// User registers (ip, sp, bp) and the top of the user stack from `sp`
    /// upwards, to unwind in userspace.
    Copy {
        regs: (u64, u64, u64),
        stack: &'a [u8],
    },
    /// Walked by the kernel with frame pointers: the addresses, innermost
    /// first, or why there are none.
    Walked(StackRead),
    /// None: a kernel thread, unreadable registers, or not collected.
    Absent,
}

/// A thread reported switched out runs again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wake {
    pub tid: u32,
    pub tgid: u32,
    /// The `time_ns` of its [`RecordKind::Blocked`] record.
    pub start_ns: u64,
    pub end_ns: u64,
}

/// One record of the ring buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Record<'a> {
    Stack(Sample<'a>),
    Woke(Wake),
}

/// Reads one record of the ring buffer; `None` for one that is cut short or
/// of no known kind.
pub fn parse_record(record: &[u8]) -> Option<Record<'_>> {
    let kind = u32::from_ne_bytes(record.get(..4)?.try_into().ok()?);
    if RecordKind::from_u32(kind & !RECORD_PACKED)? == RecordKind::Woke {
        if record.len() < std::mem::size_of::<WakeRecord>() {
            return None;
        }
        // SAFETY: the record holds a whole WakeRecord, which is plain data.
        let wake: WakeRecord = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
        return Some(Record::Woke(Wake {
            tid: wake.tid,
            tgid: wake.tgid,
            start_ns: wake.start_ns,
            end_ns: wake.end_ns,
        }));
    }
    parse_copy(record).map(|(sample, _)| Record::Stack(sample))
}

/// Hands each record of a task iterator's output to `handle`. Stops at the
/// first record that cannot be read: records have no length prefix, so
/// nothing after it can be found.
pub fn parse_snapshots(mut bytes: &[u8], mut handle: impl FnMut(Sample<'_>)) {
    while let Some((sample, len)) = parse_copy(bytes) {
        handle(sample);
        bytes = &bytes[len..];
    }
}

/// Where the parts of a [`StackCopy`] record are: (kernel frames, user
/// stack, Python frames), as byte ranges, and the record's length. Packed
/// records ([`RECORD_PACKED`]) have no unused kernel-stack area and no
/// Python frames.
struct Layout {
    kernel: std::ops::Range<usize>,
    stack: std::ops::Range<usize>,
    python: std::ops::Range<usize>,
    len: usize,
}

impl Layout {
    fn of(header: &StackCopyHeader) -> Option<Layout> {
        let header_size = std::mem::size_of::<StackCopyHeader>();
        let kernel_frames = (header.kernel_frames as usize).min(MAX_STACK_DEPTH);
        let kernel = header_size..header_size + 8 * kernel_frames;
        let stack_len = header.stack_len as usize;
        if header.kind & RECORD_PACKED != 0 {
            // The kernel packs only what it counted, and nothing with Python frames.
            if header.kernel_frames as usize > MAX_STACK_DEPTH || header.python_frames != 0 {
                return None;
            }
            let stack = kernel.end..kernel.end.checked_add(stack_len)?;
            let len = StackCopy::packed_len(header.kernel_frames, header.stack_len);
            return Some(Layout {
                python: stack.end..stack.end,
                kernel,
                stack,
                len,
            });
        }
        let stack = StackCopy::STACK_OFFSET..StackCopy::STACK_OFFSET.checked_add(stack_len)?;
        let python_start = StackCopy::STACK_OFFSET + StackCopy::python_offset(header.stack_len);
        let python_frames = (header.python_frames as usize).min(MAX_PYTHON_FRAMES);
        let python_end = python_start + python_frames * std::mem::size_of::<PythonFrame>();
        Some(Layout {
            kernel,
            stack,
            python: python_start..python_end,
            len: StackCopy::record_len(header.stack_len, python_frames as u32),
        })
    }
}

/// Reads a record laid out as [`StackCopy`], cut after its stack bytes and
/// Python frames (or packed, see [`RECORD_PACKED`]), and its length in bytes.
pub fn parse_copy(record: &[u8]) -> Option<(Sample<'_>, usize)> {
    let header_size = std::mem::size_of::<StackCopyHeader>();
    if record.len() < header_size {
        return None;
    }
    // SAFETY: the record holds at least a header; StackCopyHeader is plain data.
    let header: StackCopyHeader = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
    let kind = RecordKind::from_u32(header.kind & !RECORD_PACKED)?;
    let layout = Layout::of(&header)?;
    if record.len() < layout.len {
        return None;
    }
    let kernel = match header.kernel_error {
        error if error < 0 => StackRead::Missing(Gap::Failed(-error)),
        _ => StackRead::Addresses(words(record.get(layout.kernel)?)),
    };
    let stack = record.get(layout.stack)?;
    let user = match (header.no_user, header.user_frames) {
        (0, 0) => UserStack::Copy {
            regs: (header.ip, header.sp, header.bp),
            stack,
        },
        (0, _) => UserStack::Walked(StackRead::Addresses(words(stack))),
        _ => UserStack::Absent,
    };
    let frame_size = std::mem::size_of::<PythonFrame>();
    let python = record.get(layout.python)?;
    let python = PythonSample {
        status: match PythonStatus::from_u32(header.python_status) {
            PythonStatus::NotPython => None,
            status => Some(status),
        },
        frames: python
            .chunks_exact(frame_size)
            // SAFETY: each chunk is one PythonFrame, which is plain data.
            .map(|bytes| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
            .collect(),
    };
    let sample = Sample {
        kind,
        count: 1,
        tgid: header.tgid,
        tid: header.tid,
        comm: comm_string(&header.comm),
        cgroup_id: header.cgroup_id,
        state: header.state,
        syscall: (header.syscall >= 0).then_some(header.syscall),
        time_ns: header.time_ns,
        user,
        kernel,
        python,
    };
    Some((sample, layout.len))
}

fn words(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|b| u64::from_ne_bytes(b.try_into().unwrap()))
        .collect()
}

/// The thread's name, which the thread chose: control characters escaped.
pub(super) fn comm_string(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    crate::text::escape_controls_owned(String::from_utf8_lossy(&comm[..end]).into_owned())
}

/// The wire types a record is made of: `#[repr(C)]` plain data without
/// padding (tripod-common checks their sizes), so their bytes are all
/// initialised.
trait Wire: Copy {}
impl Wire for StackCopyHeader {}
impl Wire for PythonFrame {}
impl Wire for WakeRecord {}

fn bytes_of<T: Wire>(value: &T) -> &[u8] {
    // SAFETY: `T` is plain data with no padding (see `Wire`); the slice
    // covers exactly the value and borrows it.
    unsafe {
        std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>())
    }
}

/// A [`StackCopy`] record as the kernel sends it: `header`, the kernel
/// stack area, `stack` (user stack bytes, or user addresses when
/// `header.user_frames` is set), then `python` after it, 8-byte aligned.
/// The header's lengths (`kernel_frames` unless `kernel_error` is set,
/// `stack_len`, `python_frames`) are set from the slices. The inverse of
/// [`parse_copy`], for recorded runs and tests.
pub fn encode_copy(
    header: &StackCopyHeader,
    kernel: &[u64],
    stack: &[u8],
    python: &[PythonFrame],
) -> Vec<u8> {
    let mut header = *header;
    let kernel = &kernel[..kernel.len().min(MAX_STACK_DEPTH)];
    if header.kernel_error == 0 {
        header.kernel_frames = kernel.len() as u32;
    }
    header.stack_len = stack.len() as u32;
    header.python_frames = python.len() as u32;
    let mut bytes = Vec::with_capacity(StackCopy::record_len(
        header.stack_len,
        header.python_frames,
    ));
    bytes.extend_from_slice(bytes_of(&header));
    bytes.extend(kernel.iter().flat_map(|a| a.to_ne_bytes()));
    bytes.resize(StackCopy::STACK_OFFSET, 0);
    bytes.extend_from_slice(stack);
    bytes.resize(
        StackCopy::STACK_OFFSET + StackCopy::python_offset(header.stack_len),
        0,
    );
    for frame in python {
        bytes.extend_from_slice(bytes_of(frame));
    }
    bytes
}

/// A [`WakeRecord`] as the kernel sends it (`kind` is set to
/// [`RecordKind::Woke`]).
pub fn encode_wake(wake: &Wake) -> Vec<u8> {
    let record = WakeRecord {
        kind: RecordKind::Woke as u32,
        tid: wake.tid,
        tgid: wake.tgid,
        _reserved: 0,
        start_ns: wake.start_ns,
        end_ns: wake.end_ns,
    };
    bytes_of(&record).to_vec()
}

/// A header for [`encode_copy`]: who, what kind and when, with no stacks.
pub fn header(kind: RecordKind, tgid: u32, tid: u32, comm: &[u8], time_ns: u64) -> StackCopyHeader {
    let mut name = [0u8; tripod_common::COMM_LEN];
    let len = comm.len().min(name.len() - 1);
    name[..len].copy_from_slice(&comm[..len]);
    StackCopyHeader {
        kind: kind as u32,
        tgid,
        tid,
        kernel_frames: 0,
        stack_len: 0,
        kernel_error: 0,
        no_user: 0,
        state: 0,
        syscall: -1,
        user_frames: 0,
        python_status: PythonStatus::NotPython as u32,
        python_frames: 0,
        ip: 0,
        sp: 0,
        bp: 0,
        time_ns,
        cgroup_id: 0,
        comm: name,
    }
}

#[cfg(test)]
mod tests {
    use tripod_common::errno::EFAULT;

    use super::*;

    fn python_frame(code: u64) -> PythonFrame {
        PythonFrame {
            code,
            code_identity: code ^ 0x5555,
            instruction: 0x40,
            frame: 0x7f00_0000 + code,
            is_entry: 1,
            owner: 2,
        }
    }

    /// A sample taken on a CPU: registers and 20 bytes of user stack (not
    /// a multiple of 8), two kernel frames, two Python frames.
    fn sample_bytes() -> Vec<u8> {
        let mut header = header(RecordKind::Sample, 100, 101, b"worker", 0);
        (header.ip, header.sp, header.bp) = (0x4010, 0x7ffc_0000, 0x7ffc_0040);
        header.cgroup_id = 0x1234;
        header.python_status = PythonStatus::Frames as u32;
        let stack: Vec<u8> = (0..20).collect();
        encode_copy(
            &header,
            &[0xffff_ffff_8100_0010, 0xffff_ffff_8100_0020],
            &stack,
            &[python_frame(0x1000), python_frame(0x2000)],
        )
    }

    #[test]
    fn a_sample_with_its_stacks_and_python_frames() {
        let bytes = sample_bytes();
        assert_eq!(bytes.len(), StackCopy::record_len(20, 2));
        let Some(Record::Stack(sample)) = parse_record(&bytes) else {
            panic!("not a stack record");
        };
        assert_eq!(sample.kind, RecordKind::Sample);
        assert_eq!((sample.tgid, sample.tid), (100, 101));
        assert_eq!(sample.comm, "worker");
        assert_eq!(sample.cgroup_id, 0x1234);
        assert_eq!((sample.state, sample.syscall, sample.time_ns), (0, None, 0));
        let expected_stack: Vec<u8> = (0..20).collect();
        assert_eq!(
            sample.user,
            UserStack::Copy {
                regs: (0x4010, 0x7ffc_0000, 0x7ffc_0040),
                stack: &expected_stack[..],
            }
        );
        assert_eq!(
            sample.kernel,
            StackRead::Addresses(vec![0xffff_ffff_8100_0010, 0xffff_ffff_8100_0020])
        );
        assert_eq!(sample.python.status, Some(PythonStatus::Frames));
        assert_eq!(
            sample.python.frames,
            vec![python_frame(0x1000), python_frame(0x2000)]
        );
    }

    #[test]
    fn user_addresses_walked_by_the_kernel() {
        let mut header = header(RecordKind::Sample, 1, 1, b"fp", 0);
        header.user_frames = 3;
        let addresses: Vec<u8> = [0x10u64, 0x20, 0x30]
            .iter()
            .flat_map(|a| a.to_ne_bytes())
            .collect();
        let bytes = encode_copy(&header, &[], &addresses, &[]);
        let Some(Record::Stack(sample)) = parse_record(&bytes) else {
            panic!("not a stack record");
        };
        assert_eq!(
            sample.user,
            UserStack::Walked(StackRead::Addresses(vec![0x10, 0x20, 0x30]))
        );
        assert_eq!(sample.kernel, StackRead::Addresses(vec![]));
        assert_eq!(sample.python, PythonSample::default());
    }

    #[test]
    fn missing_stacks_are_data() {
        let mut header = header(RecordKind::Sample, 1, 1, b"kthread", 0);
        header.no_user = 1;
        header.kernel_error = -EFAULT;
        header.python_status = PythonStatus::Unreadable as u32;
        let bytes = encode_copy(&header, &[], &[], &[]);
        let Some(Record::Stack(sample)) = parse_record(&bytes) else {
            panic!("not a stack record");
        };
        assert_eq!(sample.user, UserStack::Absent);
        assert_eq!(sample.kernel, StackRead::Missing(Gap::Failed(EFAULT)));
        assert_eq!(sample.python.status, Some(PythonStatus::Unreadable));
    }

    #[test]
    fn a_thread_switching_out_and_back_in() {
        let mut blocked = header(RecordKind::Blocked, 7, 8, b"sleeper", 5_000);
        blocked.state = 1; // TASK_INTERRUPTIBLE
        blocked.sp = 0x7ffc_0000;
        blocked.ip = 0x4000;
        let bytes = encode_copy(&blocked, &[0xffff_ffff_8100_0000], &[0; 16], &[]);
        let Some(Record::Stack(sample)) = parse_record(&bytes) else {
            panic!("not a stack record");
        };
        assert_eq!(sample.kind, RecordKind::Blocked);
        assert_eq!((sample.state, sample.time_ns), (1, 5_000));

        let wake = Wake {
            tid: 8,
            tgid: 7,
            start_ns: 5_000,
            end_ns: 9_000,
        };
        let bytes = encode_wake(&wake);
        assert_eq!(bytes.len(), std::mem::size_of::<WakeRecord>());
        assert_eq!(parse_record(&bytes), Some(Record::Woke(wake)));
        // A wake record cut short is skipped.
        assert_eq!(parse_record(&bytes[..bytes.len() - 1]), None);
    }

    #[test]
    fn a_dump_is_records_back_to_back() {
        let mut first = header(RecordKind::Snapshot, 9, 9, b"main", 1);
        first.syscall = 7; // poll
        first.state = 1;
        let mut dump = encode_copy(&first, &[1, 2], &[0xaa; 13], &[python_frame(3)]);
        let second = header(RecordKind::Snapshot, 9, 10, b"helper\x1b[31m", 1);
        dump.extend(encode_copy(&second, &[], &[0xbb; 8], &[]));
        let mut seen = Vec::new();
        parse_snapshots(&dump, |thread| {
            seen.push((
                thread.tid,
                thread.syscall,
                thread.comm,
                thread.python.frames.len(),
            ))
        });
        assert_eq!(
            seen,
            vec![
                (9, Some(7), "main".to_string(), 1),
                // The name the thread chose is escaped.
                (10, None, "helper\\x1b[31m".to_string(), 0),
            ]
        );
    }

    #[test]
    fn a_dump_stops_at_the_first_unreadable_record() {
        let one = encode_copy(
            &header(RecordKind::Snapshot, 1, 1, b"a", 0),
            &[],
            &[1; 8],
            &[],
        );
        let mut dump = one.clone();
        dump.extend_from_slice(&one[..one.len() - 1]);
        let mut threads = 0;
        parse_snapshots(&dump, |_| threads += 1);
        assert_eq!(threads, 1);
    }

    #[test]
    fn every_cut_of_a_record_is_skipped() {
        let bytes = sample_bytes();
        for len in 0..bytes.len() {
            assert!(parse_copy(&bytes[..len]).is_none(), "cut at {len}");
            assert!(parse_record(&bytes[..len]).is_none(), "cut at {len}");
        }
        assert_eq!(parse_copy(&bytes).map(|(_, len)| len), Some(bytes.len()));
    }

    #[test]
    fn counts_past_the_limits_are_clamped_or_refused() {
        // More kernel frames and Python frames than a record can hold.
        let mut header = header(RecordKind::Sample, 1, 1, b"x", 0);
        header.python_status = PythonStatus::Truncated as u32;
        let python = vec![python_frame(1); MAX_PYTHON_FRAMES + 4];
        let mut bytes = encode_copy(&header, &[], &[], &python);
        let (sample, len) = parse_copy(&bytes).expect("readable");
        assert_eq!(sample.python.frames.len(), MAX_PYTHON_FRAMES);
        assert_eq!(len, StackCopy::record_len(0, MAX_PYTHON_FRAMES as u32));
        // A header that claims more kernel frames than the area holds.
        bytes[12..16].copy_from_slice(&u32::MAX.to_ne_bytes());
        let (sample, _) = parse_copy(&bytes).expect("readable");
        assert_eq!(
            sample.kernel,
            StackRead::Addresses(vec![0; MAX_STACK_DEPTH])
        );
        // A stack length past the end of the record.
        bytes[16..20].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(parse_copy(&bytes).is_none());
        // An unknown kind.
        bytes[..4].copy_from_slice(&99u32.to_ne_bytes());
        assert!(parse_record(&bytes).is_none());
    }

    /// A record packed as the kernel packs a short one (`RECORD_PACKED`):
    /// the header, only `kernel`'s frames, then `stack`.
    fn encode_packed(header: &StackCopyHeader, kernel: &[u64], stack: &[u8]) -> Vec<u8> {
        let mut header = *header;
        header.kind |= RECORD_PACKED;
        header.kernel_frames = kernel.len() as u32;
        header.stack_len = stack.len() as u32;
        let mut bytes = bytes_of(&header).to_vec();
        bytes.extend(kernel.iter().flat_map(|a| a.to_ne_bytes()));
        bytes.extend_from_slice(stack);
        bytes
    }

    /// A thread switched out with three walked user addresses and two kernel frames.
    fn blocked_walked() -> (StackCopyHeader, Vec<u64>, Vec<u8>) {
        let mut blocked = header(RecordKind::Blocked, 7, 8, b"sleeper", 5_000);
        blocked.state = 1;
        blocked.user_frames = 3;
        let user = [0x4010u64, 0x4120, 0x4230]
            .iter()
            .flat_map(|a| a.to_ne_bytes())
            .collect();
        (
            blocked,
            vec![0xffff_ffff_8100_0010, 0xffff_ffff_8100_0020],
            user,
        )
    }

    #[test]
    fn a_packed_record_reads_as_the_whole_one() {
        let (header, kernel, user) = blocked_walked();
        let packed = encode_packed(&header, &kernel, &user);
        assert_eq!(packed.len(), StackCopy::packed_len(2, 24));
        assert_eq!(packed.len(), 104 + 16 + 24);
        let whole = encode_copy(&header, &kernel, &user, &[]);
        let (sample, len) = parse_copy(&packed).expect("readable");
        assert_eq!(len, packed.len());
        assert_eq!(Some(sample), parse_copy(&whole).map(|(sample, _)| sample));
        let Some(Record::Stack(sample)) = parse_record(&packed) else {
            panic!("not a stack record");
        };
        assert_eq!(sample.kind, RecordKind::Blocked);
        assert_eq!(
            sample.user,
            UserStack::Walked(StackRead::Addresses(vec![0x4010, 0x4120, 0x4230]))
        );
        assert_eq!(
            sample.kernel,
            StackRead::Addresses(vec![0xffff_ffff_8100_0010, 0xffff_ffff_8100_0020])
        );
        // Every cut of it is skipped.
        for cut in 0..packed.len() {
            assert!(parse_record(&packed[..cut]).is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn packed_records_claiming_too_much_are_refused() {
        let (mut header, kernel, user) = blocked_walked();
        // The kernel never packs Python frames.
        header.python_frames = 1;
        let mut bytes = encode_packed(&header, &kernel, &user);
        bytes.extend_from_slice(&[0; 64]);
        assert!(parse_copy(&bytes).is_none());
        // More kernel frames than a kernel stack has.
        let mut bytes = encode_packed(&header, &kernel, &user);
        bytes[44..48].copy_from_slice(&0u32.to_ne_bytes());
        bytes[12..16].copy_from_slice(&(MAX_STACK_DEPTH as u32 + 1).to_ne_bytes());
        bytes.resize(4096, 0);
        assert!(parse_copy(&bytes).is_none());
        // A stack length past the end.
        let mut bytes = encode_packed(&header, &kernel, &user);
        bytes[44..48].copy_from_slice(&0u32.to_ne_bytes());
        bytes[16..20].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(parse_copy(&bytes).is_none());
    }

    #[test]
    fn garbage_never_panics() {
        // A fixed pseudo-random sequence (xorshift), so failures reproduce.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..2000 {
            let len = (next() % (StackCopy::STACK_OFFSET as u64 + 512)) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if len >= 4 {
                // Mostly known kinds, so the parser gets past the first
                // word; packed or not.
                let kind = (round % 5) as u32 | ((round % 2) as u32 * RECORD_PACKED);
                bytes[..4].copy_from_slice(&kind.to_ne_bytes());
            }
            if len >= 48 && round % 3 == 0 {
                // Small lengths, so some records are complete.
                bytes[16..20].copy_from_slice(&((next() % 64) as u32).to_ne_bytes());
                bytes[44..48].copy_from_slice(&((next() % 4) as u32).to_ne_bytes());
            }
            let _ = parse_record(&bytes);
            parse_snapshots(&bytes, |_| {});
        }
    }
}
