//! `cargo xtask bench`: tripod-bpf side by side with perf, bpftrace and py-spy on this machine.
//!
//! Ten measurements (see BENCHMARKS.md for what each means), each run for every sampler
//! (or dump tool) found here, in rounds that visit every configuration once so that machine
//! drift hits them all alike. The results go to stdout and into BENCHMARKS.md. The bench
//! reports; it does not judge, except that a sampler that crashes or records nothing makes
//! it fail.

mod churn;
mod dump;
mod fixtures;
mod latency;
mod merge;
mod offcpu;
mod overhead;
mod proc;
mod python;
mod quality;
mod report;
mod samplers;
mod shortlived;
mod sideband;
mod stacks;
mod stats;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use clap::ValueEnum;

use crate::{
    build::build,
    cmd::{is_root, probe, workspace_root},
    setup::setup,
};
use fixtures::Fixtures;
use proc::Fixture;
use samplers::{Event, Format, Sampler, Scope, Stopped, Tools};

/// One of the measurements (two come from the same runs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Measurement {
    /// Target slowdown and sampler cost (measurements 1 and 2, from the same runs)
    Overhead,
    /// Complete-chain share with and without frame pointers, and the 3:1 split
    Quality,
    /// Time from SIGINT to complete output after many distinct stacks
    Latency,
    /// Sampler memory over a long run with short-lived processes
    Churn,
    /// Target slowdown under off-CPU recording, on a context-switch-heavy fixture
    #[value(name = "offcpu")]
    OffCpu,
    /// Time to dump the stacks of a process with 1,000 threads
    Dump,
    /// Target slowdown and sampler cost on a CPU-bound Python program, next to py-spy
    Python,
    /// Complete chains of 4 ms processes run back to back, next to perf
    #[value(name = "shortlived")]
    ShortLived,
    /// Mapping records from the perf sideband or an eBPF probe, on the churn workload
    Sideband,
}

/// How much to measure.
#[derive(Clone)]
pub struct Options {
    /// Rounds of each overhead, off-CPU and dump configuration; the tables show medians
    /// over them.
    pub runs: usize,
    /// Rounds of the quality, accuracy, latency, short-lived-processes, steady-state and
    /// idle runs.
    pub short_runs: usize,
    /// Seconds of CPU work each fixture thread does in an overhead run, and seconds of
    /// ping-pong in an off-CPU run (both without a sampler).
    pub work_seconds: f64,
    /// Seconds each quality and accuracy run samples for.
    pub sample_seconds: f64,
    /// Seconds of the many-stacks run before SIGINT.
    pub latency_seconds: f64,
    /// Seconds of the churn run.
    pub churn_seconds: f64,
    /// Seconds of Python work in a Python run (without a sampler).
    pub python_seconds: f64,
    /// Seconds each short-lived-processes run samples for.
    pub shortlived_seconds: f64,
    pub only: Vec<Measurement>,
    pub output: PathBuf,
    /// The command line, for BENCHMARKS.md.
    pub command: String,
}

impl Options {
    fn wants(&self, measurement: Measurement) -> bool {
        self.only.is_empty() || self.only.contains(&measurement)
    }
}

/// What every measurement shares: the programs, a scratch directory and the failures so far.
pub struct Bench {
    tools: Tools,
    fixtures: Fixtures,
    scratch: PathBuf,
    failures: Vec<String>,
}

impl Bench {
    /// An empty directory for one sampler run (perf data files are large: one at a time).
    fn run_dir(&self) -> Result<PathBuf> {
        let dir = self.scratch.join("run");
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("emptying {}", dir.display()))?;
        }
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// Attaches `sampler` (if any) to `fixture`, which waits for SIGUSR1 to start its work,
    /// signals it, reads the result line it prints when done (within `timeout`), then stops
    /// the sampler. Returns the line, and the sampler with its CPU seconds while the work ran.
    /// The fixture stays alive until the sampler has written its output, so that every
    /// sampler can still read its memory and mappings; the caller stops it.
    fn record_signalled(
        &self,
        fixture: &mut Fixture,
        sampler: Option<Sampler>,
        event: Event,
        timeout: Duration,
    ) -> Result<(String, Option<(Stopped, f64)>)> {
        let dir = self.run_dir()?;
        let scope = Scope::Pid(fixture.pid());
        let running = sampler
            .map(|s| s.start(&self.tools, scope, event, Format::Folded, &dir))
            .transpose()?;
        let cpu_before = running.as_ref().map_or(0, |r| r.cpu_ns());
        // The fixture waits for this signal, so the sampler is attached before the work starts.
        proc::signal(fixture.pid(), libc::SIGUSR1);
        let line = fixture.next_line(timeout)?;
        let Some(running) = running else {
            return Ok((line, None));
        };
        let cpu = running.cpu_ns().saturating_sub(cpu_before) as f64 / 1e9;
        Ok((line, Some((running.stop()?, cpu))))
    }

    /// Records a failed run; the bench goes on and exits non-zero at the end.
    fn failed(&mut self, what: &str, error: anyhow::Error) {
        let line = format!("{what}: {error:#}");
        eprintln!("[bench] FAILED: {line}");
        self.failures.push(line);
    }
}

fn say(line: &str) {
    eprintln!("[bench] {line}");
}

/// The configurations of round `round` of `rounds`, each once, starting at a different one
/// each round so that none always runs first.
fn round_order(round: usize, rounds: usize, configs: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..configs).collect();
    order.rotate_left(round * configs / rounds.max(1));
    order
}

