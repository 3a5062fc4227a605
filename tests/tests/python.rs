//! Python-aware stacks: CPython 3.6 to 3.13 processes, where each native
//! `_PyEval_EvalFrameDefault` frame is replaced by the Python frames it was running. Every
//! test runs against each of pyenv's interpreters (shared libpython; all must be there in CI)
//! and Debian's python3.11 (static, non-PIE, stripped); dumps are checked against py-spy.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use serde_json::Value;
use tripod_tests::*;

/// The Python chain of hot.py, outermost first.
const HOT_CHAIN: &[&str] = &["main", "outer_step", "inner_loop"];

/// The native function that Python frames replace.
const EVAL_FRAME: &str = "_PyEval_EvalFrameDefault";

/// A Python frame: function, file (`co_filename`) and line.
#[derive(Clone, Debug, PartialEq)]
struct PyFrame {
    function: String,
    file: String,
    line: u32,
}

/// The Python frame of a folded line, `FUNCTION (FILE:LINE)`.
fn folded_python_frame(frame: &str) -> Option<PyFrame> {
    let (function, rest) = frame.strip_suffix(')')?.rsplit_once(" (")?;
    let (file, line) = rest.rsplit_once(':')?;
    Some(PyFrame {
        function: function.to_owned(),
        file: file.to_owned(),
        line: line.parse().ok()?,
    })
}

/// The Python frame of a JSON frame object (`"kind": "python"`); panics on a malformed one.
fn json_python_frame(frame: &Value) -> Option<PyFrame> {
    if frame["kind"] != "python" {
        return None;
    }
    let field = |name: &str| {
        frame[name]
            .as_str()
            .unwrap_or_else(|| panic!("Python frame without a {name} string: {frame}"))
            .to_owned()
    };
    assert_eq!(
        frame["kernel"], false,
        "a Python frame marked as kernel: {frame}"
    );
    Some(PyFrame {
        function: field("function"),
        file: field("file"),
        line: frame["line"]
            .as_u64()
            .unwrap_or_else(|| panic!("Python frame without an integer line: {frame}"))
            as u32,
    })
}

fn is_kernel(frame: &Value) -> bool {
    frame["kernel"] == true
}

/// A user-space native frame (code or a marker), not Python.
fn is_native_user(frame: &Value) -> bool {
    frame["kind"] != "python" && !is_kernel(frame)
}

/// One frame as in folded output, for messages.
fn frame_text(frame: &Value) -> String {
    // A Python frame that could not be read (a code object freed before it
    // was) is data, shown with its reason.
    if let (true, Some(why)) = (frame["kind"] == "python", frame["unknown"].as_str()) {
        return format!("[unknown: {why}]");
    }
    match json_python_frame(frame) {
        Some(py) => format!("{} ({}:{})", py.function, py.file, py.line),
        None => {
            let name = frame["function"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| frame["module"].as_str().map(|m| format!("[{m}]")))
                .unwrap_or_else(|| format!("[{}]", frame["kind"].as_str().unwrap_or("?")));
            if is_kernel(frame) {
                format!("{name}_[k]")
            } else {
                name
            }
        }
    }
}

fn frames_text(frames: &[&Value]) -> String {
    frames
        .iter()
        .map(|f| frame_text(f))
        .collect::<Vec<_>>()
        .join(";")
}

/// The lines of the function `def NAME` in `source`: from its `def` to the last line before
/// the next statement at column 0 (the next top-level `def`, or the `if __name__` block).
fn function_lines(source: &str, function: &str) -> RangeInclusive<u32> {
    let lines: Vec<&str> = source.lines().collect();
    let def = format!("def {function}(");
    let start = lines
        .iter()
        .position(|l| l.starts_with(&def))
        .unwrap_or_else(|| panic!("no top-level `{def}` in the fixture"));
    let end = lines[start + 1..]
        .iter()
        .position(|l| !l.is_empty() && !l.starts_with(char::is_whitespace) && !l.starts_with('#'))
        .map_or(lines.len(), |n| start + 1 + n);
    // 1-based: `def` is line start + 1, the function's last line is line `end`.
    (start as u32 + 1)..=(end as u32)
}

