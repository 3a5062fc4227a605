//! Usage errors must be caught before any sampling starts, with exit status 2 and one
//! line `tripod-bpf: error: <problem>; <what to do>` on stderr.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use tripod_tests::*;

/// Runs the sampler and returns (exit code, stderr); `-d 1` in the callers' arguments
/// keeps a missed validation from turning into a long run.
fn run_failing(args: &[&str]) -> (Option<i32>, String) {
    let out = run_tripod(args);
    (out.status.code(), stderr_text(&out))
}

/// Expects exit status 2 and exactly one non-empty stderr line mentioning `word`.
fn expect_error_line(args: &[&str], word: &str) {
    let _guard = serial();
    let (code, stderr) = run_failing(args);
    assert_eq!(
        code,
        Some(2),
        "tripod-bpf {args:?}: expected exit 2; stderr:\n{stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines.len() == 1 && !lines[0].trim().is_empty(),
        "tripod-bpf {args:?}: expected exactly one error line, got:\n{stderr}"
    );
    assert!(
        lines[0].starts_with("tripod-bpf: error: "),
        "tripod-bpf {args:?}: error line has the wrong form: {:?}",
        lines[0]
    );
    assert!(
        stderr.to_lowercase().contains(&word.to_lowercase()),
        "tripod-bpf {args:?}: error does not mention {word:?}: {stderr}"
    );
}

#[test]
fn nonexistent_pid() {
    expect_error_line(&["--pid", "999999999", "-d", "1"], "999999999");
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
