//! `tripod-bpf report FILE`: recordings and dumps saved as JSON, read back
//! (on this machine or another) and rendered in any format. Nothing is
//! sampled and no root is needed: the JSON holds symbolized frames.
//!
//! Intervals (`-i`) stay apart in formats that append (log, folded, json);
//! formats that hold one profile (svg, pprof, speedscope) get them merged.
//!
//! The input is read as a stream, one document per line: memory follows the
//! largest line (at most [`MAX_LINE_BYTES`]), not the file.
//!
//! Other tools' stacks are read too, each kind by its own module, the kind
//! told from the first KiB ([`sniff`]): gdb's and pstack's thread backtraces
//! ([`gdb`]), eu-stack's ([`eustack`]), py-spy's dumps ([`pyspy`]) become a
//! [`ThreadDump`], grouped and annotated as a live one ([`threads`]); Python
//! tracebacks in logs ([`traceback`]) become [`exceptions::Tracebacks`]. Text
//! is read line by line with a cap on the line ([`lines`]); lines that do not
//! parse are counted and named in one note, and what parsed is shown.
//! tripod-bpf's own log is read back too ([`ownlog`]), as recordings and
//! dumps like its JSON.
pub mod eustack;
pub mod gdb;
pub mod lines;
pub mod ownlog;
pub mod pyspy;
pub mod sniff;
pub mod threads;
pub mod traceback;

use lines::TextLines;
use std::{
    collections::{BTreeSet, HashMap},
    io::{self, BufRead, BufReader, Read as _},
    path::Path,
    sync::Arc,
};

use anyhow::Result;
use chrono::{DateTime, Local};
use serde::Deserialize;

use crate::{
    annotate::Rules,
    config::{InputKind, ReportConfig},
    error::UsageError,
    exceptions, input,
    model::Frame,
    output::{json, Document, DumpDocument, Output},
    report::{Losses, ProcessReport, Report, StackReport, ThreadDump, ThreadReport},
    session::load_rules,
    task::TaskState,
};

/// The longest line (one JSON document) `report` reads: a recording of the
/// whole machine for hours is tens of MiB; anything past this is not ours.
pub const MAX_LINE_BYTES: u64 = 256 << 20;

/// One saved document: a recording (a whole run or one interval) or a dump.
#[derive(Debug)]
pub enum Saved {
    Recording(Report),
    Dump(ThreadDump),
}

/// Renders the files as configured; returns the exit status. Bad input is a
/// usage error (exit 2) naming the file and line, and leaves a file named
/// with -o as it was.
pub fn run(config: ReportConfig) -> Result<u8> {
    crate::messages::set_quiet(config.quiet);
    // Rules are applied again to saved JSON only when asked: by default the
    // annotations made where the profile was recorded are kept. Other tools'
    // dumps are annotated like a live dump, with the built-in rules too.
    let rules = match &config.rules {
        Some(path) => Some(load_rules(Some(path))?),
        None => None,
    };
    let mut output = Output::open(&config.output, config.format)?;
    output.set_folded_prefix(config.folded_prefix);
    for input in &config.inputs {
        let name = input.display().to_string();
        if let Err(error) = render_input(input, &config, rules.as_ref(), &mut output) {
            output.discard();
            return Err(match error.downcast::<UsageError>() {
                Ok(usage) => UsageError(format!("{name}: {usage}")).into(),
                Err(other) => other,
            });
        }
    }
    output.finish()?;
    Ok(0)
}

