//! What the sampler records: complete call chains, only the chosen processes, kernel
//! frames in the right place, per-thread names, and runs that end cleanly.

use std::collections::BTreeSet;
use std::time::Duration;

use tripod_tests::*;

/// The innermost user frame of a folded line (kernel frames come last and are skipped).
fn user_leaf(frames: &[String]) -> Option<&str> {
    frames
        .iter()
        .skip(1)
        .rev()
        .find(|f| !f.ends_with("_[k]"))
        .map(String::as_str)
}

#[test]
fn fp_chain_is_complete() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let fx = Fixture::start(CHAIN_FP, &[]);
    let folded = sample_folded(fx.pid(), "3", &["--unwind", "fp"]);
    // 99 Hz for 3 s on a busy loop is ~290 samples.
    assert_chain(&folded, "chain_fp", CHAIN, 50, 0.9);
}

/// Without frame pointers the chain above `spin` may break, but the leaf is still right.
#[test]
fn nofp_leaf_is_spin() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let fx = Fixture::start(CHAIN_NOFP, &[]);
    let folded = sample_folded(fx.pid(), "3", &["--unwind", "fp"]);
    let stacks = parse_folded(&folded);
    let mine = stacks_of(&stacks, "chain_nofp");
    let total: u64 = mine.iter().map(|(_, n)| n).sum();
    let at_spin: u64 = mine
        .iter()
        .filter(|(frames, _)| user_leaf(frames) == Some("spin"))
        .map(|(_, n)| n)
        .sum();
    println!("chain_nofp: {at_spin}/{total} samples end in spin");
    assert!(
        total >= 50,
        "expected >= 50 samples, got {total}; output:\n{folded}"
    );
    assert!(
        at_spin as f64 >= 0.9 * total as f64,
        "expected >= 90% of samples to end in spin, got {at_spin}/{total}; output:\n{folded}"
    );
}

#[test]
fn pid_leaves_out_other_processes() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let chain = Fixture::start(CHAIN_FP, &[]);
    let _other = Fixture::start(OTHER_FP, &[]);
    let folded = sample_folded(chain.pid(), "2", &[]);
    assert!(
        !folded.lines().any(|line| line.starts_with("other_fp")),
        "--pid {} sampled other_fp too:\n{folded}",
        chain.pid()
    );
    assert_chain(&folded, "chain_fp", CHAIN, 1, 0.0);
}

#[test]
fn all_includes_every_process_but_itself() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let _chain = Fixture::start(CHAIN_FP, &[]);
    let _other = Fixture::start(OTHER_FP, &[]);
    let out = run_tripod(&["--all", "-d", "3", "-f", "folded", "-o", "-"]);
    assert_success(&out);
    let folded = stdout_text(&out);
    let (hit, _) = chain_share(&folded, "chain_fp", CHAIN);
    assert!(
        hit > 0,
        "--all: no chain_fp sample contains the chain:\n{folded}"
    );
    let stacks = parse_folded(&folded);
    assert!(
        !stacks_of(&stacks, "other_fp").is_empty(),
        "--all: other_fp missing:\n{folded}"
    );
    assert!(
        stacks_of(&stacks, "tripod-bpf").is_empty(),
        "--all: the sampler sampled itself:\n{folded}"
    );
}

/// `-- COMMAND` samples the command until it exits and passes on its exit status.
#[test]
fn command_is_run_and_its_status_returned() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("out.folded");
    let file_arg = file.to_str().unwrap();
    let out = run_tripod(&[
        "-f",
        "folded",
        "-o",
        file_arg,
        "--",
        CHAIN_FP,
        "--seconds",
        "2",
        "--status",
        "7",
    ]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "expected the command's status 7; stderr:\n{}",
        stderr_text(&out)
    );
    let folded = std::fs::read_to_string(&file).expect("reading the output file");
    assert_chain(&folded, "chain_fp", CHAIN, 1, 0.0);
}

