//! `tripod-bpf dump`: every thread of one process as it is right now, running
//! or blocked, grouped by stack. The process is neither stopped nor signalled:
//! a task iterator reads each thread's stacks in the kernel, and they are
//! unwound and symbolized like recorded ones. With `--every`, a watchdog that
//! appends a dump to the log until Ctrl-C or the process exits. With
//! `--core`, the threads of a core file instead, through the same pipeline
//! ([`crate::corefile`]): no root, no sampler.
use std::{sync::Arc, time::Instant};

use anyhow::{Context as _, Result};

use crate::{
    config::{CoreDumpConfig, DumpConfig, PythonFrames},
    corefile::{
        source::{CoreSource, Lookup, MissingFiles},
        Core,
    },
    live::{self, start_sampler},
    mappings::Scope,
    messages::{note, warn},
    model::Counters,
    output::Output,
    pipeline::{Pipeline, PipelineOptions},
    preflight,
    process::{self, ProcessTable},
    python::Python,
    sampler::{SampleSource, SamplerOptions},
    session::{load_rules, open_output},
    signals::Shutdown,
    usage_error,
};

/// Dumps as configured; returns the exit status for the process. A signal
/// before the first dump ends the run with nothing written.
pub async fn run(config: DumpConfig, shutdown: Shutdown) -> Result<u8> {
    let rules = Arc::new(load_rules(config.rules.as_deref())?);
    preflight::check_dump(&config)?;
    live::prepare_target_files(config.max_file_size);
    let mut output = open_output(&config.output, config.format, &shutdown)?;
    let options = SamplerOptions::for_dump(config.pid, config.stacks, config.stack_copy_bytes);
    let mut source = start_sampler(&options)?;
    let source = source.as_mut();
    if let Some(signal) = shutdown.requested() {
        note(&format!(
            "stopped by {signal} before the dump: nothing dumped"
        ));
        return Ok(0);
    }
    let mut processes = ProcessTable::new();
    processes.observe(config.pid, "");
    let mut pipeline = Pipeline::new(PipelineOptions {
        rules,
        processes,
        // A dump has no sideband: its threads live, `/proc` shows them.
        history: Scope::Pids(Default::default()),
        python: Python::new(config.python),
        collect_user: config.stacks.user(),
        counters: source.counters()?,
        recording: None,
    });
    pipeline.check_python(config.pid);
    if config.locals {
        if !pipeline.is_python(config.pid) {
            warn(&format!(
                "pid {} is not a Python process tripod-bpf can read; --locals shows nothing",
                config.pid
            ));
        }
        pipeline.collect_locals();
    }

    let Some(every) = config.every else {
        // A SIGINT while the dump is written aborts it.
        shutdown.begin();
        if !dump_once(source, &mut pipeline, &mut output, config.pid)? {
            usage_error!(
                "pid {} exited before it could be dumped; check the pid",
                config.pid
            );
        }
        output.finish()?;
        return Ok(0);
    };

    note(&format!(
        "Dumping every thread of pid {} every {} s. Press Ctrl-C to stop.",
        config.pid,
        every.as_secs_f64()
    ));
    note(&format!("Writing output to: {}", output.name));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dumps = 0;
    let stop = loop {
        tokio::select! {
            signal = shutdown.signalled() => break format!("stopped by {signal}"),
            _ = tick.tick() => {
                if !dump_once(source, &mut pipeline, &mut output, config.pid)? {
                    break "the process has exited".to_string();
                }
                dumps += 1;
            }
        }
    };
    shutdown.begin();
    output.finish()?;
    note(&format!(
        "{stop}: {dumps} {}; output in {}",
        if dumps == 1 { "dump" } else { "dumps" },
        output.name
    ));
    Ok(0)
}

