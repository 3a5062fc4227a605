//! What kind of stacks a file holds, from its first few KiB.
pub use crate::config::InputKind;

/// Enough to see a header or the first thread of any dump we read.
pub const SNIFF_BYTES: usize = 16 << 10;

/// The kind of the input whose first bytes are `head`, if it is one we read.
pub fn sniff(head: &[u8]) -> Option<InputKind> {
    let text = String::from_utf8_lossy(head);
    let trimmed = text.trim_start();
    // Its report of Python tracebacks is a profile of them too: as Python
    // wrote them, they are read as tracebacks.
    if is_own_log(head) && !text.contains(" Python traceback") {
        return Some(InputKind::Log);
    }
    if trimmed.starts_with('{') {
        return Some(InputKind::Json);
    }
    // py-spy's array of threads (gdb's output may start with `[New LWP 502]`).
    if trimmed.starts_with('[')
        && (text.contains("\"os_thread_id\"") || text.contains("\"thread_name\""))
    {
        return Some(InputKind::PySpyJson);
    }
    let lines = || text.lines().map(strip_prompt);
    if lines().any(|l| l.starts_with("Process ") && l.contains(": "))
        && lines().any(|l| l.starts_with("Python v") || is_py_spy_thread(l))
    {
        return Some(InputKind::PySpy);
    }
    if lines().any(is_eu_stack_header) {
        return Some(InputKind::EuStack);
    }
    if lines().any(|l| l.starts_with("Thread ") && l.contains("(LWP "))
        || lines().any(|l| l.starts_with("#0 ") && (l.contains(" in ") || l.contains(") at ")))
    {
        return Some(InputKind::Gdb);
    }
    if text.contains("Traceback (most recent call last):") {
        return Some(InputKind::Traceback);
    }
    // Other JSON is left to the JSON reader's errors.
    trimmed.starts_with('[').then_some(InputKind::Json)
}

/// tripod-bpf's own log: its headers start `[tripod] =====`. Its tracebacks
/// are not Python's (no exception line), so it is not read as a log of them;
/// but a log of Python tracebacks tripod-bpf wrote is (see [`sniff`]).
pub fn is_own_log(head: &[u8]) -> bool {
    String::from_utf8_lossy(head)
        .lines()
        .any(|l| l.starts_with("[tripod] ====="))
}

/// gdb's prompt, which a gdb log keeps in front of commands and their output.
pub fn strip_prompt(line: &str) -> &str {
    let mut line = line;
    while let Some(rest) = line.strip_prefix("(gdb) ") {
        line = rest;
    }
    line
}

/// `Thread 860 (idle): "MainThread"`, `Thread 862 (active+gil): "spinner"`.
fn is_py_spy_thread(line: &str) -> bool {
    line.strip_prefix("Thread ")
        .and_then(|rest| rest.split_once(" ("))
        .is_some_and(|(tid, rest)| {
            tid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'x')
                && (rest.starts_with("idle)") || rest.starts_with("active"))
        })
}

/// `PID 500 - process` or `TID 502:`.
fn is_eu_stack_header(line: &str) -> bool {
    let number_then = |prefix: &str, after: &str| {
        line.strip_prefix(prefix)
            .and_then(|rest| rest.split_once(after))
            .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    number_then("PID ", " - ") || (number_then("TID ", ":") && line.ends_with(':'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_told_from_their_first_lines() {
        let cases: &[(&str, Option<InputKind>)] = &[
            ("{\"version\": 1}", Some(InputKind::Json)),
            ("[\n  {\n    \"pid\": 1,\n    \"thread_id\": 2,\n    \"thread_name\": \"x\",", Some(InputKind::PySpyJson)),
            ("Process 860: python x.py\nPython v3.11.7 (/usr/bin/python)\n\nThread 860 (idle): \"MainThread\"\n", Some(InputKind::PySpy)),
            ("PID 500 - process\nTID 500:\n#0  0x00007fba2e12df16 __futex_abstimed_wait_common\n", Some(InputKind::EuStack)),
            ("[New LWP 502]\n\nThread 2 (Thread 0x7f (LWP 502) \"worker\"):\n#0  0x1 in f () at a.c:1\n", Some(InputKind::Gdb)),
            ("(gdb) bt\n#0  main () at a.c:3\n", Some(InputKind::Gdb)),
            ("[New LWP 502]\n[New LWP 503]\nThread 1 (Thread 0x7f (LWP 500) \"a\"):\n", Some(InputKind::Gdb)),
            ("[1, 2]", Some(InputKind::Json)),
            ("2024-01-01 ERROR boom\nTraceback (most recent call last):\n  File \"a.py\", line 1, in <module>\n", Some(InputKind::Traceback)),
            ("hello\nworld\n", None),
        ];
        for (text, kind) in cases {
            assert_eq!(sniff(text.as_bytes()), *kind, "{text}");
        }
        assert!(InputKind::understood()
            .starts_with("json (tripod-bpf -f json), log (tripod-bpf -f log), gdb ("));
        assert_eq!(
            sniff(b"[tripod] ===== thread dump 2026-12-05 00:00:00.000  pid 1 (x)  ?  1 thread, 1 distinct stacks =====\n"),
            Some(InputKind::Log)
        );
        assert!(is_own_log(
            b"[tripod] ===== thread dump 2026-12-05\n\n4 * [1, 2] x\n"
        ));
        assert!(!is_own_log(b"Traceback (most recent call last):\n"));
    }
}
