//! `tripod-bpf report` of stacks taken by other tools on this machine: gdb's `thread
//! apply all bt [full]`, eu-stack, py-spy's dumps (text and JSON), and logs of Python
//! tracebacks. Each is grouped as tripod-bpf's own live dump of the same fixture is.
use std::{fs, path::Path, process::Command};

use serde_json::Value;
use tripod_tests::*;

/// The functions of population.c, which stacks are compared on.
const POPULATION_FUNCTIONS: &[&str] = &[
    "main",
    "worker_main",
    "wait_for_work",
    "reader_main",
    "wait_for_input",
    "napper_main",
    "nap",
    "spinner_main",
    "spin",
];

/// The functions of pool.py.
const POOL_FUNCTIONS: &[&str] = &["main", "worker_main", "wait_for_job", "napper_main", "nap"];

/// A dump's groups as (threads, the functions among `keep`, outermost first), sorted.
fn groups(dump: &Value, keep: &[&str]) -> Vec<(usize, Vec<String>)> {
    let mut groups: Vec<(usize, Vec<String>)> = dump["groups"]
        .as_array()
        .unwrap_or_else(|| panic!("no groups in {dump:#}"))
        .iter()
        .map(|group| {
            let functions = group["frames"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|i| dump["frames"][i.as_u64().unwrap() as usize]["function"].as_str())
                .filter(|f| keep.contains(f))
                .map(str::to_string)
                .collect();
            (group["tids"].as_array().unwrap().len(), functions)
        })
        .collect();
    groups.sort();
    groups
}

/// The output of a tool run by a test, or None (a panic in CI) when it is not installed.
fn tool_output(program: &str, args: &[&str]) -> Option<String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    match cmd.output() {
        Ok(_) => {}
        Err(_) if in_ci() => panic!("{program} is missing in CI; cargo xtask setup installs it"),
        Err(_) => {
            eprintln!("skipped: {program} is not installed");
            return None;
        }
    }
    let mut cmd = Command::new(program);
    cmd.args(args);
    let out = run_with_timeout(cmd, RUN_TIMEOUT);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !text.trim().is_empty(),
        "{program} {args:?} failed with {}:\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Some(text)
}

/// `report FILE -f json` of a dump: the one dump document.
fn report_json(file: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["report", file.to_str().unwrap(), "-f", "json"];
    args.extend_from_slice(extra);
    let out = run_tripod(&args);
    assert_success(&out);
    let text = stdout_text(&out);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("report is not JSON ({e}):\n{text}"))
}

/// Every format renders the file (the log with `expect` in it).
fn renders_in_every_format(file: &Path, expect: &str) {
    for format in ["log", "folded", "json", "svg", "pprof", "speedscope"] {
        let out = run_tripod(&["report", file.to_str().unwrap(), "-f", format, "-o", "-"]);
        assert_success(&out);
        assert!(!out.stdout.is_empty(), "{format}: no output");
        if format == "log" {
            let text = stdout_text(&out);
            assert!(text.contains(expect), "no {expect:?} in the log:\n{text}");
        }
    }
}

#[test]
fn gdb_and_eu_stack_dumps_are_grouped_like_the_live_dump() {
    let _guard = serial();
    let fx = Fixture::start(POPULATION, &[]);
    let pid = fx.pid().to_string();
    // Tripod first: gdb and eu-stack stop the process while they read it.
    let expected: Vec<(usize, Vec<String>)> = if require_bpf() {
        groups(&dump_json(fx.pid(), &[]), POPULATION_FUNCTIONS)
    } else {
        vec![
            (1, vec!["main".into()]),
            (1, vec!["napper_main".into(), "nap".into()]),
            (1, vec!["spinner_main".into(), "spin".into()]),
            (2, vec!["reader_main".into(), "wait_for_input".into()]),
            (4, vec!["worker_main".into(), "wait_for_work".into()]),
        ]
    };
    assert_eq!(expected.len(), 5, "{expected:?}");
    let dir = tempfile::tempdir().unwrap();
    let sources: [(&str, &str, Vec<&str>); 3] = [
        (
            "gdb.txt",
            "gdb",
            vec!["-batch", "-nx", "-p", &pid, "-ex", "thread apply all bt"],
        ),
        (
            "gdb-full.txt",
            "gdb",
            vec![
                "-batch",
                "-nx",
                "-p",
                &pid,
                "-ex",
                "thread apply all bt full",
            ],
        ),
        ("eu-stack.txt", "eu-stack", vec!["-p", &pid]),
    ];
    for (name, program, args) in sources {
        let Some(text) = tool_output(program, &args) else {
            continue;
        };
        let file = dir.path().join(name);
        fs::write(&file, &text).unwrap();
        let dump = report_json(&file, &[]);
        assert_eq!(dump["kind"], "dump");
        assert_eq!(dump["pid"].as_u64(), Some(u64::from(fx.pid())), "{name}");
        assert_eq!(
            dump["threads"].as_array().unwrap().len(),
            9,
            "{name}: {dump:#}"
        );
        assert_eq!(
            groups(&dump, POPULATION_FUNCTIONS),
            expected,
            "{name}:\n{text}"
        );
        renders_in_every_format(&file, "4 * [");
        // Cut in the middle of a line and garbled: what parses is shown, and one note
        // says how many lines were skipped and where.
        let garbled = dir.path().join(format!("garbled-{name}"));
        let mut cut = text[..text.len() * 2 / 3].to_string();
        cut.push_str("\n#?? garbled frame\n");
        fs::write(&garbled, &cut).unwrap();
        let out = run_tripod(&["report", garbled.to_str().unwrap(), "-f", "folded"]);
        assert_success(&out);
        let stderr = stderr_text(&out);
        assert!(
            stderr.contains("skipped (the first: line"),
            "{name}: {stderr}"
        );
        assert!(!stdout_text(&out).is_empty());
        let quiet = run_tripod(&["report", garbled.to_str().unwrap(), "-q", "-f", "folded"]);
        assert_success(&quiet);
        assert_eq!(stderr_text(&quiet), "", "{name}: -q");
    }
}

