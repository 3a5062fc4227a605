//! The output side: the default log file, the JSON document and interval reports.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::Value;
use tripod_tests::*;

#[test]
fn default_log_file() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let fx = Fixture::start(CHAIN_FP, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let pid = fx.pid().to_string();
    let mut cmd = tripod_command(&["--pid", &pid, "-d", "2"]);
    cmd.env("TMPDIR", dir.path());
    let out = Tripod::spawn(cmd).wait(RUN_TIMEOUT);
    assert_success(&out);
    let stderr = stderr_text(&out);

    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("[tripod] Sampling at 99 Hz")),
        "no `Sampling at 99 Hz` line:\n{stderr}"
    );
    let path = stderr
        .lines()
        .find_map(|l| l.strip_prefix("[tripod] Writing output to: "))
        .unwrap_or_else(|| panic!("no `Writing output to:` line:\n{stderr}"));
    let path = Path::new(path.trim_end());
    assert_eq!(
        path.parent(),
        Some(dir.path()),
        "log file not in $TMPDIR: {path:?}"
    );
    let name = path.file_name().unwrap().to_str().unwrap();
    let random = name
        .strip_prefix("tripod_")
        .and_then(|rest| rest.strip_suffix(".log"));
    assert!(
        random.is_some_and(|r| r.chars().count() == 6),
        "file name {name:?} does not match tripod_??????.log"
    );
    // Stacks can reveal what a process does: only the owner may read them.
    let mode = fs::metadata(path)
        .expect("log file exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "log file mode is {:o}", mode & 0o777);
    let log = fs::read_to_string(path).unwrap();
    assert!(
        log.contains("Traceback (most recent call last):"),
        "no Traceback header in the log:\n{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("in spin")),
        "no `in spin` frame in the log:\n{log}"
    );
}

#[test]
fn json_output() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let fx = Fixture::start(CHAIN_FP, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("out.json");
    let pid = fx.pid().to_string();
    let out = run_tripod(&[
        "-f",
        "json",
        "-o",
        file.to_str().unwrap(),
        "-d",
        "2",
        "--pid",
        &pid,
    ]);
    assert_success(&out);
    let text = fs::read_to_string(&file).expect("reading the JSON file");
    let doc: Value = serde_json::from_str(&text).expect("output is JSON");

    assert_eq!(doc["version"], 1, "unexpected version");
    let samples = doc["samples"].as_u64().expect("samples is a number");
    assert!(samples > 0, "no samples");
    let frames = doc["frames"].as_array().expect("frames is an array");
    let stacks = doc["stacks"].as_array().expect("stacks is an array");

    // Frames of a stack are indices into `frames`, outermost first.
    let resolve = |stack: &Value| -> Vec<&Value> {
        stack["frames"]
            .as_array()
            .expect("stack frames is an array")
            .iter()
            .map(|i| &frames[i.as_u64().expect("frame index") as usize])
            .collect()
    };
    let chain_stack = stacks
        .iter()
        .filter(|s| s["pid"].as_u64() == Some(fx.pid().into()))
        .map(resolve)
        .find(|fs| {
            let names: Vec<&str> = fs
                .iter()
                .map(|f| f["function"].as_str().unwrap_or(""))
                .collect();
            names.windows(CHAIN.len()).any(|w| w == CHAIN)
        })
        .unwrap_or_else(|| panic!("no stack of pid {pid} contains the chain:\n{text}"));

    let spin = chain_stack
        .iter()
        .find(|f| f["function"] == "spin")
        .unwrap();
    assert!(
        spin["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("chain.c")),
        "spin frame has no chain.c file: {spin}"
    );
    assert!(
        spin["line"].is_u64(),
        "spin frame has no line number: {spin}"
    );
}

#[test]
fn interval_reports() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let fx = Fixture::start(CHAIN_FP, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("out.log");
    let pid = fx.pid().to_string();
    let out = run_tripod(&[
        "--pid",
        &pid,
        "-i",
        "1",
        "-d",
        "3.5",
        "-f",
        "log",
        "-o",
        file.to_str().unwrap(),
    ]);
    assert_success(&out);
    let log = fs::read_to_string(&file).expect("reading the log file");
    let headers = log
        .lines()
        .filter(|l| l.starts_with("[tripod] ====="))
        .count();
    assert!(
        headers >= 3,
        "expected >= 3 interval headers, got {headers}:\n{log}"
    );
}

/// inferno, the maintained Rust port of flamegraph.pl, draws our folded output as it is.
#[test]
fn folded_output_makes_a_flame_graph() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let fx = Fixture::start(SYSCALLS_FP, &[]);
    let pid = fx.pid().to_string();
    let out = run_tripod(&["--pid", &pid, "-d", "2", "-f", "folded", "-o", "-"]);
    assert_success(&out);
    let folded = stdout_text(&out);
    let mut svg = Vec::new();
    let mut options = inferno::flamegraph::Options::default();
    inferno::flamegraph::from_lines(&mut options, folded.lines(), &mut svg)
        .unwrap_or_else(|e| panic!("inferno rejected the folded output: {e}\n{folded}"));
    let svg = String::from_utf8(svg).unwrap();
    for name in ["syscall_loop", "do_write"] {
        assert!(
            svg.contains(name),
            "the flame graph has no {name}:\n{folded}"
        );
    }
}

/// `tripod-bpf ... -o - | head` must end quietly when the reader goes away.
#[test]
fn broken_pipe_exits_quietly() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let fx = Fixture::start(CHAIN_FP, &[]);
    let pid = fx.pid().to_string();
    let mut child = tripod_command(&["--pid", &pid, "-d", "1", "-f", "folded", "-o", "-"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start tripod-bpf");
    drop(child.stdout.take()); // the reader is gone before anything is written
    let out = child.wait_with_output().expect("wait for tripod-bpf");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{stderr}");
    assert!(!stderr.contains("error"), "stderr:\n{stderr}");
}

/// `-f svg`: an inferno flame graph of the fixture, titled with the target, whose frames
/// are the chain's functions, kernel frames coloured apart.
#[test]
fn svg_output_is_a_flame_graph() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("out.svg");
    let pid = record_chain_to(&file, "svg");
    let svg = fs::read_to_string(&file).expect("svg written");
    assert!(
        svg.starts_with("<?xml") && svg.trim_end().ends_with("</svg>"),
        "not an SVG document:\n{svg}"
    );
    assert!(
        svg.contains(&format!("tripod-bpf: pid {pid}")),
        "no title naming the target"
    );
    for function in CHAIN {
        assert!(
            svg.contains(&format!("<title>{function} (")),
            "no frame for {function} in the flame graph"
        );
    }
}