/// One file: its kind told (or forced with --input), then read as that kind.
fn render_input(
    path: &Path,
    config: &ReportConfig,
    rules: Option<&Rules>,
    output: &mut Output,
) -> Result<()> {
    let (reader, time) = open_input(path)?;
    let (kind, reader) = match config.kind {
        Some(kind) => (kind, reader),
        None => sniffed(reader)?,
    };
    if config.format.single_profile() && output.has_written() {
        return Err(UsageError(format!(
            "a second profile, and a {} file holds one; give one FILE, or use -f log, folded or json",
            config.format.name()
        ))
        .into());
    }
    let name = path.display().to_string();
    let builtin;
    let dump_rules = match rules {
        Some(rules) => rules,
        None => {
            builtin = Rules::builtin();
            &builtin
        }
    };
    let parsed = match kind {
        InputKind::Json => {
            return render(
                &mut Documents::new(reader, MAX_LINE_BYTES),
                config,
                rules,
                output,
            )
        }
        InputKind::Log => {
            let mut documents = ownlog::LogDocuments::new(reader);
            let rendered = render(&mut documents, config, rules, output);
            note_skipped(&documents.skipped(), &name);
            if documents.read() == 0 {
                return Err(nothing_found(kind));
            }
            return rendered;
        }
        InputKind::Traceback => {
            let parsed = traceback::parse(&mut TextLines::new(reader))?;
            if parsed.groups.is_empty() {
                return Err(nothing_found(kind));
            }
            note_skipped(&parsed.skipped, &name);
            let tracebacks = exceptions::build(name, time, parsed.groups);
            return Ok(output.tracebacks(&tracebacks)?);
        }
        InputKind::Gdb => gdb::parse(&mut TextLines::new(reader))?,
        InputKind::EuStack => eustack::parse(&mut TextLines::new(reader))?,
        InputKind::PySpy => pyspy::parse_text(&mut TextLines::new(reader))?,
        InputKind::PySpyJson => pyspy::parse_json(reader, MAX_LINE_BYTES)?,
    };
    if parsed.threads.is_empty() {
        return Err(nothing_found(kind));
    }
    note_skipped(&parsed.skipped, &name);
    Ok(output.dump(&threads::to_dump(parsed, dump_rules, time))?)
}

fn note_skipped(skipped: &lines::Skipped, name: &str) {
    if let Some(message) = skipped.message(name) {
        crate::messages::note(&message);
    }
}

fn nothing_found(kind: InputKind) -> anyhow::Error {
    let what = match kind {
        InputKind::Traceback => "Python tracebacks",
        InputKind::Log => "recordings or dumps",
        _ => "threads",
    };
    UsageError(format!(
        "no {what} found in it as {} ({}); is it the right file?",
        kind.name(),
        kind.described()
    ))
    .into()
}

/// The kind told from the first [`sniff::SNIFF_BYTES`], and the whole input
/// again (those bytes put back in front).
fn sniffed(mut reader: Box<dyn BufRead>) -> Result<(InputKind, Box<dyn BufRead>)> {
    let mut head = Vec::new();
    (&mut reader)
        .take(sniff::SNIFF_BYTES as u64)
        .read_to_end(&mut head)
        .map_err(|e| UsageError(format!("cannot read: {e}")))?;
    // An empty file is left to the JSON reader, which says so.
    let empty = head.iter().all(u8::is_ascii_whitespace);
    let Some(kind) = sniff::sniff(&head).or(empty.then_some(InputKind::Json)) else {
        return Err(UsageError(format!(
            "not stacks tripod-bpf reads; it understands {}; force a kind with --input KIND",
            InputKind::understood()
        ))
        .into());
    };
    Ok((kind, Box::new(io::Cursor::new(head).chain(reader))))
}

/// stdin (`-`, which may be a pipe), or a regular file: never a FIFO or a
/// device, which could block or never end. With the time the stacks were
/// taken as far as we know: the file's modification time (now for a pipe).
fn open_input(path: &Path) -> Result<(Box<dyn BufRead>, DateTime<Local>)> {
    if path.as_os_str() == "-" {
        return Ok((Box::new(io::stdin().lock()), Local::now()));
    }
    let file = input::open_regular(
        path,
        "input",
        u64::MAX,
        "pass a saved dump, recording or log, or - to read a pipe on stdin",
    )?;
    let time = file
        .metadata()
        .and_then(|m| m.modified())
        .map_or_else(|_| Local::now(), DateTime::<Local>::from);
    Ok((Box::new(BufReader::with_capacity(1 << 20, file)), time))
}

/// Writes each document as it is read; formats that hold one profile get the
/// recordings merged and written at the end.
fn render(
    documents: &mut dyn Iterator<Item = Result<(usize, Saved), UsageError>>,
    config: &ReportConfig,
    rules: Option<&Rules>,
    output: &mut Output,
) -> Result<()> {
    let one_profile = config.format.single_profile();
    let mut merged: Option<Merger> = None;
    let mut kind = None;
    for document in documents {
        let (line, document) = document?;
        let this = matches!(document, Saved::Dump(_));
        if *kind.get_or_insert(this) != this {
            return Err(at_line(
                line,
                "the file mixes recordings and dumps; keep them in separate files",
            ));
        }
        match document {
            Saved::Recording(mut report) => {
                if let Some(rules) = rules {
                    annotate_report(&mut report, rules);
                }
                match (one_profile, &mut merged) {
                    (false, _) => output.report(&report)?,
                    (true, Some(merger)) => merger.add(report),
                    (true, None) => merged = Some(Merger::new(report)),
                }
            }
            Saved::Dump(mut dump) => {
                if one_profile && output.has_written() {
                    return Err(at_line(
                        line,
                        &format!(
                            "a second dump, and a {} file holds one; use -f log, folded or json",
                            config.format.name()
                        ),
                    ));
                }
                if let Some(rules) = rules {
                    annotate_dump(&mut dump, rules);
                }
                output.dump(&dump)?;
            }
        }
    }
    match (kind, merged) {
        (None, _) => Err(UsageError::new(
            "no documents: the file is empty; pass a file written by `tripod-bpf -f json`",
        )
        .into()),
        (_, Some(merger)) => Ok(output.report(&merger.finish())?),
        _ => Ok(()),
    }
}

