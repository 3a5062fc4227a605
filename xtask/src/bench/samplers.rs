//! The samplers under test: how to start each one on the whole machine or one process, on a
//! clock or on context switches, when it is ready, how to stop it, and how to turn what it
//! wrote into folded stacks (paying, for perf, the `perf script` and collapsing a user needs
//! to get them).

use std::{
    fmt, fs,
    io::BufReader,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use inferno::collapse::{perf as perf_collapse, Collapse as _};

use super::{
    proc::{self, Exit},
    stacks::Folded,
};
use crate::cmd::{find_in_path, probe};

/// How long a sampler gets after it said it is ready (or after its start, for perf, which
/// says nothing), so that every sampler is attached before the measured work starts.
const SETTLE: Duration = Duration::from_millis(1000);
/// How long a sampler gets to start, and to finish after SIGINT.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sampler {
    Tripod(Unwind),
    PerfFp,
    PerfDwarf,
    Bpftrace,
    /// bcc's offcputime, which records only off-CPU time.
    Offcputime,
    /// tripod-bpf's default unwinding with its Python frames turned off: native stacks only.
    TripodNoPython,
    /// py-spy, which reads a Python process's frames from outside; by default it pauses the
    /// process for each sample, `--nonblocking` reads it while it runs.
    PySpy {
        nonblocking: bool,
    },
}

/// tripod-bpf's `--unwind` modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unwind {
    Fp,
    Dwarf,
    /// The stack walked in the kernel with rows compiled from `.eh_frame`.
    Tables,
    /// The default, whatever `auto` picks.
    Auto,
}

impl Unwind {
    fn arg(self) -> &'static str {
        match self {
            Unwind::Fp => "fp",
            Unwind::Dwarf => "dwarf",
            Unwind::Tables => "tables",
            Unwind::Auto => "auto",
        }
    }
}

impl fmt::Display for Sampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sampler::Tripod(unwind) => write!(f, "tripod-bpf --unwind {}", unwind.arg()),
            Sampler::PerfFp => f.write_str("perf record -g"),
            Sampler::PerfDwarf => f.write_str("perf record --call-graph dwarf"),
            Sampler::Bpftrace => f.write_str("bpftrace profile:hz"),
            Sampler::Offcputime => f.write_str("bcc offcputime"),
            Sampler::TripodNoPython => f.write_str("tripod-bpf --no-python"),
            Sampler::PySpy { nonblocking: false } => f.write_str("py-spy record"),
            Sampler::PySpy { nonblocking: true } => f.write_str("py-spy record --nonblocking"),
        }
    }
}

/// When a sampler takes a stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Stacks of running threads, this many times a second on each CPU.
    Clock(u32),
    /// Where threads wait: a stack each time one is switched out.
    OffCpu,
}

/// What a sampler records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    All,
    Pid(u32),
}

/// tripod-bpf's output format for a run (peers always produce their one native form).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Log,
    Folded,
}

/// A program found on this machine and its version, or why it is missing.
pub type Found = Result<(PathBuf, String), String>;

/// The programs found on this machine, and why a peer is missing.
pub struct Tools {
    pub tripod: PathBuf,
    pub tripod_version: String,
    pub perf: Found,
    pub bpftrace: Found,
    pub offcputime: Found,
    /// Looked for (and installed) only when the Python measurement runs: see [`find_py_spy`].
    pub py_spy: Found,
}