#[test]
fn kernel_frames_come_last() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let fx = Fixture::start(SYSCALLS_FP, &[]);

    let folded = sample_folded(fx.pid(), "2", &[]);
    let stacks = parse_folded(&folded);
    let mine = stacks_of(&stacks, "syscalls_fp");
    assert!(!mine.is_empty(), "no samples for syscalls_fp:\n{folded}");
    assert!(
        mine.iter()
            .any(|(f, _)| f.iter().any(|x| x.ends_with("_[k]"))),
        "no kernel frames for a process living in write():\n{folded}"
    );
    for (frames, _) in &mine {
        // Once the kernel part starts, no user frame may follow.
        let first_kernel = frames.iter().position(|f| f.ends_with("_[k]"));
        if let Some(k) = first_kernel {
            assert!(
                frames[k..].iter().all(|f| f.ends_with("_[k]")),
                "user frame after a kernel frame: {}",
                frames.join(";")
            );
        }
    }
    assert!(
        mine.iter().any(|(f, _)| f.iter().any(|x| x == "do_write")),
        "do_write missing:\n{folded}"
    );

    let folded = sample_folded(fx.pid(), "2", &["--user-only"]);
    assert!(!parse_folded(&folded).is_empty(), "--user-only: no samples");
    assert!(
        !folded.contains("_[k]"),
        "--user-only has kernel frames:\n{folded}"
    );

    let folded = sample_folded(fx.pid(), "2", &["--kernel-only"]);
    let stacks = parse_folded(&folded);
    assert!(!stacks.is_empty(), "--kernel-only: no samples");
    for (frames, _) in &stacks {
        assert!(
            frames.iter().skip(1).all(|f| f.ends_with("_[k]")),
            "--kernel-only has a user frame: {}",
            frames.join(";")
        );
    }
}

#[test]
fn per_thread_names_threads() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let fx = Fixture::start(THREADS_FP, &[]);
    let pid = fx.pid();
    let folded = sample_folded(pid, "3", &["--per-thread"]);
    let prefix = format!("threads_fp-{pid}/");
    let busy_threads: BTreeSet<u32> = parse_folded(&folded)
        .iter()
        .filter(|(frames, _)| frames.iter().any(|f| f == "thread_spin"))
        .filter_map(|(frames, _)| frames[0].strip_prefix(&prefix)?.parse().ok())
        .filter(|&tid| tid != pid)
        .collect();
    assert!(
        busy_threads.len() >= 2,
        "expected 2 threads `{prefix}<tid>` in thread_spin, got {busy_threads:?}:\n{folded}"
    );
}

/// Without a duration the sampler runs until SIGINT/SIGTERM, then writes what it has.
fn stops_on_signal(sig: libc::c_int) {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let fx = Fixture::start(CHAIN_FP, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("out.folded");
    let pid = fx.pid().to_string();
    let mut run = Tripod::spawn(tripod_command(&[
        "--pid",
        &pid,
        "-f",
        "folded",
        "-o",
        file.to_str().unwrap(),
    ]));
    run.wait_for_stderr("[tripod] Sampling at", Duration::from_secs(30));
    // Two seconds of the target's running, sampled: however slow the machine.
    wait_for_cpu_time(fx.pid(), Duration::from_secs(2));
    run.signal(sig);
    let out = run.wait(Duration::from_secs(30));
    assert_success(&out);
    let folded = std::fs::read_to_string(&file).expect("reading the output file");
    assert_chain(&folded, "chain_fp", CHAIN, 50, 0.9);
}

#[test]
fn sigint_ends_the_run() {
    stops_on_signal(libc::SIGINT);
}

#[test]
fn sigterm_ends_the_run() {
    stops_on_signal(libc::SIGTERM);
}

#[test]
fn target_exit_ends_the_run() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    // Reaped as soon as it exits, as its shell would, so it does not linger as a zombie.
    let fx = Fixture::start(CHAIN_FP, &["--seconds", "2"]);
    let pid = fx.pid().to_string();
    let reaper = fx.reap_in_background();
    let run = Tripod::spawn(tripod_command(&["--pid", &pid, "-f", "folded", "-o", "-"]));
    let out = run.wait(Duration::from_secs(10));
    assert_success(&out);
    assert!(reaper.join().unwrap().success(), "fixture failed");
    let (_, total) = chain_share(&stdout_text(&out), "chain_fp", CHAIN);
    assert!(total > 0, "no samples before the target exited");
}

/// A command that exits before the first drain (every 500 ms) is still
/// symbolized: its mappings are read right after it execs.
#[test]
fn short_lived_command_is_symbolized() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let out = run_tripod(&[
        "-F",
        "999",
        "-f",
        "folded",
        "-o",
        "-",
        "--",
        CHAIN_FP,
        "--seconds",
        "0.3",
    ]);
    assert_success(&out);
    let folded = stdout_text(&out);
    assert!(
        !folded.contains("process exited"),
        "frames were not symbolized:\n{folded}"
    );
    // 999 Hz for 0.3 s is ~300 samples.
    assert_chain(&folded, "chain_fp", CHAIN, 50, 0.9);
}

