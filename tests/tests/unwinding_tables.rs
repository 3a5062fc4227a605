//! `--unwind tables`: user stacks walked in the kernel with each file's
//! `.eh_frame` compiled to rows, for code built without frame pointers,
//! through libc, off-CPU (a thread blocking again where it blocked before
//! reuses its previous walk, checked); and the copy fallback, counted, when
//! the rows do not fit in `--unwind-table-size`.

use tripod_tests::*;

/// The number just before `marker` in the end-of-run `unwind tables:` line
/// (an opening parenthesis before it is skipped).
fn summary_number(stderr: &str, marker: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.contains("unwind tables: "))
        .unwrap_or_else(|| panic!("no unwind tables line in stderr:\n{stderr}"));
    let head = &line[..line
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker:?} in {line}"))];
    let word = head.split_whitespace().last().unwrap();
    word.trim_start_matches('(')
        .parse()
        .unwrap_or_else(|_| panic!("a number before {marker:?} in {line}"))
}

/// What the end-of-run line says: (stacks walked in the kernel, stacks copied).
fn walked_and_copied(stderr: &str) -> (u64, u64) {
    (
        summary_number(stderr, " stacks walked in the kernel"),
        summary_number(stderr, " copied instead"),
    )
}

/// Of the stacks walked in the kernel, how many the end-of-run line says
/// were counted there rather than sent as ring-buffer records.
fn counted_in_the_kernel(stderr: &str) -> u64 {
    summary_number(stderr, " counted there")
}

/// Samples `pid` with `--unwind tables`: (folded output, stderr).
fn sample_tables(pid: u32, extra: &[&str]) -> (String, String) {
    let pid = pid.to_string();
    let mut args = vec![
        "--pid", &pid, "-d", "3", "-f", "folded", "-o", "-", "--unwind", "tables",
    ];
    args.extend_from_slice(extra);
    let out = run_tripod(&args);
    assert_success(&out);
    (stdout_text(&out), stderr_text(&out))
}

fn assert_share(folded: &str, comm: &str, min_share: f64, complete: impl Fn(&[&str]) -> bool) {
    let (good, total) = share_where(folded, comm, complete);
    println!("{comm}: {good}/{total} samples complete");
    assert!(
        total >= 50,
        "expected >= 50 samples of {comm}, got {total}:\n{folded}"
    );
    assert!(
        good as f64 >= min_share * total as f64,
        "expected >= {:.0}% of {comm} samples complete, got {good}/{total}:\n{folded}",
        min_share * 100.0
    );
}

fn full_chain_from_start(frames: &[&str]) -> bool {
    frames.first() == Some(&"_start")
        && frames.ends_with(&["main", "alpha", "beta", "gamma", "spin"])
}

/// The chain of a no-frame-pointer build is whole, and it was the kernel
/// that walked it: only samples taken before the rows were loaded (the
/// first pull, a few tens of milliseconds: up to 20% of a 3 s run with
/// both CPUs busy) were copied.
#[test]
fn nofp_chain_is_walked_in_the_kernel() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let fx = Fixture::start(CHAIN_NOFP, &[]);
    let (folded, stderr) = sample_tables(fx.pid(), &[]);
    assert_share(&folded, "chain_nofp", 0.99, full_chain_from_start);
    let (walked, copied) = walked_and_copied(&stderr);
    let counted = counted_in_the_kernel(&stderr);
    println!("walked {walked} (counted {counted}), copied {copied}");
    assert!(
        walked >= 50 && copied * 4 <= walked,
        "expected nearly every stack walked in the kernel, got {walked} walked, {copied} copied:\n{stderr}"
    );
    // Walked stacks are counted in the kernel, not sent through the ring
    // buffer: the folded counts above came from the count maps.
    assert_eq!(
        counted, walked,
        "expected every walked stack counted in the kernel:\n{stderr}"
    );
}

/// Worker threads end at their root through libc's `start_thread` and `clone3`.
#[test]
fn threads_are_walked_through_libc_to_their_root() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let fx = Fixture::start(THREADS_NOFP, &[]);
    let (folded, stderr) = sample_tables(fx.pid(), &[]);
    assert_share(&folded, "threads_nofp", 0.99, |frames| {
        let root = frames
            .first()
            .is_some_and(|f| ["clone3", "__clone3", "clone", "__clone"].contains(f));
        root && frames.contains(&"start_thread")
            && frames.ends_with(&["thread_main", "thread_spin"])
    });
    let (walked, copied) = walked_and_copied(&stderr);
    // Samples before the rows were loaded (the first pull) are copied.
    assert!(walked >= 50 && copied * 4 <= walked, "{stderr}");
    assert_eq!(counted_in_the_kernel(&stderr), walked, "{stderr}");
}

