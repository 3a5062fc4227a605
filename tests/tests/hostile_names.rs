//! Names a target chooses never reach a terminal or a line format raw. The fixture
//! `python/hostile.py` renames its function, file, local variable, class, threads and
//! process with ESC sequences, bells, CR and LF and a forged `FAKE` line; every output
//! (log, folded, JSON, dumps, stderr, and `report` of a crafted file) must show them as
//! visible `\x1b` escapes, with no raw control character and no forged line.

use std::fs;

use serde_json::Value;
use tripod_tests::*;

/// The fixture's names as tripod-bpf shows them (`\xNN` for each control).
const FUNCTION: &str = r"evil\x1b]0;pwned\x07\x0d\x0aFAKE";
const FILE: &str = r"/tmp/x\x1b[2J.py";
const THREAD: &str = r"t\x1b[2J\x0d\x0aFAKE";
const PROCESS: &str = r"p\x1b]0;x\x07\x0aFAKE";
/// The function name as the script set it, for the crafted file.
const RAW_FUNCTION: &str = "evil\x1b]0;pwned\x07\r\nFAKE";

/// C0 (but newline), DEL and C1: what a terminal or a line reader would act on.
fn is_control(c: char) -> bool {
    c != '\n' && matches!(c, '\0'..='\x1f' | '\x7f'..='\u{9f}')
}

/// `bytes` as UTF-8, checked to hold no control character, no line that starts with the
/// forged `FAKE`, and each of `shown`.
fn assert_clean(what: &str, bytes: &[u8], shown: &[&str]) -> String {
    let text = String::from_utf8(bytes.to_vec()).unwrap_or_else(|e| {
        panic!(
            "{what}: not UTF-8 ({e}):\n{}",
            String::from_utf8_lossy(bytes)
        )
    });
    let controls: Vec<char> = text.chars().filter(|&c| is_control(c)).collect();
    assert!(
        controls.is_empty(),
        "{what}: raw control characters {controls:?} in:\n{text:?}"
    );
    let forged: Vec<&str> = text.lines().filter(|l| l.starts_with("FAKE")).collect();
    assert!(
        forged.is_empty(),
        "{what}: forged lines {forged:?} in:\n{text}"
    );
    for name in shown {
        assert!(text.contains(name), "{what}: no {name} in:\n{text}");
    }
    text
}

/// Every string of a JSON document, decoded, one per line.
fn json_strings(value: &Value) -> String {
    fn collect(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::String(text) => out.push(text.clone()),
            Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
            Value::Object(fields) => fields.values().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    let mut strings = Vec::new();
    collect(value, &mut strings);
    strings.join("\n")
}

/// Runs tripod-bpf with `args`, checks that it succeeds with a clean stderr; its stdout.
fn run_clean(what: &str, args: &[&str]) -> Vec<u8> {
    let out = run_tripod(args);
    assert_success(&out);
    assert_clean(&format!("{what} (stderr)"), &out.stderr, &[]);
    out.stdout
}

/// The folded form of a name: `;` separates frames there, so names show it as `:`.
fn folded(name: &str) -> String {
    name.replace(';', ":")
}

#[test]
fn hostile_python_names_are_escaped_in_every_output() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let fx = Fixture::start(&pyenv_python(), &[&python_fixture("hostile.py")]);
    let pid = fx.pid().to_string();
    let record = |format: &str| {
        let args = ["--pid", &pid, "-d", "1", "-f", format, "-o", "-"];
        run_clean(format, &args)
    };

    let log = record("log");
    let python_line = format!("File \"{FILE}\", line");
    assert_clean("log", &log, &[FUNCTION, &python_line, PROCESS]);
    let text = record("folded");
    assert_clean(
        "folded",
        &text,
        &[&folded(FUNCTION), &format!("({FILE}:"), &folded(PROCESS)],
    );

    let json = record("json");
    assert_clean("json", &json, &[]);
    let doc: Value = serde_json::from_slice(&json).expect("one JSON document");
    assert_clean(
        "json strings",
        json_strings(&doc).as_bytes(),
        &[FUNCTION, FILE, PROCESS, THREAD],
    );
    assert!(
        doc["frames"]
            .as_array()
            .expect("frames")
            .iter()
            .any(|f| f["function"] == FUNCTION && f["file"] == FILE),
        "no Python frame {FUNCTION} in {FILE}:\n{doc:#}"
    );

    // Dumps name threads: the spinning one is hostile too, and so are its locals.
    let dump = run_clean("dump", &["dump", "--pid", &pid, "--locals"]);
    let local = r"'tot\x1b[2J\x0aFAKE': ";
    let value = r"'label': '\x1b[31mred\r\nFAKE'";
    let class = r"<Evil\x1b[2J\x0aFAKE object at 0x";
    let named = format!("named {THREAD}");
    assert_clean(
        "dump",
        &dump,
        &[FUNCTION, FILE, PROCESS, &named, local, value, class],
    );
    let dump = run_clean(
        "dump --json",
        &["dump", "--pid", &pid, "--json", "--locals"],
    );
    assert_clean("dump --json", &dump, &[]);
    let doc: Value = serde_json::from_slice(&dump).expect("one JSON document");
    assert_clean(
        "dump --json strings",
        json_strings(&doc).as_bytes(),
        &[FUNCTION, FILE, THREAD, PROCESS, r"tot\x1b[2J\x0aFAKE"],
    );

    report_of_crafted_json(&json);
}

/// `tripod-bpf report` of the recording with the function's control characters put back
/// raw (as a forger, or an older tripod-bpf, would write them): escaped again on reading.
fn report_of_crafted_json(recording: &[u8]) {
    let mut doc: Value = serde_json::from_slice(recording).expect("one JSON document");
    let mut crafted = 0;
    for frame in doc["frames"].as_array_mut().expect("frames") {
        if frame["function"] == FUNCTION {
            frame["function"] = RAW_FUNCTION.into();
            crafted += 1;
        }
    }
    assert!(crafted > 0, "no frame named {FUNCTION} to craft:\n{doc:#}");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("crafted.json");
    fs::write(&file, format!("{doc}\n")).unwrap();
    let file = file.to_str().unwrap();
    // The file does hold the raw name (JSON writes ESC as \u001b, CR LF as \r\n).
    let written: Value = serde_json::from_str(&fs::read_to_string(file).unwrap()).unwrap();
    assert!(json_strings(&written).contains(RAW_FUNCTION));

    let report = |format: &str| {
        let args = ["report", file, "-f", format, "-o", "-"];
        run_clean(&format!("report -f {format}"), &args)
    };
    assert_clean("report -f log", &report("log"), &[FUNCTION, PROCESS]);
    assert_clean("report -f folded", &report("folded"), &[&folded(FUNCTION)]);
    // Formats with a structure of their own get the escaped names as well.
    let doc: Value = serde_json::from_slice(&report("speedscope")).expect("speedscope JSON");
    let strings = json_strings(&doc);
    assert_clean("speedscope", strings.as_bytes(), &[FUNCTION, PROCESS]);
    assert_clean("svg", &report("svg"), &[&folded(FUNCTION)]);
}
