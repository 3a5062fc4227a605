//! Usage errors must be caught before any sampling starts, with exit status 2 and one
//! line `tripod-bpf: error: <problem>; <what to do>` on stderr.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tripod_tests::*;

/// Runs the sampler and returns (exit code, stderr); `-d 1` in the callers' arguments
/// keeps a missed validation from turning into a long run.
fn run_failing(args: &[&str]) -> (Option<i32>, String) {
    let out = run_tripod(args);
    (out.status.code(), stderr_text(&out))
}

/// How long a refusal may take at most: far more than it needs, far less than a hang.
const REFUSAL_BOUND: Duration = Duration::from_secs(20);

/// Expects exit status 2 and exactly one non-empty stderr line mentioning `word`.
fn expect_error_line(args: &[&str], word: &str) {
    expect_error_of(tripod_command(args), &format!("{args:?}"), word);
}

/// Same, for a prepared command (environment, other limits); `shown` names it.
fn expect_error_of(cmd: Command, shown: &str, word: &str) {
    let _guard = serial();
    let out = Tripod::spawn(cmd).wait(RUN_TIMEOUT);
    let (code, stderr) = (out.status.code(), stderr_text(&out));
    assert_eq!(
        code,
        Some(2),
        "tripod-bpf {shown}: expected exit 2; stderr:\n{stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines.len() == 1 && !lines[0].trim().is_empty(),
        "tripod-bpf {shown}: expected exactly one error line, got:\n{stderr}"
    );
    assert!(
        lines[0].starts_with("tripod-bpf: error: "),
        "tripod-bpf {shown}: error line has the wrong form: {:?}",
        lines[0]
    );
    assert!(
        stderr.to_lowercase().contains(&word.to_lowercase()),
        "tripod-bpf {shown}: error does not mention {word:?}: {stderr}"
    );
}

#[test]
fn nonexistent_pid() {
    expect_error_line(&["--pid", "999999999", "-d", "1"], "999999999");
}

#[test]
fn cgroup_that_does_not_exist() {
    expect_error_line(
        &["--cgroup", "/nonexistent", "-d", "1"],
        "not a cgroup v2 directory",
    );
}

#[test]
fn cgroup_that_is_not_a_cgroup() {
    expect_error_line(&["--cgroup", "/tmp", "-d", "1"], "/tmp");
}

#[test]
fn pid_conflicts_with_all() {
    expect_error_line(&["--pid", "1", "--all", "-d", "1"], "--all");
}

#[test]
fn missing_target() {
    expect_error_line(&["-d", "1"], "--pid");
}

#[test]
fn zero_frequency() {
    expect_error_line(&["--all", "-F", "0", "-d", "1"], "frequency");
}

#[test]
fn excessive_frequency() {
    expect_error_line(&["--all", "-F", "100000000", "-d", "1"], "frequency");
}

#[test]
fn unwritable_output() {
    expect_error_line(
        &["--all", "-o", "/nonexistent-dir/x.log", "-d", "1"],
        "/nonexistent-dir",
    );
}

/// clap reports unknown values itself, possibly over several lines.
#[test]
fn unknown_format() {
    let _guard = serial();
    let (code, stderr) = run_failing(&["--all", "--format", "bogus", "-d", "1"]);
    assert_eq!(code, Some(2), "expected exit 2; stderr:\n{stderr}");
    assert!(
        stderr.contains("bogus"),
        "error does not mention the value:\n{stderr}"
    );
}

/// An unprivileged user is told to use sudo rather than shown a raw BPF error.
#[test]
fn not_root_is_told_to_use_sudo() {
    let _guard = serial();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: switching to user nobody needs root");
        return;
    }
    // A copy in a world-readable directory, since nobody may not reach the build tree.
    let dir = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("tripod-bpf");
    fs::copy(tripod_bin(), &bin).expect("copying tripod-bpf");
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();

    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&bin)
        .args(["--all", "-d", "1"])
        .current_dir(dir.path());
    let out = Tripod::spawn(cmd).wait(RUN_TIMEOUT);
    let stderr = stderr_text(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected exit 2; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("sudo"),
        "error does not mention sudo:\n{stderr}"
    );
}

#[test]
fn malformed_rules_file_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    fs::write(
        &rules,
        "[[rule]]\ndescription = \"ok\"\nframes = [\"a\"]\n\n[[rule]]\nframe = [\"typo\"]\n",
    )
    .unwrap();
    let path = rules.to_str().unwrap();
    expect_error_line(&["--all", "-d", "1", "--rules", path], "line 6");
    expect_error_line(&["dump", "--pid", "1", "--rules", path], "line 6");
    fs::write(&rules, "[[rule]\ndescription = \"unclosed\"\n").unwrap();
    expect_error_line(&["--all", "-d", "1", "--rules", path], "line 1");
    expect_error_line(
        &["--all", "-d", "1", "--rules", "/nonexistent/rules.toml"],
        "rules file",
    );
}

/// A file that is not an ELF core, or no file: one line, exit 2, no root needed.
#[test]
fn dump_of_what_is_no_core() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.txt");
    fs::write(&text, "not a core\n").unwrap();
    expect_error_line(
        &["dump", "--core", text.to_str().unwrap()],
        "is not an ELF core file",
    );
    expect_error_line(
        &["dump", "--core", tripod_bin().to_str().unwrap()],
        "not a core",
    );
    expect_error_line(
        &["dump", "--core", "/nonexistent/core.1"],
        "/nonexistent/core.1",
    );
    expect_error_line(&["dump", "--core", "/dev/null"], "not a regular file");
}

#[test]
fn dump_of_a_missing_process() {
    expect_error_line(&["dump", "--pid", "999999999"], "999999999");
}

