//! Measurements 1 and 2, from the same runs: a fixed amount of CPU-bound work on both CPUs
//! (`work_fp --threads 2`), first with no sampler, then under each sampler recording the
//! whole machine at 99 and 999 Hz. The fixture's wall and CPU time give the target
//! slowdown; the sampler's own CPU time, wake-ups and memory give its cost. Then each
//! sampler records the machine with nothing of ours running: its floor.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use super::{
    fixtures::comm,
    proc::Fixture,
    round_order,
    samplers::{Event, Format, Running, Sampler, Scope},
    say,
    stats::median,
    Bench, Options,
};

pub const FREQUENCIES: [u32; 2] = [99, 999];
/// One busy thread per CPU on the 2-CPU machines this runs on.
pub const THREADS: usize = 2;

/// A configuration: no sampler (the baseline) or a sampler at a frequency.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    pub sampler: Option<Sampler>,
    pub hz: u32,
}

/// One run of the fixture.
#[derive(Clone, Copy, Debug, Default)]
pub struct Run {
    /// Fixture wall time, from spawn to exit.
    pub wall: f64,
    /// Fixture CPU time, all threads.
    pub cpu: f64,
    /// Sampler CPU seconds per second while the fixture ran.
    pub sampler_cpu_rate: f64,
    /// Sampler wake-ups (context switches of all its threads) per second while the
    /// fixture ran.
    pub sampler_wakeup_rate: f64,
    /// Sampler CPU over its whole life (start-up and shutdown included), per second of it.
    pub sampler_life_cpu_rate: f64,
    /// CPU to turn the recording into folded stacks (perf script + collapse), per second
    /// of recording.
    pub post_cpu_rate: f64,
    pub max_rss_kib: u64,
    pub post_max_rss_kib: u64,
    /// The fixture's samples in the output.
    pub samples: u64,
}

pub struct Overhead {
    /// Loop iterations each fixture thread runs (calibrated to `work_seconds`).
    pub iterations: u64,
    pub runs: Vec<(Config, Vec<Run>)>,
    /// Each sampler recording the machine, both CPUs busy, watched once the fixture has
    /// started: its steady state.
    pub steady: Vec<(Config, Vec<Watched>)>,
    /// Each sampler recording the machine with nothing of ours running.
    pub idle: Vec<(Sampler, Vec<Watched>)>,
}

/// How long a sampler is watched in the idle and steady-state runs, after its start-up
/// ([`IDLE_SETTLE`]) or the fixture's ([`STEADY_SETTLE`]).
pub const WATCH_SECONDS: f64 = 10.0;

/// Left out before the idle measurement: start-up (reading /proc, symbols).
const IDLE_SETTLE: Duration = Duration::from_secs(3);

/// Left out at the start of a steady-state run: the fixture's own start (its process
/// read, its rows compiled), which the runs above include.
const STEADY_SETTLE: Duration = Duration::from_secs(1);

/// The idle frequency: the default.
pub const IDLE_HZ: u32 = 99;

/// A sampler watched for [`WATCH_SECONDS`] while it records the whole machine.
#[derive(Clone, Copy, Debug, Default)]
pub struct Watched {
    /// CPU seconds per second, all its threads.
    pub cpu_rate: f64,
    /// Context switches of all its threads per second.
    pub wakeup_rate: f64,
}

impl Watched {
    /// The median of each measure over `runs`.
    pub fn median_of(runs: &[Watched]) -> Option<Watched> {
        let of = |f: fn(&Watched) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        Some(Watched {
            cpu_rate: of(|w| w.cpu_rate)?,
            wakeup_rate: of(|w| w.wakeup_rate)?,
        })
    }
}

impl Overhead {
    /// The median steady-state run of `config`.
    pub fn steady_of(&self, config: Config) -> Option<Watched> {
        let (_, runs) = self.steady.iter().find(|(c, _)| *c == config)?;
        Watched::median_of(runs)
    }

    /// The median idle run of `sampler`.
    pub fn idle_of(&self, sampler: Sampler) -> Option<Watched> {
        let (_, runs) = self.idle.iter().find(|(s, _)| *s == sampler)?;
        Watched::median_of(runs)
    }

