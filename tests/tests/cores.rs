//! `dump --core`: cores made by real tools (gdb's `gcore`, the kernel dumping a process
//! killed by SIGABRT) of population.c, grouped as the live dump of the same process is.
//! The cores need no root to read; the kernel's core needs root to point `core_pattern`
//! at a directory of ours, and the live dumps to compare with need BPF.

use std::{
    fs,
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use tripod_tests::*;

/// The groups population.c's threads fall in: count, annotation, its functions.
const GROUPS: &[(usize, &str, &[&str])] = &[
    (
        4,
        "waiting on a condition variable",
        &["worker_main", "wait_for_work"],
    ),
    (
        2,
        "blocked reading a file descriptor",
        &["reader_main", "wait_for_input"],
    ),
    (1, "waiting for a thread to exit", &["main"]),
    (1, "sleeping", &["napper_main", "nap"]),
    (1, "running on CPU", &["spinner_main", "spin"]),
];

/// The fixture's own functions, which both sides must show alike.
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

/// Per group of a dump: (annotation, thread count, the fixture's functions outermost first).
fn groups(dump: &Value) -> Vec<(String, usize, Vec<String>)> {
    dump["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|group| {
            let functions = group["frames"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|i| dump["frames"][i.as_u64().unwrap() as usize]["function"].as_str())
                .filter(|f| POPULATION_FUNCTIONS.contains(f))
                .map(String::from)
                .collect();
            let annotation = group["annotation"].as_str().unwrap_or("").to_string();
            (
                annotation,
                group["tids"].as_array().unwrap().len(),
                functions,
            )
        })
        .collect()
}

/// Checks a core's dump against population's known groups, and against the live dump of
/// the same process when there is one: the same groups, in the same order, the same frames.
fn assert_population(core: &Value, live: Option<&Value>) {
    let found = groups(core);
    assert_eq!(found.len(), GROUPS.len(), "{core:#}");
    for (count, annotation, chain) in GROUPS {
        let (_, n, functions) = found
            .iter()
            .find(|(a, ..)| a == annotation)
            .unwrap_or_else(|| panic!("no group {annotation:?} in {core:#}"));
        assert_eq!(
            (n, functions),
            (count, &chain.iter().map(|f| f.to_string()).collect())
        );
    }
    if let Some(live) = live {
        assert_eq!(
            found,
            groups(live),
            "the core's groups against the live dump's"
        );
    }
}

/// `dump --core PATH --json` with `extra`: (the dump, stderr).
fn dump_core(core: &Path, extra: &[&str]) -> (Value, String) {
    let mut args = vec!["dump", "--core", core.to_str().unwrap(), "--json"];
    args.extend_from_slice(extra);
    let out = run_tripod(&args);
    assert_success(&out);
    let text = stdout_text(&out);
    let dump = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"));
    (dump, stderr_text(&out))
}