/// The line ranges of `functions` in the fixture `script`.
fn fixture_ranges(script: &str, functions: &[&str]) -> BTreeMap<String, RangeInclusive<u32>> {
    let source = std::fs::read_to_string(script).unwrap_or_else(|e| panic!("{script}: {e}"));
    functions
        .iter()
        .map(|f| (f.to_string(), function_lines(&source, f)))
        .collect()
}

/// Whether `frames` (Python frames, outermost first) contain `chain` contiguously.
fn has_python_chain(frames: &[PyFrame], chain: &[&str]) -> bool {
    frames
        .windows(chain.len())
        .any(|w| w.iter().zip(chain).all(|(f, c)| f.function == *c))
}

/// Panics unless every frame of `script`'s functions in `frames` is in that file, at a line
/// inside the function.
fn assert_lines_in_functions(
    frames: &[PyFrame],
    script: &str,
    ranges: &BTreeMap<String, RangeInclusive<u32>>,
    context: &dyn Fn() -> String,
) {
    for frame in frames {
        let Some(range) = ranges.get(&frame.function) else {
            continue;
        };
        assert!(
            frame.file == script && range.contains(&frame.line),
            "frame {frame:?}: expected file {script} and a line in {range:?}; {}",
            context()
        );
    }
}

/// A recording document (`-f json`) of `pid` for `seconds`.
fn record_json(pid: u32, seconds: &str, extra: &[&str]) -> Value {
    let pid = pid.to_string();
    let mut args = vec!["--pid", &pid, "-d", seconds, "-f", "json", "-o", "-"];
    args.extend_from_slice(extra);
    let out = run_tripod(&args);
    assert_success(&out);
    let text = stdout_text(&out);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one JSON document, got {}:\n{text}",
        lines.len()
    );
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("output is not JSON ({e}):\n{text}"))
}

/// A stack of a recording or dump document: its frames, outermost first.
fn resolve<'a>(doc: &'a Value, stack: &Value) -> Vec<&'a Value> {
    stack["frames"]
        .as_array()
        .unwrap_or_else(|| panic!("stack without frames: {stack}"))
        .iter()
        .map(|i| {
            let i = i.as_u64().expect("frame index") as usize;
            doc["frames"]
                .get(i)
                .unwrap_or_else(|| panic!("frame index {i} out of range"))
        })
        .collect()
}

/// The stacks of a recording, as (frames, count), that `keep` selects.
fn recorded_stacks(doc: &Value, keep: impl Fn(&Value) -> bool) -> Vec<(Vec<&Value>, u64)> {
    doc["stacks"]
        .as_array()
        .expect("stacks is an array")
        .iter()
        .filter(|s| keep(s))
        .map(|s| (resolve(doc, s), s["count"].as_u64().expect("count")))
        .collect()
}

/// The most frequent stacks, one per line as in folded output, for messages.
fn stacks_text(stacks: &[(Vec<&Value>, u64)]) -> String {
    let mut sorted: Vec<_> = stacks.iter().collect();
    sorted.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    let mut text: String = sorted
        .iter()
        .take(30)
        .map(|(frames, count)| format!("{} {count}\n", frames_text(frames)))
        .collect();
    if sorted.len() > 30 {
        text.push_str(&format!("... and {} more stacks\n", sorted.len() - 30));
    }
    text
}

fn python_frames(frames: &[&Value]) -> Vec<PyFrame> {
    frames.iter().filter_map(|f| json_python_frame(f)).collect()
}

/// Asserts that there are at least `min_samples` samples and that at least `min_percent` of
/// them are `hits`; prints the share for the log.
fn assert_share(
    what: &str,
    hits: u64,
    total: u64,
    min_samples: u64,
    min_percent: f64,
    output: &str,
) {
    println!(
        "{what}: {hits}/{total} samples ({:.1}%)",
        percent(hits, total)
    );
    assert!(
        total >= min_samples,
        "{what}: expected at least {min_samples} samples, got {total}:\n{output}"
    );
    assert!(
        percent(hits, total) >= min_percent,
        "{what}: expected >= {min_percent}% of the samples, got {hits}/{total} ({:.1}%):\n{output}",
        percent(hits, total)
    );
}