/// Processes that exit during a run are merged by name (pid 4294967295 in JSON)
/// once they are gone, and keep their symbols: memory does not grow with every
/// short-lived process a machine starts.
#[test]
fn exited_processes_are_merged_with_their_symbols() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("out.json");
    let mut tripod = Tripod::spawn(tripod_command(&[
        "--all",
        "-F",
        "999",
        "-d",
        "6",
        "-f",
        "json",
        "-o",
        file.to_str().unwrap(),
    ]));
    tripod.wait_for_stderr("[tripod] Sampling at", Duration::from_secs(30));
    let mut pids = Vec::new();
    for _ in 0..3 {
        let fx = Fixture::start(CHAIN_FP, &["--seconds", "0.3"]);
        pids.push(fx.pid());
        let status = fx.reap_in_background().join().expect("fixture reaper");
        assert!(status.success(), "fixture failed: {status}");
    }
    assert_success(&tripod.wait(RUN_TIMEOUT));

    let text = std::fs::read_to_string(&file).expect("reading the JSON file");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("output is JSON");
    let frames = doc["frames"].as_array().expect("frames is an array");
    let stacks = doc["stacks"].as_array().expect("stacks is an array");
    let of_fixture: Vec<&serde_json::Value> =
        stacks.iter().filter(|s| s["comm"] == "chain_fp").collect();
    assert!(!of_fixture.is_empty(), "no chain_fp stacks:\n{text}");
    for stack in &of_fixture {
        let pid = stack["pid"].as_u64().expect("pid is a number");
        assert!(
            !pids.iter().any(|&p| u64::from(p) == pid),
            "pid {pid} was not merged into the exited processes:\n{text}"
        );
        assert_eq!(
            pid,
            u64::from(u32::MAX),
            "exited processes use pid u32::MAX"
        );
    }
    let with_chain: u64 = of_fixture
        .iter()
        .filter(|s| {
            let names: Vec<&str> = s["frames"]
                .as_array()
                .expect("stack frames is an array")
                .iter()
                .map(|i| {
                    frames[i.as_u64().unwrap() as usize]["function"]
                        .as_str()
                        .unwrap_or("")
                })
                .collect();
            names.windows(CHAIN.len()).any(|w| w == CHAIN)
        })
        .map(|s| s["count"].as_u64().unwrap())
        .sum();
    let total: u64 = of_fixture
        .iter()
        .map(|s| s["count"].as_u64().unwrap())
        .sum();
    println!("chain_fp: {with_chain}/{total} merged samples contain the chain");
    // 3 runs of 0.3 s at 999 Hz: ~900 samples.
    assert!(total >= 300, "too few samples of the fixture: {total}");
    assert!(
        with_chain * 10 >= total * 9,
        "only {with_chain} of {total} merged samples contain the chain:\n{text}"
    );
}

/// Processes that live 4 ms are gone before `/proc/PID/maps` could be read;
/// the kernel's sideband records name them all the same. Among the samples
/// that were or may have been in the fixture's own code (see
/// [`in_work_or_unnamed`]: ld.so's start and the exit have no chain to show),
/// nine in ten show the whole chain, unwound with DWARF (no frame pointers)
/// and walked by the kernel (`--unwind fp`).
#[test]
fn millisecond_processes_show_their_chain() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    for (fixture, comm, unwind) in [
        (CHAIN_NOFP, "chain_nofp", "dwarf"),
        (CHAIN_FP, "chain_fp", "fp"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("out.folded");
        let args = [
            "--all", "-F", "999", "-d", "6", "--unwind", unwind, "-f", "folded",
        ];
        let mut command = args.to_vec();
        command.extend(["-o", file.to_str().unwrap()]);
        let mut tripod = Tripod::spawn(tripod_command(&command));
        tripod.wait_for_stderr("[tripod] Sampling at", Duration::from_secs(30));
        let mut runs = 0;
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(3) {
            let status = std::process::Command::new(fixture)
                .args(["--seconds", "0.004"])
                .stdout(std::process::Stdio::null())
                .status()
                .expect("running the fixture");
            assert!(status.success(), "{comm} failed: {status}");
            runs += 1;
        }
        assert_success(&tripod.wait(RUN_TIMEOUT));
        let folded = std::fs::read_to_string(&file).expect("reading the folded output");
        let in_work: String = folded
            .lines()
            .filter(|line| line.starts_with(&format!("{comm};")) && in_work_or_unnamed(line))
            .map(|line| format!("{line}\n"))
            .collect();
        println!("{runs} runs of {comm} ({unwind})");
        assert_chain(&in_work, comm, CHAIN, 100, 0.9);
    }
}

