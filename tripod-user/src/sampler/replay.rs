//! A [`SampleSource`] with no kernel behind it: it hands out records it was
//! given, as bytes the kernel would have written, so everything after the
//! sampler runs (and is tested) without root. The records go through the
//! same parser as the live sampler's ([`super::records`]).
//!
//! Records come from code ([`Replay::push_record`], with
//! [`super::records::encode_copy`] to build them) or from a file
//! ([`Replay::from_bytes`], written with [`Replay::to_bytes`]):
//!
//! ```text
//! "tripod-replay 1\n"              magic and format version
//! then any number of frames:
//!   u8      what: 0 a ring-buffer record, 1 a dump (a task iterator's output)
//!   u32 LE  length in bytes
//!   bytes   the record (native endian, as the kernel wrote it)
//! ```
//!
//! Counted samples (`--unwind fp`) are read from maps, not records: they
//! are given in code ([`Replay::push_counted`]). So are sideband records
//! ([`Replay::push_side_record`]), already parsed: the file format stays
//! version 1, and a replay without them has no sideband, as a run whose
//! kernel refused it.
use std::collections::VecDeque;

use anyhow::{bail, Context as _, Result};
use tripod_common::PythonProcess;

use super::{
    drain::{Flip, Settled},
    records::{parse_record, parse_snapshots, Record, Sample},
    sideband::{SideRecord, SidebandCounters},
    SampleSource, SamplingEvent,
};
use crate::model::Counters;

const MAGIC: &[u8] = b"tripod-replay 1\n";
const RECORD: u8 = 0;
const DUMP: u8 = 1;

/// What the pipeline told a [`Replay`], in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Told {
    AddTarget(u32),
    PythonProcess(u32, Option<PythonProcess>),
    ForgetPythonThreads(Vec<u32>),
    MarkBlocked { tid: u32, since_ns: u64 },
}

/// Recorded samples and records, handed out in the order given.
#[derive(Debug)]
pub struct Replay {
    counted: VecDeque<Vec<Sample<'static>>>,
    records: VecDeque<Vec<u8>>,
    dumps: VecDeque<Vec<u8>>,
    /// Sideband records; `None` for a replay without a sideband.
    side: Option<VecDeque<SideRecord>>,
    /// The watermark each sideband drain returns (see
    /// [`SampleSource::drain_sideband`]): every record handed over at once
    /// unless a test sets it.
    side_watermark_ns: u64,
    /// What the sideband handed over, lost records counted as the live
    /// sideband counts them.
    side_counters: SidebandCounters,
    counters: Counters,
    event: SamplingEvent,
    told: Vec<Told>,
}

impl Default for Replay {
    fn default() -> Self {
        Replay {
            counted: VecDeque::new(),
            records: VecDeque::new(),
            dumps: VecDeque::new(),
            side: None,
            side_watermark_ns: u64::MAX,
            side_counters: SidebandCounters::default(),
            counters: Counters::default(),
            event: SamplingEvent::CpuClock,
            told: Vec::new(),
        }
    }
}

impl Replay {
    pub fn new() -> Replay {
        Replay::default()
    }

    /// What the next [`SampleSource::read_flipped`] returns (each call
    /// takes one batch).
    pub fn push_counted(&mut self, samples: Vec<Sample<'static>>) {
        self.counted.push_back(samples);
    }

    /// One ring-buffer record, for the next [`SampleSource::drain_copies`].
    pub fn push_record(&mut self, record: Vec<u8>) {
        self.records.push_back(record);
    }

    /// One sideband record, for the next [`SampleSource::drain_sideband`]
    /// (records older than its watermark are handed over, in time order).
    pub fn push_side_record(&mut self, record: SideRecord) {
        self.side
            .get_or_insert_with(VecDeque::new)
            .push_back(record);
    }

    /// What every [`SampleSource::drain_sideband`] from now on returns as
    /// its watermark; gives the replay a sideband if it had none.
    pub fn set_side_watermark(&mut self, watermark_ns: u64) {
        self.side.get_or_insert_with(VecDeque::new);
        self.side_watermark_ns = watermark_ns;
    }

    /// One dump: records back to back, as a task iterator writes them; for
    /// the next [`SampleSource::snapshot`] (each call takes one dump).
    pub fn push_dump(&mut self, records: Vec<u8>) {
        self.dumps.push_back(records);
    }

    /// What [`SampleSource::counters`] returns from now on.
    pub fn set_counters(&mut self, counters: Counters) {
        self.counters = counters;
    }

    /// What the pipeline told this source so far, oldest first.
    pub fn told(&self) -> &[Told] {
        &self.told
    }

