//! One recording, start to finish: check, open the output, start the sampler,
//! then drain -> aggregate -> symbolize -> report until told to stop.
use std::{
    ffi::OsString,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::process::ExitStatusExt,
    },
    process::ExitStatus,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use tokio::time::{sleep, sleep_until, timeout};

use crate::{
    annotate::Rules,
    cadence::{Cadence, Due, Pacing},
    cgroup::Selected,
    config::{Config, Mode, OutputFormat, Target, UnwindMode},
    live::{self, start_sampler},
    mappings::Scope,
    messages::{self, note, warn},
    model::Counters,
    output::{
        describe_completeness,
        push::{PushStats, Pusher},
        Output, StatusLine,
    },
    pipeline::{Pipeline, PipelineOptions, Recording},
    preflight,
    process::{self, ProcessTable, SharedFile},
    python::{Python, PythonChange},
    report::{RunInfo, Summary},
    sampler::{News, SampleSource, SamplerOptions, Wakeup},
    session::{load_rules, open_output},
    signals::Shutdown,
};

/// How long the command of `-- COMMAND` gets to exit after SIGTERM, and
/// then after SIGKILL, when the run stops before it has exited.
const CHILD_GRACE: Duration = Duration::from_secs(2);

/// Records as configured; returns the exit status for the process. A signal
/// that `shutdown` reports before sampling starts skips the rest of the
/// start (each slow step checks), and the output is still written.
pub async fn run(mut config: Config, shutdown: Shutdown) -> Result<u8> {
    messages::set_quiet(config.quiet);
    let rules = Arc::new(load_rules(config.rules.as_deref())?);
    preflight::check(&config)?;
    live::settle_unwind(&mut config);
    let cgroups = preflight::check_cgroups(&config.cgroups)?;
    live::prepare_target_files(config.max_file_size);
    let mut output = open_output(&config.output, config.format, &shutdown)?;
    output.set_folded_prefix(config.folded_prefix);
    let (processes, mut python) = read_named_targets(&config, &shutdown);
    if let Some(signal) = shutdown.requested() {
        let parts = (rules, processes, python);
        return write_unsampled(&config, &cgroups, parts, &mut output, signal);
    }
    let mut source = start_sampler(&sampler_options(&config, &cgroups, &mut python))?;
    let source = source.as_mut();
    if let (Some(reason), true) = (source.fallback_reason(), config.mode.samples_on_cpu()) {
        log::debug!("hardware cycles event: {reason}");
        note("No hardware cycles event here (no PMU); using the software cpu-clock event");
    }
    let counters = source.counters()?;
    let started_with = run_info(&config, &cgroups, source.event().name(), None);
    let mut pipeline = new_pipeline(
        &config,
        &cgroups,
        started_with,
        rules,
        processes,
        python,
        counters,
    );
    // Both before the command starts: its first stacks find libc's rows in
    // the kernel, and its first pull is not held up by kallsyms.
    let shared = pipeline.shared_files();
    unwind_in_kernel_if_asked(&config, &mut pipeline, source, &shared);
    pipeline.read_symbols_early(&shared, config.stacks.kernel());
    // Before a command starts: the snapshot takes a while (every thread's
    // stack), and the command's first rows, sent as it starts, may lack its
    // libraries until its copies are read, in the loop.
    if config.mode.tracks_switches() {
        pipeline.seed_waits(source)?;
    }
    let mut child = start_command(&config, &shutdown, source).await?;
    let run_info = run_info(
        &config,
        &cgroups,
        source.event().name(),
        child.as_ref().map(|c| c.pid),
    );
    pipeline.set_run(run_info.clone());
    let pusher = start_pusher(&config);
    let mut status = StatusLine::new(config.quiet);
    // Announced once the named targets' rows are asked for (they are compiled on
    // another thread; their stacks are copied until the rows are in the kernel).
    announce(&config, &run_info, &output.name);
    // Other processes are checked for Python as they are sampled.
    if let Some(child) = &child {
        pipeline.track(child.pid);
        pipeline.check_python(child.pid);
        pipeline.tell_python(source);
    }
    let stopped = wait_for_stop(
        &config,
        &shutdown,
        source,
        &mut pipeline,
        (&mut output, pusher.as_ref(), &mut status),
        child.as_mut(),
    )
    .await;
    // From here on a SIGINT aborts (see `signals`).
    shutdown.begin();
    status.clear();
    // A command still running is stopped and reaped, not left behind.
    if let Some(child) = &mut child {
        if !matches!(stopped, Ok(Stop::CommandExited(_))) {
            child.stop().await;
        }
    }

    // Whatever ended the run, an error included, what was sampled is written.
    let (summary, last_drain) =
        write_the_rest(&config, source, &mut pipeline, &mut output, pusher).await?;
    let written = || format!("what was sampled until then is in {}", output.name);
    let stop = stopped.with_context(written)?;
    last_drain.with_context(written)?;
    say_how_it_ended(&stop, &summary, &output.name);
    Ok(match stop {
        Stop::CommandExited(status) => exit_code(status),
        _ => 0,
    })
}