/// Whether a folded line of the chain fixture was sampled in its work (`spin` on the
/// stack) or might have been: its innermost user frame is unnamed (`[unknown]`, a bare
/// `[module]`), as it is when the process's mappings were not known. Samples in the
/// kernel's exec or exit path are left out: the user stack is being replaced there.
fn in_work_or_unnamed(line: &str) -> bool {
    let frames = line.rsplit_once(' ').map_or(line, |(frames, _)| frames);
    let user: Vec<&str> = frames
        .split(';')
        .skip(1)
        .filter(|f| !f.ends_with("_[k]"))
        .collect();
    let in_exec_or_exit = frames
        .split(';')
        .any(|f| f.ends_with("_[k]") && (f.contains("execve") || f == "do_exit_[k]"));
    user.contains(&"spin") || (!in_exec_or_exit && user.last().is_some_and(|f| f.starts_with('[')))
}

/// The lines of `folded` of process name `comm` with `leaf` on the stack: the samples
/// taken in that program's own code (exec, start-up and exit have no chain to show).
fn in_own_code(folded: &str, comm: &str, leaf: &str) -> String {
    folded
        .lines()
        .filter(|line| line.starts_with(&format!("{comm};")) && line.contains(leaf))
        .map(|line| format!("{line}\n"))
        .collect()
}

#[test]
fn a_process_that_execs_names_both_images() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    // One pid: 0.4 s in execs' chain, then exec into other_fp for 0.4 s. The samples of
    // each half must be named from the program that ran then, though the first program's
    // mappings were gone long before the report. With `fp`, both halves are counted in the
    // kernel within one drain period: each count is located at the time of its first sample.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("out.folded");
    for (unwind, program) in [("dwarf", EXECS), ("auto", EXECS), ("fp", EXECS_FP)] {
        let comm = std::path::Path::new(program)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        let out = run_tripod(&[
            "-F",
            "999",
            "--unwind",
            unwind,
            "-f",
            "folded",
            "-o",
            file.to_str().unwrap(),
            "--",
            program,
            "0.4",
            OTHER_FP,
            "--seconds",
            "0.4",
        ]);
        assert_success(&out);
        let folded = std::fs::read_to_string(&file).expect("reading the folded output");
        println!("--unwind {unwind}");
        // Each half under the name of the program that ran it, with its own chain.
        let before = ["main", "before_exec", "spin_before"];
        let after = ["main", "other_work", "other_spin"];
        let first = in_own_code(&folded, comm, ";spin_before");
        assert_chain(&first, comm, &before, 100, 0.9);
        let second = in_own_code(&folded, "other_fp", ";other_spin");
        assert_chain(&second, "other_fp", &after, 100, 0.9);
        // Never a frame of one program under the other's name or in its stacks (whole
        // frame names: the kernel's `sched_mm_cid_before_execve` is no frame of execs).
        for line in folded.lines() {
            let stack = line.rsplit_once(' ').map_or(line, |(stack, _count)| stack);
            let frames: Vec<&str> = stack.split(';').collect();
            let has = |names: &[&str]| frames.iter().any(|f| names.contains(&frame_name(f)));
            let mixed = (frames[0] == comm && has(&["other_work", "other_spin"]))
                || (frames[0] == "other_fp" && has(&["before_exec", "spin_before"]));
            assert!(
                !mixed,
                "a frame named from the wrong image: {line}\n{folded}"
            );
        }
    }
}

/// Starts recording the whole machine at 999 Hz with `--unwind unwind`, folded
/// stacks to `file`, and returns once it samples.
fn record_all_folded(unwind: &str, file: &std::path::Path) -> Tripod {
    let args = ["--all", "-F", "999", "-d", "60", "--unwind", unwind];
    let mut command = args.to_vec();
    command.extend(["-f", "folded", "-o", file.to_str().unwrap()]);
    let mut tripod = Tripod::spawn(tripod_command(&command));
    tripod.wait_for_stderr("[tripod] Sampling at", Duration::from_secs(30));
    tripod
}

