//! BENCHMARKS.md: the results of one run as markdown tables, with what was measured and how.

use std::{fmt::Write as _, time::Duration};

use super::{
    churn,
    dump::{self, Dumper, Dumps},
    latency,
    offcpu::{self, OffCpu},
    overhead::{self, Config, Overhead, Watched},
    python::{self, Python},
    quality::{self, Quality},
    samplers::{Format, Found, Sampler, Tools, Unwind},
    shortlived, sideband,
    stacks::{ChainBreakdown, Share},
    stats::{fmt, median, mib, range, ratio, slowdown},
    Machine, Options,
};

pub struct Results {
    /// How much was measured, and the command line.
    pub options: Options,
    pub machine: Machine,
    pub tripod_version: String,
    /// Version, or why the peer was skipped.
    pub perf: Result<String, String>,
    pub bpftrace: Result<String, String>,
    pub offcputime: Result<String, String>,
    pub py_spy: Result<String, String>,
    pub overhead: Option<Overhead>,
    pub quality: Option<Vec<(Sampler, Quality)>>,
    pub latency: Option<Vec<(latency::Config, Vec<latency::Run>)>>,
    pub churn: Option<Vec<(Sampler, churn::Run)>>,
    pub off_cpu: Option<OffCpu>,
    pub dump: Option<Dumps>,
    pub python: Option<Python>,
    pub shortlived: Option<shortlived::Measured>,
    pub sideband: Option<Vec<(sideband::Config, Vec<sideband::Run>)>>,
    pub failures: Vec<String>,
    pub duration: Duration,
}

impl Results {
    pub fn new(options: &Options, machine: Machine, tools: &Tools) -> Results {
        let version = |found: &Found| found.as_ref().map(|(_, v)| v.clone()).map_err(Clone::clone);
        Results {
            options: options.clone(),
            machine,
            tripod_version: tools.tripod_version.clone(),
            perf: version(&tools.perf),
            bpftrace: version(&tools.bpftrace),
            offcputime: version(&tools.offcputime),
            py_spy: version(&tools.py_spy),
            overhead: None,
            quality: None,
            latency: None,
            churn: None,
            off_cpu: None,
            dump: None,
            python: None,
            shortlived: None,
            sideband: None,
            failures: Vec::new(),
            duration: Duration::ZERO,
        }
    }
}

/// Issue 16's short-lived target is about this mode (and fp); the others about the default.
const DWARF: Sampler = Sampler::Tripod(Unwind::Dwarf);
const DEFAULT: Sampler = Sampler::Tripod(Unwind::Auto);
/// The off-CPU section runs tripod-bpf's explicit modes only: this one is the default's.
const DEFAULT_OFF_CPU: Sampler = Sampler::Tripod(Unwind::Tables);

pub fn render(r: &Results) -> String {
    let mut out = String::new();
    header(&mut out, r);
    standing(&mut out, r);
    if let Some(overhead) = &r.overhead {
        overhead_tables(&mut out, r, overhead);
    }
    if let Some(quality) = &r.quality {
        quality_tables(&mut out, r, quality);
    }
    if let Some(latency) = &r.latency {
        latency_table(&mut out, r, latency);
    }
    if let Some(churn) = &r.churn {
        churn_table(&mut out, r, churn);
    }
    if let Some(off_cpu) = &r.off_cpu {
        off_cpu_table(&mut out, r, off_cpu);
    }
    if let Some(dumps) = &r.dump {
        dump_table(&mut out, r, dumps);
    }
    if let Some(python) = &r.python {
        python_table(&mut out, r, python);
    }
    if let Some(shortlived) = &r.shortlived {
        shortlived_table(&mut out, r, shortlived);
    }
    if let Some(sideband) = &r.sideband {
        sideband_table(&mut out, r, sideband);
    }
    method(&mut out);
    if !r.failures.is_empty() {
        out.push_str("\n## Failed runs\n\n");
        for failure in &r.failures {
            let _ = writeln!(out, "- {failure}");
        }
    }
    out
}

fn header(out: &mut String, r: &Results) {
    let m = &r.machine;
    let _ = writeln!(out, "# tripod-bpf benchmarks\n");
    let _ = writeln!(
        out,
        "Written by `{}` on {}, at commit {}; the run took {:.0} min. \
         Re-run it to refresh this file; edit the generator (xtask/src/bench/report.rs), not the file.\n",
        r.options.command,
        m.date,
        m.commit,
        r.duration.as_secs_f64() / 60.0
    );
    let _ = writeln!(
        out,
        "**Machine.** {} CPUs ({}), {:.0} GiB of memory, Linux {}.",
        m.cpus, m.cpu_model, m.memory_gib, m.kernel
    );
    if m.hardware_pmu {
        let _ = writeln!(out, "A hardware PMU is present.\n");
    } else {
        let _ = writeln!(
            out,
            "No hardware PMU (a VM): the `cycles` event cannot be opened, so every sampler \
             here uses the software `cpu-clock` timer (tripod-bpf and perf fall back to it \
             themselves; bpftrace's `profile` probe always uses it).\n"
        );
    }
    let _ = writeln!(out, "**Samplers.**");
    let _ = writeln!(
        out,
        "- {} (this repository; `--unwind fp`, `dwarf`, `tables` and `auto`, the default)",
        r.tripod_version
    );
    // py-spy is looked for only when the Python measurement runs.
    let py_spy = r.python.as_ref().map(|_| ("py-spy", &r.py_spy));
    for (name, found) in [
        ("perf", &r.perf),
        ("bpftrace", &r.bpftrace),
        ("bcc offcputime", &r.offcputime),
    ]
    .into_iter()
    .chain(py_spy)
    {
        match found {
            Ok(version) => {
                let _ = writeln!(out, "- {version}");
            }
            Err(why) => {
                let _ = writeln!(out, "- {name}: **skipped**, {why}");
            }
        }
    }
    out.push('\n');
}

fn overhead_ratio(overhead: &Overhead, sampler: Sampler, hz: u32) -> Option<f64> {
    let wall = |config| {
        median(
            &overhead
                .runs_of(config)
                .iter()
                .map(|r| r.wall)
                .collect::<Vec<_>>(),
        )
    };
    ratio(
        wall(Config {
            sampler: Some(sampler),
            hz,
        }),
        wall(Config {
            sampler: None,
            hz: 0,
        }),
    )
}

fn sampler_cpu(overhead: &Overhead, sampler: Sampler, hz: u32) -> Option<f64> {
    let runs = overhead.runs_of(Config {
        sampler: Some(sampler),
        hz,
    });
    median(
        &runs
            .iter()
            .map(|r| r.sampler_cpu_rate + r.post_cpu_rate)
            .collect::<Vec<_>>(),
    )
}

fn status(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "**not met**",
        None => "not measured",
    }
}