/// Off-CPU: the naps are timed as with the other modes, with stacks the
/// kernel walked from inside libc's nanosleep.
#[test]
fn off_cpu_waits_are_walked_in_the_kernel() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let out = run_tripod(&[
        "--mode", "off-cpu", "--unwind", "tables", "-f", "folded", "-o", "-", "--", OFFCPU,
    ]);
    assert_success(&out);
    let (folded, stderr) = (stdout_text(&out), stderr_text(&out));
    let (blocked_us, _) = chain_share(&folded, "offcpu", &["main", "nap_in_known_place"]);
    println!("offcpu: {blocked_us} µs blocked in nap_in_known_place (truth: 1000000)");
    assert!(
        (900_000..=1_100_000).contains(&blocked_us),
        "expected 1 s ± 10% blocked in nap_in_known_place, got {blocked_us} µs:\n{folded}"
    );
    // The first waits come before the command's libraries are mapped and
    // its rows rebuilt: they are copied.
    let (walked, _) = walked_and_copied(&stderr);
    assert!(
        walked >= 5,
        "expected the naps walked in the kernel:\n{stderr}"
    );
    // Off-CPU stacks are timed in userspace from their records: none is
    // counted in the kernel.
    assert_eq!(counted_in_the_kernel(&stderr), 0, "{stderr}");
}

/// Runs the naps fixture (with `args`) under `--mode off-cpu --unwind
/// tables`: (folded output, stderr).
fn naps_off_cpu(args: &[&str]) -> (String, String) {
    let mut all = vec![
        "--mode", "off-cpu", "--unwind", "tables", "-f", "folded", "-o", "-", "--", NAPS,
    ];
    all.extend_from_slice(args);
    let out = run_tripod(&all);
    assert_success(&out);
    (stdout_text(&out), stderr_text(&out))
}

/// What the end-of-run line says of the stacks walked at context switches:
/// (one of the thread's last two walks reused, walked anew).
fn reused_and_walked_anew(stderr: &str) -> (u64, u64) {
    (
        summary_number(stderr, " stacks were one of the thread's last two walks"),
        summary_number(stderr, " walked anew"),
    )
}

/// A thread that blocks again and again at the same place: its previous
/// walk is reused (checked, not walked again), and the stack stays exact.
#[test]
fn repeated_waits_reuse_the_previous_walk_and_stay_exact() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let (folded, stderr) = naps_off_cpu(&[]);
    let (here_us, total_us) = chain_share(&folded, "naps", &["main", "nap_here", "rest"]);
    println!("naps: {here_us} of {total_us} µs in main;nap_here;rest (truth: 1000000)");
    // Naps end late on a busy machine (2 ms of 20 were seen): no tight
    // upper bound, but all of the time in the one place.
    assert!(
        (950_000..=2_000_000).contains(&here_us) && here_us * 100 >= total_us * 99,
        "expected 1 s blocked in main;nap_here;rest, got {here_us} of {total_us} µs:\n{folded}"
    );
    let (reused, anew) = reused_and_walked_anew(&stderr);
    println!("reused {reused}, walked anew {anew}");
    // The first naps may come before the rows are loaded (copied); most of
    // the 50 reuse the walk of the one before.
    assert!(
        reused >= 25 && reused > anew,
        "expected most naps to reuse the previous walk:\n{stderr}"
    );
}

/// A thread that blocks at two places by turns, with the same registers
/// each time: only the words the walk read tell them apart (the kernel
/// keeps a thread's last two walks, so each place may reuse its own), and
/// each place gets its own half of the time. Reusing a walk on registers
/// alone would give all of it to one place.
#[test]
fn alternating_waits_are_never_given_the_other_places_stack() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let (folded, stderr) = naps_off_cpu(&["--alternate"]);
    let (left_us, _) = chain_share(&folded, "naps", &["main", "nap_left", "rest"]);
    let (right_us, _) = chain_share(&folded, "naps", &["main", "nap_right", "rest"]);
    println!("naps: {left_us} µs in nap_left, {right_us} µs in nap_right (truth: 500000 each)");
    // Each place its half (naps end late on a busy machine, both alike).
    let both = left_us + right_us;
    for (place, us) in [("nap_left", left_us), ("nap_right", right_us)] {
        assert!(
            us >= 450_000 && (40..=60).contains(&(us * 100 / both)),
            "expected half of {both} µs (>= 0.5 s) blocked in main;{place};rest, got {us} µs:\n{folded}"
        );
    }
    let (reused, anew) = reused_and_walked_anew(&stderr);
    println!("reused {reused}, walked anew {anew}");
    assert!(
        reused + anew >= 40,
        "expected the alternating naps walked in the kernel:\n{stderr}"
    );
}