/// Stops a recording with SIGINT and returns what it wrote to `file`.
fn stop_and_read(tripod: Tripod, file: &std::path::Path) -> String {
    tripod.signal(libc::SIGINT);
    assert_success(&tripod.wait(RUN_TIMEOUT));
    std::fs::read_to_string(file).expect("reading the folded output")
}

/// `execve` and `exit` free a process's memory after its user stack is gone (exec has
/// switched to the new program's address space, exit has let go of its own), yet the
/// thread is still in the call its code made: its samples there show that code's chain,
/// not a `[truncated]` stack (and, after the exec, no `[unknown]` old address). The
/// fixture fills 192 MiB first, so the kernel spends milliseconds in there.
#[test]
fn samples_in_exec_and_exit_show_the_callers_chain() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    for (fixture, comm, unwind) in [
        (TEARDOWN, "teardown", "dwarf"),
        (TEARDOWN, "teardown", "auto"),
        (TEARDOWN_FP, "teardown_fp", "fp"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("out.folded");
        let tripod = record_all_folded(unwind, &file);
        for _ in 0..5 {
            for how in ["exec", "exit"] {
                let status = std::process::Command::new(fixture)
                    .args(["192", how])
                    .status()
                    .expect("running the fixture");
                assert!(status.success(), "{comm} {how} failed: {status}");
            }
        }
        let folded = stop_and_read(tripod, &file);
        println!("--unwind {unwind}");
        // Frame pointers go from libc's execve and _exit (built without them) straight
        // to main: their callers are skipped, as with any frame-pointer walk.
        let fp = unwind == "fp";
        for (syscall, chain) in [
            ("__x64_sys_execve_[k]", ["main", "leave_by_exec"]),
            ("__x64_sys_exit_group_[k]", ["main", "leave_by_exit"]),
        ] {
            let chain = if fp { &chain[..1] } else { &chain[..] };
            let in_call: String = folded
                .lines()
                .filter(|line| line.starts_with(&format!("{comm};")) && line.contains(syscall))
                .map(|line| format!("{line}\n"))
                .collect();
            // 5 runs of about 15 ms each in there at 999 Hz.
            assert_chain(&in_call, comm, chain, 20, 0.9);
        }
    }
}

/// A process from before the run forks children that run its code, then exec: their
/// samples before the exec (located after it, when `/proc` shows `true`) are in the
/// parent's code, which only the parent's `/proc` describes. They are named after the
/// parent, with its chain, never `[unknown]`.
#[test]
fn children_of_a_process_from_before_the_run_are_named_until_they_exec() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    for unwind in ["auto", "dwarf"] {
        let spawner = Fixture::start(SPAWNER, &["20"]);
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("out.folded");
        let tripod = record_all_folded(unwind, &file);
        send_signal(spawner.pid(), libc::SIGUSR1);
        let status = spawner.reap_in_background().join().expect("spawner reaper");
        assert!(status.success(), "spawner failed: {status}");
        let folded = stop_and_read(tripod, &file);
        println!("--unwind {unwind}");
        let in_work: String = folded
            .lines()
            .filter(|line| line.contains(";child_work"))
            .map(|line| format!("{line}\n"))
            .collect();
        // 20 children, 30 ms each at 999 Hz: about 600 samples on an idle machine.
        // Without the parent's mappings none of them is named (0 of 600 in a run).
        assert_chain(
            &in_work,
            "spawner",
            &["main", "spawn_children", "child_work"],
            100,
            0.98,
        );
        // The children's other samples, before and after their exec, are located too.
        let unknown = share_where(&folded, "true", |frames| frames.contains(&"[unknown]"));
        let unknown_spawner =
            share_where(&folded, "spawner", |frames| frames.contains(&"[unknown]"));
        let (bad, all) = (unknown.0 + unknown_spawner.0, unknown.1 + unknown_spawner.1);
        assert!(
            bad * 100 <= all * 2,
            "{bad} of {all} samples of spawner and its children have [unknown] frames:\n{folded}"
        );
    }
}

