//! Counting samples by (thread, stack), with each distinct stack stored once.
//! Addresses only: symbols are attached to stacks by [`crate::resolve`].
//!
//! Memory stays bounded on machines that start processes all the time: once a
//! process has exited, its stacks are merged, by process name and by what the
//! frames show, into one pseudo-process per name ([`EXITED_PID`] in reports),
//! and everything kept per process is freed.
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use crate::{model::EXITED_PID, stack::RawFrame, task::TaskState};

/// Index of a distinct stack in a [`StackTable`].
pub type StackId = u32;

/// Which program image of its process a stack was sampled in, and when it
/// was first sampled: with the sideband, a pid may run two programs in turn
/// (an `exec`), whose equal addresses mean different code, and the stack is
/// located in the mappings in force when it was sampled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Origin {
    /// When the image began (see [`crate::mappings::ImageId`]); 0 for one
    /// from before the run, or when no records tell.
    pub image: u64,
    /// CLOCK_MONOTONIC ns of the first sample of the stack (for samples
    /// counted in the kernel, of the first of their count); 0 for a sample
    /// that carries no time: located in the latest image.
    pub time_ns: u64,
}

impl Origin {
    /// The time the stack's addresses are located at (see [`located_time`]).
    pub fn located_at(self) -> u64 {
        located_time(self.time_ns)
    }
}

/// The time a sample taken at `time_ns` is located at: then, or for a
/// sample without a time, in the latest image.
pub fn located_time(time_ns: u64) -> u64 {
    match time_ns {
        0 => u64::MAX - 1,
        time_ns => time_ns,
    }
}

/// A distinct stack of one process.
pub struct StackEntry {
    pub tgid: u32,
    pub origin: Origin,
    /// Innermost first, as sampled; empty for merged stacks of exited
    /// processes, which only the resolver's frames describe.
    pub raw: Arc<[RawFrame]>,
}

/// The stacks of one image of one process, by their frames.
type StacksOfImage = HashMap<Arc<[RawFrame]>, StackId>;

/// Each distinct (process, stack) once. User addresses mean nothing outside
/// their process, so the process is part of the identity.
#[derive(Default)]
pub struct StackTable {
    /// Per process, so a lookup can borrow the frames: known stacks (every
    /// sample but the first) cost no allocation.
    /// Keyed by image as well ([`Origin::image`]): one pid, two programs.
    ids: HashMap<u32, HashMap<u64, StacksOfImage>>,
    /// Indexed by id; `None` once freed (its id is then reused).
    entries: Vec<Option<StackEntry>>,
    free: Vec<StackId>,
}

impl StackTable {
    /// The id of this stack, and whether it is new (in no image known).
    pub fn intern(&mut self, tgid: u32, raw: &[RawFrame]) -> (StackId, bool) {
        self.intern_from(tgid, Origin::default(), raw)
    }

    /// The id of this stack of image `origin.image`, and whether it is new
    /// (then `origin` is kept with it).
    pub fn intern_from(&mut self, tgid: u32, origin: Origin, raw: &[RawFrame]) -> (StackId, bool) {
        let ids = self.ids.entry(tgid).or_default().entry(origin.image);
        if let Some(&id) = ids.or_default().get(raw) {
            return (id, false);
        }
        let raw: Arc<[RawFrame]> = raw.into();
        let entry = StackEntry {
            tgid,
            origin,
            raw: raw.clone(),
        };
        let id = self.insert(entry);
        let ids = self.ids.entry(tgid).or_default().entry(origin.image);
        ids.or_default().insert(raw, id);
        (id, true)
    }

    fn insert(&mut self, entry: StackEntry) -> StackId {
        match self.free.pop() {
            Some(id) => {
                self.entries[id as usize] = Some(entry);
                id
            }
            None => {
                self.entries.push(Some(entry));
                (self.entries.len() - 1) as StackId
            }
        }
    }

    /// The stack with this id; ids come from [`StackTable::intern`] and stay
    /// valid until their process is retired.
    pub fn get(&self, id: StackId) -> &StackEntry {
        self.entries[id as usize]
            .as_ref()
            .expect("stack ids are not used after their process is retired")
    }

    /// A new stack for [`EXITED_PID`], into which stacks of exited processes
    /// are merged: it has no addresses.
    pub fn add_merged(&mut self) -> StackId {
        self.insert(StackEntry {
            tgid: EXITED_PID,
            origin: Origin::default(),
            raw: Arc::from(Vec::new()),
        })
    }