pub fn main(options: Options) -> Result<()> {
    if !is_root() {
        bail!("the bench loads eBPF programs and runs perf system-wide: run it as root");
    }
    let toolchain = setup()?;
    let tripod = build(&toolchain, false)?;
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or(root.join("target"), |t| root.join(t));
    let scratch = target.join("bench");
    let fixtures = Fixtures::build(&scratch.join("fixtures"))?;
    let mut bench = Bench {
        tools: find_tools(tripod, &options),
        fixtures,
        scratch,
        failures: Vec::new(),
    };
    let started = Instant::now();
    let mut results = report::Results::new(&options, machine(), &bench.tools);
    measure_all(&mut bench, &options, &mut results)?;
    results.failures = bench.failures.clone();
    results.duration = started.elapsed();
    let output = root.join(&options.output);
    write_results(&options, &results, &output)?;
    let _ = fs::remove_dir_all(bench.scratch.join("run"));

    if !bench.failures.is_empty() {
        bail!(
            "{} sampler run(s) failed (listed above and in {})",
            bench.failures.len(),
            output.display()
        );
    }
    Ok(())
}

/// The samplers to compare with, each found or skipped with a reason said.
fn find_tools(tripod: PathBuf, options: &Options) -> Tools {
    let mut tools = Tools::find(tripod);
    if options.wants(Measurement::Python) {
        tools.py_spy = samplers::find_py_spy();
    }
    say(&format!("tripod-bpf: {}", tools.tripod_version));
    for (name, found) in [
        ("perf", &tools.perf),
        ("bpftrace", &tools.bpftrace),
        ("offcputime", &tools.offcputime),
        ("py-spy", &tools.py_spy),
    ] {
        match found {
            Ok((path, version)) => say(&format!("{name}: {version} ({})", path.display())),
            Err(why) => say(&format!("{name}: skipped: {why}")),
        }
    }
    tools
}

/// Runs the measurements `options` asks for, in the order of BENCHMARKS.md.
fn measure_all(bench: &mut Bench, options: &Options, results: &mut report::Results) -> Result<()> {
    if options.wants(Measurement::Overhead) {
        results.overhead = Some(overhead::measure(bench, options)?);
    }
    if options.wants(Measurement::Quality) {
        results.quality = Some(quality::measure(bench, options)?);
    }
    if options.wants(Measurement::Latency) {
        results.latency = Some(latency::measure(bench, options)?);
    }
    if options.wants(Measurement::Churn) {
        results.churn = Some(churn::measure(bench, options)?);
    }
    if options.wants(Measurement::OffCpu) {
        results.off_cpu = Some(offcpu::measure(bench, options)?);
    }
    if options.wants(Measurement::Dump) {
        results.dump = Some(dump::measure(bench, options)?);
    }
    if options.wants(Measurement::Python) {
        results.python = Some(python::measure(bench, options)?);
    }
    if options.wants(Measurement::ShortLived) {
        results.shortlived = Some(shortlived::measure(bench, options)?);
    }
    if options.wants(Measurement::Sideband) {
        results.sideband = Some(sideband::measure(bench, options)?);
    }
    Ok(())
}

/// Prints the report and writes it to `output`; a partial run updates its
/// own sections of the last full run's file.
fn write_results(options: &Options, results: &report::Results, output: &Path) -> Result<()> {
    let mut markdown = report::render(results);
    println!("{markdown}");
    if let (false, Ok(old)) = (options.only.is_empty(), fs::read_to_string(output)) {
        let run = format!(
            "`{}` on {} at commit {} ({:.0} min)",
            options.command,
            results.machine.date,
            results.machine.commit,
            results.duration.as_secs_f64() / 60.0
        );
        markdown = merge::merge(&old, &markdown, &run);
    }
    fs::write(output, &markdown).with_context(|| format!("writing {}", output.display()))?;
    say(&format!("results written to {}", output.display()));
    Ok(())
}

/// What the tables were measured on.
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
    /// Whether a hardware `cycles` event can be opened (it cannot in most VMs).
    pub hardware_pmu: bool,
    pub date: String,
    pub commit: String,
}

fn machine() -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, m)| m.trim())
        })
        .unwrap_or("unknown CPU")
        .to_owned();
    let memory_kib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
        })
        .unwrap_or(0);
    let text = |cmd: &mut Command| probe(cmd).unwrap_or_default().trim().to_owned();
    let dirty = !text(
        Command::new("git")
            .current_dir(workspace_root())
            .args(["status", "--porcelain"]),
    )
    .is_empty();
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model,
        memory_gib: memory_kib as f64 / (1024.0 * 1024.0),
        kernel: text(Command::new("uname").arg("-r")),
        hardware_pmu: has_hardware_pmu(),
        date: text(Command::new("date").args(["-u", "+%Y-%m-%d"])),
        commit: format!(
            "{}{}",
            text(Command::new("git").current_dir(workspace_root()).args([
                "rev-parse",
                "--short",
                "HEAD"
            ])),
            if dirty {
                " (with uncommitted changes)"
            } else {
                ""
            }
        ),
    }
}

/// Opens (and closes) a hardware cycles counter on this thread, as perf would.
fn has_hardware_pmu() -> bool {
    // perf_event_attr is 136 bytes in current kernels; only type, size and config matter
    // here (PERF_TYPE_HARDWARE = 0, PERF_COUNT_HW_CPU_CYCLES = 0), all else zero.
    let mut attr = [0u8; 136];
    attr[4..8].copy_from_slice(&136u32.to_ne_bytes());
    // SAFETY: attr is a valid, zero-padded perf_event_attr of the size it declares.
    let fd = unsafe { libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), 0, -1, -1, 0u64) };
    if fd >= 0 {
        // SAFETY: fd was just returned to us and is closed once.
        unsafe { libc::close(fd as i32) };
    }
    fd >= 0
}