    /// The records and dumps not handed out yet, in the file format.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        let records = self.records.iter().map(|r| (RECORD, r));
        let frames = records.chain(self.dumps.iter().map(|d| (DUMP, d)));
        for (what, frame) in frames {
            bytes.push(what);
            bytes.extend_from_slice(&(frame.len() as u32).to_le_bytes());
            bytes.extend_from_slice(frame);
        }
        bytes
    }

    /// Reads a file written by [`Replay::to_bytes`] (or by hand).
    pub fn from_bytes(mut bytes: &[u8]) -> Result<Replay> {
        bytes = bytes
            .strip_prefix(MAGIC)
            .context("not a tripod replay (version 1)")?;
        let mut replay = Replay::new();
        let mut offset = MAGIC.len();
        while let Some((&what, rest)) = bytes.split_first() {
            let (len, rest) = rest
                .split_first_chunk::<4>()
                .with_context(|| format!("replay cut short at byte {offset}"))?;
            let len = u32::from_le_bytes(*len) as usize;
            let frame = rest
                .get(..len)
                .with_context(|| format!("replay cut short at byte {offset}"))?
                .to_vec();
            match what {
                RECORD => replay.push_record(frame),
                DUMP => replay.push_dump(frame),
                other => bail!("unknown frame kind {other} at byte {offset}"),
            }
            bytes = &rest[len..];
            offset += 5 + len;
        }
        Ok(replay)
    }

    /// Reads a replay file.
    pub fn read(path: &std::path::Path) -> Result<Replay> {
        let context = || format!("reading {}", path.display());
        let bytes = std::fs::read(path).with_context(context)?;
        Replay::from_bytes(&bytes).with_context(context)
    }
}

impl SampleSource for Replay {
    fn wakeup(&self) -> Result<Option<super::Wakeup>> {
        Ok(None)
    }

    fn count_drain_period(&self) -> Option<std::time::Duration> {
        None
    }

    fn flip(&mut self) -> Result<Flip> {
        Ok(Flip::without_kernel())
    }

