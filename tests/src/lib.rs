//! Helpers for the tripod-bpf end-to-end tests: finding the binary, running it with a
//! timeout, driving the C fixtures (built by build.rs) and reading the folded output.
//!
//! Everything panics on failure so that the tests read as straight-line assertions.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// Fixture executables; their file names are the process names the sampler reports.
pub const CHAIN_FP: &str = env!("FIXTURE_CHAIN_FP");
pub const CHAIN_NOFP: &str = env!("FIXTURE_CHAIN_NOFP");
pub const OTHER_FP: &str = env!("FIXTURE_OTHER_FP");
/// Runs `main -> before_exec -> spin_before`, then execs into another program.
pub const EXECS: &str = env!("FIXTURE_EXECS");
pub const EXECS_FP: &str = env!("FIXTURE_EXECS_FP");
/// Fills memory, then leaves by exec or exit: the kernel frees it inside the call.
pub const TEARDOWN: &str = env!("FIXTURE_TEARDOWN");
pub const TEARDOWN_FP: &str = env!("FIXTURE_TEARDOWN_FP");
pub const SYSCALLS_FP: &str = env!("FIXTURE_SYSCALLS_FP");
pub const THREADS_FP: &str = env!("FIXTURE_THREADS_FP");
pub const THREADS_NOFP: &str = env!("FIXTURE_THREADS_NOFP");
/// A known population of threads for dumps (see population.c).
pub const POPULATION: &str = env!("FIXTURE_POPULATION");
/// Sleeps 10 × 100 ms in `nap_in_known_place`, then exits.
pub const OFFCPU: &str = env!("FIXTURE_OFFCPU");
/// Naps 50 × 20 ms in `main -> nap_here -> rest`, or with `--alternate` in
/// `nap_left` and `nap_right` by turns, entering the kernel with the same registers.
pub const NAPS: &str = env!("FIXTURE_NAPS");
/// One thread busy, one blocked in `wait_forever`.
pub const WALL: &str = env!("FIXTURE_WALL");
/// Starts and joins short-lived threads all the time.
pub const COMINGS: &str = env!("FIXTURE_COMINGS");
/// A worker spins in `worker_entry -> worker_outer -> worker_inner -> worker_spin` after
/// the main thread has called `pthread_exit` (see leaderless.c).
pub const LEADERLESS: &str = env!("FIXTURE_LEADERLESS");
/// The worker's call chain in leaderless.c, outermost first.
pub const LEADERLESS_CHAIN: &[&str] = &[
    "worker_entry",
    "worker_outer",
    "worker_inner",
    "worker_spin",
];
/// `chain_nofp` with every symbol and all debug info stripped; `.eh_frame` stays.
pub const CHAIN_STRIP: &str = env!("FIXTURE_CHAIN_STRIP");
/// Reads the clock in a loop, through the vDSO: `main -> read_clocks -> clock_gettime`.
pub const CLOCKS: &str = env!("FIXTURE_CLOCKS");
/// Spins in `main -> heavy` three times as long as in `main -> light` (see split.c).
pub const SPLIT_FP: &str = env!("FIXTURE_SPLIT_FP");
/// `spawner CHILDREN`: forks children that run its code, then exec (see spawner.c).
pub const SPAWNER: &str = env!("FIXTURE_SPAWNER");

/// The call chain of chain.c, outermost first.
pub const CHAIN: &[&str] = &["main", "alpha", "beta", "gamma", "spin"];

/// Upper bound for any single tripod-bpf run; a hang fails the test instead of the job.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a fixture gets to print its `ready <pid>` line.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives inside the workspace")
        .to_path_buf()
}

/// The file named by environment variable `var` (set by `cargo xtask test`), if set;
/// panics if it names nothing.
fn file_from_env(var: &str) -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os(var)?);
    assert!(
        path.is_file(),
        "{var}={} does not exist; run `cargo xtask test`",
        path.display()
    );
    Some(path)
}

/// The sampler under test: `$TRIPOD_BPF`, else the release build, else the debug build.
pub fn tripod_bin() -> PathBuf {
    if let Some(path) = file_from_env("TRIPOD_BPF") {
        return path;
    }
    let target = workspace_root().join("target");
    ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join("tripod-bpf"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no tripod-bpf binary under {} and TRIPOD_BPF is not set; run `cargo xtask test`",
                target.display()
            )
        })
}

