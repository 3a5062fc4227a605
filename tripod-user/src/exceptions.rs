//! Python exceptions found in logs (`tripod-bpf report app.log`), grouped:
//! each distinct traceback once with how often it was logged, and the two
//! summaries of the stacktraces tool, repeated messages and repeated stacks.
//! Built by `offline/traceback.rs`, written by the outputs: a stage of the
//! report, like [`crate::report::ThreadDump`].
use std::{collections::HashMap, sync::Arc};

use chrono::{DateTime, Local};

use crate::{
    config::Mode,
    model::Frame,
    report::{Losses, Report, RunInfo, StackReport},
    task::TaskState,
};

/// How one exception of a chain led to the next, in Python's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Link {
    /// `raise ... from ...`.
    Cause,
    /// Raised while handling the one before.
    Context,
}

impl Link {
    pub fn sentence(self) -> &'static str {
        match self {
            Link::Cause => "The above exception was the direct cause of the following exception:",
            Link::Context => "During handling of the above exception, another exception occurred:",
        }
    }
}

/// One exception as a traceback prints it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Exception {
    /// How the exception before it in the chain led to this one (None for the first).
    pub link: Option<Link>,
    /// `ValueError`, `requests.exceptions.ConnectTimeout`.
    pub kind: String,
    pub message: Option<String>,
    /// Outermost first, as tracebacks print them.
    pub frames: Vec<Arc<Frame>>,
}

impl Exception {
    /// `ValueError: bad value`.
    pub fn title(&self) -> String {
        match &self.message {
            Some(message) => format!("{}: {message}", self.kind),
            None => self.kind.clone(),
        }
    }

    /// The functions of its frames, outermost first.
    pub fn functions(&self) -> Vec<String> {
        self.frames
            .iter()
            .map(|f| f.function.as_deref().unwrap_or("?").to_string())
            .collect()
    }
}

/// Identical tracebacks (the whole chain), with how often they were logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExceptionGroup {
    pub count: u64,
    /// The line of the first one in the input.
    pub first_line: usize,
    /// In the order printed: the last one is the exception that was raised.
    pub chain: Vec<Exception>,
}

impl ExceptionGroup {
    pub fn raised(&self) -> &Exception {
        self.chain.last().expect("a chain has an exception")
    }
}

/// Every traceback of one input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracebacks {
    /// The input, for people.
    pub source: String,
    pub time: DateTime<Local>,
    pub total: u64,
    /// Most frequent first.
    pub groups: Vec<ExceptionGroup>,
    /// `Type: message` of raised exceptions seen more than once, most first.
    pub duplicated_messages: Vec<(u64, String)>,
    /// The functions of raised exceptions' stacks seen more than once, most first.
    pub duplicated_stacks: Vec<(u64, Vec<String>)>,
}

/// Groups sorted, and the summaries counted over them.
pub fn build(source: String, time: DateTime<Local>, mut groups: Vec<ExceptionGroup>) -> Tracebacks {
    groups.sort_by(|a, b| b.count.cmp(&a.count).then(a.first_line.cmp(&b.first_line)));
    let mut messages: HashMap<String, (u64, usize)> = HashMap::new();
    let mut stacks: HashMap<Vec<String>, (u64, usize)> = HashMap::new();
    for group in &groups {
        let raised = group.raised();
        let entry = messages
            .entry(raised.title())
            .or_insert((0, group.first_line));
        entry.0 += group.count;
        let entry = stacks
            .entry(raised.functions())
            .or_insert((0, group.first_line));
        entry.0 += group.count;
    }
    Tracebacks {
        source,
        time,
        total: groups.iter().map(|g| g.count).sum(),
        groups,
        duplicated_messages: repeated(messages),
        duplicated_stacks: repeated(stacks),
    }
}

fn repeated<K>(counts: HashMap<K, (u64, usize)>) -> Vec<(u64, K)> {
    let mut repeated: Vec<(u64, usize, K)> = counts
        .into_iter()
        .filter(|(_, (count, _))| *count > 1)
        .map(|(key, (count, first))| (count, first, key))
        .collect();
    repeated.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    repeated
        .into_iter()
        .map(|(count, _, key)| (count, key))
        .collect()
}

/// The tracebacks as a recording, for the formats that count stacks
/// (folded, svg, pprof, speedscope, json): one stack per distinct
/// traceback, the raised exception's frames, counted once per time logged.
/// The exception names the stack (annotation) and the process (comm).
pub fn to_report(tracebacks: &Tracebacks) -> Report {
    let stacks: Vec<StackReport> = tracebacks
        .groups
        .iter()
        .map(|group| {
            let raised = group.raised();
            StackReport {
                pid: 0,
                // Nothing in a log tells the namespace or the cgroup.
                ns_pid: None,
                cgroup: None,
                comm: raised.kind.clone(),
                thread: None,
                tids: Vec::new(),
                count: group.count,
                state: TaskState::Unknown,
                annotation: Some(raised.title()),
                frames: raised.frames.clone().into(),
            }
        })
        .collect();
    Report {
        run: RunInfo {
            target: format!("Python tracebacks in {}", tracebacks.source),
            mode: Mode::Cpu,
            frequency: 0,
            event: "tracebacks".into(),
            per_thread: false,
            stack_storage_size: 0,
            count_map_size: 0,
            unwind: "none".into(),
            ring_buffer_size: 0,
        },
        start: tracebacks.time,
        end: tracebacks.time,
        samples: tracebacks.total,
        losses: Losses::default(),
        stacks,
        processes: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exception(kind: &str, message: &str, functions: &[&str]) -> Exception {
        let frames = functions
            .iter()
            .map(|f| {
                let mut frame = Frame::python();
                frame.function = Some((*f).into());
                Arc::new(frame)
            })
            .collect();
        Exception {
            link: None,
            kind: kind.into(),
            message: Some(message.into()),
            frames,
        }
    }

    #[test]
    fn summaries_count_messages_and_stacks_across_groups() {
        let group = |count, line, e: Exception| ExceptionGroup {
            count,
            first_line: line,
            chain: vec![e],
        };
        let tracebacks = build(
            "app.log".into(),
            Local::now(),
            vec![
                group(1, 1, exception("KeyError", "'a'", &["main", "load"])),
                group(5, 9, exception("ValueError", "bad", &["main", "parse"])),
                group(3, 20, exception("KeyError", "'a'", &["main", "get"])),
            ],
        );
        assert_eq!(tracebacks.total, 9);
        assert_eq!(tracebacks.groups[0].count, 5);
        assert_eq!(
            tracebacks.duplicated_messages,
            vec![
                (5, "ValueError: bad".to_string()),
                (4, "KeyError: 'a'".to_string())
            ]
        );
        assert_eq!(
            tracebacks.duplicated_stacks,
            vec![
                (5, vec!["main".into(), "parse".into()]),
                (3, vec!["main".into(), "get".into()])
            ]
        );
        let report = to_report(&tracebacks);
        assert_eq!(report.samples, 9);
        assert_eq!(
            report.stacks[0].annotation.as_deref(),
            Some("ValueError: bad")
        );
    }
}