/// Rows that do not fit in `--unwind-table-size` leave their files to the
/// copy: stacks stay whole, the copies are counted and the bound is named.
#[test]
fn a_full_table_falls_back_to_copying_and_says_so() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let fx = Fixture::start(CHAIN_NOFP, &[]);
    let (folded, stderr) = sample_tables(fx.pid(), &["--unwind-table-size", "16"]);
    assert_share(&folded, "chain_nofp", 0.99, full_chain_from_start);
    let (walked, copied) = walked_and_copied(&stderr);
    assert!(walked == 0 && copied >= 50, "{stderr}");
    assert!(
        stderr.contains("the bound was hit")
            && stderr.contains("consider a larger --unwind-table-size"),
        "{stderr}"
    );
}

/// 3 s of `--unwind tables` on the no-frame-pointer chain with the test
/// switch `var` set: the folded output and stderr of a successful run.
fn chain_with_tables_and(var: &str) -> (String, String) {
    chain_with(var, &["--unwind", "tables"])
}

/// [`chain_with_tables_and`] with `unwind` as the options that choose the
/// unwinding (none: the default).
fn chain_with(var: &str, unwind: &[&str]) -> (String, String) {
    let fx = Fixture::start(CHAIN_NOFP, &[]);
    let pid = fx.pid().to_string();
    let mut args = vec!["--pid", &pid, "-d", "3", "-f", "folded", "-o", "-"];
    args.extend_from_slice(unwind);
    let mut cmd = tripod_command(&args);
    cmd.env(var, "1");
    let out = Tripod::spawn(cmd).wait(RUN_TIMEOUT);
    assert_success(&out);
    (stdout_text(&out), stderr_text(&out))
}

/// A kernel without `bpf_loop` (pretended: this one has it) runs as
/// `--unwind dwarf` with one line naming what is missing: the chain is
/// still whole, by copying, and no stack is walked in the kernel.
#[test]
fn a_kernel_without_bpf_loop_falls_back_to_copying_with_one_line() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    // Asked for, and by default.
    for unwind in [&["--unwind", "tables"][..], &[]] {
        let (folded, stderr) = chain_with("TRIPOD_TEST_PRETEND_NO_BPF_LOOP", unwind);
        let said: Vec<&str> = stderr.lines().filter(|l| l.contains("bpf_loop")).collect();
        assert_eq!(said.len(), 1, "one line on bpf_loop expected:\n{stderr}");
        assert!(
            said[0].contains("--unwind tables needs the bpf_loop helper (Linux 5.17")
                && said[0].contains("--unwind dwarf"),
            "{stderr}"
        );
        assert!(stderr.contains("dwarf unwinding"), "{stderr}");
        assert!(!stderr.contains("unwind tables: "), "{stderr}");
        assert_share(&folded, "chain_nofp", 0.99, full_chain_from_start);
    }
}

/// By default, stacks are walked in the kernel where it can: the banner
/// says so and the summary counts the stacks walked.
#[test]
fn the_default_walks_stacks_in_the_kernel() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let (folded, stderr) = chain_with("TRIPOD_TEST_UNUSED", &[]);
    assert!(stderr.contains("tables unwinding"), "{stderr}");
    assert_share(&folded, "chain_nofp", 0.99, full_chain_from_start);
    let (walked, copied) = walked_and_copied(&stderr);
    assert!(walked >= 50 && copied * 4 <= walked, "{stderr}");
}

/// Rows written the slower ways, as on kernels that refuse them the faster
/// (pretended): by batch updates where the rows' array cannot be mapped
/// into tripod-bpf's memory, one update each where batch updates of arrays
/// are refused too. The walk works the same.
#[test]
fn rows_written_by_batches_or_one_by_one_walk_the_same() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    for refused in ["TRIPOD_TEST_NO_MAPPED_ROWS", "TRIPOD_TEST_NO_BATCH_UPDATE"] {
        let (folded, stderr) = chain_with_tables_and(refused);
        assert_share(&folded, "chain_nofp", 0.99, full_chain_from_start);
        let (walked, copied) = walked_and_copied(&stderr);
        assert!(walked >= 50 && copied * 4 <= walked, "{refused}: {stderr}");
    }
}