/// Whether tests that load BPF programs can run. Outside CI a non-root run skips them
/// (with a note on stderr); in CI that would silently test nothing, so it fails instead.
pub fn require_bpf() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("BPF tests must run as root in CI");
    }
    eprintln!("skipped: loading BPF programs needs root (run the tests with sudo)");
    false
}

static LOCK: Mutex<()> = Mutex::new(());

/// Serialises the tests: with 2 CPUs, busy fixtures of concurrent tests would starve
/// each other and skew the sample counts. A failed (panicked) test must not block the rest.
pub fn serial() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Sends `sig` to `pid`, ignoring failure (the process may already be gone).
pub fn send_signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Polls `child` until it exits or `timeout` passes.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM, a grace period, then SIGKILL; always reaps.
fn terminate(child: &mut Child) {
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    send_signal(child.id(), libc::SIGTERM);
    if wait_timeout(child, Duration::from_secs(5)).is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A running fixture program, terminated and reaped on drop.
pub struct Fixture {
    child: Option<Child>,
    pid: u32,
    // Kept open so the fixture never sees a closed stdout.
    _stdout: Option<BufReader<ChildStdout>>,
}

impl Fixture {
    /// Starts `path` with `args` and waits for its `ready <pid>` line.
    pub fn start(path: &str, args: &[&str]) -> Fixture {
        Self::start_with(path, args, |_| {})
    }

    /// [`Fixture::start`] in the directory `dir` (for runtimes that write
    /// files in their current directory).
    pub fn start_in(dir: &Path, path: &str, args: &[&str]) -> Fixture {
        Self::start_with(path, args, |command| {
            command.current_dir(dir);
        })
    }

    /// [`Fixture::start`], with the command prepared by `prepare` first (limits, `pre_exec`).
    pub fn start_with(path: &str, args: &[&str], prepare: impl FnOnce(&mut Command)) -> Fixture {
        let mut command = Command::new(path);
        prepare(&mut command);
        let mut child = command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start fixture {path}: {e}"));
        let mut reader = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let result = reader.read_line(&mut line).map(|_| (line, reader));
            let _ = tx.send(result);
        });
        let (line, reader) = match rx.recv_timeout(READY_TIMEOUT) {
            Ok(Ok(got)) => got,
            Ok(Err(e)) => {
                terminate(&mut child);
                panic!("reading the ready line of {path}: {e}");
            }
            Err(_) => {
                terminate(&mut child);
                panic!("fixture {path} did not print `ready <pid>` within {READY_TIMEOUT:?}");
            }
        };
        let pid = child.id();
        if line.trim_end() != format!("ready {pid}") {
            terminate(&mut child);
            panic!("fixture {path}: expected `ready {pid}`, got {line:?}");
        }
        Fixture {
            child: Some(child),
            pid,
            _stdout: Some(reader),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Reaps the fixture in the background as soon as it exits, as a shell would. Without
    /// this a finished fixture stays a zombie (its /proc entry remains) until we wait.
    pub fn reap_in_background(mut self) -> JoinHandle<ExitStatus> {
        let mut child = self.child.take().expect("fixture still owned");
        thread::spawn(move || child.wait().expect("waiting for fixture"))
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            terminate(child);
        }
    }
}

/// A `Command` for the sampler with `args`.
pub fn tripod_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(tripod_bin());
    cmd.args(args);
    cmd
}

/// Samples `pid` for `seconds` and returns the folded output (written to stdout).
pub fn sample_folded(pid: u32, seconds: &str, extra: &[&str]) -> String {
    let pid = pid.to_string();
    let mut args = vec!["--pid", &pid, "-d", seconds, "-f", "folded", "-o", "-"];
    args.extend_from_slice(extra);
    let out = run_tripod(&args);
    assert_success(&out);
    stdout_text(&out)
}

/// Runs the sampler to completion (at most [`RUN_TIMEOUT`]) and returns its output.
pub fn run_tripod(args: &[&str]) -> Output {
    Tripod::spawn(tripod_command(args)).wait(RUN_TIMEOUT)
}

