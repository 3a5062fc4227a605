//! `py-spy dump` as text and as `--json`:
//!
//! ```text
//! Process 860: /usr/bin/python threads.py
//! Python v3.11.7 (/usr/bin/python3.11)
//!
//! Thread 862 (active+gil): "spinner"
//!     spin_step (threads.py:27)
//!     Thread.run (threading.py:982)
//! ```
//!
//! The text shows file names without their directories; the JSON has both.
use std::io::{BufRead, Read};

use serde::Deserialize;

use crate::{error::UsageError, model::Frame, task::TaskState};

use super::{
    lines::TextLines,
    threads::{file_and_line, shown, Parsed, ParsedThread},
};

pub fn parse_text(lines: &mut TextLines<impl BufRead>) -> Result<Parsed, UsageError> {
    let mut parsed = Parsed::default();
    while let Some(line) = lines.next_line()? {
        let text = line.text.as_str();
        if let Some((pid, command)) = text
            .strip_prefix("Process ")
            .and_then(|r| r.split_once(": "))
        {
            if let Ok(pid) = pid.parse() {
                parsed.pid.get_or_insert(pid);
                let exe = command.split_whitespace().next().unwrap_or(command);
                parsed.exe.get_or_insert_with(|| shown(exe).to_string());
                let comm = exe.rsplit('/').next().unwrap_or(exe);
                parsed.comm.get_or_insert_with(|| shown(comm).to_string());
                continue;
            }
        }
        if let Some(thread) = thread_header(text) {
            parsed.threads.push(thread);
            continue;
        }
        let frame_line = text.strip_prefix("    ").filter(|f| !f.starts_with(' '));
        match (parsed.threads.last_mut(), frame_line) {
            (Some(thread), Some(frame)) if !line.cut => match python_frame(frame) {
                Some(frame) => thread.frames.push(frame),
                None => parsed.skipped.add(line.number),
            },
            // --locals: arguments and locals, indented further.
            (Some(_), None) if text.starts_with("        ") => {}
            _ if text.trim().is_empty() || text.starts_with("Python v") => {}
            _ => parsed.skipped.add(line.number),
        }
    }
    Ok(parsed)
}

/// `Thread 862 (active+gil): "spinner"` (the id may be hex: `Thread 0x7F12`).
fn thread_header(text: &str) -> Option<ParsedThread> {
    let rest = text.strip_prefix("Thread ")?;
    let (id, rest) = rest.split_once(" (")?;
    let (status, rest) = rest.split_once(')')?;
    let tid = match id.strip_prefix("0x").or_else(|| id.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok()? as u32,
        None => id.parse().ok()?,
    };
    let name = rest.trim_start_matches(':').trim().trim_matches('"');
    Some(ParsedThread {
        tid,
        name: shown(name).to_string(),
        state: Some(state(status.starts_with("active"))),
        frames: Vec::new(),
    })
}

/// py-spy tells only whether a thread runs Python code: active or idle.
fn state(active: bool) -> TaskState {
    if active {
        TaskState::Running
    } else {
        TaskState::Sleeping
    }
}

/// `spin_step (threads.py:27)`; native frames (`--native`) have the same shape.
fn python_frame(text: &str) -> Option<Frame> {
    let (function, place) = text.strip_suffix(')')?.rsplit_once(" (")?;
    let (file, line) = file_and_line(place);
    let mut frame = Frame::python();
    frame.function = Some(shown(function));
    frame.file = Some(shown(file));
    frame.line = line;
    Some(frame)
}

#[derive(Deserialize)]
struct JsonThread {
    pid: Option<u32>,
    os_thread_id: Option<u64>,
    thread_id: Option<u64>,
    thread_name: Option<String>,
    active: Option<bool>,
    frames: Vec<JsonFrame>,
}

#[derive(Deserialize)]
struct JsonFrame {
    name: String,
    filename: Option<String>,
    line: Option<u32>,
}

/// `py-spy dump --json`: one array of threads, read as a stream of at most
/// `limit` bytes.
pub fn parse_json(reader: impl Read, limit: u64) -> Result<Parsed, UsageError> {
    let threads: Vec<JsonThread> = serde_json::from_reader(reader.take(limit))
        .map_err(|e| UsageError(format!("not a py-spy JSON dump (line {}): {e}", e.line())))?;
    let mut parsed = Parsed::default();
    for thread in threads {
        parsed.pid = parsed.pid.or(thread.pid);
        let frames = thread
            .frames
            .into_iter()
            .map(|f| {
                let mut frame = Frame::python();
                frame.function = Some(shown(&f.name));
                frame.file = f.filename.as_deref().map(shown);
                frame.line = f.line.filter(|&l| l > 0);
                frame
            })
            .collect();
        parsed.threads.push(ParsedThread {
            tid: thread.os_thread_id.or(thread.thread_id).unwrap_or(0) as u32,
            name: shown(thread.thread_name.as_deref().unwrap_or("")).to_string(),
            state: Some(state(thread.active.unwrap_or(false))),
            frames,
        });
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_threads_and_frames() {
        let text = "Process 860: /usr/bin/python threads.py\n\
                    Python v3.11.7 (/usr/bin/python3.11)\n\
                    \n\
                    Thread 860 (idle): \"MainThread\"\n\
                    \x20   Thread.join (threading.py:1119)\n\
                    \x20   <module> (threads.py:63)\n\
                    Thread 862 (active+gil): \"spinner\"\n\
                    \x20   spin_step (threads.py:27)\n\
                    \x20       Arguments:\n\
                    junk\n";
        let parsed = parse_text(&mut TextLines::new(text.as_bytes())).unwrap();
        assert_eq!(
            (parsed.pid, parsed.comm.as_deref()),
            (Some(860), Some("python"))
        );
        assert_eq!(parsed.threads.len(), 2);
        let main = &parsed.threads[0];
        assert_eq!(
            (main.tid, main.name.as_str(), main.state),
            (860, "MainThread", Some(TaskState::Sleeping))
        );
        assert_eq!(
            main.frames[0].short_name(),
            "Thread.join (threading.py:1119)"
        );
        assert_eq!(parsed.threads[1].state, Some(TaskState::Running));
        assert_eq!((parsed.skipped.count, parsed.skipped.first), (1, Some(10)));
    }

    #[test]
    fn json_threads() {
        let text = r#"[{"pid": 5, "thread_id": 1, "thread_name": "w", "os_thread_id": 7,
            "active": true, "owns_gil": true, "frames": [{"name": "f", "filename": "/a/x.py",
            "module": null, "short_filename": "x.py", "line": 3, "locals": null}]}]"#;
        let parsed = parse_json(text.as_bytes(), 1 << 20).unwrap();
        assert_eq!(parsed.pid, Some(5));
        assert_eq!(parsed.threads[0].tid, 7);
        assert_eq!(parsed.threads[0].frames[0].short_name(), "f (/a/x.py:3)");
        assert!(parse_json(&b"[1"[..], 1 << 20).is_err());
    }
}