#[test]
fn py_spy_dumps_are_grouped_like_the_live_dump() {
    let _guard = serial();
    let Some(py_spy) = py_spy() else {
        return;
    };
    let fx = Fixture::start(&pyenv_python(), &[&python_fixture("pool.py")]);
    wait_until_all_threads_block(fx.pid());
    let expected: Vec<(usize, Vec<String>)> = if require_bpf() {
        groups(&dump_json(fx.pid(), &[]), POOL_FUNCTIONS)
    } else {
        vec![
            (1, vec!["main".into()]),
            (2, vec!["napper_main".into(), "nap".into()]),
            (3, vec!["worker_main".into(), "wait_for_job".into()]),
        ]
    };
    assert_eq!(
        expected.iter().map(|g| g.0).collect::<Vec<_>>(),
        [1, 2, 3],
        "{expected:?}"
    );
    let py_spy = py_spy.to_str().unwrap();
    let pid = fx.pid().to_string();
    let dir = tempfile::tempdir().unwrap();
    for (name, args) in [
        ("py-spy.txt", vec!["dump", "--pid", &pid]),
        ("py-spy.json", vec!["dump", "--json", "--pid", &pid]),
    ] {
        let text = tool_output(py_spy, &args).unwrap();
        let file = dir.path().join(name);
        fs::write(&file, &text).unwrap();
        let dump = report_json(&file, &[]);
        assert_eq!(dump["pid"].as_u64(), Some(u64::from(fx.pid())), "{name}");
        assert_eq!(groups(&dump, POOL_FUNCTIONS), expected, "{name}:\n{text}");
        renders_in_every_format(&file, "3 * [");
    }
}

/// raises.py's log, with and without a prefix on every line: 3 distinct exceptions
/// logged 5, 3 and 1 times, chains included, and the two summaries.
#[test]
fn tracebacks_in_a_log_are_counted_once_each() {
    let python = pyenv_python();
    let script = python_fixture("raises.py");
    let dir = tempfile::tempdir().unwrap();
    for (name, args) in [
        ("raises.log", vec![script.as_str()]),
        (
            "raises-every-line.log",
            vec![script.as_str(), "--prefix-every-line"],
        ),
    ] {
        let out = Command::new(&python).args(&args).output().unwrap();
        assert!(out.status.success(), "{python} {args:?}: {out:?}");
        let file = dir.path().join(name);
        fs::write(&file, &out.stderr).unwrap();
        let run = run_tripod(&["report", file.to_str().unwrap()]);
        assert_success(&run);
        let log = stdout_text(&run);
        for expected in [
            "9 Python tracebacks, 3 distinct",
            "5 * ValueError: no price for 'apple'",
            "During handling of the above exception, another exception occurred:",
            "3 * RuntimeError: config unreadable",
            "The above exception was the direct cause of the following exception:",
            "1 * ZeroDivisionError: division by zero",
            "Duplicated error messages:\n  5: ValueError: no price for 'apple'\n  3: RuntimeError: config unreadable\n",
            "Duplicated stacktraces:\n  5: main, lookup_price\n  3: main, read_config\n",
        ] {
            assert!(log.contains(expected), "{name}: no {expected:?} in:\n{log}");
        }
        assert_eq!(
            log.matches("KeyError: 'apple'").count(),
            1,
            "{name}: shown once:\n{log}"
        );
        // Folded: one stack per exception, counted per time logged.
        let folded = run_tripod(&["report", file.to_str().unwrap(), "-f", "folded"]);
        assert_success(&folded);
        let mut counts: Vec<u64> = parse_folded(&stdout_text(&folded))
            .iter()
            .map(|s| s.1)
            .collect();
        counts.sort_unstable();
        assert_eq!(counts, [1, 3, 5], "{}", stdout_text(&folded));
        renders_in_every_format(&file, "Duplicated stacktraces:");
    }
}

