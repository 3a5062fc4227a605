//! `tripod-bpf report FILE`: recordings and dumps saved as JSON, read back
//! (on this machine or another) and rendered in any format. Nothing is
//! sampled and no root is needed: the JSON holds symbolized frames.
//!
//! Intervals (`-i`) stay apart in formats that append (log, folded, json);
//! formats that hold one profile (svg, pprof, speedscope) get them merged.
use std::{
    collections::{BTreeSet, HashMap},
    fs,
    io::{self, Read as _},
    path::Path,
    sync::Arc,
};

use anyhow::{bail, Context as _, Result};

use crate::{
    annotate::Rules,
    app::load_rules,
    config::ReportConfig,
    output::{json, Document, DumpDocument, Output},
    report::{Frame, Losses, ProcessReport, Report, StackReport, ThreadDump, ThreadReport},
    task::TaskState,
};

/// What a file held: recordings or dumps (never both).
#[derive(Debug)]
pub enum Saved {
    Recordings(Vec<Report>),
    Dumps(Vec<ThreadDump>),
}

/// Renders the file as configured; returns the exit status.
pub fn run(config: ReportConfig) -> Result<u8> {
    let name = config.input.display().to_string();
    let text = read_input(&config.input)?;
    let saved = parse(&text).with_context(|| format!("reading {name}"))?;
    // Rules are applied again only when asked: by default the annotations
    // made where the profile was recorded are kept.
    let rules = match &config.rules {
        Some(path) => Some(load_rules(Some(path))?),
        None => None,
    };
    let mut output = Output::open(&config.output, config.format)?;
    match saved {
        Saved::Recordings(mut reports) => {
            if let Some(rules) = &rules {
                reports.iter_mut().for_each(|r| annotate_report(r, rules));
            }
            if config.format.single_profile() && reports.len() > 1 {
                reports = vec![merge(reports)];
            }
            for report in &reports {
                output.report(report)?;
            }
        }
        Saved::Dumps(mut dumps) => {
            if config.format.single_profile() && dumps.len() > 1 {
                bail!(
                    "{name} holds {} dumps and a {} file holds one; use -f log, folded or json",
                    dumps.len(),
                    config.format.name()
                );
            }
            for dump in &mut dumps {
                if let Some(rules) = &rules {
                    for group in &mut dump.groups {
                        group.annotation = rules
                            .annotate(&group.frames, group.state)
                            .map(str::to_string);
                    }
                }
                output.dump(dump)?;
            }
        }
    }
    Ok(0)
}

fn read_input(path: &Path) -> Result<String> {
    let mut text = String::new();
    if path.as_os_str() == "-" {
        io::stdin()
            .read_to_string(&mut text)
            .context("reading stdin")?;
        return Ok(text);
    }
    fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read {}; pass a file written by `tripod-bpf -f json` or `tripod-bpf dump --json`",
            path.display()
        )
    })
}