impl Tools {
    pub fn find(tripod: PathBuf) -> Tools {
        let tripod_version = probe(Command::new(&tripod).arg("--version"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        Tools {
            tripod,
            tripod_version,
            perf: find_perf(),
            bpftrace: find_bpftrace(),
            offcputime: find_offcputime(),
            py_spy: Err("only the python measurement runs it".into()),
        }
    }

    /// Every sampler that can run here, tripod-bpf's modes first.
    pub fn samplers(&self) -> Vec<Sampler> {
        let mut samplers = vec![
            Sampler::Tripod(Unwind::Fp),
            Sampler::Tripod(Unwind::Dwarf),
            Sampler::Tripod(Unwind::Tables),
            Sampler::Tripod(Unwind::Auto),
        ];
        if self.perf.is_ok() {
            samplers.extend([Sampler::PerfFp, Sampler::PerfDwarf]);
        }
        if self.bpftrace.is_ok() {
            samplers.push(Sampler::Bpftrace);
        }
        samplers
    }

    /// Every sampler that can record off-CPU time here, tripod-bpf's first.
    pub fn off_cpu_samplers(&self) -> Vec<Sampler> {
        let mut samplers = vec![
            Sampler::Tripod(Unwind::Dwarf),
            Sampler::Tripod(Unwind::Tables),
            Sampler::Tripod(Unwind::Fp),
        ];
        if self.perf.is_ok() {
            samplers.extend([Sampler::PerfFp, Sampler::PerfDwarf]);
        }
        if self.bpftrace.is_ok() {
            samplers.push(Sampler::Bpftrace);
        }
        if self.offcputime.is_ok() {
            samplers.push(Sampler::Offcputime);
        }
        samplers
    }

    /// The samplers of the Python measurement: tripod-bpf with and without Python frames,
    /// then py-spy in both of its modes.
    pub fn python_samplers(&self) -> Vec<Sampler> {
        let mut samplers = vec![Sampler::Tripod(Unwind::Auto), Sampler::TripodNoPython];
        if self.py_spy.is_ok() {
            samplers.extend([
                Sampler::PySpy { nonblocking: false },
                Sampler::PySpy { nonblocking: true },
            ]);
        }
        samplers
    }

    fn perf(&self) -> &Path {
        &self
            .perf
            .as_ref()
            .expect("perf samplers only run when perf works")
            .0
    }

    fn bpftrace(&self) -> &Path {
        &self
            .bpftrace
            .as_ref()
            .expect("bpftrace only runs when found")
            .0
    }

    fn offcputime(&self) -> &Path {
        &self
            .offcputime
            .as_ref()
            .expect("offcputime only runs when found")
            .0
    }

    fn py_spy(&self) -> &Path {
        &self.py_spy.as_ref().expect("py-spy only runs when found").0
    }
}

fn find_perf() -> Found {
    let path = find_in_path("perf").ok_or("perf is not installed (apt-get install linux-perf)")?;
    let version = probe(Command::new(&path).arg("--version"))
        .ok_or("`perf --version` failed (no perf for this kernel?)")?;
    // Debian's perf wrapper can exist without a perf that works on this kernel: try it.
    let data = std::env::temp_dir().join(format!("tripod-bench-probe-{}.data", std::process::id()));
    let works = probe(
        Command::new(&path)
            .args(["record", "-q", "-e", "cpu-clock", "-o"])
            .arg(&data)
            .args(["--", "true"])
            .stderr(Stdio::null()),
    )
    .is_some();
    let _ = fs::remove_file(&data);
    if !works {
        return Err("`perf record -e cpu-clock -- true` failed".into());
    }
    Ok((path, version.trim().to_owned()))
}

fn find_bpftrace() -> Found {
    let path =
        find_in_path("bpftrace").ok_or("bpftrace is not installed (apt-get install bpftrace)")?;
    let version =
        probe(Command::new(&path).arg("--version")).ok_or("`bpftrace --version` failed")?;
    Ok((path, version.trim().to_owned()))
}

/// py-spy from pip (installed if missing, as `cargo xtask test` does).
pub fn find_py_spy() -> Found {
    let path = crate::setup::py_spy().map_err(|e| format!("{e:#}"))?;
    let version = probe(Command::new(&path).arg("--version")).ok_or("`py-spy --version` failed")?;
    Ok((path, version.trim().to_owned()))
}

/// bpftrace counting (comm, kernel stack, user stack) on a clock or at each switch.
fn bpftrace_command(tools: &Tools, scope: Scope, event: Event) -> Command {
    let probe = match event {
        Event::Clock(hz) => format!("profile:hz:{hz}"),
        // It fires in the thread being switched out, so `pid` is the one that waits.
        Event::OffCpu => "tracepoint:sched:sched_switch".into(),
    };
    let filter = match scope {
        Scope::All => String::new(),
        Scope::Pid(pid) => format!("/pid == {pid}/ "),
    };
    let program = format!("{probe} {filter}{{ @[comm, kstack, ustack] = count(); }}");
    let mut cmd = Command::new(tools.bpftrace());
    // The default of 4096 map entries drops stacks in the many-stacks run.
    cmd.env("BPFTRACE_MAP_KEYS_MAX", "65536")
        .args(["-e", &program]);
    cmd
}

/// bcc's offcputime, the whole machine or one process.
fn offcputime_command(tools: &Tools, scope: Scope) -> Command {
    let mut cmd = Command::new(tools.offcputime());
    if let Scope::Pid(pid) = scope {
        cmd.args(["-p", &pid.to_string()]);
    }
    // Its `Tracing` line must reach the file when it is printed, not at exit.
    cmd.env("PYTHONUNBUFFERED", "1");
    cmd
}

/// `py-spy record` of one process, as raw folded stacks.
fn py_spy_command(tools: &Tools, pid: u32, hz: u32, nonblocking: bool, output: &Path) -> Command {
    let mut cmd = Command::new(tools.py_spy());
    // `raw` is folded stacks, one `frame (file:line)` per frame.
    cmd.args([
        "record",
        "--pid",
        &pid.to_string(),
        "--rate",
        &hz.to_string(),
    ])
    .args(["--format", "raw", "-o"])
    .arg(output);
    if nonblocking {
        cmd.arg("--nonblocking");
    }
    cmd
}

/// bcc's tools directory, or Debian's `-bpfcc` name on PATH.
fn find_offcputime() -> Found {
    let bcc_tools = Path::new("/usr/share/bcc/tools/offcputime");
    let path = if bcc_tools.is_file() {
        bcc_tools.to_owned()
    } else {
        find_in_path("offcputime-bpfcc")
            .ok_or("bcc's offcputime is not installed (apt-get install bpfcc-tools)")?
    };
    // It has no --version.
    Ok((path, "bcc offcputime".into()))
}

impl Sampler {
    pub fn is_tripod(self) -> bool {
        matches!(self, Sampler::Tripod(_) | Sampler::TripodNoPython)
    }

    /// What [`Stopped::off_cpu_recorded`] counts for this sampler.
    pub fn off_cpu_unit(self) -> &'static str {
        match self {
            Sampler::Tripod(_) | Sampler::TripodNoPython | Sampler::Offcputime => "µs off-CPU",
            Sampler::PerfFp | Sampler::PerfDwarf => "samples (one per switch)",
            Sampler::PySpy { .. } => "samples",
            Sampler::Bpftrace => "switches",
        }
    }

    /// Starts the sampler writing into `dir` and waits until it samples.
    pub fn start(
        self,
        tools: &Tools,
        scope: Scope,
        event: Event,
        format: Format,
        dir: &Path,
    ) -> Result<Running> {
        self.start_with(tools, scope, event, format, dir, &[])
    }

    /// [`Sampler::start`] with `extra` arguments at the end of the command line.
    pub fn start_with(
        self,
        tools: &Tools,
        scope: Scope,
        event: Event,
        format: Format,
        dir: &Path,
        extra: &[&str],
    ) -> Result<Running> {
        let log = dir.join("sampler.log");
        let output = dir.join(self.output_name(format));
        let mut cmd = match self {
            Sampler::Tripod(_) | Sampler::TripodNoPython => {
                self.tripod_command(tools, scope, event, format, &output)
            }
            Sampler::PerfFp | Sampler::PerfDwarf => self.perf_command(tools, scope, event, &output),
            Sampler::Bpftrace => bpftrace_command(tools, scope, event),
            Sampler::Offcputime => {
                if event != Event::OffCpu {
                    bail!("{self} records only off-CPU time");
                }
                offcputime_command(tools, scope)
            }
            Sampler::PySpy { nonblocking } => {
                let (Event::Clock(hz), Scope::Pid(pid)) = (event, scope) else {
                    bail!("{self} samples one process on a clock");
                };
                py_spy_command(tools, pid, hz, nonblocking, &output)
            }
        };
        cmd.args(extra);
        let log_file = fs::File::create(&log)?;
        cmd.stdin(Stdio::null()).stderr(log_file.try_clone()?);
        if self.prints_output() {
            cmd.stdout(fs::File::create(&output)?);
        } else {
            cmd.stdout(log_file);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {self}: {cmd:?}"))?;
        let mut running = Running {
            sampler: self,
            child,
            started: Instant::now(),
            log,
            output,
            format,
        };
        running.wait_ready()?;
        Ok(running)
    }

    /// The name of the file the sampler's output goes to.
    fn output_name(self, format: Format) -> &'static str {
        match self {
            Sampler::Tripod(_) | Sampler::TripodNoPython if format == Format::Log => "tripod.log",
            Sampler::Tripod(_) | Sampler::TripodNoPython => "tripod.folded",
            Sampler::PerfFp | Sampler::PerfDwarf => "perf.data",
            Sampler::Bpftrace => "bpftrace.out",
            Sampler::Offcputime => "offcputime.out",
            Sampler::PySpy { .. } => "py-spy.raw",
        }
    }

    /// tripod-bpf (either unwinder, or without Python frames).
    fn tripod_command(
        self,
        tools: &Tools,
        scope: Scope,
        event: Event,
        format: Format,
        output: &Path,
    ) -> Command {
        let mut cmd = Command::new(&tools.tripod);
        match scope {
            Scope::All => cmd.arg("--all"),
            Scope::Pid(pid) => cmd.args(["--pid", &pid.to_string()]),
        };
        match event {
            Event::Clock(hz) => cmd.args(["-F", &hz.to_string()]),
            Event::OffCpu => cmd.args(["--mode", "off-cpu"]),
        };
        let format = if format == Format::Log {
            "log"
        } else {
            "folded"
        };
        let unwind = match self {
            Sampler::Tripod(unwind) => unwind,
            _ => Unwind::Auto,
        };
        cmd.args(["--unwind", unwind.arg(), "-f", format, "-o"])
            .arg(output);
        if self == Sampler::TripodNoPython {
            cmd.arg("--no-python");
        }
        cmd
    }

    /// `perf record` with frame pointers (`-g`) or stack copies (`--call-graph dwarf`).
    fn perf_command(self, tools: &Tools, scope: Scope, event: Event, output: &Path) -> Command {
        let mut cmd = Command::new(tools.perf());
        cmd.arg("record");
        match event {
            Event::Clock(hz) => cmd.args(["-F", &hz.to_string()]),
            // perf records every hit of a tracepoint (a period of 1) by default.
            Event::OffCpu => cmd.args(["-e", "sched:sched_switch"]),
        };
        cmd.arg("-o").arg(output);
        if self == Sampler::PerfFp {
            cmd.arg("-g");
        } else {
            cmd.args(["--call-graph", "dwarf"]);
        }
        match scope {
            Scope::All => cmd.arg("-a"),
            Scope::Pid(pid) => cmd.args(["-p", &pid.to_string()]),
        };
        cmd
    }

    /// Whether the sampler prints its results on stdout (the others write their output file).
    fn prints_output(self) -> bool {
        matches!(self, Sampler::Bpftrace | Sampler::Offcputime)
    }

    /// The name of the sampler recording `event`, as a user would run it.
    pub fn describe(self, event: Event) -> String {
        match (self, event) {
            (_, Event::Clock(_)) | (Sampler::Offcputime | Sampler::PySpy { .. }, _) => {
                self.to_string()
            }
            (Sampler::TripodNoPython, Event::OffCpu) => {
                "tripod-bpf --mode off-cpu --no-python".into()
            }
            (Sampler::Tripod(unwind), Event::OffCpu) => {
                format!("tripod-bpf --mode off-cpu --unwind {}", unwind.arg())
            }
            (Sampler::PerfFp, Event::OffCpu) => "perf record -e sched:sched_switch -g".into(),
            (Sampler::PerfDwarf, Event::OffCpu) => {
                "perf record -e sched:sched_switch --call-graph dwarf".into()
            }
            (Sampler::Bpftrace, Event::OffCpu) => "bpftrace tracepoint:sched:sched_switch".into(),
        }
    }
}

/// A sampler that is recording.
pub struct Running {
    pub sampler: Sampler,
    child: Child,
    started: Instant,
    /// Its stderr (and stdout, except for bpftrace).
    log: PathBuf,
    output: PathBuf,
    format: Format,
}

impl Running {
    fn wait_ready(&mut self) -> Result<()> {
        let (file, needle) = match self.sampler {
            // `Sampling at N Hz`, `Sampling off-CPU time` or `Sampling wall-clock time`.
            Sampler::Tripod(_) | Sampler::TripodNoPython => (&self.log, Some("[tripod] Sampling ")),
            Sampler::Bpftrace => (&self.output, Some("Attaching")),
            Sampler::Offcputime => (&self.output, Some("Tracing off-CPU time")),
            Sampler::PySpy { .. } => (&self.log, Some("py-spy> Sampling process")),
            Sampler::PerfFp | Sampler::PerfDwarf => (&self.log, None),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while let Some(needle) = needle {
            if proc::file_contains(file, needle) {
                break;
            }
            self.ensure_running()?;
            if Instant::now() > deadline {
                bail!("{} did not start within {START_TIMEOUT:?}", self.sampler);
            }
            thread::sleep(Duration::from_millis(5));
        }
        thread::sleep(SETTLE);
        self.ensure_running()
    }

    /// An error if the sampler has already exited (a bad flag, no permission, ...).
    fn ensure_running(&self) -> Result<()> {
        match proc::wait_exit(self.pid(), Duration::ZERO)? {
            Some(exit) => bail!(
                "{} exited while starting (exit code {}): {}",
                self.sampler,
                exit.code,
                log_tail(&self.log)
            ),
            None => Ok(()),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time used so far by the sampler's threads, in nanoseconds.
    pub fn cpu_ns(&self) -> u64 {
        proc::cpu_ns(self.pid())
    }

    /// Context switches of all its threads so far (see [`proc::context_switches`]).
    pub fn switches(&self) -> u64 {
        proc::context_switches(self.pid())
    }

    /// Current resident set size.
    pub fn rss_kib(&self) -> Option<u64> {
        proc::status_kib(self.pid(), "VmRSS")
    }

    /// Sends SIGINT (what Ctrl-C does) and waits for the sampler to finish writing.
    pub fn stop(self) -> Result<Stopped> {
        let pid = self.pid();
        let asked = Instant::now();
        proc::signal(pid, libc::SIGINT);
        let Some(exit) = proc::wait_exit(pid, STOP_TIMEOUT)? else {
            proc::signal(pid, libc::SIGKILL);
            let _ = proc::wait_exit(pid, Duration::from_secs(10));
            bail!(
                "{} did not exit within {STOP_TIMEOUT:?} of SIGINT",
                self.sampler
            );
        };
        // perf exits with 130 after SIGINT by design (it re-raises); anything else is a crash.
        let expected = exit.success() || (exit.code == 130 && !self.sampler.is_tripod());
        if !expected {
            bail!(
                "{} failed (exit code {}): {}",
                self.sampler,
                exit.code,
                log_tail(&self.log)
            );
        }
        Ok(Stopped {
            sampler: self.sampler,
            exit,
            stop_latency: exit.at - asked,
            lifetime: exit.at - self.started,
            log: self.log.clone(),
            output: self.output.clone(),
            format: self.format,
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Only reached on an error path: a sampler must not outlive the measurement.
        if self.child.try_wait().is_ok_and(|s| s.is_none()) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A sampler that has exited.
pub struct Stopped {
    pub sampler: Sampler,
    pub exit: Exit,
    /// From SIGINT to the process being gone (its output is then complete).
    pub stop_latency: Duration,
    /// From start to exit.
    pub lifetime: Duration,
    log: PathBuf,
    output: PathBuf,
    format: Format,
}

/// The cost of turning a sampler's data into folded stacks after it exited.
#[derive(Clone, Copy, Debug, Default)]
pub struct PostCost {
    pub cpu: Duration,
    pub wall: Duration,
    pub max_rss_kib: u64,
}

impl Stopped {
    /// Samples tripod-bpf counted, from its closing `[tripod] <why it stopped>: N samples,
    /// M distinct stacks, …` line.
    pub fn tripod_samples(&self) -> Option<u64> {
        self.tripod_done_number(0)
    }

    /// Distinct stacks tripod-bpf counted (per process, kernel and user parts together).
    pub fn tripod_distinct_stacks(&self) -> Option<u64> {
        self.tripod_done_number(1)
    }

    /// The last line of the sampler's log that starts with `prefix`.
    pub fn log_line(&self, prefix: &str) -> Option<String> {
        let log = fs::read_to_string(&self.log).ok()?;
        log.lines()
            .rev()
            .find(|line| line.starts_with(prefix))
            .map(str::to_owned)
    }

    /// The `index`th comma-separated number of tripod-bpf's closing line.
    fn tripod_done_number(&self, index: usize) -> Option<u64> {
        let log = fs::read_to_string(&self.log).ok()?;
        let done = log
            .lines()
            .filter(|line| line.starts_with("[tripod] ") && line.contains(" distinct stacks, "))
            .find_map(|line| line.split_once(": ").map(|(_, rest)| rest))?;
        done.split(", ")
            .nth(index)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// The output as folded stacks, and what producing them cost beyond the sampler itself.
    pub fn folded(&self, tools: &Tools) -> Result<(Folded, PostCost)> {
        self.folded_of(tools, None)
    }

    /// As [`Stopped::folded`], with perf's stacks of processes named `comm` only (others may
    /// be left in for other samplers). `perf script --comms` skips the other samples before
    /// unwinding them: after a whole-machine `--call-graph dwarf` recording on a machine
    /// busy compiling, unwinding every sample takes `perf script` longer than
    /// [`STOP_TIMEOUT`].
    pub fn folded_of(&self, tools: &Tools, comm: Option<&str>) -> Result<(Folded, PostCost)> {
        let folded = match self.sampler {
            Sampler::Tripod(_) | Sampler::TripodNoPython => {
                if self.format != Format::Folded {
                    bail!("tripod-bpf wrote a log here, not folded stacks");
                }
                (Folded::parse(&read(&self.output)?), PostCost::default())
            }
            Sampler::Bpftrace => (
                Folded::from_bpftrace(&read(&self.output)?),
                PostCost::default(),
            ),
            Sampler::Offcputime => (
                Folded::from_offcputime(&read(&self.output)?),
                PostCost::default(),
            ),
            Sampler::PySpy { .. } => (Folded::parse(&read(&self.output)?), PostCost::default()),
            Sampler::PerfFp | Sampler::PerfDwarf => self.perf_folded(tools, comm)?,
        };
        if folded.0.samples() == 0 {
            bail!(
                "{} produced no samples: {}",
                self.sampler,
                log_tail(&self.log)
            );
        }
        Ok(folded)
    }

    /// How much of `comm`'s off-CPU time the sampler recorded, in [`Sampler::off_cpu_unit`]s.
    pub fn off_cpu_recorded(&self, tools: &Tools, comm: &str) -> Result<u64> {
        match self.sampler {
            // Its own count from the closing line: `perf script` with dwarf stacks would take
            // minutes over the gigabytes of stack copies, and -p records only the target.
            Sampler::PerfFp | Sampler::PerfDwarf => self.perf_samples().with_context(|| {
                format!(
                    "{} printed no sample count: {}",
                    self.sampler,
                    log_tail(&self.log)
                )
            }),
            _ => Ok(self.folded(tools)?.0.of_comm(comm).map(|(_, n)| n).sum()),
        }
    }

    /// The N of perf's closing `[ perf record: Captured and wrote X MB F (N samples) ]`.
    fn perf_samples(&self) -> Option<u64> {
        let log = fs::read_to_string(&self.log).ok()?;
        let captured = log.lines().find(|l| l.contains("perf record: Captured"))?;
        let (_, count) = captured.rsplit_once('(')?;
        count.split_whitespace().next()?.parse().ok()
    }

    /// What the sampler said it lost or dropped, one line each (none if nothing).
    pub fn loss_reports(&self) -> Vec<String> {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|line| {
                let line = line.to_lowercase();
                ["lost", "dropped", "could not be stored"]
                    .iter()
                    .any(|word| line.contains(word))
            })
            .map(|line| line.trim().trim_start_matches("[tripod] ").to_owned())
            .collect()
    }

    /// `perf script` into a file, then inferno's collapse-perf (what stackcollapse-perf.pl does).
    fn perf_folded(&self, tools: &Tools, comm: Option<&str>) -> Result<(Folded, PostCost)> {
        let script = self.output.with_extension("script");
        let started = Instant::now();
        let mut cmd = Command::new(tools.perf());
        if let Some(comm) = comm {
            cmd.args(["script", "--comms", comm]);
        } else {
            cmd.arg("script");
        }
        let child = cmd
            .arg("-i")
            .arg(&self.output)
            // The fields collapsing needs, without the period: with it, inferno (like
            // stackcollapse-perf.pl) weighs each sample by its nanoseconds, not as one.
            .args(["-F", "comm,pid,tid,time,event,ip,sym,dso"])
            .stdin(Stdio::null())
            .stdout(fs::File::create(&script)?)
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start perf script")?;
        let exit = proc::wait_exit(child.id(), STOP_TIMEOUT)?.context("perf script hung")?;
        if !exit.success() {
            bail!("perf script failed (exit code {})", exit.code);
        }

        let collapse_cpu = proc::thread_cpu();
        let mut options = perf_collapse::Options::default();
        options.annotate_kernel = true;
        // One thread, so this thread's CPU time is the whole cost.
        options.nthreads = 1;
        let mut folded_text = Vec::new();
        perf_collapse::Folder::from(options)
            .collapse(BufReader::new(fs::File::open(&script)?), &mut folded_text)
            .context("collapsing perf script output")?;
        let cost = PostCost {
            cpu: exit.cpu + (proc::thread_cpu() - collapse_cpu),
            wall: started.elapsed(),
            max_rss_kib: exit.max_rss_kib,
        };
        let _ = fs::remove_file(&script);
        Ok((Folded::parse(&String::from_utf8_lossy(&folded_text)), cost))
    }

    /// Size of what the sampler wrote.
    pub fn output_bytes(&self) -> u64 {
        fs::metadata(&self.output).map_or(0, |m| m.len())
    }
}

fn read(path: &Path) -> Result<String> {
    fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .with_context(|| format!("reading {}", path.display()))
}

/// The last lines a sampler printed, for error messages.
fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    if tail.is_empty() {
        "(it printed nothing)".into()
    } else {
        tail
    }
}
