//! Signals, exits and processes without a leader (issue 21): SIGHUP and early signals still
//! write the output, a second Ctrl-C aborts a stuck end of run, a process whose main
//! thread has exited is sampled and dumped while its other threads run, and dumps of
//! kernel threads, of pid 1 and of tripod-bpf itself say what they can.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use tripod_tests::*;

/// The one-letter state of `/proc/PID/stat` (of the main thread for a process).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Starts leaderless.c and waits until its main thread is a zombie, so the test really
/// has a process without a live leader.
fn start_leaderless() -> Fixture {
    let fx = Fixture::start(LEADERLESS, &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while proc_state(fx.pid()) != Some('Z') {
        assert!(
            Instant::now() < deadline,
            "the main thread of leaderless ({}) did not exit: state {:?}",
            fx.pid(),
            proc_state(fx.pid())
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    fx
}

/// The function names of the frames of the group of thread `tid` in a JSON dump,
/// outermost first.
fn dumped_functions(dump: &Value, tid: u32) -> Vec<String> {
    let thread = dump["threads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tid"] == tid)
        .unwrap_or_else(|| panic!("no thread {tid} in the dump: {dump:#}"));
    let group = &dump["groups"][thread["group"].as_u64().unwrap() as usize];
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

/// Whether `functions` contain `chain` contiguously and in order.
fn contains_chain(functions: &[String], chain: &[&str]) -> bool {
    functions
        .windows(chain.len())
        .any(|w| w.iter().zip(chain).all(|(f, c)| f == c))
}

/// A main thread that called `pthread_exit` is not the end of its process: the run
/// lasts its whole duration, and the worker's frames are symbolized, in order.
#[test]
fn leaderless_process_is_sampled_for_the_whole_run() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let fx = start_leaderless();
    let pid = fx.pid().to_string();
    let out = run_tripod(&["--pid", &pid, "-d", "3", "-f", "folded", "-o", "-"]);
    assert_success(&out);
    let stderr = stderr_text(&out);
    assert!(
        stderr.contains("[tripod] done:"),
        "the run did not last its duration (a live thread is a live process); stderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("every target process has exited"),
        "{stderr}"
    );
    assert_chain(&stdout_text(&out), "leaderless", LEADERLESS_CHAIN, 50, 0.9);
}

/// `dump` of the same process shows the worker thread with its call chain, and the
/// process's executable (read through the worker: the leader's `exe` link is gone).
#[test]
fn leaderless_process_is_dumped() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let fx = start_leaderless();
    let worker = thread_named(fx.pid(), "worker");
    let dump = dump_json(fx.pid(), &[]);
    let functions = dumped_functions(&dump, worker);
    assert!(
        contains_chain(&functions, LEADERLESS_CHAIN),
        "worker {worker}: {functions:?} lacks {LEADERLESS_CHAIN:?}; dump: {dump:#}"
    );
    assert_eq!(dump["exe"].as_str(), Some(LEADERLESS), "{dump:#}");
}

/// The pid of the command in the sampler's `Sampling at ...: command `...` (pid N)` line.
fn command_pid(sampling_line: &str) -> u32 {
    let (_, rest) = sampling_line
        .rsplit_once("(pid ")
        .unwrap_or_else(|| panic!("no pid in {sampling_line:?}"));
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no pid in {sampling_line:?}"))
}

/// Starts `tripod-bpf ARGS`, waits until it samples and the process it samples (`target`,
/// or with `None` the command the `Sampling at` line names) has run a second on a CPU,
/// calls `meanwhile` with that line and sends `sig`; returns its output and that line.
fn signal_while_sampling(
    args: &[&str],
    target: Option<u32>,
    sig: libc::c_int,
    meanwhile: impl FnOnce(&str),
) -> (std::process::Output, String) {
    let mut run = Tripod::spawn(tripod_command(args));
    let sampling = run.wait_for_stderr("[tripod] Sampling at", Duration::from_secs(30));
    let target = target.unwrap_or_else(|| command_pid(&sampling));
    wait_for_cpu_time(target, Duration::from_secs(1));
    meanwhile(&sampling);
    run.signal(sig);
    (run.wait(Duration::from_secs(30)), sampling)
}

/// The signals blocked by thread `pid` (`SigBlk` of its status), as a bit mask.
fn blocked_signals(pid: u32) -> u64 {
    signal_set(pid, "SigBlk")
}

/// A closed terminal or dropped ssh session (SIGHUP) ends the run like SIGTERM: what was
/// sampled is written and the exit status is 0.
#[test]
fn sighup_writes_what_was_sampled() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let fx = Fixture::start(CHAIN_FP, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("out.folded");
    let pid = fx.pid().to_string();
    let args = ["--pid", &pid, "-f", "folded", "-o", file.to_str().unwrap()];
    let (out, _) = signal_while_sampling(&args, Some(fx.pid()), libc::SIGHUP, |_| {});
    assert_success(&out);
    assert!(
        stderr_text(&out).contains("stopped by SIGHUP"),
        "{}",
        stderr_text(&out)
    );
    let folded = std::fs::read_to_string(&file).expect("reading the output file");
    assert_chain(&folded, "chain_fp", CHAIN, 20, 0.9);
}

/// With `-- COMMAND`, SIGHUP also stops the command and reaps it: it does not outlive
/// the sampler.
#[test]
fn sighup_stops_the_command() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("out.folded");
    let args = ["-f", "folded", "-o", file.to_str().unwrap(), "--", CHAIN_FP];
    // tripod-bpf's own threads block the signals it reads on a thread of its own; the
    // command starts with none blocked, as from a shell.
    let (out, sampling) = signal_while_sampling(&args, None, libc::SIGHUP, |sampling| {
        let child = command_pid(sampling);
        assert_eq!(
            blocked_signals(child),
            0,
            "signals blocked in the command {child}"
        );
    });
    assert_success(&out);
    let child = command_pid(&sampling);
    assert!(
        !Path::new(&format!("/proc/{child}")).exists(),
        "the command (pid {child}) outlived tripod-bpf: state {:?}",
        proc_state(child)
    );
    let folded = std::fs::read_to_string(&file).expect("reading the output file");
    assert_chain(&folded, "chain_fp", CHAIN, 20, 0.9);
}

