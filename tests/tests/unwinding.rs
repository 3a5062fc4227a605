//! `--unwind dwarf`: user stacks copied in the kernel and unwound in userspace
//! from `.eh_frame`, for code built without frame pointers, stripped binaries,
//! threads, the machine's own python3, deleted binaries and other mount
//! namespaces; and a full ring buffer that drops samples without failing.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use tripod_tests::*;

/// Samples `pid` for `seconds` with dwarf unwinding; returns the folded output.
fn sample_dwarf(pid: u32, seconds: &str, extra: &[&str]) -> String {
    sample_folded(pid, seconds, &[&["--unwind", "dwarf"], extra].concat())
}

fn assert_share(
    folded: &str,
    comm: &str,
    what: &str,
    min_share: f64,
    complete: impl Fn(&[&str]) -> bool,
) {
    let (good, total) = share_where(folded, comm, complete);
    println!("{comm}: {good}/{total} samples {what}");
    assert!(
        total >= 50,
        "expected >= 50 samples of {comm}, got {total}:\n{folded}"
    );
    assert!(
        good as f64 >= min_share * total as f64,
        "expected >= {:.0}% of {comm} samples {what}, got {good}/{total}:\n{folded}",
        min_share * 100.0
    );
}

/// `_start -> ... -> main -> alpha -> beta -> gamma -> spin`, nothing missing.
fn full_chain_from_start(frames: &[&str]) -> bool {
    frames.first() == Some(&"_start")
        && frames.ends_with(&["main", "alpha", "beta", "gamma", "spin"])
}

#[test]
fn nofp_chain_is_complete() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let fx = Fixture::start(CHAIN_NOFP, &[]);
    let folded = sample_dwarf(fx.pid(), "3", &[]);
    assert_share(
        &folded,
        "chain_nofp",
        "with _start..main..spin complete",
        0.99,
        full_chain_from_start,
    );
}

/// With every symbol stripped only `.eh_frame` is left; the stack is still whole:
/// _start, libc's two start frames, then main, alpha, beta, gamma, spin.
#[test]
fn stripped_binary_is_unwound() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let fx = Fixture::start(CHAIN_STRIP, &[]);
    let folded = sample_dwarf(fx.pid(), "3", &[]);
    assert_share(
        &folded,
        "chain_strip",
        "with 6 binary frames around libc's start",
        0.99,
        |frames| {
            let ours = frames.iter().filter(|f| **f == "[chain_strip]").count();
            frames.first() == Some(&"[chain_strip]")
                && frames.contains(&"__libc_start_call_main")
                && ours == 6
                && frames.len() == 8
        },
    );
}

/// Worker threads of a no-frame-pointer build end at the thread root.
#[test]
fn threads_end_at_their_root() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let fx = Fixture::start(THREADS_NOFP, &[]);
    let folded = sample_dwarf(fx.pid(), "3", &[]);
    assert_share(
        &folded,
        "threads_nofp",
        "from a thread root to thread_spin",
        0.99,
        |frames| {
            let root = frames
                .first()
                .is_some_and(|f| ["clone3", "__clone3", "clone", "__clone"].contains(f));
            root && frames.contains(&"start_thread")
                && frames.ends_with(&["thread_main", "thread_spin"])
        },
    );
}

/// The machine's python3 (no frame pointers) in a pure-Python loop: native
/// stacks run from `_start` through python's main to the interpreter loop
/// (`--no-python` keeps the interpreter's frames native; tests/python.rs has
/// the Python frames). CPython's `main` is a lone tail call
/// (`jmp Py_BytesMain`), so it is never on the stack; `Py_BytesMain` is the
/// frame that stands for it.
#[test]
fn python_interpreter_stacks_reach_main() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let script =
        "import os\nprint('ready', os.getpid(), flush=True)\nx = 0\nwhile True:\n    x += 1\n";
    let fx = Fixture::start("python3", &["-c", script]);
    let comm = fs::read_to_string(format!("/proc/{}/comm", fx.pid())).unwrap();
    let folded = sample_dwarf(fx.pid(), "3", &["--no-python"]);
    assert_share(
        &folded,
        comm.trim(),
        "from _start through main to _PyEval_EvalFrameDefault",
        0.9,
        |frames| {
            let main = frames
                .iter()
                .position(|f| *f == "main" || *f == "Py_BytesMain");
            let eval = frames.iter().position(|f| *f == "_PyEval_EvalFrameDefault");
            frames.first() == Some(&"_start") && matches!((main, eval), (Some(m), Some(e)) if m < e)
        },
    );
}