/// A sampler run in the background, for tests that signal it or watch its stderr.
pub struct Tripod {
    child: Option<Child>,
    stdout: Receiver<Vec<u8>>,
    stderr_lines: Receiver<String>,
    stderr_seen: Vec<String>,
}

impl Tripod {
    /// Spawns `cmd` with stdin closed and stdout/stderr captured.
    pub fn spawn(cmd: Command) -> Tripod {
        Tripod::spawn_with_stdout(cmd, Stdio::piped())
    }

    /// Spawns `cmd` with stdin closed, stderr captured and `stdout` as given (captured
    /// only if it is [`Stdio::piped`]).
    pub fn spawn_with_stdout(mut cmd: Command, stdout: Stdio) -> Tripod {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));

        // Readers on their own threads: a full pipe must never block the sampler, and a
        // grandchild holding the pipes open must not block us (see `wait`).
        let out = child.stdout.take();
        let (out_tx, stdout) = mpsc::channel();
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut out) = out {
                let _ = out.read_to_end(&mut buf);
            }
            let _ = out_tx.send(buf);
        });
        let mut err = BufReader::new(child.stderr.take().expect("stderr is piped"));
        let (err_tx, stderr_lines) = mpsc::channel();
        thread::spawn(move || {
            let mut line = Vec::new();
            while matches!(err.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                if err_tx
                    .send(String::from_utf8_lossy(&line).into_owned())
                    .is_err()
                {
                    break;
                }
                line.clear();
            }
        });
        Tripod {
            child: Some(child),
            stdout,
            stderr_lines,
            stderr_seen: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn signal(&self, sig: libc::c_int) {
        send_signal(self.pid(), sig);
    }

    /// Whether the sampler is still running (not exited, or exited and not reaped).
    pub fn is_running(&mut self) -> bool {
        let child = self.child.as_mut().expect("running");
        child.try_wait().expect("waiting for tripod-bpf").is_none()
    }

    /// Waits for a stderr line starting with `prefix` and returns it.
    pub fn wait_for_stderr(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => {
                    self.stderr_seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(e) => {
                    let why = match e {
                        RecvTimeoutError::Timeout => "timed out",
                        RecvTimeoutError::Disconnected => "stderr closed",
                    };
                    panic!(
                        "waiting for a stderr line starting with {prefix:?}: {why}; stderr so far:\n{}",
                        self.stderr_seen.concat()
                    );
                }
            }
        }
    }

    /// Waits for the sampler to exit; kills it and panics after `timeout`.
    pub fn wait(mut self, timeout: Duration) -> Output {
        let mut child = self.child.take().expect("running");
        let status = wait_timeout(&mut child, timeout);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The pipes close once the sampler and anything it started have exited; give
        // stragglers a moment instead of blocking forever.
        let grace = Duration::from_secs(5);
        let stdout = self.stdout.recv_timeout(grace).unwrap_or_default();
        let deadline = Instant::now() + grace;
        while let Ok(line) = self
            .stderr_lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.stderr_seen.push(line);
        }
        let stderr = self.stderr_seen.concat().into_bytes();
        match status {
            Some(status) => Output {
                status,
                stdout,
                stderr,
            },
            None => panic!(
                "tripod-bpf did not exit within {timeout:?} (killed); stderr:\n{}",
                String::from_utf8_lossy(&stderr)
            ),
        }
    }
}

impl Drop for Tripod {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            terminate(child);
        }
    }
}

pub fn stdout_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a zero exit status, showing stderr otherwise.
pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "tripod-bpf failed with {}; stderr:\n{}",
        out.status,
        stderr_text(out)
    );
}

/// One folded line: frames (the first is the process or thread name) and its count.
pub type FoldedStack = (Vec<String>, u64);

/// Parses folded output: `comm;frame;...;frame count` per line. The count follows the
/// last space (frame names may contain spaces).
pub fn parse_folded(text: &str) -> Vec<FoldedStack> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let (frames, count) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("folded line without a count: {line:?}"));
            let count = count
                .parse()
                .unwrap_or_else(|_| panic!("folded line with a bad count: {line:?}"));
            (frames.split(';').map(str::to_owned).collect(), count)
        })
        .collect()
}

