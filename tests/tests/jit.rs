//! JIT code: functions a runtime compiled, named from the perf map it writes
//! (`/tmp/perf-PID.map`), and stacks unwound through code that has no unwind
//! information (JIT code, CPython's `-X perf` trampolines) down to `main`.
//! With CI=true a missing node, java or pyenv Python is a failure.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tripod_tests::*;

fn assert_share(folded: &str, comm: &str, what: &str, good: impl Fn(&[&str]) -> bool) {
    let (good, total) = share_where(folded, comm, good);
    println!("{comm}: {good}/{total} samples {what}");
    assert!(
        total >= 50,
        "expected >= 50 samples of {comm}, got {total}:\n{folded}"
    );
    assert!(
        good * 5 >= total * 4,
        "expected >= 80% of {comm} samples {what}, got {good}/{total}:\n{folded}"
    );
}

/// The stack starts at the program's entry and passes through its `main`
/// (a C function, or the runtime's name for the script's `main`).
fn reaches_main(frames: &[&str], main: impl Fn(&str) -> bool) -> bool {
    frames.first() == Some(&"_start") && frames.iter().any(|f| main(f))
}

/// The index of the first frame after `from` that contains `part`.
fn find_after(frames: &[&str], from: usize, part: &str) -> Option<usize> {
    frames
        .iter()
        .skip(from)
        .position(|f| f.contains(part))
        .map(|i| i + from)
}

/// `main`, `hotOuter` and then `hotInner` (the fixtures' names in every
/// runtime), with no unknown frame anywhere.
fn has_hot_chain(frames: &[&str]) -> bool {
    let Some(main) = find_after(frames, 0, "main ") else {
        return false;
    };
    let Some(outer) = find_after(frames, main + 1, "hotOuter") else {
        return false;
    };
    find_after(frames, outer + 1, "hotInner").is_some()
        && !frames
            .iter()
            .any(|f| f.starts_with("[anon") || *f == "[truncated]")
}

#[test]
fn node_functions_are_named_from_its_perf_map() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let Some(node) = program("node") else {
        return;
    };
    let script = jit_fixture("hot.js");
    // `--interpreted-frames-native-stack` gives each function the
    // interpreter runs a copy of the interpreter's entry of its own, named in
    // the map (without it they are all `Builtins_InterpreterEntryTrampoline`);
    // inlining would fold hotInner into hotOuter's code, leaving one frame.
    // node writes a V8 log in its current directory.
    let cwd = tempfile::tempdir().unwrap();
    let fx = Fixture::start_in(
        cwd.path(),
        node.to_str().unwrap(),
        &[
            "--perf-basic-prof",
            "--interpreted-frames-native-stack",
            "--max-inlined-bytecode-size=0",
            &script,
        ],
    );
    let _map = RemoveOnDrop(format!("/tmp/perf-{}.map", fx.pid()));
    // Until the loop runs optimized code.
    wait_for_cpu_time(fx.pid(), Duration::from_secs(1));
    let folded = sample_folded(fx.pid(), "4", &[]);
    assert_share(
        &folded,
        "node",
        "with main -> hotOuter -> hotInner, from _start",
        |f| {
            // V8 names `JS:~main /path/hot.js:22:14`; node's own `main` is inlined.
            reaches_main(f, |frame| {
                frame.starts_with("JS:") && frame.contains("main /")
            }) && has_hot_chain(f)
        },
    );
    // `[[anon]]` no more: a frame without a name shows its mapping once.
    assert!(!folded.contains("[[anon"), "{folded}");
}

/// `node --perf-prof` writes no perf map but a jitdump (`jit-PID.dump`, in
/// its current directory), which it maps so that profilers find it. It
/// writes the dump through a large buffer, so its newest code (hotInner's
/// optimized code, hotOuter's later tiers) reaches the file only later: the
/// stacks asked for go through main, compiled first; hotOuter is asked to be
/// named at all.
#[test]
fn node_functions_are_named_from_its_jitdump() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let Some(node) = program("node") else {
        return;
    };
    let script = jit_fixture("hot.js");
    let cwd = tempfile::tempdir().unwrap();
    let fx = Fixture::start_in(
        cwd.path(),
        node.to_str().unwrap(),
        &[
            "--perf-prof",
            "--interpreted-frames-native-stack",
            "--max-inlined-bytecode-size=0",
            &script,
        ],
    );
    wait_for_cpu_time(fx.pid(), Duration::from_secs(1));
    let dump = cwd.path().join(format!("jit-{}.dump", fx.pid()));
    assert!(dump.is_file(), "node wrote no {}", dump.display());
    let map = format!("/tmp/perf-{}.map", fx.pid());
    assert!(!Path::new(&map).exists(), "{map}: not from the dump alone");
    let folded = sample_folded(fx.pid(), "4", &[]);
    // node writes its jitdump through a buffer: code compiled (or compiled
    // again, when a function tiers up) after the last flush is not in the
    // file while it runs. main's code is there from the start; hotOuter's
    // first code too, its later tiers maybe not yet.
    let js = |frame: &str, name: &str| frame.starts_with("JS:") && frame.contains(name);
    assert_share(
        &folded,
        "node",
        "through main from the jitdump, from _start",
        |f| reaches_main(f, |frame| js(frame, "main /")),
    );
    let (outer, _) = share_where(&folded, "node", |f| {
        f.iter().any(|frame| js(frame, "hotOuter /"))
    });
    assert!(
        outer > 0,
        "hotOuter never named from the jitdump:\n{folded}"
    );
}