/// A binary deleted after it started is unwound and symbolized through
/// `/proc/PID/map_files`.
#[test]
fn deleted_binary_is_unwound_and_symbolized() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("chain_deleted");
    fs::copy(CHAIN_NOFP, &copy).unwrap();
    let fx = Fixture::start(copy.to_str().unwrap(), &[]);
    fs::remove_file(&copy).unwrap();
    let folded = sample_dwarf(fx.pid(), "3", &[]);
    assert_share(
        &folded,
        "chain_deleted",
        "with _start..main..spin complete",
        0.99,
        full_chain_from_start,
    );
}

/// A process in its own mount namespace runs a binary from a tmpfs that does
/// not exist in ours.
#[test]
fn other_mount_namespace_is_unwound_and_symbolized() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mnt = dir.path().display();
    // Inside the namespace: a private tmpfs over the directory, the binary copied
    // into it, then exec'd, keeping the pid the fixture handshake expects.
    let script = format!(
        "mount --make-rprivate / && mount -t tmpfs tripod-test {mnt} && cp {CHAIN_NOFP} {mnt}/chain_ns && exec {mnt}/chain_ns"
    );
    let fx = Fixture::start("unshare", &["-m", "sh", "-c", &script]);
    assert!(
        !dir.path().join("chain_ns").exists(),
        "the binary should only exist inside the other mount namespace"
    );
    let folded = sample_dwarf(fx.pid(), "3", &[]);
    assert_share(
        &folded,
        "chain_ns",
        "with _start..main..spin complete",
        0.99,
        full_chain_from_start,
    );
}

/// A ring buffer too small for one copy drops every sample; the run still
/// succeeds, writes its output and says what to raise.
#[test]
fn full_ring_buffer_is_counted_not_fatal() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let fx = Fixture::start(CHAIN_NOFP, &[]);
    let pid = fx.pid().to_string();
    let out = run_tripod(&[
        "--pid",
        &pid,
        "-d",
        "2",
        "-F",
        "999",
        "--unwind",
        "dwarf",
        "--ring-buffer-size",
        "4096",
        "-f",
        "folded",
        "-o",
        "-",
    ]);
    assert_success(&out);
    let stderr = stderr_text(&out);
    assert!(
        stderr.contains(
            "dropped because the stack-copy ring buffer was full; consider --ring-buffer-size 8192"
        ),
        "stderr:\n{stderr}"
    );
}

/// A stack map with room for two stacks refuses nearly every other stack of
/// a busy thread (`EEXIST`: its one bucket is taken). Those samples are sent
/// whole through the ring buffer, walked as the kernel would have walked
/// them, so none ends in `[missing]`, and the summary says how many.
#[test]
fn stacks_the_stack_map_has_no_room_for_are_sent_whole() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let fx = Fixture::start(CHAIN_FP, &[]);
    let pid = fx.pid().to_string();
    for unwind in ["fp", "tables"] {
        let out = run_tripod(&[
            "--pid",
            &pid,
            "-d",
            "2",
            "-F",
            "999",
            "--unwind",
            unwind,
            "--stack-storage-size",
            "2",
            "-f",
            "folded",
            "-o",
            "-",
        ]);
        assert_success(&out);
        let folded = String::from_utf8_lossy(&out.stdout);
        let stderr = stderr_text(&out);
        println!("--unwind {unwind}");
        assert!(
            !folded.contains("[missing"),
            "a stack was lost:\n{folded}\n{stderr}"
        );
        let sent_whole =
            "found no room in the stack map (hash collision or full) and were sent whole";
        assert!(
            unwind != "fp" || stderr.contains(sent_whole),
            "stderr:\n{stderr}"
        );
        assert_chain(&folded, "chain_fp", CHAIN, 500, 0.99);
    }
}
