//! The whole chain after the sampler, without root: a [`Replay`] of records
//! about this test process (its own functions' addresses, walked as the
//! kernel would) goes through ingest, counting, symbolization and the report
//! builder, and comes out as folded stacks.
use std::{hint::black_box, sync::Arc};

use tripod_common::{PythonFrame, RecordKind};

use super::*;
use crate::{
    config::{Mode, OutputDest, OutputFormat},
    sampler::{
        records::{encode_copy, encode_wake, header},
        Replay, UserStack, Wake,
    },
    stack::StackRead,
};

#[inline(never)]
fn replayed_leaf() -> u64 {
    black_box(1)
}

#[inline(never)]
fn replayed_caller() -> u64 {
    replayed_leaf() + black_box(2)
}

/// `replayed_caller` calling `replayed_leaf`, as a frame-pointer walk gives
/// it: where the thread was, then the return address into the caller.
fn walked_stack() -> Vec<u64> {
    black_box(replayed_caller());
    let leaf = replayed_leaf as *const () as u64;
    let caller = replayed_caller as *const () as u64;
    vec![leaf + 1, caller + 4]
}

fn pipeline(mode: Mode) -> Pipeline {
    Pipeline::new(options(mode))
}

fn options(mode: Mode) -> PipelineOptions {
    PipelineOptions {
        rules: Arc::new(Rules::builtin()),
        processes: ProcessTable::new(),
        history: crate::mappings::Scope::All,
        python: Python::new(crate::config::PythonFrames::Off),
        collect_user: true,
        counters: Counters::default(),
        recording: Some(Recording {
            run: RunInfo {
                target: "all processes".into(),
                mode,
                frequency: 99,
                event: "cpu-clock".into(),
                per_thread: false,
                stack_storage_size: 16384,
                count_map_size: 65536,
                unwind: "fp".into(),
                ring_buffer_size: 8 << 20,
            },
            min_block_us: 0,
            cgroups: Vec::new(),
        }),
    }
}

/// A record of this process with `words` as its kernel-walked user stack.
fn record(kind: RecordKind, words: &[u64], time_ns: u64) -> Vec<u8> {
    let pid = std::process::id();
    let mut head = header(kind, pid, pid, b"replayed", time_ns);
    head.user_frames = words.len() as u32;
    let stack: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    encode_copy(&head, &[], &stack, &[] as &[PythonFrame])
}

/// The folded lines of the report `pipeline` writes now.
fn folded_report(pipeline: &mut Pipeline) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.folded");
    let mut output = Output::open(&OutputDest::File(path.clone()), OutputFormat::Folded).unwrap();
    pipeline
        .write_report(&mut output, None, &Counters::default())
        .unwrap();
    output.finish().unwrap();
    std::fs::read_to_string(path).unwrap()
}

fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

/// The line of `folded` whose stack ends in the replayed chain, and its count.
fn replayed_line(folded: &str) -> (String, u64) {
    let line = folded
        .lines()
        .find(|l| l.contains("replayed_leaf"))
        .unwrap_or_else(|| panic!("no replayed stack in:\n{folded}"));
    let (stack, count) = line.rsplit_once(' ').unwrap();
    (stack.to_string(), count.parse().unwrap())
}

#[test]
fn records_and_counted_samples_come_out_as_named_stacks_in_order() {
    let mut replay = Replay::new();
    for _ in 0..2 {
        replay.push_record(record(RecordKind::Sample, &walked_stack(), 0));
    }
    let pid = std::process::id();
    replay.push_counted(vec![Sample {
        count: 3,
        user: UserStack::Walked(StackRead::Addresses(walked_stack())),
        ..Sample::on_cpu(pid, pid, "replayed")
    }]);
    let mut pipeline = pipeline(Mode::Cpu);
    pipeline.pull(&mut replay);
    block_on(pipeline.pull_counted(&mut replay)).unwrap();
    assert!(pipeline.has_unreported_samples());

    let (stack, count) = replayed_line(&folded_report(&mut pipeline));
    assert_eq!(count, 5, "two records and one sample counted three times");
    let frames: Vec<&str> = stack.split(';').collect();
    let caller = frames.iter().position(|f| f.contains("replayed_caller"));
    let leaf = frames.iter().position(|f| f.contains("replayed_leaf"));
    assert!(
        matches!((caller, leaf), (Some(c), Some(l)) if c + 1 == l),
        "caller then leaf, outermost first: {stack}"
    );
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    assert_eq!(frames[0], comm.trim_end(), "the process's name comes first");
    assert!(!pipeline.has_unreported_samples(), "the report took them");
    let summary = pipeline.summary(&Counters::default());
    assert_eq!(summary.samples, 5);
    assert_eq!(summary.processes, 1);
}