/// SIGINT as soon as tripod-bpf handles it (its handlers are installed first thing), while
/// the BPF programs load or before: the run still ends with status 0 and a valid (empty)
/// output file, and does not hang.
#[test]
fn sigint_at_start_writes_a_valid_output() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let fx = Fixture::start(CHAIN_FP, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("out.json");
    let pid = fx.pid().to_string();
    let args = [
        "--pid",
        &pid,
        "-d",
        "30",
        "-f",
        "json",
        "-o",
        file.to_str().unwrap(),
    ];
    let run = Tripod::spawn(tripod_command(&args));
    wait_until_catches(run.pid(), libc::SIGINT);
    run.signal(libc::SIGINT);
    // Far less than the 30 s duration: the signal ended the run.
    let out = run.wait(Duration::from_secs(20));
    assert_success(&out);
    assert!(
        stderr_text(&out).contains("stopped by SIGINT"),
        "{}",
        stderr_text(&out)
    );
    let text = std::fs::read_to_string(&file).expect("the output file exists");
    let document: Value = serde_json::from_str(text.lines().next().unwrap_or(""))
        .unwrap_or_else(|e| panic!("not a JSON document ({e}): {text:?}"));
    assert_eq!(document["kind"], "recording", "{document:#}");
    assert!(document["samples"].is_u64(), "{document:#}");
}

/// A pipe that nobody reads, already full: whatever tripod-bpf writes to it blocks.
fn full_pipe() -> (std::fs::File, std::process::Stdio) {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors that we then own.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: just created, owned by nothing else.
    let (read, write) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    // The smallest pipe (one page) is filled with a few writes.
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, 4096) };
    // SAFETY: as above; non-blocking only while we fill it.
    unsafe { libc::fcntl(fds[1], libc::F_SETFL, libc::O_NONBLOCK) };
    let chunk = [b'#'; 512];
    // SAFETY: writes from a buffer we own.
    while unsafe { libc::write(fds[1], chunk.as_ptr().cast(), chunk.len()) } > 0 {}
    // SAFETY: back to blocking, as a terminal or pager would be.
    unsafe { libc::fcntl(fds[1], libc::F_SETFL, 0) };
    (read, std::process::Stdio::from(write))
}