fn percent(part: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        100.0 * part as f64 / total as f64
    }
}

/// A CPU-bound loop that never releases the GIL: nearly every sample has the whole Python
/// chain, at the right lines, inside the native stack that runs it.
#[test]
fn python_hot_loop_has_python_frames() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let script = python_fixture("hot.py");
    let ranges = fixture_ranges(&script, HOT_CHAIN);
    for python in python_interpreters() {
        let fx = Fixture::start(&python, &[&script]);
        let doc = record_json(fx.pid(), "3", &[]);
        let stacks = recorded_stacks(&doc, |s| s["pid"] == fx.pid());
        let all = stacks_text(&stacks);
        let (mut total, mut hits, mut merged) = (0, 0, 0);
        for (frames, count) in &stacks {
            total += count;
            let py = python_frames(frames);
            if !has_python_chain(&py, HOT_CHAIN) {
                continue;
            }
            hits += count;
            let context = || format!("{python}, stack:\n{}", frames_text(frames));
            assert_lines_in_functions(&py, &script, &ranges, &context);
            assert!(
                !frames.iter().any(|f| f["function"] == EVAL_FRAME),
                "{EVAL_FRAME} left next to the Python frames it ran; {}",
                context()
            );
            // Merged into the native stack: native frames (_start, main, Py_RunMain, ...)
            // lead to the interpreter loop, whose place the Python frames take.
            let first_python = frames.iter().position(|f| f["kind"] == "python").unwrap();
            if frames[..first_python].iter().any(|f| is_native_user(f)) {
                merged += count;
            }
        }
        // 99 Hz for 3 s on a busy loop is ~297 samples.
        let what = format!("{python}: the Python chain {}", HOT_CHAIN.join(" -> "));
        assert_share(&what, hits, total, 150, 95.0, &all);
        assert!(
            percent(merged, hits) >= 95.0,
            "{python}: expected native frames outside the Python frames in >= 95% of the \
             samples, got {merged}/{hits}:\n{all}",
        );
    }
}

/// `--python-only`: a Python thread's stacks are its Python frames and nothing else.
#[test]
fn python_only_shows_only_python_frames() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let script = python_fixture("hot.py");
    let ranges = fixture_ranges(&script, HOT_CHAIN);
    for python in python_interpreters() {
        let fx = Fixture::start(&python, &[&script]);
        let folded = sample_folded(fx.pid(), "2", &["--python-only"]);
        let stacks = parse_folded(&folded);
        let (mut total, mut hits) = (0, 0);
        for (frames, count) in &stacks {
            total += count;
            let py: Vec<PyFrame> = frames[1..]
                .iter()
                .map(|f| {
                    folded_python_frame(f)
                        .filter(|py| py.file.ends_with(".py"))
                        .unwrap_or_else(|| {
                            panic!(
                                "{python} --python-only: {f:?} is not a Python frame in {}; \
                                 output:\n{folded}",
                                frames.join(";")
                            )
                        })
                })
                .collect();
            if has_python_chain(&py, HOT_CHAIN) {
                hits += count;
                let context = || format!("{python} --python-only, output:\n{folded}");
                assert_lines_in_functions(&py, &script, &ranges, &context);
            }
        }
        let what = format!("{python} --python-only: {}", HOT_CHAIN.join(";"));
        assert_share(&what, hits, total, 100, 95.0, &folded);
    }
}

/// `--no-python`: the native stacks as before, with the interpreter loop and no Python frames.
#[test]
fn no_python_keeps_the_native_interpreter_frames() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let script = python_fixture("hot.py");
    for python in python_interpreters() {
        let fx = Fixture::start(&python, &[&script]);
        let folded = sample_folded(fx.pid(), "2", &["--no-python"]);
        let stacks = parse_folded(&folded);
        let (mut total, mut in_eval) = (0, 0);
        for (frames, count) in &stacks {
            total += count;
            if let Some(py) = frames[1..]
                .iter()
                .find(|f| folded_python_frame(f).is_some_and(|py| py.file.ends_with(".py")))
            {
                panic!("{python} --no-python: Python frame {py:?}; output:\n{folded}");
            }
            if frames.iter().any(|f| f == EVAL_FRAME) {
                in_eval += count;
            }
        }
        let what = format!("{python} --no-python: in {EVAL_FRAME}");
        assert_share(&what, in_eval, total, 100, 90.0, &folded);
    }
}

