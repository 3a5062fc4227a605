//! Where threads wait: thread dumps (checked against gdb), annotation rules, off-CPU
//! time and wall-clock sampling, and targets whose threads come and go.

use std::collections::BTreeMap;

use serde_json::Value;
use tripod_tests::*;

/// The line each thread dump in the log starts with.
const DUMP_HEADER: &str = "[tripod] ===== thread dump";

/// The functions of population.c; stacks are compared on these.
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

/// The function names of a dump group's frames, outermost first.
fn group_functions(dump: &Value, group: &Value) -> Vec<String> {
    group["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let frame = &dump["frames"][i.as_u64().unwrap() as usize];
            frame["function"].as_str().unwrap_or("?").to_string()
        })
        .collect()
}

/// Per thread of a dump: (group annotation, functions outermost first).
fn dump_threads(dump: &Value) -> BTreeMap<u32, (String, Vec<String>)> {
    let mut threads = BTreeMap::new();
    for group in dump["groups"].as_array().unwrap() {
        let annotation = group["annotation"].as_str().unwrap_or("").to_string();
        let functions = group_functions(dump, group);
        for tid in group["tids"].as_array().unwrap() {
            threads.insert(
                tid.as_u64().unwrap() as u32,
                (annotation.clone(), functions.clone()),
            );
        }
    }
    threads
}

fn only_population(functions: &[String]) -> Vec<String> {
    functions
        .iter()
        .filter(|f| POPULATION_FUNCTIONS.contains(&f.as_str()))
        .cloned()
        .collect()
}

/// `thread apply all bt` from gdb: per LWP, the frames' function names, outermost first.
fn gdb_backtraces(pid: u32) -> Option<BTreeMap<u32, Vec<String>>> {
    let out = std::process::Command::new("gdb")
        .args([
            "-batch",
            "-nx",
            "-p",
            &pid.to_string(),
            "-ex",
            "thread apply all bt",
        ])
        .output();
    let out = match out {
        Ok(out) => out,
        Err(_) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("gdb is missing in CI; .ci/run installs it")
        }
        Err(_) => {
            eprintln!("skipped the gdb comparison: gdb is not installed");
            return None;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut threads: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let mut current = None;
    for line in text.lines() {
        // Thread 3 (Thread 0x7f... (LWP 1234) "worker"):
        if let Some(lwp) = line
            .strip_prefix("Thread ")
            .and_then(|l| l.split("(LWP ").nth(1))
        {
            let tid: u32 = lwp.split(')').next().unwrap().trim().parse().unwrap();
            current = Some(tid);
            threads.insert(tid, Vec::new());
        } else if let (Some(tid), true) = (current, line.starts_with('#')) {
            // #1  0x... in wait_for_work () at population.c:32   or   #0  spin () at ...
            let rest = line
                .split_once(" in ")
                .map_or_else(|| line.split_whitespace().nth(1).unwrap_or(""), |(_, r)| r);
            let function = rest.split_whitespace().next().unwrap_or("").to_string();
            threads.get_mut(&tid).unwrap().insert(0, function);
        }
    }
    assert!(
        !threads.is_empty(),
        "no threads in gdb's output:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(threads)
}

#[test]
fn dump_groups_a_known_population_like_gdb_sees_it() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let fx = Fixture::start(POPULATION, &[]);
    let dump = dump_json(fx.pid(), &[]);
    assert_eq!(dump["kind"], "dump");
    assert_eq!(dump["pid"], fx.pid());
    assert_eq!(dump["threads"].as_array().unwrap().len(), 9, "{dump:#}");

    // Largest group first; each with its count, what it does and the fixture's frames.
    let expected: &[(usize, &str, &[&str])] = &[
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
    let groups = dump["groups"].as_array().unwrap();
    assert_eq!(groups.len(), expected.len(), "{dump:#}");
    assert_eq!(groups[0]["tids"].as_array().unwrap().len(), 4);
    assert_eq!(groups[1]["tids"].as_array().unwrap().len(), 2);
    for (count, annotation, chain) in expected {
        let group = groups
            .iter()
            .find(|g| g["annotation"] == *annotation)
            .unwrap_or_else(|| panic!("no group {annotation:?} in {dump:#}"));
        assert_eq!(
            group["tids"].as_array().unwrap().len(),
            *count,
            "{annotation}"
        );
        let functions = group_functions(&dump, group);
        assert_eq!(
            only_population(&functions),
            *chain,
            "{annotation}: {functions:?}"
        );
    }
    // The blocked threads' kernel frames and system calls are there too.
    let readers = groups
        .iter()
        .find(|g| g["annotation"] == "blocked reading a file descriptor")
        .unwrap();
    assert!(group_functions(&dump, readers)
        .iter()
        .any(|f| f == "vfs_read"));
    let syscalls: Vec<&str> = dump["threads"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["syscall"].as_str())
        .collect();
    assert_eq!(syscalls.iter().filter(|s| **s == "futex").count(), 5);
    assert_eq!(syscalls.iter().filter(|s| **s == "read").count(), 2);

    // Thread by thread, gdb (which stops the process, so it goes second) agrees.
    let ours = dump_threads(&dump);
    let Some(gdb) = gdb_backtraces(fx.pid()) else {
        return;
    };
    assert_eq!(
        gdb.keys().collect::<Vec<_>>(),
        ours.keys().collect::<Vec<_>>(),
        "the same threads"
    );
    for (tid, gdb_functions) in &gdb {
        let (annotation, functions) = &ours[tid];
        assert_eq!(
            only_population(functions),
            only_population(gdb_functions),
            "thread {tid} ({annotation}): tripod {functions:?}, gdb {gdb_functions:?}"
        );
    }
}

#[test]
fn dump_text_and_custom_rules() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let fx = Fixture::start(POPULATION, &[]);
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "# Our workers idle in wait_for_work.\n\
         [[rule]]\n\
         description = \"population worker waiting for work\"\n\
         frames = [\"pthread_cond_wait\", \"wait_for_work\"]\n",
    )
    .unwrap();
    let pid = fx.pid().to_string();
    let out = run_tripod(&["dump", "-p", &pid, "--rules", rules.to_str().unwrap()]);
    assert_success(&out);
    let text = stdout_text(&out);
    assert!(text.starts_with("[tripod] ===== thread dump "), "{text}");
    assert!(text.contains(&format!("pid {pid} (population)")), "{text}");
    // stacktraces' synopsis line: count, tids, what they do; largest group first.
    let first = text.lines().nth(2).unwrap();
    assert!(
        first.starts_with("4 * [") && first.ends_with("] population worker waiting for work"),
        "{text}"
    );
    // Built-in rules still apply to the others.
    assert!(
        text.contains("] blocked reading a file descriptor\n"),
        "{text}"
    );
    assert!(text.contains("  File \"") && text.contains("in wait_for_work"));
}

