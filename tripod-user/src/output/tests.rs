//! Every format rendered from the same hand-built report, against golden text.
use std::sync::Arc;

use chrono::{Local, TimeZone};

use super::{
    pprof::proto, Document, DumpDocument, Folded, Json, Log, Pprof, Render, Speedscope, Svg,
};
use crate::{
    config::Mode,
    model::{Frame, FrameLocals, Unknown},
    report::{
        Completeness, DumpedThread, Duplicate, Losses, MappingRecordLosses, ProcessReport, Report,
        RunInfo, StackErrors, StackReport, Summary, ThreadDump, ThreadGroup, ThreadReport,
    },
    task::TaskState,
};

fn user(function: &str, file: Option<(&str, u32)>, module: &str) -> Arc<Frame> {
    Arc::new(Frame {
        module: Some(module.into()),
        offset: Some(0x1130),
        function: Some(function.into()),
        file: file.map(|(f, _)| f.into()),
        line: file.map(|(_, l)| l),
        ..Frame::code(false, Some(0x5555_5555_5130))
    })
}

fn kernel(function: &str) -> Arc<Frame> {
    Arc::new(Frame {
        module: Some("[kernel]".into()),
        function: Some(function.into()),
        ..Frame::code(true, Some(0xffff_ffff_8100_0000))
    })
}

fn run_info(per_thread: bool) -> RunInfo {
    RunInfo {
        target: "pid 4242".into(),
        mode: Mode::Cpu,
        frequency: 99,
        event: "cpu-clock".into(),
        per_thread,
        stack_storage_size: 16384,
        count_map_size: 65536,
        unwind: "dwarf".into(),
        ring_buffer_size: 8 << 20,
    }
}

fn report(per_thread: bool) -> Report {
    let libc = "/usr/lib/x86_64-linux-gnu/libc.so.6";
    let read_path: Arc<[Arc<Frame>]> = Arc::from(vec![
        user("__libc_start_call_main", None, libc),
        user("main", Some(("/src/app/main.c", 41)), "/src/app/worker"),
        user(
            "read_request",
            Some(("/src/app/net.c", 120)),
            "/src/app/worker",
        ),
        Arc::new(Frame {
            inlined: true,
            ..(*user("parse", Some(("/src/app/net.c", 77)), "/src/app/worker")).clone()
        }),
        kernel("ksys_read"),
        kernel("tcp_recvmsg"),
    ]);
    let unknown: Arc<[Arc<Frame>]> = Arc::from(vec![
        Arc::new(Frame {
            module: Some(libc.into()),
            offset: Some(0x2a1b0),
            unknown: Some(Unknown::MissingSyms),
            ..Frame::code(false, Some(0x7f00_0002_a1b0))
        }),
        Arc::new(Frame::truncated(false)),
    ]);
    Report {
        run: run_info(per_thread),
        start: Local.with_ymd_and_hms(2026, 11, 21, 10, 0, 5).unwrap(),
        end: Local.with_ymd_and_hms(2026, 11, 21, 10, 0, 10).unwrap(),
        samples: 1000,
        losses: Losses {
            count_map_full: 2,
            user: StackErrors {
                collisions: 1,
                ..Default::default()
            },
            ..Default::default()
        },
        stacks: vec![
            StackReport {
                pid: 4242,
                comm: "worker".into(),
                ns_pid: None,
                cgroup: None,
                thread: per_thread.then(|| (4243, "worker-1".to_string())),
                tids: vec![4243],
                count: 873,
                state: TaskState::Running,
                annotation: Some("running on CPU".into()),
                frames: read_path,
            },
            StackReport {
                pid: 4242,
                comm: "worker".into(),
                ns_pid: None,
                cgroup: None,
                thread: per_thread.then(|| (4244, "worker-2".to_string())),
                tids: vec![4244, 4245],
                count: 127,
                state: TaskState::Running,
                annotation: None,
                frames: unknown,
            },
        ],
        processes: vec![ProcessReport {
            pid: 4242,
            ns_pid: None,
            comm: "worker".into(),
            exe: Some("/src/app/worker".into()),
            cgroup: None,
            samples: 1000,
            threads: vec![
                ThreadReport {
                    tid: 4243,
                    comm: "worker-1".into(),
                    samples: 873,
                },
                ThreadReport {
                    tid: 4244,
                    comm: "worker-2".into(),
                    samples: 127,
                },
            ],
        }],
    }
}

fn summary() -> Summary {
    Summary {
        run: run_info(false),
        start: Local.with_ymd_and_hms(2026, 11, 21, 10, 0, 0).unwrap(),
        end: Local.with_ymd_and_hms(2026, 11, 21, 10, 0, 10).unwrap(),
        samples: 1000,
        distinct_stacks: 2,
        processes: 1,
        threads: 3,
        mapping_records: MappingRecordLosses {
            lost: 3,
            ..Default::default()
        },
        losses: Losses {
            count_map_full: 2,
            user: StackErrors {
                collisions: 1,
                ..Default::default()
            },
            stack_map_sent: 4,
            ..Default::default()
        },
        duplicates: vec![Duplicate {
            count: 127,
            threads: 2,
            processes: 1,
            functions: vec!["main".into(), "spin".into()],
        }],
        completeness: vec![Completeness {
            pid: 4242,
            comm: "worker".into(),
            samples: 1000,
            complete: 873,
            truncated: 127,
        }],
    }
}