/// A frame name without the kernel marker `_[k]`.
pub fn frame_name(frame: &str) -> &str {
    frame.strip_suffix("_[k]").unwrap_or(frame)
}

/// Whether the frames after the comm contain `chain` contiguously and in order.
pub fn has_chain(frames: &[String], chain: &[&str]) -> bool {
    let names: Vec<&str> = frames.iter().skip(1).map(|f| frame_name(f)).collect();
    names.windows(chain.len()).any(|w| w == chain)
}

/// The folded lines whose first element starts with `comm_prefix`.
pub fn stacks_of<'a>(stacks: &'a [FoldedStack], comm_prefix: &str) -> Vec<&'a FoldedStack> {
    stacks
        .iter()
        .filter(|(frames, _)| frames[0].starts_with(comm_prefix))
        .collect()
}

/// The user frames of a folded stack (kernel frames dropped), outermost first.
pub fn user_frames(frames: &[String]) -> Vec<&str> {
    frames
        .iter()
        .skip(1)
        .filter(|f| !f.ends_with("_[k]"))
        .map(String::as_str)
        .collect()
}

/// Samples of `comm` whose user frames satisfy `complete`, and all samples of `comm`.
pub fn share_where(folded: &str, comm: &str, complete: impl Fn(&[&str]) -> bool) -> (u64, u64) {
    let stacks = parse_folded(folded);
    let mine = stacks_of(&stacks, comm);
    let total = mine.iter().map(|(_, n)| n).sum();
    let good = mine
        .iter()
        .filter(|(f, _)| complete(&user_frames(f)))
        .map(|(_, n)| n)
        .sum();
    (good, total)
}

/// (samples containing `chain`, all samples) among the lines of `comm_prefix`.
pub fn chain_share(folded: &str, comm_prefix: &str, chain: &[&str]) -> (u64, u64) {
    let stacks = parse_folded(folded);
    stacks_of(&stacks, comm_prefix)
        .into_iter()
        .fold((0, 0), |(hit, total), (frames, count)| {
            let hit = if has_chain(frames, chain) {
                hit + count
            } else {
                hit
            };
            (hit, total + count)
        })
}

/// Asserts that `comm` has at least `min_samples` samples and that at least `min_share`
/// of them contain `chain`; prints the share for the log.
pub fn assert_chain(folded: &str, comm: &str, chain: &[&str], min_samples: u64, min_share: f64) {
    let (hit, total) = chain_share(folded, comm, chain);
    let share = if total == 0 {
        0.0
    } else {
        hit as f64 / total as f64
    };
    println!(
        "{comm}: {hit}/{total} samples ({:.1}%) contain {}",
        share * 100.0,
        chain.join(";")
    );
    assert!(
        total >= min_samples,
        "expected >= {min_samples} samples for {comm}, got {total}; output:\n{folded}"
    );
    assert!(
        share >= min_share,
        "expected >= {:.0}% of {comm} samples to contain {}, got {:.1}%; output:\n{folded}",
        min_share * 100.0,
        chain.join(";"),
        share * 100.0
    );
}

/// The locals of `paused_here` in `fixtures/python/paused.py`, as `--locals` shows them.
pub const PAUSED_LOCALS: &[(&str, &str)] = &[
    ("count", "3"),
    ("name", "'tripod'"),
    ("items", "<list of 3 items>"),
    ("ratio", "0.5"),
    ("flag", "True"),
    ("nothing", "None"),
    ("data", "b'xy'"),
    ("mapping", "<dict of 1 item>"),
];

/// Whether the tests run in CI, where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// The Python fixture script `name` (in `fixtures/python/`), as an absolute path: the
/// path is the scripts' `co_filename`, which the sampler reports.
pub fn python_fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/python")
        .join(name);
    assert!(path.is_file(), "no Python fixture {}", path.display());
    path.to_str().expect("UTF-8 fixture path").to_owned()
}