#[test]
fn dump_every_appends_until_interrupted_then_until_the_process_exits() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let fx = Fixture::start(POPULATION, &[]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("watch.log");
    let pid = fx.pid().to_string();
    let log_arg = log.to_str().unwrap();

    let mut tripod = Tripod::spawn(tripod_command(&[
        "dump", "-p", &pid, "--every", "0.3", "-o", log_arg,
    ]));
    tripod.wait_for_stderr("[tripod] Writing output to:", RUN_TIMEOUT);
    wait_for_staged_output(&log, "2 dumps", |text| {
        text.matches(DUMP_HEADER).count() >= 2
    });
    tripod.signal(libc::SIGINT);
    let out = tripod.wait(RUN_TIMEOUT);
    assert_success(&out);
    assert!(
        stderr_text(&out).contains("stopped by SIGINT"),
        "{}",
        stderr_text(&out)
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let dumps = text.matches(DUMP_HEADER).count();
    assert!(
        dumps >= 2,
        "expected at least 2 dumps, got {dumps}:\n{text}"
    );

    // The watchdog ends by itself when its process does.
    let mut tripod = Tripod::spawn(tripod_command(&[
        "dump", "-p", &pid, "--every", "0.2", "-o", log_arg,
    ]));
    tripod.wait_for_stderr("[tripod] Writing output to:", RUN_TIMEOUT);
    // Watching: it has dumped the live process, and goes on.
    wait_for_staged_output(&log, "2 dumps", |text| {
        text.matches(DUMP_HEADER).count() >= 2
    });
    drop(fx);
    let out = tripod.wait(RUN_TIMEOUT);
    assert_success(&out);
    assert!(
        stderr_text(&out).contains("the process has exited"),
        "{}",
        stderr_text(&out)
    );
}

#[test]
fn off_cpu_time_in_a_known_function_is_measured() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    // offcpu sleeps 10 x 100 ms in nap_in_known_place and exits. The fixture shares our
    // stdout (its `ready` line), so the output goes to a file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out");
    let record = |extra: &[&str]| {
        let mut args = vec!["--mode", "off-cpu", "-o", path.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", OFFCPU]);
        assert_success(&run_tripod(&args));
        std::fs::read_to_string(&path).unwrap()
    };
    let folded = record(&["-f", "folded"]);
    let (blocked_us, _) = chain_share(&folded, "offcpu", &["main", "nap_in_known_place"]);
    println!("offcpu: {blocked_us} µs blocked in nap_in_known_place (truth: 1000000)");
    assert!(
        (900_000..=1_100_000).contains(&blocked_us),
        "expected 1 s ± 10% blocked in nap_in_known_place, got {blocked_us} µs:\n{folded}"
    );
    // The stack goes on into the kernel, where the thread slept, and not into our probe.
    assert!(folded.contains("hrtimer_nanosleep_[k]"), "{folded}");
    assert!(!folded.contains("bpf_prog_"), "{folded}");

    // JSON says what the counts are and in which state the thread waited.
    let json = record(&["-f", "json"]);
    let doc: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (doc["mode"].as_str(), doc["unit"].as_str()),
        (Some("off-cpu"), Some("microseconds"))
    );
    let top = &doc["stacks"][0];
    assert_eq!(top["state"], "sleeping", "{doc:#}");
    assert_eq!(top["annotation"], "sleeping", "{doc:#}");

    // --min-block-us drops waits shorter than asked: 100 ms naps are all shorter than 200 ms.
    let folded = record(&["--min-block-us", "200000", "-f", "folded"]);
    let (long_waits, _) = chain_share(&folded, "offcpu", &["nap_in_known_place"]);
    assert_eq!(long_waits, 0, "{folded}");
}