/// Sniffing looks at the content, not the name; --input forces a kind.
#[test]
fn the_kind_is_told_from_the_content_or_forced() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(pyenv_python())
        .arg(python_fixture("raises.py"))
        .output()
        .unwrap();
    let file = dir.path().join("dump.json");
    fs::write(&file, &out.stderr).unwrap();
    let run = run_tripod(&["report", file.to_str().unwrap()]);
    assert_success(&run);
    assert!(stdout_text(&run).contains("Duplicated error messages:"));
    let forced = run_tripod(&["report", "--input", "py-spy", file.to_str().unwrap()]);
    assert_eq!(forced.status.code(), Some(2), "{}", stderr_text(&forced));
    assert!(stderr_text(&forced).contains("no threads found in it as py-spy"));
    let forced = run_tripod(&["report", "--input", "log", file.to_str().unwrap()]);
    assert_eq!(forced.status.code(), Some(2), "{}", stderr_text(&forced));
    assert!(
        stderr_text(&forced).contains("no recordings or dumps found in it as log"),
        "{}",
        stderr_text(&forced)
    );
    // Two files into one output.
    let two = run_tripod(&["report", file.to_str().unwrap(), file.to_str().unwrap()]);
    assert_success(&two);
    assert_eq!(stdout_text(&two).matches("9 Python tracebacks").count(), 2);
}

/// tripod-bpf's own log read back. A recording of the chain fixture written straight to
/// `-f log` shows the chain in order from `report`; and a recording saved as JSON, its
/// log read back, gives the same stacks (frames in order) and the same counts in JSON
/// and folded as the JSON recording itself. The dump of a Python fixture with --locals
/// keeps its Python frames and variables through the log.
#[test]
fn its_own_log_reads_back_as_the_recording() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("chain.log");
    record_chain_to(&log, "log");
    let out = run_tripod(&["report", log.to_str().unwrap(), "-f", "folded"]);
    assert_success(&out);
    assert_chain(&stdout_text(&out), "chain", CHAIN, 10, 0.5);

    let json = dir.path().join("chain.json");
    record_chain_to(&json, "json");
    let out = run_tripod(&["report", json.to_str().unwrap(), "-f", "log"]);
    assert_success(&out);
    let log = dir.path().join("from-json.log");
    fs::write(&log, &out.stdout).unwrap();
    let folded = |file: &Path| {
        let out = run_tripod(&["report", file.to_str().unwrap(), "-f", "folded"]);
        assert_success(&out);
        assert!(stderr_text(&out).trim().is_empty(), "{}", stderr_text(&out));
        stdout_text(&out)
    };
    assert_eq!(folded(&log), folded(&json));
    let stacks = |file: &Path| -> Vec<(u64, Vec<String>)> {
        let out = run_tripod(&["report", file.to_str().unwrap(), "-f", "json"]);
        assert_success(&out);
        let document: Value = serde_json::from_str(&stdout_text(&out)).unwrap();
        document["stacks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|stack| {
                let frames = stack["frames"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| {
                        let frame = &document["frames"][i.as_u64().unwrap() as usize];
                        frame["function"].as_str().unwrap_or("?").to_string()
                    })
                    .collect();
                (stack["count"].as_u64().unwrap(), frames)
            })
            .collect()
    };
    let from_log = stacks(&log);
    assert_eq!(from_log, stacks(&json));
    assert!(
        from_log.iter().any(|(_, frames)| frames
            .windows(CHAIN.len())
            .any(|w| w.iter().map(String::as_str).eq(CHAIN.iter().copied()))),
        "{from_log:?}"
    );

    // A dump with Python frames and locals.
    let Some(python) = pyenv_interpreter("3.11") else {
        return;
    };
    let fx = Fixture::start(&python, &[&python_fixture("paused.py")]);
    wait_until_all_threads_block(fx.pid());
    let pid = fx.pid().to_string();
    let out = run_tripod(&["dump", "--pid", &pid, "--locals"]);
    assert_success(&out);
    let log = dir.path().join("dump.log");
    fs::write(&log, &out.stdout).unwrap();
    let dump = report_json(&log, &[]);
    let thread = dump["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tid"] == fx.pid())
        .unwrap_or_else(|| panic!("no thread {pid}:\n{dump:#}"));
    let locals = thread["locals"].as_array().expect("locals");
    assert_eq!(locals.len(), 3, "{dump:#}");
    assert!(
        locals[2]["variables"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "name" && v["value"] == "'tripod'"),
        "{dump:#}"
    );
    let python_frames: Vec<&str> = dump["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "python")
        .filter_map(|f| f["function"].as_str())
        .collect();
    for function in ["<module>", "main", "paused_here"] {
        assert!(python_frames.contains(&function), "{python_frames:?}");
    }
    renders_in_every_format(&log, "paused_here");
}
