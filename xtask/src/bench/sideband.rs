//! Measurement 11: where the records of mappings should come from. The perf sideband (a
//! `PERF_COUNT_SW_DUMMY` event per CPU, tripod-bpf's production path) against an eBPF probe
//! on tracepoints (`syscalls:sys_enter/exit_mmap`, `sched_process_exec/fork/exit`; `fexit`
//! of `mmap_region` is refused on the bench machine's kernel), on the
//! churn workload while tripod-bpf samples the whole machine with `--unwind fp`.
//!
//! `--sideband-source` (hidden) picks the source; either way the records are read and
//! counted but not used, so the runs differ only in how records reach tripod-bpf, and the
//! sampler closes with a `sideband SOURCE: …` line this module reads. A run without any
//! source and one without a sampler are the baselines.

use std::{
    fs,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};

use super::{
    proc::Fixture,
    samplers::{Event, Format, Sampler, Scope, Unwind},
    say, Bench, Options,
};

pub const HZ: u32 = 999;

/// What tripod-bpf reads its mapping records from in one configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Config {
    /// The churn workload alone.
    NoSampler,
    /// tripod-bpf without a sideband.
    NoSideband,
    Perf,
    Ebpf,
}

impl Config {
    pub const ALL: [Config; 4] = [
        Config::NoSampler,
        Config::NoSideband,
        Config::Perf,
        Config::Ebpf,
    ];

    /// `--sideband-source`'s value; `None` without a sampler.
    fn source(self) -> Option<&'static str> {
        match self {
            Config::NoSampler => None,
            Config::NoSideband => Some("none"),
            Config::Perf => Some("perf"),
            Config::Ebpf => Some("ebpf"),
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Config::NoSampler => "churn alone",
            Config::NoSideband => "tripod-bpf --unwind fp, no sideband",
            Config::Perf => "tripod-bpf --unwind fp, perf sideband (PERF_COUNT_SW_DUMMY)",
            Config::Ebpf => "tripod-bpf --unwind fp, eBPF probe (sys_exit_mmap, sched_process_*)",
        }
    }
}

/// The sampler's closing `sideband SOURCE: …` line, as numbers.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    pub records: u64,
    pub mmaps: u64,
    pub lost: u64,
    pub with_path: u64,
    pub with_build_id: u64,
    pub with_inode: u64,
    pub delay_mean_us: u64,
    pub delay_max_us: u64,
    pub read_cpu_ms: u64,
}

