use chrono::TimeZone as _;

use super::*;
use crate::{config::OutputFormat, output::renderer};

fn code(function: &str, file: Option<(&str, u32)>, module: &str) -> Arc<Frame> {
    Arc::new(Frame {
        module: Some(module.into()),
        offset: Some(0x1130),
        function: Some(function.into()),
        file: file.map(|(f, _)| f.into()),
        line: file.map(|(_, l)| l),
        ..Frame::code(false, Some(0x5555_5555_5130))
    })
}

fn python(function: &str, line: u32, source: Option<&str>) -> Arc<Frame> {
    Arc::new(Frame {
        function: Some(function.into()),
        file: Some("/srv/app.py".into()),
        line: Some(line),
        source: source.map(str::to_string),
        ..Frame::python()
    })
}

/// Every kind of frame the log writes.
fn frames() -> Arc<[Arc<Frame>]> {
    let libc = "/usr/lib/x86_64-linux-gnu/libc.so.6";
    let mut kernel = Frame::code(true, Some(0xffff_ffff_8100_0000));
    kernel.function = Some("ksys_read".into());
    Arc::from(vec![
        Arc::new(Frame::missing(false, Unknown::PythonUnreadable)),
        code("__libc_start_call_main", None, libc),
        python("<module>", 30, Some("main()")),
        python("work", 12, None),
        code("main", Some(("/src/main.c", 41)), "/src/app"),
        Arc::new(Frame {
            inlined: true,
            ..(*code("parse", Some(("/src/net.c", 77)), "/src/app")).clone()
        }),
        Arc::new(Frame {
            module: Some(libc.into()),
            offset: Some(0x2a1b0),
            unknown: Some(Unknown::MissingSyms),
            ..Frame::code(false, Some(0x7f00_0002_a1b0))
        }),
        Arc::new(Frame::code(false, Some(0x7f00_0000_0010))),
        Arc::new(Frame::truncated(false)),
        Arc::new(kernel),
    ])
}

fn report(mode: Mode) -> Report {
    let stack = |tid: u32, count, state, annotation: Option<&str>| StackReport {
        pid: 4242,
        comm: "worker x".into(),
        ns_pid: Some(1),
        cgroup: Some(Arc::new(Cgroup {
            path: String::new(),
            container: Some(Container {
                runtime: "docker".into(),
                id: "0123456789ab".into(),
                pod: None,
            }),
        })),
        thread: Some((tid, format!("worker-{tid}"))),
        tids: Vec::new(),
        count,
        state,
        annotation: annotation.map(str::to_string),
        frames: frames(),
    };
    let mut report = Report {
        run: RunInfo {
            target: "pid 4242".into(),
            mode,
            frequency: if mode == Mode::Wall { 49 } else { 0 },
            event: "unknown".into(),
            per_thread: true,
            stack_storage_size: 0,
            count_map_size: 0,
            unwind: "unknown".into(),
            ring_buffer_size: 0,
        },
        start: Local.with_ymd_and_hms(2026, 11, 21, 10, 0, 5).unwrap(),
        end: Local.with_ymd_and_hms(2026, 11, 21, 10, 0, 10).unwrap(),
        samples: 1000,
        losses: Losses {
            count_map_full: 3,
            ..Losses::default()
        },
        stacks: vec![
            stack(4243, 873, TaskState::Sleeping, Some("blocked: reading")),
            stack(4244, 127, TaskState::Runnable, None),
        ],
        processes: Vec::new(),
    };
    if mode == Mode::Cpu {
        for stack in &mut report.stacks {
            stack.state = TaskState::Running;
        }
    }
    report.processes = processes_of(&report.stacks);
    report
}

