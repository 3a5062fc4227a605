//! speedscope's JSON file format (www.speedscope.app/file-format-schema.json):
//! one "sampled" profile per thread (per process when threads were merged),
//! the heaviest first, frames shared between them.
//!
//! Samples are aggregated, so each distinct stack is one sample whose weight
//! is its count: speedscope's left-heavy and sandwich views are exact, its
//! time-order view shows stacks by weight, not in the order they happened.
//! Weights are seconds for sampled modes (count / frequency), microseconds
//! off-CPU, and threads in a dump.
use std::{
    collections::{BTreeMap, HashMap},
    io::{self, Write},
    sync::Arc,
};

use serde::Serialize;

use super::Render;
use crate::{
    config::Mode,
    model::{process_label, Frame, FrameKind},
    report::{Report, Summary, ThreadDump},
};

pub struct Speedscope;

impl Render for Speedscope {
    fn report(&mut self, report: &Report, out: &mut dyn Write) -> io::Result<()> {
        let run = &report.run;
        let (unit, per_count) = match run.mode {
            Mode::OffCpu => ("microseconds", 1.0),
            Mode::Cpu | Mode::Wall => ("seconds", 1.0 / run.frequency.max(1) as f64),
        };
        let mut file = FileBuilder::default();
        for stack in &report.stacks {
            let mut name = process_label(stack.pid, &stack.comm);
            if let Some((tid, thread)) = &stack.thread {
                name = format!("{name}, thread {tid} ({thread})");
            }
            file.add(name, &stack.frames, stack.count as f64 * per_count);
        }
        let name = format!(
            "tripod-bpf {} of {}, {}",
            run.mode.name(),
            run.target,
            report.start.format("%Y-%m-%d %H:%M:%S")
        );
        file.write(name, unit, out)
    }

    fn summary(&mut self, _summary: &Summary, _out: &mut dyn Write) -> io::Result<()> {
        Ok(())
    }

    fn dump(&mut self, dump: &ThreadDump, out: &mut dyn Write) -> io::Result<()> {
        let mut file = FileBuilder::default();
        let name = process_label(dump.pid, &dump.comm);
        for group in &dump.groups {
            file.add(name.clone(), &group.frames, group.tids.len() as f64);
        }
        let title = format!(
            "tripod-bpf dump of {name}, {}",
            dump.time.format("%Y-%m-%d %H:%M:%S%.3f")
        );
        file.write(title, "none", out)
    }
}

#[derive(Serialize)]
struct File<'a> {
    #[serde(rename = "$schema")]
    schema: &'static str,
    version: &'static str,
    exporter: &'static str,
    name: String,
    #[serde(rename = "activeProfileIndex")]
    active_profile_index: usize,
    shared: Shared<'a>,
    profiles: Vec<SampledProfile>,
}

#[derive(Serialize)]
struct Shared<'a> {
    frames: Vec<SpeedscopeFrame<'a>>,
}

#[derive(Serialize, PartialEq, Eq, Hash, Clone)]
struct SpeedscopeFrame<'a> {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<u32>,
}

#[derive(Serialize)]
struct SampledProfile {
    r#type: &'static str,
    name: String,
    unit: &'static str,
    #[serde(rename = "startValue")]
    start_value: f64,
    #[serde(rename = "endValue")]
    end_value: f64,
    /// Frame indices, outermost first.
    samples: Vec<Vec<usize>>,
    weights: Vec<f64>,
}

/// Collects stacks into profiles by name, and their frames into one table.
#[derive(Default)]
struct FileBuilder<'a> {
    frames: Vec<SpeedscopeFrame<'a>>,
    frame_ids: HashMap<SpeedscopeFrame<'a>, usize>,
    /// Profile name -> (stacks, weights).
    profiles: BTreeMap<String, (Vec<Vec<usize>>, Vec<f64>)>,
}

impl<'a> FileBuilder<'a> {
    fn add(&mut self, profile: String, frames: &'a [Arc<Frame>], weight: f64) {
        let stack = frames.iter().map(|f| self.frame(f)).collect();
        let (stacks, weights) = self.profiles.entry(profile).or_default();
        stacks.push(stack);
        weights.push(weight);
    }

    fn frame(&mut self, frame: &'a Frame) -> usize {
        // Native frames are named by function alone: one node per function,
        // as in the other formats. Python frames keep their line, as py-spy's do.
        let mut name = match frame.kind {
            FrameKind::Python => frame
                .function
                .as_deref()
                .map_or_else(|| frame.short_name(), str::to_owned),
            _ => frame.short_name(),
        };
        if frame.kernel {
            name.push_str("_[k]");
        }
        let key = SpeedscopeFrame {
            name,
            file: frame.file.as_deref(),
            line: frame.line.filter(|_| frame.kind == FrameKind::Python),
        };
        if let Some(&id) = self.frame_ids.get(&key) {
            return id;
        }
        self.frames.push(key.clone());
        self.frame_ids.insert(key, self.frames.len() - 1);
        self.frames.len() - 1
    }

    fn write(self, name: String, unit: &'static str, out: &mut dyn Write) -> io::Result<()> {
        let mut profiles: Vec<SampledProfile> = self
            .profiles
            .into_iter()
            .map(|(name, (samples, weights))| SampledProfile {
                r#type: "sampled",
                name,
                unit,
                start_value: 0.0,
                end_value: weights.iter().sum(),
                samples,
                weights,
            })
            .collect();
        profiles.sort_by(|a, b| b.end_value.total_cmp(&a.end_value));
        let file = File {
            schema: "https://www.speedscope.app/file-format-schema.json",
            version: "0.0.1",
            exporter: concat!("tripod-bpf ", env!("CARGO_PKG_VERSION")),
            name,
            active_profile_index: 0,
            shared: Shared {
                frames: self.frames,
            },
            profiles,
        };
        serde_json::to_writer(&mut *out, &file)?;
        writeln!(out)
    }
}
