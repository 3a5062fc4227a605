//! Measurements 3 and 4: what the stacks are worth. Each sampler records one fixture process
//! at 999 Hz while it runs (the process stays alive until the sampler has written its
//! output, so every sampler can symbolize):
//! - stack quality: the share of `work` samples whose stack holds the whole known chain
//!   main;alpha;beta;gamma;spin, for the frame-pointer and the no-frame-pointer build;
//! - accuracy: the share of `split` samples in `heavy` among those in `heavy` or `light`
//!   (the truth is 75%).

use std::{thread, time::Duration};

use anyhow::{ensure, Result};

use super::{
    fixtures::{comm, WORK_CHAIN},
    proc::Fixture,
    samplers::{Event, Format, Sampler, Scope},
    say,
    stacks::{Folded, Share},
    Bench, Options,
};

pub const HZ: u32 = 999;

/// A sampler's pooled results over its rounds.
#[derive(Clone, Debug, Default)]
pub struct Quality {
    pub fp: Share,
    pub nofp: Share,
    pub split: Share,
    /// The split of each round, in percent, to show the spread.
    pub split_rounds: Vec<f64>,
}

pub fn measure(bench: &mut Bench, options: &Options) -> Result<Vec<(Sampler, Quality)>> {
    let samplers = bench.tools.samplers();
    let mut results: Vec<(Sampler, Quality)> =
        samplers.iter().map(|s| (*s, Quality::default())).collect();
    let seconds = Duration::from_secs_f64(options.sample_seconds);
    for round in 0..options.short_runs {
        for (sampler, quality) in results.iter_mut() {
            let progress = format!("quality {}/{}: {sampler}", round + 1, options.short_runs);
            for (build, share) in [
                (bench.fixtures.work_fp.clone(), &mut quality.fp),
                (bench.fixtures.work_nofp.clone(), &mut quality.nofp),
            ] {
                let name = comm(&build).to_owned();
                let result = record(bench, *sampler, &build, &["--threads", "1"], seconds)
                    .map(|folded| folded.chain_share(&name, WORK_CHAIN));
                match result {
                    Ok(got) => {
                        say(&format!(
                            "{progress}: {name}: {}/{} complete",
                            got.hits, got.of
                        ));
                        share.hits += got.hits;
                        share.of += got.of;
                    }
                    Err(e) => bench.failed(&format!("quality: {sampler} on {name}"), e),
                }
            }
            let split = bench.fixtures.split.clone();
            let result = record(bench, *sampler, &split, &[], seconds)
                .map(|folded| folded.split(comm(&split), "heavy", "light"));
            match result {
                Ok(got) => {
                    say(&format!(
                        "{progress}: split: {:.1}% heavy of {}",
                        got.percent().unwrap_or(f64::NAN),
                        got.of
                    ));
                    quality.split.hits += got.hits;
                    quality.split.of += got.of;
                    quality.split_rounds.extend(got.percent());
                }
                Err(e) => bench.failed(&format!("accuracy: {sampler}"), e),
            }
        }
    }
    Ok(results)
}

/// Samples a running fixture for `seconds`, stops the sampler, then the fixture.
fn record(
    bench: &Bench,
    sampler: Sampler,
    fixture: &std::path::Path,
    args: &[&str],
    seconds: Duration,
) -> Result<Folded> {
    let dir = bench.run_dir()?;
    let fixture_process = Fixture::start(fixture, args)?;
    let running = sampler.start(
        &bench.tools,
        Scope::Pid(fixture_process.pid()),
        Event::Clock(HZ),
        Format::Folded,
        &dir,
    )?;
    thread::sleep(seconds);
    let stopped = running.stop()?;
    let (folded, _) = stopped.folded(&bench.tools)?;
    fixture_process.stop()?;
    let samples: u64 = folded.of_comm(comm(fixture)).map(|(_, n)| n).sum();
    ensure!(
        samples > 0,
        "{sampler} recorded no samples of {}",
        comm(fixture)
    );
    Ok(folded)
}