fn at_line(line: usize, problem: &str) -> anyhow::Error {
    UsageError(format!("line {line}: {problem}")).into()
}

/// The documents of a stream, one per line, each with its line number.
pub struct Documents<'a> {
    reader: Box<dyn BufRead + 'a>,
    limit: u64,
    line: usize,
    buffer: Vec<u8>,
    failed: bool,
}

impl<'a> Documents<'a> {
    /// Reads `reader`, refusing lines longer than `limit` bytes.
    pub fn new(reader: Box<dyn BufRead + 'a>, limit: u64) -> Documents<'a> {
        Documents {
            reader,
            limit,
            line: 0,
            buffer: Vec::new(),
            failed: false,
        }
    }

    /// Reads the next non-blank line into the buffer, without its line
    /// ending; false at the end of the input.
    fn next_line(&mut self) -> Result<bool, UsageError> {
        loop {
            self.buffer.clear();
            self.line += 1;
            let read = (&mut self.reader)
                .take(self.limit + 1)
                .read_until(b'\n', &mut self.buffer)
                .map_err(|e| UsageError(format!("cannot read: {e}")))?;
            if read == 0 {
                return Ok(false);
            }
            if self.buffer.last() == Some(&b'\n') {
                self.buffer.pop();
            }
            if self.buffer.len() as u64 > self.limit {
                return Err(UsageError(format!(
                    "longer than {} MiB, more than any recording holds; \
                     pass a file written by `tripod-bpf -f json`",
                    self.limit >> 20
                )));
            }
            if !self.buffer.iter().all(u8::is_ascii_whitespace) {
                return Ok(true);
            }
        }
    }

    fn next_document(&mut self) -> Result<Option<Saved>, UsageError> {
        if !self.next_line()? {
            return Ok(None);
        }
        let text = std::str::from_utf8(&self.buffer).map_err(|_| {
            UsageError::new("not UTF-8 text; expected output of `tripod-bpf -f json`")
        })?;
        parse_line(text).map(Some)
    }
}

impl Iterator for Documents<'_> {
    type Item = Result<(usize, Saved), UsageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.next_document() {
            Ok(document) => document.map(|d| Ok((self.line, d))),
            Err(error) => {
                self.failed = true;
                Some(Err(UsageError(format!("line {}: {error}", self.line))))
            }
        }
    }
}

/// The two fields read before the rest: what a line is, and which version.
#[derive(Deserialize)]
struct Header {
    version: Option<serde_json::Value>,
    kind: Option<serde_json::Value>,
}

/// One line: a recording or a dump of the version this tripod-bpf reads.
fn parse_line(line: &str) -> Result<Saved, UsageError> {
    // serde reads a struct from an array too: documents are objects.
    let object = line.trim_start().starts_with('{');
    let header: Header = serde_json::from_str(line).map_err(|e| {
        UsageError::new(if e.is_data() {
            "JSON, but not a tripod-bpf recording or dump"
        } else {
            "not JSON; expected output of `tripod-bpf -f json`"
        })
    })?;
    if !object {
        return Err(UsageError::new(
            "JSON, but not a tripod-bpf recording or dump",
        ));
    }
    check_version(header.version.as_ref().and_then(serde_json::Value::as_u64))?;
    let kind = header.kind.as_ref().map(|k| k.as_str().unwrap_or("?"));
    match kind.unwrap_or("recording") {
        "recording" => {
            let document: Document = serde_json::from_str(line)
                .map_err(|e| UsageError(format!("not a valid recording: {e}")))?;
            document.into_report().map(Saved::Recording)
        }
        "dump" => {
            let document: DumpDocument = serde_json::from_str(line)
                .map_err(|e| UsageError(format!("not a valid dump: {e}")))?;
            document.into_dump().map(Saved::Dump)
        }
        other => Err(UsageError(format!(
            "unknown document kind {other:?} (expected \"recording\" or \"dump\")"
        ))),
    }
}