/// Parses one JSON document per line (what `-f json` and `dump --json` write).
pub fn parse(text: &str) -> Result<Saved> {
    let mut reports = Vec::new();
    let mut dumps = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("line {}", number + 1);
        let value: serde_json::Value = serde_json::from_str(line).with_context(|| {
            format!(
                "{}: not JSON; expected output of `tripod-bpf -f json`",
                at()
            )
        })?;
        let version = value.get("version").and_then(serde_json::Value::as_u64);
        match version {
            Some(v) if v == u64::from(json::VERSION) => {}
            Some(v) if v > u64::from(json::VERSION) => bail!(
                "{}: written by a newer tripod-bpf (JSON version {v}; this one reads version {}); \
                 use a tripod-bpf at least as new as the one that recorded it",
                at(),
                json::VERSION
            ),
            Some(v) => bail!("{}: unknown JSON version {v}", at()),
            None => bail!(
                "{}: no \"version\" field: not a tripod-bpf recording or dump",
                at()
            ),
        }
        let kind = value.get("kind").and_then(serde_json::Value::as_str);
        match kind.unwrap_or("recording") {
            "recording" => {
                let document: Document = serde_json::from_value(value)
                    .with_context(|| format!("{}: not a valid recording", at()))?;
                let report = document
                    .into_report()
                    .map_err(|e| anyhow::anyhow!("{}: {e}", at()))?;
                reports.push(report);
            }
            "dump" => {
                let document: DumpDocument = serde_json::from_value(value)
                    .with_context(|| format!("{}: not a valid dump", at()))?;
                let dump = document
                    .into_dump()
                    .map_err(|e| anyhow::anyhow!("{}: {e}", at()))?;
                dumps.push(dump);
            }
            other => bail!(
                "{}: unknown document kind {other:?} (expected \"recording\" or \"dump\")",
                at()
            ),
        }
    }
    match (reports.is_empty(), dumps.is_empty()) {
        (false, true) => Ok(Saved::Recordings(reports)),
        (true, false) => Ok(Saved::Dumps(dumps)),
        (true, true) => bail!("no documents: the file is empty"),
        (false, false) => bail!("the file mixes recordings and dumps; keep them in separate files"),
    }
}

fn annotate_report(report: &mut Report, rules: &Rules) {
    for stack in &mut report.stacks {
        stack.annotation = rules
            .annotate(&stack.frames, stack.state)
            .map(str::to_string);
    }
}

/// The reports of several intervals as one: counts of the same stack (same
/// process, thread, state and frames) added up, and losses too.
pub fn merge(reports: Vec<Report>) -> Report {
    type Key = (u32, Option<u32>, TaskState, Vec<Arc<Frame>>);
    let mut merged = Report {
        losses: Losses::default(),
        stacks: Vec::new(),
        processes: Vec::new(),
        samples: 0,
        ..reports[0].clone()
    };
    let mut stacks: HashMap<Key, StackReport> = HashMap::new();
    let mut processes: HashMap<u32, (ProcessReport, HashMap<u32, ThreadReport>)> = HashMap::new();
    for report in reports {
        merged.start = merged.start.min(report.start);
        merged.end = merged.end.max(report.end);
        merged.losses.add(&report.losses);
        for stack in report.stacks {
            let key = (
                stack.pid,
                stack.thread.as_ref().map(|(tid, _)| *tid),
                stack.state,
                stack.frames.to_vec(),
            );
            match stacks.get_mut(&key) {
                Some(same) => {
                    same.count += stack.count;
                    let tids: BTreeSet<u32> =
                        same.tids.iter().chain(&stack.tids).copied().collect();
                    same.tids = tids.into_iter().collect();
                }
                None => {
                    stacks.insert(key, stack);
                }
            }
        }
        for mut process in report.processes {
            let threads = std::mem::take(&mut process.threads);
            let (_, by_tid) = processes
                .entry(process.pid)
                .or_insert_with(|| (process, HashMap::new()));
            for thread in threads {
                by_tid
                    .entry(thread.tid)
                    .and_modify(|t| t.samples += thread.samples)
                    .or_insert(thread);
            }
        }
    }
    let mut stacks: Vec<StackReport> = stacks.into_values().collect();
    stacks.sort_by(|a, b| b.count.cmp(&a.count).then(a.pid.cmp(&b.pid)));
    let mut processes: Vec<ProcessReport> = processes
        .into_values()
        .map(|(mut process, threads)| {
            let mut threads: Vec<ThreadReport> = threads.into_values().collect();
            threads.sort_by(|a, b| b.samples.cmp(&a.samples).then(a.tid.cmp(&b.tid)));
            process.samples = threads.iter().map(|t| t.samples).sum();
            process.threads = threads;
            process
        })
        .collect();
    processes.sort_by(|a, b| b.samples.cmp(&a.samples).then(a.pid.cmp(&b.pid)));
    merged.samples = stacks.iter().map(|s| s.count).sum();
    merged.stacks = stacks;
    merged.processes = processes;
    merged
}
