//! One recording, start to finish: check, open the output, start the sampler,
//! then drain -> aggregate -> symbolize -> report until told to stop.
use std::{
    collections::HashMap,
    ffi::OsString,
    os::{fd::OwnedFd, unix::process::ExitStatusExt},
    process::ExitStatus,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use chrono::{DateTime, Local};
use tokio::{
    signal::unix::{signal, SignalKind},
    time::{interval, sleep, MissedTickBehavior},
};
use tripod_common::MAX_STACK_DEPTH;

use crate::{
    aggregate::{Aggregator, StackId},
    config::{Config, Target},
    output::{describe_completeness, Output},
    preflight,
    process::{self, ProcessTable},
    report::{self, Losses, RunInfo},
    resolve::Resolver,
    sampler::{CopiedSample, Counters, Sampler, SamplerOptions},
    stack::{self, Gap, RawSample, StackRead},
    unwind::{Unwinder, UserRegs},
};

/// How often the kernel maps are drained. Short enough that most processes
/// are still alive to have their mappings read, long enough to be cheap.
const DRAIN_PERIOD: Duration = Duration::from_millis(500);

/// How often the ring buffer of stack copies is emptied. At 999 Hz on 2 CPUs
/// with 16 KiB copies that is 1.6 MB a poll, well inside the default 8 MiB;
/// an empty poll costs no system call.
const COPY_POLL_PERIOD: Duration = Duration::from_millis(50);

/// How often processes not sampled since the previous check are checked, and
/// retired if they have exited (see `Pipeline::forget_exited`). Longer than a
/// drain interval, so no samples of them are still on their way; short,
/// because on a machine that starts thousands of processes a second, memory
/// grows with this window.
const FORGET_AFTER: Duration = Duration::from_secs(2);

/// Records as configured; returns the exit status for the process.
pub async fn run(config: Config) -> Result<u8> {
    preflight::check(&config)?;
    let mut output = Output::open(&config.output, config.format)?;

    let options = SamplerOptions {
        frequency: config.frequency,
        targets: match &config.target {
            Target::All => None,
            Target::Pids(pids) => Some(pids.clone()),
            Target::Command(_) => Some(Vec::new()),
        },
        include_idle: config.include_idle,
        stacks: config.stacks,
        stack_storage_size: config.stack_storage_size,
        count_map_size: config.count_map_size,
        copy_user_stack: config.unwind.copies_stacks(),
        stack_copy_bytes: config.stack_copy_bytes,
        ring_buffer_size: config.ring_buffer_size,
    };
    let mut sampler = Sampler::start(&options).map_err(|e| {
        preflight::explain_refusal(&e)
            .map(anyhow::Error::from)
            .unwrap_or(e)
    })?;
    if let Some(reason) = sampler.fallback_reason() {
        log::debug!("hardware cycles event: {reason}");
        eprintln!(
            "[tripod] No hardware cycles event here (no PMU); using the software cpu-clock event"
        );
    }

    let mut child = match &config.target {
        Target::Command(command) => Some(GatedChild::spawn(command)?),
        _ => None,
    };
    if let Some(child) = &mut child {
        sampler.add_target(child.pid)?;
        child.release();
    }
    let mut processes = ProcessTable::new();
    // Read the targets' mappings now, while they surely exist: a target that
    // exits before the first drain is still symbolized.
    if let Some(child) = &child {
        child.wait_for_exec();
        processes.observe(child.pid, "");
    }
    if let Target::Pids(pids) = &config.target {
        for &pid in pids {
            processes.observe(pid, "");
        }
    }

    let run_info = RunInfo {
        target: describe_target(&config.target, child.as_ref().map(|c| c.pid)),
        frequency: config.frequency,
        event: sampler.event().name().to_string(),
        per_thread: config.per_thread,
        stack_storage_size: config.stack_storage_size,
        count_map_size: config.count_map_size,
        unwind: config.unwind.name().to_string(),
        ring_buffer_size: config.ring_buffer_size,
    };
    let every = config
        .interval
        .map(|i| format!(", reporting every {} s", i.as_secs_f64()))
        .unwrap_or_default();
    eprintln!(
        "[tripod] Sampling at {} Hz ({}, {} unwinding){every}: {}. Press Ctrl-C to stop.",
        config.frequency, run_info.event, run_info.unwind, run_info.target
    );
    eprintln!("[tripod] Writing output to: {}", output.name);

    let mut pipeline = Pipeline::new(
        run_info,
        processes,
        config.stacks.user(),
        sampler.counters()?,
    );
    let stop = wait_for_stop(
        &config,
        &mut sampler,
        &mut pipeline,
        &mut output,
        child.as_mut(),
    )
    .await?;

    sampler.drain_copies(|copy| pipeline.ingest_copy(copy));
    pipeline.ingest(sampler.drain()?);
    let counters = sampler.counters()?;
    if config.interval.is_none() || pipeline.has_unreported_samples() {
        pipeline.write_report(&mut output, &counters)?;
    }
    let summary = pipeline.summary(&counters);
    output.summary(&summary)?;

    eprintln!(
        "[tripod] {}: {} samples, {} distinct stacks, {} {} in {:.1} s; output in {}",
        stop.describe(),
        summary.samples,
        summary.distinct_stacks,
        summary.processes,
        if summary.processes == 1 {
            "process"
        } else {
            "processes"
        },
        (summary.end - summary.start).num_milliseconds() as f64 / 1000.0,
        output.name
    );
    for c in summary.completeness.iter().take(5) {
        eprintln!("[tripod] {}", describe_completeness(c));
    }
    for hint in summary.hints() {
        eprintln!("[tripod] {hint}");
    }
    Ok(match stop {
        Stop::CommandExited(status) => exit_code(status),
        _ => 0,
    })
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

/// Drains and reports until the duration ends, a signal arrives, or the targets are gone.
async fn wait_for_stop(
    config: &Config,
    sampler: &mut Sampler,
    pipeline: &mut Pipeline,
    output: &mut Output,
    child: Option<&mut GatedChild>,
) -> Result<Stop> {
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let deadline = sleep(config.duration.unwrap_or(Duration::MAX / 4));
    tokio::pin!(deadline);
    let mut tick = interval(COPY_POLL_PERIOD);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_drain = Instant::now();
    let mut next_report = config.interval.map(|i| Instant::now() + i);
    let pids = match &config.target {
        Target::Pids(pids) => pids.clone(),
        _ => Vec::new(),
    };
    let child_exit = async {
        match child {
            Some(child) => child.child.wait().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(child_exit);

    loop {
        tokio::select! {
            _ = sigint.recv() => return Ok(Stop::Signal("SIGINT")),
            _ = sigterm.recv() => return Ok(Stop::Signal("SIGTERM")),
            _ = &mut deadline, if config.duration.is_some() => return Ok(Stop::Duration),
            status = &mut child_exit => {
                return Ok(Stop::CommandExited(status.context("waiting for the command")?));
            }
            _ = tick.tick() => {
                sampler.drain_copies(|copy| pipeline.ingest_copy(copy));
                if last_drain.elapsed() < DRAIN_PERIOD {
                    continue;
                }
                last_drain = Instant::now();
                pipeline.ingest(sampler.drain()?);
                if let (Some(at), Some(every)) = (next_report, config.interval) {
                    if Instant::now() >= at {
                        pipeline.write_report(output, &sampler.counters()?)?;
                        next_report = Some(at + every);
                    }
                }
                if !pids.is_empty() && !pids.iter().any(|&pid| process::is_alive(pid)) {
                    return Ok(Stop::TargetsExited);
                }
            }
        }
    }
}

/// Samples on their way to reports: aggregated and symbolized as they arrive.
struct Pipeline {
    run: RunInfo,
    aggregator: Aggregator,
    processes: ProcessTable,
    resolver: Resolver,
    unwinder: Unwinder,
    /// Collect user stacks at all (not `--kernel-only`).
    collect_user: bool,
    /// New stacks whose addresses are located at the next drain.
    unlocated: Vec<StackId>,
    /// The retirement check after which each process was last sampled: a
    /// counter, so the per-sample path reads no clock.
    last_seen: HashMap<u32, u64>,
    forget_checks: u64,
    last_forget_check: Instant,
    run_start: DateTime<Local>,
    run_counters: Counters,
    interval_start: DateTime<Local>,
    interval_counters: Counters,
    unreported: u64,
}

impl Pipeline {
    fn new(run: RunInfo, processes: ProcessTable, collect_user: bool, counters: Counters) -> Self {
        let now = Local::now();
        Pipeline {
            run,
            aggregator: Aggregator::new(),
            processes,
            resolver: Resolver::new(),
            unwinder: Unwinder::new(),
            collect_user,
            unlocated: Vec::new(),
            last_seen: HashMap::new(),
            forget_checks: 0,
            last_forget_check: Instant::now(),
            run_start: now,
            run_counters: counters,
            interval_start: now,
            interval_counters: counters,
            unreported: 0,
        }
    }

    /// Counts the samples the kernel counted, then locates the addresses of
    /// every stack not seen before, now, while their processes are most likely
    /// still alive. Symbols wait for the next report.
    fn ingest(&mut self, samples: Vec<RawSample>) {
        for sample in samples {
            self.count(
                sample.tgid,
                sample.tid,
                &sample.comm,
                sample.kernel,
                sample.user,
                sample.count,
            );
        }
        self.locate_new_stacks();
        self.forget_exited();
    }

    /// Unwinds one copied user stack and counts the sample.
    fn ingest_copy(&mut self, copy: CopiedSample<'_>) {
        let user = match copy.user_regs {
            Some((ip, sp, bp)) => {
                let regs = UserRegs { ip, sp, bp };
                StackRead::Unwound(self.unwinder.unwind(
                    copy.tgid,
                    regs,
                    copy.stack,
                    &mut self.processes,
                ))
            }
            None if self.collect_user => StackRead::Missing(Gap::Failed(libc::EFAULT)),
            None => StackRead::NotCollected,
        };
        self.count(copy.tgid, copy.tid, &copy.comm, copy.kernel, user, 1);
    }

    fn count(
        &mut self,
        tgid: u32,
        tid: u32,
        comm: &str,
        kernel: StackRead,
        user: StackRead,
        count: u64,
    ) {
        let process = self.processes.observe(tgid, comm);
        let user = match user {
            // Kernel threads have no user stack; that is not a failure to show.
            StackRead::Missing(Gap::Failed(libc::EFAULT)) if process.kernel_thread => {
                StackRead::NotCollected
            }
            user => user,
        };
        let kernel = match kernel {
            // Sampled in user mode: there is no kernel stack to read.
            StackRead::Missing(Gap::Failed(libc::EFAULT)) => StackRead::NotCollected,
            kernel => kernel,
        };
        let raw = stack::combine(&kernel, &user, MAX_STACK_DEPTH);
        self.unreported += count;
        self.last_seen.insert(tgid, self.forget_checks);
        let (id, new) = self.aggregator.add(tgid, tid, comm, &raw, count);
        if new {
            self.unlocated.push(id);
        }
    }

    /// Retires processes that went quiet and have exited: their stacks are
    /// symbolized and merged by name, and everything kept per process is freed,
    /// so memory does not grow with the number of processes a run has seen.
    fn forget_exited(&mut self) {
        if self.last_forget_check.elapsed() < FORGET_AFTER {
            return;
        }
        self.last_forget_check = Instant::now();
        // Sampled since the previous check: kept without looking at /proc.
        let recent = self.forget_checks;
        self.forget_checks += 1;
        let mut exited = HashMap::new();
        self.last_seen.retain(|&pid, seen| {
            let keep = *seen == recent || process::is_alive(pid);
            if !keep {
                exited.insert(pid, String::new());
            }
            keep
        });
        if exited.is_empty() {
            return;
        }
        // Names need the addresses, which retiring drops.
        self.symbolize();
        for (pid, name) in exited.iter_mut() {
            if let Some(process) = self.processes.get(*pid) {
                name.clone_from(&process.comm);
            }
            self.unwinder.forget(*pid);
            self.processes.forget(*pid);
        }
        self.aggregator.retire(&exited);
        self.resolver.forget(|pid| exited.contains_key(&pid));
        log::debug!(
            "retired {} exited processes; {}",
            exited.len(),
            self.sizes()
        );
    }

    /// The sizes of what the pipeline keeps, for debug logs.
    fn sizes(&self) -> String {
        format!(
            "{} stacks, {} counts, {} processes, {}",
            self.aggregator.stacks.len(),
            self.aggregator.run().len(),
            self.processes.len(),
            self.resolver.sizes()
        )
    }

    fn locate_new_stacks(&mut self) {
        if self.unlocated.is_empty() {
            return;
        }
        self.resolver.locate(
            &self.aggregator.stacks,
            &self.unlocated,
            &mut self.processes,
        );
        self.unlocated.clear();
    }

    /// Names every frame a report may show.
    fn symbolize(&mut self) {
        self.locate_new_stacks();
        if !self.resolver.has_waiting() {
            return;
        }
        let started = Instant::now();
        self.resolver.symbolize(&mut self.aggregator.stacks);
        log::debug!("symbolized new stacks in {:?}", started.elapsed());
    }

    fn has_unreported_samples(&self) -> bool {
        self.unreported > 0
    }

    fn write_report(&mut self, output: &mut Output, counters: &Counters) -> Result<()> {
        self.symbolize();
        let now = Local::now();
        let counts = self.aggregator.take_interval();
        let losses = Losses::from_counters(&counters.since(&self.interval_counters));
        let report = report::build_report(
            &self.run,
            &self.aggregator,
            &self.processes,
            &counts,
            (self.interval_start, now),
            losses,
        );
        output.report(&report).context("writing the report")?;
        self.interval_start = now;
        self.interval_counters = *counters;
        self.unreported = 0;
        Ok(())
    }

    fn summary(&mut self, counters: &Counters) -> report::Summary {
        self.symbolize();
        let losses = Losses::from_counters(&counters.since(&self.run_counters));
        report::build_summary(
            &self.run,
            &self.aggregator,
            &self.processes,
            (self.run_start, Local::now()),
            losses,
        )
    }
}

/// A command held at a gate until it is a sampling target, so its first
/// instruction is already sampled.
///
/// The child starts as `/bin/sh`, which waits for the gate pipe to close and
/// then `exec`s the command: same pid, and `spawn()` can return (it waits for
/// the first exec, so the gate cannot be in `pre_exec` itself).
struct GatedChild {
    child: tokio::process::Child,
    pid: u32,
    gate: Option<OwnedFd>,
}

/// The descriptor the gate script reads; dash only takes single-digit ones.
const GATE_FD: i32 = 3;

impl GatedChild {
    fn spawn(command: &[OsString]) -> Result<GatedChild> {
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
        // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
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

    /// Waits (briefly) until the gate shell has exec'd the command, so its
    /// mappings are the command's. The command line changes at exec.
    fn wait_for_exec(&self) {
        let gate_cmdline = process::cmdline(self.pid);
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline
            && process::cmdline(self.pid) == gate_cmdline
            && gate_cmdline.is_some()
        {
            std::thread::sleep(Duration::from_millis(1));
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
fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.saturating_add(signal as u8),
        _ => 1,
    }
}