/// Reads the named targets' mappings now, while they surely exist (a target
/// that exits before the first drain is still symbolized), and finds their
/// Python before sampling starts, so their first samples have its frames.
/// A signal skips the rest.
pub(crate) fn read_named_targets(config: &Config, shutdown: &Shutdown) -> (ProcessTable, Python) {
    let mut processes = ProcessTable::new();
    let mut python = Python::new(config.python);
    for pid in pids_named(&config.target) {
        if shutdown.requested().is_some() {
            break;
        }
        processes.observe(pid, "");
        python.check(pid, &mut processes);
    }
    (processes, python)
}

/// What the kernel side is asked for; the Python found so far is handed over.
pub(crate) fn sampler_options(
    config: &Config,
    cgroups: &[Selected],
    python: &mut Python,
) -> SamplerOptions {
    SamplerOptions {
        frequency: config.frequency,
        targets: match &config.target {
            Target::All => None,
            Target::Pids(pids) => Some(pids.clone()),
            Target::Command(_) => Some(Vec::new()),
        },
        cgroups: cgroups.iter().map(|c| c.id).collect(),
        include_idle: config.include_idle,
        stacks: config.stacks,
        stack_storage_size: config.stack_storage_size,
        count_map_size: config.count_map_size,
        copy_user_stack: config.unwind.copies_stacks(),
        stack_copy_bytes: config.stack_copy_bytes,
        table_rows: (config.unwind == UnwindMode::Tables).then_some(config.unwind_table_rows),
        ring_buffer_size: config.ring_buffer_size,
        sample_on_cpu: config.mode.samples_on_cpu(),
        track_switches: config.mode.tracks_switches(),
        python_processes: python
            .take_changes()
            .into_iter()
            .filter_map(|change| match change {
                PythonChange::Found(pid, process) => Some((pid, process)),
                _ => None,
            })
            .collect(),
        // Locating user frames is what the records are for.
        sideband: config.stacks.user(),
        measure_sideband: config.measure_sideband,
    }
}

/// `-- COMMAND`: starts the command at its gate, makes it a sampling target,
/// lets it run and waits until it is the command. A signal during the load
/// means the command never starts.
pub(crate) async fn start_command(
    config: &Config,
    shutdown: &Shutdown,
    source: &mut dyn SampleSource,
) -> Result<Option<GatedChild>> {
    let (Target::Command(command), None) = (&config.target, shutdown.requested()) else {
        return Ok(None);
    };
    let mut child = GatedChild::spawn(command, shutdown)?;
    source.add_target(child.pid)?;
    child.release();
    child.wait_for_exec().await;
    Ok(Some(child))
}

/// `--unwind tables`: the named targets' rows are asked for now, other
/// processes' as they are seen.
pub(crate) fn unwind_in_kernel_if_asked(
    config: &Config,
    pipeline: &mut Pipeline,
    source: &mut dyn SampleSource,
    shared: &[SharedFile],
) {
    if config.unwind == UnwindMode::Tables {
        let pids = match &config.target {
            Target::Pids(pids) => pids.clone(),
            _ => Vec::new(),
        };
        pipeline.unwind_in_kernel(&pids, shared, source);
        pipeline.tell_python(source);
    }
}