#[test]
fn a_binary_replaced_after_it_ran_is_not_named_from_the_new_file() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    // `victim` is chain_nofp's code. It runs and exits; then its file is deleted and
    // other_fp's code written under the same name, before anything is symbolized. Its
    // samples must show chain's functions (from the file as it was mapped, kept open) or
    // be marked unknown, never other's functions.
    let dir = tempfile::tempdir().expect("tempdir");
    let victim = dir.path().join("victim");
    std::fs::copy(CHAIN_NOFP, &victim).expect("copying the fixture");
    let file = dir.path().join("out.folded");
    let mut tripod = Tripod::spawn(tripod_command(&[
        "--all",
        "-F",
        "999",
        "-f",
        "folded",
        "-o",
        file.to_str().unwrap(),
    ]));
    tripod.wait_for_stderr("[tripod] Sampling at", Duration::from_secs(30));
    let status = std::process::Command::new(&victim)
        .args(["--seconds", "0.5"])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("running the victim");
    assert!(status.success(), "victim failed: {status}");
    std::fs::remove_file(&victim).expect("deleting the victim");
    std::fs::copy(OTHER_FP, &victim).expect("replacing the victim");
    std::thread::sleep(Duration::from_millis(300));
    tripod.signal(libc::SIGINT);
    assert_success(&tripod.wait(RUN_TIMEOUT));
    let folded = std::fs::read_to_string(&file).expect("reading the folded output");
    let victim_lines = in_own_code(&folded, "victim", "");
    assert!(
        !victim_lines.contains("other_"),
        "named from the replacing file:\n{victim_lines}"
    );
    // The file opened when its mappings were recorded is the one that ran.
    assert_chain(
        &in_own_code(&folded, "victim", ";spin"),
        "victim",
        CHAIN,
        100,
        0.9,
    );
}

/// A target that runs once, briefly, while the run goes on: its few samples
/// arrive although nothing else wakes the sampler (it sleeps until the
/// kernel hands it records, issue 20), with the whole call chain in order.
/// The target is stopped before sampling starts, let run for 30 ms of CPU
/// (three samples at 99 Hz), then stopped again until the run ends.
#[test]
fn a_lone_burst_of_samples_arrives() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    for (fixture, comm, unwind) in [
        (CHAIN_NOFP, "chain_nofp", "dwarf"),
        (CHAIN_FP, "chain_fp", "fp"),
    ] {
        let fx = Fixture::start(fixture, &[]);
        send_signal(fx.pid(), libc::SIGSTOP);
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("out.folded");
        let pid = fx.pid().to_string();
        let mut run = Tripod::spawn(tripod_command(&[
            "--pid",
            &pid,
            "-F",
            "99",
            "-d",
            "3",
            "--unwind",
            unwind,
            "-f",
            "folded",
            "-o",
            file.to_str().unwrap(),
        ]));
        run.wait_for_stderr("[tripod] Sampling at", Duration::from_secs(30));
        send_signal(fx.pid(), libc::SIGCONT);
        wait_for_cpu_time(fx.pid(), Duration::from_millis(30));
        send_signal(fx.pid(), libc::SIGSTOP);
        let out = run.wait(RUN_TIMEOUT);
        // Running again, so that the fixture's drop can end it with SIGTERM.
        send_signal(fx.pid(), libc::SIGCONT);
        assert_success(&out);
        let folded = std::fs::read_to_string(&file).expect("reading the output file");
        println!("--unwind {unwind}:");
        assert_chain(&folded, comm, CHAIN, 1, 0.5);
    }
}

/// Where tracefs is not mounted (a VM or a container without systemd), the
/// execve/exit tracepoints are attached all the same: tripod-bpf mounts it
/// at its usual place, as perf does. Run in a mount namespace of its own,
/// with tracefs (and debugfs, which holds another copy) unmounted there.
#[test]
fn tracepoints_attach_where_tracefs_is_not_mounted() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let script = format!(
        "for dir in /sys/kernel/tracing /sys/kernel/debug; do \
           while umount \"$dir\" 2>/dev/null; do :; done; \
         done; \
         if [ -n \"$(ls -A /sys/kernel/tracing)\" ]; then echo 'tracefs still mounted' >&2; exit 3; fi; \
         exec {} --all -d 1 -o /dev/null",
        tripod_bin().display()
    );
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("running unshare (util-linux)");
    assert_success(&out);
    let stderr = stderr_text(&out);
    assert!(!stderr.contains("tracefs"), "{stderr}");
    assert!(!stderr.contains("truncated user stack"), "{stderr}");
}