fn dump() -> ThreadDump {
    let thread = |tid, name: &str, syscall: Option<&str>, locals| DumpedThread {
        tid,
        name: name.into(),
        state: TaskState::Sleeping,
        syscall: syscall.map(str::to_string),
        locals,
    };
    let locals = vec![
        FrameLocals {
            function: "<module>".into(),
            file: "/srv/app.py".into(),
            line: Some(30),
            variables: vec![],
        },
        FrameLocals {
            function: "work".into(),
            file: "/srv/app.py".into(),
            line: Some(12),
            variables: vec![
                ("count".into(), "3".into()),
                ("name".into(), "'a, b}'".into()),
            ],
        },
    ];
    ThreadDump {
        pid: 4242,
        ns_pid: None,
        comm: "worker".into(),
        exe: Some("/src/app".into()),
        cgroup: None,
        time: Local.with_ymd_and_hms(2026, 11, 21, 10, 0, 5).unwrap(),
        threads: vec![
            thread(4242, "main", Some("futex"), Some(locals)),
            thread(4243, "reader", Some("read"), None),
            thread(4244, "reader", Some("read"), None),
        ],
        groups: vec![
            ThreadGroup {
                tids: vec![4243, 4244],
                state: TaskState::Sleeping,
                annotation: Some("blocked reading a file descriptor".into()),
                frames: frames(),
            },
            ThreadGroup {
                tids: vec![4242],
                state: TaskState::Sleeping,
                annotation: None,
                frames: frames()[..4].into(),
            },
        ],
    }
}

fn log_of(saved: &Saved, format: OutputFormat) -> String {
    let mut out = Vec::new();
    let mut render = renderer(format);
    match saved {
        Saved::Recording(report) => render.report(report, &mut out).unwrap(),
        Saved::Dump(dump) => render.dump(dump, &mut out).unwrap(),
    }
    String::from_utf8(out).unwrap()
}

fn read_back(text: &str) -> (Vec<Saved>, Skipped) {
    let mut documents = LogDocuments::new(text.as_bytes());
    let saved = documents.by_ref().map(|d| d.unwrap().1).collect::<Vec<_>>();
    assert_eq!(documents.read(), saved.len());
    (saved, documents.skipped())
}

/// What the log shows of a document is what reading it back gives: written
/// again, in the log and in the other text formats, it is the same.
#[test]
fn recordings_and_dumps_read_back_as_written() {
    let documents = [
        Saved::Recording(report(Mode::Cpu)),
        Saved::Recording(report(Mode::OffCpu)),
        Saved::Recording(report(Mode::Wall)),
        Saved::Dump(dump()),
    ];
    let log: String = documents
        .iter()
        .map(|d| log_of(d, OutputFormat::Log))
        .collect();
    let (back, skipped) = read_back(&log);
    assert_eq!(skipped, Skipped::default(), "{log}");
    assert_eq!(back.len(), documents.len());
    for (original, back) in documents.iter().zip(&back) {
        for format in [OutputFormat::Log, OutputFormat::Folded] {
            assert_eq!(log_of(back, format), log_of(original, format));
        }
    }
    let Saved::Recording(recording) = &back[0] else {
        panic!("not a recording")
    };
    assert_eq!(recording.stacks[0].count, 873);
    assert_eq!(recording.stacks[0].frames[2].kind, FrameKind::Python);
    assert_eq!(recording.stacks[0].frames[3].kind, FrameKind::Python);
    assert_eq!(recording.processes, report(Mode::Cpu).processes);
    let Saved::Dump(dump_back) = &back[3] else {
        panic!("not a dump")
    };
    assert_eq!(dump_back.threads, dump().threads);
}

#[test]
fn garbled_and_cut_logs_keep_what_parses_and_count_the_rest() {
    let log = log_of(&Saved::Recording(report(Mode::Cpu)), OutputFormat::Log);
    let mut lines: Vec<&str> = log.lines().collect();
    // A garbled frame on line 5 and a stray line; cut in the second stack.
    lines[4] = "  File \"/src/main.c\", lime 41, in main";
    lines.insert(7, "random noise");
    let cut = lines[..lines.len() - 4].join("\n");
    let (back, skipped) = read_back(&format!("noise before\n{cut}"));
    assert_eq!(skipped.count, 3);
    assert_eq!(skipped.first, Some(1));
    let Saved::Recording(recording) = &back[0] else {
        panic!("not a recording")
    };
    assert_eq!(recording.stacks.len(), 2);
    assert_eq!(recording.stacks[0].frames.len(), frames().len() - 1);
}

#[test]
fn summaries_and_traceback_sections_are_passed_over() {
    let log = "[tripod] ===== summary 2026-11-21 10:00:05..10:00:10  (5.0 s) =====\n\
               [tripod] 10 samples, 1 distinct stacks, 1 process, 1 thread; pid 1 at 99 Hz (cpu-clock)\n\
               \nDuplicated stacks (the same frames in more than one thread):\n  10 samples in 2 threads of 1 process: a, b\n";
    let (back, skipped) = read_back(log);
    assert!(back.is_empty());
    assert_eq!(skipped, Skipped::default());
}