    pub fn runs_of(&self, config: Config) -> &[Run] {
        self.runs
            .iter()
            .find(|(c, _)| *c == config)
            .map_or(&[], |(_, runs)| runs)
    }
}

pub fn measure(bench: &mut Bench, options: &Options) -> Result<Overhead> {
    let iterations = calibrate(bench, options.work_seconds)?;
    let mut configs = vec![Config {
        sampler: None,
        hz: 0,
    }];
    for sampler in bench.tools.samplers() {
        for hz in FREQUENCIES {
            configs.push(Config {
                sampler: Some(sampler),
                hz,
            });
        }
    }
    let mut runs: Vec<(Config, Vec<Run>)> = configs.iter().map(|c| (*c, Vec::new())).collect();
    for round in 0..options.runs {
        for index in round_order(round, options.runs, configs.len()) {
            let config = configs[index];
            let label = describe(config);
            match run_once(bench, config, iterations) {
                Ok(run) => {
                    say(&format!(
                        "overhead {}/{}: {label}: wall {:.3} s, cpu {:.3} s, sampler {:.4} cpu/s, {} samples",
                        round + 1,
                        options.runs,
                        run.wall,
                        run.cpu,
                        run.sampler_cpu_rate + run.post_cpu_rate,
                        run.samples
                    ));
                    runs[index].1.push(run);
                }
                Err(e) => bench.failed(&format!("overhead: {label}"), e),
            }
        }
    }
    let steady = watch_steady(bench, options, &configs[1..]);
    let idle = watch_idle(bench, options);
    Ok(Overhead {
        iterations,
        runs,
        steady,
        idle,
    })
}

/// The steady-state runs: each configuration `options.short_runs` times.
fn watch_steady(
    bench: &mut Bench,
    options: &Options,
    configs: &[Config],
) -> Vec<(Config, Vec<Watched>)> {
    watch_rounds(
        bench,
        options.short_runs,
        configs,
        "steady",
        describe,
        steady_once,
    )
}

/// The idle runs: each sampler `options.short_runs` times.
fn watch_idle(bench: &mut Bench, options: &Options) -> Vec<(Sampler, Vec<Watched>)> {
    let samplers = bench.tools.samplers();
    let label = |sampler| format!("{sampler} at {IDLE_HZ} Hz");
    watch_rounds(
        bench,
        options.short_runs,
        &samplers,
        "idle",
        label,
        idle_once,
    )
}

/// Watches each of `items` with `once`, `rounds` times, each round starting
/// at a different one (see [`round_order`]); a failed run is the bench's
/// failure, the others are kept per item.
fn watch_rounds<T: Copy>(
    bench: &mut Bench,
    rounds: usize,
    items: &[T],
    what: &str,
    label: impl Fn(T) -> String,
    once: impl Fn(&Bench, T) -> Result<Watched>,
) -> Vec<(T, Vec<Watched>)> {
    let mut watched: Vec<(T, Vec<Watched>)> = items.iter().map(|i| (*i, Vec::new())).collect();
    for round in 0..rounds {
        for index in round_order(round, rounds, items.len()) {
            let item = items[index];
            match once(bench, item) {
                Ok(run) => {
                    say(&format!(
                        "{what} {}/{rounds}: {}: {:.4}% of a core, {:.1} wake-ups/s",
                        round + 1,
                        label(item),
                        run.cpu_rate * 100.0,
                        run.wakeup_rate
                    ));
                    watched[index].1.push(run);
                }
                Err(e) => bench.failed(&format!("{what}: {}", label(item)), e),
            }
        }
    }
    watched
}

/// `sampler` recording the whole machine while no fixture runs: what it costs
/// when there is nothing (of ours) to sample.
fn idle_once(bench: &Bench, sampler: Sampler) -> Result<Watched> {
    let dir = bench.run_dir()?;
    let running = sampler.start(
        &bench.tools,
        Scope::All,
        Event::Clock(IDLE_HZ),
        Format::Folded,
        &dir,
    )?;
    std::thread::sleep(IDLE_SETTLE);
    let run = watch(&running);
    running.stop()?;
    Ok(run)
}