fn standing(out: &mut String, r: &Results) {
    out.push_str("## Where we stand against the targets\n\n");
    out.push_str("| target | measured | status |\n|---|---|---|\n");
    let mut row = |target: &str, measured: String, met: Option<bool>| {
        let _ = writeln!(out, "| {target} | {measured} | {} |", status(met));
    };
    overhead_rows(&mut row, r);
    cost_rows(&mut row, r);
    churn_and_split_rows(&mut row, r);
    latency_row(&mut row, r);
    dump_row(&mut row, r);
    shortlived_row(&mut row, r);
    out.push('\n');
}

/// The targets on slowdown and sampler CPU (section 1 and 2).
fn overhead_rows(row: &mut impl FnMut(&str, String, Option<bool>), r: &Results) {
    let o = r.overhead.as_ref();
    let at = |sampler, hz| o.and_then(|o| overhead_ratio(o, sampler, hz));
    // The default gives complete stacks (`tables`, or `dwarf` without `bpf_loop`).
    let d99 = at(DEFAULT, 99);
    row(
        "target slowdown ≤ 1% at 99 Hz with complete stacks",
        format!("{} (default `auto`, wall time)", slowdown(d99)),
        d99.map(|x| x <= 1.01),
    );
    let (d999, perf999) = (at(DEFAULT, 999), at(Sampler::PerfDwarf, 999));
    row(
        "target slowdown ≤ 2% at 999 Hz with complete stacks, below `perf --call-graph dwarf`",
        format!(
            "{} (default; perf dwarf: {})",
            slowdown(d999),
            slowdown(perf999)
        ),
        d999.map(|x| x <= 1.02 && perf999.is_none_or(|p| x < p)),
    );
    let cpu99 = o.and_then(|o| sampler_cpu(o, DEFAULT, 99));
    row(
        "sampler CPU ≤ 1% of one core at 99 Hz",
        format!("{} of a core (default `auto`)", percent(cpu99)),
        cpu99.map(|c| c <= 0.01),
    );
}

/// Issue 20's targets on the sampler's own cost (section 2), busy and idle, and on
/// off-CPU time recorded without drops (section 7).
fn cost_rows(row: &mut impl FnMut(&str, String, Option<bool>), r: &Results) {
    const FP: Sampler = Sampler::Tripod(Unwind::Fp);
    let o = r.overhead.as_ref();
    let steady = |sampler, hz| {
        o.and_then(|o| {
            o.steady_of(Config {
                sampler: Some(sampler),
                hz,
            })
        })
        .map(|w| w.cpu_rate)
    };
    for (hz, limit) in [(99, 0.001), (999, 0.0025)] {
        let (default, fp) = (steady(DEFAULT, hz), steady(FP, hz));
        row(
            &format!(
                "sampler CPU ≤ {:.2}% of a core at {hz} Hz, both CPUs busy (steady state), default and fp",
                limit * 100.0
            ),
            format!("{} (default), {} (fp)", percent(default), percent(fp)),
            default.zip(fp).map(|(d, f)| d <= limit && f <= limit),
        );
    }
    let idle = o.and_then(|o| o.idle_of(DEFAULT));
    row(
        "idle machine: sampler CPU ≤ 0.05% of a core and ≤ 2 wake-ups a second (default)",
        idle.map_or("–".into(), |i| {
            format!(
                "{}, {:.1} wake-ups/s",
                percent(Some(i.cpu_rate)),
                i.wakeup_rate
            )
        }),
        idle.map(|i| i.cpu_rate <= 0.0005 && i.wakeup_rate <= 2.0),
    );
    off_cpu_row(row, r);
}

/// Off-CPU time the default records against `--unwind fp`'s, and whether it dropped any.
fn off_cpu_row(row: &mut impl FnMut(&str, String, Option<bool>), r: &Results) {
    let recorded = |sampler| {
        r.off_cpu.as_ref().map(|off| {
            let runs = off.runs_of(Some(sampler));
            let time = median(&runs.iter().map(|r| r.recorded as f64).collect::<Vec<_>>());
            (time, runs.iter().filter(|r| !r.losses.is_empty()).count())
        })
    };
    let (Some((default, lossy)), Some((fp, _))) = (
        recorded(DEFAULT_OFF_CPU),
        recorded(Sampler::Tripod(Unwind::Fp)),
    ) else {
        row(OFF_CPU_TARGET, "–".into(), None);
        return;
    };
    let ratio = ratio(default, fp);
    row(
        OFF_CPU_TARGET,
        format!(
            "{DEFAULT_OFF_CPU} records {} of fp's time; runs with drops: {lossy}",
            ratio.map_or("–".into(), |x| format!("{:.1}%", x * 100.0))
        ),
        ratio.map(|x| (x - 1.0).abs() <= 0.05 && lossy == 0),
    );
}

const OFF_CPU_TARGET: &str =
    "off-CPU ping-pong: recorded time within 5% of `--unwind fp`'s, no ring-buffer drops";

/// The targets on memory under churn (section 6) and the 3:1 split (section 3).
fn churn_and_split_rows(row: &mut impl FnMut(&str, String, Option<bool>), r: &Results) {
    let churn = r
        .churn
        .as_ref()
        .and_then(|c| c.iter().find(|(s, _)| *s == DEFAULT).map(|(_, run)| *run));
    row(
        "bounded RSS (< 100 MiB) on the churn run",
        churn.map_or("–".into(), |c| {
            format!(
                "peak {}; {} after 10 s, {} after {:.0} s",
                mib(Some(c.max_rss_kib)),
                mib(c.rss_early_kib),
                mib(c.rss_end_kib),
                c.seconds
            )
        }),
        churn.map(|c| c.max_rss_kib < 100 * 1024),
    );
    let split = r.quality.as_ref().and_then(|q| {
        q.iter()
            .find(|(s, _)| *s == DEFAULT)
            .and_then(|(_, q)| q.split.percent())
    });
    row(
        "accuracy within 3 points of the true 75% split",
        split.map_or("–".into(), |s| {
            format!("{s:.1}% ({:+.1} points)", s - 75.0)
        }),
        split.map(|s| (s - 75.0).abs() <= 3.0),
    );
}

/// The target on end-of-run latency (section 4).
fn latency_row(row: &mut impl FnMut(&str, String, Option<bool>), r: &Results) {
    let latency = r.latency.as_ref().and_then(|l| {
        l.iter()
            .find(|(c, _)| c.sampler == DEFAULT && c.format == Format::Log)
            .map(|(_, runs)| runs)
    });
    let stop = latency.and_then(|runs| median(&runs.iter().map(|r| r.stop).collect::<Vec<_>>()));
    let distinct = latency
        .and_then(|runs| median(&runs.iter().map(|r| r.distinct as f64).collect::<Vec<_>>()));
    row(
        "end-of-run latency < 1 s for 10,000 distinct stacks",
        format!(
            "{} s for {} stacks (default log output)",
            fmt(stop, 3),
            fmt(distinct, 0)
        ),
        stop.zip(distinct).map(|(s, d)| s < 1.0 && d >= 10_000.0),
    );
}

