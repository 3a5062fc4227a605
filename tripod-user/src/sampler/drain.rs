//! Reading what the kernel counted, one generation at a time, and the
//! records waiting in the ring buffer.
use std::{collections::HashMap, time::Duration};

use anyhow::{Context as _, Result};
use aya::maps::MapError;
use tripod_common::{CONTROL_GENERATION, STACK_NOT_COLLECTED};

use super::{
    records::{comm_string, parse_record, Record},
    Sampler,
};
use crate::stack::{Gap, RawSample, StackRead};

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
        self.wait_for_old_generation();

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

    /// Returns once no eBPF program can still write into the generation just
    /// made idle.
    ///
    /// The flip is one array write; a `perf_event` program that read the
    /// generation word just before it may still be adding its sample to
    /// the old maps. Reading and clearing them under it would drop that
    /// sample (an increment between our read and our delete), or delete a
    /// stack its key still names. So the order is explicit:
    ///
    /// 1. the flip is written (the `bpf` syscall returns after the store);
    /// 2. `membarrier(MEMBARRIER_CMD_GLOBAL)` waits for an RCU grace period
    ///    (`synchronize_rcu`): every program running when it was called,
    ///    each one in an RCU read-side section (NMI and IRQ context
    ///    included), has returned, and every program that starts after it
    ///    reads the new generation;
    /// 3. only then are the idle maps read and cleared.
    ///
    /// When the kernel never writes the count maps (stacks are copied to
    /// the ring buffer instead: `--unwind dwarf` and `auto`), there is
    /// nothing to wait for. The ring buffer needs no such care: a record is
    /// handed to us only once its writer has committed it.
    fn wait_for_old_generation(&self) {
        if !self.counts_in_kernel {
            return;
        }
        // SAFETY: membarrier takes no pointers; GLOBAL is allowed unprivileged.
        let done = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
        if done != 0 {
            // nohz_full kernels refuse it (EINVAL). BPF programs run to
            // completion in microseconds, so a wait far longer than that
            // stands in for the barrier there.
            log::debug!(
                "membarrier: {}; waiting {IN_FLIGHT_FALLBACK:?} instead",
                std::io::Error::last_os_error()
            );
            std::thread::sleep(IN_FLIGHT_FALLBACK);
        }
    }
}

/// `MEMBARRIER_CMD_GLOBAL` from `linux/membarrier.h` (Linux 4.16; named
/// `MEMBARRIER_CMD_SHARED` since 4.3): waits for an RCU grace period.
const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;

/// Stands in for the barrier where the kernel refuses it (see
/// [`Sampler::wait_for_old_generation`]).
const IN_FLIGHT_FALLBACK: Duration = Duration::from_millis(2);