/// Wall-clock time per thread: the spinning thread in its Python loop, the sleeping thread
/// in its Python function and, inside it, the kernel where it sleeps.
#[test]
fn python_wall_mode_threads() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let script = python_fixture("threads.py");
    let spin_chain = ["spin_forever", "spin_step"];
    let block_chain = ["block_forever", "wait_here"];
    let ranges = fixture_ranges(
        &script,
        &["spin_forever", "spin_step", "block_forever", "wait_here"],
    );
    for python in python_interpreters() {
        let fx = Fixture::start(&python, &[&script]);
        let spinner = thread_named(fx.pid(), "spinner");
        let sleeper = thread_named(fx.pid(), "sleeper");
        let doc = record_json(fx.pid(), "3", &["-m", "wall", "--per-thread"]);
        let thread_stacks = |tid: u32| recorded_stacks(&doc, |s| s["tid"] == tid);

        for (name, tid, chain) in [
            ("spinner", spinner, &spin_chain),
            ("sleeper", sleeper, &block_chain),
        ] {
            let stacks = thread_stacks(tid);
            let all = stacks_text(&stacks);
            let (mut total, mut hits) = (0, 0);
            for (frames, count) in &stacks {
                total += count;
                let py = python_frames(frames);
                if !has_python_chain(&py, chain) {
                    continue;
                }
                hits += count;
                let context = || format!("{python} {name}, stack:\n{}", frames_text(frames));
                assert_lines_in_functions(&py, &script, &ranges, &context);
                if tid != sleeper {
                    continue;
                }
                // Asleep in the kernel, under (inner to) its Python frames.
                let last_python = frames.iter().rposition(|f| f["kind"] == "python").unwrap();
                let first_kernel = frames.iter().position(|f| is_kernel(f));
                assert!(
                    first_kernel.is_some_and(|k| k > last_python),
                    "expected kernel frames after the Python frames; {}",
                    context()
                );
                assert!(
                    frames.iter().filter(|f| is_kernel(f)).any(|f| {
                        f["function"]
                            .as_str()
                            .is_some_and(|n| n.contains("nanosleep") || n.contains("schedule"))
                    }),
                    "expected a nanosleep or schedule kernel frame; {}",
                    context()
                );
            }
            // 99 Hz for 3 s, running or not, is ~297 samples; a thread's Python loop is read
            // as reliably as hot.py's: the same bar.
            let what = format!("{python} {name} ({tid}): {}", chain.join(" -> "));
            assert_share(&what, hits, total, 150, 95.0, &all);
        }
    }
}

/// The thread `tid` of a dump.
fn dumped_thread(dump: &Value, tid: u32) -> &Value {
    dump["threads"]
        .as_array()
        .expect("threads is an array")
        .iter()
        .find(|t| t["tid"] == tid)
        .unwrap_or_else(|| panic!("no thread {tid} in the dump:\n{dump:#}"))
}