/// The version `interpreter` reports as `major.minor`, or why it cannot be run.
fn python_version(interpreter: &str) -> Result<String, String> {
    let out = Command::new(interpreter)
        .args([
            "-c",
            "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {interpreter}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{interpreter} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The Python the tests expect: CPython 3.11.
const PYTHON_VERSION: &str = "3.11";

/// The `python3` on PATH (pyenv's build, with a shared libpython3.11.so) as the absolute
/// path of its executable: pyenv's `python3` is a bash shim, and a fixture started through
/// it would be a bash process for a moment and then a child of unknown pid. Panics when
/// there is no Python 3.11 there: `cargo xtask test` needs it anyway (for py-spy).
pub fn pyenv_python() -> String {
    static PYTHON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let out = Command::new("python3")
                .args(["-c", "import sys; print(sys.executable)"])
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| {
                    panic!("the Python tests need python3 {PYTHON_VERSION} on PATH: {e}")
                });
            let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            assert!(
                out.status.success() && Path::new(&path).is_absolute(),
                "python3 -c 'import sys; print(sys.executable)' gave {path:?} ({}); stderr:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            let version = python_version(&path).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                version, PYTHON_VERSION,
                "the Python tests need python3 {PYTHON_VERSION} on PATH (pyenv), {path} is {version}"
            );
            path
        })
        .clone()
}

/// Debian's `/usr/bin/python3.11` (statically linked libpython, non-PIE). Missing: a panic
/// in CI, else None after printing why.
pub fn debian_python() -> Option<String> {
    const PATH: &str = "/usr/bin/python3.11";
    match python_version(PATH) {
        Ok(version) if version == PYTHON_VERSION => Some(PATH.to_owned()),
        Ok(version) => skip_or_panic(&format!("{PATH} is Python {version}, not {PYTHON_VERSION}")),
        Err(e) => skip_or_panic(&format!("{e} (apt-get install python3.11)")),
    }
}

/// The CPython versions the Python tests run on (pyenv's builds, with a shared libpython):
/// every minor version tripod-bpf reads frames of. In CI each must be there.
pub const PYENV_VERSIONS: &[&str] = &["3.6", "3.7", "3.8", "3.9", "3.10", "3.11", "3.12", "3.13"];

/// pyenv's root: `$PYENV_ROOT`, else `~/.pyenv`.
fn pyenv_root() -> PathBuf {
    std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".pyenv")))
        .unwrap_or_else(|| PathBuf::from("/root/.pyenv"))
}

/// pyenv's interpreter of `minor` (`3.8`): `versions/3.8.*/bin/python3.8`, the newest
/// patch release when several are installed.
fn pyenv_version(minor: &str) -> Option<String> {
    let versions = std::fs::read_dir(pyenv_root().join("versions")).ok()?;
    let mut found: Vec<(u32, PathBuf)> = versions
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let patch = name.strip_prefix(minor)?.strip_prefix('.')?.parse().ok()?;
            let exe = entry.path().join("bin").join(format!("python{minor}"));
            exe.is_file().then_some((patch, exe))
        })
        .collect();
    found.sort();
    found
        .pop()
        .and_then(|(_, exe)| exe.to_str().map(str::to_owned))
}

/// Every CPython 3 interpreter to run the Python fixtures with: pyenv's of each of
/// [`PYENV_VERSIONS`], then Debian's `python3.11` (static, no frame pointers). Each one
/// is checked to report its own version. Missing ones: a panic in CI (finding fewer
/// interpreters is a failure, not a skip), else left out after printing why.
pub fn python_interpreters() -> Vec<String> {
    let mut interpreters = Vec::new();
    for minor in PYENV_VERSIONS {
        let found = pyenv_version(minor).ok_or_else(|| {
            format!(
                "no pyenv Python {minor} in {}/versions",
                pyenv_root().display()
            )
        });
        match found.and_then(|exe| Ok((python_version(&exe)?, exe))) {
            Ok((version, exe)) if version == *minor => interpreters.push(exe),
            Ok((version, exe)) => {
                skip_or_panic::<()>(&format!("{exe} reports Python {version}, not {minor}"));
            }
            Err(why) => {
                skip_or_panic::<()>(&format!("{why} (pyenv install {minor})"));
            }
        }
    }
    interpreters.extend(debian_python());
    interpreters
}

