//! Reading what the kernel counted, one generation at a time, and the
//! records waiting in the ring buffer.
//!
//! A drain of the count maps (`--unwind fp`, and `--unwind tables` on
//! CPUs, whose walked stacks are counted there too) has three steps, so the async
//! runtime's thread never waits on the kernel: [`Sampler::flip_generation`] points new
//! samples at the other pair of maps, [`Flip::settled`] waits (on a
//! blocking thread) until no eBPF program can still write the old pair, and
//! [`Sampler::read_generation`] reads and clears it.
use std::{
    collections::HashMap,
    os::fd::{AsFd as _, AsRawFd as _},
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap as AyaHashMap, IterableMap as _, MapData, MapError};
use tripod_common::{
    stack_source, Counter, SampleCount, SampleKey, WalkedStack, CONTROL_GENERATION,
    CONTROL_READER_TICKING, STACK_NOT_COLLECTED,
};

use super::{
    batch,
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
    /// Nothing was flipped: the kernel counted no sample since the last
    /// flip, so there is nothing to read.
    empty: bool,
    /// Samples the kernel took for the generation made idle, if known: at
    /// most that many entries to read (see [`batch::lookup_and_delete_all`]).
    samples: Option<u64>,
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
            empty: false,
            samples: None,
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
        // Read before the flip: a sample counted after this read either
        // lands in the generation flipped now, or changes the next read.
        let samples = self
            .counts_in_kernel
            .then(|| self.samples_taken())
            .flatten();
        if samples.is_some() && samples == self.samples_at_flip {
            return Ok(Flip {
                idle: self.generation,
                in_flight: false,
                empty: true,
                samples: Some(0),
            });
        }
        let taken = samples
            .zip(self.samples_at_flip)
            .map(|(now, before)| now.saturating_sub(before));
        self.samples_at_flip = samples;
        let idle = self.generation;
        self.generation ^= 1;
        self.control
            .set(CONTROL_GENERATION, self.generation, 0)
            .context("switching the sample generation")?;
        Ok(Flip {
            idle,
            in_flight: self.counts_in_kernel,
            empty: false,
            samples: taken,
        })
    }

    /// The kernel's count of samples that passed the filters, all CPUs;
    /// `None` when it cannot be read.
    fn samples_taken(&self) -> Option<u64> {
        let per_cpu = self.counters.get(&(Counter::Samples as u32), 0).ok()?;
        Some(per_cpu.iter().sum())
    }

    /// Tells the eBPF programs whether we read the rings on a timer (see
    /// [`tripod_common::CONTROL_READER_TICKING`]); written only on a change.
    pub(super) fn set_reader_ticking(&mut self, ticking: bool) -> Result<()> {
        if self.reader_ticking != ticking {
            self.control
                .set(CONTROL_READER_TICKING, u32::from(ticking), 0)
                .context("telling the kernel how the rings are read")?;
            self.reader_ticking = ticking;
        }
        Ok(())
    }

    /// Everything counted in the generation `settled` made idle; its maps
    /// are cleared for the next flip. Nothing is lost between the read and
    /// the clear, and the kernel never waits for us.
    pub(super) fn read_generation(
        &mut self,
        Settled(flip): Settled,
    ) -> Result<Vec<Sample<'static>>> {
        if flip.empty {
            return Ok(Vec::new());
        }
        let idle = flip.idle as usize;
        let expected = flip.samples.map_or(batch::BATCH_ENTRIES, |n| n as usize);
        let entries = take_counts(&mut self.counts[idle], expected)?;
        // Read only when something may be there: each read walks every
        // bucket of the map, an idle machine's drains mostly find none.
        let orphans = self.count_map_full_changed();
        let sent_whole = self.stack_map_sent_changed();
        let names_walked = entries
            .iter()
            .any(|(key, _)| key.user_stack_source == stack_source::WALKED);
        let walked = match self.tables.is_some() && (names_walked || orphans || sent_whole) {
            true => take_walked(&self.walked[idle], expected),
            false => HashMap::new(),
        };
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
            .map(|(key, count)| counted_sample(&key, count, &walked, &mut stack))
            .collect();

        // The stacks the counts named are cleared by id. Others are left
        // only when a count did not fit in a full map after its stacks were
        // stored: then the whole map is walked (a stack trace map has no
        // batch operations).
        let stacks = &mut self.stacks[idle];
        let ids: Vec<u32> = match orphans {
            false => read.keys().map(|&id| id as u32).collect(),
            true => stacks.stack_ids().filter_map(Result::ok).collect(),
        };
        for id in ids {
            let _ = stacks.remove(&id);
        }
        Ok(samples)
    }

    /// Whether the kernel counted samples lost to a full count map since
    /// the last call (an unreadable counter counts as a change).
    fn count_map_full_changed(&mut self) -> bool {
        let now = self.counter_sum(Counter::CountMapFull);
        std::mem::replace(&mut self.count_map_full, now) != now
    }

    /// Whether the kernel sent samples whole since the last call because
    /// the stack map refused a stack (see [`Counter::StackMapSent`]): their
    /// walked stacks were stored, but no count names them.
    fn stack_map_sent_changed(&mut self) -> bool {
        let now = self.counter_sum(Counter::StackMapSent);
        std::mem::replace(&mut self.stack_map_sent, now) != now
    }

    /// `counter` over all CPUs; `u64::MAX` when it cannot be read.
    fn counter_sum(&self, counter: Counter) -> u64 {
        self.counters
            .get(&(counter as u32), 0)
            .map(|per_cpu| per_cpu.iter().sum::<u64>())
            .unwrap_or(u64::MAX)
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

/// Every entry of a count map, which is left empty: by batches, or key by
/// key on kernels without batch operations (before 5.6).
fn take_counts(
    counts: &mut AyaHashMap<MapData, SampleKey, SampleCount>,
    expected: usize,
) -> Result<Vec<(SampleKey, SampleCount)>> {
    let fd = counts.map().fd().as_fd().as_raw_fd();
    match batch::lookup_and_delete_all(fd, expected) {
        Ok(entries) => return Ok(entries),
        Err(error) => log::debug!("batch lookup and delete: {error}; reading key by key"),
    }
    let entries: Vec<(SampleKey, SampleCount)> = counts
        .iter()
        .collect::<Result<_, MapError>>()
        .context("reading counts")?;
    for (key, _) in &entries {
        // A key missing here was removed already; nothing else removes keys.
        let _ = counts.remove(key);
    }
    Ok(entries)
}

/// Every stack of a walked-stack map (`--unwind tables`), which is left
/// empty, by id. A map that cannot be read leaves its counts' user stacks
/// [`Gap::Vanished`], as a lost stack-trace entry does.
fn take_walked(
    walked: &AyaHashMap<MapData, u32, WalkedStack>,
    expected: usize,
) -> HashMap<u32, Vec<u64>> {
    let fd = walked.map().fd().as_fd().as_raw_fd();
    match batch::lookup_and_delete_all::<u32, WalkedStack>(fd, expected) {
        Ok(entries) => walked_addresses(entries),
        Err(error) => {
            log::debug!("reading the walked stacks: {error}");
            HashMap::new()
        }
    }
}

/// The walked stacks by id, as addresses (see [`WalkedStack::addresses`]).
fn walked_addresses(entries: Vec<(u32, WalkedStack)>) -> HashMap<u32, Vec<u64>> {
    entries
        .into_iter()
        .map(|(id, stack)| (id, stack.addresses().to_vec()))
        .collect()
}

/// The user stack a count key names: in the stack-trace map (`stack`), or
/// among the `walked` stacks (`--unwind tables`).
fn user_stack(
    key: &SampleKey,
    walked: &HashMap<u32, Vec<u64>>,
    stack: &mut impl FnMut(i32) -> StackRead,
) -> StackRead {
    if key.user_stack_source != stack_source::WALKED {
        return stack(key.user_stack_id);
    }
    match walked.get(&(key.user_stack_id as u32)) {
        Some(addresses) => StackRead::Addresses(addresses.clone()),
        None => StackRead::Missing(Gap::Vanished),
    }
}

/// How often the count maps of `--unwind fp` are drained when nothing else
/// (the status line, `--interval`, the end of the run) drains them sooner:
/// often enough that they stay a quarter full at most even if every sample
/// stored new stacks. A stack trace map is direct-mapped, so its occupancy
/// is the chance that a new stack collides and is lost; each sample may
/// store two stacks (user and kernel) and add one count key.
pub fn count_drain_period(
    count_map_size: u32,
    stack_storage_size: u32,
    samples_per_second: u64,
) -> Duration {
    let room = u64::from(count_map_size.min(stack_storage_size / 2)) / 4;
    let millis = room.saturating_mul(1000) / samples_per_second.max(1);
    Duration::from_millis(millis).clamp(MIN_COUNT_DRAIN, MAX_COUNT_DRAIN)
}

/// The count maps are drained at least this far apart: twice a second, as
/// before the drain followed the reporting cadence.
const MIN_COUNT_DRAIN: Duration = Duration::from_millis(500);

/// ... and at least this often, so a run's memory of what it counted is
/// never far behind the kernel.
const MAX_COUNT_DRAIN: Duration = Duration::from_secs(10);

/// One entry of the count map as a sample taken on a CPU, `count` times,
/// timed at the first of them: every sample of a key has the same comm and
/// addresses, so the same image.
fn counted_sample(
    key: &SampleKey,
    count: SampleCount,
    walked: &HashMap<u32, Vec<u64>>,
    stack: &mut impl FnMut(i32) -> StackRead,
) -> Sample<'static> {
    Sample {
        count: count.count,
        time_ns: count.first_ns,
        user: UserStack::Walked(user_stack(key, walked, stack)),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(user_stack_id: i32, user_stack_source: u32) -> SampleKey {
        SampleKey {
            tgid: 10,
            tid: 11,
            user_stack_id,
            kernel_stack_id: STACK_NOT_COLLECTED,
            comm: *b"chain_nofp\0\0\0\0\0\0",
            cgroup_id: 1,
            user_stack_source,
            _reserved: 0,
        }
    }

    fn walked_stack(frames: &[u64]) -> WalkedStack {
        let mut stack = WalkedStack {
            frames: [0xdead; tripod_common::MAX_TABLE_FRAMES],
            len: frames.len() as u64,
        };
        stack.frames[..frames.len()].copy_from_slice(frames);
        stack
    }

    #[test]
    fn walked_ids_name_the_walked_map_and_others_the_stack_map() {
        // Id 7 in both maps, with different stacks: the source picks one.
        let walked = walked_addresses(vec![
            (7, walked_stack(&[0x401000, 0x401100, 0x401200])),
            (0x8000_0001, walked_stack(&[0x500000])),
        ]);
        let asked = std::cell::RefCell::new(Vec::new());
        let mut stack_map = |id: i32| {
            asked.borrow_mut().push(id);
            StackRead::Addresses(vec![0xffff_0000])
        };
        let count = SampleCount {
            count: 5,
            first_ns: 42,
        };
        let sample = counted_sample(
            &key(7, stack_source::WALKED),
            count,
            &walked,
            &mut stack_map,
        );
        assert_eq!(
            sample.user,
            UserStack::Walked(StackRead::Addresses(vec![0x401000, 0x401100, 0x401200]))
        );
        assert_eq!((sample.count, sample.time_ns, sample.tid), (5, 42, 11));
        // An id past i32::MAX is a walked id like any other, not an errno.
        let high = key(0x8000_0001_u32 as i32, stack_source::WALKED);
        assert_eq!(
            user_stack(&high, &walked, &mut stack_map),
            StackRead::Addresses(vec![0x500000])
        );
        // Only the kernel stack was asked of the stack map so far.
        assert_eq!(*asked.borrow(), [STACK_NOT_COLLECTED]);
        let fp = user_stack(&key(7, stack_source::STACK_MAP), &walked, &mut stack_map);
        assert_eq!(fp, StackRead::Addresses(vec![0xffff_0000]));
        assert_eq!(*asked.borrow(), [STACK_NOT_COLLECTED, 7]);
    }

    #[test]
    fn a_walked_id_missing_from_the_map_is_a_vanished_stack() {
        let walked = walked_addresses(vec![(1, walked_stack(&[0x401000]))]);
        let mut stack_map = |_| panic!("not a stack-map id");
        assert_eq!(
            user_stack(&key(2, stack_source::WALKED), &walked, &mut stack_map),
            StackRead::Missing(Gap::Vanished)
        );
    }

    #[test]
    fn the_count_drain_keeps_the_maps_a_quarter_full_within_bounds() {
        // Defaults (65,536 counts, 16,384 stacks): 2,048 samples of room.
        assert_eq!(
            count_drain_period(65_536, 16_384, 2 * 999),
            Duration::from_millis(1025)
        );
        // 99 Hz on 2 CPUs would allow 10.3 s: capped.
        assert_eq!(count_drain_period(65_536, 16_384, 2 * 99), MAX_COUNT_DRAIN);
        // A small count map is the limit then.
        assert_eq!(
            count_drain_period(4_000, 16_384, 1_000),
            Duration::from_millis(1000)
        );
        // Never more often than twice a second, however fast.
        assert_eq!(count_drain_period(1, 2, 1_000_000), MIN_COUNT_DRAIN);
        assert_eq!(count_drain_period(1, 2, 0), MIN_COUNT_DRAIN);
    }
}