/// `dump --locals`: the variables of each Python frame, as Python-like reprs.
#[test]
fn dump_locals_show_values() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let script = python_fixture("paused.py");
    let ranges = fixture_ranges(&script, &["main", "paused_here"]);
    let expected: BTreeMap<&str, &str> = PAUSED_LOCALS.iter().copied().collect();
    for python in python_interpreters() {
        let fx = Fixture::start(&python, &[&script]);
        let pid = fx.pid();
        wait_until_all_threads_block(pid);

        let dump = dump_json(pid, &["--locals"]);
        let thread = dumped_thread(&dump, pid);
        let locals = thread["locals"]
            .as_array()
            .unwrap_or_else(|| panic!("{python}: thread {pid} has no locals:\n{dump:#}"));
        let functions: Vec<&str> = locals
            .iter()
            .map(|f| f["function"].as_str().unwrap_or("?"))
            .collect();
        assert_eq!(
            functions,
            ["<module>", "main", "paused_here"],
            "{python}: the Python frames of the locals, outermost first:\n{dump:#}"
        );
        let frame = &locals[2];
        let line = frame["line"].as_u64().unwrap_or(0) as u32;
        assert!(
            frame["file"] == script.as_str() && ranges["paused_here"].contains(&line),
            "{python}: paused_here's locals at {}:{line}, expected {script} in {:?}:\n{dump:#}",
            frame["file"],
            ranges["paused_here"]
        );
        let variables: BTreeMap<&str, &str> = frame["variables"]
            .as_array()
            .unwrap_or_else(|| panic!("{python}: paused_here without variables:\n{dump:#}"))
            .iter()
            .map(|v| {
                (
                    v["name"].as_str().expect("variable name"),
                    v["value"].as_str().expect("variable value"),
                )
            })
            .collect();
        assert_eq!(
            variables, expected,
            "{python}: paused_here's variables:\n{dump:#}"
        );

        // Without --locals there are none.
        let dump = dump_json(pid, &[]);
        for thread in dump["threads"].as_array().unwrap() {
            let locals = &thread["locals"];
            assert!(
                locals.is_null() || locals.as_array().is_some_and(|l| l.is_empty()),
                "{python}: locals without --locals:\n{dump:#}"
            );
        }

        // The text dump lists them after the traceback.
        let pid_arg = pid.to_string();
        let out = run_tripod(&["dump", "--pid", &pid_arg, "--locals"]);
        assert_success(&out);
        let text = stdout_text(&out);
        assert!(
            text.contains("Local variables") && text.contains("'tripod'"),
            "{python}: no `Local variables` with 'tripod' in the text dump:\n{text}"
        );
        // Each Python frame of the traceback with its line of source, as Python shows it.
        let lines: Vec<&str> = text.lines().collect();
        let sleeping = lines.windows(2).any(|pair| {
            pair[0].contains(&format!("File \"{script}\", line "))
                && pair[0].ends_with(", in paused_here")
                && pair[1] == "    time.sleep(1000)"
        });
        assert!(
            sleeping,
            "{python}: paused_here's frame followed by its source line `    time.sleep(1000)`:\n{text}"
        );
    }
}

/// A Python process that starts while `--all` samples is recognised as one.
#[test]
fn python_process_started_later_with_all() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let script = python_fixture("hot.py");
    let mut tripod = Tripod::spawn(tripod_command(&[
        "--all",
        "-d",
        "6",
        "--per-thread",
        "-f",
        "folded",
        "-o",
        "-",
    ]));
    tripod.wait_for_stderr("[tripod] Writing output to:", RUN_TIMEOUT);
    let fixtures: Vec<(String, Fixture)> = python_interpreters()
        .into_iter()
        .map(|python| {
            let fx = Fixture::start(&python, &[&script]);
            (python, fx)
        })
        .collect();
    let out = tripod.wait(RUN_TIMEOUT);
    assert_success(&out);
    let folded = stdout_text(&out);
    let stacks = parse_folded(&folded);
    for (python, fx) in &fixtures {
        // --per-thread names each line `comm-PID/TID`.
        let pid = fx.pid().to_string();
        let mine: Vec<&FoldedStack> = stacks
            .iter()
            .filter(|(frames, _)| {
                frames[0]
                    .rsplit_once('-')
                    .and_then(|(_, ids)| ids.split_once('/'))
                    .is_some_and(|(p, _)| p == pid)
            })
            .collect();
        let total: u64 = mine.iter().map(|(_, n)| n).sum();
        let hits: u64 = mine
            .iter()
            .filter(|(frames, _)| {
                let py: Vec<PyFrame> = frames[1..]
                    .iter()
                    .filter_map(|f| folded_python_frame(f))
                    .filter(|f| f.file == *script)
                    .collect();
                has_python_chain(&py, HOT_CHAIN)
            })
            .map(|(_, n)| n)
            .sum();
        let mut sorted = mine.clone();
        sorted.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        let lines: String = sorted
            .iter()
            .take(30)
            .map(|(frames, n)| format!("{} {n}\n", frames.join(";")))
            .collect();
        // Started ~0 s into a 6 s run, nine interpreters on two CPUs: ~130 samples each,
        // all but the start-up in the loop.
        let what = format!(
            "{python} (pid {pid}, started under --all): {}",
            HOT_CHAIN.join(";")
        );
        assert_share(&what, hits, total, 50, 50.0, &lines);
    }
}

