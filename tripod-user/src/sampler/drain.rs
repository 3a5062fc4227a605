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
