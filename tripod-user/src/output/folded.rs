//! Folded stacks, one line per stack: `comm;outer;...;inner count`, the input
//! of flamegraph.pl and inferno. Kernel frames come last with the `_[k]`
//! suffix, as stackcollapse-perf.pl writes them, so flame graphs colour them apart.
use std::{
    collections::BTreeMap,
    io::{self, Write},
};

use super::Render;
use crate::report::{Report, StackReport, Summary};

pub struct Folded;

impl Render for Folded {
    fn report(&mut self, report: &Report, out: &mut dyn Write) -> io::Result<()> {
        // Stacks that differ only in addresses fold into one line; sorted, as the tools expect.
        let mut lines: BTreeMap<String, u64> = BTreeMap::new();
        for stack in &report.stacks {
            *lines.entry(folded_stack(stack)).or_default() += stack.count;
        }
        for (line, count) in lines {
            writeln!(out, "{line} {count}")?;
        }
        Ok(())
    }

    fn summary(&mut self, _summary: &Summary, _out: &mut dyn Write) -> io::Result<()> {
        Ok(())
    }
}

fn folded_stack(stack: &StackReport) -> String {
    let mut line = match &stack.thread {
        Some((tid, _)) => format!("{}-{}/{}", clean(&stack.comm), stack.pid, tid),
        None => clean(&stack.comm),
    };
    for frame in stack.frames.iter() {
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
