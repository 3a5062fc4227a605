//! The seam between where samples come from and everything after: the
//! pipeline asks a [`SampleSource`] for samples and records and tells it
//! what it learned, and never knows whether a kernel is behind it.
use anyhow::Result;
use tripod_common::PythonProcess;

use super::{
    records::{CopiedSample, Record},
    Sampler, SamplingEvent,
};
use crate::{model::Counters, stack::RawSample};

/// What the pipeline consumes from the sampler, and what it tells it back.
///
/// Implemented by the live [`Sampler`] and by [`super::Replay`]. Object
/// safe (handlers are `&mut dyn FnMut`), so a run can pick its source at
/// run time.
pub trait SampleSource {
    /// The samples counted in the kernel since the last call, each with
    /// how often it was seen (`--unwind fp`; empty when stacks are copied).
    fn drain(&mut self) -> Result<Vec<RawSample>>;

    /// Hands every record waiting in the ring buffer to `handle`, oldest
    /// first: samples with their stack copies, threads switching out
    /// ([`tripod_common::RecordKind::Blocked`]) and back in ([`Record::Woke`]).
    fn drain_copies(&mut self, handle: &mut dyn FnMut(Record<'_>));

    /// Every thread of the targets as it is now, one
    /// [`tripod_common::RecordKind::Snapshot`] record each: a dump.
    fn snapshot(&mut self, handle: &mut dyn FnMut(CopiedSample<'_>)) -> Result<()>;

    /// The kernel side's counters (samples, failures by kind) since the start.
    fn counters(&self) -> Result<Counters>;

    /// The perf event that drives sampling.
    fn event(&self) -> SamplingEvent;

    /// Why hardware cycles are not used, when they were not available.
    fn fallback_reason(&self) -> Option<&str>;

    /// Samples one more process from now on (a command we launched).
    fn add_target(&mut self, pid: u32) -> Result<()>;

    /// Collects the Python frames of process `pid` from now on, or (`None`)
    /// no longer.
    fn set_python_process(&mut self, pid: u32, process: Option<&PythonProcess>) -> Result<()>;

    /// Forgets the Python thread states of these exited threads.
    fn forget_python_threads(&mut self, tids: &[u32]) -> Result<()>;

    /// Reports thread `tid`, switched out since `since_ns`, when it runs
    /// again (threads already waiting when tracking started).
    fn mark_blocked(&mut self, tid: u32, since_ns: u64) -> Result<()>;
}

/// The live sampler. Its inherent methods of the same names (which take
/// `impl FnMut` handlers) stay until every caller goes through the trait.
impl SampleSource for Sampler {
    fn drain(&mut self) -> Result<Vec<RawSample>> {
        Sampler::drain(self)
    }

    fn drain_copies(&mut self, handle: &mut dyn FnMut(Record<'_>)) {
        Sampler::drain_copies(self, handle)
    }

    fn snapshot(&mut self, handle: &mut dyn FnMut(CopiedSample<'_>)) -> Result<()> {
        Sampler::snapshot(self, handle)
    }

    fn counters(&self) -> Result<Counters> {
        Sampler::counters(self)
    }

    fn event(&self) -> SamplingEvent {
        Sampler::event(self)
    }

    fn fallback_reason(&self) -> Option<&str> {
        Sampler::fallback_reason(self)
    }

    fn add_target(&mut self, pid: u32) -> Result<()> {
        Sampler::add_target(self, pid)
    }

    fn set_python_process(&mut self, pid: u32, process: Option<&PythonProcess>) -> Result<()> {
        Sampler::set_python_process(self, pid, process)
    }

    fn forget_python_threads(&mut self, tids: &[u32]) -> Result<()> {
        Sampler::forget_python_threads(self, tids)
    }

    fn mark_blocked(&mut self, tid: u32, since_ns: u64) -> Result<()> {
        Sampler::mark_blocked(self, tid, since_ns)
    }
}
