//! What every thread-dump parser produces, and how it becomes a
//! [`ThreadDump`]: threads with identical stacks grouped, annotated by the
//! same rules as a live dump.
use std::{collections::HashMap, sync::Arc};

use chrono::{DateTime, Local};

use crate::{
    annotate::Rules,
    model::Frame,
    report::{DumpedThread, ThreadDump, ThreadGroup},
    task::TaskState,
};

use super::lines::Skipped;

/// One thread as a dump shows it.
#[derive(Debug, Default)]
pub struct ParsedThread {
    /// The thread id the source gives (gdb's LWP, eu-stack's TID, py-spy's
    /// OS thread id); the source's own thread number when it gives no other.
    pub tid: u32,
    pub name: String,
    /// What the source says of it (py-spy's active or idle); else unknown.
    pub state: Option<TaskState>,
    /// Innermost first, as every source prints them.
    pub frames: Vec<Frame>,
}

/// A parsed dump of one process.
#[derive(Debug, Default)]
pub struct Parsed {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub exe: Option<String>,
    pub threads: Vec<ParsedThread>,
    pub skipped: Skipped,
}

/// Groups the threads by stack (frames as the source gave them, and state),
/// largest group first, as [`crate::report::build_dump`] does for a live one.
pub fn to_dump(parsed: Parsed, rules: &Rules, time: DateTime<Local>) -> ThreadDump {
    let mut by_stack: HashMap<(Vec<Arc<Frame>>, TaskState), Vec<u32>> = HashMap::new();
    let mut threads = Vec::new();
    for thread in parsed.threads {
        let state = thread.state.unwrap_or(TaskState::Unknown);
        let frames: Vec<Arc<Frame>> = thread.frames.into_iter().rev().map(Arc::new).collect();
        by_stack
            .entry((frames, state))
            .or_default()
            .push(thread.tid);
        threads.push(DumpedThread {
            tid: thread.tid,
            name: thread.name,
            state,
            syscall: None,
            locals: None,
        });
    }
    threads.sort_by_key(|t| t.tid);
    let mut groups: Vec<ThreadGroup> = by_stack
        .into_iter()
        .map(|((frames, state), tids)| ThreadGroup::new(rules, tids, state, frames.into()))
        .collect();
    ThreadGroup::largest_first(&mut groups);
    ThreadDump {
        pid: parsed.pid.unwrap_or(0),
        // Not in any of these tools' dumps.
        ns_pid: None,
        cgroup: None,
        comm: parsed.comm.unwrap_or_else(|| "?".into()),
        exe: parsed.exe,
        time,
        threads,
        groups,
    }
}

/// A name from the input, with control characters made visible.
pub fn shown(text: &str) -> Arc<str> {
    crate::text::escape_controls(text).into()
}

/// A native frame: what the source gives, nothing more.
pub fn native_frame(
    address: Option<u64>,
    function: Option<&str>,
    file: Option<(&str, Option<u32>)>,
    module: Option<&str>,
) -> Frame {
    let mut frame = Frame::code(false, address);
    frame.function = function.filter(|f| *f != "??").map(shown);
    if let Some((file, line)) = file {
        frame.file = Some(shown(file));
        frame.line = line;
    }
    frame.module = module.map(shown);
    frame
}

/// `0x00007fba2e12df16`.
pub fn parse_address(text: &str) -> Option<u64> {
    u64::from_str_radix(text.strip_prefix("0x")?, 16).ok()
}

/// `file.c:49` into the file and its line; a file without a line stays whole.
pub fn file_and_line(text: &str) -> (&str, Option<u32>) {
    match text.rsplit_once(':') {
        Some((file, line)) if !file.is_empty() => match line.parse() {
            Ok(line) => (file, Some(line)),
            Err(_) => (text, None),
        },
        _ => (text, None),
    }
}
