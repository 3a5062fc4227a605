//! Tripod-style tracebacks: for each interval a header, then each distinct
//! stack, most frequent first, as a Python-style traceback, outermost first.
use std::io::{self, Write};

use chrono::{DateTime, Local};

use super::Render;
use crate::report::{
    process_label, Completeness, Frame, FrameKind, Losses, Report, StackReport, Summary,
};

pub struct Log;

impl Render for Log {
    fn report(&mut self, report: &Report, out: &mut dyn Write) -> io::Result<()> {
        let range = time_range(&report.start, &report.end);
        writeln!(
            out,
            "[tripod] ===== {range}  {}  {} samples, {} lost, {} distinct stacks =====",
            report.run.target,
            report.samples,
            report.losses.dropped(),
            report.stacks.len()
        )?;
        for stack in &report.stacks {
            writeln!(out)?;
            write_stack(out, &range, stack, report.samples)?;
        }
        writeln!(out)
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
            "[tripod] {} samples, {} distinct stacks, {} processes, {} threads; {} at {} Hz ({})",
            summary.samples,
            summary.distinct_stacks,
            summary.processes,
            summary.threads,
            run.target,
            run.frequency,
            run.event
        )?;
        writeln!(out, "[tripod] {}", describe_losses(&summary.losses))?;
        for c in &summary.completeness {
            writeln!(out, "[tripod] {}", describe_completeness(c))?;
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
                    "  {} samples in {} threads of {} processes: {}",
                    d.count,
                    d.threads,
                    d.processes,
                    d.functions.join(", ")
                )?;
            }
        }
        Ok(())
    }
}

/// One line on how complete a process's user stacks were.
pub fn describe_completeness(c: &Completeness) -> String {
    format!(
        "{}: {:.1}% of {} samples reached the thread root, {} truncated",
        process_label(c.pid, &c.comm),
        c.percent_complete(),
        c.samples,
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
    writeln!(
        out,
        "[tripod] {range}  {}  {thread}  {} samples ({share:.1}%)",
        process_label(stack.pid, &stack.comm),
        stack.count
    )?;
    writeln!(out, "Traceback (most recent call last):")?;
    for frame in stack.frames.iter() {
        writeln!(out, "  {}", frame_line(frame))?;
    }
    Ok(())
}

/// One frame as a traceback line.
pub fn frame_line(frame: &Frame) -> String {
    let inlined = if frame.inlined { " [inlined]" } else { "" };
    let unknown = || {
        format!(
            "[unknown: {}]",
            frame.unknown.as_deref().unwrap_or("no symbol")
        )
    };
    match frame.kind {
        FrameKind::Truncated => return "[truncated]".to_string(),
        FrameKind::Missing => {
            let space = if frame.kernel { "[kernel] " } else { "" };
            return format!("{space}{}", unknown());
        }
        FrameKind::Code => {}
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
