//! gdb's `thread apply all bt` and `bt full` (and pstack, which runs gdb):
//!
//! ```text
//! Thread 9 (Thread 0x7fba2a89d6c0 (LWP 509) "spinner"):
//! #0  0x0000562c80444471 in spin () at tests/fixtures/population.c:82
//! #1  0x00007fba2e1311f5 in start_thread (arg=<optimized out>) at ./nptl/pthread_create.c:442
//!         ret = <optimized out>
//! #2  0x00007fba2e1b18ec in clone3 () from /lib/x86_64-linux-gnu/libc.so.6
//! ```
//!
//! A gdb log may keep `(gdb) ` prompts in front of lines; a single `bt`
//! without thread headers is one thread. What gdb prints before the first
//! thread (attaching, the current frame) is not part of any stack.
use std::io::BufRead;

use crate::error::UsageError;

use super::{
    lines::TextLines,
    sniff::strip_prompt,
    threads::{file_and_line, native_frame, parse_address, Parsed, ParsedThread},
};

pub fn parse(lines: &mut TextLines<impl BufRead>) -> Result<Parsed, UsageError> {
    let mut parsed = Parsed::default();
    let mut started = false;
    while let Some(line) = lines.next_line()? {
        let text = strip_prompt(&line.text);
        if let Some(thread) = thread_header(text) {
            if thread.number == Some(1) {
                // gdb's thread 1 is the main thread, whose id is the pid.
                parsed.pid = Some(thread.tid);
            }
            parsed.threads.push(ParsedThread {
                tid: thread.tid,
                name: thread.name.unwrap_or_default(),
                ..ParsedThread::default()
            });
            started = true;
            continue;
        }
        if let Some(rest) = text.strip_prefix('#') {
            match frame(rest) {
                Some(frame) if !line.cut => {
                    if parsed.threads.is_empty() {
                        // A plain `bt`: one thread, whose id gdb does not print.
                        parsed.threads.push(ParsedThread::default());
                    }
                    started = true;
                    parsed
                        .threads
                        .last_mut()
                        .expect("a thread")
                        .frames
                        .push(frame);
                }
                _ if started => parsed.skipped.add(line.number),
                _ => {}
            }
            continue;
        }
        if started && !is_other_output(text) {
            parsed.skipped.add(line.number);
        }
    }
    if let Some(pid) = parsed.pid {
        // The process's name is the main thread's.
        parsed.comm = parsed
            .threads
            .iter()
            .find(|t| t.tid == pid)
            .map(|t| t.name.clone());
    }
    Ok(parsed)
}

struct Header {
    number: Option<u32>,
    tid: u32,
    name: Option<String>,
}

/// `Thread 9 (Thread 0x7f... (LWP 509) "spinner"):`, `Thread 1 (process 42):`,
/// `Thread 2 (LWP 43):`.
fn thread_header(text: &str) -> Option<Header> {
    let rest = text.strip_prefix("Thread ")?;
    let (number, rest) = rest.split_once(' ')?;
    if !rest.starts_with('(') || !text.ends_with(':') {
        return None;
    }
    let tid = ["(LWP ", "(process "]
        .iter()
        .find_map(|key| rest.split_once(key))
        .and_then(|(_, after)| after.split(')').next()?.trim().parse().ok())?;
    let name = rest
        .split_once(") \"")
        .and_then(|(_, quoted)| quoted.rsplit_once("\")"))
        .map(|(name, _)| name.to_string());
    Some(Header {
        number: number.parse().ok(),
        tid,
        name,
    })
}

/// One frame after its `#`: `1  0x00007f in f (a=1) at x.c:3`, `0  f () at x.c:3`,
/// `5  0x00007f in clone3 () from /lib/libc.so.6`, `3  0x0000 in ?? ()`.
fn frame(rest: &str) -> Option<crate::model::Frame> {
    let (number, rest) = rest.split_once(' ')?;
    number.parse::<u32>().ok()?;
    let rest = rest.trim_start();
    let (address, rest) = match rest.split_once(" in ") {
        Some((address, after)) if address.starts_with("0x") => {
            (Some(parse_address(address)?), after)
        }
        _ => (None, rest),
    };
    // The place: ` at FILE:LINE` or ` from LIBRARY`, after the argument list.
    let (call, file, module) = if let Some((call, at)) = rest.rsplit_once(") at ") {
        (format!("{call})"), Some(file_and_line(at)), None)
    } else if let Some((call, from)) = rest.rsplit_once(") from ") {
        (format!("{call})"), None, Some(from))
    } else {
        (rest.to_string(), None, None)
    };
    let function = function_of(&call)?;
    Some(native_frame(address, Some(function), file, module))
}