/// pyenv's CPython `minor` (`3.12`) as the path of its executable. Missing: a panic in
/// CI, else None after printing why.
pub fn pyenv_interpreter(minor: &str) -> Option<String> {
    match pyenv_version(minor) {
        Some(exe) => Some(exe),
        None => skip_or_panic(&format!(
            "no pyenv Python {minor} in {}/versions (pyenv install {minor})",
            pyenv_root().display()
        )),
    }
}

/// The program `name` found on PATH (`node`, `java`, `javac`, `jcmd`). Missing: a panic
/// in CI, else None after printing why.
pub fn program(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    match found {
        Some(path) => Some(path),
        None => skip_or_panic(&format!(
            "no {name} on PATH (apt-get install nodejs openjdk-17-jdk-headless)"
        )),
    }
}

/// The fixture `name` in `fixtures/jit/` (JavaScript, Java), as an absolute path.
pub fn jit_fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/jit")
        .join(name);
    assert!(path.is_file(), "no JIT fixture {}", path.display());
    path.to_str().expect("UTF-8 fixture path").to_owned()
}

/// The minor version (`3.8`) of an interpreter [`python_interpreters`] returned.
pub fn interpreter_version(interpreter: &str) -> String {
    python_version(interpreter).unwrap_or_else(|e| panic!("{e}"))
}

/// py-spy, whose Python stacks the tests compare with: `$PY_SPY` (set by `cargo xtask
/// test`), else `py-spy` on PATH. Missing: a panic in CI, else None after printing why.
pub fn py_spy() -> Option<PathBuf> {
    if let Some(path) = file_from_env("PY_SPY") {
        return Some(path);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("py-spy"))
            .find(|path| path.is_file())
    });
    match on_path {
        Some(path) => Some(path),
        None => skip_or_panic("py-spy is not installed and PY_SPY is not set (pip install py-spy)"),
    }
}

/// In CI a missing tool fails the test; elsewhere the comparison is skipped with a note.
fn skip_or_panic<T>(why: &str) -> Option<T> {
    if in_ci() {
        panic!("{why}; CI must not skip tests");
    }
    eprintln!("skipped: {why}");
    None
}

/// Runs `cmd` (another tool than the sampler, e.g. py-spy) to completion with stdin closed
/// and its output captured; kills it and panics after `timeout`.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let read = |mut pipe: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = read(Box::new(child.stdout.take().expect("stdout is piped")));
    let stderr = read(Box::new(child.stderr.take().expect("stderr is piped")));
    let Some(status) = wait_timeout(&mut child, timeout) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{cmd:?} did not exit within {timeout:?} (killed)");
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// `read` of each thread's `/proc/PID/task/TID` directory, by tid; threads it says
/// nothing about (or that exit meanwhile) are left out.
fn per_thread<T>(
    pid: u32,
    read: impl Fn(&Path) -> Option<T>,
) -> std::collections::BTreeMap<u32, T> {
    let dir = format!("/proc/{pid}/task");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {dir}: {e}"))
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let tid = entry.file_name().to_str()?.parse().ok()?;
            Some((tid, read(&entry.path())?))
        })
        .collect()
}

/// The kernel's name (comm) of every thread of `pid`, by tid.
pub fn thread_names(pid: u32) -> std::collections::BTreeMap<u32, String> {
    per_thread(pid, |task| {
        let comm = std::fs::read_to_string(task.join("comm")).ok()?;
        Some(comm.trim_end().to_owned())
    })
}

/// The tid of the thread of `pid` named `name`; panics unless there is exactly one.
pub fn thread_named(pid: u32, name: &str) -> u32 {
    let names = thread_names(pid);
    let tids: Vec<u32> = names
        .iter()
        .filter(|(_, comm)| *comm == name)
        .map(|(tid, _)| *tid)
        .collect();
    assert_eq!(
        tids.len(),
        1,
        "expected one thread named {name:?} in pid {pid}, threads: {names:?}"
    );
    tids[0]
}

/// The task state letter (`R`, `S`, `D`, ...) of every thread of `pid`, by tid.
fn thread_states(pid: u32) -> std::collections::BTreeMap<u32, char> {
    per_thread(pid, |task| {
        let stat = std::fs::read_to_string(task.join("stat")).ok()?;
        // The state follows the parenthesised comm, which may contain anything.
        stat.rsplit_once(')')?.1.trim_start().chars().next()
    })
}

