//! Measurement 8: how long a user waits for the stack of every thread of a big process.
//! `manythreads` parks 1,000 threads, a third each in a condition variable wait, a pipe read
//! and a sleep; each tool then dumps every thread's stack once, and we time it from its
//! start to its exit (the output is then complete), output thrown away. A first, untimed
//! run of each tool writes its output to a file instead, to count the threads it found.
//! tripod-bpf reads the threads with an eBPF task iterator and leaves the process running;
//! gdb, eu-stack and pstack stop it with ptrace while they read it.

use std::{
    fmt, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};

use super::{
    proc::{self, Fixture},
    samplers::Found,
    say, Bench, Options,
};
use crate::cmd::{find_in_path, probe};

/// Waiting threads of the fixture; main makes one more.
pub const THREADS: usize = 1000;
/// Longest a dump may take: gdb on a slow machine, not a hang.
const DUMP_TIMEOUT: Duration = Duration::from_secs(300);

/// A tool that prints the stack of every thread of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dumper {
    Tripod { json: bool },
    Gdb,
    EuStack,
    Pstack,
}

impl fmt::Display for Dumper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dumper::Tripod { json: false } => "tripod-bpf dump",
            Dumper::Tripod { json: true } => "tripod-bpf dump --json",
            Dumper::Gdb => "gdb -batch -ex 'thread apply all bt'",
            Dumper::EuStack => "eu-stack",
            Dumper::Pstack => "pstack",
        })
    }
}

impl Dumper {
    /// Whether it prints the dump on stdout (tripod-bpf writes it to its `-o` file).
    fn prints_output(self) -> bool {
        !matches!(self, Dumper::Tripod { .. })
    }
}

/// One timed dump.
#[derive(Clone, Copy, Debug, Default)]
pub struct Run {
    /// From start to exit, seconds.
    pub wall: f64,
    /// User + system CPU of the dumper, seconds.
    pub cpu: f64,
    pub max_rss_kib: u64,
}

/// A dumper's runs.
#[derive(Clone, Debug)]
pub struct Timings {
    pub dumper: Dumper,
    /// Threads its output showed in the untimed run; None where its format is unknown.
    pub threads_found: Option<usize>,
    pub runs: Vec<Run>,
}

pub struct Dumps {
    /// Threads of the fixture process, main included.
    pub threads: usize,
    /// The peers, found or why they were skipped.
    pub peers: Vec<(Dumper, Found)>,
    pub timings: Vec<Timings>,
}

impl Dumps {
    pub fn timings_of(&self, dumper: Dumper) -> Option<&Timings> {
        self.timings.iter().find(|t| t.dumper == dumper)
    }
}

pub fn measure(bench: &mut Bench, options: &Options) -> Result<Dumps> {
    let peers = find_peers();
    for (dumper, found) in &peers {
        match found {
            Ok((path, version)) => say(&format!("{dumper}: {version} ({})", path.display())),
            Err(why) => say(&format!("{dumper}: skipped: {why}")),
        }
    }
    let mut dumpers = vec![
        (Dumper::Tripod { json: false }, bench.tools.tripod.clone()),
        (Dumper::Tripod { json: true }, bench.tools.tripod.clone()),
    ];
    dumpers.extend(peers.iter().filter_map(|(dumper, found)| {
        found.as_ref().ok().map(|(path, _)| (*dumper, path.clone()))
    }));
    let fixture = Fixture::start(
        &bench.fixtures.manythreads,
        &["--threads", &THREADS.to_string()],
    )?;
    let threads = THREADS + 1;
    let mut checked: Vec<(PathBuf, Timings)> = Vec::new();
    for (dumper, program) in dumpers {
        match count_threads(bench, dumper, &program, fixture.pid(), threads) {
            Ok(threads_found) => checked.push((
                program,
                Timings {
                    dumper,
                    threads_found,
                    runs: Vec::new(),
                },
            )),
            Err(e) => bench.failed(&format!("dump: {dumper}"), e),
        }
    }
    for round in 0..options.runs {
        // A different starting point each round, so no tool always runs first.
        let mut order: Vec<usize> = (0..checked.len()).collect();
        order.rotate_left(round * checked.len() / options.runs);
        for index in order {
            let (program, timings) = &mut checked[index];
            let dumper = timings.dumper;
            let result = dump(
                bench,
                dumper,
                program,
                fixture.pid(),
                Path::new("/dev/null"),
            );
            match result {
                Ok(run) => {
                    say(&format!(
                        "dump {}/{}: {dumper}: {:.3} s, cpu {:.3} s",
                        round + 1,
                        options.runs,
                        run.wall,
                        run.cpu
                    ));
                    timings.runs.push(run);
                }
                Err(e) => bench.failed(&format!("dump: {dumper}"), e),
            }
        }
    }
    fixture.stop()?;
    Ok(Dumps {
        threads,
        peers,
        timings: checked.into_iter().map(|(_, timings)| timings).collect(),
    })
}

fn find_peers() -> Vec<(Dumper, Found)> {
    vec![
        (Dumper::Gdb, find_peer("gdb", "gdb")),
        (Dumper::EuStack, find_peer("eu-stack", "elfutils")),
        (Dumper::Pstack, find_peer("pstack", "pstack")),
    ]
}

/// `program` on PATH and the first line of its `--version`, or its name if it has none.
fn find_peer(program: &str, package: &str) -> Found {
    let path = find_in_path(program)
        .ok_or_else(|| format!("{program} is not installed (apt-get install {package})"))?;
    let version = probe(Command::new(&path).arg("--version").stderr(Stdio::null()))
        .and_then(|v| v.lines().next().map(str::to_owned))
        .unwrap_or_else(|| program.to_owned());
    Ok((path, version))
}