#[test]
fn a_replayed_wait_is_counted_in_microseconds_on_its_stack() {
    let mut replay = Replay::new();
    let pid = std::process::id();
    replay.push_record(record(RecordKind::Blocked, &walked_stack(), 1_000_000));
    replay.push_record(encode_wake(&Wake {
        tid: pid,
        tgid: pid,
        start_ns: 1_000_000,
        end_ns: 251_000_000,
    }));
    let mut pipeline = pipeline(Mode::OffCpu);
    pipeline.pull(&mut replay);
    let (_, microseconds) = replayed_line(&folded_report(&mut pipeline));
    assert_eq!(microseconds, 250_000);
}

#[test]
fn a_replayed_dump_groups_threads_by_stack_with_their_state_and_syscall() {
    let pid = std::process::id();
    let mut dump = Vec::new();
    for (tid, syscall) in [(pid, 7), (pid + 1, 7)] {
        let mut head = header(RecordKind::Snapshot, pid, tid, b"replayed", 0);
        let words = walked_stack();
        head.user_frames = words.len() as u32;
        head.state = 1; // TASK_INTERRUPTIBLE: asleep
        head.syscall = syscall;
        let stack: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        dump.extend(encode_copy(&head, &[], &stack, &[] as &[PythonFrame]));
    }
    let mut replay = Replay::new();
    replay.push_dump(dump);
    let mut pipeline = Pipeline::new(PipelineOptions {
        recording: None,
        ..options(Mode::Cpu)
    });
    let dump = pipeline
        .dump(&mut replay, pid)
        .unwrap()
        .expect("two threads");
    assert_eq!(dump.groups.len(), 1, "one stack: {dump:#?}");
    let group = &dump.groups[0];
    assert_eq!(group.tids, [pid, pid + 1]);
    assert_eq!(group.state, TaskState::from_kernel(1));
    let names: Vec<&str> = group
        .frames
        .iter()
        .filter_map(|f| f.function.as_deref())
        .collect();
    let caller = names.iter().position(|n| n.contains("replayed_caller"));
    let leaf = names.iter().position(|n| n.contains("replayed_leaf"));
    assert!(
        matches!((caller, leaf), (Some(c), Some(l)) if c < l),
        "caller outside leaf: {names:?}"
    );
    assert!(
        dump.threads.iter().all(|t| t.syscall.is_some()),
        "{dump:#?}"
    );
    // No second dump in the replay: no threads, as for a process that is gone.
    assert!(pipeline.dump(&mut replay, pid).unwrap().is_none());
}

/// A pid no process has (above the kernel's largest pid_max).
const GONE_PID: u32 = 4_200_000_001;

/// The executable mapping of this test binary's code, as an MMAP2 record
/// of process `pid` at `time_ns` would tell it.
fn our_code_mapping(pid: u32, time_ns: u64) -> crate::sampler::sideband::MmapRecord {
    use std::os::unix::fs::MetadataExt as _;
    let exe = std::env::current_exe().unwrap();
    let here = replayed_leaf as *const () as u64;
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let line = maps
        .lines()
        .find(|l| {
            let (range, _) = l.split_once(' ').unwrap();
            let (start, end) = range.split_once('-').unwrap();
            let hex = |s| u64::from_str_radix(s, 16).unwrap();
            (hex(start)..hex(end)).contains(&here)
        })
        .expect("our code is mapped");
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (start, end) = fields[0].split_once('-').unwrap();
    let hex = |s| u64::from_str_radix(s, 16).unwrap();
    let meta = std::fs::metadata(&exe).unwrap();
    crate::sampler::sideband::MmapRecord {
        pid,
        tid: pid,
        time_ns,
        start: hex(start),
        len: hex(end) - hex(start),
        pgoff: hex(fields[2]),
        prot: 5,
        flags: 2,
        identity: crate::sampler::sideband::FileIdentity::Inode {
            major: libc::major(meta.dev()),
            minor: libc::minor(meta.dev()),
            inode: meta.ino(),
            generation: Some(0),
        },
        path: exe.as_os_str().as_encoded_bytes().into(),
    }
}