fn check_version(version: Option<u64>) -> Result<(), UsageError> {
    let ours = u64::from(json::VERSION);
    match version {
        Some(v) if v == ours => Ok(()),
        Some(v) if v > ours => Err(UsageError(format!(
            "written by a newer tripod-bpf (JSON version {v}; this one reads version {ours}); \
             use a tripod-bpf at least as new as the one that recorded it"
        ))),
        Some(v) => Err(UsageError(format!("unknown JSON version {v}"))),
        None => Err(UsageError::new(
            "no \"version\" field: not a tripod-bpf recording or dump",
        )),
    }
}

fn annotate_dump(dump: &mut ThreadDump, rules: &Rules) {
    for group in &mut dump.groups {
        group.annotation = rules
            .annotate(&group.frames, group.state)
            .map(str::to_string);
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
    let mut reports = reports.into_iter();
    let mut merger = Merger::new(reports.next().expect("at least one report"));
    reports.for_each(|report| merger.add(report));
    merger.finish()
}

type StackKey = (u32, Option<u32>, TaskState, Vec<Arc<Frame>>);

/// Reports merged one at a time, as they are read.
pub struct Merger {
    merged: Report,
    stacks: HashMap<StackKey, StackReport>,
    processes: HashMap<u32, (ProcessReport, HashMap<u32, ThreadReport>)>,
}

impl Merger {
    pub fn new(first: Report) -> Merger {
        let mut merger = Merger {
            merged: Report {
                losses: Losses::default(),
                stacks: Vec::new(),
                processes: Vec::new(),
                samples: 0,
                ..first.clone()
            },
            stacks: HashMap::new(),
            processes: HashMap::new(),
        };
        merger.add(first);
        merger
    }

    pub fn add(&mut self, report: Report) {
        let merged = &mut self.merged;
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
            match self.stacks.get_mut(&key) {
                Some(same) => {
                    same.count += stack.count;
                    let tids: BTreeSet<u32> =
                        same.tids.iter().chain(&stack.tids).copied().collect();
                    same.tids = tids.into_iter().collect();
                }
                None => {
                    self.stacks.insert(key, stack);
                }
            }
        }
        for mut process in report.processes {
            let threads = std::mem::take(&mut process.threads);
            let (_, by_tid) = self
                .processes
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

    pub fn finish(self) -> Report {
        let mut merged = self.merged;
        let mut stacks: Vec<StackReport> = self.stacks.into_values().collect();
        stacks.sort_by(|a, b| b.count.cmp(&a.count).then(a.pid.cmp(&b.pid)));
        let mut processes: Vec<ProcessReport> = self
            .processes
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error of the first document of `text`, read with lines of at most `limit` bytes.
    fn first_error(text: &str, limit: u64) -> String {
        let mut documents = Documents::new(Box::new(text.as_bytes()), limit);
        match documents.next() {
            Some(Err(UsageError(message))) => message,
            other => panic!("{text:?}: expected an error, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(
            first_error("\n  \nnot json\n", 100),
            "line 3: not JSON; expected output of `tripod-bpf -f json`"
        );
        assert_eq!(
            first_error("[1, 2]\n", 100),
            "line 1: JSON, but not a tripod-bpf recording or dump"
        );
        assert!(first_error("{\"kind\": \"dump\"}", 100).starts_with("line 1: no \"version\""));
        assert!(first_error("{\"version\": 99}", 100).contains("newer tripod-bpf"));
        assert!(
            first_error("{\"version\": 1, \"kind\": \"x\"}", 100).contains("unknown document kind")
        );
        assert!(first_error("{\"version\": 1}", 100).starts_with("line 1: not a valid recording"));
        assert!(first_error("\n\u{0}\u{ff}", 100).starts_with("line 2:"));
    }

    #[test]
    fn a_line_past_the_limit_is_refused_without_reading_on() {
        let long = format!("{{\"version\": 1, \"pad\": \"{}\"}}\n", "x".repeat(5000));
        let message = first_error(&long, 1000);
        assert!(message.starts_with("line 1: longer than"), "{message}");
        // Exactly at the limit is fine (and then not a valid recording).
        let text = "{\"version\": 1}";
        let message = first_error(text, text.len() as u64);
        assert!(message.contains("not a valid recording"), "{message}");
    }

    #[test]
    fn an_empty_input_has_no_documents() {
        let mut documents = Documents::new(Box::new(&b"\n\n"[..]), 100);
        assert!(documents.next().is_none());
    }
}