/// The stages after the sampler, for this configuration.
pub(crate) fn new_pipeline(
    config: &Config,
    cgroups: &[Selected],
    run: RunInfo,
    rules: Arc<Rules>,
    processes: ProcessTable,
    python: Python,
    counters: Counters,
) -> Pipeline {
    // Only the processes sampled: the named ones, or the command (added
    // with `Pipeline::track` once started).
    let history = match &config.target {
        Target::All => Scope::All,
        Target::Pids(pids) => Scope::Pids(pids.iter().copied().collect()),
        Target::Command(_) => Scope::Pids(Default::default()),
    };
    Pipeline::new(PipelineOptions {
        rules,
        processes,
        history,
        python,
        collect_user: config.stacks.user(),
        counters,
        recording: Some(Recording {
            run,
            min_block_us: config.min_block_us,
            cgroups: cgroups.iter().map(|c| c.path.clone()).collect(),
        }),
    })
}

/// The progress lines of the start: how and what is sampled, and where the
/// output goes.
fn announce(config: &Config, run: &RunInfo, output_name: &str) {
    let every = config
        .interval
        .map(|i| format!(", reporting every {} s", i.as_secs_f64()))
        .unwrap_or_default();
    let how = match config.mode {
        Mode::Cpu => format!("Sampling at {} Hz ({}", config.frequency, run.event),
        Mode::Wall => format!(
            "Sampling wall-clock time at {} Hz ({} and context switches",
            config.frequency, run.event
        ),
        Mode::OffCpu => format!(
            "Sampling off-CPU time (context switches, waits of {} µs or more",
            config.min_block_us
        ),
    };
    note(&format!(
        "{how}, {} unwinding){every}: {}. Press Ctrl-C to stop.",
        run.unwind, run.target
    ));
    if config.mode == Mode::OffCpu && config.format == OutputFormat::Folded {
        note("Folded counts are microseconds off-CPU, not samples");
    }
    note(&format!("Writing output to: {output_name}"));
}

/// `--push`: the thread that sends each interval's profile.
fn start_pusher(config: &Config) -> Option<Pusher> {
    let push = config.push.clone()?;
    note(&format!(
        "Pushing a profile every {} s to {}/ingest",
        config.interval.unwrap_or_default().as_secs_f64(),
        push.url.trim_end_matches('/')
    ));
    Some(Pusher::start(push))
}

/// The end of a run: the last samples, the last report, the summary; the
/// output is put in place and the last pushes sent. Returns the summary, and
/// how the last drain went (its failure is reported after everything else).
async fn write_the_rest(
    config: &Config,
    source: &mut dyn SampleSource,
    pipeline: &mut Pipeline,
    output: &mut Output,
    pusher: Option<Pusher>,
) -> Result<(Summary, Result<()>)> {
    pipeline.pull_last(source);
    let last_drain = pipeline.pull_counted(source).await.map(|_| ());
    pipeline.stop_tracking();
    // Unreadable counters cost only the loss figures of the report.
    let counters = source.counters().unwrap_or_default();
    if config.interval.is_none() || pipeline.has_unreported_samples() {
        pipeline.write_report(output, pusher.as_ref(), &counters)?;
    }
    let summary = pipeline.summary(&counters);
    output.summary(&summary)?;
    if let Some(line) = pipeline.tables_summary(source, &counters) {
        messages::warn(&line);
    }
    // A file named with -o is put in place now, before the run's last words.
    output.finish()?;
    if let Some(pusher) = pusher {
        report_push(config, pusher.finish(PUSH_GRACE));
    }
    Ok((summary, last_drain))
}