/// Waits until every thread of `pid` sleeps (state S or D), e.g. a fixture that has
/// printed `ready` and is about to block; panics after [`READY_TIMEOUT`].
pub fn wait_until_all_threads_block(pid: u32) {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let states = thread_states(pid);
        if !states.is_empty() && states.values().all(|s| matches!(s, 'S' | 'D')) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the threads of pid {pid} did not all block within {READY_TIMEOUT:?}: {states:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// How long a test waits for something it can observe (a process's CPU time, a signal
/// disposition, a file's content) before it fails: generous, so that a machine busy with
/// other builds slows a test down rather than failing it.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(60);

/// Polls `probe` until it returns `Ok`, and returns that value. `probe` says what it saw
/// otherwise (`Err`); after [`WAIT_TIMEOUT`] the test fails naming `what` it waited for
/// and what was seen last.
pub fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + WAIT_TIMEOUT;
    loop {
        let seen = match probe() {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        assert!(
            Instant::now() < deadline,
            "waited {WAIT_TIMEOUT:?} for {what} in vain; last seen: {seen}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// The CPU time `pid` has used so far, all its threads together (user and system time
/// of `/proc/PID/stat`); `None` once it is gone.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the parenthesised comm: state (field 3), ..., utime (14), stime (15).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_millis(ticks * 1000 / per_second))
}

/// Waits until `pid` has run for `amount` on a CPU from now: a sampler that samples it
/// meanwhile takes as many samples as that time is worth, however loaded the machine.
pub fn wait_for_cpu_time(pid: u32, amount: Duration) {
    let start = cpu_time(pid).unwrap_or_else(|| panic!("pid {pid} is gone"));
    wait_for(
        &format!("pid {pid} to run {amount:?} on a CPU"),
        || match cpu_time(pid).map(|now| now.saturating_sub(start)) {
            Some(ran) if ran >= amount => Ok(()),
            Some(ran) => Err(format!("it ran {ran:?}")),
            None => panic!("pid {pid} exited before it ran {amount:?} on a CPU"),
        },
    )
}

/// A signal set of `pid` from `/proc/PID/status` (`field` is `SigBlk`, `SigIgn`,
/// `SigCgt`, ...), as a bit mask: bit `n - 1` for signal `n`.
pub fn signal_set(pid: u32, field: &str) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} line in {path}"));
    u64::from_str_radix(mask.trim(), 16).expect("a hex mask")
}

/// Waits until `pid` catches `sig` with a handler of its own (`SigCgt`): a program that
/// handles the signal is ready for it, one that has not installed its handler yet would
/// die of it.
pub fn wait_until_catches(pid: u32, sig: libc::c_int) {
    wait_for(&format!("pid {pid} to catch signal {sig}"), || {
        let caught = signal_set(pid, "SigCgt");
        if caught & (1 << (sig - 1)) != 0 {
            Ok(())
        } else {
            Err(format!("SigCgt {caught:#x}"))
        }
    })
}

/// The temporary file tripod-bpf writes beside `path` (named with `-o`) until the end of
/// the run, when it renames it over `path`: `.NAME.tripod-XXXXXX` in the same directory.
pub fn staged_output(path: &Path) -> Option<PathBuf> {
    let dir = path.parent()?;
    let prefix = format!(".{}.tripod-", path.file_name()?.to_str()?);
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| entry.ok())
        .find(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
        .map(|entry| entry.path())
}

/// Waits until what tripod-bpf has written so far for `path` (its staged file, see
/// [`staged_output`]) satisfies `done`, described by `what`: each report and dump is
/// flushed there as it ends.
pub fn wait_for_staged_output(path: &Path, what: &str, done: impl Fn(&str) -> bool) {
    wait_for(
        &format!("{what} in the output for {}", path.display()),
        || {
            let staged = staged_output(path).ok_or_else(|| "no staged file yet".to_string())?;
            let text = std::fs::read_to_string(&staged).unwrap_or_default();
            if done(&text) {
                Ok(())
            } else {
                Err(format!("{} holds {} bytes", staged.display(), text.len()))
            }
        },
    )
}

/// The `go` command, whose `go tool pprof` reads our pprof files (`cargo xtask test` installs
/// Debian's golang-go). `None` outside CI when it is missing; in CI a missing `go` fails.
pub fn go_tool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("go"))
            .find(|go| go.is_file())
    });
    if found.is_none() {
        assert!(
            !in_ci(),
            "`go` is not installed; CI must compare pprof output with `go tool pprof` (apt-get install golang-go)"
        );
        eprintln!(
            "skipping the `go tool pprof` check: `go` is not installed (apt-get install golang-go)"
        );
    }
    found
}

