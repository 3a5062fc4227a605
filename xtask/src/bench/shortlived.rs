//! Measurement 10: short-lived processes. A shell loop runs `chain --seconds 0.004` (the
//! end-to-end tests' fixture: main;alpha;beta;gamma;spin for 4 ms, then exit) over and
//! over while a sampler records the whole machine at 999 Hz. Each process is new to the
//! sampler and gone within milliseconds, so its mappings must be known from the kernel's
//! records, not from /proc, by the time its samples are unwound and named.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{ensure, Context as _, Result};

use super::{
    fixtures::{comm, WORK_CHAIN},
    proc::{self, Fixture},
    round_order,
    samplers::{Event, Format, Sampler, Scope, Unwind},
    say,
    stacks::{holds_chain, is_kernel, ChainBreakdown, Folded},
    stats::median,
    Bench, Options,
};

pub const HZ: u32 = 999;
/// How long each process spins in its chain.
pub const PROCESS_SECONDS: &str = "0.004";
/// The share of complete stacks issue 16 asks of tripod-bpf.
pub const GOAL_PERCENT: f64 = 95.0;
/// What perf reached in the manual run the issue quotes (`-g` on the frame-pointer build
/// and `--call-graph dwarf` on the other alike).
pub const PERF_REFERENCE_PERCENT: f64 = 88.0;

/// The shell loop: `ready` for [`Fixture::start`], then the fixture (`$0`) over and over;
/// on SIGTERM it finishes the current run and prints how many ran.
fn shell_loop() -> String {
    format!(
        "echo ready $$; n=0; trap 'echo runs $n; exit 0' TERM; \
         while :; do \"$0\" --seconds {PROCESS_SECONDS} >/dev/null; n=$((n+1)); done"
    )
}

/// A sampler and the build of the fixture it records.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    pub sampler: Sampler,
    /// Whether the fixture has frame pointers.
    pub fp_build: bool,
}

impl Config {
    /// The sampler as run here, whole machine included.
    pub fn describe(self) -> String {
        match self.sampler {
            Sampler::Tripod(_) => self
                .sampler
                .to_string()
                .replace("tripod-bpf", "tripod-bpf --all"),
            Sampler::PerfFp => "perf record -a -g".into(),
            Sampler::PerfDwarf => "perf record -a --call-graph dwarf".into(),
            other => other.to_string(),
        }
    }

    /// Whether issue 16's goal applies (tripod-bpf's rows) rather than perf's reference.
    pub fn has_goal(self) -> bool {
        self.sampler.is_tripod()
    }
}

#[derive(Clone, Debug, Default)]
pub struct Run {
    /// Processes the loop ran to the end, from its own count.
    pub processes: Option<u64>,
    /// The 1-minute load average as the loop stopped: other work on the machine.
    pub load: Option<f64>,
    pub breakdown: ChainBreakdown,
    /// What the sampler said it lost or dropped, in its own words.
    pub losses: Vec<String>,
}

/// Section 10's measurements.
#[derive(Clone, Debug, Default)]
pub struct Measured {
    /// Each sampler's runs.
    pub configs: Vec<(Config, Vec<Run>)>,
    /// Each build run alone (`chain_nofp`, then `chain_fp`).
    pub alone: Vec<Alone>,
}

/// A build of the fixture run alone, one process after another, with no sampler: how
/// much of a process's CPU time its chain can have. The rest is exec, the dynamic loader
/// and exit, which no sampler can show as the chain.
#[derive(Clone, Copy, Debug)]
pub struct Alone {
    pub fp_build: bool,
    pub processes: usize,
    /// User and system CPU time of one process, exec to exit (median).
    pub cpu_per_process: Duration,
}

impl Alone {
    /// The chain's timer time as a share of the process's CPU time: about the most of
    /// its samples any sampler can find in the chain.
    pub fn chain_percent(&self) -> Option<f64> {
        let chain: f64 = PROCESS_SECONDS.parse().ok()?;
        let cpu = self.cpu_per_process.as_secs_f64();
        (cpu > 0.0).then(|| (100.0 * chain / cpu).min(100.0))
    }
}

/// How many processes each build runs alone.
const ALONE_PROCESSES: usize = 200;

pub fn measure(bench: &mut Bench, options: &Options) -> Result<Measured> {
    let mut alone = Vec::new();
    for fp_build in [false, true] {
        match run_alone(fixture_of(bench, fp_build), fp_build) {
            Ok(run) => alone.push(run),
            Err(e) => bench.failed("shortlived: the fixture alone", e),
        }
    }
    let configs = run_samplers(bench, options);
    Ok(Measured { configs, alone })
}

/// Runs a build `ALONE_PROCESSES` times, one after another, timing each from its rusage.
fn run_alone(fixture: &Path, fp_build: bool) -> Result<Alone> {
    let mut cpu = Vec::with_capacity(ALONE_PROCESSES);
    for _ in 0..ALONE_PROCESSES {
        let child = Command::new(fixture)
            .args(["--seconds", PROCESS_SECONDS])
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", fixture.display()))?;
        let exit = proc::wait_exit(child.id(), Duration::from_secs(10))?
            .with_context(|| format!("{} did not exit within 10 s", fixture.display()))?;
        ensure!(
            exit.code == 0,
            "{} exited with {}",
            fixture.display(),
            exit.code
        );
        cpu.push(exit.cpu.as_secs_f64());
    }
    let median = median(&cpu).context("no process ran")?;
    say(&format!(
        "shortlived: {} alone: {:.2} ms of CPU per process",
        comm(fixture),
        median * 1e3
    ));
    Ok(Alone {
        fp_build,
        processes: ALONE_PROCESSES,
        cpu_per_process: Duration::from_secs_f64(median),
    })
}