/// Waits until the main thread of `pid` sleeps writing to a pipe (the kernel's wait
/// channel names it), so the test knows the end of the run is stuck there.
fn wait_until_blocked_in_pipe_write(run: &mut Tripod) {
    let pid = run.pid();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let wchan =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/wchan")).unwrap_or_default();
        if wchan.ends_with("pipe_write") {
            return;
        }
        assert!(
            run.is_running(),
            "tripod-bpf exited instead of blocking in its final write"
        );
        assert!(
            Instant::now() < deadline,
            "tripod-bpf is not stuck writing: wchan {wchan:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The end of a run blocked forever (its stdout is a full pipe) is aborted by a Ctrl-C:
/// exit 130 at once, with one line saying so, after the run had ended by itself or by a
/// first Ctrl-C.
#[test]
fn sigint_aborts_a_stuck_final_write() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let fx = Fixture::start(CHAIN_FP, &[]);
    let pid = fx.pid().to_string();
    for first_stop in ["duration", "SIGINT"] {
        let (_reader, stdout) = full_pipe();
        let mut args = vec!["--pid", pid.as_str(), "-f", "folded", "-o", "-"];
        if first_stop == "duration" {
            args.extend(["-d", "1"]);
        }
        let mut run = Tripod::spawn_with_stdout(tripod_command(&args), stdout);
        run.wait_for_stderr("[tripod] Sampling at", Duration::from_secs(30));
        // Something sampled, so the end of the run has something to write.
        wait_for_cpu_time(fx.pid(), Duration::from_secs(1));
        if first_stop == "SIGINT" {
            run.signal(libc::SIGINT);
        }
        wait_until_blocked_in_pipe_write(&mut run);
        run.signal(libc::SIGINT);
        let out = run.wait(Duration::from_secs(20));
        assert_eq!(
            out.status.code(),
            Some(130),
            "after {first_stop}: {}",
            stderr_text(&out)
        );
        let stderr = stderr_text(&out);
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("tripod-bpf: error: "))
            .collect();
        assert_eq!(errors.len(), 1, "after {first_stop}: {stderr}");
        assert!(
            errors[0].contains("interrupted while stopping"),
            "{}",
            errors[0]
        );
    }
}

/// Kernel threads never entered from user space: a dump shows no system call for them
/// (their zeroed registers once read as `read`).
#[test]
fn kernel_threads_are_dumped_without_a_system_call() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let comm = std::fs::read_to_string("/proc/2/comm").unwrap_or_default();
    assert_eq!(
        comm.trim_end(),
        "kthreadd",
        "pid 2 is kthreadd on Linux outside pid namespaces"
    );
    let dump = dump_json(2, &[]);
    let threads = dump["threads"].as_array().unwrap();
    assert_eq!(threads.len(), 1, "{dump:#}");
    assert_eq!(threads[0]["syscall"], Value::Null, "{dump:#}");
    let out = run_tripod(&["dump", "--pid", "2"]);
    assert_success(&out);
    let text = stdout_text(&out);
    assert!(text.contains("named kthreadd"), "{text}");
    assert!(!text.contains(" in read"), "{text}");
}

/// tripod-bpf leaves itself out of every recording and dump by design: naming its own pid
/// is refused with exit 2 and one line saying why.
#[test]
fn own_pid_is_refused() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let bin = tripod_bin();
    for command in ["dump --pid $$", "--pid $$ -d 1 -o -"] {
        // `exec` keeps the shell's pid, so `$$` is tripod-bpf's own.
        let script = format!("exec \"$0\" {command}");
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c").arg(&script).arg(&bin);
        let out = Tripod::spawn(cmd).wait(RUN_TIMEOUT);
        let stderr = stderr_text(&out);
        assert_eq!(out.status.code(), Some(2), "{command}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{command}: {stderr}");
        assert!(stderr.starts_with("tripod-bpf: error: pid "), "{stderr}");
        assert!(stderr.contains("is tripod-bpf itself"), "{stderr}");
    }
}

/// pid 1 dumps its threads, or (when the system keeps them from eBPF, as sandboxes do)
/// the dump fails with one line saying why; never an empty dump with status 0.
#[test]
fn pid_1_is_dumped_or_refused_with_a_reason() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let out = run_tripod(&["dump", "--pid", "1", "--json"]);
    let stderr = stderr_text(&out);
    if out.status.success() {
        let dump: Value = serde_json::from_str(&stdout_text(&out)).expect("a JSON dump");
        let threads = dump["threads"].as_array().unwrap();
        assert!(!threads.is_empty(), "pid 1 dumped with no thread: {dump:#}");
        assert!(threads.iter().any(|t| t["tid"] == 1), "{dump:#}");
    } else {
        println!("pid 1 is not dumped here: {stderr}");
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with("tripod-bpf: error: pid 1 is running"),
            "{stderr}"
        );
        assert!(
            out.stdout.is_empty(),
            "an error and a dump: {}",
            stdout_text(&out)
        );
    }
}