/// The target on thread dumps (section 8).
fn dump_row(row: &mut impl FnMut(&str, String, Option<bool>), r: &Results) {
    let dumps = r.dump.as_ref();
    let dump_wall = |json| {
        dumps
            .and_then(|d| d.timings_of(Dumper::Tripod { json }))
            .and_then(|t| median(&t.runs.iter().map(|r| r.wall).collect::<Vec<_>>()))
    };
    let (text, json) = (dump_wall(false), dump_wall(true));
    let found = dumps.and_then(|d| {
        d.timings_of(Dumper::Tripod { json: false })
            .and_then(|t| t.threads_found)
    });
    row(
        "thread dump of a process with 1,000 threads < 1 s",
        format!(
            "{} s for {} threads (`--json`: {} s)",
            fmt(text, 3),
            found.map_or("–".into(), |n| n.to_string()),
            fmt(json, 3)
        ),
        text.zip(dumps)
            .map(|(t, d)| t < 1.0 && found == Some(d.threads)),
    );
}

fn percent(rate: Option<f64>) -> String {
    rate.map_or("–".into(), |r| format!("{:.2}%", r * 100.0))
}

fn configs(overhead: &Overhead) -> impl Iterator<Item = (Sampler, u32)> + '_ {
    overhead
        .runs
        .iter()
        .filter_map(|(c, _)| Some((c.sampler?, c.hz)))
}

fn overhead_tables(out: &mut String, r: &Results, overhead: &Overhead) {
    let baseline = overhead.runs_of(Config {
        sampler: None,
        hz: 0,
    });
    let walls = |runs: &[overhead::Run]| runs.iter().map(|r| r.wall).collect::<Vec<_>>();
    let cpus = |runs: &[overhead::Run]| runs.iter().map(|r| r.cpu).collect::<Vec<_>>();
    let (base_wall, base_cpu) = (median(&walls(baseline)), median(&cpus(baseline)));
    let noise = range(&walls(baseline))
        .zip(base_wall)
        .map(|((lo, hi), m)| (hi - lo) / m * 100.0);

    out.push_str("## 1. Target overhead\n\n");
    let _ = writeln!(
        out,
        "`work_fp --threads {} --iterations {}`: both CPUs busy with a fixed amount of work \
         (about {:.0} s per thread), first alone, then under each sampler recording the whole \
         machine. Medians of {} alternating rounds; slowdown is the median with the sampler \
         over the median without. Without a sampler the fixture took {} s of wall time and {} s \
         of CPU; those runs spread over {}% of their median, which is the noise floor here.\n",
        overhead::THREADS,
        overhead.iterations,
        r.options.work_seconds,
        r.options.runs,
        fmt(base_wall, 3),
        fmt(base_cpu, 3),
        fmt(noise, 1)
    );
    out.push_str("| sampler | Hz | wall (s) | slowdown (wall) | slowdown (CPU) | fastest–slowest run | fixture samples |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    let _ = writeln!(
        out,
        "| no sampler | – | {} | – | – | {} | – |",
        fmt(base_wall, 3),
        span(&walls(baseline), base_wall)
    );
    for (sampler, hz) in configs(overhead) {
        let runs = overhead.runs_of(Config {
            sampler: Some(sampler),
            hz,
        });
        let wall = median(&walls(runs));
        let samples = median(&runs.iter().map(|r| r.samples as f64).collect::<Vec<_>>());
        let _ = writeln!(
            out,
            "| {sampler} | {hz} | {} | {} | {} | {} | {} |",
            fmt(wall, 3),
            slowdown(ratio(wall, base_wall)),
            slowdown(ratio(median(&cpus(runs)), base_cpu)),
            span(&walls(runs), base_wall),
            fmt(samples, 0)
        );
    }

    out.push('\n');
    cost_table(out, r, overhead);
}

