//! Records that reached userspace before the sideband records that locate
//! them: a sample taken just before a drain may lie in a mapping whose MMAP2
//! record the sideband hands over only at the next drain (its watermark
//! trails the drain by the time a record may be in flight). Such records
//! wait here, in the order they came, until a watermark passes them.
//!
//! Bounded: past [`MAX_HELD`] records, or [`MAX_HELD_BYTES`] of stack
//! copies, the oldest is handed on at once (it is
//! then located as well as the records known allow, as without a sideband),
//! and counted.
use std::collections::VecDeque;

use crate::sampler::{Record, Sample, UserStack, Wake};

/// Records held at most. A 50 ms drain period at 999 Hz on 64 CPUs is some
/// 3,200 samples; a held sample with an 8 KiB stack copy costs about 8 KiB.
pub const MAX_HELD: usize = 16_384;

/// Bytes of stack copies held at most: a machine too busy to drain in time
/// must not grow the sampler by the size of every stack it copied.
pub const MAX_HELD_BYTES: usize = 16 << 20;

/// The user registers (ip, sp, bp) and stack bytes of a copied stack.
type CopiedUserStack = ((u64, u64, u64), Box<[u8]>);

/// A record kept past its drain: its stack copy owned.
enum HeldRecord {
    Stack {
        sample: Sample<'static>,
        copy: Option<CopiedUserStack>,
    },
    Woke(Wake),
}

impl HeldRecord {
    /// The bytes of its stack copy.
    fn bytes(&self) -> usize {
        match self {
            HeldRecord::Stack {
                copy: Some((_, stack)),
                ..
            } => stack.len(),
            _ => 0,
        }
    }

    fn time_ns(&self) -> u64 {
        match self {
            HeldRecord::Stack { sample, .. } => sample.time_ns,
            HeldRecord::Woke(wake) => wake.end_ns,
        }
    }

    fn keep(record: Record<'_>) -> HeldRecord {
        let sample = match record {
            Record::Woke(wake) => return HeldRecord::Woke(wake),
            Record::Stack(sample) => sample,
        };
        let mut sample = sample;
        let user = std::mem::replace(&mut sample.user, UserStack::Absent);
        let (user, copy) = match user {
            UserStack::Copy { regs, stack } => (UserStack::Absent, Some((regs, stack.into()))),
            UserStack::Walked(read) => (UserStack::Walked(read), None),
            UserStack::Absent => (UserStack::Absent, None),
        };
        let sample = with_user(sample, user);
        HeldRecord::Stack { sample, copy }
    }