/// A cgroup of the test's own, `name`, under the cgroup v2 mount: its
/// processes are sampled alone, away from the rest of a shared machine.
fn own_cgroup(name: &str) -> std::path::PathBuf {
    let cgroup = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(|mount| std::path::Path::new(mount).join(name))
        .find(|dir| dir.parent().unwrap().join("cgroup.controllers").exists())
        .expect("a cgroup v2 mount at /sys/fs/cgroup or /sys/fs/cgroup/unified");
    let _ = std::fs::create_dir(&cgroup);
    cgroup
}

/// Exited processes give their slot in the kernel's table of processes
/// back: 120 short processes, more than the 64 slots the test leaves
/// (`TRIPOD_TEST_UNWIND_PROCESS_SLOTS`), ten alive at a time, all find a
/// slot: no warning that one did not fit.
/// They run in a cgroup of their own, sampled alone: the other processes
/// of a shared machine would take slots of their own.
#[test]
fn exited_processes_free_their_slot() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let cgroup = own_cgroup("tripod-test-slots");
    let path = cgroup.to_str().unwrap().to_string();
    let mut cmd = tripod_command(&[
        "--cgroup", &path, "-F", "999", "-f", "folded", "-o", "-", "--unwind", "tables",
    ]);
    cmd.env("TRIPOD_TEST_UNWIND_PROCESS_SLOTS", "64");
    let mut run = Tripod::spawn(cmd);
    run.wait_for_stderr("[tripod] Writing output", WAIT_TIMEOUT);
    // Each child burns a few milliseconds of CPU, so it is sampled, then
    // lives on (the same process, as `sleep`) until its rows are surely in
    // the kernel.
    let child = "i=0; while [ $i -lt 5000 ]; do i=$((i+1)); done; exec sleep 0.4";
    let script = format!(
        "echo $$ > {path}/cgroup.procs && \
         for n in $(seq 12); do for k in $(seq 10); do sh -c '{child}' & done; wait; done"
    );
    let status = std::process::Command::new("sh")
        .args(["-c", &script])
        .status()
        .expect("running the loop of short processes");
    run.signal(libc::SIGINT);
    let out = run.wait(RUN_TIMEOUT);
    let _ = std::fs::remove_dir(&cgroup);
    assert!(status.success());
    assert_success(&out);
    let stderr = stderr_text(&out);
    assert!(
        !stderr.contains("adding the unwind tables of pid"),
        "a process found no slot:\n{stderr}"
    );
    // More processes than slots were sampled, or the test proves nothing.
    let processes: u64 = stderr
        .lines()
        .find(|l| l.contains("stopped by SIGINT: "))
        .and_then(|l| {
            l.split(" processes in ")
                .next()?
                .rsplit(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no process count in:\n{stderr}"));
    assert!(
        processes > 80,
        "only {processes} processes sampled:\n{stderr}"
    );
}

/// A process started during the run is walked in the kernel from its first
/// milliseconds: its first copied stack asks for its rows at once, not
/// after the ring buffer's batch delay (250 ms, about a sixth of this
/// fixture's samples, when each copy waited for the batch). It runs in a
/// cgroup of its own, sampled alone, so the summary's counts are its own.
#[test]
fn a_process_started_during_the_run_is_walked_from_the_start() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let cgroup = own_cgroup("tripod-test-newproc");
    let path = cgroup.to_str().unwrap().to_string();
    let mut run = Tripod::spawn(tripod_command(&[
        "--cgroup", &path, "-F", "199", "-f", "folded", "-o", "-", "--unwind", "tables",
    ]));
    run.wait_for_stderr("[tripod] Writing output", WAIT_TIMEOUT);
    let script = format!("echo $$ > {path}/cgroup.procs && exec {THREADS_NOFP} --seconds 1.5");
    let status = std::process::Command::new("sh")
        .args(["-c", &script])
        .status()
        .expect("running the fixture in its cgroup");
    run.signal(libc::SIGINT);
    let out = run.wait(RUN_TIMEOUT);
    let _ = std::fs::remove_dir(&cgroup);
    assert!(status.success());
    assert_success(&out);
    let stderr = stderr_text(&out);
    let (walked, copied) = walked_and_copied(&stderr);
    println!("walked {walked}, copied {copied}");
    assert!(walked >= 100, "too few samples to tell:\n{stderr}");
    // Copies are the samples taken before its rows were written (libc's
    // 28,000 rows, a few milliseconds, tens on a loaded machine).
    assert!(
        copied * 10 <= walked,
        "expected the new process walked in the kernel within milliseconds, \
         got {walked} walked, {copied} copied:\n{stderr}"
    );
}