    fn read_flipped(&mut self, _: Settled) -> Result<Vec<Sample<'static>>> {
        Ok(self.counted.pop_front().unwrap_or_default())
    }

    fn drain_copies(&mut self, handle: &mut dyn FnMut(Record<'_>)) {
        for record in std::mem::take(&mut self.records) {
            if let Some(record) = parse_record(&record) {
                handle(record);
            }
        }
    }

    fn drain_sideband(&mut self, handle: &mut dyn FnMut(SideRecord)) -> Option<u64> {
        let side = self.side.as_mut()?;
        let watermark = self.side_watermark_ns;
        side.make_contiguous().sort_by_key(SideRecord::time_ns);
        while side.front().is_some_and(|r| r.time_ns() < watermark) {
            let record = side.pop_front().expect("checked");
            self.side_counters.records += 1;
            if let SideRecord::Lost(lost) = &record {
                self.side_counters.lost += lost.count;
            }
            handle(record);
        }
        Some(watermark)
    }

    fn sideband_counters(&self) -> Option<SidebandCounters> {
        self.side.as_ref().map(|_| self.side_counters)
    }

    fn snapshot(&mut self, handle: &mut dyn FnMut(Sample<'_>)) -> Result<()> {
        if let Some(dump) = self.dumps.pop_front() {
            parse_snapshots(&dump, handle);
        }
        Ok(())
    }

    fn counters(&self) -> Result<Counters> {
        Ok(self.counters)
    }

    fn event(&self) -> SamplingEvent {
        self.event
    }

    fn fallback_reason(&self) -> Option<&str> {
        None
    }

    fn add_target(&mut self, pid: u32) -> Result<()> {
        self.told.push(Told::AddTarget(pid));
        Ok(())
    }

    fn set_python_process(&mut self, pid: u32, process: Option<&PythonProcess>) -> Result<()> {
        self.told.push(Told::PythonProcess(pid, process.copied()));
        Ok(())
    }

    fn forget_python_threads(&mut self, tids: &[u32]) -> Result<()> {
        self.told.push(Told::ForgetPythonThreads(tids.to_vec()));
        Ok(())
    }

    fn mark_blocked(&mut self, tid: u32, since_ns: u64) -> Result<()> {
        self.told.push(Told::MarkBlocked { tid, since_ns });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tripod_common::{Counter, RecordKind};

    use super::*;
    use crate::{
        sampler::records::{encode_copy, encode_wake, header},
        sampler::{drain_counted, UserStack, Wake},
        stack::StackRead,
    };

    fn wake(tid: u32) -> Wake {
        Wake {
            tid,
            tgid: 1,
            start_ns: 10,
            end_ns: 20,
        }
    }

    fn blocked(tid: u32) -> Vec<u8> {
        encode_copy(
            &header(RecordKind::Blocked, 1, tid, b"t", 10),
            &[0xffff_0000],
            &[0; 8],
            &[],
        )
    }

    /// The records a pipeline would see, through the trait as the pipeline holds it.
    fn seen(source: &mut dyn SampleSource) -> Vec<(RecordKind, u32)> {
        let mut seen = Vec::new();
        source.drain_copies(&mut |record| {
            seen.push(match record {
                Record::Stack(sample) => (sample.kind, sample.tid),
                Record::Woke(wake) => (RecordKind::Woke, wake.tid),
            })
        });
        seen
    }

    #[test]
    fn records_come_back_in_order_then_none() {
        let mut replay = Replay::new();
        replay.push_record(blocked(5));
        replay.push_record(vec![0xff; 3]); // unreadable: skipped, as the live sampler does
        replay.push_record(encode_wake(&wake(5)));
        assert_eq!(
            seen(&mut replay),
            vec![(RecordKind::Blocked, 5), (RecordKind::Woke, 5)]
        );
        assert_eq!(seen(&mut replay), vec![]);
    }

    #[test]
    fn each_snapshot_is_one_dump() {
        let mut replay = Replay::new();
        let mut dump = Vec::new();
        for tid in [1, 2, 3] {
            dump.extend(encode_copy(
                &header(RecordKind::Snapshot, 1, tid, b"t", 0),
                &[],
                &[0; 8],
                &[],
            ));
        }
        replay.push_dump(dump);
        let mut tids = Vec::new();
        replay
            .snapshot(&mut |thread| tids.push(thread.tid))
            .unwrap();
        assert_eq!(tids, vec![1, 2, 3]);
        // No second dump: no threads, as for a process that is gone.
        replay.snapshot(&mut |_| panic!("no dump left")).unwrap();
    }

    #[test]
    fn counted_samples_counters_and_what_it_was_told() {
        let mut replay = Replay::new();
        let sample = || Sample {
            count: 3,
            user: UserStack::Walked(StackRead::Addresses(vec![0x1000])),
            ..Sample::on_cpu(1, 2, "x")
        };
        replay.push_counted(vec![sample()]);
        let mut counters = Counters::default();
        counters.0[Counter::Samples as usize] = 3;
        replay.set_counters(counters);

        let source: &mut dyn SampleSource = &mut replay;
        let drain = |source: &mut dyn SampleSource| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            runtime.block_on(drain_counted(source)).unwrap()
        };
        assert_eq!(drain(source), vec![sample()]);
        assert_eq!(drain(source), vec![]);
        assert_eq!(source.counters().unwrap().get(Counter::Samples), 3);
        assert_eq!(source.event(), SamplingEvent::CpuClock);
        source.add_target(9).unwrap();
        source.set_python_process(9, None).unwrap();
        source.forget_python_threads(&[10, 11]).unwrap();
        source.mark_blocked(10, 77).unwrap();
        assert_eq!(
            replay.told(),
            [
                Told::AddTarget(9),
                Told::PythonProcess(9, None),
                Told::ForgetPythonThreads(vec![10, 11]),
                Told::MarkBlocked {
                    tid: 10,
                    since_ns: 77
                },
            ]
        );
    }

    #[test]
    fn a_replay_file_round_trips() {
        let mut replay = Replay::new();
        replay.push_record(blocked(5));
        replay.push_record(encode_wake(&wake(5)));
        replay.push_dump(blocked(6));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.replay");
        std::fs::write(&path, replay.to_bytes()).unwrap();

        let mut read = Replay::read(&path).unwrap();
        assert_eq!(
            seen(&mut read),
            vec![(RecordKind::Blocked, 5), (RecordKind::Woke, 5)]
        );
        let mut tids = Vec::new();
        read.snapshot(&mut |thread| tids.push(thread.tid)).unwrap();
        assert_eq!(tids, vec![6]);
    }

    #[test]
    fn a_bad_replay_file_is_an_error() {
        assert!(Replay::from_bytes(b"something else").is_err());
        let mut replay = Replay::new();
        replay.push_record(encode_wake(&wake(1)));
        let bytes = replay.to_bytes();
        for len in MAGIC.len() + 1..bytes.len() {
            assert!(Replay::from_bytes(&bytes[..len]).is_err(), "cut at {len}");
        }
        let mut unknown = MAGIC.to_vec();
        unknown.extend_from_slice(&[7, 0, 0, 0, 0]);
        assert!(Replay::from_bytes(&unknown).is_err());
        assert!(Replay::from_bytes(MAGIC).is_ok());
    }
}