fn fixture_of(bench: &Bench, fp_build: bool) -> &Path {
    if fp_build {
        &bench.fixtures.chain_fp
    } else {
        &bench.fixtures.chain_nofp
    }
}

fn run_samplers(bench: &mut Bench, options: &Options) -> Vec<(Config, Vec<Run>)> {
    let configs = configs(bench);
    let mut results: Vec<(Config, Vec<Run>)> = configs.iter().map(|c| (*c, Vec::new())).collect();
    let rounds = options.short_runs;
    for round in 0..rounds {
        for index in round_order(round, rounds, results.len()) {
            let (config, runs) = &mut results[index];
            let label = config.describe();
            match run_once(bench, *config, options.shortlived_seconds) {
                Ok(run) => {
                    let (all, work) = (run.breakdown.share(), run.breakdown.share_of_work());
                    say(&format!(
                        "shortlived {}/{rounds}: {label}: {} processes, {}/{} complete \
                         ({:.1}%), {:.1}% of the work's samples",
                        round + 1,
                        run.processes.map_or("?".into(), |n| n.to_string()),
                        all.hits,
                        all.of,
                        all.percent().unwrap_or(f64::NAN),
                        work.percent().unwrap_or(f64::NAN)
                    ));
                    runs.push(run);
                }
                Err(e) => bench.failed(&format!("shortlived: {label}"), e),
            }
        }
    }
    results
}

/// tripod-bpf's modes on the build each is meant for (`auto` as users run it, on what
/// distributions ship), then perf's two modes likewise.
fn configs(bench: &Bench) -> Vec<Config> {
    let config = |sampler, fp_build| Config { sampler, fp_build };
    let mut configs = vec![
        config(Sampler::Tripod(Unwind::Dwarf), false),
        config(Sampler::Tripod(Unwind::Fp), true),
        config(Sampler::Tripod(Unwind::Auto), false),
    ];
    if bench.tools.perf.is_ok() {
        configs.extend([
            config(Sampler::PerfFp, true),
            config(Sampler::PerfDwarf, false),
        ]);
    }
    configs
}

fn run_once(bench: &Bench, config: Config, seconds: f64) -> Result<Run> {
    let fixture = fixture_of(bench, config.fp_build);
    let dir = bench.run_dir()?;
    let running = config.sampler.start(
        &bench.tools,
        Scope::All,
        Event::Clock(HZ),
        Format::Folded,
        &dir,
    )?;
    let program = fixture.to_str().context("fixture paths are UTF-8")?;
    let mut shell = Fixture::start(Path::new("sh"), &["-c", &shell_loop(), program])?;
    thread::sleep(Duration::from_secs_f64(seconds));
    let load = load_average();
    // SIGTERM to the shell alone: it lets the current process finish, then says how many ran.
    proc::signal(shell.pid(), libc::SIGTERM);
    let processes = shell
        .next_line(Duration::from_secs(10))
        .ok()
        .and_then(|line| line.strip_prefix("runs ")?.parse().ok());
    shell.stop()?;
    let stopped = running.stop()?;
    let losses = stopped.loss_reports();
    let name = comm(fixture);
    let (folded, _) = stopped.folded_of(&bench.tools, Some(name))?;
    let breakdown = folded.chain_breakdown(name, WORK_CHAIN);
    ensure!(
        breakdown.samples() > 0,
        "{} recorded no samples of {name} with a user frame",
        config.describe()
    );
    // The run directory is emptied by the next run: keep what a reader needs to see why
    // stacks were incomplete.
    let misses = bench.scratch.join("shortlived").join(slug(config));
    write_misses(&misses, &folded, name)?;
    Ok(Run {
        processes,
        load,
        breakdown,
        losses,
    })
}

/// The first field of /proc/loadavg.
fn load_average() -> Option<f64> {
    fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A file name for a configuration's misses (the last round's).
fn slug(config: Config) -> PathBuf {
    let name: String = config
        .describe()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    PathBuf::from(format!("{name}.misses"))
}

/// How many of the commonest incomplete stacks to keep.
const MISSES_KEPT: usize = 40;

/// The commonest stacks of `comm` that count against the share (a user frame, not the
/// complete chain), folded, most samples first.
fn write_misses(path: &Path, folded: &Folded, comm: &str) -> Result<()> {
    let mut misses: Vec<(&[String], u64)> = folded
        .of_comm(comm)
        .filter(|(frames, _)| {
            frames.iter().any(|f| !is_kernel(f)) && !holds_chain(frames, WORK_CHAIN)
        })
        .collect();
    misses.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let mut text = String::new();
    for (frames, count) in misses.iter().take(MISSES_KEPT) {
        let _ = writeln!(text, "{comm};{} {count}", frames.join(";"));
    }
    let dir = path.parent().context("a misses file has a directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