/// The Python frames of each thread in py-spy's `dump --json`: os_thread_id -> frames,
/// outermost first. py-spy lists threads with frames innermost first.
fn py_spy_dump(py_spy: &std::path::Path, pid: u32) -> BTreeMap<u32, Vec<PyFrame>> {
    let mut cmd = std::process::Command::new(py_spy);
    cmd.args(["dump", "--pid", &pid.to_string(), "--json"]);
    let out = run_with_timeout(cmd, RUN_TIMEOUT);
    let text = stdout_text(&out);
    assert!(
        out.status.success(),
        "py-spy dump failed with {}:\n{text}\n{}",
        out.status,
        stderr_text(&out)
    );
    let threads: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("py-spy: not JSON ({e}):\n{text}"));
    threads
        .as_array()
        .unwrap_or_else(|| panic!("py-spy: not an array of threads:\n{text}"))
        .iter()
        .map(|t| {
            let tid = t["os_thread_id"]
                .as_u64()
                .unwrap_or_else(|| panic!("py-spy: thread without os_thread_id: {t}"));
            let frames = t["frames"]
                .as_array()
                .unwrap_or_else(|| panic!("py-spy: thread without frames: {t}"))
                .iter()
                .rev()
                .map(|f| PyFrame {
                    function: f["name"].as_str().unwrap_or("?").to_owned(),
                    file: f["filename"].as_str().unwrap_or("?").to_owned(),
                    line: f["line"].as_u64().unwrap_or(0) as u32,
                })
                .collect();
            (tid as u32, frames)
        })
        .collect()
}

/// The Python frames of each thread in tripod's dump: tid -> frames, outermost first.
fn tripod_python_stacks(dump: &Value) -> BTreeMap<u32, Vec<PyFrame>> {
    let groups = dump["groups"].as_array().expect("groups is an array");
    dump["threads"]
        .as_array()
        .expect("threads is an array")
        .iter()
        .map(|t| {
            let tid = t["tid"].as_u64().expect("tid") as u32;
            let group = &groups[t["group"].as_u64().expect("group") as usize];
            (tid, python_frames(&resolve(dump, group)))
        })
        .collect()
}

/// Whether tripod's function name is py-spy's: both show the qualified name
/// (`Thread.run`) where the interpreter has one (3.11 and later), else `co_name`.
fn same_function(tripod: &str, py_spy: &str) -> bool {
    tripod == py_spy
}

/// Thread by thread, a dump's Python frames (function, file, line) are py-spy's.
#[test]
fn python_dump_matches_py_spy() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let Some(py_spy) = py_spy() else {
        return;
    };
    let script = python_fixture("blocked.py");
    for python in python_interpreters() {
        let fx = Fixture::start(&python, &[&script]);
        let pid = fx.pid();
        wait_until_all_threads_block(pid);
        let names = thread_names(pid);
        // Tripod first: py-spy stops the process while it reads it.
        let dump = dump_json(pid, &[]);
        let ours = tripod_python_stacks(&dump);
        let theirs = py_spy_dump(&py_spy, pid);
        let show = || {
            let side = |stacks: &BTreeMap<u32, Vec<PyFrame>>| {
                stacks
                    .iter()
                    .map(|(tid, frames)| {
                        let frames: Vec<String> = frames
                            .iter()
                            .map(|f| format!("{} ({}:{})", f.function, f.file, f.line))
                            .collect();
                        format!("  {tid} {:?}: {}\n", names.get(tid), frames.join(";"))
                    })
                    .collect::<String>()
            };
            format!("tripod:\n{}py-spy:\n{}", side(&ours), side(&theirs))
        };
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            theirs.keys().collect::<Vec<_>>(),
            "{python}: the same threads; {}",
            show()
        );
        assert_eq!(ours.len(), 4, "{python}: four threads; {}", show());

        // Where each thread is known to wait, innermost two Python functions.
        for (tid, frames) in &ours {
            let innermost: &[&str] = match names.get(tid).map(String::as_str) {
                _ if *tid == pid => &["main", "hold_main"],
                Some("sleeper") => &["sleeper_main", "sleep_here"],
                Some("locker") => &["locker_main", "wait_for_lock"],
                Some("reader") => &["reader_main", "read_here"],
                other => panic!("{python}: unexpected thread {tid} {other:?}; {}", show()),
            };
            let functions: Vec<&str> = frames.iter().map(|f| f.function.as_str()).collect();
            assert!(
                functions.ends_with(innermost),
                "{python}: thread {tid} should end in {innermost:?}; {}",
                show()
            );
            let spy = &theirs[tid];
            let same = frames.len() == spy.len()
                && frames.iter().zip(spy).all(|(a, b)| {
                    same_function(&a.function, &b.function) && a.file == b.file && a.line == b.line
                });
            assert!(
                same,
                "{python}: thread {tid} differs from py-spy's; {}",
                show()
            );
        }
        println!("{python}: {} threads agree with py-spy", ours.len());
    }
}

