//! Measurement 5: end-of-run latency. Two `paths` processes walk 2^14 distinct call paths
//! while a sampler records the whole machine at 999 Hz; after a while it gets SIGINT, and
//! we time until its process is gone (its output is then complete). For perf, a user then
//! still needs `perf script` and collapsing to get stacks; that is timed separately.

use std::{thread, time::Duration};

use anyhow::{ensure, Result};

use super::{
    fixtures::comm,
    proc::Fixture,
    samplers::{Event, Format, Sampler, Scope, Unwind},
    say, Bench, Options,
};

pub const HZ: u32 = 999;
pub const PROCESSES: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Config {
    pub sampler: Sampler,
    pub format: Format,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Run {
    /// SIGINT to exit, seconds.
    pub stop: f64,
    /// perf script + collapse, seconds (0 for samplers that need none).
    pub post: f64,
    /// Distinct stacks of the fixture in the output (folded form), or tripod-bpf's own
    /// count for the log format.
    pub distinct: u64,
    pub samples: u64,
}

pub fn measure(bench: &mut Bench, options: &Options) -> Result<Vec<(Config, Vec<Run>)>> {
    let mut configs = vec![
        // The default output (the Tripod-style log) first: what `tripod-bpf --all` does.
        Config {
            sampler: Sampler::Tripod(Unwind::Auto),
            format: Format::Log,
        },
        Config {
            sampler: Sampler::Tripod(Unwind::Auto),
            format: Format::Folded,
        },
        Config {
            sampler: Sampler::Tripod(Unwind::Fp),
            format: Format::Folded,
        },
    ];
    configs.extend(
        bench
            .tools
            .samplers()
            .into_iter()
            .filter(|s| !s.is_tripod())
            .map(|sampler| Config {
                sampler,
                format: Format::Folded,
            }),
    );
    let mut results: Vec<(Config, Vec<Run>)> = configs.iter().map(|c| (*c, Vec::new())).collect();
    for round in 0..options.short_runs {
        for (config, runs) in results.iter_mut() {
            // bpftrace symbolizes every stack as it exits, which takes minutes here: one
            // round says what a user waits for.
            if round > 0 && config.sampler == Sampler::Bpftrace {
                continue;
            }
            let label = describe(*config);
            match run_once(bench, *config, options.latency_seconds) {
                Ok(run) => {
                    say(&format!(
                        "latency {}/{}: {label}: {} distinct stacks, stop {:.3} s, post-processing {:.1} s",
                        round + 1,
                        options.short_runs,
                        run.distinct,
                        run.stop,
                        run.post
                    ));
                    runs.push(run);
                }
                Err(e) => bench.failed(&format!("latency: {label}"), e),
            }
        }
    }
    Ok(results)
}

pub fn describe(config: Config) -> String {
    match (config.sampler, config.format) {
        (Sampler::Tripod(_), Format::Log) => format!("{} (log)", config.sampler),
        (Sampler::Tripod(_), Format::Folded) => format!("{} -f folded", config.sampler),
        (sampler, _) => sampler.to_string(),
    }
}

fn run_once(bench: &Bench, config: Config, seconds: f64) -> Result<Run> {
    let dir = bench.run_dir()?;
    let fixture = Fixture::start(
        &bench.fixtures.paths,
        &["--processes", &PROCESSES.to_string()],
    )?;
    let running = config.sampler.start(
        &bench.tools,
        Scope::All,
        Event::Clock(HZ),
        config.format,
        &dir,
    )?;
    thread::sleep(Duration::from_secs_f64(seconds));
    let stopped = running.stop()?;
    fixture.stop()?;
    let mut run = Run {
        stop: stopped.stop_latency.as_secs_f64(),
        ..Run::default()
    };
    if config.format == Format::Log {
        run.samples = stopped.tripod_samples().unwrap_or(0);
        run.distinct = stopped.tripod_distinct_stacks().unwrap_or(0);
    } else {
        let (folded, post) = stopped.folded(&bench.tools)?;
        let name = comm(&bench.fixtures.paths);
        run.post = post.wall.as_secs_f64();
        run.distinct = folded.distinct(name) as u64;
        run.samples = folded.of_comm(name).map(|(_, n)| n).sum();
    }
    ensure!(run.samples > 0, "{} recorded no samples", config.sampler);
    Ok(run)
}