/// Samples the chain fixture for 2 s into `file` in `format`, checking that the run
/// succeeds; returns the fixture's pid (the fixture is gone by then).
pub fn record_chain_to(file: &Path, format: &str) -> u32 {
    let fx = Fixture::start(CHAIN_FP, &[]);
    let pid = fx.pid().to_string();
    let out = run_tripod(&[
        "--pid",
        &pid,
        "-d",
        "2",
        "-f",
        format,
        "-o",
        file.to_str().unwrap(),
    ]);
    assert_success(&out);
    fx.pid()
}

/// `tripod-bpf dump --json` of `pid`, parsed.
pub fn dump_json(pid: u32, extra: &[&str]) -> serde_json::Value {
    let pid = pid.to_string();
    let mut args = vec!["dump", "--pid", &pid, "--json"];
    args.extend_from_slice(extra);
    let out = run_tripod(&args);
    assert_success(&out);
    let text = stdout_text(&out);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("dump is not JSON ({e}):\n{text}"))
}

/// Runs the sampler with `args` to completion (at most [`RUN_TIMEOUT`]) under GNU time;
/// returns its output and its peak resident memory in KiB. Not `wait4` on our own child:
/// a child forked from this (large) test process inherits its memory high-water mark,
/// and time's own child does not.
pub fn run_tripod_with_peak_rss(args: &[&str]) -> (Output, u64) {
    const TIME: &str = "/usr/bin/time";
    assert!(
        Path::new(TIME).is_file(),
        "{TIME} is missing: run `cargo xtask setup` (GNU time measures peak memory here)"
    );
    let measured = tempfile::NamedTempFile::new().expect("a file for time's figure");
    let mut cmd = Command::new(TIME);
    cmd.args(["-f", "%M", "-o"])
        .arg(measured.path())
        .arg(tripod_bin())
        .args(args);
    let out = run_with_timeout(cmd, RUN_TIMEOUT);
    let text = std::fs::read_to_string(measured.path()).unwrap_or_default();
    let kib = text
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak memory figure from {TIME}: {text:?}"));
    (out, kib)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FOLDED: &str = "\
chain_fp;_start;main;alpha;beta;gamma;spin 90
chain_fp;_start;main;alpha;beta;gamma;spin;asm_sysvec_apic_timer_interrupt_[k] 5
chain_fp;[libc.so.6];spin 5
chain_nofp;main;alpha;beta;gamma;spin 1000
weird name;with space;frame 3
";

    #[test]
    fn folded_count_follows_the_last_space() {
        let stacks = parse_folded(FOLDED);
        assert_eq!(stacks.len(), 5);
        assert_eq!(
            stacks[4],
            (
                vec!["weird name".into(), "with space".into(), "frame".into()],
                3
            )
        );
    }

    #[test]
    fn chain_share_counts_only_the_prefix_and_strips_kernel_marks() {
        assert_eq!(chain_share(FOLDED, "chain_fp", CHAIN), (95, 100));
        assert_eq!(
            chain_share(
                FOLDED,
                "chain_fp",
                &["spin", "asm_sysvec_apic_timer_interrupt"]
            ),
            (5, 100)
        );
        // Contiguous: a gap breaks the chain.
        assert_eq!(chain_share(FOLDED, "chain_fp", &["main", "beta"]), (0, 100));
        // The comm is not a frame.
        assert_eq!(
            chain_share(FOLDED, "chain_fp", &["chain_fp", "_start"]),
            (0, 100)
        );
    }
}