/// The sampler recording the whole machine while the fixture keeps both CPUs busy,
/// watched once the fixture has started: the steady state issue 20 measures.
fn steady_once(bench: &Bench, config: Config) -> Result<Watched> {
    let sampler = config.sampler.expect("a sampler's configuration");
    let dir = bench.run_dir()?;
    let running = sampler.start(
        &bench.tools,
        Scope::All,
        Event::Clock(config.hz),
        Format::Folded,
        &dir,
    )?;
    // `--iterations 0` works until stopped.
    let fixture = Fixture::start(
        &bench.fixtures.work_fp,
        &["--iterations", "0", "--threads", &THREADS.to_string()],
    )?;
    std::thread::sleep(STEADY_SETTLE);
    let run = watch(&running);
    fixture.stop()?;
    running.stop()?;
    Ok(run)
}

/// Watches a running sampler for [`WATCH_SECONDS`].
fn watch(running: &Running) -> Watched {
    let (cpu, switches, at) = (running.cpu_ns(), running.switches(), Instant::now());
    std::thread::sleep(Duration::from_secs_f64(WATCH_SECONDS));
    let seconds = at.elapsed().as_secs_f64();
    Watched {
        cpu_rate: running.cpu_ns().saturating_sub(cpu) as f64 / 1e9 / seconds,
        wakeup_rate: running.switches().saturating_sub(switches) as f64 / seconds,
    }
}

fn describe(config: Config) -> String {
    match config.sampler {
        None => "no sampler".into(),
        Some(sampler) => format!("{sampler} at {} Hz", config.hz),
    }
}

/// Iterations per thread for about `seconds` of work, from one timed single-thread run.
fn calibrate(bench: &Bench, seconds: f64) -> Result<u64> {
    const PROBE: u64 = 400_000_000;
    let mut fixture = Fixture::start(
        &bench.fixtures.work_fp,
        &["--iterations", &PROBE.to_string(), "--threads", "1"],
    )?;
    let exit = fixture.wait(Duration::from_secs(120))?;
    let per_second = PROBE as f64 / exit.cpu.as_secs_f64().max(1e-3);
    let iterations = (per_second * seconds) as u64;
    say(&format!(
        "calibrated: {iterations} iterations per thread for {seconds} s of work ({:.0} M/s)",
        per_second / 1e6
    ));
    Ok(iterations)
}

fn run_once(bench: &Bench, config: Config, iterations: u64) -> Result<Run> {
    let dir = bench.run_dir()?;
    let running = match config.sampler {
        Some(sampler) => Some(sampler.start(
            &bench.tools,
            Scope::All,
            Event::Clock(config.hz),
            Format::Folded,
            &dir,
        )?),
        None => None,
    };
    let cpu_before = running.as_ref().map_or(0, |r| r.cpu_ns());
    let switches_before = running.as_ref().map_or(0, |r| r.switches());
    let started = Instant::now();
    let mut fixture = Fixture::start(
        &bench.fixtures.work_fp,
        &[
            "--iterations",
            &iterations.to_string(),
            "--threads",
            &THREADS.to_string(),
        ],
    )?;
    let exit = fixture.wait(Duration::from_secs(600))?;
    let wall = (exit.at - started).as_secs_f64();
    let mut run = Run {
        wall,
        cpu: exit.cpu.as_secs_f64(),
        ..Run::default()
    };
    let Some(running) = running else {
        return Ok(run);
    };
    run.sampler_cpu_rate = (running.cpu_ns() - cpu_before) as f64 / 1e9 / wall;
    run.sampler_wakeup_rate = running.switches().saturating_sub(switches_before) as f64 / wall;
    let stopped = running.stop()?;
    let (folded, post) = stopped.folded(&bench.tools)?;
    let lifetime = stopped.lifetime.as_secs_f64();
    run.sampler_life_cpu_rate = stopped.exit.cpu.as_secs_f64() / lifetime;
    run.post_cpu_rate = post.cpu.as_secs_f64() / lifetime;
    run.max_rss_kib = stopped.exit.max_rss_kib;
    run.post_max_rss_kib = post.max_rss_kib;
    run.samples = folded
        .of_comm(comm(&bench.fixtures.work_fp))
        .map(|(_, n)| n)
        .sum();
    ensure!(
        run.samples > 0,
        "{} recorded no samples of the fixture",
        stopped.sampler
    );
    Ok(run)
}
