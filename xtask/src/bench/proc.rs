//! Measuring processes from outside: CPU time and memory from /proc and wait4, exit times,
//! and fixtures run in their own process group so one signal stops all their processes.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    os::unix::{io::AsRawFd as _, process::CommandExt as _},
    path::Path,
    process::{Child, ChildStdout, Command, Stdio},
    str::FromStr,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};

/// What wait4 reports about a process that exited.
#[derive(Clone, Copy, Debug)]
pub struct Exit {
    /// Shell-style: the exit code, or 128 + signal.
    pub code: i32,
    /// User + system CPU time over the process's whole life (its waited-for children too).
    pub cpu: Duration,
    /// Peak resident set size.
    pub max_rss_kib: u64,
    /// When we saw it gone.
    pub at: Instant,
}

impl Exit {
    pub fn success(&self) -> bool {
        self.code == 0
    }
}

/// Waits up to `timeout` for `pid` (a child of ours) to exit and reaps it. `None` on timeout.
///
/// The wait sleeps on a pidfd, which polls readable when the child exits. It used to
/// poll `wait4` every millisecond: a thousand wake-ups a second of the harness while
/// the fixture ran, each a chance for the sampler under test to sample the harness,
/// and under `--unwind tables` to compile its rows inside the measured window.
pub fn wait_exit(pid: u32, timeout: Duration) -> Result<Option<Exit>> {
    let deadline = Instant::now() + timeout;
    let pidfd = open_pidfd(pid);
    loop {
        if let Some(exit) = try_reap(pid)? {
            return Ok(Some(exit));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        match &pidfd {
            Some(fd) => wait_readable(fd, left.min(Duration::from_secs(1))),
            // A kernel before 5.3: poll, as before.
            None => thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// Reaps `pid` if it has exited, with its CPU time and peak memory.
fn try_reap(pid: u32) -> Result<Option<Exit>> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child; status and usage are valid for writes.
    let got = unsafe { libc::wait4(pid as i32, &mut status, libc::WNOHANG, &mut usage) };
    if got < 0 {
        return Err(std::io::Error::last_os_error()).context(format!("wait4({pid})"));
    }
    if got == 0 {
        return Ok(None);
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    Ok(Some(Exit {
        code,
        cpu: timeval(usage.ru_utime) + timeval(usage.ru_stime),
        max_rss_kib: usage.ru_maxrss as u64,
        at: Instant::now(),
    }))
}

/// A pidfd of `pid`; `None` where the kernel has no `pidfd_open`.
fn open_pidfd(pid: u32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    // SAFETY: a descriptor just returned to us, owned by nothing else.
    (fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Sleeps until `fd` polls readable (the child exited) or `timeout` has passed.
fn wait_readable(fd: &std::os::fd::OwnedFd, timeout: Duration) {
    use std::os::fd::AsRawFd as _;
    let mut poll = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; an interrupted or failed poll just loops again.
    unsafe { libc::poll(&mut poll, 1, timeout.as_millis().max(1) as libc::c_int) };
}

pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; a stale pid only yields ESRCH.
    unsafe { libc::kill(pid as i32, sig) };
}

/// CPU time used so far by all live threads of `pid`, in nanoseconds (from schedstat, which
/// unlike /proc/PID/stat is not rounded to clock ticks).
pub fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Context switches, voluntary and not, of every thread of `pid` so far: each
/// one is a thread of it going to sleep or being preempted, so their rate is
/// how often it wakes up.
pub fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("status")).ok())
        .map(|status| {
            ["voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"]
                .iter()
                .filter_map(|field| status_field_kib(&status, field))
                .sum::<u64>()
        })
        .sum()
}

/// CPU time (user + system) used so far by the calling thread.
pub fn thread_cpu() -> Duration {
    // SAFETY: an all-zero rusage is a valid value for getrusage to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: usage is valid for writes; RUSAGE_THREAD needs nothing else.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    timeval(usage.ru_utime) + timeval(usage.ru_stime)
}

fn timeval(t: libc::timeval) -> Duration {
    Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000)
}

/// A `kB` field of /proc/PID/status, such as `VmRSS` or `VmHWM`.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field_kib(&status, field)
}

fn status_field_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Whether `path` contains `needle` (for readiness lines written to a log file).
pub fn file_contains(path: &Path, needle: &str) -> bool {
    fs::read_to_string(path).is_ok_and(|text| text.contains(needle))
}

/// A fixture program: its own process group, stdout piped for the `ready` line and any
/// results it prints after it.
pub struct Fixture {
    child: Child,
    stdout: BufReader<ChildStdout>,
    exit: Option<Exit>,
}

/// How long a fixture gets to print `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

impl Fixture {
    /// Starts `program args` and waits for its `ready PID` line.
    pub fn start(program: &Path, args: &[&str]) -> Result<Fixture> {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let mut fixture = Fixture {
            child,
            stdout,
            exit: None,
        };
        let line = fixture.next_line(READY_TIMEOUT)?;
        if !line.starts_with("ready ") {
            bail!("fixture {} did not start (said {line:?})", fixture.pid());
        }
        Ok(fixture)
    }

