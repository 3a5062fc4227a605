//! Tripod-style tracebacks: for each interval a header, then each distinct
//! stack, most frequent first, as a Python-style traceback, outermost first.
//! Dumps are written in the spirit of stacktraces: threads grouped by stack,
//! largest group first, `5 * [tids] what they are doing`, then the frames.
use std::io::{self, Write};

use chrono::{DateTime, Local};

use super::Render;
use crate::{
    config::Mode,
    exceptions::Tracebacks,
    model::{process_header, process_label, Frame, FrameKind, FrameLocals},
    report::{
        Completeness, Losses, Report, RunInfo, StackReport, Summary, ThreadDump, ThreadGroup,
    },
};

pub struct Log;

impl Render for Log {
    fn report(&mut self, report: &Report, out: &mut dyn Write) -> io::Result<()> {
        let range = time_range(&report.start, &report.end);
        let mode = match report.run.mode {
            Mode::Cpu => String::new(),
            Mode::OffCpu => "off-CPU time: ".into(),
            Mode::Wall => format!("wall-clock samples at {} Hz: ", report.run.frequency),
        };
        writeln!(
            out,
            "[tripod] ===== {range}  {}  {mode}{}, {} lost samples, {} distinct stacks =====",
            report.run.target,
            report.run.weight(report.samples),
            report.losses.dropped(),
            report.stacks.len()
        )?;
        for stack in &report.stacks {
            writeln!(out)?;
            write_stack(out, &range, &report.run, stack, report.samples)?;
        }
        writeln!(out)
    }

    fn dump(&mut self, dump: &ThreadDump, out: &mut dyn Write) -> io::Result<()> {
        writeln!(
            out,
            "[tripod] ===== thread dump {}  {}  {}  {}, {} distinct stacks =====",
            dump.time.format("%Y-%m-%d %H:%M:%S%.3f"),
            process_header(dump.pid, &dump.comm, dump.ns_pid, dump.cgroup.as_deref()),
            dump.exe.as_deref().unwrap_or("?"),
            plural(dump.threads.len(), "thread", "threads"),
            dump.groups.len()
        )?;
        for group in &dump.groups {
            writeln!(out)?;
            write_group(out, dump, group)?;
        }
        writeln!(out)
    }

    fn tracebacks(&mut self, tracebacks: &Tracebacks, out: &mut dyn Write) -> io::Result<()> {
        write_tracebacks(tracebacks, out)
    }

    fn summary(&mut self, summary: &Summary, out: &mut dyn Write) -> io::Result<()> {
        let seconds = (summary.end - summary.start).num_milliseconds() as f64 / 1000.0;
        writeln!(
            out,
            "[tripod] ===== summary {}  ({seconds:.1} s) =====",
            time_range(&summary.start, &summary.end)
        )?;
        let run = &summary.run;
        writeln!(
            out,
            "[tripod] {}, {} distinct stacks, {}, {}; {} at {} Hz ({})",
            run.weight(summary.samples),
            summary.distinct_stacks,
            plural(summary.processes, "process", "processes"),
            plural(summary.threads, "thread", "threads"),
            run.target,
            run.frequency,
            run.event
        )?;
        writeln!(out, "[tripod] {}", describe_losses(&summary.losses))?;
        for c in &summary.completeness {
            writeln!(out, "[tripod] {}", describe_completeness(run, c))?;
        }
        for hint in summary.hints() {
            writeln!(out, "[tripod] {hint}")?;
        }
        if !summary.duplicates.is_empty() {
            writeln!(
                out,
                "\nDuplicated stacks (the same frames in more than one thread):"
            )?;
            for d in &summary.duplicates {
                writeln!(
                    out,
                    "  {} in {} threads of {}: {}",
                    run.weight(d.count),
                    d.threads,
                    plural(d.processes, "process", "processes"),
                    d.functions.join(", ")
                )?;
            }
        }
        Ok(())
    }
}