/// A sample of process `pid` with `words` as its kernel-walked user stack.
fn record_of(pid: u32, words: &[u64], time_ns: u64) -> Vec<u8> {
    let mut head = header(RecordKind::Sample, pid, pid, b"shortlived", time_ns);
    head.user_frames = words.len() as u32;
    let stack: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    encode_copy(&head, &[], &stack, &[] as &[PythonFrame])
}

/// A process that existed only between two drains: its exec, its code
/// mapped, its samples and its exit, all told by the sideband.
fn short_lived_process(replay: &mut Replay, pid: u32) {
    use crate::sampler::sideband::{CommRecord, SideRecord, TaskRecord};
    replay.push_side_record(SideRecord::Comm(CommRecord {
        pid,
        tid: pid,
        time_ns: 50,
        exec: true,
        comm: b"shortlived".as_slice().into(),
    }));
    replay.push_side_record(SideRecord::Mmap(our_code_mapping(pid, 100)));
    let exit = TaskRecord {
        pid,
        ppid: 1,
        tid: pid,
        ptid: 1,
        time_ns: 300,
    };
    replay.push_side_record(SideRecord::Exit(exit));
}

#[test]
fn a_process_gone_before_the_drain_is_named_from_the_sideband() {
    let mut replay = Replay::new();
    short_lived_process(&mut replay, GONE_PID);
    for time_ns in [200, 250] {
        replay.push_record(record_of(GONE_PID, &walked_stack(), time_ns));
    }
    let mut pipeline = pipeline(Mode::Cpu);
    pipeline.pull(&mut replay);
    block_on(pipeline.pull_counted(&mut replay)).unwrap();
    let (stack, count) = replayed_line(&folded_report(&mut pipeline));
    assert_eq!(count, 2);
    assert!(stack.starts_with("shortlived;"), "{stack}");
    assert!(stack.contains("replayed_caller"), "{stack}");
}

#[test]
fn samples_younger_than_the_watermark_wait_for_their_records() {
    let mut replay = Replay::new();
    replay.set_side_watermark(150);
    short_lived_process(&mut replay, GONE_PID);
    replay.push_record(record_of(GONE_PID, &walked_stack(), 200));
    let mut pipeline = pipeline(Mode::Cpu);
    pipeline.pull(&mut replay);
    block_on(pipeline.pull_counted(&mut replay)).unwrap();
    assert!(!pipeline.has_unreported_samples(), "the sample waits");
    assert_eq!(pipeline.held_stats(), (1, 0));
    // The next drain hands over the rest, the exit included.
    replay.set_side_watermark(1_000);
    pipeline.pull(&mut replay);
    block_on(pipeline.pull_counted(&mut replay)).unwrap();
    let (stack, count) = replayed_line(&folded_report(&mut pipeline));
    assert_eq!(count, 1);
    assert!(stack.contains("replayed_caller"), "{stack}");
}

#[test]
fn lost_sideband_records_are_counted_in_the_summary_with_what_to_expect() {
    use crate::sampler::sideband::{LostRecord, SideRecord};
    let mut replay = Replay::new();
    short_lived_process(&mut replay, GONE_PID);
    replay.push_side_record(SideRecord::Lost(LostRecord {
        count: 7,
        cpu: 1,
        since_ns: 120,
        time_ns: 130,
    }));
    replay.push_record(record_of(GONE_PID, &walked_stack(), 200));
    let mut pipeline = pipeline(Mode::Cpu);
    pipeline.pull(&mut replay);
    block_on(pipeline.pull_counted(&mut replay)).unwrap();
    let summary = pipeline.summary(&Counters::default());
    assert_eq!(summary.mapping_records.lost, 7);
    let hints = summary.hints();
    assert!(
        hints
            .iter()
            .any(|h| h.starts_with("7 mapping records were lost")),
        "{hints:?}"
    );
    // The sample, taken after the loss, is still counted under its
    // process's name; the history cannot vouch for its mappings and the
    // process is gone from /proc, so its frames are unknown, never guessed.
    assert_eq!(
        folded_report(&mut pipeline).trim(),
        "shortlived;[unknown];[unknown] 1"
    );
}