#[test]
fn wall_clock_samples_busy_and_blocked_threads_alike() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    // Started before the sampler: the blocked thread never switches while we watch.
    let fx = Fixture::start(WALL, &[]);
    let folded = sample_folded(fx.pid(), "3", &["--mode", "wall", "--per-thread"]);
    let stacks = parse_folded(&folded);
    let mut per_thread: BTreeMap<String, u64> = BTreeMap::new();
    for (frames, count) in stacks_of(&stacks, &format!("wall-{}/", fx.pid())) {
        *per_thread.entry(frames[0].clone()).or_default() += count;
    }
    let total: u64 = per_thread.values().sum();
    let busy = format!("wall-{0}/{0}", fx.pid());
    let (busy_samples, _) = chain_share(&folded, &busy, &["main", "busy_main"]);
    let blocked_samples: u64 = stacks
        .iter()
        .filter(|(frames, _)| {
            frames[0] != busy && has_chain(frames, &["blocked_main", "wait_forever"])
        })
        .map(|(_, n)| n)
        .sum();
    println!("wall: {per_thread:?}; busy_main {busy_samples}, wait_forever {blocked_samples}");
    assert_eq!(per_thread.len(), 2, "two threads:\n{folded}");
    // 99 Hz for 3 s is ~297 per thread.
    assert!(
        total >= 400,
        "expected ~600 samples, got {total}:\n{folded}"
    );
    for (share, what) in [
        (busy_samples, "busy_main"),
        (blocked_samples, "wait_forever"),
    ] {
        let share = share as f64 / total as f64;
        assert!(
            (0.35..=0.65).contains(&share),
            "{what}: expected about half of the samples, got {:.0}%:\n{folded}",
            share * 100.0
        );
    }
}

#[test]
fn threads_coming_and_going_do_not_fail_a_dump_or_an_off_cpu_run() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let fx = Fixture::start(COMINGS, &[]);
    for _ in 0..5 {
        let dump = dump_json(fx.pid(), &[]);
        assert!(!dump["threads"].as_array().unwrap().is_empty());
    }
    let pid = fx.pid().to_string();
    let out = run_tripod(&[
        "-p", &pid, "--mode", "off-cpu", "-d", "2", "-f", "folded", "-o", "-",
    ]);
    assert_success(&out);
    let (in_threads, total) = chain_share(&stdout_text(&out), "comings", &["come_and_go"]);
    assert!(
        in_threads > 0 && total > 0,
        "expected off-CPU time in come_and_go:\n{}",
        stdout_text(&out)
    );
}