/// The function of `name (arguments)`: gdb puts a space before the list,
/// whose values may hold parentheses of their own.
fn function_of(call: &str) -> Option<&str> {
    if !call.ends_with(')') {
        return None;
    }
    let mut depth = 0usize;
    for (at, c) in call.char_indices().rev() {
        match c {
            ')' => depth += 1,
            '(' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    let name = call[..at].trim_end();
                    return (!name.is_empty()).then_some(name);
                }
            }
            _ => {}
        }
    }
    None
}

/// Lines gdb prints between and after stacks that are no frames: locals of
/// `bt full` (indented), messages, prompts and what other commands print.
fn is_other_output(text: &str) -> bool {
    text.trim().is_empty()
        || text.starts_with(' ')
        || text.starts_with('\t')
        || text.starts_with('[')
        || text.starts_with("No locals.")
        || text.starts_with("No symbol table info")
        || text.starts_with("Backtrace stopped")
        || text.starts_with("--Type <RET>")
        || text.starts_with("warning: ")
        || text.starts_with("Detaching ")
        || text.starts_with("A debugging session is active")
        || text.starts_with("Quit anyway?")
        || text.starts_with("thread apply all")
        || text.starts_with("bt")
        || text.starts_with("quit")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Parsed {
        parse(&mut TextLines::new(text.as_bytes())).unwrap()
    }

    #[test]
    fn threads_frames_and_full_locals() {
        let parsed = parse_text(
            "[New LWP 502]\n\
             __futex_abstimed_wait_common64 (private=128) at ./nptl/futex-internal.c:57\n\
             \n\
             Thread 2 (Thread 0x7fba2a89d6c0 (LWP 502) \"spin (1)\"):\n\
             #0  0x0000562c80444471 in spin (x=f(1)) at tests/population.c:82\n\
             \x20       acc = 9847192581228384469\n\
             #1  __GI___libc_read (fd=3) at ../read.c:26\n\
             No locals.\n\
             #2  0x00007fba2e1b18ec in clone3 () from /lib/libc.so.6\n\
             #3  0x0000000000000000 in ?? ()\n\
             \n\
             (gdb) Thread 1 (Thread 0x7fba2e0a7740 (LWP 500) \"population\"):\n\
             #0  main () at p.c:9\n\
             garbled\n\
             #x nonsense\n",
        );
        assert_eq!(parsed.pid, Some(500));
        assert_eq!(parsed.comm.as_deref(), Some("population"));
        assert_eq!(parsed.threads.len(), 2);
        let spin = &parsed.threads[0];
        assert_eq!((spin.tid, spin.name.as_str()), (502, "spin (1)"));
        let f = &spin.frames;
        assert_eq!(f.len(), 4);
        assert_eq!(f[0].address, Some(0x562c80444471));
        assert_eq!(f[0].function.as_deref(), Some("spin"));
        assert_eq!(
            (f[0].file.as_deref(), f[0].line),
            (Some("tests/population.c"), Some(82))
        );
        assert_eq!(
            (f[1].address, f[1].function.as_deref()),
            (None, Some("__GI___libc_read"))
        );
        assert_eq!(f[2].module.as_deref(), Some("/lib/libc.so.6"));
        assert_eq!((f[3].function.as_deref(), f[3].address), (None, Some(0)));
        assert_eq!(parsed.skipped.count, 2);
        assert_eq!(parsed.skipped.first, Some(14));
    }

    #[test]
    fn a_plain_bt_is_one_thread() {
        let parsed = parse_text("(gdb) bt\n#0  f () at a.c:1\n#1  0x1 in main () at a.c:5\n");
        assert_eq!(parsed.threads.len(), 1);
        assert_eq!(parsed.threads[0].frames.len(), 2);
        assert_eq!(parsed.skipped.count, 0);
    }
}
