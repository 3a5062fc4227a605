//! Reading what the kernel counted, one generation at a time.
use std::{collections::HashMap, time::Duration};

use anyhow::{Context as _, Result};
use aya::maps::MapError;
use tripod_common::{
    StackCopy, StackCopyHeader, CONTROL_GENERATION, MAX_STACK_DEPTH, STACK_NOT_COLLECTED,
};

use super::Sampler;
use crate::stack::{Gap, RawSample, StackRead};

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

/// One sample sent for unwinding in userspace, borrowed from the ring buffer.
pub struct CopiedSample<'a> {
    pub tgid: u32,
    pub tid: u32,
    /// The thread's name at sample time.
    pub comm: String,
    /// User registers (ip, sp, bp); `None` for threads without user space.
    pub user_regs: Option<(u64, u64, u64)>,
    /// The top of the user stack, from `sp` upwards.
    pub stack: &'a [u8],
    pub kernel: StackRead,
}

impl Sampler {
    /// Hands every stack copy waiting in the ring buffer to `handle`, oldest
    /// first. Cheap when there is none: no system call is made.
    pub fn drain_copies(&mut self, mut handle: impl FnMut(CopiedSample<'_>)) {
        while let Some(record) = self.copies.next() {
            if let Some(sample) = parse_copy(&record) {
                handle(sample);
            }
        }
    }
}

/// Reads a ring-buffer record laid out as [`StackCopy`], cut after its stack bytes.
fn parse_copy(record: &[u8]) -> Option<CopiedSample<'_>> {
    let header_size = std::mem::size_of::<StackCopyHeader>();
    if record.len() < StackCopy::STACK_OFFSET {
        return None;
    }
    // SAFETY: the record holds at least a header; StackCopyHeader is plain data.
    let header: StackCopyHeader = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
    let kernel = if header.kernel_error < 0 {
        StackRead::Missing(Gap::Failed(-header.kernel_error))
    } else {
        let frames = (header.kernel_frames as usize).min(MAX_STACK_DEPTH);
        let bytes = &record[header_size..header_size + 8 * frames];
        StackRead::Addresses(
            bytes
                .chunks_exact(8)
                .map(|b| u64::from_ne_bytes(b.try_into().unwrap()))
                .collect(),
        )
    };
    let stack_end = (StackCopy::STACK_OFFSET + header.stack_len as usize).min(record.len());
    Some(CopiedSample {
        tgid: header.tgid,
        tid: header.tid,
        comm: comm_string(&header.comm),
        user_regs: (header.no_user == 0).then_some((header.ip, header.sp, header.bp)),
        stack: &record[StackCopy::STACK_OFFSET..stack_end],
        kernel,
    })
}

fn comm_string(comm: &[u8]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}
