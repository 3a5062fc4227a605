//! Folded stacks, one line per stack: `comm;outer;...;inner count`, the input
//! of flamegraph.pl and inferno. Kernel frames come last with the `_[k]`
//! suffix, as stackcollapse-perf.pl writes them, so flame graphs colour them apart.
//! Counts are samples, or microseconds with `--mode off-cpu` (the format has
//! no header to say so); in a dump, the number of threads with that stack.
//! `--folded-prefix container` or `cgroup` puts the process's container or
//! cgroup first (`docker:0123456789ab;comm;...`), so a flame graph of a
//! whole machine splits by container first.
use std::{
    collections::BTreeMap,
    io::{self, Write},
    sync::Arc,
};

use super::Render;
use crate::{
    config::FoldedPrefix,
    model::{Cgroup, Frame},
    report::{Report, StackReport, Summary, ThreadDump},
};

#[derive(Default)]
pub struct Folded {
    pub prefix: FoldedPrefix,
}

impl Render for Folded {
    fn report(&mut self, report: &Report, out: &mut dyn Write) -> io::Result<()> {
        let lines = report
            .stacks
            .iter()
            .map(|s| (self.prefixed(s.cgroup.as_ref(), folded_stack(s)), s.count));
        write_lines(sorted(lines), out)
    }

    fn summary(&mut self, _summary: &Summary, _out: &mut dyn Write) -> io::Result<()> {
        Ok(())
    }

    fn dump(&mut self, dump: &ThreadDump, out: &mut dyn Write) -> io::Result<()> {
        let lines = dump_lines(dump)
            .into_iter()
            .map(|(line, count)| (self.prefixed(dump.cgroup.as_ref(), line), count));
        write_lines(sorted(lines), out)
    }
}

/// What a line starts with when the process's cgroup is unknown (merged
/// exited processes, a cgroup removed before it was read).
const NO_CGROUP: &str = "[unknown cgroup]";

impl Folded {
    /// `line` with the frame `--folded-prefix` asks for in front.
    fn prefixed(&self, cgroup: Option<&Arc<Cgroup>>, line: String) -> String {
        let first = match (self.prefix, cgroup) {
            (FoldedPrefix::Process, _) => return line,
            (FoldedPrefix::Container, Some(cgroup)) => cgroup.label(),
            (FoldedPrefix::Cgroup, Some(cgroup)) => cgroup.path.clone(),
            (_, None) => NO_CGROUP.to_string(),
        };
        format!("{};{line}", clean(&first))
    }
}

/// A report's stacks as folded lines (without counts) and their counts.
pub(super) fn report_lines(report: &Report) -> BTreeMap<String, u64> {
    sorted(report.stacks.iter().map(|s| (folded_stack(s), s.count)))
}

/// A dump's groups as folded lines, counting threads.
pub(super) fn dump_lines(dump: &ThreadDump) -> BTreeMap<String, u64> {
    sorted(dump.groups.iter().map(|g| {
        let line = folded_frames(clean(&dump.comm), &g.frames);
        (line, g.tids.len() as u64)
    }))
}

/// Lines that differ only in addresses fold into one; sorted, as the tools expect.
fn sorted(lines: impl Iterator<Item = (String, u64)>) -> BTreeMap<String, u64> {
    let mut folded: BTreeMap<String, u64> = BTreeMap::new();
    for (line, count) in lines {
        *folded.entry(line).or_default() += count;
    }
    folded
}

fn write_lines(lines: BTreeMap<String, u64>, out: &mut dyn Write) -> io::Result<()> {
    for (line, count) in lines {
        writeln!(out, "{line} {count}")?;
    }
    Ok(())
}

fn folded_stack(stack: &StackReport) -> String {
    let root = match &stack.thread {
        Some((tid, _)) => format!("{}-{}/{}", clean(&stack.comm), stack.pid, tid),
        None => clean(&stack.comm),
    };
    folded_frames(root, &stack.frames)
}

/// Only the frames of a stack, outermost first: `outer;...;inner`.
pub(super) fn frames_line(frames: &[std::sync::Arc<Frame>]) -> String {
    let line = folded_frames(String::new(), frames);
    line.strip_prefix(';').unwrap_or(&line).to_string()
}

fn folded_frames(mut line: String, frames: &[std::sync::Arc<Frame>]) -> String {
    for frame in frames {
        line.push(';');
        line.push_str(&clean(&frame.short_name()));
        if frame.kernel {
            line.push_str("_[k]");
        }
    }
    line
}

/// `;` separates frames and a newline ends the record; neither may appear in a name.
fn clean(name: &str) -> String {
    name.replace(';', ":").replace(['\n', '\r'], " ")
}
