//! Reading what the kernel counted, one generation at a time, and the
//! records waiting in the ring buffer.
//!
//! A drain of the count maps (`--unwind fp`) has three steps, so the async
//! runtime's thread never waits on the kernel: [`Sampler::flip_generation`] points new
//! samples at the other pair of maps, [`Flip::settled`] waits (on a
//! blocking thread) until no eBPF program can still write the old pair, and
//! [`Sampler::read_generation`] reads and clears it.
use std::{collections::HashMap, time::Duration};

use anyhow::{Context as _, Result};
use aya::maps::MapError;
use tripod_common::{SampleCount, SampleKey, CONTROL_GENERATION, STACK_NOT_COLLECTED};

use super::{
    records::{comm_string, parse_record, Record, Sample, UserStack},
    Sampler,
};
use crate::stack::{Gap, StackRead};

/// A generation made idle by [`Sampler::flip_generation`]; its maps may be read once
/// [`Flip::settled`].
#[must_use = "a flipped generation is read with read_flipped once settled"]
#[derive(Debug)]
pub struct Flip {
    /// The generation made idle.
    idle: u32,
    /// Whether eBPF programs may still be writing it (see [`Flip::settled`]).
    in_flight: bool,
}

/// A [`Flip`] no eBPF program writes any more: its maps can be read and
/// cleared without losing a sample.
#[derive(Debug)]
pub struct Settled(Flip);

impl Flip {
    /// A flip with nothing in flight: for sources without a kernel.
    pub fn without_kernel() -> Flip {
        Flip {
            idle: 0,
            in_flight: false,
        }
    }

    /// Returns once no eBPF program can still write into the generation
    /// just made idle. The wait runs on the runtime's blocking pool.
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
    /// A grace period takes 8 to 30 ms on these machines: long enough that
    /// it must not hold the runtime's thread, which also polls the ring
    /// buffer and answers signals.
    pub async fn settled(self) -> Settled {
        if self.in_flight {
            // A failed join (the blocking pool shutting down) leaves only
            // the fallback's guarantee, which the barrier's absence gives.
            let _ = tokio::task::spawn_blocking(wait_for_grace_period).await;
        }
        Settled(self)
    }
}

impl Sampler {
    /// Points new samples at the other pair of count maps; the pair made
    /// idle is read by [`Sampler::read_generation`] once [`Flip::settled`].
    /// When the kernel never writes the count maps (stacks are copied to
    /// the ring buffer instead: `--unwind dwarf` and `auto`), nothing is in
    /// flight. The ring buffer needs no such care: a record is handed to us
    /// only once its writer has committed it.
    pub(super) fn flip_generation(&mut self) -> Result<Flip> {
        let idle = self.generation;
        self.generation ^= 1;
        self.control
            .set(CONTROL_GENERATION, self.generation, 0)
            .context("switching the sample generation")?;
        Ok(Flip {
            idle,
            in_flight: self.counts_in_kernel,
        })
    }

    /// Everything counted in the generation `settled` made idle; its maps
    /// are cleared for the next flip. Nothing is lost between the read and
    /// the clear, and the kernel never waits for us.
    pub(super) fn read_generation(
        &mut self,
        Settled(flip): Settled,
    ) -> Result<Vec<Sample<'static>>> {
        let idle = flip.idle as usize;
        let counts = &mut self.counts[idle];
        let entries: Vec<(SampleKey, SampleCount)> = counts
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
            .map(|(key, count)| counted_sample(&key, count, &mut stack))
            .collect();

        let ids: Vec<u32> = stacks.stack_ids().filter_map(Result::ok).collect();
        for id in ids {
            let _ = stacks.remove(&id);
        }
        Ok(samples)
    }

    /// Hands every record waiting in the ring buffer to `handle`, oldest
    /// first. Cheap when there is none: no system call is made.
    pub(super) fn drain_ring(&mut self, handle: &mut dyn FnMut(Record<'_>)) {
        while let Some(record) = self.copies.next() {
            if let Some(record) = parse_record(&record) {
                handle(record);
            }
        }
    }
}

/// One entry of the count map as a sample taken on a CPU, `count` times,
/// timed at the first of them: every sample of a key has the same comm and
/// addresses, so the same image.
fn counted_sample(
    key: &SampleKey,
    count: SampleCount,
    stack: &mut impl FnMut(i32) -> StackRead,
) -> Sample<'static> {
    Sample {
        count: count.count,
        time_ns: count.first_ns,
        user: UserStack::Walked(stack(key.user_stack_id)),
        kernel: stack(key.kernel_stack_id),
        cgroup_id: key.cgroup_id,
        ..Sample::on_cpu(key.tgid, key.tid, &comm_string(&key.comm))
    }
}

/// Waits for an RCU grace period (see [`Flip::settled`]).
fn wait_for_grace_period() {
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

/// `MEMBARRIER_CMD_GLOBAL` from `linux/membarrier.h` (Linux 4.16; named
/// `MEMBARRIER_CMD_SHARED` since 4.3): waits for an RCU grace period.
const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;

/// Stands in for the barrier where the kernel refuses it (see
/// [`Flip::settled`]).
const IN_FLIGHT_FALLBACK: Duration = Duration::from_millis(2);
