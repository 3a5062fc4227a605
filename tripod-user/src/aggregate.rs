//! Counting samples by (thread, stack), with each distinct stack stored once.
//! Addresses only: symbols are attached to stacks by [`crate::resolve`].
use std::{collections::HashMap, sync::Arc};

use crate::{report::Frame, stack::RawFrame};

/// Index of a distinct stack in a [`StackTable`].
pub type StackId = u32;

/// A distinct stack of one process.
pub struct StackEntry {
    pub tgid: u32,
    /// Innermost first, as sampled.
    pub raw: Arc<[RawFrame]>,
    /// Outermost first, symbolized; filled in once by the resolver.
    pub frames: Option<Arc<[Arc<Frame>]>>,
}

/// Each distinct (process, stack) once. User addresses mean nothing outside
/// their process, so the process is part of the identity.
#[derive(Default)]
pub struct StackTable {
    /// Per process, so a lookup can borrow the frames: known stacks (every
    /// sample but the first) cost no allocation.
    ids: HashMap<u32, HashMap<Arc<[RawFrame]>, StackId>>,
    entries: Vec<StackEntry>,
}

impl StackTable {
    /// The id of this stack, and whether it is new.
    pub fn intern(&mut self, tgid: u32, raw: &[RawFrame]) -> (StackId, bool) {
        let ids = self.ids.entry(tgid).or_default();
        if let Some(&id) = ids.get(raw) {
            return (id, false);
        }
        let raw: Arc<[RawFrame]> = raw.into();
        let id = self.entries.len() as StackId;
        ids.insert(raw.clone(), id);
        self.entries.push(StackEntry {
            tgid,
            raw,
            frames: None,
        });
        (id, true)
    }

    pub fn get(&self, id: StackId) -> &StackEntry {
        &self.entries[id as usize]
    }

    pub fn set_frames(&mut self, id: StackId, frames: Arc<[Arc<Frame>]>) {
        self.entries[id as usize].frames = Some(frames);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Where a count belongs: one thread, one stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ThreadStack {
    pub tgid: u32,
    pub tid: u32,
    pub stack: StackId,
}

/// Counts for the current interval and for the whole run.
#[derive(Default)]
pub struct Aggregator {
    pub stacks: StackTable,
    interval: HashMap<ThreadStack, u64>,
    run: HashMap<ThreadStack, u64>,
    /// Thread names as last sampled.
    thread_names: HashMap<u32, String>,
}

impl Aggregator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts `count` samples of `raw` on thread `tid`; returns the stack id
    /// and whether the stack is new (and so needs symbolizing).
    pub fn add(
        &mut self,
        tgid: u32,
        tid: u32,
        thread_name: &str,
        raw: &[RawFrame],
        count: u64,
    ) -> (StackId, bool) {
        let (stack, new) = self.stacks.intern(tgid, raw);
        let key = ThreadStack { tgid, tid, stack };
        *self.interval.entry(key).or_default() += count;
        *self.run.entry(key).or_default() += count;
        if self.thread_names.get(&tid).map(String::as_str) != Some(thread_name) {
            self.thread_names.insert(tid, thread_name.to_string());
        }
        (stack, new)
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::Space;

    fn stack(addresses: &[u64]) -> Vec<RawFrame> {
        addresses
            .iter()
            .map(|&a| RawFrame::ReturnAddress(Space::User, a))
            .collect()
    }

    #[test]
    fn identical_stacks_merge_and_processes_stay_apart() {
        let mut agg = Aggregator::new();
        let (a, new_a) = agg.add(10, 11, "worker", &stack(&[1, 2, 3]), 5);
        let (b, new_b) = agg.add(10, 12, "worker", &stack(&[1, 2, 3]), 2);
        let (c, new_c) = agg.add(20, 20, "other", &stack(&[1, 2, 3]), 1);
        assert!(new_a && !new_b && new_c);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(agg.stacks.len(), 2);

        let interval = agg.take_interval();
        assert_eq!(
            interval[&ThreadStack {
                tgid: 10,
                tid: 11,
                stack: a
            }],
            5
        );
        assert_eq!(
            interval[&ThreadStack {
                tgid: 10,
                tid: 12,
                stack: a
            }],
            2
        );
        assert!(agg.take_interval().is_empty());

        agg.add(10, 11, "worker", &stack(&[1, 2, 3]), 1);
        assert_eq!(
            agg.run()[&ThreadStack {
                tgid: 10,
                tid: 11,
                stack: a
            }],
            6
        );
        assert_eq!(agg.thread_name(12), Some("worker"));
    }
}