#[test]
fn min_block_us_needs_off_cpu() {
    expect_error_line(
        &["--all", "-d", "1", "--min-block-us", "10"],
        "--mode off-cpu",
    );
}

/// Values past what a `Duration` or the kernel can hold used to panic (exit 101) or
/// fail late with a raw errno; each names its option now.
#[test]
fn values_too_large_name_their_option() {
    for (args, word) in [
        (&["--all", "-d", "1e20"][..], "--duration"),
        (&["--all", "-d", "1", "-i", "1e300"], "--interval"),
        (&["--all", "-d", "NaN"], "--duration"),
        (&["dump", "--pid", "1", "--every", "1e300"], "--every"),
        (
            &["--all", "-d", "1", "--stack-storage-size", "4294967295"],
            "--stack-storage-size",
        ),
        (
            &["--all", "-d", "1", "--count-map-size", "4294967295"],
            "--count-map-size",
        ),
        (
            &["--all", "-d", "1", "--ring-buffer-size", "4294967295"],
            "--ring-buffer-size",
        ),
    ] {
        expect_error_line(args, word);
    }
    let mut cmd = tripod_command(&["--all", "-d", "1"]);
    cmd.env("TRIPOD_INTERVAL", "1e300");
    expect_error_of(cmd, "TRIPOD_INTERVAL=1e300", "TRIPOD_INTERVAL");
}

/// Bad --push URLs and headers used to be accepted, and every profile then dropped
/// with exit 0.
#[test]
fn bad_push_urls_and_headers() {
    let push = |url: &str, word: &str| {
        expect_error_line(&["--all", "-d", "1", "--push", url], word);
    };
    push("http://", "no host");
    push("http://localhost:99999", "port 99999");
    push("http://localhost:4040\nX-Evil: 1", "control characters");
    push("ftp://localhost:4040", "http://");
    expect_error_line(
        &[
            "--all",
            "-d",
            "1",
            "--push",
            "http://localhost:4040",
            "--push-header",
            "X-Scope-OrgID: a\r\nX-Evil: 1",
        ],
        "--push-header",
    );
}

/// The largest sizes the help promises load: about 2 GiB of stack maps, 1 GiB of count
/// maps and a 256 MiB ring buffer, for 1 s.
#[test]
fn largest_map_sizes_load() {
    let _guard = serial();
    if !require_bpf() {
        return;
    }
    let fx = Fixture::start(CHAIN_FP, &[]);
    let pid = fx.pid().to_string();
    let out = run_tripod(&[
        "--pid",
        &pid,
        "-d",
        "1",
        "-f",
        "folded",
        "-o",
        "-",
        "--unwind",
        "fp",
        "--stack-storage-size",
        "1048576",
        "--count-map-size",
        "4194304",
        "--ring-buffer-size",
        "268435456",
    ]);
    assert_success(&out);
    assert!(
        stdout_text(&out).contains(";spin "),
        "no samples:\n{}",
        stderr_text(&out)
    );
}

/// --rules on a device or a FIFO used to read forever or block; a huge file is refused
/// before it is read.
#[test]
fn rules_from_devices_fifos_and_huge_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("rules.fifo");
    let status = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(status.success(), "mkfifo failed");
    let huge = dir.path().join("huge.toml");
    fs::write(&huge, "#".repeat(2 << 20)).unwrap();
    for rules in [Path::new("/dev/zero"), &fifo, &huge] {
        let rules = rules.to_str().unwrap();
        let started = Instant::now();
        let word = if rules.ends_with("huge.toml") {
            "larger than"
        } else {
            "not a regular file"
        };
        expect_error_line(&["--all", "-d", "1", "--rules", rules], word);
        expect_error_line(&["report", "-", "--rules", rules], word);
        assert!(
            started.elapsed() < REFUSAL_BOUND,
            "{rules}: took {:?}",
            started.elapsed()
        );
    }
}

/// `report` exits 2 on input it cannot use, and never reads a FIFO or a device.
#[test]
fn report_of_bad_input_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let not_json = dir.path().join("notes.txt");
    fs::write(
        &not_json,
        "{\"version\": 1}\nTraceback (most recent call last):\n",
    )
    .unwrap();
    expect_error_line(&["report", not_json.to_str().unwrap()], "line 1");
    fs::write(&not_json, "\n{ not json\n").unwrap();
    expect_error_line(&["report", not_json.to_str().unwrap()], "line 2: not JSON");
    // A file of no kind it reads: one line listing the kinds understood.
    fs::write(&not_json, "\nhello\nworld\n").unwrap();
    expect_error_line(
        &["report", not_json.to_str().unwrap()],
        "it understands json (",
    );
    // A traceback cut before its exception is no traceback.
    fs::write(&not_json, "\nTraceback (most recent call last):\n").unwrap();
    expect_error_line(
        &["report", not_json.to_str().unwrap()],
        "no Python tracebacks found",
    );
    // Forced to a kind it is not.
    fs::write(&not_json, "{\"version\": 1}\n").unwrap();
    expect_error_line(
        &["report", "--input", "gdb", not_json.to_str().unwrap()],
        "no threads found in it as gdb",
    );
    fs::write(&not_json, "").unwrap();
    expect_error_line(&["report", not_json.to_str().unwrap()], "empty");
    let fifo = dir.path().join("in.fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let started = Instant::now();
    expect_error_line(&["report", fifo.to_str().unwrap()], "not a regular file");
    expect_error_line(&["report", "/dev/zero"], "not a regular file");
    assert!(
        started.elapsed() < REFUSAL_BOUND,
        "took {:?}",
        started.elapsed()
    );
}