impl Tally {
    /// Reads `sideband perf: 1 records (mmap 2, exec/comm 3, fork 4, exit 5), 6 lost;
    /// mappings with path 7, build id 8, inode 9; delay mean 10 us, max 11 us; read CPU 12 ms`.
    fn parse(line: &str) -> Option<Tally> {
        let (_, rest) = line.split_once(": ")?;
        let numbers: Vec<u64> = rest
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().ok())
            .collect::<Option<_>>()?;
        let [records, mmaps, _, _, _, lost, with_path, with_build_id, with_inode, mean, max, cpu] =
            numbers[..]
        else {
            return None;
        };
        Some(Tally {
            records,
            mmaps,
            lost,
            with_path,
            with_build_id,
            with_inode,
            delay_mean_us: mean,
            delay_max_us: max,
            read_cpu_ms: cpu,
        })
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Run {
    /// Churn processes started per second.
    pub processes_per_second: f64,
    /// The workload's system CPU (its own and its reaped children's), in % of one CPU.
    pub workload_system_percent: f64,
    /// tripod-bpf's CPU, in % of one CPU.
    pub sampler_percent: Option<f64>,
    pub tally: Option<Tally>,
}

pub fn measure(bench: &mut Bench, options: &Options) -> Result<Vec<(Config, Vec<Run>)>> {
    let mut results: Vec<(Config, Vec<Run>)> =
        Config::ALL.iter().map(|c| (*c, Vec::new())).collect();
    let rounds = options.short_runs;
    let seconds = 2.0 * options.shortlived_seconds;
    for round in 0..rounds {
        // Each round starts with another configuration, so drift hits them alike.
        for i in 0..results.len() {
            let (config, runs) = &mut results[(i + round) % Config::ALL.len()];
            match run_once(bench, *config, seconds) {
                Ok(run) => {
                    say(&format!(
                        "sideband {}/{rounds}: {}: {:.0} processes/s, system {:.1}%, \
                         sampler {:.1}%, {:?}",
                        round + 1,
                        config.describe(),
                        run.processes_per_second,
                        run.workload_system_percent,
                        run.sampler_percent.unwrap_or(f64::NAN),
                        run.tally
                    ));
                    runs.push(run);
                }
                Err(e) => bench.failed(&format!("sideband: {}", config.describe()), e),
            }
        }
    }
    Ok(results)
}

fn run_once(bench: &Bench, config: Config, seconds: f64) -> Result<Run> {
    let dir = bench.run_dir()?;
    let running = config
        .source()
        .map(|source| {
            Sampler::Tripod(Unwind::Fp).start_with(
                &bench.tools,
                Scope::All,
                Event::Clock(HZ),
                Format::Folded,
                &dir,
                &["--sideband-source", source],
            )
        })
        .transpose()?;
    let sampler_cpu_before = running.as_ref().map_or(0, |r| r.cpu_ns());
    // One loop: every churn process is a child of the one we read.
    let fixture = Fixture::start(&bench.fixtures.churn, &["--loops", "1"])?;
    let (cpu_before, started) = (workload_cpu(fixture.pid())?, Instant::now());
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let cpu_after = workload_cpu(fixture.pid())?;
    let elapsed = started.elapsed().as_secs_f64();
    let sampler_cpu = running.as_ref().map(|r| r.cpu_ns() - sampler_cpu_before);
    fixture.stop()?;
    let mut run = Run {
        processes_per_second: (cpu_after.processes - cpu_before.processes) as f64 / elapsed,
        workload_system_percent: 100.0 * (cpu_after.system_s - cpu_before.system_s) / elapsed,
        sampler_percent: sampler_cpu.map(|ns| 100.0 * ns as f64 / 1e9 / elapsed),
        tally: None,
    };
    if let Some(running) = running {
        let stopped = running.stop()?;
        let line = stopped
            .log_line("[tripod] sideband ")
            .context("tripod-bpf wrote no sideband line")?;
        run.tally = Some(Tally::parse(&line).with_context(|| format!("cannot read {line:?}"))?);
    }
    ensure!(
        run.processes_per_second > 0.0,
        "the churn workload started no processes"
    );
    Ok(run)
}

/// The workload's counters at one moment.
struct WorkloadCpu {
    /// Processes started on the machine since boot (`processes` in /proc/stat).
    processes: u64,
    /// System CPU seconds of the churn process and of the children it reaped.
    system_s: f64,
}

fn workload_cpu(pid: u32) -> Result<WorkloadCpu> {
    let stat = fs::read_to_string("/proc/stat")?;
    let processes = stat
        .lines()
        .find_map(|l| l.strip_prefix("processes ")?.trim().parse().ok())
        .context("no processes line in /proc/stat")?;
    let own = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After the comm's closing parenthesis: state is field 3, stime 15, cstime 17.
    let fields: Vec<&str> = own
        .rsplit_once(')')
        .context("bad /proc/PID/stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks = |field: usize| -> Result<f64> {
        Ok(fields
            .get(field - 3)
            .context("short /proc/PID/stat")?
            .parse::<f64>()?)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(WorkloadCpu {
        processes,
        system_s: (ticks(15)? + ticks(17)?) / hz,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sampler_line_is_read_in_order() {
        let line = "[tripod] sideband perf: 1 records (mmap 2, exec/comm 3, fork 4, exit 5), \
                    6 lost; mappings with path 7, build id 8, inode 9; delay mean 10 us, \
                    max 11 us; read CPU 12 ms";
        let t = Tally::parse(line).unwrap();
        assert_eq!(
            (
                t.records,
                t.mmaps,
                t.lost,
                t.with_path,
                t.with_build_id,
                t.with_inode
            ),
            (1, 2, 6, 7, 8, 9)
        );
        assert_eq!(
            (t.delay_mean_us, t.delay_max_us, t.read_cpu_ms),
            (10, 11, 12)
        );
        assert!(Tally::parse("[tripod] sideband perf: 1 records").is_none());
    }
}
