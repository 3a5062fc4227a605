//! elfutils' `eu-stack -p PID` (with or without `-m` modules and `-s` source):
//!
//! ```text
//! PID 500 - process
//! TID 500:
//! #0  0x00007fba2e12df16 __futex_abstimed_wait_common
//! #2  0x0000562c80444775 main - /tmp/population
//!     /src/population.c:110:5
//! ```
use std::io::BufRead;

use crate::error::UsageError;

use super::{
    lines::TextLines,
    threads::{native_frame, parse_address, shown, Parsed, ParsedThread},
};

pub fn parse(lines: &mut TextLines<impl BufRead>) -> Result<Parsed, UsageError> {
    let mut parsed = Parsed::default();
    while let Some(line) = lines.next_line()? {
        let text = line.text.as_str();
        // `PID 500 - process` (or `- core`): what was read, not the process's name.
        if let Some((pid, _)) = text.strip_prefix("PID ").and_then(|r| r.split_once(" - ")) {
            if let Ok(pid) = pid.parse() {
                parsed.pid.get_or_insert(pid);
                continue;
            }
        }
        if let Some(tid) = text.strip_prefix("TID ").and_then(|r| r.strip_suffix(':')) {
            if let Ok(tid) = tid.parse() {
                parsed.threads.push(ParsedThread {
                    tid,
                    ..ParsedThread::default()
                });
                continue;
            }
        }
        let thread = parsed.threads.last_mut();
        match (thread, text.strip_prefix('#')) {
            (Some(thread), Some(rest)) if !line.cut => match frame(rest) {
                Some(frame) => thread.frames.push(frame),
                None => parsed.skipped.add(line.number),
            },
            (Some(thread), None) if text.starts_with("    ") => {
                // `-s`: the source of the frame above.
                match thread.frames.last_mut().filter(|f| f.file.is_none()) {
                    Some(frame) => {
                        let (file, line_number) = source(text.trim());
                        frame.file = Some(shown(file));
                        frame.line = line_number;
                    }
                    None => parsed.skipped.add(line.number),
                }
            }
            _ if text.trim().is_empty() => {}
            _ => parsed.skipped.add(line.number),
        }
    }
    Ok(parsed)
}

/// `0  0x00007fba2e12df16 name` or `2  0x0000562c80444775 main - /tmp/population`.
fn frame(rest: &str) -> Option<crate::model::Frame> {
    let (number, rest) = rest.split_once(' ')?;
    number.parse::<u32>().ok()?;
    let mut words = rest.trim_start().splitn(2, ' ');
    let address = parse_address(words.next()?)?;
    let (function, module) = match words.next().map(str::trim) {
        None | Some("") => (None, None),
        Some(rest) => match rest.rsplit_once(" - ") {
            Some((function, module)) if module.starts_with('/') || module.starts_with('[') => {
                (Some(function), Some(module))
            }
            _ => (Some(rest), None),
        },
    };
    // eu-stack prints a module alone when it has no symbol for the address.
    let (function, module) = match function {
        Some(f) if f.starts_with('/') && module.is_none() => (None, Some(f)),
        other => (other, module),
    };
    Some(native_frame(Some(address), function, None, module))
}

/// `/src/population.c:110:5` (line and column) or `/src/population.c:110`.
fn source(text: &str) -> (&str, Option<u32>) {
    let mut parts = text.rsplitn(3, ':');
    let last = parts.next().unwrap_or("");
    let middle = parts.next();
    match (
        middle.and_then(|m| m.parse().ok()),
        last.parse::<u32>(),
        parts.next(),
    ) {
        (Some(line), Ok(_column), Some(file)) => (file, Some(line)),
        _ => match text.rsplit_once(':') {
            Some((file, line)) => (file, line.parse().ok()),
            None => (text, None),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_with_modules_and_sources() {
        let text = "PID 500 - process\n\
                    TID 500:\n\
                    #0  0x00007fba2e12df16 __futex_abstimed_wait_common\n\
                    #1  0x0000562c80444775 main - /tmp/population\n\
                    \x20   /src/population.c:110:5\n\
                    TID 502:\n\
                    #0  0x00007fba2e1a02ec\n\
                    #1  0x00007fba2e1a02ec /lib/libc.so.6\n\
                    #2 what\n";
        let parsed = parse(&mut TextLines::new(text.as_bytes())).unwrap();
        assert_eq!((parsed.pid, parsed.comm.as_deref()), (Some(500), None));
        assert_eq!(parsed.threads.len(), 2);
        let main = &parsed.threads[0].frames;
        assert_eq!(
            main[0].function.as_deref(),
            Some("__futex_abstimed_wait_common")
        );
        assert_eq!(main[1].module.as_deref(), Some("/tmp/population"));
        assert_eq!(
            (main[1].file.as_deref(), main[1].line),
            (Some("/src/population.c"), Some(110))
        );
        let other = &parsed.threads[1].frames;
        assert_eq!(
            (other[0].function.as_deref(), other[0].address),
            (None, Some(0x7fba2e1a02ec))
        );
        assert_eq!(other[1].module.as_deref(), Some("/lib/libc.so.6"));
        assert_eq!((parsed.skipped.count, parsed.skipped.first), (1, Some(9)));
    }
}