/// The run's last words: what stopped it, what it sampled, how complete the
/// stacks are, and what to change when samples were lost.
fn say_how_it_ended(stop: &Stop, summary: &Summary, output_name: &str) {
    note(&format!(
        "{}: {}, {} distinct stacks, {} {} in {:.1} s; output in {}",
        stop.describe(),
        summary.run.weight(summary.samples),
        summary.distinct_stacks,
        summary.processes,
        if summary.processes == 1 {
            "process"
        } else {
            "processes"
        },
        (summary.end - summary.start).num_milliseconds() as f64 / 1000.0,
        output_name
    ));
    for c in summary.completeness.iter().take(5) {
        note(&describe_completeness(&summary.run, c));
    }
    for hint in summary.hints() {
        warn(&hint);
    }
}

/// How long the end of a run waits for queued profiles to reach the push server.
const PUSH_GRACE: Duration = Duration::from_secs(5);

/// One line on what `--push` did; a warning when something was lost.
fn report_push(config: &Config, stats: PushStats) {
    let url = config.push.as_ref().map(|p| p.url.as_str()).unwrap_or("");
    let lost = stats.dropped + stats.rejected;
    let mut line = format!("pushed {} profiles to {url}", stats.sent);
    if stats.dropped > 0 {
        line += &format!(
            "; {} dropped (server unreachable, at most {} intervals are kept)",
            stats.dropped,
            crate::output::push::MAX_QUEUED_INTERVALS
        );
    }
    if stats.rejected > 0 {
        line += &format!("; {} rejected by the server", stats.rejected);
    }
    if let (Some(error), true) = (&stats.last_error, lost > 0) {
        line += &format!("; last error: {error}");
    }
    if lost > 0 {
        warn(&format!("warning: {line}"));
    } else {
        note(&line);
    }
}

/// What the reports say about the run; `event` is the sampler's.
pub(crate) fn run_info(
    config: &Config,
    cgroups: &[Selected],
    event: &str,
    child: Option<u32>,
) -> RunInfo {
    let mut target = describe_target(&config.target, child);
    if !cgroups.is_empty() {
        let paths: Vec<&str> = cgroups.iter().map(|c| c.path.as_str()).collect();
        let noun = if paths.len() == 1 {
            "cgroup"
        } else {
            "cgroups"
        };
        target = format!("{target} in {noun} {}", paths.join(", "));
    }
    RunInfo {
        target,
        mode: config.mode,
        frequency: config.frequency,
        event: event.to_string(),
        per_thread: config.per_thread,
        stack_storage_size: config.stack_storage_size,
        count_map_size: config.count_map_size,
        unwind: config.unwind.name().to_string(),
        ring_buffer_size: config.ring_buffer_size,
    }
}

/// A signal came before the sampler started: nothing was sampled, but the
/// output is written all the same (an empty report of its format), and the
/// run ends as one stopped by that signal would.
fn write_unsampled(
    config: &Config,
    cgroups: &[Selected],
    (rules, processes, python): (Arc<Rules>, ProcessTable, Python),
    output: &mut Output,
    signal: &str,
) -> Result<u8> {
    let counters = Counters::default();
    let run = run_info(config, cgroups, "none", None);
    let mut pipeline = new_pipeline(config, cgroups, run, rules, processes, python, counters);
    if config.interval.is_none() {
        pipeline.write_report(output, None, &counters)?;
    }
    output.summary(&pipeline.summary(&counters))?;
    output.finish()?;
    note(&format!(
        "stopped by {signal} before sampling started: nothing sampled; output in {}",
        output.name
    ));
    Ok(0)
}

pub(crate) fn pids_named(target: &Target) -> Vec<u32> {
    match target {
        Target::Pids(pids) => pids.clone(),
        _ => Vec::new(),
    }
}