/// gdb's `gcore` of `pid` into `dir`; `None` (said why) when gdb is missing outside CI.
fn gcore(pid: u32, dir: &Path) -> Option<PathBuf> {
    let prefix = dir.join("core");
    match Command::new("gcore")
        .arg("-o")
        .arg(&prefix)
        .arg(pid.to_string())
        .output()
    {
        Err(_) if in_ci() => panic!("gcore (gdb) is missing in CI; .ci/run installs it"),
        Err(e) => {
            eprintln!("skipped: gcore (gdb) is not installed: {e}");
            None
        }
        Ok(out) => {
            let path = dir.join(format!("core.{pid}"));
            assert!(
                path.exists(),
                "no core: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Some(path)
        }
    }
}

/// A core of population run from a copy in `dir`, for tests that then move or replace
/// the executable: the copy's path and the core's; `None` as for [`gcore`].
fn core_of_a_copy(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    let copy = dir.join("population");
    fs::copy(POPULATION, &copy).unwrap();
    let fx = Fixture::start(copy.to_str().unwrap(), &[]);
    settle();
    let core = gcore(fx.pid(), dir)?;
    Some((copy, core))
}

/// Gives population's threads, which say `ready` as they arrive, time to reach the calls
/// they block in (the spinner never blocks, so there is no state to wait for).
fn settle() {
    std::thread::sleep(Duration::from_millis(300));
}

/// The live dump of `pid` when BPF is there to make one.
fn live_dump(pid: u32) -> Option<Value> {
    require_bpf().then(|| dump_json(pid, &["--user-only"]))
}

#[test]
fn a_gcore_is_grouped_like_the_live_dump_and_reported_again() {
    let _guard = serial();
    let fx = Fixture::start(POPULATION, &[]);
    settle();
    let live = live_dump(fx.pid());
    let dir = tempfile::tempdir().unwrap();
    let Some(core) = gcore(fx.pid(), dir.path()) else {
        return;
    };
    drop(fx);
    let (dump, stderr) = dump_core(&core, &[]);
    assert!(stderr.trim().is_empty(), "{stderr}");
    assert_eq!(dump["kind"], "dump");
    assert_eq!(dump["comm"], "population");
    assert_population(&dump, live.as_ref());
    let syscalls: Vec<&str> = dump["threads"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["syscall"].as_str())
        .collect();
    assert_eq!(
        syscalls.iter().filter(|s| **s == "read").count(),
        2,
        "{syscalls:?}"
    );

    // `report` reads the saved dump back, in another format.
    let saved = dir.path().join("dump.json");
    fs::write(&saved, dump.to_string()).unwrap();
    let out = run_tripod(&["report", saved.to_str().unwrap(), "-f", "folded"]);
    assert_success(&out);
    assert!(
        stdout_text(&out).contains("wait_for_work"),
        "{}",
        stdout_text(&out)
    );
}

/// Points the kernel's core dumps at a file pattern while alive; puts the old one back on
/// drop, failed test or not.
struct CorePattern {
    old: String,
}

const CORE_PATTERN: &str = "/proc/sys/kernel/core_pattern";

impl CorePattern {
    fn set(pattern: &str) -> Option<CorePattern> {
        let old = fs::read_to_string(CORE_PATTERN).ok()?;
        fs::write(CORE_PATTERN, pattern).ok()?;
        Some(CorePattern { old })
    }
}

impl Drop for CorePattern {
    fn drop(&mut self) {
        if let Err(e) = fs::write(CORE_PATTERN, self.old.trim_end()) {
            eprintln!("could not restore {CORE_PATTERN} to {:?}: {e}", self.old);
        }
    }
}

/// Lets a child dump core of any size.
fn unlimited_cores(command: &mut Command) {
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let unlimited = libc::rlimit {
                rlim_cur: libc::RLIM_INFINITY,
                rlim_max: libc::RLIM_INFINITY,
            };
            if libc::setrlimit(libc::RLIMIT_CORE, &unlimited) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn a_kernel_core_of_an_aborted_process_is_grouped_like_the_live_dump() {
    let _guard = serial();
    let dir = tempfile::tempdir().unwrap();
    let pattern = format!("{}/core.%p", dir.path().display());
    let Some(_pattern) = CorePattern::set(&pattern) else {
        assert!(!in_ci(), "cannot set {CORE_PATTERN} in CI (root is needed)");
        eprintln!("skipped: cannot set {CORE_PATTERN} (not root?)");
        return;
    };
    let fx = Fixture::start_with(POPULATION, &[], unlimited_cores);
    let pid = fx.pid();
    settle();
    let live = live_dump(pid);
    // abort()'s signal, from outside: the kernel writes the core before the exit.
    send_signal(pid, libc::SIGABRT);
    let status = fx.reap_in_background().join().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
    assert!(status.core_dumped(), "no core dumped: {status:?}");
    let core = dir.path().join(format!("core.{pid}"));
    let (dump, stderr) = dump_core(&core, &[]);
    assert!(stderr.trim().is_empty(), "{stderr}");
    assert_eq!(dump["pid"], pid);
    assert_population(&dump, live.as_ref());

    // The kernel writes the notes first: cut in half, the core keeps its threads, what
    // remains is dumped, and one line says what is missing.
    let bytes = fs::read(&core).unwrap();
    let cut = dir.path().join("cut");
    fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let out = run_tripod(&["dump", "--core", cut.to_str().unwrap()]);
    assert_success(&out);
    let stderr = stderr_text(&out);
    assert!(
        stderr.contains("the core is truncated") && stderr.lines().count() == 1,
        "{stderr}"
    );
    assert!(
        stdout_text(&out).contains("9 threads"),
        "{}",
        stdout_text(&out)
    );
}

#[test]
fn a_moved_executable_is_named_with_a_hint_and_found_with_exe() {
    let _guard = serial();
    let dir = tempfile::tempdir().unwrap();
    let Some((copy, core)) = core_of_a_copy(dir.path()) else {
        return;
    };
    let moved = dir.path().join("population.moved");
    fs::rename(&copy, &moved).unwrap();

    let (dump, stderr) = dump_core(&core, &[]);
    let marker = format!("file not found: {}", copy.display());
    let unknowns: Vec<&str> = dump["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["unknown"].as_str())
        .collect();
    assert!(
        unknowns.contains(&marker.as_str()),
        "{marker:?} not in {unknowns:?}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--exe") && stderr.contains(&copy.display().to_string()),
        "{stderr}"
    );
    let out = run_tripod(&["dump", "--core", core.to_str().unwrap()]);
    assert!(
        stdout_text(&out).contains(&format!("[unknown: {marker}]")),
        "{}",
        stdout_text(&out)
    );

    let (dump, stderr) = dump_core(&core, &["--exe", moved.to_str().unwrap()]);
    assert!(stderr.trim().is_empty(), "{stderr}");
    assert_population(&dump, None);

    // --sysroot: the same tree under another root.
    let root = dir.path().join("root");
    let inside = root.join(copy.strip_prefix("/").unwrap());
    fs::create_dir_all(inside.parent().unwrap()).unwrap();
    fs::copy(&moved, &inside).unwrap();
    let (_, stderr) = dump_core(&core, &["--sysroot", root.to_str().unwrap()]);
    // The system's libraries are not in that root: only they are missing.
    assert!(
        stderr.contains("--sysroot") && !stderr.contains("population"),
        "{stderr}"
    );
}

/// A rebuilt or replaced executable is not trusted to name the frames of a core of the
/// old one: the start of the file the core holds (ELF header, build id) tells them apart.
#[test]
fn a_replaced_executable_is_marked_changed_not_used() {
    let _guard = serial();
    let dir = tempfile::tempdir().unwrap();
    let Some((copy, core)) = core_of_a_copy(dir.path()) else {
        return;
    };
    // Another program at the same path, as a rebuild leaves it.
    fs::remove_file(&copy).unwrap();
    fs::copy(CHAIN_FP, &copy).unwrap();

    let (dump, stderr) = dump_core(&core, &[]);
    let marker = format!(
        "file changed: {} is no longer the mapped file",
        copy.display()
    );
    let unknowns: Vec<&str> = dump["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["unknown"].as_str())
        .collect();
    assert!(
        unknowns.contains(&marker.as_str()),
        "{marker:?} not in {unknowns:?}"
    );
    let functions: Vec<&str> = dump["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["function"].as_str())
        .collect();
    assert!(
        !functions.iter().any(|f| POPULATION_FUNCTIONS.contains(f)),
        "frames named from the replaced file: {functions:?}"
    );
    assert!(
        stderr.contains("changed") && stderr.contains(&copy.display().to_string()),
        "{stderr}"
    );
    // The original, pointed at with --exe, names them again.
    let (dump, _) = dump_core(&core, &["--exe", POPULATION]);
    assert_population(&dump, None);
}

/// `dump --core --locals` of a Python process (gcore'd while paused_here sleeps): its
/// Python frames in order among the native ones, and paused_here's local variables.
#[test]
fn a_python_core_shows_python_frames_and_locals() {
    let _guard = serial();
    let script = python_fixture("paused.py");
    for minor in ["3.11", "3.9"] {
        let Some(python) = pyenv_interpreter(minor) else {
            continue;
        };
        let dir = tempfile::tempdir().unwrap();
        let fx = Fixture::start(&python, &[&script]);
        let pid = fx.pid();
        wait_until_all_threads_block(pid);
        let Some(core) = gcore(pid, dir.path()) else {
            return;
        };
        drop(fx);

        let (dump, stderr) = dump_core(&core, &["--locals"]);
        let group = &dump["groups"][0];
        let python_functions: Vec<&str> = group["frames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| &dump["frames"][i.as_u64().unwrap() as usize])
            .filter(|f| f["kind"] == "python")
            .filter_map(|f| f["function"].as_str())
            .collect();
        assert_eq!(
            python_functions,
            ["<module>", "main", "paused_here"],
            "{minor}: the Python frames, outermost first ({stderr}):\n{dump:#}"
        );
        let locals = dump["threads"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["tid"] == pid)
            .and_then(|t| t["locals"].as_array())
            .unwrap_or_else(|| panic!("{minor}: no locals for {pid}:\n{dump:#}"));
        let functions: Vec<&str> = locals
            .iter()
            .filter_map(|f| f["function"].as_str())
            .collect();
        assert_eq!(functions, ["<module>", "main", "paused_here"], "{minor}");
        let variables: Vec<(&str, &str)> = locals[2]["variables"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v["name"].as_str().unwrap(), v["value"].as_str().unwrap()))
            .collect();
        for &expected in PAUSED_LOCALS {
            assert!(
                variables.contains(&expected),
                "{minor}: {expected:?} not in {variables:?}"
            );
        }
        // --no-python: the native stack only.
        let (dump, _) = dump_core(&core, &["--no-python"]);
        assert!(
            !dump["frames"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["kind"] == "python"),
            "{minor}: Python frames with --no-python"
        );
    }
}
