//! Reading what the kernel counted, one generation at a time.
use std::{collections::HashMap, time::Duration};

use anyhow::{Context as _, Result};
use aya::maps::MapError;
use tripod_common::{
    PythonFrame, PythonStatus, RecordKind, StackCopy, StackCopyHeader, WakeRecord,
    CONTROL_GENERATION, MAX_PYTHON_FRAMES, MAX_STACK_DEPTH, STACK_NOT_COLLECTED,
};

use super::Sampler;
use crate::{
    python::PythonSample,
    stack::{Gap, RawSample, StackRead},
};

/// How long a sample that read the old generation number may still be
/// writing. BPF programs run to completion in microseconds; this is ample.
const IN_FLIGHT_GRACE: Duration = Duration::from_millis(2);

impl Sampler {
    /// Everything counted since the last drain.
    ///
    /// Flips the generation so new samples go to the other pair of maps, then
    /// reads and clears the pair that is now idle. Nothing is lost between the
    /// read and the clear, and the kernel never waits for us.
    pub fn drain(&mut self) -> Result<Vec<RawSample>> {
        let idle = self.generation as usize;
        self.generation ^= 1;
        self.control
            .set(CONTROL_GENERATION, self.generation, 0)
            .context("switching the sample generation")?;
        std::thread::sleep(IN_FLIGHT_GRACE);

        let counts = &mut self.counts[idle];
        let entries: Vec<_> = counts
            .iter()
            .collect::<Result<_, MapError>>()
            .context("reading counts")?;
        for (key, _) in &entries {
            // A key missing here was removed already; nothing else removes keys.
            let _ = counts.remove(key);
        }

        let stacks = &mut self.stacks[idle];
        let mut read = HashMap::new();
        let mut stack = |id: i32| -> StackRead {
            if id == STACK_NOT_COLLECTED {
                return StackRead::NotCollected;
            }
            if id < 0 {
                return StackRead::Missing(Gap::Failed(-id));
            }
            read.entry(id)
                .or_insert_with(|| match stacks.get(&(id as u32), 0) {
                    Ok(trace) => {
                        StackRead::Addresses(trace.frames().iter().map(|f| f.ip).collect())
                    }
                    Err(_) => StackRead::Missing(Gap::Vanished),
                })
                .clone()
        };
        let samples = entries
            .into_iter()
            .map(|(key, count)| RawSample {
                tgid: key.tgid,
                tid: key.tid,
                comm: comm_string(&key.comm),
                user: stack(key.user_stack_id),
                kernel: stack(key.kernel_stack_id),
                count,
            })
            .collect();

        let ids: Vec<u32> = stacks.stack_ids().filter_map(Result::ok).collect();
        for id in ids {
            let _ = stacks.remove(&id);
        }
        Ok(samples)
    }
}

/// A thread's stacks as the kernel sent them, borrowed from the ring buffer
/// or from a task iterator's output.
pub struct CopiedSample<'a> {
    /// Why it was taken: on a CPU, switched out, or in a dump.
    pub kind: RecordKind,
    pub tgid: u32,
    pub tid: u32,
    /// The thread's name when the record was taken.
    pub comm: String,
    /// The raw `task_struct.__state` (0 for samples taken on a CPU, and for
    /// threads preempted while runnable).
    pub state: u32,
    /// The system call a dumped thread is in, if any.
    pub syscall: Option<i32>,
    /// CLOCK_MONOTONIC nanoseconds when it was taken.
    pub time_ns: u64,
    pub user: UserStack<'a>,
    pub kernel: StackRead,
    /// The interpreter's frames, for threads of Python processes.
    pub python: PythonSample,
}

/// The user half of a [`CopiedSample`].
pub enum UserStack<'a> {
    /// User registers (ip, sp, bp) and the top of the user stack from `sp`
    /// upwards, to unwind in userspace.
    Copy {
        regs: (u64, u64, u64),
        stack: &'a [u8],
    },
    /// Addresses the kernel walked with frame pointers, innermost first.
    Addresses(Vec<u64>),
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
pub enum Record<'a> {
    Stack(CopiedSample<'a>),
    Woke(Wake),
}

impl Sampler {
    /// Hands every record waiting in the ring buffer to `handle`, oldest
    /// first. Cheap when there is none: no system call is made.
    pub fn drain_copies(&mut self, mut handle: impl FnMut(Record<'_>)) {
        while let Some(record) = self.copies.next() {
            if let Some(record) = parse_record(&record) {
                handle(record);
            }
        }
    }
}

fn parse_record(record: &[u8]) -> Option<Record<'_>> {
    let kind = u32::from_ne_bytes(record.get(..4)?.try_into().ok()?);
    if RecordKind::from_u32(kind)? == RecordKind::Woke {
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

/// Hands each record of a task iterator's output to `handle`.
pub(super) fn parse_snapshots(mut bytes: &[u8], mut handle: impl FnMut(CopiedSample<'_>)) {
    while let Some((sample, len)) = parse_copy(bytes) {
        handle(sample);
        bytes = &bytes[len..];
    }
}

/// Reads a record laid out as [`StackCopy`], cut after its stack bytes and
/// Python frames, and its length in bytes.
fn parse_copy(record: &[u8]) -> Option<(CopiedSample<'_>, usize)> {
    let header_size = std::mem::size_of::<StackCopyHeader>();
    if record.len() < StackCopy::STACK_OFFSET {
        return None;
    }
    // SAFETY: the record holds at least a header; StackCopyHeader is plain data.
    let header: StackCopyHeader = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
    let kind = RecordKind::from_u32(header.kind)?;
    let kernel = match header.kernel_error {
        error if error < 0 => StackRead::Missing(Gap::Failed(-error)),
        _ => {
            let frames = (header.kernel_frames as usize).min(MAX_STACK_DEPTH);
            StackRead::Addresses(words(&record[header_size..header_size + 8 * frames]))
        }
    };
    let stack_end = StackCopy::STACK_OFFSET + header.stack_len as usize;
    let stack = record.get(StackCopy::STACK_OFFSET..stack_end)?;
    let user = match (header.no_user, header.user_frames) {
        (0, 0) => UserStack::Copy {
            regs: (header.ip, header.sp, header.bp),
            stack,
        },
        (0, _) => UserStack::Addresses(words(stack)),
        _ => UserStack::Absent,
    };
    let python_start = StackCopy::STACK_OFFSET + StackCopy::python_offset(header.stack_len);
    let python_frames = (header.python_frames as usize).min(MAX_PYTHON_FRAMES);
    let frame_size = std::mem::size_of::<PythonFrame>();
    let python = record.get(python_start..python_start + python_frames * frame_size)?;
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
    let sample = CopiedSample {
        kind,
        tgid: header.tgid,
        tid: header.tid,
        comm: comm_string(&header.comm),
        state: header.state,
        syscall: (header.syscall >= 0).then_some(header.syscall),
        time_ns: header.time_ns,
        user,
        kernel,
        python,
    };
    let len = StackCopy::record_len(header.stack_len, python_frames as u32);
    Some((sample, len))
}

fn words(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|b| u64::from_ne_bytes(b.try_into().unwrap()))
        .collect()
}

/// The thread's name, which the thread chose: control characters escaped.
fn comm_string(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    crate::text::escape_controls_owned(String::from_utf8_lossy(&comm[..end]).into_owned())
}