/// CPython 3.12 and 3.13 with `-X perf` run each Python function through a
/// trampoline in anonymous memory that sets up no frame pointer: the stack
/// still reaches `main`, and the trampolines are not shown.
#[test]
fn python_perf_trampolines_are_unwound_and_hidden() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    for minor in ["3.12", "3.13"] {
        let Some(python) = pyenv_interpreter(minor) else {
            continue;
        };
        let script = python_fixture("hot.py");
        let fx = Fixture::start(&python, &["-X", "perf", &script]);
        let _map = RemoveOnDrop(format!("/tmp/perf-{}.map", fx.pid()));
        let comm = Path::new(&python).file_name().unwrap().to_str().unwrap();
        wait_for_cpu_time(fx.pid(), Duration::from_millis(300));
        let folded = sample_folded(fx.pid(), "4", &[]);
        assert_share(
            &folded,
            comm,
            "with main -> outer_step -> inner_loop, from _start",
            |f| {
                let order = ["main", "outer_step", "inner_loop"].map(|name| {
                    let prefix = format!("{name} (");
                    f.iter().position(|frame| frame.starts_with(&prefix))
                });
                // pyenv's `main` is a jump to Py_BytesMain: no frame of its own.
                reaches_main(f, |frame| frame.starts_with("main ("))
                    && order.iter().all(Option::is_some)
                    && order.windows(2).all(|w| w[0] < w[1])
                    && !f
                        .iter()
                        .any(|frame| frame.starts_with("py::") || *frame == "[truncated]")
            },
        );
        // With every native frame kept, the trampolines show, named.
        let all = sample_folded(fx.pid(), "1", &["--all-native-frames"]);
        assert!(all.contains("py::inner_loop:"), "{all}");
    }
}

#[test]
fn java_methods_are_named_after_jcmd_writes_the_perf_map() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let (Some(java), Some(javac), Some(jcmd)) =
        (program("java"), program("javac"), program("jcmd"))
    else {
        return;
    };
    let classes = tempfile::tempdir().unwrap();
    let out = run_with_timeout(
        {
            let mut cmd = Command::new(javac);
            cmd.arg("-d")
                .arg(classes.path())
                .arg(jit_fixture("Hot.java"));
            cmd
        },
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "javac: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fx = Fixture::start(
        java.to_str().unwrap(),
        &[
            "-XX:CompileCommand=quiet",
            "-XX:CompileCommand=dontinline,Hot::*",
            "-cp",
            classes.path().to_str().unwrap(),
            "Hot",
        ],
    );
    // Until the hot methods are compiled, then ask for the map.
    wait_for_cpu_time(fx.pid(), Duration::from_secs(2));
    let out = run_with_timeout(
        {
            let mut cmd = Command::new(jcmd);
            cmd.arg(fx.pid().to_string()).arg("Compiler.perfmap");
            cmd
        },
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "jcmd: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let map = format!("/tmp/perf-{}.map", fx.pid());
    let _remove = RemoveOnDrop(map.clone());
    let folded = sample_folded(fx.pid(), "4", &[]);
    let (hot, total) = share_where(&folded, "java", |f| {
        f.iter().any(|frame| frame.contains("Hot.hotInner"))
    });
    println!("java: {hot}/{total} samples in Hot.hotInner");
    assert!(
        total >= 50,
        "expected >= 50 samples of java, got {total}:\n{folded}"
    );
    assert!(
        hot * 2 >= total,
        "expected >= 50% of java samples in Hot.hotInner, got {hot}/{total}:\n{folded}"
    );
}

/// Removes a file the runtime wrote for the test.
struct RemoveOnDrop(String);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The vDSO's functions are named (from tripod's own vDSO, the same image),
/// and its frames lead back to the caller.
#[test]
fn vdso_frames_are_named() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let fx = Fixture::start(CLOCKS, &[]);
    let folded = sample_folded(fx.pid(), "4", &[]);
    let (named, total) = share_where(&folded, "clocks", |f| {
        let Some(at) = f.iter().position(|frame| *frame == "read_clocks") else {
            return false;
        };
        // libc's own clock_gettime is `__GI___clock_gettime`; the vDSO's
        // is `clock_gettime` (an alias of `__vdso_clock_gettime`).
        let in_vdso =
            |frame: &&str| matches!(*frame, "clock_gettime" | "__vdso_clock_gettime" | "do_hres");
        reaches_main(f, |frame| frame == "main") && f[at + 1..].iter().any(in_vdso)
    });
    let unnamed = folded.matches("[vdso]").count();
    println!("clocks: {named}/{total} samples in named vDSO code under read_clocks; {unnamed} stacks with [vdso]");
    assert!(
        total >= 50,
        "expected >= 50 samples of clocks, got {total}:\n{folded}"
    );
    assert!(named * 2 >= total, "expected >= 50% of the samples in the vDSO's clock_gettime, got {named}/{total}:\n{folded}");
    assert_eq!(unnamed, 0, "{folded}");
}