    /// Frees every stack of `tgid`; returns their ids, which are reused.
    fn remove_process(&mut self, tgid: u32) -> Vec<StackId> {
        let mut freed = Vec::new();
        let images = self.ids.remove(&tgid).unwrap_or_default();
        for (_, id) in images.into_values().flatten() {
            self.entries[id as usize] = None;
            self.free.push(id);
            freed.push(id);
        }
        freed
    }

    /// Live stacks.
    pub fn len(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Where a count belongs: one thread, one stack, in one state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ThreadStack {
    pub tgid: u32,
    pub tid: u32,
    pub stack: StackId,
    /// Running for on-CPU samples; the state a thread waited in otherwise.
    pub state: TaskState,
}

/// Counts for the current interval and for the whole run.
#[derive(Default)]
pub struct Aggregator {
    pub stacks: StackTable,
    interval: HashMap<ThreadStack, u64>,
    run: HashMap<ThreadStack, u64>,
    /// Thread names as last sampled.
    thread_names: HashMap<u32, String>,
    /// The process name of each merged stack.
    exited_names: HashMap<StackId, Arc<str>>,
    /// The process name in each program image that began during the run
    /// (an exec), by (pid, [`Origin::image`]): a process that exec'd is
    /// named after the program each stack was sampled in.
    image_names: HashMap<(u32, u64), Arc<str>>,
    /// How many processes were merged so far.
    exited_processes: usize,
}

impl Aggregator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts `count` of `raw` on thread `tid` in `state`, in the one image
    /// a run without a sideband knows; returns the stack id and whether the
    /// stack is new. For tests: the pipeline uses [`Self::add_from`].
    #[cfg(test)]
    pub fn add(
        &mut self,
        tgid: u32,
        tid: u32,
        thread_name: &str,
        raw: &[RawFrame],
        state: TaskState,
        count: u64,
    ) -> (StackId, bool) {
        self.add_from(
            Origin::default(),
            (tgid, tid),
            thread_name,
            raw,
            state,
            count,
        )
    }

    /// Counts `count` of `raw` on thread `tid` in `state`, for a stack
    /// sampled in image `origin.image`; returns the stack id and whether the
    /// stack is new (and so needs symbolizing).
    pub fn add_from(
        &mut self,
        origin: Origin,
        (tgid, tid): (u32, u32),
        thread_name: &str,
        raw: &[RawFrame],
        state: TaskState,
        count: u64,
    ) -> (StackId, bool) {
        let (stack, new) = self.stacks.intern_from(tgid, origin, raw);
        let key = ThreadStack {
            tgid,
            tid,
            stack,
            state,
        };
        self.count(key, thread_name, count);
        (stack, new)
    }

    /// Counts `count` for a stack interned already.
    pub fn count(&mut self, key: ThreadStack, thread_name: &str, count: u64) {
        *self.interval.entry(key).or_default() += count;
        *self.run.entry(key).or_default() += count;
        if self.thread_names.get(&key.tid).map(String::as_str) != Some(thread_name) {
            self.thread_names.insert(key.tid, thread_name.to_string());
        }
    }

    /// The counts since the last call, leaving the interval empty.
    pub fn take_interval(&mut self) -> HashMap<ThreadStack, u64> {
        std::mem::take(&mut self.interval)
    }

    /// Counts over the whole run.
    pub fn run(&self) -> &HashMap<ThreadStack, u64> {
        &self.run
    }

    pub fn thread_name(&self, tid: u32) -> Option<&str> {
        self.thread_names.get(&tid).map(String::as_str)
    }

    /// Processes merged into [`EXITED_PID`] so far.
    pub fn exited_processes(&self) -> usize {
        self.exited_processes
    }

    /// The process name of a merged stack of exited processes.
    pub fn exited_name(&self, stack: StackId) -> Option<&str> {
        self.exited_names.get(&stack).map(|name| &**name)
    }

    /// Whether the image `image` of process `tgid` has a name already.
    pub fn has_image_name(&self, tgid: u32, image: u64) -> bool {
        self.image_names.contains_key(&(tgid, image))
    }

    /// Names the image `image` of process `tgid` (its main thread's name
    /// after the exec that began it).
    pub fn name_image(&mut self, tgid: u32, image: u64, name: &str) {
        self.image_names.insert((tgid, image), name.into());
    }

    /// The process name in the image stack `stack` was sampled in, when
    /// that image began during the run.
    pub fn image_name(&self, stack: StackId) -> Option<&str> {
        let entry = self.stacks.get(stack);
        let name = self.image_names.get(&(entry.tgid, entry.origin.image))?;
        Some(name)
    }

    /// Merges the counts of processes that exited (pid -> process name) into
    /// [`EXITED_PID`] stacks and frees what was kept for them; returns the
    /// ids of the stacks freed. `merged` names the stack each of their
    /// stacks merges into (by what its frames show; it may add one with
    /// [`StackTable::add_merged`]), so they must be symbolized first:
    /// addresses are gone afterwards.
    pub fn retire(
        &mut self,
        exited: &HashMap<u32, String>,
        mut merged: impl FnMut(&mut StackTable, &Arc<str>, StackId) -> StackId,
    ) -> Vec<StackId> {
        if exited.is_empty() {
            return Vec::new();
        }
        let mut tids = HashSet::new();
        for counts in [&mut self.interval, &mut self.run] {
            let keys: Vec<ThreadStack> = counts
                .keys()
                .filter(|k| exited.contains_key(&k.tgid))
                .copied()
                .collect();
            for key in keys {
                let count = counts.remove(&key).unwrap_or(0);
                tids.insert(key.tid);
                let image = self.stacks.get(key.stack).origin.image;
                let name: Arc<str> = match self.image_names.get(&(key.tgid, image)) {
                    Some(name) => name.clone(),
                    None => exited[&key.tgid].as_str().into(),
                };
                let stack = merged(&mut self.stacks, &name, key.stack);
                self.exited_names.insert(stack, name);
                let merged_key = ThreadStack {
                    tgid: EXITED_PID,
                    tid: EXITED_PID,
                    stack,
                    state: key.state,
                };
                *counts.entry(merged_key).or_default() += count;
            }
        }
        let mut freed = Vec::new();
        for &tgid in exited.keys() {
            freed.extend(self.stacks.remove_process(tgid));
        }
        for tid in tids {
            self.thread_names.remove(&tid);
        }
        self.image_names
            .retain(|(tgid, _), _| !exited.contains_key(tgid));
        self.exited_processes += exited.len();
        freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::Space;

    const RUNNING: TaskState = TaskState::Running;

    fn stack(addresses: &[u64]) -> Vec<RawFrame> {
        addresses
            .iter()
            .map(|&a| RawFrame::ReturnAddress(Space::User, a))
            .collect()
    }

    #[test]
    fn identical_stacks_merge_and_processes_stay_apart() {
        let mut agg = Aggregator::new();
        let (a, new_a) = agg.add(10, 11, "worker", &stack(&[1, 2, 3]), RUNNING, 5);
        let (b, new_b) = agg.add(10, 12, "worker", &stack(&[1, 2, 3]), RUNNING, 2);
        let (c, new_c) = agg.add(20, 20, "other", &stack(&[1, 2, 3]), RUNNING, 1);
        assert!(new_a && !new_b && new_c);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(agg.stacks.len(), 2);

        let interval = agg.take_interval();
        assert_eq!(
            interval[&ThreadStack {
                tgid: 10,
                tid: 11,
                stack: a,
                state: RUNNING,
            }],
            5
        );
        assert_eq!(
            interval[&ThreadStack {
                tgid: 10,
                tid: 12,
                stack: a,
                state: RUNNING,
            }],
            2
        );
        assert!(agg.take_interval().is_empty());

        agg.add(10, 11, "worker", &stack(&[1, 2, 3]), RUNNING, 1);
        assert_eq!(
            agg.run()[&ThreadStack {
                tgid: 10,
                tid: 11,
                stack: a,
                state: RUNNING,
            }],
            6
        );
        assert_eq!(agg.thread_name(12), Some("worker"));
    }

    #[test]
    fn per_thread_counts_and_interval_and_run_totals() {
        let mut agg = Aggregator::new();
        let (a, _) = agg.add(10, 11, "worker", &stack(&[1, 2]), RUNNING, 3);
        agg.add(10, 11, "worker", &stack(&[1, 2]), TaskState::Sleeping, 4);
        agg.add(10, 11, "renamed", &stack(&[1, 2]), RUNNING, 1);
        let interval = agg.take_interval();
        // One count per (thread, stack, state); the thread's latest name.
        assert_eq!(interval.len(), 2);
        let running = ThreadStack {
            tgid: 10,
            tid: 11,
            stack: a,
            state: RUNNING,
        };
        assert_eq!(interval[&running], 4);
        assert_eq!(agg.thread_name(11), Some("renamed"));
        agg.add(10, 11, "renamed", &stack(&[1, 2]), RUNNING, 2);
        assert_eq!(agg.take_interval()[&running], 2);
        assert_eq!(agg.run()[&running], 6);
        assert_eq!(agg.run().values().sum::<u64>(), 10);
    }

    #[test]
    fn stacks_of_an_image_begun_in_the_run_carry_its_name() {
        let mut agg = Aggregator::new();
        let before = Origin {
            image: 0,
            time_ns: 50,
        };
        let after = Origin {
            image: 100,
            time_ns: 150,
        };
        let (old, _) = agg.add_from(before, (10, 10), "sh", &stack(&[1]), RUNNING, 1);
        let (new, _) = agg.add_from(after, (10, 10), "worker", &stack(&[1]), RUNNING, 1);
        assert!(!agg.has_image_name(10, 100));
        agg.name_image(10, 100, "worker");
        assert_eq!(
            (agg.image_name(old), agg.image_name(new)),
            (None, Some("worker"))
        );
        // Retired: each stack merges under the name of its own image.
        let exited = HashMap::from([(10, "sh".to_string())]);
        agg.retire(&exited, |stacks, _, _| stacks.add_merged());
        let mut names: Vec<&str> = agg
            .run()
            .keys()
            .filter_map(|k| agg.exited_name(k.stack))
            .collect();
        names.sort_unstable();
        assert_eq!(names, ["sh", "worker"]);
        assert!(!agg.has_image_name(10, 100), "freed with its process");
    }

    #[test]
    fn exited_processes_merge_into_the_stacks_named_for_them() {
        let mut agg = Aggregator::new();
        // Two runs of one program: the same code at different addresses (ASLR).
        let (a, _) = agg.add(10, 10, "job", &stack(&[0x1000]), RUNNING, 3);
        let (b, _) = agg.add(20, 21, "job", &stack(&[0x2000]), RUNNING, 4);
        let (live, _) = agg.add(30, 30, "server", &stack(&[0x3000]), RUNNING, 5);

        let exited = HashMap::from([(10, "job".to_string()), (20, "job".to_string())]);
        // Both stacks show the same frames: one merged stack for the name.
        let mut merged_ids: HashMap<Arc<str>, StackId> = HashMap::new();
        let mut asked = Vec::new();
        let mut freed = agg.retire(&exited, |stacks, name, id| {
            asked.push(id);
            *merged_ids
                .entry(name.clone())
                .or_insert_with(|| stacks.add_merged())
        });
        freed.sort_unstable();
        assert_eq!(freed, [a, b]);
        assert!(asked.contains(&a) && asked.contains(&b));

        assert_eq!(agg.exited_processes(), 2);
        // One merged stack plus the live one; the two originals are freed.
        assert_eq!(agg.stacks.len(), 2);
        let merged: Vec<_> = agg
            .run()
            .iter()
            .filter(|(k, _)| k.tgid == EXITED_PID)
            .collect();
        assert_eq!(merged.len(), 1);
        let (key, &count) = merged[0];
        assert_eq!((key.tid, count), (EXITED_PID, 7));
        assert_eq!(agg.exited_name(key.stack), Some("job"));
        assert_eq!(agg.stacks.get(key.stack).tgid, EXITED_PID);
        assert!(agg.stacks.get(key.stack).raw.is_empty());
        assert_eq!(agg.thread_name(21), None);
        assert_eq!(agg.thread_name(30), Some("server"));
        assert_eq!(agg.take_interval().values().sum::<u64>(), 12);
        assert_eq!(agg.stacks.get(live).tgid, 30);

        // A new process may reuse a retired pid: it starts afresh, in a freed slot.
        let (again, new) = agg.add(10, 10, "other", &stack(&[0x1000]), RUNNING, 1);
        assert!(new);
        assert!(again == a || again == b);
        assert_eq!(agg.stacks.len(), 3);
    }
}
