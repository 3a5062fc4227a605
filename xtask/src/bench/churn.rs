//! Measurement 6: memory over time. `churn` starts short-lived processes continuously while
//! a sampler records the whole machine at 999 Hz; the sampler's resident memory is read
//! after 10 s and at the end of the run. State kept per process and never released shows
//! up as growth between the two.

use std::{
    fs, thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Result};

use super::{
    fixtures::comm,
    proc::Fixture,
    samplers::{Event, Format, Sampler, Scope, Unwind},
    say,
    stacks::Share,
    Bench, Options,
};

pub const HZ: u32 = 999;
pub const EARLY: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, Default)]
pub struct Run {
    pub rss_early_kib: Option<u64>,
    pub rss_end_kib: Option<u64>,
    pub max_rss_kib: u64,
    /// Processes the machine started during the run.
    pub processes: u64,
    pub seconds: f64,
    /// Bytes the sampler wrote (perf's data file grows with the run).
    pub output_bytes: u64,
    pub samples: u64,
    /// Samples of the churn processes whose stack names their work (`child_main;child_work`).
    pub named: Share,
    /// Samples of the churn processes whose every user frame is named (start-up and exit
    /// included: a process spends about half its life there).
    pub all_named: Share,
    /// Of the samples taken in their work or that may have been (see
    /// [`super::stacks::ChainBreakdown::share_of_work`]), those that name it whole.
    pub work_named: Share,
}

/// The churn processes' own work, outermost first.
const CHURN_WORK: [&str; 2] = ["child_main", "child_work"];

/// Why perf's dwarf mode is left out of the long run.
pub const SKIPPED_PERF_DWARF: &str = "perf record --call-graph dwarf is left out: at 999 Hz \
    on 2 CPUs it writes about 16 MB/s of stack copies, and its memory is not the question";

pub fn measure(bench: &mut Bench, options: &Options) -> Result<Vec<(Sampler, Run)>> {
    let samplers: Vec<Sampler> = bench
        .tools
        .samplers()
        .into_iter()
        .filter(|s| {
            matches!(
                s,
                Sampler::Tripod(Unwind::Auto | Unwind::Fp) | Sampler::PerfFp | Sampler::Bpftrace
            )
        })
        .collect();
    let mut results = Vec::new();
    for sampler in samplers {
        match run_once(bench, sampler, options.churn_seconds) {
            Ok(run) => {
                say(&format!(
                    "churn: {sampler}: RSS {} KiB after 10 s, {} KiB after {:.0} s, {} processes",
                    run.rss_early_kib.unwrap_or(0),
                    run.rss_end_kib.unwrap_or(0),
                    run.seconds,
                    run.processes
                ));
                results.push((sampler, run));
            }
            Err(e) => bench.failed(&format!("churn: {sampler}"), e),
        }
    }
    Ok(results)
}

/// Processes started since boot (`processes` in /proc/stat).
fn forks_since_boot() -> u64 {
    fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("processes ")?.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn run_once(bench: &Bench, sampler: Sampler, seconds: f64) -> Result<Run> {
    let dir = bench.run_dir()?;
    let running = sampler.start(
        &bench.tools,
        Scope::All,
        Event::Clock(HZ),
        Format::Folded,
        &dir,
    )?;
    let forks_before = forks_since_boot();
    let started = Instant::now();
    let fixture = Fixture::start(&bench.fixtures.churn, &[])?;
    let end = started + Duration::from_secs_f64(seconds);
    thread::sleep(EARLY);
    let mut run = Run {
        rss_early_kib: running.rss_kib(),
        ..Run::default()
    };
    thread::sleep(end.saturating_duration_since(Instant::now()));
    run.rss_end_kib = running.rss_kib();
    run.seconds = started.elapsed().as_secs_f64();
    fixture.stop()?;
    run.processes = forks_since_boot() - forks_before;
    let stopped = running.stop()?;
    run.max_rss_kib = stopped.exit.max_rss_kib;
    run.output_bytes = stopped.output_bytes();
    let (folded, _) = stopped.folded(&bench.tools)?;
    let name = comm(&bench.fixtures.churn);
    run.samples = folded.of_comm(name).map(|(_, n)| n).sum();
    run.named = folded.chain_share(name, &CHURN_WORK);
    run.work_named = folded.chain_breakdown(name, &CHURN_WORK).share_of_work();
    run.all_named = folded.named_share(name);
    ensure!(
        run.samples > 0,
        "{sampler} recorded no samples of the churn processes"
    );
    Ok(run)
}