fn render(mut renderer: impl Render, report: &Report, summary: Option<&Summary>) -> String {
    let mut out = Vec::new();
    renderer.report(report, &mut out).unwrap();
    if let Some(summary) = summary {
        renderer.summary(summary, &mut out).unwrap();
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn log_is_a_tripod_style_traceback() {
    let expected = r#"[tripod] ===== 2026-11-21 10:00:05..10:00:10  pid 4242  1000 samples, 2 lost samples, 2 distinct stacks =====

[tripod] 2026-11-21 10:00:05..10:00:10  pid 4242 (worker)  tid 4243  873 samples (87.3%): running on CPU
Traceback (most recent call last):
  File "/usr/lib/x86_64-linux-gnu/libc.so.6", in __libc_start_call_main
  File "/src/app/main.c", line 41, in main
  File "/src/app/net.c", line 120, in read_request
  File "/src/app/net.c", line 77, in parse [inlined]
  [kernel] ksys_read
  [kernel] tcp_recvmsg

[tripod] 2026-11-21 10:00:05..10:00:10  pid 4242 (worker)  2 threads  127 samples (12.7%)
Traceback (most recent call last):
  File "/usr/lib/x86_64-linux-gnu/libc.so.6", offset 0x2a1b0, in [unknown: no symbols (stripped)]
  [truncated]

[tripod] ===== summary 2026-11-21 10:00:00..10:00:10  (10.0 s) =====
[tripod] 1000 samples, 2 distinct stacks, 1 process, 3 threads; pid 4242 at 99 Hz (cpu-clock)
[tripod] lost: 2 samples (count map full), 0 samples (ring buffer full); stacks not stored: 1 user, 0 kernel; unreadable user stacks: 0
[tripod] pid 4242 (worker): 87.3% of 1000 samples reached the thread root, 127 truncated
[tripod] 2 samples were lost because the count map was full; consider --count-map-size 131072
[tripod] 1 stack traces could not be stored (hash collision or full stack map); consider --stack-storage-size 32768
[tripod] 4 stacks found no room in the stack map (hash collision or full) and were sent whole through the ring buffer instead; --stack-storage-size 32768 keeps more of them in the kernel
[tripod] 3 mapping records were lost (processes started or mapped files faster than they could be read); samples of those processes were located from /proc while they ran, else marked unknown

Duplicated stacks (the same frames in more than one thread):
  127 samples in 2 threads of 1 process: main, spin
"#;
    assert_eq!(render(Log, &report(false), Some(&summary())), expected);
}

#[test]
fn log_names_threads_when_per_thread() {
    let text = render(Log, &report(true), None);
    assert!(
        text.contains("pid 4242 (worker)  tid 4243 (worker-1)  873 samples (87.3%): running"),
        "{text}"
    );
}

#[test]
fn folded_puts_kernel_frames_last_and_sorts() {
    let expected = "\
worker;[libc.so.6];[truncated] 127
worker;__libc_start_call_main;main;read_request;parse;ksys_read_[k];tcp_recvmsg_[k] 873
";
    assert_eq!(
        render(Folded::default(), &report(false), Some(&summary())),
        expected
    );
}

#[test]
fn folded_per_thread_names_pid_and_tid() {
    let text = render(Folded::default(), &report(true), None);
    assert!(
        text.starts_with("worker-4242/4243;__libc_start_call_main;"),
        "{text}"
    );
    assert!(
        text.contains("\nworker-4242/4244;[libc.so.6];[truncated] 127\n"),
        "{text}"
    );
}

#[test]
fn folded_names_cannot_break_the_format() {
    let mut r = report(false);
    let odd = Arc::new(Frame {
        function: Some("a;b\nc".into()),
        ..Frame::code(false, Some(1))
    });
    r.stacks[0].frames = Arc::from(vec![odd]);
    assert!(render(Folded::default(), &r, None).contains("worker;a:b c 873\n"));
}

#[test]
fn json_is_one_document_per_report_and_round_trips() {
    let report = report(false);
    let text = render(Json, &report, Some(&summary()));
    assert_eq!(text.lines().count(), 1, "one line per report");
    let parsed: Document = serde_json::from_str(&text).unwrap();
    assert_eq!(parsed, Document::from_report(&report));

    assert_eq!(parsed.version, 1);
    assert_eq!(parsed.samples, 1000);
    assert_eq!(parsed.lost.count_map_full, 2);
    assert_eq!(parsed.stacks[0].count, 873);
    let names: Vec<_> = parsed.stacks[0]
        .frames
        .iter()
        .map(|&i| parsed.frames[i].function.clone().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "__libc_start_call_main",
            "main",
            "read_request",
            "parse",
            "ksys_read",
            "tcp_recvmsg"
        ]
    );
    let main = &parsed.frames[parsed.stacks[0].frames[1]];
    assert_eq!(
        (main.file.as_deref(), main.line),
        (Some("/src/app/main.c"), Some(41))
    );
    assert_eq!(main.address.as_deref(), Some("0x555555555130"));
    assert!(parsed.frames[parsed.stacks[0].frames[4]].kernel);
    assert!(parsed.frames[parsed.stacks[0].frames[3]].inlined);
    assert_eq!(parsed.frames[parsed.stacks[1].frames[1]].kind, "truncated");
}

#[test]
fn json_shares_identical_frames() {
    let mut r = report(false);
    r.stacks[1].frames = r.stacks[0].frames.clone();
    let doc = Document::from_report(&r);
    assert_eq!(doc.frames.len(), 6);
    assert_eq!(doc.stacks[0].frames, doc.stacks[1].frames);
}

#[test]
fn off_cpu_log_counts_microseconds_with_states() {
    let mut r = report(false);
    r.run.mode = Mode::OffCpu;
    r.stacks[0].state = TaskState::Sleeping;
    r.stacks[0].annotation = Some("blocked reading a file descriptor".into());
    let text = render(Log, &r, None);
    assert!(
        text.starts_with(
            "[tripod] ===== 2026-11-21 10:00:05..10:00:10  pid 4242  off-CPU time: 1000 µs off-CPU,"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "tid 4243  873 µs off-CPU (87.3%), sleeping: blocked reading a file descriptor\n"
        ),
        "{text}"
    );
    let doc = Document::from_report(&r);
    assert_eq!(
        (doc.mode.as_str(), doc.unit.as_str()),
        ("off-cpu", "microseconds")
    );
    assert_eq!(doc.stacks[0].state, "sleeping");
}

fn dump() -> ThreadDump {
    let report = report(false);
    let thread = |tid, name: &str, state, syscall: Option<&str>| DumpedThread {
        tid,
        name: name.into(),
        state,
        syscall: syscall.map(str::to_string),
        locals: None,
    };
    ThreadDump {
        pid: 4242,
        ns_pid: None,
        comm: "worker".into(),
        exe: Some("/src/app/worker".into()),
        cgroup: None,
        time: Local.with_ymd_and_hms(2026, 11, 21, 10, 0, 5).unwrap(),
        threads: vec![
            thread(4242, "worker", TaskState::Running, None),
            thread(4243, "reader", TaskState::Sleeping, Some("read")),
            thread(4244, "reader", TaskState::Sleeping, Some("read")),
        ],
        groups: vec![
            ThreadGroup {
                tids: vec![4243, 4244],
                state: TaskState::Sleeping,
                annotation: Some("blocked reading a file descriptor".into()),
                frames: report.stacks[0].frames.clone(),
            },
            ThreadGroup {
                tids: vec![4242],
                state: TaskState::Running,
                annotation: None,
                frames: report.stacks[1].frames.clone(),
            },
        ],
    }
}

fn render_dump(mut renderer: impl Render) -> String {
    let mut out = Vec::new();
    renderer.dump(&dump(), &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn log_dump_groups_threads_like_stacktraces() {
    let expected = r#"[tripod] ===== thread dump 2026-11-21 10:00:05.000  pid 4242 (worker)  /src/app/worker  3 threads, 2 distinct stacks =====

2 * [4243, 4244] blocked reading a file descriptor
  sleeping (S) in read; named reader
Traceback (most recent call last):
  File "/usr/lib/x86_64-linux-gnu/libc.so.6", in __libc_start_call_main
  File "/src/app/main.c", line 41, in main
  File "/src/app/net.c", line 120, in read_request
  File "/src/app/net.c", line 77, in parse [inlined]
  [kernel] ksys_read
  [kernel] tcp_recvmsg

1 * [4242] (no rule matched)
  running (R); named worker
Traceback (most recent call last):
  File "/usr/lib/x86_64-linux-gnu/libc.so.6", offset 0x2a1b0, in [unknown: no symbols (stripped)]
  [truncated]

"#;
    assert_eq!(render_dump(Log), expected);
}

#[test]
fn json_dump_round_trips_and_points_threads_at_groups() {
    let text = render_dump(Json);
    assert_eq!(text.lines().count(), 1);
    let parsed: DumpDocument = serde_json::from_str(&text).unwrap();
    assert_eq!(parsed, DumpDocument::from_dump(&dump()));
    assert_eq!(parsed.kind, "dump");
    assert_eq!(parsed.groups[0].tids, [4243, 4244]);
    assert_eq!(parsed.threads[1].syscall.as_deref(), Some("read"));
    assert_eq!(parsed.threads[1].group, 0);
    assert_eq!(parsed.threads[0].group, 1);
    assert_eq!(parsed.threads[0].state, "running");
}

#[test]
fn folded_dump_counts_threads() {
    assert_eq!(
        render_dump(Folded::default()),
        "worker;[libc.so.6];[truncated] 1\n\
         worker;__libc_start_call_main;main;read_request;parse;ksys_read_[k];tcp_recvmsg_[k] 2\n"
    );
}

/// A dump of one Python thread, with `--locals`.
fn python_dump() -> ThreadDump {
    let python = |function: &str, line| {
        Arc::new(Frame {
            function: Some(function.into()),
            file: Some("/srv/app.py".into()),
            line: Some(line),
            ..Frame::python()
        })
    };
    let native = Arc::new(Frame {
        function: Some("Py_RunMain".into()),
        module: Some("/usr/bin/python3.11".into()),
        ..Frame::code(false, Some(0x4000))
    });
    let mut kernel = Frame::code(true, Some(0xffff_ffff_8100_0000));
    kernel.function = Some("hrtimer_nanosleep".into());
    ThreadDump {
        pid: 7,
        ns_pid: None,
        comm: "python3".into(),
        exe: Some("/usr/bin/python3.11".into()),
        cgroup: None,
        time: Local.with_ymd_and_hms(2026, 11, 21, 10, 0, 5).unwrap(),
        threads: vec![DumpedThread {
            tid: 7,
            name: "python3".into(),
            state: TaskState::Sleeping,
            syscall: Some("clock_nanosleep".into()),
            locals: Some(vec![
                FrameLocals {
                    function: "<module>".into(),
                    file: "/srv/app.py".into(),
                    line: Some(30),
                    variables: vec![],
                },
                FrameLocals {
                    function: "paused_here".into(),
                    file: "/srv/app.py".into(),
                    line: Some(20),
                    variables: vec![
                        ("count".into(), "3".into()),
                        ("name".into(), "'tripod'".into()),
                    ],
                },
            ]),
        }],
        groups: vec![ThreadGroup {
            tids: vec![7],
            state: TaskState::Sleeping,
            annotation: Some("sleeping".into()),
            frames: Arc::from(vec![
                native,
                python("<module>", 30),
                python("paused_here", 20),
                Arc::new(kernel),
            ]),
        }],
    }
}

#[test]
fn python_frames_and_locals_read_like_tripod() {
    let mut out = Vec::new();
    Log.dump(&python_dump(), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let expected = r#"Traceback (most recent call last):
  File "/usr/bin/python3.11", in Py_RunMain
  File "/srv/app.py", line 30, in <module>
  File "/srv/app.py", line 20, in paused_here
  [kernel] hrtimer_nanosleep
Local variables of tid 7 (python3), most recent call last:
  File "/srv/app.py", line 30, in <module>
    Local variables: none
  File "/srv/app.py", line 20, in paused_here
    Local variables:
    {'count': 3,
     'name': 'tripod'}
"#;
    assert!(text.contains(expected), "{text}");
}

#[test]
fn python_frames_in_folded_and_json() {
    let mut out = Vec::new();
    Folded::default().dump(&python_dump(), &mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "python3;Py_RunMain;<module> (/srv/app.py:30);paused_here (/srv/app.py:20);hrtimer_nanosleep_[k] 1\n"
    );
    let doc = DumpDocument::from_dump(&python_dump());
    let kinds: Vec<&str> = doc.frames.iter().map(|f| f.kind.as_str()).collect();
    assert_eq!(kinds, ["code", "python", "python", "code"]);
    let locals = doc.threads[0].locals.as_ref().expect("locals asked for");
    assert_eq!(locals[1].function, "paused_here");
    assert_eq!(locals[1].variables[1].value, "'tripod'");
    let text = serde_json::to_string(&doc).unwrap();
    assert_eq!(serde_json::from_str::<DumpDocument>(&text).unwrap(), doc);
    // Without --locals the field is left out.
    let mut plain = python_dump();
    plain.threads[0].locals = None;
    assert!(!serde_json::to_string(&DumpDocument::from_dump(&plain))
        .unwrap()
        .contains("locals"));
}

#[test]
fn svg_is_an_inferno_flame_graph_with_our_title() {
    let text = render(Svg, &report(false), None);
    assert!(text.starts_with("<?xml"), "{text}");
    assert!(text.trim_end().ends_with("</svg>"));
    assert!(text.contains("tripod-bpf: pid 4242"), "title missing");
    assert!(text.contains("on-CPU samples at 99 Hz"), "subtitle missing");
    for function in ["main", "read_request", "tcp_recvmsg"] {
        assert!(text.contains(function), "{function} missing");
    }
    let mut out = Vec::new();
    Svg.dump(&python_dump(), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("tripod-bpf dump: pid 7 (python3)"));
    assert!(text.contains("paused_here (/srv/app.py:20)"));
}

/// An empty graph would replace a good one and look like success.
#[test]
fn svg_of_nothing_is_an_error_that_writes_nothing() {
    let mut empty = report(false);
    empty.stacks.clear();
    let mut out = Vec::new();
    let error = Svg.report(&empty, &mut out).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
    assert!(error.to_string().contains("no flame graph"), "{error}");
    assert!(!error.to_string().contains('\n'), "{error}");
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
}

/// Decodes what the pprof renderer wrote.
fn pprof_of(bytes: &[u8]) -> proto::Profile {
    use prost::Message as _;
    use std::io::Read as _;
    assert_eq!(&bytes[..2], &[0x1f, 0x8b], "not gzipped");
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut raw)
        .unwrap();
    proto::Profile::decode(raw.as_slice()).unwrap()
}

fn render_bytes(mut renderer: impl Render, report: &Report) -> Vec<u8> {
    let mut out = Vec::new();
    renderer.report(report, &mut out).unwrap();
    out
}

/// A pprof profile's stacks as function names, outermost first, with their values.
fn pprof_stacks(profile: &proto::Profile) -> Vec<(Vec<String>, Vec<i64>)> {
    let s = |i: i64| profile.string_table[i as usize].clone();
    let function = |id: u64| s(profile.function[id as usize - 1].name);
    profile
        .sample
        .iter()
        .map(|sample| {
            let mut names: Vec<String> = sample
                .location_id
                .iter()
                .flat_map(|&id| {
                    let location = &profile.location[id as usize - 1];
                    assert_eq!(location.id, id);
                    location.line.iter().map(|l| function(l.function_id))
                })
                .collect();
            names.reverse();
            (names, sample.value.clone())
        })
        .collect()
}

#[test]
fn pprof_has_the_modes_sample_types_frames_and_labels() {
    let mut report = report(true);
    report.stacks[0].frames = Arc::from(
        report.stacks[0]
            .frames
            .iter()
            .map(|f| match f.function.as_deref() {
                Some("read_request") => Arc::new(Frame {
                    build_id: Some("d1e5".into()),
                    ..(**f).clone()
                }),
                _ => f.clone(),
            })
            .collect::<Vec<_>>(),
    );
    let profile = pprof_of(&render_bytes(Pprof, &report));
    let s = |i: i64| profile.string_table[i as usize].as_str();
    assert_eq!(s(0), "");
    let types: Vec<(&str, &str)> = profile
        .sample_type
        .iter()
        .map(|t| (s(t.r#type), s(t.unit)))
        .collect();
    assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
    assert_eq!(s(profile.default_sample_type), "cpu");
    assert_eq!(profile.period, 1_000_000_000 / 99);
    assert_eq!(profile.duration_nanos, 5_000_000_000);

    let stacks = pprof_stacks(&profile);
    assert_eq!(
        stacks[0].0,
        [
            "__libc_start_call_main",
            "main",
            "read_request",
            "parse",
            "ksys_read",
            "tcp_recvmsg"
        ]
    );
    assert_eq!(stacks[0].1, [873, 873 * (1_000_000_000 / 99)]);
    assert_eq!(stacks[1].0, ["[libc.so.6]", "[truncated]"]);

    // `parse` was inlined into `read_request`: one location, two lines, innermost first.
    let leafmost_user = &profile.location[profile.sample[0].location_id[2] as usize - 1];
    let lines: Vec<&str> = leafmost_user
        .line
        .iter()
        .map(|l| s(profile.function[l.function_id as usize - 1].name))
        .collect();
    assert_eq!(lines, ["parse", "read_request"]);
    assert_eq!(leafmost_user.line[0].line, 77);

    // Mappings: each file at its load address, with its build id; one for the kernel.
    let mapping = &profile.mapping[leafmost_user.mapping_id as usize - 1];
    assert_eq!(s(mapping.filename), "/src/app/worker");
    assert_eq!(s(mapping.build_id), "d1e5");
    assert_eq!(mapping.memory_start, 0x5555_5555_5130);
    assert_eq!(mapping.file_offset, 0x1130);
    assert!(profile
        .mapping
        .iter()
        .any(|m| s(m.filename) == "[kernel.kallsyms]"));
    // The target's executable first (pprof names the profile after it), ids still positions.
    assert_eq!(s(profile.mapping[0].filename), "/src/app/worker");
    assert!(profile
        .mapping
        .iter()
        .enumerate()
        .all(|(i, m)| m.id == i as u64 + 1));

    let labels: Vec<(&str, &str)> = profile.sample[0]
        .label
        .iter()
        .map(|l| (s(l.key), s(l.str)))
        .collect();
    assert_eq!(
        labels,
        [
            ("pid", "4242"),
            ("process", "worker"),
            ("tid", "4243"),
            ("thread", "worker-1"),
            ("annotation", "running on CPU")
        ]
    );
}

#[test]
fn pprof_off_cpu_is_nanoseconds_and_dumps_count_threads() {
    let mut off_cpu = report(false);
    off_cpu.run.mode = Mode::OffCpu;
    off_cpu.stacks[0].state = TaskState::Sleeping;
    let profile = pprof_of(&render_bytes(Pprof, &off_cpu));
    let s = |i: i64| profile.string_table[i as usize].as_str();
    let types: Vec<(&str, &str)> = profile
        .sample_type
        .iter()
        .map(|t| (s(t.r#type), s(t.unit)))
        .collect();
    assert_eq!(types, [("off_cpu", "nanoseconds")]);
    assert_eq!(profile.sample[0].value, [873_000]);
    assert!(profile.sample[0]
        .label
        .iter()
        .any(|l| s(l.key) == "state" && s(l.str) == "sleeping"));

    let mut bytes = Vec::new();
    Pprof.dump(&dump(), &mut bytes).unwrap();
    let profile = pprof_of(&bytes);
    let s = |i: i64| profile.string_table[i as usize].as_str();
    assert_eq!(s(profile.sample_type[0].r#type), "threads");
    let counts: Vec<i64> = profile.sample.iter().map(|x| x.value[0]).collect();
    let expected: Vec<i64> = dump().groups.iter().map(|g| g.tids.len() as i64).collect();
    assert_eq!(counts, expected);
}

#[test]
fn speedscope_has_the_schemas_required_fields_and_a_profile_per_thread() {
    let text = String::from_utf8(render_bytes(Speedscope, &report(true))).unwrap();
    let file: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        file["$schema"],
        "https://www.speedscope.app/file-format-schema.json"
    );
    let frames = file["shared"]["frames"].as_array().unwrap();
    assert!(frames.iter().all(|f| f["name"].is_string()));
    let profiles = file["profiles"].as_array().unwrap();
    assert_eq!(profiles.len(), 2, "one profile per thread:\n{text}");
    for profile in profiles {
        for field in [
            "type",
            "name",
            "unit",
            "startValue",
            "endValue",
            "samples",
            "weights",
        ] {
            assert!(!profile[field].is_null(), "no {field} in {profile}");
        }
        assert_eq!(profile["type"], "sampled");
        assert_eq!(profile["unit"], "seconds");
        assert_eq!(
            profile["samples"].as_array().unwrap().len(),
            profile["weights"].as_array().unwrap().len()
        );
    }
    assert_eq!(
        profiles[0]["name"],
        "pid 4242 (worker), thread 4243 (worker-1)"
    );
    let names: Vec<&str> = profiles[0]["samples"][0]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            frames[i.as_u64().unwrap() as usize]["name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(
        names,
        [
            "__libc_start_call_main",
            "main",
            "read_request",
            "parse",
            "ksys_read_[k]",
            "tcp_recvmsg_[k]"
        ]
    );
    let weight = profiles[0]["weights"][0].as_f64().unwrap();
    assert!((weight - 873.0 / 99.0).abs() < 1e-9, "{weight}");
}

#[test]
fn json_reads_back_into_the_same_report_and_dump() {
    let original = report(true);
    let document = Document::from_report(&original);
    let text = serde_json::to_string(&document).unwrap();
    let back = serde_json::from_str::<Document>(&text)
        .unwrap()
        .into_report()
        .unwrap();
    // RFC 3339 keeps the instant; the sizes of kernel maps are not in the JSON,
    // and of the reasons of unknown frames only their texts.
    let reasons_as_text = |frames: &Arc<[Arc<Frame>]>| -> Arc<[Arc<Frame>]> {
        frames
            .iter()
            .map(|frame| {
                Arc::new(Frame {
                    unknown: frame.unknown.as_ref().map(|u| Unknown::Text(u.to_string())),
                    ..Frame::clone(frame)
                })
            })
            .collect()
    };
    let stacks = (original.stacks.iter())
        .map(|stack| StackReport {
            frames: reasons_as_text(&stack.frames),
            ..stack.clone()
        })
        .collect();
    let expected = Report {
        run: RunInfo {
            stack_storage_size: 0,
            count_map_size: 0,
            ring_buffer_size: 0,
            ..original.run.clone()
        },
        stacks,
        ..original
    };
    assert_eq!(back, expected);

    let dump = python_dump();
    let back = DumpDocument::from_dump(&dump).into_dump().unwrap();
    assert_eq!(back, dump);
}

fn push_config(url: &str, format: crate::config::PushFormat) -> crate::config::PushConfig {
    crate::config::PushConfig {
        url: url.into(),
        format,
        name: "shop".into(),
        labels: vec![("env".into(), "prod,eu".into())],
        headers: Vec::new(),
    }
}

#[test]
fn push_folded_is_one_request_per_thread_with_labels_in_the_name() {
    use super::push::{Body, Client};
    let client = Client::new(push_config("http://x", crate::config::PushFormat::Folded));
    let requests = client.requests(&report(true));
    assert_eq!(requests.len(), 2, "one request per thread");
    let query: std::collections::HashMap<_, _> = requests[0].query.iter().cloned().collect();
    let name = &query["name"];
    assert!(name.starts_with("shop.cpu{host="), "{name}");
    // Reserved characters cannot break the name's label syntax.
    assert!(
        name.ends_with(",env=prod_eu,pid=4242,process=worker,tid=4243,thread=worker-1}"),
        "{name}"
    );
    assert_eq!(query["format"], "folded");
    assert_eq!(query["sampleRate"], "99");
    assert_eq!(query["from"], report(true).start.timestamp().to_string());
    let Body::Folded(body) = &requests[0].body else {
        panic!("not folded")
    };
    assert_eq!(
        body,
        "__libc_start_call_main;main;read_request;parse;ksys_read_[k];tcp_recvmsg_[k] 873\n"
    );
}

#[test]
fn push_off_cpu_counts_microseconds_as_time() {
    use super::push::{Body, Client};
    let mut off_cpu = report(false);
    off_cpu.run.mode = Mode::OffCpu;
    let client = Client::new(push_config("http://x", crate::config::PushFormat::Pprof));
    let requests = client.requests(&off_cpu);
    assert_eq!(
        requests.len(),
        1,
        "pprof carries every process in one request"
    );
    let query: std::collections::HashMap<_, _> = requests[0].query.iter().cloned().collect();
    assert_eq!(query["sampleRate"], "1000000");
    assert!(query["name"].starts_with("shop{host="));
    let Body::Pprof { types, .. } = &requests[0].body else {
        panic!("not pprof")
    };
    let types: serde_json::Value = serde_json::from_str(types).unwrap();
    assert_eq!(types["off_cpu"]["units"], "samples");
}

#[test]
fn push_queue_is_bounded_and_counts_what_it_drops() {
    use super::push::{Pusher, MAX_QUEUED_INTERVALS};
    // Nothing listens on port 1: every request fails at once.
    let pusher = Pusher::start(push_config(
        "http://127.0.0.1:1",
        crate::config::PushFormat::Pprof,
    ));
    for _ in 0..10 {
        pusher.send(&report(false));
        assert!(pusher.queued() <= MAX_QUEUED_INTERVALS);
    }
    let stats = pusher.finish(std::time::Duration::from_millis(300));
    assert_eq!(stats.sent, 0);
    assert_eq!(stats.dropped, 10, "{stats:?}");
    assert!(
        stats
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("127.0.0.1:1")),
        "{stats:?}"
    );
}

#[test]
fn speedscope_dump_golden() {
    let expected = concat!(
        r#"{"$schema":"https://www.speedscope.app/file-format-schema.json","version":"0.0.1","#,
        r#""exporter":"tripod-bpf "#,
        env!("CARGO_PKG_VERSION"),
        r#"","name":"tripod-bpf dump of pid 4242 (worker), 2026-11-21 10:00:05.000","#,
        r#""activeProfileIndex":0,"shared":{"frames":[{"name":"__libc_start_call_main"},"#,
        r#"{"name":"main","file":"/src/app/main.c"},{"name":"read_request","file":"/src/app/net.c"},"#,
        r#"{"name":"parse","file":"/src/app/net.c"},{"name":"ksys_read_[k]"},"#,
        r#"{"name":"tcp_recvmsg_[k]"},{"name":"[libc.so.6]"},{"name":"[truncated]"}]},"#,
        r#""profiles":[{"type":"sampled","name":"pid 4242 (worker)","unit":"none","#,
        r#""startValue":0.0,"endValue":3.0,"samples":[[0,1,2,3,4,5],[6,7]],"weights":[2.0,1.0]}]}"#,
        "\n"
    );
    assert_eq!(render_dump(Speedscope), expected);
}

/// What a crafted file puts in every name: a terminal title, a bell, a
/// forged line, a C1 CSI.
const HOSTILE: &str = "\x1b]0;pwned\x07\r\nFAKE\u{9b}2J\0";

/// Appends [`HOSTILE`] to every string of `value` under a key that holds a
/// name, a path or a description (not to the enumerations and numbers).
fn taint(value: &mut serde_json::Value) {
    const TEXT: &[&str] = &[
        "target",
        "event",
        "unwind",
        "comm",
        "exe",
        "module",
        "build_id",
        "function",
        "file",
        "unknown",
        "annotation",
        "syscall",
        "name",
        "value",
    ];
    match value {
        serde_json::Value::Object(fields) => {
            for (key, field) in fields.iter_mut() {
                match field {
                    serde_json::Value::String(text) if TEXT.contains(&key.as_str()) => {
                        text.push_str(HOSTILE)
                    }
                    other => taint(other),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(taint),
        _ => {}
    }
}

/// Panics if `text` holds a control character other than newlines (and the
/// tabs of `allowed`), or a line forged by a name.
fn assert_no_controls(what: &str, text: &str, allowed: &[char]) {
    let bad: Vec<char> = text
        .chars()
        .filter(|&c| crate::text::is_control(c) && c != '\n' && !allowed.contains(&c))
        .collect();
    assert!(bad.is_empty(), "{what}: raw controls {bad:?} in:\n{text:?}");
    assert!(
        !text.lines().any(|l| l.starts_with("FAKE")),
        "{what}: a forged line:\n{text}"
    );
    // (Folded output writes the `;` as `:`.)
    assert!(
        text.contains("\\x1b]0") && text.contains("pwned\\x07\\x0d\\x0aFAKE"),
        "{what}: no visible escape:\n{text}"
    );
}

/// Every string of a JSON value, decoded.
fn strings(value: &serde_json::Value) -> Vec<String> {
    match value {
        serde_json::Value::String(text) => vec![text.clone()],
        serde_json::Value::Array(items) => items.iter().flat_map(strings).collect(),
        serde_json::Value::Object(fields) => fields.values().flat_map(strings).collect(),
        _ => Vec::new(),
    }
}

#[test]
fn documents_read_back_show_crafted_names_escaped() {
    let mut value = serde_json::to_value(Document::from_report(&report(true))).unwrap();
    taint(&mut value);
    let document: Document = serde_json::from_value(value).unwrap();
    let report = document.into_report().expect("a valid document");
    assert_no_controls("log", &render(Log, &report, None), &[]);
    assert_no_controls("folded", &render(Folded::default(), &report, None), &[]);
    // JSON escapes controls itself; what a reader decodes must be clean too.
    let json = render(Json, &report, None);
    let decoded = serde_json::from_str(&json).unwrap();
    assert_no_controls("json", &strings(&decoded).join("\n"), &[]);
    assert!(
        report.stacks[0].frames[0]
            .function
            .as_deref()
            .is_some_and(|f| f.ends_with("\\x0d\\x0aFAKE\\x9b2J\\x00")),
        "{:?}",
        report.stacks[0].frames[0]
    );

    let mut value = serde_json::to_value(DumpDocument::from_dump(&python_dump())).unwrap();
    taint(&mut value);
    let document: DumpDocument = serde_json::from_value(value).unwrap();
    let dump = document.into_dump().expect("a valid dump");
    let mut out = Vec::new();
    Log.dump(&dump, &mut out).unwrap();
    assert_no_controls("log dump", &String::from_utf8(out).unwrap(), &[]);
    let mut out = Vec::new();
    Folded::default().dump(&dump, &mut out).unwrap();
    assert_no_controls("folded dump", &String::from_utf8(out).unwrap(), &[]);
    let locals = dump.threads[0].locals.as_ref().unwrap();
    assert!(locals[1].variables[1].1.ends_with("\\x00"), "{locals:?}");
}

const CONTAINER_ID: &str = "3f2a1b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708";

/// [`report`] of a process in a Kubernetes pod's container, pid 1 in its
/// own pid namespace.
fn containerised_report() -> Report {
    let path = format!(
        "/kubepods.slice/kubepods-pod0a1b2c3d_4e5f_6789_abcd_ef0123456789.slice/cri-containerd-{CONTAINER_ID}.scope"
    );
    let cgroup = Arc::new(crate::model::Cgroup {
        container: crate::cgroup::container_of(&path),
        path,
    });
    let mut report = report(false);
    for stack in &mut report.stacks {
        stack.ns_pid = Some(1);
        stack.cgroup = Some(cgroup.clone());
    }
    report.processes[0].ns_pid = Some(1);
    report.processes[0].cgroup = Some(cgroup);
    report
}

#[test]
fn log_headers_name_the_container_and_the_namespace_pid() {
    let text = render(Log, &containerised_report(), None);
    let expected = "[tripod] 2026-11-21 10:00:05..10:00:10  pid 4242 (worker; ns pid 1) in \
                    containerd:3f2a1b4c5d6e  tid 4243  873 samples (87.3%): running on CPU\n";
    assert!(text.contains(expected), "{text}");
    let mut plain = containerised_report();
    plain.stacks[1].cgroup = Some(Arc::new(crate::model::Cgroup {
        path: "/system.slice/cron.service".into(),
        container: None,
    }));
    plain.stacks[1].ns_pid = None;
    let text = render(Log, &plain, None);
    assert!(
        text.contains("  pid 4242 (worker) in /system.slice/cron.service  2 threads  127 samples"),
        "{text}"
    );

    let mut dump = dump();
    dump.ns_pid = Some(1);
    dump.cgroup = containerised_report().processes[0].cgroup.clone();
    let text = render_dump(Log);
    assert!(
        text.contains("  pid 4242 (worker)  /src/app/worker  "),
        "{text}"
    );
    let mut out = Vec::new();
    Log.dump(&dump, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains(
            "  pid 4242 (worker; ns pid 1) in containerd:3f2a1b4c5d6e  /src/app/worker  "
        ),
        "{text}"
    );
}

#[test]
fn json_processes_carry_cgroup_container_and_namespace_pid() {
    let report = containerised_report();
    let text = render(Json, &report, None);
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    let process = &value["processes"][0];
    assert_eq!(process["ns_pid"], 1);
    assert_eq!(
        process["cgroup"],
        format!(
            "/kubepods.slice/kubepods-pod0a1b2c3d_4e5f_6789_abcd_ef0123456789.slice/cri-containerd-{CONTAINER_ID}.scope"
        )
    );
    assert_eq!(
        process["container"],
        serde_json::json!({
            "runtime": "containerd",
            "id": CONTAINER_ID,
            "pod": "0a1b2c3d-4e5f-6789-abcd-ef0123456789",
        })
    );
    // Absent, not null, when unknown: documents of processes outside
    // containers look as they always did.
    let plain: serde_json::Value =
        serde_json::from_str(&render(Json, &super::tests::report(false), None)).unwrap();
    let fields: Vec<&String> = plain["processes"][0].as_object().unwrap().keys().collect();
    assert_eq!(fields, ["comm", "exe", "pid", "samples", "threads"]);
    // Read back, every stack of the process gets its cgroup again.
    let back = Document::from_report(&report).into_report().unwrap();
    assert_eq!(back.processes[0].cgroup, report.processes[0].cgroup);
    assert_eq!(back.stacks[1].cgroup, report.stacks[1].cgroup);
    assert_eq!(back.stacks[1].ns_pid, Some(1));
    let mut dump = dump();
    dump.cgroup = report.processes[0].cgroup.clone();
    dump.ns_pid = Some(1);
    let back = DumpDocument::from_dump(&dump).into_dump().unwrap();
    assert_eq!((back.ns_pid, back.cgroup), (dump.ns_pid, dump.cgroup));
}

#[test]
fn folded_prefixes_put_the_container_or_cgroup_first() {
    use crate::config::FoldedPrefix;
    let report = containerised_report();
    let folded = |prefix| render(Folded { prefix }, &report, None);
    assert_eq!(
        folded(FoldedPrefix::Process),
        render(Folded::default(), &report, None)
    );
    assert!(folded(FoldedPrefix::Process).starts_with("worker;[libc.so.6]"));
    let expected = "\
containerd:3f2a1b4c5d6e;worker;[libc.so.6];[truncated] 127
containerd:3f2a1b4c5d6e;worker;__libc_start_call_main;main;read_request;parse;ksys_read_[k];tcp_recvmsg_[k] 873
";
    assert_eq!(folded(FoldedPrefix::Container), expected);
    let cgroup = folded(FoldedPrefix::Cgroup);
    assert!(
        cgroup.starts_with(&format!(
            "/kubepods.slice/kubepods-pod0a1b2c3d_4e5f_6789_abcd_ef0123456789.slice/cri-containerd-{CONTAINER_ID}.scope;worker;[libc.so.6]"
        )),
        "{cgroup}"
    );
    // Unknown cgroups (merged exited processes) say so.
    let text = render(
        Folded {
            prefix: FoldedPrefix::Container,
        },
        &super::tests::report(false),
        None,
    );
    assert!(text.starts_with("[unknown cgroup];worker;"), "{text}");
}

#[test]
fn pprof_and_push_label_samples_with_the_container() {
    use super::push::Client;
    let report = containerised_report();
    let profile = pprof_of(&render_bytes(Pprof, &report));
    let labels: Vec<(String, String)> = profile.sample[0]
        .label
        .iter()
        .map(|l| {
            (
                profile.string_table[l.key as usize].clone(),
                profile.string_table[l.str as usize].clone(),
            )
        })
        .collect();
    let get = |key: &str| {
        labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("container_id"), Some(CONTAINER_ID));
    assert_eq!(get("container_runtime"), Some("containerd"));
    assert_eq!(get("pod_uid"), Some("0a1b2c3d-4e5f-6789-abcd-ef0123456789"));
    assert!(get("cgroup").is_some_and(|c| c.starts_with("/kubepods.slice/")));
    // Not there for processes outside any known cgroup.
    let plain = pprof_of(&render_bytes(Pprof, &super::tests::report(false)));
    assert!(!plain
        .string_table
        .iter()
        .any(|s| s == "container_id" || s == "cgroup"));

    let client = Client::new(push_config("http://x", crate::config::PushFormat::Folded));
    let requests = client.requests(&report);
    let query: std::collections::HashMap<_, _> = requests[0].query.iter().cloned().collect();
    assert!(
        query["name"].contains(&format!(
            ",container_id={CONTAINER_ID},container_runtime=containerd,"
        )),
        "{}",
        query["name"]
    );
}