/// The real SIGHUP: stderr is a terminal that has gone away (its master side closed, so
/// every write to it fails with EIO) when the signal comes. The run still writes its
/// output and exits 0; messages that cannot be shown are dropped.
#[test]
fn sighup_after_the_terminal_is_gone_still_writes_the_output() {
    use std::io::{BufRead, BufReader};
    use std::os::fd::FromRawFd;
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let fx = Fixture::start(CHAIN_FP, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("out.folded");
    let (mut master, mut slave) = (0, 0);
    let null = std::ptr::null_mut();
    // SAFETY: openpty fills two descriptors that we then own; the other arguments may be null.
    let opened = unsafe { libc::openpty(&mut master, &mut slave, null, null.cast(), null.cast()) };
    assert_eq!(opened, 0, "openpty: {}", std::io::Error::last_os_error());
    for fd in [master, slave] {
        // SAFETY: fcntl on descriptors we own. Close-on-exec: a master inherited by
        // tripod-bpf would keep the terminal from hanging up.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    // SAFETY: both were just created and are owned by nothing else.
    let (master, slave) = unsafe {
        (
            std::fs::File::from_raw_fd(master),
            std::fs::File::from_raw_fd(slave),
        )
    };
    let pid = fx.pid().to_string();
    let mut child = tripod_command(&["--pid", &pid, "-f", "folded", "-o", file.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(slave)
        .spawn()
        .expect("starting tripod-bpf");
    // Read the terminal until the run samples; a reader thread keeps a stuck run from
    // blocking the test, which then fails on the deadline below.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut terminal = BufReader::new(master);
        let mut line = String::new();
        while matches!(terminal.read_line(&mut line), Ok(n) if n > 0) {
            if line.contains("Press Ctrl-C") {
                // Dropping the master hangs the terminal up.
                let _ = tx.send(());
                return;
            }
            line.clear();
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("tripod-bpf did not start sampling on the terminal");
    wait_for_cpu_time(fx.pid(), Duration::from_secs(1));
    send_signal(child.id(), libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for tripod-bpf") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tripod-bpf did not exit within 30 s of SIGHUP");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        status.success(),
        "tripod-bpf exited with {status} after SIGHUP"
    );
    let folded = std::fs::read_to_string(&file).expect("reading the output file");
    assert_chain(&folded, "chain_fp", CHAIN, 20, 0.9);
}

/// A command that survives SIGTERM holds up the end of a run for the 2 s grace before its
/// SIGKILL; a second Ctrl-C then aborts at once, and the command is killed and reaped
/// all the same: it does not outlive tripod-bpf.
#[test]
fn sigint_abort_kills_the_command() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    // The command notes each SIGTERM in a file (its `$0`) and goes on.
    let dir = tempfile::tempdir().expect("tempdir");
    let marker = dir.path().join("got-sigterm");
    let stubborn = "trap 'echo >\"$0\"' TERM; while :; do :; done";
    let marker_arg = marker.to_str().unwrap();
    let args = [
        "-f", "folded", "-o", "-", "--", "sh", "-c", stubborn, marker_arg,
    ];
    let mut run = Tripod::spawn(tripod_command(&args));
    let sampling = run.wait_for_stderr("[tripod] Sampling at", Duration::from_secs(30));
    let child = command_pid(&sampling);
    // Its trap set: a SIGTERM before that would end it.
    wait_until_catches(child, libc::SIGTERM);
    run.signal(libc::SIGINT);
    // Once the command has its SIGTERM, the first SIGINT has been handled (a second
    // cannot merge with it) and the run is inside the grace the command gets.
    wait_for("the command to get its SIGTERM", || {
        if marker.exists() {
            Ok(())
        } else {
            Err(format!("no {}", marker.display()))
        }
    });
    assert!(
        run.is_running(),
        "the command ignoring SIGTERM did not hold up the end of the run"
    );
    run.signal(libc::SIGINT);
    let out = run.wait(Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(130), "{}", stderr_text(&out));
    assert!(
        !Path::new(&format!("/proc/{child}")).exists(),
        "the command (pid {child}) outlived the abort: state {:?}",
        proc_state(child)
    );
}