/// Why recording ended.
enum Stop {
    Duration,
    Signal(&'static str),
    TargetsExited,
    CommandExited(ExitStatus),
}

impl Stop {
    fn describe(&self) -> String {
        match self {
            Stop::Duration => "done".into(),
            Stop::Signal(name) => format!("stopped by {name}"),
            Stop::TargetsExited => "every target process has exited".into(),
            Stop::CommandExited(status) => format!("command exited ({status})"),
        }
    }
}

/// Drains and reports until the duration ends, a signal arrives, or the
/// targets are gone. Asleep in between: it wakes when a ring has records,
/// when work of the [`Cadence`] is due, or when the run ends.
async fn wait_for_stop(
    config: &Config,
    shutdown: &Shutdown,
    source: &mut dyn SampleSource,
    pipeline: &mut Pipeline,
    (output, pusher, status): (&mut Output, Option<&Pusher>, &mut StatusLine),
    child: Option<&mut GatedChild>,
) -> Result<Stop> {
    let deadline = sleep(config.duration.unwrap_or(Duration::MAX / 4));
    tokio::pin!(deadline);
    let child_exit = async {
        match child {
            Some(child) => child.child.wait().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(child_exit);
    let targets_gone = targets_exited(pids_named(&config.target));
    tokio::pin!(targets_gone);
    let mut wakeup = source.wakeup()?;
    let mut cadence = Cadence::new(
        Instant::now(),
        Pacing {
            counts: source.count_drain_period(),
            status: status.enabled(),
            report: config.interval,
            polled: wakeup.is_none(),
            // Walking in the kernel: the rows are in use, not just asked for.
            prompt: source.unwind_table_use().is_some(),
        },
    );
    let polled = wakeup.is_none();
    let mut armed = None;
    loop {
        let next = cadence.next();
        if let Some(wakeup) = wakeup.as_ref().filter(|_| armed != Some(next)) {
            // The rings' epoll set holds the timer: one wake-up per round.
            wakeup.set_timer(next)?;
            armed = Some(next);
        }
        let next = next.unwrap_or_else(|| Instant::now() + FAR);
        tokio::select! {
            signal = shutdown.signalled() => return Ok(Stop::Signal(signal)),
            _ = &mut deadline, if config.duration.is_some() => return Ok(Stop::Duration),
            status = &mut child_exit => {
                return Ok(Stop::CommandExited(status.context("waiting for the command")?));
            }
            _ = &mut targets_gone => return Ok(Stop::TargetsExited),
            woke = ring_news(&mut wakeup) => {
                let now = Instant::now();
                if woke? == News::Ring {
                    cadence.woken(now);
                }
                // A ring filling up is read now, not at the timer's next tick.
                let due = cadence.due(now);
                let outputs = (&mut *output, pusher, &mut *status);
                do_due(due, source, pipeline, &mut cadence, outputs).await?;
            }
            _ = sleep_until(next.into()), if polled => {
                let due = cadence.due(Instant::now());
                let outputs = (&mut *output, pusher, &mut *status);
                do_due(due, source, pipeline, &mut cadence, outputs).await?;
            }
        }
    }
}

/// Stands for "never" when nothing is scheduled: the loop still wakes at
/// the end, a signal or a ring's news.
const FAR: Duration = Duration::from_secs(24 * 3600);

/// Tells the kernel whether housekeeping reads the rings on its timer, when
/// that changes. When it stops, the rings are read once more after the
/// kernel knows: a record sent before might have woken no one.
fn tell_ticking(
    source: &mut dyn SampleSource,
    pipeline: &mut Pipeline,
    cadence: &mut Cadence,
) -> Result<()> {
    let Some(ticking) = cadence.ticking_change() else {
        return Ok(());
    };
    source.set_reader_ticking(ticking)?;
    if !ticking {
        let read = pipeline.pull(source);
        cadence.active(Instant::now(), read);
        if cadence.ticking_change() == Some(true) {
            source.set_reader_ticking(true)?;
        }
    }
    Ok(())
}

/// Returns when a ring has records or the timer came; never without a [`Wakeup`].
async fn ring_news(wakeup: &mut Option<Wakeup>) -> Result<News> {
    match wakeup {
        Some(wakeup) => wakeup.ready().await,
        None => std::future::pending().await,
    }
}

/// Does the work `due`: reads the rings, drains the kernel's counts, writes
/// the interval's report, redraws the status line, in that order.
async fn do_due(
    due: Due,
    source: &mut dyn SampleSource,
    pipeline: &mut Pipeline,
    cadence: &mut Cadence,
    (output, pusher, status): (&mut Output, Option<&Pusher>, &mut StatusLine),
) -> Result<()> {
    if due.pull {
        let read = pipeline.pull(source);
        cadence.active(Instant::now(), read);
        if pipeline.holds_records() {
            cadence.pull_again(Instant::now());
        }
    }
    if due.counts {
        // What the kernel counted (`--unwind fp` and `tables`): its
        // processes are located and retired at the housekeeping's pace,
        // which new processes quicken (they may be short-lived); counts of
        // processes known already wait for the counts' own period.
        let first_of_process = pipeline.pull_counted(source).await?;
        cadence.active(Instant::now(), first_of_process);
    }
    // Sent at a pull or at housekeeping (a process the sideband showed).
    if pipeline.take_first_rows_sent() {
        cadence.pull_soon(Instant::now());
    }
    tell_ticking(source, pipeline, cadence)?;
    if due.report {
        pipeline.write_report(output, pusher, &source.counters()?)?;
    }
    if due.status {
        // Unreadable counters cost only the status line its loss figure.
        let counters = source.counters().unwrap_or_default();
        status.update(&pipeline.progress(&counters));
    }
    Ok(())
}

/// Returns once every process of `pids` has exited; never when there are
/// none (a run of `--all` or of a command). Checked once a second: a pidfd
/// watch (readable at exit) ended runs at once while their target still
/// ran. A second attempt (f31170c: pidfds in the rings' epoll set, `/proc`
/// deciding at each wake) left an idle `--pid` run asleep and passed the
/// exit tests, but `signals::sigint_abort_kills_the_command` (a command,
/// no pidfd) failed 3 runs in 12 with it, 1 in 13 without it; not settled.
async fn targets_exited(pids: Vec<u32>) {
    if pids.is_empty() {
        return std::future::pending().await;
    }
    while pids.iter().any(|&pid| process::is_alive(pid)) {
        sleep(EXIT_CHECK_PERIOD).await;
    }
}

/// How often the named targets are checked for having exited.
const EXIT_CHECK_PERIOD: Duration = Duration::from_secs(1);

/// A command held at a gate until it is a sampling target, so its first
/// instruction is already sampled.
///
/// The child starts as `/bin/sh`, which waits for the gate pipe to close and
/// then `exec`s the command: same pid, and `spawn()` can return (it waits for
/// the first exec, so the gate cannot be in `pre_exec` itself).
pub(crate) struct GatedChild {
    pub(crate) child: tokio::process::Child,
    pub(crate) pid: u32,
    gate: Option<OwnedFd>,
}

/// A process descriptor: signals sent through it reach our child or no one,
/// even from another thread after the child was reaped and its pid reused.
struct PidFd(OwnedFd);

impl PidFd {
    fn open(pid: u32) -> Option<PidFd> {
        // SAFETY: pidfd_open takes plain integers; a non-negative result is a new descriptor.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        // SAFETY: the descriptor was just created and is owned by nothing else.
        (fd >= 0).then(|| PidFd(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    fn kill(&self) {
        let no_info: *const libc::siginfo_t = std::ptr::null();
        // SAFETY: pidfd_send_signal with a null siginfo and no flags reads no memory of ours.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                libc::SIGKILL,
                no_info,
                0,
            );
        }
    }

    /// Reaps the process if it has exited within `bound`; the caller is about
    /// to exit. It runs on the signal thread (an abort hook), never on the
    /// runtime's, so it may sleep.
    fn reap_within(&self, bound: Duration) {
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            // SAFETY: waitid writes only into `info`, which we own.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            let flags = libc::WEXITED | libc::WNOHANG;
            // SAFETY: as above; P_PIDFD takes the descriptor as the id.
            let done = unsafe {
                libc::waitid(
                    libc::P_PIDFD,
                    self.0.as_raw_fd() as libc::id_t,
                    &mut info,
                    flags,
                )
            };
            // SAFETY: waitid filled `info`; si_pid stays 0 while the child runs.
            if done != 0 || unsafe { info.si_pid() } != 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// The descriptor the gate script reads; dash only takes single-digit ones.
const GATE_FD: i32 = 3;

impl GatedChild {
    /// Starts the command at its gate. If a second SIGINT aborts the run,
    /// `shutdown` kills and reaps it, so it never outlives tripod-bpf.
    fn spawn(command: &[OsString], shutdown: &Shutdown) -> Result<GatedChild> {
        let (program, args) = command.split_first().context("empty command")?;
        let program = preflight::find_program(program)?;
        let (gate_read, gate_write) = pipe()?;
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(format!("read _ <&{GATE_FD}; exec \"$@\" {GATE_FD}<&-"))
            .arg("tripod-bpf-gate")
            .arg(&program)
            .args(args)
            .kill_on_drop(true);
        let read_fd = raw(&gate_read);
        // SAFETY: only async-signal-safe calls (sigprocmask, dup2, fcntl) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Our threads block the signals `signals` reads on a thread of
                // their own; the command must get them as if started from a shell.
                let mut empty: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut empty);
                libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
                if read_fd == GATE_FD {
                    libc::fcntl(GATE_FD, libc::F_SETFD, 0);
                } else if libc::dup2(read_fd, GATE_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .context("starting /bin/sh to launch the command")?;
        drop(gate_read);
        let pid = child.id().context("the command exited before it started")?;
        if let Some(pidfd) = PidFd::open(pid) {
            shutdown.on_abort(move || {
                pidfd.kill();
                pidfd.reap_within(CHILD_GRACE);
            });
        }
        Ok(GatedChild {
            child,
            pid,
            gate: Some(gate_write),
        })
    }

    /// Lets the command run: closing the write end ends the gate's `read`.
    fn release(&mut self) {
        self.gate.take();
    }

    /// Stops a command that is still running: SIGTERM, then SIGKILL after
    /// [`CHILD_GRACE`], and reaps it, each wait bounded.
    pub(crate) async fn stop(&mut self) {
        // No id once reaped: then the pid may be someone else's.
        let Some(pid) = self.child.id() else {
            return;
        };
        // SAFETY: kill has no memory-safety preconditions; the child is not reaped yet.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        if timeout(CHILD_GRACE, self.child.wait()).await.is_ok() {
            return;
        }
        warn(&format!(
            "warning: the command (pid {pid}) ignored SIGTERM for {CHILD_GRACE:?}; killing it"
        ));
        let _ = self.child.start_kill();
        let _ = timeout(CHILD_GRACE, self.child.wait()).await;
    }

    /// Waits (briefly) until the gate shell has exec'd the command, so its
    /// mappings are the command's. The command line changes at exec. The
    /// wait is a timer of the runtime: its thread is never blocked.
    async fn wait_for_exec(&self) {
        let Some(gate_cmdline) = process::cmdline(self.pid) else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline
            && process::cmdline(self.pid).as_ref() == Some(&gate_cmdline)
        {
            sleep(Duration::from_millis(1)).await;
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own; CLOEXEC keeps them out of the exec'd program.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("creating a pipe");
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn raw(fd: &OwnedFd) -> i32 {
    use std::os::fd::AsRawFd;
    fd.as_raw_fd()
}

fn describe_target(target: &Target, child: Option<u32>) -> String {
    match target {
        Target::All => "all processes".into(),
        Target::Pids(pids) if pids.len() == 1 => format!("pid {}", pids[0]),
        Target::Pids(pids) => {
            format!(
                "pids {}",
                pids.iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
        Target::Command(command) => {
            let words: Vec<_> = command.iter().map(|w| w.to_string_lossy()).collect();
            format!("command `{}` (pid {})", words.join(" "), child.unwrap_or(0))
        }
    }
}

/// The shell's convention: the exit code, or 128 + the signal that killed it.
pub(crate) fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.saturating_add(signal as u8),
        _ => 1,
    }
}