    /// Hands the record to `handle`, its stack copy borrowed again.
    fn hand_over(self, handle: &mut dyn FnMut(Record<'_>)) {
        match self {
            HeldRecord::Woke(wake) => handle(Record::Woke(wake)),
            HeldRecord::Stack { sample, copy: None } => handle(Record::Stack(sample)),
            HeldRecord::Stack {
                sample,
                copy: Some((regs, stack)),
            } => {
                let user = UserStack::Copy {
                    regs,
                    stack: &stack,
                };
                handle(Record::Stack(with_user(sample, user)))
            }
        }
    }
}

/// `sample` with another user half (of another lifetime, which struct
/// update syntax cannot change).
fn with_user<'a>(sample: Sample<'_>, user: UserStack<'a>) -> Sample<'a> {
    Sample {
        kind: sample.kind,
        count: sample.count,
        tgid: sample.tgid,
        tid: sample.tid,
        comm: sample.comm,
        cgroup_id: sample.cgroup_id,
        state: sample.state,
        syscall: sample.syscall,
        time_ns: sample.time_ns,
        user,
        kernel: sample.kernel,
        python: sample.python,
    }
}

/// The time a record was taken: a sample's, or a wake's end.
pub fn record_time_ns(record: &Record<'_>) -> u64 {
    match record {
        Record::Stack(sample) => sample.time_ns,
        Record::Woke(wake) => wake.end_ns,
    }
}

/// Records waiting for a watermark, oldest first, and what waiting did.
#[derive(Default)]
pub struct Held {
    queue: VecDeque<HeldRecord>,
    /// Bytes of stack copies in `queue`.
    bytes: usize,
    /// Records that waited for a later drain.
    pub waited: u64,
    /// Records handed on before their watermark because the queue was full.
    pub overflowed: u64,
}

impl Held {
    /// Hands `handle` the records older than `watermark_ns`, oldest first.
    pub fn release(&mut self, watermark_ns: u64, handle: &mut dyn FnMut(Record<'_>)) {
        while self
            .queue
            .front()
            .is_some_and(|r| r.time_ns() < watermark_ns)
        {
            let record = self.pop_oldest().expect("checked");
            record.hand_over(handle);
        }
    }

    /// Takes `record` if it must wait for `watermark_ns` (it is younger, or
    /// older ones wait: the order of records is kept); else hands it to
    /// `handle` at once.
    pub fn take(
        &mut self,
        record: Record<'_>,
        watermark_ns: u64,
        handle: &mut dyn FnMut(Record<'_>),
    ) {
        if self.queue.is_empty() && record_time_ns(&record) < watermark_ns {
            handle(record);
            return;
        }
        let record = HeldRecord::keep(record);
        while self.queue.len() >= MAX_HELD || self.bytes + record.bytes() > MAX_HELD_BYTES {
            let Some(oldest) = self.pop_oldest() else {
                break;
            };
            self.overflowed += 1;
            oldest.hand_over(handle);
        }
        self.waited += 1;
        self.bytes += record.bytes();
        self.queue.push_back(record);
    }

    fn pop_oldest(&mut self) -> Option<HeldRecord> {
        let oldest = self.queue.pop_front()?;
        self.bytes -= oldest.bytes();
        Some(oldest)
    }

    /// Hands over everything held (the run ends: no later record will come).
    pub fn flush(&mut self, handle: &mut dyn FnMut(Record<'_>)) {
        self.release(u64::MAX, handle);
    }

    /// When the oldest record held was taken.
    pub fn oldest_ns(&self) -> Option<u64> {
        self.queue.front().map(HeldRecord::time_ns)
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(time_ns: u64, stack: &[u8]) -> Record<'_> {
        Record::Stack(Sample {
            time_ns,
            user: UserStack::Copy {
                regs: (1, 2, 3),
                stack,
            },
            ..Sample::on_cpu(7, 7, "t")
        })
    }

    #[test]
    fn younger_records_wait_in_order_with_their_stack_copies() {
        let mut held = Held::default();
        let mut out = Vec::new();
        let mut handle = |r: Record<'_>| match r {
            Record::Stack(s) => match s.user {
                UserStack::Copy { stack, .. } => out.push((s.time_ns, stack.to_vec())),
                _ => panic!("the copy is kept"),
            },
            Record::Woke(_) => panic!("no wakes here"),
        };
        held.take(sample(5, &[1]), 10, &mut handle);
        held.take(sample(15, &[2]), 10, &mut handle);
        // Older than the watermark, but after one that waits: it waits too.
        held.take(sample(8, &[3]), 10, &mut handle);
        assert_eq!(held.oldest_ns(), Some(15));
        held.release(20, &mut handle);
        assert!(held.is_empty());
        assert_eq!(out, [(5, vec![1]), (15, vec![2]), (8, vec![3])]);
        assert_eq!((held.waited, held.overflowed), (2, 0));
    }

    #[test]
    fn a_full_queue_hands_on_its_oldest() {
        let mut held = Held::default();
        let mut count = 0;
        for time in 0..MAX_HELD as u64 + 2 {
            held.take(sample(100 + time, &[]), 10, &mut |_| count += 1);
        }
        assert_eq!(held.len(), MAX_HELD);
        assert_eq!((count, held.overflowed), (2, 2));
    }

    #[test]
    fn stack_copies_are_held_up_to_their_byte_limit() {
        let mut held = Held::default();
        let mut count = 0;
        let copy = vec![0u8; MAX_HELD_BYTES / 4];
        for time in 0..6 {
            held.take(sample(100 + time, &copy), 10, &mut |_| count += 1);
        }
        assert_eq!((held.len(), held.bytes), (4, MAX_HELD_BYTES));
        assert_eq!((count, held.overflowed), (2, 2));
        held.flush(&mut |_| count += 1);
        assert_eq!((held.len(), held.bytes, count), (0, 0, 6));
    }
}