/// Section 2: the sampler's own CPU and memory in the runs of section 1.
fn cost_table(out: &mut String, r: &Results, overhead: &Overhead) {
    out.push_str("## 2. Sampler cost\n\n");
    out.push_str(
        "The same runs, seen from the sampler: its CPU time while the fixture ran (all its \
         threads, from schedstat), per second of wall time, and its peak resident memory. \
         perf's output is a data file, not stacks, so its row adds what `perf script` and \
         collapsing (inferno's collapse-perf, as stackcollapse-perf.pl) cost per second \
         recorded, and their peak memory. \"Over its life\" includes start-up and shutdown \
         (bpftrace compiles its program with LLVM at start).\n\n",
    );
    out.push_str("| sampler | Hz | CPU while busy | + getting folded stacks | total, % of a core | over its life | peak RSS | folding peak RSS |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (sampler, hz) in configs(overhead) {
        let runs = overhead.runs_of(Config {
            sampler: Some(sampler),
            hz,
        });
        let col = |f: fn(&overhead::Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        let busy = col(|r| r.sampler_cpu_rate);
        let post = col(|r| r.post_cpu_rate);
        let rss = col(|r| r.max_rss_kib as f64).map(|k| k as u64);
        let post_rss = col(|r| r.post_max_rss_kib as f64)
            .map(|k| k as u64)
            .filter(|k| *k > 0);
        let _ = writeln!(
            out,
            "| {sampler} | {hz} | {} | {} | {} | {} | {} | {} |",
            fmt(busy, 4),
            if sampler.is_tripod() || sampler == Sampler::Bpftrace {
                "–".into()
            } else {
                fmt(post, 4)
            },
            percent(busy.zip(post).map(|(b, p)| b + p)),
            fmt(col(|r| r.sampler_life_cpu_rate), 4),
            mib(rss),
            mib(post_rss)
        );
    }
    out.push('\n');
    wakeup_table(out, r, overhead);
}

/// Section 2, continued: what each sampler costs with nothing to sample, and in the
/// steady state of a busy machine, and how often it wakes up (the measures of issue 20).
fn wakeup_table(out: &mut String, r: &Results, overhead: &Overhead) {
    let _ = writeln!(
        out,
        "Idle and steady state: each sampler recording the whole machine, watched for {:.0} s; \
         medians of {} alternating rounds. *Idle*: at {} Hz with nothing of ours running, \
         after its start-up. *Busy, steady*: `work_fp --threads {}` keeps both CPUs busy, \
         started once the sampler is sampling and watched from 1 s after its start, so its \
         start (the new process read, its rows compiled) is left out, as in the steady \
         state issue 20 measures; the runs above include it. CPU is all of the sampler's \
         threads' (schedstat, as `perf stat -e task-clock`); wake-ups are their context \
         switches, voluntary and not, per second. perf's folding is not included.\n",
        overhead::WATCH_SECONDS,
        r.options.short_runs,
        overhead::IDLE_HZ,
        overhead::THREADS,
    );
    out.push_str(
        "| sampler | idle, % of a core | idle, wake-ups/s | busy 99 Hz, % of a core | busy 99 Hz, \
         wake-ups/s | busy 999 Hz, % of a core | busy 999 Hz, wake-ups/s | idle rounds, % of a \
         core |\n|---|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for (sampler, runs) in &overhead.idle {
        let idle = Watched::median_of(runs);
        let steady = |hz| {
            overhead.steady_of(Config {
                sampler: Some(*sampler),
                hz,
            })
        };
        let rounds: Vec<String> = runs
            .iter()
            .map(|w| format!("{:.2}", w.cpu_rate * 100.0))
            .collect();
        let _ = writeln!(
            out,
            "| {sampler} | {} | {} | {} | {} | {} | {} | {} |",
            percent(idle.map(|w| w.cpu_rate)),
            fmt(idle.map(|w| w.wakeup_rate), 1),
            percent(steady(99).map(|w| w.cpu_rate)),
            fmt(steady(99).map(|w| w.wakeup_rate), 1),
            percent(steady(999).map(|w| w.cpu_rate)),
            fmt(steady(999).map(|w| w.wakeup_rate), 1),
            rounds.join(", "),
        );
    }
    out.push('\n');
}

/// The fastest and slowest run as slowdowns against `base`.
fn span(values: &[f64], base: Option<f64>) -> String {
    match (range(values), base) {
        (Some((lo, hi)), Some(_)) => format!(
            "{} … {}",
            slowdown(ratio(Some(lo), base)),
            slowdown(ratio(Some(hi), base))
        ),
        _ => "–".into(),
    }
}

fn share(s: &Share) -> String {
    s.percent().map_or("–".into(), |p| {
        format!("{p:.1}% ({} of {})", s.hits, s.of)
    })
}

fn quality_tables(out: &mut String, r: &Results, quality: &[(Sampler, Quality)]) {
    out.push_str("## 3. Stack quality\n\n");
    let _ = writeln!(
        out,
        "Each sampler records one `work` process (`--threads 1`) at {} Hz for {} s, {} round(s) \
         pooled. A sample counts as complete when its stack holds main;alpha;beta;gamma;spin \
         in order with nothing missing in between. `work_fp` is built with `-O1 \
         -fno-omit-frame-pointer -mno-omit-leaf-frame-pointer`, `work_nofp` with `-O2 \
         -fomit-frame-pointer` (like distribution binaries).\n",
        quality::HZ,
        r.options.sample_seconds,
        r.options.short_runs
    );
    out.push_str("| sampler | frame pointers | no frame pointers |\n|---|---:|---:|\n");
    for (sampler, q) in quality {
        let _ = writeln!(out, "| {sampler} | {} | {} |", share(&q.fp), share(&q.nofp));
    }
    out.push_str("\n## 4. Accuracy\n\n");
    let _ = writeln!(
        out,
        "`split` runs the same loop for 3 units in `heavy`, then 1 unit in `light`, over and \
         over, so 75% of its samples in either belong to `heavy`. Recorded like the stack \
         quality runs; the last column shows each round.\n"
    );
    out.push_str("| sampler | in `heavy` | off by | rounds |\n|---|---:|---:|---|\n");
    for (sampler, q) in quality {
        let off = q.split.percent().map(|p| p - 75.0);
        let rounds: Vec<String> = q.split_rounds.iter().map(|p| format!("{p:.1}%")).collect();
        let _ = writeln!(
            out,
            "| {sampler} | {} | {} points | {} |",
            share(&q.split),
            off.map_or("–".into(), |o| format!("{o:+.1}")),
            rounds.join(", ")
        );
    }
    out.push('\n');
}

fn latency_table(out: &mut String, r: &Results, latency: &[(latency::Config, Vec<latency::Run>)]) {
    out.push_str("## 5. End-of-run latency\n\n");
    let _ = writeln!(
        out,
        "{} `paths` processes walk 2^14 distinct call paths while each sampler records the \
         whole machine at {} Hz for {} s; then SIGINT. \"Stop\" is the time from SIGINT until \
         the sampler has exited, its output complete. perf's output then still needs `perf \
         script` and collapsing before it shows a stack; that is the next column. Medians of \
         {} round(s) (bpftrace: one, since it symbolizes every stack for minutes as it \
         exits). Distinct stacks are counted in each sampler's folded output for the \
         fixture's processes (for the log format: tripod-bpf's own count, all processes).\n",
        latency::PROCESSES,
        latency::HZ,
        r.options.latency_seconds,
        r.options.short_runs
    );
    out.push_str("| sampler | distinct stacks | stop | + perf script & collapse | until stacks are readable |\n|---|---:|---:|---:|---:|\n");
    for (config, runs) in latency {
        let col = |f: fn(&latency::Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        let (stop, post) = (col(|r| r.stop), col(|r| r.post));
        let _ = writeln!(
            out,
            "| {} | {} | {} s | {} | {} s |",
            latency::describe(*config),
            fmt(col(|r| r.distinct as f64), 0),
            fmt(stop, 3),
            if config.sampler.is_tripod() || config.sampler == Sampler::Bpftrace {
                "–".into()
            } else {
                format!("{} s", fmt(post, 2))
            },
            fmt(stop.zip(post).map(|(s, p)| s + p), 2)
        );
    }
    out.push('\n');
}

fn churn_table(out: &mut String, r: &Results, churn: &[(Sampler, churn::Run)]) {
    out.push_str("## 6. Memory over time\n\n");
    let _ = writeln!(
        out,
        "`churn` starts short-lived processes back to back on both CPUs (each a fresh exec \
         with its own mappings, running about a millisecond of work) while the sampler records \
         the whole machine at {} Hz for {} s. Resident memory is read from /proc after 10 s \
         and at the end; peak is the high-water mark at exit. {}.\n",
        churn::HZ,
        r.options.churn_seconds,
        churn::SKIPPED_PERF_DWARF
    );
    out.push_str(
        "The last two columns are about quality, not memory. Each process lives about a \
         millisecond, so a sampler must know its mappings without reading /proc in time. \
         *Every user frame named*: the share of the churn processes' samples whose user \
         stack has no `[unknown]`, `[truncated]` or bare `[module]` frame (exec, the dynamic \
         loader and exit included). *In their work*: the share with `child_main;child_work` \
         on the stack; the rest of a process's life is exec, start-up and exit, so even a \
         perfect sampler stays well below 100% here. *Of the work's samples*: the same, out \
         of the samples taken in the work or that may have been (`child_work` on the stack, \
         or an innermost user frame that could not be named), as in section 10: how well a \
         sampler names the work itself.\n\n",
    );
    out.push_str("| sampler | RSS after 10 s | RSS at the end | peak RSS | processes started | output written | every user frame named | in their work | of the work's samples |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (sampler, run) in churn {
        let _ = writeln!(
            out,
            "| {sampler} | {} | {} | {} | {} | {:.1} MB | {} | {} | {} |",
            mib(run.rss_early_kib),
            mib(run.rss_end_kib),
            mib(Some(run.max_rss_kib)),
            run.processes,
            run.output_bytes as f64 / 1e6,
            share(&run.all_named),
            share(&run.named),
            share(&run.work_named)
        );
    }
    out.push('\n');
}

fn off_cpu_table(out: &mut String, r: &Results, off_cpu: &OffCpu) {
    let baseline = off_cpu.runs_of(None);
    let col = |runs: &[offcpu::Run], f: fn(&offcpu::Run) -> f64| {
        median(&runs.iter().map(f).collect::<Vec<_>>())
    };
    let walls = |runs: &[offcpu::Run]| runs.iter().map(|r| r.wall).collect::<Vec<_>>();
    let base_wall = col(baseline, |r| r.wall);
    let switches_per_second = col(baseline, |r| r.switches as f64 / r.wall);

    out.push_str("## 7. Off-CPU overhead\n\n");
    let _ = writeln!(
        out,
        "`pingpong --round-trips {}`: two threads pass one byte back and forth over two pipes, \
         both on one CPU, so every pass is a context switch (about {} k a second for {} s \
         without a sampler). Each sampler records that one process: tripod-bpf with \
         `--mode off-cpu` (a stack per switch out, timed until the thread runs again), perf and bpftrace on \
         the `sched:sched_switch` tracepoint (a sample or a count per switch), bcc's \
         offcputime (when installed) on `finish_task_switch`. The sampler attaches while the \
         fixture waits for a signal to start; the fixture times its round trips itself, so \
         start-up and shutdown are left out. Medians of {} alternating rounds; slowdown is \
         the median wall time with the sampler over the median without. An eBPF sampler's \
         work at each switch runs in the switching thread, so it shows in the fixture's CPU \
         time; the sampler's own CPU column is its user-space side (and perf's writing). \
         What a sampler recorded of the fixture is a sanity check in its own unit: tripod-bpf \
         and offcputime count microseconds off-CPU over the whole recording (the wait for the \
         start signal included), perf its samples, bpftrace switches.\n",
        off_cpu.round_trips,
        fmt(switches_per_second.map(|n| n / 1e3), 0),
        fmt(base_wall, 2),
        r.options.runs
    );
    out.push_str("| sampler | wall (s) | slowdown | fastest–slowest run | fixture CPU (s) | sampler CPU (s) | sampler peak RSS | recorded of the fixture |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (sampler, runs) in &off_cpu.runs {
        let wall = col(runs, |r| r.wall);
        let rss = col(runs, |r| r.max_rss_kib as f64).map(|k| k as u64);
        let (sampler_cpu, rss, recorded) = match sampler {
            None => ("–".into(), "–".into(), "–".into()),
            Some(s) => (
                fmt(col(runs, |r| r.sampler_cpu), 3),
                mib(rss),
                format!(
                    "{} {}",
                    fmt(col(runs, |r| r.recorded as f64), 0),
                    s.off_cpu_unit()
                ),
            ),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {sampler_cpu} | {rss} | {recorded} |",
            offcpu::describe(*sampler),
            fmt(wall, 3),
            if sampler.is_some() {
                slowdown(ratio(wall, base_wall))
            } else {
                "–".into()
            },
            span(&walls(runs), base_wall),
            fmt(col(runs, |r| r.cpu), 3),
        );
    }
    off_cpu_losses(out, off_cpu);
}

/// What the samplers of section 7 said they lost: losses change what a
/// recording is worth, so their own words are quoted.
fn off_cpu_losses(out: &mut String, off_cpu: &OffCpu) {
    let mut losses = String::new();
    for (sampler, runs) in &off_cpu.runs {
        let lossy = runs.iter().filter(|r| !r.losses.is_empty()).count();
        if let Some(last) = runs.iter().rev().find(|r| !r.losses.is_empty()) {
            let _ = writeln!(
                losses,
                "- {}, in {lossy} of {} rounds; the last said: {}",
                offcpu::describe(*sampler),
                runs.len(),
                last.losses.join(" / ")
            );
        }
    }
    if losses.is_empty() {
        out.push_str("\nNo sampler reported lost or dropped events.\n\n");
    } else {
        out.push_str("\nWhat the samplers said they lost or dropped:\n\n");
        out.push_str(&losses);
        out.push('\n');
    }
}

fn dump_table(out: &mut String, r: &Results, dumps: &Dumps) {
    out.push_str("## 8. Thread dump time\n\n");
    let _ = writeln!(
        out,
        "`manythreads --threads {}`: {} threads, {} of them parked a third each in \
         `pthread_cond_wait`, a pipe `read` and `nanosleep` through named functions, main in \
         `sigwait`. Each tool dumps the stack of every thread once, output to /dev/null; \
         the time runs from its start to its exit, so tripod-bpf's includes loading its eBPF \
         programs and symbolizing. Medians of {} rounds, the tools in rotating order. A first, \
         untimed run of each writes its output to a file to count the threads it shows (and \
         warms the page cache for all alike). tripod-bpf reads the threads with an eBPF task \
         iterator and leaves the process running; gdb, eu-stack and pstack stop it (ptrace) \
         while they read it.\n",
        dump::THREADS,
        dumps.threads,
        dump::THREADS,
        r.options.runs
    );
    out.push_str(
        "| tool | threads shown | wall (s) | fastest–slowest (s) | CPU (s) | peak RSS |\n",
    );
    out.push_str("|---|---:|---:|---:|---:|---:|\n");
    for timings in &dumps.timings {
        let col =
            |f: fn(&dump::Run) -> f64| median(&timings.runs.iter().map(f).collect::<Vec<_>>());
        let walls: Vec<f64> = timings.runs.iter().map(|r| r.wall).collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            timings.dumper,
            timings
                .threads_found
                .map_or("not counted".into(), |n| n.to_string()),
            fmt(col(|r| r.wall), 3),
            range(&walls).map_or("–".into(), |(lo, hi)| format!("{lo:.3} … {hi:.3}")),
            fmt(col(|r| r.cpu), 3),
            mib(col(|r| r.max_rss_kib as f64).map(|k| k as u64))
        );
    }
    out.push_str("\nThe other tools:\n\n");
    for (dumper, found) in &dumps.peers {
        match found {
            Ok((_, version)) => {
                let _ = writeln!(out, "- {dumper}: {version}");
            }
            Err(why) => {
                let _ = writeln!(out, "- {dumper}: **skipped**, {why}");
            }
        }
    }
    out.push('\n');
}

fn python_table(out: &mut String, r: &Results, python: &Python) {
    out.push_str("## 9. Python: overhead on a CPU-bound Python program\n\n");
    let interpreters: Vec<String> = python
        .interpreters
        .iter()
        .map(|i| format!("{} is `{}`", i.label(), i.path.display()))
        .collect();
    let _ = writeln!(
        out,
        "`hot.py {}` (xtask/bench-fixtures/hot.py): pure-Python integer arithmetic through \
         main;outer_step;inner_loop, a fixed amount of it (about {:.0} s without a sampler). \
         Each sampler records that one process at {} Hz: tripod-bpf as by default (Python \
         frames included) and with `--no-python` (native stacks only), py-spy `record --format \
         raw` as by default (it stops the process for each sample) and with `--nonblocking`. \
         The sampler attaches while the fixture waits for a signal to start; the fixture times \
         the work itself, so start-up and shutdown are left out. Medians of {} alternating \
         rounds; slowdown is the median time with the sampler over the median without, under \
         the same interpreter. Sampler CPU is its own process's (all threads, from schedstat) \
         while the work ran; tripod-bpf's eBPF programs run in the target's context, and \
         py-spy's pauses stop the target, so both show in the slowdown instead. The last \
         column counts the samples whose Python frames hold main;outer_step;inner_loop in \
         order, out of all the sampler recorded of the process, rounds pooled: `--no-python` \
         has no Python frames, so there it is zero by design. {}.\n",
        python.iterations,
        r.options.python_seconds,
        python::HZ,
        r.options.runs,
        interpreters.join("; ")
    );
    out.push_str("| interpreter | sampler | elapsed (s) | slowdown | fastest–slowest run | sampler CPU (s) | % of a core | samples | main;outer_step;inner_loop |\n");
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for (config, runs) in &python.runs {
        let col = |f: fn(&python::Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
        let elapsed: Vec<f64> = runs.iter().map(|r| r.elapsed).collect();
        let baseline = python.runs_of(python::Config {
            sampler: None,
            ..*config
        });
        let base = median(&baseline.iter().map(|r| r.elapsed).collect::<Vec<_>>());
        let interpreter = python.interpreters[config.interpreter].label();
        let Some(sampler) = config.sampler else {
            let _ = writeln!(
                out,
                "| {interpreter} | no sampler | {} | – | {} | – | – | – | – |",
                fmt(median(&elapsed), 3),
                span(&elapsed, base)
            );
            continue;
        };
        let chain = runs.iter().fold(Share::default(), |sum, r| Share {
            hits: sum.hits + r.chain.hits,
            of: sum.of + r.chain.of,
        });
        let _ = writeln!(
            out,
            "| {interpreter} | {sampler} | {} | {} | {} | {} | {} | {} | {} |",
            fmt(median(&elapsed), 3),
            slowdown(ratio(median(&elapsed), base)),
            span(&elapsed, base),
            fmt(col(|r| r.sampler_cpu), 3),
            percent(col(|r| r.sampler_cpu / r.elapsed)),
            fmt(col(|r| r.chain.of as f64), 0),
            share(&chain)
        );
    }
    out.push('\n');
}

/// The median over a configuration's rounds of one share of its breakdown, in percent.
fn shortlived_median(runs: &[shortlived::Run], share: fn(&ChainBreakdown) -> Share) -> Option<f64> {
    median(
        &runs
            .iter()
            .filter_map(|r| share(&r.breakdown).percent())
            .collect::<Vec<_>>(),
    )
}

/// The targets-table row of issue 16's goal: tripod-bpf's dwarf and fp rows, perf's beside.
fn shortlived_row(row: &mut impl FnMut(&str, String, Option<bool>), r: &Results) {
    let of = |sampler: Sampler| {
        r.shortlived.as_ref().and_then(|s| {
            s.configs
                .iter()
                .find(|(c, _)| c.sampler == sampler)
                .and_then(|(_, runs)| shortlived_median(runs, ChainBreakdown::share_of_work))
        })
    };
    let pct = |p: Option<f64>| p.map_or("–".into(), |p| format!("{p:.1}%"));
    let (dwarf, fp) = (of(DWARF), of(Sampler::Tripod(Unwind::Fp)));
    row(
        "≥ 95% of the samples in 4 ms processes' own work with their whole chain (dwarf without frame pointers, fp with)",
        format!(
            "{} (dwarf), {} (fp); perf `-g` {}, perf dwarf {}",
            pct(dwarf),
            pct(fp),
            pct(of(Sampler::PerfFp)),
            pct(of(Sampler::PerfDwarf))
        ),
        dwarf
            .zip(fp)
            .map(|(d, f)| d >= shortlived::GOAL_PERCENT && f >= shortlived::GOAL_PERCENT),
    );
}

fn shortlived_table(out: &mut String, r: &Results, measured: &shortlived::Measured) {
    out.push_str("## 10. Short-lived processes\n\n");
    shortlived_setup(out, r, measured);
    shortlived_rule(out, measured);
    out.push_str(
        "| sampler | fixture | processes per run | samples counted | complete, of all | \
         of the work's samples | rounds (work's) | against the goal | exec/exit | unnamed | \
         broken | elsewhere |\n\
         |---|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|\n",
    );
    for (config, runs) in &measured.configs {
        shortlived_line(out, *config, runs);
    }
    shortlived_losses(out, &measured.configs);
}

/// What runs, for how long, and under what load.
fn shortlived_setup(out: &mut String, r: &Results, measured: &shortlived::Measured) {
    let loads: Vec<f64> = measured
        .configs
        .iter()
        .flat_map(|(_, runs)| runs.iter().filter_map(|r| r.load))
        .collect();
    let _ = writeln!(
        out,
        "A shell loop runs `chain_nofp --seconds {secs}` (or `chain_fp`) over and over: the \
         end-to-end tests' fixture `tests/fixtures/chain.c`, main;alpha;beta;gamma;spin for \
         {ms} ms, then exit, each run a new process (fork, exec, dynamic loader). The sampler \
         records the whole machine (`--all`, `-a`) at {hz} Hz for {} s; other processes are \
         sampled too and left out here (perf's recording is read with `perf script --comms` \
         and the fixture's name, so that it unwinds only those samples: over the whole \
         machine, `--call-graph dwarf` took `perf script` more than 5 minutes). The 1-minute \
         load average at the end of the runs was {} (median; {} CPUs). Load lowers every \
         sampler's share of all samples alike: the 4 ms are wall time (a timer), so a process \
         that waits for a CPU spends less of its life in spin, while start-up and exit cost \
         the same. Medians of {} alternating rounds.\n",
        r.options.shortlived_seconds,
        fmt(median(&loads), 1),
        r.machine.cpus,
        r.options.short_runs,
        secs = shortlived::PROCESS_SECONDS,
        ms = shortlived::PROCESS_SECONDS
            .parse::<f64>()
            .map_or(0.0, |s| s * 1e3),
        hz = shortlived::HZ,
    );
    let alone: Vec<String> = measured
        .alone
        .iter()
        .map(|a| {
            format!(
                "`{}` {:.2} ms (the chain's {} ms are {}% of it)",
                if a.fp_build { "chain_fp" } else { "chain_nofp" },
                a.cpu_per_process.as_secs_f64() * 1e3,
                shortlived::PROCESS_SECONDS
                    .parse::<f64>()
                    .map_or(0.0, |s| s * 1e3),
                fmt(a.chain_percent(), 0)
            )
        })
        .collect();
    if !alone.is_empty() {
        let _ = writeln!(
            out,
            "*Alone*, with no sampler, {} processes of each build one after another used this \
             much CPU time each, exec to exit (median of their rusage): {}. The rest is exec, \
             the dynamic loader (in this VM mostly `init_cpu_features`, whose `cpuid` \
             instructions trap to the hypervisor) and exit: no sampler can show the chain \
             there.\n",
            measured.alone[0].processes,
            alone.join("; ")
        );
    }
}

/// How samples are counted and sorted, and what the goal is judged on.
fn shortlived_rule(out: &mut String, measured: &shortlived::Measured) {
    let ceiling = measured
        .alone
        .iter()
        .filter_map(shortlived::Alone::chain_percent)
        .fold(None, |max: Option<f64>, p| {
            Some(max.map_or(p, |m| m.max(p)))
        });
    let _ = writeln!(
        out,
        "*The rule.* A sample counts when its process name is the fixture's and its stack has \
         at least one user (non-kernel) frame; it is complete when its user frames hold \
         main;alpha;beta;gamma;spin contiguously and in that order (frames inside spin, kernel \
         ones included, may follow). *Complete, of all* is complete over counted: it cannot \
         pass the chain's share of a process's CPU time ({} here, above), for any sampler. \
         *Of the work's samples* leaves out the samples taken outside the chain's work \
         (*exec/exit* and *elsewhere* below), so it measures how well a sampler names the \
         work itself: complete over complete, unnamed and broken. *The goal* (issue 16): at \
         least {:.0}% of the work's samples complete for tripod-bpf with `--unwind dwarf` on \
         the build without frame pointers and with `--unwind fp` on the frame-pointer build \
         (`auto`, the default, is shown on the former). perf reached {:.0}% in the manual run \
         the issue quotes, with `-g` on the frame-pointer build and `--call-graph dwarf` on \
         the other, on a machine whose dynamic loader took less of each process.\n",
        ceiling.map_or("about 80%".into(), |c| format!("at most {c:.0}%")),
        shortlived::GOAL_PERCENT,
        shortlived::PERF_REFERENCE_PERCENT
    );
    out.push_str(
        "The last four columns split the incomplete samples, rounds pooled, by the first \
         rule that applies, as a share of all counted: *exec/exit*, a kernel frame is the \
         execve or exit path (`*execve*`, `do_exit`), where the user stack is being replaced \
         or torn down; *elsewhere*, spin is not on the stack and either the innermost user \
         frame is a named function outside the chain (`[unknown];intel_check_word`: a \
         sample in ld.so whose callers a frame-pointer walk lost) or every frame is named \
         (the dynamic loader, libc start-up, main's own calls, exit handlers); *unnamed*, a \
         user frame is `[unknown]`, `[truncated]`, `[missing]` or a bare `[module]`; \
         *broken*, every frame named and spin on the stack but not the whole chain. A \
         sampler that misnamed the innermost frame would move samples from *unnamed* to \
         *elsewhere*: compare its *elsewhere* with perf's. The commonest incomplete stacks \
         of each configuration's last round are kept in `target/bench/shortlived/`.\n\n",
    );
}

/// Losses explain `[missing]` frames: quote the samplers' own words.
fn shortlived_losses(out: &mut String, results: &[(shortlived::Config, Vec<shortlived::Run>)]) {
    let mut losses = String::new();
    for (config, runs) in results {
        let lossy = runs.iter().filter(|r| !r.losses.is_empty()).count();
        if let Some(last) = runs.iter().rev().find(|r| !r.losses.is_empty()) {
            let _ = writeln!(
                losses,
                "- {}, in {lossy} of {} rounds; the last said: {}",
                config.describe(),
                runs.len(),
                last.losses.join(" / ")
            );
        }
    }
    if losses.is_empty() {
        out.push_str("\nNo sampler reported lost or dropped samples.\n\n");
    } else {
        out.push_str("\nWhat the samplers said they lost or dropped:\n\n");
        out.push_str(&losses);
        out.push('\n');
    }
}

fn shortlived_line(out: &mut String, config: shortlived::Config, runs: &[shortlived::Run]) {
    let col = |f: fn(&shortlived::Run) -> Option<f64>| {
        median(&runs.iter().filter_map(f).collect::<Vec<_>>())
    };
    let pct = |p: Option<f64>| p.map_or("–".into(), |p| format!("{p:.1}%"));
    let work = shortlived_median(runs, ChainBreakdown::share_of_work);
    let rounds: Vec<String> = runs
        .iter()
        .filter_map(|r| r.breakdown.share_of_work().percent())
        .map(|p| format!("{p:.1}%"))
        .collect();
    let against = match (config.has_goal(), work) {
        (_, None) => "–".to_owned(),
        (true, Some(c)) => format!(
            "≥ {:.0}%: {}",
            shortlived::GOAL_PERCENT,
            status(Some(c >= shortlived::GOAL_PERCENT))
        ),
        (false, Some(c)) => format!(
            "issue's {:.0}%: {}",
            shortlived::PERF_REFERENCE_PERCENT,
            if c >= shortlived::PERF_REFERENCE_PERCENT {
                "reached"
            } else {
                "**not reached**"
            }
        ),
    };
    let pooled = runs
        .iter()
        .fold(ChainBreakdown::default(), |sum, r| sum.add(&r.breakdown));
    let part = |n: u64| {
        pct(Share {
            hits: n,
            of: pooled.samples(),
        }
        .percent())
    };
    let _ = writeln!(
        out,
        "| {} | {} | {} | {} | {} | {} | {} | {against} | {} | {} | {} | {} |",
        config.describe(),
        if config.fp_build {
            "`chain_fp`"
        } else {
            "`chain_nofp`"
        },
        fmt(col(|r| r.processes.map(|n| n as f64)), 0),
        fmt(col(|r| Some(r.breakdown.samples() as f64)), 0),
        pct(shortlived_median(runs, ChainBreakdown::share)),
        pct(work),
        rounds.join(", "),
        part(pooled.exec_exit),
        part(pooled.unnamed),
        part(pooled.broken),
        part(pooled.elsewhere)
    );
}

fn method(out: &mut String) {
    out.push_str(
        "## How the runs are made\n\n\
         - Fixtures are C programs in `tests/fixtures/` (`work.c`, `split.c`, `paths.c`, \
           `churn.c`, `pingpong.c`, `manythreads.c`, and the end-to-end tests' `chain.c`), compiled by the bench into \
           `target/bench/fixtures`. `pingpong` and `manythreads` time the tools, not their \
           stacks, and are built `-O2` without frame pointers, like distribution binaries. \
           The Python fixture, `hot.py`, is in `xtask/bench-fixtures/` and runs as it is.\n\
         - Each sampler gets 1 s after it reports it is sampling (tripod-bpf's `Sampling` \
           line, bpftrace's `Attaching`, offcputime's `Tracing`; perf says nothing, so 1 s \
           after its start) before the measured work begins. Samplers of the whole machine \
           start before the fixture; samplers of one process (`-p PID`) start once it has \
           printed its PID, and it waits for a signal to begin its work. A sampler is \
           stopped with SIGINT, as Ctrl-C would, while its fixture still runs.\n\
         - Every round visits every configuration once, starting at a different one each \
           round, so drift on this noisy 2-CPU machine hits all of them alike.\n\
         - Peers use their defaults except where noted: perf's dwarf mode copies 8 KiB of \
           stack per sample; bpftrace runs `profile:hz:N { @[comm, kstack, ustack] = count(); }` \
           with `BPFTRACE_MAP_KEYS_MAX=65536` (its default of 4096 drops stacks in the \
           many-stacks run) and its frames' `+offset` removed.\n\
         - Off-CPU runs: perf records `-e sched:sched_switch -p PID`, and its count is the \
           sample count of its own closing line (`perf script` over gigabytes of dwarf stack \
           copies would take minutes). bpftrace runs `tracepoint:sched:sched_switch \
           /pid == PID/ { @[comm, kstack, ustack] = count(); }`, which counts switches by \
           stack but does not time the waits as tripod-bpf and offcputime do.\n\
         - Dumps: gdb runs with `set debuginfod enabled off`, so it never downloads debug \
           info. Threads shown are counted from gdb's `Thread N` lines, eu-stack's `TID` \
           lines and tripod-bpf's own header (or its JSON `threads`); pstack is a gdb script \
           on some distributions and its own program on others, so its output is not \
           counted.\n\
         - tripod-bpf writes folded stacks (`-f folded`) except in the first latency row, \
           which uses the default Tripod-style log.\n\
         - The bench fails (non-zero exit) when a sampler crashes, hangs, or records no \
           samples of the fixture, or when a tripod-bpf dump misses a thread; the runs that \
           worked are still written here.\n",
    );
}

fn sideband_table(
    out: &mut String,
    r: &Results,
    results: &[(sideband::Config, Vec<sideband::Run>)],
) {
    let _ = write!(
        out,
        "\n## 11. Mapping records: perf sideband or eBPF probe\n\n\
         `churn --loops 1` (one process at a time, each a fork and exec of a small dynamically \
         linked program that runs about a millisecond) for {:.0} s, alone and under \
         `tripod-bpf --all --unwind fp -F {}` with each source of mapping records (hidden \
         `--sideband-source`). The *perf sideband* is tripod-bpf's: a `PERF_COUNT_SW_DUMMY` \
         event per CPU with `mmap2`, `comm`, `task`, `build_id` and `sample_id_all`. The *eBPF \
         probe* writes the same facts from tracepoints, into one ring buffer of the same total \
         size: `syscalls:sys_enter/exit_mmap` for executable file mappings (address, length, \
         offset, and from the descriptor's file its inode, device, generation and dentry \
         name) and `sched_process_exec/fork/exit` (exec: the program's file and text range). \
         `fexit` of `mmap_region`, which would also see the mappings the kernel makes at \
         exec, is refused on this kernel (`BPF_PROG_LOAD` fails with EPERM; it has no kprobes \
         either), so the probe misses those. In these runs \
         the records are read and counted but not used (samples are located from /proc in \
         all three), so the runs differ only in how the records reach tripod-bpf. Medians of \
         {} rounds; the machine is shared with other builds, so the process rate and CPU \
         shares move by several percent between rounds.\n\n\
         *Workload system CPU*: the churn process's and its reaped children's, in % of one CPU \
         (fork, exec, mmap and exit run there, and so does the cost of writing each record). \
         *Read CPU*: tripod-bpf's own CPU time inside the reader (ms per run). *Delay*: from \
         a record's kernel time to tripod-bpf reading it (the perf reader also holds back the \
         last millisecond so that records from different CPUs come in order).\n\n",
        2.0 * r.options.shortlived_seconds,
        sideband::HZ,
        r.options.short_runs
    );
    out.push_str(
        "| source | processes/s | workload system CPU | sampler CPU | records | lost | \
         mmaps with path / build id / inode | delay mean / max | read CPU |\n\
         |---|---:|---:|---:|---:|---:|---|---:|---:|\n",
    );
    for (config, runs) in results {
        let med = |f: &dyn Fn(&sideband::Run) -> Option<f64>| {
            median(&runs.iter().filter_map(f).collect::<Vec<_>>())
        };
        let tally = |f: fn(&sideband::Tally) -> u64| med(&|run| run.tally.map(|t| f(&t) as f64));
        let mmaps = tally(|t| t.mmaps);
        let share = |value: Option<f64>| match (value, mmaps) {
            (Some(v), Some(m)) if m > 0.0 => format!("{:.0}%", 100.0 * v / m),
            _ => "-".into(),
        };
        let has_tally = runs.iter().any(|run| run.tally.is_some());
        let _ = writeln!(
            out,
            "| {} | {} | {}% | {} | {} | {} | {} | {} | {} |",
            config.describe(),
            fmt(med(&|run| Some(run.processes_per_second)), 0),
            fmt(med(&|run| Some(run.workload_system_percent)), 1),
            med(&|run| run.sampler_percent).map_or("-".into(), |p| format!("{p:.1}%")),
            if has_tally {
                fmt(tally(|t| t.records), 0)
            } else {
                "-".into()
            },
            if has_tally {
                fmt(tally(|t| t.lost), 0)
            } else {
                "-".into()
            },
            if has_tally && mmaps.unwrap_or(0.0) > 0.0 {
                format!(
                    "{} / {} / {}",
                    share(tally(|t| t.with_path)),
                    share(tally(|t| t.with_build_id)),
                    share(tally(|t| t.with_inode))
                )
            } else {
                "-".into()
            },
            if has_tally && mmaps.unwrap_or(0.0) > 0.0 {
                format!(
                    "{} / {} ms",
                    fmt(tally(|t| t.delay_mean_us).map(|us| us / 1000.0), 1),
                    fmt(tally(|t| t.delay_max_us).map(|us| us / 1000.0), 1)
                )
            } else {
                "-".into()
            },
            if has_tally {
                format!("{} ms", fmt(tally(|t| t.read_cpu_ms), 0))
            } else {
                "-".into()
            },
        );
    }
    out.push_str(
        "\nThe two sources write their records at the same moment, in the system call that \
         makes the mapping; the delay is how often tripod-bpf reads them. README, \
         \"Mapping records: perf events, not an eBPF probe\", says what was decided from this \
         table and why.\n",
    );
}