/// Debian's interpreter: stripped, so its C functions have no names.
fn is_debian(interpreter: &str) -> bool {
    interpreter.starts_with("/usr/bin/")
}

/// Whether `interpreter` has `co_qualname` (3.11 and later), which tripod shows.
fn has_qualnames(interpreter: &str) -> bool {
    let version = interpreter_version(interpreter);
    let minor: u32 = version.trim_start_matches("3.").parse().expect("3.X");
    minor >= 11
}

/// Function names in the interpreter's call paths between two Python functions, which
/// tripod leaves out by default (a few of each version's; the full list is tripod's).
const CALL_MACHINERY: &[&str] = &[
    "_PyEval_Vector",
    "_PyEval_EvalCode",
    "_PyFunction_Vectorcall",
    "PyObject_Vectorcall",
    "_PyObject_VectorcallTstate",
    "_PyObject_FastCall",
    "PyObject_Call",
    "method_vectorcall",
    "function_code_fastcall",
    "call_function",
    "cfunction_vectorcall_FASTCALL_KEYWORDS",
];

fn is_call_machinery(frame: &Value) -> bool {
    frame["function"]
        .as_str()
        .is_some_and(|name| CALL_MACHINERY.iter().any(|m| name.starts_with(m)))
}

/// A Python method called back from a C function (`sorted(key=self.key)`): the chain
/// shows qualified names where the interpreter has them, keeps the C function between the
/// two Python frames, and leaves out the interpreter's call machinery unless
/// `--all-native-frames` asks for every native frame.
#[test]
fn python_callbacks_from_c_keep_the_c_function_and_drop_the_machinery() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let script = python_fixture("shapes.py");
    for python in python_interpreters() {
        let (run, key) = if has_qualnames(&python) {
            ("Worker.run", "Worker.key")
        } else {
            ("run", "key")
        };
        let fx = Fixture::start(&python, &[&script]);
        let methods = thread_named(fx.pid(), "methods");
        for all_native in [false, true] {
            let extra: &[&str] = if all_native {
                &["--per-thread", "--all-native-frames"]
            } else {
                &["--per-thread"]
            };
            let doc = record_json(fx.pid(), "2", extra);
            let stacks = recorded_stacks(&doc, |s| s["tid"] == methods);
            let all = stacks_text(&stacks);
            let (mut total, mut hits, mut with_machinery) = (0, 0, 0);
            for (frames, count) in &stacks {
                total += count;
                // The fixture's own frames: before 3.11 threading's Thread.run is `run` too.
                let at = |name: &str| {
                    frames.iter().rposition(|f| {
                        f["kind"] == "python"
                            && f["function"] == name
                            && f["file"] == script.as_str()
                    })
                };
                let (Some(outer), Some(inner)) = (at(run), at(key)) else {
                    continue;
                };
                hits += count;
                let between = &frames[outer + 1..inner];
                let context = || {
                    format!(
                        "{python}, --all-native-frames {all_native}: {}",
                        frames_text(frames)
                    )
                };
                assert!(
                    !between.iter().any(|f| f["kind"] == "python"),
                    "{run} calls {key} through sorted(): no Python frame between; {}",
                    context()
                );
                if !is_debian(&python) {
                    // pyenv's builds have symbols: the C function is named.
                    assert!(
                        between
                            .iter()
                            .any(|f| f["function"].as_str().is_some_and(|n| n.contains("sort"))),
                        "the C function (builtin_sorted, list_sort) between {run} and {key}; {}",
                        context()
                    );
                }
                if between.iter().any(|f| is_call_machinery(f)) {
                    with_machinery += count;
                }
            }
            let what = format!("{python} --all-native-frames {all_native}: {run} -> {key}");
            assert_share(&what, hits, total, 100, 90.0, &all);
            if all_native {
                assert!(
                    with_machinery == hits || is_debian(&python),
                    "{what}: the interpreter's call machinery kept in every sample, got \
                     {with_machinery}/{hits}:\n{all}"
                );
            } else {
                assert_eq!(with_machinery, 0, "{what}: call machinery left in:\n{all}");
            }
        }
    }
}