/// Dumps the threads of a core file as [`run`] dumps a live process's:
/// grouped by stack, annotated, in any format. Files the core names that are
/// not found get one line saying how to point at them.
pub fn run_core(config: CoreDumpConfig, shutdown: Shutdown) -> Result<u8> {
    let rules = Arc::new(load_rules(config.rules.as_deref())?);
    live::prepare_target_files(config.max_file_size);
    let started = Instant::now();
    let file = crate::corefile::open_file(&config.core)?;
    let core = match Core::open(&config.core, file) {
        Ok(core) => core,
        Err(not_a_core) => usage_error!("{}", not_a_core.0),
    };
    if !core.missing.is_empty() {
        warn(&format!(
            "the core is truncated, dumped what it holds: {}",
            core.missing.join("; ")
        ));
    }
    let pid = core.pid;
    let mut source = CoreSource::new(core);
    let mut processes = ProcessTable::new();
    let lookup = Lookup {
        exe: config.exe,
        sysroot: config.sysroot,
    };
    let missing = source.give_process(&mut processes, &lookup);
    warn_missing(&missing);
    let mut output = open_output(&config.output, config.format, &shutdown)?;
    let mut pipeline = Pipeline::new(PipelineOptions {
        rules,
        processes,
        // The core's mappings are all there is: no sideband, no `/proc`.
        history: Scope::Pids(Default::default()),
        python: match config.python {
            PythonFrames::Off => Python::new(PythonFrames::Off),
            shown => Python::for_core(shown, source.python_memory(&lookup)),
        },
        collect_user: true,
        counters: Counters::default(),
        recording: None,
    });
    // Its Python found in its mappings, its threads' frames read in the snapshot.
    pipeline.check_python(pid);
    if config.locals {
        if !pipeline.is_python(pid) {
            warn("the core is not of a Python process tripod-bpf can read; --locals shows nothing");
        }
        pipeline.collect_locals();
    }
    shutdown.begin();
    let Some(dump) = pipeline.dump(&mut source, pid)? else {
        anyhow::bail!("the core has no thread to dump");
    };
    output.dump(&dump).context("writing the dump")?;
    output.finish()?;
    log::debug!(
        "dumped {} threads of a core in {:?}",
        dump.threads.len(),
        started.elapsed()
    );
    Ok(0)
}

/// One line for files of the core that changed since, and one for those not
/// found, each saying how to point at the right ones.
fn warn_missing(missing: &MissingFiles) {
    let files = |list: &[String]| {
        format!(
            "{} {} of the core",
            list.len(),
            if list.len() == 1 { "file" } else { "files" }
        )
    };
    let first = |list: &[String]| {
        format!(
            "{}{}",
            crate::text::escape_controls(&list[0]),
            if list.len() > 1 { ", ..." } else { "" }
        )
    };
    if !missing.changed.is_empty() {
        warn(&format!(
            "{} changed since it was dumped ({}): their frames are unknown; pass --exe PATH or \
             --sysroot DIR to point at the files the process ran",
            files(&missing.changed),
            first(&missing.changed)
        ));
    }
    if !missing.not_found.is_empty() {
        warn(&format!(
            "{} not found ({}): their frames are unknown; pass --exe PATH for the executable, or \
             --sysroot DIR to look the core's paths up under DIR",
            files(&missing.not_found),
            first(&missing.not_found)
        ));
    }
}

/// Writes one dump; false when the process is gone.
fn dump_once(
    source: &mut dyn SampleSource,
    pipeline: &mut Pipeline,
    output: &mut Output,
    pid: u32,
) -> Result<bool> {
    let started = Instant::now();
    let Some(dump) = pipeline.dump(source, pid)? else {
        if !process::is_alive(pid) {
            return Ok(false);
        }
        return Err(hidden_from_bpf(pid));
    };
    output.dump(&dump).context("writing the dump")?;
    log::debug!(
        "dumped {} threads in {:?}",
        dump.threads.len(),
        started.elapsed()
    );
    Ok(true)
}

/// A live process of which the task iterator saw no thread: say so rather
/// than write an empty dump. Seen for a sandbox's init (its threads are kept
/// from every eBPF program, whose `/proc` files root cannot read either) and
/// for tripod-bpf in a pid namespace of its own (the kernel's pids differ).
fn hidden_from_bpf(pid: u32) -> anyhow::Error {
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, Iterator::count);
    anyhow::anyhow!(
        "pid {pid} is running ({threads} threads in /proc/{pid}/task) but the kernel showed none \
         of its threads to tripod-bpf's task iterator, so there is nothing to dump; something \
         hides it from eBPF programs (a security module or sandbox), or tripod-bpf runs in a \
         pid namespace of its own (run it in the host's)"
    )
}
