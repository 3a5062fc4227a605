//! Measurement 7: what recording off-CPU time costs a target that blocks all the time.
//! `pingpong` passes a byte back and forth between two threads a fixed number of times,
//! each pass a context switch; every sampler records that one process while it plays, and
//! the fixture times its own round trips. The slowdown is the median wall time under a
//! sampler over the median without one. An eBPF sampler's per-switch cost runs in the
//! switching thread, so it also shows as fixture CPU time; the sampler's own CPU time is
//! what its process spends besides (draining, unwinding, writing).

use std::time::Duration;

use anyhow::{ensure, Result};

use super::{
    fixtures::comm,
    proc::{field, Fixture},
    round_order,
    samplers::{Event, Sampler},
    say, Bench, Options,
};

/// Round trips of the calibration run.
const PROBE_ROUND_TRIPS: u64 = 100_000;
/// Longest a run may take: a sampler that slows the fixture down 100-fold still finishes.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

/// One run of the fixture.
#[derive(Clone, Debug, Default)]
pub struct Run {
    /// Wall time of the round trips, as the fixture measured it.
    pub wall: f64,
    /// CPU time of both fixture threads during the round trips.
    pub cpu: f64,
    /// The fixture's context switches during the round trips.
    pub switches: u64,
    /// Sampler CPU time (all its threads) while the round trips ran.
    pub sampler_cpu: f64,
    pub max_rss_kib: u64,
    /// What the sampler recorded of the fixture, in [`Sampler::off_cpu_unit`]s.
    pub recorded: u64,
    /// What the sampler said it lost, one line each.
    pub losses: Vec<String>,
}

pub struct OffCpu {
    /// Round trips of every run (calibrated to `work_seconds`).
    pub round_trips: u64,
    /// No sampler (the baseline) first, then each sampler.
    pub runs: Vec<(Option<Sampler>, Vec<Run>)>,
}

impl OffCpu {
    pub fn runs_of(&self, sampler: Option<Sampler>) -> &[Run] {
        self.runs
            .iter()
            .find(|(s, _)| *s == sampler)
            .map_or(&[], |(_, runs)| runs)
    }
}

pub fn measure(bench: &mut Bench, options: &Options) -> Result<OffCpu> {
    let round_trips = calibrate(bench, options.work_seconds)?;
    let configs: Vec<Option<Sampler>> = std::iter::once(None)
        .chain(bench.tools.off_cpu_samplers().into_iter().map(Some))
        .collect();
    let mut runs: Vec<(Option<Sampler>, Vec<Run>)> =
        configs.iter().map(|c| (*c, Vec::new())).collect();
    for round in 0..options.runs {
        for index in round_order(round, options.runs, configs.len()) {
            let sampler = configs[index];
            let label = describe(sampler);
            match play(bench, round_trips, sampler) {
                Ok(run) => {
                    say(&format!(
                        "off-cpu {}/{}: {label}: wall {:.3} s, cpu {:.3} s, {} switches, sampler {:.3} s cpu{}",
                        round + 1,
                        options.runs,
                        run.wall,
                        run.cpu,
                        run.switches,
                        run.sampler_cpu,
                        sampler.map_or(String::new(), |s| format!(
                            ", {} {}",
                            run.recorded,
                            s.off_cpu_unit()
                        ))
                    ));
                    for loss in &run.losses {
                        say(&format!("off-cpu: {label} said: {loss}"));
                    }
                    runs[index].1.push(run);
                }
                Err(e) => bench.failed(&format!("off-cpu: {label}"), e),
            }
        }
    }
    Ok(OffCpu { round_trips, runs })
}

pub fn describe(sampler: Option<Sampler>) -> String {
    sampler.map_or("no sampler".into(), |s| s.describe(Event::OffCpu))
}

/// Round trips for about `seconds` of play, from one timed run without a sampler.
fn calibrate(bench: &Bench, seconds: f64) -> Result<u64> {
    let probe = play(bench, PROBE_ROUND_TRIPS, None)?;
    let per_second = PROBE_ROUND_TRIPS as f64 / probe.wall.max(1e-3);
    let round_trips = (per_second * seconds) as u64;
    say(&format!(
        "calibrated: {round_trips} round trips for {seconds} s of ping-pong ({:.0} k/s)",
        per_second / 1e3
    ));
    Ok(round_trips)
}

/// Starts the fixture, attaches `sampler` to it, then lets it play `round_trips` and stops
/// both.
fn play(bench: &Bench, round_trips: u64, sampler: Option<Sampler>) -> Result<Run> {
    let mut fixture = Fixture::start(
        &bench.fixtures.pingpong,
        &["--round-trips", &round_trips.to_string()],
    )?;
    let (line, recorded) =
        bench.record_signalled(&mut fixture, sampler, Event::OffCpu, RUN_TIMEOUT)?;
    let mut run = parse_result(&line)?;
    if let Some((stopped, sampler_cpu)) = recorded {
        run.sampler_cpu = sampler_cpu;
        run.max_rss_kib = stopped.exit.max_rss_kib;
        run.losses = stopped.loss_reports();
        run.recorded = stopped.off_cpu_recorded(&bench.tools, comm(&bench.fixtures.pingpong))?;
        ensure!(
            run.recorded > 0,
            "{} recorded no off-CPU time of the fixture",
            stopped.sampler
        );
    }
    fixture.stop()?;
    Ok(run)
}

/// The fixture's `elapsed SECONDS cpu SECONDS switches N` line.
fn parse_result(line: &str) -> Result<Run> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    Ok(Run {
        wall: field(&fields, "elapsed")?,
        cpu: field(&fields, "cpu")?,
        switches: field(&fields, "switches")?,
        ..Run::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fixture_result_line() {
        let run = parse_result("elapsed 2.532249 cpu 2.532092 switches 1000003").unwrap();
        assert_eq!(run.wall, 2.532249);
        assert_eq!(run.cpu, 2.532092);
        assert_eq!(run.switches, 1_000_003);
        assert!(parse_result("elapsed 2.5 cpu x switches 1").is_err());
        assert!(parse_result("ready 42").is_err());
    }
}