/// The Python frames (function names) of thread `tid` in a dump, outermost first, and the
/// whole frame list.
fn dumped_stack(dump: &Value, tid: u32) -> Vec<&Value> {
    let thread = dumped_thread(dump, tid);
    let group = &dump["groups"][thread["group"].as_u64().expect("group") as usize];
    resolve(dump, group)
}

/// Stacks a root tool must survive: 1,001 Python frames are cut with a visible marker, a
/// 3,000-character function name is cut with one, and a frame chain that loops back on
/// itself (as a corrupted or unexpected interpreter would leave it) is marked unreadable
/// after its first frame instead of repeating or hanging.
#[test]
fn python_deep_long_and_looping_stacks_are_cut_and_marked() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let script = python_fixture("shapes.py");
    let cut_name = format!("{}...[cut: 3000 characters]", "x".repeat(1024));
    for python in python_interpreters() {
        let fx = Fixture::start(&python, &[&script, "corrupt"]);
        let pid = fx.pid();
        let dump = dump_json(pid, &[]);
        let python_names = |frames: &[&Value]| -> Vec<String> {
            frames
                .iter()
                .filter(|f| f["kind"] == "python")
                .map(|f| f["function"].as_str().unwrap_or("?").to_owned())
                .collect()
        };

        let deep = dumped_stack(&dump, thread_named(pid, "deep"));
        let names = python_names(&deep);
        let context = || format!("{python} deep: {}", frames_text(&deep));
        assert_eq!(
            names.last().map(String::as_str),
            Some("deep_sleep"),
            "{}",
            context()
        );
        let recursions = names.iter().filter(|n| *n == "recurse").count();
        assert!(
            (50..=100).contains(&recursions) && names.len() <= 100,
            "a cut chain of recurse frames; {}",
            context()
        );
        let first_python = deep.iter().position(|f| f["kind"] == "python").unwrap();
        assert!(
            deep[..first_python]
                .iter()
                .any(|f| f["kind"] == "truncated"),
            "a truncated marker outside the Python frames; {}",
            context()
        );

        let long = dumped_stack(&dump, thread_named(pid, "longname"));
        let names = python_names(&long);
        assert!(
            names.contains(&cut_name),
            "{python}: the long name cut with a marker; got {:?}",
            names
                .iter()
                .map(|n| format!("{}... ({} chars)", &n[..n.len().min(40)], n.len()))
                .collect::<Vec<_>>()
        );

        let looped = dumped_stack(&dump, thread_named(pid, "looped"));
        let context = || format!("{python} looped: {}", frames_text(&looped));
        assert_eq!(
            python_names(&looped),
            ["point_frame_at_itself"],
            "{}",
            context()
        );
        let first_python = looped.iter().position(|f| f["kind"] == "python").unwrap();
        assert!(
            looped[..first_python].iter().any(|f| f["kind"] == "missing"
                && f["unknown"].as_str().is_some_and(|u| u.contains("loops"))),
            "the loop marked where the outer Python frames would be; {}",
            context()
        );
    }
}