/// `1 process`, `2 processes`.
fn plural(count: usize, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

/// One line on how complete a process's user stacks were.
pub fn describe_completeness(run: &RunInfo, c: &Completeness) -> String {
    format!(
        "{}: {:.1}% of {} reached the thread root, {} truncated",
        process_label(c.pid, &c.comm),
        c.percent_complete(),
        run.weight(c.samples),
        c.truncated
    )
}

/// One line on what was lost, for the summary and for stderr.
pub fn describe_losses(losses: &Losses) -> String {
    format!(
        "lost: {} samples (count map full), {} samples (ring buffer full); stacks not stored: {} user, {} kernel; \
         unreadable user stacks: {}",
        losses.count_map_full,
        losses.ring_buffer_full,
        losses.user.storage() + losses.user.other,
        losses.kernel.storage() + losses.kernel.other,
        losses.user.unreadable,
    )
}

fn write_stack(
    out: &mut dyn Write,
    range: &str,
    run: &RunInfo,
    stack: &StackReport,
    total: u64,
) -> io::Result<()> {
    let share = if total == 0 {
        0.0
    } else {
        stack.count as f64 * 100.0 / total as f64
    };
    let thread = match (&stack.thread, stack.tids.as_slice()) {
        (Some((tid, name)), _) => format!("tid {tid} ({name})"),
        (None, []) => "-".to_string(),
        (None, [tid]) => format!("tid {tid}"),
        (None, tids) => format!("{} threads", tids.len()),
    };
    // On-CPU samples are all running; other modes say what a thread waited in.
    let state = match (run.mode, stack.state) {
        (Mode::Cpu, _) => String::new(),
        (_, state) => format!(", {}", state.name()),
    };
    let annotation = stack
        .annotation
        .as_deref()
        .map(|a| format!(": {a}"))
        .unwrap_or_default();
    writeln!(
        out,
        "[tripod] {range}  {}  {thread}  {} ({share:.1}%){state}{annotation}",
        process_header(
            stack.pid,
            &stack.comm,
            stack.ns_pid,
            stack.cgroup.as_deref()
        ),
        run.weight(stack.count)
    )?;
    write_traceback(out, &stack.frames)
}

fn write_traceback(out: &mut dyn Write, frames: &[std::sync::Arc<Frame>]) -> io::Result<()> {
    writeln!(out, "Traceback (most recent call last):")?;
    for frame in frames {
        writeln!(out, "  {}", frame_line(frame))?;
        if let Some(source) = &frame.source {
            writeln!(out, "    {source}")?;
        }
    }
    Ok(())
}

/// Each distinct traceback once, most logged first, as Python printed it
/// (chain included), then the stacktraces tool's two summaries: repeated
/// messages and repeated stacks of the raised exceptions.
fn write_tracebacks(tracebacks: &Tracebacks, out: &mut dyn Write) -> io::Result<()> {
    writeln!(
        out,
        "[tripod] ===== {}, {} distinct, in {} =====",
        plural(
            tracebacks.total as usize,
            "Python traceback",
            "Python tracebacks"
        ),
        tracebacks.groups.len(),
        tracebacks.source
    )?;
    for group in &tracebacks.groups {
        writeln!(out)?;
        writeln!(
            out,
            "{} * {} (first at line {})",
            group.count,
            group.raised().title(),
            group.first_line
        )?;
        for (at, exception) in group.chain.iter().enumerate() {
            if let Some(link) = exception.link.filter(|_| at > 0) {
                writeln!(out, "\n{}\n", link.sentence())?;
            }
            write_traceback(out, &exception.frames)?;
            writeln!(out, "{}", exception.title())?;
        }
    }
    writeln!(out)?;
    writeln!(out, "Duplicated error messages:")?;
    for (count, message) in &tracebacks.duplicated_messages {
        writeln!(out, "  {count}: {message}")?;
    }
    writeln!(out, "Duplicated stacktraces:")?;
    for (count, functions) in &tracebacks.duplicated_stacks {
        writeln!(out, "  {count}: {}", functions.join(", "))?;
    }
    writeln!(out)
}

/// `4 * [11, 12, 13, 14] waiting on a condition variable`, what the threads
/// are (state, system call, names), then their stack.
fn write_group(out: &mut dyn Write, dump: &ThreadDump, group: &ThreadGroup) -> io::Result<()> {
    let tids: Vec<String> = group.tids.iter().map(u32::to_string).collect();
    writeln!(
        out,
        "{} * [{}] {}",
        group.tids.len(),
        tids.join(", "),
        group.annotation.as_deref().unwrap_or("(no rule matched)")
    )?;
    let mut names: Vec<&str> = Vec::new();
    let mut syscalls: Vec<&str> = Vec::new();
    for thread in dump.threads.iter().filter(|t| group.tids.contains(&t.tid)) {
        if !names.contains(&thread.name.as_str()) {
            names.push(&thread.name);
        }
        if let Some(syscall) = thread.syscall.as_deref() {
            if !syscalls.contains(&syscall) {
                syscalls.push(syscall);
            }
        }
    }
    let syscall = if syscalls.is_empty() {
        String::new()
    } else {
        format!(" in {}", syscalls.join(", "))
    };
    writeln!(
        out,
        "  {} ({}){syscall}; named {}",
        group.state.name(),
        group.state.letter(),
        names.join(", ")
    )?;
    write_traceback(out, &group.frames)?;
    for thread in dump.threads.iter().filter(|t| group.tids.contains(&t.tid)) {
        if let Some(frames) = thread.locals.as_deref().filter(|f| !f.is_empty()) {
            write_locals(out, thread.tid, &thread.name, frames)?;
        }
    }
    Ok(())
}

/// Tripod's "Full backtrace with local variables", for one thread.
fn write_locals(
    out: &mut dyn Write,
    tid: u32,
    name: &str,
    frames: &[FrameLocals],
) -> io::Result<()> {
    writeln!(
        out,
        "Local variables of tid {tid} ({name}), most recent call last:"
    )?;
    for frame in frames {
        let line = frame
            .line
            .map(|l| format!(", line {l}"))
            .unwrap_or_default();
        writeln!(
            out,
            "  File \"{}\"{line}, in {}",
            frame.file, frame.function
        )?;
        if frame.variables.is_empty() {
            writeln!(out, "    Local variables: none")?;
            continue;
        }
        writeln!(out, "    Local variables:")?;
        let last = frame.variables.len() - 1;
        for (i, (name, value)) in frame.variables.iter().enumerate() {
            let open = if i == 0 { "{" } else { " " };
            let close = if i == last { "}" } else { "," };
            writeln!(out, "    {open}'{name}': {value}{close}")?;
        }
    }
    Ok(())
}

/// One frame as a traceback line.
pub fn frame_line(frame: &Frame) -> String {
    let inlined = if frame.inlined { " [inlined]" } else { "" };
    let unknown = || match &frame.unknown {
        Some(why) => format!("[unknown: {why}]"),
        None => "[unknown: no symbol]".to_string(),
    };
    match frame.kind {
        FrameKind::Truncated => return "[truncated]".to_string(),
        FrameKind::Missing => {
            let space = if frame.kernel { "[kernel] " } else { "" };
            return format!("{space}{}", unknown());
        }
        FrameKind::Code | FrameKind::Python => {}
    }
    let address = frame.address.map(|a| format!("{a:#x}")).unwrap_or_default();
    if frame.kernel {
        return match &frame.function {
            Some(function) => format!("[kernel] {function}"),
            None => format!("[kernel] {address} {}", unknown()),
        };
    }
    let location = frame.file.as_deref().or(frame.module.as_deref());
    match (location, &frame.function) {
        (Some(location), Some(function)) => match (frame.file.is_some(), frame.line) {
            (true, Some(line)) => {
                format!("File \"{location}\", line {line}, in {function}{inlined}")
            }
            _ => format!("File \"{location}\", in {function}{inlined}"),
        },
        (Some(module), None) => match frame.offset {
            Some(offset) => format!("File \"{module}\", offset {offset:#x}, in {}", unknown()),
            None => format!("File \"{module}\", at {address}, in {}", unknown()),
        },
        (None, Some(function)) => format!("{address} in {function}{inlined}"),
        (None, None) => format!("{address} in {}", unknown()),
    }
}

fn time_range(start: &DateTime<Local>, end: &DateTime<Local>) -> String {
    let end_format = if start.date_naive() == end.date_naive() {
        "%H:%M:%S"
    } else {
        "%Y-%m-%d %H:%M:%S"
    };
    format!(
        "{}..{}",
        start.format("%Y-%m-%d %H:%M:%S"),
        end.format(end_format)
    )
}
