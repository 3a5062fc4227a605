//! Flame graphs: the folded stacks drawn by inferno, the maintained Rust port
//! of flamegraph.pl, as one interactive SVG per run or dump. Inferno's "java"
//! palette colours by what a frame is: kernel frames (`_[k]`) orange, Python
//! frames (`name (file.py:line)`) and library placeholders green, native
//! functions red.
use std::{
    collections::BTreeMap,
    io::{self, Write},
};

use inferno::flamegraph::{
    self,
    color::{MultiPalette, Palette},
    Options,
};

use super::{
    folded::{dump_lines, report_lines},
    Render,
};
use crate::{
    config::Mode,
    report::{Report, Summary, ThreadDump},
};

pub struct Svg;

impl Render for Svg {
    fn report(&mut self, report: &Report, out: &mut dyn Write) -> io::Result<()> {
        let run = &report.run;
        let seconds = (report.end - report.start).num_milliseconds() as f64 / 1000.0;
        let what = match run.mode {
            Mode::Cpu => format!("on-CPU samples at {} Hz", run.frequency),
            Mode::OffCpu => "off-CPU time".to_string(),
            Mode::Wall => format!("wall-clock samples at {} Hz", run.frequency),
        };
        let title = format!("tripod-bpf: {}", run.target);
        let subtitle = format!(
            "{what}, {seconds:.1} s from {}, {} unwinding, {} event",
            report.start.format("%Y-%m-%d %H:%M:%S"),
            run.unwind,
            run.event
        );
        let unit = match run.mode {
            Mode::OffCpu => "µs off-CPU",
            _ => "samples",
        };
        draw(&title, &subtitle, unit, report_lines(report), out)
    }

    fn summary(&mut self, _summary: &Summary, _out: &mut dyn Write) -> io::Result<()> {
        Ok(())
    }

    fn dump(&mut self, dump: &ThreadDump, out: &mut dyn Write) -> io::Result<()> {
        let title = format!("tripod-bpf dump: pid {} ({})", dump.pid, dump.comm);
        let subtitle = format!(
            "{} threads at {}, widths count threads",
            dump.threads.len(),
            dump.time.format("%Y-%m-%d %H:%M:%S%.3f")
        );
        draw(&title, &subtitle, "threads", dump_lines(dump), out)
    }
}

fn draw(
    title: &str,
    subtitle: &str,
    unit: &str,
    lines: BTreeMap<String, u64>,
    out: &mut dyn Write,
) -> io::Result<()> {
    // Nothing sampled: inferno would draw an SVG saying so, which could
    // replace a good graph and exit 0. A plain error says it better.
    if lines.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "no {unit} to draw, so no flame graph was written; sample for longer, \
                 or check the target with -f log"
            ),
        ));
    }
    let mut options = Options::default();
    options.title = title.to_string();
    options.subtitle = Some(subtitle.to_string());
    options.count_name = unit.to_string();
    options.colors = Palette::Multi(MultiPalette::Java);
    // Same colour for the same name on every run, so two graphs compare at a glance.
    options.hash = true;
    let lines: Vec<String> = lines
        .into_iter()
        .map(|(line, count)| format!("{line} {count}"))
        .collect();
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)
}