    /// The next line the fixture prints, waiting at most `timeout` for it.
    pub fn next_line(&mut self, timeout: Duration) -> Result<String> {
        // Fixtures print whole lines and flush them, so a readable pipe holds a whole line.
        if self.stdout.buffer().is_empty() {
            let mut pipe = libc::pollfd {
                fd: self.stdout.get_ref().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
            // SAFETY: one valid pollfd, for the duration of the call.
            let ready = unsafe { libc::poll(&mut pipe, 1, millis) };
            if ready < 0 {
                return Err(std::io::Error::last_os_error())
                    .context("poll on the fixture's stdout");
            }
            if ready == 0 {
                bail!("fixture {} printed nothing for {timeout:?}", self.pid());
            }
        }
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .with_context(|| format!("reading the output of fixture {}", self.pid()))?;
        if line.is_empty() {
            bail!("fixture {} exited without printing its line", self.pid());
        }
        Ok(line.trim_end().to_owned())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the fixture to finish its work (at most `timeout`).
    pub fn wait(&mut self, timeout: Duration) -> Result<Exit> {
        let exit = wait_exit(self.pid(), timeout)?
            .with_context(|| format!("fixture {} still running after {timeout:?}", self.pid()))?;
        self.exit = Some(exit);
        if !exit.success() {
            bail!("fixture {} failed (exit code {})", self.pid(), exit.code);
        }
        Ok(exit)
    }

    /// Stops the fixture and every process it started.
    pub fn stop(mut self) -> Result<()> {
        self.terminate()
    }

    fn terminate(&mut self) -> Result<()> {
        if self.exit.is_some() {
            return Ok(());
        }
        // SAFETY: signalling our own process group (negative pid); no memory is involved.
        unsafe { libc::kill(-(self.pid() as i32), libc::SIGTERM) };
        let exit = match wait_exit(self.pid(), Duration::from_secs(10))? {
            Some(exit) => exit,
            None => {
                // SAFETY: as above.
                unsafe { libc::kill(-(self.pid() as i32), libc::SIGKILL) };
                wait_exit(self.pid(), Duration::from_secs(10))?
                    .context("fixture survived SIGKILL")?
            }
        };
        self.exit = Some(exit);
        Ok(())
    }
}

/// The value after `name` in a fixture's `name value name value ...` result line.
pub fn field<T: FromStr>(fields: &[&str], name: &str) -> Result<T> {
    let text = fields
        .iter()
        .position(|f| *f == name)
        .and_then(|i| fields.get(i + 1))
        .with_context(|| format!("no `{name}` in the fixture's line {:?}", fields.join(" ")))?;
    text.parse()
        .map_err(|_| anyhow!("`{name} {text}` is not a number in the fixture's line"))
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wait sleeps until the child exits, reaps it with its exit code, and gives
    /// up at the timeout on one that does not.
    #[test]
    // Both children are reaped by `wait_exit`, which clippy cannot see.
    #[allow(clippy::zombie_processes)]
    fn waits_for_a_child_until_it_exits_or_the_time_is_up() {
        let started = Instant::now();
        let child = std::process::Command::new("sh")
            .args(["-c", "sleep 0.2; exit 3"])
            .spawn()
            .expect("starting sh");
        let exit = wait_exit(child.id(), Duration::from_secs(10)).unwrap();
        assert_eq!(exit.map(|e| e.code), Some(3));
        assert!(started.elapsed() >= Duration::from_millis(200));
        let long = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .expect("sleep");
        let waited = Instant::now();
        assert!(wait_exit(long.id(), Duration::from_millis(100))
            .unwrap()
            .is_none());
        assert!(waited.elapsed() < Duration::from_secs(5));
        signal(long.id(), libc::SIGKILL);
        assert!(wait_exit(long.id(), Duration::from_secs(10))
            .unwrap()
            .is_some());
    }

    #[test]
    fn reads_kib_fields_of_proc_status() {
        let status = "Name:\ttripod-bpf\nVmHWM:\t   41236 kB\nVmRSS:\t   40112 kB\n";
        assert_eq!(status_field_kib(status, "VmRSS"), Some(40112));
        assert_eq!(status_field_kib(status, "VmHWM"), Some(41236));
        assert_eq!(status_field_kib(status, "VmSwap"), None);
    }

    #[test]
    fn measures_a_child_that_exits() {
        // Reaped by wait_exit (wait4), not by Child::wait.
        #[allow(clippy::zombie_processes)]
        let child = Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
        let exit = wait_exit(child.id(), Duration::from_secs(10))
            .unwrap()
            .unwrap();
        assert_eq!(exit.code, 3);
        assert!(exit.max_rss_kib > 0);
    }
}