/// An untimed dump into a file: the threads the dumper found, an error if tripod-bpf found
/// other than `expected` (peers are reported as they are) or a peer printed nothing.
fn count_threads(
    bench: &Bench,
    dumper: Dumper,
    program: &Path,
    pid: u32,
    expected: usize,
) -> Result<Option<usize>> {
    let output = bench.run_dir()?.join("dump.out");
    dump(bench, dumper, program, pid, &output)?;
    let text =
        fs::read_to_string(&output).with_context(|| format!("reading {}", output.display()))?;
    ensure!(!text.trim().is_empty(), "{dumper} printed nothing");
    let found = threads_in(dumper, &text);
    say(&format!(
        "dump: {dumper} found {} of {expected} threads",
        found.map_or("an unknown number".into(), |n| n.to_string())
    ));
    if matches!(dumper, Dumper::Tripod { .. }) {
        ensure!(
            found == Some(expected),
            "{dumper} found {found:?} threads of pid {pid}, not {expected}"
        );
    }
    Ok(found)
}

/// Runs `dumper` (the executable `program`) on `pid`, its output into `output`.
fn dump(bench: &Bench, dumper: Dumper, program: &Path, pid: u32, output: &Path) -> Result<Run> {
    let pid = pid.to_string();
    let mut cmd = Command::new(program);
    match dumper {
        Dumper::Tripod { json } => {
            cmd.args(["dump", "-p", &pid]);
            if json {
                cmd.arg("--json");
            }
            cmd.arg("-o").arg(output).stdout(Stdio::null());
        }
        Dumper::Gdb => {
            // Fetching debug info over the network would time the network, not gdb.
            cmd.args(["-batch", "-iex", "set debuginfod enabled off", "-p", &pid])
                .args(["-ex", "thread apply all bt"]);
        }
        Dumper::EuStack => {
            cmd.args(["-p", &pid]);
        }
        Dumper::Pstack => {
            cmd.arg(&pid);
        }
    }
    if dumper.prints_output() {
        cmd.stdout(fs::File::create(output)?);
    }
    let log = bench.scratch.join("dumper.log");
    cmd.stdin(Stdio::null()).stderr(fs::File::create(&log)?);
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {dumper}: {cmd:?}"))?;
    let Some(exit) = proc::wait_exit(child.id(), DUMP_TIMEOUT)? else {
        let _ = child.kill();
        let _ = child.wait();
        bail!("{dumper} did not finish within {DUMP_TIMEOUT:?}");
    };
    if !exit.success() {
        let said = fs::read_to_string(&log).unwrap_or_default();
        let last = said.lines().rev().find(|l| !l.trim().is_empty());
        bail!(
            "{dumper} failed (exit code {}): {}",
            exit.code,
            last.unwrap_or("(it printed nothing on stderr)")
        );
    }
    Ok(Run {
        wall: (exit.at - started).as_secs_f64(),
        cpu: exit.cpu.as_secs_f64(),
        max_rss_kib: exit.max_rss_kib,
    })
}

/// Threads in a dumper's output; None where the format is not known here (pstack is a gdb
/// script on some distributions and its own program on others).
fn threads_in(dumper: Dumper, output: &str) -> Option<usize> {
    match dumper {
        // `[tripod] ===== thread dump TIME  pid P (name)  EXE  N threads, K distinct stacks ==…`
        Dumper::Tripod { json: false } => output
            .lines()
            .find(|line| line.starts_with("[tripod] ===== thread dump "))?
            .split_once(" threads, ")?
            .0
            .rsplit(' ')
            .next()?
            .parse()
            .ok(),
        // Only the entries of `threads` have a `tid` key (groups have `tids`).
        Dumper::Tripod { json: true } => Some(output.matches("\"tid\":").count()),
        // `Thread 1001 (Thread 0x7f… (LWP 4242) "name"):` heads each backtrace.
        Dumper::Gdb => Some(output.lines().filter(|l| l.starts_with("Thread ")).count()),
        // `TID 4242:` heads each thread's frames.
        Dumper::EuStack => Some(output.lines().filter(|l| l.starts_with("TID ")).count()),
        Dumper::Pstack => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_threads_in_each_format() {
        let text = "[tripod] ===== thread dump 2026-11-21 07:25:16.460  pid 12535 (manythreads)  \
                    /tmp/manythreads  1001 threads, 4 distinct stacks =====\n\n334 * [1, 2]\n";
        assert_eq!(threads_in(Dumper::Tripod { json: false }, text), Some(1001));
        let json = r#"{"version":1,"threads":[{"tid":1,"comm":"a"},{"tid":2,"comm":"b"}],"groups":[{"tids":[1,2]}]}"#;
        assert_eq!(threads_in(Dumper::Tripod { json: true }, json), Some(2));
        let gdb = "[New LWP 2]\n\nThread 2 (Thread 0x7f (LWP 2) \"a\"):\n#0  read ()\n\n\
                   Thread 1 (Thread 0x7e (LWP 1) \"a\"):\n#0  sigwait ()\n";
        assert_eq!(threads_in(Dumper::Gdb, gdb), Some(2));
        let eu_stack = "PID 1 - process\nTID 1:\n#0  0x7f sigwait\nTID 2:\n#0  0x7f read\n";
        assert_eq!(threads_in(Dumper::EuStack, eu_stack), Some(2));
        assert_eq!(
            threads_in(Dumper::Tripod { json: false }, "no header"),
            None
        );
    }
}
