//! `tripod-bpf top`: a recording shown live instead of written. It samples
//! as a recording does (the steps of [`crate::app`]) and takes one report
//! from the [`Pipeline`] per refresh; [`model`] counts those into a sliding
//! window, and the view is drawn full screen ([`screen`], on a terminal) or
//! printed as a plain table every refresh (stdout not a terminal).
//!
//! An output, like those of [`crate::output`]: nothing depends on it.
mod format;
pub mod model;
mod screen;

use std::{
    io::{IsTerminal as _, Write as _},
    process::ExitStatus,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use tokio::{
    sync::mpsc::UnboundedReceiver,
    time::{interval, MissedTickBehavior},
};

use self::{
    model::{Action, Top},
    screen::Screen,
};
use crate::{
    app::{self, GatedChild},
    config::{Target, TopConfig},
    live::{self, start_sampler},
    messages::note,
    pipeline::Pipeline,
    preflight, process,
    sampler::SampleSource,
    session::load_rules,
    signals::Shutdown,
};

/// How often the view reads the ring buffer. A live view refreshes every
/// `--delay` anyway, so unlike a recording it need not sleep until the
/// kernel wakes it: a short period keeps each read small.
const COPY_POLL_PERIOD: Duration = Duration::from_millis(50);

/// How often the view drains the kernel's counts (`--unwind fp`), so the
/// mappings of short-lived processes are still there to locate them.
const DRAIN_PERIOD: Duration = Duration::from_millis(500);

/// The most rows the plain table prints per refresh: a log stays readable.
const PLAIN_ROWS: usize = 25;

/// Where the view goes.
enum Out {
    Screen(Screen, UnboundedReceiver<char>),
    Plain,
}

/// Why the view stopped following the targets.
enum Ended {
    Quit,
    Signal(&'static str),
    TargetsExited(Option<ExitStatus>),
}

/// Runs `top` until `q`, a signal, or (without a terminal) the targets'
/// exit; returns the exit status.
pub async fn run(mut top: TopConfig, shutdown: Shutdown) -> Result<u8> {
    live::settle_unwind(&mut top.record);
    let config = &top.record;
    let on_terminal = std::io::stdout().is_terminal();
    if on_terminal {
        screen::check_size()?;
    }
    let rules = Arc::new(load_rules(None)?);
    preflight::check(config)?;
    let cgroups = preflight::check_cgroups(&config.cgroups)?;
    live::prepare_target_files(config.max_file_size);
    let (mut processes, mut python) = app::read_named_targets(config, &shutdown);
    if let Some(signal) = shutdown.requested() {
        note(&format!("stopped by {signal} before sampling started"));
        return Ok(0);
    }
    let mut source = start_sampler(&app::sampler_options(config, &cgroups, &mut python))?;
    let source = source.as_mut();
    let mut child = app::start_command(config, &shutdown, source).await?;
    let child_pid = child.as_ref().map(|c| c.pid);
    if let Some(pid) = child_pid {
        processes.observe(pid, "");
    }
    let run = app::run_info(config, &cgroups, source.event().name(), child_pid);
    let counters = source.counters()?;
    let mut pipeline = app::new_pipeline(
        config,
        &cgroups,
        run.clone(),
        rules,
        processes,
        python,
        counters,
    );
    let shared = pipeline.shared_files();
    app::unwind_in_kernel_if_asked(config, &mut pipeline, source, &shared);
    pipeline.read_symbols_early(&shared, config.stacks.kernel());
    if let Some(pid) = child_pid {
        pipeline.track(pid);
        pipeline.check_python(pid);
        pipeline.tell_python(source);
    }
    if config.mode.tracks_switches() {
        pipeline.seed_waits(source)?;
    }
    let mut view = Viewer {
        top: Top::new(run, top.window.as_secs_f64()),
        out: match on_terminal {
            true => Out::Screen(Screen::open(&shutdown)?, screen::read_keys()?),
            false => Out::Plain,
        },
        note: None,
    };
    let pids = match &config.target {
        Target::Pids(pids) => pids.clone(),
        _ => Vec::new(),
    };
    let following = Following {
        delay: top.delay,
        pids: &pids,
        shutdown: &shutdown,
    };
    let ended = following
        .follow(source, &mut pipeline, &mut view, child.as_mut())
        .await;
    shutdown.begin();
    let ended = match ended {
        Ok(Ended::TargetsExited(status)) => view.after_exit(&shutdown, status).await,
        other => other,
    };
    // The terminal is given back before anything else is said.
    drop(view);
    if let Some(child) = &mut child {
        if !matches!(ended, Ok(Ended::TargetsExited(Some(_)))) {
            child.stop().await;
        }
    }
    Ok(match ended? {
        Ended::Signal(signal) => {
            note(&format!("stopped by {signal}"));
            0
        }
        Ended::TargetsExited(Some(status)) => app::exit_code(status),
        Ended::TargetsExited(None) | Ended::Quit => 0,
    })
}

/// The model and where it is shown.
struct Viewer {
    top: Top,
    out: Out,
    /// Said under the header once the targets have exited.
    note: Option<String>,
}

impl Viewer {
    /// Draws the screen, or prints the plain table.
    fn show(&mut self) -> Result<()> {
        let view = self.top.view();
        match &mut self.out {
            Out::Screen(screen, _) => screen.draw(&view, self.note.as_deref()),
            Out::Plain => {
                let mut text = format::plain(&view, PLAIN_ROWS);
                if let Some(note) = &self.note {
                    text += note;
                    text.push('\n');
                }
                text.push('\n');
                let mut stdout = std::io::stdout().lock();
                stdout
                    .write_all(text.as_bytes())
                    .and_then(|()| stdout.flush())
                    .context("writing the table to stdout")
            }
        }
    }

    /// A key, when there is a screen; never without one.
    async fn key(&mut self) -> char {
        match &mut self.out {
            // None: the key thread ended, the terminal is gone.
            Out::Screen(_, keys) => keys.recv().await.unwrap_or('q'),
            Out::Plain => std::future::pending().await,
        }
    }

    /// Applies a key; true when it quits.
    fn press(&mut self, key: char) -> Result<bool> {
        if key == screen::RESIZED {
            self.show()?;
            return Ok(false);
        }
        match self.top.press(key) {
            Action::Quit => return Ok(true),
            Action::Redraw => self.show()?,
            Action::Ignore => {}
        }
        Ok(false)
    }

    /// The targets are gone: the screen says so and waits for `q` (or a
    /// signal); the plain table says so and ends.
    async fn after_exit(
        &mut self,
        shutdown: &Shutdown,
        status: Option<ExitStatus>,
    ) -> Result<Ended> {
        let what = match status {
            Some(status) => format!("the command exited ({status})"),
            None => "every target process has exited".to_string(),
        };
        let on_screen = matches!(self.out, Out::Screen(..));
        self.note = Some(match on_screen {
            true => format!("{what}; press q to quit"),
            false => what,
        });
        self.show()?;
        if on_screen {
            loop {
                tokio::select! {
                    signal = shutdown.signalled() => return Ok(Ended::Signal(signal)),
                    key = self.key() => if self.press(key)? { break },
                }
            }
        }
        Ok(Ended::TargetsExited(status))
    }
}

/// What the loop needs besides the sampler, the pipeline and the view.
struct Following<'a> {
    delay: Duration,
    /// The pids named with `--pid`: when all have exited, so has the view.
    pids: &'a [u32],
    shutdown: &'a Shutdown,
}

impl Following<'_> {
    /// Pulls samples as a recording does, takes a report every `delay` for
    /// the view, and applies keys as they come.
    async fn follow(
        &self,
        source: &mut dyn SampleSource,
        pipeline: &mut Pipeline,
        view: &mut Viewer,
        child: Option<&mut GatedChild>,
    ) -> Result<Ended> {
        let mut tick = interval(COPY_POLL_PERIOD);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_drain = Instant::now();
        let mut next_refresh = Instant::now() + self.delay;
        let child_exit = async {
            match child {
                Some(child) => child.child.wait().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(child_exit);
        // The screen is drawn at once (empty until the first refresh); the
        // plain table waits for one.
        if matches!(view.out, Out::Screen(..)) {
            view.show()?;
        }
        loop {
            tokio::select! {
                signal = self.shutdown.signalled() => return Ok(Ended::Signal(signal)),
                status = &mut child_exit => {
                    let status = status.context("waiting for the command")?;
                    return Ok(Ended::TargetsExited(Some(status)));
                }
                key = view.key() => if view.press(key)? { return Ok(Ended::Quit) },
                _ = tick.tick() => {
                    pipeline.pull(source);
                    if last_drain.elapsed() >= DRAIN_PERIOD {
                        last_drain = Instant::now();
                        pipeline.pull_counted(source).await?;
                    }
                    if Instant::now() < next_refresh {
                        continue;
                    }
                    next_refresh += self.delay;
                    // Unreadable counters cost only the header its loss figure.
                    let counters = source.counters().unwrap_or_default();
                    view.top.push(&pipeline.take_report(&counters));
                    view.show()?;
                    if !self.pids.is_empty() && !self.pids.iter().any(|&p| process::is_alive(p)) {
                        return Ok(Ended::TargetsExited(None));
                    }
                }
            }
        }
    }
}
